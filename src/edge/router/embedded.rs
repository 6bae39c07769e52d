//! The embedded router: an HTTP/1.1 reverse proxy that splits each service's requests between backends by weight and counts them.
//!
//! # Routing
//!
//! A request goes to the service whose name equals the host part (port stripped) of its `Host`
//! header, if weights were set for that service; otherwise, if exactly one service has weights,
//! to that one; otherwise it is answered 503. Within the service a backend is drawn at random
//! (`fastrand`) in proportion to its weight; a backend with weight 0 gets nothing, and a service
//! whose weights are all 0 answers 503.
//!
//! `apply` *sets* a service's weights: backends it does not name get weight 0 for that service
//! (and `observe` reports exactly the backends last named). Each service's split is an immutable
//! `Arc<Split>` swapped under a short write lock, so a request uses one consistent split from
//! start to end and no request is dropped while weights change.
//!
//! # Proxying
//!
//! Method, path, query, headers (minus hop-by-hop ones) and bodies are forwarded, streaming, over
//! a pooled client. The client's `Host` is kept as it came (as NGINX's `proxy_set_header Host
//! $host` and Traefik's `passHostHeader` do), and the router adds what a reverse proxy is
//! expected to: the client's address appended to `X-Forwarded-For`, `X-Forwarded-Host` (the
//! `Host` it was sent), `X-Forwarded-Proto: http`, and an RFC 7239 `Forwarded` element appended.
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
use crate::core::model::{Observed, Traffic};
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
    stats: Mutex<HashMap<String, HashMap<String, Arc<Stats>>>>,
    client: Client<HttpConnector, RequestBody>,
    epoch: Instant,
}

/// A configured backend: its name and where it lives.
struct Upstream {
    name: String,
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
    /// Base path without a trailing slash ("" for none).
    prefix: String,
}

/// One service's weights, immutable once built.
struct Split {
    /// As set, for `observe`.
    weights: BTreeMap<String, u32>,
    /// Backends with weight > 0, with running sums of the weights.
    choices: Vec<Choice>,
    total: u32,
}

struct Choice {
    upstream: usize,
    cumulative: u32,
    stats: Arc<Stats>,
}

impl Split {
    /// The choice that a draw `r` in `0..total` lands on.
    fn pick(&self, r: u32) -> Option<&Choice> {
        self.choices.iter().find(|c| r < c.cumulative)
    }
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

    /// The weights of `service` as last set; empty if never set.
    pub fn observe(&self, service: &str) -> Observed {
        self.observe_all(std::slice::from_ref(&service))
            .into_values()
            .next()
            .unwrap_or_default()
    }

    /// The weights of each of `services` as last set (empty if never set), all read under one
    /// lock, so from one moment: a service is never unknown here, it only has no weights yet.
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
                let backends = splits
                    .get(service)
                    .map(|s| s.weights.clone())
                    .unwrap_or_default();
                (service.to_string(), Observed::weights(backends))
            })
            .collect()
    }

    /// Sets the weights of `service` at once; backends not named get weight 0 for it.
    /// A named backend that is not configured is refused with [`RouterError::Unknown`] and
    /// nothing changes.
    pub fn apply(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        let shared = &self.shared;
        let mut named = Vec::with_capacity(traffic.backends.len());
        for (backend, weight) in &traffic.backends {
            let Some(upstream) = shared.upstreams.iter().position(|u| &u.name == backend) else {
                return Err(RouterError::Unknown {
                    router: shared.name.clone(),
                    what: format!("backend `{backend}` (service `{service}`)"),
                });
            };
            if weight.get() > 0 {
                named.push((upstream, backend, weight));
            }
        }
        let mut choices = Vec::with_capacity(named.len());
        let mut total = 0u32;
        {
            let mut stats = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
            for (upstream, backend, weight) in named {
                total += u32::from(weight.get());
                let stats = stats
                    .entry(service.to_string())
                    .or_default()
                    .entry(backend.clone())
                    .or_default()
                    .clone();
                choices.push(Choice {
                    upstream,
                    cumulative: total,
                    stats,
                });
            }
        }
        let weights: BTreeMap<String, u32> = traffic
            .backends
            .iter()
            .map(|(b, w)| (b.clone(), u32::from(w.get())))
            .collect();
        tracing::debug!(router = %shared.name, service, ?weights, "weights set");
        let split = Arc::new(Split {
            weights,
            choices,
            total,
        });
        shared
            .splits
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(service.to_string(), split);
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
        let choice = match split.total {
            0 => None,
            total => split.pick(fastrand::u32(0..total)),
        };
        let Some(choice) = choice else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend has weight\n".to_string(),
            );
        };
        let Some(upstream) = self.upstreams.get(choice.upstream) else {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backend vanished\n".to_string(),
            );
        };
        let started = crate::edge::clock::instant();
        let resp = match self.forward(req, peer, upstream).await {
            Ok(resp) | Err(Unanswered::Backend(resp)) => resp,
            Err(Unanswered::Client(fault)) => {
                choice.stats.client_fault(fault);
                tracing::debug!(router = %self.name, backend = %upstream.name, %fault, "client fault");
                return plain(fault.status(), format!("{fault}\n"));
            }
        };
        choice
            .stats
            .record(self.now_sec(), resp.status(), started.elapsed());
        tracing::trace!(router = %self.name, backend = %upstream.name, status = resp.status().as_u16(), "proxied");
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        upstream: &Upstream,
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

    #[test]
    fn code_classes() {
        assert_eq!(code_class(StatusCode::OK), 0);
        assert_eq!(code_class(StatusCode::FOUND), 1);
        assert_eq!(code_class(StatusCode::NOT_FOUND), 2);
        assert_eq!(code_class(StatusCode::BAD_GATEWAY), 3);
    }
}
