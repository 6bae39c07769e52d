//! Real routers and Prometheus on 127.0.0.1, shared by the tests and `benches/routers.rs`: each
//! starts in a temp dir of its own, on ports it picks, in front of the upstreams it is given,
//! and is stopped when dropped (also when a test panics).
//!
//! Starting returns [`Failed`] (what happened, and the end of the component's log): a test
//! unwraps it, so a component that is missing or does not start fails the test; a benchmark
//! reports it and goes on. The helpers for a started component panic, as tests want.
//!
//! Every router is configured alike: one service in front of its upstreams, the first of which
//! (the stable) carries all traffic, and a Prometheus endpoint where it has one.

pub mod caddy;
pub mod haproxy;
pub mod nginx;
pub mod prometheus;
pub mod traefik;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::net;

/// Why a component did not start, with the end of its log; its `Debug` is the text itself, so
/// that an `unwrap` shows it as written.
pub struct Failed(pub String);

impl std::fmt::Debug for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Failed` from any error, as "`what`: error".
fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Failed {
    move |e| Failed(format!("{what}: {e}"))
}

/// Where the program `name` is installed: PATH first, then the sbin folders.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// [`find`], or why not with how to install it (`install`: what CI runs).
pub fn require(name: &str, install: &str) -> Result<PathBuf, Failed> {
    find(name).ok_or_else(|| {
        Failed(format!(
            "{name} is not installed (looked in PATH, /usr/sbin and /usr/local/sbin): `{install}`"
        ))
    })
}

/// A foreground process run in a folder, its output appended to a log there; killed on drop.
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// A process not started yet, logging to `dir/log`.
    pub fn new(dir: &Path, log: &str) -> Process {
        Process {
            child: None,
            log: dir.join(log),
        }
    }

    /// Starts `command` in the log's folder (killing what runs first).
    pub fn spawn(&mut self, mut command: Command) -> Result<(), Failed> {
        self.kill();
        let program = command.get_program().to_string_lossy().into_owned();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(setup(&format!("open {}", self.log.display())))?;
        let err = log.try_clone().map_err(setup("clone the log"))?;
        if let Some(dir) = self.log.parent() {
            command.current_dir(dir);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(setup(&format!("cannot start {program}")))?;
        self.child = Some(child);
        Ok(())
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of `log`, for an error message.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Polls `ready` every 20 ms until it holds; fails, with the end of `log`, when `process` (if
/// any) exits first or `within` passes.
pub async fn wait_ready(
    what: &str,
    within: Duration,
    log: &Path,
    mut process: Option<&mut Process>,
    mut ready: impl AsyncFnMut() -> bool,
) -> Result<(), Failed> {
    let deadline = Instant::now() + within;
    let log = || tail(&std::fs::read_to_string(log).unwrap_or_default());
    loop {
        if let Some(status) = process.as_mut().and_then(|p| p.exited()) {
            return Err(Failed(format!("{what} exited with {status}:\n{}", log())));
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failed(format!(
                "{what} not ready within {within:?}:\n{}",
                log()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `GET path` at `addr` answers 200.
fn answers(addr: std::net::SocketAddr, path: &str) -> bool {
    matches!(net::http_get(addr, path, None), Some((200, _)))
}

/// A path as text, for a driver's configuration.
fn utf8(path: &Path) -> Result<&str, Failed> {
    path.to_str()
        .ok_or_else(|| Failed(format!("path {} is not UTF-8", path.display())))
}
