//! Hooks through the real daemon, a real HAProxy and (for the metric) a real Prometheus: a
//! failing `pre-rollout` hook aborts before the canary gets one request, a `confirm-promotion`
//! gate holds at the last step until its receiver says yes, and a `rollout` hook answering 500
//! twice aborts at `failureLimit: 1`. A local receiver plays the hooks on 127.0.0.1.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, Uri};
use canaryd::edge::notify::signature;
use canaryd::edge::secret::Secret;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::backends::{Backends, Server};
use crate::support::rig::haproxy::Haproxy;
use crate::support::rig::prometheus::PromServer;
use crate::support::world::{World, canary_weight, phase};

const HOOK_SECRET: &str = "hk-9f3a2c";

/// The receiver: per path, the statuses to answer in turn (the last one repeats), and every
/// call it got (path, headers, body).
#[derive(Clone, Default)]
struct Receiver {
    answers: Arc<Mutex<BTreeMap<String, Vec<u16>>>>,
    calls: Arc<Mutex<Vec<(String, HeaderMap, String)>>>,
}

impl Receiver {
    async fn start(stop: CancellationToken) -> (Receiver, std::net::SocketAddr) {
        let r = Receiver::default();
        let state = r.clone();
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let path = uri.path().to_string();
                    let code = {
                        let mut answers = state.answers.lock().unwrap();
                        match answers.get_mut(&path) {
                            Some(list) if list.len() > 1 => list.remove(0),
                            Some(list) => list[0],
                            None => 200,
                        }
                    };
                    state.calls.lock().unwrap().push((path, headers, body));
                    (
                        StatusCode::from_u16(code).unwrap(),
                        format!("answered {code}"),
                    )
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        (r, addr)
    }

    fn answer(&self, path: &str, codes: &[u16]) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_string(), codes.to_vec());
    }

    fn calls(&self, path: &str) -> Vec<(HeaderMap, Value)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, h, b)| (h.clone(), serde_json::from_str(b).unwrap()))
            .collect()
    }
}

/// A world whose router `edge` is HAProxy in front of blue and green (each its own counter of
/// requests served), with Prometheus scraping HAProxy's exporter; and the hook receiver.
struct Rig {
    w: World,
    receiver: Receiver,
    hooks: std::net::SocketAddr,
    blue: Backends,
    green: Backends,
    _haproxy: Haproxy,
    _prometheus: PromServer,
    stop: CancellationToken,
}

fn rig(green_fails: f64) -> Rig {
    let mut w = World::new(0.0, 0.0);
    let blue = w.rt.block_on(Backends::start(&[Server::new("blue")]));
    let green = w.rt.block_on(Backends::start(
        &[Server::new("green").failing(green_fails)],
    ));
    let upstreams: Vec<_> = blue
        .upstreams()
        .iter()
        .chain(green.upstreams())
        .cloned()
        .collect();
    let haproxy =
        w.rt.block_on(Haproxy::start("checkout", &upstreams))
            .unwrap();
    let prometheus = PromServer::start(&[haproxy.metrics]).unwrap();
    w.router = haproxy.frontend;
    w.router_spec = Some(haproxy.spec());
    w.config = Some(format!("prometheus:\n  url: {}\n", prometheus.url()));
    w.env = vec![("CANARYD_TEST_HOOK_SECRET", HOOK_SECRET)];
    let stop = CancellationToken::new();
    let (receiver, hooks) = w.rt.block_on(Receiver::start(stop.clone()));
    Rig {
        w,
        receiver,
        hooks,
        blue,
        green,
        _haproxy: haproxy,
        _prometheus: prometheus,
        stop,
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[test]
fn a_failing_pre_rollout_hook_aborts_before_the_canary_gets_one_request() {
    let mut r = rig(0.0);
    r.receiver.answer("/acceptance", &[500]);
    let steps = format!(
        "  hooks:
    - {{name: acceptance, type: pre-rollout, url: \"http://{}/acceptance\", retries: 1, secret: {{env: CANARYD_TEST_HOOK_SECRET}}}}
    - {{name: done, type: post-rollout, url: \"http://{}/done\"}}
  steps:
    - setWeight: 50
    - pause: {{duration: 2s}}
",
        r.hooks, r.hooks
    );
    r.w.start_on_stable(&steps);
    r.w.background_load(30);
    r.w.merge(
        "checkout.yaml",
        &r.w.spec(true, &steps),
        "canary: green 1.1",
    );
    let aborted = r.w.wait_for("checkout", 40, "aborted, revert pushed", |s| {
        phase(s) == "aborted" && s.revert.is_some()
    });
    // The evidence is the hook's answer, after its retry.
    let summary = match &aborted.status.progress {
        canaryd::core::progress::Progress::Aborted { evidence, .. } => evidence.summary.clone(),
        p => panic!("{p:?}"),
    };
    assert!(
        summary.starts_with("hook:acceptance failed: HTTP 500: answered 500"),
        "{summary}"
    );
    let calls = r.receiver.calls("/acceptance");
    assert_eq!(calls.len(), 2, "one try and one retry");
    let (headers, body) = &calls[0];
    assert_eq!(body["type"], "pre-rollout");
    assert_eq!(body["rollout"], "checkout");
    assert_eq!(body["canaryWeight"], 0);
    assert_eq!(
        headers["x-canaryd-signature-256"].to_str().unwrap(),
        signature(&Secret::new(HOOK_SECRET), body.to_string().as_bytes())
    );
    // The canary never had a request, and never a weight: by HAProxy's read-back and by the
    // backend's own count.
    assert_eq!(r.green.served(), 0);
    assert!(r.blue.served() > 0);
    for s in r.w.history("checkout") {
        assert!(
            s.live
                .as_ref()
                .is_none_or(|l| l.backends.get("green").is_none_or(|g| g.get() == 0)),
            "{s:#?}"
        );
        assert_eq!(canary_weight(&s), 0);
    }
    let log = r.w.status_log("checkout");
    assert!(log.contains("hook:acceptance failed: HTTP 500"), "{log}");
    // The post-rollout hook heard of it, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.receiver.calls("/done").is_empty() {
        assert!(Instant::now() < deadline, "post-rollout hook not called");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let done = r.receiver.calls("/done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1["phase"], "aborted");
}

#[test]
fn a_confirm_promotion_gate_holds_the_last_step_until_it_answers_yes() {
    let mut r = rig(0.0);
    r.receiver.answer("/go", &[503]);
    let steps = format!(
        "  hooks:
    - {{name: go, type: confirm-promotion, url: \"http://{}/go\", interval: 1s}}
  steps:
    - setWeight: 30
    - pause: {{duration: 1s}}
    - setWeight: 100
",
        r.hooks
    );
    r.w.start_on_stable(&steps);
    r.w.merge(
        "checkout.yaml",
        &r.w.spec(true, &steps),
        "canary: green 1.1",
    );
    r.w.wait_for("checkout", 30, "at the gate", |s| {
        s.status.progress.run().is_some_and(|run| run.step == 2)
    });
    // It holds at 30 %, asking every second, and fails nothing.
    std::thread::sleep(Duration::from_secs(4));
    let held = r.w.status("checkout").unwrap();
    assert_eq!(phase(&held), "analysing", "{held:#?}");
    assert_eq!(canary_weight(&held), 30);
    let asked = r.receiver.calls("/go").len();
    assert!((3..=6).contains(&asked), "asked {asked} times in 4 s");
    // Yes: it promotes.
    r.receiver.answer("/go", &[200]);
    let said_yes = Instant::now();
    let promoted =
        r.w.wait_for("checkout", 20, "promoted", |s| phase(s) == "promoted");
    assert_eq!(canary_weight(&promoted), 100);
    println!(
        "confirm-promotion: promoted {:.1} s after the gate said yes",
        said_yes.elapsed().as_secs_f64()
    );
}

#[test]
fn a_rollout_hook_answering_500_twice_aborts_at_failure_limit_1() {
    let mut r = rig(0.0);
    r.receiver.answer("/smoke", &[500, 500, 200]);
    let steps = format!(
        "  hooks:
    - {{name: smoke, type: rollout, url: \"http://{}/smoke\"}}
  steps:
    - setWeight: 50
    - analysis:
        interval: 2s
        count: 4
        failureLimit: 1
        metrics:
          - {{name: errors, template: error-rate}}
    - setWeight: 100
",
        r.hooks
    );
    r.w.start_on_stable(&steps);
    r.w.background_load(60);
    r.w.merge(
        "checkout.yaml",
        &r.w.spec(true, &steps),
        "canary: green 1.1",
    );
    let aborted =
        r.w.wait_for("checkout", 40, "aborted", |s| phase(s) == "aborted");
    let summary = match &aborted.status.progress {
        canaryd::core::progress::Progress::Aborted { evidence, .. } => evidence.summary.clone(),
        p => panic!("{p:?}"),
    };
    assert_eq!(
        summary,
        "hook:smoke failed: HTTP 500: answered 500 (2 failures, limit 1)"
    );
    assert_eq!(r.receiver.calls("/smoke").len(), 2);
    // The hook's value is evidence beside the metric's.
    let hook = aborted
        .analysis
        .iter()
        .find(|m| m.metric == "hook:smoke")
        .unwrap();
    assert_eq!(hook.value, Some(0.0));
    assert_eq!(hook.message.as_deref(), Some("HTTP 500: answered 500"));
}
