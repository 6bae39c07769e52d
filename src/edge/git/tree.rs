//! Blobs and trees in the object database: text read within bounds, the status folder of a commit, trees written with edits.

use std::collections::BTreeMap;
use std::path::Path;

use git2::{Commit, ObjectType, Oid, Repository, Tree};

use super::error::{Cause, GitError};
use crate::core::yaml::MAX_FILE_BYTES;

/// Folder of the status branch that holds one `<rollout>.yaml` per rollout.
pub const STATUS_DIR: &str = "status";

/// Why a blob's text could not be had.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unread {
    #[error("it is larger than {} MiB", MAX_FILE_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("it is not UTF-8 text")]
    NotText,
    #[error("git failed")]
    Git(git2::Error),
}

/// A blob's text, refusing an oversized one from its header before reading it.
pub(super) fn blob_text(repo: &Repository, id: Oid) -> Result<String, Unread> {
    let odb = repo.odb().map_err(Unread::Git)?;
    let (size, _) = odb.read_header(id).map_err(Unread::Git)?;
    if size as u64 > MAX_FILE_BYTES {
        return Err(Unread::TooLarge);
    }
    let blob = repo.find_blob(id).map_err(Unread::Git)?;
    String::from_utf8(blob.content().to_vec()).map_err(|_| Unread::NotText)
}

/// The status files in `commit`'s tree: rollout → YAML text of `status/<name>.yaml`.
pub(super) fn status_map(
    repo: &Repository,
    commit: &Commit<'_>,
    place: &Path,
) -> Result<BTreeMap<String, String>, GitError> {
    Ok(status_entries(repo, commit, place, &BTreeMap::new())?
        .into_iter()
        .filter_map(|(rollout, (_, text))| Some((rollout, text?)))
        .collect())
}

/// The text of the status blob `id` at `status/<path>` in `commit`, with its errors named.
fn status_text(
    repo: &Repository,
    commit: &Commit<'_>,
    place: &Path,
    id: Oid,
    path: String,
) -> Result<String, GitError> {
    blob_text(repo, id).map_err(|why| match why {
        Unread::Git(e) => GitError::Repo {
            op: "read blob",
            path: place.to_path_buf(),
            source: Cause::new(&e, None),
        },
        other => GitError::Unreadable {
            path: format!("{STATUS_DIR}/{path}"),
            commit: commit.id().to_string(),
            reason: other.to_string(),
        },
    })
}

/// The groups' status files in `commit`'s tree: group → YAML text of
/// `status/groups/<group>.yaml`.
pub(super) fn group_status_map(
    repo: &Repository,
    commit: &Commit<'_>,
    place: &Path,
) -> Result<BTreeMap<String, String>, GitError> {
    let git = |op| {
        move |e: git2::Error| GitError::Repo {
            op,
            path: place.to_path_buf(),
            source: Cause::new(&e, None),
        }
    };
    let root = commit.tree().map_err(git("read tree"))?;
    let mut out = BTreeMap::new();
    let Ok(entry) = root.get_path(Path::new(&format!("{STATUS_DIR}/groups"))) else {
        return Ok(out);
    };
    if entry.kind() != Some(ObjectType::Tree) {
        return Ok(out);
    }
    let dir = repo.find_tree(entry.id()).map_err(git("read tree"))?;
    for e in dir.iter() {
        let (Some(name), Some(ObjectType::Blob)) = (e.name(), e.kind()) else {
            continue;
        };
        let Some(group) = name.strip_suffix(".yaml") else {
            continue;
        };
        let text = status_text(repo, commit, place, e.id(), format!("groups/{name}"))?;
        out.insert(group.to_string(), text);
    }
    Ok(out)
}

/// The status files in `commit`'s tree: rollout → (blob id, text). The text is read only when
/// the blob differs from the one `known` gives for that rollout (a look that changed nothing
/// reads no file).
pub(super) fn status_entries(
    repo: &Repository,
    commit: &Commit<'_>,
    place: &Path,
    known: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, (String, Option<String>)>, GitError> {
    let git = |op| {
        move |e: git2::Error| GitError::Repo {
            op,
            path: place.to_path_buf(),
            source: Cause::new(&e, None),
        }
    };
    let root = commit.tree().map_err(git("read tree"))?;
    let mut out = BTreeMap::new();
    let Some(entry) = root.get_name(STATUS_DIR) else {
        return Ok(out);
    };
    if entry.kind() != Some(ObjectType::Tree) {
        return Ok(out);
    }
    let dir = repo.find_tree(entry.id()).map_err(git("read tree"))?;
    for e in dir.iter() {
        let Some(name) = e.name() else { continue };
        let Some(rollout) = name.strip_suffix(".yaml") else {
            continue;
        };
        if rollout.is_empty() || rollout.starts_with('.') || e.kind() != Some(ObjectType::Blob) {
            continue;
        }
        let id = e.id().to_string();
        if known.get(rollout) == Some(&id) {
            out.insert(rollout.to_string(), (id, None));
            continue;
        }
        let text = status_text(repo, commit, place, e.id(), name.to_string())?;
        out.insert(rollout.to_string(), (id, Some(text)));
    }
    Ok(out)
}

/// One change for [`edit_tree`]: path components, and the new blob or `None` to delete.
pub(super) type Edit<'a> = (&'a [&'a str], Option<Oid>);

pub(super) enum TreeEdit {
    Git(git2::Error),
    Conflict(String),
}

impl From<git2::Error> for TreeEdit {
    fn from(e: git2::Error) -> TreeEdit {
        TreeEdit::Git(e)
    }
}

/// Writes `base` with `edits` (path components → blob, `None` deletes) applied, recursively;
/// `None` if the result is empty (an emptied folder disappears, as in Git).
pub(super) fn edit_tree(
    repo: &Repository,
    base: Option<&Tree<'_>>,
    edits: &[Edit<'_>],
) -> Result<Option<Oid>, TreeEdit> {
    let mut groups: BTreeMap<&str, Vec<Edit<'_>>> = BTreeMap::new();
    for (path, blob) in edits {
        if let Some((first, rest)) = path.split_first() {
            groups.entry(first).or_default().push((rest, *blob));
        }
    }
    let mut builder = repo.treebuilder(base)?;
    for (name, group) in groups {
        let existing = builder.get(name)?.map(|e| (e.id(), e.kind(), e.filemode()));
        if let Some((_, blob)) = group.iter().find(|(rest, _)| rest.is_empty()) {
            if group.len() > 1 {
                return Err(TreeEdit::Conflict(name.to_string()));
            }
            match blob {
                Some(oid) => {
                    // Keep an executable bit; anything else becomes a plain file.
                    let mode = match existing {
                        Some((_, Some(ObjectType::Blob), m))
                            if m == i32::from(git2::FileMode::BlobExecutable) =>
                        {
                            git2::FileMode::BlobExecutable
                        }
                        _ => git2::FileMode::Blob,
                    };
                    builder.insert(name, *oid, i32::from(mode))?;
                }
                None if existing.is_some() => builder.remove(name)?,
                None => {}
            }
            continue;
        }
        let sub_base = match existing {
            Some((id, Some(ObjectType::Tree), _)) => Some(repo.find_tree(id)?),
            _ => None,
        };
        match edit_tree(repo, sub_base.as_ref(), &group)? {
            Some(oid) => {
                builder.insert(name, oid, i32::from(git2::FileMode::Tree))?;
            }
            None if existing.is_some() => builder.remove(name)?,
            None => {}
        }
    }
    if builder.is_empty() {
        return Ok(None);
    }
    Ok(Some(builder.write()?))
}
