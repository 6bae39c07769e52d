//! Names and paths as canaryd takes them: the origin remote and its tracking refs, remote URLs versus local paths, branch and rollout names, repository-relative paths.

use std::path::PathBuf;

use super::error::GitError;

/// Name of the remote in the mirror's configuration.
pub(super) const ORIGIN: &str = "origin";

pub(super) fn tracking(branch: &str) -> String {
    format!("refs/remotes/{ORIGIN}/{branch}")
}

/// Whether `source` is a URL rather than a local path (scheme, or scp-like `host:path`).
pub(super) fn is_url(source: &str) -> bool {
    source.contains("://") || scp_like(source)
}

fn scp_like(source: &str) -> bool {
    match (source.find(':'), source.find('/')) {
        (Some(colon), slash) => colon > 1 && slash.is_none_or(|s| colon < s),
        _ => false,
    }
}

/// The directory a local remote names (a plain path or a `file://` URL).
pub(super) fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(path) = url.strip_prefix("file://") {
        return Some(PathBuf::from(path));
    }
    (!is_url(url)).then(|| PathBuf::from(url))
}

pub(super) fn check_branch(name: &str) -> Result<(), GitError> {
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

pub(super) fn check_rollout(name: &str) -> Result<(), GitError> {
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
pub(super) fn normalize_dir(dir: &str) -> Result<String, GitError> {
    let trimmed = dir.trim().trim_start_matches("./").trim_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(String::new());
    }
    split_path(trimmed)?;
    Ok(trimmed.to_string())
}

/// Components of a repository-relative path, refusing `..`, `.`, `.git` and empty ones.
pub(super) fn split_path(path: &str) -> Result<Vec<&str>, GitError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
