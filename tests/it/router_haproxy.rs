//! The HAProxy driver against a real `haproxy` on 127.0.0.1 with two real backends: weights read back, traffic split, no failed request while weights change, no split between steps, drift, router down, unknown names, every backend read with one command.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use canaryd::core::model::{Criterion, Field, Match, Pattern, Route, Traffic, Weight, on_canary};
use canaryd::edge::backend::{LoadConfig, LoadReport, load};
use canaryd::edge::router::RouterError;
use canaryd::edge::router::haproxy::{HaproxyRouter, maps};
use tokio_util::sync::CancellationToken;

use crate::support::backends::{Backends, Server};
use crate::support::net::{Relay, Silent};
use crate::support::observe::{
    assert_unknown, blue_green, observe_all_checked, services, shares_of, weights_of,
};
use crate::support::rig::haproxy::Haproxy;
use crate::support::who::{Sides, StepCount, marked_and_sticky};
use crate::support::world::{
    GATED, TESTERS_FIRST, World, phase, rollout_through, runtime, side_for, verified,
};

/// HAProxy in front of blue (weight 100) and green (weight 0) in backend `checkout`, and the
/// backends, which stop when dropped.
async fn start() -> (Haproxy, Backends) {
    let backends = Backends::start(&[Server::new("blue"), Server::new("green")]).await;
    let haproxy = Haproxy::start("checkout", backends.upstreams())
        .await
        .unwrap();
    (haproxy, backends)
}

fn split(blue: i64, green: i64) -> Traffic {
    Traffic::of(&[("blue", blue), ("green", green)]).unwrap()
}

async fn percentages(router: &HaproxyRouter) -> (u8, u8) {
    let observed = router.observe("checkout").await.unwrap();
    let pct = observed.percentages().unwrap();
    (pct["blue"].get(), pct["green"].get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_weights_are_read_back() {
    let (haproxy, _backends) = start().await;
    let (unix, tcp) = (haproxy.unix(), haproxy.tcp());
    // The configuration's weights, raw.
    let observed = unix.observe("checkout").await.unwrap();
    assert_eq!(observed.backends["blue"], 100);
    assert_eq!(observed.backends["green"], 0);
    for (blue, green) in [(90, 10), (50, 50), (0, 100), (100, 0), (75, 25)] {
        unix.apply("checkout", &split(blue, green)).await.unwrap();
        assert_eq!(percentages(&unix).await, (blue as u8, green as u8));
        // The same state over the TCP socket; the raw weights split exactly so (a multiple of
        // the percentages, on HAProxy's 0..=256 scale).
        let raw = tcp.observe("checkout").await.unwrap();
        let (b, g) = (raw.backends["blue"], raw.backends["green"]);
        assert_eq!(
            b * green as u32,
            g * blue as u32,
            "{b}/{g} for {blue}/{green}"
        );
        assert!(b + g > 0 && b <= 256 && g <= 256);
    }
    // Twice is harmless, over either socket.
    tcp.apply("checkout", &split(90, 10)).await.unwrap();
    tcp.apply("checkout", &split(90, 10)).await.unwrap();
    unix.apply("checkout", &split(90, 10)).await.unwrap();
    assert_eq!(percentages(&unix).await, (90, 10));
    // A backend not named is set to 0.
    let only_blue = Traffic::weights([("blue".to_string(), Weight::FULL)].into_iter().collect());
    unix.apply("checkout", &only_blue).await.unwrap();
    assert_eq!(percentages(&unix).await, (100, 0));
    unix.health().await.unwrap();
    tcp.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_weights() {
    let (haproxy, _backends) = start().await;
    let router = haproxy.unix();
    let config = LoadConfig {
        concurrency: 4,
        total: 500,
        max_duration: Duration::from_secs(30),
        host: None,
    };

    router.apply("checkout", &split(80, 20)).await.unwrap();
    let report = load(haproxy.frontend, config.clone()).await.unwrap();
    println!("haproxy 80/20: {report:?}");
    assert_eq!(report.ok, 500, "{report:?}");
    let green = report.by_backend.get("green").copied().unwrap_or(0);
    // 100 expected; roundrobin is near exact, a binomial would stay within ±5 sd (±45).
    assert!((55..=145).contains(&green), "green got {green} of 500");
    assert_eq!(report.by_backend["blue"] + green, 500);

    router.apply("checkout", &split(100, 0)).await.unwrap();
    let report = load(haproxy.frontend, config.clone()).await.unwrap();
    println!("haproxy 100/0: {report:?}");
    assert_eq!(report.ok, 500, "{report:?}");
    assert_eq!(report.by_backend.get("blue"), Some(&500), "{report:?}");

    router.apply("checkout", &split(0, 100)).await.unwrap();
    let report = load(haproxy.frontend, config).await.unwrap();
    assert_eq!(report.by_backend.get("green"), Some(&500), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_weights_change() {
    let (haproxy, _backends) = start().await;
    let router = haproxy.unix();
    let done = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicUsize::new(0));
    let changer = {
        let (done, applied) = (done.clone(), applied.clone());
        tokio::spawn(async move {
            // Includes full swaps (0 <-> 100), where setting the lower weight first would
            // leave the backend without any weight for a moment.
            let cycle = [0, 10, 25, 50, 100, 0, 100, 50, 25, 10];
            let mut i = 0;
            while !done.load(Ordering::SeqCst) {
                let green = cycle[i % cycle.len()];
                router
                    .apply("checkout", &split(100 - green, green))
                    .await
                    .unwrap();
                applied.fetch_add(1, Ordering::SeqCst);
                i += 1;
                // As fast as the load lets us see each state a few times; 100 ms would leave
                // only a handful of changes within the ~1 s the 1500 requests take.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let report = load(
        haproxy.frontend,
        LoadConfig {
            concurrency: 4,
            total: 1500,
            max_duration: Duration::from_secs(20),
            host: None,
        },
    )
    .await
    .unwrap();
    done.store(true, Ordering::SeqCst);
    changer.await.unwrap();
    let failed = report.failed + report.server_errors;
    println!(
        "haproxy under weight changes: {} requests sent, {} failed ({} transport, {} 5xx), \
         {} abandoned, {} weight changes, by backend {:?}",
        report.sent,
        failed,
        report.failed,
        report.server_errors,
        report.abandoned,
        applied.load(Ordering::SeqCst),
        report.by_backend
    );
    assert_eq!(report.sent, 1500, "{report:?}");
    assert_eq!(failed, 0, "{report:?}");
    assert_eq!(report.ok, 1500, "{report:?}");
    assert!(
        applied.load(Ordering::SeqCst) >= 20,
        "too few weight changes"
    );
    assert_eq!(report.by_backend.len(), 2, "{report:?}");
}

/// A runtime API connection of its own in interactive mode (`prompt`), blocking: one command
/// at a time, each answer read up to the `> ` prompt that ends it.
struct Console {
    stream: std::net::TcpStream,
}

impl Console {
    fn open(port: u16) -> Console {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut console = Console { stream };
        console.ask("prompt");
        console
    }

    fn ask(&mut self, command: &str) -> String {
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !answer.ends_with(b"> ") {
            let n = self
                .stream
                .read(&mut chunk)
                .unwrap_or_else(|e| panic!("runtime api did not answer `{command}`: {e}"));
            assert!(n > 0, "runtime api closed the console: {answer:?}");
            answer.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(answer).unwrap()
    }
}

/// `(blue, green)` raw weights from an answer to `show servers state checkout`, columns found
/// by the header.
fn blue_and_green(answer: &str) -> (u32, u32) {
    let mut lines = answer.lines();
    let header: Vec<&str> = lines
        .find_map(|l| l.strip_prefix('#'))
        .unwrap_or_else(|| panic!("no header in {answer:?}"))
        .split_whitespace()
        .collect();
    let at = |column: &str| header.iter().position(|h| *h == column).unwrap();
    let (name_at, weight_at) = (at("srv_name"), at("srv_uweight"));
    let mut weights = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let (Some(name), Some(weight)) = (fields.get(name_at), fields.get(weight_at)) {
            weights.insert(*name, weight.parse::<u32>().unwrap());
        }
    }
    (weights["blue"], weights["green"])
}

/// Issue 16: a change between two steps must not show as a split no step names. A sampler on
/// its own runtime API connection and thread reads both weights every 10 ms while the driver
/// walks 0..100 % and back in steps of 10 under load.
///
/// HAProxy 2.6 sets one server's weight per command, so the driver picks weights (any multiple
/// of the percentages splits the same) that make each of these changes one command, or two
/// whose state between splits as before: every sample must be exactly a step's split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampler_sees_only_the_splits_the_steps_name() {
    const CHANGES: usize = 240;
    let (haproxy, _backends) = start().await;
    let router = haproxy.unix();
    // Green's steps: 0, 10, ..., 100, 90, ..., 10.
    let cycle: Vec<u32> = (0..=10).chain((1..10).rev()).map(|i| i * 10).collect();
    let done = CancellationToken::new();

    // Its own thread and clock, so that its reads do not line up with the changes' timer ticks.
    let sampler = {
        let (done, admin_port) = (done.clone(), haproxy.admin_port);
        std::thread::spawn(move || {
            let mut console = Console::open(admin_port);
            let started = Instant::now();
            let mut samples = Vec::new();
            while !done.is_cancelled() && started.elapsed() < Duration::from_secs(60) {
                let answer = console.ask("show servers state checkout");
                samples.push(blue_and_green(&answer));
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        })
    };
    // Steady load in batches until the changes are done, bounded in count and time.
    let traffic = {
        let (done, addr) = (done.clone(), haproxy.frontend);
        tokio::spawn(async move {
            let mut report = LoadReport::default();
            let started = Instant::now();
            while !done.is_cancelled() && started.elapsed() < Duration::from_secs(30) {
                let batch = LoadConfig {
                    concurrency: 2,
                    total: 200,
                    max_duration: Duration::from_secs(5),
                    host: None,
                };
                report.merge(load(addr, batch).await.unwrap());
            }
            report
        })
    };

    let started = Instant::now();
    for i in 1..=CHANGES {
        let green = i64::from(cycle[i % cycle.len()]);
        router
            .apply("checkout", &split(100 - green, green))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    let took = started.elapsed();
    done.cancel();
    let samples = sampler.join().unwrap();
    let report = traffic.await.unwrap();

    // Exactly: green/(blue+green) is a step's percentage, not merely rounds to one.
    let off_step: Vec<(u32, u32)> = samples
        .iter()
        .copied()
        .filter(|&(blue, green)| {
            !cycle
                .iter()
                .any(|&step| blue + green > 0 && green * 100 == step * (blue + green))
        })
        .collect();
    let failed = report.failed + report.server_errors;
    println!(
        "haproxy steps under a 10 ms sampler: {CHANGES} changes in {took:?}, {} samples, {} \
         off-step {off_step:?}; {} requests, {failed} failed, by backend {:?}",
        samples.len(),
        off_step.len(),
        report.sent,
        report.by_backend
    );
    assert!(off_step.is_empty(), "splits no step names: {off_step:?}");
    assert!(samples.len() >= 100, "too few samples: {}", samples.len());
    assert_eq!(failed, 0, "{report:?}");
    assert!(report.ok >= 1000, "too little load: {report:?}");
    assert_eq!(report.by_backend.len(), 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_change_is_seen() {
    let (haproxy, _backends) = start().await;
    let router = haproxy.unix();
    router.apply("checkout", &split(90, 10)).await.unwrap();
    let answer = haproxy
        .operator("set weight checkout/blue 90;set weight checkout/green 37")
        .await;
    assert_eq!(answer.trim(), "", "operator's command refused: {answer}");
    let observed = router.observe("checkout").await.unwrap();
    assert_eq!(observed.backends["blue"], 90);
    assert_eq!(observed.backends["green"], 37);
    // 90:37 is 71/29 once normalised.
    assert_eq!(percentages(&router).await, (71, 29));
    // Draining a server by hand.
    haproxy.operator("set weight checkout/blue 0").await;
    assert_eq!(percentages(&haproxy.tcp()).await, (0, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_is_down_is_unreachable_until_it_is_back() {
    let (mut haproxy, _backends) = start().await;
    let (unix, tcp) = (haproxy.unix(), haproxy.tcp());
    unix.apply("checkout", &split(60, 40)).await.unwrap();
    haproxy.kill();
    for router in [&unix, &tcp] {
        let started = Instant::now();
        let errors = [
            router.observe("checkout").await.unwrap_err(),
            router.apply("checkout", &split(50, 50)).await.unwrap_err(),
            router.health().await.unwrap_err(),
        ];
        let took = started.elapsed();
        for e in &errors {
            assert!(matches!(e, RouterError::Unreachable { .. }), "{e:?}");
            assert!(e.is_transient());
            assert!(
                e.to_string().starts_with("router `edge` unreachable"),
                "{e}"
            );
        }
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    // Back on the same sockets: readable again, with the configuration's weights (runtime
    // weights do not survive a restart without a server-state file; the daemon sees drift).
    haproxy.run().await.unwrap();
    let observed = unix.observe("checkout").await.unwrap();
    assert_eq!(observed.backends["blue"], 100);
    assert_eq!(observed.backends["green"], 0);
    tcp.apply("checkout", &split(60, 40)).await.unwrap();
    assert_eq!(percentages(&unix).await, (60, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_does_not_answer_times_out() {
    // Accepts connections and never answers.
    let silent = Silent::start().await;
    let router = HaproxyRouter::new("edge", &silent.addr.to_string()).unwrap();
    let started = Instant::now();
    let e = router.observe("checkout").await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, RouterError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("did not answer"), "{e}");
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(3)).contains(&took),
        "took {took:?}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_backends_are_unknown() {
    let (haproxy, _backends) = start().await;
    let router = haproxy.unix();
    router.apply("checkout", &split(70, 30)).await.unwrap();
    let unknown = |e: RouterError, what: &str| match e {
        RouterError::Unknown { what: w, .. } => assert!(w.contains(what), "{w}"),
        other => panic!("expected unknown {what}, got {other:?}"),
    };
    unknown(router.observe("cart").await.unwrap_err(), "backend `cart`");
    unknown(
        router.apply("cart", &split(50, 50)).await.unwrap_err(),
        "backend `cart`",
    );
    let red = Traffic::weights(
        [("blue", 50), ("red", 50)]
            .into_iter()
            .map(|(n, w)| (n.to_string(), Weight::new(w).unwrap()))
            .collect(),
    );
    unknown(
        router.apply("checkout", &red).await.unwrap_err(),
        "server `red`",
    );
    // A name that would smuggle a second command never reaches HAProxy.
    unknown(
        router
            .observe("checkout\nset weight checkout/blue 0")
            .await
            .unwrap_err(),
        "backend",
    );
    // Nothing changed on the way.
    assert_eq!(percentages(&router).await, (70, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_observe_round_trip_time() {
    let (haproxy, _backends) = start().await;
    for (label, router) in [("unix", haproxy.unix()), ("tcp", haproxy.tcp())] {
        let mut times = Vec::new();
        for i in 0..50 {
            let green = [10, 50][i % 2];
            let started = Instant::now();
            router
                .apply("checkout", &split(100 - green, green))
                .await
                .unwrap();
            let observed = router.observe("checkout").await.unwrap();
            times.push(started.elapsed());
            assert_eq!(observed.percentages().unwrap()["green"].get(), green as u8);
        }
        times.sort();
        println!(
            "haproxy apply+observe over {label}: median {:?}, max {:?} (50 tries)",
            times[25], times[49]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Through the daemon: `canaryd run` drives this HAProxy.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rollout_through_the_daemon_is_read_back_from_haproxy() {
    let rt = runtime();
    let (haproxy, _backends) = rt.block_on(start());
    let mut w = World::new(0.0, 0.0);
    w.router_spec = Some(haproxy.spec());
    let router = haproxy.unix();
    let read = || rt.block_on(percentages(&router)).1;
    let hand_set = |green: u8| {
        let green = i64::from(green);
        rt.block_on(haproxy.operator(&format!("set weight checkout/green {green}")));
        rt.block_on(haproxy.operator(&format!("set weight checkout/blue {}", 100 - green)));
    };
    let report = rollout_through(&mut w, haproxy.frontend, read, hand_set);
    assert_eq!((report.failed, report.server_errors), (0, 0), "{report:?}");
}

/// Testers first through the daemon and a real HAProxy configured as the README says: the
/// marked group reaches the canary at weight 0, a route cleared by hand is drift the daemon
/// sets again, `canaryd analyze` names the live route, and an abort removes it.
#[test]
fn testers_reach_the_canary_through_haproxy_and_a_route_cleared_by_hand_comes_back() {
    let mut w = World::new(0.0, 0.0);
    let backends = w.rt.block_on(Backends::start(&[
        Server::new("blue"),
        Server::new("green"),
    ]));
    let haproxy =
        w.rt.block_on(Haproxy::start_routed("checkout", backends.upstreams()))
            .unwrap();
    w.router = haproxy.frontend;
    w.router_spec = Some(haproxy.spec());
    w.start_on_stable(TESTERS_FIRST);
    w.merge(
        "checkout.yaml",
        &w.spec(true, TESTERS_FIRST),
        "checkout: canary green, testers first",
    );
    w.wait_for("checkout", 30, "the testers route verified", |s| {
        phase(s) == "paused" && verified(s) && !s.routes.is_empty()
    });
    let marked = [("X-Canary", "always")];
    for _ in 0..10 {
        assert_eq!(side_for(&w, &marked), "green");
        assert_eq!(side_for(&w, &[]), "blue");
    }

    // An operator clears the routes map: the testers are back on blue until the daemon sees
    // the drift and sets the route again.
    let maps = w.rt.block_on(haproxy.operator("show map"));
    let file = maps::routes_map("checkout");
    let path = maps
        .split(['(', ')'])
        .find(|p| p.ends_with(&file))
        .unwrap_or_else(|| panic!("{file} in {maps}"));
    let cleared =
        w.rt.block_on(haproxy.operator(&format!("clear map {path}")));
    assert!(cleared.trim().is_empty(), "{cleared}");
    let left = w.rt.block_on(haproxy.operator(&format!("show map {path}")));
    assert!(left.trim().is_empty(), "cleared: {left}");
    let started = Instant::now();
    while side_for(&w, &marked) != "green" {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the route was not set again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "route cleared by hand, set again after {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // The dry run reads what HAProxy holds.
    let out = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["analyze", "checkout", "--repo"])
        .arg(&w.work)
        .env_remove("CANARYD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("live: blue 100%, green 0%\n  route testers: X-Canary=always → green"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    w.gate("abort");
    w.wait_for("checkout", 30, "aborted, routes removed", |s| {
        phase(s) == "aborted" && s.routes.is_empty()
    });
    for _ in 0..10 {
        assert_eq!(side_for(&w, &marked), "blue");
    }
}

#[test]
fn a_killed_haproxy_holds_the_rollout_which_resumes_with_the_right_weights() {
    let rt = runtime();
    let (mut haproxy, _backends) = rt.block_on(start());
    let mut w = World::new(0.0, 0.0);
    w.router_spec = Some(haproxy.spec());
    w.start_on_stable(GATED);
    w.merge("checkout.yaml", &w.spec(true, GATED), "canary: green 1.1");
    w.wait_for("checkout", 30, "paused at 20%", |s| {
        s.status.progress.phase() == "paused"
            && s.status
                .progress
                .run()
                .is_some_and(|r| r.verified && r.weight.get() == 20)
    });
    haproxy.kill();
    // The daemon cannot read the router: it holds, and says why.
    let held = w.wait_for("checkout", 30, "stalled, and why", |s| {
        s.status.progress.run().is_some_and(|r| r.stall.is_some()) && s.router_error.is_some()
    });
    assert_eq!(held.status.progress.phase(), "paused");
    let why = held.router_error.clone().unwrap_or_default();
    assert!(why.contains("unreachable"), "the status says why: {why:?}");
    // Back, with the configuration's weights (100/0): that is drift, and 80/20 comes back.
    rt.block_on(haproxy.run()).unwrap();
    w.wait_for("checkout", 30, "resumed at 20%", |s| {
        s.status
            .progress
            .run()
            .is_some_and(|r| r.verified && r.stall.is_none())
            && s.live
                .as_ref()
                .is_some_and(|l| l.backends.get("green").is_some_and(|g| g.get() == 20))
    });
    assert_eq!(rt.block_on(percentages(&haproxy.unix())), (80, 20));
}

#[test]
fn plan_reads_the_live_weights_from_haproxy() {
    let rt = runtime();
    let (haproxy, _backends) = rt.block_on(start());
    rt.block_on(haproxy.operator("set weight checkout/green 10"));
    rt.block_on(haproxy.operator("set weight checkout/blue 90"));
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir(repo.path().join("rollouts")).unwrap();
    std::fs::write(
        repo.path().join("rollouts/checkout.yaml"),
        format!(
            "apiVersion: canaryd.dev/v1alpha1\nkind: Router\nmetadata: {{name: edge}}\nspec:\n{}---\n\
             apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: checkout}}\n\
             spec:\n  router: edge\n  service: checkout\n  stable: {{name: blue, version: \"1\"}}\n\
             \x20 canary: {{name: green, version: \"2\"}}\n  steps: [{{setWeight: 25}}]\n",
            haproxy.spec()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["plan", "--output", "json"])
        .current_dir(repo.path())
        .env_remove("CANARYD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "changes pending: {text}");
    let plans: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The first step, planned against what HAProxy reports (90/10), not "unknown".
    assert_eq!(plans[0]["action"]["action"], "setWeight", "{text}");
    assert_eq!(plans[0]["traffic"]["backends"]["green"], 25, "{text}");
    let human = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .arg("plan")
        .current_dir(repo.path())
        .env_remove("CANARYD_CONFIG")
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("-   green 10%") || human.contains("green 10%"),
        "{human}"
    );
}

// ---------------------------------------------------------------------------------------------
// Every backend at once: `observe_all`.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_is_read_with_one_command() {
    let backends = Backends::start(&[Server::new("blue"), Server::new("green")]).await;
    // Beside `checkout`: `search` and `profile` as it is, and `spare` without servers.
    let more: [(&str, &[u32]); 3] = [
        ("search", &[100, 0]),
        ("profile", &[100, 0]),
        ("spare", &[]),
    ];
    let haproxy = Haproxy::start_with("checkout", backends.upstreams(), &more)
        .await
        .unwrap();
    let router = haproxy.unix();
    for (backend, green) in [("checkout", 10), ("search", 35), ("profile", 100)] {
        router
            .apply(backend, &split(100 - green, green))
            .await
            .unwrap();
    }
    let asked = services(&["checkout", "search", "profile", "spare", "cart", "a;b"]);
    // Over TCP through a relay that keeps what each connection sent.
    let relay = Relay::start(([127, 0, 0, 1], haproxy.admin_port).into()).await;
    let counted = HaproxyRouter::new("edge", &relay.addr.to_string()).unwrap();
    let all = observe_all_checked!(counted, &asked);
    // One command for all, then one per `observe` (a name HAProxy cannot hold is never sent).
    assert_eq!(
        relay.lines(),
        [
            "show servers state;show backend;show map",
            "show servers state checkout;show map",
            "show servers state search;show map",
            "show servers state profile;show map",
            "show servers state spare;show map",
            "show servers state cart;show map",
        ]
    );
    assert_eq!(shares_of(&all, "checkout"), blue_green(90, 10));
    assert_eq!(shares_of(&all, "search"), blue_green(65, 35));
    assert_eq!(shares_of(&all, "profile"), blue_green(0, 100));
    // A backend without servers is known and empty, as `observe` reads it.
    assert_eq!(weights_of(&all, "spare"), &BTreeMap::new());
    assert_unknown(&all, "cart", "backend `cart`");
    assert_unknown(&all, "a;b", "backend `a;b`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_backends_of_two_servers_fit_in_one_answer() {
    // Names longer than most, so that the answer is larger than most.
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("shop-eu-west-{i:05}-checkout"))
        .collect();
    let more: Vec<(&str, &[u32])> = names.iter().map(|n| (n.as_str(), &[90, 10][..])).collect();
    let backends = Backends::start(&[Server::new("blue"), Server::new("green")]).await;
    let haproxy = Haproxy::start_with("checkout", backends.upstreams(), &more)
        .await
        .unwrap();
    let router = haproxy.unix();
    let answer = haproxy.operator("show servers state;show backend").await;
    let started = Instant::now();
    let all = router.observe_all(&names).await.unwrap();
    let took = started.elapsed();
    println!(
        "haproxy observe_all of 10,000 backends of 2 servers: {took:?}, answer {} bytes",
        answer.len()
    );
    assert_eq!(all.len(), names.len());
    for name in &names {
        assert_eq!(weights_of(&all, name), &blue_green(90, 10), "{name}");
    }
}

/// Backend `checkout` at `canary` percent for green, keyed by `X-User-Id`, with the marked group
/// (`X-Canary: always`) routed to green.
fn routed_at(canary: u8) -> Traffic {
    marked_and_sticky(split(i64::from(100 - canary), i64::from(canary)), "green")
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The backend that answered one GET with `headers` (the first word of its body).
async fn answered_by(
    c: &reqwest::Client,
    frontend: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut req = c.get(format!("http://{frontend}/"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    let backend = body
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if status != 200 {
        return Err(format!("{status} from `{backend}`"));
    }
    Ok(backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_only_move_onto_the_canary_and_the_marked_group_follows_its_route() {
    const USERS: usize = 2_000;
    const CLIENTS: usize = 8;
    /// One marked request every this many users.
    const MARK_EVERY: usize = 10;
    let backends = Backends::start(&[Server::new("blue"), Server::new("green")]).await;
    let haproxy = Haproxy::start_routed("checkout", backends.upstreams())
        .await
        .unwrap();
    let router = haproxy.unix();
    let c = http_client();
    // Weight 0 with the route only, the steps with sticky users, then an abort.
    let mut steps: Vec<(String, Traffic)> = vec![("0 (route only)".to_string(), {
        let mut t = routed_at(0);
        t.sticky = None;
        t
    })];
    for w in [10u8, 25, 50, 100] {
        steps.push((format!("{w}"), routed_at(w)));
    }
    steps.push(("abort".to_string(), split(100, 0)));
    let mut sides = Sides::new(USERS);
    let mut shares = Vec::new();
    // While the steps change the maps and the weights (up to the abort), a sampler keeps asking
    // for 200 users: none may be seen back on stable once seen on the canary, none may fail.
    let sampling = Arc::new(AtomicBool::new(true));
    let mut sampler = Some({
        let (c, frontend, sampling) = (c.clone(), haproxy.frontend, sampling.clone());
        tokio::spawn(async move {
            let (mut seen, mut failed) = (Vec::new(), Vec::new());
            while sampling.load(Ordering::SeqCst) {
                for u in 0..200 {
                    let user = format!("user-{u}");
                    match answered_by(&c, frontend, &[("X-User-Id", &user)]).await {
                        Ok(b) => seen.push((u, b)),
                        Err(e) => failed.push(format!("{user}: {e}")),
                    }
                }
            }
            (seen, failed)
        })
    });
    for (name, traffic) in &steps {
        if name == "abort" {
            sampling.store(false, Ordering::SeqCst);
            let (seen, failed) = sampler.take().unwrap().await.unwrap();
            assert!(failed.is_empty(), "sampler: failed requests: {failed:?}");
            let mut on_canary = BTreeSet::new();
            let mut back = Vec::new();
            for (u, b) in &seen {
                if b == "green" {
                    on_canary.insert(*u);
                } else if on_canary.contains(u) {
                    back.push(*u);
                }
            }
            println!(
                "haproxy sampler: {} requests while the steps changed, {} users back on stable",
                seen.len(),
                back.len()
            );
            assert!(back.is_empty(), "sampler: users back on stable: {back:?}");
        }
        router
            .apply("checkout", traffic)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", haproxy.log()));
        let observed = router.observe("checkout").await.unwrap();
        assert_eq!(
            (&observed.routes, &observed.sticky),
            (&traffic.routes, &traffic.sticky),
            "{name}: read back as applied"
        );
        let mut tasks = Vec::new();
        for k in 0..CLIENTS {
            let (c, frontend) = (c.clone(), haproxy.frontend);
            tasks.push(tokio::spawn(async move {
                let (mut users, mut marked, mut failed) = (Vec::new(), Vec::new(), Vec::new());
                for u in (k..USERS).step_by(CLIENTS) {
                    let user = format!("user-{u}");
                    match answered_by(&c, frontend, &[("X-User-Id", &user)]).await {
                        Ok(b) => users.push((u, b)),
                        Err(e) => failed.push(format!("{user}: {e}")),
                    }
                    if u % MARK_EVERY == 0 {
                        let tester = format!("tester-{u}");
                        let headers = [("X-User-Id", tester.as_str()), ("X-Canary", "always")];
                        match answered_by(&c, frontend, &headers).await {
                            Ok(b) => marked.push(b),
                            Err(e) => failed.push(format!("{tester}: {e}")),
                        }
                    }
                }
                (users, marked, failed)
            }));
        }
        let mut count = StepCount::default();
        for task in tasks {
            let (users, marked, failed) = task.await.unwrap();
            assert!(failed.is_empty(), "{name}: failed requests: {failed:?}");
            // HAProxy's `crc32,mod(10000)` is the model's bucket.
            let canary = traffic.backends["green"];
            let model = |user: &str| on_canary(user, canary);
            let sticky = traffic.sticky.is_some();
            count += sides.step(
                name,
                users,
                &marked,
                sticky.then_some(&model as &dyn Fn(&str) -> bool),
            );
        }
        let share = count.share(USERS);
        let (marked_canary, marked_total) = (count.marked_canary, count.marked_total);
        println!(
            "haproxy step {name}: {share:.2} % of {USERS} users on the canary; \
             {marked_canary} of {marked_total} marked requests on it"
        );
        shares.push((name.clone(), share, marked_canary, marked_total));
        let weight = (name != "abort").then(|| traffic.backends["green"].get());
        sides.check(name, &count, USERS, weight, traffic.sticky.is_some());
    }
    println!("haproxy sticky steps: {shares:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_the_sticky_key_are_read_back_as_applied() {
    let (haproxy_plain, _plain_backends) = start().await;
    let backends = Backends::start(&[Server::new("blue"), Server::new("green")]).await;
    let haproxy = Haproxy::start_routed("checkout", backends.upstreams())
        .await
        .unwrap();
    let router = haproxy.unix();
    let criterion = |on: Field, name: &str, value: Pattern| Criterion {
        on,
        name: name.to_string(),
        value,
    };
    let mut t = routed_at(25);
    t.routes = vec![
        Route {
            name: "testers".to_string(),
            matches: vec![
                Match {
                    all: vec![criterion(
                        Field::Header,
                        "X-Canary",
                        Pattern::Exact("a.b c;d\\e$".to_string()),
                    )],
                },
                Match {
                    all: vec![criterion(
                        Field::Cookie,
                        "beta",
                        Pattern::Prefix("on".to_string()),
                    )],
                },
                // The snippet spells it `X-Canary`: header names compare without case.
                Match {
                    all: vec![criterion(
                        Field::Header,
                        "x-canary",
                        Pattern::Exact("lower".to_string()),
                    )],
                },
            ],
            backend: "green".to_string(),
        },
        Route {
            name: "apps".to_string(),
            matches: vec![Match {
                all: vec![criterion(
                    Field::Query,
                    "app",
                    Pattern::Regex("ios|android-[0-9]+".to_string()),
                )],
            }],
            backend: "blue".to_string(),
        },
    ];
    router.apply("checkout", &t).await.unwrap();
    let observed = router.observe("checkout").await.unwrap();
    assert_eq!((&observed.routes, &observed.sticky), (&t.routes, &t.sticky));
    let all = router.observe_all(&services(&["checkout"])).await.unwrap();
    let seen = all["checkout"].as_ref().unwrap();
    assert_eq!((&seen.routes, &seen.sticky), (&t.routes, &t.sticky));
    // An operator moves the sticky threshold to 90 % under weights 75/25: users go where no
    // step says, and the driver reports the key as not held (drift) until it is applied again.
    let maps = haproxy.operator("show map").await;
    let file = maps::sticky_map("checkout");
    let path = maps
        .split(['(', ')'])
        .find(|p| p.ends_with(&file))
        .unwrap_or_else(|| panic!("{file} in {maps}"));
    let set = haproxy
        .operator(&format!("set map {path} threshold 9000"))
        .await;
    assert!(set.trim().is_empty(), "{set}");
    let drifted = router.observe("checkout").await.unwrap();
    assert_eq!((&drifted.routes, &drifted.sticky), (&t.routes, &None));
    let all = router.observe_all(&services(&["checkout"])).await.unwrap();
    assert_eq!(all["checkout"].as_ref().unwrap().sticky, None);
    router.apply("checkout", &t).await.unwrap();
    assert_eq!(router.observe("checkout").await.unwrap().sticky, t.sticky);
    // The routes route: whole exact value, cookie prefix, query regex.
    let c = http_client();
    let by = async |headers: &[(&str, &str)], query: &str| {
        let resp = c
            .get(format!("http://{}/{query}", haproxy.frontend))
            .headers(
                headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            reqwest::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                            reqwest::header::HeaderValue::from_str(v).unwrap(),
                        )
                    })
                    .collect(),
            )
            .send()
            .await
            .unwrap();
        let body = resp.text().await.unwrap();
        body.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    // Blue has 75 % of the weight: eight times each, so that no route passes by chance.
    for _ in 0..8 {
        assert_eq!(by(&[("X-Canary", "a.b c;d\\e$")], "").await, "green");
        assert_eq!(by(&[("cookie", "beta=onwards")], "").await, "green");
        assert_eq!(by(&[("X-Canary", "lower")], "").await, "green");
    }
    // `android-7` matches the regex and goes to blue, whatever the weights.
    router
        .apply("checkout", &{
            let mut w = t.clone();
            w.backends = split(0, 100).backends;
            w.sticky = None;
            w
        })
        .await
        .unwrap();
    assert_eq!(by(&[], "?app=android-7").await, "blue");
    // Percent-decoded before it is matched, as the embedded router does.
    assert_eq!(by(&[], "?app=andr%6Fid-7").await, "blue");
    assert_eq!(by(&[], "?app=android-x").await, "green");
    assert_eq!(by(&[("X-Canary", "a.b c;d\\eX")], "?app=ios").await, "blue");
    // Clearing: no routes, no key.
    router.apply("checkout", &split(100, 0)).await.unwrap();
    let observed = router.observe("checkout").await.unwrap();
    assert!(
        observed.routes.is_empty() && observed.sticky.is_none(),
        "{observed:?}"
    );
    // What the maps cannot hold is refused before anything changes.
    let mut and = routed_at(10);
    and.routes[0].matches[0].all.push(criterion(
        Field::Cookie,
        "beta",
        Pattern::Exact("on".into()),
    ));
    let e = router.apply("checkout", &and).await.unwrap_err();
    assert!(matches!(e, RouterError::Setup { .. }), "{e:?}");
    assert!(e.to_string().contains("(ANDed)"), "{e}");
    assert_eq!(percentages(&router).await, (100, 0));
    // A backend configured without the snippet refuses routes and keys, takes weights.
    let plain = haproxy_plain.unix();
    let e = plain.apply("checkout", &routed_at(10)).await.unwrap_err();
    assert!(matches!(e, RouterError::Setup { .. }), "{e:?}");
    assert!(e.to_string().contains("canaryd.checkout.routes.map"), "{e}");
    plain.apply("checkout", &split(90, 10)).await.unwrap();
}
