//! The admin server, the demo backends and the load generator, on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canaryd::admin::{self, Admin};
use canaryd::backend::{self, BackendConfig, LoadConfig, LoadReport};
use canaryd::telemetry::{Event, ReconcileOutcome, Telemetry};
use tokio_util::sync::CancellationToken;

use crate::support::net;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Option<String>, String) {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, ct, r.text().await.unwrap())
}

async fn backend(
    name: &str,
    fail_fraction: f64,
    latency: Duration,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let (l, addr) = net::listener().await;
    let token = CancellationToken::new();
    let handle = backend::spawn(
        l,
        BackendConfig {
            name: name.into(),
            version: "1.0.0".into(),
            fail_fraction,
            latency,
        },
        token.clone(),
    )
    .await;
    (addr, token, handle)
}

fn load_config(concurrency: usize, total: usize, max_duration: Duration) -> LoadConfig {
    LoadConfig {
        concurrency,
        total,
        max_duration,
        host: None,
    }
}

fn balanced(r: &LoadReport) -> bool {
    r.sent == r.ok + r.server_errors + r.other_status + r.failed + r.abandoned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_shutdown() {
    let telemetry = Arc::new(Telemetry::new());
    let admin = Admin::new(telemetry.clone());
    admin.add_renderer(|out: &mut String| {
        out.push_str("# HELP canaryd_router_requests_total Test.\n");
        out.push_str("# TYPE canaryd_router_requests_total counter\n");
        out.push_str("canaryd_router_requests_total{backend=\"v1\"} 7\n");
    });
    let (l, addr) = net::listener().await;
    let token = CancellationToken::new();
    let server = tokio::spawn(admin::serve(l, admin.clone(), token.clone()));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/healthz").await.2, "ok");
    assert_eq!(get(addr, "/readyz").await.0, 503);
    admin.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    telemetry.record(Event::Reconciled {
        rollout: "checkout".into(),
        outcome: ReconcileOutcome::Changed,
    });
    let (status, ct, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ct.unwrap().starts_with("text/plain; version=0.0.4"));
    assert!(
        body.contains("canaryd_reconcile_total{outcome=\"changed\"} 1\n"),
        "{body}"
    );
    assert!(body.contains("# TYPE canaryd_reconcile_total counter\n"));
    assert!(
        body.contains("canaryd_router_requests_total{backend=\"v1\"} 7\n"),
        "{body}"
    );
    assert_eq!(get(addr, "/nope").await.0, 404);

    let started = Instant::now();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("serve returns within 2 s of the cancel")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let refused = client().get(format!("http://{addr}/healthz")).send().await;
    assert!(refused.is_err(), "nothing listens after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_shutdown_starts() {
    let admin = Admin::new(Arc::new(Telemetry::new()));
    let (l, addr) = net::listener().await;
    let token = CancellationToken::new();
    let server = tokio::spawn(admin::serve(l, admin.clone(), token.clone()));
    admin.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    // The daemon starting to shut down: not ready, still serving.
    admin.set_ready(false);
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready"));
    assert_eq!(get(addr, "/healthz").await.0, 200, "alive while draining");
    // Cancelling the server marks the admin not ready as well.
    admin.set_ready(true);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!admin.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answers_with_its_name_and_fails_an_exact_fraction() {
    let (addr, token, handle) = backend("checkout-v2", 0.2, Duration::ZERO).await;

    let r = client()
        .post(format!("http://{addr}/any/path?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-backend"], "checkout-v2");
    assert_eq!(r.text().await.unwrap(), "checkout-v2 1.0.0\n");

    // Request 0 was the one above; 999 more make 1000, of which exactly 200 fail.
    let report = backend::load(addr, load_config(8, 999, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(report.sent, 999);
    assert_eq!(report.server_errors, 200);
    assert_eq!(report.ok, 799);
    assert_eq!(report.failed, 0);
    assert_eq!(report.by_backend.get("checkout-v2"), Some(&999));
    assert!(balanced(&report));

    token.cancel();
    tokio::time::timeout(Duration::from_secs(3), handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_stops_at_total() {
    let (addr, token, _handle) = backend("stable", 0.0, Duration::ZERO).await;
    let report = backend::load(addr, load_config(4, 37, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(report.sent, 37);
    assert_eq!(report.ok, 37);
    assert_eq!(report.by_backend.len(), 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_stops_at_max_duration() {
    let (addr, token, _handle) = backend("slow", 0.0, Duration::from_millis(100)).await;
    let started = Instant::now();
    let report = backend::load(addr, load_config(2, 1_000_000, Duration::from_millis(600)))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(took >= Duration::from_millis(500), "took {took:?}");
    // About 2 × 6 answered, and the requests in flight at the deadline abandoned.
    assert!((1..=16).contains(&report.ok), "{report:?}");
    assert!(report.abandoned <= 2, "{report:?}");
    assert!(balanced(&report), "{report:?}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counts_transport_failures_against_a_closed_port() {
    let (l, addr) = net::listener().await;
    drop(l);
    let report = backend::load(addr, load_config(3, 20, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(report.sent, 20);
    assert_eq!(report.failed, 20);
    assert_eq!(report.ok + report.server_errors, 0);
    assert!(report.by_backend.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_refuses_non_loopback_targets() {
    let target: SocketAddr = "192.0.2.1:80".parse().unwrap();
    let err = backend::load(target, load_config(1, 1, Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "load target 192.0.2.1:80 is not a loopback address"
    );
}
