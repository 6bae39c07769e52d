//! The daemon's bare mirror of the remote: fetch, spec and status files, file history, gates, status commits, revert branches, and its stale locks.
//
// The mirror is the daemon's alone (it holds its data dir's lock), and the daemon runs one Git
// operation at a time, so a `*.lock` file met in the mirror was left by a process that died
// between creating it and renaming it over the ref: it is stale. The daemon clears them at
// start (`clear_stale_locks`), and a ref update that meets one clears them and tries once more.
// The refs staged under `refs/canaryd/` are written afresh by every use; leftovers are dropped
// when the mirror is opened. The remote is the truth: nothing in the mirror is trusted that the
// next fetch does not write again.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use git2::{AutotagOption, Commit, ErrorCode, FetchOptions, ObjectType, Oid, Repository, Tree};

use super::auth::{GitAuth, Session};
use super::error::{Cause, GitError, redact};
use super::gate::{GateCommit, any_gate, gate_of};
use super::names::{
    ORIGIN, check_branch, check_rollout, local_path, normalize_dir, split_path, tracking,
};
use super::push::{Pushed, push_ref};
use super::tree::{
    Edit, STATUS_DIR, TreeEdit, Unread, blob_text, edit_tree, status_entries, status_map,
};
use super::walk::{IGNORE_FILE, SpecFiles, SpecWalk, ignore_list, join};
use super::{Author, signature};

/// `file_history` looks at no more than this many commits, whatever its `limit`.
pub const MAX_HISTORY_WALK: usize = 100_000;
/// Where canaryd stages the refs it fetches and pushes, in the mirror.
const STAGING: &str = "refs/canaryd/";

/// Fault injection for the crash tests (`canaryd run --exit-after-status-push`, hidden): when
/// set, the process aborts right after a status push succeeds, before the staged ref is deleted
/// and the local copy of the status branch is moved.
static ABORT_AFTER_STATUS_PUSH: AtomicBool = AtomicBool::new(false);

/// Makes every later successful status push abort the process at once. For tests only.
#[doc(hidden)]
pub fn abort_after_status_push() {
    ABORT_AFTER_STATUS_PUSH.store(true, Ordering::Relaxed);
}

/// Where the daemon reads specs from and writes status to.
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    /// The watched branch, e.g. `main`.
    pub branch: String,
    /// The branch status files are committed to, e.g. `canaryd/status`.
    pub status_branch: String,
    /// Folder of the spec files inside the repository, e.g. `rollouts` (`""` or `.` for the root).
    pub rollouts_dir: String,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &redact(&self.url))
            .field("branch", &self.branch)
            .field("status_branch", &self.status_branch)
            .field("rollouts_dir", &self.rollouts_dir)
            .finish()
    }
}

/// Tips of the two branches after a fetch; `None` when the remote has no such branch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heads {
    /// The watched branch.
    pub spec: Option<String>,
    /// The status branch (absent until the first status commit).
    pub status: Option<String>,
}

/// Outcome of [`Mirror::commit_status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    /// The new status commit is on the remote.
    Pushed(String),
    /// The status files already say this; nothing was committed.
    Unchanged,
    /// The remote branch moved since the last fetch: fetch, re-plan and call again.
    Rejected,
}

/// Outcome of [`Mirror::ensure_revert_branch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevertBranch {
    Created(String),
    /// The remote already had the branch (its tip); it was left as it was.
    Existed(String),
}

/// The daemon's own bare clone of the remote, in its data directory. One `Mirror` at a time
/// uses a directory (the daemon holds its data dir's lock): a lock file met in it is stale.
pub struct Mirror {
    pub(super) repo: Repository,
    dir: PathBuf,
    remote: Remote,
    rollouts_dir: String,
    author: Author,
    auth: GitAuth,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("dir", &self.dir)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

// The daemon moves a `Mirror` into `spawn_blocking`.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Mirror>();
};

impl Mirror {
    /// Opens or creates the bare mirror at `dir` (e.g. `<data_dir>/mirror.git`) for `remote`;
    /// updates the origin URL if it changed, and drops the refs a fetch or push interrupted by
    /// a crash left staged.
    pub fn open(dir: &Path, remote: Remote, author: Author) -> Result<Mirror, GitError> {
        check_branch(&remote.branch)?;
        check_branch(&remote.status_branch)?;
        let rollouts_dir = normalize_dir(&remote.rollouts_dir)?;
        let open_err = |e: git2::Error| GitError::Open {
            path: dir.to_path_buf(),
            source: Cause::new(&e, None),
        };
        let repo = match Repository::open_bare(dir) {
            Ok(repo) => repo,
            Err(e) if e.code() == ErrorCode::NotFound => {
                Repository::init_bare(dir).map_err(open_err)?
            }
            Err(e) => return Err(open_err(e)),
        };
        let mirror = Mirror {
            repo,
            dir: dir.to_path_buf(),
            remote,
            rollouts_dir,
            author,
            auth: GitAuth::default(),
        };
        let url = mirror.remote.url.as_str();
        let repo = &mirror.repo;
        match repo.find_remote(ORIGIN) {
            Ok(r) if r.url() == Some(url) => {}
            Ok(_) => mirror
                .unlocked(|| repo.remote_set_url(ORIGIN, url))
                .map_err(mirror.repo_err("remote configuration"))?,
            Err(_) => {
                // No configured fetch refspec: fetches name exactly the refs they want, and
                // libgit2's opportunistic updates of `refs/remotes/origin/*` stay out of it.
                mirror
                    .unlocked(|| repo.remote(ORIGIN, url).map(drop))
                    .map_err(mirror.repo_err("remote configuration"))?;
                mirror
                    .unlocked(|| {
                        repo.config()?
                            .remove_multivar(&format!("remote.{ORIGIN}.fetch"), ".*")
                    })
                    .map_err(mirror.repo_err("remote configuration"))?;
            }
        }
        // Each use writes its staged ref afresh; a leftover only keeps its commit alive.
        let staged: Vec<String> = repo
            .references_glob(&format!("{STAGING}*"))
            .map_err(mirror.repo_err("read refs"))?
            .filter_map(|r| r.ok()?.name().map(str::to_string))
            .collect();
        for name in staged {
            tracing::warn!(
                reference = %name,
                "dropped a ref left staged in the git mirror by an interrupted fetch or push"
            );
            mirror.delete_ref(&name)?;
        }
        Ok(mirror)
    }

    /// Authenticates to the remote with `auth` from now on (by default: git's credential
    /// helpers, ssh-agent, and libgit2's check of `~/.ssh/known_hosts`).
    pub fn with_auth(mut self, auth: GitAuth) -> Mirror {
        self.auth = auth;
        self
    }

    /// Fetches the watched branch and the status branch into `refs/remotes/origin/*` and
    /// returns their tips. A branch the remote does not have (normal for the status branch
    /// before the first status commit) is `None`, and a stale local copy of it is pruned.
    pub fn fetch(&self) -> Result<Heads, GitError> {
        let (spec, status) = (&self.remote.branch, &self.remote.status_branch);
        let tips =
            self.fetch_refs(&[format!("refs/heads/{spec}"), format!("refs/heads/{status}")])?;
        for (branch, tip) in [spec, status].into_iter().zip(&tips) {
            match tip {
                Some(oid) => self.set_ref(&tracking(branch), *oid, "canaryd: fetch")?,
                None => self.delete_ref(&tracking(branch))?,
            }
        }
        let id = |tip: &Option<Oid>| tip.map(|o| o.to_string());
        Ok(Heads {
            spec: id(&tips[0]),
            status: id(&tips[1]),
        })
    }

    /// The spec files at `commit`: every `*.yaml`/`*.yml` blob under the rollouts folder,
    /// recursively, skipping hidden entries and what its `.canarydignore` lists (each line a
    /// path or folder, relative to the rollouts folder as `canaryd lint` reads it, or
    /// repository-relative; `#` starts a comment). Symbolic links, files over 1 MiB and text
    /// that is not UTF-8 are listed in `skipped`, as is anything past
    /// [`MAX_SPEC_FILES`](super::MAX_SPEC_FILES).
    pub fn spec_files(&self, commit: &str) -> Result<SpecFiles, GitError> {
        let c = self.commit(commit)?;
        let root = c.tree().map_err(self.repo_err("read tree"))?;
        let mut out = SpecFiles::default();
        let tree = if self.rollouts_dir.is_empty() {
            root
        } else {
            match root.get_path(Path::new(&self.rollouts_dir)) {
                Ok(e) if e.kind() == Some(ObjectType::Tree) => self
                    .repo
                    .find_tree(e.id())
                    .map_err(self.repo_err("read tree"))?,
                _ => return Ok(out),
            }
        };
        let ignore = match tree.get_name(IGNORE_FILE) {
            Some(e) => {
                let path = join(&self.rollouts_dir, IGNORE_FILE);
                let text = self.blob_text(e.id(), &path, commit)?;
                ignore_list(&text, &self.rollouts_dir)
            }
            None => Vec::new(),
        };
        let mut walk = SpecWalk {
            mirror: self,
            ignore: &ignore,
            out: &mut out,
            full: false,
        };
        walk.tree(&tree, &self.rollouts_dir, 0)?;
        out.files.sort();
        Ok(out)
    }

    /// The full id of `rev` (a full or abbreviated commit id, or a ref) as last fetched.
    pub fn resolve(&self, rev: &str) -> Result<String, GitError> {
        self.commit(rev).map(|c| c.id().to_string())
    }

    /// Whether `commit` is `ancestor` or comes after it; `false` when either is unknown here.
    pub fn descends(&self, commit: &str, ancestor: &str) -> bool {
        let (Ok(c), Ok(a)) = (self.commit(commit), self.commit(ancestor)) else {
            return false;
        };
        c.id() == a.id()
            || self
                .repo
                .graph_descendant_of(c.id(), a.id())
                .unwrap_or(false)
    }

    /// The id of the rollouts folder's tree at `commit` (`None`: no such folder): what the
    /// specs there are cached by, so a commit that touches no spec (a gate commit, a README)
    /// is not read and validated again.
    pub fn spec_tree(&self, commit: &str) -> Result<Option<String>, GitError> {
        let c = self.commit(commit)?;
        let root = c.tree().map_err(self.repo_err("read tree"))?;
        if self.rollouts_dir.is_empty() {
            return Ok(Some(root.id().to_string()));
        }
        Ok(match root.get_path(Path::new(&self.rollouts_dir)) {
            Ok(e) if e.kind() == Some(ObjectType::Tree) => Some(e.id().to_string()),
            _ => None,
        })
    }

    /// The id of the `status/` tree at the status branch tip as last fetched (`None`: no
    /// branch or no folder): when it has not moved, no status file has.
    pub fn status_tree(&self) -> Result<Option<String>, GitError> {
        let Some(tip) = self.status_tip()? else {
            return Ok(None);
        };
        let root = tip.tree().map_err(self.repo_err("read tree"))?;
        Ok(root
            .get_name(super::tree::STATUS_DIR)
            .filter(|e| e.kind() == Some(ObjectType::Tree))
            .map(|e| e.id().to_string()))
    }

    /// Text of the file at `path` (repository-relative) at `commit`; `None` if there is no
    /// file there. A file over 1 MiB or not UTF-8 is an error.
    pub fn file_at(&self, commit: &str, path: &str) -> Result<Option<String>, GitError> {
        let c = self.commit(commit)?;
        let tree = c.tree().map_err(self.repo_err("read tree"))?;
        match tree.get_path(Path::new(path)) {
            Ok(e) if e.kind() == Some(ObjectType::Blob) => {
                self.blob_text(e.id(), path, commit).map(Some)
            }
            Ok(_) => Ok(None),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.repo_err("read tree")(e)),
        }
    }

    /// First-parent history from `head`, newest first, of the commits that changed `path`
    /// (added, modified or deleted it): at most `limit` of them, as (commit id, first parent
    /// id or `None` for a root commit). Looks at no more than [`MAX_HISTORY_WALK`] commits.
    pub fn file_history(
        &self,
        head: &str,
        path: &str,
        limit: usize,
    ) -> Result<Vec<(String, Option<String>)>, GitError> {
        if path.is_empty() {
            return Err(GitError::Invalid {
                what: "path",
                name: path.to_string(),
                reason: "it is empty",
            });
        }
        let mut out = Vec::new();
        let mut current = Some(self.commit(head)?);
        let mut walked = 0;
        while let Some(c) = current {
            if out.len() >= limit || walked >= MAX_HISTORY_WALK {
                break;
            }
            walked += 1;
            let parent = if c.parent_count() > 0 {
                Some(c.parent(0).map_err(self.repo_err("read commit"))?)
            } else {
                None
            };
            let here = self.entry_id(&c, path)?;
            let before = match &parent {
                Some(p) => self.entry_id(p, path)?,
                None => None,
            };
            if here != before {
                out.push((
                    c.id().to_string(),
                    parent.as_ref().map(|p| p.id().to_string()),
                ));
            }
            current = parent;
        }
        Ok(out)
    }

    /// The status files at the status branch tip as last fetched (or pushed): rollout name →
    /// YAML text of `status/<name>.yaml`. Empty if the branch does not exist.
    pub fn status_files(&self) -> Result<BTreeMap<String, String>, GitError> {
        match self.status_tip()? {
            Some(c) => status_map(&self.repo, &c, &self.dir),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Like [`Mirror::status_files`], reading only the files whose blob differs from the one
    /// `known` gives (rollout → blob id): rollout → (blob id, text when read).
    #[allow(clippy::type_complexity)]
    pub fn status_files_changed(
        &self,
        known: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, (String, Option<String>)>, GitError> {
        match self.status_tip()? {
            Some(c) => status_entries(&self.repo, &c, &self.dir, known),
            None => Ok(BTreeMap::new()),
        }
    }

    /// The status branch's tip as last fetched (or pushed), if the branch exists.
    fn status_tip(&self) -> Result<Option<Commit<'_>>, GitError> {
        self.tracking_tip(&self.remote.status_branch)?
            .map(|tip| self.repo.find_commit(tip))
            .transpose()
            .map_err(self.repo_err("read commit"))
    }

    /// Commits `changes` (rollout → new YAML, or `None` to delete its status file) on top of
    /// the fetched status branch tip (a root commit if there is none) with `message`, and
    /// pushes it without force. `Unchanged` if the files already say this; `Rejected` if the
    /// remote branch moved since the fetch. On success the local copy of the status branch is
    /// moved too, so [`Mirror::status_files`] reflects the commit without a fetch.
    pub fn commit_status(
        &self,
        changes: &BTreeMap<String, Option<String>>,
        message: &str,
    ) -> Result<Push, GitError> {
        self.commit_status_chain(&[(changes.clone(), message.to_string())])
    }

    /// Like [`Mirror::commit_status`] for several commits: each of `commits` (changes,
    /// message) on top of the one before, the whole chain pushed at once. A commit that would
    /// change nothing is left out of the chain; `Unchanged` if all are.
    pub fn commit_status_chain(
        &self,
        commits: &[(BTreeMap<String, Option<String>>, String)],
    ) -> Result<Push, GitError> {
        let mut parent = self.status_tip()?;
        let mut tip = None;
        for (changes, message) in commits {
            let mut edits = Vec::new();
            for (rollout, text) in changes {
                // A group's status file lives in `status/groups/` (the rollout list skips it).
                check_rollout(rollout.strip_prefix("groups/").unwrap_or(rollout))?;
                edits.push((
                    format!("{STATUS_DIR}/{rollout}.yaml"),
                    text.as_deref().map(str::as_bytes),
                ));
            }
            let base_tree = match &parent {
                Some(c) => Some(c.tree().map_err(self.repo_err("read tree"))?),
                None => None,
            };
            let tree = self.edited_tree(base_tree.as_ref(), &edits)?;
            let same = match &base_tree {
                Some(base) => base.id() == tree,
                // Deleting from a branch that does not exist yet makes no root commit.
                None => self
                    .repo
                    .find_tree(tree)
                    .map_err(self.repo_err("read tree"))?
                    .is_empty(),
            };
            if same {
                continue;
            }
            let commit = self.make_commit(tree, parent.as_ref(), message)?;
            tip = Some(commit);
            parent = Some(
                self.repo
                    .find_commit(commit)
                    .map_err(self.repo_err("read commit"))?,
            );
        }
        let Some(commit) = tip else {
            return Ok(Push::Unchanged);
        };
        let dst = format!("refs/heads/{}", self.remote.status_branch);
        match self.push_commit(commit, &dst)? {
            Pushed::Rejected => Ok(Push::Rejected),
            Pushed::Done => {
                let local = tracking(&self.remote.status_branch);
                self.set_ref(&local, commit, "canaryd: status pushed")?;
                Ok(Push::Pushed(commit.to_string()))
            }
        }
    }

    /// Promote/abort gate commits for `rollout` on the first-parent history from `head`,
    /// oldest first. The walk stops before `stop_at` (the last gate already honoured; an id
    /// the mirror does not know never matches) or after `limit` commits. A gate commit's
    /// message ends in the trailers `Canaryd-Gate: promote|abort`, `Rollout: <name>` and
    /// `Revision: <rev>` (keys compared without case).
    pub fn gates(
        &self,
        head: &str,
        rollout: &str,
        stop_at: Option<&str>,
        limit: usize,
    ) -> Result<Vec<GateCommit>, GitError> {
        let stop = stop_at.and_then(|s| self.commit(s).ok()).map(|c| c.id());
        let mut out = Vec::new();
        let mut current = Some(self.commit(head)?);
        let mut walked = 0;
        while let Some(c) = current {
            if walked >= limit || Some(c.id()) == stop {
                break;
            }
            walked += 1;
            if let Some(gate) = gate_of(&c, rollout) {
                out.push(gate);
            }
            current = if c.parent_count() > 0 {
                Some(c.parent(0).map_err(self.repo_err("read commit"))?)
            } else {
                None
            };
        }
        out.reverse();
        Ok(out)
    }

    /// Every gate commit on the first-parent history from `head` (at most `limit` commits
    /// walked), by rollout, oldest first: one walk for all rollouts.
    pub fn all_gates(
        &self,
        head: &str,
        limit: usize,
    ) -> Result<BTreeMap<String, Vec<GateCommit>>, GitError> {
        let mut out: BTreeMap<String, Vec<GateCommit>> = BTreeMap::new();
        let mut current = Some(self.commit(head)?);
        let mut walked = 0;
        while let Some(c) = current {
            if walked >= limit {
                break;
            }
            walked += 1;
            for (rollout, gate) in any_gate(&c) {
                out.entry(rollout).or_default().push(gate);
            }
            current = if c.parent_count() > 0 {
                Some(c.parent(0).map_err(self.repo_err("read commit"))?)
            } else {
                None
            };
        }
        for gates in out.values_mut() {
            gates.reverse();
        }
        Ok(out)
    }

    /// Ensures the branch `name` exists on the remote. If the remote already has it (asked of
    /// the remote itself, so this holds across restarts) its tip is returned untouched.
    /// Otherwise makes one commit on top of `base` (a commit of the watched branch) that sets
    /// each path of `restore` to its text, or deletes it for `None`, and pushes it without
    /// force. Losing a race to another writer of the same branch is `Existed` too.
    pub fn ensure_revert_branch(
        &self,
        name: &str,
        base: &str,
        restore: &BTreeMap<String, Option<String>>,
        message: &str,
    ) -> Result<RevertBranch, GitError> {
        check_branch(name)?;
        if name == self.remote.branch || name == self.remote.status_branch {
            return Err(GitError::Invalid {
                what: "revert branch",
                name: name.to_string(),
                reason: "it is the watched or the status branch",
            });
        }
        let dst = format!("refs/heads/{name}");
        if let Some(tip) = self.remote_tip(&dst)? {
            return Ok(RevertBranch::Existed(tip.to_string()));
        }
        let base = self.commit(base)?;
        let base_tree = base.tree().map_err(self.repo_err("read tree"))?;
        let edits: Vec<(String, Option<&[u8]>)> = restore
            .iter()
            .map(|(path, text)| (path.clone(), text.as_deref().map(str::as_bytes)))
            .collect();
        let tree = self.edited_tree(Some(&base_tree), &edits)?;
        let commit = self.make_commit(tree, Some(&base), message)?;
        match self.push_commit(commit, &dst)? {
            Pushed::Done => Ok(RevertBranch::Created(commit.to_string())),
            Pushed::Rejected => match self.remote_tip(&dst)? {
                Some(tip) => Ok(RevertBranch::Existed(tip.to_string())),
                None => Err(GitError::Rejected {
                    url: redact(&self.remote.url),
                    reference: dst,
                }),
            },
        }
    }

    // ---- helpers ----

    pub(super) fn repo_err(&self, op: &'static str) -> impl Fn(git2::Error) -> GitError + '_ {
        move |e| GitError::Repo {
            op,
            path: self.dir.clone(),
            source: Cause::new(&e, None),
        }
    }

    fn origin(&self) -> Result<git2::Remote<'_>, GitError> {
        self.repo
            .find_remote(ORIGIN)
            .map_err(self.repo_err("remote configuration"))
    }

    /// The commit named by `rev` (an id, or any revision the mirror can resolve).
    fn commit(&self, rev: &str) -> Result<Commit<'_>, GitError> {
        let by_id = Oid::from_str(rev)
            .ok()
            .and_then(|o| self.repo.find_commit(o).ok());
        by_id
            .or_else(|| {
                self.repo
                    .revparse_single(rev)
                    .and_then(|o| o.peel_to_commit())
                    .ok()
            })
            .ok_or_else(|| GitError::NotFound {
                what: "commit",
                name: rev.to_string(),
                place: format!("the mirror {}", self.dir.display()),
            })
    }

    fn tracking_tip(&self, branch: &str) -> Result<Option<Oid>, GitError> {
        self.ref_tip(&tracking(branch))
    }

    fn ref_tip(&self, name: &str) -> Result<Option<Oid>, GitError> {
        match self.repo.refname_to_id(name) {
            Ok(oid) => Ok(Some(oid)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.repo_err("read ref")(e)),
        }
    }

    /// Points the mirror's ref `name` at `oid`, whatever it pointed at.
    fn set_ref(&self, name: &str, oid: Oid, log: &str) -> Result<(), GitError> {
        self.unlocked(|| self.repo.reference(name, oid, true, log).map(drop))
            .map_err(self.repo_err("update ref"))
    }

    fn delete_ref(&self, name: &str) -> Result<(), GitError> {
        let delete = || match self.repo.find_reference(name) {
            Ok(mut r) => r.delete(),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        self.unlocked(delete).map_err(self.repo_err("delete ref"))
    }

    /// Runs `op`, a change to the mirror's refs or configuration. If a lock file is in its way,
    /// that lock is stale (see the top of this file): clears the mirror's locks and runs `op`
    /// once more.
    fn unlocked<T>(
        &self,
        mut op: impl FnMut() -> Result<T, git2::Error>,
    ) -> Result<T, git2::Error> {
        match op() {
            Err(e) if e.code() == ErrorCode::Locked && self.cleared_locks() => op(),
            other => other,
        }
    }

    /// Removes the mirror's lock files, met at run time (stale: see the top of this file);
    /// whether there were any.
    fn cleared_locks(&self) -> bool {
        match clear_stale_locks(&self.dir) {
            Ok(removed) => {
                for lock in &removed {
                    tracing::warn!(
                        lock = %lock.display(),
                        "removed a stale lock file from the git mirror"
                    );
                }
                !removed.is_empty()
            }
            Err(e) => {
                tracing::warn!(mirror = %self.dir.display(), "cannot clear stale lock files: {e}");
                false
            }
        }
    }

    /// The id of what `path` names in `commit`'s tree (blob or tree), `None` if nothing.
    fn entry_id(&self, commit: &Commit<'_>, path: &str) -> Result<Option<Oid>, GitError> {
        let tree = commit.tree().map_err(self.repo_err("read tree"))?;
        match tree.get_path(Path::new(path)) {
            Ok(e) => Ok(Some(e.id())),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.repo_err("read tree")(e)),
        }
    }

    fn blob_text(&self, id: Oid, path: &str, commit: &str) -> Result<String, GitError> {
        blob_text(&self.repo, id).map_err(|why| match why {
            Unread::Git(e) => self.repo_err("read blob")(e),
            other => GitError::Unreadable {
                path: path.to_string(),
                commit: commit.to_string(),
                reason: other.to_string(),
            },
        })
    }

    /// Writes the tree of `base` with `edits` applied (path → content, `None` deletes).
    fn edited_tree(
        &self,
        base: Option<&Tree<'_>>,
        edits: &[(String, Option<&[u8]>)],
    ) -> Result<Oid, GitError> {
        let mut blobs = Vec::new();
        for (path, content) in edits {
            let parts = split_path(path)?;
            let blob = match content {
                Some(bytes) => Some(self.repo.blob(bytes).map_err(self.repo_err("write blob"))?),
                None => None,
            };
            blobs.push((parts, blob));
        }
        let edits: Vec<Edit<'_>> = blobs.iter().map(|(p, b)| (p.as_slice(), *b)).collect();
        let written = edit_tree(&self.repo, base, &edits).map_err(|e| match e {
            TreeEdit::Git(e) => self.repo_err("write tree")(e),
            TreeEdit::Conflict(path) => GitError::Invalid {
                what: "path",
                name: path,
                reason: "it is both a file and a folder among the changes",
            },
        })?;
        match written {
            Some(oid) => Ok(oid),
            None => self
                .repo
                .treebuilder(None)
                .and_then(|b| b.write())
                .map_err(self.repo_err("write tree")),
        }
    }

    fn make_commit(
        &self,
        tree: Oid,
        parent: Option<&Commit<'_>>,
        message: &str,
    ) -> Result<Oid, GitError> {
        let sig = signature(&self.author).map_err(self.repo_err("commit"))?;
        let tree = self
            .repo
            .find_tree(tree)
            .map_err(self.repo_err("read tree"))?;
        let parents: Vec<&Commit<'_>> = parent.into_iter().collect();
        self.repo
            .commit(None, &sig, &sig, message, &tree, &parents)
            .map_err(self.repo_err("commit"))
    }

    /// Pushes `commit` to `dst` on the remote, without force.
    fn push_commit(&self, commit: Oid, dst: &str) -> Result<Pushed, GitError> {
        // libgit2 pushes references, not ids: stage the commit under our own namespace.
        let src = format!("{STAGING}outgoing/{}", dst.trim_start_matches("refs/"));
        self.set_ref(&src, commit, "canaryd: push")?;
        let result = push_ref(&self.repo, ORIGIN, &self.remote.url, &src, dst, &self.auth);
        if ABORT_AFTER_STATUS_PUSH.load(Ordering::Relaxed)
            && matches!(result, Ok(Pushed::Done))
            && dst == format!("refs/heads/{}", self.remote.status_branch)
        {
            std::process::abort();
        }
        self.delete_ref(&src)?;
        result
    }

    /// The tip of `refname` on the remote, asked of the remote itself.
    fn remote_tip(&self, refname: &str) -> Result<Option<Oid>, GitError> {
        Ok(self.fetch_refs(&[refname.to_string()])?.remove(0))
    }

    /// Fetches the remote refs `names` and returns their tips, `None` for those the remote
    /// does not have. Each lands in a staging ref first, so an absent ref is told apart
    /// from a stale local one. (`git2::Remote::list` would tell directly, but it aborts on
    /// the empty advertisement of an empty repository: it builds a slice from a null pointer.)
    fn fetch_refs(&self, names: &[String]) -> Result<Vec<Option<Oid>>, GitError> {
        // libgit2 calls a path that does not exist an "unsupported URL protocol".
        if let Some(path) = local_path(&self.remote.url)
            && !path.exists()
        {
            return Err(GitError::NotFound {
                what: "remote repository",
                name: self.remote.url.clone(),
                place: "the local file system".to_string(),
            });
        }
        let staging: Vec<String> = names
            .iter()
            .map(|n| format!("{STAGING}fetch/{}", n.trim_start_matches("refs/")))
            .collect();
        for s in &staging {
            self.delete_ref(s)?;
        }
        let specs: Vec<String> = names
            .iter()
            .zip(&staging)
            .map(|(n, s)| format!("+{n}:{s}"))
            .collect();
        let fetch = || {
            // A session per attempt: each gives every kind of credential once.
            let mut remote = self.origin()?;
            let session = Session::new(&self.auth, &self.remote.url, self.repo.config().ok());
            let mut opts = FetchOptions::new();
            opts.remote_callbacks(session.callbacks())
                .download_tags(AutotagOption::None)
                .update_fetchhead(false);
            remote
                .fetch(&specs, Some(&mut opts), Some("canaryd: fetch"))
                .map_err(|e| GitError::Remote {
                    op: "fetch from",
                    url: redact(&self.remote.url),
                    source: session.cause(&e),
                })
        };
        // Writing a staged ref can meet a stale lock too (libgit2 then reports an OS error,
        // not `Locked`): after any failure, a lock in the mirror is taken to be the cause.
        match fetch() {
            Err(_) if self.cleared_locks() => fetch()?,
            other => other?,
        }
        let mut tips = Vec::new();
        for s in &staging {
            tips.push(self.ref_tip(s)?);
            self.delete_ref(s)?;
        }
        Ok(tips)
    }
}

/// Removes the `*.lock` files in the mirror at `dir` (outside `objects/`, where no lock stands
/// in the mirror's way) and returns their paths. Git and libgit2 change a ref, `packed-refs`,
/// `HEAD` or `config` by writing `<file>.lock` and renaming it over the file; a process killed
/// in between leaves the lock, and every later change of that file fails. Call it only while no
/// other process can be using the mirror: the daemon holds its data dir's lock.
pub fn clear_stale_locks(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let objects = dir.join("objects");
    let mut removed = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(folder) = todo.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let (path, kind) = (entry.path(), entry.file_type()?);
            if kind.is_dir() && path != objects {
                todo.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::git::{commit_files, init_bare};

    /// A mirror of a local bare remote whose `main` holds one spec file.
    fn mirror_of_new_remote(dir: &Path) -> Mirror {
        let remote = dir.join("remote.git");
        init_bare(&remote, "main").unwrap();
        let spec = BTreeMap::from([("rollouts/a.yaml".to_string(), Some("a: 1\n".to_string()))]);
        commit_files(&remote, "main", &spec, "spec", &Author::default()).unwrap();
        let remote = Remote {
            url: remote.display().to_string(),
            branch: "main".into(),
            status_branch: "canaryd/status".into(),
            rollouts_dir: "rollouts".into(),
        };
        Mirror::open(&dir.join("mirror.git"), remote, Author::default()).unwrap()
    }

    fn plant(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }

    #[test]
    fn a_stale_lock_met_at_run_time_is_cleared_and_the_update_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = mirror_of_new_remote(dir.path());
        let status = |n: usize| BTreeMap::from([("web".to_string(), Some(format!("n: {n}\n")))]);
        mirror.fetch().unwrap();
        assert!(matches!(
            mirror.commit_status(&status(0), "s").unwrap(),
            Push::Pushed(_)
        ));
        // Every ref a fetch or a status push updates in the mirror.
        let locks = [
            "refs/canaryd/fetch/heads/main.lock",
            "refs/canaryd/fetch/heads/canaryd/status.lock",
            "refs/remotes/origin/main.lock",
            "refs/remotes/origin/canaryd/status.lock",
            "refs/canaryd/outgoing/heads/canaryd/status.lock",
        ];
        for (n, lock) in locks.iter().enumerate() {
            let path = mirror.dir.join(lock);
            plant(&path);
            let heads = mirror.fetch().unwrap();
            assert!(heads.spec.is_some() && heads.status.is_some(), "{lock}");
            let pushed = mirror.commit_status(&status(n + 1), "s").unwrap();
            assert!(matches!(pushed, Push::Pushed(_)), "{lock}: {pushed:?}");
            assert!(!path.exists(), "{lock} is still there");
        }
        assert_eq!(mirror.status_files().unwrap()["web"], "n: 5\n");
    }

    #[test]
    fn opening_the_mirror_drops_refs_left_staged() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = mirror_of_new_remote(dir.path());
        let tip = mirror.fetch().unwrap().spec.unwrap();
        let oid = Oid::from_str(&tip).unwrap();
        for name in [
            "refs/canaryd/outgoing/heads/canaryd/status",
            "refs/canaryd/fetch/heads/main",
        ] {
            mirror.set_ref(name, oid, "test").unwrap();
        }
        let (remote, path) = (mirror.remote.clone(), mirror.dir.clone());
        drop(mirror);
        let mirror = Mirror::open(&path, remote, Author::default()).unwrap();
        let left = mirror
            .repo
            .references_glob("refs/canaryd/*")
            .unwrap()
            .count();
        assert_eq!(left, 0);
        assert_eq!(mirror.fetch().unwrap().spec, Some(tip));
    }

    #[test]
    fn stale_locks_are_found_anywhere_but_among_the_objects() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        for f in [
            "HEAD.lock",
            "config.lock",
            "packed-refs.lock",
            "refs/heads/a/b.lock",
            "objects/info/commit-graph.lock",
            "refs/heads/keep",
        ] {
            plant(&m.join(f));
        }
        let removed = clear_stale_locks(m).unwrap();
        let names: Vec<String> = removed
            .iter()
            .map(|p| p.strip_prefix(m).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "HEAD.lock",
                "config.lock",
                "packed-refs.lock",
                "refs/heads/a/b.lock"
            ]
        );
        assert!(m.join("refs/heads/keep").exists());
        assert!(clear_stale_locks(&m.join("nowhere")).unwrap().is_empty());
    }
}
