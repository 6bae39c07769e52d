//! What people hear about a rollout: the notices its recorded status implies, and who
//! subscribed to which. Pure: the daemon hands each status file it recorded to a worker, which
//! sends the notices not yet sent.
//!
//! A notice is implied by a status, not by a transition: `aborted` for revision R is implied by
//! every status that says R was aborted, under one id (`checkout/3f2a9c1d0e4b/aborted`). The
//! worker records each id it delivered, so a restart (which sees the same status again) sends
//! nothing twice, and a notice whose delivery a crash cut short is sent once it is back. What a
//! status no longer shows (a step passed while the daemon was down) is not sent late.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::core::audience::{Kind, Severity, Subscription};
use crate::core::model::{Revision, Weight};
use crate::core::progress::{PauseReason, Progress};
use crate::core::record::StatusFile;

/// How long an abort waits for its revert branch before it is told without one: the branch is
/// normally pushed in the same look.
pub const REVERT_GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// One thing to tell.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    /// Stable across restarts: `<rollout>/<revision>/<event>[/<step>]`.
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
    /// When the status said so.
    pub at: DateTime<Utc>,
}

/// The notices `file` implies as of `now`, oldest event first.
pub fn implied(file: &StatusFile, now: DateTime<Utc>) -> Vec<Notice> {
    let progress = &file.status.progress;
    let rollout = &file.status.rollout;
    let make = |kind: Kind, revision: &Revision, step: Option<usize>, text: String| Notice {
        id: match step {
            Some(k) => format!("{rollout}/{revision}/{}/{k}", kind.as_str()),
            None => format!("{rollout}/{revision}/{}", kind.as_str()),
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
        at: file.updated_at,
    };
    let at_step = |k: usize, w: Weight| format!("step {}/{}, canary {w}", k + 1, file.steps);
    let mut out = Vec::new();
    match progress {
        Progress::Progressing { run }
        | Progress::Paused { run, .. }
        | Progress::Analysing { run, .. } => {
            let r = &run.revision;
            out.push(make(
                Kind::Started,
                r,
                None,
                format!(
                    "canary `{}` against stable `{}`, {}",
                    run.canary,
                    run.stable,
                    at_step(0, run.weight)
                ),
            ));
            if run.step > 0 {
                out.push(make(
                    Kind::Step,
                    r,
                    Some(run.step),
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
                    Some(run.step),
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
                        Some(run.step),
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
                    let failures: u32 = analysis.metrics.values().map(|m| m.failures).sum();
                    if failures > 0 {
                        let failed: Vec<&str> = analysis
                            .metrics
                            .iter()
                            .filter(|(_, m)| m.failures > 0)
                            .map(|(name, _)| name.as_str())
                            .collect();
                        // One notice per failure: the id counts them.
                        let mut n = make(
                            Kind::AnalysisFailed,
                            r,
                            Some(run.step),
                            format!(
                                "{}: {} failed ({failures} failure{} so far, under the limit)",
                                at_step(run.step, run.weight),
                                failed.join(", "),
                                if failures == 1 { "" } else { "s" }
                            ),
                        );
                        n.id = format!("{}/{failures}", n.id);
                        out.push(n);
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
            // Told with its revert branch, which the same look normally pushes.
            if file.revert.is_some() || now - *at >= REVERT_GRACE {
                let mut n = make(
                    Kind::Aborted,
                    revision,
                    None,
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
                n.at = *at;
                out.push(n);
            }
        }
        Progress::Promoted { revision, at } => {
            let mut n = make(
                Kind::Promoted,
                revision,
                None,
                "promoted: the canary takes all traffic".to_string(),
            );
            n.at = *at;
            out.push(n);
        }
        Progress::RollingBack {
            revision,
            from,
            target,
            ..
        } => out.push(make(
            Kind::RolledBack,
            from,
            None,
            format!("rolling back to revision {revision} (canary to {target})"),
        )),
        Progress::RolledBack { revision, from, .. } => out.push(make(
            Kind::RolledBack,
            from,
            None,
            format!("rolled back to revision {revision}"),
        )),
        Progress::Pending
        | Progress::Stable { .. }
        | Progress::Waiting { .. }
        | Progress::Invalid { .. } => {}
    }
    out
}
