//! The GitHub driver: the revert pull request, commit statuses and check runs through GitHub's REST API (github.com or GitHub Enterprise Server), with octocrab as the client.
//!
//! # What octocrab does here, and what it does not
//!
//! octocrab sends the requests and owns authentication: a bearer token, or a GitHub App's JWT
//! (RS256, signed with the App's key) traded for an installation token that octocrab caches
//! until 30 s before it expires and asks for again after a 401. The token is scoped to the one
//! configured repository. canaryd builds octocrab's service stack itself (a hyper client over
//! rustls with the system's CA roots) instead of octocrab's default one, because the default
//! one:
//!
//! - resends any request, POST included, at once on a 5xx or 429 (`RetryConfig::Simple(3)`):
//!   a create whose answer was lost would come back as a second pull request or check run.
//!   canaryd retries itself, and only through a lookup (below);
//! - sends `User-Agent: octocrab` (and, added to, would send two User-Agents), and leaves the
//!   `X-GitHub-Api-Version` header off the installation token request;
//! - logs every 5xx at ERROR, which in canaryd means an operator must act.
//!
//! Requests go through octocrab's untyped `_get`/`_post`/`_patch`, read into canaryd's own
//! small answer types: GitHub's rate limits are in the headers (octocrab's typed calls drop
//! them on success), error bodies are sometimes HTML or plain text, and a pull request answer
//! must not fail to parse because of a field octocrab's model does not expect.
//!
//! # Idempotence and retries
//!
//! Every effect is looked up before it is made, and a retry starts again from the lookup:
//!
//! - `revert_pr`: `GET /repos/{o}/{r}/pulls?state=open&head=OWNER:BRANCH&base=BASE` (with the
//!   `OWNER:` prefix: GitHub silently ignores a bare branch and lists every open pull request;
//!   the answer is also filtered here by head and base). Found: its title and body are updated
//!   when they differ (nothing is sent when they are the same). Not found: `POST pulls`; a
//!   422 "A pull request already exists" (another writer, or our own lost answer) is followed
//!   by the lookup and treated as found; "No commits between" is permanent.
//! - `report` as a commit status: `POST statuses/{sha}`. Sending the same status twice leaves
//!   the commit as sending it once (the latest status of a context wins), so it is retried as is.
//! - `report` as a check run: the run's id is remembered per (sha, context) in memory; when it
//!   is not known (first call, restart), `GET commits/{sha}/check-runs?check_name=` finds it
//!   before one is created. Later calls update it.
//!
//! So a 5xx after a create that did happen is followed by a lookup that finds it, not by a
//! second create; a 5xx after a create that did not happen is followed by the same create.
//!
//! A call makes at most [`Retry::attempts`] attempts, waiting an exponential backoff with
//! jitter (capped at [`Retry::max_backoff`]) between them, or what GitHub asked for
//! (`retry-after`, or until `x-ratelimit-reset` on a primary rate limit) when that is at most
//! [`Retry::max_wait`]; a longer wait is returned as [`ForgeError::Transient`] with
//! `retry_after`, for the daemon to schedule. Each request is bounded by
//! [`Retry::request_timeout`].
//!
//! # Secrets
//!
//! The token is read from its file or variable at every call (a rotated token is picked up)
//! and sent only in the `Authorization` header: it is replaced by `***` in every title, body
//! and description before they are sent, and in every message quoted from GitHub. The App key
//! is read once, at [`GitHub::connect`]. `Debug` shows where secrets come from, never them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use hyper::http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use hyper::{StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use octocrab::auth::AppAuth;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::base_uri::BaseUriLayer;
use octocrab::{AuthState, CachedToken, EncodingKey, Octocrab, OctocrabBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    CommitReport, Forge, ForgeError, GitHubConfig, PullRequest, ReportState, RevertRequest,
    StatusKind,
};
use crate::edge::secret::{Secret, SecretRef};

/// The API root when `apiUrl` is not given.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The REST API version asked for on every request (supported until March 2028).
pub const API_VERSION: &str = "2022-11-28";
/// The User-Agent of every request (GitHub refuses requests without one).
pub const USER_AGENT_VALUE: &str = concat!("canaryd/", env!("CARGO_PKG_VERSION"));
/// GitHub keeps at most this many characters of a commit status's description.
pub const STATUS_DESCRIPTION_MAX: usize = 140;
/// GitHub refuses a pull request body longer than this many characters.
pub const PR_BODY_MAX: usize = 65_536;
/// GitHub refuses a check run summary longer than this many characters.
const CHECK_SUMMARY_MAX: usize = 65_535;
/// How much of a message from GitHub is quoted in an error.
const MAX_QUOTE: usize = 300;
/// Check run ids remembered at most (one per commit and rollout; cleared when full).
const MAX_REMEMBERED_RUNS: usize = 1024;
/// The longest wait a rate limit answer is believed for (the primary window is an hour).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The wait after a secondary rate limit that did not say how long: GitHub's docs say at
/// least a minute.
const SECONDARY_DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How one call retries by itself before handing a transient error back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// The backoff after the first failed attempt; doubled after each, with jitter.
    pub first_backoff: Duration,
    /// The backoff never exceeds this.
    pub max_backoff: Duration,
    /// The longest wait GitHub may ask for (rate limits) that is slept inside the call; a
    /// longer one is returned as `retry_after`.
    pub max_wait: Duration,
    /// The bound on each request, answer included.
    pub request_timeout: Duration,
}

impl Default for Retry {
    /// 3 attempts, 250 ms then 500 ms backoff (±50 %), rate limits waited up to 3 s, 10 s per
    /// request.
    fn default() -> Retry {
        Retry {
            attempts: 3,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
            max_wait: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// The wait after failed attempt `failed` (1-based): exponential, capped, then "equal
    /// jitter" (half fixed, half random) so that many controllers do not retry in step.
    fn backoff(&self, failed: u32) -> Duration {
        let exp = self
            .first_backoff
            .saturating_mul(2u32.saturating_pow(failed.saturating_sub(1)));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// How requests are authenticated.
enum Auth {
    /// A bearer token, read at every call.
    Token(SecretRef),
    /// A GitHub App installation; octocrab signs the JWT and caches the installation token.
    App {
        id: u64,
        installation: u64,
        key: EncodingKey,
    },
}

/// One repository on GitHub.
pub struct GitHub {
    api: Uri,
    owner: String,
    repo: String,
    auth: Auth,
    statuses: StatusKind,
    retry: Retry,
    connector: HttpsConnector<HttpConnector>,
    /// Built at the first call: octocrab spawns its worker on the running Tokio runtime.
    client: tokio::sync::OnceCell<Octocrab>,
    /// Check run ids by (sha, context).
    runs: Mutex<HashMap<(String, String), u64>>,
}

impl fmt::Debug for GitHub {
    /// Where the secrets come from, never them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("GitHub");
        s.field("api", &self.api.to_string())
            .field("owner", &self.owner)
            .field("repo", &self.repo);
        match &self.auth {
            Auth::Token(from) => s.field("token", from),
            Auth::App {
                id, installation, ..
            } => s.field("app", &format_args!("{id} installation {installation}")),
        };
        s.field("statuses", &self.statuses)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// One call's client and the token to keep out of everything sent.
struct Call<'a> {
    /// The shared client itself in App mode: a clone of octocrab would copy its installation
    /// token cache instead of sharing it, and ask for a new token at every call.
    crab: Cow<'a, Octocrab>,
    token: Option<Secret>,
}

impl Call<'_> {
    /// `text` with the token replaced by `***`.
    fn scrub(&self, text: &str) -> String {
        scrub(text, self.token.as_ref())
    }
}

/// The methods the driver sends.
#[derive(Clone, Copy, Debug)]
enum Verb {
    Get,
    Post,
    Patch,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Patch => "PATCH",
        }
    }
}

/// One answer from GitHub.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: for<'de> Deserialize<'de>>(&self, what: &str) -> Result<T, ForgeError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            // The effect may have happened; the retry's lookup will find it.
            ForgeError::transient(format!(
                "github: {what}: unexpected answer ({}): {e}",
                self.status.as_u16()
            ))
        })
    }
}

impl GitHub {
    /// Checks the configuration and reads its secrets; talks to nobody.
    pub fn connect(cfg: &GitHubConfig) -> Result<GitHub, ForgeError> {
        let api = api_url(cfg.api_url.as_deref().unwrap_or(DEFAULT_API_URL))?;
        check_name("forge.github.owner", &cfg.owner)?;
        check_name("forge.github.repo", &cfg.repo)?;
        let auth = match (&cfg.token, &cfg.app) {
            (Some(_), Some(_)) => {
                return Err(ForgeError::permanent(
                    "forge.github: give exactly one of `token` and `app`, not both",
                ));
            }
            (None, None) => {
                return Err(ForgeError::permanent(
                    "forge.github: give one of `token` (a bearer token) and `app` (a GitHub App)",
                ));
            }
            (Some(token), None) => {
                token.read("forge.github.token").map_err(secret_error)?;
                Auth::Token(token.clone())
            }
            (None, Some(app)) => {
                if app.id == 0 {
                    return Err(ForgeError::permanent(
                        "forge.github.app.id: 0 is not an App id",
                    ));
                }
                if app.installation_id == 0 {
                    return Err(ForgeError::permanent(
                        "forge.github.app.installationId: 0 is not an installation id",
                    ));
                }
                let pem = app
                    .private_key
                    .read("forge.github.app.privateKey")
                    .map_err(secret_error)?;
                let key = EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|_| {
                    ForgeError::permanent(
                        "forge.github.app.privateKey: not an RSA private key in PEM \
                         (download one from the App's settings)",
                    )
                })?;
                Auth::App {
                    id: app.id,
                    installation: app.installation_id,
                    key,
                }
            }
        };
        if cfg.statuses == StatusKind::CheckRun && !matches!(auth, Auth::App { .. }) {
            return Err(ForgeError::permanent(
                "forge.github.statuses: `checkRun` needs `app` (GitHub lets only Apps write \
                 check runs); use `commitStatus` with a token",
            ));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| {
                ForgeError::permanent(format!(
                    "forge.github: cannot load the system's CA certificates: {e}"
                ))
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(GitHub {
            api,
            owner: cfg.owner.clone(),
            repo: cfg.repo.clone(),
            auth,
            statuses: cfg.statuses,
            retry: Retry::default(),
            connector,
            client: tokio::sync::OnceCell::new(),
            runs: Mutex::new(HashMap::new()),
        })
    }

    /// The same forge with another retry policy.
    pub fn with_retry(mut self, retry: Retry) -> GitHub {
        self.retry = retry;
        self
    }

    /// octocrab over canaryd's own service stack: hyper + rustls, canaryd's headers set (not
    /// appended) on every request, the API root prepended to every path, and no retry layer.
    fn build_client(&self) -> Octocrab {
        let hyper =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, octocrab::OctoBody>(self.connector.clone());
        let auth = match &self.auth {
            Auth::Token(_) => AuthState::None,
            Auth::App {
                id,
                installation,
                key,
            } => AuthState::Installation {
                app: AppAuth {
                    app_id: AppId(*id),
                    key: key.clone(),
                },
                installation: InstallationId(*installation),
                token: CachedToken::default(),
                // The installation token can reach this repository only.
                repositories: Some(vec![self.repo.clone()]),
                repository_ids: None,
            },
        };
        let builder = OctocrabBuilder::new_empty()
            .with_service(hyper)
            .with_layer(&tower::util::MapRequestLayer::new(canaryd_headers))
            .with_layer(&BaseUriLayer::new(self.api.clone()))
            .with_auth(auth);
        match builder.build() {
            Ok(crab) => crab,
            Err(never) => match never {},
        }
    }

    /// This call's client: the shared one, with the token read now in token mode.
    async fn call(&self) -> Result<Call<'_>, ForgeError> {
        let crab = self
            .client
            .get_or_init(|| async { self.build_client() })
            .await;
        match &self.auth {
            Auth::Token(from) => {
                let token = from.read("forge.github.token").map_err(secret_error)?;
                let crab = crab
                    .user_access_token(token.expose().to_string())
                    .map_err(|e| ForgeError::permanent(format!("forge.github.token: {e}")))?;
                Ok(Call {
                    crab: Cow::Owned(crab),
                    token: Some(token),
                })
            }
            Auth::App { .. } => Ok(Call {
                crab: Cow::Borrowed(crab),
                token: None,
            }),
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/repos/{}/{}/{rest}", self.owner, self.repo)
    }

    /// One request, bounded by the request timeout. Any answer is `Ok`, error statuses
    /// included; `Err` is a request that got no answer (or whose installation token could not
    /// be had).
    async fn send(
        &self,
        call: &Call<'_>,
        verb: Verb,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ForgeError> {
        let what = format!(
            "{} {}",
            verb.as_str(),
            path.split('?').next().unwrap_or(path)
        );
        let request = async {
            let response = match verb {
                Verb::Get => call.crab._get(path).await,
                Verb::Post => call.crab._post(path, body).await,
                Verb::Patch => call.crab._patch(path, body).await,
            }?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes().to_vec();
            Ok::<_, octocrab::Error>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let answer = match tokio::time::timeout(self.retry.request_timeout, request).await {
            Err(_) => {
                return Err(ForgeError::transient(format!(
                    "github: {what}: no answer within {:?}",
                    self.retry.request_timeout
                )));
            }
            Ok(Err(e)) => return Err(client_error(&what, e, call)),
            Ok(Ok(answer)) => answer,
        };
        tracing::debug!(
            method = verb.as_str(),
            path = %path,
            status = answer.status.as_u16(),
            "github answered"
        );
        Ok(answer)
    }

    /// `attempt` until it succeeds, fails permanently, or the attempts run out; see the
    /// module doc for the waits.
    async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, ForgeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ForgeError>>,
    {
        let mut failed = 0;
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(e @ ForgeError::Permanent(_)) => return Err(e),
                Err(e) => e,
            };
            failed += 1;
            let wait = match error.retry_after() {
                Some(wait) if wait > self.retry.max_wait => return Err(error),
                Some(wait) => wait,
                None => self.retry.backoff(failed),
            };
            if failed >= self.retry.attempts {
                return Err(error);
            }
            tracing::warn!(
                attempt = failed,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "github: {what} failed; trying again"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// The error for an answer that is not the success expected.
    fn refused(&self, call: &Call<'_>, what: &str, answer: &Answer) -> ForgeError {
        let body = ErrorBody::parse(&answer.headers, &answer.body);
        let error = classify(
            &format!("github: {what}"),
            answer.status.as_u16(),
            &answer.headers,
            &body,
            crate::edge::clock::system_time(),
        );
        scrub_error(error, call.token.as_ref())
    }

    /// The open pull request from `head` into `base`, if any.
    async fn find_pr(
        &self,
        call: &Call<'_>,
        head: &str,
        base: &str,
    ) -> Result<Option<OpenPull>, ForgeError> {
        let query = format!(
            "pulls?state=open&head={}&base={}&per_page=100",
            query_value(&format!("{}:{head}", self.owner)),
            query_value(base)
        );
        let what = format!("listing open pull requests from `{head}`");
        let answer = self.send(call, Verb::Get, &self.path(&query), None).await?;
        if answer.status != StatusCode::OK {
            return Err(self.refused(call, &what, &answer));
        }
        let pulls: Vec<OpenPull> = answer.json(&what)?;
        let label = format!("{}:{head}", self.owner);
        // The filter is GitHub's; this checks it was applied (a bare branch is ignored silently).
        Ok(pulls.into_iter().find(|p| {
            p.head.r#ref == head
                && p.base.r#ref == base
                && p.head.label.eq_ignore_ascii_case(&label)
        }))
    }

    /// Sets the title and body of `pull` when they differ.
    async fn update_pr(
        &self,
        call: &Call<'_>,
        pull: OpenPull,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError> {
        let found = PullRequest {
            number: pull.number,
            url: pull.html_url.clone(),
            created: false,
        };
        if pull.title == title && pull.body.as_deref().unwrap_or("") == body {
            return Ok(found);
        }
        let what = format!("updating pull request #{}", pull.number);
        let path = self.path(&format!("pulls/{}", pull.number));
        let answer = self
            .send(
                call,
                Verb::Patch,
                &path,
                Some(&json!({"title": title, "body": body})),
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(self.refused(call, &what, &answer));
        }
        let updated: PullRef = answer.json(&what)?;
        Ok(PullRequest {
            number: updated.number,
            url: updated.html_url,
            created: false,
        })
    }

    /// One attempt of `revert_pr`: look up, then update or create.
    async fn revert_pr_once(
        &self,
        call: &Call<'_>,
        req: &RevertRequest,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError> {
        if let Some(pull) = self.find_pr(call, &req.head, &req.base).await? {
            return self.update_pr(call, pull, title, body).await;
        }
        let what = format!("opening a pull request from `{}`", req.head);
        let payload = json!({"title": title, "head": req.head, "base": req.base, "body": body});
        let answer = self
            .send(call, Verb::Post, &self.path("pulls"), Some(&payload))
            .await?;
        if answer.status == StatusCode::CREATED {
            let pull: PullRef = answer.json(&what)?;
            return Ok(PullRequest {
                number: pull.number,
                url: pull.html_url,
                created: true,
            });
        }
        if answer.status == StatusCode::UNPROCESSABLE_ENTITY {
            let refusal = ErrorBody::parse(&answer.headers, &answer.body);
            if refusal.mentions("a pull request already exists") {
                return match self.find_pr(call, &req.head, &req.base).await? {
                    Some(pull) => self.update_pr(call, pull, title, body).await,
                    None => Err(ForgeError::transient(format!(
                        "github: {what}: GitHub says one already exists into `{}`, but does \
                         not list it as open yet",
                        req.base
                    ))),
                };
            }
            if refusal.mentions("no commits between") {
                return Err(ForgeError::permanent(format!(
                    "github: {what}: branch `{}` has no commits that `{}` lacks; nothing to \
                     revert (was the revert merged already?)",
                    req.head, req.base
                )));
            }
        }
        Err(self.refused(call, &what, &answer))
    }

    /// One attempt of `report` as a commit status.
    async fn status_once(&self, call: &Call<'_>, report: &CommitReport) -> Result<(), ForgeError> {
        let mut payload = json!({
            "state": match report.state {
                ReportState::Pending => "pending",
                ReportState::Success => "success",
                ReportState::Failure => "failure",
                ReportState::Error => "error",
            },
            "context": report.context,
            "description": truncate_status_description(&call.scrub(&report.description)),
        });
        if let Some(url) = &report.target_url {
            payload["target_url"] = json!(call.scrub(url));
        }
        let what = format!("setting status `{}` on {}", report.context, report.sha);
        let path = self.path(&format!("statuses/{}", report.sha));
        let answer = self.send(call, Verb::Post, &path, Some(&payload)).await?;
        if answer.status == StatusCode::CREATED {
            Ok(())
        } else {
            Err(self.refused(call, &what, &answer))
        }
    }

    /// The check run named `context` of this App on `sha`, if GitHub has one.
    async fn find_run(
        &self,
        call: &Call<'_>,
        sha: &str,
        context: &str,
    ) -> Result<Option<u64>, ForgeError> {
        let app = match &self.auth {
            Auth::App { id, .. } => Some(*id),
            Auth::Token(_) => None,
        };
        let mut query = format!(
            "commits/{sha}/check-runs?check_name={}&filter=latest&per_page=100",
            query_value(context)
        );
        if let Some(app) = app {
            query.push_str(&format!("&app_id={app}"));
        }
        let what = format!("looking up check run `{context}` on {sha}");
        let answer = self.send(call, Verb::Get, &self.path(&query), None).await?;
        if answer.status != StatusCode::OK {
            return Err(self.refused(call, &what, &answer));
        }
        let list: CheckRuns = answer.json(&what)?;
        Ok(list
            .check_runs
            .into_iter()
            .find(|run| {
                run.name == context
                    && run.head_sha == sha
                    && app.is_none_or(|app| run.app.as_ref().is_none_or(|a| a.id == app))
            })
            .map(|run| run.id))
    }

    /// One attempt of `report` as a check run: update the known run, else find it, else create it.
    async fn check_run_once(
        &self,
        call: &Call<'_>,
        report: &CommitReport,
    ) -> Result<(), ForgeError> {
        let key = (report.sha.clone(), report.context.clone());
        let known = self.remembered(&key);
        let id = match known {
            Some(id) => Some(id),
            None => self.find_run(call, &report.sha, &report.context).await?,
        };
        let description = call.scrub(&report.description);
        let mut payload = json!({
            "output": {
                "title": truncate_status_description(&description),
                "summary": truncate_chars(&description, CHECK_SUMMARY_MAX),
            }
        });
        match report.state {
            ReportState::Pending => payload["status"] = json!("in_progress"),
            state => {
                payload["status"] = json!("completed");
                payload["conclusion"] = json!(match state {
                    ReportState::Success => "success",
                    // Checks have no "error"; the title says what happened.
                    _ => "failure",
                });
            }
        }
        if let Some(url) = &report.target_url {
            payload["details_url"] = json!(call.scrub(url));
        }
        if let Some(id) = id {
            let what = format!("updating check run {id} (`{}`)", report.context);
            let path = self.path(&format!("check-runs/{id}"));
            let answer = self.send(call, Verb::Patch, &path, Some(&payload)).await?;
            if answer.status == StatusCode::OK {
                self.remember(key, id);
                return Ok(());
            }
            if answer.status == StatusCode::NOT_FOUND && known.is_some() {
                // Gone since we made it: forget it; the next attempt looks it up or creates it.
                self.forget(&key);
                return Err(ForgeError::transient(format!(
                    "github: {what}: it no longer exists"
                )));
            }
            return Err(self.refused(call, &what, &answer));
        }
        payload["name"] = json!(report.context);
        payload["head_sha"] = json!(report.sha);
        let what = format!("creating check run `{}` on {}", report.context, report.sha);
        let answer = self
            .send(call, Verb::Post, &self.path("check-runs"), Some(&payload))
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(self.refused(call, &what, &answer));
        }
        let run: CheckRunRef = answer.json(&what)?;
        self.remember(key, run.id);
        Ok(())
    }

    fn remembered(&self, key: &(String, String)) -> Option<u64> {
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
            .copied()
    }

    fn remember(&self, key: (String, String), id: u64) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if runs.len() >= MAX_REMEMBERED_RUNS && !runs.contains_key(&key) {
            // Forgotten ids are looked up again; cheaper than an LRU.
            runs.clear();
        }
        runs.insert(key, id);
    }

    fn forget(&self, key: &(String, String)) {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

impl Forge for GitHub {
    async fn revert_pr(&self, req: &RevertRequest) -> Result<PullRequest, ForgeError> {
        check_branch("head", &req.head)?;
        check_branch("base", &req.base)?;
        let call = self.call().await?;
        let title = call.scrub(&req.title);
        let body = truncate_chars(&call.scrub(&req.body), PR_BODY_MAX);
        self.retrying(&format!("revert pull request from `{}`", req.head), || {
            self.revert_pr_once(&call, req, &title, &body)
        })
        .await
    }

    async fn report(&self, report: &CommitReport) -> Result<(), ForgeError> {
        check_sha(&report.sha)?;
        if report.context.trim().is_empty() {
            return Err(ForgeError::permanent("github: report: empty context"));
        }
        let call = self.call().await?;
        let what = format!("status `{}` on {}", report.context, report.sha);
        match self.statuses {
            StatusKind::CommitStatus => {
                self.retrying(&what, || self.status_once(&call, report))
                    .await
            }
            StatusKind::CheckRun => {
                self.retrying(&what, || self.check_run_once(&call, report))
                    .await
            }
        }
    }
}

/// Sets canaryd's headers, replacing any already there (octocrab sets the API version on its
/// own requests but not on the installation token one).
fn canaryd_headers(
    mut request: hyper::Request<octocrab::OctoBody>,
) -> hyper::Request<octocrab::OctoBody> {
    let headers = request.headers_mut();
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    headers.insert(
        ACCEPT,
        HeaderValue::from_static("application/vnd.github+json"),
    );
    headers.insert(
        HeaderName::from_static("x-github-api-version"),
        HeaderValue::from_static(API_VERSION),
    );
    request
}

// --- Answers, as little of them as canaryd reads -------------------------------------------

#[derive(Debug, Deserialize)]
struct OpenPull {
    number: u64,
    html_url: String,
    title: String,
    body: Option<String>,
    head: BranchRef,
    base: BranchRef,
}

#[derive(Debug, Deserialize)]
struct BranchRef {
    label: String,
    r#ref: String,
}

#[derive(Debug, Deserialize)]
struct PullRef {
    number: u64,
    html_url: String,
}

#[derive(Debug, Deserialize)]
struct CheckRuns {
    check_runs: Vec<CheckRun>,
}

#[derive(Debug, Deserialize)]
struct CheckRun {
    id: u64,
    name: String,
    head_sha: String,
    app: Option<AppRef>,
}

#[derive(Debug, Deserialize)]
struct AppRef {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct CheckRunRef {
    id: u64,
}

// --- Errors (pure) --------------------------------------------------------------------------

/// What an error answer says, however it is written: GitHub's JSON (`message`, and
/// `errors[]` as objects or strings), or a plain-text or HTML page from an edge or proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    /// `message`, or the first line of a plain-text answer; `None` for HTML and empty bodies.
    pub message: Option<String>,
    /// Each of `errors[]`: its `message`, else `resource.field code`.
    pub details: Vec<String>,
}

impl ErrorBody {
    pub(crate) fn parse(headers: &HeaderMap, body: &[u8]) -> ErrorBody {
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            let message = value["message"].as_str().map(quote);
            let details = value["errors"]
                .as_array()
                .map(|errors| errors.iter().filter_map(detail).collect())
                .unwrap_or_default();
            return ErrorBody { message, details };
        }
        let html = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("html"))
            || body.trim_ascii_start().starts_with(b"<");
        let text = String::from_utf8_lossy(body);
        let first = text.lines().map(str::trim).find(|l| !l.is_empty());
        ErrorBody {
            message: if html { None } else { first.map(quote) },
            details: Vec::new(),
        }
    }

    /// Whether the message or a detail contains `needle` (ASCII case ignored).
    pub(crate) fn mentions(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        self.message
            .iter()
            .chain(&self.details)
            .any(|text| text.to_ascii_lowercase().contains(&needle))
    }

    /// `message: detail; detail`, or `what` when the answer said nothing readable.
    fn text(&self, otherwise: &str) -> String {
        let mut text = self
            .message
            .clone()
            .unwrap_or_else(|| otherwise.to_string());
        if !self.details.is_empty() {
            text.push_str(": ");
            text.push_str(&self.details.join("; "));
        }
        text
    }
}

fn detail(error: &Value) -> Option<String> {
    if let Some(text) = error.as_str() {
        return Some(quote(text));
    }
    if let Some(message) = error["message"].as_str() {
        return Some(quote(message));
    }
    let part = |key: &str| error[key].as_str().unwrap_or("").to_string();
    let subject = [part("resource"), part("field")]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    let code = part("code");
    (!subject.is_empty() || !code.is_empty()).then(|| quote(format!("{subject} {code}").trim()))
}

/// Text from GitHub made safe to quote: control characters dropped, at most [`MAX_QUOTE`]
/// characters.
fn quote(text: impl AsRef<str>) -> String {
    let clean: String = text
        .as_ref()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate_chars(clean.trim(), MAX_QUOTE)
}

/// The error for an answer with `status` (not a success). `what` starts the message; `now`
/// is the time `x-ratelimit-reset` is measured from.
///
/// - 403 or 429 with `x-ratelimit-remaining: 0`: primary rate limit, transient until
///   `x-ratelimit-reset`;
/// - 403 or 429 with `retry-after`, or saying "secondary rate limit": transient for
///   `retry-after` seconds, else 60 s; any other 429 likewise;
/// - 401: bad credentials; other 403: not allowed; 404: not found (or not visible to these
///   credentials); 3xx: moved; 422 and other 4xx: refused. All permanent;
/// - 5xx, 408 and 409: transient.
pub(crate) fn classify(
    what: &str,
    status: u16,
    headers: &HeaderMap,
    body: &ErrorBody,
    now: SystemTime,
) -> ForgeError {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if status == 403 || status == 429 {
        if header("x-ratelimit-remaining") == Some("0") {
            let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok());
            let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let wait = match reset {
                // At least a second: the reset second itself may still be limited.
                Some(reset) => Duration::from_secs(reset.saturating_sub(now_s).max(1)),
                None => SECONDARY_DEFAULT_WAIT,
            }
            .min(MAX_RETRY_AFTER);
            return ForgeError::Transient {
                message: format!(
                    "{what}: rate limit exhausted ({status}); it resets in {} s",
                    wait.as_secs()
                ),
                retry_after: Some(wait),
            };
        }
        let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok());
        if retry_after.is_some() || body.mentions("secondary rate limit") || status == 429 {
            let wait = retry_after
                .map_or(SECONDARY_DEFAULT_WAIT, Duration::from_secs)
                .min(MAX_RETRY_AFTER);
            return ForgeError::Transient {
                message: format!(
                    "{what}: secondary rate limit ({status}); retry after {} s",
                    wait.as_secs()
                ),
                retry_after: Some(wait),
            };
        }
    }
    let said = |otherwise: &str| body.text(otherwise);
    match status {
        401 => ForgeError::permanent(format!(
            "{what}: bad credentials: GitHub refused them (401 {})",
            said("Unauthorized")
        )),
        403 => ForgeError::permanent(format!(
            "{what}: not allowed (403 {}); check the token's or App's permissions",
            said("Forbidden")
        )),
        404 => ForgeError::permanent(format!(
            "{what}: not found (404 {}); check owner and repo, and that the credentials can \
             see the repository",
            said("Not Found")
        )),
        300..=399 => ForgeError::permanent(format!(
            "{what}: moved ({status}); was the repository renamed or transferred? Update \
             forge.github owner/repo"
        )),
        408 | 409 | 500..=599 => ForgeError::transient(format!(
            "{what}: GitHub failed ({status} {})",
            said("no explanation")
        )),
        _ => ForgeError::permanent(format!(
            "{what}: refused ({status} {})",
            said("no explanation")
        )),
    }
}

/// The error for a request that got no answer from octocrab's client. A failed installation
/// token request comes back here as octocrab's `GitHub` error, with status and headers.
fn client_error(what: &str, error: octocrab::Error, call: &Call<'_>) -> ForgeError {
    let error = match error {
        octocrab::Error::GitHub { source, .. } => {
            let body = ErrorBody {
                message: Some(quote(&source.message)),
                details: source
                    .errors
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(detail)
                    .collect(),
            };
            let headers = source.headers.clone().unwrap_or_default();
            classify(
                &format!("github: {what}: getting an installation token"),
                source.status_code.as_u16(),
                &headers,
                &body,
                crate::edge::clock::system_time(),
            )
        }
        octocrab::Error::JWT { .. } => ForgeError::permanent(format!(
            "github: {what}: cannot sign the App's JWT with forge.github.app.privateKey"
        )),
        other => ForgeError::transient(format!(
            "github: {what}: no answer: {}",
            quote(other.to_string())
        )),
    };
    scrub_error(error, call.token.as_ref())
}

// --- Small pure helpers ---------------------------------------------------------------------

/// A commit status description as GitHub keeps it: at most 140 characters, the last an
/// ellipsis when cut.
pub fn truncate_status_description(text: &str) -> String {
    truncate_chars(text, STATUS_DESCRIPTION_MAX)
}

/// `text` cut to at most `max` characters (not bytes), ending in `…` when cut.
fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn scrub(text: &str, token: Option<&Secret>) -> String {
    match token {
        Some(token) if !token.expose().is_empty() => text.replace(token.expose(), "***"),
        _ => text.to_string(),
    }
}

fn scrub_error(error: ForgeError, token: Option<&Secret>) -> ForgeError {
    match error {
        ForgeError::Transient {
            message,
            retry_after,
        } => ForgeError::Transient {
            message: scrub(&message, token),
            retry_after,
        },
        ForgeError::Permanent(message) => ForgeError::Permanent(scrub(&message, token)),
    }
}

fn secret_error(error: crate::edge::secret::SecretError) -> ForgeError {
    ForgeError::permanent(error.to_string())
}

/// A query parameter value, percent-encoded (unreserved characters kept).
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The API root: `http` or `https`, a host, no credentials, query or fragment; the trailing
/// `/` dropped.
fn api_url(text: &str) -> Result<Uri, ForgeError> {
    let bad = |why: &str| {
        ForgeError::permanent(format!(
            "forge.github.apiUrl: `{}` {why}",
            text.escape_debug()
        ))
    };
    let uri: Uri = text.trim().parse().map_err(|_| bad("is not a URL"))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => return Err(bad("must start with https:// (or http://)")),
    }
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    if authority.as_str().contains('@') {
        // Not quoted: the URL holds a secret.
        return Err(ForgeError::permanent(
            "forge.github.apiUrl: must not carry credentials; give `token` or `app`",
        ));
    }
    if authority.host().is_empty() {
        return Err(bad("names no host"));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    let path = uri.path().trim_end_matches('/');
    format!(
        "{}://{}{path}",
        uri.scheme_str().unwrap_or("https"),
        authority
    )
    .parse()
    .map_err(|_| bad("is not a URL"))
}

/// An owner or repository name: it becomes a path segment.
fn check_name(what: &str, name: &str) -> Result<(), ForgeError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ForgeError::permanent(format!(
            "{what}: `{}` is not a GitHub name (letters, digits, `-`, `_`, `.`)",
            name.escape_debug()
        )))
    }
}

/// A branch name as the pull request API takes it.
fn check_branch(what: &str, name: &str) -> Result<(), ForgeError> {
    let ok = !name.is_empty()
        && !name.starts_with('-')
        && !name.contains("..")
        && !name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ForgeError::permanent(format!(
            "github: revert pull request: {what} `{}` is not a branch name",
            name.escape_debug()
        )))
    }
}

/// A full commit id (SHA-1 or SHA-256, lowercase hex): it becomes a path segment.
fn check_sha(sha: &str) -> Result<(), ForgeError> {
    if (sha.len() == 40 || sha.len() == 64)
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ForgeError::permanent(format!(
            "github: report: `{}` is not a full commit id",
            sha.escape_debug()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn json_body(text: &str) -> ErrorBody {
        ErrorBody::parse(&HeaderMap::new(), text.as_bytes())
    }

    const NOW: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    /// (status, headers, body) → (transient?, retry_after, a word the message must contain).
    fn check(
        status: u16,
        hdrs: &[(&'static str, &str)],
        body: &str,
        transient: bool,
        retry_after: Option<u64>,
        says: &str,
    ) {
        let error = classify(
            "github: x",
            status,
            &headers(hdrs),
            &ErrorBody::parse(&headers(hdrs), body.as_bytes()),
            now(),
        );
        assert_eq!(error.is_transient(), transient, "{status} {body}: {error}");
        assert_eq!(
            error.retry_after(),
            retry_after.map(Duration::from_secs),
            "{status} {body}: {error}"
        );
        assert!(error.to_string().contains(says), "{error} lacks {says:?}");
        assert!(error.to_string().starts_with("github: x: "), "{error}");
    }

    #[test]
    fn classification_of_error_answers() {
        let reset = (NOW + 1800).to_string();
        let primary = [
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", reset.as_str()),
        ];
        let rate = r#"{"message":"API rate limit exceeded for user ID 1.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#;
        check(
            403,
            &primary,
            rate,
            true,
            Some(1800),
            "rate limit exhausted",
        );
        check(429, &primary, rate, true, Some(1800), "resets in 1800 s");
        // A reset in the past (clock skew) still waits a second; a far one is capped at an hour.
        check(
            403,
            &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "12")],
            rate,
            true,
            Some(1),
            "rate limit",
        );
        check(
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "99999999999"),
            ],
            rate,
            true,
            Some(3600),
            "rate limit",
        );
        let secondary = r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"x"}"#;
        check(
            403,
            &[("retry-after", "42")],
            secondary,
            true,
            Some(42),
            "secondary",
        );
        check(403, &[], secondary, true, Some(60), "secondary");
        check(429, &[], "", true, Some(60), "secondary");
        // A 403 with neither is a real permission error.
        check(
            403,
            &[("x-ratelimit-remaining", "4999")],
            r#"{"message":"Resource not accessible by integration","documentation_url":"x","status":"403"}"#,
            false,
            None,
            "Resource not accessible by integration",
        );
        check(
            401,
            &[],
            r#"{"message":"Bad credentials","documentation_url":"x","status":"401"}"#,
            false,
            None,
            "bad credentials",
        );
        check(
            401,
            &[],
            r#"{"message":"Requires authentication"}"#,
            false,
            None,
            "Requires authentication",
        );
        check(
            404,
            &[],
            r#"{"message":"Not Found"}"#,
            false,
            None,
            "not found",
        );
        check(301, &[], "", false, None, "moved");
        check(
            422,
            &[],
            r#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","code":"custom","message":"A pull request already exists for o:b."}],"documentation_url":"x","status":"422"}"#,
            false,
            None,
            "Validation Failed: A pull request already exists for o:b.",
        );
        check(
            422,
            &[],
            r#"{"message":"Invalid request.\n\n\"title\" wasn't supplied."}"#,
            false,
            None,
            "Invalid request.",
        );
        check(
            502,
            &[],
            r#"{"message":"Server Error"}"#,
            true,
            None,
            "502 Server Error",
        );
        // Edge answers that are not JSON do not panic and are not quoted as markup.
        check(
            502,
            &[("content-type", "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            true,
            None,
            "502 no explanation",
        );
        check(
            503,
            &[],
            "upstream connect error\nreset",
            true,
            None,
            "upstream connect error",
        );
        check(400, &[], "\u{0}\u{1}garbage", false, None, "garbage");
        check(
            403,
            &[],
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
            false,
            None,
            "User-Agent",
        );
    }

    #[test]
    fn error_bodies_in_every_shape() {
        let b = json_body(
            r#"{"message":"Validation Failed","errors":[{"resource":"Label","code":"invalid","field":"color"}]}"#,
        );
        assert_eq!(b.details, ["Label.color invalid"]);
        let b = json_body(
            r#"{"message":"Validation Failed","errors":["No commits between main and canaryd/revert/x"]}"#,
        );
        assert!(b.mentions("no commits between"));
        let b = json_body(r#"{"message": 12, "errors": "nope"}"#);
        assert_eq!(b, ErrorBody::default());
        assert_eq!(json_body("").message, None);
        let long = "x".repeat(5000);
        assert_eq!(json_body(&long).message.unwrap().chars().count(), MAX_QUOTE);
    }

    #[test]
    fn status_descriptions_keep_140_characters() {
        assert_eq!(truncate_status_description("short"), "short");
        let exact = "é".repeat(140);
        assert_eq!(truncate_status_description(&exact), exact);
        let long = "é".repeat(141);
        let cut = truncate_status_description(&long);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with("é…"));
        assert_eq!(truncate_chars("abc", 0), "…");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let retry = Retry::default();
        for _ in 0..100 {
            let first = retry.backoff(1);
            assert!(first >= Duration::from_millis(125) && first <= Duration::from_millis(250));
            let second = retry.backoff(2);
            assert!(second >= Duration::from_millis(250) && second <= Duration::from_millis(500));
            let late = retry.backoff(30);
            assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query_value("octo:canaryd/revert/x-1"),
            "octo%3Acanaryd%2Frevert%2Fx-1"
        );
        assert_eq!(query_value("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn secrets_are_scrubbed() {
        let token = Secret::new("ghp_secret");
        assert_eq!(scrub("a ghp_secret b", Some(&token)), "a *** b");
        let e = scrub_error(ForgeError::permanent("x ghp_secret"), Some(&token));
        assert_eq!(e.to_string(), "x ***");
    }

    #[test]
    fn names_shas_and_branches() {
        assert!(check_name("o", "octo-org").is_ok());
        assert!(check_name("o", "my.repo_1").is_ok());
        for bad in ["", "..", "a/b", "a b", "a?b"] {
            assert!(check_name("forge.github.repo", bad).is_err(), "{bad}");
        }
        assert!(check_sha(&"a".repeat(40)).is_ok());
        assert!(check_sha(&"0".repeat(64)).is_ok());
        for bad in [
            "abc",
            &"A".repeat(40),
            &"g".repeat(40),
            &format!("{}/x", "a".repeat(38)),
        ] {
            assert!(check_sha(bad).is_err(), "{bad}");
        }
        assert!(check_branch("head", "canaryd/revert/checkout-0123456789ab").is_ok());
        for bad in ["", "-x", "a b", "a..b", "a:b", "a\nb"] {
            assert!(check_branch("head", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn api_urls() {
        let ok = |t: &str| api_url(t).unwrap().to_string();
        assert_eq!(ok("https://api.github.com"), "https://api.github.com/");
        assert_eq!(
            ok("https://ghe.example.com/api/v3/"),
            "https://ghe.example.com/api/v3"
        );
        assert_eq!(ok("http://127.0.0.1:8080"), "http://127.0.0.1:8080/");
        for (bad, says) in [
            ("api.github.com", "must start with https://"),
            ("ftp://x", "must start with https://"),
            ("https://user:pw@ghe.example.com", "credentials"),
            ("https://ghe.example.com/api?x=1", "query"),
            ("not a url", "not a URL"),
        ] {
            let e = api_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("forge.github.apiUrl: "), "{e}");
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }
}
