//! The Caddy driver against a real `caddy run` on 127.0.0.1 with two real backends: set and read back, traffic split, weight changes under load, drift, router down, unknown names, every handler read at once; header, cookie and query routes (the marked group at weight 0 and after an abort, every kind read back, the side named to the backend, drift), sticky users refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use canaryd::core::model::{Criterion, Field, Match, Pattern, Route, Traffic, Weight};
use canaryd::core::spec::RouterSpec;
use canaryd::core::validate;
use canaryd::edge::backend::{self, LoadConfig};
use canaryd::edge::router::caddy::CaddyRouter;
use canaryd::edge::router::{Driver, RouterError};
use serde_json::json;

use crate::support::backends::{Backends, Server};
use crate::support::observe::{
    assert_unknown, blue_green, observe_all_checked, services, weights_of,
};
use crate::support::rig::caddy::{self, Caddy};
use crate::support::who::marked_and_sticky;
use crate::support::world::{World, canary_weight, phase, rollout_through, runtime, verified};

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

// ---------------------------------------------------------------------------------------------
// Who sees the canary: routes before the weighted split, sticky users refused.
// ---------------------------------------------------------------------------------------------

fn criterion(on: Field, name: &str, value: Pattern) -> Criterion {
    Criterion {
        on,
        name: name.to_string(),
        value,
    }
}

/// Blue and green at `canary` percent for green, the marked group (`X-Canary: always`) routed
/// to green; no sticky key (Caddy refuses one).
fn marked_at(canary: u8) -> Traffic {
    let mut t = marked_and_sticky(traffic(i64::from(100 - canary), i64::from(canary)), "green");
    t.sticky = None;
    t
}

/// A client that keeps connections alive, as browsers and services do.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client that opens a connection per request: for checks of where single requests go right
/// after a change, which a keep-alive connection Caddy closes on the reload would make fail.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// An error with its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// One GET through Caddy with `headers`: the backend that answered (its `x-backend` header)
/// and the body.
async fn ask(
    c: &reqwest::Client,
    http: std::net::SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<(String, String), String> {
    let mut req = c.get(format!("http://{http}/{path_and_query}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.map_err(|e| chain(&e))?;
    let status = resp.status();
    let backend = resp
        .headers()
        .get(backend::BACKEND_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await.map_err(|e| chain(&e))?;
    if status != 200 {
        return Err(format!("{status} from `{backend}`: {body}"));
    }
    Ok((backend, body))
}

/// [`ask`] for a check of where a request goes: a transport error (a connection Caddy closed
/// in a reload, which the failure counts of the load tests measure) is printed and the request
/// sent once more.
async fn routed(
    c: &reqwest::Client,
    http: std::net::SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (String, String) {
    match ask(c, http, path_and_query, headers).await {
        Ok(answer) => answer,
        Err(e) if !e.contains(" from `") => {
            println!("caddy: transport error, sent again: {e}");
            ask(c, http, path_and_query, headers).await.unwrap()
        }
        Err(e) => panic!("{e}"),
    }
}

async fn backend_for(
    c: &reqwest::Client,
    http: std::net::SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> String {
    routed(c, http, path_and_query, headers).await.0
}

/// Caddy's own count of config loads so far, from its log.
fn loads(caddy: &Caddy) -> usize {
    caddy.log().matches("admin endpoint started").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_marked_group_reaches_the_canary_at_0_and_nobody_after_an_abort() {
    const USERS: usize = 2_000;
    const CLIENTS: usize = 8;
    /// One marked request every this many users.
    const MARK_EVERY: usize = 10;
    let rig = rig().await;
    let (router, http) = (&rig.caddy.router, rig.caddy.http);
    let c = http_client();
    let steps: Vec<(String, Traffic)> = vec![
        ("0 (route only)".to_string(), marked_at(0)),
        ("10".to_string(), marked_at(10)),
        ("50".to_string(), marked_at(50)),
        ("abort".to_string(), traffic(100, 0)),
    ];
    // While the steps change the routes (each a config reload), a sampler keeps asking; every
    // failure is counted.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (c, sampling) = (c.clone(), sampling.clone());
        tokio::spawn(async move {
            let (mut sent, mut failed) = (0usize, Vec::new());
            while sampling.load(Ordering::SeqCst) {
                for u in 0..50 {
                    let user = format!("u{u}");
                    let marked = [("X-User-Id", user.as_str()), ("X-Canary", "always")];
                    let plain = [("X-User-Id", user.as_str())];
                    let headers: &[(&str, &str)] = if u % 5 == 0 { &marked } else { &plain };
                    sent += 1;
                    if let Err(e) = ask(&c, http, "", headers).await {
                        failed.push(format!("{user}: {e}"));
                    }
                }
            }
            (sent, failed)
        })
    };
    let mut shares = Vec::new();
    let mut failed_total = 0;
    for (name, t) in &steps {
        let started = Instant::now();
        router
            .apply(SERVICE, t)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", rig.caddy.log()));
        let observed = router.observe(SERVICE).await.unwrap();
        let took = started.elapsed();
        assert_eq!(
            (&observed.routes, &observed.sticky),
            (&t.routes, &t.sticky),
            "{name}: read back as applied"
        );
        let mut tasks = Vec::new();
        for k in 0..CLIENTS {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let (mut users, mut marked, mut failed) = (Vec::new(), Vec::new(), Vec::new());
                for u in (k..USERS).step_by(CLIENTS) {
                    let user = format!("u{u}");
                    match ask(&c, http, "", &[("X-User-Id", &user)]).await {
                        Ok((b, _)) => users.push((u, b)),
                        Err(e) => failed.push(format!("{user}: {e}")),
                    }
                    if u % MARK_EVERY == 0 {
                        let tester = format!("t{u}");
                        let headers = [("X-User-Id", tester.as_str()), ("X-Canary", "always")];
                        match ask(&c, http, "", &headers).await {
                            Ok((b, _)) => marked.push(b),
                            Err(e) => failed.push(format!("{tester}: {e}")),
                        }
                    }
                }
                (users, marked, failed)
            }));
        }
        let (mut on_canary, mut marked_total, mut marked_canary) = (BTreeSet::new(), 0, 0);
        let mut failed_here = Vec::new();
        for task in tasks {
            let (users, marked, failed) = task.await.unwrap();
            failed_here.extend(failed);
            for (u, b) in users {
                if b == "green" {
                    on_canary.insert(u);
                }
            }
            marked_total += marked.len();
            marked_canary += marked.iter().filter(|b| *b == "green").count();
        }
        // The reload before the step closed the keep-alive connections idle in each client's
        // pool; one whose close the client had not yet seen fails its next request: at most
        // one per client. None of the answered requests went astray.
        assert!(
            failed_here.len() <= CLIENTS,
            "{name}: failed requests: {failed_here:?}"
        );
        failed_total += failed_here.len();
        let answered = USERS - failed_here.iter().filter(|f| f.starts_with('u')).count();
        let share = on_canary.len() as f64 * 100.0 / answered as f64;
        println!(
            "caddy step {name}: apply+read-back {took:?}; {share:.2} % of {answered} users on the \
             canary; {marked_canary} of {marked_total} marked requests on it; {} failed",
            failed_here.len()
        );
        shares.push((name.clone(), share, marked_canary, marked_total));
        let weight = f64::from(t.backends["green"].get());
        if name == "abort" {
            assert_eq!(
                marked_canary, 0,
                "abort: marked requests still reach the canary"
            );
        } else {
            assert!(
                marked_total + CLIENTS >= USERS / MARK_EVERY,
                "{marked_total}"
            );
            assert_eq!(
                marked_canary, marked_total,
                "{name}: a marked request missed the canary"
            );
        }
        // Without a sticky key Caddy's weighted round robin splits requests, one each: the
        // share of users (one request each) is the weight, give or take the concurrency.
        assert!(
            (share - weight).abs() <= 3.0,
            "{name}: {share:.2} % of users on the canary at weight {weight}"
        );
    }
    sampling.store(false, Ordering::SeqCst);
    let (sent, failed) = sampler.await.unwrap();
    println!(
        "caddy sampler: {sent} requests while the routes changed ({} reloads), {} failed: {failed:?}",
        steps.len(),
        failed.len()
    );
    // A reload closes idle keep-alive connections (a client sending on one just as it closes
    // sees "connection closed before message completed"), and on Linux Caddy listens on a new
    // SO_REUSEPORT socket and closes the old one, resetting a connection queued on it just then
    // (the client's reconnection): a few per reload, never a 5xx.
    assert!(failed.len() <= 3 * steps.len(), "{failed:?}");
    println!("caddy marked steps: {shares:?}; {failed_total} step requests failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_sticky_users_are_refused_by_lint_and_the_driver() {
    let rig = rig().await;
    let router = &rig.caddy.router;
    router.apply(SERVICE, &marked_at(0)).await.unwrap();
    let before = router.observe(SERVICE).await.unwrap();
    let loads_before = loads(&rig.caddy);
    // Caddy's `cookie` policy keeps a weight-0 upstream's users, its header and query hashing
    // ignores weights: neither is monotone, so canaryd refuses a sticky key on Caddy.
    let sticky = marked_and_sticky(traffic(75, 25), "green");
    let e = router.apply(SERVICE, &sticky).await.unwrap_err();
    assert!(matches!(e, RouterError::Setup { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("routers that can: embedded, haproxy"),
        "{e}"
    );
    let driver = Driver::connect("edge", &spec_of(&rig.caddy)).unwrap();
    let e = driver.apply(SERVICE, &sticky).await.unwrap_err();
    assert!(matches!(e, RouterError::Setup { .. }), "{e:?}");
    assert!(e.to_string().contains("sticky users"), "{e}");
    assert_eq!(router.observe(SERVICE).await.unwrap(), before, "unchanged");
    assert_eq!(loads(&rig.caddy), loads_before, "no reload");
    // Lint refuses `sticky:` on a Caddy router and takes its header, cookie and query routes.
    let doc = |extra: &str| {
        format!(
            "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {{name: lb}}
spec:
{}---
apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  router: lb
  service: {SERVICE}
  stable: {{name: blue}}
  canary: {{name: green}}
{extra}  steps:
  - setHeaderRoute: {{name: t, match: [{{headerName: X-Canary, headerValue: {{exact: always}}}}, {{cookies: {{beta: {{prefix: \"on\"}}}}, query: {{app: {{regex: \"ios|android\"}}}}}}]}}
  - setWeight: 10
",
            rig.caddy.spec()
        )
    };
    let (catalog, diags) = validate::validate_texts(&[("rollouts/web.yaml", &doc(""))]);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
    assert_eq!(catalog.rollouts[0].routes_at(0).len(), 1);
    let (_, diags) =
        validate::validate_texts(&[("rollouts/web.yaml", &doc("  sticky: {header: X-User-Id}\n"))]);
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field, "spec.sticky");
    assert!(
        errors[0].message.contains("router kind `caddy` cannot"),
        "{errors:#?}"
    );
    assert!(
        errors[0]
            .help
            .as_deref()
            .unwrap()
            .contains("routers that can: embedded, haproxy"),
        "{errors:#?}"
    );
}

/// The Router spec of this Caddy, as `Driver::connect` takes it.
fn spec_of(caddy: &Caddy) -> RouterSpec {
    RouterSpec::Caddy {
        admin: format!("http://{}", caddy.admin),
        backends: caddy.backends.clone(),
    }
}

/// Routes of every kind Caddy takes: header exact, prefix and regex, cookie exact, prefix and
/// regex, query exact, prefix and regex, criteria ANDed (two on one header among them), matches
/// ORed; the testers to green, the apps to blue.
fn every_kind() -> Vec<Route> {
    let m = |all: Vec<Criterion>| Match { all };
    vec![
        Route {
            name: "testers".to_string(),
            matches: vec![
                m(vec![criterion(
                    Field::Header,
                    "X-Canary",
                    Pattern::Exact("a.b c;d\\e$".into()),
                )]),
                m(vec![criterion(
                    Field::Header,
                    "X-Team",
                    Pattern::Prefix("core-".into()),
                )]),
                m(vec![criterion(
                    Field::Cookie,
                    "beta",
                    Pattern::Exact("on".into()),
                )]),
                m(vec![criterion(
                    Field::Cookie,
                    "group",
                    Pattern::Prefix("ea".into()),
                )]),
                m(vec![criterion(
                    Field::Cookie,
                    "tier",
                    Pattern::Regex("gold|silver".into()),
                )]),
                m(vec![
                    criterion(Field::Query, "region", Pattern::Exact("eu".into())),
                    criterion(Field::Header, "X-Country", Pattern::Regex("DE|AT".into())),
                    criterion(Field::Header, "X-Country", Pattern::Prefix("D".into())),
                ]),
                m(vec![criterion(
                    Field::Query,
                    "build",
                    Pattern::Prefix("nightly-".into()),
                )]),
            ],
            backend: "green".to_string(),
        },
        Route {
            name: "apps".to_string(),
            matches: vec![m(vec![criterion(
                Field::Query,
                "app",
                Pattern::Regex("ios|android-[0-9]+".into()),
            )])],
            backend: "blue".to_string(),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_routes_route_read_back_exactly_and_a_hand_edit_is_drift() {
    let backends = Backends::start(&[
        Server::new("blue").echo_headers(),
        Server::new("green").echo_headers(),
    ])
    .await;
    let caddy = Caddy::start(SERVICE, backends.upstreams()).await.unwrap();
    let (router, http) = (&caddy.router, caddy.http);
    let c = fresh_client();
    let mut t = traffic(100, 0);
    t.routes = every_kind();
    t.canary = Some("green".to_string());
    let first = loads(&caddy);
    router.apply(SERVICE, &t).await.unwrap();
    // Caddy logs each config it runs: the routes took one reload.
    assert_eq!(loads(&caddy), first + 1, "{}", caddy.log());
    let observed = router.observe(SERVICE).await.unwrap();
    assert_eq!(observed.routes, t.routes);
    assert_eq!(observed.sticky, None);
    assert_eq!(observed.backends, blue_green(100, 0));
    let all = router.observe_all(&services(&[SERVICE])).await.unwrap();
    assert_eq!(all[SERVICE].as_ref().unwrap(), &observed);

    // Applying it again reads, finds it so, and writes nothing: no reload.
    let before = loads(&caddy);
    router.apply(SERVICE, &t).await.unwrap();
    assert_eq!(loads(&caddy), before, "a second apply reloaded Caddy");

    // The routes route (blue has all the weight), and name the side to the backend.
    let green: &[(&[(&str, &str)], &str)] = &[
        (&[("X-Canary", "a.b c;d\\e$")], ""),
        (&[("X-Team", "core-payments")], ""),
        (&[("Cookie", "x=1; beta=on")], ""),
        (&[("Cookie", "group=early")], ""),
        (&[("Cookie", "tier=gold; x=2")], ""),
        (&[("X-Country", "DE")], "?region=eu"),
        (&[], "?build=nightly-42"),
    ];
    for (headers, query) in green {
        let (b, body) = routed(&c, http, query, headers).await;
        assert_eq!(b, "green", "{headers:?} {query}");
        assert!(
            body.to_ascii_lowercase()
                .contains("x-canaryd-side: checkout=canary"),
            "{body}"
        );
    }
    let blue: &[(&[(&str, &str)], &str)] = &[
        (&[("X-Canary", "a.b c;d\\eX")], ""),
        (&[("X-Canary", "xa.b c;d\\e$")], ""),
        (&[("X-Team", "payments")], ""),
        (&[("Cookie", "xbeta=on")], ""),
        (&[("Cookie", "beta=onwards")], ""),
        (&[("Cookie", "tier=golden")], ""),
        (&[("X-Country", "AT")], "?region=eu"),
        (&[("X-Country", "DE")], "?region=us"),
        (&[("X-Country", "DE")], ""),
        (&[], "?build=stable-nightly-1"),
    ];
    for (headers, query) in blue {
        let (b, body) = routed(&c, http, query, headers).await;
        assert_eq!(b, "blue", "{headers:?} {query}");
        assert!(
            !body.to_ascii_lowercase().contains("x-canaryd-side"),
            "{body}"
        );
    }
    // `apps` sends to blue whatever the weights, naming the stable side.
    let mut to_green = t.clone();
    to_green.backends = traffic(0, 100).backends;
    router.apply(SERVICE, &to_green).await.unwrap();
    let (b, body) = routed(&c, http, "?app=android-7", &[]).await;
    assert_eq!(b, "blue");
    assert!(
        body.to_ascii_lowercase()
            .contains("x-canaryd-side: checkout=stable"),
        "{body}"
    );
    assert_eq!(backend_for(&c, http, "?app=android-x", &[]).await, "green");

    // A hand edit of a route's value is drift; applying puts it back.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let value = format!(
        "http://{}/id/canaryd-{SERVICE}-routes/routes/0/match/0/header/X-Canary",
        caddy.admin
    );
    let r = client
        .patch(&value)
        .json(&json!(["edited"]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let edited = router.observe(SERVICE).await.unwrap();
    assert_ne!(edited.routes, to_green.routes);
    assert_eq!(
        edited.routes[0].matches[0].all,
        [criterion(
            Field::Header,
            "X-Canary",
            Pattern::Exact("edited".into())
        )]
    );
    assert_eq!(
        backend_for(&c, http, "", &[("X-Canary", "edited")]).await,
        "green"
    );
    router.apply(SERVICE, &to_green).await.unwrap();
    assert_eq!(
        router.observe(SERVICE).await.unwrap().routes,
        to_green.routes
    );

    // What Caddy cannot hold is refused before anything changes: two regexes on one header.
    let mut two = to_green.clone();
    two.routes[1].matches[0]
        .all
        .push(criterion(Field::Query, "app", Pattern::Prefix("i".into())));
    let before = loads(&caddy);
    let e = router.apply(SERVICE, &two).await.unwrap_err();
    assert!(matches!(e, RouterError::Setup { .. }), "{e:?}");
    assert!(e.to_string().contains("query app^=i cannot join"), "{e}");
    // A route to a backend the handler does not have is unknown.
    let mut red = to_green.clone();
    red.routes[0].backend = "red".to_string();
    let e = router.apply(SERVICE, &red).await.unwrap_err();
    assert!(matches!(e, RouterError::Unknown { .. }), "{e:?}");
    assert_eq!(loads(&caddy), before, "a refused apply reloaded Caddy");
    assert_eq!(
        router.observe(SERVICE).await.unwrap().routes,
        to_green.routes
    );

    // No routes: the subroute is gone and the config is as the operator wrote it.
    router.apply(SERVICE, &traffic(100, 0)).await.unwrap();
    let observed = router.observe(SERVICE).await.unwrap();
    assert!(observed.routes.is_empty(), "{observed:?}");
    let r = client
        .get(format!(
            "http://{}/id/canaryd-{SERVICE}-routes",
            caddy.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        backend_for(&c, http, "", &[("X-Canary", "a.b c;d\\e$")]).await,
        "blue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_caddy_route_changes_time_and_failures_under_load() {
    let rig = rig().await;
    let (router, http) = (&rig.caddy.router, rig.caddy.http);
    let with = marked_at(10);
    let without = traffic(90, 10);
    // Apply and read back, the routes set and removed in turn (a reload each time).
    let mut times = Vec::new();
    for i in 0..20 {
        let t = if i % 2 == 0 { &with } else { &without };
        let started = Instant::now();
        router.apply(SERVICE, t).await.unwrap();
        let observed = router.observe(SERVICE).await.unwrap();
        times.push(started.elapsed());
        assert_eq!(observed.routes, t.routes);
    }
    times.sort();
    println!(
        "caddy route change, apply+read-back over {} tries: median {:?}, p90 {:?}, max {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1]
    );
    // Under load: the same changes while 4 clients send requests.
    let running = tokio::spawn(async move {
        backend::load(http, load(UNDER_LOAD, CLIENTS))
            .await
            .unwrap()
    });
    let mut changes = 0u64;
    while !running.is_finished() {
        let t = if changes.is_multiple_of(2) {
            &with
        } else {
            &without
        };
        router.apply(SERVICE, t).await.unwrap();
        changes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = running.await.unwrap();
    println!(
        "caddy under load while routes change: {} requests, {} ok, {} transport errors, {} 5xx, \
         {changes} route changes",
        report.sent, report.ok, report.failed, report.server_errors
    );
    assert_eq!(report.server_errors, 0, "{report:?}");
    assert!(
        report.failed <= CLIENTS as u64 * changes,
        "{} transport errors for {changes} changes: {report:?}",
        report.failed
    );
}

/// Testers (`X-Canary: always`) on the canary at weight 0, then half the traffic.
const TESTERS_FIRST: &str = "  steps:
    - setHeaderRoute: {name: testers, match: [{headerName: X-Canary, headerValue: {exact: always}}]}
    - pause: {}
    - setWeight: 50
    - pause: {}
";

#[test]
fn testers_first_through_the_daemon_on_caddy_with_a_hand_edit_undone() {
    let rt = runtime();
    let rig = rt.block_on(rig());
    let mut w = World::new(0.0, 0.0);
    w.router_spec = Some(rig.caddy.spec());
    let c = fresh_client();
    let http = rig.caddy.http;
    let routes = || {
        rt.block_on(rig.caddy.router.observe(SERVICE))
            .unwrap()
            .routes
    };
    let marked = |value: &str| rt.block_on(backend_for(&c, http, "", &[("X-Canary", value)]));
    w.start_on_stable(TESTERS_FIRST);
    w.merge(
        "checkout.yaml",
        &w.spec(true, TESTERS_FIRST),
        "checkout: canary green, testers first",
    );
    let s = w.wait_for("checkout", 30, "the testers route verified", |s| {
        phase(s) == "paused" && verified(s) && !s.routes.is_empty()
    });
    assert_eq!(canary_weight(&s), 0);
    assert_eq!(routes(), s.routes);
    for _ in 0..10 {
        assert_eq!(marked("always"), "green");
        assert_eq!(marked("never"), "blue");
    }
    // An operator edits the route by hand: the daemon sees the routes drift and puts them back.
    let value = format!(
        "http://{}/id/canaryd-{SERVICE}-routes/routes/0/match/0/header/X-Canary",
        rig.caddy.admin
    );
    let r = rt
        .block_on(async { c.patch(&value).json(&json!(["sometimes"])).send().await })
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(marked("sometimes"), "green");
    let deadline = Instant::now() + Duration::from_secs(30);
    while routes() != s.routes {
        assert!(
            Instant::now() < deadline,
            "the hand edit stayed: {:?}",
            routes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(marked("always"), "green");
    assert_eq!(marked("sometimes"), "blue");
    w.gate("abort");
    w.wait_for("checkout", 30, "aborted, routes removed", |s| {
        phase(s) == "aborted" && s.routes.is_empty()
    });
    assert!(routes().is_empty());
    for _ in 0..10 {
        assert_eq!(marked("always"), "blue");
    }
}
