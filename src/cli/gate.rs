//! `canaryd promote` and `canaryd abort`: a gate commit for one rollout, or every member of a rollout group, in a local clone.

use std::fs;

use anyhow::{Result, bail};
use clap::Args;

use canaryd::edge::repo;

use super::{ConfigArgs, SpecsArgs, emit};

#[derive(Args)]
#[command(mut_arg("repo", |a| a.help("The local clone to commit in")))]
pub struct GateArgs {
    /// The rollout, or a rollout group (every member at once).
    name: String,
    #[command(flatten)]
    specs: SpecsArgs,
    #[command(flatten)]
    config: ConfigArgs,
    /// Also push the commit to the branch's upstream.
    #[arg(long)]
    push: bool,
}

/// Commits the gate `action` (`promote` or `abort`) for the rollout `args.name`, or for every
/// member of the rollout group of that name (one commit naming each).
pub fn run(args: GateArgs, action: &str) -> Result<u8> {
    let known = args.config.known()?;
    let repo_dir = &args.specs.repo;
    let (catalog, _, _) = repo::catalog(&[args.specs.dir()], Some(repo_dir), &known)?;
    let rollouts: Vec<&canaryd::core::model::Rollout> =
        match catalog.rollouts.iter().find(|r| r.name == args.name) {
            Some(r) => vec![r],
            None => match catalog.groups.iter().find(|g| g.name == args.name) {
                Some(g) => g
                    .members
                    .iter()
                    .filter_map(|m| catalog.rollouts.iter().find(|r| r.name == m.rollout))
                    .collect(),
                None => bail!(
                    "no valid rollout or rollout group `{}` in {}",
                    args.name,
                    args.specs.dir().display()
                ),
            },
        };
    // The gate names the revisions Git has, not ones only this working tree has.
    let head = canaryd::edge::git::head_commit(repo_dir)?;
    for rollout in &rollouts {
        let committed = canaryd::edge::git::file_at_commit(repo_dir, &head, &rollout.file)?;
        let on_disk = fs::read_to_string(repo_dir.join(&rollout.file)).ok();
        if committed != on_disk {
            bail!(
                "{} has changes that are not committed; commit or stash them first, so that the \
                 {action} names the revision the daemon sees",
                rollout.file
            );
        }
    }
    let name = &args.name;
    let pairs: String = rollouts
        .iter()
        .map(|r| format!("Rollout: {}\nRevision: {}\n", r.name, r.revision))
        .collect();
    let revisions: Vec<String> = rollouts
        .iter()
        .map(|r| format!("{} {}", r.name, r.revision))
        .collect();
    let message = format!(
        "canaryd: {action} {name}\n\nRequested with `canaryd {action} {name}` for {}.\n\n\
         Canaryd-Gate: {action}\n{pairs}",
        revisions.join(", "),
    );
    let id = canaryd::edge::git::gate_commit(
        repo_dir,
        &message,
        &canaryd::edge::git::Author::default(),
        args.push,
    )?;
    emit(&format!(
        "{action} {name} ({}): commit {id}\n",
        revisions.join(", ")
    ))?;
    Ok(0)
}
