//! The Caddy driver against a real `caddy run` on 127.0.0.1 with two real backends: set and read back, traffic split, weight changes under load, drift, router down, unknown names, every handler read at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use canaryd::core::model::{Traffic, Weight};
use canaryd::edge::backend::{self, LoadConfig};
use canaryd::edge::router::RouterError;
use canaryd::edge::router::caddy::CaddyRouter;
use serde_json::json;

use crate::support::backends::{Backends, Server};
use crate::support::observe::{
    assert_unknown, blue_green, observe_all_checked, services, weights_of,
};
use crate::support::rig::caddy::{self, Caddy};
use crate::support::world::{World, rollout_through, runtime};

const SERVICE: &str = "checkout";
/// Concurrent clients of the load under weight changes.
const CLIENTS: usize = 4;

/// Caddy in front of blue and green, and canaryd's driver for it. Fields drop in order: Caddy
/// first, then the backends.
struct Rig {
    caddy: Caddy,
    _backends: Backends,
}

async fn rig() -> Rig {
    let backends = Backends::start(&[Server::new("blue"), Server::new("green")]).await;
    let caddy = Caddy::start(SERVICE, backends.upstreams()).await.unwrap();
    Rig {
        caddy,
        _backends: backends,
    }
}

fn traffic(blue: i64, green: i64) -> Traffic {
    Traffic::of(&[("blue", blue), ("green", green)]).unwrap()
}

async fn percentages(router: &CaddyRouter) -> (u8, u8) {
    let observed = router.observe(SERVICE).await.unwrap();
    let pct = observed.percentages().unwrap();
    (pct["blue"].get(), pct["green"].get())
}

fn load(total: usize, concurrency: usize) -> LoadConfig {
    LoadConfig {
        concurrency,
        total,
        max_duration: Duration::from_secs(20),
        host: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_weights_set_are_read_back() {
    let rig = rig().await;
    rig.caddy.router.health().await.unwrap();
    assert_eq!(percentages(&rig.caddy.router).await, (100, 0));
    for (blue, green) in [(90, 10), (50, 50), (0, 100), (100, 0), (37, 63)] {
        rig.caddy
            .router
            .apply(SERVICE, &traffic(blue, green))
            .await
            .unwrap();
        assert_eq!(
            percentages(&rig.caddy.router).await,
            (blue as u8, green as u8)
        );
        // Caddy's scale is ours: the raw weights are the percentages.
        let raw = rig.caddy.router.observe(SERVICE).await.unwrap().backends;
        assert_eq!((raw["blue"], raw["green"]), (blue as u32, green as u32));
    }
    // The same traffic twice is harmless.
    rig.caddy
        .router
        .apply(SERVICE, &traffic(90, 10))
        .await
        .unwrap();
    rig.caddy
        .router
        .apply(SERVICE, &traffic(90, 10))
        .await
        .unwrap();
    assert_eq!(percentages(&rig.caddy.router).await, (90, 10));
    // A backend left out is set to 0.
    let only_green = Traffic::weights(BTreeMap::from([("green".to_string(), Weight::FULL)]));
    rig.caddy.router.apply(SERVICE, &only_green).await.unwrap();
    assert_eq!(percentages(&rig.caddy.router).await, (0, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_traffic_follows_the_weights() {
    let rig = rig().await;
    rig.caddy
        .router
        .apply(SERVICE, &traffic(80, 20))
        .await
        .unwrap();
    let report = backend::load(rig.caddy.http, load(500, 4)).await.unwrap();
    println!("caddy 80/20 over 500 requests: {report:?}");
    assert_eq!(report.ok, 500, "{report:?}");
    let blue = report.by_backend.get("blue").copied().unwrap_or(0);
    let green = report.by_backend.get("green").copied().unwrap_or(0);
    assert_eq!(blue + green, 500);
    // Binomial: mean 400, sd ~8.9; weighted round robin should be far closer than 5 sd.
    assert!((355..=445).contains(&blue), "blue got {blue} of 500");

    for (weights, only) in [((100, 0), "blue"), ((0, 100), "green")] {
        rig.caddy
            .router
            .apply(SERVICE, &traffic(weights.0, weights.1))
            .await
            .unwrap();
        let report = backend::load(rig.caddy.http, load(200, 4)).await.unwrap();
        assert_eq!(report.ok, 200, "{report:?}");
        assert_eq!(
            report.by_backend,
            BTreeMap::from([(only.to_string(), 200)]),
            "weight 0 must get nothing at {weights:?}"
        );
    }
}

/// Requests sent while the weights change.
const UNDER_LOAD: usize = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_weight_changes_under_load() {
    let rig = rig().await;
    let http = rig.caddy.http;
    // Enough requests to outlast several changes on a quiet machine too (1,500 took 0.4 s).
    let running = tokio::spawn(async move {
        backend::load(http, load(UNDER_LOAD, CLIENTS))
            .await
            .unwrap()
    });
    let cycle = [0, 10, 25, 50, 100, 50, 25, 10];
    let mut applied = 0usize;
    let mut apply_times = Vec::new();
    let started = Instant::now();
    while !running.is_finished() {
        let canary = cycle[applied % cycle.len()];
        let t = Instant::now();
        rig.caddy
            .router
            .apply(SERVICE, &traffic(100 - canary, canary))
            .await
            .unwrap();
        apply_times.push(t.elapsed());
        applied += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = running.await.unwrap();
    let failed = report.failed + report.server_errors;
    println!(
        "caddy under load: {} requests sent, {} failed ({} transport errors, {} 5xx), \
         {} other status, {} abandoned, {applied} weight changes in {:.1} s, by backend {:?}",
        report.sent,
        failed,
        report.failed,
        report.server_errors,
        report.other_status,
        report.abandoned,
        started.elapsed().as_secs_f64(),
        report.by_backend
    );
    assert!(
        applied >= 5,
        "only {applied} weight changes during the load"
    );
    assert_eq!(report.sent, UNDER_LOAD as u64, "{report:?}");
    assert_eq!(report.abandoned, 0, "{report:?}");
    // Caddy applies each change by loading a new config: the old HTTP server shuts down
    // gracefully (in-flight requests finish) but closes its idle keep-alive connections, and a
    // client that sends on one just as it closes gets a transport error. That is all Caddy
    // promises, so assert what follows from it: every request is accounted for, no 5xx, and
    // each change costs each of the 4 clients at most one request.
    assert_eq!(
        report.ok + report.failed + report.server_errors + report.other_status,
        report.sent
    );
    assert_eq!(report.server_errors, 0, "{report:?}");
    assert!(
        report.failed <= CLIENTS as u64 * applied as u64,
        "{} transport errors for {applied} weight changes and {CLIENTS} clients: {report:?}",
        report.failed
    );
    // The last change took.
    let last = cycle[(applied - 1) % cycle.len()] as u8;
    assert_eq!(percentages(&rig.caddy.router).await, (100 - last, last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_drift_by_hand_is_observed() {
    let rig = rig().await;
    let admin = format!("http://{}", rig.caddy.admin);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // An operator sets weights by config path (not by @id), as `curl -X PATCH` would.
    let weights = rig.caddy.weights_url();
    let r = client
        .patch(&weights)
        .header("content-type", "application/json")
        .body("[30,70]")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    assert_eq!(percentages(&rig.caddy.router).await, (30, 70));

    // An operator reorders the upstreams: the weights follow the addresses, not positions.
    let upstreams = format!("{admin}/id/{SERVICE}/upstreams");
    let mut list: Vec<serde_json::Value> = client
        .get(&upstreams)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.reverse();
    let r = client.patch(&upstreams).json(&list).send().await.unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    assert_eq!(percentages(&rig.caddy.router).await, (70, 30));
    // And apply writes in the new order.
    rig.caddy
        .router
        .apply(SERVICE, &traffic(90, 10))
        .await
        .unwrap();
    let raw: Vec<u32> = client
        .get(&weights)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw, [10, 90]);
    assert_eq!(percentages(&rig.caddy.router).await, (90, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_down_is_transient_and_recovers() {
    let mut rig = rig().await;
    rig.caddy
        .router
        .apply(SERVICE, &traffic(60, 40))
        .await
        .unwrap();
    rig.caddy.kill();

    let bound = Duration::from_secs(3);
    let t = Instant::now();
    let err = rig.caddy.router.observe(SERVICE).await.unwrap_err();
    assert!(t.elapsed() < bound, "observe took {:?}", t.elapsed());
    assert!(
        matches!(err, RouterError::Unreachable { .. }) && err.is_transient(),
        "{err:?}"
    );
    println!("caddy down, observe: {err}");
    let t = Instant::now();
    let err = rig
        .caddy
        .router
        .apply(SERVICE, &traffic(50, 50))
        .await
        .unwrap_err();
    assert!(t.elapsed() < bound, "apply took {:?}", t.elapsed());
    assert!(matches!(err, RouterError::Unreachable { .. }), "{err:?}");
    let err = rig.caddy.router.health().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    // Restarted on the same ports from its config file: the file's weights are live again.
    rig.caddy.run().await.unwrap();
    rig.caddy.router.health().await.unwrap();
    assert_eq!(percentages(&rig.caddy.router).await, (100, 0));
    rig.caddy
        .router
        .apply(SERVICE, &traffic(50, 50))
        .await
        .unwrap();
    assert_eq!(percentages(&rig.caddy.router).await, (50, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_unknown_names_and_refusals() {
    let rig = rig().await;
    let unknown = |r: Result<_, RouterError>| match r {
        Err(e @ RouterError::Unknown { .. }) => {
            assert!(!e.is_transient());
            e.to_string()
        }
        other => panic!("expected unknown, got {other:?}"),
    };
    let msg = unknown(rig.caddy.router.observe("nope").await.map(|_| ()));
    assert!(msg.contains("service `nope`"), "{msg}");
    unknown(rig.caddy.router.apply("nope", &traffic(50, 50)).await);
    let red = Traffic::weights(BTreeMap::from([
        ("blue".to_string(), Weight::new(50).unwrap()),
        ("red".to_string(), Weight::new(50).unwrap()),
    ]));
    let msg = unknown(rig.caddy.router.apply(SERVICE, &red).await);
    assert!(msg.contains("backend `red`"), "{msg}");
    assert_eq!(percentages(&rig.caddy.router).await, (100, 0));

    // All weights 0: Caddy refuses the config, and keeps the old one.
    match rig.caddy.router.apply(SERVICE, &traffic(0, 0)).await {
        Err(e @ RouterError::Rejected { .. }) => println!("caddy, all weights 0: {e}"),
        other => panic!("expected rejected, got {other:?}"),
    }
    assert_eq!(percentages(&rig.caddy.router).await, (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_observe_all_reads_every_handler_as_observe_does() {
    let backends = Backends::start(&[Server::new("blue"), Server::new("green")]).await;
    let upstreams = backends.upstreams();
    // Beside `srv0`'s SERVICE, a second server with more handlers: `search`, `profile` (inside a
    // `subroute`) and `banner` (a `static_response`, no proxy).
    let host = |name: &str| json!([{"host": [format!("{name}.test")]}]);
    let more = vec![
        json!({"match": host("search"), "handle": [caddy::proxy("search", upstreams)]}),
        json!({"match": host("profile"), "handle": [{
            "handler": "subroute",
            "routes": [{"handle": [caddy::proxy("profile", upstreams)]}]
        }]}),
        json!({"match": host("banner"), "handle": [{
            "@id": "banner", "handler": "static_response", "body": "sale"
        }]}),
    ];
    let caddy = Caddy::start_with(SERVICE, upstreams, more).await.unwrap();
    let router = &caddy.router;
    for (service, green) in [(SERVICE, 10), ("search", 65), ("profile", 100)] {
        router
            .apply(service, &traffic(100 - green, green))
            .await
            .unwrap();
    }
    let asked = services(&[SERVICE, "search", "profile", "banner", "nope"]);
    let all = observe_all_checked!(router, &asked);
    assert_eq!(weights_of(&all, SERVICE), &blue_green(90, 10));
    assert_eq!(weights_of(&all, "search"), &blue_green(35, 65));
    // Found inside a subroute, as `GET /id/profile` finds it.
    assert_eq!(weights_of(&all, "profile"), &blue_green(0, 100));
    assert_unknown(&all, "banner", "handler is `static_response`");
    assert_unknown(&all, "nope", "no config object with that @id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_apply_observe_round_trip() {
    let rig = rig().await;
    let mut times = Vec::new();
    for i in 0..50 {
        let canary = if i % 2 == 0 { 40 } else { 60 };
        let t = Instant::now();
        rig.caddy
            .router
            .apply(SERVICE, &traffic(100 - canary, canary))
            .await
            .unwrap();
        let got = percentages(&rig.caddy.router).await;
        times.push(t.elapsed());
        assert_eq!(got, (100 - canary as u8, canary as u8));
    }
    times.sort();
    println!(
        "caddy apply+observe round trip over {} tries: median {:?}, p90 {:?}, max {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1]
    );
}

// ---------------------------------------------------------------------------------------------
// Through the daemon: `canaryd run` drives this Caddy.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rollout_through_the_daemon_is_read_back_from_caddy() {
    let rt = runtime();
    let rig = rt.block_on(rig());
    let mut w = World::new(0.0, 0.0);
    w.router_spec = Some(rig.caddy.spec());
    let read = || rt.block_on(percentages(&rig.caddy.router)).1;
    // An operator PATCHes the weights by config path, as `curl -X PATCH` would.
    let hand_set = |green: u8| {
        let url = rig.caddy.weights_url();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = rt
            .block_on(
                client
                    .patch(&url)
                    .header("content-type", "application/json")
                    .body(format!("[{},{green}]", 100 - green))
                    .send(),
            )
            .unwrap();
        assert!(r.status().is_success());
    };
    let report = rollout_through(&mut w, rig.caddy.http, read, hand_set);
    // Each change reloads Caddy, which closes idle keep-alive connections: a few requests
    // sent on one as it closes fail in transport. Never a 5xx.
    assert_eq!(report.server_errors, 0, "{report:?}");
}
