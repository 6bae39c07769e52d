//! `canaryd plan`: prints the plan of every rollout against live weights, executing nothing.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use clap::Args;

use canaryd::diag::Diagnostic;
use canaryd::live::LiveWeights;
use canaryd::model::Catalog;
use canaryd::plan::{self, Inputs};
use canaryd::repo::{self, Config};
use canaryd::report;

use super::{ConfigArgs, OutputArgs, SpecsArgs};

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    specs: SpecsArgs,
    /// Live weights as JSON: {"router/service": {"backend": weight}}. Without it they are
    /// read from the routers themselves (those in the repository and in --config).
    #[arg(long)]
    live: Option<PathBuf>,
    /// Folder of recorded status files (<rollout>.yaml); none means every rollout is new.
    #[arg(long)]
    status: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Plan as of this instant (RFC 3339) instead of now.
    #[arg(long)]
    now: Option<DateTime<Utc>>,
    #[command(flatten)]
    output: OutputArgs,
}

/// A plan with the effects the daemon would execute for it, in order.
#[derive(serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    plan: &'a plan::Plan,
    effects: Vec<plan::Effect>,
}

pub fn run(args: PlanArgs) -> Result<u8> {
    let now = args.now.unwrap_or_else(canaryd::clock::wall);
    let repo_dir = &args.specs.repo;
    let status_dir = args.status.as_deref();
    let (config, catalog, diags) = args.specs.load(&args.config)?;
    let live = match &args.live {
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
    args.output.print(
        || human,
        || {
            plans
                .iter()
                .map(|plan| Shown {
                    plan,
                    effects: plan.effects(),
                })
                .collect::<Vec<_>>()
        },
    )?;
    // A file that cannot be parsed may hold rollouts nobody can plan: say so, and fail.
    let broken: Vec<&Diagnostic> = diags
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

/// The live weights of every rollout's service, read from its router (5 s at most each). A
/// router that cannot be read leaves its services unknown, and says why on stderr.
fn live_from_routers(catalog: &Catalog, config: &Config) -> Result<LiveWeights> {
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
