//! Metric analysis semantics, pure: a measured value becomes an outcome, outcomes fold into a run, a run into a verdict.
//!
//! The rules follow Argo Rollouts' AnalysisRun where users rely on them (`failureLimit` 0,
//! `inconclusiveLimit` 0, `consecutiveErrorLimit` 4, errors retried every 10 s, both
//! conditions set and neither matching = inconclusive, "no data" = inconclusive). One rule
//! is deliberately safer: a metric past its consecutive-error limit does not abort the
//! rollout (the provider being down is not evidence against the canary); the rollout holds,
//! and the spec's progress deadline decides.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::model::{Analysis, ERROR_RETRY, Metric};
use crate::core::number::short;

/// How many measurements per metric are kept in the status (as Argo Rollouts).
pub const RETAINED: usize = 10;

/// What one measurement says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Success,
    Failure,
    /// No data, NaN, or a value matching neither condition.
    Inconclusive,
    /// The measurement could not be taken (provider unreachable, query rejected).
    Error,
}

/// One measurement of one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub at: DateTime<Utc>,
    /// `None`: no data (empty result or NaN), or an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub outcome: Outcome,
    /// How many samples (requests) the value stands on, where the provider counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// Why, for inconclusive and error outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a provider returned for one metric.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    /// `None`: no data (an empty result).
    pub value: Option<f64>,
    /// The samples (requests) behind the value, where the provider counts them.
    pub samples: Option<u64>,
}

impl Reading {
    pub fn value(value: Option<f64>) -> Reading {
        Reading {
            value,
            samples: None,
        }
    }
}

/// Judges what the provider returned against the metric's conditions. No data, NaN and fewer
/// samples than the metric's minimum are inconclusive, never a pass.
pub fn evaluate(metric: &Metric, taken: Result<Reading, String>, at: DateTime<Utc>) -> Measurement {
    let samples = taken.as_ref().ok().and_then(|r| r.samples);
    let measurement = |value, outcome, message: Option<String>| Measurement {
        at,
        value,
        outcome,
        samples,
        message,
    };
    let value = match taken.map(|r| r.value) {
        Err(e) => return measurement(None, Outcome::Error, Some(e)),
        Ok(None) => {
            return measurement(None, Outcome::Inconclusive, Some("no data".into()));
        }
        Ok(Some(v)) if v.is_nan() => {
            return measurement(None, Outcome::Inconclusive, Some("no data (NaN)".into()));
        }
        Ok(Some(v)) => v,
    };
    if let (Some(min), Some(n)) = (metric.min_samples, samples)
        && n < min
    {
        let message = format!("{n} samples, fewer than the {min} a verdict needs");
        return measurement(Some(value), Outcome::Inconclusive, Some(message));
    }
    let failed = metric.failure.as_ref().map(|c| c.eval(value));
    let succeeded = metric.success.as_ref().map(|c| c.eval(value));
    let outcome = match (succeeded, failed) {
        (_, Some(true)) => Outcome::Failure,
        (Some(true), _) => Outcome::Success,
        (Some(false), Some(false)) => Outcome::Inconclusive,
        (Some(false), None) => Outcome::Failure,
        (None, Some(false)) => Outcome::Success,
        (None, None) => Outcome::Inconclusive,
    };
    let message =
        (outcome == Outcome::Inconclusive).then(|| "value matches neither condition".to_string());
    measurement(Some(value), outcome, message)
}

/// The tallies of one metric within one analysis run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricState {
    /// Measurements taken (errors excluded).
    pub measured: u32,
    pub successes: u32,
    pub failures: u32,
    pub inconclusives: u32,
    pub errors: u32,
    pub consecutive_errors: u32,
    /// The last [`RETAINED`] measurements, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Measurement>,
}

impl MetricState {
    fn last_at(&self) -> Option<DateTime<Utc>> {
        self.recent.last().map(|m| m.at)
    }

    fn record(&mut self, m: Measurement) {
        match m.outcome {
            Outcome::Error => {
                self.errors += 1;
                self.consecutive_errors += 1;
            }
            outcome => {
                self.measured += 1;
                self.consecutive_errors = 0;
                match outcome {
                    Outcome::Success => self.successes += 1,
                    Outcome::Failure => self.failures += 1,
                    _ => self.inconclusives += 1,
                }
            }
        }
        self.recent.push(m);
        if self.recent.len() > RETAINED {
            self.recent.remove(0);
        }
    }
}

/// One analysis run (a step's, or the background one) as recorded in the status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisState {
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricState>,
}

impl AnalysisState {
    pub fn new(started_at: DateTime<Utc>) -> Self {
        AnalysisState {
            started_at,
            metrics: BTreeMap::new(),
        }
    }

    /// Folds a measurement in. Measurements older than the run, or not newer than the
    /// metric's last one, are ignored, so replaying inputs after a restart counts nothing twice.
    pub fn record(&mut self, metric: &str, m: Measurement) -> bool {
        if m.at < self.started_at {
            return false;
        }
        let state = self.metrics.entry(metric.to_string()).or_default();
        if state.last_at().is_some_and(|last| m.at <= last) {
            return false;
        }
        state.record(m);
        true
    }
}

/// The numbers behind a verdict, for status files, commit messages and revert PRs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// One line a person can read in `git log --oneline`.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The metric's recent values (no data as null).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Option<f64>>,
    /// The metric's query (as written, variables not filled in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The samples (requests) behind the deciding measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// More about the deciding measurement: the judge's per-metric statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Evidence {
    pub fn text(summary: impl Into<String>) -> Self {
        Evidence {
            summary: summary.into(),
            metric: None,
            condition: None,
            values: Vec::new(),
            query: None,
            samples: None,
            detail: None,
        }
    }
}

/// What an analysis run says now.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Not finished; the next measurement is due at `next`.
    Running { next: DateTime<Utc> },
    /// Every metric reached its count without breaking a limit.
    Passed,
    /// A metric broke its failure limit.
    Failed(Evidence),
    /// A metric broke its inconclusive limit.
    Inconclusive(Evidence),
    /// A metric could not be measured more than its consecutive-error limit allows; hold.
    /// The next attempt is due at `next`.
    Stalled {
        evidence: Evidence,
        next: DateTime<Utc>,
    },
}

/// Assesses a run against its spec at `now`.
pub fn assess(spec: &Analysis, state: &AnalysisState, now: DateTime<Utc>) -> Verdict {
    let empty = MetricState::default();
    if spec.gate {
        // A gate passes once every metric's last measurement succeeded, and never fails.
        let last_ok = |metric: &Metric| {
            state
                .metrics
                .get(&metric.name)
                .and_then(|m| m.recent.last())
                .is_some_and(|x| x.outcome == Outcome::Success)
        };
        if spec.metrics.iter().all(last_ok) {
            return Verdict::Passed;
        }
        let next = spec
            .metrics
            .iter()
            .map(|metric| {
                next_due(
                    spec,
                    state,
                    state.metrics.get(&metric.name).unwrap_or(&empty),
                )
            })
            .min()
            .unwrap_or(now);
        return Verdict::Running {
            next: next.max(now),
        };
    }
    let mut next: Option<DateTime<Utc>> = None;
    let mut inconclusive = None;
    let mut stalled = None;
    for metric in &spec.metrics {
        let m = state.metrics.get(&metric.name).unwrap_or(&empty);
        if m.failures > spec.failure_limit {
            return Verdict::Failed(evidence(
                metric,
                m,
                Broke::Failures,
                m.failures,
                spec.failure_limit,
            ));
        }
        if m.inconclusives > spec.inconclusive_limit && inconclusive.is_none() {
            inconclusive = Some(evidence(
                metric,
                m,
                Broke::Inconclusives,
                m.inconclusives,
                spec.inconclusive_limit,
            ));
        }
        if spec.count.is_some_and(|c| m.measured >= c) {
            continue;
        }
        let due = next_due(spec, state, m);
        if m.consecutive_errors > spec.consecutive_error_limit && stalled.is_none() {
            stalled = Some(evidence(
                metric,
                m,
                Broke::Errors,
                m.consecutive_errors,
                spec.consecutive_error_limit,
            ));
        }
        next = Some(next.map_or(due, |n| n.min(due)));
    }
    let next = next.map(|n| n.max(now));
    match (inconclusive, stalled, next) {
        (Some(e), ..) => Verdict::Inconclusive(e),
        (None, Some(evidence), Some(next)) => Verdict::Stalled { evidence, next },
        (None, _, Some(next)) => Verdict::Running { next },
        (None, _, None) => Verdict::Passed,
    }
}

/// The metrics of `spec` due for a measurement at `now`.
pub fn due(spec: &Analysis, state: &AnalysisState, now: DateTime<Utc>) -> Vec<String> {
    let empty = MetricState::default();
    spec.metrics
        .iter()
        .filter(|metric| {
            let m = state.metrics.get(&metric.name).unwrap_or(&empty);
            spec.count.is_none_or(|c| m.measured < c) && next_due(spec, state, m) <= now
        })
        .map(|metric| metric.name.clone())
        .collect()
}

fn next_due(spec: &Analysis, state: &AnalysisState, m: &MetricState) -> DateTime<Utc> {
    // The first measurement of a periodic analysis comes one interval in, as Flagger's checks
    // do, so that its window holds only traffic the canary served at this weight. (Argo
    // Rollouts measures at once, which with a windowed query mostly measures the step before.)
    // A gate asks at once.
    let first = state.started_at
        + spec.initial_delay
        + if spec.gate {
            std::time::Duration::ZERO
        } else {
            spec.interval.unwrap_or_default()
        };
    let Some(last) = m.recent.last() else {
        return first;
    };
    let gap = match (last.outcome, spec.interval) {
        (Outcome::Error, Some(i)) => i.min(ERROR_RETRY),
        (Outcome::Error, None) => ERROR_RETRY,
        (_, Some(i)) => i,
        // A single-measurement analysis that measured is done; this is never reached for it.
        (_, None) => ERROR_RETRY,
    };
    last.at + gap
}

/// Which limit a metric broke.
#[derive(Clone, Copy)]
enum Broke {
    Failures,
    Inconclusives,
    Errors,
}

/// The evidence of a broken limit, its summary short enough for a commit subject:
/// `errors = 0.08 matched \`result > 0.05\` (2 failures, limit 1)`,
/// `errors inconclusive: no data (1 time, limit 0)`,
/// `latency could not be measured: connection refused (5 in a row, limit 4)`.
fn evidence(metric: &Metric, m: &MetricState, broke: Broke, n: u32, limit: u32) -> Evidence {
    let values: Vec<Option<f64>> = m.recent.iter().map(|x| x.value).collect();
    let condition = match (&metric.success, &metric.failure) {
        (Some(s), Some(f)) => format!("success `{s}`, failure `{f}`"),
        (Some(s), None) => format!("success `{s}`"),
        (None, Some(f)) => format!("failure `{f}`"),
        (None, None) => String::new(),
    };
    let plural = |word: &str| {
        if n == 1 {
            word.to_string()
        } else {
            format!("{word}s")
        }
    };
    let message = m
        .recent
        .last()
        .and_then(|x| x.message.clone())
        .unwrap_or_else(|| "no message".to_string());
    let name = &metric.name;
    let deciding = match broke {
        Broke::Failures => m
            .recent
            .iter()
            .rev()
            .find(|x| x.outcome == Outcome::Failure),
        Broke::Inconclusives => m
            .recent
            .iter()
            .rev()
            .find(|x| x.outcome == Outcome::Inconclusive),
        Broke::Errors => m.recent.last(),
    };
    let samples = deciding.and_then(|x| x.samples);
    let counted = samples.map_or_else(String::new, |n| format!("{n} samples; "));
    let summary = match broke {
        // A hook's evidence is its answer.
        Broke::Failures if metric.hook.is_some() => format!(
            "{name} failed: {} ({n} {}, limit {limit})",
            deciding
                .and_then(|x| x.message.clone())
                .unwrap_or_else(|| "no answer".to_string()),
            plural("failure")
        ),
        Broke::Failures => {
            let value = deciding.and_then(|x| x.value);
            let why = match (value, &metric.failure, &metric.success) {
                (Some(v), Some(f), _) if f.eval(v) => format!("matched `{f}`"),
                (_, _, Some(s)) => format!("missed `{s}`"),
                _ => "failed".to_string(),
            };
            let value = value
                .map(|v| format!(" = {}", short(v)))
                .unwrap_or_default();
            format!(
                "{name}{value} {why} ({counted}{n} {}, limit {limit})",
                plural("failure")
            )
        }
        Broke::Inconclusives => {
            format!(
                "{name} inconclusive: {message} ({n} {}, limit {limit})",
                plural("time")
            )
        }
        Broke::Errors => {
            format!("{name} could not be measured: {message} ({n} in a row, limit {limit})")
        }
    };
    Evidence {
        summary,
        metric: Some(name.clone()),
        condition: (!condition.is_empty()).then_some(condition),
        values,
        query: (!metric.query.is_empty()).then(|| metric.query.clone()),
        samples,
        detail: deciding
            .filter(|x| x.outcome == Outcome::Failure)
            .and_then(|x| x.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::spec::ProviderKind;
    use crate::core::spec::condition::Condition;
    use chrono::TimeZone as _;
    use std::time::Duration;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn metric(success: Option<&str>, failure: Option<&str>) -> Metric {
        Metric {
            name: "errors".into(),
            provider: ProviderKind::Embedded,
            query: "error_rate".into(),
            success: success.map(|s| Condition::parse(s).unwrap()),
            failure: failure.map(|s| Condition::parse(s).unwrap()),
            min_samples: None,
            samples_query: None,
            judge: None,
            hook: None,
        }
    }

    fn spec(count: Option<u32>, failure_limit: u32) -> Analysis {
        Analysis {
            metrics: vec![metric(Some("result < 0.01"), None)],
            interval: Some(Duration::from_secs(60)),
            count,
            initial_delay: Duration::from_secs(30),
            failure_limit,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
            on_inconclusive: Default::default(),
            gate: false,
        }
    }

    fn check_outcome(
        success: Option<&str>,
        failure: Option<&str>,
        v: Result<Option<f64>, &str>,
        want: Outcome,
    ) {
        let v = v.map(Reading::value).map_err(str::to_string);
        let m = evaluate(&metric(success, failure), v.clone(), t(0));
        assert_eq!(m.outcome, want, "{success:?} {failure:?} {v:?}");
    }

    #[test]
    fn outcomes_follow_the_conditions() {
        use Outcome::*;
        check_outcome(Some("result < 0.01"), None, Ok(Some(0.001)), Success);
        check_outcome(Some("result < 0.01"), None, Ok(Some(0.5)), Failure);
        check_outcome(None, Some("result > 0.05"), Ok(Some(0.01)), Success);
        check_outcome(None, Some("result > 0.05"), Ok(Some(0.1)), Failure);
        // Both set, neither matches: inconclusive (Argo Rollouts).
        check_outcome(
            Some("result < 0.01"),
            Some("result > 0.05"),
            Ok(Some(0.03)),
            Inconclusive,
        );
        // Failure wins when both match.
        check_outcome(
            Some("result < 1"),
            Some("result > 0"),
            Ok(Some(0.5)),
            Failure,
        );
        // No data is never a pass.
        check_outcome(Some("result < 0.01"), None, Ok(None), Inconclusive);
        check_outcome(
            Some("result < 0.01"),
            None,
            Ok(Some(f64::NAN)),
            Inconclusive,
        );
        check_outcome(
            Some("result < 0.01"),
            None,
            Err("connection refused"),
            Error,
        );
    }

    fn run(outcomes: &[(i64, Outcome)]) -> AnalysisState {
        let mut s = AnalysisState::new(t(0));
        for &(at, o) in outcomes {
            let value = (o != Outcome::Error).then_some(0.5);
            s.record(
                "errors",
                Measurement {
                    at: t(at),
                    value,
                    outcome: o,
                    samples: None,
                    message: None,
                },
            );
        }
        s
    }

    #[test]
    fn verdicts_follow_limits() {
        use Outcome::*;
        // Nothing measured yet: first measurement after the initial delay (30 s) and one
        // interval (60 s), so that its window holds only this step's traffic.
        assert_eq!(
            assess(&spec(Some(3), 0), &run(&[]), t(0)),
            Verdict::Running { next: t(90) }
        );
        assert_eq!(
            due(&spec(Some(3), 0), &run(&[]), t(89)),
            Vec::<String>::new()
        );
        assert_eq!(
            due(&spec(Some(3), 0), &run(&[]), t(90)),
            vec!["errors".to_string()]
        );
        // Two successes of three: next one an interval later.
        assert_eq!(
            assess(
                &spec(Some(3), 0),
                &run(&[(30, Success), (90, Success)]),
                t(100)
            ),
            Verdict::Running { next: t(150) }
        );
        // Count reached: passed.
        assert_eq!(
            assess(
                &spec(Some(3), 0),
                &run(&[(30, Success), (90, Success), (150, Success)]),
                t(150)
            ),
            Verdict::Passed
        );
        // failureLimit 0: the first failure fails the run.
        assert!(matches!(
            assess(&spec(Some(3), 0), &run(&[(30, Failure)]), t(30)),
            Verdict::Failed(_)
        ));
        // failureLimit 1: one failure is tolerated, the second is not.
        assert!(matches!(
            assess(&spec(Some(3), 1), &run(&[(30, Failure)]), t(30)),
            Verdict::Running { .. }
        ));
        assert!(matches!(
            assess(
                &spec(Some(3), 1),
                &run(&[(30, Failure), (90, Failure)]),
                t(90)
            ),
            Verdict::Failed(_)
        ));
        // Inconclusive over its limit.
        assert!(matches!(
            assess(&spec(Some(3), 0), &run(&[(30, Inconclusive)]), t(30)),
            Verdict::Inconclusive(_)
        ));
        // Background (no count) never passes.
        assert!(matches!(
            assess(
                &spec(None, 0),
                &run(&[(30, Success), (90, Success), (150, Success)]),
                t(150)
            ),
            Verdict::Running { .. }
        ));
    }

    #[test]
    fn errors_retry_fast_and_stall_past_the_limit() {
        use Outcome::*;
        // An error is retried after 10 s, not the 60 s interval.
        assert_eq!(
            assess(&spec(Some(3), 0), &run(&[(30, Error)]), t(31)),
            Verdict::Running { next: t(40) }
        );
        // Four errors in a row are tolerated, the fifth stalls the run; it is not a failure.
        let four = run(&[(30, Error), (40, Error), (50, Error), (60, Error)]);
        assert!(matches!(
            assess(&spec(Some(3), 0), &four, t(60)),
            Verdict::Running { .. }
        ));
        let five = run(&[
            (30, Error),
            (40, Error),
            (50, Error),
            (60, Error),
            (70, Error),
        ]);
        match assess(&spec(Some(3), 0), &five, t(70)) {
            Verdict::Stalled { evidence, next } => {
                assert_eq!(next, t(80));
                assert_eq!(
                    evidence.summary,
                    "errors could not be measured: no message (5 in a row, limit 4)"
                );
            }
            v => panic!("{v:?}"),
        }
        // A success resets the streak.
        let back = run(&[
            (30, Error),
            (40, Error),
            (50, Error),
            (60, Error),
            (70, Error),
            (80, Success),
        ]);
        assert!(matches!(
            assess(&spec(Some(3), 0), &back, t(80)),
            Verdict::Running { .. }
        ));
    }

    #[test]
    fn replayed_measurements_count_once() {
        let mut s = AnalysisState::new(t(0));
        let m = Measurement {
            at: t(30),
            value: Some(0.0),
            outcome: Outcome::Success,
            samples: None,
            message: None,
        };
        assert!(s.record("errors", m.clone()));
        assert!(!s.record("errors", m));
        let old = Measurement {
            at: t(-5),
            value: Some(0.0),
            outcome: Outcome::Success,
            samples: None,
            message: None,
        };
        assert!(!s.record("errors", old));
        assert_eq!(s.metrics["errors"].measured, 1);
    }

    #[test]
    fn evidence_names_metric_values_and_limit() {
        let s = run(&[(30, Outcome::Failure)]);
        let Verdict::Failed(e) = assess(&spec(Some(3), 0), &s, t(30)) else {
            panic!()
        };
        assert_eq!(
            e.summary,
            "errors = 0.5 missed `result < 0.01` (1 failure, limit 0)"
        );
        assert_eq!(e.condition.as_deref(), Some("success `result < 0.01`"));
        assert_eq!(e.values, vec![Some(0.5)]);
    }

    /// What the provider answered at a second: (value, samples), or an error.
    type Fed = (i64, Result<(Option<f64>, Option<u64>), &'static str>);

    /// One row of the rule table: a spec, measurements fed at given seconds (value and
    /// samples, or a provider error), and the verdict expected at a given second.
    struct Row {
        rule: &'static str,
        count: Option<u32>,
        failure_limit: u32,
        inconclusive_limit: u32,
        consecutive_error_limit: u32,
        initial_delay: u64,
        min_samples: Option<u64>,
        feed: &'static [Fed],
        at: i64,
        want: &'static str,
    }

    const ROW: Row = Row {
        rule: "",
        count: Some(3),
        failure_limit: 0,
        inconclusive_limit: 0,
        consecutive_error_limit: 4,
        initial_delay: 0,
        min_samples: None,
        feed: &[],
        at: 0,
        want: "",
    };

    fn verdict_word(v: &Verdict) -> String {
        match v {
            Verdict::Running { next } => format!("running next {}", (*next - t(0)).num_seconds()),
            Verdict::Passed => "passed".into(),
            Verdict::Failed(_) => "failed".into(),
            Verdict::Inconclusive(_) => "inconclusive".into(),
            Verdict::Stalled { next, .. } => {
                format!("stalled next {}", (*next - t(0)).num_seconds())
            }
        }
    }

    /// Every analysis rule on a paused clock: the clock is an argument, nothing sleeps.
    #[test]
    fn rule_table() {
        let rows = [
            Row {
                rule: "initial delay + one interval before the first measurement",
                initial_delay: 30,
                at: 0,
                want: "running next 90",
                ..ROW
            },
            Row {
                rule: "no initial delay: one interval",
                at: 0,
                want: "running next 60",
                ..ROW
            },
            Row {
                rule: "count reached, all good: passed",
                feed: &[
                    (60, Ok((Some(0.0), None))),
                    (120, Ok((Some(0.0), None))),
                    (180, Ok((Some(0.0), None))),
                ],
                at: 180,
                want: "passed",
                ..ROW
            },
            Row {
                rule: "failureLimit 0: first failure fails",
                feed: &[(60, Ok((Some(0.5), None)))],
                at: 60,
                want: "failed",
                ..ROW
            },
            Row {
                rule: "failureLimit 1: one failure tolerated",
                failure_limit: 1,
                feed: &[(60, Ok((Some(0.5), None)))],
                at: 60,
                want: "running next 120",
                ..ROW
            },
            Row {
                rule: "failureLimit 1: two failures fail",
                failure_limit: 1,
                feed: &[(60, Ok((Some(0.5), None))), (120, Ok((Some(0.5), None)))],
                at: 120,
                want: "failed",
                ..ROW
            },
            Row {
                rule: "no data is inconclusive, not a pass",
                feed: &[(60, Ok((None, None)))],
                at: 60,
                want: "inconclusive",
                ..ROW
            },
            Row {
                rule: "NaN is inconclusive",
                feed: &[(60, Ok((Some(f64::NAN), None)))],
                at: 60,
                want: "inconclusive",
                ..ROW
            },
            Row {
                rule: "inconclusiveLimit 1 tolerates one",
                inconclusive_limit: 1,
                feed: &[(60, Ok((None, None)))],
                at: 60,
                want: "running next 120",
                ..ROW
            },
            Row {
                rule: "minimum samples: 3 requests give no verdict",
                min_samples: Some(20),
                feed: &[(60, Ok((Some(0.34), Some(3))))],
                at: 60,
                want: "inconclusive",
                ..ROW
            },
            Row {
                rule: "minimum samples met: the value decides",
                min_samples: Some(20),
                feed: &[(60, Ok((Some(0.34), Some(300))))],
                at: 60,
                want: "failed",
                ..ROW
            },
            Row {
                rule: "minimum samples met, good value",
                min_samples: Some(20),
                count: Some(1),
                feed: &[(60, Ok((Some(0.0), Some(20))))],
                at: 60,
                want: "passed",
                ..ROW
            },
            Row {
                rule: "a provider error retries after 10 s",
                feed: &[(60, Err("refused"))],
                at: 61,
                want: "running next 70",
                ..ROW
            },
            Row {
                rule: "errors up to the limit are tolerated",
                feed: &[
                    (60, Err("x")),
                    (70, Err("x")),
                    (80, Err("x")),
                    (90, Err("x")),
                ],
                at: 90,
                want: "running next 100",
                ..ROW
            },
            Row {
                rule: "past the consecutive-error limit: stall, not fail",
                feed: &[
                    (60, Err("x")),
                    (70, Err("x")),
                    (80, Err("x")),
                    (90, Err("x")),
                    (100, Err("x")),
                ],
                at: 100,
                want: "stalled next 110",
                ..ROW
            },
            Row {
                rule: "consecutiveErrorLimit 0: the first error stalls",
                consecutive_error_limit: 0,
                feed: &[(60, Err("x"))],
                at: 60,
                want: "stalled next 70",
                ..ROW
            },
            Row {
                rule: "a good measurement resets the error streak",
                consecutive_error_limit: 1,
                feed: &[(60, Err("x")), (70, Ok((Some(0.0), None))), (130, Err("x"))],
                at: 130,
                want: "running next 140",
                ..ROW
            },
            Row {
                rule: "errors do not count toward count",
                count: Some(1),
                feed: &[(60, Err("x"))],
                at: 60,
                want: "running next 70",
                ..ROW
            },
            Row {
                rule: "background analysis (no count) never passes",
                count: None,
                feed: &[(60, Ok((Some(0.0), None))), (120, Ok((Some(0.0), None)))],
                at: 120,
                want: "running next 180",
                ..ROW
            },
            Row {
                rule: "background analysis fails on a failure",
                count: None,
                feed: &[(60, Ok((Some(0.0), None))), (120, Ok((Some(0.9), None)))],
                at: 120,
                want: "failed",
                ..ROW
            },
        ];
        for row in rows {
            let mut metric = metric(Some("result <= 0.01"), None);
            metric.min_samples = row.min_samples;
            let spec = Analysis {
                metrics: vec![metric.clone()],
                interval: Some(Duration::from_secs(60)),
                count: row.count,
                initial_delay: Duration::from_secs(row.initial_delay),
                failure_limit: row.failure_limit,
                inconclusive_limit: row.inconclusive_limit,
                consecutive_error_limit: row.consecutive_error_limit,
                on_inconclusive: Default::default(),
                gate: false,
            };
            let mut state = AnalysisState::new(t(0));
            for (at, taken) in row.feed {
                let taken = taken
                    .map(|(value, samples)| Reading { value, samples })
                    .map_err(str::to_string);
                state.record("errors", evaluate(&metric, taken, t(*at)));
            }
            let got = verdict_word(&assess(&spec, &state, t(row.at)));
            assert_eq!(got, row.want, "rule: {}", row.rule);
        }
    }

    #[test]
    fn few_samples_say_why_and_keep_the_value() {
        let mut m = metric(Some("result <= 0.01"), None);
        m.min_samples = Some(20);
        let taken = Ok(Reading {
            value: Some(1.0 / 3.0),
            samples: Some(3),
        });
        let got = evaluate(&m, taken, t(0));
        assert_eq!(got.outcome, Outcome::Inconclusive);
        assert_eq!(got.samples, Some(3));
        assert_eq!(
            got.message.as_deref(),
            Some("3 samples, fewer than the 20 a verdict needs")
        );
    }

    #[test]
    fn short_values() {
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(42.0), "42");
        assert_eq!(short(0.0001234), "1.23e-4");
        assert_eq!(short(0.1), "0.1");
    }
}
