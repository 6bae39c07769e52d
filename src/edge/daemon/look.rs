//! One look at many rollouts, executed in rounds.
//!
//! Each round plans every rollout still moving and executes the plans' effects in the order
//! [`Plan::effects`] gives them, *batched across rollouts*: every rollout's effects before its
//! record (a step back: set traffic, read back), then **one** status push for all of them,
//! then every rollout's effects after its record (a step toward the canary: set traffic;
//! measure; the revert branch). Write-ahead holds per batch: no traffic toward a canary is set
//! before the push that records it has been accepted.
//!
//! A rejected push (someone else moved the status branch) re-fetches, re-plans the round from
//! what the remote holds, and pushes again. A round that records nothing pushes nothing.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use super::snapshot::Snapshot;
use super::{Daemon, PUSH_ATTEMPTS, ROUNDS, message};
use crate::core::model::{Catalog, ERROR_RETRY, Observed, Revision, Rollout};
use crate::core::plan::{self, Effect, Inputs, Plan, Sample};
use crate::core::record::{MetricValue, Seen, StatusFile};
use crate::edge::git::{GateCommit, Push};
use crate::edge::router::{Router, RouterError};
use crate::edge::telemetry::{ErrorClass, Event as Tele, ReconcileOutcome};

/// How many router or metric calls one look keeps in flight at once.
const CONCURRENCY: usize = 16;

/// Up to this many status changes in one round get a commit each; more are folded into one
/// (each commit rewrites the `status/` tree, which holds every rollout).
const CHAIN: usize = 32;

/// One rollout's work during a look.
pub(super) struct Work {
    pub name: String,
    /// The rollout's index in the catalog, or why its spec is invalid.
    pub spec: Result<usize, Vec<String>>,
    /// The status file as Git holds it.
    pub in_git: Arc<StatusFile>,
    /// What plans start from: `in_git`, unless a step back was applied that Git has not taken
    /// yet (then that is the truth until it does).
    pub recorded: Arc<StatusFile>,
    samples: Vec<Sample>,
    measured: Vec<MetricValue>,
    revert_branch: Option<String>,
    router_error: Option<String>,
    live: Option<Observed>,
    /// The router refused this round's traffic.
    apply_failed: bool,
    plan: Option<Plan>,
    /// `plan`'s effects, in order.
    effects: Vec<Effect>,
    file: Option<StatusFile>,
    /// Set when the rollout is done for this look: when to look at it again.
    done: Option<Option<DateTime<Utc>>>,
}

impl Work {
    pub fn new(
        name: String,
        spec: Result<usize, Vec<String>>,
        in_git: Arc<StatusFile>,
        unrecorded: Option<Arc<StatusFile>>,
    ) -> Work {
        let recorded = unrecorded.unwrap_or_else(|| in_git.clone());
        Work {
            name,
            spec,
            in_git,
            recorded,
            samples: Vec::new(),
            measured: Vec::new(),
            revert_branch: None,
            router_error: None,
            live: None,
            apply_failed: false,
            plan: None,
            effects: Vec::new(),
            file: None,
            done: None,
        }
    }

    /// Measurements taken since the last record, to plan with.
    pub fn with_measured(mut self, samples: Vec<Sample>, values: Vec<MetricValue>) -> Work {
        self.samples = samples;
        self.measured = values;
        self
    }

    /// When this rollout asked to be looked at again.
    pub fn wake(&self) -> Option<DateTime<Utc>> {
        self.done.flatten()
    }

    fn finish(&mut self, wake: Option<DateTime<Utc>>) {
        self.done = Some(wake);
    }

    fn active(&self) -> bool {
        self.done.is_none()
    }

    /// Where `effect` stands against the record in this round's plan, if the plan has both.
    fn beside_record(&self, effect: Effect) -> Option<Ordering> {
        let at = |e| self.effects.iter().position(|x| *x == e);
        Some(at(effect)?.cmp(&at(Effect::Record)?))
    }

    fn before_record(&self, effect: Effect) -> bool {
        self.beside_record(effect) == Some(Ordering::Less)
    }

    fn after_record(&self, effect: Effect) -> bool {
        self.beside_record(effect) == Some(Ordering::Greater)
    }
}

/// The driver of router `router`, or why there is none, as a status file says it.
fn running(driver: Option<Arc<dyn Router>>, router: &str) -> Result<Arc<dyn Router>, String> {
    driver.ok_or_else(|| format!("router `{router}` is not running"))
}

/// Awaits `call` to router `router` within `timeout`; why it failed, as a status file says it.
pub(super) async fn within<T>(
    router: &str,
    timeout: std::time::Duration,
    call: impl Future<Output = Result<T, RouterError>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("router `{router}` did not answer in time")),
    }
}

/// Runs `jobs` with at most [`CONCURRENCY`] in flight; results in the order given.
pub(super) async fn bounded<T: Send + 'static>(
    jobs: Vec<impl Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let total = jobs.len();
    let mut results: Vec<Option<T>> = (0..total).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut jobs = jobs.into_iter().enumerate();
    loop {
        while set.len() < CONCURRENCY
            && let Some((i, job)) = jobs.next()
        {
            set.spawn(async move { (i, job.await) });
        }
        match set.join_next().await {
            Some(Ok((i, value))) => results[i] = Some(value),
            Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            None => break,
        }
    }
    results.into_iter().flatten().collect()
}

impl Daemon {
    /// Plans and executes `works` until each has nothing more to do now.
    pub(super) async fn run_rounds(&mut self, snapshot: &Snapshot, works: &mut [Work]) {
        let (head, catalog) = (snapshot.head.as_str(), &snapshot.catalog);
        let mut attempts = 0;
        let mut round = 0;
        while round < ROUNDS && works.iter().any(Work::active) {
            round += 1;
            if self.shutdown.is_cancelled() {
                return;
            }
            self.plan_round(snapshot, works).await;
            // Back toward stable: applied and read back before the record; in a rollout group,
            // dependents before the members they depend on.
            let waves = crate::core::group::waves(catalog);
            let last = waves.values().copied().max().unwrap_or(0);
            for wave in 0..=last {
                let in_wave = |w: &Work| waves.get(&w.name).copied().unwrap_or(0) == wave;
                self.set_traffic(catalog, works, |w| {
                    w.before_record(Effect::SetTraffic) && in_wave(w)
                })
                .await;
            }
            self.read_back(catalog, works, |w| w.before_record(Effect::ReadBack))
                .await;
            let now = self.settings.clock.now();
            for w in works.iter_mut().filter(|w| w.active()) {
                let rollout = w.spec.as_ref().ok().map(|&i| &catalog.rollouts[i]);
                let plan = w.plan.as_ref().expect("planned this round");
                let branch = w.revert_branch.as_deref().or(w.recorded.revert.as_deref());
                let pr = branch.and_then(|b| self.prs.get(b));
                let seen = Seen {
                    spec_commit: head,
                    live: w.live.as_ref(),
                    router_error: w.router_error.as_deref(),
                    measured: &w.measured,
                    revert_branch: w.revert_branch.as_deref(),
                    revert_pr: pr.map(String::as_str),
                    now,
                };
                w.file = Some(w.recorded.after(plan, rollout, seen));
            }
            let groups = self.group_files(snapshot, works, now);
            match self.record_round(works, &groups).await {
                Recorded::Rejected => {
                    attempts += 1;
                    self.telemetry.record(Tele::PushRejected);
                    if attempts >= PUSH_ATTEMPTS {
                        for w in works.iter_mut().filter(|w| w.active()) {
                            self.error(
                                ErrorClass::Git,
                                Some(&w.name),
                                "status push rejected too often; will retry".into(),
                            );
                            self.count(&w.name, ReconcileOutcome::Error);
                            w.finish(Some(now + chrono::Duration::seconds(1)));
                        }
                        return;
                    }
                    // Someone else moved the status branch: plan again from theirs, with the
                    // same measurements (an abort they prove is derived again).
                    self.refetch(works).await;
                    round -= 1;
                    continue;
                }
                Recorded::Done => {}
            }
            self.after_record(snapshot, works).await;
        }
        let soon = self.settings.clock.now() + chrono::Duration::seconds(1);
        for w in works.iter_mut().filter(|w| w.active()) {
            // Still moving (a weight that does not read back, say): look again soon, not now.
            w.finish(Some(soon));
        }
    }

    /// Reads every active rollout's router and plans it. The members of a rollout group are
    /// planned with what their group allows (`core::group`), and planned again while that
    /// changes with what the others' plans say (a member that becomes ready in this round lets
    /// the others move in it too).
    async fn plan_round(&mut self, snapshot: &Snapshot, works: &mut [Work]) {
        let catalog = &snapshot.catalog;
        self.read_back(catalog, works, |w| w.spec.is_ok()).await;
        let now = self.settings.clock.now();
        let recorded = group_gates(snapshot, works, false);
        let mut gates = recorded.clone();
        let mut again: Option<Vec<String>> = None;
        // A gate changes at most twice a round: ready, then open (or aborted).
        for _ in 0..3 {
            for w in works.iter_mut().filter(|w| w.active()) {
                if again.as_ref().is_some_and(|names| !names.contains(&w.name)) {
                    continue;
                }
                let plan = plan_work(snapshot, w, gates.get(&w.name), now);
                w.effects = plan.effects();
                w.plan = Some(plan);
                w.apply_failed = false;
            }
            if catalog.groups.is_empty() {
                break;
            }
            let next = crate::core::group::replan(&recorded, group_gates(snapshot, works, true));
            let changed: Vec<String> = works
                .iter()
                .filter(|w| w.active() && next.get(&w.name) != gates.get(&w.name))
                .map(|w| w.name.clone())
                .collect();
            gates = next;
            if changed.is_empty() {
                break;
            }
            again = Some(changed);
        }
    }

    /// Reads the live weights of the active rollouts that `which` picks: each router once,
    /// for all its services, the routers concurrently.
    async fn read_back(
        &mut self,
        catalog: &Arc<Catalog>,
        works: &mut [Work],
        which: impl Fn(&Work) -> bool,
    ) {
        // Router → the works on it, and their services.
        let mut by_router: BTreeMap<&str, (Vec<usize>, Vec<String>)> = BTreeMap::new();
        for (k, w) in works.iter().enumerate() {
            if !w.active() || !which(w) {
                continue;
            }
            let Ok(&i) = w.spec.as_ref() else { continue };
            let target = catalog.rollouts[i].target();
            let (picked, services) = by_router.entry(&target.router).or_default();
            picked.push(k);
            services.push(target.service.clone());
        }
        let mut groups = Vec::new();
        let mut jobs = Vec::new();
        let mut names = Vec::new();
        for (router, (picked, services)) in by_router {
            let driver = self.driver(router, catalog).await;
            let router = router.to_string();
            names.push(router.clone());
            let timeout = self.settings.router_timeout;
            jobs.push(async move {
                let d = running(driver, &router)?;
                within(&router, timeout, d.observe_all(&services)).await
            });
            groups.push(picked);
        }
        let mut reads = Vec::new();
        let answers = bounded(jobs).await;
        for ((router, picked), all) in names.into_iter().zip(groups).zip(answers) {
            self.routers_read
                .insert(router, all.as_ref().err().cloned());
            for k in picked {
                let Ok(&i) = works[k].spec.as_ref() else {
                    continue;
                };
                let service = &catalog.rollouts[i].target().service;
                let read = match &all {
                    Ok(all) => match all.get(service) {
                        Some(Ok(o)) => Ok(o.clone()),
                        Some(Err(e)) => Err(e.to_string()),
                        None => Err(format!("router did not report service `{service}`")),
                    },
                    Err(why) => Err(why.clone()),
                };
                reads.push((k, read));
            }
        }
        for (k, read) in reads {
            let w = &mut works[k];
            match read {
                Ok(o) => {
                    w.live = Some(o);
                    w.router_error = None;
                }
                Err(why) => {
                    self.error(ErrorClass::Router, Some(&w.name), why.clone());
                    w.live = None;
                    w.router_error = Some(why);
                }
            }
        }
    }

    /// Sets the planned traffic of the active rollouts that `which` picks, concurrently. A
    /// rollout whose router did not take it is still recorded (its status says the weight is
    /// unverified), then waits to retry: past the progress deadline, the spec's policy applies.
    async fn set_traffic(
        &mut self,
        catalog: &Arc<Catalog>,
        works: &mut [Work],
        which: impl Fn(&Work) -> bool,
    ) {
        let mut picked = Vec::new();
        let mut jobs = Vec::new();
        for (k, w) in works.iter().enumerate() {
            if !w.active() || !which(w) {
                continue;
            }
            let (Ok(&i), Some(traffic)) = (
                w.spec.as_ref(),
                w.plan.as_ref().and_then(|p| p.traffic.clone()),
            ) else {
                continue;
            };
            let r = &catalog.rollouts[i];
            let target = r.target();
            let driver = self.running(&target.router);
            let (router, service) = (target.router.clone(), target.service.clone());
            let timeout = self.settings.router_timeout;
            picked.push((k, i));
            jobs.push(async move {
                let started = crate::edge::clock::instant();
                let result = match running(driver, &router) {
                    Ok(d) => within(&router, timeout, d.apply(&service, &traffic)).await,
                    Err(why) => Err(why),
                }
                .map(|()| started.elapsed().as_secs_f64());
                (result, traffic)
            });
        }
        for ((k, i), (result, traffic)) in picked.into_iter().zip(bounded(jobs).await) {
            let r: &Rollout = &catalog.rollouts[i];
            let target = r.target();
            match result {
                Ok(seconds) => {
                    self.telemetry.record(Tele::RouterApply {
                        router: target.router.clone(),
                        seconds,
                    });
                    let canary = target
                        .canary
                        .as_ref()
                        .and_then(|c| traffic.backends.get(&c.name))
                        .map_or(0, |w| w.get());
                    self.telemetry.record(Tele::WeightChanged {
                        rollout: r.name.clone(),
                        router: target.router.clone(),
                        canary_weight: canary,
                    });
                }
                Err(why) => {
                    // Recorded all the same (a step back says what the router reports); the
                    // rollout then waits to retry.
                    self.error(ErrorClass::Router, Some(&r.name), why);
                    works[k].apply_failed = true;
                }
            }
        }
    }

    /// The status file of each group with a member in this look, when it says something new:
    /// from the members' files as this round assembled them (others' as Git holds them).
    fn group_files(
        &self,
        snapshot: &Snapshot,
        works: &[Work],
        now: DateTime<Utc>,
    ) -> Vec<crate::core::group::GroupStatusFile> {
        use crate::core::group::{MemberState, summary};
        let catalog = &snapshot.catalog;
        let mut out = Vec::new();
        for g in &catalog.groups {
            if !g
                .members
                .iter()
                .any(|m| works.iter().any(|w| w.name == m.rollout))
            {
                continue;
            }
            let mut files = BTreeMap::new();
            for m in &g.members {
                let file = match works.iter().find(|w| w.name == m.rollout) {
                    Some(w) => w.file.as_ref().or(Some(w.recorded.as_ref())),
                    None => snapshot
                        .statuses
                        .get(&m.rollout)
                        .and_then(|f| f.as_ref().ok())
                        .map(|f| f.as_ref()),
                };
                if let Some(f) = file {
                    files.insert(m.rollout.as_str(), f);
                }
            }
            let mut members = BTreeMap::new();
            for (name, f) in &files {
                if let Some(i) = catalog.index_of(name) {
                    members.insert(
                        *name,
                        MemberState {
                            spec: &catalog.rollouts[i],
                            status: &f.status,
                        },
                    );
                }
            }
            let prefix = format!("canaryd/revert/{}-", g.name);
            let revert = files
                .values()
                .find_map(|f| f.revert.clone().filter(|b| b.starts_with(&prefix)));
            let file = summary(g, &members, revert, now);
            if self
                .group_files
                .get(&g.name)
                .is_some_and(|last| last.same_substance(&file))
            {
                continue;
            }
            out.push(file);
        }
        out
    }

    /// Pushes every active rollout's new status file, and its groups' (`groups`), in one push.
    async fn record_round(
        &mut self,
        works: &mut [Work],
        groups: &[crate::core::group::GroupStatusFile],
    ) -> Recorded {
        let mut batch = Vec::new();
        for (k, w) in works.iter().enumerate() {
            let (Some(file), Some(plan)) = (&w.file, &w.plan) else {
                continue;
            };
            if !w.active() || file.same_substance(&w.in_git) {
                continue;
            }
            match file.to_yaml() {
                Ok(yaml) => {
                    let message = message::status_commit(file, &plan.action, &w.measured);
                    batch.push((k, yaml, message));
                }
                Err(e) => self.error(
                    ErrorClass::Status,
                    Some(&w.name),
                    format!("cannot write the status file: {e}"),
                ),
            }
        }
        let mut group_commits = Vec::new();
        for g in groups {
            match g.to_yaml() {
                Ok(yaml) => group_commits.push((
                    format!("groups/{}", g.group),
                    yaml,
                    format!("{}\n\nGroup: {}\n", g.subject(), g.group),
                )),
                Err(e) => self.error(
                    ErrorClass::Status,
                    None,
                    format!("cannot write the status file of group `{}`: {e}", g.group),
                ),
            }
        }
        if batch.is_empty() && group_commits.is_empty() {
            return Recorded::Done;
        }
        let mut commits: Vec<(String, String, String)> = batch
            .iter()
            .map(|(k, yaml, message)| (works[*k].name.clone(), yaml.clone(), message.clone()))
            .collect();
        commits.extend(group_commits);
        let pushed = self.git(move |m| commit_all(m, &commits)).await;
        let now = self.settings.clock.now();
        match pushed {
            Ok(Push::Pushed(_) | Push::Unchanged) => {
                for g in groups {
                    self.group_files.insert(g.group.clone(), g.clone());
                }
                for (k, _, message) in batch {
                    let w = &mut works[k];
                    let file = Arc::new(w.file.clone().expect("assembled"));
                    self.unrecorded.remove(&w.name);
                    w.in_git = file;
                    self.telemetry.record(Tele::StatusCommitted {
                        rollout: w.name.clone(),
                        summary: message.lines().next().unwrap_or_default().to_string(),
                    });
                }
                Recorded::Done
            }
            Ok(Push::Rejected) => Recorded::Rejected,
            Err(e) => {
                let poll = chrono::Duration::from_std(self.settings.poll).unwrap_or_default();
                for (k, _, _) in batch {
                    let w = &mut works[k];
                    self.error(
                        ErrorClass::Git,
                        Some(&w.name),
                        format!("cannot record status: {e}"),
                    );
                    let plan = w.plan.as_ref().expect("planned");
                    if w.before_record(Effect::SetTraffic) {
                        // Traffic is already safe; keep the truth until Git takes it.
                        let file = Arc::new(w.file.clone().expect("assembled"));
                        self.unrecorded.insert(w.name.clone(), file);
                    }
                    self.outcome(&w.name, plan, ReconcileOutcome::Error);
                    // Nothing toward the canary happens without a record.
                    w.finish(Some(now + poll));
                }
                Recorded::Done
            }
        }
    }

    /// The status files of the active rollouts as the remote has them now.
    async fn refetch(&mut self, works: &mut [Work]) {
        let statuses = match self.read(|r, m| r.refetch_statuses(m)).await {
            Ok(statuses) => statuses,
            Err(e) => {
                self.error(ErrorClass::Git, None, e.to_string());
                return;
            }
        };
        let now = self.settings.clock.now();
        for w in works.iter_mut().filter(|w| w.active()) {
            let in_git = match statuses.get(&w.name) {
                Some(Ok(f)) => f.clone(),
                None => Arc::new(StatusFile::new(&w.name, now)),
                Some(Err(e)) => {
                    self.error(
                        ErrorClass::Status,
                        Some(&w.name),
                        format!("status file of `{}` cannot be read: {e}", w.name),
                    );
                    w.finish(None);
                    continue;
                }
            };
            w.recorded = self
                .unrecorded
                .get(&w.name)
                .cloned()
                .unwrap_or_else(|| in_git.clone());
            w.in_git = in_git;
        }
    }

    /// The effects after the record: traffic toward the canary, the revert branch, and the
    /// measurements; decides which rollouts go on to another round.
    async fn after_record(&mut self, snapshot: &Snapshot, works: &mut [Work]) {
        let (head, catalog) = (snapshot.head.as_str(), &snapshot.catalog);
        let now = self.settings.clock.now();
        for w in works.iter_mut().filter(|w| w.active()) {
            // Recorded (or nothing new to record): the measurements are spent.
            w.samples.clear();
            w.measured.clear();
            let file = w.file.take().expect("assembled");
            self.step_finished(&w.name, &w.recorded, &file, now);
            w.recorded = Arc::new(file);
        }
        self.set_traffic(catalog, works, |w| w.after_record(Effect::SetTraffic))
            .await;
        let releases = releases(snapshot, works);
        let mut measure = Vec::new();
        for (k, w) in works.iter_mut().enumerate() {
            if !w.active() {
                continue;
            }
            let plan = w.plan.take().expect("planned");
            if w.apply_failed {
                // The status says the weight is unverified; the planner retries and, past the
                // progress deadline, applies the spec's policy.
                self.outcome(&w.name, &plan, ReconcileOutcome::Error);
                w.finish(Some(
                    now + chrono::Duration::from_std(ERROR_RETRY).unwrap_or_default(),
                ));
                continue;
            }
            let outcome = match &plan.action {
                plan::Action::Wait { .. } => ReconcileOutcome::Unchanged,
                plan::Action::Hold { .. } | plan::Action::Invalid => ReconcileOutcome::Held,
                _ => ReconcileOutcome::Changed,
            };
            self.outcome(&w.name, &plan, outcome);
            let Ok(&i) = w.spec.as_ref() else {
                w.finish(plan.wake);
                continue;
            };
            let r = &catalog.rollouts[i];
            // A member of a group release: one branch restores every member of the release.
            let branch = match (&plan.revert, releases.get(&r.name)) {
                (Some(revert), Some(release)) => {
                    self.revert_release(catalog, release, head, revert).await
                }
                (Some(revert), None) => self.revert(r, head, revert).await,
                (None, _) => None,
            };
            if let Some(branch) = branch
                && w.recorded.revert.as_deref() != Some(branch.as_str())
            {
                // Plan again, to record where the revert branch is.
                w.revert_branch = Some(branch);
                continue;
            }
            if plan.measure.is_empty() {
                if plan.traffic.is_none() {
                    w.finish(plan.wake);
                }
                // else: read the weights back next round, and record them verified
                continue;
            }
            measure.push((k, i, plan));
        }
        for (k, i, plan) in measure {
            // On its own task: a slow provider holds up this rollout only. The result comes
            // back as an event, and this rollout is not planned again until it has.
            let r = &catalog.rollouts[i];
            let driver = self.driver(&r.target().router, catalog).await;
            let w = &mut works[k];
            let job = super::measure::take_all(
                r.clone(),
                plan.measure.clone(),
                driver,
                self.providers.clone(),
                now,
            );
            let (tx, stop, name) = (
                self.measured_tx.clone(),
                self.shutdown.clone(),
                w.name.clone(),
            );
            self.measuring.insert(w.name.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    (samples, values, errors) = job => {
                        let _ = tx.send(super::measure::Measured { rollout: name, samples, values, errors });
                    }
                }
            });
            w.finish(None);
        }
    }

    /// Counts the plan's outcome and announces lifecycle changes.
    fn outcome(&self, name: &str, plan: &Plan, outcome: ReconcileOutcome) {
        self.count(name, outcome);
        if outcome == ReconcileOutcome::Error {
            return;
        }
        match &plan.action {
            plan::Action::Abort { evidence } => self.telemetry.record(Tele::Aborted {
                rollout: name.to_string(),
                reason: evidence.summary.clone(),
            }),
            plan::Action::Promote => self.telemetry.record(Tele::Promoted {
                rollout: name.to_string(),
            }),
            _ => {}
        }
    }

    fn count(&self, name: &str, outcome: ReconcileOutcome) {
        self.telemetry.record(Tele::Reconciled {
            rollout: name.to_string(),
            outcome,
        });
    }
}

/// How a round's push went.
enum Recorded {
    /// Pushed, or nothing to push, or failed (the rollouts concerned are done for this look).
    Done,
    /// The remote moved: plan the round again from what it holds.
    Rejected,
}

/// Commits the status files of one round (rollout, YAML, message) and pushes them at once:
/// one commit per rollout, chained, so that `git log -- status/<name>.yaml` reads as that
/// rollout's story; past [`CHAIN`] changes in one round (a cold start), one commit whose
/// message has each rollout's line.
fn commit_all(
    m: &crate::edge::git::Mirror,
    commits: &[(String, String, String)],
) -> Result<Push, crate::edge::git::GitError> {
    let chain: Vec<(BTreeMap<String, Option<String>>, String)> = if commits.len() <= CHAIN {
        commits
            .iter()
            .map(|(name, yaml, message)| {
                (
                    BTreeMap::from([(name.clone(), Some(yaml.clone()))]),
                    message.clone(),
                )
            })
            .collect()
    } else {
        let changes = commits
            .iter()
            .map(|(name, yaml, _)| (name.clone(), Some(yaml.clone())))
            .collect();
        let messages: Vec<&str> = commits.iter().map(|(_, _, m)| m.as_str()).collect();
        vec![(changes, message::folded(&messages))]
    };
    m.commit_status_chain(&chain)
}

/// The release each member of a group runs in, by rollout name, with every member of that
/// release: as this round planned it, or, for a member not in this look (its measurements still
/// out), as Git holds it. What one revert branch restores.
fn releases(snapshot: &Snapshot, works: &[Work]) -> BTreeMap<String, super::revert::Release> {
    let catalog = &snapshot.catalog;
    let mut out = BTreeMap::new();
    for g in &catalog.groups {
        let mut by_release: BTreeMap<Revision, Vec<(usize, Revision)>> = BTreeMap::new();
        for m in &g.members {
            let Some(i) = catalog.index_of(&m.rollout) else {
                continue;
            };
            let status = match works.iter().find(|w| w.name == m.rollout) {
                Some(w) => w.plan.as_ref().map(|p| &p.status),
                None => snapshot
                    .statuses
                    .get(&m.rollout)
                    .and_then(|f| f.as_ref().ok())
                    .map(|f| &f.status),
            };
            let spec = &catalog.rollouts[i];
            if let Some(release) = status.and_then(|s| crate::core::group::release_of(spec, s)) {
                by_release
                    .entry(release.clone())
                    .or_default()
                    .push((i, spec.revision.clone()));
            }
        }
        for (release, members) in by_release {
            for &(i, _) in &members {
                out.insert(
                    catalog.rollouts[i].name.clone(),
                    super::revert::Release {
                        group: g.name.clone(),
                        release: release.clone(),
                        members: members.clone(),
                    },
                );
            }
        }
    }
    out
}

/// One rollout's plan from its recorded status, the measurements taken, its pending gates and
/// what its group allows.
fn plan_work(
    snapshot: &Snapshot,
    w: &Work,
    group: Option<&crate::core::group::GroupGate>,
    now: DateTime<Utc>,
) -> Plan {
    match &w.spec {
        Err(errors) => plan::plan_invalid(&w.recorded.status, errors.clone()),
        Ok(i) => {
            let r = &snapshot.catalog.rollouts[*i];
            let gates = plan::pending_gates(
                snapshot
                    .gates
                    .get(&r.name)
                    .into_iter()
                    .flatten()
                    .map(GateCommit::parts),
                r,
                w.recorded.status.last_gate.as_deref(),
            );
            plan::plan(Inputs {
                spec: r,
                recorded: &w.recorded.status,
                live: w.live.as_ref(),
                samples: &w.samples,
                gates: &gates,
                now,
                group,
            })
        }
    }
}

/// What each group allows each of its members, by rollout name: from the members' statuses as
/// this look planned them (`planned`), else as recorded, and for a member not in this look, as
/// Git holds it.
fn group_gates(
    snapshot: &Snapshot,
    works: &[Work],
    planned: bool,
) -> BTreeMap<String, crate::core::group::GroupGate> {
    crate::core::group::all_gates(&snapshot.catalog, |name| {
        match works.iter().find(|w| w.name == name) {
            Some(w) if planned => w.plan.as_ref().map(|p| &p.status),
            Some(w) => Some(&w.recorded.status),
            None => snapshot
                .statuses
                .get(name)
                .and_then(|f| f.as_ref().ok())
                .map(|f| &f.status),
        }
    })
}
