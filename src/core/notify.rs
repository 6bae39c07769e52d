//! What people hear about a rollout: the notices its recorded status implies, and who
//! subscribed to which. Pure: the daemon hands each status file it recorded to a worker, which
//! sends the notices not yet sent.
//!
//! A notice is implied by a status, not by a transition: the abort of revision R at time T is
//! implied by every status that says so, under one id (`checkout/3f2a9c1d0e4b/<T>/aborted`;
//! a run's notices carry the time it started, so the same revision run again is told again).
//! The worker records each id it delivered, so a restart (which sees the same status again)
//! sends nothing twice, and a notice whose delivery a crash cut short is sent once it is back.
//! What a status no longer shows (a step passed while the daemon was down) is not sent late,
//! nor is an event over an hour old (a new data dir does not tell old news).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::core::audience::{Kind, Severity, Subscription};
use crate::core::model::{Revision, Weight};
use crate::core::progress::{PauseReason, Progress};
use crate::core::record::StatusFile;

/// How old an event may be and still be told (see [`implied`]).
pub const MAX_AGE: chrono::Duration = chrono::Duration::hours(1);

/// How long an abort waits for its revert branch before it is told without one: the branch is
/// normally pushed in the same look.
pub const REVERT_GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// One thing to tell.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    /// Stable across restarts: `<rollout>/<revision>/<run or outcome time>/<event>[/<step>]`.
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub rollout: String,
    pub revision: Revision,
    /// The phase as the status file names it.
    pub phase: String,
    /// `checkout: aborted`.
    pub title: String,
    /// What happened, in one line: `step 2/4, canary 20%: errors = 0.07 missed …`.
    pub text: String,
    /// The step reached, 1-based, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    pub steps: usize,
    /// The weights canaryd set, per backend.
    pub weights: BTreeMap<String, Weight>,
    /// The evidence line of an abort, an inconclusive pause or a failed measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_pr: Option<String>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// The notices `file` implies as of `now`, oldest event first. A notice whose event is more
/// than [`MAX_AGE`] old is not implied: a new data dir (or a daemon down for long) does not
/// tell old news.
///
/// `with_pr`: a forge opens a revert pull request after an abort, so the abort is told with its
/// link (or without, after [`REVERT_GRACE`]).
pub fn implied(file: &StatusFile, now: DateTime<Utc>, with_pr: bool) -> Vec<Notice> {
    let mut out = every_implied(file, now, with_pr);
    out.retain(|n| now - n.at <= MAX_AGE);
    out
}

/// [`implied`] without the age limit.
fn every_implied(file: &StatusFile, now: DateTime<Utc>, with_pr: bool) -> Vec<Notice> {
    let progress = &file.status.progress;
    let rollout = &file.status.rollout;
    // `run`: when the run (or the outcome) happened, so that the same revision run again (a
    // revert, then the same merge again) is told again.
    let make = |kind: Kind,
                revision: &Revision,
                run: DateTime<Utc>,
                step: Option<usize>,
                at: DateTime<Utc>,
                text: String| Notice {
        id: match step {
            Some(k) => format!(
                "{rollout}/{revision}/{}/{}/{k}",
                run.timestamp(),
                kind.as_str()
            ),
            None => format!("{rollout}/{revision}/{}/{}", run.timestamp(), kind.as_str()),
        },
        kind,
        severity: kind.severity(),
        rollout: rollout.clone(),
        revision: revision.clone(),
        phase: progress.phase().to_string(),
        title: format!("{rollout}: {}", kind.as_str().replace('-', " ")),
        text,
        step: step.map(|k| k + 1),
        steps: file.steps,
        weights: file.desired.clone(),
        evidence: None,
        revert_branch: None,
        revert_pr: None,
        at,
    };
    let at_step = |k: usize, w: Weight| format!("step {}/{}, canary {w}", k + 1, file.steps);
    let mut out = Vec::new();
    match progress {
        Progress::Progressing { run }
        | Progress::Paused { run, .. }
        | Progress::Analysing { run, .. } => {
            let r = &run.revision;
            let begun = run.started_at;
            out.push(make(
                Kind::Started,
                r,
                begun,
                None,
                begun,
                format!(
                    "canary `{}` against stable `{}`, {} steps",
                    run.canary, run.stable, file.steps
                ),
            ));
            if run.step > 0 {
                out.push(make(
                    Kind::Step,
                    r,
                    begun,
                    Some(run.step),
                    run.step_started_at,
                    at_step(run.step, run.weight),
                ));
            }
            match progress {
                Progress::Paused {
                    reason: PauseReason::Step,
                    until: None,
                    ..
                } => out.push(make(
                    Kind::Paused,
                    r,
                    begun,
                    Some(run.step),
                    run.step_started_at,
                    format!(
                        "{}: waiting for a promote commit (`canaryd promote {rollout}`)",
                        at_step(run.step, run.weight)
                    ),
                )),
                Progress::Paused {
                    reason: PauseReason::Inconclusive { evidence },
                    ..
                } => {
                    let mut n = make(
                        Kind::Paused,
                        r,
                        begun,
                        Some(run.step),
                        file.updated_at,
                        format!(
                            "{}: inconclusive analysis, waiting for a person: {}",
                            at_step(run.step, run.weight),
                            evidence.summary
                        ),
                    );
                    n.evidence = Some(evidence.summary.clone());
                    out.push(n);
                }
                Progress::Analysing { analysis, .. } => {
                    // A gate not yet open: waiting, as for a person.
                    let closed: Vec<&str> = analysis
                        .metrics
                        .iter()
                        .filter(|(name, m)| {
                            name.starts_with("gate:")
                                && m.recent.last().is_none_or(|x| {
                                    x.outcome != crate::core::analysis::Outcome::Success
                                })
                        })
                        .map(|(name, _)| name.trim_start_matches("gate:"))
                        .collect();
                    if !closed.is_empty() {
                        out.push(make(
                            Kind::Paused,
                            r,
                            begun,
                            Some(run.step),
                            run.step_started_at,
                            format!(
                                "{}: waiting for the gate {} to answer 2xx",
                                at_step(run.step, run.weight),
                                closed.join(", ")
                            ),
                        ));
                    }
                    // Hooks (`hook:<name>`) are told apart from metrics; gates never fail.
                    for hooks in [false, true] {
                        let mine = |name: &str| {
                            !name.starts_with("gate:") && name.starts_with("hook:") == hooks
                        };
                        let failures: u32 = analysis
                            .metrics
                            .iter()
                            .filter(|(name, _)| mine(name))
                            .map(|(_, m)| m.failures)
                            .sum();
                        if failures > 0 {
                            let failed: Vec<&str> = analysis
                                .metrics
                                .iter()
                                .filter(|(name, m)| mine(name) && m.failures > 0)
                                .map(|(name, _)| name.as_str())
                                .collect();
                            let mut n = make(
                                if hooks {
                                    Kind::HookFailed
                                } else {
                                    Kind::AnalysisFailed
                                },
                                r,
                                begun,
                                Some(run.step),
                                file.updated_at,
                                format!(
                                    "{}: {} failed ({failures} failure{} so far, under the limit)",
                                    at_step(run.step, run.weight),
                                    failed.join(", "),
                                    if failures == 1 { "" } else { "s" }
                                ),
                            );
                            // One notice per failure: the id counts them.
                            n.id = format!("{}/{failures}", n.id);
                            out.push(n);
                        }
                    }
                }
                _ => {}
            }
        }
        Progress::Aborted {
            revision,
            at,
            evidence,
            step,
            weight,
        } => {
            // Told with its revert branch, which the same look normally pushes, and its pull
            // request when a forge opens one.
            let ready = file.revert.is_some() && (!with_pr || file.revert_pr.is_some());
            if ready || now - *at >= REVERT_GRACE {
                let mut n = make(
                    Kind::Aborted,
                    revision,
                    *at,
                    None,
                    *at,
                    format!(
                        "aborted at step {}/{} (canary was {weight}), traffic back on stable: {}",
                        step + 1,
                        file.steps,
                        evidence.summary
                    ),
                );
                n.step = Some(step + 1);
                n.evidence = Some(evidence.summary.clone());
                n.revert_branch = file.revert.clone();
                n.revert_pr = file.revert_pr.clone();
                out.push(n);
            }
        }
        Progress::Promoted { revision, at } => out.push(make(
            Kind::Promoted,
            revision,
            *at,
            None,
            *at,
            "promoted: the canary takes all traffic".to_string(),
        )),
        // Told once traffic followed the spec back.
        Progress::RolledBack {
            revision, from, at, ..
        } => out.push(make(
            Kind::RolledBack,
            from,
            *at,
            None,
            *at,
            format!("rolled back to revision {revision}"),
        )),
        Progress::Pending
        | Progress::Stable { .. }
        | Progress::Waiting { .. }
        | Progress::RollingBack { .. }
        | Progress::Invalid { .. } => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::analysis::Evidence;
    use crate::core::progress::Run;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn file(progress: Progress, revert: Option<&str>) -> StatusFile {
        let mut f = StatusFile::new("checkout", t(100));
        f.status.progress = progress;
        f.revert = revert.map(str::to_string);
        f.steps = 4;
        f
    }

    fn paused(started: i64, step: usize) -> Progress {
        Progress::Paused {
            run: Run {
                revision: Revision::from("b"),
                step,
                weight: Weight::new(20).unwrap(),
                verified: true,
                stable: "blue".into(),
                canary: "green".into(),
                started_at: t(started),
                step_started_at: t(started + 10),
                stall: None,
                deadline_exceeded: false,
                background: None,
                done: false,
            },
            until: None,
            reason: PauseReason::Step,
        }
    }

    fn ids(notices: &[Notice]) -> Vec<&str> {
        notices.iter().map(|n| n.id.as_str()).collect()
    }

    #[test]
    fn a_run_implies_its_start_its_step_and_its_wait_under_ids_of_that_run() {
        let first = implied(&file(paused(0, 1), None), t(60), false);
        assert_eq!(
            ids(&first),
            [
                "checkout/b/1800000000/started",
                "checkout/b/1800000000/step/1",
                "checkout/b/1800000000/paused/1",
            ]
        );
        assert_eq!(first[2].severity, Severity::Warn);
        assert_eq!(first[2].step, Some(2));
        // The same revision run again later (after a revert): told again.
        let again = implied(&file(paused(500, 1), None), t(560), false);
        assert!(ids(&again).iter().all(|id| id.contains("/1800000500/")));
    }

    #[test]
    fn an_abort_waits_for_its_revert_branch_and_old_news_is_not_told() {
        let aborted = Progress::Aborted {
            revision: Revision::from("b"),
            at: t(0),
            evidence: Evidence::text("errors = 0.3"),
            step: 1,
            weight: Weight::new(20).unwrap(),
        };
        assert!(implied(&file(aborted.clone(), None), t(5), false).is_empty());
        let told = implied(
            &file(aborted.clone(), Some("canaryd/revert/checkout/b")),
            t(5),
            false,
        );
        // With a forge, it waits for the pull request's link too (up to the grace).
        let branch_only = file(aborted.clone(), Some("canaryd/revert/checkout/b"));
        assert!(implied(&branch_only, t(5), true).is_empty());
        let mut with_pr = branch_only.clone();
        with_pr.revert_pr = Some("https://github.com/o/r/pull/7".into());
        assert_eq!(
            implied(&with_pr, t(5), true)[0].revert_pr.as_deref(),
            Some("https://github.com/o/r/pull/7")
        );
        assert_eq!(implied(&branch_only, t(31), true).len(), 1);
        assert_eq!(ids(&told), ["checkout/b/1800000000/aborted"]);
        assert_eq!(
            told[0].revert_branch.as_deref(),
            Some("canaryd/revert/checkout/b")
        );
        // Without a branch after the grace: told anyway.
        assert_eq!(implied(&file(aborted.clone(), None), t(31), false).len(), 1);
        // An hour and more later (a new data dir): not told.
        assert!(implied(&file(aborted, Some("x")), t(3601), false).is_empty());
    }

    #[test]
    fn a_closed_gate_is_a_wait_and_a_failed_hook_is_told_apart_from_metrics() {
        use crate::core::analysis::{AnalysisState, Measurement, MetricState, Outcome};
        let failed = |name: &str| {
            let mut m = MetricState {
                failures: 1,
                measured: 1,
                ..MetricState::default()
            };
            m.recent.push(Measurement {
                at: t(20),
                value: Some(0.0),
                outcome: Outcome::Failure,
                samples: None,
                message: Some("HTTP 503: busy".into()),
            });
            (name.to_string(), m)
        };
        let Progress::Paused { run, .. } = paused(0, 2) else {
            unreachable!()
        };
        let mut analysis = AnalysisState::new(t(10));
        analysis.metrics = [failed("gate:go"), failed("hook:smoke")].into();
        let n = implied(
            &file(Progress::Analysing { run, analysis }, None),
            t(30),
            false,
        );
        let kinds: Vec<(Kind, &str)> = n.iter().map(|n| (n.kind, n.text.as_str())).collect();
        assert_eq!(kinds[2].0, Kind::Paused);
        assert!(
            kinds[2]
                .1
                .ends_with("waiting for the gate go to answer 2xx"),
            "{kinds:?}"
        );
        assert_eq!(kinds[3].0, Kind::HookFailed);
        assert!(kinds[3].1.contains("hook:smoke failed"), "{kinds:?}");
        assert_eq!(n.len(), 4, "no analysis-failed for a gate: {kinds:?}");
    }
}
