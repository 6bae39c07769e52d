//! The command line as users and CI run it: exit codes, human and JSON output.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use canaryd::core::model::Revision;
use canaryd::core::progress::{Progress, Status};
use canaryd::core::record::StatusFile;

fn canaryd(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(args)
        .current_dir(dir)
        .env_remove("CANARYD_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn lint_exits_0_on_the_examples() {
    let o = canaryd(&["lint", "examples/"], root());
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).ends_with("files checked: 0 errors, 0 warnings\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn lint_exits_1_with_file_line_column_and_help() {
    let o = canaryd(
        &["lint", "examples/invalid/weight-out-of-range.yaml"],
        root(),
    );
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("error: weight 150 is out of range\n"), "{out}");
    assert!(
        out.contains("--> examples/invalid/weight-out-of-range.yaml:13:18\n"),
        "{out}"
    );
    assert!(out.contains("13 |     - setWeight: 150\n"), "{out}");
    assert!(out.contains("^ spec.steps[1].setWeight\n"), "{out}");
    assert!(
        out.contains("= help: weights are the percentage of requests sent to the canary"),
        "{out}"
    );
}

#[test]
fn lint_json_is_machine_readable() {
    let o = canaryd(
        &["lint", "--output", "json", "examples/invalid/bad-cron.yaml"],
        root(),
    );
    assert_eq!(o.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["errors"], 1);
    let d = &json["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(14), Some(11))
    );
    assert_eq!(d["field"], "spec.window.cron");
    assert_eq!(d["severity"], "error");
}

#[test]
fn lint_exits_2_when_it_cannot_run() {
    let o = canaryd(&["lint", "no/such/dir"], root());
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: path no/such/dir does not exist\n"
    );
}

#[test]
fn lint_warnings_fail_only_when_denied() {
    let dir = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(root().join("examples/basic.yaml"))
        .unwrap()
        .replace("setWeight: 50", "setWeight: 10");
    fs::write(dir.path().join("web.yaml"), text).unwrap();
    fs::copy(
        root().join("examples/routers.yaml"),
        dir.path().join("routers.yaml"),
    )
    .unwrap();
    assert_eq!(canaryd(&["lint", "."], dir.path()).status.code(), Some(0));
    assert_eq!(
        canaryd(&["lint", "--deny-warnings", "."], dir.path())
            .status
            .code(),
        Some(1)
    );
}

/// A repository with the basic example and live weights all on stable.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("rollouts")).unwrap();
    for f in ["basic.yaml", "routers.yaml"] {
        fs::copy(
            root().join("examples").join(f),
            dir.path().join("rollouts").join(f),
        )
        .unwrap();
    }
    fs::write(
        dir.path().join("live.json"),
        r#"{"edge/checkout": {"checkout-blue": 100, "checkout-green": 0}}"#,
    )
    .unwrap();
    dir
}

const NOW: &str = "2026-11-26T10:00:00Z";

/// `canaryd plan --output json` in `dir`: the exit code and the plans.
fn plan_json(dir: &Path) -> (Option<i32>, serde_json::Value) {
    let o = canaryd(
        &[
            "plan",
            "--live",
            "live.json",
            "--now",
            NOW,
            "--output",
            "json",
        ],
        dir,
    );
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap())
}

#[test]
fn plan_shows_the_diff_and_exits_1_when_changes_are_pending() {
    let dir = repo();
    let o = canaryd(&["plan", "--live", "live.json", "--now", NOW], dir.path());
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    assert!(out.starts_with("rollout checkout (revision "), "{out}");
    assert!(
        out.contains("  phase:  pending -> progressing, step 1/4 (canary 10%, unverified)\n"),
        "{out}"
    );
    assert!(
        out.contains("  action: set canary weight 10% (step 1)\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "    - checkout-blue 100%\n    - checkout-green 0%\n    + checkout-blue 90%\n    + checkout-green 10%\n"
        ),
        "{out}"
    );
}

#[test]
fn plan_json_carries_the_next_status() {
    let dir = repo();
    let (code, plans) = plan_json(dir.path());
    assert_eq!(code, Some(1));
    let p = &plans[0];
    assert_eq!(p["action"]["action"], "setWeight");
    assert_eq!(p["traffic"]["backends"]["checkout-green"], 10);
    assert_eq!(p["status"]["progress"]["phase"], "progressing");
    assert_eq!(p["status"]["progress"]["run"]["step"], 0);
}

#[test]
fn plan_exits_0_when_live_traffic_matches_the_recorded_state() {
    let dir = repo();
    // Find the revision, record it as promoted, and put live traffic where a promotion leaves it.
    let (_, plans) = plan_json(dir.path());
    let revision = plans[0]["status"]["progress"]["run"]["revision"]
        .as_str()
        .unwrap();
    let mut status = Status::new("checkout");
    status.progress = Progress::Promoted {
        revision: Revision::from(revision),
        at: NOW.parse().unwrap(),
    };
    status.promoted = vec![Revision::from(revision)];
    // A status file as the status branch holds it.
    let mut file = StatusFile::new("checkout", NOW.parse().unwrap());
    file.status = status;
    fs::create_dir(dir.path().join("status")).unwrap();
    fs::write(
        dir.path().join("status/checkout.yaml"),
        file.to_yaml().unwrap(),
    )
    .unwrap();
    fs::write(
        dir.path().join("live.json"),
        r#"{"edge/checkout": {"checkout-blue": 0, "checkout-green": 100}}"#,
    )
    .unwrap();
    let o = canaryd(
        &[
            "plan",
            "--live",
            "live.json",
            "--status",
            "status",
            "--now",
            NOW,
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("action: wait: promoted; traffic matches"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn plan_holds_when_the_router_is_unknown() {
    let dir = repo();
    fs::write(dir.path().join("live.json"), "{}").unwrap();
    let o = canaryd(&["plan", "--live", "live.json", "--now", NOW], dir.path());
    let out = stdout(&o);
    // Starting writes the first step and asks for its weight; the router answers nothing.
    assert!(out.contains("(unknown)"), "{out}");
}

#[test]
fn plan_reports_an_invalid_spec_and_leaves_its_traffic() {
    let dir = repo();
    let path = dir.path().join("rollouts/basic.yaml");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("setWeight: 50", "setWeight: 500");
    fs::write(&path, text).unwrap();
    let (code, plans) = plan_json(dir.path());
    assert_eq!(code, Some(1), "the status changes to invalid");
    assert_eq!(plans[0]["action"]["action"], "invalid");
    assert!(
        plans[0]["traffic"].is_null(),
        "traffic is left exactly as it is"
    );
    let errors = &plans[0]["status"]["progress"]["errors"][0];
    assert!(
        errors.as_str().unwrap().contains(
            "rollouts/basic.yaml:20:18: spec.steps[2].setWeight: weight 500 is out of range"
        ),
        "{errors}"
    );
}

#[test]
fn plan_exits_2_on_unreadable_input() {
    let dir = repo();
    fs::write(dir.path().join("live.json"), "not json").unwrap();
    let o = canaryd(&["plan", "--live", "live.json"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: live weights:"));
    let o = canaryd(
        &["plan", "--live", "live.json", "--repo", "nowhere"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn schema_prints_the_rollout_schema() {
    let o = canaryd(&["schema"], root());
    assert_eq!(o.status.code(), Some(0));
    let committed = fs::read_to_string(root().join("schemas/rollout.json")).unwrap();
    assert_eq!(stdout(&o), committed);
}

#[test]
fn plan_fails_when_a_spec_file_cannot_be_parsed() {
    let dir = repo();
    fs::write(
        dir.path().join("rollouts/broken.yaml"),
        "kind: Rollout\nmetadata: [web\n",
    )
    .unwrap();
    let o = canaryd(&["plan", "--live", "live.json", "--now", NOW], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).contains("rollout checkout"),
        "the others are still planned"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: rollouts/broken.yaml:2:11: malformed YAML: unclosed bracket"),
        "{err}"
    );
}
