//! The Gateway API driver: reads and sets the `backendRefs[].weight` of a Kubernetes `HTTPRoute` through the API server.
//!
//! A rollout's `service` is the name of an `HTTPRoute` in the router's `namespace`; its stable
//! and canary are the `name`s of `backendRefs` of that route (usually Services).
//!
//! # The driven rule
//!
//! A route has up to 16 rules, each with its own `backendRefs`; canaryd drives one of them:
//! **the first rule with two or more `backendRefs`, or, when no rule has two, the first rule
//! with any.** This is "the first rule whose backendRefs name the rollout's backends" made
//! decidable from the route alone: `observe` is given only the route's name, and `observe` and
//! `apply` must look at the same rule, or the daemon would see its own writes as drift. It
//! picks the weighted rule of the usual layouts (one rule with stable and canary; header-matched
//! rules to the canary alone before it). `apply` refuses (`Unknown`) a backend that is not in
//! the driven rule, so a route must list the canary beside the stable before a rollout starts,
//! with `weight: 0` if it is to get nothing yet: canaryd sets weights, it never adds
//! `backendRefs`.
//!
//! `observe` reports the weights of the driven rule's `backendRefs` by name, in the Gateway
//! API's own scale (0..=1000000, "not a percentage"), a missing `weight` being 1 as the API
//! defines it; two `backendRefs` of one name (other namespaces or ports) are added up.
//! `observe_all` reads every route with one LIST of the namespace's HTTPRoutes, without `limit`
//! (so the API server answers them all at once, no `continue` to follow), and reads each as
//! `observe` does.
//!
//! # Writing: a JSON Patch, not a server-side apply
//!
//! The published CRD (standard channel, `tests/fixtures/gateway-api/`) declares both
//! `spec.rules` and `spec.rules[].backendRefs` as `x-kubernetes-list-type: atomic`. A
//! server-side apply of "only the weights" is therefore impossible: an applied configuration
//! must carry whole atomic lists, and the field manager that applies them owns them whole, so
//! canaryd would own every rule (matches, filters, backendRefs) and, with `force=true`, take that
//! ownership away from the GitOps tool that wrote the route, whose next apply would conflict
//! or silently put back its own weights.
//!
//! `apply` instead reads the route and sends one RFC 6902 JSON Patch
//! (`application/json-patch+json`, `?fieldManager=canaryd`): a `test` of the `name` of every
//! `backendRef` of the driven rule, at its index, then a `replace` (or `add`, when the field
//! is absent) of each weight that differs. The patch touches only weights, is idempotent, and
//! fails as a whole (the API server answers 422, `Rejected`) if the rule was reordered or its
//! backends renamed between the read and the write, instead of setting the wrong backend's
//! weight. A `backendRef` appended to the rule in that window is not set to 0 by this patch;
//! the next `observe` shows it. When the live weights are already the desired ones nothing is
//! sent. Backends of the rule not named in the traffic get 0; the percentage is written as the
//! weight itself (0..=100 is within the CRD's 0..=1000000, and `Weight` cannot exceed 100).
//!
//! # Header routes
//!
//! A header route of the traffic (testers first: `X-Canary: always` → canary) is a rule of its
//! own, named `canaryd-<route>`, placed just before the driven rule, with one `backendRef`: a
//! copy of the driven rule's canary `backendRef`. Its `matches` are the route's matches (the
//! Gateway API ORs the matches of a rule and ANDs the criteria of one match, as canaryd's model
//! does), each combined with every `path`/`method` match of the driven rule, so the route takes
//! only requests the driven rule would have taken, and wins over it by the API's precedence
//! (more header matches). Criteria map to `headers` and `queryParams`: `exact` as `Exact`, a
//! regex `r` as `RegularExpression` `^(?:r)$`, a prefix `p` as `^<p escaped>.*` (the dialect
//! is implementation-specific; RE2-compatible patterns work on Envoy-based gateways). Cookies
//! have no match of their own in an HTTPRoute and are refused. Rules named `canaryd-*` are
//! canaryd's: read back into routes (drift shows), replaced whole, never driven. Sticky users
//! are refused: session persistence is experimental and pins a first random draw, which is
//! not monotone.
//!
//! # Requests
//!
//! Each request is bounded by [`REQUEST_TIMEOUT`]. The bearer token is read from `token_file`
//! at every request, so a rotated token (a projected service account token) is picked up; it
//! is sent as a sensitive header and appears in no message, log or `Debug` output (answers
//! quoted in errors are scrubbed of it). Without `token_file` no credentials are sent (an API
//! server reached through `kubectl proxy`). Answers map to errors as: 401/403 and 409/422 →
//! `Rejected`; 404 → `Unknown`; connection errors, timeouts, 429 and 5xx → `Unreachable`.
//!
//! # Known limit: plain HTTP only
//!
//! This build has no TLS (reqwest without a TLS backend), so an `https://` API server, which
//! every real cluster serves, is refused by [`GatewayRouter::new`] with a `Setup` error. Reach
//! it through `kubectl proxy` (`http://127.0.0.1:8001`), which adds the credentials itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::{ObservedAll, RouterError};
use crate::core::model::{Criterion, Field, Match, Observed, Pattern, Route, Traffic};

/// The bound on each request to the API server, answer included (and on reading the token).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The field manager named on every write, as `?fieldManager=`.
pub const FIELD_MANAGER: &str = "canaryd";
/// The content type of an RFC 6902 JSON Patch, as the API server expects it.
pub const JSON_PATCH: &str = "application/json-patch+json";
/// The HTTPRoute API, as path segments under the server URL.
const API: [&str; 3] = ["apis", "gateway.networking.k8s.io", "v1"];
/// How much of an error answer is quoted.
const MAX_QUOTE: usize = 300;

/// HTTPRoutes of one namespace, driven through a Kubernetes API server.
pub struct GatewayRouter {
    name: String,
    server: Url,
    namespace: String,
    token_file: Option<PathBuf>,
    client: reqwest::Client,
}

impl fmt::Debug for GatewayRouter {
    /// The token file's path, never its content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayRouter")
            .field("name", &self.name)
            .field("server", &self.server.as_str())
            .field("namespace", &self.namespace)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

/// One answer of the API server.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl GatewayRouter {
    /// The router's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A driver for the HTTPRoutes of `namespace` on the API server at `server` (plain
    /// `http://` only, see the module doc), authenticating with the bearer token in
    /// `token_file` if given. Checks the configuration only: reads no file, talks to nobody.
    pub fn new(
        name: &str,
        server: &str,
        namespace: &str,
        token_file: Option<&str>,
    ) -> Result<GatewayRouter, RouterError> {
        let setup = |message: String| RouterError::Setup {
            router: name.to_string(),
            message,
        };
        let mut url = Url::parse(server.trim())
            .map_err(|e| setup(format!("api server `{server}` is not a url: {e}")))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(setup(format!(
                    "api server `{server}` needs TLS, which this build of canaryd lacks; \
                     reach it through `kubectl proxy` at http://127.0.0.1:8001"
                )));
            }
            other => {
                return Err(setup(format!(
                    "api server `{server}` has scheme `{other}`; write http://host:port"
                )));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(setup(format!("api server `{server}` names no host")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(setup(
                "api server url carries credentials; give a token file instead".to_string(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(setup(format!(
                "api server `{server}` has a query or fragment"
            )));
        }
        // The base path ends without a slash; request paths are appended as segments.
        url.path_segments_mut()
            .map_err(|()| setup(format!("api server `{server}` cannot have a path")))?
            .pop_if_empty();
        if !is_dns_label(namespace) {
            return Err(setup(format!(
                "namespace `{}` is not a valid namespace name (lowercase letters, digits and `-`, at most 63)",
                namespace.escape_debug()
            )));
        }
        let token_file = match token_file {
            Some(path) if path.trim().is_empty() => {
                return Err(setup("token file is empty string".to_string()));
            }
            Some(path) => Some(PathBuf::from(path)),
            None => None,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| setup(format!("http client: {e}")))?;
        Ok(GatewayRouter {
            name: name.to_string(),
            server: url,
            namespace: namespace.to_string(),
            token_file,
            client,
        })
    }

    /// The weights of the driven rule's `backendRefs` of HTTPRoute `service`, in the Gateway
    /// API's scale (a missing weight is 1).
    pub async fn observe(&self, service: &str) -> Result<Observed, RouterError> {
        let route = self.read(service).await?;
        self.observed(service, &route)
    }

    /// The weights of each of `services`, from one LIST of the namespace's HTTPRoutes (without
    /// `limit`, so the API server answers every route at once); a route not in the list is
    /// [`RouterError::Unknown`].
    pub async fn observe_all(&self, services: &[String]) -> Result<ObservedAll, RouterError> {
        let subject = format!("httproutes in namespace `{}`", self.namespace);
        let mut path = API.to_vec();
        path.extend(["namespaces", &self.namespace, "httproutes"]);
        let body = self.call(Method::GET, &path, None, &subject).await?;
        let list: Value = serde_json::from_slice(&body)
            .map_err(|e| self.rejected(format!("{subject}: answer is not json: {e}")))?;
        let Some(items) = list.get("items").and_then(Value::as_array) else {
            return Err(self.rejected(format!("{subject}: answer has no `items` list")));
        };
        let routes: BTreeMap<&str, &Value> = items
            .iter()
            .filter_map(|route| Some((route.pointer("/metadata/name")?.as_str()?, route)))
            .collect();
        Ok(services
            .iter()
            .map(|service| {
                let observed = self.check_route_name(service).and_then(|()| {
                    match routes.get(service.as_str()) {
                        Some(route) => self.observed(service, route),
                        None => Err(RouterError::Unknown {
                            router: self.name.clone(),
                            what: format!("httproute `{}`", self.subject(service)),
                        }),
                    }
                });
                (service.clone(), observed)
            })
            .collect())
    }

    /// The weights of the driven rule of `route`, the HTTPRoute `service`.
    fn observed(&self, service: &str, route: &Value) -> Result<Observed, RouterError> {
        let rule = self.driven(service, route)?;
        let routes = routes_in(route)
            .map_err(|e| self.rejected(format!("httproute `{}`: {e}", self.subject(service))))?;
        Ok(Observed {
            routes,
            ..Observed::weights(rule.observed())
        })
    }

    /// Sets the weights of the driven rule of HTTPRoute `service` to `traffic`'s percentages
    /// (backends not named get 0) with one JSON Patch; sends nothing when they are already set.
    pub async fn apply(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        let route = self.read(service).await?;
        let rule = self.driven(service, &route)?;
        let ours = routes_in(&route)
            .map_err(|e| self.rejected(format!("httproute `{}`: {e}", self.subject(service))))?;
        let patch = if traffic.routes.is_empty() && ours.is_empty() {
            rule.patch(traffic)
        } else {
            rules_patch(&route, &rule, traffic)
        };
        let patch = patch.map_err(|e| match e {
            PatchError::Unknown(what) => RouterError::Unknown {
                router: self.name.clone(),
                what: format!("{what} in httproute `{}`", self.subject(service)),
            },
            PatchError::Ambiguous(message) => {
                self.rejected(format!("httproute `{}`: {message}", self.subject(service)))
            }
        })?;
        let Some(patch) = patch else {
            return Ok(());
        };
        let body = serde_json::to_vec(&patch).map_err(|e| self.rejected(e.to_string()))?;
        self.call(
            Method::PATCH,
            &self.route_path(service),
            Some(body),
            &format!("httproute `{}`", self.subject(service)),
        )
        .await?;
        Ok(())
    }

    /// Whether the API server answers and is ready (`GET /readyz`).
    pub async fn health(&self) -> Result<(), RouterError> {
        self.call(
            Method::GET,
            &["readyz"],
            None,
            "readiness endpoint `/readyz`",
        )
        .await
        .map(drop)
    }

    /// `namespace/name`, for messages.
    fn subject(&self, service: &str) -> String {
        format!("{}/{}", self.namespace, service.escape_debug())
    }

    fn route_path<'a>(&'a self, service: &'a str) -> Vec<&'a str> {
        let mut path = API.to_vec();
        path.extend(["namespaces", &self.namespace, "httproutes", service]);
        path
    }

    /// The HTTPRoute `service`, as the API server has it.
    async fn read(&self, service: &str) -> Result<Value, RouterError> {
        self.check_route_name(service)?;
        let subject = format!("httproute `{}`", self.subject(service));
        let body = self
            .call(Method::GET, &self.route_path(service), None, &subject)
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| self.rejected(format!("{subject}: answer is not json: {e}")))
    }

    /// `Unknown` when `service` cannot be the name of an HTTPRoute.
    fn check_route_name(&self, service: &str) -> Result<(), RouterError> {
        if is_dns_subdomain(service) {
            Ok(())
        } else {
            Err(RouterError::Unknown {
                router: self.name.clone(),
                what: format!(
                    "httproute `{}` (not a valid object name)",
                    self.subject(service)
                ),
            })
        }
    }

    /// The driven rule of `route`, or why there is none.
    fn driven(&self, service: &str, route: &Value) -> Result<DrivenRule, RouterError> {
        match DrivenRule::of(route) {
            Ok(Some(rule)) => Ok(rule),
            Ok(None) => Err(RouterError::Unknown {
                router: self.name.clone(),
                what: format!(
                    "rule with backendRefs in httproute `{}`",
                    self.subject(service)
                ),
            }),
            Err(message) => Err(self.rejected(format!(
                "httproute `{}` is malformed: {message}",
                self.subject(service)
            ))),
        }
    }

    /// The bearer token, read now (it may have been rotated), within [`REQUEST_TIMEOUT`].
    async fn token(&self) -> Result<Option<String>, RouterError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let setup = |message: String| RouterError::Setup {
            router: self.name.clone(),
            message,
        };
        // A blocking read on the blocking pool: a token file on a hung mount cannot stall
        // the runtime, only this request, for at most the timeout.
        let read = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::read_to_string(path)
        });
        let text = tokio::time::timeout(REQUEST_TIMEOUT, read)
            .await
            .map_err(|_| {
                setup(format!(
                    "token file `{}` took too long to read",
                    path.display()
                ))
            })?
            .map_err(|e| setup(format!("reading token file `{}`: {e}", path.display())))?
            .map_err(|e| setup(format!("token file `{}`: {e}", path.display())))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(setup(format!("token file `{}` is empty", path.display())));
        }
        Ok(Some(token.to_string()))
    }

    /// One request; the body of a 2xx answer, or the error its status means (see the module
    /// doc). `subject` names what was asked for, for `Unknown` and messages. A body is sent as
    /// a JSON Patch with `?fieldManager=canaryd`.
    async fn call(
        &self,
        method: Method,
        path: &[&str],
        body: Option<Vec<u8>>,
        subject: &str,
    ) -> Result<Vec<u8>, RouterError> {
        let mut url = self.server.clone();
        url.path_segments_mut()
            .map_err(|()| self.rejected("api server url cannot have a path".into()))?
            .extend(path);
        if body.is_some() {
            url.query_pairs_mut()
                .append_pair("fieldManager", FIELD_MANAGER);
        }
        let token = self.token().await?;
        let mut request = self.client.request(method, url);
        if let Some(token) = &token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                RouterError::Setup {
                    router: self.name.clone(),
                    message: "token file holds characters not allowed in a header".to_string(),
                }
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, JSON_PATCH).body(body);
        }
        let answer = Self::exchange(request)
            .await
            .map_err(|e| self.unreachable(&e))?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        Err(self.answer_error(subject, &answer, token.as_deref()))
    }

    async fn exchange(request: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        Ok(Answer {
            status,
            body: body.to_vec(),
        })
    }

    /// The error an unsuccessful answer means.
    fn answer_error(&self, subject: &str, answer: &Answer, token: Option<&str>) -> RouterError {
        let status = answer.status;
        let quote = status_message(&answer.body, token);
        match status {
            StatusCode::NOT_FOUND => RouterError::Unknown {
                router: self.name.clone(),
                what: if subject.starts_with("httproute") {
                    format!("{subject} (or no HTTPRoute API on the api server)")
                } else {
                    subject.to_string()
                },
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => self.rejected(format!(
                "api server refused canaryd's credentials for {subject} ({status}): {quote}"
            )),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                RouterError::Unreachable {
                    router: self.name.clone(),
                    message: format!("api server answered {status} for {subject}: {quote}"),
                }
            }
            // 409 Conflict, 422 Unprocessable Entity (a failed `test`, a value the CRD refuses)
            // and anything else unexpected.
            _ => self.rejected(format!("{subject} ({status}): {quote}")),
        }
    }

    /// A transport error, by its root cause (the URL carries no credentials: `new` refuses them).
    fn unreachable(&self, e: &reqwest::Error) -> RouterError {
        let message = if e.is_timeout() {
            format!(
                "api server `{}` did not answer within {}s",
                self.server,
                REQUEST_TIMEOUT.as_secs()
            )
        } else {
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("api server `{}`: {cause}", self.server)
        };
        RouterError::Unreachable {
            router: self.name.clone(),
            message,
        }
    }

    fn rejected(&self, message: String) -> RouterError {
        RouterError::rejected(&self.name, message)
    }
}

/// The `message` of a Kubernetes `Status` answer (else the body), cut short and scrubbed of the
/// token.
fn status_message(body: &[u8], token: Option<&str>) -> String {
    let mut text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if let Some(token) = token {
        text = text.replace(token, "<token>");
    }
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A DNS-1123 label: a namespace name.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: an HTTPRoute name.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// One `backendRef` of the driven rule, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BackendRef {
    name: String,
    /// `None`: no `weight` field (the API's default, 1).
    weight: Option<u32>,
}

impl BackendRef {
    /// The weight in force.
    fn effective(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

/// The rule canaryd drives (see the module doc) and its `backendRefs`, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DrivenRule {
    index: usize,
    refs: Vec<BackendRef>,
}

/// Why traffic cannot be written to the driven rule.
#[derive(Debug, PartialEq, Eq)]
enum PatchError {
    /// The traffic names a backend the rule lacks (the text names it).
    Unknown(String),
    /// The rule has two `backendRefs` of one name that the traffic gives a weight.
    Ambiguous(String),
}

impl DrivenRule {
    /// The first rule with two or more `backendRefs`, else the first with any; `Ok(None)` when
    /// no rule has any; `Err` when the route is not shaped like an HTTPRoute.
    fn of(route: &Value) -> Result<Option<DrivenRule>, String> {
        let rules = match route.pointer("/spec/rules") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(rules)) => rules,
            Some(_) => return Err("`spec.rules` is not a list".to_string()),
        };
        let mut parsed = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            if is_ours(rule) {
                continue;
            }
            let refs = match rule.get("backendRefs") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(refs)) => refs
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        backend_ref(r).map_err(|e| format!("rule {index} backendRef {i}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return Err(format!("rule {index}: `backendRefs` is not a list")),
            };
            parsed.push(DrivenRule { index, refs });
        }
        let split = parsed.iter().position(|r| r.refs.len() >= 2);
        let any = parsed.iter().position(|r| !r.refs.is_empty());
        Ok(split.or(any).map(|i| parsed.swap_remove(i)))
    }

    /// Weights by backend name (several `backendRefs` of one name added up).
    fn observed(&self) -> BTreeMap<String, u32> {
        let mut backends = BTreeMap::new();
        for r in &self.refs {
            let w: &mut u32 = backends.entry(r.name.clone()).or_default();
            *w = w.saturating_add(r.effective());
        }
        backends
    }

    /// The JSON Patch that gives every `backendRef` its weight in `traffic` (0 when not named),
    /// guarded by a `test` of every name; `None` when all weights are already right.
    fn patch(&self, traffic: &Traffic) -> Result<Option<Value>, PatchError> {
        for name in traffic.backends.keys() {
            match self.refs.iter().filter(|r| &r.name == name).count() {
                0 => {
                    return Err(PatchError::Unknown(format!(
                        "backendRef `{name}` in rule {}",
                        self.index
                    )));
                }
                1 => {}
                n => {
                    return Err(PatchError::Ambiguous(format!(
                        "rule {} has {n} backendRefs named `{name}`; canaryd cannot tell them apart",
                        self.index
                    )));
                }
            }
        }
        let base = format!("/spec/rules/{}/backendRefs", self.index);
        let mut tests = Vec::new();
        let mut sets = Vec::new();
        for (i, r) in self.refs.iter().enumerate() {
            tests.push(json!({"op": "test", "path": format!("{base}/{i}/name"), "value": r.name}));
            let want = traffic
                .backends
                .get(&r.name)
                .map_or(0, |w| u32::from(w.get()));
            if r.weight != Some(want) && !(r.weight.is_none() && want == 1) {
                let op = if r.weight.is_some() { "replace" } else { "add" };
                sets.push(json!({"op": op, "path": format!("{base}/{i}/weight"), "value": want}));
            }
        }
        if sets.is_empty() {
            return Ok(None);
        }
        tests.extend(sets);
        Ok(Some(Value::Array(tests)))
    }
}

/// One `backendRef` object: its `name` and optional `weight`.
fn backend_ref(r: &Value) -> Result<BackendRef, String> {
    let name = r
        .get("name")
        .and_then(Value::as_str)
        .ok_or("no `name`")?
        .to_string();
    let weight = match r.get("weight") {
        None | Some(Value::Null) => None,
        Some(w) => Some(
            w.as_u64()
                .and_then(|w| u32::try_from(w).ok())
                .ok_or_else(|| {
                    format!("weight `{w}` of `{name}` is not a whole number 0..=1000000")
                })?,
        ),
    };
    Ok(BackendRef { name, weight })
}

/// The prefix of the names of the rules canaryd writes for header routes.
const OURS: &str = "canaryd-";

fn is_ours(rule: &Value) -> bool {
    rule.get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n.starts_with(OURS))
}

/// The header routes canaryd wrote into `route` (its `canaryd-*` rules), in order.
fn routes_in(route: &Value) -> Result<Vec<Route>, String> {
    let Some(Value::Array(rules)) = route.pointer("/spec/rules") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for rule in rules.iter().filter(|r| is_ours(r)) {
        let name = rule["name"].as_str().unwrap_or_default()[OURS.len()..].to_string();
        let backend = rule
            .pointer("/backendRefs/0/name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("rule `{OURS}{name}` has no backendRef"))?
            .to_string();
        let mut matches: Vec<Match> = Vec::new();
        for m in rule
            .get("matches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut all = Vec::new();
            for (key, on) in [("headers", Field::Header), ("queryParams", Field::Query)] {
                for c in m.get(key).and_then(Value::as_array).into_iter().flatten() {
                    let name = c["name"].as_str().unwrap_or_default().to_string();
                    let value = c["value"].as_str().unwrap_or_default();
                    let value = match c["type"].as_str().unwrap_or("Exact") {
                        "Exact" => Pattern::Exact(value.to_string()),
                        _ => decode_regex(value),
                    };
                    all.push(Criterion { on, name, value });
                }
            }
            let m = Match { all };
            // One match per path/method of the driven rule: the same criteria repeat.
            if !matches.contains(&m) {
                matches.push(m);
            }
        }
        out.push(Route {
            name,
            matches,
            backend,
        });
    }
    Ok(out)
}

/// A prefix as a regular expression over the whole value, and back.
fn encode(p: &Pattern) -> (&'static str, String) {
    match p {
        Pattern::Exact(v) => ("Exact", v.clone()),
        Pattern::Prefix(v) => ("RegularExpression", format!("^{}.*", regex::escape(v))),
        Pattern::Regex(r) => ("RegularExpression", format!("^(?:{r})$")),
    }
}

fn decode_regex(value: &str) -> Pattern {
    if let Some(inner) = value
        .strip_prefix("^(?:")
        .and_then(|v| v.strip_suffix(")$"))
    {
        return Pattern::Regex(inner.to_string());
    }
    if let Some(inner) = value.strip_prefix('^').and_then(|v| v.strip_suffix(".*")) {
        let mut literal = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            literal.push(if c == '\\' {
                chars.next().unwrap_or(c)
            } else {
                c
            });
        }
        if regex::escape(&literal) == inner {
            return Pattern::Prefix(literal);
        }
    }
    Pattern::Regex(value.to_string())
}

/// The JSON Patch that rewrites `spec.rules` whole: canaryd's rules replaced by those of
/// `traffic`'s routes, just before the driven rule, and the driven rule's weights set; guarded
/// by a `test` of the rules as read. `None` when they already are so.
fn rules_patch(
    route: &Value,
    rule: &DrivenRule,
    traffic: &Traffic,
) -> Result<Option<Value>, PatchError> {
    // The weights, as the weights-only patch would set them.
    let mut doc = route.clone();
    if let Some(ops) = rule.patch(traffic)? {
        for op in ops.as_array().into_iter().flatten() {
            if op["op"] == "test" {
                continue;
            }
            let path = op["path"].as_str().unwrap_or_default();
            let (parent, key) = path.rsplit_once('/').unwrap_or_default();
            if let Some(obj) = doc.pointer_mut(parent).and_then(Value::as_object_mut) {
                obj.insert(key.to_string(), op["value"].clone());
            }
        }
    }
    let old = route.pointer("/spec/rules").cloned().unwrap_or(Value::Null);
    let current: Vec<Value> = doc
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let driven = current[rule.index].clone();
    let path_matches: Vec<Value> = match driven.get("matches").and_then(Value::as_array) {
        Some(ms) if !ms.is_empty() => ms.clone(),
        _ => vec![json!({})],
    };
    if path_matches
        .iter()
        .any(|m| m.get("headers").is_some() || m.get("queryParams").is_some())
    {
        return Err(PatchError::Ambiguous(format!(
            "rule {} matches by header or query itself; header routes need the weighted rule \
             matched by path and method only",
            rule.index
        )));
    }
    let mut ours = Vec::new();
    for r in &traffic.routes {
        let name = format!("{OURS}{}", r.name);
        if !is_dns_label(&name) {
            return Err(PatchError::Ambiguous(format!(
                "route name `{}` cannot name an HTTPRoute rule (`{name}` must be a DNS label: \
                 lowercase letters, digits and `-`, at most 63)",
                r.name
            )));
        }
        let canary = driven
            .get("backendRefs")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|b| b["name"] == r.backend.as_str()))
            .ok_or_else(|| {
                PatchError::Unknown(format!("backendRef `{}` in rule {}", r.backend, rule.index))
            })?;
        let mut backend = canary.clone();
        if let Some(b) = backend.as_object_mut() {
            b.remove("weight");
        }
        let mut matches = Vec::new();
        for m in &r.matches {
            let mut headers = Vec::new();
            let mut query = Vec::new();
            for c in &m.all {
                let (kind, value) = encode(&c.value);
                let item = json!({"type": kind, "name": c.name, "value": value});
                match c.on {
                    Field::Header => headers.push(item),
                    Field::Query => query.push(item),
                    Field::Cookie => {
                        return Err(PatchError::Ambiguous(format!(
                            "route `{}` matches cookie `{}`: an HTTPRoute has no cookie match; \
                             match a header instead",
                            r.name, c.name
                        )));
                    }
                }
            }
            for base in &path_matches {
                let mut one = base.clone();
                if let Some(obj) = one.as_object_mut() {
                    if !headers.is_empty() {
                        obj.insert("headers".into(), Value::Array(headers.clone()));
                    }
                    if !query.is_empty() {
                        obj.insert("queryParams".into(), Value::Array(query.clone()));
                    }
                }
                matches.push(one);
            }
        }
        ours.push(json!({"name": name, "matches": matches, "backendRefs": [backend]}));
    }
    let mut rules: Vec<Value> = Vec::new();
    for (i, r) in current.into_iter().enumerate() {
        if is_ours(&r) {
            continue;
        }
        if i == rule.index {
            rules.append(&mut ours);
        }
        rules.push(r);
    }
    let rules = Value::Array(rules);
    if rules == old {
        return Ok(None);
    }
    Ok(Some(json!([
        {"op": "test", "path": "/spec/rules", "value": old},
        {"op": "replace", "path": "/spec/rules", "value": rules},
    ])))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn traffic(pairs: &[(&str, i64)]) -> Traffic {
        Traffic::of(pairs).unwrap()
    }

    fn route(rules: Value) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "checkout"}, "spec": {"rules": rules}})
    }

    fn refs(pairs: &[(&str, Option<u32>)]) -> Vec<BackendRef> {
        pairs
            .iter()
            .map(|(n, w)| BackendRef {
                name: n.to_string(),
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn the_driven_rule_is_the_first_split_else_the_first_with_backends() {
        let check = |rules: Value, expected: Option<(usize, Vec<BackendRef>)>| {
            let got = DrivenRule::of(&route(rules)).unwrap();
            assert_eq!(
                got,
                expected.map(|(index, refs)| DrivenRule { index, refs })
            );
        };
        check(
            json!([{"backendRefs": [{"name": "blue", "weight": 90}, {"name": "green", "weight": 10}]}]),
            Some((0, refs(&[("blue", Some(90)), ("green", Some(10))]))),
        );
        // A header-matched rule to the canary alone comes first; the split is driven.
        check(
            json!([
                {"matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
                 "backendRefs": [{"name": "green"}]},
                {"backendRefs": [{"name": "blue"}, {"name": "green", "weight": 0}]}
            ]),
            Some((1, refs(&[("blue", None), ("green", Some(0))]))),
        );
        check(
            json!([{"filters": []}, {"backendRefs": [{"name": "blue"}]}, {"backendRefs": [{"name": "green"}]}]),
            Some((1, refs(&[("blue", None)]))),
        );
        check(json!([{"filters": []}]), None);
        assert_eq!(DrivenRule::of(&json!({"spec": {}})).unwrap(), None);
        assert!(DrivenRule::of(&json!({"spec": {"rules": 3}})).is_err());
        assert!(DrivenRule::of(&route(json!([{"backendRefs": [{"weight": 1}]}]))).is_err());
        assert!(
            DrivenRule::of(&route(
                json!([{"backendRefs": [{"name": "a", "weight": -1}]}])
            ))
            .is_err()
        );
    }

    #[test]
    fn a_missing_weight_is_one_and_names_are_added_up() {
        let rule = DrivenRule {
            index: 0,
            refs: refs(&[("blue", None), ("green", Some(3)), ("green", Some(4))]),
        };
        assert_eq!(
            rule.observed(),
            BTreeMap::from([("blue".to_string(), 1), ("green".to_string(), 7)])
        );
    }

    #[test]
    fn the_patch_tests_every_name_and_sets_only_changed_weights() {
        let rule = DrivenRule {
            index: 2,
            refs: refs(&[("blue", Some(100)), ("green", None), ("old", Some(5))]),
        };
        let patch = rule
            .patch(&traffic(&[("blue", 90), ("green", 10)]))
            .unwrap()
            .unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/rules/2/backendRefs/0/name", "value": "blue"},
                {"op": "test", "path": "/spec/rules/2/backendRefs/1/name", "value": "green"},
                {"op": "test", "path": "/spec/rules/2/backendRefs/2/name", "value": "old"},
                {"op": "replace", "path": "/spec/rules/2/backendRefs/0/weight", "value": 90},
                {"op": "add", "path": "/spec/rules/2/backendRefs/1/weight", "value": 10},
                {"op": "replace", "path": "/spec/rules/2/backendRefs/2/weight", "value": 0}
            ])
        );
        // Already in force (a missing weight is 1): nothing to send.
        let rule = DrivenRule {
            index: 0,
            refs: refs(&[("blue", Some(99)), ("green", None)]),
        };
        assert_eq!(
            rule.patch(&traffic(&[("blue", 99), ("green", 1)])),
            Ok(None)
        );
    }

    #[test]
    fn the_patch_refuses_unknown_and_ambiguous_backends() {
        let rule = DrivenRule {
            index: 0,
            refs: refs(&[("blue", Some(1)), ("blue", Some(1))]),
        };
        assert!(matches!(
            rule.patch(&traffic(&[("green", 100)])),
            Err(PatchError::Unknown(w)) if w.contains("`green`")
        ));
        assert!(matches!(
            rule.patch(&traffic(&[("blue", 100)])),
            Err(PatchError::Ambiguous(_))
        ));
    }

    #[test]
    fn new_accepts_plain_http_only_and_checks_names() {
        let new = |server: &str, ns: &str| GatewayRouter::new("k8s", server, ns, None);
        assert!(new("http://127.0.0.1:8001", "shop").is_ok());
        assert!(new("http://127.0.0.1:8001/prefix/", "shop").is_ok());
        for (server, ns, says) in [
            ("https://10.0.0.1:6443", "shop", "needs TLS"),
            ("ftp://h", "shop", "scheme `ftp`"),
            ("not a url", "shop", "not a url"),
            ("http://u:p@h:1", "shop", "credentials"),
            ("http://h:1", "Shop", "namespace"),
            ("http://h:1", "", "namespace"),
        ] {
            match new(server, ns) {
                Err(RouterError::Setup { message, .. }) => {
                    assert!(message.contains(says), "{server} {ns}: {message}")
                }
                other => panic!("{server} {ns}: {other:?}"),
            }
        }
        assert!(GatewayRouter::new("k8s", "http://h:1", "shop", Some(" ")).is_err());
    }

    #[test]
    fn errors_quote_the_status_message_without_the_token() {
        let body = br#"{"kind":"Status","message":"token s3cret is not valid"}"#;
        assert_eq!(
            status_message(body, Some("s3cret")),
            "token <token> is not valid"
        );
        assert_eq!(status_message(b" plain ", None), "plain");
        assert!(status_message(&[b'x'; 1000], None).ends_with('…'));
    }

    #[test]
    fn names_are_checked_like_kubernetes_does() {
        assert!(is_dns_subdomain("checkout.v2"));
        assert!(!is_dns_subdomain("Checkout"));
        assert!(!is_dns_subdomain("a/b"));
        assert!(!is_dns_subdomain(""));
        assert!(!is_dns_label("a.b"));
    }
}
