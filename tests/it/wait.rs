//! `canaryd wait` as a CI job runs it, against the real daemon and the embedded router: a merge,
//! then a wait for that merge, which exits 0 for a sound canary, 1 for a failing one (each
//! within 2 s of the status commit that decides it) and 2 on a timeout; and `canaryd status
//! --watch`, which draws the status again every two seconds.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::support::world::{World, phase};

/// Steps that analyse the canary at 50 % (errors, 1 s apart, four times) and go on to 100 %.
const ANALYSED: &str = "  steps:\n    - setWeight: 50\n    - analysis:\n        interval: 1s\n        count: 4\n        metrics:\n          - {name: errors, template: error-rate}\n    - setWeight: 100\n";

/// `canaryd wait checkout` with `args` against the world's remote, started now.
fn wait(w: &World, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["wait", "checkout", "--repo"])
        .arg(&w.remote)
        .args(args)
        .env_remove("CANARYD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit (at most `secs`): its exit code, stdout and stderr, and when it
/// exited.
fn finished(mut child: Child, secs: u64) -> (i32, String, String, chrono::DateTime<Utc>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("canaryd wait still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let at = Utc::now();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap(), out, err, at)
}

/// How long after the status commit that decided it `wait` exited.
fn lag(decided: chrono::DateTime<Utc>, exited: chrono::DateTime<Utc>) -> Duration {
    (exited - decided).to_std().unwrap_or_default()
}

#[test]
fn wait_exits_0_for_a_sound_canary_soon_after_the_promotion() {
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(ANALYSED);
    w.background_load(30);
    let merge = w.merge(
        "checkout.yaml",
        &w.spec(true, ANALYSED),
        "canary: green 1.1",
    );
    // Started at once: the daemon has not read the merge yet, and the status still says the
    // old revision is stable; that is no answer.
    let child = wait(&w, &["--commit", &merge, "--timeout", "60s"]);
    let (code, out, err, exited) = finished(child, 70);
    assert_eq!(code, 0, "{out}{err}");
    let promoted = w.status("checkout").unwrap();
    assert_eq!(phase(&promoted), "promoted");
    let revision = promoted.status.progress.revision().unwrap().to_string();
    assert!(
        out.starts_with(&format!(
            "waiting for checkout revision {revision} (commit {})",
            &merge[..12]
        )),
        "{out}"
    );
    assert!(
        out.contains("checkout: analysing, step 2/3, canary 50%"),
        "{out}"
    );
    assert!(
        out.ends_with(&format!("checkout: revision {revision} is live\n")),
        "{out}"
    );
    let after = lag(promoted.updated_at, exited);
    println!(
        "wait exited {:.2} s after the promotion",
        after.as_secs_f64()
    );
    assert!(after < Duration::from_secs(2), "{after:?}");
}

#[test]
fn wait_exits_1_for_a_failing_canary_with_the_evidence_and_the_revert_branch() {
    let mut w = World::new(0.0, 0.3);
    w.start_on_stable(ANALYSED);
    w.background_load(30);
    let merge = w.merge(
        "checkout.yaml",
        &w.spec(true, ANALYSED),
        "canary: green 1.1",
    );
    let summary = w.dir.path().join("step-summary.md");
    let child = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["wait", "checkout", "--repo"])
        .arg(&w.remote)
        .args(["--commit", &merge, "--timeout", "60s"])
        .env_remove("CANARYD_CONFIG")
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, err, exited) = finished(child, 70);
    assert_eq!(code, 1, "{out}{err}");
    // Under GitHub Actions: an error annotation, one line, and the job summary.
    let annotation = out
        .lines()
        .find(|l| l.starts_with("::error title=canary checkout failed::checkout: revision "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        annotation.contains("%0A  revert branch: canaryd/revert/"),
        "{annotation}"
    );
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.starts_with("### ❌ canary `checkout`\n"),
        "{summary}"
    );
    assert!(summary.contains("aborted: errors = 0."), "{summary}");
    let aborted = w.status("checkout").unwrap();
    assert_eq!(phase(&aborted), "aborted");
    assert!(out.contains("aborted: errors = 0."), "{out}");
    assert!(out.contains("\n  revert branch: canaryd/revert/"), "{out}");
    assert!(
        out.contains("\n  more: canaryd status checkout --repo "),
        "{out}"
    );
    // The abort's first status commit decided it (the revert branch follows in another).
    let decided = w
        .history("checkout")
        .into_iter()
        .find(|s| phase(s) == "aborted")
        .unwrap();
    let after = lag(decided.updated_at, exited);
    println!("wait exited {:.2} s after the abort", after.as_secs_f64());
    assert!(after < Duration::from_secs(2), "{after:?}");
}

#[test]
fn wait_exits_2_when_time_runs_out_and_a_later_merge_supersedes_the_awaited_one() {
    const HELD: &str = "  steps:\n    - setWeight: 20\n    - pause: {}\n";
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(HELD);
    let merge = w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
    let started = Instant::now();
    let child = wait(&w, &["--commit", &merge, "--timeout", "3s"]);
    let (code, out, err, _) = finished(child, 20);
    let took = started.elapsed();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("error: checkout: no decision on revision "),
        "{err}"
    );
    assert!(
        out.contains("paused (until promoted), step 2/2, canary 20%"),
        "{out}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");

    // The spec changes again while the first merge is held: that revision will never finish.
    let child = wait(&w, &["--commit", &merge, "--timeout", "30s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let spec = w.spec(true, HELD).replace("1.1", "1.2");
    w.merge("checkout.yaml", &spec, "canary: green 1.2");
    let (code, out, err, _) = finished(child, 40);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(" superseded by revision "), "{out}");
}

#[test]
fn status_watch_draws_the_status_again_every_two_seconds() {
    const HELD: &str = "  steps:\n    - setWeight: 20\n    - pause: {}\n";
    let mut w = World::new(0.0, 0.0);
    w.start_on_stable(HELD);
    let mut child = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["status", "--watch", "--repo"])
        .arg(&w.remote)
        .env_remove("CANARYD_CONFIG")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The canary starts while it watches.
    w.merge("checkout.yaml", &w.spec(true, HELD), "canary: green 1.1");
    w.wait_for("checkout", 30, "paused at 20 %", |s| phase(s) == "paused");
    std::thread::sleep(Duration::from_millis(4500));
    child.kill().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    let screens: Vec<&str> = out.split("\x1b[2J\x1b[H").skip(1).collect();
    assert!(screens.len() >= 3, "{} screens: {out:?}", screens.len());
    assert!(screens[0].starts_with("rollout checkout: "), "{out:?}");
    let last = screens[screens.len() - 1];
    assert!(
        last.contains("rollout checkout: paused (until promoted)"),
        "{last}"
    );
    assert!(last.contains("canary ████░░░░░░░░░░░░░░░░ 20%"), "{last}");
}

#[test]
fn wait_exits_2_on_time_when_the_repository_never_answers() {
    let rt = crate::support::world::runtime();
    let silent = rt.block_on(crate::support::net::Silent::start());
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .args(["wait", "checkout", "--timeout", "1s", "--repo"])
        .arg(format!("http://{}/shop.git", silent.addr))
        .env_remove("CANARYD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, err, _) = finished(child, 30);
    let took = started.elapsed();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("error: checkout: no decision within 1s"),
        "{err}"
    );
    // The timeout, and the grace a hanging read is given: not a fetch's own minutes.
    assert!(took < Duration::from_secs(15), "{took:?}");
}
