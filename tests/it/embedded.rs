//! The embedded router against real HTTP backends on 127.0.0.1: splits, weight changes under load, metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use canaryd::core::model::Traffic;
use canaryd::edge::router::embedded::{EmbeddedRouter, QueryError};
use canaryd::edge::router::{Driver, RouterError};
use tokio_util::sync::CancellationToken;

use crate::support::backends::{Backends, Server};
use crate::support::observe::{blue_green, observe_all_checked, services, weights_of};

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
