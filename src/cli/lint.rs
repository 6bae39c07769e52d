//! `canaryd lint`: validates spec files and prints every finding; exit 0 clean, 1 findings.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use canaryd::{repo, report};

use super::{ConfigArgs, OutputArgs};

#[derive(Args)]
pub struct LintArgs {
    /// Files or directories (searched recursively for *.yaml and *.yml).
    #[arg(default_value = "rollouts")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Treat warnings as findings (exit 1).
    #[arg(long)]
    deny_warnings: bool,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn run(args: LintArgs) -> Result<u8> {
    let known = args.config.known()?;
    let (diags, sources) = repo::diagnose(&args.paths, None, &known)?;
    // Files read, and files refused before they could be read (too large, not UTF-8).
    let files = sources
        .iter()
        .map(|s| s.file.as_str())
        .chain(diags.iter().map(|d| d.file.as_str()))
        .collect::<BTreeSet<_>>()
        .len();
    args.output.print(
        || report::lint_human(&diags, &sources, files),
        || {
            let errors = diags.iter().filter(|d| d.is_error()).count();
            report::LintJson {
                files,
                errors,
                warnings: diags.len() - errors,
                diagnostics: &diags,
            }
        },
    )?;
    let findings = diags.iter().any(|d| d.is_error() || args.deny_warnings);
    Ok(u8::from(findings))
}
