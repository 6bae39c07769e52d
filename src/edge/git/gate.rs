//! Gate commits: promote and abort commits on the watched branch, read from their trailers, and made for `canaryd promote|abort`.

use std::path::Path;

use git2::{Commit, ErrorCode, Repository};

use super::auth::GitAuth;
use super::error::{Cause, GitError, redact};
use super::names::ORIGIN;
use super::push::{Pushed, push_ref};
use super::{Author, signature};

/// A promote or abort commit on the watched branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateCommit {
    pub id: String,
    /// `promote` or `abort`.
    pub action: String,
    pub revision: String,
}

impl GateCommit {
    /// (commit, action, revision), as [`crate::core::plan::pending_gates`] takes them.
    pub fn parts(&self) -> (&str, &str, &str) {
        (&self.id, &self.action, &self.revision)
    }
}

/// The gate a commit records for `rollout`, if it is one.
pub(super) fn gate_of(commit: &Commit<'_>, rollout: &str) -> Option<GateCommit> {
    any_gate(commit)
        .into_iter()
        .find_map(|(name, gate)| (name == rollout).then_some(gate))
}

/// The gates a commit carries, each with the rollout it names: one for `canaryd promote|abort
/// ROLLOUT`, one per member for a group (`Rollout:` and `Revision:` trailers in pairs, in
/// order).
pub(super) fn any_gate(commit: &Commit<'_>) -> Vec<(String, GateCommit)> {
    let message = String::from_utf8_lossy(commit.message_bytes());
    let found = trailers(&message);
    let Some(action) = found
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case("Canaryd-Gate"))
        .map(|(_, v)| v.to_ascii_lowercase())
    else {
        return Vec::new();
    };
    if !matches!(action.as_str(), "promote" | "abort") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rollout: Option<&str> = None;
    for (k, v) in &found {
        if k.eq_ignore_ascii_case("Rollout") {
            rollout = Some(v);
        } else if k.eq_ignore_ascii_case("Revision")
            && let Some(name) = rollout.take()
            && !v.is_empty()
        {
            out.push((
                name.to_string(),
                GateCommit {
                    id: commit.id().to_string(),
                    action: action.clone(),
                    revision: v.clone(),
                },
            ));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
