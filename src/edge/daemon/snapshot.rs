//! The snapshot of Git that a look plans from, read in one blocking call: the watched
//! branch's head, its specs validated, every status file, and the gate commits. What has not
//! moved since the last snapshot is not read again: specs are cached by the rollouts folder's
//! tree id (a gate commit or a README change validates nothing), status files by blob id (and
//! not listed at all when the `status/` tree has not moved), gates by head.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::core::diag::Diagnostic;
use crate::core::model::Catalog;
use crate::core::record::StatusFile;
use crate::core::validate::{self, Known, Source};
use crate::edge::git::{GateCommit, GitError, Mirror};

use super::HISTORY;

/// Gate commits by rollout, oldest first.
pub(super) type Gates = BTreeMap<String, Vec<GateCommit>>;

/// Each rollout's status file as the status branch holds it, or why it cannot be read.
pub(super) type Statuses = BTreeMap<String, Result<Arc<StatusFile>, String>>;

/// What Git held at one look.
#[derive(Clone, Debug)]
pub(super) struct Snapshot {
    /// The watched branch's commit the specs were read at.
    pub head: String,
    /// The specs at `head`, validated.
    pub catalog: Arc<Catalog>,
    pub statuses: Arc<Statuses>,
    /// Gate commits on the first-parent history from `head` (at most [`HISTORY`] commits).
    pub gates: Arc<Gates>,
    /// Spec problems first seen in this snapshot (invalid documents, files skipped unread),
    /// one line each: reported once per spec tree, not on every look.
    pub news: Vec<String>,
}

/// Why there is no snapshot.
#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotError {
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("the watched branch does not exist yet")]
    NoBranch,
    #[error("cannot read specs at {commit}: {source}")]
    Specs {
        commit: String,
        #[source]
        source: GitError,
    },
    #[error("cannot read the status branch: {0}")]
    Status(#[source] GitError),
    #[error("cannot read gate commits: {0}")]
    Gates(#[source] GitError),
}

/// What the last snapshot read, so that the next reads only what moved.
#[derive(Debug, Default)]
pub(super) struct Reader {
    head: Option<String>,
    specs: Option<(Option<String>, Arc<Catalog>)>,
    status_tree: Option<Option<String>>,
    /// Rollout → (blob id, the file parsed or why it cannot be).
    files: BTreeMap<String, (String, Result<Arc<StatusFile>, String>)>,
    statuses: Arc<Statuses>,
    gates: Option<(String, Arc<Gates>)>,
}

impl Reader {
    /// Reads a snapshot: the remote fetched first when `fetch` (else the head last fetched).
    /// `known` is what validation takes from the controller configuration.
    pub fn read(
        &mut self,
        m: &Mirror,
        fetch: bool,
        known: &Known,
    ) -> Result<Snapshot, SnapshotError> {
        if fetch || self.head.is_none() {
            let heads = m
                .fetch()
                .map_err(|e| SnapshotError::Fetch(crate::edge::telemetry::chain(&e)))?;
            self.head = heads.spec;
        }
        let Some(head) = self.head.clone() else {
            return Err(SnapshotError::NoBranch);
        };
        let specs_err = |source| SnapshotError::Specs {
            commit: head.clone(),
            source,
        };
        let tree = m.spec_tree(&head).map_err(specs_err)?;
        let mut news = Vec::new();
        let catalog = match &self.specs {
            Some((t, catalog)) if *t == tree => catalog.clone(),
            _ => {
                let (catalog, diags, skipped) = validate_at(m, &head, known).map_err(specs_err)?;
                news.extend(
                    skipped
                        .iter()
                        .map(|(path, why)| format!("{path} skipped: {why}")),
                );
                news.extend(
                    diags
                        .iter()
                        .filter(|d| d.is_error())
                        .map(Diagnostic::one_line),
                );
                let catalog = Arc::new(catalog);
                self.specs = Some((tree, catalog.clone()));
                catalog
            }
        };
        self.read_statuses(m)?;
        let gates = match &self.gates {
            Some((h, gates)) if *h == head => gates.clone(),
            _ => {
                let gates = Arc::new(m.all_gates(&head, HISTORY).map_err(SnapshotError::Gates)?);
                self.gates = Some((head.clone(), gates.clone()));
                gates
            }
        };
        Ok(Snapshot {
            head,
            catalog,
            statuses: self.statuses.clone(),
            gates,
            news,
        })
    }

    /// The status files as the remote holds them now (after a rejected push): fetched, and
    /// read where they moved.
    pub fn refetch_statuses(&mut self, m: &Mirror) -> Result<Arc<Statuses>, SnapshotError> {
        m.fetch()
            .map_err(|e| SnapshotError::Fetch(crate::edge::telemetry::chain(&e)))?;
        self.read_statuses(m)?;
        Ok(self.statuses.clone())
    }

    /// Reads the status files whose blob moved since the last read (none when the `status/`
    /// tree has not moved).
    fn read_statuses(&mut self, m: &Mirror) -> Result<(), SnapshotError> {
        let tree = m.status_tree().map_err(SnapshotError::Status)?;
        if self.status_tree.as_ref() == Some(&tree) {
            return Ok(());
        }
        let known: BTreeMap<String, String> = self
            .files
            .iter()
            .map(|(name, (id, _))| (name.clone(), id.clone()))
            .collect();
        let entries = m
            .status_files_changed(&known)
            .map_err(SnapshotError::Status)?;
        self.files.retain(|name, _| entries.contains_key(name));
        for (name, (id, text)) in entries {
            if let Some(text) = text {
                let parsed = StatusFile::from_yaml(&text).map(Arc::new);
                self.files.insert(name, (id, parsed));
            }
        }
        self.statuses = Arc::new(
            self.files
                .iter()
                .map(|(name, (_, parsed))| (name.clone(), parsed.clone()))
                .collect(),
        );
        self.status_tree = Some(tree);
        Ok(())
    }
}

/// The specs at `commit`, validated: the catalog (with the files skipped unread among its
/// broken files), its diagnostics, and the files skipped with why.
#[allow(clippy::type_complexity)]
pub(crate) fn validate_at(
    m: &Mirror,
    commit: &str,
    known: &Known,
) -> Result<(Catalog, Vec<Diagnostic>, Vec<(String, String)>), GitError> {
    let files = m.spec_files(commit)?;
    let sources: Vec<Source> = files
        .files
        .into_iter()
        .map(|(file, text)| Source { file, text })
        .collect();
    let (mut catalog, diags) = validate::validate(&sources, known);
    catalog
        .broken_files
        .extend(files.skipped.iter().map(|(path, _)| path.clone()));
    Ok((catalog, diags, files.skipped))
}
