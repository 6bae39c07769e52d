//! The revert branch after an abort: one commit that restores the rollout's spec file as it
//! was before the change that started the aborted canary, named from (rollout, that change)
//! so that it is found again, never made twice.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::core::model::{Revision, Rollout};
use crate::core::plan::Revert;
use crate::edge::git::RevertBranch;

use super::{Daemon, HISTORY, short};
use crate::edge::telemetry::ErrorClass;

/// A commit that changed a rollout's spec, and its parent (`None`: the file was new).
pub(super) type Change = (String, Option<String>);

/// A release of a rollout group: its members (catalog index, revision), which one revert
/// branch restores together.
#[derive(Clone, Debug)]
pub(super) struct Release {
    pub group: String,
    pub release: Revision,
    pub members: Vec<(usize, Revision)>,
}

/// The branch name for the revert of release `release` of group `group`.
pub fn group_branch_name(group: &str, release: &Revision) -> String {
    format!("canaryd/revert/{group}-{release}")
}

/// The branch name for a revert of `rollout`'s change `commit`.
pub fn branch_name(rollout: &str, commit: &str) -> String {
    format!("canaryd/revert/{rollout}-{}", short(commit))
}

/// The revert commit's message, quoting the evidence.
pub fn message(r: &Rollout, revert: &Revert, change: &str, parent: Option<&str>) -> String {
    let mut m = format!(
        "Revert {}: restore its spec from before {}\n\n",
        r.name,
        short(change)
    );
    let _ = writeln!(
        m,
        "canaryd aborted revision {} of rollout {}: {}",
        revert.revision, r.name, revert.evidence.summary
    );
    if let Some(metric) = &revert.evidence.metric {
        let values: Vec<String> = revert
            .evidence
            .values
            .iter()
            .map(|v| v.map_or_else(|| "no data".to_string(), crate::core::number::short))
            .collect();
        let _ = writeln!(
            m,
            "metric {metric}, condition `{}`, recent values [{}]",
            revert.evidence.condition.as_deref().unwrap_or("-"),
            values.join(", ")
        );
        let e = &revert.evidence;
        if let Some(n) = e.samples {
            let _ = writeln!(m, "samples behind the deciding measurement: {n}");
        }
        if let Some(detail) = &e.detail {
            let _ = writeln!(m, "{detail}");
        }
        if let Some(q) = &e.query {
            let _ = writeln!(m, "query: {q}");
        }
    }
    let _ = writeln!(
        m,
        "\nTraffic is already back on stable. Merging this makes Git agree with it: {} as of {}.",
        r.file,
        parent.map_or("(none: the file did not exist)", short)
    );
    let _ = write!(
        m,
        "\nRollout: {}\nRevision: {}\nReverts: {change}\n",
        r.name, revert.revision
    );
    m
}

/// The group revert's message: the evidence, then each member's spec restored.
fn group_message(
    release: &Release,
    revert: &Revert,
    restored: &[(String, String, String, Option<String>)],
) -> String {
    let mut m = format!(
        "Revert release {} of {}: restore {} specs\n\n",
        release.release,
        release.group,
        restored.len()
    );
    let _ = writeln!(
        m,
        "canaryd aborted release {} of group {}: {}",
        release.release, release.group, revert.evidence.summary
    );
    if let Some(metric) = &revert.evidence.metric {
        let _ = writeln!(
            m,
            "metric {metric}, condition `{}`",
            revert.evidence.condition.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        m,
        "\nTraffic of every member is already back on stable. Merging this makes Git agree:"
    );
    for (rollout, file, change, parent) in restored {
        let _ = writeln!(
            m,
            "- {rollout}: {file} as of {} (before {})",
            parent
                .as_deref()
                .map_or("(none: the file did not exist)", short),
            short(change)
        );
    }
    let _ = write!(
        m,
        "\nGroup: {}\nRelease: {}\n",
        release.group, release.release
    );
    m
}

impl Daemon {
    /// Makes sure the one revert branch of a group release exists on the remote: every member
    /// of the release gets its spec file back as it was before the change that started it.
    /// Returns its name.
    pub(super) async fn revert_release(
        &mut self,
        catalog: &crate::core::model::Catalog,
        release: &Release,
        head: &str,
        revert: &Revert,
    ) -> Option<String> {
        let key = (format!("group:{}", release.group), release.release.clone());
        if let Some(branch) = self.reverts.get(&key) {
            return Some(branch.clone());
        }
        let mut restore = BTreeMap::new();
        let mut restored = Vec::new();
        for (i, revision) in &release.members {
            let r = &catalog.rollouts[*i];
            let (change, parent) = self.start_of(r, head, revision).await?;
            if restore.contains_key(&r.file) {
                // Two members in one file, changed together: restored once.
                restored.push((r.name.clone(), r.file.clone(), change, parent));
                continue;
            }
            let text = self.file_before(r, parent.as_deref()).await?;
            restore.insert(r.file.clone(), text);
            restored.push((r.name.clone(), r.file.clone(), change, parent));
        }
        let name = group_branch_name(&release.group, &release.release);
        let msg = group_message(release, revert, &restored);
        self.push_revert(&name, head, restore, msg, None).await?;
        self.reverts.insert(key, name.clone());
        Some(name)
    }

    /// Makes sure the revert branch for `revert` exists on the remote; returns its name.
    pub(super) async fn revert(
        &mut self,
        r: &Rollout,
        head: &str,
        revert: &Revert,
    ) -> Option<String> {
        let key = (r.name.clone(), revert.revision.clone());
        if let Some(branch) = self.reverts.get(&key) {
            return Some(branch.clone());
        }
        let (change, parent) = self.start_of(r, head, &revert.revision).await?;
        let restored = self.file_before(r, parent.as_deref()).await?;
        let name = branch_name(&r.name, &change);
        let msg = message(r, revert, &change, parent.as_deref());
        let restore = BTreeMap::from([(r.file.clone(), restored)]);
        self.push_revert(&name, head, restore, msg, Some(&r.name))
            .await?;
        self.reverts.insert(key, name.clone());
        Some(name)
    }

    /// `r`'s spec file as it was at `parent` (`Some(None)`: it did not exist; `None`: Git could
    /// not be read, reported).
    async fn file_before(&mut self, r: &Rollout, parent: Option<&str>) -> Option<Option<String>> {
        let Some(p) = parent else {
            return Some(None);
        };
        let (p, file) = (p.to_string(), r.file.clone());
        match self.git(move |m| m.file_at(&p, &file)).await {
            Ok(text) => Some(text),
            Err(e) => {
                self.error(ErrorClass::Git, Some(&r.name), e.to_string());
                None
            }
        }
    }

    /// Makes sure branch `name` exists on the remote, one commit on `head` restoring
    /// `restore` (file → text, `None`: absent) with message `msg`; `None` when it could not be
    /// pushed (the error is reported under `rollout`).
    async fn push_revert(
        &mut self,
        name: &str,
        head: &str,
        restore: BTreeMap<String, Option<String>>,
        msg: String,
        rollout: Option<&str>,
    ) -> Option<()> {
        let (n, base) = (name.to_string(), head.to_string());
        match self
            .git(move |m| m.ensure_revert_branch(&n, &base, &restore, &msg))
            .await
        {
            Ok(RevertBranch::Created(id)) => {
                tracing::info!(branch = %name, commit = %short(&id), "revert branch pushed");
            }
            Ok(RevertBranch::Existed(_)) => {
                tracing::debug!(branch = %name, "revert branch already there");
            }
            Err(e) => {
                self.error(
                    ErrorClass::Git,
                    rollout,
                    format!("cannot push revert branch {name}: {e}"),
                );
                return None;
            }
        }
        Some(())
    }

    /// The commit that brought `revision` of rollout `r` (the change that started its canary)
    /// and that commit's parent, searched back from `head` and cached: a failed search is not
    /// repeated on every look.
    pub(super) async fn start_of(
        &mut self,
        r: &Rollout,
        head: &str,
        revision: &Revision,
    ) -> Option<Change> {
        let key = (r.name.clone(), revision.clone());
        if let Some(found) = self.starts.get(&key) {
            return found.clone();
        }
        let (h, file) = (head.to_string(), r.file.clone());
        let history = match self.git(move |m| m.file_history(&h, &file, HISTORY)).await {
            Ok(h) => h,
            Err(e) => {
                self.error(
                    ErrorClass::Git,
                    Some(&r.name),
                    format!("cannot read history of {}: {e}", r.file),
                );
                return None;
            }
        };
        // Newest first: the change that brought the revision is the newest commit whose
        // parent had another valid revision, or no such file. A parent where the file was
        // broken is passed over: restoring a broken spec would not roll anything back.
        let mut found = None;
        for (change, parent) in history {
            let before = match &parent {
                Some(p) => match self.revision_at(p.as_str(), &r.name, &r.file).await {
                    Ok(b) => b,
                    Err(e) => {
                        // Not an answer: the next look searches again (nothing cached).
                        self.error(
                            ErrorClass::Git,
                            Some(&r.name),
                            format!("cannot read the specs at {}: {e}", short(p)),
                        );
                        return None;
                    }
                },
                None => Before::Absent,
            };
            match before {
                Before::Valid(rev) if rev == *revision => {}
                Before::Invalid => {}
                Before::Valid(_) | Before::Absent => {
                    found = Some((change, parent));
                    break;
                }
            }
        }
        if found.is_none() {
            self.error(
                ErrorClass::Git,
                Some(&r.name),
                format!(
                    "no commit within {HISTORY} of {} brought revision {revision}",
                    short(head),
                ),
            );
        }
        self.starts.insert(key, found.clone());
        found
    }

    /// What rollout `name` (in `file`) was at `commit`; an error when Git could not be read.
    async fn revision_at(
        &self,
        commit: &str,
        name: &str,
        file: &str,
    ) -> Result<Before, crate::edge::git::GitError> {
        let (c, known) = (commit.to_string(), self.known.clone());
        let (catalog, _, _) = self
            .git(move |m| super::snapshot::validate_at(m, &c, &known))
            .await?;
        if catalog.invalid.contains_key(name) || catalog.broken_files.iter().any(|f| f == file) {
            return Ok(Before::Invalid);
        }
        Ok(
            match catalog.rollouts.into_iter().find(|r| r.name == name) {
                Some(r) => Before::Valid(r.revision),
                // A file that parses but holds no such rollout, or no file at all.
                None => Before::Absent,
            },
        )
    }
}

/// A rollout's spec as it was at some commit.
enum Before {
    /// It did not exist (its file did not, or held no such rollout).
    Absent,
    /// Its file could not be read, or the rollout did not validate.
    Invalid,
    Valid(Revision),
}
