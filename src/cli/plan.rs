//! `canaryd plan`: prints the plan of every rollout against live weights, executing nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use clap::Args;

use canaryd::core::diag::Diagnostic;
use canaryd::core::model::Catalog;
use canaryd::core::plan::{self, Inputs};
use canaryd::core::progress::Status;
use canaryd::edge::git::GateCommit;
use canaryd::edge::live::LiveWeights;
use canaryd::edge::repo;
use canaryd::view::report;

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

/// Everything a plan is made from, read from the world (files, routers, Git, the clock).
struct Gathered {
    now: DateTime<Utc>,
    catalog: Catalog,
    diags: Vec<Diagnostic>,
    live: LiveWeights,
    /// Promote and abort commits by rollout, oldest first.
    gates: BTreeMap<String, Vec<GateCommit>>,
    /// Each rollout's recorded status (valid and invalid ones alike).
    recorded: BTreeMap<String, Status>,
}

/// What `canaryd plan` shows: every plan, as text, and whether any changes something.
struct Planned {
    plans: Vec<plan::Plan>,
    human: String,
    pending: bool,
}

pub fn run(args: PlanArgs) -> Result<u8> {
    let g = gather(&args)?;
    let Planned {
        plans,
        human,
        pending,
    } = plan_all(&g);
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
    let broken: Vec<&Diagnostic> = g
        .diags
        .iter()
        .filter(|d| d.is_error() && g.catalog.broken_files.contains(&d.file))
        .collect();
    for d in &broken {
        eprintln!("error: {} (its rollouts are held)", d.one_line());
    }
    if !broken.is_empty() {
        return Ok(2);
    }
    Ok(u8::from(pending))
}

/// Reads what the plans are made from: the clock (or `--now`), the specs, the live weights
/// (`--live`, or the routers), the checkout's promote and abort commits and the statuses.
fn gather(args: &PlanArgs) -> Result<Gathered> {
    let now = args.now.unwrap_or_else(canaryd::edge::clock::wall);
    let (config, catalog, diags) = args.specs.load(&args.config)?;
    let live = match &args.live {
        Some(path) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            LiveWeights::parse(&text)?
        }
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (live, warnings) = rt.block_on(LiveWeights::from_routers(
                &catalog,
                &config.routers,
                Duration::from_secs(5),
            ));
            for w in warnings {
                eprintln!("warning: {w}");
            }
            live
        }
    };
    // Promote and abort commits, as the daemon reads them: the checkout's history stands in
    // for the watched branch. A folder that is not a checkout has none.
    let gates = canaryd::edge::git::gates_at_head(&args.specs.repo, canaryd::edge::daemon::HISTORY)
        .context("cannot read promote and abort commits")?;
    let mut recorded = BTreeMap::new();
    let names = catalog
        .rollouts
        .iter()
        .map(|r| &r.name)
        .chain(catalog.invalid.keys());
    for name in names {
        let status = match &args.status {
            Some(d) => repo::read_status(d, name)?,
            None => Status::new(name),
        };
        recorded.insert(name.clone(), status);
    }
    Ok(Gathered {
        now,
        catalog,
        diags,
        live,
        gates,
        recorded,
    })
}

/// Every rollout's plan from what was gathered: no I/O, no clock.
fn plan_all(g: &Gathered) -> Planned {
    let mut out = Planned {
        plans: Vec::new(),
        human: String::new(),
        pending: false,
    };
    // Each group member as its group allows it, from the recorded statuses (the daemon also
    // lets members that become ready together move in the same look).
    let groups = canaryd::core::group::all_gates(&g.catalog, |name| g.recorded.get(name));
    for rollout in &g.catalog.rollouts {
        let recorded = &g.recorded[&rollout.name];
        let observed = g.live.get(rollout.target());
        let gates = plan::pending_gates(
            g.gates
                .get(&rollout.name)
                .into_iter()
                .flatten()
                .map(GateCommit::parts),
            rollout,
            recorded.last_gate.as_deref(),
        );
        let p = plan::plan(Inputs {
            spec: rollout,
            recorded,
            live: observed,
            samples: &[],
            gates: &gates,
            now: g.now,
            group: groups.get(&rollout.name),
        });
        out.pending |= p.has_changes(recorded);
        out.human.push_str(&report::plan_human(
            rollout,
            &p,
            &recorded.progress,
            observed,
        ));
        out.human.push('\n');
        out.plans.push(p);
    }
    for (name, errors) in &g.catalog.invalid {
        let recorded = &g.recorded[name];
        let p = plan::plan_invalid(recorded, errors.clone());
        out.pending |= p.has_changes(recorded);
        out.human
            .push_str(&format!("rollout {name}\n  action: {}\n", p.action));
        for e in errors {
            out.human.push_str(&format!("    {e}\n"));
        }
        out.human.push('\n');
        out.plans.push(p);
    }
    out
}
