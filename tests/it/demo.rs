//! `canaryd demo` tells the whole story: a promotion, an abort with its revert, and a revert.

use std::time::Duration;

#[test]
fn the_demo_promotes_aborts_and_rolls_back() {
    let mut out = Vec::new();
    let summary = canaryd::demo::run(&mut out, Duration::ZERO).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        summary.phases,
        ["promoted", "aborted", "rolledBack"],
        "{text}"
    );
    assert_eq!(
        summary.weights[0],
        [10, 50, 100],
        "act 1 walks the steps: {text}"
    );
    assert_eq!(summary.weights[1], [10, 0], "act 2 aborts at once: {text}");
    assert_eq!(
        summary.weights[2],
        [100],
        "act 3 restores the promoted canary: {text}"
    );
    let evidence = summary.abort.unwrap();
    assert_eq!(evidence.metric.as_deref(), Some("success"));
    assert!(
        evidence.values.iter().all(|v| v.is_some_and(|v| v < 0.99)),
        "{evidence:?}"
    );
    assert!(
        text.contains("revert branch canaryd/revert/checkout-"),
        "{text}"
    );
}

#[test]
fn the_demo_command_runs_with_nothing_installed() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["demo", "--fast"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("promote: canary to 100%"));
}
