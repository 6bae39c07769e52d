//! `canaryd run`: the loop that fetches specs from Git, reads live weights, executes plans
//! (status commit, traffic, measurements, revert branch) and sleeps until the next look.
//!
//! One task owns all state and handles one closed `Event` at a time; each event carries its
//! data and names the rollouts it concerns, so a rollout's wake time or measurements look at
//! that rollout alone, and a periodic full resync (fetch, every rollout) backs every watch and
//! webhook. A look plans from one `Snapshot` of Git, read in one blocking call.
//! Git work runs on the blocking pool; measurements and router calls on their own tasks. The
//! order of effects is the planner's ([`crate::core::plan::Plan::effects`]): a plan that moves
//! traffic *toward* the canary is recorded in Git first (write-ahead) and not applied at all
//! when Git cannot be written; a plan that moves traffic *back* (abort, rollback) is applied
//! first and recorded after, retried until Git takes it.

mod data_dir;
mod forge;
mod look;
mod measure;
pub mod message;
mod revert;
mod routers;
mod snapshot;

pub(crate) use snapshot::validate_at;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::core::model::Revision;
use crate::core::record::StatusFile;
use crate::core::spec::RouterSpec;
use crate::core::validate::Known;
use crate::edge::admin::Admin;
use crate::edge::clock::Clock;
use crate::edge::git::{self, Author, Mirror, Remote};
use crate::edge::provider;
use crate::edge::router::Router;
use crate::edge::telemetry::{ErrorClass, Event as Tele, Telemetry};
use crate::edge::webhook::{self, WebhookConfig};

/// How many times a rejected status push is re-planned and retried in one look.
const PUSH_ATTEMPTS: usize = 5;
/// How many plans one rollout may execute in one look (apply, verify, measure, record).
const ROUNDS: usize = 4;
/// How far back gate commits and a rollout's history are searched.
pub const HISTORY: usize = 500;

/// Everything `canaryd run` needs, parsed once in `main`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub remote: Remote,
    pub author: Author,
    /// Where the mirror lives.
    pub data_dir: PathBuf,
    /// How often the remote is fetched (and every rollout looked at, the full resync).
    pub poll: Duration,
    /// A local repository to watch for new commits (the remote, when it is a local path).
    pub watch: Option<PathBuf>,
    /// Routers defined in the controller configuration.
    pub routers: BTreeMap<String, RouterSpec>,
    /// Bound on every call to a router.
    pub router_timeout: Duration,
    /// Metric providers (the Prometheus to query), built once at start.
    pub providers: Arc<provider::Providers>,
    /// The forge for revert pull requests and commit statuses.
    pub forge: Option<crate::edge::forge::ForgeConfig>,
    /// Push webhooks, served on the admin listener.
    pub webhook: Option<WebhookConfig>,
    /// Notification sinks and default subscriptions.
    pub notifications: Option<crate::edge::notify::NotifyConfig>,
    /// Credentials for the remote, and the SSH host keys trusted.
    pub git_auth: git::GitAuth,
    /// What the daemon takes for now ([`Clock::System`] but in tests).
    pub clock: Clock,
    /// Routers handed in by the program running the daemon (its tests' in-memory routers),
    /// driven in place of one started from the spec of the same name.
    pub attached: BTreeMap<String, Arc<dyn Router>>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "data dir {} is in use by another canaryd{}",
        .dir.display(),
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock data dir {}", .dir.display())]
    DataDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove stale lock files from the git mirror {}", .dir.display())]
    StaleLocks {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the git mirror")]
    Mirror(#[source] git::GitError),
    #[error("the git worker stopped")]
    Worker,
    #[error("forge: {0}")]
    Forge(crate::edge::forge::ForgeError),
    #[error("notifications: {0}")]
    Notify(String),
}

/// What wakes the loop, with what it brings. Each rollout is in at most one piece of work at
/// a time: its own events (its wake time, its measurements, its pull request) are folded into
/// the next look at it, and a rollout whose measurements are out is not planned until they
/// are back.
#[derive(Debug)]
enum Event {
    /// The poll interval came: fetch, and look at every rollout (the full resync that backs
    /// every watch and webhook).
    Resync,
    /// The watched repository changed on disk, or a webhook said the watched branch moved:
    /// fetch and look at every rollout.
    Fetch,
    /// These rollouts asked to be looked at by now.
    Due(BTreeSet<String>),
    /// Measurements back from their tasks.
    Measured(Vec<measure::Measured>),
    /// The forge opened a revert pull request.
    PrOpened(forge::PrOpened),
    Shutdown,
}

/// Which rollouts a look plans.
#[derive(Debug)]
enum Scope {
    All,
    Only(BTreeSet<String>),
}

impl Scope {
    fn has(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(names) => names.contains(name),
        }
    }

    /// This scope and every member of a group one of its rollouts is in.
    fn with_groups(self, catalog: &crate::core::model::Catalog) -> Scope {
        let Scope::Only(mut names) = self else {
            return Scope::All;
        };
        for g in &catalog.groups {
            if g.members.iter().any(|m| names.contains(&m.rollout)) {
                names.extend(g.members.iter().map(|m| m.rollout.clone()));
            }
        }
        Scope::Only(names)
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let (data_dir, remote, author) = (
        settings.data_dir.clone(),
        settings.remote.clone(),
        settings.author.clone(),
    );
    let auth = settings.git_auth.clone();
    // Held until `run` returns: the mirror is this process's alone meanwhile.
    let (_claim, mirror) = tokio::task::spawn_blocking(move || {
        let claim = data_dir::DataDir::claim(&data_dir)?;
        let mirror_dir = claim.mirror();
        // Git's lock files that a kill left behind; nobody else can be holding them.
        let removed =
            git::clear_stale_locks(&mirror_dir).map_err(|source| DaemonError::StaleLocks {
                dir: mirror_dir.clone(),
                source,
            })?;
        for lock in removed {
            tracing::warn!(lock = %lock.display(), "removed a stale lock file from the git mirror");
        }
        let mirror = Mirror::open(&mirror_dir, remote, author).map_err(DaemonError::Mirror)?;
        Ok::<_, DaemonError>((claim, mirror.with_auth(auth)))
    })
    .await
    .map_err(|_| DaemonError::Worker)??;
    let (changed_tx, mut changed_rx) = mpsc::channel::<()>(1);
    let (pushed_tx, mut pushed_rx) = mpsc::channel::<()>(1);
    // At most one measurement task per rollout is in flight, which bounds this channel.
    let (measured_tx, mut measured_rx) = mpsc::unbounded_channel::<measure::Measured>();
    // At most one pull request per revert branch.
    let (pr_tx, mut pr_rx) = mpsc::unbounded_channel::<forge::PrOpened>();
    if let Some(hooks) = &settings.webhook {
        // A push reported by webhook wakes the loop at once: the remote has the whole push.
        let routes = webhook::routes(
            hooks,
            &settings.remote.branch,
            pushed_tx,
            admin.telemetry.clone(),
        );
        admin.mount(routes);
        tracing::info!(
            github = webhook::GITHUB_PATH,
            generic = webhook::GENERIC_PATH,
            "webhooks served on the admin address"
        );
    }
    let _watcher = settings.watch.as_ref().and_then(|path| {
        watch::watch(
            path,
            &settings.remote.branch,
            changed_tx.clone(),
            &admin.telemetry,
        )
    });
    // The routers' own counters (the embedded router's) on /metrics.
    let shown: Arc<Mutex<BTreeMap<String, Arc<dyn Router>>>> = Arc::default();
    let drivers = shown.clone();
    admin.add_renderer(move |out| {
        let drivers = drivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in drivers.values() {
            d.render_metrics(out);
        }
    });
    let providers = Arc::clone(&settings.providers);
    let outbox = match &settings.forge {
        Some(config) => {
            let forge =
                crate::edge::forge::AnyForge::connect(config).map_err(DaemonError::Forge)?;
            Some(forge::Outbox::start(
                forge,
                config.clone(),
                pr_tx,
                admin.telemetry.clone(),
                shutdown.clone(),
            ))
        }
        None => None,
    };
    let known = Known {
        routers: settings
            .routers
            .iter()
            .map(|(n, r)| (n.clone(), r.kind()))
            .collect(),
        sinks: Some(
            settings
                .notifications
                .as_ref()
                .map(|n| n.sinks.keys().cloned().collect())
                .unwrap_or_default(),
        ),
    };
    let notifier = match &settings.notifications {
        Some(config) if !config.sinks.is_empty() => Some(
            crate::edge::notify::Notifier::start(
                config.clone(),
                &settings.data_dir,
                format!(
                    "canaryd status NAME --repo {}",
                    git::redact(&settings.remote.url)
                ),
                admin.telemetry.clone(),
                shutdown.clone(),
            )
            .map_err(DaemonError::Notify)?,
        ),
        _ => None,
    };
    let post_hooks = crate::edge::hook::PostHooks::new(
        &settings.data_dir,
        crate::edge::https::client().map_err(DaemonError::Notify)?,
        admin.telemetry.clone(),
        shutdown.clone(),
    )
    .map_err(DaemonError::Notify)?;
    let loads = crate::edge::load::Loads::new(shutdown.clone());
    admin.add_renderer(loads.renderer());
    let mut daemon = Daemon {
        telemetry: admin.telemetry.clone(),
        admin: admin.clone(),
        routers_read: BTreeMap::new(),
        shown,
        settings,
        known,
        mirror: Arc::new(Mutex::new(mirror)),
        reader: Arc::default(),
        drivers: BTreeMap::new(),
        unrecorded: BTreeMap::new(),
        reverts: BTreeMap::new(),
        group_files: BTreeMap::new(),
        starts: BTreeMap::new(),
        prs: BTreeMap::new(),
        providers,
        outbox,
        notifier,
        loads,
        post_hooks,
        measured_tx,
        measuring: BTreeSet::new(),
        taken: BTreeMap::new(),
        wakes: BTreeMap::new(),
        shutdown: shutdown.clone(),
    };
    let poll = chrono::Duration::from_std(daemon.settings.poll).unwrap_or(chrono::Duration::MAX);
    let mut resync_at = daemon.settings.clock.now();
    let mut event = Event::Resync;
    loop {
        let (fetch, scope) = match event {
            Event::Shutdown => break,
            Event::Resync | Event::Fetch => {
                resync_at = daemon.settings.clock.now() + poll;
                (true, Scope::All)
            }
            Event::Due(names) => (false, Scope::Only(names)),
            Event::Measured(results) => {
                let mut names = BTreeSet::new();
                for m in results {
                    for why in &m.errors {
                        daemon.error(ErrorClass::Metrics, Some(&m.rollout), why.clone());
                    }
                    daemon.measuring.remove(&m.rollout);
                    names.insert(m.rollout.clone());
                    daemon.taken.insert(m.rollout.clone(), m);
                }
                // Git has not moved for this: plan from what the mirror holds.
                (false, Scope::Only(names))
            }
            Event::PrOpened(pr) => {
                daemon.prs.insert(pr.branch, pr.url);
                // Its status file gains the pull request's address.
                (false, Scope::Only(BTreeSet::from([pr.rollout])))
            }
        };
        let whole = matches!(scope, Scope::All);
        if daemon.look(fetch, scope).await && whole {
            // Ready once every rollout has been looked at (Git read, specs validated).
            admin.set_ready(true);
        }
        let now = daemon.settings.clock.now();
        let next = daemon
            .wakes
            .values()
            .copied()
            .chain([resync_at])
            .min()
            .unwrap_or(resync_at);
        let sleep = (next - now)
            .to_std()
            .unwrap_or_default()
            // A wake in the past (a measurement overdue) still lets other events in.
            .max(Duration::from_millis(50));
        event = tokio::select! {
            () = shutdown.cancelled() => Event::Shutdown,
            () = tokio::time::sleep(sleep) => {
                let now = daemon.settings.clock.now();
                if now >= resync_at {
                    Event::Resync
                } else {
                    Event::Due(daemon.wakes.iter().filter(|(_, at)| **at <= now).map(|(n, _)| n.clone()).collect())
                }
            }
            Some(()) = changed_rx.recv() => {
                // A commit writes several files; let it finish before looking.
                tokio::time::sleep(Duration::from_millis(150)).await;
                while changed_rx.try_recv().is_ok() {}
                Event::Fetch
            }
            Some(()) = pushed_rx.recv() => Event::Fetch,
            Some(first) = measured_rx.recv() => {
                let mut all = vec![first];
                while let Ok(more) = measured_rx.try_recv() {
                    all.push(more);
                }
                Event::Measured(all)
            }
            Some(pr) = pr_rx.recv() => Event::PrOpened(pr),
        };
    }
    admin.set_ready(false);
    for running in daemon.drivers.values() {
        running.stop.cancel();
    }
    tracing::info!("canaryd stopped");
    Ok(())
}

struct Daemon {
    settings: Settings,
    admin: Arc<Admin>,
    /// The routers read in this look, and why each failed to answer, if it did.
    routers_read: BTreeMap<String, Option<String>>,
    /// What validation takes from the controller configuration.
    known: Known,
    telemetry: Arc<Telemetry>,
    /// The running drivers whose counters `/metrics` shows.
    shown: Arc<Mutex<BTreeMap<String, Arc<dyn Router>>>>,
    mirror: Arc<Mutex<Mirror>>,
    /// Reads each look's snapshot of Git, keeping what it read last.
    reader: Arc<Mutex<snapshot::Reader>>,
    drivers: BTreeMap<String, routers::Running>,
    /// Status files of plans applied (traffic back to safety) but not yet recorded in Git,
    /// because Git refused; they are the truth until recorded.
    unrecorded: BTreeMap<String, Arc<StatusFile>>,
    /// Revert branches known to exist, by (rollout, aborted revision).
    reverts: BTreeMap<(String, Revision), String>,
    /// Each group's status file as last pushed (written again after a restart).
    group_files: BTreeMap<String, crate::core::group::GroupStatusFile>,
    /// The change that brought each (rollout, revision), and its parent; `None`: not found.
    starts: BTreeMap<(String, Revision), Option<revert::Change>>,
    /// The address of each revert branch's pull request, as the forge answered.
    prs: BTreeMap<String, String>,
    providers: Arc<provider::Providers>,
    /// The forge worker's inbox, when a forge is configured.
    outbox: Option<forge::Outbox>,
    /// The notification worker's inbox, when sinks are configured.
    notifier: Option<crate::edge::notify::Notifier>,
    /// Built-in load, per rollout.
    loads: crate::edge::load::Loads,
    /// The post-rollout hooks' caller.
    post_hooks: crate::edge::hook::PostHooks,
    /// Where measurement tasks send their results.
    measured_tx: mpsc::UnboundedSender<measure::Measured>,
    /// Rollouts whose measurements are in flight: not planned again until they are back.
    measuring: BTreeSet<String>,
    /// Measurements back from their task, for each rollout's next plan.
    taken: BTreeMap<String, measure::Measured>,
    /// When each rollout asked to be looked at again (the others wait for the resync).
    wakes: BTreeMap<String, DateTime<Utc>>,
    shutdown: CancellationToken,
}

impl Daemon {
    /// Runs a blocking Git operation on the mirror.
    async fn git<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Mirror) -> Result<T, git::GitError> + Send + 'static,
    ) -> Result<T, git::GitError> {
        self.read(move |_, m| f(m)).await
    }

    /// Runs `f` with the snapshot reader on the mirror, on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut snapshot::Reader, &Mirror) -> T + Send + 'static,
    ) -> T {
        let (mirror, reader) = (self.mirror.clone(), self.reader.clone());
        tokio::task::spawn_blocking(move || {
            let m = mirror
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut r = reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut r, &m)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// One look at the rollouts `scope` names: read Git (fetching it first when `fetch`),
    /// plan and execute each of them. Returns whether every one of them was looked at.
    async fn look(&mut self, fetch: bool, scope: Scope) -> bool {
        let known = self.known.clone();
        let snapshot = match self.read(move |r, m| r.read(m, fetch, &known)).await {
            Ok(s) => s,
            Err(snapshot::SnapshotError::NoBranch) => {
                tracing::warn!(branch = %self.settings.remote.branch, "the watched branch does not exist yet");
                return false;
            }
            Err(e) => {
                self.error(ErrorClass::Git, None, e.to_string());
                return false;
            }
        };
        for line in &snapshot.news {
            self.error(ErrorClass::Spec, None, line.clone());
        }
        let catalog = &snapshot.catalog;
        // A group's members are looked at together, so that they move in the same round.
        let scope = scope.with_groups(catalog);
        // Rollouts last seen in a file that no longer parses are held, not forgotten.
        let mut names: BTreeSet<String> = catalog.rollouts.iter().map(|r| r.name.clone()).collect();
        names.extend(catalog.invalid.keys().cloned());
        for (name, f) in snapshot.statuses.iter() {
            if let Ok(f) = f
                && f.file
                    .as_ref()
                    .is_some_and(|file| catalog.broken_files.contains(file))
            {
                names.insert(name.clone());
            }
        }
        if matches!(scope, Scope::All) {
            // Measurements of a rollout whose spec is gone have no plan to go into.
            self.taken.retain(|name, _| names.contains(name));
        }
        let names_now = names.clone();
        // Every rollout looked at now gets its next wake from this look; one held or skipped
        // (its status unreadable, its measurements out) waits for the resync or its event.
        self.wakes.retain(|name, _| !scope.has(name));
        let mut works = Vec::new();
        let now = self.settings.clock.now();
        self.routers_read.clear();
        for name in names {
            if !scope.has(&name) || self.measuring.contains(&name) {
                // Never planned twice at once: its measurements are still out.
                continue;
            }
            let in_git = match snapshot.statuses.get(&name) {
                Some(Ok(f)) => f.clone(),
                Some(Err(e)) => {
                    self.error(
                        ErrorClass::Status,
                        Some(&name),
                        format!("status file of `{name}` cannot be read, rollout held: {e}"),
                    );
                    continue;
                }
                None => Arc::new(StatusFile::new(&name, now)),
            };
            let spec = match catalog
                .rollouts
                .binary_search_by(|r| r.name.as_str().cmp(&name))
            {
                Ok(i) => Ok(i),
                Err(_) => Err(match catalog.invalid.get(&name) {
                    Some(errors) => errors.clone(),
                    None => vec![format!(
                        "{} cannot be parsed",
                        in_git.file.clone().unwrap_or_default()
                    )],
                }),
            };
            let unrecorded = self.unrecorded.get(&name).cloned();
            let mut work = look::Work::new(name, spec, in_git, unrecorded);
            if let Some(m) = self.taken.remove(work.name.as_str()) {
                work = work.with_measured(m.samples, m.values);
            }
            works.push(work);
        }
        let span =
            tracing::info_span!("look", commit = %short(&snapshot.head), rollouts = works.len());
        self.run_rounds(&snapshot, &mut works)
            .instrument(span)
            .await;
        for w in &works {
            // Traffic first, the forge after (and never waited for).
            if let Ok(i) = w.spec {
                self.tell_forge(&catalog.rollouts[i], &snapshot.head, &w.in_git)
                    .await;
                if let Some(n) = &mut self.notifier {
                    let notices =
                        crate::core::notify::implied(&w.in_git, now, self.outbox.is_some());
                    n.tell(catalog.rollouts[i].notify.as_deref(), notices);
                }
            }
            let rollout = w.spec.as_ref().ok().map(|i| &catalog.rollouts[*i]);
            let load =
                rollout.and_then(|r| crate::core::load::wanted(r, &w.in_git.status.progress));
            self.loads.set(&w.name, load);
            if let Some(r) = rollout.filter(|r| !r.post_hooks.is_empty()) {
                self.call_post_hooks(r, &w.in_git.status.progress, now);
            }
            match w.wake() {
                Some(at) => self.wakes.insert(w.name.clone(), at),
                None => self.wakes.remove(&w.name),
            };
        }
        if matches!(scope, Scope::All) {
            self.loads.retain(&names_now);
            self.check_routers().await;
        }
        !self.shutdown.is_cancelled()
    }
}

impl Daemon {
    /// Calls `rollout`'s post-rollout hooks once per outcome of its revision (not for old
    /// news after a restart).
    fn call_post_hooks(
        &self,
        rollout: &crate::core::model::Rollout,
        progress: &crate::core::progress::Progress,
        now: DateTime<Utc>,
    ) {
        use crate::core::progress::Progress;
        let (revision, at, phase) = match progress {
            Progress::Promoted { revision, at } => (revision, at, "promoted"),
            Progress::Aborted { revision, at, .. } => (revision, at, "aborted"),
            _ => return,
        };
        if *revision == rollout.revision && now - *at <= crate::core::notify::MAX_AGE {
            let key = format!("{}/{revision}/{}/{phase}", rollout.name, at.timestamp());
            self.post_hooks.outcome(&rollout.post_hooks, &key, phase);
        }
    }

    fn error(&self, class: ErrorClass, rollout: Option<&str>, message: String) {
        self.telemetry.record(Tele::Error {
            class,
            rollout: rollout.map(str::to_string),
            message,
        });
    }

    /// Times a step that just ended (the run moved on, or left flight).
    fn step_finished(
        &self,
        name: &str,
        before: &StatusFile,
        after: &StatusFile,
        now: DateTime<Utc>,
    ) {
        let Some(run) = before.status.progress.run() else {
            return;
        };
        let moved_on = after
            .status
            .progress
            .run()
            .is_none_or(|r| r.step != run.step || r.revision != run.revision);
        if moved_on {
            self.telemetry.record(Tele::StepFinished {
                rollout: name.to_string(),
                seconds: (now - run.step_started_at)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64(),
            });
        }
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
