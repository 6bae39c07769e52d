//! `canaryd promote` and `canaryd abort`: a gate commit for one rollout in a local clone.

use std::fs;

use anyhow::{Result, bail};
use clap::Args;

use canaryd::repo;

use super::{ConfigArgs, SpecsArgs, emit};

#[derive(Args)]
#[command(mut_arg("repo", |a| a.help("The local clone to commit in")))]
pub struct GateArgs {
    /// The rollout.
    name: String,
    #[command(flatten)]
    specs: SpecsArgs,
    #[command(flatten)]
    config: ConfigArgs,
    /// Also push the commit to the branch's upstream.
    #[arg(long)]
    push: bool,
}

/// Commits the gate `action` (`promote` or `abort`) for the rollout `args.name`.
pub fn run(args: GateArgs, action: &str) -> Result<u8> {
    let known = args.config.known()?;
    let repo_dir = &args.specs.repo;
    let (catalog, _, _) = repo::catalog(&[args.specs.dir()], Some(repo_dir), &known)?;
    let Some(rollout) = catalog.rollouts.iter().find(|r| r.name == args.name) else {
        bail!(
            "no valid rollout `{}` in {}",
            args.name,
            args.specs.dir().display()
        );
    };
    // The gate names the revision Git has, not one only this working tree has.
    let head = canaryd::git::head_commit(repo_dir)?;
    let committed = canaryd::git::file_at_commit(repo_dir, &head, &rollout.file)?;
    let on_disk = fs::read_to_string(repo_dir.join(&rollout.file)).ok();
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
        repo_dir,
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
