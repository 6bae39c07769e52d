//! The daemon's loop on a paused clock: the real `canaryd run` loop, a real Git remote on disk,
//! and in-memory fakes of the `Router` and `MetricsProvider` traits. Pauses of minutes,
//! windows of days, deadlines and retries play out in milliseconds, and each is checked to the
//! millisecond of the daemon's own time. (The real routers and Prometheus are tested in their
//! own modules; these tests are about the loop.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use canaryd::core::model::{Observed, Traffic};
use canaryd::core::record::StatusFile;
use canaryd::core::spec::RouterSpec;
use canaryd::edge::admin::Admin;
use canaryd::edge::clock::Clock;
use canaryd::edge::daemon::{self, Settings};
use canaryd::edge::git::{self as hand, Author, Remote};
use canaryd::edge::provider::{MetricsProvider, Providers, Query};
use canaryd::edge::router::{Call, ObservedAll, Router, RouterError};
use canaryd::edge::telemetry::Telemetry;
use chrono::{DateTime, TimeZone, Utc};
use tokio_util::sync::CancellationToken;

const STATUS: &str = "canaryd/status";

/// One change the fake router took: when (the daemon's time), the service, the canary's
/// weight, and the canary weight Git recorded for that rollout at that moment.
#[derive(Clone, Debug)]
struct Applied {
    at: DateTime<Utc>,
    service: String,
    canary: u8,
    recorded: Option<u8>,
}

/// An in-memory router: services and their backends' weights, a log of what was applied
/// (with what Git said at that moment), and failures on demand.
#[derive(Debug)]
struct MemoryRouter {
    clock: Clock,
    /// The remote, to read what was recorded when a change is applied.
    remote: PathBuf,
    services: Mutex<BTreeMap<String, BTreeMap<String, u32>>>,
    applied: Mutex<Vec<Applied>>,
    /// Calls to `apply` that fail before one succeeds, and when each was tried.
    failing_applies: Mutex<usize>,
    tried: Mutex<Vec<DateTime<Utc>>>,
    /// Reads of the router: one per `observe_all`.
    reads: Mutex<usize>,
    /// Whether reads and health checks fail as from a router that went away.
    down: Mutex<bool>,
}

impl MemoryRouter {
    fn new(clock: Clock, remote: &Path, services: &[(&str, &str, &str)]) -> Arc<MemoryRouter> {
        let services = services
            .iter()
            .map(|(service, stable, canary)| {
                let backends = BTreeMap::from([(stable.to_string(), 100), (canary.to_string(), 0)]);
                (service.to_string(), backends)
            })
            .collect();
        Arc::new(MemoryRouter {
            clock,
            remote: remote.to_path_buf(),
            services: Mutex::new(services),
            applied: Mutex::default(),
            failing_applies: Mutex::new(0),
            tried: Mutex::default(),
            reads: Mutex::new(0),
            down: Mutex::new(false),
        })
    }

    fn applied(&self) -> Vec<Applied> {
        lock(&self.applied).clone()
    }

    fn canary(&self, service: &str) -> u8 {
        let services = lock(&self.services);
        let backends = &services[service];
        let total: u32 = backends.values().sum();
        let canary = backends
            .iter()
            .find(|(name, _)| name.ends_with("green"))
            .map_or(0, |(_, w)| *w);
        u8::try_from(canary * 100 / total.max(1)).unwrap()
    }

    fn read(&self, service: &str) -> Result<Observed, RouterError> {
        self.answers()?;
        let services = lock(&self.services);
        match services.get(service) {
            Some(backends) => Ok(Observed::weights(backends.clone())),
            None => Err(RouterError::unknown("lb", format!("service `{service}`"))),
        }
    }
}

impl MemoryRouter {
    fn answers(&self) -> Result<(), RouterError> {
        match *lock(&self.down) {
            true => Err(RouterError::unreachable("lb", "connection refused")),
            false => Ok(()),
        }
    }
}

impl Router for MemoryRouter {
    fn observe_all<'a>(&'a self, services: &'a [String]) -> Call<'a, ObservedAll> {
        *lock(&self.reads) += 1;
        Box::pin(async move {
            self.answers()?;
            Ok(services.iter().map(|s| (s.clone(), self.read(s))).collect())
        })
    }

    fn apply<'a>(&'a self, service: &'a str, traffic: &'a Traffic) -> Call<'a, ()> {
        Box::pin(async move {
            let now = self.clock.now();
            lock(&self.tried).push(now);
            {
                let mut failing = lock(&self.failing_applies);
                if *failing > 0 {
                    *failing -= 1;
                    return Err(RouterError::unreachable("lb", "connection refused"));
                }
            }
            let backends: BTreeMap<String, u32> = traffic
                .backends
                .iter()
                .map(|(name, w)| (name.clone(), u32::from(w.get())))
                .collect();
            let canary = backends
                .iter()
                .find(|(name, _)| name.ends_with("green"))
                .map_or(0, |(_, w)| u8::try_from(*w).unwrap());
            lock(&self.services).insert(service.to_string(), backends);
            let (remote, rollout) = (self.remote.clone(), service.to_string());
            let recorded = off_the_runtime(move || recorded_canary(&remote, &rollout)).await;
            lock(&self.applied).push(Applied {
                at: now,
                service: service.to_string(),
                canary,
                recorded,
            });
            Ok(())
        })
    }

    fn health(&self) -> Call<'_, ()> {
        Box::pin(async { self.answers() })
    }
}

/// One query the fake provider answered: when (the `at` asked for) and the query.
#[derive(Clone, Debug)]
struct Asked {
    at: DateTime<Utc>,
    query: String,
}

/// An in-memory metrics provider: answers each query by the first rule whose text it
/// contains, after that rule's delay (on the paused clock).
#[derive(Debug, Default)]
struct MemoryMetrics {
    rules: Vec<(String, f64, Duration)>,
    asked: Mutex<Vec<Asked>>,
}

impl MemoryMetrics {
    fn new(rules: &[(&str, f64, Duration)]) -> Arc<MemoryMetrics> {
        Arc::new(MemoryMetrics {
            rules: rules
                .iter()
                .map(|(q, v, d)| (q.to_string(), *v, *d))
                .collect(),
            asked: Mutex::default(),
        })
    }

    fn asked(&self, containing: &str) -> Vec<Asked> {
        lock(&self.asked)
            .iter()
            .filter(|a| a.query.contains(containing))
            .cloned()
            .collect()
    }
}

impl MetricsProvider for MemoryMetrics {
    fn instant<'a>(&'a self, query: &'a str, at: DateTime<Utc>) -> Query<'a, Option<f64>> {
        Box::pin(async move {
            lock(&self.asked).push(Asked {
                at,
                query: query.to_string(),
            });
            let Some((_, value, delay)) = self.rules.iter().find(|(q, _, _)| query.contains(q))
            else {
                return Ok(None);
            };
            tokio::time::sleep(*delay).await;
            Ok(Some(*value))
        })
    }

    fn range<'a>(
        &'a self,
        _query: &'a str,
        _start: DateTime<Utc>,
        _end: DateTime<Utc>,
        _step: Duration,
    ) -> Query<'a, Vec<f64>> {
        Box::pin(async { Err("no ranges here".to_string()) })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The canary weight the status branch of `remote` records as set for `service`'s rollout
/// (named like the service), if any.
fn recorded_canary(remote: &Path, rollout: &str) -> Option<u8> {
    let file = status(remote, rollout)?;
    file.desired
        .iter()
        .find(|(name, _)| name.ends_with("green"))
        .map(|(_, w)| w.get())
}

/// Runs a blocking Git read on tokio's blocking pool, as the daemon runs its own (a paused
/// clock does not advance meanwhile).
async fn off_the_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn status(remote: &Path, rollout: &str) -> Option<StatusFile> {
    let scratch = tempfile::tempdir().unwrap();
    let files = hand::read_status_branch(remote.to_str().unwrap(), STATUS, scratch.path()).ok()?;
    Some(StatusFile::from_yaml(files.get(rollout)?).unwrap())
}

/// The `analysis:` of a spec (indented two spaces): `settings` (e.g. `interval: 1m`), and one
/// Prometheus metric, `errors` of the canary, below 1 %.
fn analysis(settings: &str) -> String {
    format!(
        "  analysis:
    {settings}
    metrics:
      - name: errors
        provider: prometheus
        query: 'errors{{backend=\"{{{{ canary }}}}\"}}'
        successCondition: result < 0.01
"
    )
}

/// A rollout `name` on router `lb`, service `name`, blue → green, with `body` (indented two
/// spaces) as the rest of its spec.
fn rollout(name: &str, body: &str) -> String {
    format!(
        "apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata:
  name: {name}
spec:
  router: lb
  service: {name}
  stable: {{name: {name}-blue, version: \"1.0\"}}
  canary: {{name: {name}-green, version: \"1.1\"}}
{body}"
    )
}

/// The daemon on a paused clock that starts at `start`, driving a [`MemoryRouter`] with the
/// services of `specs` and asking `metrics`.
struct Loop {
    _dir: tempfile::TempDir,
    remote: PathBuf,
    clock: Clock,
    router: Arc<MemoryRouter>,
    admin: Arc<Admin>,
    stop: CancellationToken,
    daemon: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl Loop {
    fn start(start: DateTime<Utc>, specs: &[(&str, String)], metrics: Arc<MemoryMetrics>) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote.git");
        hand::init_bare(&remote, "main").unwrap();
        let files = specs
            .iter()
            .map(|(name, text)| (format!("rollouts/{name}.yaml"), Some(text.clone())))
            .collect();
        hand::commit_files(&remote, "main", &files, "canaries", &Author::default()).unwrap();
        let clock = Clock::tokio_from(start);
        let services: Vec<(String, String, String)> = specs
            .iter()
            .map(|(n, _)| (n.to_string(), format!("{n}-blue"), format!("{n}-green")))
            .collect();
        let services: Vec<(&str, &str, &str)> = services
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        let router = MemoryRouter::new(clock, &remote, &services);
        let settings = Settings {
            remote: Remote {
                url: remote.to_string_lossy().into_owned(),
                branch: "main".into(),
                status_branch: STATUS.into(),
                rollouts_dir: "rollouts".into(),
            },
            author: Author::default(),
            data_dir: dir.path().join("data"),
            // Only wake times move the loop: the resync is hours away.
            poll: Duration::from_secs(6 * 3600),
            watch: None,
            routers: BTreeMap::from([(
                "lb".to_string(),
                RouterSpec::Haproxy {
                    runtime_api: "127.0.0.1:9".into(),
                },
            )]),
            router_timeout: Duration::from_secs(5),
            providers: Arc::new(Providers {
                prometheus: Some(metrics),
                ..Providers::default()
            }),
            forge: None,
            webhook: None,
            notifications: None,
            git_auth: Default::default(),
            clock,
            attached: BTreeMap::from([("lb".to_string(), router.clone() as Arc<dyn Router>)]),
        };
        let stop = CancellationToken::new();
        let admin = Admin::new(Arc::new(Telemetry::default()));
        let daemon = tokio::spawn(daemon::run(settings, admin.clone(), stop.clone()));
        Loop {
            _dir: dir,
            remote,
            clock,
            router,
            admin,
            stop,
            daemon,
        }
    }

    /// Waits (on the paused clock) until `rollout`'s status satisfies `done`, at most `limit`
    /// of the daemon's time, looking a thousand times at most. (Timings are judged from the
    /// fake router's log, not from when this saw them.)
    async fn until(
        &self,
        rollout: &str,
        limit: Duration,
        done: impl Fn(&StatusFile) -> bool,
    ) -> StatusFile {
        let give_up = self.clock.now() + chrono::Duration::from_std(limit).unwrap();
        loop {
            let (remote, name) = (self.remote.clone(), rollout.to_string());
            let seen = off_the_runtime(move || status(&remote, &name)).await;
            if let Some(f) = &seen
                && done(f)
            {
                return seen.unwrap();
            }
            assert!(
                self.clock.now() < give_up,
                "{rollout}: not there after {limit:?}: {:?}",
                seen.map(|f| f.status.progress)
            );
            tokio::time::sleep((limit / 1000).max(Duration::from_millis(100))).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.daemon.await.unwrap().unwrap();
    }
}

fn phase(f: &StatusFile) -> &'static str {
    f.status.progress.phase()
}

/// Seconds between two of the daemon's instants.
fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

fn monday_noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn pauses_end_on_the_second_and_every_step_is_recorded_before_it_is_applied() {
    let spec = rollout(
        "shop",
        &(analysis("interval: 1m")
            + "  steps:
    - setWeight: 20
    - pause: {duration: 5m}
    - setWeight: 50
    - pause: {duration: 10m}
"),
    );
    let metrics = MemoryMetrics::new(&[("errors", 0.001, Duration::ZERO)]);
    let l = Loop::start(monday_noon(), &[("shop", spec)], metrics.clone());
    let done = l.until("shop", HOUR, |f| phase(f) == "promoted").await;
    assert_eq!(done.status.promoted.len(), 1);

    let applied = l.router.applied();
    let weights: Vec<u8> = applied.iter().map(|a| a.canary).collect();
    assert_eq!(weights, [20, 50, 100], "{applied:?}");
    // Write-ahead: each weight toward the canary was in Git before the router had it.
    for a in &applied {
        assert_eq!(a.recorded, Some(a.canary), "{a:?}");
    }
    // The pauses end on time, to the daemon's millisecond, not a poll later.
    let (to20, to50, to100) = (applied[0].at, applied[1].at, applied[2].at);
    assert!(secs(monday_noon(), to20) < 1.0, "{to20}");
    let first_pause = secs(to20, to50);
    let second_pause = secs(to50, to100);
    assert!((300.0..300.5).contains(&first_pause), "{first_pause}");
    assert!((600.0..600.5).contains(&second_pause), "{second_pause}");
    // The background analysis measured every interval, a minute apart, while the canary ran.
    let asked = metrics.asked("shop-green");
    assert!(asked.len() >= 14, "{}", asked.len());
    for pair in asked.windows(2) {
        let gap = secs(pair[0].at, pair[1].at);
        assert!((60.0..60.5).contains(&gap), "{gap} s between {pair:?}");
    }
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_metric_aborts_and_traffic_is_back_on_stable_before_git_says_so() {
    let spec = rollout(
        "cart",
        &(analysis("interval: 30s\n    failureLimit: 1")
            + "  steps:
    - setWeight: 25
    - pause: {duration: 30m}
"),
    );
    let metrics = MemoryMetrics::new(&[("errors", 0.2, Duration::ZERO)]);
    let l = Loop::start(monday_noon(), &[("cart", spec)], metrics.clone());
    let aborted = l.until("cart", HOUR, |f| phase(f) == "aborted").await;
    let applied = l.router.applied();
    let weights: Vec<u8> = applied.iter().map(|a| a.canary).collect();
    assert_eq!(weights, [25, 0], "{applied:?}");
    // The step back was applied first: when it was, Git still said 25.
    assert_eq!(applied[1].recorded, Some(25), "{applied:?}");
    assert_eq!(l.router.canary("cart"), 0);
    // Measured every 30 s from the step; two failures (limit 1), and the abort at the second.
    let abort_after = secs(applied[0].at, applied[1].at);
    assert!((60.0..60.5).contains(&abort_after), "{abort_after}");
    assert_eq!(metrics.asked("cart-green").len(), 2);
    assert!(aborted.revert.is_some(), "a revert branch: {aborted:?}");
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_router_that_refuses_is_retried_every_ten_seconds_until_it_takes_the_step() {
    let spec = rollout(
        "search",
        "  steps:
    - setWeight: 10
    - pause: {duration: 2m}
",
    );
    let l = Loop::start(monday_noon(), &[("search", spec)], MemoryMetrics::new(&[]));
    *lock(&l.router.failing_applies) = 3;
    l.until("search", HOUR, |f| phase(f) == "promoted").await;
    let tried = lock(&l.router.tried).clone();
    // Three refusals, then 10 %, then (after the 2 min pause) 100 %.
    assert_eq!(tried.len(), 5, "{tried:?}");
    for pair in tried[..4].windows(2) {
        let gap = secs(pair[0], pair[1]);
        assert!(
            (10.0..11.5).contains(&gap),
            "retried after {gap} s: {tried:?}"
        );
    }
    let applied = l.router.applied();
    assert_eq!(
        applied.iter().map(|a| a.canary).collect::<Vec<_>>(),
        [10, 100]
    );
    let pause = secs(applied[0].at, applied[1].at);
    assert!((120.0..120.5).contains(&pause), "{pause}");
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_router_that_never_takes_the_step_aborts_at_the_progress_deadline() {
    let spec = rollout(
        "ads",
        "  progressDeadline: 2m
  steps:
    - setWeight: 10
    - pause: {duration: 2m}
",
    );
    let l = Loop::start(monday_noon(), &[("ads", spec)], MemoryMetrics::new(&[]));
    *lock(&l.router.failing_applies) = usize::MAX;
    let aborted = l.until("ads", HOUR, |f| phase(f) == "aborted").await;
    let tried = lock(&l.router.tried).clone();
    let first = *tried.first().unwrap();
    let span = secs(first, l.clock.now());
    assert!(span >= 120.0, "aborted after {span} s");
    assert!(span < 140.0, "aborted after {span} s");
    let canaryd::core::progress::Progress::Aborted { evidence, .. } = &aborted.status.progress
    else {
        unreachable!()
    };
    assert_eq!(
        evidence.summary,
        "no progress for 2m: weights not verified on the router"
    );
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn outside_its_window_a_rollout_waits_for_monday_and_starts_as_it_opens() {
    let spec = rollout(
        "billing",
        "  window:
    cron: \"* 9-16 * * Mon-Fri\"
    timezone: UTC
  steps:
    - setWeight: 5
    - pause: {duration: 1h}
",
    );
    // Saturday noon: the window opens on Monday at 09:00.
    let saturday = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
    let l = Loop::start(saturday, &[("billing", spec)], MemoryMetrics::new(&[]));
    l.until("billing", 3 * 24 * HOUR, |f| phase(f) == "paused")
        .await;
    let applied = l.router.applied();
    let monday_nine = Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap();
    assert_eq!(applied.first().map(|a| a.canary), Some(5), "{applied:?}");
    let late = secs(monday_nine, applied[0].at);
    assert!(
        (0.0..1.0).contains(&late),
        "started {late} s after the window opened"
    );
    // Two days of waiting took a handful of looks, not one per poll.
    let reads = *lock(&l.router.reads);
    assert!(reads < 40, "{reads} router reads");
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_hangs_for_a_minute_delays_no_other_rollouts_step() {
    let slow = rollout(
        "slow",
        &(analysis("interval: 30s")
            + "  steps:
    - setWeight: 10
    - pause: {duration: 1h}
"),
    );
    let quick = rollout(
        "quick",
        "  steps:
    - setWeight: 10
    - pause: {duration: 2m}
    - setWeight: 30
    - pause: {duration: 2m}
",
    );
    let metrics = MemoryMetrics::new(&[("slow-green", 0.0, Duration::from_secs(60))]);
    let l = Loop::start(
        monday_noon(),
        &[("slow", slow), ("quick", quick)],
        metrics.clone(),
    );
    l.until("quick", HOUR, |f| phase(f) == "promoted").await;
    let quick: Vec<Applied> = l
        .router
        .applied()
        .into_iter()
        .filter(|a| a.service == "quick")
        .collect();
    assert_eq!(
        quick.iter().map(|a| a.canary).collect::<Vec<_>>(),
        [10, 30, 100]
    );
    for pair in quick.windows(2) {
        let pause = secs(pair[0].at, pair[1].at);
        // On time to the daemon's millisecond, though the other rollout's provider hangs.
        assert!((120.0..120.1).contains(&pause), "{pause} s: {quick:?}");
    }
    assert!(!metrics.asked("slow-green").is_empty());
    l.stop().await;
}

#[tokio::test(start_paused = true)]
async fn readiness_names_a_router_that_stops_answering_until_it_answers_again() {
    let spec = rollout(
        "news",
        "  steps:
    - setWeight: 10
    - pause: {duration: 1h}
",
    );
    let l = Loop::start(monday_noon(), &[("news", spec)], MemoryMetrics::new(&[]));
    l.until("news", HOUR, |f| phase(f) == "paused").await;
    assert_eq!(l.admin.readiness(), Ok(()));
    *lock(&l.router.down) = true;
    // The next full resync (every six hours here) reads the router and finds it gone.
    tokio::time::sleep(7 * HOUR).await;
    assert_eq!(
        l.admin.readiness(),
        Err("router `lb` unreachable: connection refused".to_string())
    );
    *lock(&l.router.down) = false;
    tokio::time::sleep(7 * HOUR).await;
    assert_eq!(l.admin.readiness(), Ok(()));
    l.stop().await;
}
