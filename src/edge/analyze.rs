//! `canaryd analyze NAME`: every analysis of one rollout measured once against live metrics,
//! with the verdict each measurement would give, changing nothing (no traffic, no commit). It
//! is how teams tune queries and thresholds before a canary depends on them (Argo Rollouts'
//! dry-run, as a command).

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::analysis::Outcome;
use crate::core::model::{Analysis, Observed, Rollout, Step, describe_matches};
use crate::core::number::short;
use crate::core::record::MetricValue;
use crate::edge::provider::{self, Providers};

/// What `canaryd analyze` found: the traffic live on the rollout's router as it measured, and
/// every analysis measured once.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub rollout: String,
    /// `router/service`.
    pub service: String,
    /// The weights, routes and sticky key the router held, read from it: which users the
    /// canary's measurements came from. `None` when it could not be read.
    pub live: Option<Observed>,
    /// Why the live traffic is unknown, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_unknown: Option<String>,
    pub analyses: Vec<Measured>,
}

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
            // The hooks' own steps (gates, pre-rollout calls) are not analyses to try.
            Step::Analysis(a) if a.metrics.iter().any(|m| m.hook.is_none()) => {
                Some((format!("step {}", i + 1), a))
            }
            _ => None,
        })
        .collect();
    if let Some(a) = &rollout.background {
        out.push(("background".to_string(), a));
    }
    out
}

/// Measures every metric of every analysis of `rollout` once, as of `now`; hooks are not
/// called (they may start tests or tell people). No router is
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
        // A hook is never called from here: it may start tests or tell people.
        for metric in a.metrics.iter().filter(|m| m.hook.is_none()) {
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

/// The `live:` lines: what the router held while the metrics were read, so a reader knows
/// whose requests the canary's numbers count (the marked group only, a sticky share, or a
/// coin toss per request).
fn live(out: &mut String, report: &Report) {
    let Some(observed) = &report.live else {
        let why = report.live_unknown.as_deref().unwrap_or("not read");
        let _ = writeln!(out, "live: unknown ({why})");
        return;
    };
    let weights = observed.percentages().map_or_else(
        || "no backend carries traffic".to_string(),
        |p| {
            p.iter()
                .map(|(b, w)| format!("{b} {}%", w.get()))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    let _ = write!(out, "live: {weights}");
    match &observed.sticky {
        Some(s) => {
            let _ = writeln!(out, ", sticky by {s}");
        }
        None => {
            let _ = writeln!(out);
        }
    }
    if observed.routes.is_empty() {
        let _ = writeln!(out, "  no routes: every request is split by weight");
    }
    for r in &observed.routes {
        let _ = writeln!(
            out,
            "  route {}: {} → {}",
            r.name,
            describe_matches(&r.matches),
            r.backend
        );
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
pub fn human(rollout: &Rollout, report: &Report) -> String {
    let mut out = String::new();
    let target = rollout.target();
    let canary = target.canary.as_ref().map_or("(none)", |c| c.name.as_str());
    let _ = writeln!(
        out,
        "rollout {}: canary {canary} against stable {} on {}",
        rollout.name, target.stable.name, report.service
    );
    live(&mut out, report);
    let measured = &report.analyses;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::model::{Criterion, Field, Match, Pattern, Route, Sticky};

    fn report(live: Option<Observed>, unknown: Option<&str>) -> Report {
        Report {
            rollout: "checkout".into(),
            service: "edge/checkout".into(),
            live,
            live_unknown: unknown.map(str::to_string),
            analyses: Vec::new(),
        }
    }

    #[test]
    fn the_live_lines_say_whose_requests_the_canary_served() {
        let observed = Observed {
            backends: BTreeMap::from([("blue".into(), 90), ("green".into(), 10)]),
            routes: vec![Route {
                name: "testers".into(),
                matches: vec![Match {
                    all: vec![Criterion {
                        on: Field::Header,
                        name: "X-Canary".into(),
                        value: Pattern::Exact("always".into()),
                    }],
                }],
                backend: "green".into(),
            }],
            sticky: Some(Sticky::Header("X-User-Id".into())),
        };
        let mut out = String::new();
        live(&mut out, &report(Some(observed), None));
        assert_eq!(
            out,
            "live: blue 90%, green 10%, sticky by header X-User-Id\n  \
             route testers: X-Canary=always → green\n"
        );
        let mut out = String::new();
        live(&mut out, &report(None, Some("router `edge` unreachable")));
        assert_eq!(out, "live: unknown (router `edge` unreachable)\n");
    }
}
