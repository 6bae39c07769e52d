//! The controller's own telemetry: one closed [`Event`] enum whose every value is both logged (tracing) and counted (Prometheus text).
//!
//! Labels are low-cardinality on purpose: outcomes and error classes are closed enums, and
//! the only free-form label is the router name (a handful per installation). Rollout names
//! appear in logs, never in metric labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// How one reconcile of one rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// Traffic or status changed.
    Changed,
    /// Nothing to do.
    Unchanged,
    /// Held for want of an input (router, metrics) or by an invalid spec.
    Held,
    /// The reconcile failed; an [`Event::Error`] says why.
    Error,
}

impl ReconcileOutcome {
    const ALL: [ReconcileOutcome; 4] = [
        ReconcileOutcome::Changed,
        ReconcileOutcome::Unchanged,
        ReconcileOutcome::Held,
        ReconcileOutcome::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileOutcome::Changed => "changed",
            ReconcileOutcome::Unchanged => "unchanged",
            ReconcileOutcome::Held => "held",
            ReconcileOutcome::Error => "error",
        }
    }
}

/// Which outside system (or input) an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    Git,
    Router,
    Metrics,
    Spec,
    Status,
    /// The forge (pull requests, commit statuses); never holds traffic.
    Forge,
    /// Notifications (a sink that refuses, a secret that cannot be read); never holds traffic.
    Notify,
}

impl ErrorClass {
    const ALL: [ErrorClass; 7] = [
        ErrorClass::Git,
        ErrorClass::Router,
        ErrorClass::Metrics,
        ErrorClass::Spec,
        ErrorClass::Status,
        ErrorClass::Forge,
        ErrorClass::Notify,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Git => "git",
            ErrorClass::Router => "router",
            ErrorClass::Metrics => "metrics",
            ErrorClass::Spec => "spec",
            ErrorClass::Status => "status",
            ErrorClass::Forge => "forge",
            ErrorClass::Notify => "notify",
        }
    }

    /// Whether an operator must act. Git, router and metrics errors are retried on the next
    /// look (the rollout holds meanwhile), so they log at WARN; an invalid spec or an
    /// unreadable status file does not fix itself, so those log at ERROR.
    pub fn needs_operator(self) -> bool {
        matches!(self, ErrorClass::Spec | ErrorClass::Status)
    }
}

/// How one webhook delivery was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The watched branch moved: the loop was woken to fetch (202).
    Woke,
    /// A push to another ref (the status branch, a revert branch, a tag), or GitHub's ping.
    Ignored,
    /// A delivery id already answered.
    Duplicate,
    /// An event canaryd does not act on (204).
    Unknown,
    /// A missing or wrong signature (401); nothing else was done.
    Unauthorized,
    /// Signed, but not the JSON its event promises (400), or over the size limit (413).
    Invalid,
    /// The secret cannot be read, or the loop has stopped (503).
    Unavailable,
}

impl WebhookOutcome {
    const ALL: [WebhookOutcome; 7] = [
        WebhookOutcome::Woke,
        WebhookOutcome::Ignored,
        WebhookOutcome::Duplicate,
        WebhookOutcome::Unknown,
        WebhookOutcome::Unauthorized,
        WebhookOutcome::Invalid,
        WebhookOutcome::Unavailable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Woke => "woke",
            WebhookOutcome::Ignored => "ignored",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Unknown => "unknown",
            WebhookOutcome::Unauthorized => "unauthorized",
            WebhookOutcome::Invalid => "invalid",
            WebhookOutcome::Unavailable => "unavailable",
        }
    }
}

/// Everything the daemon reports about itself. Each value is logged once and counted once by
/// [`Telemetry::record`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// One reconcile of one rollout finished.
    Reconciled {
        rollout: String,
        outcome: ReconcileOutcome,
    },
    /// Something failed.
    Error {
        class: ErrorClass,
        rollout: Option<String>,
        message: String,
    },
    /// canaryd set a new canary weight on a router.
    WeightChanged {
        rollout: String,
        router: String,
        canary_weight: u8,
    },
    /// A rollout was aborted; `reason` is the evidence summary.
    Aborted { rollout: String, reason: String },
    /// A canary got 100 % and became the new stable.
    Promoted { rollout: String },
    /// A step ended after `seconds`.
    StepFinished { rollout: String, seconds: f64 },
    /// One `apply` on a router took `seconds`.
    RouterApply { router: String, seconds: f64 },
    /// A status file was committed to the status branch.
    StatusCommitted { rollout: String, summary: String },
    /// A push of the status branch was rejected (another writer); it is re-fetched and retried.
    PushRejected,
    /// A webhook delivery was answered; `detail` says what it was (event, ref, delivery id).
    Webhook {
        outcome: WebhookOutcome,
        detail: String,
    },
    /// A notification was sent to `sink` (`delivered`), or a try failed.
    Notified {
        sink: String,
        id: String,
        delivered: bool,
    },
}

/// Bucket bounds of `canaryd_step_duration_seconds`: steps last from seconds (a `setWeight`
/// that is verified at once) to hours (a pause until promoted).
const STEP_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// Bucket bounds of `canaryd_router_apply_seconds`: an API call, local or remote.
const APPLY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram: per-bucket counts (not cumulative), sum and count.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records `v`; NaN is ignored and negative durations count as zero.
    fn observe(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        let v = v.max(0.0);
        if let Some(i) = self.bounds.iter().position(|le| v <= *le) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// The `_bucket`, `_sum` and `_count` lines, `labels` being `key="value"` pairs or empty.
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                float(*le)
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", float(self.sum));
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The controller's counters and histograms. Cheap to share in an `Arc`: counters are
/// atomics, the per-router maps sit behind short-held mutexes.
#[derive(Debug)]
pub struct Telemetry {
    reconciles: [AtomicU64; 4],
    errors: [AtomicU64; ErrorClass::ALL.len()],
    aborts: AtomicU64,
    promotions: AtomicU64,
    status_commits: AtomicU64,
    push_rejected: AtomicU64,
    webhooks: [AtomicU64; 7],
    /// (sink, delivered) → notifications sent, or tries that failed.
    notifications: Mutex<BTreeMap<(String, bool), u64>>,
    weight_changes: Mutex<BTreeMap<String, u64>>,
    step_duration: Mutex<Histogram>,
    router_apply: Mutex<BTreeMap<String, Histogram>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// An error with its causes, `outer: inner: innermost`, a cause whose text the outer one
/// already holds left out: why a fetch failed is in the causes (authentication refused, unknown
/// host key), why a request failed in hyper's (its own message says only "client error").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// Locks a mutex, ignoring poisoning: a panic elsewhere leaves a counter that is still valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Telemetry {
    pub fn new() -> Self {
        Telemetry {
            reconciles: Default::default(),
            errors: Default::default(),
            aborts: AtomicU64::new(0),
            promotions: AtomicU64::new(0),
            status_commits: AtomicU64::new(0),
            push_rejected: AtomicU64::new(0),
            webhooks: Default::default(),
            notifications: Mutex::new(BTreeMap::new()),
            weight_changes: Mutex::new(BTreeMap::new()),
            step_duration: Mutex::new(Histogram::new(STEP_BUCKETS)),
            router_apply: Mutex::new(BTreeMap::new()),
        }
    }

    /// Logs `e` at its level and counts it.
    pub fn record(&self, e: Event) {
        log(&e);
        self.count(e);
    }

    fn count(&self, e: Event) {
        let bump = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        match e {
            Event::Reconciled { outcome, .. } => {
                bump(&self.reconciles[outcome_index(outcome)]);
            }
            Event::Error { class, .. } => bump(&self.errors[class_index(class)]),
            Event::WeightChanged { router, .. } => {
                *lock(&self.weight_changes).entry(router).or_default() += 1;
            }
            Event::Aborted { .. } => bump(&self.aborts),
            Event::Promoted { .. } => bump(&self.promotions),
            Event::StepFinished { seconds, .. } => lock(&self.step_duration).observe(seconds),
            Event::RouterApply { router, seconds } => lock(&self.router_apply)
                .entry(router)
                .or_insert_with(|| Histogram::new(APPLY_BUCKETS))
                .observe(seconds),
            Event::StatusCommitted { .. } => bump(&self.status_commits),
            Event::PushRejected => bump(&self.push_rejected),
            Event::Webhook { outcome, .. } => bump(&self.webhooks[webhook_index(outcome)]),
            Event::Notified {
                sink, delivered, ..
            } => {
                *lock(&self.notifications)
                    .entry((sink, delivered))
                    .or_default() += 1
            }
        }
    }

    /// Appends every metric in the Prometheus text exposition format 0.0.4. Series whose
    /// labels come from a closed enum are always present (zero until counted), so that
    /// `rate()` sees them start.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);

        header(
            out,
            "canaryd_reconcile_total",
            "Reconciles of a rollout, by outcome.",
            "counter",
        );
        for o in ReconcileOutcome::ALL {
            let n = get(&self.reconciles[outcome_index(o)]);
            let _ = writeln!(
                out,
                "canaryd_reconcile_total{{outcome=\"{}\"}} {n}",
                o.as_str()
            );
        }

        header(
            out,
            "canaryd_errors_total",
            "Errors, by the system they came from.",
            "counter",
        );
        for c in ErrorClass::ALL {
            let n = get(&self.errors[class_index(c)]);
            let _ = writeln!(out, "canaryd_errors_total{{class=\"{}\"}} {n}", c.as_str());
        }

        header(
            out,
            "canaryd_weight_changes_total",
            "Canary weights set on a router.",
            "counter",
        );
        for (router, n) in lock(&self.weight_changes).iter() {
            let _ = writeln!(
                out,
                "canaryd_weight_changes_total{{router=\"{}\"}} {n}",
                escape_label(router)
            );
        }

        for (name, help, counter) in [
            ("canaryd_aborts_total", "Rollouts aborted.", &self.aborts),
            (
                "canaryd_promotions_total",
                "Canaries promoted to stable.",
                &self.promotions,
            ),
            (
                "canaryd_status_commits_total",
                "Status files committed to the status branch.",
                &self.status_commits,
            ),
            (
                "canaryd_push_rejected_total",
                "Pushes of the status branch rejected by the remote.",
                &self.push_rejected,
            ),
        ] {
            header(out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", get(counter));
        }

        header(
            out,
            "canaryd_step_duration_seconds",
            "How long rollout steps took.",
            "histogram",
        );
        lock(&self.step_duration).render("canaryd_step_duration_seconds", "", out);

        header(
            out,
            "canaryd_router_apply_seconds",
            "How long setting weights on a router took.",
            "histogram",
        );
        for (router, h) in lock(&self.router_apply).iter() {
            let labels = format!("router=\"{}\"", escape_label(router));
            h.render("canaryd_router_apply_seconds", &labels, out);
        }

        header(
            out,
            "canaryd_webhook_deliveries_total",
            "Webhook deliveries, by how they were answered.",
            "counter",
        );
        for o in WebhookOutcome::ALL {
            let n = get(&self.webhooks[webhook_index(o)]);
            let _ = writeln!(
                out,
                "canaryd_webhook_deliveries_total{{outcome=\"{}\"}} {n}",
                o.as_str()
            );
        }

        header(
            out,
            "canaryd_notifications_total",
            "Notifications per sink: sent, or tries that failed (retried with backoff).",
            "counter",
        );
        for ((sink, delivered), n) in lock(&self.notifications).iter() {
            let outcome = if *delivered { "sent" } else { "failed" };
            let _ = writeln!(
                out,
                "canaryd_notifications_total{{sink=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape_label(sink)
            );
        }
    }
}

fn webhook_index(o: WebhookOutcome) -> usize {
    match o {
        WebhookOutcome::Woke => 0,
        WebhookOutcome::Ignored => 1,
        WebhookOutcome::Duplicate => 2,
        WebhookOutcome::Unknown => 3,
        WebhookOutcome::Unauthorized => 4,
        WebhookOutcome::Invalid => 5,
        WebhookOutcome::Unavailable => 6,
    }
}

fn outcome_index(o: ReconcileOutcome) -> usize {
    match o {
        ReconcileOutcome::Changed => 0,
        ReconcileOutcome::Unchanged => 1,
        ReconcileOutcome::Held => 2,
        ReconcileOutcome::Error => 3,
    }
}

fn class_index(c: ErrorClass) -> usize {
    match c {
        ErrorClass::Git => 0,
        ErrorClass::Router => 1,
        ErrorClass::Metrics => 2,
        ErrorClass::Spec => 3,
        ErrorClass::Status => 4,
        ErrorClass::Forge => 5,
        ErrorClass::Notify => 6,
    }
}

/// Logs an event: ERROR when an operator must act, WARN when it is retried, INFO for a
/// rollout's lifecycle, DEBUG for every reconcile and timing.
fn log(e: &Event) {
    match e {
        Event::Reconciled { rollout, outcome } => {
            tracing::debug!(rollout = %rollout, outcome = outcome.as_str(), "reconciled");
        }
        Event::Error {
            class,
            rollout,
            message,
        } => {
            let rollout = rollout.as_deref().unwrap_or("");
            if class.needs_operator() {
                tracing::error!(class = class.as_str(), rollout, "{message}");
            } else {
                tracing::warn!(class = class.as_str(), rollout, "{message}; will retry");
            }
        }
        Event::WeightChanged {
            rollout,
            router,
            canary_weight,
        } => {
            tracing::info!(rollout = %rollout, router = %router, canary_weight, "canary weight set");
        }
        Event::Aborted { rollout, reason } => {
            tracing::info!(rollout = %rollout, reason = %reason, "rollout aborted");
        }
        Event::Promoted { rollout } => tracing::info!(rollout = %rollout, "canary promoted"),
        Event::StepFinished { rollout, seconds } => {
            tracing::debug!(rollout = %rollout, seconds, "step finished");
        }
        Event::RouterApply { router, seconds } => {
            tracing::debug!(router = %router, seconds, "weights applied");
        }
        Event::StatusCommitted { rollout, summary } => {
            tracing::info!(rollout = %rollout, summary = %summary, "status committed");
        }
        Event::PushRejected => {
            tracing::warn!("push of the status branch rejected; re-fetching and retrying");
        }
        Event::Notified {
            sink,
            id,
            delivered,
        } => {
            if *delivered {
                tracing::info!(sink = %sink, notice = %id, "notification sent");
            } else {
                tracing::debug!(sink = %sink, notice = %id, "notification try failed");
            }
        }
        Event::Webhook { outcome, detail } => {
            let label = outcome.as_str();
            match outcome {
                // The secret cannot be read (or the daemon is going away): someone must act.
                WebhookOutcome::Unavailable => {
                    tracing::error!(outcome = label, "webhook delivery: {detail}");
                }
                // A sender with the wrong secret, or noise; polling goes on regardless.
                WebhookOutcome::Unauthorized | WebhookOutcome::Invalid => {
                    tracing::warn!(outcome = label, "webhook delivery refused: {detail}");
                }
                _ => tracing::debug!(outcome = label, "webhook delivery: {detail}"),
            }
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and line feed, as the text format requires.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value as the text format spells it (`+Inf`, `-Inf`, `NaN`, else shortest decimal).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(t: &Telemetry) -> String {
        let mut out = String::new();
        t.render(&mut out);
        out
    }

    /// The lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn a_fresh_registry_renders_every_fixed_series_at_zero() {
        let out = rendered(&Telemetry::new());
        let expected = "\
# HELP canaryd_reconcile_total Reconciles of a rollout, by outcome.
# TYPE canaryd_reconcile_total counter
canaryd_reconcile_total{outcome=\"changed\"} 0
canaryd_reconcile_total{outcome=\"unchanged\"} 0
canaryd_reconcile_total{outcome=\"held\"} 0
canaryd_reconcile_total{outcome=\"error\"} 0
# HELP canaryd_errors_total Errors, by the system they came from.
# TYPE canaryd_errors_total counter
canaryd_errors_total{class=\"git\"} 0
canaryd_errors_total{class=\"router\"} 0
canaryd_errors_total{class=\"metrics\"} 0
canaryd_errors_total{class=\"spec\"} 0
canaryd_errors_total{class=\"status\"} 0
canaryd_errors_total{class=\"forge\"} 0
canaryd_errors_total{class=\"notify\"} 0
# HELP canaryd_weight_changes_total Canary weights set on a router.
# TYPE canaryd_weight_changes_total counter
# HELP canaryd_aborts_total Rollouts aborted.
# TYPE canaryd_aborts_total counter
canaryd_aborts_total 0
# HELP canaryd_promotions_total Canaries promoted to stable.
# TYPE canaryd_promotions_total counter
canaryd_promotions_total 0
# HELP canaryd_status_commits_total Status files committed to the status branch.
# TYPE canaryd_status_commits_total counter
canaryd_status_commits_total 0
# HELP canaryd_push_rejected_total Pushes of the status branch rejected by the remote.
# TYPE canaryd_push_rejected_total counter
canaryd_push_rejected_total 0
# HELP canaryd_step_duration_seconds How long rollout steps took.
# TYPE canaryd_step_duration_seconds histogram
canaryd_step_duration_seconds_bucket{le=\"1\"} 0
canaryd_step_duration_seconds_bucket{le=\"5\"} 0
canaryd_step_duration_seconds_bucket{le=\"15\"} 0
canaryd_step_duration_seconds_bucket{le=\"30\"} 0
canaryd_step_duration_seconds_bucket{le=\"60\"} 0
canaryd_step_duration_seconds_bucket{le=\"120\"} 0
canaryd_step_duration_seconds_bucket{le=\"300\"} 0
canaryd_step_duration_seconds_bucket{le=\"600\"} 0
canaryd_step_duration_seconds_bucket{le=\"1800\"} 0
canaryd_step_duration_seconds_bucket{le=\"3600\"} 0
canaryd_step_duration_seconds_bucket{le=\"7200\"} 0
canaryd_step_duration_seconds_bucket{le=\"21600\"} 0
canaryd_step_duration_seconds_bucket{le=\"+Inf\"} 0
canaryd_step_duration_seconds_sum 0
canaryd_step_duration_seconds_count 0
# HELP canaryd_router_apply_seconds How long setting weights on a router took.
# TYPE canaryd_router_apply_seconds histogram
# HELP canaryd_webhook_deliveries_total Webhook deliveries, by how they were answered.
# TYPE canaryd_webhook_deliveries_total counter
canaryd_webhook_deliveries_total{outcome=\"woke\"} 0
canaryd_webhook_deliveries_total{outcome=\"ignored\"} 0
canaryd_webhook_deliveries_total{outcome=\"duplicate\"} 0
canaryd_webhook_deliveries_total{outcome=\"unknown\"} 0
canaryd_webhook_deliveries_total{outcome=\"unauthorized\"} 0
canaryd_webhook_deliveries_total{outcome=\"invalid\"} 0
canaryd_webhook_deliveries_total{outcome=\"unavailable\"} 0
# HELP canaryd_notifications_total Notifications per sink: sent, or tries that failed (retried with backoff).
# TYPE canaryd_notifications_total counter
";
        assert_eq!(out, expected);
    }

    #[test]
    fn counters_count_their_events() {
        let t = Telemetry::new();
        for outcome in [
            ReconcileOutcome::Changed,
            ReconcileOutcome::Unchanged,
            ReconcileOutcome::Unchanged,
        ] {
            t.record(Event::Reconciled {
                rollout: "checkout".into(),
                outcome,
            });
        }
        t.record(Event::Error {
            class: ErrorClass::Router,
            rollout: Some("checkout".into()),
            message: "router `edge` unreachable".into(),
        });
        t.record(Event::Error {
            class: ErrorClass::Spec,
            rollout: None,
            message: "bad spec".into(),
        });
        for (router, w) in [("edge", 10), ("edge", 50), ("mesh", 10)] {
            t.record(Event::WeightChanged {
                rollout: "checkout".into(),
                router: router.into(),
                canary_weight: w,
            });
        }
        t.record(Event::Aborted {
            rollout: "checkout".into(),
            reason: "errors failed".into(),
        });
        t.record(Event::Promoted {
            rollout: "search".into(),
        });
        t.record(Event::StatusCommitted {
            rollout: "checkout".into(),
            summary: "step 2/4".into(),
        });
        t.record(Event::PushRejected);
        t.record(Event::PushRejected);
        for outcome in [
            WebhookOutcome::Woke,
            WebhookOutcome::Unauthorized,
            WebhookOutcome::Woke,
        ] {
            t.record(Event::Webhook {
                outcome,
                detail: "github push delivery 1".into(),
            });
        }
        for delivered in [true, false, true] {
            t.record(Event::Notified {
                sink: "team-slack".into(),
                id: "checkout/3f2a9c1d0e4b/aborted".into(),
                delivered,
            });
        }
        let out = rendered(&t);
        assert_eq!(
            lines(&out, "canaryd_notifications_total{"),
            [
                "canaryd_notifications_total{sink=\"team-slack\",outcome=\"failed\"} 1",
                "canaryd_notifications_total{sink=\"team-slack\",outcome=\"sent\"} 2",
            ]
        );
        assert_eq!(
            lines(&out, "canaryd_reconcile_total{"),
            [
                "canaryd_reconcile_total{outcome=\"changed\"} 1",
                "canaryd_reconcile_total{outcome=\"unchanged\"} 2",
                "canaryd_reconcile_total{outcome=\"held\"} 0",
                "canaryd_reconcile_total{outcome=\"error\"} 0",
            ]
        );
        assert_eq!(
            lines(&out, "canaryd_errors_total{"),
            [
                "canaryd_errors_total{class=\"git\"} 0",
                "canaryd_errors_total{class=\"router\"} 1",
                "canaryd_errors_total{class=\"metrics\"} 0",
                "canaryd_errors_total{class=\"spec\"} 1",
                "canaryd_errors_total{class=\"status\"} 0",
                "canaryd_errors_total{class=\"forge\"} 0",
                "canaryd_errors_total{class=\"notify\"} 0",
            ]
        );
        assert_eq!(
            lines(&out, "canaryd_weight_changes_total{"),
            [
                "canaryd_weight_changes_total{router=\"edge\"} 2",
                "canaryd_weight_changes_total{router=\"mesh\"} 1",
            ]
        );
        assert_eq!(
            lines(&out, "canaryd_aborts_total "),
            ["canaryd_aborts_total 1"]
        );
        assert_eq!(
            lines(&out, "canaryd_promotions_total "),
            ["canaryd_promotions_total 1"]
        );
        assert_eq!(
            lines(&out, "canaryd_status_commits_total "),
            ["canaryd_status_commits_total 1"]
        );
        assert_eq!(
            lines(&out, "canaryd_push_rejected_total "),
            ["canaryd_push_rejected_total 2"]
        );
        assert_eq!(
            lines(&out, "canaryd_webhook_deliveries_total{outcome=\"woke\"} "),
            ["canaryd_webhook_deliveries_total{outcome=\"woke\"} 2"]
        );
        assert_eq!(
            lines(
                &out,
                "canaryd_webhook_deliveries_total{outcome=\"unauthorized\"} "
            ),
            ["canaryd_webhook_deliveries_total{outcome=\"unauthorized\"} 1"]
        );
        assert!(!out.contains("checkout"), "no rollout names in labels");
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let t = Telemetry::new();
        for seconds in [0.5, 20.0, 20.0, 100_000.0] {
            t.record(Event::StepFinished {
                rollout: "checkout".into(),
                seconds,
            });
        }
        for seconds in [0.004, 0.3] {
            t.record(Event::RouterApply {
                router: "edge".into(),
                seconds,
            });
        }
        let out = rendered(&t);
        let step = lines(&out, "canaryd_step_duration_seconds");
        assert_eq!(
            step[..4],
            [
                "canaryd_step_duration_seconds_bucket{le=\"1\"} 1",
                "canaryd_step_duration_seconds_bucket{le=\"5\"} 1",
                "canaryd_step_duration_seconds_bucket{le=\"15\"} 1",
                "canaryd_step_duration_seconds_bucket{le=\"30\"} 3",
            ]
        );
        assert_eq!(
            step[step.len() - 3..],
            [
                "canaryd_step_duration_seconds_bucket{le=\"+Inf\"} 4",
                "canaryd_step_duration_seconds_sum 100040.5",
                "canaryd_step_duration_seconds_count 4",
            ]
        );
        let expected = "\
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"0.005\"} 1
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"0.01\"} 1
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"0.025\"} 1
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"0.05\"} 1
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"0.1\"} 1
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"0.25\"} 1
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"0.5\"} 2
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"1\"} 2
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"2.5\"} 2
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"5\"} 2
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"10\"} 2
canaryd_router_apply_seconds_bucket{router=\"edge\",le=\"+Inf\"} 2
canaryd_router_apply_seconds_sum{router=\"edge\"} 0.304
canaryd_router_apply_seconds_count{router=\"edge\"} 2
# HELP canaryd_webhook_deliveries_total Webhook deliveries, by how they were answered.
";
        assert!(out.contains(expected), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let t = Telemetry::new();
        t.record(Event::WeightChanged {
            rollout: "checkout".into(),
            router: "ed\"ge\\1\n".into(),
            canary_weight: 10,
        });
        let out = rendered(&t);
        assert_eq!(
            lines(&out, "canaryd_weight_changes_total{"),
            ["canaryd_weight_changes_total{router=\"ed\\\"ge\\\\1\\n\"} 1"]
        );
        assert_eq!(
            out.lines().count(),
            rendered(&Telemetry::new()).lines().count() + 1
        );
    }

    #[test]
    fn nan_is_not_observed_and_special_floats_are_spelled_out() {
        let t = Telemetry::new();
        t.record(Event::StepFinished {
            rollout: "x".into(),
            seconds: f64::NAN,
        });
        assert!(rendered(&t).contains("canaryd_step_duration_seconds_count 0\n"));
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(0.25), "0.25");
    }
}
