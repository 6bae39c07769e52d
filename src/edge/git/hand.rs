//! Repositories by path, outside the mirror: played by hand for `canaryd demo`, the CLI and the benchmarks, and a status branch read for `canaryd status`.
//
// A repository played by hand: `canaryd demo` and the benchmarks act as the team with these
// (commit a spec as a merged pull request would, merge a branch by moving `main`, read a log).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use git2::{AutotagOption, Commit, FetchOptions, Oid, Repository};

use super::auth::{GitAuth, Session};
use super::error::{Cause, GitError, redact};
use super::mirror::MAX_HISTORY_WALK;
use super::names::{check_branch, is_url, split_path, tracking};
use super::tree::{TreeEdit, edit_tree, group_status_map, status_map};
use super::{Author, signature};

/// For `canaryd status`: the status files (rollout → YAML) of `status_branch` at `source`.
/// A local repository path is read in place (`refs/heads/<b>`, else
/// `refs/remotes/origin/<b>`); a URL is fetched into a temporary bare repository under
/// `scratch`, removed afterwards. A branch that does not exist is [`GitError::NotFound`].
pub fn read_status_branch(
    source: &str,
    status_branch: &str,
    scratch: &Path,
) -> Result<BTreeMap<String, String>, GitError> {
    read_status_branch_as(source, status_branch, scratch, &GitAuth::default())
}

/// [`read_status_branch`] with credentials for a remote `source`.
pub fn read_status_branch_as(
    source: &str,
    status_branch: &str,
    scratch: &Path,
    auth: &GitAuth,
) -> Result<BTreeMap<String, String>, GitError> {
    read_status_commit(source, status_branch, scratch, auth, status_map)
}

/// Name → YAML text of status files.
pub type Files = BTreeMap<String, String>;

/// For `canaryd status`: the rollouts' status files and the groups' (group → YAML of
/// `status/groups/<group>.yaml`) of `status_branch` at `source`, read as
/// [`read_status_branch_as`] reads them.
pub fn read_status_tree_as(
    source: &str,
    status_branch: &str,
    scratch: &Path,
    auth: &GitAuth,
) -> Result<(Files, Files), GitError> {
    read_status_commit(
        source,
        status_branch,
        scratch,
        auth,
        |repo, commit, place| {
            Ok((
                status_map(repo, commit, place)?,
                group_status_map(repo, commit, place)?,
            ))
        },
    )
}

/// `read` of the tip of `status_branch` at `source` (see [`read_status_branch`]).
fn read_status_commit<T>(
    source: &str,
    status_branch: &str,
    scratch: &Path,
    auth: &GitAuth,
    read: impl FnOnce(&Repository, &Commit<'_>, &Path) -> Result<T, GitError>,
) -> Result<T, GitError> {
    check_branch(status_branch)?;
    let not_found = || GitError::NotFound {
        what: "branch",
        name: status_branch.to_string(),
        place: redact(source),
    };
    if !is_url(source) {
        let path = Path::new(source);
        let repo = Repository::open(path).map_err(|e| GitError::Open {
            path: path.to_path_buf(),
            source: Cause::new(&e, None),
        })?;
        let tip = [
            format!("refs/heads/{status_branch}"),
            tracking(status_branch),
        ]
        .iter()
        .find_map(|r| repo.refname_to_id(r).ok())
        .ok_or_else(not_found)?;
        let commit = repo.find_commit(tip).map_err(|e| GitError::Repo {
            op: "read commit",
            path: path.to_path_buf(),
            source: Cause::new(&e, None),
        })?;
        return read(&repo, &commit, path);
    }
    let dir = ScratchDir::new(scratch);
    let git = |op| {
        let path = dir.0.clone();
        move |e: git2::Error| GitError::Repo {
            op,
            path: path.clone(),
            source: Cause::new(&e, None),
        }
    };
    let repo = Repository::init_bare(&dir.0).map_err(git("init"))?;
    let mut remote = repo
        .remote_anonymous(source)
        .map_err(git("remote configuration"))?;
    let session = Session::new(auth, source, git2::Config::open_default().ok());
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(session.callbacks())
        .download_tags(AutotagOption::None);
    let spec = format!("+refs/heads/{status_branch}:{}", tracking(status_branch));
    remote
        .fetch(&[spec], Some(&mut opts), None)
        .map_err(|e| GitError::Remote {
            op: "fetch from",
            url: redact(source),
            source: session.cause(&e),
        })?;
    let tip = repo
        .refname_to_id(&tracking(status_branch))
        .map_err(|_| not_found())?;
    let commit = repo.find_commit(tip).map_err(git("read commit"))?;
    read(&repo, &commit, &dir.0)
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(parent: &Path) -> ScratchDir {
        let nanos = crate::edge::clock::system_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = parent.join(format!("canaryd-status-{}-{nanos}", std::process::id()));
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_at(path: &Path) -> Result<Repository, GitError> {
    Repository::open(path).map_err(|e| GitError::Open {
        path: path.to_path_buf(),
        source: Cause::new(&e, None),
    })
}

fn local_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(git2::Error) -> GitError + 'a {
    move |e| GitError::Repo {
        op,
        path: path.to_path_buf(),
        source: Cause::new(&e, None),
    }
}

/// Creates a bare repository at `path` whose `HEAD` names `branch`.
pub fn init_bare(path: &Path, branch: &str) -> Result<(), GitError> {
    check_branch(branch)?;
    let repo = Repository::init_bare(path).map_err(local_err(path, "init"))?;
    repo.set_head(&format!("refs/heads/{branch}"))
        .map_err(local_err(path, "set HEAD"))
}

/// Commits `files` (repository path → text; `None` deletes) onto `branch` of the repository
/// at `path`, creating the branch if needed. A work tree, if any, is not touched.
pub fn commit_files(
    path: &Path,
    branch: &str,
    files: &BTreeMap<String, Option<String>>,
    message: &str,
    author: &Author,
) -> Result<String, GitError> {
    check_branch(branch)?;
    let repo = open_at(path)?;
    let refname = format!("refs/heads/{branch}");
    let parent = match repo.find_reference(&refname) {
        Ok(r) => Some(r.peel_to_commit().map_err(local_err(path, "read branch"))?),
        Err(_) => None,
    };
    let base = match &parent {
        Some(c) => Some(c.tree().map_err(local_err(path, "read tree"))?),
        None => None,
    };
    let mut owned: Vec<(Vec<&str>, Option<Oid>)> = Vec::new();
    for (file, text) in files {
        let blob = match text {
            Some(t) => Some(
                repo.blob(t.as_bytes())
                    .map_err(local_err(path, "write blob"))?,
            ),
            None => None,
        };
        owned.push((split_path(file)?, blob));
    }
    let edits: Vec<(&[&str], Option<Oid>)> =
        owned.iter().map(|(p, b)| (p.as_slice(), *b)).collect();
    let tree = match edit_tree(&repo, base.as_ref(), &edits) {
        Ok(Some(t)) => t,
        Ok(None) => repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .map_err(local_err(path, "write tree"))?,
        Err(TreeEdit::Git(e)) => return Err(local_err(path, "write tree")(e)),
        Err(TreeEdit::Conflict(name)) => {
            return Err(GitError::Invalid {
                what: "path",
                name,
                reason: "is both a file and a folder in one commit",
            });
        }
    };
    let tree = repo.find_tree(tree).map_err(local_err(path, "read tree"))?;
    let sig = signature(author).map_err(local_err(path, "sign commit"))?;
    let parents: Vec<&Commit<'_>> = parent.iter().collect();
    let id = repo
        .commit(Some(&refname), &sig, &sig, message, &tree, &parents)
        .map_err(local_err(path, "commit"))?;
    Ok(id.to_string())
}

/// The commit `branch` points at in the repository at `path`.
pub fn branch_tip(path: &Path, branch: &str) -> Result<String, GitError> {
    let repo = open_at(path)?;
    let commit = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .and_then(|r| r.peel_to_commit())
        .map_err(|_| GitError::NotFound {
            what: "branch",
            name: branch.to_string(),
            place: path.display().to_string(),
        })?;
    Ok(commit.id().to_string())
}

/// The commit `HEAD` points at in the repository at `path`.
pub fn head_commit(path: &Path) -> Result<String, GitError> {
    let repo = open_at(path)?;
    let commit = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|_| GitError::NoBranch {
            path: path.to_path_buf(),
        })?;
    Ok(commit.id().to_string())
}

/// Every gate commit on the first-parent history of `HEAD` in the checkout at `path` (at most
/// `limit` commits walked), by rollout, oldest first: what `canaryd plan` honours, as the
/// daemon does from its mirror. None when `path` is no repository or has no commit yet.
pub fn gates_at_head(
    path: &Path,
    limit: usize,
) -> Result<BTreeMap<String, Vec<super::GateCommit>>, GitError> {
    let repo = match Repository::open(path) {
        Ok(repo) => repo,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(GitError::Open {
                path: path.to_path_buf(),
                source: Cause::new(&e, None),
            });
        }
    };
    let head = match repo.head() {
        Ok(head) => head,
        Err(e)
            if matches!(
                e.code(),
                git2::ErrorCode::UnbornBranch | git2::ErrorCode::NotFound
            ) =>
        {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(local_err(path, "read HEAD")(e)),
    };
    let mut current = Some(
        head.peel_to_commit()
            .map_err(local_err(path, "read HEAD"))?,
    );
    let mut out: BTreeMap<String, Vec<super::GateCommit>> = BTreeMap::new();
    let mut walked = 0;
    while let Some(c) = current {
        if walked >= limit {
            break;
        }
        walked += 1;
        for (rollout, gate) in super::gate::any_gate(&c) {
            out.entry(rollout).or_default().push(gate);
        }
        current = c.parent(0).ok();
    }
    for gates in out.values_mut() {
        gates.reverse();
    }
    Ok(out)
}

/// Points `branch` at `commit` (a fast-forward merge when `commit` descends from it).
pub fn set_branch(path: &Path, branch: &str, commit: &str) -> Result<(), GitError> {
    check_branch(branch)?;
    let repo = open_at(path)?;
    let oid = Oid::from_str(commit).map_err(local_err(path, "parse commit id"))?;
    repo.reference(&format!("refs/heads/{branch}"), oid, true, "merge")
        .map_err(local_err(path, "move branch"))?;
    Ok(())
}

/// The text of `file` at `commit` in the repository at `path`; `None` when absent.
pub fn file_at_commit(path: &Path, commit: &str, file: &str) -> Result<Option<String>, GitError> {
    let repo = open_at(path)?;
    let oid = Oid::from_str(commit).map_err(local_err(path, "parse commit id"))?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(local_err(path, "read commit"))?;
    let Ok(entry) = tree.get_path(Path::new(file)) else {
        return Ok(None);
    };
    let blob = repo
        .find_blob(entry.id())
        .map_err(local_err(path, "read blob"))?;
    Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
}

/// `git log --oneline [-- file]` of `branch`, newest first, at most `limit` lines
/// (first-parent history; a commit counts for `file` when it changed the file's blob).
pub fn log(
    path: &Path,
    branch: &str,
    file: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, GitError> {
    let repo = open_at(path)?;
    let tip = branch_tip(path, branch)?;
    let mut walk = repo.revwalk().map_err(local_err(path, "walk"))?;
    walk.simplify_first_parent()
        .map_err(local_err(path, "walk"))?;
    walk.push(Oid::from_str(&tip).map_err(local_err(path, "parse commit id"))?)
        .map_err(local_err(path, "walk"))?;
    let blob_of = |c: &Commit<'_>, f: &str| {
        c.tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(f)).ok())
            .map(|e| e.id())
    };
    let mut lines = Vec::new();
    for oid in walk.take(MAX_HISTORY_WALK) {
        if lines.len() >= limit {
            break;
        }
        let oid = oid.map_err(local_err(path, "walk"))?;
        let commit = repo
            .find_commit(oid)
            .map_err(local_err(path, "read commit"))?;
        if let Some(f) = file {
            let before = commit.parent(0).ok().and_then(|p| blob_of(&p, f));
            if blob_of(&commit, f) == before {
                continue;
            }
        }
        let id = oid.to_string();
        lines.push(format!(
            "{} {}",
            &id[..12.min(id.len())],
            commit.summary().unwrap_or_default()
        ));
    }
    Ok(lines)
}

/// Where to read `status_branch` from for a `--repo` given as `source`: a URL as it is; a local
/// repository that has the branch (the remote itself, or a clone that checked it out) as it is;
/// else the URL of the local clone's `origin`, which has it (a CI checkout holds only the
/// branch it built). A path that is not a repository is returned as it is, for the fetch to
/// report.
pub fn status_source(source: &str, status_branch: &str) -> String {
    if is_url(source) {
        return source.to_string();
    }
    let Ok(repo) = Repository::open(source) else {
        return source.to_string();
    };
    if repo
        .refname_to_id(&format!("refs/heads/{status_branch}"))
        .is_ok()
    {
        return source.to_string();
    }
    repo.find_remote("origin")
        .ok()
        .and_then(|r| r.url().map(str::to_string))
        .unwrap_or_else(|| source.to_string())
}
