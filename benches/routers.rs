//! The apply + verify round trip of each real router, measured through canaryd's own drivers.
//!
//! For every router installed here (HAProxy, Traefik, Caddy, NGINX) this starts it on
//! 127.0.0.1 in a temp dir in front of two demo backends, `blue` and `green`, then times
//! [`RUNS`] round trips: `driver.apply("checkout", traffic)`, alternating 90/10 and 10/90,
//! then `driver.observe("checkout")` every [`POLL`] (at most [`VERIFY_LIMIT`]) until
//! `observed.percentages()` equals the traffic. One untimed round trip to 10/90 comes first,
//! so every timed one is a real change. What "verify" reads differs per router and is printed
//! with the table: NGINX cannot report weights, so its read back is canaryd's own file.
//!
//! Then the same round trip for a route change ([`ROUTE_RUNS`] runs): the weights stay 90/10
//! while the route `X-Canary: always → green` is set and removed in turn, and verifying waits
//! until the router reports the weights and exactly the routes applied. The routers are started
//! configured for routes as the README says (HAProxy with canaryd's snippet, NGINX proxying to
//! `$canaryd_checkout`); a router that cannot hold routes shows its refusal.
//!
//! Then one more figure: an HAProxy with [`MANY`] backends of two servers each, read whole
//! with one `driver.observe_all(all names)` against one `driver.observe(name)` per backend,
//! [`MANY_RUNS`] times each (the runs alternate), with the median printed.
//!
//! Then what routes and sticky users cost the embedded router: the same load ([`CONNECTIONS`]
//! keep-alive connections, each request carrying `X-User-Id: user-N` of [`LOAD_USERS`] and
//! `X-Beta: gamma-N`, one in [`MARKED_EVERY`] also `X-Canary: always`) against plain weights
//! (blue 90, green 10) and against the same weights with a sticky `X-User-Id` key and two
//! header routes (`X-Canary` exact, `X-Beta` regex `beta-[0-9]+`, so that the regex runs on
//! every request and fits none), [`LOAD_PAIRS`] pairs of [`LOAD_RUN`] runs in alternating order;
//! requests/s and p99 latency by the median of the runs, and the relative cost by the median
//! of the pairs. Client, router and backends share the bench's runtime (2 workers).
//!
//! `cargo bench --bench routers` prints median, p90, min and max per router; nothing here
//! asserts a time. A router whose binary is missing is skipped. Every process is stopped by a
//! drop guard, also when the bench panics. An argument (`cargo bench --bench routers --
//! embedded`) runs only the figures whose name holds it: `apply`, `routes`, `observe_all`,
//! `embedded`.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times real routers with the real clock"
)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use canaryd::core::model::{Criterion, Field, Match, Pattern, Route, Sticky, Traffic};
use canaryd::edge::router::Driver;
use canaryd::edge::router::embedded::EmbeddedRouter;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

#[path = "../tests/it/support/backends.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test harness")]
mod backends;
#[path = "../tests/it/support/net.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test harness")]
mod net;
#[path = "../tests/it/support/rig/mod.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test harness")]
mod rig;

use backends::{Backends, Server};
use rig::Failed;

/// The allocator the binary runs with (src/main.rs), so the embedded figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Timed round trips per router.
const RUNS: usize = 50;
/// Timed round trips per router for a route change.
const ROUTE_RUNS: usize = 20;
/// The pause between two reads while verifying.
const POLL: Duration = Duration::from_millis(5);
/// How long verifying one change may take before the router counts as failed.
const VERIFY_LIMIT: Duration = Duration::from_secs(5);
/// How long one `apply` may take (the drivers bound each request or command themselves).
const APPLY_LIMIT: Duration = Duration::from_secs(10);
/// The service every router is configured with.
const SERVICE: &str = "checkout";
/// Backends of the HAProxy read whole by the `observe_all` figure.
const MANY: usize = 1_000;
/// Timed reads of all [`MANY`] backends, each way.
const MANY_RUNS: usize = 5;
/// How long one read of all [`MANY`] backends may take, either way.
const MANY_LIMIT: Duration = Duration::from_secs(30);

/// Keep-alive connections of the embedded router's load.
const CONNECTIONS: usize = 16;
/// Distinct `X-User-Id`s in the load.
const LOAD_USERS: usize = 2_000;
/// One request in this many carries `X-Canary: always`.
const MARKED_EVERY: usize = 100;
/// One timed run of the load.
const LOAD_RUN: Duration = Duration::from_secs(3);
/// Pairs of runs (plain, routed) per figure.
const LOAD_PAIRS: usize = 5;

/// The routers, in the order they are measured.
#[derive(Clone, Copy)]
enum Kind {
    Haproxy,
    Traefik,
    Caddy,
    Nginx,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Haproxy, Kind::Traefik, Kind::Caddy, Kind::Nginx];

    fn name(self) -> &'static str {
        match self {
            Kind::Haproxy => "haproxy",
            Kind::Traefik => "traefik",
            Kind::Caddy => "caddy",
            Kind::Nginx => "nginx",
        }
    }

    /// The arguments that make the binary print its version (and so prove it runs).
    fn version_args(self) -> &'static [&'static str] {
        match self {
            Kind::Haproxy | Kind::Nginx => &["-v"],
            Kind::Traefik | Kind::Caddy => &["version"],
        }
    }

    /// What `observe` reads, so what a verified round trip means.
    fn verify(self) -> &'static str {
        match self {
            Kind::Haproxy => {
                "`show servers state checkout` on the runtime API (unix socket): the weights HAProxy runs with"
            }
            Kind::Traefik => {
                "GET /api/http/services/checkout@file: the weights Traefik loaded from canaryd's dynamic file (provider throttle 100 ms)"
            }
            Kind::Caddy => {
                "GET /id/checkout on the admin API: the handler config Caddy runs (apply PATCHes it and Caddy reloads)"
            }
            Kind::Nginx => {
                "canaryd's own upstreams.conf read back (NGINX cannot report weights); apply includes `nginx -t` and `nginx -s reload`"
            }
        }
    }
}

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runs = |figure: &str| only.as_deref().is_none_or(|o| figure.contains(o));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime with 2 workers");
    // Stopped when main ends, also on panic (dropped before the runtime).
    let backends = rt.block_on(Backends::start(&[
        Server::new("blue"),
        Server::new("green"),
    ]));

    if runs("apply") {
        apply_table(&rt, &backends, Change::Weights);
    }
    if runs("routes") {
        apply_table(&rt, &backends, Change::Routes);
    }
    if runs("observe_all") {
        observe_all_figure(&rt, &backends);
    }
    if runs("embedded") {
        rt.block_on(embedded_load(&backends));
    }
}

/// What a timed round trip changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// 90/10 and 10/90 in turn.
    Weights,
    /// 90/10 with the route `X-Canary: always → green`, and without it, in turn.
    Routes,
}

impl Change {
    /// The two traffics the round trips alternate between; the second is the warm-up's.
    fn pair(self) -> [Traffic; 2] {
        match self {
            Change::Weights => [traffic(90, 10), traffic(10, 90)],
            Change::Routes => {
                let mut routed = traffic(90, 10);
                routed.routes = vec![Route {
                    name: "marked".to_string(),
                    matches: vec![Match {
                        all: vec![Criterion {
                            on: Field::Header,
                            name: "X-Canary".to_string(),
                            value: Pattern::Exact("always".to_string()),
                        }],
                    }],
                    backend: "green".to_string(),
                }];
                routed.canary = Some("green".to_string());
                [routed, traffic(90, 10)]
            }
        }
    }

    fn runs(self) -> usize {
        match self {
            Change::Weights => RUNS,
            Change::Routes => ROUTE_RUNS,
        }
    }
}

/// The apply + verify round trip of every router installed, for `change`.
fn apply_table(rt: &tokio::runtime::Runtime, backends: &Backends, change: Change) {
    println!();
    match change {
        Change::Weights => println!(
            "canaryd routers: apply + verify round trip, {RUNS} runs each (90/10 <-> 10/90), \
             observe every {POLL:?} until the weights read back (at most {VERIFY_LIMIT:?}); loopback"
        ),
        Change::Routes => println!(
            "canaryd routers: apply + verify round trip of a route change, {ROUTE_RUNS} runs each \
             (90/10 with and without `X-Canary: always -> green`), observe every {POLL:?} until \
             the weights and routes read back (at most {VERIFY_LIMIT:?}); loopback"
        ),
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for kind in Kind::ALL {
        let Some(version) = installed(kind) else {
            notes.push(format!("skipped: {} not installed", kind.name()));
            continue;
        };
        let result = rt.block_on(async {
            let rig = Rig::start(kind, backends, change == Change::Routes)
                .await
                .map_err(|e| e.0)?;
            let times = measure(&rig.driver, change).await;
            // A refusal is the driver's answer, not a fault of the router: no log.
            times.map_err(|e| {
                if e.contains("cannot be used") {
                    e
                } else {
                    format!("{e}\n{}", rig::tail(&rig.log()))
                }
            })
        });
        match result {
            Ok(times) => {
                rows.push(row(kind, &times));
                notes.push(format!(
                    "{} ({version}): verify = {}",
                    kind.name(),
                    kind.verify()
                ));
            }
            Err(e) => notes.push(format!("failed: {}: {e}", kind.name())),
        }
    }

    println!();
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "router", "median", "p90", "min", "max", "observes/run"
    );
    for r in &rows {
        println!("{r}");
    }
    println!();
    for n in &notes {
        println!("{n}");
    }
}

/// One `observe_all` of [`MANY`] HAProxy backends against one `observe` each.
fn observe_all_figure(rt: &tokio::runtime::Runtime, backends: &Backends) {
    println!();
    let Some(version) = installed(Kind::Haproxy) else {
        println!("observe_all figure skipped: haproxy not installed");
        return;
    };
    let figure = rt.block_on(async {
        let names: Vec<String> = (0..MANY).map(|i| format!("shop-{i:04}")).collect();
        // The first is the frontend's, the others beside it, all at blue 100 and green 0.
        let more: Vec<(&str, &[u32])> = names[1..]
            .iter()
            .map(|name| (name.as_str(), &[100, 0][..]))
            .collect();
        let haproxy =
            rig::haproxy::Haproxy::start_with(&names[0], backends.upstreams(), &more).await;
        let haproxy = haproxy.map_err(|e| e.0)?;
        let times = observe_many(&Driver::Haproxy(haproxy.unix()), &names).await;
        times.map_err(|e| format!("{e}\n{}", rig::tail(&haproxy.log())))
    });
    match figure {
        Ok((all, each)) => println!(
            "haproxy ({version}), {MANY} backends of 2 servers, unix socket, median of {MANY_RUNS}:\n\
             \x20 observe_all of all {MANY}: {} (one `show servers state;show backend`)\n\
             \x20 {MANY} observe calls:      {} (one `show servers state <backend>` each)",
            spread(&all),
            spread(&each)
        ),
        Err(e) => println!("observe_all figure failed: {e}"),
    }
}

/// The embedded router's requests/s and p99 under the same load, plain weights against routes
/// and sticky users; printed.
async fn embedded_load(backends: &Backends) {
    let stop = CancellationToken::new();
    let upstreams = backends
        .upstreams()
        .iter()
        .map(|(name, addr)| (name.clone(), format!("http://{addr}")))
        .collect();
    let router = EmbeddedRouter::start(
        "edge",
        "127.0.0.1:0",
        upstreams,
        &Default::default(),
        stop.clone(),
    )
    .await
    .expect("the embedded router starts on 127.0.0.1");
    let plain = traffic(90, 10);
    let mut routed = traffic(90, 10);
    let header = |name: &str, value: Pattern| Match {
        all: vec![Criterion {
            on: Field::Header,
            name: name.to_string(),
            value,
        }],
    };
    routed.routes = vec![
        Route {
            name: "marked".to_string(),
            matches: vec![header("X-Canary", Pattern::Exact("always".to_string()))],
            backend: "green".to_string(),
        },
        Route {
            name: "beta".to_string(),
            matches: vec![header("X-Beta", Pattern::Regex("beta-[0-9]+".to_string()))],
            backend: "green".to_string(),
        },
    ];
    routed.sticky = Some(Sticky::Header("X-User-Id".to_string()));
    routed.canary = Some("green".to_string());

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONNECTIONS)
        .build(connector);
    let url = format!("http://{}/", router.local_addr());
    // Warm-up: connections open, both tables used once.
    for t in [&plain, &routed] {
        router
            .apply(SERVICE, t)
            .expect("the embedded router takes the traffic");
        load(&client, &url, Duration::from_millis(500)).await;
    }
    let (mut runs_plain, mut runs_routed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..LOAD_PAIRS {
        let one = async |t: &Traffic| {
            router
                .apply(SERVICE, t)
                .expect("the embedded router takes the traffic");
            load(&client, &url, LOAD_RUN).await
        };
        let (p, r) = if pair % 2 == 0 {
            let p = one(&plain).await;
            (p, one(&routed).await)
        } else {
            let r = one(&routed).await;
            (one(&plain).await, r)
        };
        ratios.push(r.rps / p.rps);
        runs_plain.push(p);
        runs_routed.push(r);
    }
    stop.cancel();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summary = |runs: &[Load]| {
        (
            median(runs.iter().map(|r| r.rps).collect()),
            median(runs.iter().map(|r| r.p99_ms).collect()),
            runs.iter().map(|r| r.failed).sum::<usize>(),
        )
    };
    let (plain_rps, plain_p99, plain_failed) = summary(&runs_plain);
    let (routed_rps, routed_p99, routed_failed) = summary(&runs_routed);
    let cost = 1.0 - median(ratios.clone());
    println!();
    println!(
        "embedded router, {CONNECTIONS} keep-alive connections, {LOAD_USERS} users, 1 in \
         {MARKED_EVERY} marked; median of {LOAD_PAIRS} runs of {LOAD_RUN:?} each, in alternating order"
    );
    println!(
        "{:<36} {:>12} {:>10} {:>8}",
        "traffic", "requests/s", "p99", "failed"
    );
    for (name, rps, p99, failed) in [
        ("weights 90/10", plain_rps, plain_p99, plain_failed),
        (
            "+ sticky X-User-Id, 2 header routes",
            routed_rps,
            routed_p99,
            routed_failed,
        ),
    ] {
        println!(
            "{name:<36} {rps:>12.0} {:>10} {failed:>8}",
            format!("{p99:.2} ms")
        );
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        format!(
            "{:+.1} % .. {:+.1} %",
            100.0 * (1.0 - hi),
            100.0 * (1.0 - lo)
        )
    };
    println!(
        "relative cost of routes and sticky users: {:+.1} % of requests/s by the median of the \
         pairs ({} per pair); p99 {:+.1} %",
        100.0 * cost,
        spread(&ratios),
        100.0 * (routed_p99 / plain_p99 - 1.0)
    );
}

/// What one run of the load measured.
struct Load {
    rps: f64,
    p99_ms: f64,
    failed: usize,
}

/// [`CONNECTIONS`] loops of GETs to `url` for `run`, each request a user's.
async fn load(client: &Client<HttpConnector, Empty<Bytes>>, url: &str, run: Duration) -> Load {
    let started = Instant::now();
    let end = started + run;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let (mut micros, mut failed) = (Vec::new(), 0usize);
                let mut i = k;
                while Instant::now() < end {
                    let user = i % LOAD_USERS;
                    let mut req = hyper::Request::get(url.as_str())
                        .header("host", SERVICE)
                        .header("x-user-id", format!("user-{user}"))
                        .header("x-beta", format!("gamma-{user}"));
                    if i % MARKED_EVERY == 0 {
                        req = req.header("x-canary", "always");
                    }
                    let req = req.body(Empty::new()).expect("a valid request");
                    i += CONNECTIONS;
                    let sent = Instant::now();
                    match client.request(req).await {
                        Ok(resp) if resp.status() == 200 => {
                            if resp.into_body().collect().await.is_err() {
                                failed += 1;
                                continue;
                            }
                            let us = sent.elapsed().as_micros();
                            micros.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        Ok(_) | Err(_) => failed += 1,
                    }
                }
                (micros, failed)
            })
        })
        .collect();
    let (mut micros, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (m, f) = t.await.expect("a load task");
        micros.extend(m);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    micros.sort_unstable();
    let p99 = micros
        .get(((micros.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .map_or(f64::NAN, |us| f64::from(*us) / 1000.0);
    Load {
        rps: micros.len() as f64 / elapsed,
        p99_ms: p99,
        failed,
    }
}

/// Reads all of `names` [`MANY_RUNS`] times each way, alternating: one `observe_all`, then one
/// `observe` a name. The first read each way is checked against the other and not timed.
async fn observe_many(
    driver: &Driver,
    names: &[String],
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let bounded = |what: &str| format!("{what} took over {MANY_LIMIT:?}");
    let read_all = async || {
        let all = tokio::time::timeout(MANY_LIMIT, driver.observe_all(names))
            .await
            .map_err(|_| bounded("observe_all"))?
            .map_err(|e| format!("observe_all: {e}"))?;
        all.into_iter()
            .map(|(name, observed)| Ok((name, observed.map_err(|e| e.to_string())?)))
            .collect::<Result<BTreeMap<_, _>, String>>()
    };
    let read_each = async || {
        let each = async {
            let mut each = BTreeMap::new();
            for name in names {
                let observed = driver.observe(name).await;
                each.insert(name.clone(), observed.map_err(|e| e.to_string())?);
            }
            Ok::<_, String>(each)
        };
        tokio::time::timeout(MANY_LIMIT, each)
            .await
            .map_err(|_| bounded("observe of each"))?
    };
    if read_all().await? != read_each().await? {
        return Err("observe_all and observe read different weights".to_string());
    }
    let (mut all, mut each) = (Vec::new(), Vec::new());
    for _ in 0..MANY_RUNS {
        let started = Instant::now();
        read_all().await?;
        all.push(started.elapsed());
        let started = Instant::now();
        read_each().await?;
        each.push(started.elapsed());
    }
    Ok((all, each))
}

/// `median (min .. max)` of `times`.
fn spread(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    format!(
        "{} ({} .. {})",
        ms(sorted[sorted.len() / 2]),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    )
}

/// The first line of the router's version, if it is installed and runs.
fn installed(kind: Kind) -> Option<String> {
    let out = Command::new(rig::find(kind.name())?)
        .args(kind.version_args())
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    // nginx prints its version on stderr.
    let text = [out.stdout, out.stderr].concat();
    let first = String::from_utf8_lossy(&text)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    Some(first.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn traffic(blue: i64, green: i64) -> Traffic {
    Traffic::of(&[("blue", blue), ("green", green)]).expect("weights in 0..=100")
}

/// One warm-up round trip, then [`Change::runs`] timed ones; each with how many reads
/// verifying took.
async fn measure(driver: &Driver, change: Change) -> Result<Vec<(Duration, usize)>, String> {
    let pair = change.pair();
    round_trip(driver, &pair[1])
        .await
        .map_err(|e| format!("warm-up: {e}"))?;
    let mut times = Vec::with_capacity(change.runs());
    for run in 0..change.runs() {
        let want = &pair[run % 2];
        let started = Instant::now();
        let observes = round_trip(driver, want)
            .await
            .map_err(|e| format!("run {run}: {e}"))?;
        times.push((started.elapsed(), observes));
    }
    Ok(times)
}

/// Applies `want`, then observes until the router reports its weights and routes; returns the
/// number of reads.
async fn round_trip(driver: &Driver, want: &Traffic) -> Result<usize, String> {
    match tokio::time::timeout(APPLY_LIMIT, driver.apply(SERVICE, want)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("apply: {e}")),
        Err(_) => return Err(format!("apply took over {APPLY_LIMIT:?}")),
    }
    let deadline = tokio::time::Instant::now() + VERIFY_LIMIT;
    let mut observes = 0;
    let mut last = String::from("nothing read");
    loop {
        observes += 1;
        match tokio::time::timeout_at(deadline, driver.observe(SERVICE)).await {
            Ok(Ok(o))
                if o.percentages().as_ref() == Some(&want.backends) && o.routes == want.routes =>
            {
                return Ok(observes);
            }
            Ok(Ok(o)) => last = format!("{:?} {:?}", o.backends, o.routes),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {}
        }
        if tokio::time::Instant::now() + POLL >= deadline {
            return Err(format!(
                "{:?} {:?} not read back within {VERIFY_LIMIT:?}; last: {last}",
                want.backends, want.routes
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One line of the table: nearest-rank median and p90, min, max, mean reads per round trip.
fn row(kind: Kind, times: &[(Duration, usize)]) -> String {
    let mut sorted: Vec<Duration> = times.iter().map(|t| t.0).collect();
    sorted.sort();
    let rank = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).max(1) - 1];
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    let observes = times.iter().map(|t| t.1).sum::<usize>() as f64 / times.len() as f64;
    format!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>14.1}",
        kind.name(),
        ms(rank(0.5)),
        ms(rank(0.9)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1]),
        observes
    )
}

/// A started router (the tests' rig, in front of the two backends) and canaryd's driver for
/// it. Fields drop in order: the driver, then the router (stopped).
struct Rig {
    driver: Driver,
    router: Router,
}

enum Router {
    Haproxy(rig::haproxy::Haproxy),
    Traefik(rig::traefik::Traefik),
    Caddy(rig::caddy::Caddy),
    Nginx(rig::nginx::Nginx),
}

impl Rig {
    /// Starts `kind` in front of `backends` (blue carries everything) and waits until it
    /// answers; `routed`: configured for routes as the README says, where that takes more.
    async fn start(kind: Kind, backends: &Backends, routed: bool) -> Result<Rig, Failed> {
        let upstreams = backends.upstreams();
        Ok(match kind {
            Kind::Haproxy => {
                let router = if routed {
                    rig::haproxy::Haproxy::start_routed(SERVICE, upstreams).await?
                } else {
                    rig::haproxy::Haproxy::start(SERVICE, upstreams).await?
                };
                Rig {
                    driver: Driver::Haproxy(router.unix()),
                    router: Router::Haproxy(router),
                }
            }
            Kind::Traefik => {
                let router = rig::traefik::Traefik::start(SERVICE, upstreams).await?;
                Rig {
                    driver: Driver::Traefik(router.driver()),
                    router: Router::Traefik(router),
                }
            }
            Kind::Caddy => {
                let router = rig::caddy::Caddy::start(SERVICE, upstreams).await?;
                Rig {
                    driver: Driver::Caddy(router.driver()),
                    router: Router::Caddy(router),
                }
            }
            Kind::Nginx => {
                let router = if routed {
                    rig::nginx::Nginx::start_routed(SERVICE, upstreams).await?
                } else {
                    rig::nginx::Nginx::start(SERVICE, upstreams).await?
                };
                Rig {
                    driver: Driver::Nginx(router.router()),
                    router: Router::Nginx(router),
                }
            }
        })
    }

    /// The router's log, for an error message.
    fn log(&self) -> String {
        match &self.router {
            Router::Haproxy(r) => r.log(),
            Router::Traefik(r) => r.log(),
            Router::Caddy(r) => r.log(),
            Router::Nginx(r) => r.log(),
        }
    }
}
