//! The documents users write (`Rollout`, `Router`, `MetricTemplate`) exactly as YAML spells them.
//!
//! These types are the wire format: serde reads them, schemars turns them into `schemas/`, and
//! nothing else uses them directly. [`crate::core::validate`] turns them into [`crate::core::model`] types,
//! where a weight is a [`crate::core::model::Weight`] and a duration a `Duration`.
//!
//! Unknown fields are refused, but not by serde (which would stop at the first): the schema
//! forbids them (`#[schemars(deny_unknown_fields)]`) and [`crate::core::yaml`] reports every one.
//! Only the internally tagged [`RouterSpec`] leaves that to serde.
//!
//! Numbers that have a range (weights) are read wide (`i64`) on purpose: a weight of `150` or
//! `-5` must reach validation, which reports it with its line and a hint, rather than fail
//! inside the YAML reader with a bare type error.

pub mod condition;
pub mod duration;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The one `apiVersion` this release reads.
pub const API_VERSION: &str = "canaryd.dev/v1alpha1";

/// `apiVersion` of every document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "canaryd.dev/v1alpha1")]
    V1Alpha1,
}

/// Name and labels of a document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Metadata {
    /// Unique among documents of the same kind in the repository; a DNS label
    /// (`[a-z0-9-]`, at most 63 characters), since it names status files and branches.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// Free-form labels, carried into status for people and tooling.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Rollout
// ---------------------------------------------------------------------------------------------

/// `kind: Rollout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutKind {
    Rollout,
}

/// A rollout: move traffic for one service from its stable backend to a canary, step by step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
#[schemars(title = "canaryd Rollout")]
pub struct RolloutDoc {
    pub api_version: ApiVersion,
    pub kind: RolloutKind,
    pub metadata: Metadata,
    pub spec: RolloutSpec,
}

/// What to roll out, where, and how.
///
/// The *revision* of a rollout is identified by `router`, `service`, `stable`, `canary` and
/// `retry`: changing any of them starts a new rollout; changing steps, analysis, window or
/// deadline does not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Name of the router carrying the traffic: a `kind: Router` document in this repository
    /// or a router in the controller's configuration.
    pub router: String,
    /// The service (route, frontend, upstream) on that router whose traffic is split.
    pub service: String,
    /// The backend that serves all traffic when no canary runs.
    pub stable: Backend,
    /// The backend being released. Absent (or equal to `stable`): nothing to roll out, all
    /// traffic goes to `stable`. Setting it in a pull request is how a canary starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Backend>,
    /// The steps, in order. The rollout promotes (canary 100 %) after the last one.
    /// Give either `steps` or the shorthand (`stepWeight`/`stepWeights`, `maxWeight`, `interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// Shorthand: raise the canary weight by this much every `interval` up to `maxWeight`, then promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub step_weight: Option<i64>,
    /// Shorthand: the canary weights to go through, one per `interval`, then promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(range(min = 1, max = 100)))]
    pub step_weights: Option<Vec<i64>>,
    /// Shorthand: the last canary weight before promotion (default 100 with `stepWeight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_weight: Option<i64>,
    /// Shorthand: how long each weight is held (default `1m`, as Flagger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub interval: Option<String>,
    /// Analysis that runs in the background from the first step to promotion; a failure aborts
    /// at whatever step the rollout is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// How traffic goes back when the spec is reverted to an earlier revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// How long the rollout may hold without progress (router, metrics or Git unreachable,
    /// weights not verified) before `progressDeadlineAbort` applies. Default `10m`.
    /// Timed and manual pauses do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub progress_deadline: Option<String>,
    /// Abort when the progress deadline passes (default `true`, as Flagger); `false` only
    /// reports it in the status and keeps holding (as Argo Rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_abort: Option<bool>,
    /// When steps may advance. Outside it the rollout holds its weights; it still aborts on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// What to do when the live weights differ from the recorded step (changed by hand, or the
    /// router restarted): `reapply` (default) or `hold` and report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_drift: Option<DriftPolicy>,
    /// Bump to run an aborted revision again without changing its backends. Part of the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// Keep each user on one side while the canary's weight grows: `{header: X-User-Id}` or
    /// `{cookie: NAME}`. A user is on the canary at weight w exactly when CRC-32 of the key,
    /// modulo 10,000, is below 100·w; a cookie the client lacks is set on the first answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// `strategy: {blueGreen: {...}}`: the new side behind a preview route first, then one
    /// switch of all traffic, the old side kept on the router to switch back. Replaces `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Who hears of this rollout: `[{sink: team-slack, severity: warn}]`, sinks of the
    /// controller configuration's `notifications`; without it, the configuration's `default`;
    /// `[]`: nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<crate::core::audience::Subscription>>,
    /// Traffic canaryd sends itself while the canary runs, so that its analysis has data with
    /// no outside load (staging, nights): `{url, rps, concurrency, duration, headers, steps}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadSpec>,
    /// HTTP calls around the rollout (Flagger's webhooks): acceptance tests before traffic
    /// moves, checks at each analysis, gates, and a call when it is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Vec<HookSpec>>,
}

/// What a rollout's hook is for (Flagger's webhook types).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// Waits, without failing, until it answers 2xx before the rollout starts.
    ConfirmRollout,
    /// Before the first canary weight; a failure aborts with no traffic on the canary.
    PreRollout,
    /// Waits before each weight increase.
    ConfirmTrafficIncrease,
    /// At each analysis measurement; a failure counts like a failed metric.
    Rollout,
    /// Waits before the canary takes all traffic.
    ConfirmPromotion,
    /// After promotion or abort; a failure is only recorded.
    PostRollout,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::ConfirmRollout => "confirm-rollout",
            HookKind::PreRollout => "pre-rollout",
            HookKind::ConfirmTrafficIncrease => "confirm-traffic-increase",
            HookKind::Rollout => "rollout",
            HookKind::ConfirmPromotion => "confirm-promotion",
            HookKind::PostRollout => "post-rollout",
        }
    }
}

/// One hook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct HookSpec {
    pub name: String,
    /// `pre-rollout`, `rollout`, `confirm-rollout`, `confirm-traffic-increase`,
    /// `confirm-promotion` or `post-rollout`.
    #[serde(rename = "type")]
    pub kind: HookKind,
    /// An `http://` or `https://` URL (the system's CA certificates are trusted).
    pub url: String,
    /// `POST` (default), `GET` or `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Tries after a failed one, a second apart (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// How often a `confirm-*` gate asks again (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The key the body is signed with (`X-Canaryd-Signature-256: sha256=<HMAC-SHA256>`), read
    /// on the daemon's machine: `{file: /run/secrets/hook}` or `{env: HOOK_SECRET}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSource>,
}

/// Where a secret is read on the daemon's machine; never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// Built-in load: requests to `url` at `rps`, at most `concurrency` in flight, each marked
/// `X-Canaryd-Load: <rollout>`, while the rollout is in the steps that ask for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct LoadSpec {
    /// An `http://` URL, normally the router in front of the service.
    pub url: String,
    /// Requests per second, 1 to 1,000.
    pub rps: u32,
    /// Requests in flight at most, 1 to 256 (default: the rate, up to 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// How long one run of the load lasts at most (default: as long as its steps last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// `GET` (default), `HEAD`, `POST`, `PUT` or `DELETE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// More request headers (`Host`, or a header a route matches).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The steps (1-based) it runs in; default: every step while the canary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<usize>>,
}

/// How the canary is rolled out, when not by `steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub enum Strategy {
    BlueGreen(BlueGreen),
}

/// Blue/green, in Argo Rollouts' words: the new side is reachable only through `preview`
/// (a header or cookie match) at 0 % of ordinary traffic; `prePromotionAnalysis` runs on that
/// preview traffic; after `autoPromotionSeconds` (default 0), or a promote commit when
/// `autoPromotionEnabled: false`, one switch moves 100 %; `postPromotionAnalysis` then runs on
/// all traffic, and a failure switches back in one apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BlueGreen {
    /// The preview route's match entries (alternatives), as in `setHeaderRoute`.
    pub preview: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<Analysis>,
    /// Default `true`: switch after `autoPromotionSeconds`; `false`: wait for a promote commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<Analysis>,
}

/// `sticky:`: the request key that picks a user's side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub enum Sticky {
    /// A request header (`X-User-Id`), set by the client or an authenticating proxy.
    Header(String),
    /// A cookie; a client without one gets it on its first answer.
    Cookie(String),
}

/// `setHeaderRoute:` as Argo Rollouts writes it: a named route whose matches go to the canary.
/// Without `match`, it removes the route of that name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct HeaderRoute {
    pub name: String,
    /// Alternatives: a request that satisfies one entry goes to the canary.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<RouteMatch>>,
}

/// One entry of `match`: Argo's `{headerName, headerValue}`, and/or canaryd's `headers`,
/// `cookies` and `query` maps (name → value); every criterion of the entry must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value: Option<StringMatch>,
    /// Header name (any case) → value. Geography is one: `CloudFront-Viewer-Country: {exact: DE}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Cookie name → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, StringMatch>,
    /// Query parameter name → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, StringMatch>,
}

/// Exactly one of `exact`, `prefix` or `regex` (RE2 syntax, matched against the whole value).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A backend on the router.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Backend {
    /// The backend's name on the router (HAProxy server, Traefik/Caddy upstream, NGINX server,
    /// HTTPRoute backendRef, or the embedded router's upstream URL).
    pub name: String,
    /// What it runs (image tag, build id, commit). Part of the revision: bumping it in a pull
    /// request starts a new canary even when the backend name stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One step. Written as a one-key map: `- setWeight: 20`, `- pause: {duration: 5m}`,
/// `- pause: {}`, `- analysis: {...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub enum Step {
    /// Send this percentage of requests (0–100) to the canary.
    SetWeight(#[schemars(range(min = 0, max = 100))] i64),
    /// Hold the current weight: for `duration`, or (no duration) until promoted by a commit
    /// (`canaryd promote NAME`).
    Pause(Pause),
    /// Run metric checks at the current weight; continue when they pass, abort when they fail.
    Analysis(Analysis),
    /// From this step on, requests that match go to the canary whatever its weight (Argo's
    /// `setHeaderRoute`); `{name}` alone removes the route. Routes end with the rollout.
    SetHeaderRoute(HeaderRoute),
}

/// `pause: {duration: 5m}` or `pause: {}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Pause {
    /// How long to hold. Absent: until promoted by a commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub duration: Option<String>,
}

/// Metric analysis: measure every `interval`, `count` times, after `initialDelay`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Analysis {
    /// The checks; every metric is measured at each interval. May be empty with a `judge`.
    #[serde(default)]
    pub metrics: Vec<MetricCheck>,
    /// Time between measurements. In a step: absent means one measurement. In the background:
    /// default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub interval: Option<String>,
    /// Measurements per metric before the analysis passes. In a step: default 1 (and required
    /// with `interval`). In the background: absent means until the rollout ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Wait this long after the analysis starts before the first measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub initial_delay: Option<String>,
    /// A metric fails when more than this many measurements fail (default 0: the first failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// A metric is inconclusive when more than this many measurements are (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<u32>,
    /// A metric errors when more than this many measurements in a row could not be taken
    /// (provider down, query rejected). Default 4, as Argo Rollouts. Errors are not failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<u32>,
    /// What an inconclusive analysis does: `pause` (default; wait for a promote or abort commit)
    /// or `abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_inconclusive: Option<InconclusivePolicy>,
    /// A statistical canary-versus-baseline judge (as Kayenta's): at each interval every judged
    /// metric is sampled for the canary and the stable over the same window, compared with the
    /// Mann–Whitney U test, and the classes are combined into a score. It counts as one more
    /// metric of this analysis, named `judge`: a score at or above `pass` succeeds, below
    /// `marginal` fails, in between is inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judge>,
    /// Flagger's A/B form, in `spec.analysis` only: only requests that match see the canary
    /// (at weight 0) while the analysis measures `iterations` times, then the canary is
    /// promoted, or aborted on failure. Entries are alternatives, as in `setHeaderRoute`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<RouteMatch>>,
    /// With `match`: how many times every metric is measured before promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
}

/// The canary-versus-baseline judge of an analysis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Judge {
    /// Score (0–100) at or above which an interval passes. Required, as in Kayenta (whose
    /// examples use 75; Argo Rollouts' use 90).
    #[schemars(range(min = 0, max = 100))]
    pub pass: f64,
    /// Score at or above which (and below `pass`) an interval is inconclusive; below it fails.
    #[schemars(range(min = 0, max = 100))]
    pub marginal: f64,
    /// Confidence level of the shift's interval (default 0.98, Kayenta's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Spacing of the samples within each window: one value per step, per side (default: a
    /// tenth of the analysis interval, at least `1s`). `{{ interval }}` in a judged query is
    /// this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub step: Option<String>,
    /// Fewer samples than this on either side is no data for that metric (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2))]
    pub min_samples: Option<u64>,
    /// The metrics compared.
    pub metrics: Vec<JudgedMetric>,
}

/// One metric the judge compares. The query is run once for each side, with `{{ target }}`
/// the canary, then the stable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct JudgedMetric {
    /// Name of the metric, unique within the judge.
    pub name: String,
    /// A `kind: MetricTemplate` document or a built-in template; its provider and query are
    /// used (its conditions are not: the judge compares, it does not threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Which way is bad: `increase` (errors, latency), `decrease` (success rate, throughput),
    /// or `either` (default, as Kayenta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<crate::core::judge::Direction>,
    /// The band around zero a shift must leave, as a fraction of the shift (default 0.25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// A higher canary also needs `mean(canary) / mean(stable)` at least this (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_increase: Option<f64>,
    /// A lower canary also needs the mean ratio at most this (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_decrease: Option<f64>,
    /// Not passing fails the whole interval (score 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<bool>,
    /// Reported, left out of the score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted: Option<bool>,
}

/// One metric check: where its value comes from and what a good value is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct MetricCheck {
    /// Name of the check, unique within its analysis; shown in status and commits.
    pub name: String,
    /// A `kind: MetricTemplate` document or a built-in template (`request-success-rate`,
    /// `request-duration`, `error-rate`) that supplies provider, query and conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Where to measure (overrides the template's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    /// The query (overrides the template's). Templated: `{{ canary }}`, `{{ stable }}`,
    /// `{{ service }}`, `{{ interval }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A measurement passes when this holds, e.g. `result < 0.01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// A measurement fails when this holds. With both conditions set, a value matching neither
    /// is inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// No verdict on fewer samples (requests) than this in the window: the measurement is
    /// inconclusive. Overrides the template's (the built-in request templates ask for 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    /// Prometheus: a query counting the samples (requests) behind the value over
    /// `{{ interval }}`, for `minSamples`. Overrides the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_query: Option<String>,
}

/// Metric providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProviderKind {
    /// The embedded router's own counters (no Prometheus needed).
    Embedded,
    /// PromQL over the Prometheus HTTP API configured in the controller.
    Prometheus,
}

/// What an inconclusive analysis does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum InconclusivePolicy {
    /// Hold the current weight until a promote or abort commit (as Argo Rollouts).
    #[default]
    Pause,
    /// Treat it as a failure.
    Abort,
}

/// How traffic returns to stable when the spec is reverted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Rollback {
    /// `immediate` (default): all at once. `stepped`: back through the step weights.
    /// An abort on failed analysis is always immediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RollbackMode>,
    /// With `stepped`: how long each weight is held on the way back (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub interval: Option<String>,
}

/// Rollback modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RollbackMode {
    #[default]
    Immediate,
    Stepped,
}

/// What to do about live weights that differ from the recorded step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DriftPolicy {
    /// Set the recorded step's weights again, and record the drift.
    #[default]
    Reapply,
    /// Leave the router alone, hold the rollout and report the drift.
    Hold,
}

/// A deployment window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Window {
    /// A five-field crontab expression (minute hour day-of-month month day-of-week, `0`/`7` =
    /// Sunday); steps may advance during every minute it matches. `* 9-16 * * Mon-Fri` is
    /// weekdays 09:00–16:59.
    pub cron: String,
    /// IANA time zone the expression is read in (default `UTC`), e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------------

/// `kind: Router`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RouterDocKind {
    Router,
}

/// A traffic router that rollouts name in `spec.router`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
#[schemars(title = "canaryd Router")]
pub struct RouterDoc {
    pub api_version: ApiVersion,
    pub kind: RouterDocKind,
    pub metadata: Metadata,
    pub spec: RouterSpec,
}

/// The kind of a router, without its settings: what built-in metric templates depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouterKind {
    Embedded,
    Haproxy,
    Traefik,
    Caddy,
    Nginx,
    GatewayApi,
}

impl RouterKind {
    pub const ALL: [RouterKind; 6] = [
        RouterKind::Embedded,
        RouterKind::Haproxy,
        RouterKind::Traefik,
        RouterKind::Caddy,
        RouterKind::Nginx,
        RouterKind::GatewayApi,
    ];

    /// Whether canaryd sets header, cookie and query routes on this kind of router. Every kind
    /// it drives does, each its own way (the drivers' module docs): HAProxy through runtime
    /// maps, one criterion per match ([`RouterKind::can_match_all`]), with the backend's
    /// configuration snippet; Traefik through routers in its file; Caddy through a subroute;
    /// NGINX through `map` blocks read by `proxy_pass http://$canaryd_<service>`; Gateway API
    /// through rules of the HTTPRoute. A kind added later answers for itself here.
    pub fn can_route(self) -> bool {
        matches!(
            self,
            RouterKind::Embedded
                | RouterKind::Haproxy
                | RouterKind::Traefik
                | RouterKind::Caddy
                | RouterKind::Nginx
                | RouterKind::GatewayApi
        )
    }

    /// Whether routes on this kind may match cookies (an HTTPRoute has no cookie match).
    pub fn can_route_by_cookie(self) -> bool {
        self.can_route() && self != RouterKind::GatewayApi
    }

    /// Whether one match entry may hold several criteria that must all hold. HAProxy's
    /// runtime maps test one field per lookup, so it routes by one criterion per entry.
    pub fn can_match_all(self) -> bool {
        self.can_route() && self != RouterKind::Haproxy
    }

    /// Whether canaryd keeps users on one side on this kind of router, monotonically (a user
    /// is on the canary at weight w exactly when the key's bucket is below 100·w). A router
    /// whose stickiness is only a cookie pinning a first random draw is not one.
    pub fn can_stick(self) -> bool {
        matches!(
            self,
            RouterKind::Embedded | RouterKind::Haproxy | RouterKind::Nginx
        )
    }

    /// The kinds for which `can` holds, for a message: `embedded, haproxy`.
    pub fn those_that(can: fn(RouterKind) -> bool) -> String {
        let kinds: Vec<&str> = RouterKind::ALL
            .into_iter()
            .filter(|k| can(*k))
            .map(RouterKind::as_str)
            .collect();
        kinds.join(", ")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RouterKind::Embedded => "embedded",
            RouterKind::Haproxy => "haproxy",
            RouterKind::Traefik => "traefik",
            RouterKind::Caddy => "caddy",
            RouterKind::Nginx => "nginx",
            RouterKind::GatewayApi => "gatewayApi",
        }
    }
}

impl RouterSpec {
    pub fn kind(&self) -> RouterKind {
        match self {
            RouterSpec::Embedded { .. } => RouterKind::Embedded,
            RouterSpec::Haproxy { .. } => RouterKind::Haproxy,
            RouterSpec::Traefik { .. } => RouterKind::Traefik,
            RouterSpec::Caddy { .. } => RouterKind::Caddy,
            RouterSpec::Nginx { .. } => RouterKind::Nginx,
            RouterSpec::GatewayApi { .. } => RouterKind::GatewayApi,
        }
    }
}

/// Which router, and how to reach it. Credentials never go here: name an environment
/// variable or a file instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum RouterSpec {
    /// canaryd's own reverse proxy.
    Embedded {
        /// Address it listens on, e.g. `127.0.0.1:8080`.
        listen: String,
        /// Backend name → upstream base URL, e.g. `blue: http://127.0.0.1:9001`. Rollouts on
        /// this router name their stable and canary from these.
        backends: BTreeMap<String, String>,
        /// What a client may hold open or send; each limit has a default.
        #[serde(default, skip_serializing_if = "Limits::is_default")]
        limits: Limits,
    },
    /// HAProxy through its runtime API. A rollout's `service` is an HAProxy `backend`, and its
    /// stable and canary are `server`s in it.
    Haproxy {
        /// `unix:/run/haproxy/admin.sock` or `127.0.0.1:9999`.
        runtime_api: String,
    },
    /// Traefik's weighted services, written to a file-provider file. A rollout's `service` is
    /// the weighted service canaryd writes (`<service>@file`); route to it from your routers.
    Traefik {
        /// Traefik's API, e.g. `http://127.0.0.1:8080`, to read the weights back.
        api: String,
        /// The file-provider file canaryd owns and rewrites (atomically).
        dynamic_file: String,
        /// Backend name → upstream URL, e.g. `blue: http://127.0.0.1:9001`.
        backends: BTreeMap<String, String>,
    },
    /// Caddy's admin API and `weighted_round_robin`. A rollout's `service` is the `@id` of a
    /// `reverse_proxy` handler whose upstreams are the backends below.
    Caddy {
        /// Admin endpoint, e.g. `http://127.0.0.1:2019`.
        admin: String,
        /// Backend name → upstream dial address, e.g. `blue: 127.0.0.1:9001`.
        backends: BTreeMap<String, String>,
    },
    /// NGINX by rendering an upstream block per service and reloading. A rollout's `service`
    /// names the `upstream` block, which your configuration `include`s.
    Nginx {
        /// The include file canaryd renders the upstream blocks into.
        upstream_file: String,
        /// NGINX's main configuration, for `nginx -t` and the reload.
        config: String,
        /// Backend name → server address, e.g. `blue: 127.0.0.1:9001`.
        backends: BTreeMap<String, String>,
    },
    /// Kubernetes Gateway API `HTTPRoute` weights.
    //
    // (Plain comments, not doc comments: doc text goes into the committed `schemas/`.)
    // A rollout's `service` is the name of an `HTTPRoute` in `namespace`; its stable and
    // canary are `name`s of `backendRefs` in one rule of that route (the first rule with two
    // or more backendRefs), both listed before the rollout starts: canaryd sets their
    // `weight`s, it never adds backendRefs. `server` is plain `http://` only for now (this
    // build has no TLS: use `kubectl proxy`); see `router::gateway`.
    GatewayApi {
        /// API server URL.
        server: String,
        /// Namespace of the HTTPRoutes.
        namespace: String,
        /// File holding the bearer token (never the token itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<String>,
    },
}

/// Limits of a listener facing clients: the embedded router's (`spec.limits` of its Router) and
/// the admin endpoints' (`adminLimits` in the configuration). Unset fields take the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// How long a client may take to send a whole request head; an idle keep-alive connection
    /// is closed after the same time [default: 10s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
    /// The largest request head (request line and headers), in bytes; a larger one is answered
    /// 431 [default: 32768].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_header_bytes: Option<u32>,
    /// Open client connections at most; past it a new connection is closed at once
    /// [default: 4096].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// The listen backlog asked of the kernel (which caps it at `net.core.somaxconn`)
    /// [default: 1024].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub backlog: Option<u32>,
    /// Embedded router only: the longest wait for the next piece of a request body; a slower
    /// client is answered 408, and it counts against the client, never the backend
    /// [default: 30s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_idle_timeout: Option<String>,
    /// Embedded router only: how long a backend may take to send its response head, counted
    /// from the end of the request body (a slow upload is not the backend's time); past it,
    /// 504 against the backend [default: 30s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_timeout: Option<String>,
}

impl Limits {
    pub fn is_default(&self) -> bool {
        *self == Limits::default()
    }
}

// ---------------------------------------------------------------------------------------------
// MetricTemplate
// ---------------------------------------------------------------------------------------------

/// `kind: MetricTemplate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MetricTemplateKind {
    MetricTemplate,
}

/// A reusable metric: provider, query and default conditions, referenced by name from checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
#[schemars(title = "canaryd MetricTemplate")]
pub struct MetricTemplateDoc {
    pub api_version: ApiVersion,
    pub kind: MetricTemplateKind,
    pub metadata: Metadata,
    pub spec: MetricTemplateSpec,
}

/// The template itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct MetricTemplateSpec {
    pub provider: ProviderKind,
    /// The query; templated like a check's.
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// No verdict on fewer samples than this (see the check's `minSamples`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    /// Prometheus: a query counting the samples behind the value over `{{ interval }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_query: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// RolloutGroup
// ---------------------------------------------------------------------------------------------

/// `kind: RolloutGroup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutGroupKind {
    RolloutGroup,
}

/// Several rollouts released as one: they step together (or in dependency order), are judged
/// together, and roll back together with one revert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
#[schemars(title = "canaryd RolloutGroup")]
pub struct RolloutGroupDoc {
    pub api_version: ApiVersion,
    pub kind: RolloutGroupKind,
    pub metadata: Metadata,
    pub spec: RolloutGroupSpec,
}

/// The members of a group and how they move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct RolloutGroupSpec {
    /// `lockstep` (the default): every member is at the same step, and the group moves on when
    /// every member has finished that step. `ordered`: a member starts once the members it
    /// `dependsOn` are promoted (or have reached the step named).
    #[serde(default)]
    pub order: GroupOrder,
    /// The rollouts of the group, by name; a rollout belongs to one group at most.
    #[schemars(length(min = 1))]
    pub members: Vec<GroupMember>,
    /// Lockstep only: a user keeps one side in every member. Member `from` (the first hop)
    /// picks each request's side by its own weights, sticky key or routes, and tells the next
    /// hop in `header` (`X-Canaryd-Side: <its service>=canary|stable`, as the embedded router,
    /// NGINX, Traefik and Caddy set it). Every other member sends requests that carry it to
    /// the same side, whatever its own weights; the services in between pass the header on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// Version affinity across a group's members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Affinity {
    /// The member whose router picks the side.
    pub from: String,
    /// The header carrying the side; `X-Canaryd-Side` unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// How a group's members move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GroupOrder {
    /// Every member at the same step; the group moves on when all have finished it.
    #[default]
    Lockstep,
    /// Members start in the order their `dependsOn` edges give.
    Ordered,
}

/// One member of a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct GroupMember {
    /// The rollout's `metadata.name`.
    pub rollout: String,
    /// In an `ordered` group: the members this one waits for before it starts. A name waits
    /// for that member's promotion; `{rollout, step}` for it to reach step `step` (1-based, as
    /// `canaryd status` shows `step 2/4`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// What a member waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Dependency {
    /// That member's promotion.
    Promoted(String),
    /// That member reaching a step.
    Step(StepDependency),
}

/// A member reaching a step (1-based).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct StepDependency {
    pub rollout: String,
    #[schemars(range(min = 1))]
    pub step: u32,
}

impl Dependency {
    /// The member waited for.
    pub fn rollout(&self) -> &str {
        match self {
            Dependency::Promoted(r) => r,
            Dependency::Step(s) => &s.rollout,
        }
    }
}

/// Any document canaryd reads, for files that mix kinds (and their schema, `canaryd.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(title = "canaryd document")]
#[allow(clippy::large_enum_variant)] // only built for its schema
pub enum AnyDoc {
    Rollout(RolloutDoc),
    Router(RouterDoc),
    MetricTemplate(MetricTemplateDoc),
    RolloutGroup(RolloutGroupDoc),
}

/// The document kinds, for dispatch and schema generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocKind {
    Rollout,
    Router,
    MetricTemplate,
    RolloutGroup,
}

impl DocKind {
    pub const ALL: [DocKind; 4] = [
        DocKind::Rollout,
        DocKind::Router,
        DocKind::MetricTemplate,
        DocKind::RolloutGroup,
    ];

    pub fn parse(kind: &str) -> Option<DocKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Rollout => "Rollout",
            DocKind::Router => "Router",
            DocKind::MetricTemplate => "MetricTemplate",
            DocKind::RolloutGroup => "RolloutGroup",
        }
    }
}
