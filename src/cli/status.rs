//! `canaryd status`: shows the status recorded on the status branch, once or every two seconds.

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{ConfigArgs, DEFAULT_STATUS_BRANCH, Output, OutputArgs, Scratch, emit};

#[derive(Args)]
#[command(mut_arg("config", |a| a.help(
    "Controller configuration, for the credentials of a remote `--repo` (`gitAuth`)"
)))]
pub struct StatusArgs {
    /// Only this rollout, or this rollout group (its release, then its members).
    name: Option<String>,
    /// The repository: a local path or a URL.
    #[arg(long, env = "CANARYD_REPO", default_value = ".")]
    repo: String,
    #[arg(long, env = "CANARYD_STATUS_BRANCH", default_value = DEFAULT_STATUS_BRANCH)]
    status_branch: String,
    /// Show it again every two seconds until interrupted.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: StatusArgs) -> Result<u8> {
    let name = args.name.as_deref();
    let status_branch = &args.status_branch;
    let auth = args.config.read()?.git_auth.unwrap_or_default();
    auth.check()?;
    let scratch = Scratch::new("status")?;
    loop {
        let (files, groups) =
            canaryd::edge::git::read_status_tree_as(&args.repo, status_branch, &scratch.0, &auth)
                .with_context(|| format!("cannot read branch {status_branch}"))?;
        // A group's name: the group, then its members.
        if let Some(n) = name
            && !files.contains_key(n)
            && let Some(text) = groups.get(n)
        {
            let group = canaryd::core::group::GroupStatusFile::from_yaml(text)
                .map_err(|e| anyhow::anyhow!("status of group `{n}` cannot be read: {e}"))?;
            let members: Vec<canaryd::core::record::StatusFile> = group
                .members
                .iter()
                .filter_map(|m| files.get(&m.rollout))
                .filter_map(|t| canaryd::core::record::StatusFile::from_yaml(t).ok())
                .collect();
            let text = match args.output.output {
                Output::Human => canaryd::view::status::group_human(
                    &group,
                    &members,
                    canaryd::edge::clock::wall(),
                ),
                Output::Json => canaryd::view::status::group_json(&group, &members),
            };
            if !args.watch {
                emit(&text)?;
                return Ok(0);
            }
            emit(&format!("\x1b[2J\x1b[H{text}"))?;
            std::thread::sleep(std::time::Duration::from_secs(2));
            continue;
        }
        let mut parsed = Vec::new();
        for (rollout, text) in &files {
            if name.is_some_and(|n| n != rollout) {
                continue;
            }
            match canaryd::core::record::StatusFile::from_yaml(text) {
                Ok(f) => parsed.push(f),
                Err(e) => eprintln!("warning: status of `{rollout}` cannot be read: {e}"),
            }
        }
        if let Some(n) = name
            && parsed.is_empty()
        {
            bail!("no status for rollout or group `{n}` on {status_branch}");
        }
        let text = match args.output.output {
            Output::Human => canaryd::view::status::human(&parsed, canaryd::edge::clock::wall()),
            Output::Json => canaryd::view::status::json(&parsed),
        };
        if !args.watch {
            emit(&text)?;
            return Ok(0);
        }
        // Clear the screen and draw again.
        emit(&format!("\x1b[2J\x1b[H{text}"))?;
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}
