//! The admin HTTP server: `/healthz` (liveness), `/readyz` (readiness), `/metrics` (Prometheus text), and the routes the daemon mounts next to them (its webhooks).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::listener::{self, ListenerLimits, ListenerStats};
use crate::telemetry::Telemetry;

/// The content type of the Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long in-flight admin requests may take to finish once shutdown starts.
const GRACE: Duration = Duration::from_secs(1);

type Renderer = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the admin endpoints report: the telemetry, readiness, and extra metric renderers
/// (for example the embedded router's per-backend request counters); and the routes mounted
/// next to them.
pub struct Admin {
    pub telemetry: Arc<Telemetry>,
    /// What the admin listener refused, timed out or saw aborted.
    pub listener: Arc<ListenerStats>,
    ready: AtomicBool,
    /// Each router the daemon drives, and why it last failed to answer, if it did.
    routers: Mutex<BTreeMap<String, Option<String>>>,
    extra: Mutex<Vec<Renderer>>,
    mounted: Mutex<Option<Router>>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("telemetry", &self.telemetry)
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("extra", &self.renderers().len())
            .field("mounted", &self.routes().is_some())
            .finish()
    }
}

impl Admin {
    /// Not ready until [`Admin::set_ready`] says so.
    pub fn new(telemetry: Arc<Telemetry>) -> Arc<Admin> {
        Arc::new(Admin {
            telemetry,
            listener: Arc::new(ListenerStats::default()),
            ready: AtomicBool::new(false),
            routers: Mutex::new(BTreeMap::new()),
            extra: Mutex::new(Vec::new()),
            mounted: Mutex::new(None),
        })
    }

    /// The daemon marks itself ready after its first full reconcile.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Each router the daemon drives, and why it last failed to answer (`None`: it answered).
    /// `/readyz` is 503 while any router fails, naming it.
    pub fn set_routers(&self, routers: BTreeMap<String, Option<String>>) {
        *self.routers.lock().unwrap_or_else(PoisonError::into_inner) = routers;
    }

    /// What `/readyz` answers (shutdown aside): ready, or why not (one line per router that
    /// fails to answer).
    pub fn readiness(&self) -> Result<(), String> {
        if !self.is_ready() {
            return Err("not ready".into());
        }
        let down: Vec<String> = self
            .routers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flatten()
            .cloned()
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(down.join("\n"))
        }
    }

    /// Adds a renderer whose text is appended to `/metrics` after the telemetry's. It must
    /// write complete metric families (`# HELP`, `# TYPE`, samples).
    pub fn add_renderer(&self, f: impl Fn(&mut String) + Send + Sync + 'static) {
        self.extra
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(f));
    }

    fn renderers(&self) -> Vec<Renderer> {
        self.extra
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Serves `routes` on the admin listener from now on, next to (never instead of) the admin
    /// endpoints; the server may already be running. Mounting again adds to what is mounted
    /// (axum refuses a path mounted twice).
    pub fn mount(&self, routes: Router) {
        let mut mounted = self.mounted.lock().unwrap_or_else(PoisonError::into_inner);
        *mounted = Some(match mounted.take() {
            Some(before) => before.merge(routes),
            None => routes,
        });
    }

    fn routes(&self) -> Option<Router> {
        self.mounted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `/metrics` body. Renderers run outside the lock, so one may add another.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.telemetry.render(&mut out);
        self.listener
            .render("canaryd_admin_listener", "admin", "", &mut out);
        for r in self.renderers() {
            r(&mut out);
        }
        out
    }
}

#[derive(Clone)]
struct AppState {
    admin: Arc<Admin>,
    shutdown: CancellationToken,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    if s.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    }
    match s.admin.readiness() {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Anything but the admin endpoints goes to the mounted routes, if any (404 otherwise).
async fn mounted(State(s): State<AppState>, request: Request) -> Response {
    match s.admin.routes() {
        Some(routes) => match routes.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        s.admin.render(),
    )
}

/// [`serve_with`] the default limits.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, ListenerLimits::default(), admin, shutdown).await
}

/// Serves the admin endpoints on `listener` (HTTP/1.1 only, within `limits`: see
/// [`crate::listener`]) until `shutdown` is cancelled; then the admin is marked not ready
/// (`/readyz` answers 503 to requests still in flight), no new connection is accepted, and
/// in-flight requests get `GRACE` to finish.
///
/// The server stops listening as soon as `shutdown` is cancelled, so a load balancer only sees
/// `/readyz` turn 503 if the daemon calls [`Admin::set_ready`]`(false)` when it starts shutting
/// down and cancels this server's token last (a child token cancelled after its work drained).
pub async fn serve_with(
    listener: TcpListener,
    limits: ListenerLimits,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server listening");
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(mounted)
        .with_state(AppState {
            admin: admin.clone(),
            shutdown: shutdown.clone(),
        });
    let stats = admin.listener.clone();
    let signal = shutdown.clone();
    let not_ready = admin.clone();
    tokio::spawn(async move {
        signal.cancelled().await;
        not_ready.set_ready(false);
    });
    listener::serve(
        "admin",
        listener,
        limits,
        stats,
        move |_peer| {
            let app = app.clone();
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                app.clone().oneshot(req)
            })
        },
        GRACE,
        shutdown,
    )
    .await;
    Ok(())
}
