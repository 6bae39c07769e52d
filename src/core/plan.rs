//! The planner: a pure function from (spec, recorded status, live weights, measurements, gates, now) to the next [`Plan`].
//!
//! The daemon executes plans and `canaryd plan` prints them, so the two cannot disagree. A plan
//! moves a rollout by at most one transition and changes traffic at most once. Its rules are
//! the product's:
//!
//! - **Hold when an input is missing.** Unknown live weights, an unverified weight or metrics
//!   that cannot be measured hold the rollout where it is; only the progress deadline turns a
//!   long hold into an abort.
//! - **Abort only on evidence** (an analysis verdict, an abort commit, the deadline), and then
//!   at once: canary to 0, whatever the window says.
//! - **Never a weight the spec does not name.** The canary weight is always that of the last
//!   `setWeight` at or before the current step of the *current* spec, or 0, or 100. Editing
//!   the step list mid-rollout keeps the step index (clamped) and re-applies the weight in
//!   force there; it does not restart.
//! - **A revert sends traffic back at once** (or stepped, if the spec says so).
//! - **No advance outside the window**; a promote commit is a person's decision and is honoured.
//! - **Write-ahead:** the status in a plan already names the weight being applied, with
//!   `verified: false`; after a crash the next plan sees the recorded weight and applies it
//!   again, so no step is skipped and none is run twice.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::analysis::{self, AnalysisState, Evidence, Measurement, Verdict};
use crate::core::group::GroupGate;
use crate::core::model::{
    ERROR_RETRY, Observed, Revision, RollbackPolicy, Rollout, Step, Traffic, Weight,
};
use crate::core::progress::{
    Drift, DriftAction, PauseReason, Progress, Run, Stall, Status, remember,
};
use crate::core::spec::{DriftPolicy, InconclusivePolicy};

/// Which analysis of a rollout a measurement belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AnalysisRef {
    /// The analysis step at this index.
    Step(usize),
    /// The background analysis.
    Background,
}

impl AnalysisRef {
    /// The analysis of `spec` this refers to.
    pub fn of(self, spec: &Rollout) -> Option<&crate::core::model::Analysis> {
        match self {
            AnalysisRef::Background => spec.background.as_ref(),
            AnalysisRef::Step(k) => match spec.steps.get(k)? {
                Step::Analysis(a) => Some(a),
                _ => None,
            },
        }
    }
}

/// A measurement taken because a plan asked for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub revision: Revision,
    pub analysis: AnalysisRef,
    pub metric: String,
    pub measurement: Measurement,
}

/// A promote or abort commit on the watched branch, not yet honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    /// The commit id.
    pub id: String,
    pub action: GateAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum GateAction {
    Promote,
    Abort,
}

/// The promote/abort commits that count for `spec` now, oldest first: those after `last` (the
/// gate the recorded status honoured last; from the oldest when it is not among them) and made
/// against the spec's current revision. `commits` are (id, action, revision), oldest first, as
/// the first-parent history of the watched branch holds them.
pub fn pending_gates<'a>(
    commits: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    spec: &Rollout,
    last: Option<&str>,
) -> Vec<Gate> {
    let commits: Vec<(&str, &str, &str)> = commits.into_iter().collect();
    let start = last
        .and_then(|g| commits.iter().position(|(id, _, _)| *id == g))
        .map_or(0, |p| p + 1);
    commits[start..]
        .iter()
        .filter(|(_, _, revision)| *revision == spec.revision.as_str())
        .filter_map(|(id, action, _)| {
            let action = match *action {
                "promote" => GateAction::Promote,
                "abort" => GateAction::Abort,
                _ => return None,
            };
            Some(Gate {
                id: (*id).to_string(),
                action,
            })
        })
        .collect()
}

/// Everything the planner looks at.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub spec: &'a Rollout,
    pub recorded: &'a Status,
    /// What the router reports now; `None` when it could not be read.
    pub live: Option<&'a Observed>,
    /// Measurements taken since the recorded status.
    pub samples: &'a [Sample],
    /// Promote/abort commits for this rollout, oldest first: those after `recorded.last_gate`
    /// and after the commit that set the spec's current revision (a gate is meant for the
    /// revision it was made against; the caller knows the history, the planner does not).
    pub gates: &'a [Gate],
    pub now: DateTime<Utc>,
    /// What its rollout group allows it now (`core::group`); `None`: not in a group.
    pub group: Option<&'a GroupGate>,
}

/// A metric to measure now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Due {
    pub analysis: AnalysisRef,
    pub metric: String,
}

/// The revert to open after an abort: restore the spec as it was before this revision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Revert {
    pub revision: Revision,
    pub evidence: Evidence,
}

/// What the planner decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Nothing changes now.
    Wait {
        reason: String,
    },
    /// Held for want of an input, or by the window or the drift policy.
    Hold {
        reason: String,
    },
    /// Weights set at a `setWeight` step (or again, when they did not take).
    SetWeight {
        step: usize,
        weight: Weight,
    },
    /// Header routes set or removed at a `setHeaderRoute` step (or again, when they did not
    /// take).
    SetRoutes {
        step: usize,
    },
    /// Entered a pause.
    Pause {
        step: usize,
    },
    /// Entered an analysis step.
    Analyse {
        step: usize,
    },
    /// Live weights differed from those set; set again.
    Reapply {
        reason: String,
    },
    Promote,
    Abort {
        evidence: Evidence,
    },
    /// Traffic back to the restored revision (the whole way, or the first step of it).
    RollBack {
        from: Revision,
    },
    /// One more step of a stepped rollback.
    StepBack,
    /// Nothing to roll out: traffic to stable.
    Stable,
    /// The spec is invalid: nothing touched.
    Invalid,
}

/// The next action for one rollout, and the status to record with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub rollout: String,
    pub action: Action,
    /// Weights to set; `None` leaves the router alone.
    pub traffic: Option<Traffic>,
    /// Measurements to take now, then plan again with them.
    pub measure: Vec<Due>,
    /// The revert branch to open (after an abort).
    pub revert: Option<Revert>,
    /// The status to record. Record it before applying `traffic` (write-ahead).
    pub status: Status,
    /// When to plan again at the latest; `None`: only on a change (Git, resync).
    pub wake: Option<DateTime<Utc>>,
}

/// One effect of a plan. [`Plan::effects`] lists them in the order the daemon must execute
/// them; the data each needs is in the plan (`traffic`, `status`, `measure`, `revert`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Effect {
    /// Set `traffic` on the router.
    SetTraffic,
    /// Read the router back; what it reports is what the record says is live.
    ReadBack,
    /// Commit the status file (`status`, with what was read and measured) to the status branch.
    /// The daemon writes the records of one look together, in one push.
    Record,
    /// Take the measurements in `measure`, and plan again with them.
    Measure,
    /// Push the revert branch for `revert`.
    PushRevert,
    /// Report the recorded status to the forge (a commit status, the revert pull request).
    Report,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::SetTraffic => "set traffic",
            Effect::ReadBack => "read back",
            Effect::Record => "record status",
            Effect::Measure => "measure",
            Effect::PushRevert => "push revert branch",
            Effect::Report => "report to forge",
        })
    }
}

impl Plan {
    /// Whether this plan moves traffic back toward stable (an abort, a rollback, a step back,
    /// no canary at all): such traffic is applied before it is recorded, because being safe
    /// matters more than being on record, and a failed record must not leave the canary on.
    pub fn toward_safety(&self) -> bool {
        matches!(
            self.action,
            Action::Abort { .. } | Action::RollBack { .. } | Action::StepBack | Action::Stable
        )
    }

    /// The effects to execute, in order. The rule is the product's safety rule:
    ///
    /// - **toward the canary, record first** (write-ahead): the status naming the weight is in
    ///   Git before the router gets it, so a crash in between re-applies it and never skips
    ///   it; when Git cannot be written, the traffic is not applied at all;
    /// - **back toward stable, apply first**, read back, then record what the router reports.
    ///
    /// Measurements, the revert branch and the forge come after the record they belong to.
    pub fn effects(&self) -> Vec<Effect> {
        let mut effects = Vec::with_capacity(6);
        let moves = self.traffic.is_some();
        if moves && self.toward_safety() {
            effects.extend([Effect::SetTraffic, Effect::ReadBack, Effect::Record]);
        } else {
            effects.push(Effect::Record);
            if moves {
                // Read back by the next plan, whose status then says `verified`.
                effects.push(Effect::SetTraffic);
            }
        }
        if !self.measure.is_empty() {
            effects.push(Effect::Measure);
        }
        if self.revert.is_some() {
            effects.push(Effect::PushRevert);
        }
        if !matches!(self.action, Action::Invalid) {
            effects.push(Effect::Report);
        }
        effects
    }

    /// Whether executing this plan changes anything: traffic, status, measurements or a revert.
    pub fn has_changes(&self, recorded: &Status) -> bool {
        self.traffic.is_some()
            || self.revert.is_some()
            || !self.measure.is_empty()
            || self.status != *recorded
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Wait { reason } => write!(f, "wait: {reason}"),
            Action::Hold { reason } => write!(f, "hold: {reason}"),
            Action::SetWeight { step, weight } => {
                write!(f, "set canary weight {weight} (step {})", step + 1)
            }
            Action::SetRoutes { step } => write!(f, "set header routes (step {})", step + 1),
            Action::Pause { step } => write!(f, "pause (step {})", step + 1),
            Action::Analyse { step } => write!(f, "start analysis (step {})", step + 1),
            Action::Reapply { reason } => write!(f, "reapply weights: {reason}"),
            Action::Promote => f.write_str("promote: canary to 100%"),
            Action::Abort { evidence } => write!(f, "abort: {}", evidence.summary),
            Action::RollBack { from } => write!(f, "roll back from revision {from}"),
            Action::StepBack => f.write_str("step traffic back"),
            Action::Stable => f.write_str("no canary: all traffic to stable"),
            Action::Invalid => f.write_str("spec invalid: traffic left as it is"),
        }
    }
}

/// Plans a rollout whose spec is invalid: its traffic is left exactly as it is, and its
/// progress is kept inside the `invalid` status so that it resumes when the spec is fixed.
pub fn plan_invalid(recorded: &Status, errors: Vec<String>) -> Plan {
    let held = match &recorded.progress {
        Progress::Invalid { held, .. } => held.clone(),
        other => Box::new(other.clone()),
    };
    let mut status = recorded.clone();
    status.progress = Progress::Invalid { errors, held };
    Plan {
        rollout: recorded.rollout.clone(),
        action: Action::Invalid,
        traffic: None,
        measure: Vec::new(),
        revert: None,
        status,
        wake: None,
    }
}

/// Plans the next action for a valid rollout.
pub fn plan(i: Inputs<'_>) -> Plan {
    let mut status = i.recorded.clone();
    if let Progress::Invalid { held, .. } = &status.progress {
        status.progress = (**held).clone();
    }
    let mut p = Planner {
        i,
        status,
        traffic: None,
        measure: Vec::new(),
        revert: None,
        wake: None,
    };
    let action = p.decide();
    if p.status.progress.run().is_none() {
        // The rollout left flight (promoted, aborted, rolled back): nothing more to measure.
        p.measure.clear();
    }
    Plan {
        rollout: i.spec.name.clone(),
        action,
        traffic: p.traffic,
        measure: p.measure,
        revert: p.revert,
        status: p.status,
        wake: p.wake,
    }
}

struct Planner<'a> {
    i: Inputs<'a>,
    status: Status,
    traffic: Option<Traffic>,
    measure: Vec<Due>,
    revert: Option<Revert>,
    wake: Option<DateTime<Utc>>,
}

fn wait(reason: impl Into<String>) -> Action {
    Action::Wait {
        reason: reason.into(),
    }
}

fn hold(reason: impl Into<String>) -> Action {
    Action::Hold {
        reason: reason.into(),
    }
}

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

impl Planner<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.i.now
    }

    fn wake_at(&mut self, t: DateTime<Utc>) {
        let t = t.max(self.now());
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }

    /// The canary's live share under the spec's target; `None` when unreadable.
    fn live_canary(&self) -> Option<Weight> {
        self.i
            .live
            .and_then(|l| self.i.spec.target().live_canary(l))
    }

    /// The action of setting `run`'s step again (its traffic did not take yet).
    fn set_again(&self, run: &Run) -> Action {
        match self.i.spec.steps.get(run.step) {
            Some(Step::SetHeaderRoute { .. }) => Action::SetRoutes { step: run.step },
            _ => Action::SetWeight {
                step: run.step,
                weight: run.weight,
            },
        }
    }

    /// Sets the canary to `canary` percent, with no header route (the rollout is not at a
    /// step: settling, aborting, rolling back).
    fn set(&mut self, canary: Weight) {
        self.traffic = Some(self.traffic_at(canary, None));
    }

    /// Sets the canary to `canary` percent with the header routes in force at step `k`.
    fn set_at(&mut self, canary: Weight, k: usize) {
        self.traffic = Some(self.traffic_at(canary, Some(k)));
    }

    /// The traffic at `canary` percent: the routes of step `k` when at a step, and the sticky
    /// key while both sides carry weight.
    fn traffic_at(&self, canary: Weight, k: Option<usize>) -> Traffic {
        let spec = self.i.spec;
        let mut t = spec.target().traffic(canary, self.i.live);
        t.routes = k.map(|k| spec.routes_at(k)).unwrap_or_default();
        if canary != Weight::ZERO && canary != Weight::FULL {
            t.sticky = spec.sticky.clone();
        }
        t
    }

    /// Whether the router holds the routes and sticky key that step `k` at `canary` asks for
    /// (a router that reports none holds none).
    fn live_routes_fit(&self, canary: Weight, k: usize) -> bool {
        let Some(live) = self.i.live else {
            return false;
        };
        let want = self.traffic_at(canary, Some(k));
        live.routes == want.routes && live.sticky == want.sticky
    }

    fn decide(&mut self) -> Action {
        if self.status.progress.revision() != Some(&self.i.spec.revision) {
            // A new revision runs in its group's release under way (or a new one).
            self.status.release = self.i.group.map(|g| g.release.clone());
            return self.new_revision();
        }
        if let Some(GroupGate {
            abort: Some(evidence),
            ..
        }) = self.i.group
        {
            return self.abort_with_group(evidence.clone());
        }
        match self.status.progress.clone() {
            Progress::Stable { .. } => self.settle(Weight::ZERO, "no canary"),
            Progress::Waiting { .. } => self.start(),
            Progress::Promoted { .. } => self.settle(Weight::FULL, "promoted"),
            Progress::Aborted {
                revision, evidence, ..
            } => {
                // Git still asks for the aborted revision, so the revert is still wanted. Opening
                // it is idempotent (found again by name), so a crash between recording the abort
                // and opening the revert loses nothing.
                self.revert = Some(Revert { revision, evidence });
                self.settle(Weight::ZERO, "aborted")
            }
            Progress::RolledBack { weight, .. } => self.settle(weight, "rolled back"),
            Progress::RollingBack { .. } => self.step_back(false),
            Progress::Progressing { .. } | Progress::Paused { .. } | Progress::Analysing { .. } => {
                self.in_flight()
            }
            // Both have no revision, so `new_revision` handled them.
            Progress::Pending | Progress::Invalid { .. } => unreachable!("no revision"),
        }
    }

    /// A terminal state: keep traffic where it belongs. Gates have nothing to act on.
    fn settle(&mut self, canary: Weight, what: &str) -> Action {
        if let Some(g) = self.i.gates.first() {
            self.status.last_gate = Some(g.id.clone());
        }
        match self.live_canary() {
            Some(live) if live == canary => wait(format!("{what}; traffic matches")),
            _ if self.i.live.is_none() => {
                self.wake_at(self.now() + ERROR_RETRY);
                hold(format!("{what}; router weights unknown"))
            }
            _ => {
                self.set(canary);
                Action::Reapply {
                    reason: format!("{what}: canary belongs at {canary}"),
                }
            }
        }
    }

    /// The spec's revision differs from the recorded one: start, revert, or refuse.
    fn new_revision(&mut self) -> Action {
        let spec = self.i.spec;
        let rev = spec.revision.clone();
        let now = self.now();
        let old = self.status.progress.clone();
        let was_active = matches!(
            old,
            Progress::Progressing { .. }
                | Progress::Paused { .. }
                | Progress::Analysing { .. }
                | Progress::Aborted { .. }
                | Progress::RollingBack { .. }
        );
        let restored_weight = if spec.target().canary.is_none() {
            Some(Weight::ZERO)
        } else if self.status.promoted.contains(&rev) {
            Some(Weight::FULL)
        } else {
            None
        };
        // A revert: back from a rollout in flight (or aborted), or back to a revision that had
        // been promoted before the one now live.
        if let Some(weight) = restored_weight
            && (was_active || weight == Weight::FULL)
            && old.revision().is_some()
        {
            return self.roll_back(&old, weight);
        }
        if let Some(weight) = restored_weight {
            self.status.progress = if weight == Weight::FULL {
                Progress::Promoted {
                    revision: rev,
                    at: now,
                }
            } else {
                Progress::Stable {
                    revision: rev,
                    since: now,
                }
            };
            return match self.live_canary() {
                Some(live) if live == weight => wait("traffic matches"),
                _ => {
                    self.set(weight);
                    if weight == Weight::ZERO {
                        Action::Stable
                    } else {
                        Action::Reapply {
                            reason: "restored a promoted revision".into(),
                        }
                    }
                }
            };
        }
        if self.status.aborted.contains(&rev) {
            self.status.progress = Progress::Aborted {
                revision: rev,
                at: now,
                evidence: Evidence::text(
                    "this revision was aborted before; bump `spec.retry` to run it again",
                ),
                step: 0,
                weight: Weight::ZERO,
            };
            self.set(Weight::ZERO);
            return hold("revision was aborted before; not retried on its own");
        }
        // Starting blind could run a finished rollout again, or put a canary beside weights
        // nobody can see: wait for the router.
        if self.i.live.is_none() {
            self.wake_at(now + ERROR_RETRY);
            return hold("router weights unknown: the rollout starts once they can be read");
        }
        // First sight of a rollout whose canary already carries everything: it finished
        // before canaryd knew it. Adopt, never run it again.
        if matches!(old, Progress::Pending) && self.live_canary() == Some(Weight::FULL) {
            self.status.progress = Progress::Promoted {
                revision: rev.clone(),
                at: now,
            };
            remember(&mut self.status.promoted, &rev);
            return wait("canary already at 100%: recorded as promoted");
        }
        self.status.progress = Progress::Waiting {
            revision: rev,
            since: now,
        };
        self.start()
    }

    /// Starts the spec's revision at its first step, or, outside the window, waits with all
    /// traffic on stable.
    fn start(&mut self) -> Action {
        let spec = self.i.spec;
        let now = self.now();
        if self.i.live.is_none() {
            self.wake_at(now + ERROR_RETRY);
            return hold("router weights unknown: the rollout starts once they can be read");
        }
        if let Some(w) = &spec.window
            && !w.contains(now)
        {
            if let Some(open) = w.next_open(now) {
                self.wake_at(open);
            }
            if self.live_canary() != Some(Weight::ZERO) && self.i.live.is_some() {
                self.set(Weight::ZERO);
            }
            return hold(format!(
                "outside window `{}`: the rollout starts when it opens",
                w.source
            ));
        }
        if let Some(GroupGate {
            hold_start: Some(why),
            ..
        }) = self.i.group
        {
            if self.live_canary() != Some(Weight::ZERO) {
                self.set(Weight::ZERO);
            }
            return hold(why.clone());
        }
        let rev = spec.revision.clone();
        let target = spec.target();
        let run = Run {
            revision: rev,
            step: 0,
            weight: Weight::ZERO,
            verified: false,
            stable: target.stable.name.clone(),
            canary: target
                .canary
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            started_at: now,
            step_started_at: now,
            stall: None,
            deadline_exceeded: false,
            background: spec.background.as_ref().map(|_| AnalysisState::new(now)),
            done: false,
        };
        self.enter(run, 0)
    }

    /// Traffic back to `weight` of the spec's (restored) revision after a revert: at once, or
    /// (stepped) down through the spec's weights on the old run's backends.
    fn roll_back(&mut self, old: &Progress, weight: Weight) -> Action {
        let spec = self.i.spec;
        let from = old
            .revision()
            .cloned()
            .unwrap_or_else(|| spec.revision.clone());
        if let (RollbackPolicy::Stepped(_), Some(run)) = (spec.rollback, old.run()) {
            self.status.progress = Progress::RollingBack {
                revision: spec.revision.clone(),
                from: from.clone(),
                stable: run.stable.clone(),
                canary: run.canary.clone(),
                weight: run.weight,
                target: weight,
                since: self.now(),
            };
            self.step_back(true);
            return Action::RollBack { from };
        }
        self.traffic = Some(spec.target().traffic(weight, self.i.live));
        self.status.progress = Progress::RolledBack {
            revision: spec.revision.clone(),
            from: from.clone(),
            at: self.now(),
            weight,
        };
        Action::RollBack { from }
    }

    /// One step of a stepped rollback: the old canary down to the next lower weight the spec
    /// in force names, or, below the lowest, the restored revision's final traffic. Computed
    /// afresh each time, so editing the steps mid-way never yields a weight they do not name.
    fn step_back(&mut self, first: bool) -> Action {
        let Progress::RollingBack {
            revision,
            from,
            stable,
            canary,
            weight,
            target,
            since,
        } = self.status.progress.clone()
        else {
            unreachable!("only called while rolling back");
        };
        let spec = self.i.spec;
        let now = self.now();
        let interval = match spec.rollback {
            RollbackPolicy::Stepped(interval) => Some(interval),
            // The policy changed to immediate mid-way: finish now.
            RollbackPolicy::Immediate => None,
        };
        if let Some(interval) = interval
            && !first
            && now < since + interval
        {
            self.wake_at(since + interval);
            return wait(format!(
                "stepping back; next step at {}",
                at(since + interval)
            ));
        }
        let lower = spec
            .allowed_weights()
            .into_iter()
            .rev()
            .find(|w| *w > Weight::ZERO && *w < weight);
        match (interval, lower) {
            (Some(interval), Some(w)) => {
                let final_traffic = spec.target().traffic(target, self.i.live);
                let mut backends = final_traffic.backends;
                backends.values_mut().for_each(|v| *v = Weight::ZERO);
                backends.insert(stable.clone(), w.complement());
                backends.insert(canary.clone(), w);
                self.traffic = Some(Traffic::weights(backends));
                self.wake_at(now + interval);
                self.status.progress = Progress::RollingBack {
                    revision,
                    from,
                    stable,
                    canary,
                    weight: w,
                    target,
                    since: now,
                };
            }
            _ => {
                self.traffic = Some(spec.target().traffic(target, self.i.live));
                self.status.progress = Progress::RolledBack {
                    revision,
                    from,
                    at: now,
                    weight: target,
                };
            }
        }
        Action::StepBack
    }

    /// Enters step `k` of the current spec with `run` (at its previous step).
    fn enter(&mut self, mut run: Run, k: usize) -> Action {
        let spec = self.i.spec;
        let now = self.now();
        let Some(step) = spec.steps.get(k) else {
            return self.promote();
        };
        let weight = spec.weight_at(k);
        if weight != run.weight {
            run.verified = false;
            run.weight = weight;
        }
        if spec.routes_at(k)
            != k.checked_sub(1)
                .map(|p| spec.routes_at(p))
                .unwrap_or_default()
        {
            run.verified = false;
        }
        run.step = k;
        run.step_started_at = now;
        run.stall = None;
        run.done = false;
        let changes_traffic = !run.verified;
        let action = match step {
            Step::SetWeight(w) => {
                self.status.progress = Progress::Progressing { run };
                Action::SetWeight {
                    step: k,
                    weight: *w,
                }
            }
            Step::SetHeaderRoute { .. } => {
                self.status.progress = Progress::Progressing { run };
                Action::SetRoutes { step: k }
            }
            Step::Pause(d) => {
                let until = d.map(|d| now + d);
                if let Some(t) = until {
                    self.wake_at(t);
                }
                self.status.progress = Progress::Paused {
                    run,
                    until,
                    reason: PauseReason::Step,
                };
                Action::Pause { step: k }
            }
            Step::Analysis(a) => {
                let state = AnalysisState::new(now);
                if changes_traffic {
                    // Measure only once the weight is verified.
                    self.wake_at(now + ERROR_RETRY);
                } else {
                    self.due(AnalysisRef::Step(k), a, &state);
                }
                self.status.progress = Progress::Analysing {
                    run,
                    analysis: state,
                };
                Action::Analyse { step: k }
            }
        };
        if changes_traffic {
            self.set_at(weight, k);
        }
        action
    }

    fn promote(&mut self) -> Action {
        let rev = self.i.spec.revision.clone();
        self.status.progress = Progress::Promoted {
            revision: rev.clone(),
            at: self.now(),
        };
        remember(&mut self.status.promoted, &rev);
        self.set(Weight::FULL);
        Action::Promote
    }

    fn abort(&mut self, run: &Run, evidence: Evidence) -> Action {
        self.abort_at(run.revision.clone(), run.step, run.weight, evidence)
    }

    /// Canary to 0 for `rev`, recorded as aborted at `step` and `weight` with `evidence`, and
    /// its revert wanted.
    fn abort_at(
        &mut self,
        rev: Revision,
        step: usize,
        weight: Weight,
        evidence: Evidence,
    ) -> Action {
        self.status.progress = Progress::Aborted {
            revision: rev.clone(),
            at: self.now(),
            evidence: evidence.clone(),
            step,
            weight,
        };
        remember(&mut self.status.aborted, &rev);
        self.set(Weight::ZERO);
        self.revert = Some(Revert {
            revision: rev,
            evidence: evidence.clone(),
        });
        Action::Abort { evidence }
    }

    /// Another member of the rollout's group failed: canary to 0, whether this one is in
    /// flight, waiting to start or already promoted in the same release.
    fn abort_with_group(&mut self, evidence: Evidence) -> Action {
        if let Some(run) = self.status.progress.run().cloned() {
            return self.abort(&run, evidence);
        }
        let rev = self.i.spec.revision.clone();
        let weight = match self.status.progress {
            Progress::Promoted { .. } => Weight::FULL,
            _ => Weight::ZERO,
        };
        self.status.promoted.retain(|r| *r != rev);
        self.abort_at(rev, 0, weight, evidence)
    }

    /// Adds the metrics of `analysis` due now to the plan, and wakes for the next one.
    fn due(
        &mut self,
        which: AnalysisRef,
        spec: &crate::core::model::Analysis,
        state: &AnalysisState,
    ) {
        for metric in analysis::due(spec, state, self.now()) {
            self.measure.push(Due {
                analysis: which,
                metric,
            });
        }
        if let Verdict::Running { next } | Verdict::Stalled { next, .. } =
            analysis::assess(spec, state, self.now())
            && next > self.now()
        {
            self.wake_at(next);
        }
    }

    /// A rollout in flight: Progressing, Paused or Analysing.
    fn in_flight(&mut self) -> Action {
        let spec = self.i.spec;
        let now = self.now();
        let mut progress = self.status.progress.clone();
        // Marked honoured (`last_gate`) only where it is acted on below: a promote seen while the
        // rollout is held stays pending until the hold ends, rather than being lost.
        let gate = self.i.gates.first().cloned();

        // Fold the new measurements into the run.
        let (run, step_state) = match &mut progress {
            Progress::Progressing { run } | Progress::Paused { run, .. } => (run, None),
            Progress::Analysing { run, analysis } => (run, Some(analysis)),
            _ => unreachable!("in flight"),
        };
        let mut step_state = step_state;
        for s in self.i.samples.iter().filter(|s| s.revision == run.revision) {
            match s.analysis {
                AnalysisRef::Background => {
                    if let Some(bg) = run.background.as_mut() {
                        bg.record(&s.metric, s.measurement.clone());
                    }
                }
                AnalysisRef::Step(k) if k == run.step => {
                    if let Some(st) = step_state.as_deref_mut() {
                        st.record(&s.metric, s.measurement.clone());
                    }
                }
                AnalysisRef::Step(_) => {}
            }
        }
        let mut run = run.clone();
        let step_state = step_state.cloned();
        self.status.progress = progress.clone();

        // 1. An abort commit.
        if let Some(Gate {
            id,
            action: GateAction::Abort,
        }) = &gate
        {
            self.status.last_gate = Some(id.clone());
            return self.abort(
                &run,
                Evidence::text(format!("aborted by hand in commit {id}")),
            );
        }

        // 2. Evidence from the analyses.
        let mut stalled: Option<String> = None;
        if let (Some(bg_spec), Some(bg)) = (&spec.background, &run.background) {
            match analysis::assess(bg_spec, bg, now) {
                Verdict::Failed(e) => return self.abort(&run, e),
                Verdict::Inconclusive(e) => {
                    if let Some(action) = self.inconclusive(&run, bg_spec.on_inconclusive, e) {
                        return action;
                    }
                }
                Verdict::Stalled { evidence, .. } => stalled = Some(evidence.summary),
                Verdict::Running { .. } | Verdict::Passed => {}
            }
        }
        let step_spec = spec.steps.get(run.step);
        let mut step_passed = false;
        if let (Some(Step::Analysis(a)), Some(st)) = (step_spec, &step_state) {
            match analysis::assess(a, st, now) {
                Verdict::Failed(e) => return self.abort(&run, e),
                Verdict::Inconclusive(e) => {
                    if let Some(action) = self.inconclusive(&run, a.on_inconclusive, e) {
                        return action;
                    }
                }
                Verdict::Stalled { evidence, .. } => stalled = stalled.or(Some(evidence.summary)),
                Verdict::Passed => step_passed = true,
                Verdict::Running { .. } => {}
            }
        }

        // 3. The step list may have changed under the run: re-enter the step if it no longer fits.
        let fits = match (&progress, step_spec) {
            (_, None) => false,
            (
                Progress::Progressing { .. },
                Some(Step::SetWeight(_) | Step::SetHeaderRoute { .. }),
            ) => true,
            (
                Progress::Paused {
                    reason: PauseReason::Step,
                    ..
                },
                Some(Step::Pause(_)),
            ) => true,
            (
                Progress::Paused {
                    reason: PauseReason::Inconclusive { .. },
                    ..
                },
                _,
            ) => true,
            (Progress::Analysing { .. }, Some(Step::Analysis(_))) => true,
            _ => false,
        };
        // Clamped to the last step: a list shortened below the current step resumes at its
        // last step (and promotes after it, window permitting), rather than promoting now.
        let k = run.step.min(spec.steps.len().saturating_sub(1));
        // An edit that raises the weight in force is an advance: not outside the window.
        if spec.weight_at(k) > run.weight
            && let Some(w) = &spec.window
            && !w.contains(now)
        {
            if let Some(open) = w.next_open(now) {
                self.wake_at(open);
            }
            self.put_run(&run);
            return hold(format!(
                "outside window `{}`: the edited steps raise the weight when it opens",
                w.source
            ));
        }
        if !fits {
            return self.enter(run, k);
        }
        let in_force = spec.weight_at(run.step);
        // A weight asked for in this very plan cannot have failed to take yet.
        let newly_set = run.weight != in_force;
        if newly_set {
            run.weight = in_force;
            run.verified = false;
        }
        // An edited pause duration counts from when the pause began.
        if let (
            Progress::Paused {
                reason: PauseReason::Step,
                until,
                ..
            },
            Some(Step::Pause(d)),
        ) = (&mut progress, step_spec)
        {
            *until = d.map(|d| run.step_started_at + d);
            self.status.progress = progress.clone();
        }

        // 4. The live weights.
        let live = self.live_canary();
        let mut reason_held: Option<String> = None;
        // Nothing carries traffic: the router restarted and forgot the weights. That is drift.
        let forgotten = self.i.live.is_some_and(|l| l.percentages().is_none());
        match live {
            None if self.i.live.is_none() => stalled = Some("router weights unknown".to_string()),
            None if run.verified && !forgotten => {
                stalled = Some(
                    "router reports weights that do not fit this rollout's backends".to_string(),
                );
            }
            Some(w) if w == run.weight && self.live_routes_fit(run.weight, run.step) => {
                run.verified = true;
            }
            found if run.verified => {
                let what = match found {
                    Some(w) if w == run.weight => format!(
                        "live header routes or sticky key differ from step {}'s",
                        run.step + 1
                    ),
                    _ => format!(
                        "live canary weight {} differs from step {} weight {}",
                        found.map_or_else(|| "none".to_string(), |w| w.to_string()),
                        run.step + 1,
                        run.weight
                    ),
                };
                let drift = Drift {
                    at: now,
                    expected: run.weight,
                    live: self
                        .i
                        .live
                        .and_then(Observed::percentages)
                        .unwrap_or_default(),
                    action: match spec.on_drift {
                        DriftPolicy::Reapply => DriftAction::Reapplied,
                        DriftPolicy::Hold => DriftAction::Held,
                    },
                };
                match spec.on_drift {
                    DriftPolicy::Reapply => {
                        self.status.drift = Some(drift);
                        run.verified = false;
                        self.put_run(&run);
                        self.set_at(run.weight, run.step);
                        return Action::Reapply { reason: what };
                    }
                    DriftPolicy::Hold => {
                        if self.status.drift.as_ref().map(|d| (&d.live, d.expected))
                            != Some((&drift.live, drift.expected))
                        {
                            self.status.drift = Some(drift);
                        }
                        reason_held = Some(format!("{what} (onDrift: hold)"));
                    }
                }
            }
            // Not applied yet, or it did not take: apply (again). This includes weights that do
            // not fit (`None`): after a crash between record and apply, the router may not list
            // the canary backend until canaryd first sets it.
            _ => {
                if run.step_started_at < now && !newly_set {
                    stalled = stalled.or(Some("weights not verified on the router".into()));
                }
                self.set_at(run.weight, run.step);
            }
        }

        // 5. Measurements keep going while held: they are what lets a hold end.
        if let (Some(bg_spec), Some(bg)) = (&spec.background, &run.background) {
            self.due(AnalysisRef::Background, bg_spec, bg);
        }
        if let (Some(Step::Analysis(a)), Some(st)) = (step_spec, &step_state)
            && run.verified
        {
            self.due(AnalysisRef::Step(run.step), a, st);
        }

        // 6. Stalls and the deadline.
        match &stalled {
            Some(why) => {
                let since = run.stall.as_ref().map_or(now, |s| s.since);
                run.stall = Some(Stall {
                    since,
                    because: why.clone(),
                });
                let deadline = since + spec.progress_deadline;
                if now >= deadline {
                    let evidence = Evidence::text(format!(
                        "no progress for {}: {why}",
                        crate::core::spec::duration::display(spec.progress_deadline)
                    ));
                    if spec.deadline_abort {
                        return self.abort(&run, evidence);
                    }
                    run.deadline_exceeded = true;
                } else {
                    self.wake_at(deadline);
                }
                self.wake_at(now + ERROR_RETRY);
                self.put_run(&run);
                if self.traffic.is_some() {
                    return self.set_again(&run);
                }
                return hold(why.clone());
            }
            None => {
                run.stall = None;
                run.deadline_exceeded = false;
            }
        }
        self.put_run(&run);
        if self.traffic.is_some() {
            return self.set_again(&run);
        }
        if let Some(why) = reason_held {
            return hold(why);
        }

        // 7. A promote commit moves past the current pause or analysis, window or not. At a
        // `setWeight` step there is nothing to move past yet: it stays pending for the next
        // pause or analysis, the gate the person most likely meant.
        if let Some(g) = &gate
            && g.action == GateAction::Promote
            && !matches!(progress, Progress::Progressing { .. })
        {
            // Promotes pushed twice for one pause are one decision: a second must not pass the
            // next pause unseen. An abort after them still counts.
            let spent = self
                .i
                .gates
                .iter()
                .take_while(|g| g.action == GateAction::Promote)
                .last()
                .unwrap_or(g);
            self.status.last_gate = Some(spent.id.clone());
            if let Some(bg) = run.background.as_mut()
                && matches!(
                    progress,
                    Progress::Paused {
                        reason: PauseReason::Inconclusive { .. },
                        ..
                    }
                )
            {
                // A person looked at the inconclusive result and chose to go on: start counting afresh.
                *bg = AnalysisState::new(now);
            }
            let next = run.step + 1;
            return self.enter_within_group(run, next);
        }

        // 8. The step itself: finished already when its group held it before the next.
        let ready = run.done
            || match &progress {
                Progress::Progressing { .. } => true,
                Progress::Paused { until: Some(t), .. } => {
                    if now < *t {
                        self.wake_at(*t);
                        return wait(format!("paused until {}", at(*t)));
                    }
                    true
                }
                Progress::Paused { reason, .. } => {
                    return wait(match reason {
                        PauseReason::Step => {
                            format!("paused until promoted (canaryd promote {})", spec.name)
                        }
                        PauseReason::Inconclusive { evidence } => {
                            format!("{}; promote or abort by commit", evidence.summary)
                        }
                    });
                }
                Progress::Analysing { .. } => {
                    if !step_passed {
                        return wait("analysing");
                    }
                    true
                }
                _ => false,
            };
        if ready {
            if let Some(w) = &spec.window
                && !w.contains(now)
            {
                if let Some(open) = w.next_open(now) {
                    self.wake_at(open);
                }
                return hold(format!("outside window `{}`", w.source));
            }
            let next = run.step + 1;
            return self.enter_within_group(run, next);
        }
        wait("nothing to do")
    }

    /// Enters step `next`, unless the rollout's group holds it before: then the finished step
    /// is marked done and the run waits there (see `core::group`).
    fn enter_within_group(&mut self, mut run: Run, next: usize) -> Action {
        if let Some(GroupGate {
            limit: Some((limit, why)),
            ..
        }) = self.i.group
            && next > *limit
        {
            run.done = true;
            self.put_run(&run);
            return hold(why.clone());
        }
        self.enter(run, next)
    }

    /// An inconclusive verdict: pause for a person, or abort, as the spec says.
    fn inconclusive(
        &mut self,
        run: &Run,
        policy: InconclusivePolicy,
        evidence: Evidence,
    ) -> Option<Action> {
        if policy == InconclusivePolicy::Abort {
            return Some(self.abort(run, evidence));
        }
        if let Progress::Paused {
            reason: PauseReason::Inconclusive { .. },
            ..
        } = &self.status.progress
        {
            // Already paused for it; the gate (if any) decides below.
            return None;
        }
        // A promote made before this evidence existed is not a decision about it: the pause
        // waits for a commit made after it.
        if let Some(g) = self.i.gates.last() {
            self.status.last_gate = Some(g.id.clone());
        }
        self.status.progress = Progress::Paused {
            run: run.clone(),
            until: None,
            reason: PauseReason::Inconclusive {
                evidence: evidence.clone(),
            },
        };
        Some(hold(format!(
            "{}; waiting for a promote or abort commit",
            evidence.summary
        )))
    }

    /// Writes `run` back into the current in-flight progress.
    fn put_run(&mut self, new: &Run) {
        match &mut self.status.progress {
            Progress::Progressing { run }
            | Progress::Paused { run, .. }
            | Progress::Analysing { run, .. } => *run = new.clone(),
            _ => {}
        }
    }
}
