//! Rollout progress, the state machine the planner moves; serialised, it is the status file in Git.
//!
//! Every in-flight variant carries a [`Run`] with what it needs to resume after a crash: the
//! step, the weight it put on the canary, whether that weight was read back from the router,
//! and the analysis measured so far. There is no separate "status" struct that could disagree.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::analysis::{AnalysisState, Evidence};
use crate::core::model::{Revision, Weight};

/// How many promoted and aborted revisions a status remembers, newest last.
pub const REMEMBERED: usize = 20;

/// The status of one rollout, as committed to the status branch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "canaryd rollout status")]
pub struct Status {
    pub rollout: String,
    pub progress: Progress,
    /// Revisions whose canary was promoted to 100 %, newest last: the spec coming back to one
    /// of them (a revert) restores it at once rather than running it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promoted: Vec<Revision>,
    /// Revisions that were aborted. Their spec coming back does not start them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<Revision>,
    /// The last promote/abort commit honoured, so that a gate is never applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gate: Option<String>,
    /// The last time the live weights differed from what canaryd had set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    /// The release of its rollout group that the current revision runs (or ran) in: the
    /// group's revision when that release began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Revision>,
}

/// Adds `rev` as the newest of `list`, keeping at most [`REMEMBERED`].
pub fn remember(list: &mut Vec<Revision>, rev: &Revision) {
    list.retain(|r| r != rev);
    list.push(rev.clone());
    if list.len() > REMEMBERED {
        list.remove(0);
    }
}

impl Status {
    /// The status of a rollout never seen before.
    pub fn new(rollout: &str) -> Self {
        Status {
            rollout: rollout.to_string(),
            progress: Progress::Pending,
            promoted: Vec::new(),
            aborted: Vec::new(),
            last_gate: None,
            drift: None,
            release: None,
        }
    }
}

/// Where a rollout is. Tagged by `phase` in the status file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Progress {
    /// Never reconciled.
    Pending,
    /// The spec names no canary: all traffic to stable.
    Stable {
        revision: Revision,
        since: DateTime<Utc>,
    },
    /// A new revision waiting for its deployment window to open; all traffic on stable
    /// meanwhile (a canary it replaced does not keep unanalysed traffic over a weekend).
    Waiting {
        revision: Revision,
        since: DateTime<Utc>,
    },
    /// At a `setWeight` step: its weight is being applied, or was and is waiting for the window.
    Progressing { run: Run },
    /// At a pause: timed (`until`), until promoted, or after an inconclusive analysis.
    Paused {
        run: Run,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<DateTime<Utc>>,
        reason: PauseReason,
    },
    /// At an analysis step, measuring.
    Analysing { run: Run, analysis: AnalysisState },
    /// The canary got 100 % and is the new stable.
    Promoted {
        revision: Revision,
        at: DateTime<Utc>,
    },
    /// Stopped on evidence (or by hand, or by deadline): canary at 0 %.
    Aborted {
        revision: Revision,
        at: DateTime<Utc>,
        evidence: Evidence,
        /// The step and canary weight it was at.
        step: usize,
        weight: Weight,
    },
    /// The spec went back to an earlier revision; stepping traffic back.
    RollingBack {
        revision: Revision,
        from: Revision,
        /// The backends of the run being rolled back.
        stable: String,
        canary: String,
        /// The canary weight on those backends now.
        weight: Weight,
        /// The restored revision's canary weight once done: 100 when it had been promoted, else 0.
        target: Weight,
        /// When the last step back was taken.
        since: DateTime<Utc>,
    },
    /// The spec went back to an earlier revision and traffic followed.
    RolledBack {
        revision: Revision,
        from: Revision,
        at: DateTime<Utc>,
        /// The canary weight of the restored revision: 100 when it had been promoted, else 0.
        weight: Weight,
    },
    /// The spec is invalid: traffic is left exactly as it was, and `held` resumes once it is fixed.
    Invalid {
        errors: Vec<String>,
        held: Box<Progress>,
    },
}

impl Progress {
    /// The revision this progress is about, if any.
    pub fn revision(&self) -> Option<&Revision> {
        match self {
            Progress::Pending => None,
            Progress::Stable { revision, .. }
            | Progress::Waiting { revision, .. }
            | Progress::Promoted { revision, .. }
            | Progress::Aborted { revision, .. }
            | Progress::RollingBack { revision, .. }
            | Progress::RolledBack { revision, .. } => Some(revision),
            Progress::Progressing { run }
            | Progress::Paused { run, .. }
            | Progress::Analysing { run, .. } => Some(&run.revision),
            Progress::Invalid { held, .. } => held.revision(),
        }
    }

    /// The run of an in-flight rollout.
    pub fn run(&self) -> Option<&Run> {
        match self {
            Progress::Progressing { run }
            | Progress::Paused { run, .. }
            | Progress::Analysing { run, .. } => Some(run),
            _ => None,
        }
    }

    /// The phase name as in the status file.
    pub fn phase(&self) -> &'static str {
        match self {
            Progress::Pending => "pending",
            Progress::Stable { .. } => "stable",
            Progress::Waiting { .. } => "waiting",
            Progress::Progressing { .. } => "progressing",
            Progress::Paused { .. } => "paused",
            Progress::Analysing { .. } => "analysing",
            Progress::Promoted { .. } => "promoted",
            Progress::Aborted { .. } => "aborted",
            Progress::RollingBack { .. } => "rollingBack",
            Progress::RolledBack { .. } => "rolledBack",
            Progress::Invalid { .. } => "invalid",
        }
    }
}

/// Why a rollout is paused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum PauseReason {
    /// A `pause` step.
    Step,
    /// An analysis came out inconclusive and the spec says to wait for a human.
    Inconclusive { evidence: Evidence },
}

/// A rollout in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub revision: Revision,
    /// Index of the current step in the (expanded) step list.
    pub step: usize,
    /// The canary weight canaryd has put (or is putting) on the router.
    pub weight: Weight,
    /// Whether `weight` has been read back from the router since it was set.
    pub verified: bool,
    /// Backends of this revision, so that traffic can be stepped back even after the spec
    /// naming them is gone.
    pub stable: String,
    pub canary: String,
    pub started_at: DateTime<Utc>,
    pub step_started_at: DateTime<Utc>,
    /// Held for want of an input (router, metrics): since when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall: Option<Stall>,
    /// The deadline passed and the spec says to keep holding rather than abort.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deadline_exceeded: bool,
    /// The background analysis, when the spec has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<AnalysisState>,
    /// The current step is finished and the run holds before the next for its group (a
    /// lockstep member waiting for the others; see `core::group`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

/// A rollout held for want of an input; the progress deadline counts from `since`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stall {
    pub since: DateTime<Utc>,
    /// Why, as of the last look: `router weights unknown`, `weights not verified on the router`,
    /// or the metric that could not be measured.
    pub because: String,
}

/// Live weights that differed from what canaryd set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub at: DateTime<Utc>,
    /// The canary weight canaryd had set.
    pub expected: Weight,
    /// What the router reported, in percent per backend.
    pub live: BTreeMap<String, Weight>,
    /// What canaryd did about it.
    pub action: DriftAction,
}

/// What the planner did about drift, as the spec's `onDrift` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DriftAction {
    /// Set the recorded step's weights again.
    Reapplied,
    /// Left the router alone and held the rollout.
    Held,
}
