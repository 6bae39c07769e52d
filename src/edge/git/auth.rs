//! Credentials for the remote (`gitAuth:`): [`GitAuth`], and the `Session` that hands them to libgit2, each kind once, and checks SSH host keys.
//
// Each network operation runs with one `Session`: the credentials of `GitAuth`, each kind
// given once (libgit2 asks again after a refusal, and would go on asking forever), the SSH host
// keys of a known_hosts file, and the secrets it handed out, scrubbed from what libgit2 says.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;

use git2::{CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode, RemoteCallbacks};
use serde::Deserialize;

use super::error::{Cause, GitError};
use super::known_hosts::{KnownHosts, check_host_key};
use crate::edge::secret::{Secret, SecretRef};

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
pub(super) struct Session<'a> {
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
    pub(super) fn new(
        auth: &'a GitAuth,
        url: &'a str,
        config: Option<git2::Config>,
    ) -> Session<'a> {
        Session {
            auth,
            url,
            config,
            given: Cell::new(CredentialType::empty()),
            refusal: RefCell::new(None),
            sent: RefCell::new(Vec::new()),
        }
    }

    pub(super) fn callbacks(&self) -> RemoteCallbacks<'_> {
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
    pub(super) fn cause(&self, e: &git2::Error) -> Cause {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
