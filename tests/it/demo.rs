//! `canaryd demo` tells the whole story on the real `run` path: a promotion, an abort with its
//! revert branch, and the revert merged.

#[test]
fn the_demo_promotes_aborts_and_rolls_back_through_git() {
    let scratch = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let summary = canaryd::edge::demo::run(&mut out, scratch.path());
    let text = String::from_utf8_lossy(&out).into_owned();
    let summary = summary.unwrap_or_else(|e| panic!("{e:#?}\n{text}"));
    assert_eq!(
        summary.phases,
        ["promoted", "aborted", "rolledBack"],
        "{text}"
    );
    assert_eq!(
        summary.weights[0],
        [20, 50, 100],
        "act 1 walks the steps: {text}"
    );
    assert_eq!(
        summary.weights[1].last(),
        Some(&0),
        "act 2 ends at 0: {text}"
    );
    assert!(
        summary.weights[1].iter().all(|w| [0, 20].contains(w)),
        "act 2 aborts at its first step: {text}"
    );
    assert_eq!(
        summary.weights[2].last(),
        Some(&100),
        "act 3 restores the promoted canary: {text}"
    );
    // The revert branch restores act 1's spec exactly.
    assert!(
        summary
            .revert
            .as_deref()
            .unwrap()
            .starts_with("canaryd/revert/checkout-")
    );
    assert_eq!(
        summary.reverted_spec.as_deref(),
        Some(summary.act1_spec.as_str())
    );
    // Git tells the story, newest first.
    let log = summary.log.join("\n");
    for expected in [
        "promoted",
        "aborted: ",
        "revert branch",
        "rolled back from revision",
    ] {
        assert!(log.contains(expected), "missing `{expected}`:\n{log}");
    }
    // The router dropped nothing while weights moved; only the failing canary answered 5xx.
    assert_eq!(summary.load.failed, 0, "{:?}", summary.load);
    assert!(summary.load.sent > 100, "{:?}", summary.load);
    assert!(summary.took.as_secs() < 60, "took {:?}", summary.took);
    assert!(
        text.contains("$ git log --oneline canaryd/status"),
        "{text}"
    );
    // Act 4: a two-service release aborted together, one revert branch restoring both files.
    assert_eq!(summary.group_phases, ["aborted", "aborted"], "{text}");
    let branch = summary.group_revert.as_deref().unwrap_or_default();
    assert!(
        branch.starts_with("canaryd/revert/shop-"),
        "{branch}\n{text}"
    );
    assert_eq!(
        summary.group_restored["rollouts/checkout.yaml"].as_deref(),
        Some(summary.act1_spec.as_str()),
        "{text}"
    );
    let payments = summary.group_restored["rollouts/payments.yaml"]
        .as_deref()
        .unwrap_or_default();
    assert!(
        payments.contains("name: payments") && !payments.contains("canary:"),
        "{payments}"
    );
    assert!(
        summary
            .group_log
            .iter()
            .any(|l| l.contains("release shop: aborted: `payments` failed")),
        "{:?}\n{text}",
        summary.group_log
    );
    println!("{text}");
}
