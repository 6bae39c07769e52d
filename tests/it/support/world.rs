//! The daemon as users run it: a [`World`] of a Git repository in a temp dir (a bare remote
//! and a working clone pushed to with the git CLI), two real backends on 127.0.0.1 and, when
//! started, the real `canaryd run`; and [`rollout_through`], the rollout every real router is
//! driven through.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canaryd::core::record::StatusFile;
use canaryd::edge::backend::{self, LoadConfig, LoadReport};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use super::backends::{Backends, Server};
use super::git::Repo;
use super::net;

/// Steps that stop at 30 % until a person promotes or aborts.
pub const HELD: &str = "  steps:\n    - setWeight: 30\n    - pause: {}\n    - setWeight: 60\n";

/// Steps that stop at 20 % until a person promotes or aborts: [`rollout_through`]'s.
pub const GATED: &str = "  steps:\n    - setWeight: 20\n    - pause: {}\n    - setWeight: 60\n";

/// Steps that send testers (`X-Canary: always`) to the canary at weight 0, then hold; users
/// kept on their side by `X-User-Id` once the canary has a weight.
pub const TESTERS_FIRST: &str = "  sticky: {header: X-User-Id}
  steps:
    - setHeaderRoute: {name: testers, match: [{headerName: X-Canary, headerValue: {exact: always}}]}
    - pause: {}
    - setWeight: 50
    - pause: {}
";

/// Three timed steps, for a daemon killed while it walks them: see
/// [`World::killed_rollout_kept_its_steps`].
pub const KILLED: &str = "  steps:\n    - setWeight: 20\n    - pause: {duration: 2s}\n    - setWeight: 40\n    - pause: {duration: 2s}\n    - setWeight: 60\n    - pause: {duration: 1s}\n";

/// A runtime of its own, as a plain `#[test]` needs for async harness pieces: two workers.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A repository, two backends and (when started) the daemon.
pub struct World {
    pub dir: TempDir,
    pub remote: PathBuf,
    pub work: PathBuf,
    pub rt: Runtime,
    pub router: SocketAddr,
    pub admin: SocketAddr,
    /// `blue` and `green`.
    pub backends: Backends,
    daemon: Option<Child>,
    starts: usize,
    /// The URL the daemon is given; the bare remote's path unless set.
    pub url: Option<String>,
    /// `--poll-interval`.
    pub poll: &'static str,
    /// The `spec:` of the router `edge` (indented two spaces), when it is not the embedded
    /// router on `router`.
    pub router_spec: Option<String>,
    /// A controller configuration file's text, passed with `--config`.
    pub config: Option<String>,
    /// More arguments to `canaryd run` (the crash tests' fault injection).
    pub run_args: Vec<&'static str>,
    /// The soft limit of open files the daemon starts with (it raises it itself), when set.
    pub open_files: Option<u64>,
    /// More environment for the daemon (as a service manager or image would set it).
    pub env: Vec<(&'static str, &'static str)>,
}

impl World {
    /// Backends `blue` and `green`, failing the given fractions of requests.
    pub fn new(blue_fails: f64, green_fails: f64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let Repo { remote, work } = Repo::init(dir.path());
        let rt = runtime();
        let backends = rt.block_on(Backends::start(&[
            Server::new("blue").version("1").failing(blue_fails),
            Server::new("green").version("1").failing(green_fails),
        ]));
        World {
            router: net::free_addr(),
            admin: net::free_addr(),
            dir,
            remote,
            work,
            rt,
            backends,
            daemon: None,
            starts: 0,
            url: None,
            poll: "1s",
            router_spec: None,
            config: None,
            run_args: Vec::new(),
            open_files: None,
            env: Vec::new(),
        }
    }

    fn repo(&self) -> Repo {
        Repo {
            remote: self.remote.clone(),
            work: self.work.clone(),
        }
    }

    /// The router document every spec here starts with.
    pub fn router_doc(&self) -> String {
        if let Some(spec) = &self.router_spec {
            return format!(
                "apiVersion: canaryd.dev/v1alpha1\nkind: Router\nmetadata: {{name: edge}}\nspec:\n{spec}---\n"
            );
        }
        format!(
            "apiVersion: canaryd.dev/v1alpha1\nkind: Router\nmetadata: {{name: edge}}\n\
             spec:\n  kind: embedded\n  listen: \"{}\"\n  backends: {{blue: \"http://{}\", green: \"http://{}\"}}\n---\n",
            self.router, self.backends["blue"], self.backends["green"]
        )
    }

    /// A rollout spec of `checkout` on blue (stable) and, if given, green (canary).
    pub fn spec(&self, canary: bool, steps: &str) -> String {
        let canary = if canary {
            "  canary: {name: green, version: \"1.1\"}\n"
        } else {
            ""
        };
        format!(
            "{}apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: checkout}}\n\
             spec:\n  router: edge\n  service: checkout\n  stable: {{name: blue, version: \"1.0\"}}\n{canary}\
             {steps}",
            self.router_doc()
        )
    }

    /// Writes `rollouts/<file>`, commits it and pushes, as a merged pull request would.
    pub fn merge(&self, file: &str, text: &str, message: &str) -> String {
        let path = format!("rollouts/{file}");
        self.repo().commit(&[(&path, Some(text))], message)
    }

    /// Writes several `rollouts/<file>`s in one commit and pushes, as one merged pull request.
    pub fn merge_all(&self, files: &[(&str, &str)], message: &str) -> String {
        let paths: Vec<String> = files.iter().map(|(f, _)| format!("rollouts/{f}")).collect();
        let changes: Vec<(&str, Option<&str>)> = paths
            .iter()
            .zip(files)
            .map(|(p, (_, text))| (p.as_str(), Some(*text)))
            .collect();
        self.repo().commit(&changes, message)
    }

    /// `canaryd promote|abort checkout --push` in the working clone, as a person runs it.
    pub fn gate(&self, action: &str) {
        self.gate_on(action, "checkout");
    }

    /// `canaryd promote|abort <rollout> --push` in the working clone.
    pub fn gate_on(&self, action: &str, rollout: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_canaryd"))
            .args([action, rollout, "--push", "--repo"])
            .arg(&self.work)
            .env_remove("CANARYD_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Merges `checkout` on blue alone (no canary yet) with these steps, starts the daemon and
    /// waits until it holds all traffic on blue.
    pub fn start_on_stable(&mut self, steps: &str) {
        self.merge(
            "checkout.yaml",
            &self.spec(false, steps),
            "checkout on blue",
        );
        self.start();
        self.wait_for("checkout", 30, "stable", |s| {
            phase(s) == "stable" && s.live.is_some()
        });
    }

    /// Starts `canaryd run` against the bare remote.
    pub fn start(&mut self) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("daemon-{}.log", self.starts)))
                .unwrap();
        self.starts += 1;
        let repo = self
            .url
            .clone()
            .unwrap_or_else(|| self.remote.display().to_string());
        // Picked now, not when the world was made: another test's server may have taken the
        // port picked then (it was free, not held).
        self.admin = net::free_addr();
        let mut command = match self.open_files {
            // As a service manager would start it: the shell sets the limit and execs.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -Sn {n} && exec \"$0\" \"$@\"")])
                    .arg(env!("CARGO_BIN_EXE_canaryd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_canaryd")),
        };
        command.args(["run", "--repo", &repo]);
        if let Some(config) = &self.config {
            let path = self.config_file();
            std::fs::write(&path, config).unwrap();
            command.arg("--config").arg(path);
        }
        let child = command
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--poll-interval",
                self.poll,
                "--admin",
                &self.admin.to_string(),
            ])
            .args(&self.run_args)
            .envs(self.env.iter().copied())
            .env_remove("CANARYD_CONFIG")
            .env("RUST_LOG", "canaryd=debug,info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    /// Where [`World::start`] writes `config` for the daemon (and for CLI commands to read).
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("canaryd.yaml")
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.daemon.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        None
    }

    /// Everything the daemon logged.
    pub fn logs(&self) -> String {
        (0..self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("daemon-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A plain HTTP/1.1 GET on the daemon's admin address; the whole response.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    /// The status files on the remote's status branch.
    pub fn statuses(&self) -> std::collections::BTreeMap<String, StatusFile> {
        self.repo().statuses(&self.dir.path().join("scratch"))
    }

    pub fn status(&self, rollout: &str) -> Option<StatusFile> {
        self.statuses().remove(rollout)
    }

    /// Every version of a rollout's status file on the status branch, oldest first.
    pub fn history(&self, rollout: &str) -> Vec<StatusFile> {
        self.repo().history(rollout)
    }

    /// Waits until `rollout`'s status satisfies `pred`; panics with the logs after `secs`.
    pub fn wait_for(
        &self,
        rollout: &str,
        secs: u64,
        what: &str,
        pred: impl Fn(&StatusFile) -> bool,
    ) -> StatusFile {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.status(rollout)
                && pred(&s)
            {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {rollout}: {what}\nstatus: {:#?}\nlogs:\n{}",
                    self.status(rollout),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `n` requests through the router.
    pub fn traffic(&self, n: usize) -> LoadReport {
        self.rt
            .block_on(backend::load(
                self.router,
                LoadConfig {
                    concurrency: 4,
                    total: n,
                    max_duration: Duration::from_secs(20),
                    host: None,
                },
            ))
            .unwrap()
    }

    /// A steady bounded load through the router in the background, for analysis to measure.
    pub fn background_load(&self, secs: u64) {
        let router = self.router;
        self.rt.spawn(async move {
            let _ = backend::load(
                router,
                LoadConfig {
                    concurrency: 2,
                    total: 200_000,
                    max_duration: Duration::from_secs(secs),
                    host: None,
                },
            )
            .await;
        });
    }

    /// The status branch's log for one rollout, as `git log --oneline` shows it.
    pub fn status_log(&self, rollout: &str) -> String {
        self.repo().status_log(rollout)
    }

    /// Branches on the remote under `prefix`.
    pub fn remote_branches(&self, prefix: &str) -> Vec<String> {
        self.repo().branches(prefix)
    }

    /// Checks `checkout`, promoted through [`KILLED`]'s steps while being killed: no weight
    /// outside the steps, no step skipped, no pause shortened; and a restart does not run it
    /// again.
    pub fn killed_rollout_kept_its_steps(&mut self) {
        let versions = self.history("checkout");
        // No weight outside the steps, in Git or on the router.
        let allowed = [0u8, 20, 40, 60, 100];
        for v in &versions {
            assert!(allowed.contains(&canary_weight(v)), "{v:#?}");
        }
        let logs = self.logs();
        for line in logs.lines().filter(|l| l.contains("weights set")) {
            let green = line.split("\"green\": ").nth(1).map(|t| {
                t.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse::<u8>()
                    .unwrap()
            });
            if let Some(g) = green {
                assert!(allowed.contains(&g), "router got {g}: {line}");
            }
        }
        // Steps advance one at a time, never back, never skipped.
        let steps: Vec<usize> = versions
            .iter()
            .filter_map(|v| v.status.progress.run().map(|r| r.step))
            .collect();
        for pair in steps.windows(2) {
            assert!(
                pair[1] == pair[0] || pair[1] == pair[0] + 1,
                "steps {steps:?}"
            );
        }
        assert_eq!(steps.first(), Some(&0));
        assert_eq!(steps.last(), Some(&5), "{steps:?}");
        // A pause is never shortened: the next step starts no sooner than the pause's length
        // after the pause began, whatever the kills in between.
        let first_at = |k: usize| {
            versions
                .iter()
                .find(|v| v.status.progress.run().is_some_and(|r| r.step == k))
                .map(|v| v.status.progress.run().unwrap().step_started_at)
                .unwrap()
        };
        for (pause, secs) in [(1usize, 2i64), (3, 2), (5, 1)] {
            let next = if pause == 5 {
                versions
                    .iter()
                    .find(|v| phase(v) == "promoted")
                    .map(|v| v.updated_at)
                    .unwrap()
            } else {
                first_at(pause + 1)
            };
            let took = next - first_at(pause);
            assert!(
                took >= chrono::Duration::seconds(secs),
                "pause {pause} lasted {took}"
            );
        }

        // A finished rollout does not run again after a restart.
        let before = versions.len();
        self.kill();
        let restarted = chrono::Utc::now();
        self.start();
        // The restarted router forgot its weights; the daemon sets them again, promoted.
        self.wait_for("checkout", 30, "promoted, read back", |s| {
            phase(s) == "promoted"
                && s.live.as_ref().is_some_and(|l| {
                    l.at > restarted && l.backends.get("green").is_some_and(|g| g.get() == 100)
                })
        });
        let after = self.history("checkout");
        assert!(
            after[before..].iter().all(|v| phase(v) == "promoted"),
            "{:#?}",
            &after[before..]
        );
        assert_eq!(self.traffic(30).by_backend.get("green"), Some(&30));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn phase(s: &StatusFile) -> &'static str {
    s.status.progress.phase()
}

/// The canary's desired weight in percent (0 without one).
pub fn canary_weight(s: &StatusFile) -> u8 {
    s.desired.get("green").map_or(0, |w| w.get())
}

/// Whether the current step's weight was read back from the router.
/// Which backend answered a request through the world's router with `headers`.
pub fn side_for(w: &World, headers: &[(&str, &str)]) -> String {
    let (status, body) = net::http_get_with(w.router, "/", headers).expect("the router answers");
    assert_eq!(status, 200, "{body}");
    body.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn verified(s: &StatusFile) -> bool {
    s.status.progress.run().is_some_and(|r| r.verified)
}

/// A rollout through a real router the caller runs in front of `w`'s backends (its Router
/// `spec:` in `w.router_spec`), checked with the router's own read-back (`read`: canary
/// percentage): each step takes effect, a hand-made change (`hand_set`: canary percentage) is
/// drift and is undone, a promote commit promotes, and an abort commit sends traffic to stable.
///
/// Users send a bounded load to the router's `front` address the whole time; what they saw is
/// returned, for the caller to assert what its router guarantees.
pub fn rollout_through(
    w: &mut World,
    front: SocketAddr,
    read: impl Fn() -> u8,
    hand_set: impl Fn(u8),
) -> LoadReport {
    w.start_on_stable(GATED);
    assert_eq!(read(), 0, "stable carries everything");
    let stop = CancellationToken::new();
    let users = w.rt.spawn(users(front, stop.clone()));
    w.merge("checkout.yaml", &w.spec(true, GATED), "canary: green 1.1");
    w.wait_for("checkout", 30, "paused at 20%, verified", |s| {
        phase(s) == "paused" && canary_weight(s) == 20 && verified(s)
    });
    assert_eq!(read(), 20, "the router's read-back after step 1");

    // Someone changes the weights by hand: the daemon notices, records it, and sets them back.
    hand_set(50);
    w.wait_for("checkout", 30, "drift recorded and undone", |s| {
        s.status.drift.is_some()
            && s.live
                .as_ref()
                .is_some_and(|l| l.backends.get("green").is_some_and(|g| g.get() == 20))
    });
    assert_eq!(read(), 20, "re-applied after the hand change");

    // The daemon's own read-back first: a router may take a moment to load a change.
    let green_live = |s: &StatusFile, pct: u8| {
        s.live
            .as_ref()
            .is_some_and(|l| l.backends.get("green").is_some_and(|g| g.get() == pct))
    };
    w.gate("promote");
    w.wait_for("checkout", 30, "promoted, read back", |s| {
        phase(s) == "promoted" && green_live(s, 100)
    });
    assert_eq!(read(), 100, "promoted: the canary carries everything");

    // The next release into the blue slot, aborted by hand: traffic back to stable (green).
    let next = w
        .spec(true, GATED)
        .replace(
            "stable: {name: blue, version: \"1.0\"}",
            "stable: {name: green, version: \"1.1\"}",
        )
        .replace(
            "canary: {name: green, version: \"1.1\"}",
            "canary: {name: blue, version: \"1.2\"}",
        );
    w.merge("checkout.yaml", &next, "canary: blue 1.2");
    w.wait_for("checkout", 30, "paused at 20% on blue", |s| {
        phase(s) == "paused" && s.desired.get("blue").is_some_and(|b| b.get() == 20) && verified(s)
    });
    assert_eq!(read(), 80, "green (now stable) keeps 80%");
    w.gate("abort");
    w.wait_for("checkout", 30, "aborted, read back", |s| {
        phase(s) == "aborted" && green_live(s, 100)
    });
    assert_eq!(
        read(),
        100,
        "aborted: all traffic back on green, the stable"
    );
    stop.cancel();
    let report = w.rt.block_on(users).unwrap();
    println!("users during the rollout: {report:?}");
    assert!(report.sent > 100, "{report:?}");
    report
}

/// Requests in rounds of half a second until `stop` (a minute at most): 2 at a time.
async fn users(front: SocketAddr, stop: CancellationToken) -> LoadReport {
    let mut total = LoadReport::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.is_cancelled() && Instant::now() < deadline {
        let round = backend::load(
            front,
            LoadConfig {
                concurrency: 2,
                total: 10_000,
                max_duration: Duration::from_millis(500),
                host: None,
            },
        )
        .await
        .unwrap();
        total.merge(round);
    }
    total
}
