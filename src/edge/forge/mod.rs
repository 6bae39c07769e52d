//! The forge boundary: the revert pull request and the commit status of a rollout on the Git host (GitHub today), one file per driver.
//!
//! The daemon holds an [`AnyForge`] (enum dispatch, like the routers: a new forge is a new file
//! and a new variant) and calls two idempotent, keyed effects:
//!
//! - [`Forge::revert_pr`]: the pull request from the revert branch the daemon has already
//!   pushed. It is looked up by (head, base) before one is opened, so calling it again after a
//!   restart, or after an answer was lost, updates the one pull request instead of opening a
//!   second.
//! - [`Forge::report`]: the `canaryd/<rollout>` status of the commit that started the rollout,
//!   set again on every call (the latest one wins on the forge's side).
//!
//! Errors say whether trying again can help ([`ForgeError::Transient`], with how long to wait
//! when the forge said so) or an operator must act ([`ForgeError::Permanent`]). A call retries
//! by itself only a little (a few attempts, a few seconds) so that it never holds the daemon's
//! loop; longer waits are handed back as `retry_after`.
//!
//! No type of the GitHub client leaks out of this module, and no secret appears in any
//! `Display` or `Debug` output, error, or request body: tokens and keys are only ever sent in
//! the `Authorization` header.

pub mod github;

use std::future::Future;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::edge::secret::SecretRef;

/// What the daemon asks of a forge. Each method is idempotent: calling it twice with the same
/// input leaves the forge as one call would.
///
/// The futures are `Send` (spelled out instead of `async fn`, which cannot promise it), so the
/// daemon can run a call on any worker.
pub trait Forge {
    /// Opens the revert pull request, or finds the open one for the same head and base branch
    /// and updates its title and body when they differ.
    fn revert_pr(
        &self,
        req: &RevertRequest,
    ) -> impl Future<Output = Result<PullRequest, ForgeError>> + Send;

    /// Sets the status named `report.context` on commit `report.sha`: a commit status, or a
    /// check run created once and then updated.
    fn report(&self, report: &CommitReport) -> impl Future<Output = Result<(), ForgeError>> + Send;
}

/// The forge the daemon talks to, picked by configuration.
#[derive(Debug)]
pub enum AnyForge {
    GitHub(github::GitHub),
}

impl AnyForge {
    /// Checks the configuration and reads its secrets (so a missing token stops the daemon at
    /// start, not at the first abort). Talks to nobody.
    pub fn connect(cfg: &ForgeConfig) -> Result<AnyForge, ForgeError> {
        match cfg {
            ForgeConfig::GitHub(github) => Ok(AnyForge::GitHub(github::GitHub::connect(github)?)),
        }
    }
}

impl Forge for AnyForge {
    async fn revert_pr(&self, req: &RevertRequest) -> Result<PullRequest, ForgeError> {
        match self {
            AnyForge::GitHub(forge) => forge.revert_pr(req).await,
        }
    }

    async fn report(&self, report: &CommitReport) -> Result<(), ForgeError> {
        match self {
            AnyForge::GitHub(forge) => forge.report(report).await,
        }
    }
}

/// The revert pull request to open (or update).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevertRequest {
    /// The revert branch, already pushed to the repository: `canaryd/revert/<rollout>-<12hex>`.
    pub head: String,
    /// The branch to merge it into (the one the rollout's commit is on).
    pub base: String,
    pub title: String,
    /// The evidence, in Markdown.
    pub body: String,
}

/// A pull request as the forge shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    /// The page a person opens (`html_url`).
    pub url: String,
    /// Whether this call's own create request was answered as created. `false` when an open
    /// pull request was found, including one an earlier call made but never heard back about.
    pub created: bool,
}

/// The state of a commit report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportState {
    /// The rollout is in progress.
    Pending,
    /// The rollout was promoted.
    Success,
    /// The rollout was aborted: the canary failed its analysis.
    Failure,
    /// canaryd could not decide (the analysis errored, the router failed).
    Error,
}

/// One status of one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitReport {
    /// The full commit id.
    pub sha: String,
    /// The status's name, `canaryd/<rollout>`: one status per (commit, context).
    pub context: String,
    pub state: ReportState,
    /// One line; a commit status keeps the first 140 characters.
    pub description: String,
    /// Where a person reads more.
    pub target_url: Option<String>,
}

/// Why a forge call failed. The message names what was being done and never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The forge could not be reached, failed, or limits our rate: the same call may succeed
    /// later, after `retry_after` when the forge said how long.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The forge refused the request or the configuration is wrong: an operator must act;
    /// trying again as is will fail the same way.
    #[error("{0}")]
    Permanent(String),
}

impl ForgeError {
    pub fn transient(message: impl Into<String>) -> ForgeError {
        ForgeError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> ForgeError {
        ForgeError::Permanent(message.into())
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ForgeError::Transient { .. })
    }

    /// How long the forge asked us to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgeError::Transient { retry_after, .. } => *retry_after,
            ForgeError::Permanent(_) => None,
        }
    }
}

/// The `forge:` section of the controller configuration: `forge: {github: {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub enum ForgeConfig {
    #[serde(rename = "github")]
    GitHub(GitHubConfig),
}

/// A GitHub (or GitHub Enterprise Server) repository and how to authenticate to it. Exactly
/// one of `token` and `app`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitHubConfig {
    /// The REST API root: `https://api.github.com` (the default), or
    /// `https://HOST/api/v3` for GitHub Enterprise Server.
    #[serde(default)]
    pub api_url: Option<String>,
    /// The account or organisation owning the repository.
    pub owner: String,
    /// The repository's name.
    pub repo: String,
    /// A personal access token or other bearer token (fine-grained: pull requests and commit
    /// statuses read and write).
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// A GitHub App installed on the repository (pull requests, commit statuses and checks
    /// read and write).
    #[serde(default)]
    pub app: Option<GitHubApp>,
    /// How the rollout's state is shown on its commit.
    #[serde(default)]
    pub statuses: StatusKind,
}

/// A GitHub App: canaryd signs a JWT with its private key and trades it for an installation
/// token scoped to the one repository.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitHubApp {
    /// The App's id (the App's settings page, "App ID").
    pub id: u64,
    /// The App's private key, PEM (`-----BEGIN RSA PRIVATE KEY-----` or PKCS#8).
    pub private_key: SecretRef,
    /// The installation on the repository's owner (the number in the installation's URL).
    pub installation_id: u64,
}

/// How the rollout's state is shown on its commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StatusKind {
    /// A commit status (`POST /repos/{owner}/{repo}/statuses/{sha}`): works with any token.
    #[default]
    CommitStatus,
    /// A check run, created once and updated after: needs `app` (GitHub lets only Apps write
    /// checks).
    CheckRun,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `yaml` as a `forge:` section and connects; the error's text, or `ok`.
    fn connect(yaml: &str) -> String {
        let cfg: ForgeConfig = match serde_saphyr::from_str(yaml) {
            Ok(cfg) => cfg,
            Err(e) => return format!("yaml: {e}"),
        };
        match AnyForge::connect(&cfg) {
            Ok(forge) => format!("ok {forge:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn configuration_is_checked_with_errors_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "ghp_not_a_real_token_123\n").unwrap();
        let not_pem = dir.path().join("key.pem");
        std::fs::write(&not_pem, "-----BEGIN NOTHING-----\n").unwrap();
        let token = token.display();
        let not_pem = not_pem.display();
        let missing = dir.path().join("missing").display().to_string();

        let ok = connect(&format!(
            "github: {{owner: octo-org, repo: shop, token: {{file: {token}}}}}"
        ));
        assert!(ok.starts_with("ok GitHub(GitHub {"), "{ok}");
        assert!(ok.contains("api: \"https://api.github.com/\""), "{ok}");
        assert!(ok.contains("statuses: CommitStatus"), "{ok}");
        // Debug names where the token is, never the token.
        assert!(!ok.contains("ghp_not_a_real_token_123"), "{ok}");

        for (yaml, says) in [
            (
                format!(
                    "github: {{owner: o, repo: r, token: {{file: {token}}}, app: {{id: 1, installationId: 2, privateKey: {{file: {not_pem}}}}}}}"
                ),
                "forge.github: give exactly one of `token` and `app`",
            ),
            (
                "github: {owner: o, repo: r}".to_string(),
                "forge.github: give one of `token`",
            ),
            (
                format!(
                    "github: {{owner: o, repo: r, token: {{file: {token}}}, statuses: checkRun}}"
                ),
                "forge.github.statuses: `checkRun` needs `app`",
            ),
            (
                format!(
                    "github: {{owner: o, repo: r, app: {{id: 1, installationId: 2, privateKey: {{file: {not_pem}}}}}}}"
                ),
                "forge.github.app.privateKey: not an RSA private key in PEM",
            ),
            (
                format!(
                    "github: {{owner: o, repo: r, app: {{id: 0, installationId: 2, privateKey: {{file: {not_pem}}}}}}}"
                ),
                "forge.github.app.id",
            ),
            (
                format!("github: {{owner: o, repo: r, token: {{file: {missing}}}}}"),
                "forge.github.token: cannot read",
            ),
            (
                format!("github: {{owner: o, repo: r, token: {{file: {token}, env: X}}}}"),
                "forge.github.token: give exactly one of `file` and `env`",
            ),
            (
                format!("github: {{owner: o/x, repo: r, token: {{file: {token}}}}}"),
                "forge.github.owner",
            ),
            (
                format!(
                    "github: {{apiUrl: 'github.example.com', owner: o, repo: r, token: {{file: {token}}}}}"
                ),
                "forge.github.apiUrl",
            ),
            (
                format!("github: {{owner: o, repo: r, tokn: {{file: {token}}}}}"),
                "unknown field `tokn`",
            ),
            (
                format!(
                    "github: {{owner: o, repo: r, statuses: commitstatus, token: {{file: {token}}}}}"
                ),
                "unknown variant `commitstatus`",
            ),
            (
                "gitlab: {owner: o, repo: r}".to_string(),
                "unknown variant `gitlab`",
            ),
        ] {
            let got = connect(&yaml);
            assert!(got.contains(says), "{yaml}\n  got: {got}\n  want: {says}");
        }
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let e = ForgeError::Transient {
            message: "github: x: rate limit".into(),
            retry_after: Some(Duration::from_secs(5)),
        };
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        assert_eq!(e.to_string(), "github: x: rate limit");
        let e = ForgeError::permanent("github: x: bad credentials");
        assert!(!e.is_transient());
        assert_eq!(e.retry_after(), None);
    }
}
