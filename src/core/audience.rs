//! Who hears what: the lifecycle events a rollout tells, their severities, and a rollout's
//! subscriptions to them (the notices themselves are [`crate::core::notify`]'s).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The lifecycle events a rollout tells.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A new revision's canary started.
    Started,
    /// It reached a later step.
    Step,
    /// It waits for a person: a `pause: {}` step, or an inconclusive analysis.
    Paused,
    /// A measurement failed, under the failure limit.
    AnalysisFailed,
    /// It stopped and traffic went back to stable.
    Aborted,
    /// The canary took all traffic.
    Promoted,
    /// The spec went back to an earlier revision while this one ran or after it.
    RolledBack,
    /// A hook answered other than 2xx, under the failure limit.
    HookFailed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Started => "started",
            Kind::Step => "step",
            Kind::Paused => "paused",
            Kind::AnalysisFailed => "analysis-failed",
            Kind::Aborted => "aborted",
            Kind::Promoted => "promoted",
            Kind::RolledBack => "rolled-back",
            Kind::HookFailed => "hook-failed",
        }
    }

    /// Flagger's levels: `error` for a failure, `warn` for a wait on a person or a failed
    /// check, `info` for the rest.
    pub fn severity(self) -> Severity {
        match self {
            Kind::Aborted => Severity::Error,
            Kind::Paused | Kind::AnalysisFailed | Kind::RolledBack | Kind::HookFailed => {
                Severity::Warn
            }
            Kind::Started | Kind::Step | Kind::Promoted => Severity::Info,
        }
    }
}

/// How much a notice matters; a subscription takes notices at its level and above.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// A rollout's subscription: which sink hears which notices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    /// A sink of the controller configuration's `notifications.sinks`.
    pub sink: String,
    /// The lowest severity sent (default `info`: everything).
    #[serde(default)]
    pub severity: Severity,
    /// Only these events (default: every event at `severity` and above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Kind>>,
}

impl Subscription {
    /// Whether this subscription takes an event of `kind` (at its own severity).
    pub fn wants(&self, kind: Kind) -> bool {
        kind.severity() >= self.severity && self.events.as_ref().is_none_or(|e| e.contains(&kind))
    }
}
