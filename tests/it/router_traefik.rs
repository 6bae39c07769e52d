//! The Traefik driver against a real `traefik` on 127.0.0.1 with two real backends, blue and green.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use canaryd::core::model::{Criterion, Field, Match, Observed, Pattern, Route, Traffic, Weight};
use canaryd::core::spec::RouterSpec;
use canaryd::core::validate;
use canaryd::edge::backend::{BACKEND_HEADER, LoadConfig, load};
use canaryd::edge::router::traefik::TraefikRouter;
use canaryd::edge::router::{Driver, RouterError};

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

/// Polls `observe` of `service` until it reports `want`'s percentages and routes; the last
/// observation on timeout.
/// The routes Traefik reports for the service once they differ from `routes` (a hand edit
/// read); Traefik may read a file half written, a transient error read again.
async fn routes_unlike(f: &Fixture, routes: &[Route], what: &str) -> Vec<Route> {
    let start = Instant::now();
    loop {
        if let Ok(o) = f.traefik.router.observe(SERVICE).await
            && o.routes != routes
        {
            return o.routes;
        }
        assert!(start.elapsed() < SETTLE, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn settle(router: &TraefikRouter, service: &str, want: &Traffic) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < SETTLE {
        match router.observe(service).await {
            Ok(o)
                if o.percentages().as_ref() == Some(&want.backends) && o.routes == want.routes =>
            {
                return Ok(start.elapsed());
            }
            Ok(o) => last = format!("{:?} {:?}", o.backends, o.routes),
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

// ---------------------------------------------------------------------------------------------
// Who sees the canary: routes as routers in front of the user's, side header, no sticky users.
// ---------------------------------------------------------------------------------------------

/// Blue and green answering with the headers they were sent (the backend's name in
/// `x-backend`), behind a Traefik whose user router sends `/` to `checkout@file`.
async fn echoing() -> Fixture {
    let backends = Backends::start(&[
        Server::new("blue").echo_headers(),
        Server::new("green").echo_headers(),
    ])
    .await;
    let traefik = Traefik::start(SERVICE, backends.upstreams()).await.unwrap();
    Fixture {
        traefik,
        _backends: backends,
    }
}

fn criterion(on: Field, name: &str, value: Pattern) -> Criterion {
    Criterion {
        on,
        name: name.to_string(),
        value,
    }
}

fn route(name: &str, matches: Vec<Vec<Criterion>>, backend: &str) -> Route {
    Route {
        name: name.to_string(),
        matches: matches.into_iter().map(|all| Match { all }).collect(),
        backend: backend.to_string(),
    }
}

/// `blue`/`green` weights with `routes` before them, green the canary.
fn routed(blue: u8, green: u8, routes: Vec<Route>) -> Traffic {
    Traffic {
        routes,
        canary: Some("green".to_string()),
        ..traffic(blue, green)
    }
}

/// The marked group (`X-Canary: always`) to the canary.
fn marked() -> Route {
    route(
        "marked",
        vec![vec![criterion(
            Field::Header,
            "X-Canary",
            Pattern::Exact("always".to_string()),
        )]],
        "green",
    )
}

async fn apply_routed(f: &Fixture, want: &Traffic) -> Duration {
    let start = Instant::now();
    f.traefik
        .router
        .apply(SERVICE, want)
        .await
        .unwrap_or_else(|e| panic!("apply: {e}\n{}", f.traefik.log()));
    settle(&f.traefik.router, SERVICE, want)
        .await
        .unwrap_or_else(|last| panic!("{want:?} not read back; last: {last}\n{}", f.traefik.log()));
    start.elapsed()
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The backend that answered one GET of `path_and_query` with `headers`, and the headers it
/// was sent (lowercase names); an error for anything but a 200.
async fn answered(
    c: &reqwest::Client,
    frontend: std::net::SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<(String, String), String> {
    let mut req = c.get(format!("http://{frontend}{path_and_query}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let backend = resp
        .headers()
        .get(BACKEND_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status} from `{backend}`"));
    }
    Ok((backend, body))
}

/// The `x-canaryd-side` values a backend was sent, from its echo.
fn sides(echo: &str) -> Vec<&str> {
    echo.lines()
        .filter_map(|l| l.strip_prefix("x-canaryd-side: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_requests_reach_the_canary_at_weight_0_and_none_after_an_abort() {
    const USERS: usize = 2_000;
    const CLIENTS: usize = 8;
    const MARK_EVERY: usize = 10;
    let f = Arc::new(echoing().await);
    apply_routed(&f, &traffic(100, 0)).await;
    let c = http_client();

    // A load of users and marked requests all along, while the routes come and go.
    let loading = Arc::new(AtomicBool::new(true));
    let background = {
        let (c, frontend, loading) = (c.clone(), f.traefik.frontend, loading.clone());
        tokio::spawn(async move {
            let (mut sent, mut failed) = (0u64, Vec::new());
            let mut u = 0usize;
            while loading.load(Ordering::SeqCst) {
                let user = format!("u{}", u % USERS);
                let mut headers = vec![("X-User-Id", user.as_str())];
                if u.is_multiple_of(MARK_EVERY) {
                    headers.push(("X-Canary", "always"));
                }
                sent += 1;
                if let Err(e) = answered(&c, frontend, "/", &headers).await {
                    failed.push(format!("{user}: {e}"));
                }
                u += 1;
            }
            (sent, failed)
        })
    };

    let with_route = routed(100, 0, vec![marked()]);
    let abort = traffic(100, 0);
    let mut changes = 0;
    let mut took = Vec::new();
    for (name, t) in [
        ("0 (route only)", &with_route),
        ("abort", &abort),
        ("0 (route only)", &with_route),
        ("abort", &abort),
    ] {
        took.push(apply_routed(&f, t).await);
        changes += 1;
        let mut tasks = Vec::new();
        for k in 0..CLIENTS {
            let (c, frontend) = (c.clone(), f.traefik.frontend);
            tasks.push(tokio::spawn(async move {
                let (mut users, mut marked, mut failed) = (Vec::new(), Vec::new(), Vec::new());
                for u in (k..USERS).step_by(CLIENTS) {
                    let user = format!("u{u}");
                    match answered(&c, frontend, "/", &[("X-User-Id", &user)]).await {
                        Ok(answer) => users.push(answer),
                        Err(e) => failed.push(format!("{user}: {e}")),
                    }
                    if u.is_multiple_of(MARK_EVERY) {
                        let headers = [("X-User-Id", user.as_str()), ("X-Canary", "always")];
                        match answered(&c, frontend, "/", &headers).await {
                            Ok(answer) => marked.push(answer),
                            Err(e) => failed.push(format!("{user} marked: {e}")),
                        }
                    }
                }
                (users, marked, failed)
            }));
        }
        let (mut users_on_canary, mut marked_total, mut marked_canary) = (0, 0, 0);
        for task in tasks {
            let (users, marked, failed) = task.await.unwrap();
            assert!(failed.is_empty(), "{name}: failed requests: {failed:?}");
            for (backend, echo) in &users {
                users_on_canary += usize::from(backend == "green");
                // The weighted split cannot mark its requests (see the driver's docs).
                assert!(sides(echo).is_empty(), "{name}: {echo}");
            }
            for (backend, echo) in &marked {
                marked_total += 1;
                if backend == "green" {
                    marked_canary += 1;
                    assert_eq!(sides(echo), ["checkout=canary"], "{name}: {echo}");
                }
            }
        }
        println!(
            "traefik {name}: {users_on_canary} of {USERS} users and {marked_canary} of \
             {marked_total} marked requests on the canary"
        );
        assert_eq!(
            users_on_canary, 0,
            "{name}: weight 0 sent users to the canary"
        );
        if name == "abort" {
            assert_eq!(
                marked_canary, 0,
                "abort: marked requests still reach the canary"
            );
        } else {
            assert_eq!(
                marked_canary, marked_total,
                "{name}: a marked request missed it"
            );
        }
    }
    // More changes under the load, without waiting between them.
    for i in 0..6 {
        let t = if i % 2 == 0 { &with_route } else { &abort };
        f.traefik.router.apply(SERVICE, t).await.unwrap();
        changes += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    apply_routed(&f, &abort).await;
    loading.store(false, Ordering::SeqCst);
    let (sent, failed) = background.await.unwrap();
    took.sort();
    println!(
        "traefik routes under load: {sent} background requests over {changes} route changes, \
         {} failed; apply + read-back {:?}",
        failed.len(),
        took
    );
    assert!(sent > 100, "too little background load: {sent}");
    assert!(failed.is_empty(), "failed requests: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_are_refused_by_lint_and_by_the_driver() {
    // Lint: header routes are fine on Traefik, sticky users are not.
    let doc = |extra: &str| {
        format!(
            "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {{name: edge}}
spec: {{kind: traefik, api: \"http://127.0.0.1:8080\", dynamicFile: /d/c.yaml, backends: {{blue: \"http://127.0.0.1:9001\", green: \"http://127.0.0.1:9002\"}}}}
---
apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  router: edge
  service: web
  stable: {{name: blue}}
  canary: {{name: green}}
{extra}  steps:
  - setHeaderRoute: {{name: testers, match: [{{headerName: X-Canary, headerValue: {{exact: always}}}}, {{cookies: {{beta: {{prefix: \"on\"}}}}}}]}}
  - setWeight: 10
"
        )
    };
    let (catalog, diags) = validate::validate_texts(&[("rollouts/web.yaml", &doc(""))]);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
    assert_eq!(catalog.rollouts[0].routes_at(0).len(), 1);
    let sticky = doc("  sticky: {header: X-User-Id}\n");
    let (catalog, diags) = validate::validate_texts(&[("rollouts/web.yaml", &sticky)]);
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field, "spec.sticky");
    assert!(
        errors[0]
            .message
            .contains("router kind `traefik` cannot express sticky users"),
        "{:?}",
        errors[0]
    );
    assert!(
        errors[0]
            .help
            .as_deref()
            .unwrap()
            .contains("routers that can: embedded, haproxy"),
        "{:?}",
        errors[0]
    );
    assert!(catalog.invalid.contains_key("web"));

    // The driver, through the daemon's `Driver` and directly: refused before anything changes.
    let f = echoing().await;
    apply_routed(&f, &traffic(90, 10)).await;
    let before = std::fs::read_to_string(&f.traefik.dynamic_file).unwrap();
    let spec = RouterSpec::Traefik {
        api: format!("http://127.0.0.1:{}", f.traefik.api),
        dynamic_file: f.traefik.dynamic_file.display().to_string(),
        backends: f.traefik.backends.clone(),
    };
    let driver = Driver::connect("edge", &spec).unwrap();
    let mut sticky = routed(75, 25, vec![marked()]);
    sticky.sticky = Some(canaryd::core::model::Sticky::Header(
        "X-User-Id".to_string(),
    ));
    let e = driver.apply(SERVICE, &sticky).await.unwrap_err();
    assert!(matches!(e, RouterError::Setup { .. }), "{e:?}");
    assert!(
        e.to_string().contains("sticky users") && e.to_string().contains("embedded, haproxy"),
        "{e}"
    );
    let e = f.traefik.router.apply(SERVICE, &sticky).await.unwrap_err();
    assert!(matches!(e, RouterError::Setup { .. }), "{e:?}");
    assert!(e.to_string().contains("not monotone"), "{e}");
    println!("traefik refuses sticky users: {e}");
    assert_eq!(
        std::fs::read_to_string(&f.traefik.dynamic_file).unwrap(),
        before
    );
    assert_eq!(
        f.traefik.router.observe(SERVICE).await.unwrap(),
        raw(90, 10)
    );
    // Routes alone go through the `Driver`.
    let routes_only = routed(75, 25, vec![marked()]);
    driver.apply(SERVICE, &routes_only).await.unwrap();
    settle(&f.traefik.router, SERVICE, &routes_only)
        .await
        .unwrap_or_else(|last| panic!("not read back; last: {last}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_of_every_kind_are_read_back_as_applied_and_a_hand_edit_is_drift() {
    let f = echoing().await;
    let header = |name: &str, p: Pattern| criterion(Field::Header, name, p);
    let exact = |v: &str| Pattern::Exact(v.to_string());
    let prefix = |v: &str| Pattern::Prefix(v.to_string());
    let regex = |v: &str| Pattern::Regex(v.to_string());
    let routes = vec![
        route(
            "testers",
            vec![
                vec![header("X-Canary", exact("a.b c;d\\e$`"))],
                vec![criterion(Field::Cookie, "beta", prefix("on"))],
                vec![header("x-canary", exact("lower"))],
            ],
            "green",
        ),
        route(
            "qa & co",
            vec![vec![
                header("X-Team", exact("qa")),
                criterion(Field::Query, "v", regex("[0-9]+")),
            ]],
            "green",
        ),
        route(
            "clients",
            vec![
                vec![header("X-Client", prefix("web-"))],
                vec![header("X-Region", regex("eu-(west|north)"))],
                vec![criterion(Field::Cookie, "canary", exact("yes"))],
                // `;` cannot be in a value: that branch fits nothing.
                vec![criterion(Field::Cookie, "tier", regex("g.*d|a;b"))],
            ],
            "green",
        ),
        route(
            "legacy",
            vec![vec![criterion(Field::Query, "app", exact("legacy"))]],
            "blue",
        ),
    ];
    // The user's router is loaded with the weighted service it sends to.
    apply_routed(&f, &traffic(100, 0)).await;
    let t = routed(100, 0, routes.clone());
    let took = apply_routed(&f, &t).await;
    let observed = f.traefik.router.observe(SERVICE).await.unwrap();
    assert_eq!((&observed.routes, &observed.sticky), (&t.routes, &None));
    let all = observe_all_checked!(f.traefik.router, &services(&[SERVICE]));
    assert_eq!(all[SERVICE].as_ref().unwrap().routes, t.routes);
    println!("traefik routes: apply + read-back of four routes {took:?}");

    let c = http_client();
    let to = async |path: &str, headers: &[(&str, &str)]| {
        answered(&c, f.traefik.frontend, path, headers)
            .await
            .unwrap_or_else(|e| panic!("{path} {headers:?}: {e}"))
    };
    // Blue has all the weight: only a route reaches green.
    let green: &[(&str, &[(&str, &str)])] = &[
        ("/", &[("X-Canary", "a.b c;d\\e$`")]),
        ("/", &[("cookie", "a=1; beta=onwards")]),
        ("/", &[("X-CANARY", "lower")]),
        ("/?v=42", &[("X-Team", "qa")]),
        ("/", &[("X-Client", "web-7")]),
        ("/", &[("X-Region", "eu-north")]),
        ("/", &[("cookie", "canary=yes;b=2")]),
        ("/", &[("cookie", "a=1; tier=gold; b=2")]),
        // Routes are tried in order: `testers` before `legacy`, which sends to blue.
        ("/?app=legacy", &[("X-Canary", "lower")]),
        // The side comes from the router, not from the client.
        (
            "/",
            &[("X-Canary", "lower"), ("X-Canaryd-Side", "checkout=stable")],
        ),
    ];
    for (path, headers) in green {
        let (backend, echo) = to(path, headers).await;
        assert_eq!(backend, "green", "{path} {headers:?}");
        assert_eq!(
            sides(&echo),
            ["checkout=canary"],
            "{path} {headers:?}: {echo}"
        );
    }
    let blue: &[(&str, &[(&str, &str)])] = &[
        ("/", &[("X-Canary", "a.b c;d\\e$")]),
        ("/", &[("cookie", "xbeta=on")]),
        ("/", &[("X-Canary", "lowercase")]),
        ("/?v=42", &[]),
        ("/?v=4x", &[("X-Team", "qa")]),
        ("/", &[("X-Client", "app-web-7")]),
        ("/", &[("X-Region", "eu-west-1")]),
        ("/", &[("cookie", "canary=yes2")]),
        // The regex fits the header from `tier=` on, not one cookie's value.
        ("/", &[("cookie", "tier=gx; id=d")]),
        ("/", &[("cookie", "tier=a;b")]),
        ("/?app=legacy2", &[]),
    ];
    for (path, headers) in blue {
        let (backend, echo) = to(path, headers).await;
        assert_eq!(backend, "blue", "{path} {headers:?}");
        assert!(sides(&echo).is_empty(), "{path} {headers:?}: {echo}");
    }
    // The route to stable holds with all the weight on green, and says so.
    let flipped = routed(0, 100, routes.clone());
    apply_routed(&f, &flipped).await;
    let (backend, echo) = to("/?app=legacy", &[]).await;
    assert_eq!(
        (backend.as_str(), sides(&echo)),
        ("blue", vec!["checkout=stable"])
    );
    assert_eq!(to("/?app=modern", &[]).await.0, "green");

    // Applying the same again writes nothing.
    let before = std::fs::read_to_string(&f.traefik.dynamic_file).unwrap();
    f.traefik.router.apply(SERVICE, &flipped).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&f.traefik.dynamic_file).unwrap(),
        before
    );

    // A hand edit of one router's rule is drift; applying again puts it back.
    let edited = before.replacen("lower", "LOWER", 1);
    assert_ne!(edited, before);
    std::fs::write(&f.traefik.dynamic_file, &edited).unwrap();
    let drift = routes_unlike(&f, &flipped.routes, "hand edit not seen").await;
    // Read back as what it now says: a route that differs from the desired one.
    assert_eq!(
        drift[0].matches[2].all[0].value,
        exact("LOWER"),
        "{drift:?}"
    );
    assert_eq!(drift[1..], flipped.routes[1..]);
    apply_routed(&f, &flipped).await;
    // A router removed by hand is drift too.
    let mut doc: serde_json::Value = serde_saphyr::from_str(&before).unwrap();
    let routers = doc
        .pointer_mut("/http/routers")
        .and_then(serde_json::Value::as_object_mut)
        .unwrap();
    let gone = routers
        .keys()
        .find(|k| k.contains(":1:qa%20%26%20co:"))
        .cloned()
        .unwrap();
    routers.remove(&gone);
    std::fs::write(
        &f.traefik.dynamic_file,
        serde_saphyr::to_string(&doc).unwrap(),
    )
    .unwrap();
    let drift = routes_unlike(&f, &flipped.routes, "removed router not seen").await;
    // Route 1 now stands in front of no router at all: it is gone from the read-back.
    assert_eq!(drift.len(), flipped.routes.len() - 1, "{drift:?}");
    apply_routed(&f, &flipped).await;

    // So is a router whose rule still reads right but whose priority was changed by hand.
    let lowered = before.replacen("priority: ", "priority: 1", 1);
    assert_ne!(lowered, before);
    std::fs::write(&f.traefik.dynamic_file, &lowered).unwrap();
    let drift = routes_unlike(&f, &flipped.routes, "priority edit not seen").await;
    let marked: Vec<&str> = drift
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| n.contains("(not as canaryd wrote it: its configuration differs)"))
        .collect();
    assert_eq!(marked.len(), 1, "{drift:?}");
    println!("traefik: a priority edited by hand reads back as {marked:?}");
    apply_routed(&f, &flipped).await;

    // What Traefik cannot hold is refused before anything changes.
    let mut cookie_regex = flipped.clone();
    cookie_regex.routes[0].matches[1].all[0].value = regex(r"on\b");
    let e = f
        .traefik
        .router
        .apply(SERVICE, &cookie_regex)
        .await
        .unwrap_err();
    assert!(matches!(e, RouterError::Setup { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("routers that can: embedded, haproxy"),
        "{e}"
    );
    let mut unweighted = flipped.clone();
    unweighted.backends.remove("blue");
    let e = f
        .traefik
        .router
        .apply(SERVICE, &unweighted)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the weights do not name"), "{e}");
    let mut unknown = flipped.clone();
    unknown.routes[1].backend = "purple".to_string();
    let e = f.traefik.router.apply(SERVICE, &unknown).await.unwrap_err();
    assert!(matches!(e, RouterError::Unknown { .. }), "{e:?}");
    assert_eq!(
        std::fs::read_to_string(&f.traefik.dynamic_file).unwrap(),
        before
    );

    // Apply + read-back of a route change, ten times.
    let mut times = Vec::new();
    for i in 0..10 {
        let mut t = flipped.clone();
        t.routes[3].matches[0].all[0].value = exact(&format!("legacy-{i}"));
        times.push(apply_routed(&f, &t).await);
    }
    times.sort();
    println!(
        "traefik route change apply + read-back over 10 tries: median {:?}, max {:?}",
        times[5], times[9]
    );

    // Clearing: no routes, and canaryd's routers and middlewares are gone from the file.
    apply_routed(&f, &traffic(100, 0)).await;
    let text = std::fs::read_to_string(&f.traefik.dynamic_file).unwrap();
    assert!(!text.contains("canaryd:"), "{text}");
    assert_eq!(to("/", &[("X-Canary", "lower")]).await.0, "blue");
}
