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
            let Ok(i) = catalog
                .rollouts
                .binary_search_by(|r| r.name.as_str().cmp(&m.rollout))
            else {
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
    let in_release = |m: &MemberState<'_>| -> bool {
        m.status.release.as_ref() == Some(&release)
            && m.status.progress.revision() == Some(&m.spec.revision)
    };
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
