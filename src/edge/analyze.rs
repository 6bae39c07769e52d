//! `canaryd analyze NAME`: every analysis of one rollout measured once against live metrics,
//! with the verdict each measurement would give, changing nothing (no traffic, no commit). It
//! is how teams tune queries and thresholds before a canary depends on them (Argo Rollouts'
//! dry-run, as a command).

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::analysis::Outcome;
use crate::core::model::{Analysis, Rollout, Step};
use crate::core::number::short;
use crate::core::record::MetricValue;
use crate::edge::provider::{self, Providers};

/// One analysis of the rollout, measured once.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measured {
    /// `step 3` or `background`.
    pub analysis: String,
    /// The window each value covers, in seconds.
    pub window_seconds: f64,
    pub metrics: Vec<MetricValue>,
    /// What these measurements alone would say.
    pub verdict: Word,
}

/// The verdict of one round of measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Word {
    /// Every metric succeeded.
    Pass,
    /// A metric failed: the daemon would count a failure (and abort at `failureLimit` 0).
    Fail,
    /// A metric had no data, too few samples or matched neither condition.
    Inconclusive,
    /// A metric could not be measured (provider down, query rejected).
    Error,
}

/// The analyses of `rollout`, in step order, then the background one.
pub fn analyses(rollout: &Rollout) -> Vec<(String, &Analysis)> {
    let mut out: Vec<(String, &Analysis)> = rollout
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Step::Analysis(a) => Some((format!("step {}", i + 1), a)),
            _ => None,
        })
        .collect();
    if let Some(a) = &rollout.background {
        out.push(("background".to_string(), a));
    }
    out
}

/// Measures every metric of every analysis of `rollout` once, as of `now`. No router is
/// connected: the only provider that needs one is the embedded router's counters, which live in
/// the daemon that runs it (connecting here would start a second router), and those metrics say
/// so.
pub async fn analyze(
    rollout: &Rollout,
    providers: &Providers,
    now: DateTime<Utc>,
) -> Vec<Measured> {
    let target = rollout.target();
    let mut out = Vec::new();
    for (label, a) in analyses(rollout) {
        let window = a.window();
        let mut metrics = Vec::new();
        for metric in &a.metrics {
            let (_, value) = provider::take(metric, target, None, window, providers, now).await;
            metrics.push(value);
        }
        let verdict = verdict(&metrics);
        out.push(Measured {
            analysis: label,
            window_seconds: window.as_secs_f64(),
            metrics,
            verdict,
        });
    }
    out
}

fn verdict(values: &[MetricValue]) -> Word {
    let any = |o: Outcome| values.iter().any(|v| v.outcome == o);
    if any(Outcome::Failure) {
        Word::Fail
    } else if any(Outcome::Error) {
        Word::Error
    } else if any(Outcome::Inconclusive) {
        Word::Inconclusive
    } else {
        Word::Pass
    }
}

/// The exit code of `canaryd analyze`: 0 every analysis passes, 1 one fails or is
/// inconclusive, 2 a metric could not be measured.
pub fn exit_code(measured: &[Measured]) -> u8 {
    if measured.iter().any(|m| m.verdict == Word::Error) {
        2
    } else if measured.iter().all(|m| m.verdict == Word::Pass) {
        0
    } else {
        1
    }
}

/// The report a person reads.
pub fn human(rollout: &Rollout, measured: &[Measured]) -> String {
    let mut out = String::new();
    let target = rollout.target();
    let canary = target.canary.as_ref().map_or("(none)", |c| c.name.as_str());
    let _ = writeln!(
        out,
        "rollout {}: canary {canary} against stable {} on {}/{}",
        rollout.name, target.stable.name, target.router, target.service
    );
    if measured.is_empty() {
        let _ = writeln!(out, "  no analysis in this rollout");
    }
    for m in measured {
        let word = match m.verdict {
            Word::Pass => "would pass",
            Word::Fail => "would fail",
            Word::Inconclusive => "inconclusive",
            Word::Error => "could not be measured",
        };
        let _ = writeln!(
            out,
            "{} analysis over the last {}: {word}",
            m.analysis,
            crate::core::spec::duration::display(Duration::from_secs_f64(m.window_seconds))
        );
        for v in &m.metrics {
            let value = v.value.map_or_else(|| "no data".to_string(), short);
            let mark = match v.outcome {
                Outcome::Success => "ok",
                Outcome::Failure => "FAIL",
                Outcome::Inconclusive => "inconclusive",
                Outcome::Error => "ERROR",
            };
            let _ = write!(out, "  {:<12} {value:>10}  {mark}", v.metric);
            if let Some(c) = &v.condition {
                let _ = write!(out, " `{c}`");
            }
            if let Some(n) = v.samples {
                let _ = write!(out, "  ({n} samples)");
            }
            let _ = writeln!(out);
            if let Some(msg) = &v.message {
                let _ = writeln!(out, "      {msg}");
            }
            if let Some(q) = &v.query {
                let _ = writeln!(out, "      query: {q}");
            }
        }
    }
    out
}
