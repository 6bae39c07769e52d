//! The apply + verify round trip of each real router, measured through canaryd's own drivers.
//!
//! For every router installed here (HAProxy, Traefik, Caddy, NGINX) this starts it on
//! 127.0.0.1 in a temp dir in front of two demo backends, `blue` and `green`, then times
//! [`RUNS`] round trips: `driver.apply("checkout", traffic)`, alternating 90/10 and 10/90,
//! then `driver.observe("checkout")` every [`POLL`] (at most [`VERIFY_LIMIT`]) until
//! `observed.percentages()` equals the traffic. One untimed round trip to 10/90 comes first,
//! so every timed one is a real change. What "verify" reads differs per router and is printed
//! with the table: NGINX cannot report weights, so its read back is canaryd's own file.
//!
//! Then one more figure: an HAProxy with [`MANY`] backends of two servers each, read whole
//! with one `driver.observe_all(all names)` against one `driver.observe(name)` per backend,
//! [`MANY_RUNS`] times each (the runs alternate), with the median printed.
//!
//! `cargo bench --bench routers` prints median, p90, min and max per router; nothing here
//! asserts a time. A router whose binary is missing is skipped. Every process is stopped by a
//! drop guard, also when the bench panics.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times real routers with the real clock"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canaryd::backend::{BackendConfig, spawn};
use canaryd::model::Traffic;
use canaryd::router::Driver;
use canaryd::router::caddy::CaddyRouter;
use canaryd::router::haproxy::HaproxyRouter;
use canaryd::router::nginx::NginxRouter;
use canaryd::router::traefik::TraefikRouter;
use serde_json::json;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Timed round trips per router.
const RUNS: usize = 50;
/// The pause between two reads while verifying.
const POLL: Duration = Duration::from_millis(5);
/// How long verifying one change may take before the router counts as failed.
const VERIFY_LIMIT: Duration = Duration::from_secs(5);
/// How long one `apply` may take (the drivers bound each request or command themselves).
const APPLY_LIMIT: Duration = Duration::from_secs(10);
/// How long a router may take to answer after it is started.
const READY_LIMIT: Duration = Duration::from_secs(10);
/// The service every router is configured with.
const SERVICE: &str = "checkout";
/// Backends of the HAProxy read whole by the `observe_all` figure.
const MANY: usize = 1_000;
/// Timed reads of all [`MANY`] backends, each way.
const MANY_RUNS: usize = 5;
/// How long one read of all [`MANY`] backends may take, either way.
const MANY_LIMIT: Duration = Duration::from_secs(30);

/// The routers, in the order they are measured.
#[derive(Clone, Copy)]
enum Kind {
    Haproxy,
    Traefik,
    Caddy,
    Nginx,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Haproxy, Kind::Traefik, Kind::Caddy, Kind::Nginx];

    fn name(self) -> &'static str {
        match self {
            Kind::Haproxy => "haproxy",
            Kind::Traefik => "traefik",
            Kind::Caddy => "caddy",
            Kind::Nginx => "nginx",
        }
    }

    /// The arguments that make the binary print its version (and so prove it runs).
    fn version_args(self) -> &'static [&'static str] {
        match self {
            Kind::Haproxy | Kind::Nginx => &["-v"],
            Kind::Traefik | Kind::Caddy => &["version"],
        }
    }

    /// What `observe` reads, so what a verified round trip means.
    fn verify(self) -> &'static str {
        match self {
            Kind::Haproxy => {
                "`show servers state checkout` on the runtime API (unix socket): the weights HAProxy runs with"
            }
            Kind::Traefik => {
                "GET /api/http/services/checkout@file: the weights Traefik loaded from canaryd's dynamic file (provider throttle 100 ms)"
            }
            Kind::Caddy => {
                "GET /id/checkout on the admin API: the handler config Caddy runs (apply PATCHes it and Caddy reloads)"
            }
            Kind::Nginx => {
                "canaryd's own upstreams.conf read back (NGINX cannot report weights); apply includes `nginx -t` and `nginx -s reload`"
            }
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime with 2 workers");
    let stop = CancellationToken::new();
    // Stops the backends when main ends, also on panic (dropped before the runtime).
    let _stop_backends = stop.clone().drop_guard();
    let backends = Backends {
        blue: rt.block_on(backend("blue", &stop)),
        green: rt.block_on(backend("green", &stop)),
    };

    println!(
        "canaryd routers: apply + verify round trip, {RUNS} runs each (90/10 <-> 10/90), \
         observe every {POLL:?} until the weights read back (at most {VERIFY_LIMIT:?}); loopback"
    );
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for kind in Kind::ALL {
        let Some((binary, version)) = installed(kind) else {
            notes.push(format!("skipped: {} not installed", kind.name()));
            continue;
        };
        let result = rt.block_on(async {
            let rig = start(kind, &binary, &backends).await?;
            let times = measure(&rig.driver).await;
            times.map_err(|e| format!("{e}\n{}", rig.log_tail()))
        });
        match result {
            Ok(times) => {
                rows.push(row(kind, &times));
                notes.push(format!(
                    "{} ({version}): verify = {}",
                    kind.name(),
                    kind.verify()
                ));
            }
            Err(e) => notes.push(format!("failed: {}: {e}", kind.name())),
        }
    }

    println!();
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "router", "median", "p90", "min", "max", "observes/run"
    );
    for r in &rows {
        println!("{r}");
    }
    println!();
    for n in &notes {
        println!("{n}");
    }

    println!();
    let Some((binary, version)) = installed(Kind::Haproxy) else {
        println!("observe_all figure skipped: haproxy not installed");
        return;
    };
    let figure = rt.block_on(async {
        let names: Vec<String> = (0..MANY).map(|i| format!("shop-{i:04}")).collect();
        let dir = tempfile::tempdir().map_err(setup)?;
        let mut rig = haproxy_rig(&binary, dir, &backends, &names)?;
        rig.ready().await?;
        let times = observe_many(&rig.driver, &names).await;
        times.map_err(|e| format!("{e}\n{}", rig.log_tail()))
    });
    match figure {
        Ok((all, each)) => println!(
            "haproxy ({version}), {MANY} backends of 2 servers, unix socket, median of {MANY_RUNS}:\n\
             \x20 observe_all of all {MANY}: {} (one `show servers state;show backend`)\n\
             \x20 {MANY} observe calls:      {} (one `show servers state <backend>` each)",
            spread(&all),
            spread(&each)
        ),
        Err(e) => println!("observe_all figure failed: {e}"),
    }
}

/// Reads all of `names` [`MANY_RUNS`] times each way, alternating: one `observe_all`, then one
/// `observe` a name. The first read each way is checked against the other and not timed.
async fn observe_many(
    driver: &Driver,
    names: &[String],
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let bounded = |what: &str| format!("{what} took over {MANY_LIMIT:?}");
    let read_all = async || {
        let all = tokio::time::timeout(MANY_LIMIT, driver.observe_all(names))
            .await
            .map_err(|_| bounded("observe_all"))?
            .map_err(|e| format!("observe_all: {e}"))?;
        all.into_iter()
            .map(|(name, observed)| Ok((name, observed.map_err(|e| e.to_string())?)))
            .collect::<Result<BTreeMap<_, _>, String>>()
    };
    let read_each = async || {
        let each = async {
            let mut each = BTreeMap::new();
            for name in names {
                let observed = driver.observe(name).await;
                each.insert(name.clone(), observed.map_err(|e| e.to_string())?);
            }
            Ok::<_, String>(each)
        };
        tokio::time::timeout(MANY_LIMIT, each)
            .await
            .map_err(|_| bounded("observe of each"))?
    };
    if read_all().await? != read_each().await? {
        return Err("observe_all and observe read different weights".to_string());
    }
    let (mut all, mut each) = (Vec::new(), Vec::new());
    for _ in 0..MANY_RUNS {
        let started = Instant::now();
        read_all().await?;
        all.push(started.elapsed());
        let started = Instant::now();
        read_each().await?;
        each.push(started.elapsed());
    }
    Ok((all, each))
}

/// `median (min .. max)` of `times`.
fn spread(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    format!(
        "{} ({} .. {})",
        ms(sorted[sorted.len() / 2]),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    )
}

/// Where the two backends listen.
struct Backends {
    blue: SocketAddr,
    green: SocketAddr,
}

async fn backend(name: &str, stop: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend on 127.0.0.1");
    let addr = listener.local_addr().expect("a bound backend's address");
    let config = BackendConfig {
        name: name.to_string(),
        version: "v1".to_string(),
        fail_fraction: 0.0,
        latency: Duration::ZERO,
    };
    spawn(listener, config, stop.clone()).await;
    addr
}

/// The router's binary and the first line of its version, if it is installed and runs.
fn installed(kind: Kind) -> Option<(PathBuf, String)> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(kind.name()))
        .filter(|candidate| candidate.is_file())
        .find_map(|candidate| {
            let out = Command::new(&candidate)
                .args(kind.version_args())
                .stdin(Stdio::null())
                .output()
                .ok()
                .filter(|out| out.status.success())?;
            // nginx prints its version on stderr.
            let text = [out.stdout, out.stderr].concat();
            let first = String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            let version = first.split_whitespace().collect::<Vec<_>>().join(" ");
            Some((candidate, version))
        })
}

/// A free port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

fn traffic(blue: i64, green: i64) -> Traffic {
    Traffic::of(&[("blue", blue), ("green", green)]).expect("weights in 0..=100")
}

/// One warm-up round trip, then [`RUNS`] timed ones; each with how many reads verifying took.
async fn measure(driver: &Driver) -> Result<Vec<(Duration, usize)>, String> {
    round_trip(driver, &traffic(10, 90))
        .await
        .map_err(|e| format!("warm-up: {e}"))?;
    let mut times = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let want = if run % 2 == 0 {
            traffic(90, 10)
        } else {
            traffic(10, 90)
        };
        let started = Instant::now();
        let observes = round_trip(driver, &want)
            .await
            .map_err(|e| format!("run {run}: {e}"))?;
        times.push((started.elapsed(), observes));
    }
    Ok(times)
}

/// Applies `want`, then observes until the router reports it; returns the number of reads.
async fn round_trip(driver: &Driver, want: &Traffic) -> Result<usize, String> {
    match tokio::time::timeout(APPLY_LIMIT, driver.apply(SERVICE, want)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("apply: {e}")),
        Err(_) => return Err(format!("apply took over {APPLY_LIMIT:?}")),
    }
    let deadline = tokio::time::Instant::now() + VERIFY_LIMIT;
    let mut observes = 0;
    let mut last = String::from("nothing read");
    loop {
        observes += 1;
        match tokio::time::timeout_at(deadline, driver.observe(SERVICE)).await {
            Ok(Ok(o)) if o.percentages().as_ref() == Some(&want.backends) => return Ok(observes),
            Ok(Ok(o)) => last = format!("{:?}", o.backends),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {}
        }
        if tokio::time::Instant::now() + POLL >= deadline {
            return Err(format!(
                "{:?} not read back within {VERIFY_LIMIT:?}; last: {last}",
                want.backends
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One line of the table: nearest-rank median and p90, min, max, mean reads per round trip.
fn row(kind: Kind, times: &[(Duration, usize)]) -> String {
    let mut sorted: Vec<Duration> = times.iter().map(|t| t.0).collect();
    sorted.sort();
    let rank = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).max(1) - 1];
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    let observes = times.iter().map(|t| t.1).sum::<usize>() as f64 / times.len() as f64;
    format!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>14.1}",
        kind.name(),
        ms(rank(0.5)),
        ms(rank(0.9)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1]),
        observes
    )
}

/// A started router and its driver. Fields drop in order: the driver, the process (stopped),
/// then the directory.
struct Rig {
    driver: Driver,
    process: Process,
    dir: TempDir,
    log: &'static str,
}

impl Rig {
    /// The last lines of the router's log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(self.log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("--- last lines of {} ---\n{tail}", self.log)
    }

    /// Waits until the driver's `health()` answers, the process still running.
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Process::Child(child) = &mut self.process
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("exited with {status}\n{}", self.log_tail()));
            }
            let health = self.driver.health().await;
            match health {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "not ready within {READY_LIMIT:?}: {e}\n{}",
                        self.log_tail()
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// The router's process, stopped on drop (also on panic).
enum Process {
    /// A foreground process (haproxy -db, traefik, caddy run): killed.
    Child(Child),
    /// A daemonised NGINX: `nginx -s quit`, then KILL of its master and workers if it lingers.
    Nginx { binary: PathBuf, dir: PathBuf },
}

impl Drop for Process {
    fn drop(&mut self) {
        match self {
            Process::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Process::Nginx { binary, dir } => stop_nginx(binary, dir),
        }
    }
}

/// Spawns `command` with its output in `dir/log`.
fn spawn_logged(mut command: Command, dir: &Path, log: &str) -> Result<Child, String> {
    let file = std::fs::File::create(dir.join(log)).map_err(|e| format!("create {log}: {e}"))?;
    let err = file.try_clone().map_err(|e| format!("clone {log}: {e}"))?;
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))
}

fn setup<E: std::fmt::Display>(e: E) -> String {
    format!("setup: {e}")
}

fn utf8(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", path.display()))
}

/// As tests/it/router_haproxy.rs: HAProxy in `dir`, runtime API on a unix socket, one backend
/// per name in `services` (the first the frontend's), each with blue 100 and green 0; started,
/// not yet ready.
fn haproxy_rig(
    binary: &Path,
    dir: TempDir,
    backends: &Backends,
    services: &[String],
) -> Result<Rig, String> {
    let d = dir.path();
    let (blue, green) = (backends.blue, backends.green);
    let mut config = format!(
        "global\n\
         \x20   stats socket {dir}/admin.sock level admin\n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 1s\n\
         \x20   timeout client 10s\n\
         \x20   timeout server 10s\n\
         frontend web\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   default_backend {first}\n",
        dir = d.display(),
        port = free_port(),
        first = services.first().map_or(SERVICE, String::as_str),
    );
    for service in services {
        config.push_str(&format!(
            "backend {service}\n\
             \x20   balance roundrobin\n\
             \x20   server blue {blue} weight 100\n\
             \x20   server green {green} weight 0\n"
        ));
    }
    std::fs::write(d.join("haproxy.cfg"), config).map_err(setup)?;
    let driver =
        HaproxyRouter::new("edge", &format!("unix:{}/admin.sock", d.display())).map_err(setup)?;
    let mut command = Command::new(binary);
    command.args(["-f", "haproxy.cfg", "-db"]);
    let child = spawn_logged(command, d, "haproxy.log")?;
    Ok(Rig {
        driver: Driver::Haproxy(driver),
        process: Process::Child(child),
        dir,
        log: "haproxy.log",
    })
}

/// Starts `kind` in a fresh temp dir in front of `backends` and waits until it answers.
async fn start(kind: Kind, binary: &Path, backends: &Backends) -> Result<Rig, String> {
    let dir = tempfile::tempdir().map_err(setup)?;
    let d = dir.path();
    let (blue, green) = (backends.blue, backends.green);
    let mut rig = match kind {
        Kind::Haproxy => haproxy_rig(binary, dir, backends, &[SERVICE.to_string()])?,
        // As tests/it/router_traefik.rs: the user's routers.yaml, canaryd's dynamic/canaryd.yaml.
        Kind::Traefik => {
            let dynamic = d.join("dynamic");
            std::fs::create_dir(&dynamic).map_err(setup)?;
            std::fs::write(
                dynamic.join("routers.yaml"),
                "http:\n  routers:\n    checkout:\n      entryPoints: [web]\n      rule: \"PathPrefix(`/`)\"\n      service: checkout@file\n",
            )
            .map_err(setup)?;
            let api = free_port();
            let urls = BTreeMap::from([
                ("blue".to_string(), format!("http://{blue}")),
                ("green".to_string(), format!("http://{green}")),
            ]);
            let driver = TraefikRouter::new(
                "edge",
                &format!("http://127.0.0.1:{api}"),
                utf8(&dynamic.join("canaryd.yaml"))?,
                &urls,
            )
            .map_err(setup)?;
            let mut command = Command::new(binary);
            command
                .arg(format!(
                    "--entryPoints.web.address=127.0.0.1:{}",
                    free_port()
                ))
                .arg(format!("--entryPoints.traefik.address=127.0.0.1:{api}"))
                .arg("--api.insecure=true")
                .arg(format!("--providers.file.directory={}", dynamic.display()))
                .arg("--providers.file.watch=true")
                .arg("--providers.providersThrottleDuration=100ms")
                .arg("--global.checkNewVersion=false")
                .arg("--global.sendAnonymousUsage=false")
                .arg("--log.level=ERROR");
            let child = spawn_logged(command, d, "traefik.log")?;
            Rig {
                driver: Driver::Traefik(driver),
                process: Process::Child(child),
                dir,
                log: "traefik.log",
            }
        }
        // As tests/it/router_caddy.rs: JSON config, `@id` checkout, weighted_round_robin 100/0.
        Kind::Caddy => {
            let admin = format!("127.0.0.1:{}", free_port());
            let config = json!({
                "admin": {"listen": admin, "config": {"persist": false}},
                "apps": {"http": {"servers": {"srv0": {
                    "listen": [format!("127.0.0.1:{}", free_port())],
                    "automatic_https": {"disable": true},
                    "routes": [{"handle": [{
                        "@id": SERVICE,
                        "handler": "reverse_proxy",
                        "upstreams": [{"dial": blue.to_string()}, {"dial": green.to_string()}],
                        "load_balancing": {"selection_policy": {
                            "policy": "weighted_round_robin", "weights": [100, 0]
                        }}
                    }]}]
                }}}}
            });
            let bytes = serde_json::to_vec_pretty(&config).map_err(setup)?;
            std::fs::write(d.join("caddy.json"), bytes).map_err(setup)?;
            let dials = BTreeMap::from([
                ("blue".to_string(), blue.to_string()),
                ("green".to_string(), green.to_string()),
            ]);
            let driver =
                CaddyRouter::new("edge", &format!("http://{admin}"), &dials).map_err(setup)?;
            let mut command = Command::new(binary);
            command
                .args(["run", "--config", "caddy.json"])
                .env("HOME", d)
                .env("XDG_CONFIG_HOME", d.join("config"))
                .env("XDG_DATA_HOME", d.join("data"));
            let child = spawn_logged(command, d, "caddy.log")?;
            Rig {
                driver: Driver::Caddy(driver),
                process: Process::Child(child),
                dir,
                log: "caddy.log",
            }
        }
        // As tests/it/router_nginx.rs: pid, error_log and temp paths in the temp dir, and the
        // upstreams.conf include that the driver owns, first written by an operator at 1/1.
        Kind::Nginx => {
            let dd = d.display();
            let config = format!(
                "worker_processes 1;\n\
                 daemon on;\n\
                 pid {dd}/nginx.pid;\n\
                 error_log {dd}/error.log notice;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n\
                 \x20   access_log off;\n\
                 \x20   client_body_temp_path {dd}/tmp/body;\n\
                 \x20   proxy_temp_path {dd}/tmp/proxy;\n\
                 \x20   fastcgi_temp_path {dd}/tmp/fastcgi;\n\
                 \x20   uwsgi_temp_path {dd}/tmp/uwsgi;\n\
                 \x20   scgi_temp_path {dd}/tmp/scgi;\n\
                 \x20   include {dd}/upstreams.conf;\n\
                 \x20   server {{\n\
                 \x20       listen 127.0.0.1:{port};\n\
                 \x20       location / {{ proxy_pass http://checkout; }}\n\
                 \x20   }}\n\
                 }}\n",
                port = free_port(),
            );
            std::fs::create_dir(d.join("tmp")).map_err(setup)?;
            std::fs::write(d.join("nginx.conf"), config).map_err(setup)?;
            let initial = format!(
                "upstream checkout {{\n    server {blue} weight=1;\n    server {green} weight=1;\n}}\n"
            );
            std::fs::write(d.join("upstreams.conf"), initial).map_err(setup)?;
            let addresses = BTreeMap::from([
                ("blue".to_string(), blue.to_string()),
                ("green".to_string(), green.to_string()),
            ]);
            let driver = NginxRouter::new(
                "edge",
                utf8(&d.join("upstreams.conf"))?,
                utf8(&d.join("nginx.conf"))?,
                &addresses,
            )
            .map_err(setup)?;
            // The guard exists before the start, so a half-started NGINX is stopped too.
            let process = Process::Nginx {
                binary: binary.to_path_buf(),
                dir: d.to_path_buf(),
            };
            let out = nginx_command(binary, d)
                .output()
                .map_err(|e| format!("cannot start nginx: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "nginx did not start: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Rig {
                driver: Driver::Nginx(driver),
                process,
                dir,
                log: "error.log",
            }
        }
    };
    rig.ready().await?;
    Ok(rig)
}

/// `nginx -p <dir> -c <dir>/nginx.conf -e <dir>/error.log`, to which `-s quit` may be added.
fn nginx_command(binary: &Path, dir: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}

/// Whether `pid` is a live NGINX master (a zombie has an empty command line).
fn is_master(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .starts_with(b"nginx: master process")
}

/// `nginx -s quit`, waits up to 5 s for the master to go, then KILLs it and its workers.
fn stop_nginx(binary: &Path, dir: &Path) {
    let pid = std::fs::read_to_string(dir.join("nginx.pid"))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&pid| is_master(pid));
    let Some(pid) = pid else { return };
    let workers =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let _ = nginx_command(binary, dir)
        .args(["-s", "quit"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_master(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_master(pid) {
        let pids =
            std::iter::once(pid.to_string()).chain(workers.split_whitespace().map(str::to_string));
        for p in pids {
            let _ = Command::new("kill").args(["-KILL", &p]).status();
        }
    }
}
