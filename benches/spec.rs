//! Speed of the spec side, printed as figures: `cargo bench --bench spec`.
//!
//! - validating a repository of many rollouts (what `lint` and every daemon poll do; `benches/lint.rs`
//!   runs `canaryd lint` itself on 10,000 files);
//! - refusing hostile input: an alias bomb, a 100 MB file, deep nesting;
//! - the planner's cost per decision.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times with the real clock"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use canaryd::core::model::Observed;
use canaryd::core::plan::{self, Inputs};
use canaryd::core::progress::Status;
use canaryd::core::validate::{self, Known, Source};

mod common;
use common::{ROUTER, rollout};

/// Runs `f` `n` times and returns the median duration of one run.
fn median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

fn main() {
    let router = Source {
        file: "routers.yaml".into(),
        text: ROUTER.into(),
    };
    println!("canaryd spec benchmarks (median of repeated runs, debug or release as built)\n");

    for n in [100, 1000] {
        let mut sources = vec![router.clone()];
        sources.extend((0..n).map(|i| Source {
            file: format!("rollouts/svc-{i}.yaml"),
            text: rollout(i),
        }));
        let bytes: usize = sources.iter().map(|s| s.text.len()).sum();
        let t = median(7, || {
            let (catalog, diags) = validate::validate(black_box(&sources), &Known::default());
            assert_eq!(catalog.rollouts.len(), n, "{diags:?}");
        });
        println!(
            "validate {n:>5} rollouts ({:>5} KiB): {:>8.2} ms total, {:>6.1} µs per rollout",
            bytes / 1024,
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e6 / n as f64
        );
    }

    // Hostile input.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    let t = median(101, || {
        let (_, diags) = validate::validate_texts(&[("bomb.yaml", black_box(&bomb))]);
        assert!(diags[0].message.contains("aliases expand"));
    });
    println!(
        "refuse an alias bomb (10^9 nodes expanded): {:>8.1} µs",
        t.as_secs_f64() * 1e6
    );

    let deep = format!("{}1{}", "[".repeat(200_000), "]".repeat(200_000));
    let t = median(21, || {
        let (_, diags) = validate::validate_texts(&[("deep.yaml", black_box(&deep))]);
        assert!(!diags.is_empty());
    });
    println!(
        "refuse 200,000 levels of nesting (400 KB):   {:>8.1} µs",
        t.as_secs_f64() * 1e6
    );

    let wide = "- x\n".repeat(260_000); // just over 1 MiB of nodes
    let t = median(11, || {
        let (_, diags) = validate::validate_texts(&[("wide.yaml", black_box(&wide))]);
        assert!(diags[0].message.contains("too many YAML nodes"));
    });
    println!(
        "refuse 260,000 nodes (1 MiB):                {:>8.1} ms",
        t.as_secs_f64() * 1e3
    );

    let dir = std::env::temp_dir().join(format!("canaryd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let huge = dir.join("huge.yaml");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(100 * 1024 * 1024))
        .expect("sparse file");
    let t = median(101, || {
        let loaded = canaryd::edge::repo::load(std::slice::from_ref(&dir), None).expect("load");
        assert_eq!(loaded.broken.len(), 1);
    });
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "refuse a 100 MB file:                         {:>8.1} µs",
        t.as_secs_f64() * 1e6
    );

    // The planner.
    let sources = [
        router.clone(),
        Source {
            file: "r.yaml".into(),
            text: rollout(1),
        },
    ];
    let (catalog, _) = validate::validate(&sources, &Known::default());
    let spec = &catalog.rollouts[0];
    let live = Observed::weights([("blue".to_string(), 100), ("green".to_string(), 0)].into());
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
        .expect("time")
        .to_utc();
    let first = plan::plan(Inputs {
        spec,
        recorded: &Status::new(&spec.name),
        live: Some(&live),
        samples: &[],
        gates: &[],
        now,
        group: None,
    });
    let live = Observed::weights([("blue".to_string(), 95), ("green".to_string(), 5)].into());
    let rounds = 10_000;
    let t = median(7, || {
        for _ in 0..rounds {
            black_box(plan::plan(Inputs {
                spec,
                recorded: black_box(&first.status),
                live: Some(&live),
                samples: &[],
                gates: &[],
                now,
                group: None,
            }));
        }
    });
    println!(
        "plan one in-flight rollout:                   {:>8.2} µs per plan",
        t.as_secs_f64() * 1e6 / rounds as f64
    );

    // Peak memory of the whole run, hostile inputs included (Linux only).
    if let Some(peak) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
    {
        println!(
            "peak resident memory of this run:            {}",
            peak.trim_start_matches("VmHWM:").trim()
        );
    }
}
