//! The daemon as users run it: the real binary against real Git repositories in temp dirs (a
//! bare remote and a working clone pushed to with the git CLI), the embedded router and real
//! HTTP backends on 127.0.0.1.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::git::{GitDaemon, git};
use crate::support::net::{Silent, free_port, http_get_with};
use crate::support::world::{
    HELD, KILLED, TESTERS_FIRST, World, canary_weight, phase, side_for, verified,
};

const STEPS: &str = "  steps:\n    - setWeight: 20\n    - pause: {duration: 2s}\n    - setWeight: 50\n    - pause: {duration: 1s}\n";

#[test]
fn a_merge_starts_a_canary_that_steps_to_promotion() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(STEPS);
    let before = w.traffic(50);
    assert_eq!(before.by_backend.get("blue"), Some(&50), "{before:?}");

    w.merge("checkout.yaml", &w.spec(true, STEPS), "canary: green 1.1");
    let at20 = w.wait_for("checkout", 20, "step 1 at 20% verified", |s| {
        canary_weight(s) == 20 && verified(s)
    });
    assert_eq!(at20.live.as_ref().unwrap().backends["green"].get(), 20);
    let split = w.traffic(400);
    let green = split.by_backend.get("green").copied().unwrap_or(0);
    assert!((40..=130).contains(&green), "about 20% to green: {split:?}");
    assert_eq!(split.ok, 400);

    // Promotion is written ahead: wait for the record of the router's answer too.
    w.wait_for("checkout", 30, "promoted, read back", |s| {
        phase(s) == "promoted"
            && s.live
                .as_ref()
                .is_some_and(|l| l.backends.get("green").is_some_and(|g| g.get() == 100))
    });
    let after = w.traffic(50);
    assert_eq!(after.by_backend.get("green"), Some(&50), "{after:?}");

    let log = w.status_log("checkout");
    for expected in [
        "checkout: step 1/4 weight 20%",
        "checkout: step 3/4 weight 50%",
        "checkout: promoted",
    ] {
        assert!(log.contains(expected), "missing `{expected}` in:\n{log}");
    }
    // Newest first: promotion after the steps.
    let promoted = log.find("promoted").unwrap();
    let step1 = log.find("step 1/4 weight 20%").unwrap();
    assert!(promoted < step1, "{log}");

    // The admin endpoints: alive, ready, and counting what happened.
    assert!(w.admin_get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(w.admin_get("/readyz").starts_with("HTTP/1.1 200"));
    let metrics = w.admin_get("/metrics");
    for family in [
        "canaryd_reconcile_total{outcome=\"changed\"}",
        "canaryd_weight_changes_total{router=\"edge\"}",
        "canaryd_promotions_total 1",
        "canaryd_step_duration_seconds_count",
        "canaryd_embedded_requests_total{router=\"edge\",service=\"checkout\",backend=\"green\",code_class=\"2xx\"}",
    ] {
        assert!(metrics.contains(family), "missing {family} in:\n{metrics}");
    }

    // `canaryd status` reads the same story from Git.
    let out = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["status", "--repo"])
        .arg(&w.remote)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rollout checkout: promoted"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["status", "checkout", "--output", "json", "--repo"])
        .arg(&w.remote)
        .output()
        .unwrap();
    // One document, one newline after it: what `jq` and a line reader expect.
    assert!(
        out.stdout.ends_with(b"]\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["phase"], "promoted", "{json}");
    assert_eq!(json[0]["desired"]["green"], 100, "{json}");

    assert_eq!(
        w.terminate(),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        w.logs()
    );
    assert!(w.logs().contains("canaryd stopped"));
}

const ANALYSED: &str = "  steps:\n    - setWeight: 50\n    - analysis:\n        interval: 1s\n        count: 4\n        metrics:\n          - {name: errors, template: error-rate}\n    - setWeight: 80\n    - pause: {duration: 1s}\n";

#[test]
fn a_failing_canary_is_aborted_and_its_revert_branch_restores_the_spec() {
    let mut w = World::new(0.0, 0.3);
    let stable_spec = w.spec(false, ANALYSED);
    w.merge("checkout.yaml", &stable_spec, "checkout on blue");
    w.start();
    w.wait_for("checkout", 30, "stable", |s| {
        phase(s) == "stable" && s.live.is_some()
    });
    w.background_load(40);
    let merge = w.merge(
        "checkout.yaml",
        &w.spec(true, ANALYSED),
        "canary: green 1.1",
    );
    let aborted = w.wait_for("checkout", 40, "aborted", |s| {
        phase(s) == "aborted" && s.revert.is_some()
    });

    // Traffic is back on stable, and the status says why, with the numbers.
    assert_eq!(canary_weight(&aborted), 0);
    let after = w.traffic(100);
    assert_eq!(after.by_backend.get("blue"), Some(&100), "{after:?}");
    let errors = aborted
        .analysis
        .iter()
        .find(|m| m.metric == "errors")
        .unwrap();
    assert!(errors.value.unwrap() > 0.01, "{errors:?}");
    let log = w.status_log("checkout");
    assert!(log.contains("checkout: aborted: errors"), "{log}");

    // One revert branch, named from the rollout and the merge, restoring the spec before it.
    let branch = aborted.revert.clone().unwrap();
    assert_eq!(branch, format!("canaryd/revert/checkout-{}", &merge[..12]));
    assert_eq!(w.remote_branches("canaryd/revert"), vec![branch.clone()]);
    let restored = git(
        &w.remote,
        &["show", &format!("{branch}:rollouts/checkout.yaml")],
    );
    assert_eq!(restored, stable_spec);
    let message = git(&w.remote, &["log", "-1", "--format=%B", &branch]);
    assert!(
        message.contains("errors") && message.contains("Reverts: "),
        "{message}"
    );
    // The watched branch is untouched by the daemon.
    assert_eq!(git(&w.remote, &["rev-parse", "main"]).trim(), merge);

    // A restart finds the branch again rather than making another.
    w.kill();
    w.start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(w.remote_branches("canaryd/revert"), vec![branch.clone()]);
    assert_eq!(phase(&w.status("checkout").unwrap()), "aborted");

    // Merging the revert makes Git agree: traffic stays on stable, the status says so.
    git(&w.work, &["pull", "-q", "--no-rebase", "origin", &branch]);
    git(&w.work, &["push", "-q", "origin", "HEAD:main"]);
    w.wait_for("checkout", 20, "rolled back", |s| {
        matches!(phase(s), "rolledBack" | "stable")
    });
    assert_eq!(w.traffic(50).by_backend.get("blue"), Some(&50));
}

#[test]
fn git_revert_of_the_merge_sends_traffic_back_at_once() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(HELD);
    w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
    w.wait_for("checkout", 20, "paused at 30%", |s| {
        phase(s) == "paused" && canary_weight(s) == 30
    });
    git(&w.work, &["revert", "--no-edit", "HEAD"]);
    git(&w.work, &["push", "-q", "origin", "HEAD:main"]);
    let s = w.wait_for("checkout", 20, "rolled back", |s| phase(s) == "rolledBack");
    assert_eq!(canary_weight(&s), 0);
    assert_eq!(w.traffic(50).by_backend.get("blue"), Some(&50));
    assert!(
        w.status_log("checkout")
            .contains("checkout: rolled back from revision")
    );
}

#[test]
fn promote_and_abort_commits_made_by_the_cli_are_honoured() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(HELD);
    w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
    w.wait_for("checkout", 20, "paused", |s| phase(s) == "paused");

    w.gate("promote");
    let s = w.wait_for("checkout", 20, "promoted", |s| phase(s) == "promoted");
    let gate = git(&w.work, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(s.status.last_gate.as_deref(), Some(gate.as_str()));
    assert!(git(&w.work, &["log", "-1", "--format=%B"]).contains("Canaryd-Gate: promote"));

    // A new canary, then an abort by commit.
    let text = w
        .spec(true, HELD)
        .replace("version: \"1.1\"", "version: \"1.2\"");
    w.merge("checkout.yaml", &text, "canary: green 1.2");
    w.wait_for("checkout", 20, "paused again", |s| phase(s) == "paused");
    w.gate("abort");
    let s = w.wait_for("checkout", 20, "aborted", |s| phase(s) == "aborted");
    assert_eq!(canary_weight(&s), 0);
}

#[test]
fn a_concurrent_push_to_the_status_branch_is_survived() {
    let mut w = World::new(0.0, 0.0);
    w.merge("checkout.yaml", &w.spec(false, STEPS), "checkout on blue");
    // Another writer pushes to the status branch right after the daemon's second status push,
    // so the daemon's next push in the same look (planned from the tip it knew) loses the race,
    // every time.
    let hook = w.remote.join("hooks/post-receive");
    std::fs::write(
        &hook,
        r#"#!/bin/sh
while read old new ref; do
  [ "$ref" = "refs/heads/canaryd/status" ] || continue
  echo push >> "$GIT_DIR/pushes"
  # The second status push is the canary's first step; the daemon goes on in the same look.
  if [ "$(wc -l < "$GIT_DIR/pushes")" -eq 2 ]; then
    touch "$GIT_DIR/raced"
    note=$(echo 'hands off' | git hash-object -w --stdin)
    tree=$( (git ls-tree "$new"; printf '100644 blob %s\tNOTES.md\n' "$note") | git mktree)
    c=$(git -c user.name=Other -c user.email=other@example.com commit-tree "$tree" -p "$new" -m "a note")
    git update-ref refs/heads/canaryd/status "$c" "$new"
  fi
done
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Hooks run on a real `git receive-pack`: the daemon talks to the remote over git://.
    let server = GitDaemon::start(w.dir.path());
    w.url = Some(server.url("remote.git"));
    w.start();
    w.wait_for("checkout", 30, "stable", |s| {
        phase(s) == "stable" && s.live.is_some()
    });
    w.merge("checkout.yaml", &w.spec(true, STEPS), "canary: green 1.1");
    w.wait_for("checkout", 30, "promoted", |s| phase(s) == "promoted");
    // The daemon's push lost the race, and it planned again from their version.
    assert!(
        w.remote.join("raced").exists(),
        "the other writer never pushed"
    );
    // Their commit and file are still there, below the daemon's.
    let log = git(&w.remote, &["log", "--format=%s", "canaryd/status"]);
    assert!(
        log.contains("a note") && log.starts_with("checkout: "),
        "{log}"
    );
    assert!(
        w.logs().contains("push of the status branch rejected"),
        "{}",
        w.logs()
    );
    assert_eq!(
        git(&w.remote, &["show", "canaryd/status:NOTES.md"]),
        "hands off\n"
    );
}

#[test]
fn a_broken_spec_holds_its_rollout_and_leaves_the_others_running() {
    let mut w = World::new(0.0, 0.0);
    w.merge("checkout.yaml", &w.spec(false, HELD), "checkout on blue");
    let cart = w
        .spec(false, STEPS)
        .replace("name: checkout", "name: cart")
        .replace("service: checkout", "service: cart");
    // The router document lives in checkout.yaml; cart's file names only the rollout.
    let cart = cart[cart.find("---\n").unwrap() + 4..].to_string();
    w.merge("cart.yaml", &cart, "cart on blue");
    w.start();
    w.wait_for("checkout", 30, "stable", |s| {
        phase(s) == "stable" && s.live.is_some()
    });
    w.wait_for("cart", 30, "stable", |s| {
        phase(s) == "stable" && s.live.is_some()
    });
    w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
    w.wait_for("checkout", 20, "paused at 30%", |s| {
        phase(s) == "paused" && canary_weight(s) == 30
    });

    // cart's file breaks (bad YAML); checkout goes on.
    w.merge(
        "cart.yaml",
        "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {name: cart\n",
        "oops",
    );
    let held = w.wait_for("cart", 20, "invalid", |s| phase(s) == "invalid");
    assert!(matches!(
        held.status.progress,
        canaryd::core::progress::Progress::Invalid { .. }
    ));
    w.gate("promote");
    w.wait_for("checkout", 20, "promoted", |s| phase(s) == "promoted");
    assert_eq!(phase(&w.status("cart").unwrap()), "invalid");
}

#[test]
fn killed_at_any_point_no_step_is_skipped_no_pause_shortened_no_weight_invented() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(KILLED);
    w.merge("checkout.yaml", &w.spec(true, KILLED), "canary: green 1.1");
    // SIGKILL at several points: right after a status commit, and at odd delays between.
    let mut kills = 0;
    for delay_ms in [0u64, 150, 700, 40, 1300, 300, 900, 0] {
        let seen = w.history("checkout").len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.history("checkout").len() == seen && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        if w.status("checkout")
            .is_some_and(|s| phase(&s) == "promoted")
        {
            break;
        }
        w.kill();
        kills += 1;
        w.start();
    }
    assert!(kills >= 4, "killed only {kills} times");
    w.wait_for("checkout", 40, "promoted", |s| phase(s) == "promoted");
    w.killed_rollout_kept_its_steps();
}

#[test]
fn a_commit_to_a_local_repository_wakes_the_daemon_long_before_the_poll() {
    let mut w = World::new(0.0, 0.0);
    w.poll = "5m";
    w.start_on_stable(HELD);
    let merged = Instant::now();
    w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
    // Seconds, where polling would take five minutes (the benchmark measures it: ~0.15 s).
    w.wait_for("checkout", 30, "at 30%", |s| canary_weight(s) == 30);
    assert!(merged.elapsed() < Duration::from_secs(30));
}

#[test]
fn the_revert_branch_passes_over_a_broken_edit_to_the_change_that_started_the_canary() {
    let mut w = World::new(0.0, 0.0);
    let stable = w.spec(false, HELD);
    w.merge("checkout.yaml", &stable, "checkout on blue");
    w.start();
    w.wait_for("checkout", 30, "stable", |s| {
        phase(s) == "stable" && s.live.is_some()
    });
    let canary = w.spec(true, HELD);
    let started = w.merge("checkout.yaml", &canary, "canary: green 1.1");
    w.wait_for("checkout", 20, "paused", |s| phase(s) == "paused");
    // Someone breaks the file, then mends it: same revision, so the rollout goes on.
    w.merge("checkout.yaml", "kind: Rollout\nspec: [\n", "oops");
    w.wait_for("checkout", 20, "invalid", |s| phase(s) == "invalid");
    w.merge("checkout.yaml", &canary, "mend");
    w.wait_for("checkout", 20, "paused again", |s| phase(s) == "paused");
    w.gate("abort");
    let s = w.wait_for("checkout", 20, "aborted, revert pushed", |s| {
        phase(s) == "aborted" && s.revert.is_some()
    });
    let branch = s.revert.unwrap();
    assert_eq!(
        branch,
        format!("canaryd/revert/checkout-{}", &started[..12])
    );
    let restored = git(
        &w.remote,
        &["show", &format!("{branch}:rollouts/checkout.yaml")],
    );
    assert_eq!(restored, stable);
}

#[test]
fn a_gate_is_refused_while_the_spec_has_uncommitted_edits() {
    let w = World::new(0.0, 0.0);
    w.merge("checkout.yaml", &w.spec(true, HELD), "canary");
    std::fs::write(
        w.work.join("rollouts/checkout.yaml"),
        w.spec(true, HELD).replace("1.1", "1.9"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["promote", "checkout", "--repo"])
        .arg(&w.work)
        .env_remove("CANARYD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not committed"), "{err}");
    // Nothing was committed.
    assert!(git(&w.work, &["log", "-1", "--format=%s"]).starts_with("canary"));
}

#[test]
fn not_ready_while_git_cannot_be_read_and_alive_all_the_same() {
    let mut w = World::new(0.0, 0.0);
    w.url = Some(format!(
        "http://robot:s3cret@127.0.0.1:{}/nowhere.git",
        free_port()
    ));
    w.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut healthz = String::new();
    while Instant::now() < deadline {
        if let Ok(s) = std::net::TcpStream::connect(w.admin) {
            drop(s);
            healthz = w.admin_get("/healthz");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    std::thread::sleep(Duration::from_secs(2)); // two failed looks
    assert!(w.admin_get("/readyz").starts_with("HTTP/1.1 503"));
    let metrics = w.admin_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("canaryd_errors_total{class=\"git\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The URL is named in the log, its password never.
    let logs = w.logs();
    assert!(
        logs.contains("127.0.0.1") && logs.contains("nowhere.git"),
        "{logs}"
    );
    assert!(
        !logs.contains("s3cret") && !metrics.contains("s3cret"),
        "{logs}"
    );
}

const JUDGED: &str = "  steps:\n    - setWeight: 50\n    - analysis:\n        interval: 5s\n        count: 1\n        judge:\n          pass: 90\n          marginal: 75\n          step: 1s\n          metrics:\n            - {name: errors, template: error-rate, direction: increase}\n            - {name: latency, template: request-duration, direction: increase}\n    - setWeight: 100\n";

/// The canary-versus-baseline judge through the real daemon and the embedded router: a canary
/// failing 30 % of requests against a sound stable scores 0 and is aborted with the judge's
/// statistics in the status file, the commit and the revert branch.
#[test]
fn the_judge_aborts_a_canary_worse_than_its_baseline() {
    let mut w = World::new(0.0, 0.3);
    w.start_on_stable(JUDGED);
    w.background_load(40);
    w.merge("checkout.yaml", &w.spec(true, JUDGED), "canary: green 1.1");
    let aborted = w.wait_for("checkout", 40, "aborted", |s| {
        phase(s) == "aborted" && s.revert.is_some()
    });
    assert_eq!(canary_weight(&aborted), 0);
    let judged = aborted
        .analysis
        .iter()
        .find(|m| m.metric == "judge")
        .unwrap();
    assert_eq!(judged.value, Some(50.0), "{judged:?}");
    let verdict = judged.judge.as_ref().unwrap();
    let errors = verdict.metrics.iter().find(|m| m.name == "errors").unwrap();
    assert_eq!(
        errors.class,
        canaryd::core::judge::MetricClass::High,
        "{errors:?}"
    );
    assert!(errors.p_value.unwrap() < 0.05, "{errors:?}");
    assert!(errors.canary_count >= 5 && errors.baseline_count >= 5);
    let log = w.status_log("checkout");
    assert!(
        log.contains("checkout: aborted: judge = 50 matched `result < 75`"),
        "{log}"
    );
    let branch = aborted.revert.unwrap();
    let message = git(&w.remote, &["log", "-1", "--format=%B", &branch]);
    assert!(message.contains("errors high (p "), "{message}");
}

#[test]
fn the_judge_promotes_a_canary_as_good_as_its_baseline() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(JUDGED);
    w.background_load(40);
    w.merge("checkout.yaml", &w.spec(true, JUDGED), "canary: green 1.1");
    let promoted = w.wait_for("checkout", 40, "promoted", |s| phase(s) == "promoted");
    let judged = promoted
        .analysis
        .iter()
        .find(|m| m.metric == "judge")
        .unwrap();
    assert_eq!(judged.value, Some(100.0), "{judged:?}");
    assert_eq!(judged.outcome, canaryd::core::analysis::Outcome::Success);
}

#[test]
fn testers_reach_the_canary_at_weight_0_and_nobody_after_an_abort() {
    let mut w = World::new(0.0, 0.0);
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
    assert_eq!(s.sticky, None, "no split at weight 0");
    let marked = [("X-Canary", "always")];
    for _ in 0..20 {
        assert_eq!(side_for(&w, &marked), "green");
        assert_eq!(side_for(&w, &[("X-Canary", "never")]), "blue");
        assert_eq!(side_for(&w, &[]), "blue");
    }
    // The status commit names who sees the canary.
    let log = w.status_log("checkout");
    assert!(
        log.contains("header routes, weight 0%, X-Canary=always → green"),
        "{log}"
    );
    // On to 50 %: the route stays, and each user keeps one side.
    w.gate("promote");
    let s = w.wait_for("checkout", 30, "50 % verified", |s| {
        canary_weight(s) == 50 && verified(s)
    });
    assert!(s.sticky.is_some() && !s.routes.is_empty(), "{s:#?}");
    for user in ["ada", "grace", "linus", "barbara"] {
        let first = side_for(&w, &[("X-User-Id", user)]);
        for _ in 0..5 {
            assert_eq!(side_for(&w, &[("X-User-Id", user)]), first, "{user}");
        }
    }
    w.gate("abort");
    let s = w.wait_for("checkout", 30, "aborted, routes removed", |s| {
        phase(s) == "aborted" && s.routes.is_empty()
    });
    assert_eq!(s.sticky, None);
    for _ in 0..20 {
        assert_eq!(side_for(&w, &marked), "blue");
    }
}

#[test]
fn blue_green_previews_with_a_header_switches_in_one_apply_and_a_revert_switches_back() {
    const BLUE_GREEN: &str = "  strategy:
    blueGreen:
      preview: [{headerName: X-Preview, headerValue: {exact: \"1\"}}]
      autoPromotionEnabled: false
";
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(BLUE_GREEN);
    w.merge(
        "checkout.yaml",
        &w.spec(true, BLUE_GREEN),
        "checkout: green 1.1, blue/green",
    );
    w.wait_for("checkout", 30, "the preview route verified", |s| {
        phase(s) == "paused" && verified(s) && !s.routes.is_empty()
    });
    let preview = [("X-Preview", "1")];
    for _ in 0..20 {
        assert_eq!(side_for(&w, &preview), "green");
    }
    let ordinary = w.traffic(200);
    assert_eq!(ordinary.by_backend.get("blue"), Some(&200), "{ordinary:?}");
    // The switch: one status commit names 100 %, and everyone is on green after it.
    w.gate("promote");
    w.wait_for("checkout", 30, "promoted", |s| phase(s) == "promoted");
    assert_eq!(w.traffic(100).by_backend.get("green"), Some(&100));
    let log = w.status_log("checkout");
    let raised: Vec<&str> = log.lines().filter(|l| l.contains("weight 100%")).collect();
    assert_eq!(raised.len(), 1, "one apply switches all traffic:\n{log}");
    // A revert of the release (the merge, under the promote commit): back on blue within the
    // poll interval (1 s) plus 1 s.
    let started = Instant::now();
    git(&w.work, &["revert", "--no-edit", "HEAD~1"]);
    git(&w.work, &["push", "-q", "origin", "HEAD:main"]);
    while side_for(&w, &[]) != "blue" {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still on green after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    println!("revert → blue serving after {took:?}");
    assert_eq!(w.traffic(100).by_backend.get("blue"), Some(&100));
}

/// Requests the embedded router sent to `backend`, from `/metrics`.
fn served_by(w: &World, backend: &str) -> u64 {
    w.admin_get("/metrics")
        .lines()
        .filter(|l| {
            l.starts_with("canaryd_embedded_requests_total{")
                && l.contains(&format!("backend=\"{backend}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_failing_preview_aborts_blue_green_before_one_ordinary_request_reaches_the_new_side() {
    const BLUE_GREEN: &str = "  strategy:
    blueGreen:
      preview: [{headerName: X-Preview, headerValue: {exact: \"1\"}}]
      prePromotionAnalysis:
        interval: 2s
        count: 5
        metrics:
          - {name: errors, template: error-rate}
";
    // Green fails every request: only the preview traffic may ever find out (enough of it for
    // the template's 20 samples a window).
    let mut w = World::new(0.0, 1.0);
    w.start_on_stable(BLUE_GREEN);
    w.background_load(30);
    w.merge(
        "checkout.yaml",
        &w.spec(true, BLUE_GREEN),
        "checkout: green 1.1, blue/green",
    );
    w.wait_for("checkout", 30, "the preview route verified", |s| {
        verified(s) && !s.routes.is_empty()
    });
    let mut previews = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.status("checkout").is_none_or(|s| phase(&s) != "aborted") {
        assert!(Instant::now() < deadline, "not aborted:\n{}", w.logs());
        // The failing green, until the abort takes the route away (traffic goes back first,
        // Git hears of it after: the last previews may already find blue).
        match http_get_with(w.router, "/", &[("X-Preview", "1")]).unwrap() {
            (500, _) => previews += 1,
            (status, body) => assert_eq!(status, 200, "{body}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = w.status("checkout").unwrap();
    assert!(s.routes.is_empty(), "{s:#?}");
    assert!(
        w.status_log("checkout").contains("aborted: errors"),
        "{}",
        w.status_log("checkout")
    );
    assert!(previews >= 20, "{previews} preview requests reached green");
    // Every request green ever served was a preview request.
    let ordinary = w.traffic(100);
    assert_eq!(ordinary.by_backend.get("blue"), Some(&100));
    assert_eq!(served_by(&w, "green"), previews);
    assert!(
        served_by(&w, "blue") > 100,
        "the ordinary load ran throughout"
    );
}

/// The forge end to end: the daemon against the GitHub stand-in (every request checked
/// against GitHub's published description), with a token from a file.
mod on_github {
    use super::*;
    use crate::support::github::{Expect, FakeGitHub, OWNER, REPO, TOKEN};

    fn with_github(w: &mut World) -> FakeGitHub {
        let gh =
            w.rt.block_on(FakeGitHub::start(Expect::Token(TOKEN.into())));
        w.config = Some(format!(
            "forge:\n  github:\n    apiUrl: {}\n    owner: {OWNER}\n    repo: {REPO}\n    token: {{file: {}}}\n",
            gh.url,
            gh.dir.path().join("token").display()
        ));
        gh
    }

    /// The states of the commit statuses set on `sha`, in order.
    fn states(gh: &FakeGitHub, sha: &str) -> Vec<String> {
        let fake = gh.fake.lock().unwrap();
        fake.statuses
            .iter()
            .filter(|s| s["sha"] == sha && s["context"] == "canaryd/checkout")
            .map(|s| s["state"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until the last status set on `sha` is `state`.
    fn wait_state(gh: &FakeGitHub, sha: &str, state: &str) {
        wait(&format!("the {state} status"), 20, || {
            states(gh, sha).last().map(String::as_str) == Some(state)
        });
    }

    fn wait(what: &str, secs: u64, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn an_abort_opens_one_revert_pull_request_with_the_evidence_and_fails_the_commit_status() {
        let mut w = World::new(0.0, 0.3);
        let gh = with_github(&mut w);
        w.start_on_stable(ANALYSED);
        w.background_load(40);
        let merge = w.merge(
            "checkout.yaml",
            &w.spec(true, ANALYSED),
            "canary: green 1.1",
        );
        let aborted = w.wait_for("checkout", 40, "aborted", |s| {
            phase(s) == "aborted" && s.revert.is_some()
        });
        let branch = aborted.revert.clone().unwrap();
        wait("the pull request", 20, || gh.pulls().len() == 1);
        wait_state(&gh, &merge, "failure");
        let pull = &gh.pulls()[0];
        assert_eq!(pull["head"]["ref"], branch.as_str(), "{pull}");
        assert_eq!(pull["base"]["ref"], "main");
        let title = pull["title"].as_str().unwrap();
        assert!(
            title.contains("Revert checkout") && title.contains(&merge[..12]),
            "{title}"
        );
        let body = pull["body"].as_str().unwrap();
        for evidence in [
            "**Why:** errors = 0.",
            "| errors |",
            "`result <= 0.01`",
            "rollouts/checkout.yaml",
            "/octo-org/shop/blob/canaryd/status/status/checkout.yaml",
        ] {
            assert!(body.contains(evidence), "missing `{evidence}` in:\n{body}");
        }
        // The status file says where the pull request is, and so does its commit.
        let url = format!(
            "https://github.com/{OWNER}/{REPO}/pull/{}",
            pull["number"].as_u64().unwrap()
        );
        w.wait_for("checkout", 20, "the pull request recorded", |s| {
            s.revert_pr.as_deref() == Some(url.as_str())
        });
        let log = w.status_log("checkout");
        assert!(
            log.contains(&format!(
                "checkout: aborted; revert pull request {url} opened"
            )),
            "{log}"
        );
        let seen = states(&gh, &merge);
        assert_eq!(
            seen.first().map(String::as_str),
            Some("pending"),
            "{seen:?}"
        );
        assert_eq!(seen.last().map(String::as_str), Some("failure"), "{seen:?}");
        assert!(
            seen.iter().all(|s| s == "pending" || s == "failure"),
            "{seen:?}"
        );

        // A restart looks the pull request up and opens no second one.
        w.kill();
        gh.clear_log();
        w.start();
        wait("the lookup after the restart", 30, || {
            gh.calls().iter().any(|c| c.starts_with("pulls/list"))
        });
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(gh.pulls().len(), 1);
        assert!(
            !gh.calls().iter().any(|c| c.starts_with("pulls/create")),
            "{:?}",
            gh.calls()
        );
        // Merging the revert rolls back; the commit keeps its failure and its evidence.
        git(&w.work, &["pull", "-q", "--no-rebase", "origin", &branch]);
        git(&w.work, &["push", "-q", "origin", "HEAD:main"]);
        w.wait_for("checkout", 20, "rolled back", |s| {
            matches!(phase(s), "rolledBack" | "stable")
        });
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            states(&gh, &merge).last().map(String::as_str),
            Some("failure")
        );
        gh.assert_clean();
        // The token went nowhere else either: not to the logs, not to the status branch.
        let logs = w.logs();
        assert!(!logs.contains(TOKEN), "token in the daemon's logs");
        let status_branch = git(&w.remote, &["log", "-p", "canaryd/status"]);
        assert!(!status_branch.contains(TOKEN), "token on the status branch");
    }

    /// `git revert` of a canary in progress: its commit's pending status ends in an error
    /// that says so, and the revert commit gets none.
    #[test]
    fn a_reverted_canary_in_progress_ends_its_pending_status() {
        let mut w = World::new(0.0, 0.0);
        let gh = with_github(&mut w);
        w.start_on_stable(HELD);
        let merge = w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
        w.wait_for("checkout", 30, "paused at 30%", |s| phase(s) == "paused");
        wait_state(&gh, &merge, "pending");
        git(&w.work, &["revert", "--no-edit", "HEAD"]);
        git(&w.work, &["push", "-q", "origin", "HEAD:main"]);
        let revert = git(&w.work, &["rev-parse", "HEAD"]).trim().to_string();
        w.wait_for("checkout", 20, "rolled back", |s| phase(s) == "rolledBack");
        wait_state(&gh, &merge, "error");
        let description = {
            let fake = gh.fake.lock().unwrap();
            fake.statuses.last().unwrap()["description"].clone()
        };
        assert!(
            description.as_str().unwrap().contains("rolled back"),
            "{description}"
        );
        assert!(states(&gh, &revert).is_empty());
        gh.assert_clean();
    }

    #[test]
    fn a_promotion_turns_the_commit_status_from_pending_to_success() {
        let mut w = World::new(0.0, 0.0);
        let gh = with_github(&mut w);
        w.start_on_stable(STEPS);
        let merge = w.merge("checkout.yaml", &w.spec(true, STEPS), "canary: green 1.1");
        w.wait_for("checkout", 40, "promoted", |s| phase(s) == "promoted");
        wait_state(&gh, &merge, "success");
        let seen = states(&gh, &merge);
        assert!(seen.len() >= 2 && seen[0] == "pending", "{seen:?}");
        assert!(gh.pulls().is_empty());
        gh.assert_clean();
    }
}

/// One rollout's analysis asks a Prometheus that accepts and never answers; another rollout's
/// pause still ends on time, and it steps on: a slow provider holds up only its own rollout.
#[test]
fn a_hanging_prometheus_does_not_delay_another_rollouts_step() {
    let mut w = World::new(0.0, 0.0);
    // Accepts and never answers: every query hangs.
    let hang = w.rt.block_on(Silent::start());
    let hang_addr = hang.addr;
    w.config = Some(format!(
        "prometheus:\n  url: http://{hang_addr}\n  timeout: 30s\n"
    ));
    let analysed = "  steps:\n    - setWeight: 10\n    - analysis:\n        interval: 1s\n        count: 3\n        metrics:\n          - name: hangs\n            provider: prometheus\n            query: vector(0)\n            successCondition: result < 1\n    - setWeight: 50\n";
    let cart = "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {name: cart}\nspec:\n  router: edge\n  service: cart\n  stable: {name: blue, version: \"1.0\"}\n  canary: {name: green, version: \"1.1\"}\n  steps:\n    - setWeight: 20\n    - pause: {duration: 2s}\n    - setWeight: 40\n    - pause: {}\n";
    w.merge("cart.yaml", cart, "cart: canary");
    w.merge("checkout.yaml", &w.spec(true, analysed), "checkout: canary");
    w.start();
    w.wait_for("cart", 30, "step 3 at 40 %", |s| {
        s.desired.get("green").is_some_and(|g| g.get() == 40)
    });
    let files = w.history("cart");
    let until = files
        .iter()
        .find_map(|f| match &f.status.progress {
            canaryd::core::progress::Progress::Paused {
                until: Some(until), ..
            } => Some(*until),
            _ => None,
        })
        .expect("a timed pause");
    let stepped = files
        .iter()
        .find_map(|f| {
            f.status
                .progress
                .run()
                .filter(|r| r.step == 2)
                .map(|r| r.step_started_at)
        })
        .expect("step 3");
    let late = (stepped - until).to_std().unwrap_or_default();
    let first = hang
        .first_connection()
        .expect("checkout queried Prometheus");
    println!(
        "cart's pause ended at {until}, step 3 began {late:?} later; the hang began at {first}"
    );
    assert!(
        first < until,
        "the hang was not under way when the pause ended"
    );
    let checkout = w.status("checkout").unwrap();
    assert_eq!(phase(&checkout), "analysing", "{checkout:?}");
    assert!(
        late <= Duration::from_millis(100),
        "step 3 {late:?} late\n{}",
        w.logs()
    );
    drop(hang);
}
