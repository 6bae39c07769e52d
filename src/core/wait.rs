//! What `canaryd wait` concludes from a rollout's status file: the revision it waits for is
//! promoted, has failed, or is still on its way. Pure: the command reads the status branch and
//! the clock, and this decides.

use crate::core::model::Revision;
use crate::core::progress::Progress;
use crate::core::record::StatusFile;

/// Where the awaited revision stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Traffic is where that revision wants it, for good: promoted, or a spec without a canary
    /// (or a revert) applied. Exit 0.
    Done,
    /// That revision will not be promoted. Exit 1.
    Failed(Failure),
    /// Not yet decided (or not yet picked up by the daemon).
    Pending,
}

/// Why the awaited revision will not be promoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Stopped on evidence, by hand or by its deadline.
    Aborted,
    /// The spec went back to an earlier revision while it ran.
    RolledBack,
    /// A later change of the spec replaced it before it finished.
    Superseded { by: Revision },
    /// The daemon holds the rollout: its spec is invalid.
    Invalid,
}

/// What is known besides the status file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The daemon has planned a spec at or after the awaited commit (`--commit`; its status
    /// names that commit or a later one), so a status about another revision is a later one.
    pub caught_up: bool,
    /// The awaited revision was in the status file at an earlier look of this wait.
    pub before: bool,
}

/// Where `want` stands, given the rollout's status file (`None`: no status yet).
pub fn verdict(file: Option<&StatusFile>, want: &Revision, seen: Seen) -> Verdict {
    let Some(file) = file else {
        return Verdict::Pending;
    };
    let progress = &file.status.progress;
    if let Progress::Invalid { .. } = progress {
        return if seen.caught_up {
            Verdict::Failed(Failure::Invalid)
        } else {
            Verdict::Pending
        };
    }
    match progress.revision() {
        Some(r) if r == want => match progress {
            Progress::Promoted { .. } | Progress::Stable { .. } | Progress::RolledBack { .. } => {
                Verdict::Done
            }
            Progress::Aborted { .. } => Verdict::Failed(Failure::Aborted),
            _ => Verdict::Pending,
        },
        Some(r) => match progress {
            // This revision rolled back, and not an earlier run of it the daemon has not
            // moved on from yet.
            Progress::RollingBack { from, .. } | Progress::RolledBack { from, .. }
                if from == want && (seen.caught_up || seen.before) =>
            {
                Verdict::Failed(Failure::RolledBack)
            }
            _ if seen.caught_up || seen.before => {
                Verdict::Failed(Failure::Superseded { by: r.clone() })
            }
            _ => Verdict::Pending,
        },
        None => Verdict::Pending,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::core::analysis::Evidence;
    use crate::core::model::Weight;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn file(progress: Progress) -> StatusFile {
        let mut f = StatusFile::new("checkout", at());
        f.status.progress = progress;
        f.steps = 4;
        f
    }

    fn rev(s: &str) -> Revision {
        Revision::from(s)
    }

    fn aborted(r: &str) -> Progress {
        Progress::Aborted {
            revision: rev(r),
            at: at(),
            evidence: Evidence::text("errors = 0.3"),
            step: 1,
            weight: Weight::ZERO,
        }
    }

    const NOT_YET: Seen = Seen {
        caught_up: false,
        before: false,
    };
    const CAUGHT_UP: Seen = Seen {
        caught_up: true,
        before: false,
    };

    #[test]
    fn the_awaited_revision_promoted_is_done_and_aborted_failed() {
        let want = rev("new");
        let promoted = file(Progress::Promoted {
            revision: rev("new"),
            at: at(),
        });
        assert_eq!(verdict(Some(&promoted), &want, NOT_YET), Verdict::Done);
        assert_eq!(
            verdict(Some(&file(aborted("new"))), &want, NOT_YET),
            Verdict::Failed(Failure::Aborted)
        );
        let waiting = file(Progress::Waiting {
            revision: rev("new"),
            since: at(),
        });
        assert_eq!(verdict(Some(&waiting), &want, CAUGHT_UP), Verdict::Pending);
        assert_eq!(verdict(None, &want, CAUGHT_UP), Verdict::Pending);
    }

    #[test]
    fn another_revision_is_the_old_one_until_the_daemon_has_seen_the_commit() {
        let want = rev("new");
        let old = file(Progress::Promoted {
            revision: rev("old"),
            at: at(),
        });
        // The daemon has not planned the merge yet: the promoted old revision says nothing.
        assert_eq!(verdict(Some(&old), &want, NOT_YET), Verdict::Pending);
        // It has (or this wait saw the new revision before): a later change replaced it.
        let superseded = Verdict::Failed(Failure::Superseded { by: rev("old") });
        assert_eq!(verdict(Some(&old), &want, CAUGHT_UP), superseded);
        let seen = Seen {
            caught_up: false,
            before: true,
        };
        assert_eq!(verdict(Some(&old), &want, seen), superseded);
    }

    #[test]
    fn a_revert_fails_the_reverted_revision_and_completes_the_revert() {
        let back = |done: bool| {
            file(if done {
                Progress::RolledBack {
                    revision: rev("old"),
                    from: rev("new"),
                    at: at(),
                    weight: Weight::FULL,
                }
            } else {
                Progress::RollingBack {
                    revision: rev("old"),
                    from: rev("new"),
                    stable: "blue".into(),
                    canary: "green".into(),
                    weight: Weight::new(20).unwrap(),
                    target: Weight::FULL,
                    since: at(),
                }
            })
        };
        for done in [false, true] {
            assert_eq!(
                verdict(Some(&back(done)), &rev("new"), CAUGHT_UP),
                Verdict::Failed(Failure::RolledBack)
            );
            // A rollback of an earlier run of the same revision, before the daemon read the
            // awaited commit: no answer yet.
            assert_eq!(
                verdict(Some(&back(done)), &rev("new"), NOT_YET),
                Verdict::Pending
            );
        }
        // Waiting for the revert commit itself: done once traffic followed it.
        assert_eq!(
            verdict(Some(&back(false)), &rev("old"), CAUGHT_UP),
            Verdict::Pending
        );
        assert_eq!(
            verdict(Some(&back(true)), &rev("old"), CAUGHT_UP),
            Verdict::Done
        );
    }

    #[test]
    fn an_invalid_spec_fails_once_the_daemon_has_read_it() {
        let invalid = file(Progress::Invalid {
            errors: vec!["spec.steps[0]: bad".into()],
            held: Box::new(aborted("old")),
        });
        assert_eq!(
            verdict(Some(&invalid), &rev("new"), NOT_YET),
            Verdict::Pending
        );
        assert_eq!(
            verdict(Some(&invalid), &rev("new"), CAUGHT_UP),
            Verdict::Failed(Failure::Invalid)
        );
    }
}
