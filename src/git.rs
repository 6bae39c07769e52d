//! Git as the daemon's input and database: the bare mirror, spec and status files, gate commits, pushes (the only module using `git2`).
//
// Everything here blocks; the daemon calls it from `tokio::task::spawn_blocking`. The remote is
// a shared database with other writers: nothing is ever force-pushed, and a push that loses a
// race comes back as `Push::Rejected` so that the caller re-fetches, re-plans and tries again.
//
// Remotes may be URLs (file://, http(s)://, ssh://, git://, scp-like) or local paths. libgit2's
// local transport refuses to push into a non-bare repository at all, so for a local working
// copy the objects are copied and the ref is updated with a compare-and-swap instead (see
// `push_into_working_copy`). The branch checked out in such a working copy is never pushed.
//
// Each network operation runs with one `Session`: the credentials of `GitAuth`, each kind
// given once (libgit2 asks again after a refusal, and would go on asking forever), the SSH host
// keys of a known_hosts file, and the secrets it handed out, scrubbed from what libgit2 says.
//
// The mirror is the daemon's alone (it holds its data dir's lock), and the daemon runs one Git
// operation at a time, so a `*.lock` file met in the mirror was left by a process that died
// between creating it and renaming it over the ref: it is stale. The daemon clears them at
// start (`clear_stale_locks`), and a ref update that meets one clears them and tries once more.
// The refs staged under `refs/canaryd/` are written afresh by every use; leftovers are dropped
// when the mirror is opened. The remote is the truth: nothing in the mirror is trusted that the
// next fetch does not write again.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use git2::{
    AutotagOption, CertificateCheckStatus, Commit, Cred, CredentialType, ErrorClass, ErrorCode,
    FetchOptions, ObjectType, Oid, PushOptions, RemoteCallbacks, Repository, Signature, Tree,
};
use serde::Deserialize;

use crate::repo::IGNORE_FILE;
use crate::secret::{Secret, SecretRef};
use crate::yaml::MAX_FILE_BYTES;

/// Folder of the status branch that holds one `<rollout>.yaml` per rollout.
pub const STATUS_DIR: &str = "status";
/// At most this many spec files are read at one commit; the rest are reported as skipped.
pub const MAX_SPEC_FILES: usize = 10_000;
/// `file_history` looks at no more than this many commits, whatever its `limit`.
pub const MAX_HISTORY_WALK: usize = 100_000;
/// Name of the remote in the mirror's configuration.
const ORIGIN: &str = "origin";
/// Trees nested deeper than this under the rollouts folder are not read.
const MAX_DEPTH: usize = 64;
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

/// What went wrong talking to Git. Messages name URLs only through [`redact`].
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open repository {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("git {op} failed in {path}")]
    Repo {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("cannot {op} remote {url}")]
    Remote {
        op: &'static str,
        url: String,
        #[source]
        source: Cause,
    },
    #[error(
        "push of {reference} to {url} was rejected: the remote has moved on; fetch and try again"
    )]
    Rejected { url: String, reference: String },
    #[error("push of {reference} to {url} was refused: {reason}")]
    Refused {
        url: String,
        reference: String,
        reason: String,
    },
    #[error("{what} `{name}` not found in {place}")]
    NotFound {
        what: &'static str,
        name: String,
        place: String,
    },
    #[error("file {path} at commit {commit} cannot be read: {reason}")]
    Unreadable {
        path: String,
        commit: String,
        reason: String,
    },
    #[error("invalid {what} `{name}`: {reason}")]
    Invalid {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("working copy {path} has no branch checked out (detached or unborn HEAD)")]
    NoBranch { path: PathBuf },
    #[error("git authentication settings: {problem}")]
    Auth { problem: String },
}

impl GitError {
    /// Whether trying again later may succeed: network trouble, a locked ref or a push that
    /// lost a race. A missing commit or branch, a corrupt object or a refused push is not.
    pub fn is_transient(&self) -> bool {
        match self {
            GitError::Rejected { .. } => true,
            GitError::Remote { source, .. } => source.is_network() || source.is_lock(),
            GitError::Open { source, .. } | GitError::Repo { source, .. } => source.is_lock(),
            GitError::Refused { .. }
            | GitError::NotFound { .. }
            | GitError::Unreadable { .. }
            | GitError::Invalid { .. }
            | GitError::NoBranch { .. }
            | GitError::Auth { .. } => false,
        }
    }
}

/// A libgit2 error with any credentials scrubbed from its message, keeping what
/// [`GitError::is_transient`] needs to decide.
#[derive(Debug, Clone)]
pub struct Cause {
    message: String,
    code: ErrorCode,
    class: ErrorClass,
}

impl Cause {
    fn new(e: &git2::Error, url: Option<&str>) -> Cause {
        let mut message = e.message().to_string();
        if let Some(url) = url {
            let clean = redact(url);
            if clean != url {
                message = message.replace(url, &clean);
                if let Some(userinfo) = userinfo(url) {
                    message = message.replace(&format!("{userinfo}@"), "");
                    message = message.replace(userinfo, "***");
                }
            }
        }
        Cause {
            message,
            code: e.code(),
            class: e.class(),
        }
    }

    /// Replaces every secret of `sent` in the message by `***`.
    fn scrub(mut self, sent: &[Secret]) -> Cause {
        for secret in sent {
            if !secret.expose().is_empty() {
                self.message = self.message.replace(secret.expose(), "***");
            }
        }
        self
    }

    fn is_lock(&self) -> bool {
        self.code == ErrorCode::Locked
    }

    fn is_network(&self) -> bool {
        !matches!(self.code, ErrorCode::Auth | ErrorCode::Certificate)
            && (matches!(self.code, ErrorCode::Timeout | ErrorCode::Eof)
                || matches!(
                    self.class,
                    ErrorClass::Net | ErrorClass::Ssh | ErrorClass::Http | ErrorClass::Os
                ))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {}

/// `url` without the `user:password@` part of its authority (scp-like `git@host:path` and
/// local paths are returned as they are: they carry no secret).
pub fn redact(url: &str) -> String {
    match (url.find("://"), userinfo(url)) {
        (Some(i), Some(info)) => format!("{}{}", &url[..i + 3], &url[i + 3 + info.len() + 1..]),
        _ => url.to_string(),
    }
}

/// The userinfo of a `scheme://userinfo@host/...` URL.
fn userinfo(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &authority[..at])
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

/// Author and committer of the commits canaryd makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

impl Default for Author {
    fn default() -> Author {
        Author {
            name: "canaryd".to_string(),
            email: "canaryd@localhost".to_string(),
        }
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

/// The spec files at one commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecFiles {
    /// (repository-relative path, text), sorted by path.
    pub files: Vec<(String, String)>,
    /// (repository-relative path, why it was not read).
    pub skipped: Vec<(String, String)>,
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

/// A promote or abort commit on the watched branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateCommit {
    pub id: String,
    /// `promote` or `abort`.
    pub action: String,
    pub revision: String,
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
    repo: Repository,
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

/// What a push did, before the caller turns it into its own result type.
enum Pushed {
    Done,
    Rejected,
}

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
    /// that is not UTF-8 are listed in `skipped`, as is anything past [`MAX_SPEC_FILES`].
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
        match self.tracking_tip(&self.remote.status_branch)? {
            Some(tip) => {
                let c = self
                    .repo
                    .find_commit(tip)
                    .map_err(self.repo_err("read commit"))?;
                status_map(&self.repo, &c, &self.dir)
            }
            None => Ok(BTreeMap::new()),
        }
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
        let mut edits = Vec::new();
        for (rollout, text) in changes {
            check_rollout(rollout)?;
            edits.push((
                format!("{STATUS_DIR}/{rollout}.yaml"),
                text.as_deref().map(str::as_bytes),
            ));
        }
        let base = match self.tracking_tip(&self.remote.status_branch)? {
            Some(tip) => Some(
                self.repo
                    .find_commit(tip)
                    .map_err(self.repo_err("read commit"))?,
            ),
            None => None,
        };
        let base_tree = match &base {
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
            return Ok(Push::Unchanged);
        }
        let commit = self.make_commit(tree, base.as_ref(), message)?;
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
            if let Some((rollout, gate)) = any_gate(&c) {
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

    fn repo_err(&self, op: &'static str) -> impl Fn(git2::Error) -> GitError + '_ {
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

/// Walks a tree of spec files for [`Mirror::spec_files`].
struct SpecWalk<'a> {
    mirror: &'a Mirror,
    ignore: &'a [String],
    out: &'a mut SpecFiles,
    full: bool,
}

impl SpecWalk<'_> {
    fn tree(&mut self, tree: &Tree<'_>, prefix: &str, depth: usize) -> Result<(), GitError> {
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

/// Why a blob's text could not be had.
#[derive(Debug, thiserror::Error)]
enum Unread {
    #[error("it is larger than {} MiB", MAX_FILE_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("it is not UTF-8 text")]
    NotText,
    #[error("git failed")]
    Git(git2::Error),
}

/// A blob's text, refusing an oversized one from its header before reading it.
fn blob_text(repo: &Repository, id: Oid) -> Result<String, Unread> {
    let odb = repo.odb().map_err(Unread::Git)?;
    let (size, _) = odb.read_header(id).map_err(Unread::Git)?;
    if size as u64 > MAX_FILE_BYTES {
        return Err(Unread::TooLarge);
    }
    let blob = repo.find_blob(id).map_err(Unread::Git)?;
    String::from_utf8(blob.content().to_vec()).map_err(|_| Unread::NotText)
}

/// The `status/<name>.yaml` files of `commit`, by rollout name.
fn status_map(
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
        let text = blob_text(repo, e.id()).map_err(|why| match why {
            Unread::Git(e) => git("read blob")(e),
            other => GitError::Unreadable {
                path: format!("{STATUS_DIR}/{name}"),
                commit: commit.id().to_string(),
                reason: other.to_string(),
            },
        })?;
        out.insert(rollout.to_string(), text);
    }
    Ok(out)
}

/// The gate a commit records for `rollout`, if it is one.
fn gate_of(commit: &Commit<'_>, rollout: &str) -> Option<GateCommit> {
    any_gate(commit).and_then(|(name, gate)| (name == rollout).then_some(gate))
}

/// The gate a commit carries, with the rollout it names.
fn any_gate(commit: &Commit<'_>) -> Option<(String, GateCommit)> {
    let message = String::from_utf8_lossy(commit.message_bytes());
    let found = trailers(&message);
    let get = |key: &str| {
        found
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    let action = get("Canaryd-Gate")?.to_ascii_lowercase();
    if !matches!(action.as_str(), "promote" | "abort") {
        return None;
    }
    let rollout = get("Rollout")?;
    let revision = get("Revision").filter(|r| !r.is_empty())?;
    Some((
        rollout.to_string(),
        GateCommit {
            id: commit.id().to_string(),
            action,
            revision: revision.to_string(),
        },
    ))
}

/// Git trailers of a commit message: the `Key: value` lines of its last paragraph, when that
/// is not the subject. A line starting with whitespace continues the previous value; other
/// lines of the paragraph are ignored.
pub fn trailers(message: &str) -> Vec<(String, String)> {
    let mut paragraphs: Vec<Vec<&str>> = Vec::new();
    let mut current = Vec::new();
    for line in message.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    if paragraphs.len() < 2 {
        return Vec::new();
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut continues = false;
    for line in paragraphs.last().into_iter().flatten() {
        if line.starts_with([' ', '\t']) {
            if let (true, Some((_, value))) = (continues, out.last_mut()) {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        continues = false;
        if let Some((key, value)) = line.split_once(':') {
            let key = key.trim_end();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                out.push((key.to_string(), value.trim().to_string()));
                continues = true;
            }
        }
    }
    out
}

/// For `canaryd promote|abort NAME`: in the working copy at `repo`, commits `message` with
/// HEAD's tree (an empty commit; index and work tree untouched) on the checked-out branch
/// and, if `push`, pushes that branch without force to its upstream (`branch.<b>.remote` and
/// `branch.<b>.merge`, else `origin` and the same name). Returns the commit id. A rejected
/// push is an error, and the commit stays in the working copy: pull and push again.
pub fn gate_commit(
    repo: &Path,
    message: &str,
    author: &Author,
    push: bool,
) -> Result<String, GitError> {
    let git = |op| {
        move |e: git2::Error| GitError::Repo {
            op,
            path: repo.to_path_buf(),
            source: Cause::new(&e, None),
        }
    };
    let r = Repository::open(repo).map_err(|e| GitError::Open {
        path: repo.to_path_buf(),
        source: Cause::new(&e, None),
    })?;
    let no_branch = || GitError::NoBranch {
        path: repo.to_path_buf(),
    };
    let head = match r.head() {
        Ok(h) => h,
        Err(e) if e.code() == ErrorCode::UnbornBranch => return Err(no_branch()),
        Err(e) => return Err(git("read HEAD")(e)),
    };
    if !head.is_branch() {
        return Err(no_branch());
    }
    let refname = head.name().ok_or_else(no_branch)?.to_string();
    let parent = head.peel_to_commit().map_err(git("read HEAD"))?;
    let tree = parent.tree().map_err(git("read tree"))?;
    let sig = signature(author).map_err(git("commit"))?;
    // Updating through HEAD moves the branch it points to, and fails if it moved meanwhile.
    let id = r
        .commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent])
        .map_err(git("commit"))?;
    if push {
        let branch = refname.trim_start_matches("refs/heads/");
        let config = r.config().map_err(git("read config"))?;
        let remote_name = config
            .get_string(&format!("branch.{branch}.remote"))
            .unwrap_or_else(|_| ORIGIN.to_string());
        let dst = config
            .get_string(&format!("branch.{branch}.merge"))
            .unwrap_or_else(|_| refname.clone());
        let url = r
            .find_remote(&remote_name)
            .map_err(|_| GitError::NotFound {
                what: "remote",
                name: remote_name.clone(),
                place: repo.display().to_string(),
            })?
            .url()
            .unwrap_or_default()
            .to_string();
        let auth = GitAuth::default();
        if let Pushed::Rejected = push_ref(&r, &remote_name, &url, &refname, &dst, &auth)? {
            return Err(GitError::Rejected {
                url: redact(&url),
                reference: dst,
            });
        }
    }
    Ok(id.to_string())
}

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
        return status_map(&repo, &commit, path);
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
    status_map(&repo, &commit, &dir.0)
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(parent: &Path) -> ScratchDir {
        let nanos = SystemTime::now()
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

// ---- pushing ----

/// Pushes local `src` to `dst` on the remote `remote_name` (whose URL is `url`), without
/// force. A non-fast-forward, whether libgit2 sees it before sending or the server reports
/// it per reference, is `Rejected`; a server refusing for another reason (a hook, a
/// checked-out branch) is an error.
fn push_ref(
    repo: &Repository,
    remote_name: &str,
    url: &str,
    src: &str,
    dst: &str,
    auth: &GitAuth,
) -> Result<Pushed, GitError> {
    if let Some(path) = local_path(url)
        && let Ok(target) = Repository::open(&path)
        && !target.is_bare()
    {
        return push_into_working_copy(repo, &target, url, src, dst);
    }
    let remote_err = |op| {
        move |e: git2::Error| GitError::Remote {
            op,
            url: redact(url),
            source: Cause::new(&e, Some(url)),
        }
    };
    let mut remote = repo
        .find_remote(remote_name)
        .map_err(remote_err("configure"))?;
    let mut refused: Option<String> = None;
    let session = Session::new(auth, url, repo.config().ok());
    let result = {
        let mut cbs = session.callbacks();
        cbs.push_update_reference(|_, status| {
            if let Some(status) = status {
                refused = Some(status.to_string());
            }
            Ok(())
        });
        let mut opts = PushOptions::new();
        opts.remote_callbacks(cbs);
        remote.push(&[format!("{src}:{dst}")], Some(&mut opts))
    };
    match result {
        Err(e) if e.code() == ErrorCode::NotFastForward => return Ok(Pushed::Rejected),
        Err(e) => {
            return Err(GitError::Remote {
                op: "push to",
                url: redact(url),
                source: session.cause(&e),
            });
        }
        Ok(()) => {}
    }
    match refused {
        None => Ok(Pushed::Done),
        Some(reason) if is_policy(&reason) => Err(GitError::Refused {
            url: redact(url),
            reference: dst.to_string(),
            reason,
        }),
        Some(_) => Ok(Pushed::Rejected),
    }
}

/// Whether a server's reason for refusing a ref is a rule, not a lost race.
fn is_policy(reason: &str) -> bool {
    [
        "checked out",
        "hook",
        "deny",
        "denied",
        "hidden",
        "protected",
    ]
    .iter()
    .any(|w| reason.contains(w))
}

/// A push into a local non-bare repository, which libgit2's local transport refuses: copies
/// the missing objects and moves the ref with a compare-and-swap, refusing the branch that is
/// checked out there. Hooks of that repository do not run.
fn push_into_working_copy(
    local: &Repository,
    target: &Repository,
    url: &str,
    src: &str,
    dst: &str,
) -> Result<Pushed, GitError> {
    let local_err = |op| {
        move |e: git2::Error| GitError::Repo {
            op,
            path: local.path().to_path_buf(),
            source: Cause::new(&e, None),
        }
    };
    let target_err = |op| {
        move |e: git2::Error| GitError::Remote {
            op,
            url: redact(url),
            source: Cause::new(&e, Some(url)),
        }
    };
    let new = local.refname_to_id(src).map_err(local_err("read ref"))?;
    let checked_out = target
        .find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().map(str::to_string));
    if checked_out.as_deref() == Some(dst) {
        return Err(GitError::Refused {
            url: redact(url),
            reference: dst.to_string(),
            reason: "the branch is checked out in that working copy".to_string(),
        });
    }
    copy_objects(local, target, new).map_err(target_err("push to"))?;
    let old = match target.refname_to_id(dst) {
        Ok(old) => Some(old),
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(target_err("read a ref of")(e)),
    };
    let msg = "push from canaryd";
    let moved = match old {
        Some(old) if old == new => return Ok(Pushed::Done),
        Some(old) => {
            if !target
                .graph_descendant_of(new, old)
                .map_err(target_err("push to"))?
            {
                return Ok(Pushed::Rejected);
            }
            target.reference_matching(dst, new, true, old, msg)
        }
        None => target.reference(dst, new, false, msg),
    };
    match moved {
        Ok(_) => Ok(Pushed::Done),
        Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists) => {
            Ok(Pushed::Rejected)
        }
        Err(e) => Err(target_err("push to")(e)),
    }
}

/// Copies the objects reachable from `tip` that `to` lacks (an object it has is taken to
/// come with everything it reaches, as Git's connectivity rule holds).
fn copy_objects(from: &Repository, to: &Repository, tip: Oid) -> Result<(), git2::Error> {
    let (src, dst) = (from.odb()?, to.odb()?);
    let mut todo = vec![tip];
    while let Some(oid) = todo.pop() {
        if dst.exists(oid) {
            continue;
        }
        let object = src.read(oid)?;
        dst.write(object.kind(), object.data())?;
        match object.kind() {
            ObjectType::Commit => {
                let c = from.find_commit(oid)?;
                todo.push(c.tree_id());
                todo.extend(c.parent_ids());
            }
            ObjectType::Tree => {
                let t = from.find_tree(oid)?;
                todo.extend(
                    t.iter()
                        .filter(|e| e.kind() != Some(ObjectType::Commit))
                        .map(|e| e.id()),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

// ---- authentication ----

/// The user name sent with a token when `gitAuth.username` is not set: GitHub's for app and
/// fine-grained tokens (GitLab and Gitea accept any name with a token).
pub const TOKEN_USER: &str = "x-access-token";
/// The SSH user when neither the URL nor `gitAuth.username` names one.
const SSH_USER: &str = "git";

/// Credentials for the remote and the SSH host keys canaryd trusts: `gitAuth:` in the
/// controller configuration. Secrets are named (file or environment variable), read when the
/// remote asks for them, and never shown.
///
/// With nothing set, HTTPS asks git's credential helpers (the mirror's git configuration, which
/// includes the user's and the system's), SSH asks ssh-agent, and SSH host keys are checked by
/// libgit2 against `~/.ssh/known_hosts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitAuth {
    /// The user name: for HTTPS with `password` (required there) or `token` (default
    /// `x-access-token`); for SSH when the URL names none (default `git`).
    pub username: Option<String>,
    /// An HTTPS access token, sent as the password of basic authentication.
    pub token: Option<SecretRef>,
    /// An HTTPS password (basic authentication), with `username`.
    pub password: Option<SecretRef>,
    /// The private key file SSH authenticates with.
    pub ssh_key: Option<PathBuf>,
    /// The passphrase of `sshKey`, if it has one.
    pub ssh_key_passphrase: Option<SecretRef>,
    /// An OpenSSH known_hosts file: SSH then connects only to a host whose key it lists
    /// (`host`, `[host]:port`, hashed `|1|…` entries, `*`/`?` patterns, `!` negations,
    /// `@revoked`; `@cert-authority` lines are not used). List every key type the host has,
    /// as `ssh-keyscan` prints them: libgit2 does not say which type to prefer.
    pub known_hosts: Option<PathBuf>,
}

impl GitAuth {
    /// Checks what can be checked without connecting: one HTTPS secret at most, a user name
    /// for a password, the secrets and files readable, the known_hosts file well formed.
    /// `canaryd run` calls it at startup.
    pub fn check(&self) -> Result<(), GitError> {
        let bad = |problem: &str| {
            Err(GitError::Auth {
                problem: problem.to_string(),
            })
        };
        if self.token.is_some() && self.password.is_some() {
            return bad("give `token` or `password`, not both");
        }
        if self.password.is_some() && self.username.is_none() {
            return bad("`password` needs `username`");
        }
        if self.ssh_key_passphrase.is_some() && self.ssh_key.is_none() {
            return bad("`sshKeyPassphrase` without `sshKey`");
        }
        for (what, secret) in [
            ("gitAuth.token", &self.token),
            ("gitAuth.password", &self.password),
            ("gitAuth.sshKeyPassphrase", &self.ssh_key_passphrase),
        ] {
            if let Some(secret) = secret {
                secret.read(what).map_err(|e| GitError::Auth {
                    problem: e.to_string(),
                })?;
            }
        }
        if let Some(key) = &self.ssh_key {
            std::fs::File::open(key).map_err(|e| GitError::Auth {
                problem: format!(
                    "gitAuth.sshKey: cannot read {}: {}",
                    key.display(),
                    e.kind()
                ),
            })?;
        }
        if let Some(path) = &self.known_hosts {
            KnownHosts::read(path).map_err(|problem| GitError::Auth { problem })?;
        }
        Ok(())
    }
}

/// One remote operation's credentials and host-key policy, and what it refused and handed out.
struct Session<'a> {
    auth: &'a GitAuth,
    url: &'a str,
    /// The git configuration credential helpers are read from.
    config: Option<git2::Config>,
    /// Kinds of credentials already given: asked for again, the remote refused them.
    given: Cell<CredentialType>,
    /// Why canaryd refused (a host key, credentials it gives up on), with the error code: the
    /// error's message, since libgit2 replaces a callback's message with its own.
    refusal: RefCell<Option<(ErrorCode, String)>>,
    /// Secrets handed to libgit2, scrubbed from any message it returns.
    sent: RefCell<Vec<Secret>>,
}

impl<'a> Session<'a> {
    fn new(auth: &'a GitAuth, url: &'a str, config: Option<git2::Config>) -> Session<'a> {
        Session {
            auth,
            url,
            config,
            given: Cell::new(CredentialType::empty()),
            refusal: RefCell::new(None),
            sent: RefCell::new(Vec::new()),
        }
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut cbs = RemoteCallbacks::new();
        cbs.credentials(|url, from_url, allowed| {
            self.credentials(url, from_url, allowed)
                .inspect_err(|e| self.refuse(e))
        });
        cbs.certificate_check(|cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: OpenSSL's verification against the system's certificate authorities.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let Some(path) = &self.auth.known_hosts else {
                // libgit2's own check against ~/.ssh/known_hosts.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let key = hostkey.hostkey().zip(hostkey.hostkey_type());
            let checked = match key {
                Some((key, kind)) => {
                    check_host_key(path, host, ssh_port(self.url), kind.name(), key)
                }
                None => Err(format!(
                    "the SSH server {host} sent no host key canaryd can check"
                )),
            };
            checked
                .map(|()| CertificateCheckStatus::CertificateOk)
                .map_err(|why| {
                    let e = git2::Error::new(ErrorCode::Certificate, ErrorClass::Ssh, why);
                    self.refuse(&e);
                    e
                })
        });
        cbs
    }

    fn refuse(&self, e: &git2::Error) {
        self.refusal
            .borrow_mut()
            .get_or_insert_with(|| (e.code(), e.message().to_string()));
    }

    /// What libgit2's error becomes: canaryd's own reason if it refused, without secrets.
    fn cause(&self, e: &git2::Error) -> Cause {
        let mut cause = Cause::new(e, Some(self.url));
        if let Some((code, why)) = self.refusal.borrow_mut().take() {
            cause.code = code;
            cause.message = why;
        }
        cause.scrub(&self.sent.borrow())
    }

    /// Marks `kind` given; an error if it was given before (the remote refused it).
    fn once(
        &self,
        kind: CredentialType,
        class: ErrorClass,
        refused: impl FnOnce() -> String,
    ) -> Result<(), git2::Error> {
        if self.given.get().intersects(kind) {
            return Err(auth_error(class, refused()));
        }
        self.given.set(self.given.get() | kind);
        Ok(())
    }

    fn secret(&self, secret: &SecretRef, what: &str) -> Result<Secret, git2::Error> {
        let value = secret
            .read(what)
            .map_err(|e| auth_error(ErrorClass::Callback, e.to_string()))?;
        self.sent.borrow_mut().push(value.clone());
        Ok(value)
    }

    fn ssh_user(&self, from_url: Option<&str>) -> String {
        from_url
            .or(self.auth.username.as_deref())
            .unwrap_or(SSH_USER)
            .to_string()
    }

    fn credentials(
        &self,
        url: &str,
        from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        let auth = self.auth;
        let (ssh, http) = (ErrorClass::Ssh, ErrorClass::Http);
        if allowed.contains(CredentialType::USERNAME) {
            let user = self.ssh_user(from_url);
            self.once(CredentialType::USERNAME, ssh, || {
                format!("authentication failed: the SSH server refused the user `{user}`")
            })?;
            return Cred::username(&user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            let user = self.ssh_user(from_url);
            let Some(key) = &auth.ssh_key else {
                self.once(CredentialType::SSH_KEY, ssh, || {
                    format!(
                        "authentication failed: ssh-agent has no key the SSH server takes for \
                         `{user}`; set gitAuth.sshKey"
                    )
                })?;
                return Cred::ssh_key_from_agent(&user);
            };
            let locked = if auth.ssh_key_passphrase.is_some() {
                "or gitAuth.sshKeyPassphrase does not open it"
            } else {
                "or it is locked: set gitAuth.sshKeyPassphrase"
            };
            self.once(CredentialType::SSH_KEY, ssh, || {
                format!(
                    "authentication failed: the SSH server refused the key {} for `{user}` ({locked})",
                    key.display()
                )
            })?;
            let passphrase = match &auth.ssh_key_passphrase {
                Some(p) => Some(self.secret(p, "gitAuth.sshKeyPassphrase")?),
                None => None,
            };
            return Cred::ssh_key(&user, None, key, passphrase.as_ref().map(Secret::expose));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let kind = CredentialType::USER_PASS_PLAINTEXT;
            if let Some(token) = &auth.token {
                let user = auth.username.as_deref().or(from_url).unwrap_or(TOKEN_USER);
                self.once(kind, http, || {
                    format!("authentication failed: the remote refused the token of gitAuth.token for `{user}`")
                })?;
                let token = self.secret(token, "gitAuth.token")?;
                return Cred::userpass_plaintext(user, token.expose());
            }
            if let Some(password) = &auth.password {
                let user = auth.username.as_deref().or(from_url).unwrap_or_default();
                self.once(kind, http, || {
                    format!("authentication failed: the remote refused the password of gitAuth.password for `{user}`")
                })?;
                let password = self.secret(password, "gitAuth.password")?;
                return Cred::userpass_plaintext(user, password.expose());
            }
            self.once(kind, http, || {
                "authentication failed: the remote refused what git's credential helper gave; \
                 set gitAuth.token or gitAuth.password"
                    .to_string()
            })?;
            let helper = self
                .config
                .as_ref()
                .and_then(|config| Cred::credential_helper(config, url, from_url).ok());
            return helper.ok_or_else(|| {
                auth_error(
                    http,
                    "the remote asks for a user name and password: set gitAuth.token or \
                     gitAuth.password, or configure a git credential helper"
                        .to_string(),
                )
            });
        }
        if allowed.contains(CredentialType::DEFAULT) {
            self.once(CredentialType::DEFAULT, http, || {
                "authentication failed: the remote refused the default (Negotiate/NTLM) credentials"
                    .to_string()
            })?;
            return Cred::default();
        }
        Err(auth_error(
            ErrorClass::Callback,
            format!("the remote asks for credentials canaryd cannot give ({allowed:?})"),
        ))
    }
}

fn auth_error(class: ErrorClass, message: String) -> git2::Error {
    git2::Error::new(ErrorCode::Auth, class, message)
}

/// The port of an `ssh://` URL; 22 for an scp-like `user@host:path` or when none is given.
fn ssh_port(url: &str) -> u16 {
    let Some(i) = url.find("://") else {
        return 22;
    };
    let rest = &url[i + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once("]:").map(|(_, p)| p),
        None => host_port.rsplit_once(':').map(|(_, p)| p),
    };
    port.and_then(|p| p.parse().ok()).unwrap_or(22)
}

/// Checks the key `key` (SSH wire format, of type `kind`) that `host`:`port` presented against
/// the known_hosts file at `path`; why not, naming the host, the key and the file.
fn check_host_key(
    path: &Path,
    host: &str,
    port: u16,
    kind: &str,
    key: &[u8],
) -> Result<(), String> {
    let known = KnownHosts::read(path)?;
    let shown = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let fingerprint = fingerprint(key);
    match known.check(host, port, kind, key) {
        HostKey::Known => Ok(()),
        HostKey::Revoked => Err(format!(
            "host key verification failed: the key of {shown} ({kind} {fingerprint}) is marked @revoked in {}",
            path.display()
        )),
        HostKey::Changed => Err(format!(
            "host key verification failed: {shown} presented {kind} {fingerprint}, which is not the {kind} key {} lists for it; the host's key changed or someone is in between, so the connection was refused",
            path.display()
        )),
        HostKey::Unknown { listed } if !listed.is_empty() => Err(format!(
            "host key verification failed: {shown} presented {kind} {fingerprint}, and {} lists only {} keys for it; add its {kind} key (`ssh-keyscan -p {port} {host}` prints every key type)",
            path.display(),
            listed.join(", ")
        )),
        HostKey::Unknown { .. } => Err(format!(
            "host key verification failed: {shown} is not in {} (it presented {kind} {fingerprint}); add it after checking that fingerprint, e.g. with `ssh-keyscan -p {port} {host}`",
            path.display()
        )),
    }
}

/// `SHA256:<base64>`, as OpenSSH shows a key.
fn fingerprint(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(key);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
    )
}

/// What a known_hosts file says of a host's key.
#[derive(Debug, PartialEq, Eq)]
enum HostKey {
    Known,
    /// The key matches an `@revoked` line.
    Revoked,
    /// The host is listed with another key of the same type.
    Changed,
    /// The host is not listed with a key of this type; `listed` names the types it is listed with.
    Unknown {
        listed: Vec<String>,
    },
}

/// An OpenSSH known_hosts file (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT").
#[derive(Debug, Default)]
struct KnownHosts {
    entries: Vec<KnownHost>,
}

#[derive(Debug)]
struct KnownHost {
    marker: Marker,
    hosts: Hosts,
    kind: String,
    key: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug)]
enum Hosts {
    /// `|1|salt|hash`: HMAC-SHA1 of the host name (as `host` or `[host]:port`) keyed by salt.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    /// Comma-separated patterns, each maybe negated with `!`.
    Patterns(Vec<(bool, String)>),
}

impl KnownHosts {
    fn read(path: &Path) -> Result<KnownHosts, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "gitAuth.knownHosts: cannot read {}: {}",
                path.display(),
                e.kind()
            )
        })?;
        KnownHosts::parse(&text).map_err(|(line, why)| {
            format!("gitAuth.knownHosts: {} line {line}: {why}", path.display())
        })
    }

    /// Parses the file; the first malformed line, 1-based, and why.
    fn parse(text: &str) -> Result<KnownHosts, (usize, String)> {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| (i + 1, why.to_string());
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                m if m.starts_with('@') => return Err(bad("unknown marker")),
                _ => Marker::None,
            };
            if marker != Marker::None {
                first = fields.next().ok_or_else(|| bad("a marker without hosts"))?;
            }
            let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
                return Err(bad("expected `hosts key-type base64-key`"));
            };
            let key = b64.decode(key).map_err(|_| bad("the key is not base64"))?;
            let hosts = match first.strip_prefix("|1|") {
                Some(hashed) => {
                    let (salt, hash) = hashed
                        .split_once('|')
                        .ok_or_else(|| bad("a hashed host without its hash"))?;
                    let salt = b64
                        .decode(salt)
                        .map_err(|_| bad("a hashed host's salt is not base64"))?;
                    let hash = b64
                        .decode(hash)
                        .map_err(|_| bad("a hashed host's hash is not base64"))?;
                    Hosts::Hashed { salt, hash }
                }
                None => Hosts::Patterns(
                    first
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| match p.strip_prefix('!') {
                            Some(p) => (true, p.to_ascii_lowercase()),
                            None => (false, p.to_ascii_lowercase()),
                        })
                        .collect(),
                ),
            };
            entries.push(KnownHost {
                marker,
                hosts,
                kind: kind.to_string(),
                key,
            });
        }
        Ok(KnownHosts { entries })
    }

    fn check(&self, host: &str, port: u16, kind: &str, key: &[u8]) -> HostKey {
        // As OpenSSH writes the name: `host` on port 22, `[host]:port` elsewhere.
        let name = if port == 22 {
            host.to_ascii_lowercase()
        } else {
            format!("[{}]:{port}", host.to_ascii_lowercase())
        };
        let matching = || self.entries.iter().filter(|e| e.hosts.matches(&name));
        if matching().any(|e| e.marker == Marker::Revoked && e.key == key) {
            return HostKey::Revoked;
        }
        let plain = || matching().filter(|e| e.marker == Marker::None);
        if plain().any(|e| e.key == key) {
            return HostKey::Known;
        }
        if plain().any(|e| e.kind == kind) {
            return HostKey::Changed;
        }
        let mut listed: Vec<String> = plain().map(|e| e.kind.clone()).collect();
        listed.sort();
        listed.dedup();
        HostKey::Unknown { listed }
    }
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                use hmac::{KeyInit as _, Mac as _};
                let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                // A negated pattern that matches rules the line out, whatever else matches.
                let mut hit = false;
                for (negated, pattern) in patterns {
                    if glob(pattern.as_bytes(), name.as_bytes()) {
                        if *negated {
                            return false;
                        }
                        hit = true;
                    }
                }
                hit
            }
        }
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?` any one.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

// ---- small pure helpers ----

fn signature(author: &Author) -> Result<Signature<'static>, git2::Error> {
    Signature::now(&author.name, &author.email)
}

fn tracking(branch: &str) -> String {
    format!("refs/remotes/{ORIGIN}/{branch}")
}

/// Whether `source` is a URL rather than a local path (scheme, or scp-like `host:path`).
fn is_url(source: &str) -> bool {
    source.contains("://") || scp_like(source)
}

fn scp_like(source: &str) -> bool {
    match (source.find(':'), source.find('/')) {
        (Some(colon), slash) => colon > 1 && slash.is_none_or(|s| colon < s),
        _ => false,
    }
}

/// The directory a local remote names (a plain path or a `file://` URL).
fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(path) = url.strip_prefix("file://") {
        return Some(PathBuf::from(path));
    }
    (!is_url(url)).then(|| PathBuf::from(url))
}

fn check_branch(name: &str) -> Result<(), GitError> {
    if git2::Reference::is_valid_name(&format!("refs/heads/{name}")) {
        Ok(())
    } else {
        Err(GitError::Invalid {
            what: "branch name",
            name: name.to_string(),
            reason: "git does not allow it as a branch name",
        })
    }
}

fn check_rollout(name: &str) -> Result<(), GitError> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0', '\n'])
        || name.trim() != name;
    if bad {
        return Err(GitError::Invalid {
            what: "rollout name",
            name: name.to_string(),
            reason: "a status file name must be one plain path segment",
        });
    }
    Ok(())
}

/// The rollouts folder without leading `./` or surrounding slashes; `""` for the root.
fn normalize_dir(dir: &str) -> Result<String, GitError> {
    let trimmed = dir.trim().trim_start_matches("./").trim_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(String::new());
    }
    split_path(trimmed)?;
    Ok(trimmed.to_string())
}

/// Components of a repository-relative path, refusing `..`, `.`, `.git` and empty ones.
fn split_path(path: &str) -> Result<Vec<&str>, GitError> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.eq_ignore_ascii_case(".git"))
    {
        return Err(GitError::Invalid {
            what: "path",
            name: path.to_string(),
            reason: "it must be a plain repository-relative path",
        });
    }
    Ok(parts)
}

fn join(prefix: &str, name: &str) -> String {
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
fn ignore_list(text: &str, dir: &str) -> Vec<String> {
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

/// One change for [`edit_tree`]: path components, and the new blob or `None` to delete.
type Edit<'a> = (&'a [&'a str], Option<Oid>);

enum TreeEdit {
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
fn edit_tree(
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

// ---------------------------------------------------------------------------------------------
// A repository played by hand: `canaryd demo` and the benchmarks act as the team with these
// (commit a spec as a merged pull request would, merge a branch by moving `main`, read a log).
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ed25519 public keys made by ssh-keygen, and OpenSSH's own hashing (`ssh-keygen -H`)
    /// of `[127.0.0.1]:2222` and `git.example.com` with the first.
    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAICG2mYuuHwF3XDehJdTmK+7BQDJ5wwXz/a3ltl2AVHWN";
    const OTHER: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIONT6lBMBGeg3qFdMxhXgptatwRr+pgT+yzyxe3bXNUX";
    const HASHED: &str = "\
|1|RW8X67gEJWNiphvQa2QApZyA528=|N9uOaeQgE5dB3Mda7ZTbFMx71dY= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICG2mYuuHwF3XDehJdTmK+7BQDJ5wwXz/a3ltl2AVHWN
|1|DTU9G+WmGrfChB6mqdj3Tkn+Gq0=|vzibyscAMLLRR30aFM5fGvizt98= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICG2mYuuHwF3XDehJdTmK+7BQDJ5wwXz/a3ltl2AVHWN
";

    fn key(b64: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn known_hosts_entries_match_by_name_port_and_key() {
        let file = format!(
            "# a comment\n\n[127.0.0.1]:2222 ssh-ed25519 {KEY}\n\
             git.example.com,10.0.0.7 ssh-ed25519 {KEY} a comment\n\
             *.corp.example,!evil.corp.example ssh-ed25519 {KEY}\n\
             rsa-only.example ssh-rsa {OTHER}\n\
             @revoked * ssh-ed25519 {OTHER}\n\
             @cert-authority *.example ssh-ed25519 {OTHER}\n"
        );
        let known = KnownHosts::parse(&file).unwrap();
        let hashed = KnownHosts::parse(HASHED).unwrap();
        let (ed, k, o) = ("ssh-ed25519", key(KEY), key(OTHER));
        let check = |known: &KnownHosts, host: &str, port: u16, key: &[u8], want: HostKey| {
            assert_eq!(known.check(host, port, ed, key), want, "{host}:{port}");
        };
        let unknown = || HostKey::Unknown { listed: vec![] };
        for known in [&known, &hashed] {
            check(known, "127.0.0.1", 2222, &k, HostKey::Known);
            check(known, "git.example.com", 22, &k, HostKey::Known);
            check(known, "GIT.example.com", 22, &k, HostKey::Known);
            // The port is part of the name: `[host]:port` entries are not for port 22 and back.
            check(known, "127.0.0.1", 22, &k, unknown());
            check(known, "git.example.com", 2222, &k, unknown());
            check(known, "127.0.0.2", 2222, &k, unknown());
        }
        check(&known, "10.0.0.7", 22, &k, HostKey::Known);
        check(&known, "build.corp.example", 22, &k, HostKey::Known);
        check(&known, "evil.corp.example", 22, &k, unknown());
        // Another key where one of this type is listed: changed; revoked wherever it shows.
        let fresh = key("AAAAC3NzaC1lZDI1NTE5AAAAIFoBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        check(&known, "git.example.com", 22, &fresh, HostKey::Changed);
        check(&hashed, "git.example.com", 22, &fresh, HostKey::Changed);
        check(&known, "git.example.com", 22, &o, HostKey::Revoked);
        check(
            &known,
            "rsa-only.example",
            22,
            &k,
            HostKey::Unknown {
                listed: vec!["ssh-rsa".into()],
            },
        );
    }

    #[test]
    fn malformed_known_hosts_lines_are_named() {
        let check = |text: &str, line: usize| {
            let (at, why) = KnownHosts::parse(text).unwrap_err();
            assert_eq!(at, line, "{text:?}: {why}");
        };
        check(&format!("h ssh-ed25519 {KEY}\nhost-only\n"), 2);
        check("h ssh-ed25519 not*base64\n", 1);
        check(&format!("@weird h ssh-ed25519 {KEY}\n"), 1);
        check(&format!("|1|abc ssh-ed25519 {KEY}\n"), 1);
        assert!(KnownHosts::parse("# only comments\n\n").is_ok());
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "anything", true),
            ("*.example", "a.b.example", true),
            ("*.example", "example", false),
            ("h?st", "host", true),
            ("h?st", "hoost", false),
            ("[10.0.0.*]:22?", "[10.0.0.9]:222", true),
            ("[10.0.0.*]:22?", "[10.0.0.9]:2222", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }

    #[test]
    fn ssh_ports() {
        for (url, port) in [
            ("ssh://git@host:2222/r.git", 2222),
            ("ssh://host/r.git", 22),
            ("ssh://git@[::1]:2200/r.git", 2200),
            ("ssh://[::1]/r.git", 22),
            ("git@github.com:org/r.git", 22),
            ("ssh://u:p@h:7/r", 7),
        ] {
            assert_eq!(ssh_port(url), port, "{url}");
        }
    }

    #[test]
    fn fingerprints_are_openssh_style() {
        // `ssh-keygen -lf` of the first key.
        assert_eq!(
            fingerprint(&key(KEY)),
            "SHA256:y2zU5YjE5PT3uAoa55hjIEL/gERjzxcdhLLsf3WbYj8"
        );
    }

    #[test]
    fn auth_settings_are_checked_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let check = |auth: GitAuth, want: Option<&str>| match (auth.check(), want) {
            (Ok(()), None) => {}
            (Err(e), Some(part)) => {
                let text = e.to_string();
                assert!(text.contains(part), "{text}");
                assert!(!text.contains("s3cret"), "{text}");
            }
            (got, _) => panic!("{got:?}, wanted {want:?}"),
        };
        check(GitAuth::default(), None);
        check(
            GitAuth {
                token: Some(SecretRef::file(&secret)),
                ..GitAuth::default()
            },
            None,
        );
        check(
            GitAuth {
                token: Some(SecretRef::file(&secret)),
                password: Some(SecretRef::file(&secret)),
                username: Some("robot".into()),
                ..GitAuth::default()
            },
            Some("not both"),
        );
        check(
            GitAuth {
                password: Some(SecretRef::file(&secret)),
                ..GitAuth::default()
            },
            Some("`password` needs `username`"),
        );
        check(
            GitAuth {
                token: Some(SecretRef::file(dir.path().join("gone"))),
                ..GitAuth::default()
            },
            Some("gitAuth.token: cannot read"),
        );
        check(
            GitAuth {
                ssh_key: Some(dir.path().join("id_missing")),
                ..GitAuth::default()
            },
            Some("gitAuth.sshKey"),
        );
        let hosts = dir.path().join("known_hosts");
        std::fs::write(&hosts, "broken\n").unwrap();
        check(
            GitAuth {
                known_hosts: Some(hosts),
                ..GitAuth::default()
            },
            Some("line 1"),
        );
    }

    #[test]
    fn sessions_scrub_what_they_sent_and_keep_their_reason() {
        let auth = GitAuth::default();
        let session = Session::new(&auth, "https://h/r.git", None);
        session.sent.borrow_mut().push(Secret::new("tok3n"));
        let e = git2::Error::new(ErrorCode::GenericError, ErrorClass::Http, "got tok3n back");
        assert_eq!(session.cause(&e).to_string(), "got *** back");
        session.refuse(&auth_error(
            ErrorClass::Http,
            "authentication failed: x".into(),
        ));
        let cause = session.cause(&e);
        assert_eq!(cause.to_string(), "authentication failed: x");
        assert!(
            !cause.is_network(),
            "an auth failure is not retried as network trouble"
        );
    }

    #[test]
    fn each_kind_of_credential_is_given_once() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "tok3n").unwrap();
        let auth = GitAuth {
            token: Some(SecretRef::file(&secret)),
            ..GitAuth::default()
        };
        let session = Session::new(&auth, "https://h/r.git", None);
        let ask =
            || session.credentials("https://h/r.git", None, CredentialType::USER_PASS_PLAINTEXT);
        assert!(ask().is_ok());
        let second = ask().err().unwrap();
        assert_eq!(second.code(), ErrorCode::Auth);
        assert!(
            second
                .message()
                .contains("refused the token of gitAuth.token for `x-access-token`")
        );
        assert!(!second.message().contains("tok3n"));
    }

    #[test]
    fn redact_strips_userinfo() {
        let check = |url: &str, want: &str| assert_eq!(redact(url), want, "{url}");
        check(
            "https://user:pass@example.com/r.git",
            "https://example.com/r.git",
        );
        check(
            "https://token@example.com/r.git",
            "https://example.com/r.git",
        );
        check("ssh://git@host:22/r.git", "ssh://host:22/r.git");
        check("https://example.com/a@b", "https://example.com/a@b");
        check("git@github.com:org/r.git", "git@github.com:org/r.git");
        check("/srv/git/r.git", "/srv/git/r.git");
        check("file:///srv/r.git", "file:///srv/r.git");
    }

    #[test]
    fn causes_do_not_leak_credentials() {
        let url = "https://user:s3cret@example.com/r.git";
        let e = git2::Error::from_str(&format!("failed to reach {url} as user:s3cret"));
        let cause = Cause::new(&e, Some(url));
        assert!(!cause.to_string().contains("s3cret"), "{cause}");
        assert!(cause.to_string().contains("https://example.com/r.git"));
    }

    #[test]
    fn trailers_come_from_the_last_paragraph() {
        let check = |msg: &str, want: &[(&str, &str)]| {
            let got = trailers(msg);
            let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (&**k, &**v)).collect();
            assert_eq!(got, want, "{msg:?}");
        };
        check("Subject: only", &[]);
        check(
            "subject\n\nbody: not last\n\nRollout: web\nRevision: abc\n",
            &[("Rollout", "web"), ("Revision", "abc")],
        );
        check(
            "s\n\nA: 1\n  more\nnot a trailer\nB-c: 2",
            &[("A", "1 more"), ("B-c", "2")],
        );
        check("s\r\n\r\nKey With Space: x\r\nK: v\r\n", &[("K", "v")]);
        check("s\n\nbody\n", &[]);
    }

    #[test]
    fn transient_errors() {
        let cause = |code, class, msg: &str| {
            let e = git2::Error::new(code, class, msg);
            Cause::new(&e, None)
        };
        let remote = |source| GitError::Remote {
            op: "fetch from",
            url: "u".into(),
            source,
        };
        use ErrorClass as C;
        use ErrorCode as E;
        assert!(remote(cause(E::GenericError, C::Net, "reset")).is_transient());
        assert!(remote(cause(E::GenericError, C::Http, "502")).is_transient());
        assert!(!remote(cause(E::Auth, C::Http, "401")).is_transient());
        assert!(!remote(cause(E::NotFound, C::Repository, "no repo")).is_transient());
        let repo = |source| GitError::Repo {
            op: "commit",
            path: "p".into(),
            source,
        };
        assert!(repo(cause(E::Locked, C::Reference, "locked")).is_transient());
        assert!(!repo(cause(E::GenericError, C::Odb, "corrupt")).is_transient());
        let rejected = GitError::Rejected {
            url: "u".into(),
            reference: "r".into(),
        };
        assert!(rejected.is_transient());
        let missing = GitError::NotFound {
            what: "branch",
            name: "main".into(),
            place: "u".into(),
        };
        assert!(!missing.is_transient());
    }

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

    #[test]
    fn urls_and_paths() {
        assert!(is_url("https://h/r"));
        assert!(is_url("git@github.com:o/r.git"));
        assert!(!is_url("/srv/r.git"));
        assert!(!is_url("./a:b/r"));
        assert!(!is_url("C:/r"));
        assert_eq!(local_path("file:///srv/r"), Some(PathBuf::from("/srv/r")));
        assert_eq!(local_path("ssh://h/r"), None);
    }

    #[test]
    fn ignore_lines_match_paths_and_folders() {
        let list = ignore_list("# c\ndrafts/\nrollouts/old.yaml # x\n\n", "rollouts");
        assert!(list.iter().any(|i| under("rollouts/drafts/a.yaml", i)));
        assert!(list.iter().any(|i| under("rollouts/old.yaml", i)));
        assert!(!list.iter().any(|i| under("rollouts/drafts2.yaml", i)));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_rollout("web").is_ok());
        assert!(check_rollout("../x").is_err());
        assert!(check_rollout(".hidden").is_err());
        assert!(check_branch("canaryd/status").is_ok());
        assert!(check_branch("bad..name").is_err());
        assert!(split_path("a/../b").is_err());
        assert_eq!(
            normalize_dir("./rollouts/").ok(),
            Some("rollouts".to_string())
        );
        assert_eq!(normalize_dir(".").ok(), Some(String::new()));
    }
}
