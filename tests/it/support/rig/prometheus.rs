//! A real `prometheus` scraping given targets (`/metrics`) every second, with the blocking
//! helpers a test needs to wait for scrapes and read answers raw.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use canaryd::prometheus::{Prometheus, PrometheusConfig};
use chrono::{DateTime, Utc};
use tempfile::TempDir;

use super::{Failed, Process, net, require, setup, tail};

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

/// A running `prometheus` in a temp dir; killed on drop. Blocking: use it from a plain
/// `#[test]`, or through `block_in_place`.
pub struct PromServer {
    process: Process,
    _dir: TempDir,
    addr: SocketAddr,
    auth: Option<String>,
}

impl PromServer {
    /// Starts Prometheus scraping `targets` every second, and returns once it is ready and has
    /// scraped every target successfully (`up == 1`).
    pub fn start(targets: &[SocketAddr]) -> Result<PromServer, Failed> {
        PromServer::start_with(PromOptions::new(targets))
    }

    pub fn start_with(options: PromOptions) -> Result<PromServer, Failed> {
        let binary = require("prometheus", "apt-get install prometheus")?;
        let dir = tempfile::tempdir().map_err(setup("temp dir"))?;
        let seconds = options.scrape_interval.as_secs_f64();
        let targets: Vec<String> = options.targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: {seconds}s\n  scrape_timeout: {seconds}s\n\
             scrape_configs:\n  - job_name: targets\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config)
            .map_err(setup("prometheus.yml"))?;
        let addr = net::free_addr();
        let mut command = Command::new(binary);
        command
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        if let Some(web) = &options.web_config {
            std::fs::write(dir.path().join("web.yml"), web).map_err(setup("web.yml"))?;
            command.arg("--web.config.file=web.yml");
        }
        let mut server = PromServer {
            process: Process::new(dir.path(), "prometheus.log"),
            _dir: dir,
            addr,
            auth: options.auth_header,
        };
        server.process.spawn(command)?;
        server.wait(Duration::from_secs(15), "ready", |s| {
            matches!(s.get("/-/ready"), Some((200, _)))
        })?;
        let want = options.targets.len();
        server.wait(Duration::from_secs(15), "all targets up", |s| {
            s.query("up == 1")
                .is_some_and(|r| r.as_array().is_some_and(|a| a.len() == want))
        })?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for this server with default settings.
    pub fn client(&self) -> Prometheus {
        Prometheus::new(&PrometheusConfig {
            url: self.url(),
            ..PrometheusConfig::default()
        })
        .expect("a Prometheus client")
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        net::http_get(self.addr, path, self.auth.as_deref())
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

    fn wait(
        &mut self,
        within: Duration,
        what: &str,
        done: impl Fn(&PromServer) -> bool,
    ) -> Result<(), Failed> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.exited() {
                return Err(Failed(format!(
                    "prometheus exited with {status}: {}",
                    tail(&self.log())
                )));
            }
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Failed(format!(
                    "prometheus not {what} within {within:?}: {}",
                    tail(&self.log())
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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
