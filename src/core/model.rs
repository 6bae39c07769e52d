//! Validated rollouts: the types the planner trusts, which cannot hold an out-of-range weight or an unparsed duration.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Timelike as _, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::core::spec::condition::Condition;
use crate::core::spec::{DriftPolicy, InconclusivePolicy, ProviderKind, RouterSpec};

/// A percentage of requests, 0 to 100.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Weight(#[schemars(range(max = 100))] u8);

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(100);

    /// `None` outside 0..=100.
    pub fn new(percent: i64) -> Option<Weight> {
        u8::try_from(percent).ok().filter(|p| *p <= 100).map(Weight)
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// The rest of the traffic: what stable gets when the canary gets `self`.
    pub fn complement(self) -> Weight {
        Weight(100 - self.0)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        Weight::new(n).ok_or_else(|| serde::de::Error::custom(format!("weight {n} is not 0..=100")))
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// What identifies a rollout's revision: a short hash of the router, the service, both
/// backends with their versions, and `retry`. Step lists, analysis, windows and deadlines
/// are deliberately left out, so editing them mid-rollout does not restart it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Revision(String);

impl Revision {
    pub fn of(target: &Target, retry: u32) -> Revision {
        let mut h = Sha256::new();
        let backend = |b: Option<&Backend>| match b {
            Some(b) => format!("{}\u{0}{}", b.name, b.version.as_deref().unwrap_or("")),
            None => "\u{1}".to_string(),
        };
        for part in [
            target.router.clone(),
            target.service.clone(),
            backend(Some(&target.stable)),
            backend(target.canary.as_ref()),
            retry.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0xff]);
        }
        let digest = h.finalize();
        Revision(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A group's revision: derived from its members' (name and revision each, in name order),
    /// so that a merge changing any member gives the group a new one.
    pub fn of_group<'a>(members: impl IntoIterator<Item = (&'a str, &'a Revision)>) -> Revision {
        let mut members: Vec<_> = members.into_iter().collect();
        members.sort();
        let mut h = Sha256::new();
        for (name, rev) in members {
            h.update(name.as_bytes());
            h.update([0xff]);
            h.update(rev.0.as_bytes());
            h.update([0xff]);
        }
        let digest = h.finalize();
        Revision(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Revision {
    fn from(s: &str) -> Self {
        Revision(s.to_string())
    }
}

/// A backend on a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub version: Option<String>,
}

/// One service on one router whose traffic a rollout moves. A rollout holds a list of these
/// (several services released together is on the roadmap); this release validates exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub router: String,
    pub service: String,
    pub stable: Backend,
    /// `None`: nothing to roll out, all traffic to stable.
    pub canary: Option<Backend>,
}

impl Target {
    /// The traffic this target should carry with the canary at `canary` percent. Backends
    /// seen live but named by neither side are set to 0, so a replaced canary stops serving.
    pub fn traffic(&self, canary: Weight, live: Option<&Observed>) -> Traffic {
        let mut backends = BTreeMap::new();
        if let Some(live) = live {
            for name in live.backends.keys() {
                backends.insert(name.clone(), Weight::ZERO);
            }
        }
        match &self.canary {
            Some(c) => {
                backends.insert(self.stable.name.clone(), canary.complement());
                backends.insert(c.name.clone(), canary);
            }
            None => {
                backends.insert(self.stable.name.clone(), Weight::FULL);
            }
        }
        Traffic {
            canary: self.canary.as_ref().map(|c| c.name.clone()),
            ..Traffic::weights(backends)
        }
    }

    /// The canary's live share, when the router reports weights that make sense for this
    /// target: every named backend present, nothing else carrying traffic.
    pub fn live_canary(&self, live: &Observed) -> Option<Weight> {
        let pct = live.percentages()?;
        let stable = *pct.get(&self.stable.name)?;
        match &self.canary {
            Some(c) => {
                let canary = *pct.get(&c.name)?;
                (stable.get() + canary.get() == 100).then_some(canary)
            }
            None => (stable == Weight::FULL).then_some(Weight::ZERO),
        }
    }
}

/// Desired traffic for one target: routes tried in order, then percentages per backend
/// (summing to 100), split by a sticky key when one is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Traffic {
    pub backends: BTreeMap<String, Weight>,
    /// Tried in order before the weighted split: a request that matches a route goes to its
    /// backend, whatever the weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Whose key picks the side of the weighted split, when set (see [`Sticky`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// The backend whose weight grows (the rollout's canary), when there is one: a sticky
    /// split puts a user on it exactly when [`on_canary`]`(key, its weight)`, so raising its
    /// weight only ever adds users to it. The backends' names alone cannot say which one that
    /// is. `None`: no canary (all to stable), or weights set without a planner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
}

impl Traffic {
    /// Weights alone: no routes, no sticky key, no canary named.
    pub fn weights(backends: BTreeMap<String, Weight>) -> Traffic {
        Traffic {
            backends,
            routes: Vec::new(),
            sticky: None,
            canary: None,
        }
    }

    /// Traffic from (backend, percent) pairs; `None` when a weight is outside 0..=100.
    pub fn of<W: Into<i64> + Copy>(pairs: &[(&str, W)]) -> Option<Traffic> {
        let backends = pairs
            .iter()
            .map(|&(name, w)| Some((name.to_string(), Weight::new(w.into())?)))
            .collect::<Option<_>>()?;
        Some(Traffic::weights(backends))
    }
}

/// A named route: requests that satisfy any of its matches go to `backend`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Route {
    pub name: String,
    /// Alternatives: a request satisfying one of them is routed (Argo's `setHeaderRoute`
    /// entries, Flagger's `match` items).
    pub matches: Vec<Match>,
    pub backend: String,
}

/// Matches as one line: `X-Canary=always or cookie beta~^on` (`=` exact, `^=` prefix,
/// `~` regex; criteria of one match joined by `and`).
pub fn describe_matches(matches: &[Match]) -> String {
    let one = |m: &Match| {
        m.all
            .iter()
            .map(|c| {
                let on = match c.on {
                    Field::Header => String::new(),
                    Field::Cookie => "cookie ".to_string(),
                    Field::Query => "query ".to_string(),
                };
                let (op, v) = match &c.value {
                    Pattern::Exact(v) => ("=", v),
                    Pattern::Prefix(v) => ("^=", v),
                    Pattern::Regex(v) => ("~", v),
                };
                format!("{on}{}{op}{v}", c.name)
            })
            .collect::<Vec<_>>()
            .join(" and ")
    };
    matches.iter().map(one).collect::<Vec<_>>().join(" or ")
}

/// Conditions a request must all satisfy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Match {
    pub all: Vec<Criterion>,
}

/// One criterion on a request: a header, cookie or query parameter whose value fits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Criterion {
    pub on: Field,
    /// The header (compared without case), cookie or query parameter name.
    pub name: String,
    pub value: Pattern,
}

/// Where a criterion looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Field {
    Header,
    Cookie,
    Query,
}

/// How a value is compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    /// A regular expression (RE2 syntax, as Argo, Gateway API and Envoy take it), matched
    /// against the whole value.
    Regex(String),
}

impl Pattern {
    /// Whether `value` fits; `regex` is this pattern's regex, compiled by the caller (`None`
    /// for the other kinds).
    pub fn fits(&self, value: &str, regex: Option<&regex::Regex>) -> bool {
        match self {
            Pattern::Exact(want) => value == want,
            Pattern::Prefix(want) => value.starts_with(want.as_str()),
            Pattern::Regex(_) => regex.is_some_and(|r| r.is_match(value)),
        }
    }
}

/// Built-in load, validated: requests to `url` at `rps`, at most `concurrency` in flight, for at
/// most `duration` per run, in `steps` (0-based; `None`: every step of a run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    pub url: String,
    pub rps: u32,
    pub concurrency: u32,
    pub duration: Option<Duration>,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub steps: Option<Vec<usize>>,
}

/// The request key that keeps a user on one side of the weighted split while the weight
/// grows: the user is on the canary at weight `w` exactly when [`bucket`]`(key) < 100·w`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Sticky {
    Header(String),
    Cookie(String),
}

impl fmt::Display for Sticky {
    /// `header X-User-Id`, `cookie uid`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Header(h) => write!(f, "header {h}"),
            Sticky::Cookie(c) => write!(f, "cookie {c}"),
        }
    }
}

/// The user's bucket in 0..10,000: CRC-32 (IEEE, as zlib and HAProxy's `crc32` converter
/// compute it) of the key, modulo 10,000. Buckets are fixed, so the canary's users at a weight
/// are a subset of its users at any larger weight.
pub fn bucket(key: &str) -> u32 {
    crc32(key.as_bytes()) % 10_000
}

/// Whether the user with `key` is on the canary at `canary` percent.
pub fn on_canary(key: &str, canary: Weight) -> bool {
    bucket(key) < 100 * u32::from(canary.get())
}

/// CRC-32, IEEE polynomial (reflected 0xEDB88320), as zlib computes it.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// What a router reports for one service: raw weights per backend, in the router's own
/// scale (HAProxy 0..=256, percentages elsewhere).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Observed {
    pub backends: BTreeMap<String, u32>,
    /// The routes the router holds for the service, in order (drivers that hold none: empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// The sticky key the router splits by, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
}

impl Observed {
    /// Weights alone, as a router that holds no routes reports them.
    pub fn weights(backends: BTreeMap<String, u32>) -> Observed {
        Observed {
            backends,
            ..Observed::default()
        }
    }

    /// Weights as percentages rounded to whole numbers, adjusted to sum to exactly 100
    /// (largest remainder). `None` when nothing carries traffic.
    pub fn percentages(&self) -> Option<BTreeMap<String, Weight>> {
        let total: u64 = self.backends.values().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut shares: Vec<(&String, u64, u64)> = self
            .backends
            .iter()
            .map(|(name, &w)| {
                let scaled = u64::from(w) * 100;
                (name, scaled / total, scaled % total)
            })
            .collect();
        let assigned: u64 = shares.iter().map(|s| s.1).sum();
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by(|&a, &b| shares[b].2.cmp(&shares[a].2).then(a.cmp(&b)));
        for &i in order.iter().take((100 - assigned) as usize) {
            shares[i].1 += 1;
        }
        Some(
            shares
                .into_iter()
                .map(|(name, pct, _)| (name.clone(), Weight(pct as u8)))
                .collect(),
        )
    }
}

/// A validated rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub name: String,
    /// The file it came from, relative to the repository.
    pub file: String,
    /// Exactly one in this release; a list so that grouped services fit later.
    pub targets: Vec<Target>,
    pub revision: Revision,
    /// The steps, with any shorthand expanded. Never empty; promotion follows the last.
    pub steps: Vec<Step>,
    pub background: Option<Analysis>,
    pub rollback: RollbackPolicy,
    pub progress_deadline: Duration,
    pub deadline_abort: bool,
    pub window: Option<Window>,
    pub on_drift: DriftPolicy,
    /// The key that keeps a user on one side while the canary's weight grows.
    pub sticky: Option<Sticky>,
    /// Who hears of it (`None`: the controller configuration's default subscriptions; empty:
    /// nobody).
    pub notify: Option<Vec<crate::core::audience::Subscription>>,
    /// Traffic canaryd sends itself while the canary runs, if any.
    pub load: Option<Load>,
    /// Hooks called after promotion or abort.
    pub post_hooks: Vec<Hook>,
    /// Routes its rollout group adds while it is in flight, before its own (version
    /// affinity: requests whose first hop chose a side go to the same side here).
    pub follow: Vec<Route>,
}

impl Rollout {
    /// The only target of this release.
    pub fn target(&self) -> &Target {
        &self.targets[0]
    }

    /// The canary weight in force at step `k`: that of the last `setWeight` at or before it.
    pub fn weight_at(&self, k: usize) -> Weight {
        self.steps[..=k.min(self.steps.len().saturating_sub(1))]
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::SetWeight(w) => Some(*w),
                _ => None,
            })
            .unwrap_or(Weight::ZERO)
    }

    /// The header routes in force at step `k`: every `setHeaderRoute` up to it, a later one
    /// of the same name replacing (or, without matches, removing) an earlier one; in the
    /// order first set. Each sends its matches to the canary.
    pub fn routes_at(&self, k: usize) -> Vec<Route> {
        let Some(canary) = &self.target().canary else {
            return Vec::new();
        };
        let mut routes: Vec<Route> = self.follow.clone();
        for step in self.steps.iter().take(k + 1) {
            let Step::SetHeaderRoute { name, matches } = step else {
                continue;
            };
            match routes.iter().position(|r| r.name == *name) {
                Some(i) if matches.is_empty() => {
                    routes.remove(i);
                }
                Some(i) => routes[i].matches = matches.clone(),
                None if matches.is_empty() => {}
                None => routes.push(Route {
                    name: name.clone(),
                    matches: matches.clone(),
                    backend: canary.name.clone(),
                }),
            }
        }
        routes
    }

    /// Every weight the rollout may put on the canary: the steps', 0 and 100.
    pub fn allowed_weights(&self) -> Vec<Weight> {
        let mut ws: Vec<Weight> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::SetWeight(w) => Some(*w),
                _ => None,
            })
            .chain([Weight::ZERO, Weight::FULL])
            .collect();
        ws.sort();
        ws.dedup();
        ws
    }
}

/// One step of a validated rollout.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    SetWeight(Weight),
    /// Argo's `setHeaderRoute`: from this step on, requests that match go to the canary;
    /// no matches removes the route of that name.
    SetHeaderRoute {
        name: String,
        matches: Vec<Match>,
    },
    /// `None`: until promoted by a commit.
    Pause(Option<Duration>),
    Analysis(Analysis),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::SetWeight(w) => write!(f, "setWeight {}", w.get()),
            Step::SetHeaderRoute { name, matches } if matches.is_empty() => {
                write!(f, "remove header route {name}")
            }
            Step::SetHeaderRoute { name, matches } => {
                write!(f, "header route {name}: {}", describe_matches(matches))
            }
            Step::Pause(Some(d)) => write!(f, "pause {}", crate::core::spec::duration::display(*d)),
            Step::Pause(None) => f.write_str("pause until promoted"),
            Step::Analysis(a) => {
                let names: Vec<&str> = a.metrics.iter().map(|m| m.name.as_str()).collect();
                write!(f, "analysis {}", names.join(", "))
            }
        }
    }
}

/// A validated analysis with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub metrics: Vec<Metric>,
    /// Time between measurements; `None` means a single measurement.
    pub interval: Option<Duration>,
    /// Measurements per metric before it passes; `None` means until the rollout ends
    /// (background analysis only).
    pub count: Option<u32>,
    pub initial_delay: Duration,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    pub consecutive_error_limit: u32,
    pub on_inconclusive: InconclusivePolicy,
    /// A gate (`confirm-*` hooks): it passes once every metric's last measurement succeeded,
    /// and never fails; it is measured at once, then every interval.
    pub gate: bool,
}

impl Analysis {
    /// The window each measurement covers: the interval, or [`DEFAULT_WINDOW`] for a single
    /// measurement.
    pub fn window(&self) -> Duration {
        self.interval.unwrap_or(DEFAULT_WINDOW)
    }
}

/// The window of a single measurement (an analysis without an interval).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Retry interval after a measurement error, as Argo Rollouts: errors are retried sooner
/// than the interval so that an outage is noticed (and tolerated) quickly.
pub const ERROR_RETRY: Duration = Duration::from_secs(10);

/// A validated metric check, its template resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    /// For the judge, its first metric's (each judged metric names its own).
    pub provider: ProviderKind,
    /// Templated (`{{ canary }}`…); empty for the judge.
    pub query: String,
    pub success: Option<Condition>,
    pub failure: Option<Condition>,
    /// No verdict on fewer samples than this in the window.
    pub min_samples: Option<u64>,
    /// Prometheus: the query counting the samples (the embedded provider counts requests).
    pub samples_query: Option<String>,
    /// Set for the analysis's judge, whose value is its score.
    pub judge: Option<Box<Judge>>,
    /// Set for a hook: the value is 1 when it answered 2xx, else 0.
    pub hook: Option<Box<Hook>>,
}

pub use crate::core::spec::HookKind;

/// A validated hook: an HTTP call the rollout makes, with what its body names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub kind: HookKind,
    pub url: String,
    pub method: String,
    pub timeout: Duration,
    /// Tries after the first failed one, a second apart.
    pub retries: u32,
    pub headers: Vec<(String, String)>,
    /// Where the signing secret is read from on the daemon's machine: `(file, env)`.
    pub secret: Option<(Option<String>, Option<String>)>,
    pub rollout: String,
    pub revision: Revision,
    /// The step it belongs to (0-based), and the canary's weight there.
    pub step: Option<usize>,
    pub weight: Option<Weight>,
}

/// The name the judge's score goes by among an analysis's metrics.
pub const JUDGE_METRIC: &str = "judge";

/// A validated canary-versus-baseline judge.
#[derive(Clone, Debug, PartialEq)]
pub struct Judge {
    pub thresholds: crate::core::judge::Thresholds,
    pub confidence: f64,
    /// Spacing of the samples; `None`: a tenth of the window, at least 1 s.
    pub step: Option<Duration>,
    pub min_samples: u64,
    pub metrics: Vec<JudgedMetric>,
}

/// One metric the judge compares.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgedMetric {
    pub provider: ProviderKind,
    pub query: String,
    pub spec: crate::core::judge::MetricSpec,
}

/// How a revert goes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollbackPolicy {
    Immediate,
    /// Back through the step weights, holding each this long.
    Stepped(Duration),
}

/// A deployment window: a crontab expression read in a time zone.
#[derive(Clone, Debug)]
pub struct Window {
    /// As written in the spec.
    pub source: String,
    /// The expression matches when any of these does. Crontab ORs day-of-month with
    /// day-of-week when both are restricted; the `cron` crate ANDs them, so such an expression
    /// becomes two schedules, one per day field.
    pub schedules: Vec<cron::Schedule>,
    pub timezone: chrono_tz::Tz,
}

impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.timezone == other.timezone
    }
}

/// Longest span searched for the next opening of a window: a window that never opens within a
/// year (e.g. February 30th) is treated as closed.
const WINDOW_HORIZON_DAYS: i64 = 366;

impl Window {
    /// Whether steps may advance at `now`: the minute containing `now` matches the expression.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let local = self.timezone.from_utc_datetime(&now.naive_utc());
        local
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .is_some_and(|minute| self.schedules.iter().any(|s| s.includes(minute)))
    }

    /// When the window next opens after `now`, if within a year.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.timezone.from_utc_datetime(&now.naive_utc());
        self.schedules
            .iter()
            .filter_map(|s| s.after(&local).next())
            .map(|t| t.with_timezone(&Utc))
            .min()
            .filter(|t| (*t - now).num_days() <= WINDOW_HORIZON_DAYS)
    }
}

/// Everything validation produced from a repository.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Valid rollouts, sorted by name.
    pub rollouts: Vec<Rollout>,
    /// Rollouts whose spec is invalid: name → one-line diagnostics. Their traffic must be
    /// left exactly as it is.
    pub invalid: BTreeMap<String, Vec<String>>,
    /// Files that could not be read or parsed far enough to know which rollouts they hold.
    /// Every rollout last seen in one of them must be held too.
    pub broken_files: Vec<String>,
    /// Routers defined by `kind: Router` documents in the repository, by name.
    pub routers: BTreeMap<String, RouterSpec>,
    /// Valid rollout groups, sorted by name; every member is a valid rollout.
    pub groups: Vec<Group>,
}

impl Catalog {
    /// Where the valid rollout `name` is in [`Catalog::rollouts`] (sorted by name).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.rollouts
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
    }
}

/// A validated rollout group: rollouts released as one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// The file it came from, relative to the repository.
    pub file: String,
    pub order: crate::core::spec::GroupOrder,
    /// In the order written.
    pub members: Vec<Member>,
    /// Version affinity: the member that picks each request's side, and the header that
    /// carries it to the others.
    pub affinity: Option<GroupAffinity>,
}

/// See [`Group::affinity`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAffinity {
    pub from: String,
    pub header: String,
}

/// The header the first hop tells the next one its side in (`<service>=canary|stable`).
pub const SIDE_HEADER: &str = "X-Canaryd-Side";

/// One member of a [`Group`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub rollout: String,
    /// What it waits for before it starts (ordered groups; empty in lockstep).
    pub waits_for: Vec<Wait>,
}

/// A member waiting for another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    pub rollout: String,
    /// `None`: until that member is promoted; `Some(i)`: until it has reached step index `i`
    /// (0-based; the spec writes it 1-based).
    pub step: Option<usize>,
}

impl Group {
    /// The member named `rollout`.
    pub fn member(&self, rollout: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.rollout == rollout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_zlibs_and_buckets_are_monotone() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        for user in (0..2_000).map(|i| format!("user-{i}")) {
            let mut seen = false;
            for w in [0, 10, 25, 50, 100] {
                let now = on_canary(&user, Weight(w));
                assert!(!seen || now, "{user} left the canary at {w}");
                seen = now;
            }
            assert!(!on_canary(&user, Weight(0)));
            assert!(on_canary(&user, Weight(100)));
        }
    }

    #[test]
    fn traffic_of_pairs_refuses_weights_outside_a_percentage() {
        let t = Traffic::of(&[("blue", 80u8), ("green", 20)]).unwrap();
        assert_eq!(t.backends["green"], Weight(20));
        assert_eq!(Traffic::of(&[("blue", 101i64)]), None);
        assert_eq!(Traffic::of(&[("blue", -1i64)]), None);
    }
}
