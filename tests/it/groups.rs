//! Rollout groups through the real daemon and the embedded router: two members, `checkout` and
//! `payments`, on two services of one router, released by one merge.

use std::time::Duration;

use crate::support::backends::{Backends, Server};
use crate::support::git::git;
use crate::support::net;
use crate::support::rig::haproxy::Haproxy;
use crate::support::world::{World, phase};
use canaryd::core::model::Field;
use canaryd::core::record::StatusFile;

/// `checkout`'s spec (from [`World::spec`]) as `payments`, on service `payments`.
fn payments(w: &World, canary: bool, steps: &str) -> String {
    // The router document goes with checkout's file only.
    w.spec(canary, steps)
        .replace(&w.router_doc(), "")
        .replace("metadata: {name: checkout}", "metadata: {name: payments}")
        .replace("service: checkout", "service: payments")
}

fn group(order: &str, members: &str) -> String {
    format!(
        "apiVersion: canaryd.dev/v1alpha1\nkind: RolloutGroup\nmetadata: {{name: shop}}\nspec:\n  order: {order}\n  members: {members}\n"
    )
}

fn weight(s: &StatusFile) -> u8 {
    s.status.progress.run().map_or(0, |r| r.weight.get())
}

/// Both members on blue, in the group, and the daemon running.
fn on_stable(w: &mut World, group_doc: &str, checkout: &str, pay: &str) -> (String, String) {
    let (c, p) = (w.spec(false, checkout), payments(w, false, pay));
    w.merge_all(
        &[
            ("checkout.yaml", &c),
            ("payments.yaml", &p),
            ("shop.yaml", group_doc),
        ],
        "checkout and payments on blue",
    );
    w.start();
    for name in ["checkout", "payments"] {
        w.wait_for(name, 30, "stable", |s| {
            phase(s) == "stable" && s.live.is_some()
        });
    }
    (c, p)
}

/// Lockstep: payments pauses 3 s at 20 %, checkout 1 s; checkout waits for it, so both go to
/// 50 % in the same look, then both are promoted.
#[test]
fn a_lockstep_release_steps_together_and_is_promoted() {
    const CHECKOUT: &str = "  steps:\n    - setWeight: 20\n    - pause: {duration: 1s}\n    - setWeight: 50\n    - pause: {duration: 1s}\n";
    const PAYMENTS: &str = "  steps:\n    - setWeight: 20\n    - pause: {duration: 3s}\n    - setWeight: 50\n    - pause: {duration: 1s}\n";
    let mut w = World::new(0.0, 0.0);
    let g = group("lockstep", "[{rollout: checkout}, {rollout: payments}]");
    on_stable(&mut w, &g, CHECKOUT, PAYMENTS);
    w.merge_all(
        &[
            ("checkout.yaml", &w.spec(true, CHECKOUT)),
            ("payments.yaml", &payments(&w, true, PAYMENTS)),
        ],
        "release shop: checkout and payments on green",
    );
    for name in ["checkout", "payments"] {
        w.wait_for(name, 40, "promoted", |s| phase(s) == "promoted");
    }
    // When each first stood at each weight, from the status branch's history.
    let first_at = |name: &str, weight_now: u8| {
        w.history(name)
            .into_iter()
            .find(|s| {
                self::weight(s) == weight_now || (weight_now == 100 && phase(s) == "promoted")
            })
            .map(|s| s.updated_at)
            .unwrap_or_else(|| panic!("{name} never at {weight_now}"))
    };
    let (c20, p20) = (first_at("checkout", 20), first_at("payments", 20));
    let (c50, p50) = (first_at("checkout", 50), first_at("payments", 50));
    let (c100, p100) = (first_at("checkout", 100), first_at("payments", 100));
    let apart = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
        (a - b).num_milliseconds().abs()
    };
    println!(
        "lockstep: 20 % apart {} ms, 50 % apart {} ms, promoted apart {} ms; 50 % came {} ms after 20 %",
        apart(c20, p20),
        apart(c50, p50),
        apart(c100, p100),
        (c50 - c20).num_milliseconds()
    );
    for (a, b, what) in [
        (c20, p20, "20 %"),
        (c50, p50, "50 %"),
        (c100, p100, "promotion"),
    ] {
        assert!(apart(a, b) < 1000, "{what}: {a} and {b}");
    }
    // Checkout's own pause was 1 s; it waited for payments' 3 s.
    assert!((c50 - c20).num_milliseconds() >= 3000, "{c20} -> {c50}");
    let log = w.status_log("checkout");
    assert!(
        log.contains("group `shop`: waiting for `payments`"),
        "{log}"
    );

    // The group's own status file tells the release as a story.
    let story = w.status_log("groups/shop");
    println!("{story}");
    assert_eq!(
        story.lines().next(),
        Some("release shop: promoted (checkout ✓, payments ✓)"),
        "{story}"
    );
    assert!(
        story
            .lines()
            .any(|l| l == "release shop: step 2/4 20% (checkout ✓, payments paused)"),
        "{story}"
    );
    let group = group_status(&w);
    assert_eq!(group["group"]["phase"], "promoted", "{group}");
    assert_eq!(
        group["members"].as_array().map(Vec::len),
        Some(2),
        "{group}"
    );
}

/// `canaryd status shop --output json`, as a person runs it against the remote.
fn group_status(w: &World) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["status", "shop", "--output", "json", "--repo"])
        .arg(&w.remote)
        .env_remove("CANARYD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One member aborted by hand aborts the other: both back to 0, one revert branch for the
/// release restoring both files byte for byte, and no second one after a restart.
#[test]
fn an_abort_of_one_member_aborts_the_release_with_one_revert_branch() {
    const STEPS: &str = "  steps:\n    - setWeight: 20\n    - pause: {}\n";
    let mut w = World::new(0.0, 0.0);
    let g = group("lockstep", "[{rollout: checkout}, {rollout: payments}]");
    let (stable_checkout, stable_payments) = on_stable(&mut w, &g, STEPS, STEPS);
    w.merge_all(
        &[
            ("checkout.yaml", &w.spec(true, STEPS)),
            ("payments.yaml", &payments(&w, true, STEPS)),
        ],
        "release shop: checkout and payments on green",
    );
    for name in ["checkout", "payments"] {
        w.wait_for(name, 30, "at 20 %", |s| weight(s) == 20 && s.live.is_some());
    }
    w.gate("abort");
    let mut branches = Vec::new();
    for name in ["checkout", "payments"] {
        let s = w.wait_for(name, 30, "aborted with its revert", |s| {
            phase(s) == "aborted" && s.revert.is_some()
        });
        assert_eq!(s.live.as_ref().map(|l| l.backends["green"].get()), Some(0));
        branches.push(s.revert.unwrap());
    }
    let payments_status = w.status("payments").unwrap();
    let canaryd::core::progress::Progress::Aborted { evidence, .. } =
        &payments_status.status.progress
    else {
        unreachable!()
    };
    assert!(
        evidence
            .summary
            .starts_with("group `shop`: `checkout` failed: "),
        "{}",
        evidence.summary
    );
    assert_eq!(branches[0], branches[1]);
    let branch = &branches[0];
    assert!(branch.starts_with("canaryd/revert/shop-"), "{branch}");
    assert_eq!(w.remote_branches("canaryd/revert"), vec![branch.clone()]);
    for (file, before) in [
        ("checkout.yaml", &stable_checkout),
        ("payments.yaml", &stable_payments),
    ] {
        let restored = git(&w.remote, &["show", &format!("{branch}:rollouts/{file}")]);
        assert_eq!(&restored, before, "{file}");
    }
    let message = git(&w.remote, &["log", "-1", "--format=%B", branch]);
    assert!(
        message.contains("checkout") && message.contains("payments"),
        "{message}"
    );
    let group = group_status(&w);
    assert_eq!(group["group"]["phase"], "aborted", "{group}");
    assert_eq!(group["group"]["revert"], branch.as_str(), "{group}");
    let evidence = group["group"]["evidence"].as_str().unwrap_or_default();
    assert!(evidence.starts_with("`checkout` failed: "), "{evidence}");
    // A restart finds the branch again.
    w.kill();
    w.start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(w.remote_branches("canaryd/revert"), vec![branch.clone()]);
}

/// Ordered: payments waits for checkout's promotion with all its traffic on blue.
#[test]
fn an_ordered_member_starts_after_its_dependency_is_promoted() {
    const STEPS: &str = "  steps:\n    - setWeight: 20\n    - pause: {duration: 2s}\n";
    let mut w = World::new(0.0, 0.0);
    let g = group(
        "ordered",
        "[{rollout: checkout}, {rollout: payments, dependsOn: [checkout]}]",
    );
    on_stable(&mut w, &g, STEPS, STEPS);
    w.merge_all(
        &[
            ("checkout.yaml", &w.spec(true, STEPS)),
            ("payments.yaml", &payments(&w, true, STEPS)),
        ],
        "release shop",
    );
    for name in ["checkout", "payments"] {
        w.wait_for(name, 40, "promoted", |s| phase(s) == "promoted");
    }
    let promoted_at = w
        .history("checkout")
        .into_iter()
        .find(|s| phase(s) == "promoted")
        .unwrap()
        .updated_at;
    let payments_first = w
        .history("payments")
        .into_iter()
        .find(|s| weight(s) > 0)
        .unwrap()
        .updated_at;
    assert!(
        payments_first >= promoted_at,
        "{payments_first} before {promoted_at}"
    );
    let waited = w.history("payments").iter().any(|s| phase(s) == "waiting");
    assert!(waited, "payments never waited");
}

/// Version affinity through two real routers in a chain: the embedded router in front of a
/// frontend (blue, green) that calls an API (blue, green) behind HAProxy, passing on the side
/// header. The frontend keeps users sticky by `X-User-Id` at 20 %; the API follows the side the
/// frontend chose. Of 1,000 users, none sees a mixed pair (counted from what the backends
/// answered).
#[test]
fn a_user_sees_the_canary_of_every_member_or_of_none() {
    let mut w = World::new(0.0, 0.0);
    let api = w.rt.block_on(Backends::start(&[
        Server::new("blue"),
        Server::new("green"),
    ]));
    let haproxy =
        w.rt.block_on(Haproxy::start_routed_on(
            "api",
            api.upstreams(),
            &[(Field::Header, "X-Canaryd-Side")],
        ))
        .unwrap();
    // The frontend: answers `<its name>+<the API's>`, calling the API with the side header it
    // was given (as an app passes on trace headers).
    let api_front = haproxy.frontend;
    let frontend = |name: &'static str| {
        let client = reqwest::Client::new();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let client = client.clone();
                async move {
                    let mut req = client.get(format!("http://{api_front}/"));
                    if let Some(side) = headers.get("x-canaryd-side") {
                        req = req.header("x-canaryd-side", side.clone());
                    }
                    let body = match req.send().await {
                        Ok(r) => r.text().await.unwrap_or_default(),
                        Err(e) => format!("error {e}"),
                    };
                    format!(
                        "{name}+{}",
                        body.split_whitespace().next().unwrap_or("none")
                    )
                }
            }),
        );
        w.rt.block_on(net::serve(app))
    };
    let (fe_blue, _blue_guard) = frontend("blue");
    let (fe_green, _green_guard) = frontend("green");
    let steps = "[{setWeight: 20}, {pause: {}}]";
    let specs = format!(
        "apiVersion: canaryd.dev/v1alpha1\nkind: Router\nmetadata: {{name: edge}}\n\
         spec: {{kind: embedded, listen: \"{}\", backends: {{blue: \"http://{fe_blue}\", green: \"http://{fe_green}\"}}}}\n---\n\
         apiVersion: canaryd.dev/v1alpha1\nkind: Router\nmetadata: {{name: mesh}}\nspec:\n{}---\n\
         apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: frontend}}\n\
         spec: {{router: edge, service: frontend, stable: {{name: blue, version: '1'}}, canary: {{name: green, version: '2'}}, \
         sticky: {{header: X-User-Id}}, steps: {steps}}}\n---\n\
         apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: api}}\n\
         spec: {{router: mesh, service: api, stable: {{name: blue, version: '1'}}, canary: {{name: green, version: '2'}}, steps: {steps}}}\n---\n\
         apiVersion: canaryd.dev/v1alpha1\nkind: RolloutGroup\nmetadata: {{name: shop}}\n\
         spec: {{order: lockstep, members: [{{rollout: frontend}}, {{rollout: api}}], affinity: {{from: frontend}}}}\n",
        w.router,
        haproxy.spec()
    );
    w.merge(
        "shop.yaml",
        &specs,
        "release shop: frontend and api on green, one side per user",
    );
    w.start();
    for name in ["frontend", "api"] {
        w.wait_for(name, 40, "at 20 %, read back", |s| {
            phase(s) == "paused"
                && weight(s) == 20
                && s.status.progress.run().is_some_and(|r| r.verified)
        });
    }
    let router = w.router;
    let pairs: Vec<String> = (0..1000)
        .map(|i| {
            let user = format!("user-{i}");
            let (status, body) = net::http_get_with(router, "/", &[("X-User-Id", &user)])
                .expect("the router answers");
            assert_eq!(status, 200, "{body}");
            body.trim().to_string()
        })
        .collect();
    let count = |pair: &str| pairs.iter().filter(|p| p.as_str() == pair).count();
    let (canary, stable) = (count("green+green"), count("blue+blue"));
    let mixed = pairs.len() - canary - stable;
    println!(
        "version affinity: 1,000 users at 20 %: {canary} on both canaries, {stable} on both stables, {mixed} mixed"
    );
    assert_eq!(
        mixed,
        0,
        "{:?}",
        pairs
            .iter()
            .filter(|p| !matches!(p.as_str(), "green+green" | "blue+blue"))
            .take(10)
            .collect::<Vec<_>>()
    );
    assert!(
        (150..=250).contains(&canary),
        "{canary} users on the canaries"
    );
    // Without the header (a client straight to the API), the API's own weights decide.
    let direct: Vec<String> = (0..200)
        .map(|_| {
            net::http_get_with(haproxy.frontend, "/", &[])
                .expect("haproxy answers")
                .1
        })
        .collect();
    let green = direct.iter().filter(|b| b.starts_with("green")).count();
    assert!(
        (15..=70).contains(&green),
        "{green} of 200 on the API's canary"
    );
}

/// Kill -9 through an ordered release and its abort: the daemon is killed at 9 moments (while
/// checkout steps, while payments waits for it, while payments steps, and right after an abort
/// commit), restarted each time. Payments never carries canary traffic before checkout is
/// promoted; the abort of payments completes for both (checkout, promoted in the release, goes
/// back to 0 too); one revert branch.
#[test]
fn killed_through_an_ordered_release_and_its_abort_no_member_runs_ahead_or_stays_on_its_canary() {
    const CHECKOUT: &str = "  steps:\n    - setWeight: 20\n    - pause: {duration: 2s}\n    - setWeight: 50\n    - pause: {duration: 1s}\n";
    const PAYMENTS: &str = "  steps:\n    - setWeight: 20\n    - pause: {}\n";
    let mut w = World::new(0.0, 0.0);
    let g = group(
        "ordered",
        "[{rollout: checkout}, {rollout: payments, dependsOn: [checkout]}]",
    );
    on_stable(&mut w, &g, CHECKOUT, PAYMENTS);
    w.merge_all(
        &[
            ("checkout.yaml", &w.spec(true, CHECKOUT)),
            ("payments.yaml", &payments(&w, true, PAYMENTS)),
        ],
        "release shop",
    );
    let mut kills = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Killed every 0.4 to 0.9 s until payments stands at 20 %.
    while !w
        .status("payments")
        .is_some_and(|s| phase(&s) == "paused" && weight(&s) == 20)
    {
        assert!(std::time::Instant::now() < deadline, "{}", w.logs());
        std::thread::sleep(Duration::from_millis(400 + 100 * (kills % 6)));
        w.kill();
        kills += 1;
        w.start();
    }
    let before_abort = kills;
    w.gate_on("abort", "payments");
    for pause in [50, 150, 300] {
        std::thread::sleep(Duration::from_millis(pause));
        w.kill();
        kills += 1;
        w.start();
    }
    for name in ["checkout", "payments"] {
        let s = w.wait_for(name, 30, "aborted and back on stable", |s| {
            phase(s) == "aborted"
                && s.revert.is_some()
                && s.live
                    .as_ref()
                    .is_some_and(|l| l.backends["green"].get() == 0)
        });
        assert_eq!(weight(&s), 0);
    }
    println!(
        "killed {kills} times ({before_abort} before the abort commit); both aborted, on stable"
    );
    assert!(
        before_abort >= 6,
        "only {before_abort} kills before the abort"
    );
    // Payments never ahead of checkout: its first canary weight after checkout's promotion.
    let promoted_at = w
        .history("checkout")
        .into_iter()
        .find(|s| phase(s) == "promoted")
        .expect("checkout was promoted")
        .updated_at;
    for s in w.history("payments") {
        if weight(&s) > 0 {
            assert!(
                s.updated_at >= promoted_at,
                "payments at {} % before checkout promoted",
                weight(&s)
            );
        }
    }
    // Nothing taken twice: each member's steps only move forward through its history (a
    // restart re-applies the weight it recorded, never an earlier step).
    for name in ["checkout", "payments"] {
        let steps: Vec<usize> = w
            .history(name)
            .iter()
            .filter_map(|s| s.status.progress.run().map(|r| r.step))
            .collect();
        assert!(steps.windows(2).all(|p| p[0] <= p[1]), "{name}: {steps:?}");
    }
    // No weight outside the steps, in either history.
    for (name, allowed) in [("checkout", [0u8, 20, 50]), ("payments", [0, 20, 20])] {
        for s in w.history(name) {
            assert!(allowed.contains(&weight(&s)), "{name}: {s:#?}");
        }
    }
    assert_eq!(w.remote_branches("canaryd/revert").len(), 1);
}

/// `canaryd promote shop` passes every member's pause with one commit; a `git revert` of the
/// release merge then rolls both back.
#[test]
fn a_group_is_promoted_by_one_command_and_rolled_back_by_git_revert() {
    const STEPS: &str = "  steps:\n    - setWeight: 20\n    - pause: {}\n";
    let mut w = World::new(0.0, 0.0);
    let g = group("lockstep", "[{rollout: checkout}, {rollout: payments}]");
    on_stable(&mut w, &g, STEPS, STEPS);
    let merge = w.merge_all(
        &[
            ("checkout.yaml", &w.spec(true, STEPS)),
            ("payments.yaml", &payments(&w, true, STEPS)),
        ],
        "release shop",
    );
    for name in ["checkout", "payments"] {
        w.wait_for(name, 30, "paused at 20 %", |s| {
            phase(s) == "paused" && weight(s) == 20 && s.live.is_some()
        });
    }
    w.gate_on("promote", "shop");
    let message = git(&w.work, &["log", "-1", "--format=%B"]);
    assert!(
        message.contains("Rollout: checkout") && message.contains("Rollout: payments"),
        "{message}"
    );
    for name in ["checkout", "payments"] {
        w.wait_for(name, 30, "promoted", |s| {
            phase(s) == "promoted"
                && s.live
                    .as_ref()
                    .is_some_and(|l| l.backends["green"].get() == 100)
        });
    }
    git(&w.work, &["revert", "--no-edit", &merge]);
    git(&w.work, &["push", "-q", "origin", "HEAD:main"]);
    for name in ["checkout", "payments"] {
        w.wait_for(name, 30, "rolled back to blue", |s| {
            matches!(phase(s), "rolledBack" | "stable")
                && s.live
                    .as_ref()
                    .is_some_and(|l| l.backends.get("green").is_none_or(|g| g.get() == 0))
        });
    }
}

/// Checkout on the embedded router (its built-in provider) and payments on HAProxy (judged by
/// a real Prometheus scraping HAProxy's exporter every second), released as one lockstep
/// group, under load. `fails`: the share of requests payments' canary fails.
struct TwoRouters {
    w: World,
    haproxy: Haproxy,
    _prometheus: crate::support::rig::prometheus::PromServer,
    _payments: Backends,
    merge: String,
    stable: [String; 2],
}

const JUDGED: &str = "[{setWeight: 20}, {analysis: {interval: 5s, count: 2, metrics: [{name: errors, template: error-rate}]}}, {setWeight: 50}, {analysis: {interval: 5s, count: 2, metrics: [{name: errors, template: error-rate}]}}]";

impl TwoRouters {
    fn release(fails: f64) -> TwoRouters {
        TwoRouters::release_in(
            fails,
            &group("lockstep", "[{rollout: checkout}, {rollout: payments}]"),
        )
    }

    /// [`TwoRouters::release`] in the group `g`.
    fn release_in(fails: f64, g: &str) -> TwoRouters {
        let mut w = World::new(0.0, 0.0);
        let payments = w.rt.block_on(Backends::start(&[
            Server::new("blue"),
            Server::new("green").failing(fails),
        ]));
        let haproxy =
            w.rt.block_on(Haproxy::start("payments", payments.upstreams()))
                .unwrap();
        let prometheus =
            crate::support::rig::prometheus::PromServer::start(&[haproxy.metrics]).unwrap();
        w.config = Some(format!("prometheus:\n  url: {}\n", prometheus.url()));
        let (router_doc, mesh) = (w.router_doc(), haproxy.spec());
        let files = |canary: bool| {
            let line = if canary {
                ", canary: {name: green, version: '2'}"
            } else {
                ""
            };
            let checkout = format!(
                "{}apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: checkout}}\n\
                 spec: {{router: edge, service: checkout, stable: {{name: blue, version: '1'}}{line}, steps: {JUDGED}}}\n",
                router_doc
            );
            let pay = format!(
                "apiVersion: canaryd.dev/v1alpha1\nkind: Router\nmetadata: {{name: mesh}}\nspec:\n{}---\n\
                 apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: payments}}\n\
                 spec: {{router: mesh, service: payments, stable: {{name: blue, version: '1'}}{line}, steps: {JUDGED}}}\n",
                mesh
            );
            [checkout, pay]
        };
        let [c, p] = files(false);
        w.merge_all(
            &[
                ("checkout.yaml", &c),
                ("payments.yaml", &p),
                ("shop.yaml", g),
            ],
            "checkout and payments on blue",
        );
        w.start();
        for name in ["checkout", "payments"] {
            w.wait_for(name, 30, "stable", |s| {
                phase(s) == "stable" && s.live.is_some()
            });
        }
        // Users on both routers for the analyses to judge, bounded in time.
        w.background_load(60);
        let front = haproxy.frontend;
        w.rt.spawn(canaryd::edge::backend::load(
            front,
            canaryd::edge::backend::LoadConfig {
                concurrency: 2,
                total: 200_000,
                max_duration: Duration::from_secs(60),
                host: None,
            },
        ));
        let [c2, p2] = files(true);
        let merge = w.merge_all(
            &[("checkout.yaml", &c2), ("payments.yaml", &p2)],
            "release shop: checkout and payments on green",
        );
        TwoRouters {
            w,
            haproxy,
            _prometheus: prometheus,
            _payments: payments,
            merge,
            stable: [c, p],
        }
    }
}

/// The first time `name`'s router read back `weight` (percent) on green, as its status
/// recorded it.
fn read_back_at(w: &World, name: &str, weight: u8) -> chrono::DateTime<chrono::Utc> {
    w.history(name)
        .into_iter()
        .filter_map(|s| s.live.clone())
        .find(|l| l.backends.get("green").is_some_and(|g| g.get() == weight))
        .map(|l| l.at)
        .unwrap_or_else(|| panic!("{name} never read back at {weight} %"))
}

#[test]
fn across_two_real_routers_a_sound_lockstep_release_is_promoted_at_equal_weights() {
    let r = TwoRouters::release(0.0);
    for name in ["checkout", "payments"] {
        r.w.wait_for(name, 90, "promoted", |s| phase(s) == "promoted");
    }
    let mut apart = Vec::new();
    for weight in [20, 50, 100] {
        let (c, p) = (
            read_back_at(&r.w, "checkout", weight),
            read_back_at(&r.w, "payments", weight),
        );
        apart.push((c - p).num_milliseconds().abs());
    }
    println!("two routers, lockstep: read back at 20/50/100 % apart by {apart:?} ms");
    // Each router is read back in the round after the push that sets both.
    assert!(apart.iter().all(|&ms| ms < 1500), "{apart:?}");
    // HAProxy itself says payments' canary carries everything now.
    let observed =
        r.w.rt
            .block_on(r.haproxy.unix().observe("payments"))
            .unwrap();
    assert_eq!(observed.percentages().unwrap()["green"].get(), 100);

    // `git revert` of the release merge: both back on blue, read back from both routers.
    git(&r.w.work, &["revert", "--no-edit", &r.merge]);
    git(&r.w.work, &["push", "-q", "origin", "HEAD:main"]);
    for name in ["checkout", "payments"] {
        r.w.wait_for(name, 30, "rolled back to blue", |s| {
            matches!(phase(s), "rolledBack" | "stable")
                && s.live
                    .as_ref()
                    .is_some_and(|l| l.backends.get("green").is_none_or(|g| g.get() == 0))
        });
    }
    let observed =
        r.w.rt
            .block_on(r.haproxy.unix().observe("payments"))
            .unwrap();
    assert_eq!(observed.percentages().unwrap()["green"].get(), 0);
}

#[test]
fn across_two_real_routers_an_ordered_member_starts_after_its_dependency_is_promoted() {
    let r = TwoRouters::release_in(
        0.0,
        &group(
            "ordered",
            "[{rollout: checkout}, {rollout: payments, dependsOn: [checkout]}]",
        ),
    );
    r.w.wait_for("payments", 90, "promoted", |s| phase(s) == "promoted");
    let checkout_full = read_back_at(&r.w, "checkout", 100);
    let payments_first = read_back_at(&r.w, "payments", 20);
    println!(
        "two routers, ordered: checkout read back at 100 % at {checkout_full}, payments first at 20 % {} ms later",
        (payments_first - checkout_full).num_milliseconds()
    );
    // Its first weight is read back in a later look than checkout's promotion.
    assert!(
        payments_first > checkout_full,
        "{payments_first} not after {checkout_full}"
    );
}

#[test]
fn across_two_real_routers_one_failing_member_takes_both_back_with_one_revert_branch() {
    let mut r = TwoRouters::release(0.2);
    let mut aborted = Vec::new();
    for name in ["payments", "checkout"] {
        aborted.push(r.w.wait_for(name, 60, "aborted with its revert", |s| {
            phase(s) == "aborted"
                && s.revert.is_some()
                && s.live
                    .as_ref()
                    .is_some_and(|l| l.backends["green"].get() == 0)
        }));
    }
    // Payments failed on Prometheus' evidence; checkout went back within one analysis interval
    // (5 s) of that measurement.
    let failing = aborted[0]
        .analysis
        .iter()
        .find(|m| m.metric == "errors" && m.outcome == canaryd::core::analysis::Outcome::Failure)
        .expect("payments' failing measurement");
    let checkout_zero = aborted[1].live.as_ref().unwrap().at;
    let after = (checkout_zero - failing.at).num_milliseconds();
    println!(
        "two routers: payments failed at {}, checkout read back at 0 {after} ms later",
        failing.at
    );
    assert!(after < 5000, "{after} ms");
    let branch = aborted[0].revert.clone().unwrap();
    assert_eq!(aborted[1].revert.as_deref(), Some(branch.as_str()));
    assert_eq!(r.w.remote_branches("canaryd/revert"), vec![branch.clone()]);
    for (file, before) in ["checkout.yaml", "payments.yaml"].iter().zip(&r.stable) {
        let restored = git(&r.w.remote, &["show", &format!("{branch}:rollouts/{file}")]);
        assert_eq!(&restored, before, "{file}");
    }
    let message = git(&r.w.remote, &["log", "-1", "--format=%B", &branch]);
    assert!(message.contains(&r.merge[..12]), "{message}");
    // A restart adds no second branch.
    r.w.kill();
    r.w.start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(r.w.remote_branches("canaryd/revert"), vec![branch]);
}
