//! `canaryd analyze`: measures one rollout's analyses once against live metrics and prints them.

use anyhow::{Result, bail};
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
        canaryd::provider::Providers::from_config(&config).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = rt.block_on(canaryd::analyze::analyze(
        rollout,
        &providers,
        canaryd::clock::wall(),
    ));
    args.output
        .print(|| canaryd::analyze::human(rollout, &measured), || &measured)?;
    Ok(canaryd::analyze::exit_code(&measured))
}
