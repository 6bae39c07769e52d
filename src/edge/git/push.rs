//! Pushing a ref without force: to a remote through libgit2, or into a local working copy by hand; a refusal told apart from a lost race.
//
// Remotes may be URLs (file://, http(s)://, ssh://, git://, scp-like) or local paths. libgit2's
// local transport refuses to push into a non-bare repository at all, so for a local working
// copy the objects are copied and the ref is updated with a compare-and-swap instead (see
// `push_into_working_copy`). The branch checked out in such a working copy is never pushed.

use git2::{ErrorCode, ObjectType, Oid, PushOptions, Repository};

use super::auth::{GitAuth, Session};
use super::error::{Cause, GitError, redact};
use super::names::local_path;

/// What a push did, before the caller turns it into its own result type.
pub(super) enum Pushed {
    Done,
    Rejected,
}

/// Pushes local `src` to `dst` on the remote `remote_name` (whose URL is `url`), without
/// force. A non-fast-forward, whether libgit2 sees it before sending or the server reports
/// it per reference, is `Rejected`; a server refusing for another reason (a hook, a
/// checked-out branch) is an error.
pub(super) fn push_ref(
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
        // A lock the remote holds is no lost race: trying again meets it again.
        Some(reason) if reason.contains("lock") => {
            if clear_stale_remote_lock(url, dst) {
                Ok(Pushed::Rejected)
            } else {
                Err(GitError::Refused {
                    url: redact(url),
                    reference: dst.to_string(),
                    reason,
                })
            }
        }
        Some(_) => Ok(Pushed::Rejected),
    }
}

/// How old a lock file in a local remote must be to count as left by a process that died:
/// a push holds its ref's lock for the milliseconds of the ref's update.
const STALE_REMOTE_LOCK: std::time::Duration = std::time::Duration::from_secs(2);

/// Removes `<remote>/<dst>.lock` from a local bare remote when it is older than
/// [`STALE_REMOTE_LOCK`]: a push into a repository on this machine runs in the pushing
/// process (libgit2's local transport), so a kill during it leaves the ref's lock behind and
/// every later push is refused. Whether it removed one.
fn clear_stale_remote_lock(url: &str, dst: &str) -> bool {
    let Some(path) = local_path(url) else {
        return false;
    };
    let lock = path.join(format!("{dst}.lock"));
    let old = std::fs::metadata(&lock)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| crate::edge::clock::system_time().duration_since(t).ok())
        .is_some_and(|age| age >= STALE_REMOTE_LOCK);
    if old && std::fs::remove_file(&lock).is_ok() {
        tracing::warn!(
            lock = %lock.display(),
            "removed a stale lock file from the local remote (a push was cut short)"
        );
        return true;
    }
    false
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
