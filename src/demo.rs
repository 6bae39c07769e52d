//! `canaryd demo`: a promotion, an abort and a revert, driven by the real planner against a simulated router and metrics on a simulated clock.
//!
//! Nothing is installed and nothing leaves the process: the router is a map of weights, the
//! metrics are the error rates the two demo backends are set to produce, and time is a
//! parameter. What runs is the product's decision logic: the same `validate` and `plan` that
//! `canaryd lint` and `canaryd plan` use, executed the way the daemon executes plans (record
//! the status, apply the traffic, read it back, measure what the plan asks for).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::thread;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};

use crate::analysis::{self, Evidence};
use crate::model::{Observed, Rollout, Step, Weight};
use crate::plan::{self, Action, AnalysisRef, Inputs, Plan, Sample};
use crate::progress::{Progress, Status};
use crate::validate;

/// What the demo showed, for its test.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Canary weights applied to the simulated router, in order, per act.
    pub weights: Vec<Vec<u8>>,
    /// The final phase of each act.
    pub phases: Vec<String>,
    /// The evidence of the abort.
    pub abort: Option<Evidence>,
}

const ROUTER: &str = "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {name: edge}
spec: {kind: embedded, listen: \"127.0.0.1:8080\", backends: {blue: \"http://127.0.0.1:9001\", green: \"http://127.0.0.1:9002\"}}
---
";

fn spec(stable: (&str, &str), canary: (&str, &str)) -> String {
    format!(
        "{ROUTER}apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {{name: checkout}}
spec:
  router: edge
  service: checkout
  stable: {{name: {}, version: \"{}\"}}
  canary: {{name: {}, version: \"{}\"}}
  steps:
    - setWeight: 10
    - analysis:
        interval: 30s
        count: 3
        metrics:
          - {{name: errors, template: error-rate}}
    - setWeight: 50
    - pause: {{duration: 2m}}
  analysis:
    interval: 1m
    metrics:
      - {{name: success, template: request-success-rate}}
",
        stable.0, stable.1, canary.0, canary.1
    )
}

/// The simulated world: router weights, each backend's error rate, the clock.
struct World {
    now: DateTime<Utc>,
    router: Observed,
    error_rate: BTreeMap<String, f64>,
    status: Status,
    tick: u64,
}

impl World {
    /// What the embedded provider would report for `query` on the canary: a small,
    /// deterministic wobble around the backend's error rate.
    fn measure(&mut self, rollout: &Rollout, query: &str) -> Option<f64> {
        let canary = rollout.target().canary.as_ref()?;
        self.tick += 1;
        let wobble = ((self.tick * 7919) % 11) as f64 / 10_000.0;
        let errors = self.error_rate.get(&canary.name).copied().unwrap_or(0.0) + wobble;
        match query {
            "error_rate" => Some(errors),
            "success_rate" => Some(1.0 - errors),
            "latency_p99_ms" => Some(120.0),
            _ => None,
        }
    }
}

/// Runs the demo, writing the narration to `out` and pausing `pace` between events.
pub fn run(out: &mut dyn Write, pace: Duration) -> io::Result<Summary> {
    let mut world = World {
        now: Utc
            .with_ymd_and_hms(2026, 1, 12, 10, 0, 0)
            .single()
            .unwrap_or_default(),
        router: Observed {
            backends: [("blue".to_string(), 100), ("green".to_string(), 0)].into(),
        },
        error_rate: [("blue".to_string(), 0.002), ("green".to_string(), 0.002)].into(),
        status: Status::new("checkout"),
        tick: 0,
    };
    let mut summary = Summary::default();

    writeln!(
        out,
        "canaryd demo: one service, two backends (blue, green), the real planner."
    )?;
    writeln!(
        out,
        "The router and the metrics are simulated in memory; time runs on a simulated clock.\n"
    )?;

    // Each act: what happened in Git, how the blue backend now behaves, and the spec merged.
    let acts = [
        (
            "Act 1. A pull request sets the canary: green runs checkout 1.1 (0.2% errors).",
            0.002,
            spec(("blue", "1.0"), ("green", "1.1")),
        ),
        (
            "Act 2. The next pull request swaps the slots: blue gets checkout 1.2, which fails 8% of requests.",
            0.08,
            spec(("green", "1.1"), ("blue", "1.2")),
        ),
        (
            "Act 3. The revert pull request is merged: the spec is back at the promoted revision.",
            0.08,
            spec(("blue", "1.0"), ("green", "1.1")),
        ),
    ];
    for (i, (story, blue_errors, text)) in acts.iter().enumerate() {
        writeln!(out, "{}{story}", if i == 0 { "" } else { "\n" })?;
        world.error_rate.insert("blue".into(), *blue_errors);
        act(out, pace, &mut world, text, &mut summary)?;
    }

    writeln!(
        out,
        "\nThe daemon (`canaryd run`) executes these same plans against a real router, commits each\n\
         status to Git and pushes the revert branch; `canaryd plan` prints them without acting."
    )?;
    Ok(summary)
}

fn act(
    out: &mut dyn Write,
    pace: Duration,
    world: &mut World,
    text: &str,
    summary: &mut Summary,
) -> io::Result<()> {
    let (catalog, diags) = validate::validate_texts(&[("rollouts/checkout.yaml", text)]);
    let Some(rollout) = catalog.rollouts.first() else {
        return Err(io::Error::other(format!("demo spec is invalid: {diags:?}")));
    };
    writeln!(
        out,
        "  revision {} ({} steps, then promote)",
        rollout.revision,
        rollout.steps.len()
    )?;
    let mut weights = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    for _ in 0..200 {
        let p = plan::plan(Inputs {
            spec: rollout,
            recorded: &world.status,
            live: Some(&world.router),
            samples: &samples,
            gates: &[],
            now: world.now,
        });
        samples.clear();
        // Execute the plan as the daemon does: record, apply, read back, measure.
        world.status = p.status.clone();
        if let Some(traffic) = &p.traffic {
            world.router.backends = traffic
                .backends
                .iter()
                .map(|(name, w)| (name.clone(), u32::from(w.get())))
                .collect();
            if let Some(w) = rollout.target().live_canary(&world.router) {
                weights.push(w.get());
            }
        }
        narrate(out, world, rollout, &p)?;
        for due in &p.measure {
            let Some(metric) = metric(rollout, due.analysis, &due.metric) else {
                continue;
            };
            let value = world.measure(rollout, &metric.query);
            let measurement = analysis::evaluate(metric, Ok(value), world.now);
            samples.push(Sample {
                revision: rollout.revision.clone(),
                analysis: due.analysis,
                metric: due.metric.clone(),
                measurement,
            });
        }
        if let (Some(revert), Action::Abort { .. }) = (&p.revert, &p.action) {
            writeln!(
                out,
                "             revert branch canaryd/revert/checkout-{}: restore the spec before this change",
                revert.revision
            )?;
            summary.abort = Some(revert.evidence.clone());
        }
        let settled = matches!(
            world.status.progress,
            Progress::Promoted { .. } | Progress::Aborted { .. } | Progress::RolledBack { .. }
        ) && p.traffic.is_none();
        if settled {
            break;
        }
        if samples.is_empty() && p.traffic.is_none() {
            world.now = p.wake.unwrap_or(world.now + chrono::Duration::seconds(10));
        }
        if p.traffic.is_some() || !matches!(p.action, Action::Wait { .. }) {
            thread::sleep(pace);
        }
    }
    summary.weights.push(weights);
    summary
        .phases
        .push(world.status.progress.phase().to_string());
    Ok(())
}

fn metric<'a>(
    rollout: &'a Rollout,
    which: AnalysisRef,
    name: &str,
) -> Option<&'a crate::model::Metric> {
    let analysis = match which {
        AnalysisRef::Background => rollout.background.as_ref()?,
        AnalysisRef::Step(k) => match rollout.steps.get(k)? {
            Step::Analysis(a) => a,
            _ => return None,
        },
    };
    analysis.metrics.iter().find(|m| m.name == name)
}

fn narrate(out: &mut dyn Write, world: &World, rollout: &Rollout, p: &Plan) -> io::Result<()> {
    if matches!(p.action, Action::Wait { .. }) && p.measure.is_empty() {
        return Ok(());
    }
    let canary = rollout
        .target()
        .live_canary(&world.router)
        .unwrap_or(Weight::ZERO);
    let mut line = format!(
        "  [{}] {} {:>4}  ",
        world.now.format("%H:%M:%S"),
        bar(canary),
        canary.to_string()
    );
    let _ = write!(line, "{}", p.action);
    if !p.measure.is_empty() {
        let names: Vec<&str> = p.measure.iter().map(|d| d.metric.as_str()).collect();
        let _ = write!(line, "; measure {}", names.join(", "));
    }
    writeln!(out, "{line}")
}

/// A 20-cell progress bar of the canary's share.
pub fn bar(w: Weight) -> String {
    let filled = usize::from(w.get()) / 5;
    format!("{}{}", "█".repeat(filled), "░".repeat(20 - filled))
}
