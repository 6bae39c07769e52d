//! A real `haproxy -db`: one backend `service` in front of the upstreams (roundrobin; the first
//! at weight 100, the others at 0), more backends beside it where a test asks for them, its
//! runtime API on a unix socket and on TCP, and its built-in Prometheus exporter on a frontend
//! of its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use canaryd::core::model::{Field, Sticky, Traffic};
use canaryd::edge::router::haproxy::{HaproxyRouter, maps};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Failed, Process, answers, net, require, setup, wait_ready};

/// The fields [`Haproxy::start_routed`]'s backend routes on.
pub const ROUTED_ON: &[(Field, &str)] = &[
    (Field::Header, "X-Canary"),
    (Field::Cookie, "beta"),
    (Field::Query, "app"),
];
/// The sticky key of [`Haproxy::start_routed`]'s backend.
pub const STICKY_KEY: &str = "X-User-Id";

/// A running HAProxy; killed on drop.
pub struct Haproxy {
    process: Process,
    dir: TempDir,
    binary: PathBuf,
    pub service: String,
    /// Where clients send requests.
    pub frontend: SocketAddr,
    /// The runtime API's TCP port.
    pub admin_port: u16,
    /// Where the exporter answers `/metrics`.
    pub metrics: SocketAddr,
}

impl Haproxy {
    /// Starts HAProxy in front of `upstreams` (name, address) and waits until its runtime API
    /// (both sockets) and its exporter answer.
    pub async fn start(
        service: &str,
        upstreams: &[(String, SocketAddr)],
    ) -> Result<Haproxy, Failed> {
        Haproxy::start_with(service, upstreams, &[]).await
    }

    /// [`Haproxy::start`] with `more` backends after the service's, each a name and the weights
    /// of its servers: the upstreams, in order, as far as there are weights (none: a backend
    /// without servers). The frontend still sends everything to `service`.
    pub async fn start_with(
        service: &str,
        upstreams: &[(String, SocketAddr)],
        more: &[(&str, &[u32])],
    ) -> Result<Haproxy, Failed> {
        Haproxy::start_inner(service, upstreams, more, None).await
    }

    /// [`Haproxy::start`] with the service's backend configured as canaryd's README says for
    /// routes and sticky users ([`maps::snippet`], [`ROUTED_ON`], sticky key [`STICKY_KEY`]),
    /// its two maps empty files in the temp dir.
    pub async fn start_routed(
        service: &str,
        upstreams: &[(String, SocketAddr)],
    ) -> Result<Haproxy, Failed> {
        Haproxy::start_inner(service, upstreams, &[], Some(ROUTED_ON)).await
    }

    /// [`Haproxy::start_routed`] routing on the fields `routed_on` instead.
    pub async fn start_routed_on(
        service: &str,
        upstreams: &[(String, SocketAddr)],
        routed_on: &[(Field, &str)],
    ) -> Result<Haproxy, Failed> {
        Haproxy::start_inner(service, upstreams, &[], Some(routed_on)).await
    }

    async fn start_inner(
        service: &str,
        upstreams: &[(String, SocketAddr)],
        more: &[(&str, &[u32])],
        routed: Option<&[(Field, &str)]>,
    ) -> Result<Haproxy, Failed> {
        let binary = require("haproxy", "apt-get install -y haproxy")?;
        let dir = tempfile::tempdir().map_err(setup("temp dir"))?;
        let frontend = net::free_addr();
        let admin_port = net::free_port();
        let metrics = net::free_addr();
        let servers = |weights: &mut dyn Iterator<Item = u32>| -> String {
            upstreams
                .iter()
                .zip(weights)
                .map(|((name, addr), weight)| format!("    server {name} {addr} weight {weight}\n"))
                .collect()
        };
        let snippet = if let Some(routed_on) = routed {
            let dir = dir.path().display().to_string();
            for file in [maps::routes_map(service), maps::sticky_map(service)] {
                std::fs::write(dir.clone() + "/" + &file, "").map_err(setup("map file"))?;
            }
            maps::snippet(
                service,
                &dir,
                routed_on,
                Some(&Sticky::Header(STICKY_KEY.to_string())),
            )
        } else {
            String::new()
        };
        let mut backends = format!(
            "backend {service}\n    balance roundrobin\n{snippet}{}",
            servers(&mut std::iter::once(100).chain(std::iter::repeat(0)))
        );
        for (name, weights) in more {
            backends.push_str(&format!(
                "backend {name}\n    balance roundrobin\n{}",
                servers(&mut weights.iter().copied())
            ));
        }
        let config = format!(
            "global\n\
             \x20   stats socket {dir}/admin.sock level admin\n\
             \x20   stats socket ipv4@127.0.0.1:{admin_port} level admin\n\
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
             {backends}",
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("haproxy.cfg"), config).map_err(setup("haproxy.cfg"))?;
        let mut haproxy = Haproxy {
            process: Process::new(dir.path(), "haproxy.log"),
            dir,
            binary,
            service: service.to_string(),
            frontend,
            admin_port,
            metrics,
        };
        haproxy.run().await?;
        Ok(haproxy)
    }

    /// Starts the process (again, on the same sockets) and waits until it answers.
    pub async fn run(&mut self) -> Result<(), Failed> {
        let mut command = Command::new(&self.binary);
        command.args(["-f", "haproxy.cfg", "-db"]);
        self.process.spawn(command)?;
        let (unix, tcp, metrics) = (self.unix(), self.tcp(), self.metrics);
        let log = self.process.log_path();
        wait_ready(
            "haproxy",
            Duration::from_secs(10),
            &log,
            Some(&mut self.process),
            async || {
                unix.health().await.is_ok()
                    && tcp.health().await.is_ok()
                    && answers(metrics, "/metrics")
            },
        )
        .await
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The runtime API's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// That socket, as a Router spec's `runtimeApi` names it.
    pub fn runtime_api(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    /// canaryd's driver over the unix socket.
    pub fn unix(&self) -> HaproxyRouter {
        HaproxyRouter::new("edge", &self.runtime_api()).expect("a unix runtime API address")
    }

    /// canaryd's driver over the TCP socket.
    pub fn tcp(&self) -> HaproxyRouter {
        HaproxyRouter::new("edge", &format!("127.0.0.1:{}", self.admin_port))
            .expect("a TCP runtime API address")
    }

    /// The `spec:` of a Router document for this HAProxy (indented two spaces).
    pub fn spec(&self) -> String {
        format!(
            "  kind: haproxy\n  runtimeApi: \"{}\"\n",
            self.runtime_api()
        )
    }

    /// Sets the servers' weights (percent) through canaryd's driver; others get 0.
    pub async fn set_weights(&self, weights: &[(&str, u8)]) {
        let traffic = Traffic::of(weights).expect("weights in 0..=100");
        self.unix()
            .apply(&self.service, &traffic)
            .await
            .unwrap_or_else(|e| panic!("set weights {weights:?}: {e}\n{}", self.log()));
    }

    /// What an operator would type into `socat stdio unix:admin.sock`: the answer.
    pub async fn operator(&self, command: &str) -> String {
        let mut stream = tokio::net::UnixStream::connect(self.socket())
            .await
            .expect("connect to the runtime API");
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("send to the runtime API");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("read the runtime API's answer");
        answer
    }
}
