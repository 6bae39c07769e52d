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
        /// Live weights as JSON: {"router/service": {"backend": weight}}.
        #[arg(long)]
        live: PathBuf,
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
    /// Show a promotion, an abort and a revert, driven by the planner against a simulated
    /// router and metrics. Needs nothing installed.
    Demo {
        /// Do not pause between events.
        #[arg(long)]
        fast: bool,
    },
    /// Print (or write) the JSON Schemas of the spec documents and the status file.
    Schema {
        /// Write them into this folder instead of printing the rollout schema.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
            &live,
            status.as_deref(),
            config.as_deref(),
            now.unwrap_or_else(Utc::now),
            output,
        ),
        Command::Schema { write } => schema(write.as_deref()),
        Command::Demo { fast } => demo(fast),
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
    let (_, diags, sources) = repo::catalog(paths, None, &known)?;
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

fn plan(
    repo_dir: &Path,
    rollouts: &Path,
    live: &Path,
    status_dir: Option<&Path>,
    config: Option<&Path>,
    now: DateTime<Utc>,
    output: Output,
) -> Result<u8> {
    let known = known(config)?;
    let dir = repo_dir.join(rollouts);
    if !dir.is_dir() {
        bail!("{} is not a folder of rollout specs", dir.display());
    }
    let (catalog, diags, _) = repo::catalog(&[dir], Some(repo_dir), &known)?;
    let text =
        fs::read_to_string(live).with_context(|| format!("cannot read {}", live.display()))?;
    let live = LiveWeights::parse(&text)?;
    let mut plans = Vec::new();
    let mut human = String::new();
    let mut pending = false;
    for rollout in &catalog.rollouts {
        let recorded = match status_dir {
            Some(d) => repo::read_status(d, &rollout.name)?,
            None => canaryd::progress::Status::new(&rollout.name),
        };
        let observed = live.get(rollout.target());
        let p = plan::plan(Inputs {
            spec: rollout,
            recorded: &recorded,
            live: observed,
            samples: &[],
            gates: &[],
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
        Output::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&plans)?))?,
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

fn demo(fast: bool) -> Result<u8> {
    let pace = std::time::Duration::from_millis(if fast { 0 } else { 250 });
    match canaryd::demo::run(&mut std::io::stdout().lock(), pace) {
        // `canaryd demo | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        other => other.map(|_| 0).map_err(Into::into),
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
