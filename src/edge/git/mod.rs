//! Git as the daemon's input and database: the bare mirror, spec and status files, gate commits, pushes (the only module using `git2`).
//
// Everything here blocks; the daemon calls it from `tokio::task::spawn_blocking`. The remote is
// a shared database with other writers: nothing is ever force-pushed, and a push that loses a
// race comes back as `Push::Rejected` so that the caller re-fetches, re-plans and tries again.
//
// One file per concern:
//
// - `mirror`: the daemon's bare mirror (fetch, spec and status files, history, gates, status
//   commits, revert branches) and its stale locks;
// - `walk`: which files of a commit are spec files (`.canarydignore`, limits);
// - `tree`: blobs and trees: bounded text, the status folder, tree edits;
// - `push`: pushing without force, into a bare remote or a local working copy;
// - `auth` and `known_hosts`: credentials, the per-operation `Session`, SSH host keys;
// - `gate`: promote/abort gate commits and commit trailers;
// - `hand`: repositories by path, as `canaryd demo`, the CLI and the benchmarks use them;
// - `names`: branch, rollout and path names, remote URLs versus local paths;
// - `error`: `GitError` and its scrubbed libgit2 `Cause`.

mod auth;
mod error;
mod gate;
mod hand;
mod known_hosts;
mod mirror;
mod names;
mod push;
mod tree;
mod walk;

use git2::Signature;

pub use auth::{GitAuth, TOKEN_USER};
pub use error::{Cause, GitError, redact};
pub use gate::{GateCommit, gate_commit, trailers};
pub use hand::{
    branch_tip, commit_files, file_at_commit, gates_at_head, head_commit, init_bare, log,
    read_status_branch, read_status_branch_as, read_status_tree_as, set_branch, status_source,
};
pub use mirror::{
    Heads, MAX_HISTORY_WALK, Mirror, Push, Remote, RevertBranch, abort_after_status_push,
    clear_stale_locks,
};
pub use tree::STATUS_DIR;
pub use walk::{IGNORE_FILE, MAX_SPEC_FILES, SpecFiles};

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

fn signature(author: &Author) -> Result<Signature<'static>, git2::Error> {
    Signature::now(&author.name, &author.email)
}
