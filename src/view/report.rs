//! What `lint` and `plan` print: human text on stdout (rustc-style diagnostics, diffs of
//! weights) or JSON for tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use similar::{ChangeTag, TextDiff};

use crate::core::diag::Diagnostic;
use crate::core::model::{Observed, Rollout, Traffic, Weight, describe_matches};
use crate::core::plan::Plan;
use crate::core::progress::Progress;
use crate::core::validate::Source;

/// `lint`'s human output: every diagnostic with its source line, then a summary line.
pub fn lint_human(diags: &[Diagnostic], sources: &[Source], files: usize) -> String {
    let text: BTreeMap<&str, &str> = sources
        .iter()
        .map(|s| (s.file.as_str(), s.text.as_str()))
        .collect();
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.render(text.get(d.file.as_str()).copied()));
        out.push('\n');
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let _ = writeln!(
        out,
        "{files} file{} checked: {errors} error{}, {warnings} warning{}",
        plural(files),
        plural(errors),
        plural(warnings)
    );
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `lint --output json`.
#[derive(Debug, Serialize)]
pub struct LintJson<'a> {
    pub files: usize,
    pub errors: usize,
    pub warnings: usize,
    pub diagnostics: &'a [Diagnostic],
}

/// Lines `backend weight%` for a diff; `(unknown)` when the router could not be read.
fn traffic_lines(backends: Option<&BTreeMap<String, Weight>>) -> String {
    match backends {
        None => "(unknown)\n".to_string(),
        Some(b) => b
            .iter()
            .map(|(name, w)| format!("{name} {}%\n", w.get()))
            .collect(),
    }
}

/// The desired-vs-live diff of one target, unified-diff style: `-` live, `+` desired.
pub fn weights_diff(live: Option<&Observed>, desired: &Traffic) -> String {
    let live_pct = live.and_then(Observed::percentages);
    let before = traffic_lines(live_pct.as_ref());
    let after = traffic_lines(Some(&desired.backends));
    let diff = TextDiff::from_lines(&before, &after);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            ChangeTag::Delete => "-",
            ChangeTag::Insert => "+",
            ChangeTag::Equal => " ",
        };
        let _ = write!(out, "{sign} {change}");
    }
    out
}

/// Where a progress stands, for people: `progressing, step 2/6 (canary 20%)`.
pub fn describe(progress: &Progress, steps: usize) -> String {
    match progress {
        Progress::Progressing { run }
        | Progress::Analysing { run, .. }
        | Progress::Paused { run, .. } => {
            format!(
                "{}, step {}/{} (canary {}{})",
                progress.phase(),
                run.step + 1,
                steps,
                run.weight,
                if run.verified { "" } else { ", unverified" }
            )
        }
        Progress::Invalid { held, .. } => format!("invalid (holding {})", describe(held, steps)),
        other => other.phase().to_string(),
    }
}

/// `plan`'s human output for one rollout.
pub fn plan_human(
    rollout: &Rollout,
    plan: &Plan,
    recorded: &Progress,
    live: Option<&Observed>,
) -> String {
    let mut out = String::new();
    let target = rollout.target();
    let _ = writeln!(
        out,
        "rollout {} (revision {}, {})",
        rollout.name, rollout.revision, rollout.file
    );
    let steps = rollout.steps.len();
    let before = describe(recorded, steps);
    let after = describe(&plan.status.progress, steps);
    if before == after {
        let _ = writeln!(out, "  phase:  {after}");
    } else {
        let _ = writeln!(out, "  phase:  {before} -> {after}");
    }
    let _ = writeln!(out, "  action: {}", plan.action);
    let effects: Vec<String> = plan.effects().iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "  effects: {}", effects.join(" -> "));
    let desired =
        plan.traffic
            .clone()
            .unwrap_or_else(|| match live.and_then(Observed::percentages) {
                Some(backends) => Traffic::weights(backends),
                None => target.traffic(Weight::ZERO, None),
            });
    let _ = writeln!(
        out,
        "  traffic on {}/{} (- live, + desired):",
        target.router, target.service
    );
    if plan.traffic.is_none() {
        let shown = match live.and_then(Observed::percentages) {
            Some(b) => traffic_lines(Some(&b)),
            None => "(unknown)\n".to_string(),
        };
        for line in shown.lines() {
            let _ = writeln!(out, "      {line}");
        }
        let _ = writeln!(out, "      (unchanged)");
    } else {
        for line in weights_diff(live, &desired).lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    for r in plan.traffic.iter().flat_map(|t| &t.routes) {
        let _ = writeln!(
            out,
            "  route {}: {} → {}",
            r.name,
            describe_matches(&r.matches),
            r.backend
        );
    }
    if let Some(s) = plan.traffic.as_ref().and_then(|t| t.sticky.as_ref()) {
        let _ = writeln!(out, "  sticky by {s}");
    }
    if !plan.measure.is_empty() {
        let names: Vec<&str> = plan.measure.iter().map(|d| d.metric.as_str()).collect();
        let _ = writeln!(out, "  measure: {}", names.join(", "));
    }
    if let Some(r) = &plan.revert {
        let _ = writeln!(
            out,
            "  revert: open a revert of revision {} ({})",
            r.revision, r.evidence.summary
        );
    }
    if let Some(w) = plan.wake {
        let _ = writeln!(out, "  next look: {}", w.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    out
}
