//! Status commit messages: one subject a person can read in `git log --oneline`, trailers a
//! program can read (`Rollout`, `Revision`, `Spec-Commit`, `Phase`).

use std::fmt::Write as _;

use crate::core::analysis::Outcome;
use crate::core::number::short;
use crate::core::plan::Action;
use crate::core::progress::Progress;
use crate::core::record::{MetricValue, StatusFile};

/// The message of the commit recording `file`, written because of `action`; `measured` are the
/// values taken in this round, newest last.
pub fn status_commit(file: &StatusFile, action: &Action, measured: &[MetricValue]) -> String {
    let status = &file.status;
    let mut subject = format!("{}: {}", status.rollout, headline(file, action));
    // An abort's headline already quotes its evidence.
    if let Some(values) = values(measured).filter(|_| !matches!(action, Action::Abort { .. })) {
        let _ = write!(subject, " ({values})");
    }
    let mut body = String::new();
    let _ = writeln!(body, "{subject}\n");
    let _ = writeln!(body, "action: {action}");
    if !file.desired.is_empty() {
        let weights: Vec<String> = file
            .desired
            .iter()
            .map(|(b, w)| format!("{b} {w}"))
            .collect();
        let _ = writeln!(body, "desired: {}", weights.join(", "));
    }
    if let Some(live) = &file.live {
        let weights: Vec<String> = live
            .backends
            .iter()
            .map(|(b, w)| format!("{b} {w}"))
            .collect();
        let _ = writeln!(body, "live: {}", weights.join(", "));
    }
    if !measured.is_empty() {
        let _ = writeln!(body, "analysis:");
        for m in measured {
            let _ = writeln!(body, "  {}", evidence_line(m));
        }
    }
    let _ = writeln!(body);
    let _ = writeln!(body, "Rollout: {}", status.rollout);
    if let Some(rev) = status.progress.revision() {
        let _ = writeln!(body, "Revision: {rev}");
    }
    if let Some(c) = &file.spec_commit {
        let _ = writeln!(body, "Spec-Commit: {c}");
    }
    let _ = writeln!(body, "Phase: {}", status.progress.phase());
    body
}

/// The message of one commit recording many rollouts at once (a cold start): the subject
/// counts them, the body has each rollout's subject line, so `git log -- status/<name>.yaml`
/// still shows what happened to `<name>`.
pub fn folded(messages: &[&str]) -> String {
    let mut m = format!("status of {} rollouts\n\n", messages.len());
    for message in messages {
        m.push_str(message.lines().next().unwrap_or_default());
        m.push('\n');
    }
    m
}

/// What happened, in a few words: `step 3/7 weight 25%`, `aborted: errors 0.08 missed …`;
/// with routes or a sticky key, who sees the canary too (`step 2/5 weight 10%, header
/// X-Canary=always → green, sticky by header X-User-Id`).
fn headline(file: &StatusFile, action: &Action) -> String {
    let what = what_happened(file, action);
    let moved = matches!(
        action,
        Action::SetWeight { .. } | Action::SetRoutes { .. } | Action::Reapply { .. }
    );
    match file.who() {
        Some(who) if moved => format!("{what}, {who}"),
        _ => what,
    }
}

fn what_happened(file: &StatusFile, action: &Action) -> String {
    let n = file.steps;
    match action {
        Action::SetWeight { step, weight } => format!("step {}/{n} weight {weight}", step + 1),
        Action::SetRoutes { step } => match file.status.progress.run() {
            Some(run) => format!("step {}/{n} header routes, weight {}", step + 1, run.weight),
            None => format!("step {}/{n} header routes", step + 1),
        },
        Action::Pause { step } => match &file.status.progress {
            Progress::Paused {
                until: Some(until), ..
            } => format!(
                "step {}/{n} pause until {}",
                step + 1,
                until.format("%H:%M:%S")
            ),
            _ => format!("step {}/{n} paused until promoted", step + 1),
        },
        Action::Analyse { step } => format!("step {}/{n} analysis started", step + 1),
        Action::Promote => "promoted: canary at 100%".to_string(),
        Action::Abort { evidence } => format!("aborted: {}", evidence.summary),
        Action::RollBack { from } => match &file.status.progress {
            Progress::RolledBack { weight, .. } => {
                format!("rolled back from revision {from}, canary {weight}")
            }
            _ => format!("rolling back from revision {from}"),
        },
        Action::StepBack => match &file.status.progress {
            Progress::RollingBack { weight, .. } => format!("stepping back, canary {weight}"),
            _ => "rolled back".to_string(),
        },
        Action::Stable => "no canary: stable at 100%".to_string(),
        Action::Invalid => "spec invalid: traffic left as it is".to_string(),
        Action::Reapply { reason } => format!("weights reapplied ({reason})"),
        Action::Hold { reason } => format!("holding: {reason}"),
        Action::Wait { .. } => where_it_stands(file, n),
    }
}

/// The state itself, when no action explains the change (a weight verified, a measurement).
fn where_it_stands(file: &StatusFile, n: usize) -> String {
    match &file.status.progress {
        Progress::Progressing { run } | Progress::Paused { run, .. } if run.verified => {
            format!("step {}/{n} weight {} verified", run.step + 1, run.weight)
        }
        Progress::Analysing { run, .. } => {
            format!("step {}/{n} weight {} analysing", run.step + 1, run.weight)
        }
        Progress::Progressing { run } | Progress::Paused { run, .. } => {
            format!("step {}/{n} weight {}", run.step + 1, run.weight)
        }
        Progress::Promoted { .. } => "promoted".to_string(),
        Progress::Aborted { .. } => match (&file.revert, &file.revert_pr) {
            (Some(_), Some(pr)) => format!("aborted; revert pull request {pr} opened"),
            (Some(branch), None) => format!("aborted; revert branch {branch} pushed"),
            _ => "aborted".to_string(),
        },
        Progress::RolledBack { weight, .. } => format!("rolled back, canary {weight}"),
        Progress::Invalid { .. } => "spec invalid: traffic left as it is".to_string(),
        other => other.phase().to_string(),
    }
}

/// One measurement with everything behind it: value, samples, condition, query, why.
fn evidence_line(m: &MetricValue) -> String {
    let mut line = format!(
        "{} = {} {}",
        m.metric,
        m.value.map_or_else(|| "no data".to_string(), short),
        outcome_word(m.outcome)
    );
    if let Some(c) = &m.condition {
        let _ = write!(line, " `{c}`");
    }
    if let Some(n) = m.samples {
        let _ = write!(line, ", {n} samples");
    }
    if let Some(msg) = &m.message {
        let _ = write!(line, "\n    {msg}");
    }
    if let Some(q) = &m.query {
        let _ = write!(line, "\n    query: {q}");
    }
    line
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "ok",
        Outcome::Failure => "failed",
        Outcome::Inconclusive => "inconclusive",
        Outcome::Error => "error",
    }
}

/// `errors 0.002 n=240 ok \`result <= 0.01\``: the values measured this round against their conditions.
fn values(measured: &[MetricValue]) -> Option<String> {
    if measured.is_empty() {
        return None;
    }
    let parts: Vec<String> = measured
        .iter()
        .map(|m| {
            let mut value = m.value.map_or_else(|| "no data".to_string(), short);
            if let Some(n) = m.samples {
                let _ = write!(value, " n={n}");
            }
            match (&m.condition, m.outcome) {
                (Some(c), Outcome::Success) => format!("{} {value} ok `{c}`", m.metric),
                (Some(c), Outcome::Failure) => format!("{} {value} missed `{c}`", m.metric),
                (_, Outcome::Error) => format!("{} error", m.metric),
                _ => format!("{} {value}", m.metric),
            }
        })
        .collect();
    Some(parts.join(", "))
}
