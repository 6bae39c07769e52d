//! `canaryd wait`: blocks until a revision of one rollout is promoted (exit 0), fails (exit 1:
//! aborted, rolled back, superseded, or its spec is invalid) or time runs out (exit 2), printing
//! each change of its status on the way. For CI: merge, then wait for that merge.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use clap::Args;

use canaryd::core::model::Revision;
use canaryd::core::progress::Progress;
use canaryd::core::record::StatusFile;
use canaryd::core::wait::Failure;
use canaryd::edge::clock;
use canaryd::edge::git::{Author, Mirror, Remote, redact, status_source};
use canaryd::edge::wait::{Awaited, Ended, Event, wait};

use super::{ConfigArgs, DEFAULT_STATUS_BRANCH, Scratch, emit};

/// How long past `--timeout` a read of the repository that hangs is waited for.
const HANG_GRACE: Duration = Duration::from_secs(10);

#[derive(Args)]
#[command(mut_arg("config", |a| a.help(
    "Controller configuration: `gitAuth` for a remote `--repo`, and the routers specs may name"
)))]
pub struct WaitArgs {
    /// The rollout.
    name: String,
    /// Wait for this revision, as `canaryd status` shows it.
    #[arg(long, conflicts_with = "commit")]
    revision: Option<String>,
    /// Wait for the revision this commit of the watched branch sets (the merge CI just made);
    /// until the branch holds it and the daemon has read it. Default: the branch's head.
    #[arg(long)]
    commit: Option<String>,
    /// Give up after this long, with exit code 2.
    #[arg(long, default_value = "30m")]
    timeout: String,
    /// How often the status branch is read.
    #[arg(long, default_value = "500ms")]
    interval: String,
    /// The repository: a URL, or a local path (a CI checkout is followed to its `origin`).
    #[arg(long, env = "CANARYD_REPO", default_value = ".")]
    repo: String,
    /// The watched branch [default: main].
    #[arg(long, env = "CANARYD_BRANCH")]
    branch: Option<String>,
    /// Folder of rollout specs inside the repository [default: rollouts].
    #[arg(long, env = "CANARYD_ROLLOUTS")]
    rollouts: Option<String>,
    /// The branch status is committed to [default: canaryd/status].
    #[arg(long, env = "CANARYD_STATUS_BRANCH")]
    status_branch: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: WaitArgs) -> Result<u8> {
    let config = args.config.read()?;
    let duration = |what: &str, text: &str| {
        canaryd::core::spec::duration::parse(text).map_err(|e| anyhow!("{what} `{text}`: {e}"))
    };
    let timeout = duration("--timeout", &args.timeout)?;
    let every = duration("--interval", &args.interval)?.max(Duration::from_millis(100));
    let auth = config.git_auth.clone().unwrap_or_default();
    auth.check()?;
    let status_branch = args
        .status_branch
        .or(config.status_branch.clone())
        .unwrap_or_else(|| DEFAULT_STATUS_BRANCH.to_string());
    let url = status_source(&args.repo, &status_branch);
    let remote = Remote {
        url: url.clone(),
        branch: args
            .branch
            .or(config.branch.clone())
            .unwrap_or_else(|| "main".into()),
        status_branch,
        rollouts_dir: args
            .rollouts
            .or(config.rollouts.clone())
            .unwrap_or_else(|| "rollouts".into()),
    };
    let scratch = Scratch::new("wait")?;
    let mirror = Mirror::open(&scratch.0, remote, Author::default())?.with_auth(auth);
    let awaited = match (args.revision, args.commit) {
        (Some(r), _) => Awaited::Revision(Revision::from(r.as_str())),
        (None, Some(c)) => Awaited::Commit(c),
        (None, None) => Awaited::Head,
    };
    let name = &args.name;
    let say = |line: String| {
        let _ = emit(&format!("{line}\n"));
    };
    // The wait runs on its own thread, so that a fetch that hangs cannot hold the command
    // past its timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (name, url, known) = (name.clone(), url.clone(), config.known());
        std::thread::spawn(move || {
            let say = |line: String| {
                let _ = emit(&format!("{line}\n"));
            };
            let ended = wait(
                &mirror,
                &known,
                &name,
                &awaited,
                timeout,
                every,
                |event| match event {
                    Event::Awaiting { revision, commit } => say(format!(
                        "waiting for {name} revision {revision}{} on {}",
                        commit
                            .map(|c| format!(" (commit {})", short(c)))
                            .unwrap_or_default(),
                        redact(&url)
                    )),
                    Event::Status(s) => say(format!(
                        "{} {name}: {}",
                        clock::wall().format("%H:%M:%S"),
                        canaryd::view::status::line(s, clock::wall())
                    )),
                    Event::Retrying(why) => eprintln!("warning: {why}; trying again"),
                },
            );
            let _ = tx.send(ended);
        });
    }
    let ended = match rx.recv_timeout(timeout + HANG_GRACE) {
        Ok(ended) => ended.with_context(|| format!("cannot wait for {name}"))?,
        Err(_) => {
            eprintln!(
                "error: {name}: no decision within {}: the repository stopped answering",
                args.timeout
            );
            return Ok(2);
        }
    };
    let (code, text) = match ended {
        Ended::Done { revision, .. } => (0, format!("{name}: revision {revision} is live")),
        Ended::Failed {
            revision,
            why,
            status,
        } => (1, failed(name, &revision, &why, &status, &args.repo)),
        Ended::Invalid { commit, errors } => (
            1,
            format!(
                "{name}: the spec at commit {} is invalid; the daemon holds the rollout:\n  {}",
                short(&commit),
                errors.join("\n  ")
            ),
        ),
        Ended::TimedOut { revision, .. } => (
            2,
            format!(
                "{name}: no decision on {} within {}",
                revision.map_or_else(
                    || "the awaited commit (not yet on the branch)".to_string(),
                    |r| format!("revision {r}")
                ),
                args.timeout
            ),
        ),
    };
    match code {
        0 | 1 => say(text.clone()),
        _ => eprintln!("error: {text}"),
    }
    if std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true") {
        github_actions(name, code, &text);
    }
    Ok(code)
}

/// Under GitHub Actions: an annotation on the run (`::notice` or `::error`) and the outcome in
/// the job's summary (`$GITHUB_STEP_SUMMARY`), so the reason shows without opening the log.
fn github_actions(name: &str, code: u8, text: &str) {
    let (level, title) = match code {
        0 => ("notice", format!("canary {name} live")),
        1 => ("error", format!("canary {name} failed")),
        _ => ("error", format!("canary {name} undecided")),
    };
    // The workflow-command escapes: `%`, CR and LF in the message; also `:` and `,` in a
    // property.
    let message = text
        .replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A");
    let title = title
        .replace('%', "%25")
        .replace(':', "%3A")
        .replace(',', "%2C");
    let _ = emit(&format!("::{level} title={title}::{message}\n"));
    if let Ok(path) = std::env::var("GITHUB_STEP_SUMMARY") {
        let mark = ["✅", "❌", "⏱️"][usize::from(code.min(2))];
        let summary = format!("### {mark} canary `{name}`\n\n```text\n{text}\n```\n");
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, summary.as_bytes()));
        if let Err(e) = appended {
            eprintln!("warning: cannot write the job summary {path}: {e}");
        }
    }
}

/// Why the revision failed, with the evidence, the revert branch or PR, and what to run.
fn failed(name: &str, revision: &Revision, why: &Failure, s: &StatusFile, repo: &str) -> String {
    let mut out = match why {
        Failure::Aborted => {
            let evidence = match &s.status.progress {
                Progress::Aborted { evidence, .. } => evidence.summary.as_str(),
                _ => "",
            };
            format!("{name}: revision {revision} aborted: {evidence}")
        }
        Failure::RolledBack => format!(
            "{name}: revision {revision} rolled back: the spec went back to {}",
            s.status
                .progress
                .revision()
                .map_or_else(String::new, ToString::to_string)
        ),
        Failure::Superseded { by } => {
            format!("{name}: revision {revision} superseded by revision {by} before it finished")
        }
        Failure::Invalid => format!("{name}: the daemon holds the rollout: its spec is invalid"),
    };
    if let Some(pr) = &s.revert_pr {
        out.push_str(&format!("\n  revert pull request: {pr}"));
    } else if let Some(branch) = &s.revert {
        out.push_str(&format!("\n  revert branch: {branch}"));
    }
    out.push_str(&format!(
        "\n  more: canaryd status {name} --repo {}",
        redact(repo)
    ));
    out
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
