//! `canaryd analyze`: measures one rollout's analyses once against live metrics and prints them.

use std::time::Duration;

use anyhow::{Result, bail};
use canaryd::edge::analyze::Report;
use clap::Args;

use super::{ConfigArgs, OutputArgs, SpecsArgs};

#[derive(Args)]
#[command(mut_arg("config", |a| a.help(
    "Controller configuration: routers and the Prometheus to query"
)))]
pub struct AnalyzeArgs {
    /// The rollout.
    name: String,
    #[command(flatten)]
    specs: SpecsArgs,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn run(args: AnalyzeArgs) -> Result<u8> {
    let name = &args.name;
    let (config, catalog, _) = args.specs.load(&args.config)?;
    let Some(rollout) = catalog.rollouts.iter().find(|r| &r.name == name) else {
        if let Some(problems) = catalog.invalid.get(name) {
            bail!("rollout `{name}` is invalid:\n  {}", problems.join("\n  "));
        }
        bail!(
            "no rollout named `{name}` in {}",
            args.specs.rollouts.display()
        );
    };
    let providers =
        canaryd::edge::provider::Providers::from_config(&config).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let target = rollout.target();
    let (live, warnings) = rt.block_on(canaryd::edge::live::LiveWeights::of(
        [rollout],
        &catalog,
        &config.routers,
        Duration::from_secs(5),
    ));
    let analyses = rt.block_on(canaryd::edge::analyze::analyze(
        rollout,
        &providers,
        canaryd::edge::clock::wall(),
    ));
    let report = Report {
        rollout: rollout.name.clone(),
        service: format!("{}/{}", target.router, target.service),
        live: live.get(target).cloned(),
        live_unknown: (!warnings.is_empty()).then(|| warnings.join("; ")),
        analyses,
    };
    args.output.print(
        || canaryd::edge::analyze::human(rollout, &report),
        || &report,
    )?;
    Ok(canaryd::edge::analyze::exit_code(&report.analyses))
}
