//! `canaryd lint` as a user runs it, printed as figures: `cargo bench --bench lint`.
//!
//! Generates a repository of one router (`routers.yaml`) and N rollouts of the spec benchmark's
//! shape, one file each (`rollouts/svc-{i}.yaml`), runs the release binary on it as a child
//! process, and prints the median wall time and the peak resident memory of the runs. The
//! issue's target: 10,000 rollouts in at most 0.5 s and 100 MB on a 2-core machine.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times the real binary with the real clock"
)]

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Runs per repository size; the first (warming the page cache) is not counted.
const RUNS: usize = 7;

/// GNU time reads the child's peak RSS from `wait4`, which is exact; without it the bench
/// samples `/proc/<pid>/status`.
const GNU_TIME: &str = "/usr/bin/time";

fn repository(dir: &Path, n: usize) {
    let rollouts = dir.join("rollouts");
    fs::create_dir_all(&rollouts).expect("rollouts folder");
    fs::write(dir.join("routers.yaml"), common::ROUTER).expect("routers.yaml");
    for i in 0..n {
        fs::write(rollouts.join(format!("svc-{i}.yaml")), common::rollout(i)).expect("rollout");
    }
}

/// One run of `canaryd lint <dir>`: its wall time, peak resident memory in KiB, and stdout.
fn lint(dir: &Path) -> (Duration, u64, String) {
    let exe = env!("CARGO_BIN_EXE_canaryd");
    let report = dir.with_extension("time");
    let gnu_time = Path::new(GNU_TIME).exists();
    let mut command = if gnu_time {
        let mut c = Command::new(GNU_TIME);
        c.arg("-f").arg("%M").arg("-o").arg(&report).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    command
        .arg("lint")
        .arg(dir)
        .env_remove("CANARYD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let mut child = command.spawn().expect("spawn canaryd");
    let sampled = if gnu_time { 0 } else { sample_peak(&mut child) };
    let out = child.wait_with_output().expect("wait for canaryd");
    let wall = start.elapsed();
    assert!(
        out.status.success(),
        "canaryd lint failed: {:?}",
        out.status
    );
    let peak = if gnu_time {
        let text = fs::read_to_string(&report).expect("GNU time's report");
        text.trim().parse().expect("peak RSS in KiB")
    } else {
        sampled
    };
    (
        wall,
        peak,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The child's `VmHWM` in KiB, read every millisecond until it exits: a lower bound that can
/// miss the last millisecond.
fn sample_peak(child: &mut Child) -> u64 {
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().ok().flatten().is_none() {
        let hwm = fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        });
        peak = peak.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(1));
    }
    peak
}

fn main() {
    println!(
        "canaryd lint benchmark: `canaryd lint <dir>` as a child process, median of {} runs, \
         peak RSS {}\n",
        RUNS - 1,
        if Path::new(GNU_TIME).exists() {
            "from wait4 (GNU time)"
        } else {
            "sampled from /proc every 1 ms (GNU time not found)"
        }
    );
    let root = tempfile::tempdir().expect("temp dir");
    for n in [1_000, 10_000] {
        let dir = root.path().join(format!("repo-{n}"));
        repository(&dir, n);
        let summary = format!("{} files checked: 0 errors, 0 warnings", n + 1);
        let mut walls = Vec::new();
        let mut peak = 0;
        for run in 0..RUNS {
            let (wall, kib, out) = lint(&dir);
            assert_eq!(out.trim(), summary, "unexpected lint output");
            if run > 0 {
                walls.push(wall);
                peak = peak.max(kib);
            }
        }
        walls.sort();
        println!(
            "lint {n:>6} rollouts: {:>7.1} ms median wall ({:.1}-{:.1}), {:>6.1} MB peak RSS",
            walls[walls.len() / 2].as_secs_f64() * 1e3,
            walls[0].as_secs_f64() * 1e3,
            walls[walls.len() - 1].as_secs_f64() * 1e3,
            peak as f64 * 1024.0 / 1e6,
        );
    }
}
