//! `canaryd demo`: the whole story on this machine with nothing installed, on the real `run`
//! code path: a Git repository in a temp dir, two demo backends, the embedded router, a
//! bounded load on 127.0.0.1 and the daemon itself.
//!
//! The demo plays the team: it commits rollout specs to the repository's `main` branch (as a
//! merged pull request would) and merges the revert branch the daemon pushes. It narrates what
//! the daemon records on the status branch, which is also how a person would follow it.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::model::Weight;
use crate::core::progress::Progress;
use crate::core::record::StatusFile;
use crate::edge::admin::Admin;
use crate::edge::backend::{self, BackendConfig, LoadConfig, LoadReport};
use crate::edge::daemon::{self, Settings};
use crate::edge::git::{self, Author, Remote};
use crate::edge::telemetry::Telemetry;
use crate::view::status::bar;

/// What the demo showed, for its test.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// The desired canary weight of each act as it changed, in order.
    pub weights: Vec<Vec<u8>>,
    /// The final phase of each act.
    pub phases: Vec<String>,
    /// The revert branch the daemon pushed after the abort.
    pub revert: Option<String>,
    /// The spec file's text on the revert branch.
    pub reverted_spec: Option<String>,
    /// The spec of act 1, which the revert must restore.
    pub act1_spec: String,
    /// The status branch's log, newest first.
    pub log: Vec<String>,
    /// Requests sent through the router during the demo, and how they went.
    pub load: LoadReport,
    /// How long the demo took.
    pub took: Duration,
    /// Act 4: each member's final phase (checkout, payments).
    pub group_phases: Vec<String>,
    /// Act 4: the one revert branch of the release, and the spec files it restores.
    pub group_revert: Option<String>,
    pub group_restored: BTreeMap<String, Option<String>>,
    /// Act 4: the group's status commits, newest first.
    pub group_log: Vec<String>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo i/o")]
    Io(#[from] io::Error),
    #[error("demo repository")]
    Git(#[from] git::GitError),
    #[error("the rollout did not reach `{phase}` within {secs} s (it is `{now}`)")]
    Stuck {
        phase: &'static str,
        secs: u64,
        now: String,
    },
    #[error("demo load")]
    Load(#[from] backend::LoadError),
}

const SPEC_FILE: &str = "rollouts/checkout.yaml";
const STATUS_FILE: &str = "status/checkout.yaml";
/// The longest any act may take before the demo gives up (it takes seconds).
const ACT_LIMIT: u64 = 60;

/// The rollout every act merges: stable and canary slots, a step analysis on error rate, and a
/// background check on success rate.
fn spec(
    router: SocketAddr,
    backends: &BTreeMap<&str, SocketAddr>,
    stable: (&str, &str),
    canary: Option<(&str, &str)>,
) -> String {
    let checkout = Service {
        router: "edge",
        listen: router,
        backends,
        name: "checkout",
        background: true,
    };
    checkout.spec(stable, canary)
}

/// A service of the demo: its router (embedded, of its own) and its rollout.
struct Service<'a> {
    router: &'a str,
    listen: SocketAddr,
    backends: &'a BTreeMap<&'a str, SocketAddr>,
    name: &'a str,
    /// With a background check on success rate.
    background: bool,
}

impl Service<'_> {
    /// Its router and rollout documents: 20 %, an error-rate analysis, 50 %, a pause.
    fn spec(&self, stable: (&str, &str), canary: Option<(&str, &str)>) -> String {
        let canary = canary.map_or(String::new(), |(name, version)| {
            format!("  canary: {{name: {name}, version: \"{version}\"}}\n")
        });
        let background = if self.background {
            "  analysis:\n    interval: 2s\n    metrics:\n      - {name: success, template: request-success-rate}\n"
        } else {
            ""
        };
        format!(
            "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {{name: {router}}}
spec:
  kind: embedded
  listen: \"{listen}\"
  backends: {{blue: \"http://{}\", green: \"http://{}\"}}
---
apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {{name: {name}}}
spec:
  router: {router}
  service: {name}
  stable: {{name: {}, version: \"{}\"}}
{canary}  steps:
    - setWeight: 20
    - analysis:
        interval: 2s
        count: 3
        metrics:
          - {{name: errors, template: error-rate}}
    - setWeight: 50
    - pause: {{duration: 3s}}
{background}",
            self.backends["blue"],
            self.backends["green"],
            stable.0,
            stable.1,
            router = self.router,
            listen = self.listen,
            name = self.name,
        )
    }
}

const PAYMENTS_FILE: &str = "rollouts/payments.yaml";
const GROUP_FILE: &str = "rollouts/shop.yaml";
const GROUP_STATUS_FILE: &str = "status/groups/shop.yaml";

/// Act 4's second service: payments on a router of its own, with the same weights as checkout
/// (the group steps in lockstep).
fn payments_spec(
    router: SocketAddr,
    backends: &BTreeMap<&str, SocketAddr>,
    canary: Option<&str>,
) -> String {
    let payments = Service {
        router: "mesh",
        listen: router,
        backends,
        name: "payments",
        background: false,
    };
    payments.spec(("blue", "2.0"), canary.map(|v| ("green", v)))
}

const GROUP: &str = "apiVersion: canaryd.dev/v1alpha1
kind: RolloutGroup
metadata: {name: shop}
spec:
  order: lockstep
  members: [{rollout: checkout}, {rollout: payments}]
";

/// Runs the demo in a fresh temp dir under `scratch`, narrating to `out`.
pub fn run(out: &mut dyn Write, scratch: &Path) -> Result<Summary, DemoError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(story(out, scratch))
}

/// One demo backend: `name` running `version`, failing `fails` of its requests.
async fn start_backend(
    addr: SocketAddr,
    name: &str,
    version: &str,
    fails: f64,
    stop: CancellationToken,
) -> Result<(), DemoError> {
    // The slot's port may still be closing from the version it replaces.
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!("port {addr} busy: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let config = BackendConfig {
        name: name.to_string(),
        version: version.to_string(),
        fail_fraction: fails,
        latency: Duration::from_millis(2),
    };
    backend::spawn(listener, config, stop).await;
    Ok(())
}

/// Waits until the embedded router accepts connections.
async fn wait_for_router(router: SocketAddr) -> Result<(), DemoError> {
    let deadline = crate::edge::clock::instant() + Duration::from_secs(ACT_LIMIT);
    while tokio::net::TcpStream::connect(router).await.is_err() {
        if crate::edge::clock::instant() > deadline {
            return Err(DemoError::Stuck {
                phase: "router up",
                secs: ACT_LIMIT,
                now: "router not listening".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Commits `spec` to `main` as a merged pull request would.
async fn merge(remote: &Path, spec: String, message: &str, user: &Author) -> Result<(), DemoError> {
    let (repo, message, user) = (remote.to_path_buf(), message.to_string(), user.clone());
    blocking(move || {
        let files = BTreeMap::from([(SPEC_FILE.to_string(), Some(spec))]);
        git::commit_files(&repo, "main", &files, &message, &user)
    })
    .await?;
    Ok(())
}

/// Commits several spec files at once to `main`, as one merged pull request.
async fn merge_files(
    remote: &Path,
    files: Vec<(&str, String)>,
    message: &str,
    user: &Author,
) -> Result<(), DemoError> {
    let (repo, message, user) = (remote.to_path_buf(), message.to_string(), user.clone());
    let files: BTreeMap<String, Option<String>> = files
        .into_iter()
        .map(|(path, text)| (path.to_string(), Some(text)))
        .collect();
    blocking(move || git::commit_files(&repo, "main", &files, &message, &user)).await?;
    Ok(())
}

/// Runs a git2 call on the blocking pool, off the workers the daemon and the router use.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, git::GitError> + Send + 'static,
) -> Result<T, DemoError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(DemoError::Io(io::Error::other(e))),
    }
}

async fn free_addr() -> Result<SocketAddr, DemoError> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?)
}

struct Stage<'a> {
    out: &'a mut dyn Write,
    remote: PathBuf,
    scratch: PathBuf,
    started: Instant,
    last: Option<StatusFile>,
}

impl Stage<'_> {
    fn say(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "{text}")?;
        self.out.flush()
    }

    /// The status files on the status branch now (rollout → YAML); none when it cannot be read
    /// yet.
    async fn status_files(&self) -> BTreeMap<String, String> {
        let (remote, scratch) = (self.remote.clone(), self.scratch.clone());
        blocking(move || {
            git::read_status_branch(
                remote.to_str().unwrap_or_default(),
                "canaryd/status",
                &scratch,
            )
        })
        .await
        .unwrap_or_default()
    }

    /// The status the daemon committed, as the status branch has it now.
    async fn status(&self) -> Option<StatusFile> {
        StatusFile::from_yaml(self.status_files().await.get("checkout")?).ok()
    }

    /// Narrates each new status until the rollout is at `phase` and `done` holds; returns the
    /// canary weights seen on the way.
    async fn follow(
        &mut self,
        phase: &'static str,
        done: impl Fn(&StatusFile) -> bool,
    ) -> Result<(Vec<u8>, StatusFile), DemoError> {
        let deadline = crate::edge::clock::instant() + Duration::from_secs(ACT_LIMIT);
        let mut weights = Vec::new();
        loop {
            if let Some(s) = self.status().await
                && !self
                    .last
                    .as_ref()
                    .is_some_and(|last| last.same_substance(&s))
            {
                let canary = canary_weight(&s);
                if weights.last() != Some(&canary.get()) {
                    weights.push(canary.get());
                }
                let remote = self.remote.clone();
                let subject =
                    blocking(move || git::log(&remote, "canaryd/status", Some(STATUS_FILE), 1))
                        .await?
                        .into_iter()
                        .next()
                        .map(|line| {
                            line.split_once(' ')
                                .map_or(line.clone(), |(_, s)| s.to_string())
                        })
                        .unwrap_or_default();
                let t = self.started.elapsed().as_secs_f64();
                self.say(&format!(
                    "  [{t:5.1}s] {} {:>4}  {subject}",
                    bar(canary),
                    canary.to_string()
                ))?;
                let finished = s.status.progress.phase() == phase && done(&s);
                self.last = Some(s.clone());
                if finished {
                    return Ok((weights, s));
                }
            }
            if crate::edge::clock::instant() > deadline {
                return Err(DemoError::Stuck {
                    phase,
                    secs: ACT_LIMIT,
                    now: self
                        .last
                        .as_ref()
                        .map_or("nothing".into(), |s| s.status.progress.phase().to_string()),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Stage<'_> {
    /// Waits, without narrating each step, until `rollout` is at `phase` and `done` holds
    /// and each of `also` is at `phase` too; returns their statuses (`rollout`'s first).
    async fn wait(
        &mut self,
        rollout: &str,
        phase: &'static str,
        done: impl Fn(&StatusFile) -> bool,
        also: &[&str],
    ) -> Result<Vec<StatusFile>, DemoError> {
        let deadline = crate::edge::clock::instant() + Duration::from_secs(ACT_LIMIT);
        loop {
            let files = self.status_files().await;
            let read = |name: &str| files.get(name).and_then(|t| StatusFile::from_yaml(t).ok());
            let mut found = Vec::new();
            for name in std::iter::once(rollout).chain(also.iter().copied()) {
                match read(name) {
                    Some(s) if s.status.progress.phase() == phase => found.push(s),
                    _ => break,
                }
            }
            if found.len() == 1 + also.len() && done(&found[0]) {
                return Ok(found);
            }
            if crate::edge::clock::instant() > deadline {
                return Err(DemoError::Stuck {
                    phase,
                    secs: ACT_LIMIT,
                    now: read(rollout)
                        .map_or("nothing".into(), |s| s.status.progress.phase().to_string()),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether the router was read back carrying what the status asks for.
fn settled(s: &StatusFile) -> bool {
    s.live.as_ref().is_some_and(|l| l.backends == s.desired)
}

/// The canary's weight as the status records it.
fn canary_weight(s: &StatusFile) -> Weight {
    match &s.status.progress {
        Progress::Promoted { .. } => Weight::FULL,
        Progress::RolledBack { weight, .. } | Progress::RollingBack { weight, .. } => *weight,
        other => other.run().map_or(Weight::ZERO, |r| r.weight),
    }
}

/// Sends a steady load through the router until `stop`, in bounded rounds.
async fn users(router: SocketAddr, stop: CancellationToken) -> Result<LoadReport, DemoError> {
    let mut total = LoadReport::default();
    let deadline = crate::edge::clock::instant() + Duration::from_secs(3 * ACT_LIMIT);
    while !stop.is_cancelled() && crate::edge::clock::instant() < deadline {
        let round = backend::load(
            router,
            LoadConfig {
                concurrency: 2,
                total: 10_000,
                max_duration: Duration::from_millis(500),
                host: None,
            },
        )
        .await?;
        total.merge(round);
    }
    Ok(total)
}

async fn story(out: &mut dyn Write, scratch: &Path) -> Result<Summary, DemoError> {
    let started = crate::edge::clock::instant();
    let dir = scratch.join(format!("canaryd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let remote = dir.join("rollouts.git");
    let bare = remote.clone();
    blocking(move || git::init_bare(&bare, "main")).await?;
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();

    let router = free_addr().await?;
    let backends: BTreeMap<&str, SocketAddr> =
        [("blue", free_addr().await?), ("green", free_addr().await?)].into();
    let blue_stop = stop.child_token();
    start_backend(backends["blue"], "blue", "1.0", 0.0, blue_stop.clone()).await?;
    start_backend(backends["green"], "green", "1.1", 0.0, stop.child_token()).await?;

    let mut stage = Stage {
        out,
        remote: remote.clone(),
        scratch: dir.join("scratch"),
        started,
        last: None,
    };
    stage.say("canaryd demo: a Git repository, two backends, the embedded router and the daemon, all on 127.0.0.1.")?;
    stage.say(&format!(
        "  repository {}  (status branch canaryd/status)",
        remote.display()
    ))?;
    stage.say(&format!(
        "  router http://{router}  blue http://{}  green http://{}\n",
        backends["blue"], backends["green"]
    ))?;

    let user = Author {
        name: "A. Developer".into(),
        email: "dev@example.com".into(),
    };
    let before = spec(router, &backends, ("blue", "1.0"), None);
    merge(&remote, before, "checkout: blue 1.0", &user).await?;

    // The daemon, exactly as `canaryd run` starts it.
    let settings = Settings {
        remote: Remote {
            url: remote.to_string_lossy().into_owned(),
            branch: "main".into(),
            status_branch: "canaryd/status".into(),
            rollouts_dir: "rollouts".into(),
        },
        author: Author::default(),
        data_dir: dir.join("data"),
        poll: Duration::from_secs(1),
        watch: Some(remote.clone()),
        routers: BTreeMap::new(),
        router_timeout: Duration::from_secs(5),
        providers: Default::default(),
        forge: None,
        webhook: None,
        notifications: None,
        git_auth: Default::default(),
        clock: crate::edge::clock::Clock::System,
        attached: Default::default(),
    };
    let admin = Admin::new(Arc::new(Telemetry::default()));
    let daemon = tokio::spawn(daemon::run(settings, admin, stop.child_token()));
    // Users: a steady, bounded load through the router for the analysis to judge.
    let load_stop = stop.child_token();

    let mut summary = Summary::default();
    stage.say("checkout 1.0 runs on blue; users arrive (a bounded load through the router).")?;
    stage.follow("stable", settled).await?;
    wait_for_router(router).await?;
    let load = tokio::spawn(users(router, load_stop.clone()));

    stage.say(
        "\nAct 1. A pull request merged: green runs checkout 1.1 as the canary beside blue 1.0.",
    )?;
    let act1 = spec(router, &backends, ("blue", "1.0"), Some(("green", "1.1")));
    merge(&remote, act1.clone(), "checkout: canary green 1.1", &user).await?;
    summary.act1_spec = act1;
    let (weights, s) = stage.follow("promoted", settled).await?;
    summary.weights.push(weights);
    summary.phases.push(s.status.progress.phase().to_string());

    stage.say("\nAct 2. The next pull request deploys checkout 1.2 into the blue slot; it fails 20% of requests.")?;
    blue_stop.cancel();
    let blue2_stop = stop.child_token();
    start_backend(backends["blue"], "blue", "1.2", 0.2, blue2_stop.clone()).await?;
    let act2 = spec(router, &backends, ("green", "1.1"), Some(("blue", "1.2")));
    merge(&remote, act2, "checkout: canary blue 1.2", &user).await?;
    let (weights, s) = stage.follow("aborted", |s| s.revert.is_some()).await?;
    summary.weights.push(weights);
    summary.phases.push(s.status.progress.phase().to_string());
    let branch = s.revert.clone().unwrap_or_default();
    if let Progress::Aborted { evidence, .. } = &s.status.progress {
        stage.say(&format!("  evidence: {}", evidence.summary))?;
    }
    stage.say(&format!(
        "  traffic is back on green 1.1; revert branch pushed: {branch}"
    ))?;
    let (repo, name) = (remote.clone(), branch.clone());
    let (tip, restored, revert_log) = blocking(move || {
        let tip = git::branch_tip(&repo, &name)?;
        let restored = git::file_at_commit(&repo, &tip, SPEC_FILE)?;
        let log = git::log(&repo, &name, None, 1)?;
        Ok((tip, restored, log))
    })
    .await?;
    summary.reverted_spec = restored;
    for line in revert_log {
        stage.say(&format!("    {line}"))?;
    }
    summary.revert = Some(branch.clone());

    stage.say(
        "\nAct 3. The team merges the revert branch: Git asks for blue 1.0 / green 1.1 again.",
    )?;
    let (repo, merged) = (remote.clone(), tip.clone());
    blocking(move || git::set_branch(&repo, "main", &merged)).await?;
    let (weights, s) = stage.follow("rolledBack", settled).await?;
    summary.weights.push(weights);
    summary.phases.push(s.status.progress.phase().to_string());

    act4(
        &mut stage,
        &mut summary,
        &remote,
        router,
        &backends,
        &user,
        &stop,
        &load_stop,
        blue2_stop,
    )
    .await?;

    load_stop.cancel();
    summary.load = match load.await {
        Ok(report) => report?,
        Err(_) => LoadReport::default(),
    };
    stop.cancel();
    let _ = daemon.await;
    let repo = remote.clone();
    summary.log =
        blocking(move || git::log(&repo, "canaryd/status", Some(STATUS_FILE), 100)).await?;
    stage.say("\n$ git log --oneline canaryd/status")?;
    for line in &summary.log {
        stage.say(&format!("  {line}"))?;
    }
    summary.took = started.elapsed();
    stage.say(&format!(
        "\n{} requests through the router ({} answered 5xx by the failing canary, {} not answered); {:.1} s in all.",
        summary.load.sent,
        summary.load.server_errors,
        summary.load.failed,
        summary.took.as_secs_f64()
    ))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(summary)
}

/// Act 4: two services released as one group; the failing one takes both back, with one revert
/// branch for both files.
#[allow(clippy::too_many_arguments)]
async fn act4(
    stage: &mut Stage<'_>,
    summary: &mut Summary,
    remote: &Path,
    router: SocketAddr,
    backends: &BTreeMap<&str, SocketAddr>,
    user: &Author,
    stop: &CancellationToken,
    load_stop: &CancellationToken,
    blue2_stop: CancellationToken,
) -> Result<(), DemoError> {
    stage.say(
        "\nAct 4. Two services, one release: a pull request adds payments 2.0 (its own router) and \
         group `shop`, checkout and payments in lockstep.",
    )?;
    let pay_router = free_addr().await?;
    let pay: BTreeMap<&str, SocketAddr> =
        [("blue", free_addr().await?), ("green", free_addr().await?)].into();
    start_backend(pay["blue"], "blue", "2.0", 0.0, stop.child_token()).await?;
    start_backend(pay["green"], "green", "2.1", 0.2, stop.child_token()).await?;
    merge_files(
        remote,
        vec![
            (PAYMENTS_FILE, payments_spec(pay_router, &pay, None)),
            (GROUP_FILE, GROUP.to_string()),
        ],
        "payments 2.0 on blue; group shop",
        user,
    )
    .await?;
    stage.wait("payments", "stable", settled, &[]).await?;
    wait_for_router(pay_router).await?;
    let pay_load = tokio::spawn(users(pay_router, load_stop.clone()));
    stage.say(
        "  The release: checkout 1.3 into the blue slot (healthy) and payments 2.1 on green, which \
         fails 20% of requests, merged together.",
    )?;
    blue2_stop.cancel();
    start_backend(backends["blue"], "blue", "1.3", 0.0, stop.child_token()).await?;
    // Act 3 left act 1's spec on main.
    let before_checkout = summary.act1_spec.clone();
    let before_payments = payments_spec(pay_router, &pay, None);
    merge_files(
        remote,
        vec![
            (
                SPEC_FILE,
                spec(router, backends, ("green", "1.1"), Some(("blue", "1.3"))),
            ),
            (PAYMENTS_FILE, payments_spec(pay_router, &pay, Some("2.1"))),
        ],
        "release shop: checkout 1.3, payments 2.1",
        user,
    )
    .await?;
    let finals = stage
        .wait("payments", "aborted", |s| s.revert.is_some(), &["checkout"])
        .await?;
    for s in &finals {
        summary
            .group_phases
            .push(s.status.progress.phase().to_string());
        if let Progress::Aborted { evidence, .. } = &s.status.progress {
            stage.say(&format!(
                "  {}: aborted: {}",
                s.status.rollout, evidence.summary
            ))?;
        }
    }
    let branch = finals
        .iter()
        .find_map(|s| s.revert.clone())
        .unwrap_or_default();
    stage.say(&format!(
        "  both back on their stable slots; one revert branch for the release: {branch}"
    ))?;
    let (repo, name) = (remote.to_path_buf(), branch.clone());
    let (restored, log) = blocking(move || {
        let tip = git::branch_tip(&repo, &name)?;
        let mut restored = BTreeMap::new();
        for file in [SPEC_FILE, PAYMENTS_FILE] {
            restored.insert(file.to_string(), git::file_at_commit(&repo, &tip, file)?);
        }
        let log = git::log(&repo, "canaryd/status", Some(GROUP_STATUS_FILE), 20)?;
        Ok((restored, log))
    })
    .await?;
    stage.say(&format!(
        "  it restores {} and {} as they were before the release.",
        SPEC_FILE, PAYMENTS_FILE
    ))?;
    let same = restored.get(SPEC_FILE).and_then(Option::as_deref) == Some(before_checkout.as_str())
        && restored.get(PAYMENTS_FILE).and_then(Option::as_deref) == Some(before_payments.as_str());
    if !same {
        stage.say("  (the restored files differ from the ones before the release!)")?;
    }
    stage.say("\n$ git log --oneline canaryd/status -- status/groups/shop.yaml")?;
    for line in &log {
        stage.say(&format!("  {line}"))?;
    }
    summary.group_revert = Some(branch);
    summary.group_restored = restored;
    summary.group_log = log;
    load_stop.cancel();
    if let Ok(Ok(report)) = pay_load.await {
        summary.load.merge(report);
    }
    Ok(())
}
