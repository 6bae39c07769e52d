//! Demo and test backends: a tiny HTTP server standing in for one version of a service, with a deterministic failure fraction, and a bounded load generator to drive traffic at it.

use std::collections::BTreeMap;
use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The header every backend answers with, naming itself.
pub const BACKEND_HEADER: &str = "x-backend";
/// The header the embedded router adds, naming the backend it chose; preferred when present.
pub const ROUTER_BACKEND_HEADER: &str = "x-canaryd-backend";
/// The timeout of each request of [`load`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a backend's in-flight requests may take to finish once shutdown starts.
const GRACE: Duration = Duration::from_secs(1);

/// What one backend is and how badly it behaves.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    pub name: String,
    pub version: String,
    /// The fraction of requests answered with 500, in 0..=1 (clamped; NaN counts as 0).
    pub fail_fraction: f64,
    /// How long each request waits before it is answered.
    pub latency: Duration,
}

/// Behaviour a test may need beyond [`BackendConfig`]; the default adds none.
#[derive(Clone, Debug, Default)]
pub struct Quirks {
    /// Wait [`BackendConfig::latency`] on every `n`-th request only (requests 0, n, 2n, ...
    /// counting from 0); 0 waits on every request.
    pub latency_every: u64,
    /// Answer with the request's headers, one `name: value` line each, in place of the name
    /// and version: what a proxy in front passed on.
    pub echo_headers: bool,
}

#[derive(Debug)]
struct Backend {
    config: BackendConfig,
    quirks: Quirks,
    fail_fraction: f64,
    /// Requests whose body was read whole and that were answered.
    served: Arc<AtomicU64>,
}

/// Whether request `n` (counting from 0) fails at `fraction`: iff ⌊(n+1)·f⌋ > ⌊n·f⌋, so that
/// exactly ⌊N·f⌋ of the first N requests fail, spread evenly.
pub fn fails(n: u64, fraction: f64) -> bool {
    let f = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    ((n + 1) as f64 * f).floor() > (n as f64 * f).floor()
}

async fn answer(
    State(b): State<Arc<Backend>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The whole body first, as a real service reads an upload before it answers.
    let mut body = body;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if frame.is_err() {
            return StatusCode::BAD_REQUEST.into_response();
        }
    }
    let n = b.served.fetch_add(1, Ordering::SeqCst);
    let every = b.quirks.latency_every;
    if !b.config.latency.is_zero() && (every == 0 || n % every == 0) {
        tokio::time::sleep(b.config.latency).await;
    }
    let (status, body) = if fails(n, b.fail_fraction) {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} {} failed (injected)\n", b.config.name, b.config.version),
        )
    } else if b.quirks.echo_headers {
        let lines = headers.iter().map(|(name, value)| {
            format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes()))
        });
        (StatusCode::OK, lines.collect())
    } else {
        (
            StatusCode::OK,
            format!("{} {}\n", b.config.name, b.config.version),
        )
    };
    let mut response = (status, body).into_response();
    if let Ok(name) = HeaderValue::from_str(&b.config.name) {
        response.headers_mut().insert(BACKEND_HEADER, name);
    }
    response
}

/// Serves `config`'s backend on `listener`, answering every request (any path or method) once
/// its body is read, until `shutdown` is cancelled; the task then ends within about a second.
pub async fn spawn(
    listener: TcpListener,
    config: BackendConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    spawn_counted(listener, config, shutdown).await.0
}

/// [`spawn`], with the count of requests the backend has answered.
pub async fn spawn_counted(
    listener: TcpListener,
    config: BackendConfig,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, Arc<AtomicU64>) {
    spawn_with(listener, config, Quirks::default(), shutdown).await
}

/// [`spawn_counted`], with `quirks`.
pub async fn spawn_with(
    listener: TcpListener,
    config: BackendConfig,
    quirks: Quirks,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, Arc<AtomicU64>) {
    let served = Arc::new(AtomicU64::new(0));
    let fail_fraction = if config.fail_fraction.is_nan() {
        0.0
    } else {
        config.fail_fraction.clamp(0.0, 1.0)
    };
    let name = config.name.clone();
    let backend = Arc::new(Backend {
        config,
        quirks,
        fail_fraction,
        served: served.clone(),
    });
    let app = Router::new().fallback(answer).with_state(backend);
    let task = tokio::spawn(async move {
        let signal = shutdown.clone();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .into_future();
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::warn!(backend = %name, "backend server stopped: {e}");
                }
            }
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(GRACE).await;
            } => {}
        }
    });
    (task, served)
}

/// How much load to send.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// Requests to send at most.
    pub total: usize,
    /// Stop sending after this long; requests still in flight then are abandoned.
    pub max_duration: Duration,
    /// The `Host` header to send, for a router that routes by host.
    pub host: Option<String>,
}

/// What the load generator saw. `sent` = `ok` + `server_errors` + `other_status` + `failed` +
/// `abandoned`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests started.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Any other status (1xx, 3xx, 4xx).
    pub other_status: u64,
    /// Transport errors: connection refused or reset, timeout, malformed answer.
    pub failed: u64,
    /// Requests still in flight when `max_duration` ran out.
    pub abandoned: u64,
    /// Answers per backend, from `x-canaryd-backend` or else `x-backend`, whatever the status.
    pub by_backend: BTreeMap<String, u64>,
}

impl LoadReport {
    /// Adds another run's counts to these.
    pub fn merge(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.server_errors += other.server_errors;
        self.other_status += other.other_status;
        self.failed += other.failed;
        self.abandoned += other.abandoned;
        for (k, v) in other.by_backend {
            *self.by_backend.entry(k).or_default() += v;
        }
    }
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The load generator only targets this machine.
    #[error("load target {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    #[error("load generator http client could not be built")]
    Client(#[source] reqwest::Error),
}

/// Sends `GET http://{target}/` requests, `concurrency` at a time, until `total` were sent or
/// `max_duration` passed, whichever comes first. Each request times out after
/// [`REQUEST_TIMEOUT`]; none outlives `max_duration`.
pub async fn load(target: SocketAddr, config: LoadConfig) -> Result<LoadReport, LoadError> {
    if !target.ip().is_loopback() {
        return Err(LoadError::NotLoopback(target));
    }
    let concurrency = config.concurrency.max(1);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(concurrency)
        .build()
        .map_err(LoadError::Client)?;
    let url = format!("http://{target}/");
    let deadline = crate::clock::instant() + config.max_duration;
    let tickets = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(config.total.max(1)) {
        let worker = Worker {
            client: client.clone(),
            url: url.clone(),
            host: config.host.clone(),
            total: config.total,
            deadline,
            tickets: tickets.clone(),
        };
        workers.spawn(worker.run());
    }
    let mut report = LoadReport::default();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(r) => report.merge(r),
            Err(e) => tracing::warn!("load worker ended abnormally: {e}"),
        }
    }
    Ok(report)
}

struct Worker {
    client: reqwest::Client,
    url: String,
    host: Option<String>,
    total: usize,
    deadline: Instant,
    tickets: Arc<AtomicUsize>,
}

impl Worker {
    async fn run(self) -> LoadReport {
        let mut report = LoadReport::default();
        loop {
            if crate::clock::instant() >= self.deadline
                || self.tickets.fetch_add(1, Ordering::SeqCst) >= self.total
            {
                return report;
            }
            report.sent += 1;
            let mut request = self.client.get(&self.url);
            if let Some(host) = &self.host {
                request = request.header(reqwest::header::HOST, host);
            }
            let sent = async {
                let response = request.send().await?;
                let status = response.status();
                let backend = [ROUTER_BACKEND_HEADER, BACKEND_HEADER]
                    .iter()
                    .find_map(|h| response.headers().get(*h))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                // Read the body so the connection goes back to the pool.
                response.bytes().await?;
                Ok::<_, reqwest::Error>((status, backend))
            };
            let outcome = tokio::select! {
                r = sent => Some(r),
                () = tokio::time::sleep_until(self.deadline) => None,
            };
            match outcome {
                None => {
                    report.abandoned += 1;
                    return report;
                }
                Some(Err(_)) => report.failed += 1,
                Some(Ok((status, backend))) => {
                    if status.is_success() {
                        report.ok += 1;
                    } else if status.is_server_error() {
                        report.server_errors += 1;
                    } else {
                        report.other_status += 1;
                    }
                    if let Some(b) = backend {
                        *report.by_backend.entry(b).or_default() += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(n: u64, f: f64) -> usize {
        (0..n).filter(|i| fails(*i, f)).count()
    }

    #[test]
    fn the_failure_fraction_is_exact_and_spread() {
        assert_eq!(failures(1000, 0.2), 200);
        assert_eq!(failures(1000, 0.0), 0);
        assert_eq!(failures(1000, 1.0), 1000);
        assert_eq!(failures(1000, 0.05), 50);
        assert_eq!(failures(3, 1.0 / 3.0), 1);
        // At 0.2 the 5th, 10th, ... request fails.
        let first: Vec<u64> = (0..10).filter(|i| fails(*i, 0.2)).collect();
        assert_eq!(first, [4, 9]);
        // Out of range and NaN are clamped.
        assert_eq!(failures(10, 7.0), 10);
        assert_eq!(failures(10, -1.0), 0);
        assert_eq!(failures(10, f64::NAN), 0);
    }
}
