//! `canaryd run`: the daemon's settings from flags, environment and configuration file; starts it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};

use super::{ConfigArgs, DEFAULT_STATUS_BRANCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args)]
#[command(mut_arg("config", |a| a.help(
    "Configuration file (YAML): repo, branch, routers, ... Flags and environment win"
)))]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
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
    pub log_format: LogFormat,
    /// Fault injection for the crash tests: abort right after each status push.
    #[arg(long, hide = true)]
    exit_after_status_push: bool,
}

/// Runs the daemon and its admin endpoints until ctrl-c or SIGTERM.
pub fn run(args: RunArgs) -> Result<u8> {
    let config = args.config.read()?;
    let repo_url = args
        .repo
        .or(config.repo)
        .context("no repository: give --repo, CANARYD_REPO or `repo:` in the configuration")?;
    let poll = args
        .poll_interval
        .or(config.poll_interval)
        .map(|t| {
            canaryd::core::spec::duration::parse(&t)
                .map_err(|e| anyhow::anyhow!("poll interval `{t}`: {e}"))
        })
        .transpose()?
        .unwrap_or(std::time::Duration::from_secs(30));
    // Checked now, so that a typo fails the start rather than every fetch.
    let git_auth = config.git_auth.unwrap_or_default();
    git_auth.check()?;
    if args.exit_after_status_push {
        canaryd::edge::git::abort_after_status_push();
    }
    if let Some(hook) = &config.webhook {
        hook.secret.read("webhook.secret")?;
    }
    let watch = (!repo_url.contains("://"))
        .then(|| PathBuf::from(&repo_url))
        .filter(|p| p.is_dir());
    let settings = canaryd::edge::daemon::Settings {
        remote: canaryd::edge::git::Remote {
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
        author: canaryd::edge::git::Author::default(),
        clock: canaryd::edge::clock::Clock::System,
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
            canaryd::edge::provider::Providers::new(config.prometheus.as_ref())
                .map_err(anyhow::Error::msg)?,
        ),
        forge: config.forge.clone(),
        webhook: config.webhook,
        notifications: config.notifications,
        git_auth,
    };
    let admin_addr = args
        .admin
        .or(config.admin)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let admin_limits = admin_limits(&config.admin_limits)?;
    // Idle client connections must not starve the listeners, Git or the routers' clients.
    match canaryd::edge::listener::raise_open_files_limit() {
        Ok(n) => tracing::info!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        spawn_signal_handler(shutdown.clone());
        let telemetry = std::sync::Arc::new(canaryd::edge::telemetry::Telemetry::default());
        let admin = canaryd::edge::admin::Admin::new(telemetry);
        let listener = canaryd::edge::listener::bind(&admin_addr, admin_limits.backlog)
            .await
            .with_context(|| format!("cannot listen on {admin_addr} for the admin endpoints"))?;
        tracing::info!(admin = %admin_addr, "admin endpoints up");
        let server = tokio::spawn(canaryd::edge::admin::serve_with(
            listener,
            admin_limits,
            admin.clone(),
            shutdown.clone(),
        ));
        let result = canaryd::edge::daemon::run(settings, admin, shutdown.clone()).await;
        shutdown.cancel();
        let _ = server.await;
        result?;
        Ok(0)
    })
}

/// The admin listener's limits from the configuration's `adminLimits`.
fn admin_limits(
    spec: &canaryd::core::spec::Limits,
) -> Result<canaryd::edge::listener::ListenerLimits> {
    let only_router = [
        ("bodyIdleTimeout", spec.body_idle_timeout.is_some()),
        ("upstreamTimeout", spec.upstream_timeout.is_some()),
    ];
    if let Some((field, _)) = only_router.iter().find(|(_, set)| *set) {
        anyhow::bail!(
            "adminLimits.{field}: applies to the embedded router only (its Router's spec.limits)"
        );
    }
    let resolved = canaryd::edge::listener::resolve(spec)
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
