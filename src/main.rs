//! The `canaryd` command line: a thin shell over the library. Data goes to stdout, errors to stderr.
//!
//! Exit codes: `lint` 0 clean, 1 findings, 2 could not run; `plan` 0 nothing to do, 1 changes
//! pending, 2 error.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use canaryd::live::LiveWeights;
use canaryd::plan::{self, Inputs};
use canaryd::repo::{self, Config};
use canaryd::report;
use canaryd::validate::Known;

#[derive(Parser)]
#[command(
    name = "canaryd",
    version,
    about = "GitOps canary releases: Git in, traffic out, status back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate rollout specs; exit 0 clean, 1 findings, 2 could not run.
    Lint {
        /// Files or directories (searched recursively for *.yaml and *.yml).
        #[arg(default_value = "rollouts")]
        paths: Vec<PathBuf>,
        /// Controller configuration, for routers defined there.
        #[arg(long, env = "CANARYD_CONFIG")]
        config: Option<PathBuf>,
        /// Treat warnings as findings (exit 1).
        #[arg(long)]
        deny_warnings: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Print the next action of every rollout against live weights; exit 0 nothing to do,
    /// 1 changes pending, 2 error.
    Plan {
        /// The repository (a local checkout).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Folder of rollout specs inside the repository.
        #[arg(long, default_value = "rollouts")]
        rollouts: PathBuf,
        /// Live weights as JSON: {"router/service": {"backend": weight}}. Without it they are
        /// read from the routers themselves (those in the repository and in --config).
        #[arg(long)]
        live: Option<PathBuf>,
        /// Folder of recorded status files (<rollout>.yaml); none means every rollout is new.
        #[arg(long)]
        status: Option<PathBuf>,
        /// Controller configuration, for routers defined there.
        #[arg(long, env = "CANARYD_CONFIG")]
        config: Option<PathBuf>,
        /// Plan as of this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Measure every analysis of one rollout once against live metrics and print what each
    /// would say; changes nothing. Exit 0 all pass, 1 a failure or inconclusive, 2 error.
    Analyze {
        /// The rollout.
        name: String,
        /// The repository (a local checkout).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Folder of rollout specs inside the repository.
        #[arg(long, default_value = "rollouts")]
        rollouts: PathBuf,
        /// Controller configuration: routers and the Prometheus to query.
        #[arg(long, env = "CANARYD_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
    },
    /// Run the daemon: fetch specs from Git, move traffic step by step, commit status back.
    Run(RunArgs),
    /// Show each rollout's status as recorded on the status branch.
    Status {
        /// Only this rollout.
        name: Option<String>,
        /// The repository: a local path or a URL.
        #[arg(long, env = "CANARYD_REPO", default_value = ".")]
        repo: String,
        #[arg(long, env = "CANARYD_STATUS_BRANCH", default_value = DEFAULT_STATUS_BRANCH)]
        status_branch: String,
        /// Show it again every two seconds until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Controller configuration, for the credentials of a remote `--repo` (`gitAuth`).
        #[arg(long, env = "CANARYD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Let a paused rollout move on: a promote commit on the current branch of a local clone.
    Promote(GateArgs),
    /// Stop a rollout and send its traffic back to stable: an abort commit.
    Abort(GateArgs),
    /// Show a promotion, an abort with its revert branch, and the revert merged: a Git
    /// repository, two backends, the embedded router and the daemon, on 127.0.0.1, in a temp
    /// dir. Needs nothing installed.
    Demo,
    /// Print (or write) the JSON Schemas of the spec documents and the status file.
    Schema {
        /// Write them into this folder instead of printing the rollout schema.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

const DEFAULT_STATUS_BRANCH: &str = "canaryd/status";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (YAML): repo, branch, routers, ... Flags and environment win.
    #[arg(long, env = "CANARYD_CONFIG")]
    config: Option<PathBuf>,
    /// The repository of rollout specs: a local path or a URL (file, http(s), ssh, git).
    #[arg(long, env = "CANARYD_REPO")]
    repo: Option<String>,
    /// The watched branch [default: main].
    #[arg(long, env = "CANARYD_BRANCH")]
    branch: Option<String>,
    /// Folder of rollout specs inside the repository [default: rollouts].
    #[arg(long, env = "CANARYD_ROLLOUTS")]
    rollouts: Option<String>,
    /// The branch status is committed to [default: canaryd/status].
    #[arg(long, env = "CANARYD_STATUS_BRANCH")]
    status_branch: Option<String>,
    /// Where the Git mirror is kept [default: .canaryd].
    #[arg(long, env = "CANARYD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// How often the remote is fetched [default: 30s].
    #[arg(long, env = "CANARYD_POLL_INTERVAL")]
    poll_interval: Option<String>,
    /// Address of /healthz, /readyz and /metrics [default: 127.0.0.1:9090].
    #[arg(long, env = "CANARYD_ADMIN")]
    admin: Option<String>,
    #[arg(long, env = "CANARYD_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Fault injection for the crash tests: abort right after each status push.
    #[arg(long, hide = true)]
    exit_after_status_push: bool,
}

#[derive(clap::Args)]
struct GateArgs {
    /// The rollout.
    name: String,
    /// The local clone to commit in.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Folder of rollout specs inside the repository.
    #[arg(long, default_value = "rollouts")]
    rollouts: PathBuf,
    /// Controller configuration, for routers defined there.
    #[arg(long, env = "CANARYD_CONFIG")]
    config: Option<PathBuf>,
    /// Also push the commit to the branch's upstream.
    #[arg(long)]
    push: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Status {
            name,
            repo,
            status_branch,
            watch,
            output,
            config,
        } => status(
            name.as_deref(),
            &repo,
            &status_branch,
            watch,
            output,
            config.as_deref(),
        ),
        Command::Promote(args) => gate(args, "promote"),
        Command::Abort(args) => gate(args, "abort"),
        Command::Lint {
            paths,
            config,
            deny_warnings,
            output,
        } => lint(&paths, config.as_deref(), deny_warnings, output),
        Command::Plan {
            repo,
            rollouts,
            live,
            status,
            config,
            now,
            output,
        } => plan(
            &repo,
            &rollouts,
            live.as_deref(),
            status.as_deref(),
            config.as_deref(),
            now.unwrap_or_else(canaryd::clock::wall),
            output,
        ),
        Command::Schema { write } => schema(write.as_deref()),
        Command::Demo => demo(),
        Command::Analyze {
            name,
            repo,
            rollouts,
            config,
            output,
        } => analyze(&name, &repo, &rollouts, config.as_deref(), output),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn known(config: Option<&Path>) -> Result<Known> {
    Ok(match config {
        Some(path) => Config::read(path)?.known(),
        None => Known::default(),
    })
}

fn lint(
    paths: &[PathBuf],
    config: Option<&Path>,
    deny_warnings: bool,
    output: Output,
) -> Result<u8> {
    let known = known(config)?;
    let (diags, sources) = repo::diagnose(paths, None, &known)?;
    // Files read, and files refused before they could be read (too large, not UTF-8).
    let files = sources
        .iter()
        .map(|s| s.file.as_str())
        .chain(diags.iter().map(|d| d.file.as_str()))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    match output {
        Output::Human => emit(&report::lint_human(&diags, &sources, files))?,
        Output::Json => {
            let errors = diags.iter().filter(|d| d.is_error()).count();
            let json = report::LintJson {
                files,
                errors,
                warnings: diags.len() - errors,
                diagnostics: &diags,
            };
            emit(&format!("{}\n", serde_json::to_string_pretty(&json)?))?;
        }
    }
    let findings = diags.iter().any(|d| d.is_error() || deny_warnings);
    Ok(u8::from(findings))
}

/// The controller configuration (or none) and the specs under `repo_dir/rollouts`, validated.
fn specs(
    repo_dir: &Path,
    rollouts: &Path,
    config: Option<&Path>,
) -> Result<(
    Config,
    canaryd::model::Catalog,
    Vec<canaryd::diag::Diagnostic>,
)> {
    let config = match config {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    let dir = repo_dir.join(rollouts);
    if !dir.is_dir() {
        bail!("{} is not a folder of rollout specs", dir.display());
    }
    let (catalog, diags, _) = repo::catalog(&[dir], Some(repo_dir), &config.known())?;
    Ok((config, catalog, diags))
}

fn plan(
    repo_dir: &Path,
    rollouts: &Path,
    live: Option<&Path>,
    status_dir: Option<&Path>,
    config: Option<&Path>,
    now: DateTime<Utc>,
    output: Output,
) -> Result<u8> {
    let (config, catalog, diags) = specs(repo_dir, rollouts, config)?;
    let live = match live {
        Some(path) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            LiveWeights::parse(&text)?
        }
        None => live_from_routers(&catalog, &config)?,
    };
    // Promote and abort commits, as the daemon reads them: the checkout's history stands in
    // for the watched branch. A folder that is not a checkout has none.
    let all_gates = canaryd::git::gates_at_head(repo_dir, canaryd::daemon::HISTORY)
        .context("cannot read promote and abort commits")?;
    let mut plans = Vec::new();
    let mut human = String::new();
    let mut pending = false;
    for rollout in &catalog.rollouts {
        let recorded = match status_dir {
            Some(d) => repo::read_status(d, &rollout.name)?,
            None => canaryd::progress::Status::new(&rollout.name),
        };
        let observed = live.get(rollout.target());
        let gates = plan::pending_gates(
            all_gates
                .get(&rollout.name)
                .into_iter()
                .flatten()
                .map(|c| (c.id.as_str(), c.action.as_str(), c.revision.as_str())),
            rollout,
            recorded.last_gate.as_deref(),
        );
        let p = plan::plan(Inputs {
            spec: rollout,
            recorded: &recorded,
            live: observed,
            samples: &[],
            gates: &gates,
            now,
        });
        pending |= p.has_changes(&recorded);
        human.push_str(&report::plan_human(
            rollout,
            &p,
            &recorded.progress,
            observed,
        ));
        human.push('\n');
        plans.push(p);
    }
    for (name, errors) in &catalog.invalid {
        let recorded = match status_dir {
            Some(d) => repo::read_status(d, name)?,
            None => canaryd::progress::Status::new(name),
        };
        let p = plan::plan_invalid(&recorded, errors.clone());
        pending |= p.has_changes(&recorded);
        human.push_str(&format!("rollout {name}\n  action: {}\n", p.action));
        for e in errors {
            human.push_str(&format!("    {e}\n"));
        }
        human.push('\n');
        plans.push(p);
    }
    match output {
        Output::Human => emit(&human)?,
        Output::Json => {
            /// A plan with the effects the daemon would execute for it, in order.
            #[derive(serde::Serialize)]
            struct Shown<'a> {
                #[serde(flatten)]
                plan: &'a plan::Plan,
                effects: Vec<plan::Effect>,
            }
            let shown: Vec<Shown<'_>> = plans
                .iter()
                .map(|plan| Shown {
                    plan,
                    effects: plan.effects(),
                })
                .collect();
            emit(&format!("{}\n", serde_json::to_string_pretty(&shown)?))?
        }
    }
    // A file that cannot be parsed may hold rollouts nobody can plan: say so, and fail.
    let broken: Vec<&canaryd::diag::Diagnostic> = diags
        .iter()
        .filter(|d| d.is_error() && catalog.broken_files.contains(&d.file))
        .collect();
    for d in &broken {
        eprintln!("error: {} (its rollouts are held)", d.one_line());
    }
    if !broken.is_empty() {
        return Ok(2);
    }
    Ok(u8::from(pending))
}

fn run(args: RunArgs) -> Result<u8> {
    use std::io::IsTerminal as _;
    let log = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // notify reports harmless inotify bookkeeping at INFO.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn")),
        );
    match args.log_format {
        LogFormat::Human => log.init(),
        LogFormat::Json => log.json().init(),
    }
    let config = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    let repo_url = args
        .repo
        .or(config.repo)
        .context("no repository: give --repo, CANARYD_REPO or `repo:` in the configuration")?;
    let poll = args
        .poll_interval
        .or(config.poll_interval)
        .map(|t| {
            canaryd::spec::duration::parse(&t)
                .map_err(|e| anyhow::anyhow!("poll interval `{t}`: {e}"))
        })
        .transpose()?
        .unwrap_or(std::time::Duration::from_secs(30));
    // Checked now, so that a typo fails the start rather than every fetch.
    let git_auth = config.git_auth.unwrap_or_default();
    git_auth.check()?;
    if args.exit_after_status_push {
        canaryd::git::abort_after_status_push();
    }
    if let Some(hook) = &config.webhook {
        hook.secret.read("webhook.secret")?;
    }
    let watch = (!repo_url.contains("://"))
        .then(|| PathBuf::from(&repo_url))
        .filter(|p| p.is_dir());
    let settings = canaryd::daemon::Settings {
        remote: canaryd::git::Remote {
            url: repo_url,
            branch: args
                .branch
                .or(config.branch)
                .unwrap_or_else(|| "main".into()),
            status_branch: args
                .status_branch
                .or(config.status_branch)
                .unwrap_or_else(|| DEFAULT_STATUS_BRANCH.into()),
            rollouts_dir: args
                .rollouts
                .or(config.rollouts)
                .unwrap_or_else(|| "rollouts".into()),
        },
        author: canaryd::git::Author::default(),
        clock: canaryd::clock::Clock::System,
        attached: Default::default(),
        data_dir: args
            .data_dir
            .or(config.data_dir)
            .unwrap_or_else(|| ".canaryd".into()),
        poll,
        watch,
        routers: config.routers,
        router_timeout: std::time::Duration::from_secs(5),
        providers: std::sync::Arc::new(
            canaryd::provider::Providers::new(config.prometheus.as_ref())
                .map_err(anyhow::Error::msg)?,
        ),
        forge: config.forge.clone(),
        webhook: config.webhook,
        git_auth,
    };
    let admin_addr = args
        .admin
        .or(config.admin)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let admin_limits = admin_limits(&config.admin_limits)?;
    // Idle client connections must not starve the listeners, Git or the routers' clients.
    match canaryd::listener::raise_open_files_limit() {
        Ok(n) => tracing::info!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        spawn_signal_handler(shutdown.clone());
        let telemetry = std::sync::Arc::new(canaryd::telemetry::Telemetry::default());
        let admin = canaryd::admin::Admin::new(telemetry);
        let listener = canaryd::listener::bind(&admin_addr, admin_limits.backlog)
            .await
            .with_context(|| format!("cannot listen on {admin_addr} for the admin endpoints"))?;
        tracing::info!(admin = %admin_addr, "admin endpoints up");
        let server = tokio::spawn(canaryd::admin::serve_with(
            listener,
            admin_limits,
            admin.clone(),
            shutdown.clone(),
        ));
        let result = canaryd::daemon::run(settings, admin, shutdown.clone()).await;
        shutdown.cancel();
        let _ = server.await;
        result?;
        Ok(0)
    })
}

/// The admin listener's limits from the configuration's `adminLimits`.
fn admin_limits(spec: &canaryd::spec::Limits) -> anyhow::Result<canaryd::listener::ListenerLimits> {
    let only_router = [
        ("bodyIdleTimeout", spec.body_idle_timeout.is_some()),
        ("upstreamTimeout", spec.upstream_timeout.is_some()),
    ];
    if let Some((field, _)) = only_router.iter().find(|(_, set)| *set) {
        anyhow::bail!(
            "adminLimits.{field}: applies to the embedded router only (its Router's spec.limits)"
        );
    }
    let resolved = canaryd::listener::resolve(spec)
        .map_err(|e| anyhow::anyhow!("adminLimits.{}: {}", e.field, e.message))?;
    Ok(resolved.listener)
}

/// Cancels `shutdown` on ctrl-c or SIGTERM.
fn spawn_signal_handler(shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
}

fn status(
    name: Option<&str>,
    repo: &str,
    status_branch: &str,
    watch: bool,
    output: Output,
    config: Option<&Path>,
) -> Result<u8> {
    let auth = match config {
        Some(path) => Config::read(path)?.git_auth.unwrap_or_default(),
        None => Default::default(),
    };
    auth.check()?;
    let scratch = tempfile_dir()?;
    loop {
        let files = canaryd::git::read_status_branch_as(repo, status_branch, &scratch, &auth)
            .with_context(|| format!("cannot read branch {status_branch}"))?;
        let mut parsed = Vec::new();
        for (rollout, text) in &files {
            if name.is_some_and(|n| n != rollout) {
                continue;
            }
            match canaryd::record::StatusFile::from_yaml(text) {
                Ok(f) => parsed.push(f),
                Err(e) => eprintln!("warning: status of `{rollout}` cannot be read: {e}"),
            }
        }
        if let Some(n) = name
            && parsed.is_empty()
        {
            bail!("no status for rollout `{n}` on {status_branch}");
        }
        let text = match output {
            Output::Human => canaryd::status_view::human(&parsed, canaryd::clock::wall()),
            Output::Json => format!("{}\n", canaryd::status_view::json(&parsed)),
        };
        if !watch {
            emit(&text)?;
            let _ = fs::remove_dir_all(&scratch);
            return Ok(0);
        }
        // Clear the screen and draw again.
        emit(&format!("\x1b[2J\x1b[H{text}"))?;
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// A private scratch folder for fetching a remote status branch.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("canaryd-status-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn gate(args: GateArgs, action: &str) -> Result<u8> {
    let known = known(args.config.as_deref())?;
    let dir = args.repo.join(&args.rollouts);
    let (catalog, _, _) = repo::catalog(&[dir], Some(&args.repo), &known)?;
    let Some(rollout) = catalog.rollouts.iter().find(|r| r.name == args.name) else {
        bail!(
            "no valid rollout `{}` in {}",
            args.name,
            args.repo.join(&args.rollouts).display()
        );
    };
    // The gate names the revision Git has, not one only this working tree has.
    let head = canaryd::git::head_commit(&args.repo)?;
    let committed = canaryd::git::file_at_commit(&args.repo, &head, &rollout.file)?;
    let on_disk = fs::read_to_string(args.repo.join(&rollout.file)).ok();
    if committed != on_disk {
        bail!(
            "{} has changes that are not committed; commit or stash them first, so that the \
             {action} names the revision the daemon sees",
            rollout.file
        );
    }
    let message = format!(
        "canaryd: {action} {name}\n\nRequested with `canaryd {action} {name}` for revision {rev}.\n\n\
         Canaryd-Gate: {action}\nRollout: {name}\nRevision: {rev}\n",
        name = rollout.name,
        rev = rollout.revision,
    );
    let id = canaryd::git::gate_commit(
        &args.repo,
        &message,
        &canaryd::git::Author::default(),
        args.push,
    )?;
    emit(&format!(
        "{action} {} (revision {}): commit {id}\n",
        rollout.name, rollout.revision
    ))?;
    Ok(0)
}

/// The live weights of every rollout's service, read from its router (5 s at most each). A
/// router that cannot be read leaves its services unknown, and says why on stderr.
fn live_from_routers(catalog: &canaryd::model::Catalog, config: &Config) -> Result<LiveWeights> {
    use canaryd::router::Driver;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut live = LiveWeights::default();
    for rollout in &catalog.rollouts {
        let target = rollout.target();
        let Some(spec) = config
            .routers
            .get(&target.router)
            .or_else(|| catalog.routers.get(&target.router))
        else {
            continue;
        };
        let read = Driver::connect(&target.router, spec).map(|driver| {
            rt.block_on(async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    driver.observe(&target.service),
                )
                .await
            })
        });
        match read {
            Ok(Ok(Ok(observed))) => live.insert(target, observed),
            Ok(Ok(Err(e))) | Err(e) => {
                eprintln!("warning: {e}: weights of `{}` unknown", rollout.name);
            }
            Ok(Err(_)) => eprintln!(
                "warning: router `{}` did not answer in 5 s: weights of `{}` unknown",
                target.router, rollout.name
            ),
        }
    }
    Ok(live)
}

fn analyze(
    name: &str,
    repo_dir: &Path,
    rollouts: &Path,
    config: Option<&Path>,
    output: Output,
) -> Result<u8> {
    let (config, catalog, _) = specs(repo_dir, rollouts, config)?;
    let Some(rollout) = catalog.rollouts.iter().find(|r| r.name == name) else {
        if let Some(problems) = catalog.invalid.get(name) {
            bail!("rollout `{name}` is invalid:\n  {}", problems.join("\n  "));
        }
        bail!("no rollout named `{name}` in {}", rollouts.display());
    };
    let providers =
        canaryd::provider::Providers::from_config(&config).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = rt.block_on(canaryd::analyze::analyze(
        rollout,
        &providers,
        canaryd::clock::wall(),
    ));
    match output {
        Output::Human => emit(&canaryd::analyze::human(rollout, &measured))?,
        Output::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&measured)?))?,
    }
    Ok(canaryd::analyze::exit_code(&measured))
}

fn demo() -> Result<u8> {
    let mut out = std::io::stdout().lock();
    match canaryd::demo::run(&mut out, &std::env::temp_dir()) {
        Ok(_) => Ok(0),
        // `canaryd demo | head` is fine.
        Err(canaryd::demo::DemoError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Writes to stdout; a reader that went away (`canaryd lint | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn schema(write: Option<&Path>) -> Result<u8> {
    let all = canaryd::schema::all();
    match write {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            for (name, text) in all {
                fs::write(dir.join(name), text)?;
            }
        }
        None => emit(&all[0].1)?,
    }
    Ok(0)
}
