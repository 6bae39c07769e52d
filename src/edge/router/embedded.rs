//! The embedded router: an HTTP/1.1 reverse proxy that splits each service's requests between backends by weight and counts them.
//!
//! # Routing
//!
//! A request goes to the service whose name equals the host part (port stripped) of its `Host`
//! header, if weights were set for that service; otherwise, if exactly one service has weights,
//! to that one; otherwise it is answered 503. Within the service:
//!
//! 1. **Routes**, in order: the first route one of whose matches has every criterion fitting
//!    sends the request to its backend, whatever the weights (a weight-0 canary included).
//!    A header is looked up without case, each of its field lines on its own; a cookie is
//!    read from the `Cookie` header(s); a query parameter from the target's query, name and
//!    value percent-decoded (`+` is left as it is: this is a URI query, not a form). A value
//!    that is absent fits nothing; a regex must match the whole value (it is compiled once,
//!    at `apply`, between `\A(?:` and `)\z`).
//! 2. **The weighted split.** Without a sticky key, or for a request that lacks it, a backend is
//!    drawn at random (`fastrand`) in proportion to its weight. With one, the key's value (the
//!    first field line of the header, or the first cookie of that name; an empty value counts
//!    as none) decides: the user is on [`Traffic::canary`] exactly when
//!    [`on_canary`]`(key, canary weight)`, and otherwise on the other backends, the rest of the
//!    buckets divided among them by weight in name order. So raising the canary's weight only
//!    ever moves users onto it. A sticky split with no canary named divides all buckets among
//!    all backends in name order: sticky while the weights hold, not monotone.
//!    A request without a sticky *cookie* gets one: a random id, with which it is routed, set
//!    on the answer (`Set-Cookie: NAME=<id>; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax`),
//!    so that the cookie and the side agree from the first answer.
//!
//! A backend with weight 0 gets nothing from the split, and a service none of whose backends
//! has weight answers 503 (routes still apply).
//!
//! `apply` *sets* a service's table (weights, routes, sticky key, canary): backends it does not
//! name get weight 0 for that service, and `observe` reports exactly what was last set. Each
//! service's table is an immutable `Arc<Split>`, regexes compiled, swapped under a short write
//! lock, so a request uses one consistent table from start to end (never old routes with new
//! weights) and no request is dropped while it changes.
//!
//! # Proxying
//!
//! Method, path, query, headers (minus hop-by-hop ones) and bodies are forwarded, streaming, over
//! a pooled client. The client's `Host` is kept as it came (as NGINX's `proxy_set_header Host
//! $host` and Traefik's `passHostHeader` do), and the router adds what a reverse proxy is
//! expected to: the client's address appended to `X-Forwarded-For`, `X-Forwarded-Host` (the
//! `Host` it was sent), `X-Forwarded-Proto: http`, and an RFC 7239 `Forwarded` element appended.
//! Every forwarded request carries `X-Canaryd-Side: <service>=canary` when its backend is the
//! service's canary and `<service>=stable` otherwise (routed requests too), in place of any the
//! client sent, so the next hop can keep the side and a client cannot choose it.
//! Responses carry `x-canaryd-backend: <name>`.
//!
//! A request in absolute form (`GET http://shop/ HTTP/1.1`) is routed by the host of its
//! target, as RFC 9112 says, and only when that host is a service of this router: the router is
//! no forward proxy, so another host is answered 400, and so is `CONNECT`.
//!
//! # Whose failure it is
//!
//! Analysis reads these counters, so a client must not be able to make a sound backend look
//! bad. Only the backend's own answers count against it, and failures to reach it or to hear
//! from it: a refused or broken connection (502), or no response head within the upstream
//! timeout counted **from the end of the request body** (504). What the client causes is the
//! client's, answered and counted apart (`canaryd_embedded_client_failures_total`), never as a
//! backend's 5xx:
//! - a request body that does not parse (bad chunk framing): 400, `reason="malformed_body"`;
//! - a client that goes away before its body ends: `reason="aborted"`;
//! - a body that stalls longer than the body idle timeout: 408, `reason="body_timeout"`.
//!
//! The listener itself (header-read timeout, head size, connection cap) is [`crate::edge::listener`].
//!
//! # Counters
//!
//! Per (service, backend), allocated on the first request (an idle service costs one small
//! entry): a ring of [`SLOTS`] one-second slots (ten minutes, about 38 KiB), each holding the
//! request count, the 5xx count and a latency histogram in milliseconds, for the windowed
//! [`EmbeddedRouter::query`]; and cumulative totals for [`EmbeddedRouter::render_metrics`].
//! Latency is measured from receiving the request to receiving the upstream's response head.
//! Windows are whole seconds, rounded up, including the current (partial) second, and
//! clamped to the ring's ten minutes.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RouterError;
use crate::core::model::{
    Criterion, Field, Observed, Pattern, Route, Sticky, Traffic, Weight, bucket, on_canary,
};
use crate::edge::listener::{self, ListenerEvent, ListenerStats, Resolved};
/// How long in-flight requests may run on after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Seconds kept in each ring: the longest window a query can cover.
pub const SLOTS: usize = 600;
/// Upper bounds of the latency histogram's buckets, in milliseconds; one more bucket is +Inf.
pub const BUCKETS_MS: [u32; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
const NBUCKETS: usize = BUCKETS_MS.len() + 1;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Why an embedded metrics query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "unknown embedded query `{0}` (valid: success_rate, error_rate, latency_p99_ms, request_count, request_rate)"
    )]
    UnknownQuery(String),
}

/// What the embedded metrics provider can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// Non-5xx responses / all responses, 0..1.
    SuccessRate,
    /// 5xx responses / all responses, 0..1.
    ErrorRate,
    /// 99th percentile latency in milliseconds, interpolated within histogram buckets.
    LatencyP99Ms,
    /// Requests in the window.
    RequestCount,
    /// Requests per second over the window (rounded up to whole seconds, at most ten minutes).
    RequestRate,
}

impl FromStr for Query {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "success_rate" => Query::SuccessRate,
            "error_rate" => Query::ErrorRate,
            "latency_p99_ms" => Query::LatencyP99Ms,
            "request_count" => Query::RequestCount,
            "request_rate" => Query::RequestRate,
            _ => return Err(QueryError::UnknownQuery(s.to_string())),
        })
    }
}

/// The embedded router; clones share one proxy.
#[derive(Clone)]
pub struct EmbeddedRouter {
    shared: Arc<Shared>,
}

impl fmt::Debug for EmbeddedRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedRouter")
            .field("name", &self.shared.name)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    name: String,
    local_addr: SocketAddr,
    upstreams: Vec<Upstream>,
    limits: Resolved,
    listener: Arc<ListenerStats>,
    /// Service → its current split; read briefly and the `Arc` cloned per request.
    splits: RwLock<HashMap<String, Arc<Split>>>,
    /// Service → backend → counters; touched by `apply`, `query` and `render_metrics` only.
    stats: Mutex<StatsMap>,
    client: Client<HttpConnector, RequestBody>,
    epoch: Instant,
}

/// Service → backend → counters.
type StatsMap = HashMap<String, HashMap<String, Arc<Stats>>>;

/// A configured backend: its name and where it lives.
struct Upstream {
    name: String,
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
    /// Base path without a trailing slash ("" for none).
    prefix: String,
}

/// One service's table (routes, weights, sticky key), immutable once built.
struct Split {
    /// As set, for `observe`.
    weights: BTreeMap<String, u32>,
    routes: Vec<Route>,
    sticky: Option<Sticky>,
    /// The routes, compiled, in order.
    rules: Vec<Rule>,
    key: Option<Key>,
    /// Backends with weight > 0, in name order, with running sums of the weights.
    choices: Vec<Choice>,
    total: u32,
    /// The canary and its weight, when the traffic names one.
    canary: Option<(Target, Weight)>,
    /// The other backends with weight > 0, with running sums: the sticky split's stable side.
    others: Vec<Choice>,
    /// `X-Canaryd-Side` for the stable side and for the canary.
    sides: [HeaderValue; 2],
}

/// Where a request goes.
#[derive(Clone)]
struct Target {
    upstream: usize,
    stats: Arc<Stats>,
    /// Whether it is the service's canary.
    canary: bool,
}

struct Choice {
    target: Target,
    cumulative: u32,
}

/// A route, compiled: its backend when any of its matches has all its tests fitting.
struct Rule {
    any: Vec<Vec<Test>>,
    target: Target,
}

/// One criterion, compiled.
struct Test {
    on: On,
    pattern: Pattern,
    /// The whole-value regex, for [`Pattern::Regex`].
    regex: Option<regex::Regex>,
}

enum On {
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

/// The sticky key, compiled.
enum Key {
    Header(HeaderName),
    Cookie(String),
}

/// Where the split sends a request, and the sticky cookie to set on its answer, if it had
/// none.
struct Decision<'a> {
    target: &'a Target,
    new_cookie: Option<HeaderValue>,
}

/// What a request offers routes and the sticky key, each part read when first asked for.
struct Seen<'r> {
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    cookies: OnceCell<Vec<(&'r str, &'r str)>>,
    params: OnceCell<Vec<(Cow<'r, str>, Cow<'r, str>)>>,
}

impl<'r> Seen<'r> {
    fn new(headers: &'r HeaderMap, uri: &'r Uri) -> Seen<'r> {
        Seen {
            headers,
            query: uri.query(),
            cookies: OnceCell::new(),
            params: OnceCell::new(),
        }
    }

    /// Every cookie, `(name, value)`, from every `Cookie` field line, in order.
    fn cookies(&self) -> &[(&'r str, &'r str)] {
        self.cookies.get_or_init(|| {
            self.headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
                .flat_map(|line| line.split(';'))
                .filter_map(|pair| pair.split_once('='))
                .map(|(name, value)| (name.trim(), value.trim()))
                .collect()
        })
    }

    /// Every query parameter, `(name, value)` percent-decoded, in order.
    fn params(&self) -> &[(Cow<'r, str>, Cow<'r, str>)] {
        self.params.get_or_init(|| {
            let decode = |s: &'r str| percent_encoding::percent_decode_str(s).decode_utf8_lossy();
            self.query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(name), decode(value))
                })
                .collect()
        })
    }

    /// The sticky key's value, if the request has a non-empty one.
    fn key(&self, key: &Key) -> Option<&'r str> {
        match key {
            Key::Header(name) => self
                .headers
                .get(name)
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()),
            Key::Cookie(name) => self
                .cookies()
                .iter()
                .find_map(|(n, v)| (n == name).then_some(*v)),
        }
        .filter(|v| !v.is_empty())
    }
}

impl Test {
    fn fits(&self, seen: &Seen<'_>) -> bool {
        let fits = |value: &str| self.pattern.fits(value, self.regex.as_ref());
        match &self.on {
            On::Header(name) => seen
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
                .any(fits),
            On::Cookie(name) => seen.cookies().iter().any(|(n, v)| n == name && fits(v)),
            On::Query(name) => seen.params().iter().any(|(n, v)| n == name && fits(v)),
        }
    }
}

impl Split {
    /// The table `traffic` sets for `service` on router `router`, its targets counted in
    /// `stats`; see [`EmbeddedRouter::apply`] for what is refused.
    fn build(
        router: &str,
        upstreams: &[Upstream],
        stats: &Mutex<StatsMap>,
        service: &str,
        traffic: &Traffic,
    ) -> Result<Split, RouterError> {
        let rejected = |message: String| RouterError::Rejected {
            router: router.to_string(),
            message: format!("service `{service}`: {message}"),
        };
        let upstream_of = |backend: &str| {
            upstreams
                .iter()
                .position(|u| u.name == backend)
                .ok_or_else(|| RouterError::Unknown {
                    router: router.to_string(),
                    what: format!("backend `{backend}` (service `{service}`)"),
                })
        };
        let mut weighted = Vec::with_capacity(traffic.backends.len());
        for (backend, &weight) in &traffic.backends {
            weighted.push((backend, upstream_of(backend)?, weight));
        }
        if let Some(canary) = &traffic.canary
            && !traffic.backends.contains_key(canary)
        {
            return Err(rejected(format!(
                "the canary `{canary}` is not among its backends"
            )));
        }
        let key = match &traffic.sticky {
            None => None,
            Some(Sticky::Header(name)) => Some(Key::Header(
                header_name(name).map_err(|e| rejected(format!("sticky key: {e}")))?,
            )),
            // It goes into `Set-Cookie`.
            Some(Sticky::Cookie(name)) if is_token(name) => Some(Key::Cookie(name.clone())),
            Some(Sticky::Cookie(name)) => {
                return Err(rejected(format!("sticky key: `{name}` is no cookie name")));
            }
        };
        let mut routes = Vec::with_capacity(traffic.routes.len());
        for route in &traffic.routes {
            let upstream = upstream_of(&route.backend)?;
            let any = route
                .matches
                .iter()
                .map(|m| m.all.iter().map(compile).collect::<Result<Vec<_>, _>>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| rejected(format!("route `{}`: {e}", route.name)))?;
            routes.push((any, &route.backend, upstream));
        }
        let side = |side: &str| {
            HeaderValue::from_str(&format!("{service}={side}"))
                .map_err(|_| rejected("its name cannot go in a header".to_string()))
        };
        let sides = [side("stable")?, side("canary")?];

        // Everything is checked: from here on nothing fails.
        let (rules, weighted) = {
            let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
            let service_stats = stats.entry(service.to_string()).or_default();
            let mut target = |backend: &String, upstream: usize| Target {
                upstream,
                stats: service_stats.entry(backend.clone()).or_default().clone(),
                canary: traffic.canary.as_ref() == Some(backend),
            };
            let rules: Vec<Rule> = routes
                .into_iter()
                .map(|(any, backend, upstream)| Rule {
                    any,
                    target: target(backend, upstream),
                })
                .collect();
            let weighted: Vec<(Target, Weight)> = weighted
                .into_iter()
                .filter(|(_, _, w)| w.get() > 0)
                .map(|(backend, upstream, w)| (target(backend, upstream), w))
                .collect();
            (rules, weighted)
        };
        let choices = running_sums(weighted.iter());
        let others = running_sums(weighted.iter().filter(|(t, _)| !t.canary));
        let canary = weighted.iter().find(|(t, _)| t.canary).cloned();
        let total = choices.last().map_or(0, |c| c.cumulative);
        let weights: BTreeMap<String, u32> = traffic
            .backends
            .iter()
            .map(|(b, w)| (b.clone(), u32::from(w.get())))
            .collect();
        Ok(Split {
            weights,
            routes: traffic.routes.clone(),
            sticky: traffic.sticky.clone(),
            rules,
            key,
            choices,
            total,
            canary,
            others,
            sides,
        })
    }

    /// Where the request goes: the first route that fits, else the weighted split. `None` when
    /// no route fits and no backend has weight.
    fn decide(&self, headers: &HeaderMap, uri: &Uri) -> Option<Decision<'_>> {
        let seen = Seen::new(headers, uri);
        let routed = self.rules.iter().find(|rule| {
            rule.any
                .iter()
                .any(|all| all.iter().all(|test| test.fits(&seen)))
        });
        if let Some(rule) = routed {
            return Some(Decision {
                target: &rule.target,
                new_cookie: None,
            });
        }
        if self.total == 0 {
            return None;
        }
        let Some(key) = &self.key else {
            return self.draw();
        };
        if let Some(value) = seen.key(key) {
            return self.sticky(value).map(|target| Decision {
                target,
                new_cookie: None,
            });
        }
        let Key::Cookie(name) = key else {
            return self.draw();
        };
        let id = format!("{:032x}", fastrand::u128(..));
        let cookie = format!("{name}={id}; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax");
        self.sticky(&id).map(|target| Decision {
            target,
            new_cookie: HeaderValue::from_str(&cookie).ok(),
        })
    }

    /// A random backend, in proportion to the weights.
    fn draw(&self) -> Option<Decision<'_>> {
        pick(&self.choices, fastrand::u32(0..self.total)).map(|target| Decision {
            target,
            new_cookie: None,
        })
    }

    /// The backend of the user whose sticky key is `key` (see the module docs).
    fn sticky(&self, key: &str) -> Option<&Target> {
        let b = u64::from(bucket(key));
        let Some((canary, weight)) = &self.canary else {
            return pick(&self.choices, scale(b, 0, u64::from(self.total)));
        };
        if on_canary(key, *weight) {
            return Some(canary);
        }
        let others: u64 = self.others.last().map_or(0, |c| c.cumulative.into());
        if others == 0 {
            // Weights that do not sum to 100: nothing but the canary has any.
            return (weight.get() > 0).then_some(canary);
        }
        pick(
            &self.others,
            scale(b, 100 * u64::from(weight.get()), others),
        )
    }
}

/// Choices with running sums of their weights.
fn running_sums<'a>(weighted: impl Iterator<Item = &'a (Target, Weight)>) -> Vec<Choice> {
    let mut total = 0u32;
    weighted
        .map(|(target, w)| {
            total += u32::from(w.get());
            Choice {
                target: target.clone(),
                cumulative: total,
            }
        })
        .collect()
}

/// A criterion compiled for requests; a message when it cannot be.
fn compile(c: &Criterion) -> Result<Test, String> {
    let on = match c.on {
        Field::Header => On::Header(header_name(&c.name)?),
        Field::Cookie => On::Cookie(c.name.clone()),
        Field::Query => On::Query(c.name.clone()),
    };
    let regex = match &c.value {
        Pattern::Regex(re) => {
            // Checked alone first, so that the anchors cannot be unbalanced by the pattern
            // (`a)|(b` would otherwise compile, unanchored).
            regex::Regex::new(re).map_err(|e| format!("regex `{re}`: {e}"))?;
            let whole = regex::Regex::new(&format!(r"\A(?:{re})\z"))
                .map_err(|e| format!("regex `{re}`: {e}"))?;
            Some(whole)
        }
        Pattern::Exact(_) | Pattern::Prefix(_) => None,
    };
    Ok(Test {
        on,
        pattern: c.value.clone(),
        regex,
    })
}

/// A header name from a spec, any case; a message when it is none.
fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is no header name"))
}

/// Whether `s` is an RFC 9110 token, as a cookie name must be (RFC 6265 §4.1.1).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A bucket `b` in `lower..10,000` spread over `0..total`.
fn scale(b: u64, lower: u64, total: u64) -> u32 {
    let r = (b - lower) * total / (10_000 - lower);
    u32::try_from(r).unwrap_or(u32::MAX)
}

/// The choice that a draw `r` (below the last running sum) lands on.
fn pick(choices: &[Choice], r: u32) -> Option<&Target> {
    choices.iter().find(|c| r < c.cumulative).map(|c| &c.target)
}

/// Counters of one backend of one service, allocated on its first request.
#[derive(Default)]
struct Stats(Mutex<Option<Box<Counters>>>);

impl Stats {
    fn record(&self, sec: u64, status: StatusCode, latency: Duration) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .get_or_insert_with(|| Box::new(Counters::new()))
            .record(sec, status, latency);
    }

    fn client_fault(&self, fault: ClientFault) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .get_or_insert_with(|| Box::new(Counters::new()))
            .totals
            .client[fault as usize] += 1;
    }

    fn with<T>(&self, f: impl FnOnce(&Counters) -> T) -> Option<T> {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_deref().map(f)
    }
}

struct Counters {
    ring: Ring,
    totals: Totals,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            ring: Ring::new(),
            totals: Totals::default(),
        }
    }

    fn record(&mut self, sec: u64, status: StatusCode, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        self.ring.record(sec, status.is_server_error(), ms);
        self.totals.record(status, latency);
    }
}

/// Cumulative counts since start, for the Prometheus exposition.
#[derive(Clone, Copy, Default)]
struct Totals {
    /// 2xx (and anything below 300), 3xx, 4xx, 5xx.
    codes: [u64; 4],
    /// Per bucket, not cumulative.
    buckets: [u64; NBUCKETS],
    sum_seconds: f64,
    count: u64,
    /// Requests the client broke, by [`ClientFault`]; in no other count.
    client: [u64; ClientFault::ALL.len()],
}

impl Totals {
    fn record(&mut self, status: StatusCode, latency: Duration) {
        self.codes[code_class(status)] += 1;
        self.buckets[bucket_index(latency.as_secs_f64() * 1000.0)] += 1;
        self.sum_seconds += latency.as_secs_f64();
        self.count += 1;
    }
}

const CODE_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// How a client broke its own request; counted apart from the backends' answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientFault {
    /// The body's framing does not parse (a bad chunk size, bare-LF framing, ...).
    #[error("the request body is malformed")]
    MalformedBody,
    /// The client went away before its body ended.
    #[error("the client went away during its request body")]
    Aborted,
    /// The body stalled longer than the body idle timeout.
    #[error("the request body stalled")]
    BodyTimeout,
}

impl ClientFault {
    const ALL: [ClientFault; 3] = [
        ClientFault::MalformedBody,
        ClientFault::Aborted,
        ClientFault::BodyTimeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ClientFault::MalformedBody => "malformed_body",
            ClientFault::Aborted => "aborted",
            ClientFault::BodyTimeout => "body_timeout",
        }
    }

    /// The answer the client gets (if it is still there to read it).
    fn status(self) -> StatusCode {
        match self {
            ClientFault::MalformedBody | ClientFault::Aborted => StatusCode::BAD_REQUEST,
            ClientFault::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// Where the client's request body is: what the upstream timeout waits for, and how a failed
/// upstream request is told apart from a failed client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    Streaming,
    Done,
    Failed(ClientFault),
}

/// The client's request body as the upstream client reads it: each frame must come within the
/// body idle timeout, and the body's end (or failure) is published to the handler.
///
/// A request without a body (most of them) costs neither: no channel, no timer.
struct RequestBody {
    inner: Incoming,
    idle: Duration,
    /// Armed the first time the body makes the upstream wait.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `None` for a request without a body.
    state: Option<tokio::sync::watch::Sender<BodyState>>,
}

impl RequestBody {
    fn new(
        inner: Incoming,
        idle: Duration,
    ) -> (RequestBody, Option<tokio::sync::watch::Receiver<BodyState>>) {
        let (state, rx) = if inner.is_end_stream() {
            (None, None)
        } else {
            let (tx, rx) = tokio::sync::watch::channel(BodyState::Streaming);
            (Some(tx), Some(rx))
        };
        let body = RequestBody {
            inner,
            idle,
            stall: None,
            state,
        };
        (body, rx)
    }

    fn publish(&self, state: BodyState) {
        if let Some(tx) = &self.state {
            tx.send_replace(state);
        }
    }

    fn fail(&self, fault: ClientFault) -> Poll<Option<Result<Frame<Bytes>, ClientFault>>> {
        self.publish(BodyState::Failed(fault));
        Poll::Ready(Some(Err(fault)))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientFault;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientFault>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(stall) = &mut this.stall {
                    stall
                        .as_mut()
                        .reset(crate::edge::clock::instant() + this.idle);
                }
                if this.inner.is_end_stream() {
                    this.publish(BodyState::Done);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // hyper says "incomplete" when the connection ended mid-body; anything else
                // is framing it could not parse.
                if e.is_incomplete_message() || e.is_closed() {
                    this.fail(ClientFault::Aborted)
                } else {
                    this.fail(ClientFault::MalformedBody)
                }
            }
            Poll::Ready(None) => {
                this.publish(BodyState::Done);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(ClientFault::BodyTimeout),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request got no answer from its backend.
enum Unanswered {
    /// The backend's fault (unreachable, broken, too slow): counted as its 5xx.
    Backend(Response<ProxyBody>),
    /// The client's: counted apart.
    Client(ClientFault),
}

fn code_class(status: StatusCode) -> usize {
    match status.as_u16() {
        0..300 => 0,
        300..400 => 1,
        400..500 => 2,
        _ => 3,
    }
}

/// The histogram bucket holding a latency of `ms` milliseconds (upper bounds inclusive).
fn bucket_index(ms: f64) -> usize {
    BUCKETS_MS
        .iter()
        .position(|&b| ms <= f64::from(b))
        .unwrap_or(BUCKETS_MS.len())
}

/// Counts of one second, or the sum of several.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Slot {
    requests: u32,
    errors: u32,
    buckets: [u32; NBUCKETS],
}

impl Slot {
    fn add(&mut self, other: &Slot) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a = a.saturating_add(b);
        }
    }
}

/// The last [`SLOTS`] seconds of one backend, indexed by second modulo [`SLOTS`].
struct Ring {
    /// The second each slot currently holds; a slot holding an older second is stale.
    seconds: Box<[u64; SLOTS]>,
    slots: Box<[Slot; SLOTS]>,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            seconds: Box::new([u64::MAX; SLOTS]),
            slots: Box::new([Slot::default(); SLOTS]),
        }
    }

    fn record(&mut self, sec: u64, error: bool, ms: f64) {
        let i = (sec % SLOTS as u64) as usize;
        if self.seconds[i] != sec {
            self.seconds[i] = sec;
            self.slots[i] = Slot::default();
        }
        let slot = &mut self.slots[i];
        slot.requests = slot.requests.saturating_add(1);
        slot.errors = slot.errors.saturating_add(u32::from(error));
        let b = &mut slot.buckets[bucket_index(ms)];
        *b = b.saturating_add(1);
    }

    /// The sum of the `width` seconds ending with second `now` (inclusive).
    fn sum(&self, now: u64, width: u64) -> Slot {
        let oldest = now.saturating_sub(width.saturating_sub(1));
        let mut total = Slot::default();
        for (sec, slot) in self.seconds.iter().zip(self.slots.iter()) {
            if *sec != u64::MAX && (oldest..=now).contains(sec) {
                total.add(slot);
            }
        }
        total
    }
}

/// Whole seconds a query `window` covers: rounded up, at least 1, at most [`SLOTS`].
fn window_slots(window: Duration) -> u64 {
    let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
    secs.clamp(1, SLOTS as u64)
}

/// The `q` quantile (0..=1) in milliseconds of a histogram, interpolated linearly within the
/// bucket it falls in (as Prometheus' `histogram_quantile`); the highest finite bound when it
/// falls in +Inf. `None` for an empty histogram.
fn quantile_ms(buckets: &[u32; NBUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        let upto = below + u64::from(count);
        if count > 0 && upto as f64 >= rank {
            let Some(&upper) = BUCKETS_MS.get(i) else {
                return BUCKETS_MS.last().map(|&b| f64::from(b));
            };
            let lower = if i == 0 {
                0.0
            } else {
                f64::from(BUCKETS_MS[i - 1])
            };
            let frac = (rank - below as f64) / f64::from(count);
            return Some(lower + (f64::from(upper) - lower) * frac);
        }
        below = upto;
    }
    BUCKETS_MS.last().map(|&b| f64::from(b))
}

/// The value of `query` over `window` counts lasting `seconds`; `None` without requests.
fn evaluate(query: Query, window: &Slot, seconds: u64) -> Option<f64> {
    if window.requests == 0 {
        return None;
    }
    let n = f64::from(window.requests);
    Some(match query {
        Query::SuccessRate => f64::from(window.requests - window.errors) / n,
        Query::ErrorRate => f64::from(window.errors) / n,
        Query::LatencyP99Ms => quantile_ms(&window.buckets, 0.99)?,
        Query::RequestCount => n,
        Query::RequestRate => n / seconds as f64,
    })
}

/// The host part of a `Host` header value: without port, brackets kept for IPv6.
fn host_part(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

/// The split a request for `host` uses, per the routing rule in the module docs.
fn route(splits: &HashMap<String, Arc<Split>>, host: Option<&str>) -> Option<Arc<Split>> {
    if let Some(split) = host.map(host_part).and_then(|h| splits.get(h)) {
        return Some(split.clone());
    }
    match splits.len() {
        1 => splits.values().next().cloned(),
        _ => None,
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_str(n.trim()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for n in hop {
        headers.remove(n);
    }
}

fn plain(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl EmbeddedRouter {
    /// Binds `listen` (e.g. "127.0.0.1:0") and serves until `shutdown` is cancelled; then stops
    /// accepting and lets in-flight requests finish for up to 5 s.
    /// `backends`: backend name → upstream base URL (`http://127.0.0.1:9001`, plain HTTP);
    /// `limits`: the Router's `spec.limits`.
    pub async fn start(
        name: &str,
        listen: &str,
        backends: BTreeMap<String, String>,
        limits: &crate::core::spec::Limits,
        shutdown: CancellationToken,
    ) -> Result<EmbeddedRouter, RouterError> {
        let setup = |message: String| RouterError::Setup {
            router: name.to_string(),
            message,
        };
        let limits = listener::resolve(limits).map_err(|e| setup(e.to_string()))?;
        let mut upstreams = Vec::with_capacity(backends.len());
        for (backend, url) in backends {
            let uri: Uri = url
                .parse()
                .map_err(|e| setup(format!("backend `{backend}` url `{url}`: {e}")))?;
            let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
                return Err(setup(format!(
                    "backend `{backend}` url `{url}` needs a scheme and a host"
                )));
            };
            if scheme != &hyper::http::uri::Scheme::HTTP {
                return Err(setup(format!(
                    "backend `{backend}` url `{url}`: only http is supported"
                )));
            }
            upstreams.push(Upstream {
                scheme: scheme.clone(),
                authority: authority.clone(),
                prefix: uri.path().trim_end_matches('/').to_string(),
                name: backend,
            });
        }
        let listener = listener::bind(listen, limits.listener.backlog)
            .await
            .map_err(|e| setup(format!("cannot listen on {listen}: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| setup(format!("cannot listen on {listen}: {e}")))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            local_addr,
            upstreams,
            limits,
            listener: Arc::new(ListenerStats::default()),
            splits: RwLock::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            client,
            epoch: crate::edge::clock::instant(),
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            let stats = serving.listener.clone();
            let name = serving.name.clone();
            listener::serve(
                &name,
                listener,
                serving.limits.listener,
                stats,
                move |peer| {
                    let shared = serving.clone();
                    hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req, peer).await) }
                    })
                },
                SHUTDOWN_GRACE,
                shutdown,
            )
            .await;
        });
        Ok(EmbeddedRouter { shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The router's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The weights, routes and sticky key of `service` as last set; empty if never set.
    pub fn observe(&self, service: &str) -> Observed {
        self.observe_all(std::slice::from_ref(&service))
            .into_values()
            .next()
            .unwrap_or_default()
    }

    /// What [`observe`](Self::observe) reads, for each of `services`, all under one lock, so
    /// from one moment: a service is never unknown here, it only has no weights yet.
    pub fn observe_all<S: AsRef<str>>(&self, services: &[S]) -> BTreeMap<String, Observed> {
        let splits = self
            .shared
            .splits
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        services
            .iter()
            .map(|service| {
                let service = service.as_ref();
                let observed = splits
                    .get(service)
                    .map_or_else(Observed::default, |s| Observed {
                        backends: s.weights.clone(),
                        routes: s.routes.clone(),
                        sticky: s.sticky.clone(),
                    });
                (service.to_string(), observed)
            })
            .collect()
    }

    /// Sets the table of `service` at once: weights, routes, sticky key and canary; backends
    /// not named get weight 0 for it. A backend (weighted or routed to) that is not configured
    /// is refused with [`RouterError::Unknown`]; a regex that does not compile, a header name
    /// that is none, or a canary that is not among the weighted backends with
    /// [`RouterError::Rejected`]. Refused, nothing changes.
    pub fn apply(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        let shared = &self.shared;
        let split = Split::build(
            &shared.name,
            &shared.upstreams,
            &shared.stats,
            service,
            traffic,
        )?;
        tracing::debug!(
            router = %shared.name,
            service,
            weights = ?split.weights,
            routes = traffic.routes.len(),
            sticky = ?traffic.sticky,
            canary = ?traffic.canary,
            "traffic set"
        );
        shared
            .splits
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(service.to_string(), Arc::new(split));
        Ok(())
    }

    /// `query` (see [`Query`]) of `backend` of `service` over the last `window`; `Ok(None)`
    /// when it had no requests in the window.
    pub fn query(
        &self,
        service: &str,
        backend: &str,
        query: &str,
        window: Duration,
    ) -> Result<Option<f64>, QueryError> {
        Ok(self.reading(service, backend, query, window)?.0)
    }

    /// [`EmbeddedRouter::query`] with the number of requests the value stands on.
    pub fn reading(
        &self,
        service: &str,
        backend: &str,
        query: &str,
        window: Duration,
    ) -> Result<(Option<f64>, u64), QueryError> {
        let query: Query = query.parse()?;
        let Some(stats) = self.stats_of(service, backend) else {
            return Ok((None, 0));
        };
        let width = window_slots(window);
        let now = self.shared.now_sec();
        Ok(stats
            .with(|c| c.ring.sum(now, width))
            .map_or((None, 0), |w| {
                (evaluate(query, &w, width), u64::from(w.requests))
            }))
    }

    /// `query` of `backend` of `service` in consecutive slices of `step` covering the last
    /// `window`, oldest first; NaN for a slice without requests. The judge's samples.
    pub fn series(
        &self,
        service: &str,
        backend: &str,
        query: &str,
        window: Duration,
        step: Duration,
    ) -> Result<Vec<f64>, QueryError> {
        let query: Query = query.parse()?;
        let width = window_slots(step);
        let n = (window_slots(window) / width).max(1);
        let Some(stats) = self.stats_of(service, backend) else {
            return Ok(vec![f64::NAN; n as usize]);
        };
        let now = self.shared.now_sec();
        Ok((0..n)
            .rev()
            .map(|i| {
                let end = now.saturating_sub(i * width);
                stats
                    .with(|c| c.ring.sum(end, width))
                    .and_then(|w| evaluate(query, &w, width))
                    .unwrap_or(f64::NAN)
            })
            .collect())
    }

    fn stats_of(&self, service: &str, backend: &str) -> Option<Arc<Stats>> {
        let all = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.get(service).and_then(|b| b.get(backend)).cloned()
    }

    /// Appends the Prometheus text exposition of the request counters and latency histograms.
    pub fn render_metrics(&self, out: &mut String) {
        let shared = &self.shared;
        let mut entries: Vec<(String, String, Arc<Stats>)> = {
            let all = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
            all.iter()
                .flat_map(|(s, bs)| bs.iter().map(|(b, st)| (s.clone(), b.clone(), st.clone())))
                .collect()
        };
        entries.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let snapshots: Vec<(String, Totals)> = entries
            .iter()
            .filter_map(|(service, backend, stats)| {
                let labels = format!(
                    "router=\"{}\",service=\"{}\",backend=\"{}\"",
                    escape_label(&shared.name),
                    escape_label(service),
                    escape_label(backend)
                );
                stats.with(|c| (labels, c.totals))
            })
            .collect();
        const REQS: &str = "canaryd_embedded_requests_total";
        const DUR: &str = "canaryd_embedded_request_duration_seconds";
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {REQS} Requests proxied by the embedded router, by response code class."
        );
        let _ = writeln!(out, "# TYPE {REQS} counter");
        for (labels, t) in &snapshots {
            for (class, n) in CODE_CLASSES.iter().zip(t.codes) {
                let _ = writeln!(out, "{REQS}{{{labels},code_class=\"{class}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP {DUR} Time from receiving a request to the upstream's response head."
        );
        let _ = writeln!(out, "# TYPE {DUR} histogram");
        for (labels, t) in &snapshots {
            let mut cumulative = 0u64;
            for (i, n) in t.buckets.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS_MS.get(i).map_or_else(
                    || "+Inf".to_string(),
                    |&ms| (f64::from(ms) / 1000.0).to_string(),
                );
                let _ = writeln!(out, "{DUR}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{DUR}_sum{{{labels}}} {}", t.sum_seconds);
            let _ = writeln!(out, "{DUR}_count{{{labels}}} {}", t.count);
        }
        const CLIENT: &str = "canaryd_embedded_client_failures_total";
        let _ = writeln!(
            out,
            "# HELP {CLIENT} Requests the client broke (bad body, gone, stalled), by reason; \
             never counted as the backend's."
        );
        let _ = writeln!(out, "# TYPE {CLIENT} counter");
        for (labels, t) in &snapshots {
            for (fault, n) in ClientFault::ALL.iter().zip(t.client) {
                let _ = writeln!(
                    out,
                    "{CLIENT}{{{labels},reason=\"{}\"}} {n}",
                    fault.as_str()
                );
            }
        }
        shared.listener.render(
            "canaryd_embedded_listener",
            "embedded router's",
            &format!("router=\"{}\"", escape_label(&shared.name)),
            out,
        );
    }

    /// What the router's listener refused, timed out or saw aborted.
    pub fn listener_stats(&self) -> &ListenerStats {
        &self.shared.listener
    }
}

impl Shared {
    fn now_sec(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            self.listener.count(ListenerEvent::BadRequest);
            return plain(
                StatusCode::BAD_REQUEST,
                "CONNECT is not served: this router is no forward proxy\n".to_string(),
            );
        }
        // Absolute form: the target's host wins over `Host` (RFC 9112 §3.2.2).
        let absolute = req.uri().host().map(str::to_string);
        let host = absolute.as_deref().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let split = {
            let splits = self.splits.read().unwrap_or_else(PoisonError::into_inner);
            match &absolute {
                Some(h) => splits.get(host_part(h)).cloned(),
                None => route(&splits, host),
            }
        };
        let Some(split) = split else {
            if let Some(h) = &absolute {
                self.listener.count(ListenerEvent::BadRequest);
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("`{h}` is not a service of router `{}`\n", self.name),
                );
            }
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no service for host `{}` on router `{}`\n",
                    host.unwrap_or(""),
                    self.name
                ),
            );
        };
        let Some(Decision { target, new_cookie }) = split.decide(req.headers(), req.uri()) else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend has weight\n".to_string(),
            );
        };
        let Some(upstream) = self.upstreams.get(target.upstream) else {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backend vanished\n".to_string(),
            );
        };
        let side = split.sides[usize::from(target.canary)].clone();
        let started = crate::edge::clock::instant();
        let mut resp = match self.forward(req, peer, upstream, side).await {
            Ok(resp) | Err(Unanswered::Backend(resp)) => resp,
            Err(Unanswered::Client(fault)) => {
                target.stats.client_fault(fault);
                tracing::debug!(router = %self.name, backend = %upstream.name, %fault, "client fault");
                return plain(fault.status(), format!("{fault}\n"));
            }
        };
        target
            .stats
            .record(self.now_sec(), resp.status(), started.elapsed());
        if let Some(cookie) = new_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        tracing::trace!(router = %self.name, backend = %upstream.name, status = resp.status().as_u16(), "proxied");
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        upstream: &Upstream,
        side: HeaderValue,
    ) -> Result<Response<ProxyBody>, Unanswered> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(format!("{}{path}", upstream.prefix))
            .build();
        let failed = |status: StatusCode, why: String| {
            let mut r = plain(status, format!("backend `{}`: {why}\n", upstream.name));
            r.headers_mut().insert(
                "x-canaryd-backend",
                HeaderValue::from_str(&upstream.name)
                    .unwrap_or_else(|_| HeaderValue::from_static("?")),
            );
            Unanswered::Backend(r)
        };
        match uri {
            Ok(uri) => parts.uri = uri,
            Err(e) => {
                return Err(failed(
                    StatusCode::BAD_GATEWAY,
                    format!("bad upstream uri: {e}"),
                ));
            }
        }
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        forwarded_headers(&mut parts.headers, peer);
        // Replaces every one the client sent.
        parts.headers.insert(X_CANARYD_SIDE, side);
        let (body, mut state) = RequestBody::new(body, self.limits.body_idle_timeout);
        let sent = self.client.request(Request::from_parts(parts, body));
        let timeout = self.limits.upstream_timeout;
        // The backend's time starts when the client has sent all it will send.
        let deadline = async {
            if let Some(state) = &mut state {
                let _ = state.wait_for(|s| *s != BodyState::Streaming).await;
            }
            tokio::time::sleep(timeout).await;
        };
        let answered = tokio::select! {
            r = sent => Some(r),
            () = deadline => None,
        };
        let body_state = state.as_ref().map_or(BodyState::Done, |s| *s.borrow());
        let resp = match (answered, body_state) {
            (_, BodyState::Failed(fault)) => return Err(Unanswered::Client(fault)),
            (Some(Ok(resp)), _) => resp,
            (Some(Err(e)), _) => {
                return Err(failed(StatusCode::BAD_GATEWAY, format!("unreachable: {e}")));
            }
            (None, _) => {
                return Err(failed(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no answer within {}s of the request's end",
                        timeout.as_secs_f64()
                    ),
                ));
            }
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(v) = HeaderValue::from_str(&upstream.name) {
            parts.headers.insert("x-canaryd-backend", v);
        }
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

/// Adds what a reverse proxy tells the backend about the client: `X-Forwarded-For` (appended),
/// `X-Forwarded-Host`, `X-Forwarded-Proto` and an RFC 7239 `Forwarded` element (appended).
fn forwarded_headers(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip();
    let append = |headers: &HeaderMap, name: &HeaderName, value: String| match headers
        .get(name)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {value}"),
        None => value,
    };
    // RFC 7239 §6: an IPv6 node is bracketed and quoted; a host is quoted.
    let mut element = match ip {
        std::net::IpAddr::V4(v4) => format!("for={v4};proto=http"),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
    };
    let host = headers.get(header::HOST).cloned();
    if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok())
        && h.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        element.push_str(";host=\"");
        element.push_str(h);
        element.push('"');
    }
    let xff = append(headers, &X_FORWARDED_FOR, ip.to_string());
    let forwarded = append(headers, &header::FORWARDED, element);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, v);
    }
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The side of the split a forwarded request is on, for the next hop.
const X_CANARYD_SIDE: HeaderName = HeaderName::from_static("x-canaryd-side");

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_with(requests: u32, errors: u32) -> Slot {
        Slot {
            requests,
            errors,
            buckets: [0; NBUCKETS],
        }
    }

    #[test]
    fn buckets_have_inclusive_upper_bounds() {
        assert_eq!(bucket_index(0.0), 0);
        assert_eq!(bucket_index(1.0), 0);
        assert_eq!(bucket_index(1.01), 1);
        assert_eq!(bucket_index(20.0), 4);
        assert_eq!(bucket_index(10_000.0), 12);
        assert_eq!(bucket_index(10_000.5), 13);
    }

    #[test]
    fn windows_round_up_and_clamp() {
        assert_eq!(window_slots(Duration::ZERO), 1);
        assert_eq!(window_slots(Duration::from_millis(1500)), 2);
        assert_eq!(window_slots(Duration::from_secs(60)), 60);
        assert_eq!(window_slots(Duration::from_secs(3600)), SLOTS as u64);
    }

    #[test]
    fn ring_sums_only_the_window() {
        let mut r = Ring::new();
        r.record(10, false, 3.0);
        r.record(10, true, 3.0);
        r.record(12, false, 3.0);
        r.record(15, false, 3.0);
        assert_eq!(r.sum(15, 1).requests, 1);
        assert_eq!(r.sum(15, 4).requests, 2);
        let all = r.sum(15, 6);
        assert_eq!((all.requests, all.errors), (4, 1));
        assert_eq!(all.buckets[bucket_index(3.0)], 4);
        // Seconds after `now` are not counted (e.g. a query racing a record).
        assert_eq!(r.sum(12, 3).requests, 3);
        assert_eq!(r.sum(9, 10).requests, 0);
    }

    #[test]
    fn ring_forgets_seconds_it_has_wrapped_past() {
        let mut r = Ring::new();
        r.record(5, true, 1.0);
        r.record(5 + SLOTS as u64, false, 1.0);
        let s = r.sum(5 + SLOTS as u64, SLOTS as u64);
        assert_eq!((s.requests, s.errors), (1, 0));
        // A slot not overwritten but older than the window is ignored.
        r.record(7, false, 1.0);
        assert_eq!(r.sum(7 + SLOTS as u64, SLOTS as u64).requests, 1);
        assert_eq!(r.sum(8 + SLOTS as u64, 2).requests, 0);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut b = [0u32; NBUCKETS];
        assert_eq!(quantile_ms(&b, 0.99), None);
        // 100 requests in (10, 25]: p50 is halfway, p99 near the top.
        b[4] = 100;
        assert_eq!(quantile_ms(&b, 0.5), Some(17.5));
        assert!((quantile_ms(&b, 0.99).unwrap() - 24.85).abs() < 1e-9);
        // 99 fast (<= 1 ms), 1 slow in (10, 25]: p99 is the top of the first bucket.
        let mut b = [0u32; NBUCKETS];
        b[0] = 99;
        b[4] = 1;
        assert_eq!(quantile_ms(&b, 0.99), Some(1.0));
        assert_eq!(quantile_ms(&b, 1.0), Some(25.0));
        // Beyond the last finite bound: that bound.
        let mut b = [0u32; NBUCKETS];
        b[NBUCKETS - 1] = 3;
        assert_eq!(quantile_ms(&b, 0.99), Some(10_000.0));
    }

    #[test]
    fn queries_evaluate_counts() {
        let w = slot_with(50, 10);
        assert_eq!(evaluate(Query::ErrorRate, &w, 10), Some(0.2));
        assert_eq!(evaluate(Query::SuccessRate, &w, 10), Some(0.8));
        assert_eq!(evaluate(Query::RequestCount, &w, 10), Some(50.0));
        assert_eq!(evaluate(Query::RequestRate, &w, 10), Some(5.0));
        assert_eq!(evaluate(Query::ErrorRate, &slot_with(0, 0), 10), None);
        assert!(matches!(
            "p50".parse::<Query>(),
            Err(QueryError::UnknownQuery(q)) if q == "p50"
        ));
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_part("shop"), "shop");
        assert_eq!(host_part("shop:8080"), "shop");
        assert_eq!(host_part("[::1]:8080"), "[::1]");
    }

    use crate::core::model::Match;

    const BACKENDS: [&str; 3] = ["beta", "canary", "stable"];

    /// The table `traffic` sets for service `shop`, in front of [`BACKENDS`].
    fn table(traffic: &Traffic) -> Result<Split, RouterError> {
        let upstreams: Vec<Upstream> = BACKENDS
            .iter()
            .map(|name| Upstream {
                name: name.to_string(),
                scheme: hyper::http::uri::Scheme::HTTP,
                authority: hyper::http::uri::Authority::from_static("127.0.0.1:1"),
                prefix: String::new(),
            })
            .collect();
        Split::build("edge", &upstreams, &Mutex::default(), "shop", traffic)
    }

    fn criterion(on: Field, name: &str, value: Pattern) -> Criterion {
        Criterion {
            on,
            name: name.to_string(),
            value,
        }
    }

    fn exact(on: Field, name: &str, value: &str) -> Criterion {
        criterion(on, name, Pattern::Exact(value.to_string()))
    }

    fn route(name: &str, matches: Vec<Vec<Criterion>>, backend: &str) -> Route {
        Route {
            name: name.to_string(),
            matches: matches.into_iter().map(|all| Match { all }).collect(),
            backend: backend.to_string(),
        }
    }

    /// Stable 100, the canary 0, and `routes`.
    fn routed(routes: Vec<Route>) -> Split {
        let mut t = Traffic::of(&[("stable", 100u8), ("canary", 0)]).unwrap();
        t.routes = routes;
        t.canary = Some("canary".to_string());
        table(&t).unwrap()
    }

    /// Where `split` sends a GET of `uri` with `headers`, and the cookie it sets, if any.
    fn send(split: &Split, uri: &str, headers: &[(&str, &str)]) -> (String, Option<String>) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let uri: Uri = uri.parse().unwrap();
        let d = split.decide(&map, &uri).expect("a backend");
        let cookie = d.new_cookie.map(|c| c.to_str().unwrap().to_string());
        (BACKENDS[d.target.upstream].to_string(), cookie)
    }

    fn to(split: &Split, uri: &str, headers: &[(&str, &str)]) -> String {
        send(split, uri, headers).0
    }

    #[test]
    fn header_routes_compare_names_without_case_and_values_exactly() {
        let t = routed(vec![route(
            "marked",
            vec![vec![exact(Field::Header, "X-Canary", "always")]],
            "canary",
        )]);
        assert_eq!(to(&t, "/", &[("x-canary", "always")]), "canary");
        assert_eq!(to(&t, "/", &[("X-CANARY", "always")]), "canary");
        assert_eq!(to(&t, "/", &[("x-canary", "Always")]), "stable");
        assert_eq!(to(&t, "/", &[("x-canary", "alwaysx")]), "stable");
        assert_eq!(to(&t, "/", &[]), "stable");
        // Each field line on its own.
        assert_eq!(
            to(&t, "/", &[("x-canary", "never"), ("x-canary", "always")]),
            "canary"
        );
    }

    #[test]
    fn prefixes_and_regexes_fit_as_the_model_says() {
        let t = routed(vec![
            route(
                "prefix",
                vec![vec![criterion(
                    Field::Header,
                    "x-team",
                    Pattern::Prefix("qa-".to_string()),
                )]],
                "canary",
            ),
            route(
                "regex",
                vec![vec![criterion(
                    Field::Header,
                    "x-user",
                    Pattern::Regex(r"beta-\d+|staff".to_string()),
                )]],
                "beta",
            ),
        ]);
        assert_eq!(to(&t, "/", &[("x-team", "qa-berlin")]), "canary");
        assert_eq!(to(&t, "/", &[("x-team", "qa-")]), "canary");
        assert_eq!(to(&t, "/", &[("x-team", "xqa-berlin")]), "stable");
        assert_eq!(to(&t, "/", &[("x-user", "beta-12")]), "beta");
        assert_eq!(to(&t, "/", &[("x-user", "staff")]), "beta");
        // The whole value, around the alternation too.
        for partial in ["beta-12x", "xbeta-12", "staffer", "beta-", "staff beta-1"] {
            assert_eq!(to(&t, "/", &[("x-user", partial)]), "stable", "{partial}");
        }
        // An absent header fits nothing, not even an empty prefix.
        let empty = routed(vec![route(
            "any",
            vec![vec![criterion(
                Field::Header,
                "x-team",
                Pattern::Prefix(String::new()),
            )]],
            "canary",
        )]);
        assert_eq!(to(&empty, "/", &[]), "stable");
        assert_eq!(to(&empty, "/", &[("x-team", "")]), "canary");
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        let t = routed(vec![route(
            "group",
            vec![vec![exact(Field::Query, "group", "beta testers")]],
            "canary",
        )]);
        for uri in [
            "/?group=beta%20testers",
            "/p?a=1&group=beta%20testers&b",
            "/?gr%6Fup=beta%20testers",
            "/?group=x&group=beta%20testers",
        ] {
            assert_eq!(to(&t, uri, &[]), "canary", "{uri}");
        }
        for uri in [
            "/?group=beta+testers",
            "/?group=beta",
            "/?group",
            "/",
            "/?x=1",
        ] {
            assert_eq!(to(&t, uri, &[]), "stable", "{uri}");
        }
        let flag = routed(vec![route(
            "flag",
            vec![vec![exact(Field::Query, "canary", "")]],
            "canary",
        )]);
        assert_eq!(to(&flag, "/?canary", &[]), "canary");
        assert_eq!(to(&flag, "/?canary=", &[]), "canary");
    }

    #[test]
    fn cookies_come_from_every_cookie_line() {
        let t = routed(vec![route(
            "cookie",
            vec![vec![exact(Field::Cookie, "canary", "yes")]],
            "canary",
        )]);
        assert_eq!(to(&t, "/", &[("cookie", "a=1; canary=yes")]), "canary");
        assert_eq!(to(&t, "/", &[("cookie", "canary=yes;a=1")]), "canary");
        assert_eq!(
            to(&t, "/", &[("cookie", "a=1"), ("cookie", "canary=yes")]),
            "canary"
        );
        assert_eq!(to(&t, "/", &[("cookie", "Canary=yes")]), "stable");
        assert_eq!(to(&t, "/", &[("cookie", "xcanary=yes")]), "stable");
        assert_eq!(to(&t, "/", &[("cookie", "canary=yes2")]), "stable");
        // A header of that name is no cookie.
        assert_eq!(to(&t, "/", &[("canary", "yes")]), "stable");
    }

    #[test]
    fn criteria_are_anded_within_a_match_and_matches_ored_and_routes_ordered() {
        let t = routed(vec![
            route(
                "staff-on-beta",
                vec![
                    vec![
                        exact(Field::Header, "x-role", "staff"),
                        exact(Field::Cookie, "beta", "1"),
                    ],
                    vec![exact(Field::Query, "beta", "1")],
                ],
                "beta",
            ),
            route(
                "staff",
                vec![vec![exact(Field::Header, "x-role", "staff")]],
                "canary",
            ),
        ]);
        let both = [("x-role", "staff"), ("cookie", "beta=1")];
        assert_eq!(to(&t, "/", &both), "beta", "all of the first match");
        assert_eq!(to(&t, "/?beta=1", &[]), "beta", "the second match alone");
        assert_eq!(
            to(&t, "/", &[("x-role", "staff")]),
            "canary",
            "half a match: the next route"
        );
        assert_eq!(to(&t, "/", &[("cookie", "beta=1")]), "stable", "no route");
        // Routes win over the weights, a weight-0 backend included, and over a sticky key.
        let mut sticky = Traffic::of(&[("stable", 100u8), ("canary", 0)]).unwrap();
        sticky.sticky = Some(Sticky::Cookie("uid".to_string()));
        sticky.canary = Some("canary".to_string());
        sticky.routes = vec![route(
            "staff",
            vec![vec![exact(Field::Header, "x-role", "staff")]],
            "canary",
        )];
        let t = table(&sticky).unwrap();
        assert_eq!(
            send(&t, "/", &[("x-role", "staff")]),
            ("canary".to_string(), None),
            "routed: no cookie needed"
        );
    }

    #[test]
    fn sticky_users_stay_on_their_side_as_the_canary_grows() {
        let at = |w: u8| {
            let mut t = Traffic::of(&[("stable", 100 - w), ("canary", w)]).unwrap();
            t.sticky = Some(Sticky::Header("X-User-Id".to_string()));
            t.canary = Some("canary".to_string());
            table(&t).unwrap()
        };
        let tables: Vec<(u8, Split)> = [0, 1, 10, 25, 50, 99, 100]
            .into_iter()
            .map(|w| (w, at(w)))
            .collect();
        for user in (0..1_000).map(|i| format!("user-{i}")) {
            for (w, t) in &tables {
                let want = if on_canary(&user, Weight::new((*w).into()).unwrap()) {
                    "canary"
                } else {
                    "stable"
                };
                let (got, cookie) = send(t, "/", &[("x-user-id", &user)]);
                assert_eq!((got.as_str(), cookie), (want, None), "{user} at {w}");
            }
        }
        // Without the key (or with an empty one): a draw by weight, no cookie.
        assert_eq!(send(&tables[0].1, "/", &[]), ("stable".to_string(), None));
        assert_eq!(
            send(&tables[6].1, "/", &[("x-user-id", "")]),
            ("canary".to_string(), None)
        );
    }

    #[test]
    fn a_user_without_the_sticky_cookie_gets_one_that_agrees_with_the_side() {
        let mut t = Traffic::of(&[("stable", 50u8), ("canary", 50)]).unwrap();
        t.sticky = Some(Sticky::Cookie("uid".to_string()));
        t.canary = Some("canary".to_string());
        let t = table(&t).unwrap();
        let mut sides = BTreeMap::<String, usize>::new();
        for _ in 0..200 {
            let (backend, cookie) = send(&t, "/", &[("cookie", "other=1")]);
            let cookie = cookie.expect("a cookie for a user without one");
            let attributes = "; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax";
            let id = cookie
                .strip_prefix("uid=")
                .and_then(|c| c.strip_suffix(attributes))
                .unwrap_or_else(|| panic!("{cookie}"));
            assert_eq!(id.len(), 32, "{cookie}");
            let want = if on_canary(id, Weight::new(50).unwrap()) {
                "canary"
            } else {
                "stable"
            };
            assert_eq!(backend, want, "{cookie}");
            let again = send(&t, "/", &[("cookie", &format!("a=1; uid={id}"))]);
            assert_eq!(again, (backend.clone(), None), "with the cookie");
            *sides.entry(backend).or_default() += 1;
        }
        assert_eq!(sides.len(), 2, "{sides:?}");
    }

    #[test]
    fn a_sticky_split_shares_the_stable_side_by_weight() {
        let mut t = Traffic::of(&[("stable", 60u8), ("beta", 20), ("canary", 20)]).unwrap();
        t.sticky = Some(Sticky::Header("x-user-id".to_string()));
        t.canary = Some("canary".to_string());
        let t = table(&t).unwrap();
        let mut counts = BTreeMap::<String, usize>::new();
        for user in (0..10_000).map(|i| format!("user-{i}")) {
            let first = to(&t, "/", &[("x-user-id", &user)]);
            assert_eq!(to(&t, "/", &[("x-user-id", &user)]), first, "{user}");
            *counts.entry(first).or_default() += 1;
        }
        // CRC-32 buckets of 10,000 keys: a few percent off at most.
        for (backend, want) in [("stable", 6_000), ("beta", 2_000), ("canary", 2_000)] {
            let got = counts.get(backend).copied().unwrap_or(0);
            assert!(got.abs_diff(want) < 300, "{backend}: {counts:?}");
        }
        // No canary named: sticky all the same, over every backend.
        let mut t = Traffic::of(&[("stable", 50u8), ("beta", 50)]).unwrap();
        t.sticky = Some(Sticky::Header("x-user-id".to_string()));
        let t = table(&t).unwrap();
        for user in (0..100).map(|i| format!("user-{i}")) {
            let first = to(&t, "/", &[("x-user-id", &user)]);
            for _ in 0..3 {
                assert_eq!(to(&t, "/", &[("x-user-id", &user)]), first, "{user}");
            }
        }
    }

    #[test]
    fn what_cannot_be_routed_is_refused_at_apply() {
        let refused = |f: &dyn Fn(&mut Traffic)| {
            let mut t = Traffic::of(&[("stable", 100u8), ("canary", 0)]).unwrap();
            f(&mut t);
            match table(&t) {
                Ok(_) => panic!("accepted: {t:?}"),
                Err(e) => e,
            }
        };
        let regex = |re: &str| {
            let re = re.to_string();
            move |t: &mut Traffic| {
                t.routes = vec![route(
                    "r",
                    vec![vec![criterion(
                        Field::Header,
                        "x",
                        Pattern::Regex(re.clone()),
                    )]],
                    "canary",
                )];
            }
        };
        for re in ["(", "a)|(b", "[z-a]"] {
            let e = refused(&regex(re));
            assert!(matches!(e, RouterError::Rejected { .. }), "{e}");
            assert!(e.to_string().contains("route `r`"), "{e}");
        }
        let e = refused(&|t| {
            t.routes = vec![route(
                "r",
                vec![vec![exact(Field::Header, "bad header", "x")]],
                "canary",
            )];
        });
        assert!(matches!(e, RouterError::Rejected { .. }), "{e}");
        let e = refused(&|t| t.sticky = Some(Sticky::Header("a:b".to_string())));
        assert!(matches!(e, RouterError::Rejected { .. }), "{e}");
        for name in ["", "a=b", "a b", "a;b", "ü"] {
            let e = refused(&|t| t.sticky = Some(Sticky::Cookie(name.to_string())));
            assert!(e.to_string().contains("no cookie name"), "{e}");
        }
        let e = refused(&|t| t.canary = Some("beta".to_string()));
        assert!(e.to_string().contains("canary `beta`"), "{e}");
        let e = refused(&|t| {
            t.routes = vec![route(
                "r",
                vec![vec![exact(Field::Header, "x", "y")]],
                "nope",
            )];
        });
        assert!(matches!(e, RouterError::Unknown { .. }), "{e}");
    }

    #[test]
    fn code_classes() {
        assert_eq!(code_class(StatusCode::OK), 0);
        assert_eq!(code_class(StatusCode::FOUND), 1);
        assert_eq!(code_class(StatusCode::NOT_FOUND), 2);
        assert_eq!(code_class(StatusCode::BAD_GATEWAY), 3);
    }
}
