//! The Traefik driver against a real `traefik` on 127.0.0.1 with two real backends, blue and green.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use canaryd::core::model::{Observed, Traffic, Weight};
use canaryd::edge::backend::{LoadConfig, load};
use canaryd::edge::router::RouterError;
use canaryd::edge::router::traefik::TraefikRouter;

use crate::support::backends::{Backends, Server};
use crate::support::net::Silent;
use crate::support::observe::{assert_unknown, observe_all_checked, services, weights_of};
use crate::support::rig::traefik::Traefik;
use crate::support::world::{World, rollout_through, runtime};

const SERVICE: &str = "checkout";
/// How long a change may take to show in Traefik's API (the provider throttle is 100 ms).
const SETTLE: Duration = Duration::from_secs(5);

/// Two backends and a Traefik routing `/` to the weighted service `checkout@file`, with
/// canaryd's driver. Fields drop in order: traefik first, then the backends.
struct Fixture {
    traefik: Traefik,
    _backends: Backends,
}

async fn fixture(latency: Duration) -> Fixture {
    let backends = Backends::start(&[
        Server::new("blue").latency(latency),
        Server::new("green").latency(latency),
    ])
    .await;
    let traefik = Traefik::start(SERVICE, backends.upstreams()).await.unwrap();
    Fixture {
        traefik,
        _backends: backends,
    }
}

fn traffic(blue: u8, green: u8) -> Traffic {
    Traffic::of(&[("blue", blue), ("green", green)]).unwrap()
}

/// Polls `observe` of `service` until it reports `want`'s percentages; the last observation on
/// timeout.
async fn settle(router: &TraefikRouter, service: &str, want: &Traffic) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < SETTLE {
        match router.observe(service).await {
            Ok(o) if o.percentages().as_ref() == Some(&want.backends) => {
                return Ok(start.elapsed());
            }
            Ok(o) => last = format!("{:?}", o.backends),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(last)
}

async fn apply_and_settle(f: &Fixture, blue: u8, green: u8) {
    let want = traffic(blue, green);
    f.traefik.router.apply(SERVICE, &want).await.unwrap();
    if let Err(last) = settle(&f.traefik.router, SERVICE, &want).await {
        panic!(
            "{blue}/{green} not observed within {SETTLE:?}; last: {last}\n{}",
            f.traefik.log()
        );
    }
}

fn raw(blue: u32, green: u32) -> Observed {
    Observed::weights(BTreeMap::from([
        ("blue".to_string(), blue),
        ("green".to_string(), green),
    ]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_weights_are_observed_exactly_and_a_repeat_is_harmless() {
    let f = fixture(Duration::ZERO).await;
    for (blue, green) in [(90, 10), (50, 50), (0, 100), (100, 0)] {
        apply_and_settle(&f, blue, green).await;
        let observed = f.traefik.router.observe(SERVICE).await.unwrap();
        assert_eq!(observed, raw(blue.into(), green.into()));
    }
    f.traefik.router.health().await.unwrap();

    apply_and_settle(&f, 90, 10).await;
    let before = std::fs::read_to_string(&f.traefik.dynamic_file).unwrap();
    apply_and_settle(&f, 90, 10).await;
    assert_eq!(
        std::fs::read_to_string(&f.traefik.dynamic_file).unwrap(),
        before
    );
    assert_eq!(
        f.traefik.router.observe(SERVICE).await.unwrap(),
        raw(90, 10)
    );
    let leftovers: Vec<_> = std::fs::read_dir(f.traefik.dynamic_file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn load_config(total: usize) -> LoadConfig {
    LoadConfig {
        concurrency: 4,
        total,
        max_duration: Duration::from_secs(20),
        host: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_weights() {
    let f = fixture(Duration::ZERO).await;
    apply_and_settle(&f, 80, 20).await;
    let report = load(f.traefik.frontend, load_config(500)).await.unwrap();
    println!("80/20: {report:?}");
    assert_eq!((report.sent, report.ok), (500, 500), "{report:?}");
    let green = report.by_backend.get("green").copied().unwrap_or(0);
    // Binomial n=500, p=0.2: mean 100, sd ≈ 8.9; allow about 5 sd.
    assert!((55..=145).contains(&green), "green got {green}: {report:?}");
    assert_eq!(
        report.by_backend.get("blue").copied().unwrap_or(0) + green,
        500
    );

    for (blue, green, only) in [(100, 0, "blue"), (0, 100, "green")] {
        apply_and_settle(&f, blue, green).await;
        let report = load(f.traefik.frontend, load_config(500)).await.unwrap();
        println!("{blue}/{green}: {report:?}");
        assert_eq!(report.ok, 500, "{report:?}");
        assert_eq!(
            report.by_backend,
            BTreeMap::from([(only.to_string(), 500)]),
            "weight 0 must get nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_weights_change() {
    // 5 ms per answer keeps the load running for a few seconds, through many weight changes.
    let f = Arc::new(fixture(Duration::from_millis(5)).await);
    apply_and_settle(&f, 100, 0).await;
    let done = Arc::new(AtomicBool::new(false));
    let applies = Arc::new(AtomicU64::new(0));
    let flipper = {
        let (f, done, applies) = (f.clone(), done.clone(), applies.clone());
        tokio::spawn(async move {
            let greens = [0u8, 10, 25, 50, 100, 50, 25, 10];
            for green in greens.iter().cycle() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                f.traefik
                    .router
                    .apply(SERVICE, &traffic(100 - green, *green))
                    .await
                    .unwrap();
                applies.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let start = Instant::now();
    let report = load(f.traefik.frontend, load_config(1500)).await.unwrap();
    let took = start.elapsed();
    done.store(true, Ordering::SeqCst);
    flipper.await.unwrap();
    let failed = report.failed + report.server_errors;
    println!(
        "traefik under weight changes: {} requests in {took:?}, {} weight changes (every ~100 ms), failed {failed} (transport {}, 5xx {}), other status {}, abandoned {}, by backend {:?}",
        report.sent,
        applies.load(Ordering::SeqCst),
        report.failed,
        report.server_errors,
        report.other_status,
        report.abandoned,
        report.by_backend
    );
    assert_eq!(report.sent, 1500, "{report:?}");
    assert_eq!(failed, 0, "{report:?}");
    assert_eq!(report.ok, 1500, "{report:?}");
    assert!(
        applies.load(Ordering::SeqCst) >= 10,
        "too few weight changes"
    );
    assert!(report.by_backend.get("green").copied().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_of_the_file_is_seen_as_drift() {
    let f = fixture(Duration::ZERO).await;
    apply_and_settle(&f, 90, 10).await;
    // An operator edits the weights in the file in place, as an editor would.
    let text = std::fs::read_to_string(&f.traefik.dynamic_file).unwrap();
    let mut doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    for entry in doc
        .pointer_mut("/http/services/checkout/weighted/services")
        .unwrap()
        .as_array_mut()
        .unwrap()
    {
        let w = if entry["name"] == "checkout-blue" {
            30
        } else {
            70
        };
        entry["weight"] = serde_json::json!(w);
    }
    std::fs::write(
        &f.traefik.dynamic_file,
        serde_saphyr::to_string(&doc).unwrap(),
    )
    .unwrap();
    let drift = traffic(30, 70);
    settle(&f.traefik.router, SERVICE, &drift)
        .await
        .unwrap_or_else(|last| panic!("hand edit not observed; last: {last}"));
    assert_eq!(
        f.traefik.router.observe(SERVICE).await.unwrap(),
        raw(30, 70)
    );
    // Applying again sets the weights back; it does not add to the operator's.
    apply_and_settle(&f, 90, 10).await;
    assert_eq!(
        f.traefik.router.observe(SERVICE).await.unwrap(),
        raw(90, 10)
    );
}

fn assert_unreachable(r: Result<impl std::fmt::Debug, RouterError>, took: Duration, what: &str) {
    match r {
        Err(e @ RouterError::Unreachable { .. }) => {
            assert!(e.is_transient());
            println!("{what}: unreachable after {took:?}: {e}");
        }
        other => panic!("{what}: expected unreachable, got {other:?}"),
    }
    assert!(took < Duration::from_secs(3), "{what} took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_down_is_unreachable_and_recovers_on_restart() {
    let mut f = fixture(Duration::ZERO).await;
    apply_and_settle(&f, 90, 10).await;
    f.traefik.kill();

    let start = Instant::now();
    let r = f.traefik.router.observe(SERVICE).await;
    assert_unreachable(r, start.elapsed(), "observe");
    let before = std::fs::read_to_string(&f.traefik.dynamic_file).unwrap();
    let start = Instant::now();
    let r = f.traefik.router.apply(SERVICE, &traffic(50, 50)).await;
    assert_unreachable(r, start.elapsed(), "apply");
    assert_eq!(
        std::fs::read_to_string(&f.traefik.dynamic_file).unwrap(),
        before,
        "a refused apply must change nothing"
    );
    let start = Instant::now();
    let r = f.traefik.router.health().await;
    assert_unreachable(r, start.elapsed(), "health");

    f.traefik.run().await.unwrap();
    settle(&f.traefik.router, SERVICE, &traffic(90, 10))
        .await
        .unwrap_or_else(|last| panic!("not observed after restart; last: {last}"));
    apply_and_settle(&f, 50, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_never_answers_is_unreachable_within_the_timeout() {
    // Accepts connections but never answers.
    let silent = Silent::start().await;
    let addr = silent.addr;
    let dir = tempfile::tempdir().unwrap();
    let backends = BTreeMap::from([("blue".to_string(), "http://127.0.0.1:1".to_string())]);
    let router = TraefikRouter::new(
        "edge",
        &format!("http://{addr}"),
        dir.path().join("c.yaml").to_str().unwrap(),
        &backends,
    )
    .unwrap();
    let start = Instant::now();
    let r = router.observe(SERVICE).await;
    assert_unreachable(r, start.elapsed(), "observe of a silent api");
    let start = Instant::now();
    let r = router.apply(SERVICE, &traffic(100, 0)).await;
    // `green` is not configured here: refused before any I/O.
    assert!(matches!(r, Err(RouterError::Unknown { .. })), "{r:?}");
    assert!(start.elapsed() < Duration::from_millis(100));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_or_backend_is_unknown() {
    let f = fixture(Duration::ZERO).await;
    apply_and_settle(&f, 90, 10).await;
    // A service canaryd never wrote carries nothing yet: that is what it sets first.
    assert_eq!(
        f.traefik.router.observe("nope").await.unwrap(),
        Observed::default()
    );
    // A service that exists but is not weighted (one of canaryd's own children).
    match f.traefik.router.observe("checkout-blue").await {
        Err(RouterError::Unknown { what, .. }) => assert!(what.contains("loadbalancer"), "{what}"),
        other => panic!("expected unknown weighted service, got {other:?}"),
    }
    let before = std::fs::read_to_string(&f.traefik.dynamic_file).unwrap();
    let purple = Traffic::weights(BTreeMap::from([
        ("blue".to_string(), Weight::new(50).unwrap()),
        ("purple".to_string(), Weight::new(50).unwrap()),
    ]));
    match f.traefik.router.apply(SERVICE, &purple).await {
        Err(RouterError::Unknown { what, .. }) => assert!(what.contains("purple"), "{what}"),
        other => panic!("expected unknown backend, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&f.traefik.dynamic_file).unwrap(),
        before
    );
    assert_eq!(
        f.traefik.router.observe(SERVICE).await.unwrap(),
        raw(90, 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_all_reads_every_service_as_observe_does() {
    let f = fixture(Duration::ZERO).await;
    let set = [(SERVICE, 90, 10), ("search", 35, 65), ("profile", 0, 100)];
    for (service, blue, green) in set {
        f.traefik
            .router
            .apply(service, &traffic(blue, green))
            .await
            .unwrap();
    }
    for (service, blue, green) in set {
        if let Err(last) = settle(&f.traefik.router, service, &traffic(blue, green)).await {
            panic!("{service} not loaded; last: {last}\n{}", f.traefik.log());
        }
    }
    let asked = services(&[SERVICE, "search", "profile", "checkout-blue", "nope", "a/b"]);
    let all = observe_all_checked!(f.traefik.router, &asked);
    assert_eq!(weights_of(&all, SERVICE), &raw(90, 10).backends);
    assert_eq!(weights_of(&all, "search"), &raw(35, 65).backends);
    assert_eq!(weights_of(&all, "profile"), &raw(0, 100).backends);
    // A service that exists but is not weighted; raw data does not name its type.
    assert_unknown(&all, "checkout-blue", "it is a loadbalancer service");
    // Never written: nothing carries traffic for it yet, as `observe` says.
    assert_eq!(weights_of(&all, "nope"), &BTreeMap::new());
    assert!(matches!(all["a/b"], Err(RouterError::Setup { .. })));

    // Written but not loaded: a driver whose file Traefik does not watch.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere.yaml");
    let unwatched = TraefikRouter::new(
        "edge",
        &format!("http://127.0.0.1:{}", f.traefik.api),
        elsewhere.to_str().unwrap(),
        &f.traefik.backends,
    )
    .unwrap();
    unwatched.apply("pending", &traffic(50, 50)).await.unwrap();
    let asked = services(&[SERVICE, "pending"]);
    let all = observe_all_checked!(unwatched, &asked);
    match &all["pending"] {
        Err(e @ RouterError::Unreachable { .. }) => {
            assert!(e.to_string().contains("not loaded yet"), "{e}")
        }
        other => panic!("expected not loaded yet, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_then_observe_round_trip_time() {
    let f = fixture(Duration::ZERO).await;
    apply_and_settle(&f, 100, 0).await;
    let mut times = Vec::with_capacity(50);
    for i in 0..50u8 {
        let green = if i % 2 == 0 { 10 + i } else { 90 - i };
        let want = traffic(100 - green, green);
        let start = Instant::now();
        f.traefik.router.apply(SERVICE, &want).await.unwrap();
        settle(&f.traefik.router, SERVICE, &want)
            .await
            .unwrap_or_else(|last| panic!("try {i}: not observed; last: {last}"));
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "traefik apply+observe round trip over 50 tries: median {:?}, p90 {:?}, min {:?}, max {:?}",
        times[25], times[45], times[0], times[49]
    );
}

// ---------------------------------------------------------------------------------------------
// Through the daemon: `canaryd run` drives this Traefik.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rollout_through_the_daemon_is_read_back_from_traefik() {
    let rt = runtime();
    let f = rt.block_on(fixture(Duration::ZERO));
    let mut w = World::new(0.0, 0.0);
    w.router_spec = Some(f.traefik.spec());
    let read = || {
        let o = rt.block_on(f.traefik.router.observe(SERVICE)).unwrap();
        o.percentages()
            .map_or(0, |p| p.get("green").map_or(0, |g| g.get()))
    };
    // An operator edits the file canaryd owns; Traefik loads it after its throttle.
    let hand_set = |green: u8| {
        let want = traffic(100 - green, green);
        let text = std::fs::read_to_string(&f.traefik.dynamic_file).unwrap();
        let edited = text
            .replace("weight: 80", &format!("weight: {}", 100 - green))
            .replace("weight: 20", &format!("weight: {green}"));
        assert_ne!(text, edited, "{text}");
        std::fs::write(&f.traefik.dynamic_file, edited).unwrap();
        rt.block_on(settle(&f.traefik.router, SERVICE, &want))
            .unwrap();
    };
    let report = rollout_through(&mut w, f.traefik.frontend, read, hand_set);
    assert_eq!((report.failed, report.server_errors), (0, 0), "{report:?}");
}
