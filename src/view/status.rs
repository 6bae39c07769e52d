//! What `canaryd status` prints: the status files of the status branch, for people (one compact block per rollout) or as JSON for tools.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::core::analysis::Outcome;
use crate::core::model::{Route, Sticky, Weight};
use crate::core::progress::{Drift, DriftAction, PauseReason, Progress, Stall};
use crate::core::record::{LiveRecord, MetricValue, StatusFile};

/// How many characters of the spec commit are shown.
const SHORT_COMMIT: usize = 12;

/// The canary's weight as canaryd wants it now, if the phase has a canary.
fn canary_weight(file: &StatusFile) -> Option<Weight> {
    match &file.status.progress {
        Progress::Progressing { run }
        | Progress::Paused { run, .. }
        | Progress::Analysing { run, .. } => {
            Some(file.desired.get(&run.canary).copied().unwrap_or(run.weight))
        }
        Progress::Promoted { .. } => Some(Weight::FULL),
        Progress::Aborted { .. } => Some(Weight::ZERO),
        Progress::RollingBack { weight, .. } | Progress::RolledBack { weight, .. } => Some(*weight),
        Progress::Invalid { .. }
        | Progress::Pending
        | Progress::Stable { .. }
        | Progress::Waiting { .. } => None,
    }
}

/// The current step, 1-based, if the phase has one.
fn step(progress: &Progress) -> Option<usize> {
    match progress {
        Progress::Aborted { step, .. } => Some(step + 1),
        Progress::Invalid { held, .. } => step(held),
        p => p.run().map(|r| r.step + 1),
    }
}

/// A time of day in UTC, with the date when it is not `now`'s day.
fn clock(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M:%S UTC").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }
}

/// `3m ago`, `2h ago`; `just now` for the future (clock skew).
fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds();
    match s {
        ..=0 => "just now".to_string(),
        1..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// The phase in words: `paused (until promoted)`, `aborted: errors 3 failures > limit 0`.
fn phase_words(progress: &Progress, now: DateTime<Utc>) -> String {
    match progress {
        Progress::Pending => "pending".to_string(),
        Progress::Stable { .. } => "stable".to_string(),
        Progress::Waiting { since, .. } => format!(
            "waiting for the deployment window (since {})",
            clock(*since, now)
        ),
        Progress::Progressing { .. } => "progressing".to_string(),
        Progress::Paused {
            until: Some(until), ..
        } => format!("paused (until {})", clock(*until, now)),
        Progress::Paused {
            reason: PauseReason::Inconclusive { evidence },
            ..
        } => format!("paused (inconclusive analysis: {})", evidence.summary),
        Progress::Paused {
            reason: PauseReason::Step,
            ..
        } => "paused (until promoted)".to_string(),
        Progress::Analysing { .. } => "analysing".to_string(),
        Progress::Promoted { at, .. } => format!("promoted at {}", clock(*at, now)),
        Progress::Aborted { evidence, .. } => format!("aborted: {}", evidence.summary),
        Progress::RollingBack { from, target, .. } => {
            format!("rolling back from {from} (to canary {target})")
        }
        Progress::RolledBack { from, at, .. } => {
            format!("rolled back from {from} at {}", clock(*at, now))
        }
        Progress::Invalid { errors, held } => format!(
            "invalid: {} (holding {})",
            errors.join("; "),
            phase_words(held, now)
        ),
    }
}

/// A value rounded to 4 significant digits.
fn value(v: Option<f64>) -> String {
    let Some(v) = v else {
        return "no data".to_string();
    };
    if v == 0.0 || !v.is_finite() {
        return v.to_string();
    }
    let digits = 3 - v.abs().log10().floor() as i32;
    let rounded = if digits >= 0 {
        let p = 10f64.powi(digits);
        (v * p).round() / p
    } else {
        let p = 10f64.powi(-digits);
        (v / p).round() * p
    };
    rounded.to_string()
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Inconclusive => "inconclusive",
        Outcome::Error => "error",
    }
}

/// `stable-v1 75%, canary-v2 live 10% ≠ desired 25%`.
fn weights_line(desired: &BTreeMap<String, Weight>, live: Option<&LiveRecord>) -> String {
    let names: BTreeSet<&String> = desired
        .keys()
        .chain(live.into_iter().flat_map(|l| l.backends.keys()))
        .collect();
    let parts: Vec<String> = names
        .into_iter()
        .map(|name| {
            let d = desired.get(name);
            let l = live.map(|l| l.backends.get(name).copied().unwrap_or(Weight::ZERO));
            match (d, l) {
                (Some(d), Some(l)) if *d == l => format!("{name} {d}"),
                (Some(d), Some(l)) => format!("{name} live {l} ≠ desired {d}"),
                (Some(d), None) => format!("{name} {d} (live unknown)"),
                (None, Some(l)) => format!("{name} live {l} (not set by canaryd)"),
                (None, None) => format!("{name} ?"),
            }
        })
        .collect();
    parts.join(", ")
}

fn drift_line(d: &Drift, now: DateTime<Utc>) -> String {
    let live: Vec<String> = d.live.iter().map(|(b, w)| format!("{b} {w}")).collect();
    let action = match d.action {
        DriftAction::Reapplied => "reapplied",
        DriftAction::Held => "held",
    };
    format!(
        "drift at {}: router had {} instead of canary {}; {action}",
        clock(d.at, now),
        live.join(", "),
        d.expected
    )
}

fn stall_line(s: &Stall, now: DateTime<Utc>) -> String {
    format!("stalled since {}: {}", clock(s.since, now), s.because)
}

/// One line for a rollout: its phase in words, its step and its canary's weight, as
/// `canaryd wait` prints each change (`progressing, step 2/4, canary 20%`).
pub fn line(file: &StatusFile, now: DateTime<Utc>) -> String {
    let progress = &file.status.progress;
    let mut out = phase_words(progress, now);
    if let Some(k) = step(progress) {
        let _ = write!(out, ", step {k}/{}", file.steps);
    }
    if let Some(w) = canary_weight(file) {
        let _ = write!(out, ", canary {w}");
    }
    if let Some(who) = file.who() {
        let _ = write!(out, ", {who}");
    }
    out
}

/// One block per rollout, separated by blank lines; times are UTC, ages relative to `now`.
pub fn human(files: &[StatusFile], now: DateTime<Utc>) -> String {
    let mut out = String::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        block(&mut out, file, now);
    }
    if files.is_empty() {
        out.push_str("no rollouts have a status yet\n");
    }
    out
}

fn block(out: &mut String, file: &StatusFile, now: DateTime<Utc>) {
    let progress = &file.status.progress;
    let _ = writeln!(
        out,
        "rollout {}: {}",
        file.status.rollout,
        phase_words(progress, now)
    );
    let mut line = String::new();
    if let Some(rev) = progress.revision() {
        let _ = write!(line, "revision {rev}");
    }
    if let Some(k) = step(progress) {
        let sep = if line.is_empty() { "" } else { ", " };
        let _ = write!(line, "{sep}step {k}/{}", file.steps);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(w) = canary_weight(file) {
        let unverified = progress.run().is_some_and(|r| !r.verified);
        let _ = writeln!(
            out,
            "  canary {} {w}{}",
            bar(w),
            if unverified {
                " (not yet verified)"
            } else {
                ""
            }
        );
    }
    if !file.desired.is_empty() || file.live.is_some() {
        let at = file
            .live
            .as_ref()
            .map(|l| format!(" (live read {})", clock(l.at, now)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  weights: {}{at}",
            weights_line(&file.desired, file.live.as_ref())
        );
    }
    if let Some(who) = file.who() {
        let _ = writeln!(out, "  who: {who}");
    }
    for m in &file.analysis {
        let _ = writeln!(out, "  analysis: {}", analysis_line(m, now));
    }
    if let Some(run) = progress.run() {
        if let Some(stall) = &run.stall {
            let _ = writeln!(out, "  {}", stall_line(stall, now));
        }
        if run.deadline_exceeded {
            let _ = writeln!(out, "  progress deadline exceeded; holding");
        }
    }
    if let Some(d) = &file.status.drift {
        let _ = writeln!(out, "  {}", drift_line(d, now));
    }
    if let Some(why) = &file.router_error {
        let _ = writeln!(out, "  router: {why}");
    }
    if let Some(branch) = &file.revert {
        let _ = writeln!(out, "  revert branch {branch}: merge it to make Git agree");
    }
    if let Some(pr) = &file.revert_pr {
        let _ = writeln!(out, "  revert pull request {pr}");
    }
    let spec = file
        .spec_commit
        .as_deref()
        .map(|c| format!("spec {}, ", c.get(..SHORT_COMMIT).unwrap_or(c)))
        .unwrap_or_default();
    let _ = writeln!(out, "  {spec}updated {}", ago(file.updated_at, now));
}

/// `errors = 0.0042 (success) at 10:41:30 UTC, condition result < 0.01`.
fn analysis_line(m: &MetricValue, now: DateTime<Utc>) -> String {
    let mut s = format!(
        "{} = {} ({}) at {}",
        m.metric,
        value(m.value),
        outcome_word(m.outcome),
        clock(m.at, now)
    );
    if let Some(c) = &m.condition {
        let _ = write!(s, ", condition {c}");
    }
    s
}

/// One rollout in `canaryd status --output json`. Every field is always present (`null` when
/// it does not apply), so tools can rely on the shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView<'a> {
    /// The rollout's name.
    pub rollout: &'a str,
    /// The revision being rolled out (12 hex digits), if any.
    pub revision: Option<String>,
    /// The phase as in the status file: `pending`, `stable`, `waiting`, `progressing`,
    /// `paused`, `analysing`, `promoted`, `aborted`, `rollingBack`, `rolledBack`, `invalid`.
    pub phase: &'static str,
    /// The phase in words, as `human` prints it.
    pub description: String,
    /// The current step, 1-based.
    pub step: Option<usize>,
    /// The number of steps of the spec.
    pub steps: usize,
    /// The canary's desired weight in percent.
    pub canary_weight: Option<Weight>,
    /// Whether the canary weight was read back from the router.
    pub verified: Option<bool>,
    /// The weights canaryd last set, per backend, in percent.
    pub desired: &'a BTreeMap<String, Weight>,
    /// The header routes canaryd last set, in order.
    pub routes: &'a [Route],
    /// The key that keeps users on one side, when set.
    pub sticky: Option<&'a Sticky>,
    /// The weights the router reported, per backend, in percent.
    pub live: Option<&'a BTreeMap<String, Weight>>,
    /// When the live weights were read.
    pub live_at: Option<DateTime<Utc>>,
    /// Backends whose live weight differs from the desired one.
    pub mismatched: Vec<&'a str>,
    /// The newest value of each metric.
    pub analysis: &'a [MetricValue],
    /// Why the rollout holds for want of an input.
    pub stall: Option<&'a Stall>,
    /// The last time the router's weights differed from canaryd's.
    pub drift: Option<&'a Drift>,
    /// When the status file was written.
    pub updated_at: DateTime<Utc>,
    /// The commit of the watched branch whose spec was planned.
    pub spec_commit: Option<&'a str>,
    /// The revert branch pushed after an abort.
    pub revert: Option<&'a str>,
    /// The pull request opened from it.
    pub revert_pr: Option<&'a str>,
    /// Why the router could not be read at the last look.
    pub router_error: Option<&'a str>,
}

impl<'a> RolloutView<'a> {
    pub fn of(file: &'a StatusFile) -> Self {
        let progress = &file.status.progress;
        let live = file.live.as_ref();
        let mismatched = match live {
            Some(l) => file
                .desired
                .iter()
                .filter(|(name, w)| l.backends.get(*name).copied().unwrap_or(Weight::ZERO) != **w)
                .map(|(name, _)| name.as_str())
                .collect(),
            None => Vec::new(),
        };
        RolloutView {
            rollout: &file.status.rollout,
            revision: progress.revision().map(|r| r.to_string()),
            phase: progress.phase(),
            description: phase_words(progress, file.updated_at),
            step: step(progress),
            steps: file.steps,
            canary_weight: canary_weight(file),
            verified: progress.run().map(|r| r.verified),
            desired: &file.desired,
            routes: &file.routes,
            sticky: file.sticky.as_ref(),
            live: live.map(|l| &l.backends),
            live_at: live.map(|l| l.at),
            mismatched,
            analysis: &file.analysis,
            stall: progress.run().and_then(|r| r.stall.as_ref()),
            drift: file.status.drift.as_ref(),
            updated_at: file.updated_at,
            spec_commit: file.spec_commit.as_deref(),
            revert: file.revert.as_deref(),
            revert_pr: file.revert_pr.as_deref(),
            router_error: file.router_error.as_deref(),
        }
    }
}

/// A pretty-printed JSON array of [`RolloutView`]s.
pub fn json(files: &[StatusFile]) -> String {
    let views: Vec<RolloutView<'_>> = files.iter().map(RolloutView::of).collect();
    // Every map here has string keys, the only way serialising to JSON can fail.
    #[allow(clippy::expect_used)]
    let mut text = serde_json::to_string_pretty(&views).expect("status views serialise to JSON");
    text.push('\n');
    text
}

/// `canaryd status GROUP`: the group's release and each member's place in it, then each
/// member's own status as `human` prints it.
pub fn group_human(
    group: &crate::core::group::GroupStatusFile,
    members: &[StatusFile],
    now: DateTime<Utc>,
) -> String {
    let mut out = format!(
        "group {} ({}): {}\n",
        group.group,
        match group.order {
            crate::core::spec::GroupOrder::Lockstep => "lockstep",
            crate::core::spec::GroupOrder::Ordered => "ordered",
        },
        group.subject()
    );
    if let Some(r) = &group.release {
        let _ = writeln!(out, "  release:   {r}");
    }
    if !group.held_by.is_empty() {
        let _ = writeln!(out, "  held by:   {}", group.held_by.join(", "));
    }
    if let Some(b) = &group.revert {
        let _ = writeln!(out, "  revert:    {b}");
    }
    let width = group
        .members
        .iter()
        .map(|m| m.rollout.len())
        .max()
        .unwrap_or(0);
    for m in &group.members {
        let mark = if m.ready { "✓" } else { " " };
        let _ = writeln!(
            out,
            "  {mark} {:width$}  {:12} {:>6}  {:>3}%{}",
            m.rollout,
            m.phase,
            m.step.as_deref().unwrap_or("-"),
            m.weight,
            if m.in_release {
                ""
            } else {
                "  (not in this release)"
            },
        );
    }
    if !members.is_empty() {
        out.push('\n');
        out.push_str(&human(members, now));
    }
    out
}

/// `canaryd status GROUP --output json`: `{group, members}`, the group's status file and each
/// member's view as [`json`] gives it.
pub fn group_json(group: &crate::core::group::GroupStatusFile, members: &[StatusFile]) -> String {
    #[derive(Serialize)]
    struct GroupView<'a> {
        group: &'a crate::core::group::GroupStatusFile,
        members: Vec<RolloutView<'a>>,
    }
    let view = GroupView {
        group,
        members: members.iter().map(RolloutView::of).collect(),
    };
    // String keys only, as in `json`.
    #[allow(clippy::expect_used)]
    let mut text = serde_json::to_string_pretty(&view).expect("group views serialise to JSON");
    text.push('\n');
    text
}

/// A 20-cell progress bar of the canary's share.
pub fn bar(w: Weight) -> String {
    let filled = usize::from(w.get()) / 5;
    format!("{}{}", "█".repeat(filled), "░".repeat(20 - filled))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;
    use crate::core::analysis::Evidence;
    use crate::core::progress::{Run, Status};

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 14, h, m, s).unwrap()
    }

    fn w(p: i64) -> Weight {
        Weight::new(p).unwrap()
    }

    fn run(step: usize, weight: u8) -> Run {
        Run {
            revision: "3f2a9c1b0d4e".into(),
            step,
            weight: w(weight.into()),
            verified: true,
            stable: "checkout-v1".into(),
            canary: "checkout-v2".into(),
            started_at: t(10, 0, 0),
            step_started_at: t(10, 30, 0),
            stall: None,
            deadline_exceeded: false,
            background: None,
            done: false,
        }
    }

    fn file(progress: Progress) -> StatusFile {
        let mut status = Status::new("checkout");
        status.progress = progress;
        StatusFile {
            file: None,
            revert: None,
            revert_pr: None,
            router_error: None,
            status,
            spec_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            steps: 6,
            desired: BTreeMap::from([("checkout-v1".into(), w(75)), ("checkout-v2".into(), w(25))]),
            routes: Vec::new(),
            sticky: None,
            live: Some(LiveRecord {
                backends: BTreeMap::from([
                    ("checkout-v1".into(), w(90)),
                    ("checkout-v2".into(), w(10)),
                ]),
                at: t(10, 41, 0),
            }),
            analysis: vec![MetricValue {
                metric: "errors".into(),
                value: Some(0.004_166_666),
                outcome: Outcome::Success,
                condition: Some("result < 0.01".into()),
                at: t(10, 41, 30),
                samples: Some(240),
                query: Some("error_rate".into()),
                message: None,
                judge: None,
            }],
            updated_at: t(10, 42, 0),
        }
    }

    fn now() -> DateTime<Utc> {
        t(10, 45, 10)
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn a_progressing_rollout() {
        let mut r = run(1, 25);
        r.stall = Some(Stall {
            since: t(10, 40, 0),
            because: "weights not verified on the router".into(),
        });
        let text = human(&[file(Progress::Progressing { run: r })], now());
        has(&text, "rollout checkout: progressing");
        has(&text, "  revision 3f2a9c1b0d4e, step 2/6");
        has(&text, &format!("  canary {} 25%", bar(w(25))));
        has(
            &text,
            "  weights: checkout-v1 live 90% ≠ desired 75%, checkout-v2 live 10% ≠ desired 25% (live read 10:41:00 UTC)",
        );
        has(
            &text,
            "  analysis: errors = 0.004167 (success) at 10:41:30 UTC, condition result < 0.01",
        );
        has(
            &text,
            "  stalled since 10:40:00 UTC: weights not verified on the router",
        );
        has(&text, "  spec 0123456789ab, updated 3m ago");
        assert!(text.lines().count() <= 10, "{text}");
    }

    #[test]
    fn an_aborted_rollout() {
        let mut f = file(Progress::Aborted {
            revision: "3f2a9c1b0d4e".into(),
            at: t(10, 42, 0),
            evidence: Evidence::text("errors: 2 failures > failureLimit 0 (0.05, 0.07)"),
            step: 2,
            weight: w(25),
        });
        f.desired = BTreeMap::from([("checkout-v1".into(), w(100)), ("checkout-v2".into(), w(0))]);
        f.live = Some(LiveRecord {
            backends: f.desired.clone(),
            at: t(10, 42, 0),
        });
        f.updated_at = t(8, 45, 0);
        f.revert = Some("canaryd/revert/checkout-0123456789ab".into());
        let text = human(&[f], now());
        has(
            &text,
            "rollout checkout: aborted: errors: 2 failures > failureLimit 0 (0.05, 0.07)",
        );
        has(
            &text,
            "  revert branch canaryd/revert/checkout-0123456789ab: merge it to make Git agree",
        );
        has(&text, "  revision 3f2a9c1b0d4e, step 3/6");
        has(&text, &format!("  canary {} 0%", bar(Weight::ZERO)));
        has(
            &text,
            "  weights: checkout-v1 100%, checkout-v2 0% (live read 10:42:00 UTC)",
        );
        has(&text, "  spec 0123456789ab, updated 2h ago");
        assert!(!text.contains('≠'), "{text}");
    }

    #[test]
    fn paused_rollouts_say_until_when() {
        let timed = file(Progress::Paused {
            run: run(3, 25),
            until: Some(t(10, 50, 0)),
            reason: PauseReason::Step,
        });
        let manual = file(Progress::Paused {
            run: run(3, 25),
            until: None,
            reason: PauseReason::Step,
        });
        let inconclusive = file(Progress::Paused {
            run: run(2, 25),
            until: None,
            reason: PauseReason::Inconclusive {
                evidence: Evidence::text("errors: 2 inconclusive > inconclusiveLimit 1"),
            },
        });
        let text = human(&[timed, manual, inconclusive], now());
        has(&text, "rollout checkout: paused (until 10:50:00 UTC)");
        has(&text, "rollout checkout: paused (until promoted)");
        has(
            &text,
            "rollout checkout: paused (inconclusive analysis: errors: 2 inconclusive > inconclusiveLimit 1)",
        );
        has(&text, "  revision 3f2a9c1b0d4e, step 4/6");
        assert_eq!(text.matches("rollout checkout").count(), 3);
        assert_eq!(
            text.matches("\n\nrollout").count(),
            2,
            "blank line between blocks"
        );
    }

    #[test]
    fn other_phases_and_helpers() {
        let f = file(Progress::Invalid {
            errors: vec!["unknown router `edge`".into()],
            held: Box::new(Progress::Progressing { run: run(0, 10) }),
        });
        let text = human(&[f], now());
        has(
            &text,
            "rollout checkout: invalid: unknown router `edge` (holding progressing)",
        );
        assert_eq!(human(&[], now()), "no rollouts have a status yet\n");
        assert_eq!(ago(t(10, 45, 0), now()), "10s ago");
        assert_eq!(ago(t(11, 0, 0), now()), "just now");
        assert_eq!(
            clock(
                t(10, 0, 0),
                Utc.with_ymd_and_hms(2025, 3, 15, 1, 0, 0).unwrap()
            ),
            "2025-03-14 10:00:00 UTC"
        );
        assert_eq!(value(Some(1234567.0)), "1235000");
        assert_eq!(value(Some(0.5)), "0.5");
        assert_eq!(value(None), "no data");
    }

    #[test]
    fn json_has_stable_camel_case_fields() {
        let text = json(&[file(Progress::Progressing { run: run(1, 25) })]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let o = &v[0];
        assert_eq!(o["rollout"], "checkout");
        assert_eq!(o["revision"], "3f2a9c1b0d4e");
        assert_eq!(o["phase"], "progressing");
        assert_eq!(o["step"], 2);
        assert_eq!(o["steps"], 6);
        assert_eq!(o["canaryWeight"], 25);
        assert_eq!(o["desired"]["checkout-v2"], 25);
        assert_eq!(o["live"]["checkout-v2"], 10);
        assert_eq!(
            o["mismatched"],
            serde_json::json!(["checkout-v1", "checkout-v2"])
        );
        assert_eq!(o["analysis"][0]["metric"], "errors");
        assert_eq!(o["updatedAt"], "2025-03-14T10:42:00Z");
        assert_eq!(o["specCommit"], "0123456789abcdef0123456789abcdef01234567");
        assert!(o["stall"].is_null() && o["drift"].is_null());
        assert!(text.contains("\n  {\n"), "pretty printed: {text}");
    }
}
