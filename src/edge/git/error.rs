//! What goes wrong talking to Git: [`GitError`], the libgit2 [`Cause`] with credentials scrubbed from it, and [`redact`] for URLs.

use std::fmt;
use std::path::PathBuf;

use git2::{ErrorClass, ErrorCode};

use crate::edge::secret::Secret;

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
    pub(super) message: String,
    pub(super) code: ErrorCode,
    class: ErrorClass,
}

impl Cause {
    pub(super) fn new(e: &git2::Error, url: Option<&str>) -> Cause {
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
    pub(super) fn scrub(mut self, sent: &[Secret]) -> Cause {
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

    pub(super) fn is_network(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
