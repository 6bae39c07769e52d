//! The embedded router against real HTTP backends on 127.0.0.1: splits, weight changes under load, routes and sticky users, metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use canaryd::core::model::{self, Sticky, Traffic, Weight};
use canaryd::core::spec::{RouterKind, RouterSpec};
use canaryd::edge::router::embedded::{EmbeddedRouter, QueryError};
use canaryd::edge::router::{Driver, RouterError};
use tokio_util::sync::CancellationToken;

use crate::support::backends::{Backends, Server};
use crate::support::observe::{blue_green, observe_all_checked, services, weights_of};
use crate::support::who::marked_and_sticky;

const MINUTE: Duration = Duration::from_secs(60);

/// A router in front of `backends`, named as they are; it stops with `stop`.
async fn router(backends: &Backends, stop: &CancellationToken) -> EmbeddedRouter {
    let backends: BTreeMap<String, String> = backends
        .upstreams()
        .iter()
        .map(|(name, addr)| (name.clone(), format!("http://{addr}")))
        .collect();
    EmbeddedRouter::start(
        "edge",
        "127.0.0.1:0",
        backends,
        &Default::default(),
        stop.clone(),
    )
    .await
    .unwrap()
}

fn traffic(weights: &[(&str, u8)]) -> Traffic {
    Traffic::of(weights).unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends one GET with `host` as Host header; returns the status and the backend that answered.
async fn get(c: &reqwest::Client, addr: SocketAddr, host: &str) -> (u16, String) {
    let r = c
        .get(format!("http://{addr}/hello?x=1"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let backend = r
        .headers()
        .get("x-canaryd-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), backend)
}

/// Sends `n` requests one after another; returns how many each backend answered.
async fn send(router: &EmbeddedRouter, host: &str, n: usize) -> BTreeMap<String, usize> {
    let c = client();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (_, backend) = get(&c, router.local_addr(), host).await;
        *counts.entry(backend).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_requests_between_backends() {
    let stop = CancellationToken::new();
    let backends = Backends::start(&[
        Server::new("stable"),
        Server::new("canary"),
        Server::new("old"),
    ])
    .await;
    let r = router(&backends, &stop).await;
    assert!(r.observe("shop").backends.is_empty());

    let t = traffic(&[("stable", 80), ("canary", 20), ("old", 0)]);
    r.apply("shop", &t).unwrap();
    let observed = r.observe("shop");
    assert_eq!(observed.backends["stable"], 80);
    assert_eq!(observed.backends["canary"], 20);
    assert_eq!(observed.backends["old"], 0);

    let counts = send(&r, "shop", 1000).await;
    println!("80/20/0 over 1000 requests: {counts:?}");
    // Binomial(1000, 0.2): sd ≈ 12.6; 5 sd either side.
    let canary = counts.get("canary").copied().unwrap_or(0);
    assert!((137..=263).contains(&canary), "{counts:?}");
    assert_eq!(counts.get("stable").copied().unwrap_or(0) + canary, 1000);
    assert!(!counts.contains_key("old"), "{counts:?}");

    r.apply("shop", &traffic(&[("canary", 100)])).unwrap();
    assert_eq!(
        r.observe("shop").backends,
        BTreeMap::from([("canary".to_string(), 100)]),
        "a set, never an add"
    );
    let counts = send(&r, "shop", 200).await;
    assert_eq!(counts, BTreeMap::from([("canary".to_string(), 200)]));

    let err = r
        .apply("shop", &traffic(&[("canary", 50), ("nope", 50)]))
        .unwrap_err();
    assert!(matches!(err, RouterError::Unknown { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(r.observe("shop").backends["canary"], 100, "unchanged");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_all_reads_every_service_as_observe_does() {
    let stop = CancellationToken::new();
    // Weights are read, never sent through: nothing needs to listen.
    let backends =
        Backends::start(&[Server::new("blue").down(), Server::new("green").down()]).await;
    let r = router(&backends, &stop).await;
    for (service, green) in [("shop", 10), ("search", 65), ("profile", 100)] {
        r.apply(
            service,
            &traffic(&[("blue", 100 - green), ("green", green)]),
        )
        .unwrap();
    }
    let driver = Driver::Embedded(r.clone());
    let asked = services(&["shop", "search", "profile", "nope"]);
    let all = observe_all_checked!(driver, &asked);
    assert_eq!(weights_of(&all, "shop"), &blue_green(90, 10));
    assert_eq!(weights_of(&all, "search"), &blue_green(35, 65));
    assert_eq!(weights_of(&all, "profile"), &blue_green(0, 100));
    // The embedded router has every service: one never set only has no weights yet.
    assert_eq!(weights_of(&all, "nope"), &BTreeMap::new());
    // Nothing asked, nothing read.
    assert!(driver.observe_all(&[]).await.unwrap().is_empty());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_dropped_while_weights_change() {
    const TOTAL: usize = 3000;
    const CLIENTS: usize = 8;
    let stop = CancellationToken::new();
    let backends = Backends::start(&[Server::new("stable"), Server::new("canary")]).await;
    let r = router(&backends, &stop).await;
    r.apply("shop", &traffic(&[("stable", 100), ("canary", 0)]))
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let changes = {
        let (r, done) = (r.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            for w in [0u8, 10, 25, 50, 100, 50, 25, 10].into_iter().cycle() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                r.apply("shop", &traffic(&[("stable", 100 - w), ("canary", w)]))
                    .unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };

    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (issued, addr) = (issued.clone(), r.local_addr());
        clients.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut bad) = (0usize, Vec::new());
            let mut seen = BTreeMap::<String, usize>::new();
            while issued.fetch_add(1, Ordering::SeqCst) < TOTAL && Instant::now() < deadline {
                match c.get(format!("http://{addr}/")).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        ok += 1;
                        let body = resp.text().await.unwrap();
                        *seen.entry(body).or_default() += 1;
                    }
                    Ok(resp) => bad.push(resp.status().to_string()),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (ok, bad, seen)
        }));
    }
    let (mut ok, mut bad, mut seen) = (0, Vec::new(), BTreeMap::<String, usize>::new());
    for c in clients {
        let (o, b, s) = c.await.unwrap();
        ok += o;
        bad.extend(b);
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
    }
    done.store(true, Ordering::SeqCst);
    let changes = changes.await.unwrap();
    println!(
        "weight changes: {changes}; requests answered 200: {ok}; dropped or failed: {}; by backend: {seen:?}",
        bad.len()
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert!(ok > 0);
    if Instant::now() < deadline {
        assert_eq!(ok, TOTAL);
    }
    assert!(changes > 10, "weights changed only {changes} times");
    assert_eq!(seen.len(), 2, "both backends served: {seen:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_measure_one_backend_over_a_window() {
    let stop = CancellationToken::new();
    let backends = Backends::start(&[
        Server::new("stable"),
        Server::new("canary")
            .failing(0.2)
            .latency(Duration::from_millis(20))
            .latency_every(10),
    ])
    .await;
    let r = router(&backends, &stop).await;
    r.apply("shop", &traffic(&[("stable", 0), ("canary", 100)]))
        .unwrap();
    assert_eq!(
        r.query("shop", "canary", "error_rate", MINUTE).unwrap(),
        None
    );

    let c = client();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..500 {
        match get(&c, r.local_addr(), "shop").await.0 {
            200 => ok += 1,
            500 => failed += 1,
            s => panic!("status {s}"),
        }
    }
    assert_eq!((ok, failed), (400, 100));

    let q = |name: &str| r.query("shop", "canary", name, MINUTE).unwrap();
    let count = q("request_count").unwrap();
    let errors = q("error_rate").unwrap();
    let success = q("success_rate").unwrap();
    let p99 = q("latency_p99_ms").unwrap();
    let rate = q("request_rate").unwrap();
    println!(
        "count {count}, error_rate {errors}, success_rate {success}, p99 {p99} ms, rate {rate}/s"
    );
    assert_eq!(count, 500.0);
    assert!((errors - 0.2).abs() < 0.02, "{errors}");
    assert!((success - (1.0 - errors)).abs() < 1e-9, "{success}");
    // One request in ten takes at least 20 ms, so the 99th percentile lies in a bucket above
    // 10 ms (which one depends on how busy the machine is).
    assert!(p99 > 10.0 && p99 < 1000.0, "{p99}");
    assert!((rate - 500.0 / 60.0).abs() < 1e-9, "{rate}");

    // No requests: no data, for a backend without traffic and for an unknown service.
    assert_eq!(q_none(&r, "shop", "stable"), None);
    assert_eq!(q_none(&r, "blog", "canary"), None);
    let err = r.query("shop", "canary", "p50", MINUTE).unwrap_err();
    assert!(matches!(err, QueryError::UnknownQuery(_)));
    let msg = err.to_string();
    assert!(msg.contains("p50") && msg.contains("success_rate"), "{msg}");
    stop.cancel();
}

fn q_none(r: &EmbeddedRouter, service: &str, backend: &str) -> Option<f64> {
    r.query(service, backend, "success_rate", MINUTE).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_counted_as_5xx() {
    let stop = CancellationToken::new();
    let backends = Backends::start(&[Server::new("gone").down()]).await;
    let r = router(&backends, &stop).await;
    r.apply("shop", &traffic(&[("gone", 100)])).unwrap();
    let (status, backend) = get(&client(), r.local_addr(), "shop").await;
    assert_eq!((status, backend.as_str()), (502, "gone"));
    let q = |name: &str| r.query("shop", "gone", name, MINUTE).unwrap();
    assert_eq!(q("request_count"), Some(1.0));
    assert_eq!(q("error_rate"), Some(1.0));
    let mut text = String::new();
    r.render_metrics(&mut text);
    assert!(
        text.contains(
            "canaryd_embedded_requests_total{router=\"edge\",service=\"shop\",backend=\"gone\",code_class=\"5xx\"} 1\n"
        ),
        "{text}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_header_picks_the_service() {
    let stop = CancellationToken::new();
    let backends = Backends::start(&[Server::new("a"), Server::new("b")]).await;
    let r = router(&backends, &stop).await;
    let (c, addr) = (client(), r.local_addr());
    assert_eq!(get(&c, addr, "shop").await.0, 503, "no weights set");

    r.apply("shop", &traffic(&[("a", 100)])).unwrap();
    assert_eq!(
        get(&c, addr, "anything").await,
        (200, "a".into()),
        "the only service"
    );

    r.apply("blog", &traffic(&[("b", 100)])).unwrap();
    assert_eq!(get(&c, addr, "shop").await, (200, "a".into()));
    assert_eq!(get(&c, addr, "shop:8080").await, (200, "a".into()));
    assert_eq!(get(&c, addr, "blog:1234").await, (200, "b".into()));
    assert_eq!(
        get(&c, addr, "other").await.0,
        503,
        "two services, neither matches"
    );

    r.apply("shop", &traffic(&[("a", 0), ("b", 0)])).unwrap();
    assert_eq!(get(&c, addr, "shop").await.0, 503, "all weights 0");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_metrics_exposes_counters_and_histograms() {
    let stop = CancellationToken::new();
    let backends = Backends::start(&[Server::new("a"), Server::new("b").failing(1.0)]).await;
    let r = router(&backends, &stop).await;
    r.apply("shop", &traffic(&[("a", 100), ("b", 0)])).unwrap();
    send(&r, "shop", 10).await;
    r.apply("shop", &traffic(&[("a", 0), ("b", 100)])).unwrap();
    send(&r, "shop", 5).await;

    let mut text = String::new();
    r.render_metrics(&mut text);
    let families = [
        "canaryd_embedded_requests_total counter",
        "canaryd_embedded_request_duration_seconds histogram",
        "canaryd_embedded_client_failures_total counter",
        "canaryd_embedded_listener_events_total counter",
        "canaryd_embedded_listener_open_connections gauge",
    ];
    for family in families {
        assert_eq!(
            text.matches(&format!("# TYPE {family}\n")).count(),
            1,
            "{text}"
        );
    }
    assert_eq!(text.matches("# HELP ").count(), families.len(), "{text}");
    let a = "router=\"edge\",service=\"shop\",backend=\"a\"";
    let b = "router=\"edge\",service=\"shop\",backend=\"b\"";
    for line in [
        format!("canaryd_embedded_requests_total{{{a},code_class=\"2xx\"}} 10"),
        format!("canaryd_embedded_requests_total{{{a},code_class=\"5xx\"}} 0"),
        format!("canaryd_embedded_requests_total{{{b},code_class=\"5xx\"}} 5"),
        format!("canaryd_embedded_requests_total{{{b},code_class=\"2xx\"}} 0"),
        format!("canaryd_embedded_request_duration_seconds_bucket{{{a},le=\"+Inf\"}} 10"),
        format!("canaryd_embedded_request_duration_seconds_count{{{a}}} 10"),
        format!("canaryd_embedded_request_duration_seconds_count{{{b}}} 5"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    assert!(text.contains(&format!(
        "canaryd_embedded_request_duration_seconds_bucket{{{a},le=\"0.001\"}} "
    )));
    assert!(text.contains(&format!(
        "canaryd_embedded_request_duration_seconds_sum{{{a}}} "
    )));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting() {
    let stop = CancellationToken::new();
    let backends = Backends::start(&[Server::new("a")]).await;
    let r = router(&backends, &stop).await;
    r.apply("shop", &traffic(&[("a", 100)])).unwrap();
    assert_eq!(get(&client(), r.local_addr(), "shop").await.0, 200);
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client()
        .get(format!("http://{}/", r.local_addr()))
        .send()
        .await;
    assert!(err.is_err(), "still answering after shutdown: {err:?}");
}

/// Service `shop` at `canary` percent, keyed by `X-User-Id`, with the marked group
/// (`X-Canary: always`) routed to the canary.
fn sticky_at(canary: u8) -> Traffic {
    marked_and_sticky(
        traffic(&[("stable", 100 - canary), ("canary", canary)]),
        "canary",
    )
}

/// What one client saw in one pass over its users: the epochs (see the test) at its start
/// and end, each user's backend, and the backends of the marked requests.
struct Round {
    start: usize,
    end: usize,
    users: Vec<(usize, String)>,
    marked: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_only_move_onto_the_canary_and_the_marked_group_follows_its_route() {
    const USERS: usize = 2_000;
    const CLIENTS: usize = 8;
    /// One marked request every this many users.
    const MARK_EVERY: usize = 10;
    /// The epochs: routes and sticky users at 0, 10, 25, 50, 100; then an abort.
    const WEIGHTS: [u8; 5] = [0, 10, 25, 50, 100];
    const ABORT: usize = WEIGHTS.len();
    let stop = CancellationToken::new();
    let backends = Backends::start(&[Server::new("stable"), Server::new("canary")]).await;
    let r = router(&backends, &stop).await;
    r.apply("shop", &sticky_at(0)).unwrap();
    let observed = r.observe("shop");
    assert_eq!(
        (&observed.routes, &observed.sticky),
        (&sticky_at(0).routes, &sticky_at(0).sticky),
        "observe reports the routes and the key as set"
    );

    // Clients pass over their users again and again; a pass that starts and ends in the same
    // epoch saw one table throughout (a table is set before its epoch is published), the
    // others straddle a change.
    let epoch = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let clean: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let (epoch, finished, clean, addr) = (
            epoch.clone(),
            finished.clone(),
            clean.clone(),
            r.local_addr(),
        );
        clients.push(tokio::spawn(async move {
            let c = client();
            let (mut rounds, mut failed) = (Vec::new(), Vec::new());
            let get = async |headers: &[(&str, &str)]| -> Result<String, String> {
                let mut req = c.get(format!("http://{addr}/")).header("host", "shop");
                for (name, value) in headers {
                    req = req.header(*name, *value);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let backend = resp
                    .headers()
                    .get("x-canaryd-backend")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let status = resp.status();
                resp.bytes().await.map_err(|e| e.to_string())?;
                if status != 200 {
                    return Err(format!("{status} from `{backend}`"));
                }
                Ok(backend)
            };
            while !finished.load(Ordering::SeqCst) {
                let start = epoch.load(Ordering::SeqCst);
                let (mut users, mut marked) = (Vec::new(), Vec::new());
                for u in (k..USERS).step_by(CLIENTS) {
                    let user = format!("user-{u}");
                    match get(&[("x-user-id", &user)]).await {
                        Ok(b) => users.push((u, b)),
                        Err(e) => failed.push(format!("{user}: {e}")),
                    }
                    if u % MARK_EVERY == 0 {
                        let tester = format!("tester-{u}");
                        match get(&[("x-user-id", &tester), ("x-canary", "always")]).await {
                            Ok(b) => marked.push(b),
                            Err(e) => failed.push(format!("{tester}: {e}")),
                        }
                    }
                }
                let end = epoch.load(Ordering::SeqCst);
                if start == end {
                    clean[k].fetch_max(start + 1, Ordering::SeqCst);
                }
                rounds.push(Round {
                    start,
                    end,
                    users,
                    marked,
                });
            }
            (rounds, failed)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let wait_clean = async |e: usize| {
        while clean.iter().any(|c| c.load(Ordering::SeqCst) <= e) {
            assert!(Instant::now() < deadline, "epoch {e}: clients too slow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    wait_clean(0).await;
    for (e, w) in WEIGHTS.iter().enumerate().skip(1) {
        r.apply("shop", &sticky_at(*w)).unwrap();
        epoch.store(e, Ordering::SeqCst);
        wait_clean(e).await;
    }
    r.apply("shop", &traffic(&[("stable", 100), ("canary", 0)]))
        .unwrap();
    let observed = r.observe("shop");
    assert!(observed.routes.is_empty() && observed.sticky.is_none());
    epoch.store(ABORT, Ordering::SeqCst);
    wait_clean(ABORT).await;
    finished.store(true, Ordering::SeqCst);

    let (mut rounds, mut failed) = (Vec::new(), Vec::new());
    for (k, c) in clients.into_iter().enumerate() {
        let (r, f) = c.await.unwrap();
        rounds.extend(r.into_iter().map(|r| (k, r)));
        failed.extend(f);
    }
    let requests: usize = rounds
        .iter()
        .map(|(_, r)| r.users.len() + r.marked.len())
        .sum();
    println!(
        "{requests} requests in {} passes, {} across a change; failed: {}",
        rounds.len(),
        rounds.iter().filter(|(_, r)| r.start != r.end).count(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );

    // Users: in time order per user (each user is one client's, passed in order), never from
    // the canary back to stable while the weight grows.
    let mut on_canary_since = BTreeMap::<usize, usize>::new();
    let mut moved_back = Vec::new();
    for (_, round) in rounds.iter().filter(|(_, r)| r.end < ABORT) {
        for (u, backend) in &round.users {
            match (backend.as_str(), on_canary_since.get(u)) {
                ("canary", None) => {
                    on_canary_since.insert(*u, round.start);
                }
                ("stable", Some(since)) => moved_back.push((*u, *since, round.start)),
                ("canary" | "stable", _) => {}
                (other, _) => panic!("user-{u} answered by `{other}`"),
            }
        }
    }
    assert!(moved_back.is_empty(), "back to stable: {moved_back:?}");

    // Each epoch's clean passes: every user on the side the formula says, the share within 3
    // points of the weight; marked requests on the canary until the abort, never after.
    for (e, w) in WEIGHTS.iter().enumerate() {
        let mut side = BTreeMap::<usize, &str>::new();
        for (_, round) in rounds.iter().filter(|(_, r)| (r.start, r.end) == (e, e)) {
            for (u, backend) in &round.users {
                let was = side.insert(*u, backend.as_str());
                assert!(
                    was.is_none_or(|b| b == backend),
                    "user-{u} changed side at {w}"
                );
            }
        }
        assert_eq!(side.len(), USERS, "epoch {e}: every user seen");
        let canary = side.values().filter(|b| **b == "canary").count();
        let share = 100.0 * canary as f64 / USERS as f64;
        println!("weight {w:>3}: {canary} of {USERS} users on the canary ({share:.2} %)");
        assert!(
            (share - f64::from(*w)).abs() <= 3.0,
            "{share} % at weight {w}"
        );
        for (u, backend) in &side {
            let want = if model::on_canary(&format!("user-{u}"), Weight::new((*w).into()).unwrap())
            {
                "canary"
            } else {
                "stable"
            };
            assert_eq!(*backend, want, "user-{u} at {w}");
        }
    }
    let marked = |keep: &dyn Fn(&Round) -> bool| -> BTreeMap<&str, usize> {
        let mut seen = BTreeMap::new();
        for (_, round) in rounds.iter().filter(|(_, r)| keep(r)) {
            for b in &round.marked {
                *seen.entry(b.as_str()).or_default() += 1;
            }
        }
        seen
    };
    let before = marked(&|r| r.end < ABORT);
    assert_eq!(before.keys().collect::<Vec<_>>(), [&"canary"], "{before:?}");
    let at_zero = marked(&|r| r.end == 0);
    assert!(at_zero.get("canary").is_some_and(|n| *n > 0), "{at_zero:?}");
    let after = marked(&|r| r.start == ABORT);
    assert_eq!(after.keys().collect::<Vec<_>>(), [&"stable"], "{after:?}");
    let users_after: BTreeMap<&str, usize> = rounds
        .iter()
        .filter(|(_, r)| r.start == ABORT)
        .flat_map(|(_, r)| &r.users)
        .fold(BTreeMap::new(), |mut m, (_, b)| {
            *m.entry(b.as_str()).or_default() += 1;
            m
        });
    assert_eq!(
        users_after.keys().collect::<Vec<_>>(),
        [&"stable"],
        "{users_after:?}"
    );
    stop.cancel();
}

/// Sends a GET to `shop` with `headers`; returns the backend, the `Set-Cookie` values and the
/// `x-canaryd-side` lines the backend echoed.
async fn echoed(
    c: &reqwest::Client,
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> (String, Vec<String>, Vec<String>) {
    let mut req = c.get(format!("http://{addr}/")).header("host", "shop");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let backend = resp.headers()["x-canaryd-backend"]
        .to_str()
        .unwrap()
        .to_string();
    let cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let body = resp.text().await.unwrap();
    let sides = body
        .lines()
        .filter_map(|l| l.strip_prefix("x-canaryd-side: "))
        .map(str::to_string)
        .collect();
    (backend, cookies, sides)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_keeps_a_user_on_one_side_and_the_side_reaches_the_backend() {
    const NEW_USERS: usize = 40;
    const AGAIN: usize = 10;
    let stop = CancellationToken::new();
    let backends = Backends::start(&[
        Server::new("stable").echo_headers(),
        Server::new("canary").echo_headers(),
    ])
    .await;
    let r = router(&backends, &stop).await;
    let mut t = sticky_at(50);
    t.sticky = Some(Sticky::Cookie("canaryd-user".to_string()));
    r.apply("shop", &t).unwrap();
    assert_eq!(r.observe("shop").sticky, t.sticky);
    let (c, addr) = (client(), r.local_addr());
    let forged = ("x-canaryd-side", "shop=canary");
    let mut sides = BTreeMap::<String, usize>::new();
    for _ in 0..NEW_USERS {
        // The first answer sets the cookie, and the request went where the cookie says.
        let (backend, cookies, side) = echoed(&c, addr, &[("cookie", "theme=dark"), forged]).await;
        let [cookie] = &cookies[..] else {
            panic!("one cookie for a user without one: {cookies:?}")
        };
        let id = cookie
            .strip_prefix("canaryd-user=")
            .and_then(|c| c.strip_suffix("; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"))
            .unwrap_or_else(|| panic!("{cookie}"));
        let want = if model::on_canary(id, Weight::new(50).unwrap()) {
            "canary"
        } else {
            "stable"
        };
        assert_eq!(backend, want, "{cookie}");
        assert_eq!(
            side,
            [format!("shop={backend}")],
            "the client's side is replaced"
        );
        // With it: the same side every time, and no new cookie.
        let jar = format!("theme=dark; canaryd-user={id}");
        for i in 0..AGAIN {
            let headers: &[(&str, &str)] = if i % 2 == 0 {
                &[("cookie", &jar), forged]
            } else {
                &[("cookie", &jar)]
            };
            let again = echoed(&c, addr, headers).await;
            assert_eq!(again, (backend.clone(), vec![], side.clone()), "{jar}");
        }
        // A route wins over the cookie, and marks the request's side as the canary's.
        let routed = echoed(&c, addr, &[("cookie", &jar), ("x-canary", "always")]).await;
        assert_eq!(
            routed,
            (
                "canary".to_string(),
                vec![],
                vec!["shop=canary".to_string()]
            )
        );
        *sides.entry(backend).or_default() += 1;
    }
    println!("{NEW_USERS} new users at 50 %: {sides:?}");
    assert_eq!(sides.len(), 2, "both sides drawn: {sides:?}");
    stop.cancel();
}

#[tokio::test]
async fn routers_that_take_weights_alone_refuse_routes_and_sticky_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let backends = |scheme: &str| {
        BTreeMap::from([
            ("stable".to_string(), format!("{scheme}127.0.0.1:1")),
            ("canary".to_string(), format!("{scheme}127.0.0.1:2")),
        ])
    };
    // Nothing listens at any of these: an attempt to reach the router would be a different
    // error (unreachable), and no file is written.
    // HAProxy routes and sticks (router_haproxy's tests); the others refuse.
    let specs = [
        RouterSpec::Traefik {
            api: "http://127.0.0.1:1".to_string(),
            dynamic_file: path("dynamic.yaml"),
            backends: backends("http://"),
        },
        RouterSpec::Caddy {
            admin: "http://127.0.0.1:1".to_string(),
            backends: backends(""),
        },
        RouterSpec::Nginx {
            upstream_file: path("upstreams.conf"),
            config: path("nginx.conf"),
            backends: backends(""),
        },
        RouterSpec::GatewayApi {
            server: "http://127.0.0.1:1".to_string(),
            namespace: "default".to_string(),
            token_file: None,
        },
    ];
    let mut sticky_only = traffic(&[("stable", 90), ("canary", 10)]);
    sticky_only.sticky = Some(Sticky::Cookie("uid".to_string()));
    let mut routes_only = sticky_at(10);
    routes_only.sticky = None;
    for spec in &specs {
        let kind = spec.kind().as_str();
        let driver = Driver::connect("edge", spec).unwrap();
        let routes = "header and cookie routes";
        let sticky = "sticky users";
        let (can_route, can_stick) = (
            RouterKind::those_that(RouterKind::can_route),
            RouterKind::those_that(RouterKind::can_stick),
        );
        // HAProxy takes both and a Gateway API router routes (their own tests show how).
        let refused: &[(&Traffic, &str, &String)] =
            match (spec.kind().can_route(), spec.kind().can_stick()) {
                (true, true) => &[],
                (true, false) => &[(&sticky_only, sticky, &can_stick)],
                _ => &[
                    (&sticky_at(10), routes, &can_route),
                    (&sticky_only, sticky, &can_stick),
                    (&routes_only, routes, &can_route),
                ],
            };
        for (t, what, can) in refused {
            let err = driver.apply("shop", t).await.unwrap_err();
            assert!(matches!(err, RouterError::Setup { .. }), "{kind}: {err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "router `edge` cannot be used: {what} are not supported by router kind \
                     `{kind}` yet; routers that can: {can}"
                )
            );
        }
        // Weights alone still go to the router (which is not there, or has no configuration).
        let err = driver
            .apply("shop", &traffic(&[("stable", 90), ("canary", 10)]))
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("not supported"), "{kind}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file written"
    );
}
