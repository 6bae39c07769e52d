//! The Prometheus metric provider's client: one number (instant query) or one series (range query) from Prometheus' HTTP API, with bounded time and credentials that never print.
//!
//! Queries go as `POST {url}/api/v1/query` (and `query_range`) with a form body, so long
//! queries fit, and carry Prometheus' own `timeout` parameter, so Prometheus stops evaluating a
//! query canaryd has given up on. Redirects are never followed (credentials must not travel
//! to another host, and a redirected POST loses its body): a 3xx is an error that says where it
//! pointed. TLS is not built into canaryd: `url` must be `http://` (put a TLS-terminating proxy
//! on loopback in front of a remote Prometheus).
//!
//! Answers are read as Prometheus 2.x and 3.x write them: `{"status":"success","data":
//! {"resultType":...,"result":...}}` with values as strings (`"0.5"`, `"NaN"`, `"+Inf"`), or
//! `{"status":"error","errorType":...,"error":...}` with HTTP 400 or 422 (a query Prometheus
//! refuses) or 503 (a query that timed out or was aborted). `warnings` are logged at DEBUG.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::core::spec::duration;
use crate::edge::secret::{Secret, SecretError, SecretRef};

/// A query's timeout when the configuration names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read; one series of 11,000 points (Prometheus' maximum) is far smaller.
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// How many of the series a "more than one series" error shows.
const SHOWN_SERIES: usize = 3;

/// The `prometheus:` section of the controller configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Prometheus' base URL, `http://` only, optionally with a path prefix:
    /// `http://127.0.0.1:9090`, `http://mimir:8080/prometheus`. No credentials in it.
    pub url: String,
    /// How long one query may take, connecting included (`5s` when unset). Also sent to
    /// Prometheus as the query's own timeout.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Sent as `Authorization: Bearer <token>`. Read on every query, so a rotated file is
    /// picked up without a restart.
    #[serde(default)]
    pub bearer_token: Option<SecretRef>,
    /// Basic auth user name (with `password`); not together with `bearerToken`.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic auth password. Read on every query.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Extra request headers, e.g. `X-Scope-OrgID: tenant-a` for Mimir, Cortex or Thanos
    /// tenants. Plain configuration text, not for secrets: credentials go in `bearerToken` or
    /// `username`/`password` (an `Authorization` header is refused here).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Why a query gave no number. Messages name Prometheus by its URL (which never holds
/// credentials) and never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The configuration cannot work; fix it and restart.
    #[error("prometheus `{url}`: {message}")]
    Config { url: String, message: String },
    /// A credential could not be read (the source says which and why).
    #[error("prometheus {url}: cannot read a credential")]
    Secret {
        url: String,
        #[source]
        source: SecretError,
    },
    /// Nothing answered: connection refused or reset, no route, name not resolved.
    #[error("prometheus {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// No complete answer within the timeout.
    #[error("prometheus {url} did not answer within {}", duration::display(*after))]
    Timeout { url: String, after: Duration },
    /// Prometheus refused the query (HTTP 400 or 422): its message says why, e.g.
    /// `bad_data: invalid parameter "query": 1:16: parse error: unclosed left parenthesis`.
    #[error("prometheus {url} refused the query: {error_type}: {message}")]
    BadQuery {
        url: String,
        status: u16,
        error_type: String,
        message: String,
    },
    /// Prometheus (or a proxy in front of it) failed: 5xx, including a query that timed out
    /// inside Prometheus (503).
    #[error("prometheus {url} failed with {status}: {message}")]
    Server {
        url: String,
        status: u16,
        message: String,
    },
    /// Another HTTP status: 401/403 (credentials), 404 (wrong path prefix), 3xx (redirects
    /// are not followed), 429.
    #[error("prometheus {url} answered {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    /// The answer is not Prometheus' JSON.
    #[error("prometheus {url} gave an answer that is not Prometheus' JSON: {message}")]
    Malformed { url: String, message: String },
    /// A valid answer that is not one number (or one series): several series, a range vector,
    /// a string.
    #[error("query on prometheus {url} {message}")]
    Shape { url: String, message: String },
}

impl ProviderError {
    /// Whether asking again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            ProviderError::Unreachable { .. }
            | ProviderError::Timeout { .. }
            | ProviderError::Server { .. } => true,
            ProviderError::Http { status, .. } => *status == 429,
            ProviderError::Config { .. }
            | ProviderError::Secret { .. }
            | ProviderError::BadQuery { .. }
            | ProviderError::Malformed { .. }
            | ProviderError::Shape { .. } => false,
        }
    }
}

#[derive(Clone, Debug)]
enum Auth {
    None,
    Bearer(SecretRef),
    Basic {
        username: String,
        password: Option<SecretRef>,
    },
}

/// A Prometheus server's query API.
#[derive(Clone)]
pub struct Prometheus {
    /// The base URL, its path ending in `/`.
    base: Url,
    /// `base` as messages show it.
    shown: String,
    timeout: Duration,
    auth: Auth,
    headers: HeaderMap,
    client: reqwest::Client,
}

impl fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prometheus")
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .field("auth", &self.auth)
            // Names only: values are configuration, but need not be printed.
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The data of a successful answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

impl Prometheus {
    /// Checks the configuration and reads the credentials once (so a missing one is found at
    /// start); connects to nothing.
    pub fn new(cfg: &PrometheusConfig) -> Result<Prometheus, ProviderError> {
        let base = parse_base(&cfg.url)?;
        let shown = base.as_str().trim_end_matches('/').to_string();
        let config = |message: String| ProviderError::Config {
            url: shown.clone(),
            message,
        };
        let timeout = match &cfg.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => {
                let t =
                    duration::parse(text).map_err(|e| config(format!("timeout `{text}`: {e}")))?;
                if t < Duration::from_millis(1) {
                    return Err(config(format!("timeout `{text}` must be at least 1ms")));
                }
                t
            }
        };
        let auth = match (&cfg.bearer_token, &cfg.username, &cfg.password) {
            (None, None, None) => Auth::None,
            (Some(token), None, None) => Auth::Bearer(token.clone()),
            (None, Some(username), password) => Auth::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            (None, None, Some(_)) => {
                return Err(config("`password` needs a `username`".to_string()));
            }
            (Some(_), _, _) => {
                return Err(config(
                    "give either `bearerToken` or `username`/`password`, not both".to_string(),
                ));
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| config(format!("header name `{name}` is not a valid header name")))?;
            if [
                reqwest::header::AUTHORIZATION,
                reqwest::header::CONTENT_TYPE,
                reqwest::header::CONTENT_LENGTH,
                reqwest::header::HOST,
            ]
            .contains(&header)
            {
                return Err(config(format!(
                    "header `{name}` is set by canaryd (credentials go in `bearerToken` or `username`/`password`)"
                )));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| config(format!("header `{name}` has a value that cannot be sent")))?;
            headers.insert(header, value);
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| config(format!("http client: {}", innermost(&e))))?;
        let prometheus = Prometheus {
            base,
            shown,
            timeout,
            auth,
            headers,
            client,
        };
        prometheus.read_credentials_now()?;
        Ok(prometheus)
    }

    /// The base URL, as messages show it.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// How long one query may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Evaluates `query` at `at` (`POST /api/v1/query`) and returns its one number.
    ///
    /// - a scalar → its value; a vector of one sample → its value;
    /// - an empty vector → `None` (no data); NaN (e.g. 0/0, a rate ratio without traffic) →
    ///   `None` as well;
    /// - ±Inf → `Some(±Inf)`, as it is: it compares like a number (`+Inf` fails `< 500`), and
    ///   comes from real answers such as `histogram_quantile` landing in the `+Inf` bucket;
    /// - several series → an error naming how many, with the first few label sets: aggregate
    ///   them (`sum(...)`, `max(...)`);
    /// - a range vector (`x[5m]`) → an error: wrap it in `rate(...)`, `avg_over_time(...)`;
    /// - a string → an error.
    pub async fn instant(
        &self,
        query: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<f64>, ProviderError> {
        let form = [
            ("query", query.to_string()),
            ("time", timestamp(at)),
            ("timeout", crate::core::promql::duration(self.timeout)),
        ];
        let data = self.call("api/v1/query", &form).await?;
        one_number(&data).map_err(|e| self.answer_error(e))
    }

    /// Evaluates `query` over `[start, end]` every `step` (`POST /api/v1/query_range`) and
    /// returns the values of the one series it gives, oldest first; no series → empty. NaN
    /// values are kept (the judge removes them); Prometheus leaves out steps where the series
    /// has no sample, so the values are not necessarily `(end - start) / step + 1`. Several
    /// series → an error, as for [`Prometheus::instant`]. Prometheus refuses more than 11,000
    /// steps.
    pub async fn range(
        &self,
        query: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Duration,
    ) -> Result<Vec<f64>, ProviderError> {
        let form = [
            ("query", query.to_string()),
            ("start", timestamp(start)),
            ("end", timestamp(end)),
            ("step", crate::core::promql::duration(step)),
            ("timeout", crate::core::promql::duration(self.timeout)),
        ];
        let data = self.call("api/v1/query_range", &form).await?;
        one_series(&data).map_err(|e| self.answer_error(e))
    }

    fn answer_error(&self, e: AnswerError) -> ProviderError {
        match e {
            AnswerError::Shape(message) => ProviderError::Shape {
                url: self.shown.clone(),
                message,
            },
            AnswerError::Malformed(message) => self.malformed(message),
        }
    }

    fn malformed(&self, message: String) -> ProviderError {
        ProviderError::Malformed {
            url: self.shown.clone(),
            message,
        }
    }

    /// Reads every credential, to find a missing one before the first query.
    fn read_credentials_now(&self) -> Result<(), ProviderError> {
        credentials(&self.auth)
            .map(|_| ())
            .map_err(|source| ProviderError::Secret {
                url: self.shown.clone(),
                source,
            })
    }

    /// POSTs `form` to `endpoint` (relative to the base) and returns the answer's `data`.
    async fn call(&self, endpoint: &str, form: &[(&str, String)]) -> Result<Data, ProviderError> {
        let url = self
            .base
            .join(endpoint)
            .map_err(|e| self.malformed(format!("cannot join `{endpoint}` to the url: {e}")))?;
        let mut request = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .form(form);
        // Read on every call (files may rotate); off the async workers, as file reads block.
        let creds = match &self.auth {
            Auth::None => Credentials::None,
            auth => {
                let auth = auth.clone();
                tokio::task::spawn_blocking(move || credentials(&auth))
                    .await
                    .map_err(|e| self.malformed(format!("credential reader stopped: {e}")))?
                    .map_err(|source| ProviderError::Secret {
                        url: self.shown.clone(),
                        source,
                    })?
            }
        };
        match creds {
            Credentials::None => {}
            Credentials::Bearer(token) => request = request.bearer_auth(token.expose()),
            Credentials::Basic(user, password) => {
                request = request.basic_auth(user, password.as_ref().map(Secret::expose));
            }
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(redact_location);
        let body = read_capped(response, MAX_ANSWER)
            .await
            .map_err(|e| match e {
                ReadError::Transport(e) => self.transport(&e),
                ReadError::TooLarge => {
                    self.malformed(format!("the answer is larger than {MAX_ANSWER} bytes"))
                }
            })?;
        self.interpret(status, location, &body)
    }

    /// Turns an HTTP answer into `data` or the error it means.
    fn interpret(
        &self,
        status: StatusCode,
        location: Option<String>,
        body: &[u8],
    ) -> Result<Data, ProviderError> {
        let url = self.shown.clone();
        let code = status.as_u16();
        if status.is_redirection() {
            return Err(ProviderError::Http {
                url,
                status: code,
                message: format!(
                    "a redirect{}, which canaryd does not follow: set `url` to the address Prometheus answers on",
                    location.map(|l| format!(" to {l}")).unwrap_or_default()
                ),
            });
        }
        let envelope: Option<Envelope> = serde_json::from_slice(body).ok();
        let Some(envelope) = envelope else {
            let text = excerpt(body);
            return Err(match code {
                200..=299 => self.malformed(format!("not JSON: {text}")),
                401 | 403 => ProviderError::Http {
                    url,
                    status: code,
                    message: format!(
                        "{} (check `bearerToken` or `username`/`password`): {text}",
                        reason(status)
                    ),
                },
                404 => ProviderError::Http {
                    url,
                    status: code,
                    message: format!(
                        "no Prometheus API here (check the url's path prefix): {text}"
                    ),
                },
                500..=599 => ProviderError::Server {
                    url,
                    status: code,
                    message: text,
                },
                _ => ProviderError::Http {
                    url,
                    status: code,
                    message: format!("{}: {text}", reason(status)),
                },
            });
        };
        for warning in &envelope.warnings {
            tracing::debug!(prometheus = %self.shown, warning, "prometheus warned");
        }
        if envelope.status == "error" || !status.is_success() {
            let error_type = envelope.error_type.unwrap_or_else(|| "error".to_string());
            let message = envelope
                .error
                .unwrap_or_else(|| format!("{} without an error message", reason(status)));
            return Err(match code {
                400 | 422 => ProviderError::BadQuery {
                    url,
                    status: code,
                    error_type,
                    message,
                },
                500..=599 => ProviderError::Server {
                    url,
                    status: code,
                    message: format!("{error_type}: {message}"),
                },
                _ => ProviderError::Http {
                    url,
                    status: code,
                    message: format!("{error_type}: {message}"),
                },
            });
        }
        if envelope.status != "success" {
            return Err(self.malformed(format!("status `{}`", excerpt(envelope.status.as_bytes()))));
        }
        let data = envelope
            .data
            .ok_or_else(|| self.malformed("a success without `data`".to_string()))?;
        serde_json::from_value(data)
            .map_err(|e| self.malformed(format!("`data` is not a query result: {e}")))
    }

    fn transport(&self, e: &reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout {
                url: self.shown.clone(),
                after: self.timeout,
            }
        } else {
            ProviderError::Unreachable {
                url: self.shown.clone(),
                reason: innermost(e),
            }
        }
    }
}

/// Parses and checks the configured URL; the base's path ends with `/`.
fn parse_base(text: &str) -> Result<Url, ProviderError> {
    let mut url = Url::parse(text.trim()).map_err(|e| ProviderError::Config {
        // An unparsable URL is not echoed: it may hold credentials.
        url: "<url>".to_string(),
        message: format!("`url` is not a valid URL: {e}"),
    })?;
    let had_credentials = !url.username().is_empty() || url.password().is_some();
    // Neither can fail on a URL with a host; on one without, the host error comes next.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let shown = url.as_str().trim_end_matches('/').to_string();
    let config = |message: &str| ProviderError::Config {
        url: shown.clone(),
        message: message.to_string(),
    };
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(config(
                "TLS is not built into canaryd: use an http:// url (e.g. a TLS-terminating proxy on loopback in front of Prometheus)",
            ));
        }
        _ => return Err(config("`url` must be an http:// url")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(config("`url` has no host"));
    }
    if had_credentials {
        return Err(config(
            "`url` must not hold credentials: use `username` and `password` (a secret), or `bearerToken`",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config("`url` must not have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

enum Credentials {
    None,
    Bearer(Secret),
    Basic(String, Option<Secret>),
}

fn credentials(auth: &Auth) -> Result<Credentials, SecretError> {
    Ok(match auth {
        Auth::None => Credentials::None,
        Auth::Bearer(token) => Credentials::Bearer(token.read("prometheus.bearerToken")?),
        Auth::Basic { username, password } => Credentials::Basic(
            username.clone(),
            password
                .as_ref()
                .map(|p| p.read("prometheus.password"))
                .transpose()?,
        ),
    })
}

enum ReadError {
    Transport(reqwest::Error),
    TooLarge,
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a successful answer is not what was asked for.
#[derive(Debug, PartialEq)]
enum AnswerError {
    Shape(String),
    Malformed(String),
}

/// The one number of an instant query's answer; NaN and no series are `None`.
fn one_number(data: &Data) -> Result<Option<f64>, AnswerError> {
    let value = match data.result_type.as_str() {
        "scalar" => sample_value(&data.result)?,
        "vector" => {
            let series = as_array(&data.result, "vector")?;
            match series.as_slice() {
                [] => return Ok(None),
                [one] => sample_value(field(one, "value")?)?,
                many => return Err(too_many(many)),
            }
        }
        "matrix" => {
            return Err(AnswerError::Shape(
                "returned a range vector (a selector like `x[5m]`), not a number: wrap it in a function such as `rate(...)`, `increase(...)` or `avg_over_time(...)`".to_string(),
            ));
        }
        "string" => {
            return Err(AnswerError::Shape(
                "returned a string, not a number".to_string(),
            ));
        }
        other => {
            return Err(AnswerError::Malformed(format!(
                "unknown result type `{}`",
                excerpt(other.as_bytes())
            )));
        }
    };
    Ok((!value.is_nan()).then_some(value))
}

/// The values of the one series of a range query's answer; no series is empty.
fn one_series(data: &Data) -> Result<Vec<f64>, AnswerError> {
    if data.result_type != "matrix" {
        return Err(AnswerError::Malformed(format!(
            "a range query answered with `{}`, not a matrix",
            excerpt(data.result_type.as_bytes())
        )));
    }
    let series = as_array(&data.result, "matrix")?;
    match series.as_slice() {
        [] => Ok(Vec::new()),
        [one] => as_array(field(one, "values")?, "values")?
            .iter()
            .map(|v| sample_value(v))
            .collect(),
        many => Err(too_many(many)),
    }
}

fn too_many(series: &[&Value]) -> AnswerError {
    let shown: Vec<String> = series
        .iter()
        .take(SHOWN_SERIES)
        .map(|s| labels(s.get("metric")))
        .collect();
    let more = if series.len() > SHOWN_SERIES {
        ", …"
    } else {
        ""
    };
    AnswerError::Shape(format!(
        "returned {} series ({}{more}), but a metric needs one number: aggregate them, e.g. `sum(...)`, `max(...)` or `sum by () (...)`",
        series.len(),
        shown.join(", ")
    ))
}

/// `{a="b", c="d"}` from a series' `metric` object.
fn labels(metric: Option<&Value>) -> String {
    let Some(Value::Object(map)) = metric else {
        return "{}".to_string();
    };
    let pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str()
                    .map_or_else(|| v.to_string(), |s| format!("{s:?}"))
            )
        })
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn as_array<'v>(value: &'v Value, what: &str) -> Result<Vec<&'v Value>, AnswerError> {
    value
        .as_array()
        .map(|a| a.iter().collect())
        .ok_or_else(|| AnswerError::Malformed(format!("the {what} is not an array")))
}

fn field<'v>(series: &'v Value, name: &str) -> Result<&'v Value, AnswerError> {
    series
        .get(name)
        .ok_or_else(|| AnswerError::Malformed(format!("a series has no `{name}`")))
}

/// The value of a `[timestamp, "value"]` pair.
fn sample_value(pair: &Value) -> Result<f64, AnswerError> {
    let text = pair
        .as_array()
        .and_then(|p| p.get(1))
        .and_then(Value::as_str)
        .ok_or_else(|| AnswerError::Malformed("a sample is not [time, \"value\"]".to_string()))?;
    parse_value(text).ok_or_else(|| {
        AnswerError::Malformed(format!("`{}` is not a number", excerpt(text.as_bytes())))
    })
}

/// A sample value as Prometheus writes it (Go's `strconv.FormatFloat`, plus `+Inf`, `-Inf`,
/// `NaN`).
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

/// Unix seconds with milliseconds, as Prometheus takes them: `1700000000.123`.
fn timestamp(t: DateTime<Utc>) -> String {
    let ms = t.timestamp_millis();
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// A redirect target without credentials, query or fragment.
fn redact_location(location: &str) -> String {
    match Url::parse(location) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        // A relative location: its path only.
        Err(_) => location.split(['?', '#']).next().unwrap_or("").to_string(),
    }
}

/// The start of a body, on one line, for a message.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return "(empty)".to_string();
    }
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().map_or_else(
        || status.as_u16().to_string(),
        |r| format!("{} {r}", status.as_u16()),
    )
}

fn innermost(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> Data {
        serde_json::from_str(json).unwrap()
    }

    /// One instant answer's `data` and what it means.
    fn check(json: &str, expected: Result<Option<f64>, &str>) {
        let got = one_number(&data(json));
        match (&got, &expected) {
            (Ok(Some(a)), Ok(Some(b))) if a == b => {}
            (Ok(None), Ok(None)) => {}
            (Err(AnswerError::Shape(m) | AnswerError::Malformed(m)), Err(want))
                if m.contains(want) => {}
            _ => panic!("{json}: got {got:?}, want {expected:?}"),
        }
    }

    #[test]
    fn instant_answers_mean_one_number_or_none() {
        check(
            r#"{"resultType":"scalar","result":[1700000000.1,"0.25"]}"#,
            Ok(Some(0.25)),
        );
        check(
            r#"{"resultType":"scalar","result":[1700000000.1,"NaN"]}"#,
            Ok(None),
        );
        check(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000.123,"0.5"]}]}"#,
            Ok(Some(0.5)),
        );
        check(r#"{"resultType":"vector","result":[]}"#, Ok(None));
        check(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}"#,
            Ok(None),
        );
        check(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}"#,
            Ok(Some(f64::INFINITY)),
        );
        check(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"-Inf"]}]}"#,
            Ok(Some(f64::NEG_INFINITY)),
        );
        check(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"1e-05"]}]}"#,
            Ok(Some(1e-5)),
        );
        check(
            r#"{"resultType":"vector","result":[{"metric":{"code":"200"},"value":[1,"1"]},{"metric":{"code":"500"},"value":[1,"2"]}]}"#,
            Err(
                r#"returned 2 series ({code="200"}, {code="500"}), but a metric needs one number: aggregate them"#,
            ),
        );
        check(
            r#"{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"1"]},{"metric":{"a":"3"},"value":[1,"1"]},{"metric":{"a":"4"},"value":[1,"1"]}]}"#,
            Err(r#"returned 4 series ({a="1"}, {a="2"}, {a="3"}, …)"#),
        );
        check(
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}"#,
            Err("returned a range vector"),
        );
        check(
            r#"{"resultType":"string","result":[1,"hi"]}"#,
            Err("returned a string"),
        );
        check(
            r#"{"resultType":"histogram","result":[]}"#,
            Err("unknown result type"),
        );
        check(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}"#,
            Err("`abc` is not a number"),
        );
        check(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,0.5]}]}"#,
            Err("not [time, \"value\"]"),
        );
        check(
            r#"{"resultType":"vector","result":{}}"#,
            Err("not an array"),
        );
    }

    #[test]
    fn range_answers_are_one_series_with_nan_kept() {
        let values = one_series(&data(
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"NaN"],[3,"0.5"]]}]}"#,
        ))
        .unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!((values[0], values[2]), (1.0, 0.5));
        assert!(values[1].is_nan());
        assert_eq!(
            one_series(&data(r#"{"resultType":"matrix","result":[]}"#)).unwrap(),
            Vec::<f64>::new()
        );
        let e = one_series(&data(
            r#"{"resultType":"matrix","result":[{"metric":{"a":"1"},"values":[]},{"metric":{"a":"2"},"values":[]}]}"#,
        ))
        .unwrap_err();
        assert!(
            matches!(&e, AnswerError::Shape(m) if m.contains("returned 2 series")),
            "{e:?}"
        );
        assert!(one_series(&data(r#"{"resultType":"vector","result":[]}"#)).is_err());
    }

    fn config(url: &str) -> PrometheusConfig {
        PrometheusConfig {
            url: url.to_string(),
            ..PrometheusConfig::default()
        }
    }

    fn refused(cfg: &PrometheusConfig) -> String {
        Prometheus::new(cfg).unwrap_err().to_string()
    }

    #[test]
    fn configuration_is_checked_and_never_echoes_credentials() {
        let p = Prometheus::new(&config("http://127.0.0.1:9090")).unwrap();
        assert_eq!(p.url(), "http://127.0.0.1:9090");
        assert_eq!(p.base.as_str(), "http://127.0.0.1:9090/");
        assert_eq!(p.timeout(), DEFAULT_TIMEOUT);
        let p = Prometheus::new(&config("http://mimir:8080/prometheus")).unwrap();
        assert_eq!(
            p.base.join("api/v1/query").unwrap().as_str(),
            "http://mimir:8080/prometheus/api/v1/query"
        );
        let p = Prometheus::new(&config("http://mimir:8080/prometheus/")).unwrap();
        assert_eq!(p.url(), "http://mimir:8080/prometheus");

        let tls = refused(&config("https://prom.example:9090"));
        assert!(tls.contains("TLS is not built into canaryd"), "{tls}");
        let creds = refused(&config("http://admin:hunter2@127.0.0.1:9090"));
        assert!(
            !creds.contains("hunter2") && !creds.contains("admin"),
            "{creds}"
        );
        assert!(creds.contains("must not hold credentials"), "{creds}");
        let bad = refused(&config("http//admin:hunter2@x"));
        assert!(!bad.contains("hunter2"), "{bad}");
        assert!(refused(&config("ftp://x")).contains("http://"));
        assert!(refused(&config("http://x:9090/?a=b")).contains("query"));

        let mut c = config("http://x:9090");
        c.timeout = Some("1500ms".into());
        assert_eq!(
            Prometheus::new(&c).unwrap().timeout(),
            Duration::from_millis(1500)
        );
        c.timeout = Some("5".into());
        assert!(
            refused(&c).contains("timeout `5`: `5` has no unit"),
            "{}",
            refused(&c)
        );
        c.timeout = Some("0s".into());
        assert!(refused(&c).contains("at least 1ms"));

        let mut c = config("http://x:9090");
        c.bearer_token = Some(SecretRef::env("CANARYD_TEST_SURELY_UNSET_TOKEN"));
        let e = Prometheus::new(&c).unwrap_err();
        assert!(matches!(e, ProviderError::Secret { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "prometheus http://x:9090: cannot read a credential"
        );
        c.username = Some("u".into());
        assert!(refused(&c).contains("not both"));
        let mut c = config("http://x:9090");
        c.password = Some(SecretRef::env("X"));
        assert!(refused(&c).contains("needs a `username`"));

        let mut c = config("http://x:9090");
        c.headers.insert("X-Scope-OrgID".into(), "tenant-a".into());
        let p = Prometheus::new(&c).unwrap();
        assert_eq!(p.headers["x-scope-orgid"], "tenant-a");
        c.headers.insert("Authorization".into(), "Bearer x".into());
        assert!(refused(&c).contains("set by canaryd"));
        let mut c = config("http://x:9090");
        c.headers.insert("bad header".into(), "v".into());
        assert!(refused(&c).contains("not a valid header name"));
    }

    #[test]
    fn the_configuration_reads_as_yaml_spells_it() {
        let c: PrometheusConfig = serde_saphyr::from_str(
            "url: http://127.0.0.1:9090\ntimeout: 2s\nusername: canaryd\npassword: {file: /run/secrets/prom}\nheaders: {X-Scope-OrgID: tenant-a}\n",
        )
        .unwrap();
        assert_eq!(c.timeout.as_deref(), Some("2s"));
        assert_eq!(c.password, Some(SecretRef::file("/run/secrets/prom")));
        assert_eq!(c.headers["X-Scope-OrgID"], "tenant-a");
        let typo: Result<PrometheusConfig, _> =
            serde_saphyr::from_str("url: http://x\nbearer_token: {env: T}\n");
        assert!(typo.is_err());
    }

    #[test]
    fn times_and_values_are_written_and_read_as_prometheus_does() {
        let t = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        assert_eq!(timestamp(t), "1700000000.123");
        let t = DateTime::from_timestamp_millis(1_700_000_000_005).unwrap();
        assert_eq!(timestamp(t), "1700000000.005");
        let t = DateTime::from_timestamp_millis(-1).unwrap();
        assert_eq!(timestamp(t), "-1.999");
        assert_eq!(parse_value("0.5"), Some(0.5));
        assert!(parse_value("NaN").unwrap().is_nan());
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_value("1e+06"), Some(1e6));
        assert_eq!(parse_value("inf"), None);
        assert_eq!(parse_value(""), None);
    }

    #[test]
    fn http_answers_mean_what_prometheus_means() {
        let p = Prometheus::new(&config("http://127.0.0.1:9090")).unwrap();
        let answer = |status: u16, body: &str| {
            p.interpret(StatusCode::from_u16(status).unwrap(), None, body.as_bytes())
        };
        let bad = answer(
            400,
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:16: parse error: unclosed left parenthesis"}"#,
        )
        .unwrap_err();
        assert_eq!(
            bad.to_string(),
            r#"prometheus http://127.0.0.1:9090 refused the query: bad_data: invalid parameter "query": 1:16: parse error: unclosed left parenthesis"#
        );
        assert!(!bad.is_transient());
        let exec = answer(422, r#"{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}"#).unwrap_err();
        assert!(
            matches!(exec, ProviderError::BadQuery { status: 422, .. }),
            "{exec:?}"
        );
        let timeout = answer(503, r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#).unwrap_err();
        assert!(timeout.is_transient());
        assert_eq!(
            timeout.to_string(),
            "prometheus http://127.0.0.1:9090 failed with 503: timeout: query timed out in expression evaluation"
        );
        let gateway = answer(502, "<html><body>Bad Gateway</body></html>\n").unwrap_err();
        assert!(gateway.is_transient());
        assert!(
            gateway
                .to_string()
                .ends_with("failed with 502: <html><body>Bad Gateway</body></html>"),
            "{gateway}"
        );
        let auth = answer(401, "Unauthorized\n").unwrap_err();
        assert!(!auth.is_transient());
        assert!(
            auth.to_string()
                .contains("401 Unauthorized (check `bearerToken`"),
            "{auth}"
        );
        let missing = answer(404, "404 page not found").unwrap_err();
        assert!(missing.to_string().contains("path prefix"), "{missing}");
        let html = answer(200, "<html>login</html>").unwrap_err();
        assert!(matches!(html, ProviderError::Malformed { .. }), "{html:?}");
        let redirect = p
            .interpret(
                StatusCode::FOUND,
                Some(redact_location("http://u:pw@elsewhere:9090/login?token=x")),
                b"",
            )
            .unwrap_err();
        let text = redirect.to_string();
        assert!(text.contains("302"), "{text}");
        assert!(text.contains("to http://elsewhere:9090/login,"), "{text}");
        assert!(!text.contains("pw") && !text.contains("token"), "{text}");
        let warned = answer(200, r#"{"status":"success","warnings":["partial"],"data":{"resultType":"scalar","result":[1,"2"]}}"#).unwrap();
        assert_eq!(one_number(&warned), Ok(Some(2.0)));
        let long = answer(500, &"x".repeat(1000)).unwrap_err().to_string();
        assert!(long.len() < 300 && long.ends_with('…'), "{long}");
    }
}
