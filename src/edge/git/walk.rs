//! Which files of a commit are spec files: the walk under the rollouts folder, what `.canarydignore` leaves out, and how much is read.

use git2::{ObjectType, Oid, Tree};

use super::error::GitError;
use super::mirror::Mirror;
use super::tree::{Unread, blob_text};

/// Name of the file that lists paths to skip when walking a directory (one per line,
/// relative to that directory; `#` starts a comment). `examples/` uses it to keep its
/// deliberately invalid specs out of `canaryd lint examples/`.
///
/// Read in commits by [`Mirror::spec_files`] and on disk by `repo`, which takes the name from
/// here: `repo` depends on `git`, never the other way round.
pub const IGNORE_FILE: &str = ".canarydignore";
/// At most this many spec files are read at one commit; the rest are reported as skipped.
/// Room for 10,000 rollouts (the scale the daemon is measured at) with their routers and
/// templates beside them.
pub const MAX_SPEC_FILES: usize = 50_000;
/// Trees nested deeper than this under the rollouts folder are not read.
const MAX_DEPTH: usize = 64;

/// The spec files at one commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecFiles {
    /// (repository-relative path, text), sorted by path.
    pub files: Vec<(String, String)>,
    /// (repository-relative path, why it was not read).
    pub skipped: Vec<(String, String)>,
}

/// Walks a tree of spec files for [`Mirror::spec_files`].
pub(super) struct SpecWalk<'a> {
    pub(super) mirror: &'a Mirror,
    pub(super) ignore: &'a [String],
    pub(super) out: &'a mut SpecFiles,
    pub(super) full: bool,
}

impl SpecWalk<'_> {
    pub(super) fn tree(
        &mut self,
        tree: &Tree<'_>,
        prefix: &str,
        depth: usize,
    ) -> Result<(), GitError> {
        let m = self.mirror;
        for entry in tree.iter() {
            if self.full {
                return Ok(());
            }
            let Ok(name) = std::str::from_utf8(entry.name_bytes()) else {
                let path = join(prefix, &String::from_utf8_lossy(entry.name_bytes()));
                self.out
                    .skipped
                    .push((path, "its name is not UTF-8".into()));
                continue;
            };
            let path = join(prefix, name);
            if name.starts_with('.') || self.ignore.iter().any(|i| under(&path, i)) {
                continue;
            }
            match entry.kind() {
                Some(ObjectType::Tree) if depth < MAX_DEPTH => {
                    let sub = m
                        .repo
                        .find_tree(entry.id())
                        .map_err(m.repo_err("read tree"))?;
                    self.tree(&sub, &path, depth + 1)?;
                }
                Some(ObjectType::Tree) => {
                    self.out
                        .skipped
                        .push((path, "folders nest too deep".into()));
                }
                Some(ObjectType::Blob) if name.ends_with(".yaml") || name.ends_with(".yml") => {
                    self.blob(entry.id(), entry.filemode(), path)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn blob(&mut self, id: Oid, mode: i32, path: String) -> Result<(), GitError> {
        if self.out.files.len() >= MAX_SPEC_FILES {
            self.full = true;
            let why = format!("more than {MAX_SPEC_FILES} spec files; the rest are not read");
            self.out.skipped.push((path, why));
            return Ok(());
        }
        if mode == i32::from(git2::FileMode::Link) {
            self.out
                .skipped
                .push((path, "it is a symbolic link".into()));
            return Ok(());
        }
        match blob_text(&self.mirror.repo, id) {
            Ok(text) => self.out.files.push((path, text)),
            Err(Unread::Git(e)) => return Err(self.mirror.repo_err("read blob")(e)),
            Err(why) => self.out.skipped.push((path, why.to_string())),
        }
        Ok(())
    }
}

pub(super) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Whether `path` is `prefix` or inside the folder `prefix`.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Repository-relative prefixes that `.canarydignore` (at `dir`) lists: each line both
/// relative to `dir` and as written.
pub(super) fn ignore_list(text: &str, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let line = line.trim_start_matches("./").trim_matches('/');
        if line.is_empty() {
            continue;
        }
        out.push(join(dir, line));
        if !dir.is_empty() {
            out.push(line.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_lines_match_paths_and_folders() {
        let list = ignore_list("# c\ndrafts/\nrollouts/old.yaml # x\n\n", "rollouts");
        assert!(list.iter().any(|i| under("rollouts/drafts/a.yaml", i)));
        assert!(list.iter().any(|i| under("rollouts/old.yaml", i)));
        assert!(!list.iter().any(|i| under("rollouts/drafts2.yaml", i)));
    }
}
