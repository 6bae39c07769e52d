//! The NGINX driver against a real `nginx` on 127.0.0.1 with two real backends: weights set and read back from the upstream file, traffic that follows them, reloads under load, hand edits, NGINX down, unknown names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use canaryd::backend::{BackendConfig, LoadConfig, load, spawn};
use canaryd::model::{Traffic, Weight};
use canaryd::router::RouterError;
use canaryd::router::nginx::NginxRouter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::observe_all::{assert_unknown, blue_green, observe_all_checked, services, weights_of};

/// How long NGINX may take to start, stop or reload.
const WAIT: Duration = Duration::from_secs(10);

/// The `nginx` binary; a missing one fails the test, since CI installs it.
fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx is not installed (looked in PATH and /usr/sbin): `apt-get install -y nginx`")
}

/// A free port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether `pid` is a live NGINX master (a zombie has an empty command line).
fn is_master(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .starts_with(b"nginx: master process")
}

fn signal(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// Two backends (blue, green) and an NGINX in a temp dir proxying 127.0.0.1:`port` to
/// `upstream checkout`; everything stops when this is dropped, also on panic.
struct Fixture {
    dir: tempfile::TempDir,
    port: u16,
    /// Backend name → address.
    backends: BTreeMap<String, String>,
    stop: CancellationToken,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::with_latency(Duration::ZERO).await
    }

    /// As [`Fixture::start`], with backends that wait `latency` before answering.
    async fn with_latency(latency: Duration) -> Fixture {
        let binary = nginx_binary();
        let stop = CancellationToken::new();
        let mut backends = BTreeMap::new();
        for name in ["blue", "green"] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            backends.insert(name.to_string(), listener.local_addr().unwrap().to_string());
            let config = BackendConfig {
                name: name.to_string(),
                version: "v1".to_string(),
                fail_fraction: 0.0,
                latency,
            };
            spawn(listener, config, stop.clone()).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let config = format!(
            "worker_processes 1;\n\
             daemon on;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log notice;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/tmp/body;\n\
             \x20   proxy_temp_path {d}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {d}/tmp/scgi;\n\
             \x20   include {d}/upstreams.conf;\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       location / {{ proxy_pass http://checkout; }}\n\
             \x20   }}\n\
             }}\n"
        );
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
        // The include must exist before NGINX starts: an operator's first version.
        let initial = format!(
            "upstream checkout {{\n    server {} weight=1;\n    server {} weight=1;\n}}\n",
            backends["blue"], backends["green"]
        );
        std::fs::write(dir.path().join("upstreams.conf"), initial).unwrap();
        let fixture = Fixture {
            dir,
            port,
            backends,
            stop,
        };
        fixture.start_nginx(&binary).await;
        fixture
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn config(&self) -> PathBuf {
        self.path("nginx.conf")
    }

    fn upstreams(&self) -> PathBuf {
        self.path("upstreams.conf")
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn router(&self) -> NginxRouter {
        NginxRouter::new(
            "edge",
            self.upstreams().to_str().unwrap(),
            self.config().to_str().unwrap(),
            &self.backends,
        )
        .unwrap()
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("nginx.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Starts NGINX and waits until it accepts connections.
    async fn start_nginx(&self, binary: &Path) {
        let dir = self.dir.path();
        let out = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(self.config())
            .arg("-e")
            .arg(self.path("error.log"))
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let up = self.pid().is_some_and(is_master)
                && tokio::net::TcpStream::connect(self.addr()).await.is_ok();
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not come up within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops NGINX (TERM, then KILL for the master and its workers) and waits until it is gone.
    fn stop_nginx(&self) {
        let Some(pid) = self.pid().filter(|p| is_master(*p)) else {
            return;
        };
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        signal("-TERM", pid);
        let deadline = Instant::now() + WAIT;
        while is_master(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_master(pid) {
            signal("-KILL", pid);
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                signal("-KILL", child);
            }
        }
    }

    /// Reloads NGINX has finished so far: each sends the old worker "gracefully shutting down".
    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.path("error.log"))
            .unwrap_or_default()
            .matches("gracefully shutting down")
            .count()
    }

    /// Waits until more than `before` reloads were done, so new workers serve the new weights.
    async fn settle(&self, before: usize) {
        let deadline = Instant::now() + WAIT;
        while self.reloads() <= before {
            assert!(
                Instant::now() < deadline,
                "nginx did not reload within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The old worker closes its listening socket right after logging.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_nginx();
        self.stop.cancel();
    }
}

fn traffic(weights: &[(&str, u8)]) -> Traffic {
    Traffic::of(weights).unwrap()
}

/// The percentages `observe` reports for `checkout`.
async fn shares(router: &NginxRouter) -> Vec<(String, u8)> {
    let observed = router.observe("checkout").await.unwrap();
    percent(&observed.percentages().unwrap())
}

fn percent(router_weights: &BTreeMap<String, Weight>) -> Vec<(String, u8)> {
    router_weights
        .iter()
        .map(|(n, w)| (n.clone(), w.get()))
        .collect()
}

fn pairs(list: &[(&str, u8)]) -> Vec<(String, u8)> {
    list.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

async fn load_of(fx: &Fixture, total: usize) -> canaryd::backend::LoadReport {
    load(
        fx.addr(),
        LoadConfig {
            concurrency: 4,
            total,
            max_duration: Duration::from_secs(20),
            host: None,
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_weights_are_observed() {
    let fx = Fixture::start().await;
    let router = fx.router();
    router.health().await.unwrap();
    // The operator's initial file reads as 1/1.
    let initial = router.observe("checkout").await.unwrap();
    assert_eq!(
        initial.backends,
        BTreeMap::from([("blue".into(), 1), ("green".into(), 1)])
    );
    for split in [[90, 10], [50, 50], [0, 100], [100, 0], [100, 0]] {
        let set = [("blue", split[0]), ("green", split[1])];
        router.apply("checkout", &traffic(&set)).await.unwrap();
        let observed = router.observe("checkout").await.unwrap();
        assert_eq!(
            percent(&observed.percentages().unwrap()),
            pairs(&set),
            "{observed:?}"
        );
    }
    // 0 is rendered `down`, since NGINX weights start at 1; reads back as 0.
    router
        .apply("checkout", &traffic(&[("blue", 0), ("green", 100)]))
        .await
        .unwrap();
    let text = std::fs::read_to_string(fx.upstreams()).unwrap();
    assert!(
        text.contains(&format!("server {} down;", fx.backends["blue"])),
        "{text}"
    );
    assert!(text.starts_with("# Generated by canaryd"), "{text}");
    let observed = router.observe("checkout").await.unwrap();
    assert_eq!(
        observed.backends,
        BTreeMap::from([("blue".into(), 0), ("green".into(), 100)])
    );
    router.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_weights() {
    let fx = Fixture::start().await;
    let router = fx.router();
    let before = fx.reloads();
    router
        .apply("checkout", &traffic(&[("blue", 80), ("green", 20)]))
        .await
        .unwrap();
    fx.settle(before).await;
    let report = load_of(&fx, 500).await;
    println!("nginx 80/20 over 500 requests: {report:?}");
    assert_eq!(report.ok, 500, "{report:?}");
    let blue = report.by_backend.get("blue").copied().unwrap_or(0);
    let green = report.by_backend.get("green").copied().unwrap_or(0);
    assert_eq!(blue + green, 500, "{report:?}");
    // Binomial sd is about 9; NGINX's smooth weighted round robin is near exact anyway.
    assert!((360..=440).contains(&blue), "{report:?}");

    let before = fx.reloads();
    router
        .apply("checkout", &traffic(&[("blue", 100), ("green", 0)]))
        .await
        .unwrap();
    fx.settle(before).await;
    let report = load_of(&fx, 300).await;
    println!("nginx 100/0 over 300 requests: {report:?}");
    assert_eq!(report.ok, 300, "{report:?}");
    assert_eq!(
        report.by_backend,
        BTreeMap::from([("blue".into(), 300)]),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_weight_changes() {
    // 5 ms per request spreads the load over a few seconds, so it meets many reloads.
    let fx = Fixture::with_latency(Duration::from_millis(5)).await;
    let router = fx.router();
    let done = CancellationToken::new();
    let changer = {
        let done = done.clone();
        async move {
            let mut applied = 0u32;
            let mut errors = Vec::new();
            for green in [0u8, 10, 25, 50, 100, 50, 25, 10].into_iter().cycle() {
                if done.is_cancelled() {
                    break;
                }
                let set = traffic(&[("blue", 100 - green), ("green", green)]);
                match router.apply("checkout", &set).await {
                    Ok(()) => applied += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (applied, errors)
        }
    };
    let loader = async {
        let started = Instant::now();
        let report = load_of(&fx, 1500).await;
        done.cancel();
        (report, started.elapsed())
    };
    let ((applied, errors), (report, took)) = tokio::join!(changer, loader);
    let failed = report.failed + report.server_errors;
    println!(
        "nginx under weight changes: {} requests sent, {failed} failed ({} transport errors, \
         {} 5xx, {} abandoned) in {took:?}, while {applied} weight changes were applied",
        report.sent, report.failed, report.server_errors, report.abandoned
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        applied >= 3,
        "only {applied} weight changes during the load"
    );
    assert_eq!(report.sent, 1500, "{report:?}");
    assert_eq!(report.abandoned, 0, "{report:?}");
    // A reload is graceful: every backend stays up, so NGINX itself never answers 5xx.
    assert_eq!(report.server_errors, 0, "{report:?}");
    // What a reload does break: the old worker closes its idle keep-alive connections, and a
    // request the client sends on one just then fails (with `keepalive_timeout 0` this test
    // saw none). That is at most one request per client connection per reload.
    assert!(
        report.failed <= 4 * u64::from(applied + 1),
        "{} transport errors for {applied} reloads: {report:?}",
        report.failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_of_the_file_is_seen_as_drift() {
    let fx = Fixture::start().await;
    let router = fx.router();
    router
        .apply("checkout", &traffic(&[("blue", 90), ("green", 10)]))
        .await
        .unwrap();
    // An operator edits the weights in the file and reloads.
    let text = std::fs::read_to_string(fx.upstreams()).unwrap();
    let edited = text
        .replace("weight=90;", "weight=30;")
        .replace("weight=10;", "weight=70;");
    assert_ne!(edited, text);
    std::fs::write(fx.upstreams(), edited).unwrap();
    let out = Command::new(nginx_binary())
        .args(["-s", "reload", "-c"])
        .arg(fx.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(shares(&router).await, pairs(&[("blue", 30), ("green", 70)]));
    // The next apply sets the weights again.
    router
        .apply("checkout", &traffic(&[("blue", 90), ("green", 10)]))
        .await
        .unwrap();
    assert_eq!(shares(&router).await, pairs(&[("blue", 90), ("green", 10)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_nginx_refuses_is_rejected_and_undone() {
    let fx = Fixture::start().await;
    let mut backends = fx.backends.clone();
    // Valid to canaryd, refused by `nginx -t`.
    backends.insert("broken".to_string(), "127.0.0.1:99999".to_string());
    let router = NginxRouter::new(
        "edge",
        fx.upstreams().to_str().unwrap(),
        fx.config().to_str().unwrap(),
        &backends,
    )
    .unwrap();
    router
        .apply("checkout", &traffic(&[("blue", 60), ("green", 40)]))
        .await
        .unwrap();
    let before = std::fs::read_to_string(fx.upstreams()).unwrap();
    let e = router
        .apply("checkout", &traffic(&[("blue", 50), ("broken", 50)]))
        .await
        .unwrap_err();
    println!("{e}");
    assert!(matches!(e, RouterError::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("invalid port"), "{e}");
    assert!(!e.is_transient());
    assert_eq!(std::fs::read_to_string(fx.upstreams()).unwrap(), before);
    assert_eq!(shares(&router).await, pairs(&[("blue", 60), ("green", 40)]));
    router.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_down_is_unreachable_and_recovers() {
    let fx = Fixture::start().await;
    let router = fx.router();
    router
        .apply("checkout", &traffic(&[("blue", 70), ("green", 30)]))
        .await
        .unwrap();
    fx.stop_nginx();
    assert!(fx.pid().is_none_or(|p| !is_master(p)));
    let bound = Duration::from_secs(3);
    let started = Instant::now();
    let observed = tokio::time::timeout(bound, router.observe("checkout"))
        .await
        .unwrap();
    let applied = tokio::time::timeout(
        bound,
        router.apply("checkout", &traffic(&[("blue", 10), ("green", 90)])),
    )
    .await
    .unwrap();
    let health = tokio::time::timeout(bound, router.health()).await.unwrap();
    println!(
        "nginx down, observe+apply+health answered in {:?}",
        started.elapsed()
    );
    for e in [
        observed.unwrap_err(),
        applied.unwrap_err(),
        health.unwrap_err(),
    ] {
        assert!(matches!(e, RouterError::Unreachable { .. }), "{e:?}");
        assert!(e.is_transient());
        assert!(e.to_string().contains("not running"), "{e}");
    }
    // The refused apply left the file alone.
    fx.start_nginx(&nginx_binary()).await;
    assert_eq!(shares(&router).await, pairs(&[("blue", 70), ("green", 30)]));
    router
        .apply("checkout", &traffic(&[("blue", 10), ("green", 90)]))
        .await
        .unwrap();
    assert_eq!(shares(&router).await, pairs(&[("blue", 10), ("green", 90)]));
    router.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_backends() {
    let fx = Fixture::start().await;
    let router = fx.router();
    let e = router.observe("payments").await.unwrap_err();
    assert!(matches!(e, RouterError::Unknown { .. }), "{e:?}");
    assert_eq!(e.to_string(), "router `edge` has no service `payments`");
    let e = router
        .apply("checkout", &traffic(&[("blue", 50), ("purple", 50)]))
        .await
        .unwrap_err();
    assert!(matches!(e, RouterError::Unknown { .. }), "{e:?}");
    assert_eq!(e.to_string(), "router `edge` has no backend `purple`");
    let e = router.observe("check out").await.unwrap_err();
    assert!(matches!(e, RouterError::Unknown { .. }), "{e:?}");
    // Nothing was written for the refused calls.
    let observed = router.observe("checkout").await.unwrap();
    assert_eq!(
        observed.backends,
        BTreeMap::from([("blue".into(), 1), ("green".into(), 1)])
    );
    // A server the backends do not name is reported under its address.
    let text = std::fs::read_to_string(fx.upstreams()).unwrap();
    std::fs::write(
        fx.upstreams(),
        text.replace(&fx.backends["green"], "127.0.0.1:1"),
    )
    .unwrap();
    let observed = router.observe("checkout").await.unwrap();
    assert_eq!(
        observed.backends,
        BTreeMap::from([("blue".into(), 1), ("127.0.0.1:1".into(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_all_reads_every_upstream_as_observe_does() {
    let fx = Fixture::start().await;
    let router = fx.router();
    for (service, green) in [("checkout", 10), ("search", 65), ("profile", 100)] {
        let set = [("blue", 100 - green), ("green", green)];
        router.apply(service, &traffic(&set)).await.unwrap();
    }
    let asked = services(&["checkout", "search", "profile", "payments", "check out"]);
    let all = observe_all_checked!(router, &asked);
    assert_eq!(weights_of(&all, "checkout"), &blue_green(90, 10));
    assert_eq!(weights_of(&all, "search"), &blue_green(35, 65));
    // `down`, read back as 0.
    assert_eq!(weights_of(&all, "profile"), &blue_green(0, 100));
    assert_unknown(&all, "payments", "service `payments`");
    assert_unknown(&all, "check out", "service `check out`");
    // NGINX stopped: nothing can be read, for any service.
    fx.stop_nginx();
    let e = router.observe_all(&asked).await.unwrap_err();
    assert!(matches!(e, RouterError::Unreachable { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_observe_round_trip_time() {
    let fx = Fixture::start().await;
    let router = fx.router();
    let mut took = Vec::new();
    for i in 0..50u8 {
        let set = [("blue", 100 - 2 * i), ("green", 2 * i)];
        let started = Instant::now();
        router.apply("checkout", &traffic(&set)).await.unwrap();
        let observed = router.observe("checkout").await.unwrap();
        took.push(started.elapsed());
        assert_eq!(percent(&observed.percentages().unwrap()), pairs(&set));
    }
    took.sort();
    println!(
        "nginx apply+observe over 50 tries: median {:?}, min {:?}, max {:?}",
        took[took.len() / 2],
        took[0],
        took[took.len() - 1]
    );
}

// ---------------------------------------------------------------------------------------------
// Through the daemon: `canaryd run` drives this NGINX.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rollout_through_the_daemon_is_counted_in_nginx_responses() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fx = rt.block_on(Fixture::start());
    let mut w = crate::daemon::World::new(0.0, 0.0);
    w.router_spec = Some(format!(
        "  kind: nginx\n  upstreamFile: \"{}\"\n  config: \"{}\"\n  backends: {{blue: \"{}\", green: \"{}\"}}\n",
        fx.upstreams().display(),
        fx.config().display(),
        fx.backends["blue"],
        fx.backends["green"]
    ));
    // NGINX cannot report its weights: count who answers (its weighted round robin is exact),
    // once a reload has settled (two counts in a row agree).
    let read = || {
        let mut last = None;
        for _ in 0..25 {
            // Other users' requests interleave with these and shift the count by a few: count
            // 500 and round to the nearest 10 % (every weight here is a multiple of 10).
            let report = rt.block_on(load_of(&fx, 500));
            let green = report.by_backend.get("green").copied().unwrap_or(0);
            let green = u8::try_from((green * 100 / 500 + 5) / 10 * 10).unwrap();
            if last == Some(green) {
                return green;
            }
            last = Some(green);
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("responses never settled");
    };
    // An operator edits the file and reloads.
    let hand_set = |green: u8| {
        let text = std::fs::read_to_string(fx.upstreams()).unwrap();
        let edited = text
            .replace("weight=80;", &format!("weight={};", 100 - green))
            .replace("weight=20;", &format!("weight={green};"));
        assert_ne!(edited, text, "{text}");
        std::fs::write(fx.upstreams(), edited).unwrap();
        let out = Command::new(nginx_binary())
            .args(["-s", "reload", "-c"])
            .arg(fx.config())
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    let report = crate::daemon::rollout_through(&mut w, fx.addr(), read, hand_set);
    // A reload closes idle keep-alive connections: a few requests sent on one as it closes
    // fail in transport. Never a 5xx.
    assert_eq!(report.server_errors, 0, "{report:?}");
}
