//! Rollout groups through the real daemon and the embedded router: two members, `checkout` and
//! `payments`, on two services of one router, released by one merge.

use std::time::Duration;

use crate::support::git::git;
use crate::support::world::{World, phase};
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
