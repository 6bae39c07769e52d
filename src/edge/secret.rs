//! Secrets (tokens, passwords, keys, webhook secrets): read from a file or an environment
//! variable named in the controller configuration, never from the repository, and never
//! printed. [`Secret`]'s `Debug` and `Display` show `***`; only [`Secret::expose`] gives the
//! value, at the one place that sends it.

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

/// A secret value. Its `Debug`/`Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the request or handshake that needs it. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from, as configuration spells it: `{file: /run/secrets/x}` or
/// `{env: GITHUB_TOKEN}`. Exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// A file holding the secret; surrounding whitespace (a trailing newline) is trimmed.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable holding the secret.
    #[serde(default)]
    pub env: Option<String>,
}

/// Why a secret could not be read. Names where it was looked for, never its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("{what}: give exactly one of `file` and `env`")]
    Ambiguous { what: String },
    #[error("{what}: cannot read {}: {reason}", path.display())]
    File {
        what: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{what}: environment variable {var} is not set")]
    Env { what: String, var: String },
    #[error("{what}: the secret is empty")]
    Empty { what: String },
}

impl SecretRef {
    pub fn file(path: impl Into<PathBuf>) -> SecretRef {
        SecretRef {
            file: Some(path.into()),
            env: None,
        }
    }

    pub fn env(var: impl Into<String>) -> SecretRef {
        SecretRef {
            file: None,
            env: Some(var.into()),
        }
    }

    /// Reads the secret now. Files are read on every call, so a rotated secret is picked up
    /// without a restart. `what` names the setting in errors (`forge.github.token`).
    pub fn read(&self, what: &str) -> Result<Secret, SecretError> {
        let value = match (&self.file, &self.env) {
            (Some(path), None) => read_file(path, what)?,
            (None, Some(var)) => std::env::var(var).map_err(|_| SecretError::Env {
                what: what.to_string(),
                var: var.clone(),
            })?,
            _ => {
                return Err(SecretError::Ambiguous {
                    what: what.to_string(),
                });
            }
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(SecretError::Empty {
                what: what.to_string(),
            });
        }
        Ok(Secret(value.to_string()))
    }
}

fn read_file(path: &Path, what: &str) -> Result<String, SecretError> {
    std::fs::read_to_string(path).map_err(|e| SecretError::File {
        what: what.to_string(),
        path: path.to_path_buf(),
        reason: e.kind().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn read_from_file_trims_and_errors_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").unwrap();
        assert_eq!(SecretRef::file(&path).read("x").unwrap().expose(), "abc123");
        let missing = SecretRef::file(dir.path().join("nope"))
            .read("forge.github.token")
            .unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("forge.github.token: cannot read")
        );
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            SecretRef::file(&path).read("x"),
            Err(SecretError::Empty { .. })
        ));
        assert!(matches!(
            SecretRef::default().read("x"),
            Err(SecretError::Ambiguous { .. })
        ));
        assert!(matches!(
            SecretRef::env("CANARYD_TEST_SURELY_UNSET_VAR").read("x"),
            Err(SecretError::Env { .. })
        ));
    }
}
