//! The status file: one per rollout on the status branch, the planner's state plus what the
//! daemon observed when it recorded it.
//!
//! Only [`StatusFile::same_substance`] decides whether a new commit is due: a file whose only
//! change is a timestamp is not committed again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::analysis::Outcome;
use crate::core::model::{Observed, Rollout, Route, Sticky, Weight, describe_matches};
use crate::core::plan::Plan;
use crate::core::progress::{Progress, Status};

/// The folder of status files on the status branch.
pub const STATUS_DIR: &str = "status";

/// Path of a rollout's status file on the status branch.
pub fn path_of(rollout: &str) -> String {
    format!("{STATUS_DIR}/{rollout}.yaml")
}

/// What the daemon saw while executing a plan, for [`StatusFile::after`].
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    /// The watched branch's commit whose spec was planned.
    pub spec_commit: &'a str,
    /// The router's answer (read back after the traffic, when the plan applies first).
    pub live: Option<&'a Observed>,
    /// Why the router could not be read.
    pub router_error: Option<&'a str>,
    /// Values measured since the last record, newest last.
    pub measured: &'a [MetricValue],
    /// The revert branch pushed for this abort, once it exists.
    pub revert_branch: Option<&'a str>,
    /// The pull request opened from the revert branch, once the forge has answered.
    pub revert_pr: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// One rollout's status file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "canaryd status file")]
pub struct StatusFile {
    /// The planner's state; this is what the daemon resumes from.
    pub status: Status,
    /// The commit of the watched branch whose spec was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_commit: Option<String>,
    /// The spec file the rollout was read from: if that file later cannot be parsed, the
    /// rollout is held rather than forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The revert branch pushed after an abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<String>,
    /// The pull request opened from the revert branch, with a forge configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_pr: Option<String>,
    /// The number of steps of the spec, for "step k/n".
    #[serde(default)]
    pub steps: usize,
    /// The weights canaryd last set, per backend.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub desired: BTreeMap<String, Weight>,
    /// The header routes canaryd last set, in order: requests that match go to their backend
    /// whatever the weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// The key that keeps each user on one side of the weights, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// The weights the router reported at the last look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveRecord>,
    /// Why the router could not be read at the last look (the rollout holds meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_error: Option<String>,
    /// The newest value of each metric measured for the current revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<MetricValue>,
    /// When this file was written.
    pub updated_at: DateTime<Utc>,
}

/// Live weights as read from the router.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveRecord {
    pub backends: BTreeMap<String, Weight>,
    pub at: DateTime<Utc>,
}

/// The newest measurement of one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    pub at: DateTime<Utc>,
    /// The samples (requests) the value stands on, where the provider counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// The query as sent, variables filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Why the outcome is inconclusive or an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The judge's score and per-metric statistics (U, p-value, shift and its interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<crate::core::judge::Verdict>,
}

impl StatusFile {
    /// The file of a rollout never recorded.
    pub fn new(rollout: &str, now: DateTime<Utc>) -> StatusFile {
        StatusFile {
            status: Status::new(rollout),
            spec_commit: None,
            file: None,
            revert: None,
            revert_pr: None,
            steps: 0,
            desired: BTreeMap::new(),
            routes: Vec::new(),
            sticky: None,
            live: None,
            router_error: None,
            analysis: Vec::new(),
            updated_at: now,
        }
    }

    /// Whether the two files say the same once the timestamps that change on each look are
    /// set aside: files of the same substance need no new commit. (Compared field by field,
    /// without a copy: a look compares every rollout's.)
    pub fn same_substance(&self, other: &StatusFile) -> bool {
        let StatusFile {
            status,
            spec_commit,
            file,
            revert,
            revert_pr,
            steps,
            desired,
            routes,
            sticky,
            live,
            router_error,
            analysis,
            updated_at: _,
        } = self;
        *status == other.status
            && *spec_commit == other.spec_commit
            && *file == other.file
            && *revert == other.revert
            && *revert_pr == other.revert_pr
            && *steps == other.steps
            && *desired == other.desired
            && *routes == other.routes
            && *sticky == other.sticky
            && live.as_ref().map(|l| &l.backends) == other.live.as_ref().map(|l| &l.backends)
            && *router_error == other.router_error
            && *analysis == other.analysis
    }

    /// The file to record after `plan`: the plan's status, with what the daemon observed and
    /// measured, carrying forward what the plan does not decide.
    pub fn after(&self, plan: &Plan, spec: Option<&Rollout>, seen: Seen<'_>) -> StatusFile {
        let mut f = self.clone();
        let new_revision = plan.status.progress.revision() != self.status.progress.revision();
        f.status = plan.status.clone();
        if let Some(r) = spec {
            // The commit that brought the current revision, not every later commit (an unrelated
            // push must not rewrite a thousand status files).
            if new_revision || f.spec_commit.is_none() {
                f.spec_commit = Some(seen.spec_commit.to_string());
            }
            f.file = Some(r.file.clone());
            f.steps = r.steps.len();
            f.live = seen
                .live
                .and_then(Observed::percentages)
                .map(|backends| LiveRecord {
                    backends,
                    at: seen.now,
                });
            f.router_error = seen.router_error.map(str::to_string);
        }
        if let Some(t) = &plan.traffic {
            f.desired = t.backends.clone();
            f.routes = t.routes.clone();
            f.sticky = t.sticky.clone();
        }
        if new_revision {
            f.analysis.clear();
        }
        for m in seen.measured {
            f.analysis.retain(|old| old.metric != m.metric);
            f.analysis.push(m.clone());
        }
        if matches!(plan.status.progress, Progress::Aborted { .. }) {
            if let Some(branch) = seen.revert_branch {
                f.revert = Some(branch.to_string());
            }
        } else {
            f.revert = None;
        }
        f.revert_pr = match (&f.revert, seen.revert_pr) {
            (None, _) => None,
            (Some(_), Some(pr)) => Some(pr.to_string()),
            (Some(_), None) => f.revert_pr.take(),
        };
        f.updated_at = seen.now;
        f
    }

    /// Who sees which side beyond the weights, in a few words: `header X-Canary=always →
    /// checkout-green, sticky by header X-User-Id`; `None` when weights alone decide.
    pub fn who(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .routes
            .iter()
            .map(|r| format!("{} → {}", describe_matches(&r.matches), r.backend))
            .collect();
        parts.extend(self.sticky.iter().map(|s| format!("sticky by {s}")));
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// The file as YAML.
    pub fn to_yaml(&self) -> Result<String, String> {
        serde_saphyr::to_string(self).map_err(|e| e.to_string())
    }

    /// Reads a status file; the error names the rollout.
    pub fn from_yaml(text: &str) -> Result<StatusFile, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn timestamps_of_a_look_are_not_substance_but_weights_are() {
        let t = |s| Utc.timestamp_opt(s, 0).unwrap();
        let live = |w: u8, at| LiveRecord {
            backends: BTreeMap::from([("blue".to_string(), Weight::new(i64::from(w)).unwrap())]),
            at,
        };
        let mut a = StatusFile::new("web", t(1));
        a.live = Some(live(100, t(1)));
        let mut b = StatusFile::new("web", t(2));
        b.live = Some(live(100, t(2)));
        assert!(a.same_substance(&b));
        b.live = Some(live(90, t(2)));
        assert!(!a.same_substance(&b));
        b.live = None;
        assert!(!a.same_substance(&b));
        let mut c = a.clone();
        c.desired.insert("green".into(), Weight::new(10).unwrap());
        assert!(!a.same_substance(&c));
    }
}
