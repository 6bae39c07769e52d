//! The daemon's figures, measured against the real binary, a real Git repository in a temp
//! dir and real HTTP on 127.0.0.1: commit → first weight (polling, local watch, and a signed
//! webhook delivery), failing measurement → canary at 0, and resident memory with 1 and 1,000
//! rollouts.
//!
//! `cargo bench --bench daemon` prints them; nothing here asserts a time.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times the real daemon with the real clock"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canaryd::core::record::StatusFile;
use canaryd::edge::git::Author;

#[path = "../tests/it/support/backends.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test harness")]
mod backends;
#[path = "../tests/it/support/git.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test harness")]
mod git;
#[path = "../tests/it/support/net.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test harness")]
mod net;

use backends::{Backends, Server};
use git::GitDaemon;

const RUNS: usize = 5;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Stopped when main ends (dropped before the runtime). Red answers as green, and fails.
    let sound = rt.block_on(Backends::start(&[
        Server::new("blue").version("1"),
        Server::new("green").version("1"),
    ]));
    let failing = rt.block_on(Backends::start(&[Server::new("green")
        .version("1")
        .failing(1.0)]));
    let (blue, green, red) = (sound["blue"], sound["green"], failing["green"]);

    // `cargo bench --bench daemon -- abort` runs one part: latency, group, webhook, abort,
    // memory or pushes.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let part = |name: &str| only.is_empty() || only.iter().any(|o| o == name);

    println!("canaryd daemon benchmarks ({RUNS} runs each, median; loopback, release build)");
    for (mode, watch) in [
        ("polling (1 s interval)", false),
        ("local watch (poll 30 s)", true),
    ] {
        if !part("latency") {
            break;
        }
        let mut times = Vec::new();
        let lab = Lab::new(blue, green);
        let mut daemon = lab.start(watch, if watch { "30s" } else { "1s" });
        lab.commit(&lab.rollouts(1, None), "stable");
        lab.wait(|s| s.len() == 1 && s.values().all(|f| f.live.is_some()));
        for run in 0..RUNS {
            // Commits land at spread-out moments of the poll interval, as real pushes do.
            std::thread::sleep(Duration::from_millis(200 * run as u64));
            let t0 = Instant::now();
            lab.commit(&lab.rollouts(1, Some(&format!("1.{run}"))), "canary");
            wait_router(lab.router, |b| b == "green");
            times.push(t0.elapsed());
            lab.commit(&lab.rollouts(1, None), "revert");
            lab.wait(|s| {
                s.values().all(|f| {
                    matches!(f.status.progress.phase(), "rolledBack" | "stable")
                        && f.live
                            .as_ref()
                            .is_some_and(|l| l.backends.get("green").is_none_or(|w| w.get() == 0))
                })
            });
        }
        kill(&mut daemon);
        println!(
            "  commit pushed -> first canary request, {mode}: median {:?} (min {:?}, max {:?})",
            median(&mut times),
            times[0],
            times[times.len() - 1]
        );
    }

    if part("group") {
        group_figure(blue, green);
    }

    // A file:// remote is not watched, and the poll is 5 min: only the webhook wakes the daemon.
    if part("webhook") {
        let mut times = Vec::new();
        let lab = Lab::new(blue, green);
        let secret = "bench webhook secret";
        let secret_file = lab.dir.path().join("webhook-secret");
        std::fs::write(&secret_file, secret).expect("secret");
        let config = lab.dir.path().join("canaryd.yaml");
        let yaml = format!("webhook:\n  secret: {{file: {}}}\n", secret_file.display());
        std::fs::write(&config, yaml).expect("config");
        lab.commit(&lab.rollouts(1, None), "stable");
        let mut daemon = lab.start_with(
            &format!("file://{}", lab.remote.display()),
            "5m",
            Some(&config),
        );
        lab.wait(|s| s.len() == 1 && s.values().all(|f| f.live.is_some()));
        for run in 0..RUNS {
            std::thread::sleep(Duration::from_millis(200 * run as u64));
            lab.commit(&lab.rollouts(1, Some(&format!("3.{run}"))), "canary");
            let t0 = Instant::now();
            let status = post_push(lab.admin, secret, "main");
            assert_eq!(status, 202, "webhook refused");
            wait_router(lab.router, |b| b == "green");
            times.push(t0.elapsed());
            lab.commit(&lab.rollouts(1, None), "revert");
            post_push(lab.admin, secret, "main");
            lab.wait(|s| {
                s.values().all(|f| {
                    matches!(f.status.progress.phase(), "rolledBack" | "stable")
                        && f.live
                            .as_ref()
                            .is_some_and(|l| l.backends.get("green").is_none_or(|w| w.get() == 0))
                })
            });
        }
        kill(&mut daemon);
        println!(
            "  signed GitHub push delivery -> first canary request (poll 5 min, file:// remote): median {:?} (min {:?}, max {:?})",
            median(&mut times),
            times[0],
            times[times.len() - 1]
        );
    }

    // A canary failing every request: from the failing measurement to weight 0.
    if part("abort") {
        let mut served = Vec::new();
        let mut after_failure = Vec::new();
        let lab = Lab::new(blue, red);
        let mut daemon = lab.start(true, "30s");
        lab.commit(&lab.rollouts(1, None), "stable");
        lab.wait(|s| s.len() == 1 && s.values().all(|f| f.live.is_some()));
        for run in 0..RUNS {
            lab.commit(&lab.analysed(&format!("2.{run}")), "failing canary");
            let (gone, _) = wait_router(lab.router, |b| b == "green");
            let zero = wait_zero(lab.router, gone);
            let s = lab.wait(|s| {
                s.values()
                    .all(|f| f.status.progress.phase() == "aborted" && !f.analysis.is_empty())
            });
            let failed_at = s
                .values()
                .flat_map(|f| f.analysis.iter())
                .map(|m| m.at)
                .min()
                .expect("a measurement");
            let zero_at =
                chrono::Utc::now() - chrono::Duration::from_std(zero.elapsed()).unwrap_or_default();
            served.push(zero - gone);
            // Both instants come from clocks read by two processes: a few ms either way.
            after_failure.push((zero_at - failed_at).num_microseconds().unwrap_or(0));
            lab.commit(&lab.rollouts(1, None), "revert");
            lab.wait(|s| {
                s.values()
                    .all(|f| matches!(f.status.progress.phase(), "rolledBack" | "stable"))
            });
        }
        kill(&mut daemon);
        println!(
            "  failing canary (1 s analysis interval): first canary request -> weight 0: median {:?} (min {:?}, max {:?}); failing measurement -> weight 0: within {} ms (the resolution here: two processes' clocks, one request's time)",
            median(&mut served),
            served[0],
            served[served.len() - 1],
            after_failure.iter().map(|us| us.abs()).max().unwrap_or(0) as f64 / 1000.0
        );
    }

    // Cold start: every rollout's first status on the remote, one pack per look.
    for n in [1usize, 1_000, 10_000] {
        if !part("memory") {
            break;
        }
        let lab = Lab::new(blue, green);
        lab.commit(&lab.rollouts(n, None), "many rollouts");
        let started = Instant::now();
        let mut daemon = lab.start(false, "5s");
        // Counting the status branch's files costs the bench little; parsing 10,000 of them
        // every 50 ms would take the daemon's CPU.
        let deadline = Instant::now() + Duration::from_secs(600);
        while lab.status_count() < n {
            assert!(
                Instant::now() < deadline,
                "not every rollout recorded in 600 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let settled = started.elapsed();
        let statuses = lab.statuses();
        assert_eq!(statuses.len(), n, "status files read back");
        let without: Vec<&String> = statuses
            .iter()
            .filter(|(_, f)| f.live.is_none())
            .map(|(name, _)| name)
            .take(3)
            .collect();
        assert!(
            without.is_empty(),
            "first statuses without live weights: {without:?}"
        );
        let packs = packs(&lab.remote);
        std::thread::sleep(Duration::from_secs(6)); // one more full look
        let (rss, hwm) = memory(daemon.id());
        // Idle looks: nothing changes, so each costs only reading Git and the router.
        let cpu0 = cpu_ms(daemon.id());
        std::thread::sleep(Duration::from_secs(10)); // two looks at a 5 s poll
        let idle = (cpu_ms(daemon.id()) - cpu0) / 2.0;
        kill(&mut daemon);
        println!(
            "  {n:>5} rollouts: first status of every rollout on the remote after {settled:.2?} ({packs} packs on the remote); RSS {rss} KiB (peak {hwm} KiB); an idle look costs {idle:.0} ms of CPU"
        );
    }

    // Pushes that take 200 ms each (a pre-receive hook that sleeps, behind `git daemon`): 200
    // rollouts given a canary in one commit, until every one is at step 1 with its weight
    // verified.
    if part("pushes") {
        let n = 200;
        let lab = Lab::new(blue, green);
        let hook = lab.remote.join("hooks/pre-receive");
        std::fs::write(&hook, "#!/bin/sh\ncat >/dev/null\nsleep 0.2\n").expect("hook");
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let (git_daemon, url) = lab.git_daemon();
        lab.commit(&lab.rollouts(n, None), "stable");
        // A git:// remote is not watched; a short poll stands in for a webhook's wake-up.
        let mut daemon = lab.start_with(&url, "200ms", None);
        lab.wait_long(
            |s| s.len() == n && s.values().all(|f| f.live.is_some()),
            Duration::from_secs(300),
        );
        let packs_before = packs(&lab.remote);
        let t0 = Instant::now();
        lab.commit(&lab.all_canary(n, "2.0"), "canary for every service");
        lab.wait_long(
            |s| {
                s.values().all(|f| {
                    f.status
                        .progress
                        .run()
                        .is_some_and(|r| r.weight.get() == 20 && r.verified)
                })
            },
            Duration::from_secs(600),
        );
        let took = t0.elapsed();
        let pushes = packs(&lab.remote) - packs_before;
        kill(&mut daemon);
        drop(git_daemon);
        println!(
            "  {n} rollouts given a canary in one commit, 200 ms per push (poll 200 ms): all at step 1, verified, after {took:.2?} ({pushes} pushes)"
        );
    }
}

/// Merge -> the first step (20 %) read back on every member, for `n` rollouts released by one
/// merge, in one lockstep group or each on its own.
fn group_figure(blue: SocketAddr, green: SocketAddr) {
    println!(
        "  one merge releasing n rollouts on the embedded router -> 20 % read back on every one \
         (local watch; 3 runs, median):"
    );
    let group = |n: usize| {
        let members: Vec<String> = (0..n)
            .map(|i| format!("{{rollout: checkout-{i}}}"))
            .collect();
        format!(
            "apiVersion: canaryd.dev/v1alpha1\nkind: RolloutGroup\nmetadata: {{name: shop}}\nspec:\n  order: lockstep\n  members: [{}]\n",
            members.join(", ")
        )
    };
    for n in [1, 10, 25, 50] {
        let mut row = Vec::new();
        for grouped in [false, true] {
            let mut times = Vec::new();
            for _ in 0..3 {
                let lab = Lab::new(blue, green);
                let mut daemon = lab.start(true, "30s");
                let with_group = |mut files: BTreeMap<String, Option<String>>| {
                    if grouped {
                        files.insert("rollouts/group.yaml".into(), Some(group(n)));
                    }
                    files
                };
                lab.commit(&with_group(lab.rollouts(n, None)), "stable");
                lab.wait(|s| s.len() == n && s.values().all(|f| f.live.is_some()));
                let t0 = Instant::now();
                lab.commit(&with_group(lab.all_canary(n, "2.0")), "release");
                lab.wait(|s| {
                    s.len() == n
                        && s.values().all(|f| {
                            f.live.as_ref().is_some_and(|l| {
                                l.backends.get("green").is_some_and(|w| w.get() == 20)
                            })
                        })
                });
                times.push(t0.elapsed());
                kill(&mut daemon);
            }
            row.push(median(&mut times));
        }
        println!(
            "    n = {n:>2}: each on its own {:?}, one lockstep group {:?}",
            row[0], row[1]
        );
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Sends requests one at a time until one is answered by a backend matching `pred`.
fn wait_router(router: SocketAddr, pred: impl Fn(&str) -> bool) -> (Instant, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        if let Some(b) = get(router)
            && pred(&b)
        {
            return (Instant::now(), n);
        }
    }
    panic!("router never answered from the expected backend");
}

/// The first instant after which 50 requests in a row avoid green.
fn wait_zero(router: SocketAddr, since: Instant) -> Instant {
    let deadline = since + Duration::from_secs(60);
    let mut first_clean = None;
    let mut clean = 0;
    while Instant::now() < deadline {
        let at = Instant::now();
        match get(router).as_deref() {
            Some("green") => {
                clean = 0;
                first_clean = None;
            }
            _ => {
                first_clean.get_or_insert(at);
                clean += 1;
                if clean >= 50 {
                    return first_clean.unwrap_or(at);
                }
            }
        }
    }
    panic!("canary never reached 0");
}

/// One plain HTTP/1.1 request; the backend that answered.
fn get(router: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&router, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: checkout-0\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("x-canaryd-backend: ")
            .map(|b| b.trim().to_string())
    })
}

/// Posts a signed GitHub push event for `branch` to the daemon's admin address; the HTTP status.
fn post_push(admin: SocketAddr, secret: &str, branch: &str) -> u16 {
    use std::io::{Read, Write};
    let body = format!("{{\"ref\":\"refs/heads/{branch}\"}}");
    let signature = canaryd::edge::webhook::signature(secret.as_bytes(), body.as_bytes());
    let mut s =
        std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "POST /hooks/github HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\
         Content-Type: application/json\r\nX-GitHub-Event: push\r\n\
         X-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("post");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How many packs the remote holds (a push over `git daemon` or `file://` adds one).
fn packs(remote: &std::path::Path) -> usize {
    std::fs::read_dir(remote.join("objects/pack"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, in ms.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    ticks * 10.0
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

struct Lab {
    dir: tempfile::TempDir,
    remote: PathBuf,
    router: SocketAddr,
    admin: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
}

impl Lab {
    fn new(blue: SocketAddr, green: SocketAddr) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote = dir.path().join("remote.git");
        canaryd::edge::git::init_bare(&remote, "main").expect("init");
        Lab {
            dir,
            remote,
            router: net::free_addr(),
            admin: net::free_addr(),
            blue,
            green,
        }
    }

    fn start(&self, watch: bool, poll: &str) -> Child {
        let repo = if watch {
            self.remote.display().to_string()
        } else {
            format!("file://{}", self.remote.display())
        };
        self.start_with(&repo, poll, None)
    }

    /// `canaryd run` on `repo`, with a configuration file if given.
    fn start_with(&self, repo: &str, poll: &str, config: Option<&std::path::Path>) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_canaryd"));
        command.args(["run", "--repo", repo]);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .args(["--poll-interval", poll, "--admin", &self.admin.to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("canaryd")
    }

    fn router_doc(&self) -> String {
        format!(
            "apiVersion: canaryd.dev/v1alpha1\nkind: Router\nmetadata: {{name: edge}}\nspec:\n  kind: embedded\n  listen: \"{}\"\n  backends: {{blue: \"http://{}\", green: \"http://{}\"}}\n",
            self.router, self.blue, self.green
        )
    }

    /// `n` rollouts, `checkout-0` … on services of the same names; with a canary version, the
    /// first one gets a canary at 20 % and then waits for a person.
    fn rollouts(&self, n: usize, canary: Option<&str>) -> BTreeMap<String, Option<String>> {
        let mut files =
            BTreeMap::from([("rollouts/router.yaml".to_string(), Some(self.router_doc()))]);
        for i in 0..n {
            let canary_line = match canary {
                Some(v) if i == 0 => format!("  canary: {{name: green, version: \"{v}\"}}\n"),
                _ => String::new(),
            };
            files.insert(
                format!("rollouts/checkout-{i}.yaml"),
                Some(format!(
                    "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: checkout-{i}}}\nspec:\n  router: edge\n  service: checkout-{i}\n  stable: {{name: blue, version: \"1.0\"}}\n{canary_line}  steps:\n    - setWeight: 20\n    - pause: {{}}\n"
                )),
            );
        }
        files
    }

    /// `n` rollouts, every one with a canary at 20 % that then waits for a person.
    fn all_canary(&self, n: usize, version: &str) -> BTreeMap<String, Option<String>> {
        let mut files = self.rollouts(n, None);
        for i in 0..n {
            files.insert(
                format!("rollouts/checkout-{i}.yaml"),
                Some(format!(
                    "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: checkout-{i}}}\nspec:\n  router: edge\n  service: checkout-{i}\n  stable: {{name: blue, version: \"1.0\"}}\n  canary: {{name: green, version: \"{version}\"}}\n  steps:\n    - setWeight: 20\n    - pause: {{}}\n"
                )),
            );
        }
        files
    }

    /// `git daemon` serving the remote on 127.0.0.1 with pushes allowed (so that its hooks
    /// run, as on a real server), and the remote's URL there.
    fn git_daemon(&self) -> (GitDaemon, String) {
        let daemon = GitDaemon::start(self.remote.parent().expect("parent"));
        let url = daemon.url("remote.git");
        (daemon, url)
    }

    /// One rollout whose canary is judged by a 1 s error-rate analysis.
    fn analysed(&self, version: &str) -> BTreeMap<String, Option<String>> {
        let mut files = self.rollouts(1, None);
        files.insert(
            "rollouts/checkout-0.yaml".to_string(),
            Some(format!(
                "apiVersion: canaryd.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: checkout-0}}\nspec:\n  router: edge\n  service: checkout-0\n  stable: {{name: blue, version: \"1.0\"}}\n  canary: {{name: green, version: \"{version}\"}}\n  steps:\n    - setWeight: 20\n    - analysis:\n        interval: 1s\n        count: 3\n        metrics:\n          - {{name: errors, template: error-rate}}\n    - setWeight: 50\n"
            )),
        );
        files
    }

    fn commit(&self, files: &BTreeMap<String, Option<String>>, message: &str) {
        let author = Author {
            name: "bench".into(),
            email: "bench@localhost".into(),
        };
        canaryd::edge::git::commit_files(&self.remote, "main", files, message, &author)
            .expect("commit");
    }

    /// How many status files the remote's status branch holds.
    fn status_count(&self) -> usize {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.remote)
            .args(["ls-tree", "--name-only", "canaryd/status", "status/"])
            .stderr(Stdio::null())
            .output()
            .expect("git");
        out.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    }

    fn statuses(&self) -> BTreeMap<String, StatusFile> {
        git::status_files(&self.remote, &self.dir.path().join("scratch"))
    }

    fn wait(
        &self,
        pred: impl Fn(&BTreeMap<String, StatusFile>) -> bool,
    ) -> BTreeMap<String, StatusFile> {
        self.wait_long(pred, Duration::from_secs(60))
    }

    fn wait_long(
        &self,
        pred: impl Fn(&BTreeMap<String, StatusFile>) -> bool,
        limit: Duration,
    ) -> BTreeMap<String, StatusFile> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.statuses();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; statuses: {:?}",
                s.keys().collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
