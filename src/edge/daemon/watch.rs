//! Watching a local repository for commits to the watched branch, so that a push wakes the
//! loop at once instead of at the next poll.

use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::edge::telemetry::{ErrorClass, Event as Tele, Telemetry};

/// Watches `path` (a repository) and sends on `tx` when `branch` moves there. The daemon's own
/// pushes (status and revert branches) do not wake it.
pub(super) fn watch(
    path: &std::path::Path,
    branch: &str,
    tx: mpsc::Sender<()>,
    telemetry: &Telemetry,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let git_dir = if path.join(".git").is_dir() {
        path.join(".git")
    } else {
        path.to_path_buf()
    };
    let watched = PathBuf::from("refs/heads").join(branch);
    let watched_lock = PathBuf::from(format!("refs/heads/{branch}.lock"));
    let moves_branch = move |p: &std::path::Path| {
        p.ends_with(&watched) || p.ends_with(&watched_lock) || p.ends_with("packed-refs")
    };
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(e) = res
            && !e.kind.is_access()
            && e.paths.iter().any(|p| moves_branch(p))
        {
            let _ = tx.try_send(());
        }
    };
    let started = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&git_dir, notify::RecursiveMode::Recursive)
            .map(|()| w)
    });
    match started {
        Ok(w) => {
            tracing::info!(path = %git_dir.display(), "watching the repository for commits");
            Some(w)
        }
        Err(e) => {
            telemetry.record(Tele::Error {
                class: ErrorClass::Git,
                rollout: None,
                message: format!("cannot watch {}: {e}; polling only", git_dir.display()),
            });
            None
        }
    }
}
