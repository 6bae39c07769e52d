//! The forge after the traffic: commit statuses on the commit that started each rollout, and
//! the revert pull request after an abort.
//!
//! The loop never waits for the forge. It derives what the forge should show from each
//! rollout's recorded status and hands changes to a worker task, which sends them with its own
//! retries: a transient failure (5xx, rate limit, unreachable) is retried with backoff, later
//! work for the same rollout replaces earlier work not yet sent, and a permanent failure is
//! reported and dropped. Everything sent is idempotent (the pull request is looked up before it
//! is opened), so after a restart the current state is simply sent once more.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forge::{AnyForge, CommitReport, Forge as _, ForgeConfig, ReportState, RevertRequest};
use crate::model::{Revision, Rollout};
use crate::number::short as value;
use crate::progress::Progress;
use crate::record::{self, StatusFile};
use crate::telemetry::{ErrorClass, Event as Tele, Telemetry};

use super::{Daemon, short};

/// The first retry of a transient failure; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One thing for the forge to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    Report(CommitReport),
    RevertPr { rollout: String, pr: RevertRequest },
}

impl Work {
    /// Later work under the same key replaces earlier work not yet sent.
    fn key(&self) -> String {
        match self {
            Work::Report(r) => format!("status {} {}", r.context, r.sha),
            Work::RevertPr { pr, .. } => format!("pr {}", pr.head),
        }
    }
}

/// The last report handed over for a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reported {
    revision: Revision,
    sha: String,
    state: ReportState,
    description: String,
}

/// The daemon's handle on the forge worker.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Work>,
    config: ForgeConfig,
    /// What was last handed over, per rollout.
    reported: BTreeMap<String, Reported>,
    /// Revert branches whose pull request was handed over.
    prs: BTreeSet<String>,
}

impl Outbox {
    /// Starts the worker for `forge`, which sends each pull request it opens on `answered`;
    /// it stops with `shutdown`.
    pub fn start(
        forge: AnyForge,
        config: ForgeConfig,
        answered: mpsc::UnboundedSender<PrOpened>,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> Outbox {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(worker(forge, rx, answered, telemetry, shutdown));
        Outbox {
            tx,
            config,
            reported: BTreeMap::new(),
            prs: BTreeSet::new(),
        }
    }
}

/// A revert pull request the forge opened (or already had), back from the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrOpened {
    pub rollout: String,
    /// The revert branch it is opened from.
    pub branch: String,
    pub url: String,
}

async fn worker(
    forge: AnyForge,
    mut rx: mpsc::UnboundedReceiver<Work>,
    answered: mpsc::UnboundedSender<PrOpened>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    // key → (work, when due, attempts so far)
    let mut pending: BTreeMap<String, (Work, Instant, u32)> = BTreeMap::new();
    loop {
        let next_due = pending.values().map(|(_, due, _)| *due).min();
        let sleep = async {
            match next_due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            work = rx.recv() => match work {
                Some(w) => {
                    pending.insert(w.key(), (w, crate::clock::instant(), 0));
                    continue;
                }
                None => return,
            },
            () = sleep => {}
        }
        let now = crate::clock::instant();
        let Some(key) = pending
            .iter()
            .find(|(_, (_, due, _))| *due <= now)
            .map(|(k, _)| k.clone())
        else {
            continue;
        };
        let Some((work, _, attempts)) = pending.remove(&key) else {
            continue;
        };
        let sent = match &work {
            Work::Report(r) => forge.report(r).await.map(|()| None),
            Work::RevertPr { pr, .. } => forge.revert_pr(pr).await.map(Some),
        };
        let rollout = match &work {
            Work::Report(r) => r.context.trim_start_matches("canaryd/").to_string(),
            Work::RevertPr { rollout, .. } => rollout.clone(),
        };
        match sent {
            Ok(Some(pr)) => {
                tracing::info!(rollout = %rollout, number = pr.number, url = %pr.url, created = pr.created, "revert pull request ready");
                if let Work::RevertPr { pr: req, .. } = &work {
                    let _ = answered.send(PrOpened {
                        rollout: rollout.clone(),
                        branch: req.head.clone(),
                        url: pr.url.clone(),
                    });
                }
            }
            Ok(None) => tracing::debug!(rollout = %rollout, key = %key, "forge updated"),
            Err(e) if e.is_transient() => {
                let backoff = FIRST_BACKOFF
                    .saturating_mul(2u32.saturating_pow(attempts))
                    .min(MAX_BACKOFF);
                let wait = e.retry_after().map_or(backoff, |r| r.max(backoff));
                telemetry.record(Tele::Error {
                    class: ErrorClass::Forge,
                    rollout: Some(rollout),
                    message: format!("{e}; retrying in {}s", wait.as_secs()),
                });
                // Unless newer work for the same key came meanwhile.
                pending
                    .entry(key)
                    .or_insert((work, crate::clock::instant() + wait, attempts + 1));
            }
            Err(e) => telemetry.record(Tele::Error {
                class: ErrorClass::Forge,
                rollout: Some(rollout),
                message: format!("{e}; not retried"),
            }),
        }
    }
}

/// The revision a rollout's commit status speaks of: the one being rolled back when going back
/// (its commit gets "rolled back"), else the current one.
pub fn reported_revision(file: &StatusFile) -> Option<&Revision> {
    match &file.status.progress {
        Progress::RollingBack { from, .. } | Progress::RolledBack { from, .. } => Some(from),
        p => p.revision(),
    }
}

/// What the commit that started a rollout should say about it: `None` while there is no
/// canary run to speak of.
pub fn report_of(file: &StatusFile) -> Option<(ReportState, String)> {
    let n = file.steps;
    let (state, text) = match &file.status.progress {
        Progress::Progressing { run }
        | Progress::Paused { run, .. }
        | Progress::Analysing { run, .. } => {
            let doing = match &file.status.progress {
                Progress::Paused { .. } => ", paused",
                Progress::Analysing { .. } => ", analysing",
                _ => "",
            };
            (
                ReportState::Pending,
                format!("step {}/{n}, canary {}{doing}", run.step + 1, run.weight),
            )
        }
        Progress::Promoted { .. } => (ReportState::Success, "promoted: canary at 100%".into()),
        Progress::Aborted { evidence, .. } => (
            ReportState::Failure,
            format!("aborted: {}", evidence.summary),
        ),
        Progress::RollingBack { .. } | Progress::RolledBack { .. } => (
            ReportState::Error,
            "rolled back: the spec was reverted".into(),
        ),
        _ => return None,
    };
    Some((state, text))
}

/// The web address of `path` on `branch`, for links in pull requests and statuses.
pub fn file_url(config: &ForgeConfig, branch: &str, path: &str) -> String {
    let ForgeConfig::GitHub(g) = config;
    let web = match g.api_url.as_deref().map(|u| u.trim_end_matches('/')) {
        None | Some("https://api.github.com") => "https://github.com".to_string(),
        // GitHub Enterprise: https://HOST/api/v3 → https://HOST
        Some(api) => api.trim_end_matches("/api/v3").to_string(),
    };
    format!("{web}/{}/{}/blob/{branch}/{path}", g.owner, g.repo)
}

/// The revert pull request's body: the evidence, where the rollout got to, what merging does.
pub fn pr_body(r: &Rollout, file: &StatusFile, change: &str, status_url: &str) -> String {
    let mut b = String::new();
    let Progress::Aborted {
        revision,
        evidence,
        step,
        weight,
        ..
    } = &file.status.progress
    else {
        return b;
    };
    let _ = writeln!(
        b,
        "canaryd aborted revision `{revision}` of rollout `{}`, started by {change}.\n",
        r.name
    );
    let _ = writeln!(b, "**Why:** {}\n", evidence.summary);
    if !file.analysis.is_empty() {
        let _ = writeln!(
            b,
            "| metric | value | outcome | condition | samples |\n|---|---|---|---|---|"
        );
        // GitHub splits table cells on `|`, even inside backticks.
        let cell = |t: &str| t.replace('|', "\\|");
        for m in &file.analysis {
            let _ = writeln!(
                b,
                "| {} | {} | {:?} | {} | {} |",
                cell(&m.metric),
                m.value.map_or_else(|| "no data".to_string(), value),
                m.outcome,
                m.condition
                    .as_deref()
                    .map_or_else(String::new, |c| format!("`{}`", cell(c))),
                m.samples.map_or_else(String::new, |n| n.to_string()),
            );
        }
        let _ = writeln!(b);
        for m in file.analysis.iter().filter(|m| m.query.is_some()) {
            let q = m.query.as_deref().unwrap_or_default();
            let _ = writeln!(b, "Query of `{}` as sent:\n```\n{q}\n```\n", m.metric);
        }
    }
    if let Some(detail) = &evidence.detail {
        let _ = writeln!(b, "{detail}\n");
    }
    let _ = writeln!(
        b,
        "It got to step {}/{} at canary {weight} before traffic went back to the stable backend. \
         Merging this pull request makes Git agree with the traffic: it restores `{}` as it was \
         before {}.\n",
        step + 1,
        file.steps,
        r.file,
        short(change),
    );
    let _ = writeln!(b, "Status: {status_url}");
    b
}

impl Daemon {
    /// Hands the forge what changed for `r` since it was last handed anything.
    pub(super) async fn tell_forge(&mut self, r: &Rollout, head: &str, file: &StatusFile) {
        let Some((state, description)) = report_of(file) else {
            return;
        };
        let Some(outbox) = &self.outbox else {
            return;
        };
        let Some(revision) = reported_revision(file).cloned() else {
            return;
        };
        let branch_done = file.revert.as_ref().is_none_or(|b| outbox.prs.contains(b));
        let last = outbox.reported.get(&r.name).cloned();
        if last.as_ref().is_some_and(|l| {
            l.revision == revision && l.state == state && l.description == description
        }) && branch_done
        {
            return;
        }
        // "Rolled back" only ends a run this process saw in progress: it must not overwrite an
        // abort's failure, or a promotion's success, with less.
        if state == ReportState::Error
            && !last
                .as_ref()
                .is_some_and(|l| l.revision == revision && l.state == ReportState::Pending)
        {
            return;
        }
        let Some((change, _)) = self.start_of(r, head, &revision).await else {
            return;
        };
        let Some(outbox) = &mut self.outbox else {
            return;
        };
        let status_url = file_url(
            &outbox.config,
            &self.settings.remote.status_branch,
            &record::path_of(&r.name),
        );
        let context = format!("canaryd/{}", r.name);
        // A commit left pending by a revision that gave way to another gets a last word.
        if let Some(old) = &last
            && old.sha != change
            && old.state == ReportState::Pending
        {
            let _ = outbox.tx.send(Work::Report(CommitReport {
                sha: old.sha.clone(),
                context: context.clone(),
                state: ReportState::Error,
                description: format!("superseded by {}", short(&change)),
                target_url: Some(status_url.clone()),
            }));
        }
        let now = Reported {
            revision,
            sha: change.clone(),
            state,
            description: description.clone(),
        };
        if last.as_ref() != Some(&now) {
            let report = CommitReport {
                sha: change.clone(),
                context,
                state,
                description,
                target_url: Some(status_url.clone()),
            };
            if outbox.tx.send(Work::Report(report)).is_ok() {
                outbox.reported.insert(r.name.clone(), now);
            }
        }
        if let Some(branch) = &file.revert
            && !outbox.prs.contains(branch)
            && matches!(file.status.progress, Progress::Aborted { .. })
        {
            let pr = RevertRequest {
                head: branch.clone(),
                base: self.settings.remote.branch.clone(),
                title: format!(
                    "Revert {}: canary of {} aborted by canaryd",
                    r.name,
                    short(&change)
                ),
                body: pr_body(r, file, &change, &status_url),
            };
            let work = Work::RevertPr {
                rollout: r.name.clone(),
                pr,
            };
            if outbox.tx.send(work).is_ok() {
                outbox.prs.insert(branch.clone());
            }
        }
    }
}
