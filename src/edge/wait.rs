//! `canaryd wait`: follows one rollout's status on the status branch until the revision a
//! commit (or the watched branch's head) set is promoted, fails, or time runs out. Reads Git
//! through a mirror of its own in a temporary folder; what a status means is decided by
//! [`crate::core::wait::verdict`].

use std::time::Duration;

use crate::core::model::Revision;
use crate::core::progress::Progress;
use crate::core::record::StatusFile;
use crate::core::validate::Known;
use crate::core::wait::{Failure, Seen, Verdict, verdict};
use crate::edge::clock;
use crate::edge::git::{GitError, Mirror};

/// How long an abort waits for its revert branch before it is told without one.
const REVERT_WAIT: Duration = Duration::from_secs(5);

/// Which revision to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Awaited {
    /// The revision as the status file names it.
    Revision(Revision),
    /// The revision the rollout's spec has at this commit of the watched branch (a merge CI
    /// just made); waited for until the branch holds it.
    Commit(String),
    /// The revision the watched branch's head sets when the wait starts.
    Head,
}

/// What the wait reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The revision is known: the commit it came from, when one did.
    Awaiting {
        revision: &'a Revision,
        commit: Option<&'a str>,
    },
    /// The rollout's status file changed.
    Status(&'a StatusFile),
    /// A read failed and is tried again (network trouble, a status file that cannot be read).
    Retrying(String),
}

/// How the wait ended, short of an error.
#[derive(Clone, Debug, PartialEq)]
pub enum Ended {
    /// [`Verdict::Done`]: traffic is where the revision wants it, for good.
    Done {
        revision: Revision,
        status: Box<StatusFile>,
    },
    /// [`Verdict::Failed`], with the status that decided it.
    Failed {
        revision: Revision,
        why: Failure,
        status: Box<StatusFile>,
    },
    /// The rollout's spec at the awaited commit is invalid: the daemon holds it (its status
    /// says so, for that commit or a later one).
    Invalid { commit: String, errors: Vec<String> },
    /// Time ran out; the revision if it was known, the last status seen.
    TimedOut {
        revision: Option<Revision>,
        status: Option<Box<StatusFile>>,
    },
}

/// Why the wait could not go on.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("no rollout named `{name}` in the specs at commit {commit}")]
    NoRollout { name: String, commit: String },
    #[error("the watched branch is not on the remote")]
    NoBranch,
    /// The spec at the commit does not validate here, and the daemon's status does not say it
    /// is invalid: the revision cannot be known (a router defined in the controller
    /// configuration, without `--config`).
    #[error(
        "cannot tell the revision commit {commit} gives `{name}`: {}; pass the controller \
         configuration (--config) for the routers it defines, or --revision",
        .errors.join("; ")
    )]
    Unknowable {
        name: String,
        commit: String,
        errors: Vec<String>,
    },
}

/// Fetches `mirror` every `every` until the rollout `name` decides `awaited`, or `timeout`
/// passes; `report` hears each step. A transient Git error is reported and tried again.
pub fn wait(
    mirror: &Mirror,
    known: &Known,
    name: &str,
    awaited: &Awaited,
    timeout: Duration,
    every: Duration,
    mut report: impl FnMut(Event<'_>),
) -> Result<Ended, WaitError> {
    let deadline = clock::instant() + timeout;
    let mut want: Option<(Revision, Option<String>)> = match awaited {
        Awaited::Revision(r) => Some((r.clone(), None)),
        Awaited::Commit(_) | Awaited::Head => None,
    };
    let mut announced = false;
    let mut seen_before = false;
    let mut last: Option<StatusFile> = None;
    // When an abort seen without its revert branch is told anyway.
    let mut aborted_seen: Option<tokio::time::Instant> = None;
    loop {
        match look(mirror, known, name, awaited, &mut want) {
            Ok(Some((commit, errors))) => {
                // What the daemon made of that commit decides.
                if let Ok(Some(s)) = read_status(mirror, name)
                    && s.spec_commit
                        .as_deref()
                        .is_some_and(|planned| mirror.descends(planned, &commit))
                {
                    return match &s.status.progress {
                        Progress::Invalid { errors, .. } => Ok(Ended::Invalid {
                            commit,
                            errors: errors.clone(),
                        }),
                        _ => Err(WaitError::Unknowable {
                            name: name.to_string(),
                            commit,
                            errors,
                        }),
                    };
                }
            }
            Ok(None) => {}
            Err(e) if e.is_transient() => report(Event::Retrying(e.to_string())),
            Err(e) => return Err(e),
        }
        if let Some((revision, commit)) = &want {
            if !announced {
                report(Event::Awaiting {
                    revision,
                    commit: commit.as_deref(),
                });
                announced = true;
            }
            let status = match read_status(mirror, name) {
                Ok(s) => s,
                Err(why) => {
                    report(Event::Retrying(why));
                    last.clone()
                }
            };
            if let Some(s) = &status
                && last.as_ref() != Some(s)
            {
                report(Event::Status(s));
            }
            let caught_up = commit.as_deref().is_some_and(|c| {
                status
                    .as_ref()
                    .and_then(|s| s.spec_commit.as_deref())
                    .is_some_and(|planned| mirror.descends(planned, c))
            });
            seen_before |= last
                .as_ref()
                .is_some_and(|s| s.status.progress.revision() == Some(revision));
            let seen = Seen {
                caught_up,
                before: seen_before,
            };
            let v = verdict(status.as_ref(), revision, seen);
            // A verdict other than pending comes from a status file.
            if let Some(s) = &status {
                let (revision, status) = (revision.clone(), Box::new(s.clone()));
                match v {
                    Verdict::Done => return Ok(Ended::Done { revision, status }),
                    // An abort is told with its revert branch, which the daemon pushes right
                    // after it (a status commit or two later), or without it after a while.
                    Verdict::Failed(Failure::Aborted)
                        if status.revert.is_none()
                            && clock::instant()
                                < *aborted_seen
                                    .get_or_insert_with(|| clock::instant() + REVERT_WAIT) => {}
                    Verdict::Failed(why) => {
                        return Ok(Ended::Failed {
                            revision,
                            why,
                            status,
                        });
                    }
                    Verdict::Pending => {}
                }
            }
            last = status;
        }
        let now = clock::instant();
        if now >= deadline {
            return Ok(Ended::TimedOut {
                revision: want.map(|(r, _)| r),
                status: last.map(Box::new),
            });
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// One fetch, and the awaited revision found if it is not yet known. `Some`: the spec at the
/// commit does not validate here (the commit, and why).
fn look(
    mirror: &Mirror,
    known: &Known,
    name: &str,
    awaited: &Awaited,
    want: &mut Option<(Revision, Option<String>)>,
) -> Result<Option<(String, Vec<String>)>, WaitError> {
    let heads = mirror.fetch()?;
    if want.is_some() {
        return Ok(None);
    }
    let commit = match awaited {
        Awaited::Revision(_) => return Ok(None),
        Awaited::Head => heads.spec.ok_or(WaitError::NoBranch)?,
        // Not on the branch yet (CI pushed it a moment ago, or to another branch): wait.
        Awaited::Commit(c) => match mirror.resolve(c) {
            Ok(full)
                if heads
                    .spec
                    .as_deref()
                    .is_some_and(|h| mirror.descends(h, &full)) =>
            {
                full
            }
            Ok(_) | Err(GitError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    let (catalog, _, _) = crate::edge::daemon::validate_at(mirror, &commit, known)?;
    if let Some(r) = catalog.rollouts.iter().find(|r| r.name == name) {
        *want = Some((r.revision.clone(), Some(commit)));
        return Ok(None);
    }
    match catalog.invalid.get(name) {
        // Not an answer by itself: it may be invalid here only (a router the controller
        // configuration defines); the daemon's status says.
        Some(errors) => Ok(Some((commit, errors.clone()))),
        None => Err(WaitError::NoRollout {
            name: name.to_string(),
            commit,
        }),
    }
}

/// The rollout's status file as last fetched (`None`: none yet).
fn read_status(mirror: &Mirror, name: &str) -> Result<Option<StatusFile>, String> {
    let files = mirror.status_files().map_err(|e| e.to_string())?;
    files
        .get(name)
        .map(|text| {
            StatusFile::from_yaml(text).map_err(|e| format!("status of `{name}` unreadable: {e}"))
        })
        .transpose()
}

impl WaitError {
    fn is_transient(&self) -> bool {
        match self {
            WaitError::Git(e) => e.is_transient(),
            WaitError::NoRollout { .. } | WaitError::NoBranch | WaitError::Unknowable { .. } => {
                false
            }
        }
    }
}
