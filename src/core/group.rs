//! How the members of a rollout group may move now, decided from their statuses (pure: the
//! daemon passes each member's [`GroupGate`] to the planner).
//!
//! - **The release**: a member that starts a new revision records the release it runs in
//!   ([`Status::release`]): the one under way when another member is waiting or in flight, else
//!   a new one named by the group's revision. The members of a release are those whose
//!   current revision recorded it; one whose revision the merge did not change (promoted long
//!   before) is not in it and holds nothing.
//! - **Lockstep**: a member enters its k-th `setWeight` step (or its promotion, after its last
//!   step) only once every other member of the release has finished what comes before its own
//!   k-th (it holds there, [`Run::done`]) or is past it. So all stand at one step's weight, and
//!   the group moves on when every member's analysis for that step has passed.
//! - **Ordered**: a member starts only once each member it waits for is promoted, or has
//!   entered the step named.
//! - **Fail together**: a member of the release aborted aborts every other member of it, those
//!   promoted in it included, with the failing member's evidence under the group's name.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::analysis::Evidence;
use crate::core::model::{Catalog, Group, Revision, Rollout, Step};
use crate::core::progress::{Progress, Run, Status};
use crate::core::spec::GroupOrder;

/// What a member's group allows it now.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupGate {
    pub group: String,
    /// The release a member starting a new revision joins.
    pub release: Revision,
    /// Not to start its revision yet (ordered), and why.
    pub hold_start: Option<String>,
    /// The highest step index it may enter now (its step count being its promotion), and why
    /// not beyond; `None`: no limit.
    pub limit: Option<(usize, String)>,
    /// Abort now: another member of the release failed.
    pub abort: Option<Evidence>,
}

/// A member's spec and status, as the gates read them.
#[derive(Clone, Copy, Debug)]
pub struct MemberState<'a> {
    pub spec: &'a Rollout,
    pub status: &'a Status,
}

/// The gates to plan again with, within one round: `planned`, from the statuses this round's
/// plans give, except that a member held from starting by the recorded statuses (`recorded`)
/// stays held. A dependent starts once its dependency's promotion is recorded and applied (a
/// later round), never in the same round as it.
pub fn replan(
    recorded: &BTreeMap<String, GroupGate>,
    mut planned: BTreeMap<String, GroupGate>,
) -> BTreeMap<String, GroupGate> {
    for (name, gate) in &mut planned {
        if let Some(held) = recorded.get(name).and_then(|g| g.hold_start.clone()) {
            gate.hold_start = Some(held);
        }
    }
    planned
}

/// Every group member's gate in `catalog`, by rollout name, with each member's status from
/// `status_of` (`None`: none to read).
pub fn all_gates<'s>(
    catalog: &Catalog,
    status_of: impl Fn(&str) -> Option<&'s Status>,
) -> BTreeMap<String, GroupGate> {
    let mut out = BTreeMap::new();
    for g in &catalog.groups {
        let mut members = BTreeMap::new();
        for m in &g.members {
            let Some(i) = catalog.index_of(&m.rollout) else {
                continue;
            };
            if let Some(status) = status_of(&m.rollout) {
                members.insert(
                    m.rollout.as_str(),
                    MemberState {
                        spec: &catalog.rollouts[i],
                        status,
                    },
                );
            }
        }
        out.extend(gates(g, &members));
    }
    out
}

/// The step indices at which a member's weight changes in lockstep: each `setWeight` step, then
/// its promotion (its step count).
fn boundaries(spec: &Rollout) -> Vec<usize> {
    spec.steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Step::SetWeight(_)))
        .map(|(i, _)| i)
        .chain([spec.steps.len()])
        .collect()
}

/// The run of a member in flight on its current revision.
fn run_of<'s>(m: &MemberState<'s>) -> Option<&'s Run> {
    m.status
        .progress
        .run()
        .filter(|r| r.revision == m.spec.revision)
}

/// The release `spec`'s current revision runs (or ran) in, as `status` records it; `None` when
/// the status is of another revision, or the spec names no canary (nothing to release or take
/// back).
pub fn release_of<'s>(spec: &Rollout, status: &'s Status) -> Option<&'s Revision> {
    let current = status.progress.revision() == Some(&spec.revision);
    if current && spec.target().canary.is_some() {
        status.release.as_ref()
    } else {
        None
    }
}

impl MemberState<'_> {
    fn release(&self) -> Option<&Revision> {
        release_of(self.spec, self.status)
    }
}

/// Whether the member is waiting to start or in flight on its current revision.
fn active(m: &MemberState<'_>) -> bool {
    run_of(m).is_some()
        || matches!(&m.status.progress, Progress::Waiting { revision, .. } if *revision == m.spec.revision)
}

/// The release under way: the one an active member runs in, else a new one named by the
/// group's revision.
fn current_release(group: &Group, members: &BTreeMap<&str, MemberState<'_>>) -> Revision {
    let under_way = group.members.iter().find_map(|gm| {
        let m = members.get(gm.rollout.as_str())?;
        if active(m) {
            m.status.release.clone()
        } else {
            None
        }
    });
    under_way.unwrap_or_else(|| {
        Revision::of_group(members.iter().map(|(name, m)| (*name, &m.spec.revision)))
    })
}

/// Each member's gate, by rollout name. A member missing from `members` (no status to read)
/// gets no gate, and holds the members that wait for it or step with it.
pub fn gates(
    group: &Group,
    members: &BTreeMap<&str, MemberState<'_>>,
) -> BTreeMap<String, GroupGate> {
    let release = current_release(group, members);
    let in_release = |m: &MemberState<'_>| -> bool { m.release() == Some(&release) };
    let failed = group.members.iter().find_map(|gm| {
        let m = members.get(gm.rollout.as_str())?;
        match &m.status.progress {
            Progress::Aborted {
                revision, evidence, ..
            } if *revision == m.spec.revision && in_release(m) => {
                Some((gm.rollout.as_str(), evidence))
            }
            _ => None,
        }
    });
    let mut out = BTreeMap::new();
    for gm in &group.members {
        let Some(m) = members.get(gm.rollout.as_str()) else {
            continue;
        };
        let mut gate = GroupGate {
            group: group.name.clone(),
            release: release.clone(),
            hold_start: None,
            limit: None,
            abort: None,
        };
        if let Some((who, evidence)) = failed
            && who != gm.rollout
            && in_release(m)
            && !matches!(m.status.progress, Progress::Aborted { .. })
        {
            gate.abort = Some(Evidence {
                summary: format!(
                    "group `{}`: `{who}` failed: {}",
                    group.name, evidence.summary
                ),
                ..evidence.clone()
            });
        }
        match group.order {
            GroupOrder::Ordered => {
                let waiting: Vec<String> = gm
                    .waits_for
                    .iter()
                    .filter_map(|w| {
                        // No status of it to read yet: not done.
                        let Some(d) = members.get(w.rollout.as_str()) else {
                            return Some(format!("`{}` (no status yet)", w.rollout));
                        };
                        let done = match (&d.status.progress, w.step) {
                            (Progress::Promoted { revision, .. }, _) => {
                                *revision == d.spec.revision
                            }
                            (Progress::Stable { .. }, _) => true,
                            (_, Some(i)) => run_of(d).is_some_and(|r| r.step >= i),
                            _ => false,
                        };
                        (!done).then(|| match w.step {
                            None => format!("`{}` to be promoted", w.rollout),
                            Some(i) => format!("`{}` to reach step {}", w.rollout, i + 1),
                        })
                    })
                    .collect();
                if !waiting.is_empty() {
                    gate.hold_start = Some(format!(
                        "group `{}`: waiting for {}",
                        group.name,
                        waiting.join(" and ")
                    ));
                }
            }
            GroupOrder::Lockstep => {
                gate.limit = lockstep_limit(group, gm.rollout.as_str(), members, &in_release)
            }
        }
        out.insert(gm.rollout.clone(), gate);
    }
    out
}

/// The highest step `me` may enter in lockstep: up to (not into) its next boundary while
/// another member of the release has not finished what comes before its own.
fn lockstep_limit(
    group: &Group,
    me: &str,
    members: &BTreeMap<&str, MemberState<'_>>,
    in_release: &dyn Fn(&MemberState<'_>) -> bool,
) -> Option<(usize, String)> {
    let m = members.get(me)?;
    let run = run_of(m)?;
    let mine = boundaries(m.spec);
    // The next boundary after the current step: the k-th.
    let k = mine.iter().position(|&b| b > run.step)?;
    let behind: Vec<&str> = group
        .members
        .iter()
        .filter(|o| o.rollout != me)
        .filter_map(|o| {
            // No status of it to read: it may be anywhere, so it holds the others.
            let Some(n) = members.get(o.rollout.as_str()) else {
                return Some(o.rollout.as_str());
            };
            if !in_release(n) || matches!(n.status.progress, Progress::Promoted { .. }) {
                return None;
            }
            let theirs = boundaries(n.spec);
            let b = *theirs.get(k)?;
            let ready = match run_of(n) {
                Some(r) => r.step >= b || (r.done && r.step + 1 >= b),
                // Not started yet (waiting) or aborted: not ready.
                None => false,
            };
            (!ready).then_some(o.rollout.as_str())
        })
        .collect();
    if behind.is_empty() {
        return None;
    }
    let names: Vec<String> = behind.iter().map(|b| format!("`{b}`")).collect();
    Some((
        mine[k] - 1,
        format!(
            "group `{}`: waiting for {} to be ready for the next weight",
            group.name,
            names.join(", ")
        ),
    ))
}

/// The order in which members of ordered groups step back: a member no other waits for is in
/// wave 0, one that others wait for in the wave after the latest of theirs. Members of lockstep
/// groups, and rollouts in no group, are not listed (wave 0).
pub fn waves(catalog: &Catalog) -> BTreeMap<String, usize> {
    fn wave<'g>(
        group: &'g Group,
        name: &'g str,
        memo: &mut BTreeMap<&'g str, usize>,
        depth: usize,
    ) -> usize {
        if let Some(&w) = memo.get(name) {
            return w;
        }
        // Lint refuses cycles; the depth bound keeps a bad input from looping all the same.
        let w = if depth > group.members.len() {
            0
        } else {
            group
                .members
                .iter()
                .filter(|m| m.waits_for.iter().any(|w| w.rollout == name))
                .map(|m| wave(group, &m.rollout, memo, depth + 1) + 1)
                .max()
                .unwrap_or(0)
        };
        memo.insert(name, w);
        w
    }
    let mut out = BTreeMap::new();
    for g in catalog
        .groups
        .iter()
        .filter(|g| g.order == GroupOrder::Ordered)
    {
        let mut memo = BTreeMap::new();
        for m in &g.members {
            let w = wave(g, &m.rollout, &mut memo, 0);
            out.insert(m.rollout.clone(), w);
        }
    }
    out
}

/// What `status/groups/<group>.yaml` on the status branch holds: the release, each member's
/// place in it, and who holds it back. Written by the daemon beside its members' status files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "canaryd group status")]
pub struct GroupStatusFile {
    pub group: String,
    pub order: GroupOrder,
    /// The release under way, or the last one; `None`: none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Revision>,
    pub phase: GroupPhase,
    pub members: Vec<MemberPlace>,
    /// The members the others wait for now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<String>,
    /// Why the release was aborted: the failing member and its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The one revert branch of an aborted release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Where a group's release is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GroupPhase {
    /// No release under way, none run yet.
    Idle,
    /// A member is waiting to start or in flight.
    Progressing,
    /// Every member of the release is promoted.
    Promoted,
    /// A member failed; all went back to stable.
    Aborted,
}

/// One member's place in its group's release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberPlace {
    pub rollout: String,
    /// Its own phase (`analysing`, `paused`, …).
    pub phase: String,
    /// `2/4`, while in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Its canary weight now.
    pub weight: u8,
    /// Whether the release changed it.
    pub in_release: bool,
    /// Finished its step and waiting for the others, or promoted.
    pub ready: bool,
}

impl GroupStatusFile {
    pub fn to_yaml(&self) -> Result<String, String> {
        serde_saphyr::to_string(self).map_err(|e| e.to_string())
    }

    /// Reads a group's status file; the error says why not.
    pub fn from_yaml(text: &str) -> Result<GroupStatusFile, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Whether `other` says the same, its time aside.
    pub fn same_substance(&self, other: &GroupStatusFile) -> bool {
        GroupStatusFile {
            updated_at: other.updated_at,
            ..self.clone()
        } == *other
    }

    /// The commit subject that records it: `release shop: step 2/4 20% (checkout ✓,
    /// payments analysing)`.
    pub fn subject(&self) -> String {
        let name = format!("release {}", self.group);
        let marks = || {
            let marks: Vec<String> = self
                .members
                .iter()
                .filter(|m| m.in_release)
                .map(|m| {
                    if m.ready {
                        format!("{} ✓", m.rollout)
                    } else {
                        format!("{} {}", m.rollout, m.phase)
                    }
                })
                .collect();
            marks.join(", ")
        };
        match self.phase {
            GroupPhase::Idle => format!("{name}: idle"),
            GroupPhase::Aborted => {
                let evidence = self.evidence.as_deref().unwrap_or("a member failed");
                let moving: Vec<&MemberPlace> = self
                    .members
                    .iter()
                    .filter(|m| m.in_release && m.phase != "aborted")
                    .collect();
                if !moving.is_empty() {
                    format!("{name}: aborting ({}): {evidence}", marks())
                } else if let Some(branch) = &self.revert {
                    format!("{name}: aborted: {evidence}; revert branch {branch} pushed")
                } else {
                    format!("{name}: aborted: {evidence}")
                }
            }
            GroupPhase::Promoted => format!("{name}: promoted ({})", marks()),
            GroupPhase::Progressing => {
                // The step of the member that holds the others back, else of the first moving.
                let lead = self
                    .held_by
                    .iter()
                    .find_map(|h| self.members.iter().find(|m| &m.rollout == h))
                    .or_else(|| self.members.iter().find(|m| m.in_release && !m.ready))
                    .or_else(|| self.members.iter().find(|m| m.in_release));
                let mut s = name;
                if let Some(m) = lead {
                    match &m.step {
                        Some(step) => {
                            let _ = write!(s, ": step {step} {}%", m.weight);
                        }
                        None => {
                            let _ = write!(s, ": {}", m.phase);
                        }
                    }
                }
                let _ = write!(s, " ({})", marks());
                s
            }
        }
    }
}

/// The group's status from its members' (as [`gates`] reads them); `revert`: the release's
/// revert branch, when one was pushed.
pub fn summary(
    group: &Group,
    members: &BTreeMap<&str, MemberState<'_>>,
    revert: Option<String>,
    now: DateTime<Utc>,
) -> GroupStatusFile {
    // The release under way, else the last one its members ran in.
    let in_order = || {
        group
            .members
            .iter()
            .filter_map(|gm| members.get(gm.rollout.as_str()))
    };
    let release = in_order()
        .find(|m| active(m))
        .and_then(|m| m.status.release.clone())
        .or_else(|| in_order().find_map(|m| m.release().cloned()));
    let in_release = |m: &MemberState<'_>| release.is_some() && m.release() == release.as_ref();
    let mut places = Vec::new();
    let mut held_by = Vec::new();
    let any_done = group.members.iter().any(|gm| {
        members
            .get(gm.rollout.as_str())
            .and_then(|m| run_of(m))
            .is_some_and(|r| r.done)
    });
    for gm in &group.members {
        let Some(m) = members.get(gm.rollout.as_str()) else {
            places.push(MemberPlace {
                rollout: gm.rollout.clone(),
                phase: "pending".into(),
                step: None,
                weight: 0,
                in_release: false,
                ready: false,
            });
            continue;
        };
        let run = run_of(m);
        let promoted = matches!(m.status.progress, Progress::Promoted { .. });
        let ready = promoted || run.is_some_and(|r| r.done);
        let mine = in_release(m);
        if mine && run.is_some() && !ready && group.order == GroupOrder::Lockstep && any_done {
            held_by.push(gm.rollout.clone());
        }
        if matches!(m.status.progress, Progress::Waiting { .. })
            && group.order == GroupOrder::Ordered
        {
            for w in &gm.waits_for {
                let done = members.get(w.rollout.as_str()).is_some_and(|d| {
                    matches!(
                        d.status.progress,
                        Progress::Promoted { .. } | Progress::Stable { .. }
                    ) || w
                        .step
                        .is_some_and(|i| run_of(d).is_some_and(|r| r.step >= i))
                });
                if !done && !held_by.contains(&w.rollout) {
                    held_by.push(w.rollout.clone());
                }
            }
        }
        places.push(MemberPlace {
            rollout: gm.rollout.clone(),
            phase: m.status.progress.phase().to_string(),
            step: run.map(|r| format!("{}/{}", r.step + 1, m.spec.steps.len())),
            weight: match &m.status.progress {
                Progress::Promoted { .. } => 100,
                _ => run.map_or(0, |r| r.weight.get()),
            },
            in_release: mine,
            ready,
        });
    }
    let released: Vec<&MemberState<'_>> = group
        .members
        .iter()
        .filter_map(|gm| members.get(gm.rollout.as_str()))
        .filter(|m| in_release(m))
        .collect();
    let aborted: Vec<(&str, &Evidence)> = released
        .iter()
        .filter_map(|m| match &m.status.progress {
            Progress::Aborted { evidence, .. } => Some((m.status.rollout.as_str(), evidence)),
            _ => None,
        })
        .collect();
    let phase = if !aborted.is_empty() {
        GroupPhase::Aborted
    } else if released.iter().any(|m| active(m)) {
        GroupPhase::Progressing
    } else if !released.is_empty()
        && released
            .iter()
            .all(|m| matches!(m.status.progress, Progress::Promoted { .. }))
    {
        GroupPhase::Promoted
    } else {
        GroupPhase::Idle
    };
    // The member that failed first: its own evidence, not the group's echo of it.
    let prefix = format!("group `{}`: ", group.name);
    let evidence = aborted
        .iter()
        .find(|(_, e)| !e.summary.starts_with(&prefix))
        .or(aborted.first())
        .map(|(who, e)| match e.summary.strip_prefix(&prefix) {
            Some(echo) => echo.to_string(),
            None => format!("`{who}` failed: {}", e.summary),
        });
    GroupStatusFile {
        group: group.name.clone(),
        order: group.order,
        release,
        phase,
        members: places,
        held_by,
        evidence,
        revert: revert.filter(|_| phase == GroupPhase::Aborted),
        updated_at: now,
    }
}
