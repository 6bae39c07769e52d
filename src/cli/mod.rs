//! The `canaryd` command line: the commands, the arguments they share, and printing to stdout.
//!
//! A thin shell over the library, one file per command. Data goes to stdout, errors to stderr.
//! Exit codes: `lint` 0 clean, 1 findings, 2 could not run; `plan` 0 nothing to do, 1 changes
//! pending, 2 error.
//!
//! An argument two commands share is defined once here and flattened into each; where a command
//! describes it in its own words, that command's arguments override only the help text
//! (`mut_arg`), so that `--help` reads as it always has.

mod analyze;
mod demo;
mod gate;
mod lint;
mod plan;
mod run;
mod schema;
mod status;
mod wait;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use canaryd::core::diag::Diagnostic;
use canaryd::core::model::Catalog;
use canaryd::core::validate::Known;
use canaryd::edge::repo::{self, Config};

pub use run::LogFormat;

#[derive(Parser)]
#[command(
    name = "canaryd",
    version,
    about = "GitOps canary releases: Git in, traffic out, status back"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate rollout specs; exit 0 clean, 1 findings, 2 could not run.
    Lint(lint::LintArgs),
    /// Print the next action of every rollout against live weights; exit 0 nothing to do,
    /// 1 changes pending, 2 error.
    Plan(plan::PlanArgs),
    /// Measure every analysis of one rollout once against live metrics and print what each
    /// would say; changes nothing. Exit 0 all pass, 1 a failure or inconclusive, 2 error.
    Analyze(analyze::AnalyzeArgs),
    /// Run the daemon: fetch specs from Git, move traffic step by step, commit status back.
    Run(run::RunArgs),
    /// Show each rollout's status as recorded on the status branch.
    Status(status::StatusArgs),
    /// Let a paused rollout move on: a promote commit on the current branch of a local clone.
    Promote(gate::GateArgs),
    /// Stop a rollout and send its traffic back to stable: an abort commit.
    Abort(gate::GateArgs),
    /// Show a promotion, an abort with its revert branch, and the revert merged: a Git
    /// repository, two backends, the embedded router and the daemon, on 127.0.0.1, in a temp
    /// dir. Needs nothing installed.
    Demo,
    /// Wait until a revision of one rollout is promoted (exit 0), fails: aborted, rolled back,
    /// superseded or invalid (exit 1), or time runs out (exit 2). For CI, after a merge.
    Wait(wait::WaitArgs),
    /// Print (or write) the JSON Schemas of the spec documents and the status file.
    Schema(schema::SchemaArgs),
}

impl Command {
    /// How to log, for the daemon; the one-shot commands (the demo too) log nothing.
    pub fn log_format(&self) -> Option<LogFormat> {
        match self {
            Command::Run(args) => Some(args.log_format),
            _ => None,
        }
    }

    /// Runs the command; `Ok` holds the exit code.
    pub fn run(self) -> Result<u8> {
        match self {
            Command::Lint(args) => lint::run(args),
            Command::Plan(args) => plan::run(args),
            Command::Analyze(args) => analyze::run(args),
            Command::Run(args) => run::run(args),
            Command::Status(args) => status::run(args),
            Command::Wait(args) => wait::run(args),
            Command::Promote(args) => gate::run(args, "promote"),
            Command::Abort(args) => gate::run(args, "abort"),
            Command::Demo => demo::run(),
            Command::Schema(args) => schema::run(args),
        }
    }
}

/// The branch status is committed to, unless told otherwise.
const DEFAULT_STATUS_BRANCH: &str = "canaryd/status";

/// `--config`: the controller configuration file.
#[derive(Args)]
struct ConfigArgs {
    /// Controller configuration, for routers defined there.
    #[arg(long, env = "CANARYD_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArgs {
    /// The configuration file read, or the empty configuration without one.
    fn read(&self) -> Result<Config> {
        Ok(match &self.config {
            Some(path) => Config::read(path)?,
            None => Config::default(),
        })
    }

    /// The routers the configuration defines, which specs may name.
    fn known(&self) -> Result<Known> {
        Ok(self.read()?.known())
    }
}

/// `--repo` and `--rollouts`: the rollout specs in a local checkout.
#[derive(Args)]
struct SpecsArgs {
    /// The repository (a local checkout).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Folder of rollout specs inside the repository.
    #[arg(long, default_value = "rollouts")]
    rollouts: PathBuf,
}

impl SpecsArgs {
    /// The folder of rollout specs.
    fn dir(&self) -> PathBuf {
        self.repo.join(&self.rollouts)
    }

    /// The controller configuration and the specs, validated; the folder must exist.
    fn load(&self, config: &ConfigArgs) -> Result<(Config, Catalog, Vec<Diagnostic>)> {
        let config = config.read()?;
        let dir = self.dir();
        if !dir.is_dir() {
            bail!("{} is not a folder of rollout specs", dir.display());
        }
        let (catalog, diags, _) = repo::catalog(&[dir], Some(&self.repo), &config.known())?;
        Ok((config, catalog, diags))
    }
}

/// `--output human|json`: how a command prints its data.
#[derive(Args)]
struct OutputArgs {
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

impl OutputArgs {
    /// Prints `human()`, or `json()` as pretty JSON and a newline; only the one printed is made.
    fn print<J: Serialize>(
        &self,
        human: impl FnOnce() -> String,
        json: impl FnOnce() -> J,
    ) -> Result<()> {
        match self.output {
            Output::Human => emit(&human()),
            Output::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&json())?)),
        }
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

/// A private scratch folder (a command's own Git mirror or fetch), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// A new folder under the system's temp dir, named for `command`, this process and now.
    fn new(command: &str) -> Result<Scratch> {
        let nanos = canaryd::edge::clock::system_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("canaryd-{command}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
