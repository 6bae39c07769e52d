//! A real NGINX, daemonised with its pid, logs and temp paths in its folder, proxying a port to
//! `upstream <service>`, which lives in `upstreams.conf`: the include canaryd's driver owns, in
//! its first version written by an operator with every server at weight 1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use canaryd::edge::router::nginx::{NginxRouter, maps};
use tempfile::TempDir;

use super::{Failed, net, require, setup, tail, wait_ready};

/// How long NGINX may take to start, stop or reload.
const WAIT: Duration = Duration::from_secs(10);

/// A running NGINX; stopped on drop (TERM, then KILL of its master and workers).
pub struct Nginx {
    binary: PathBuf,
    dir: TempDir,
    /// Where clients send requests.
    pub addr: SocketAddr,
    /// Backend name → address, as the driver is configured.
    pub backends: BTreeMap<String, String>,
}

impl Nginx {
    /// Writes the config and the operator's upstream file, starts NGINX in front of `upstreams`
    /// (name, address) and waits until it accepts connections.
    pub async fn start(service: &str, upstreams: &[(String, SocketAddr)]) -> Result<Nginx, Failed> {
        Nginx::start_with(service, upstreams, false).await
    }

    /// As [`Nginx::start`], with the location written for routes and sticky users as the
    /// driver's docs say: `proxy_pass http://$canaryd_<service>;`, the side passed on in
    /// `X-Canaryd-Side` and the sticky cookie set with `add_header`; the operator's first
    /// upstream file defines the three variables (canaryd's first apply replaces them).
    pub async fn start_routed(
        service: &str,
        upstreams: &[(String, SocketAddr)],
    ) -> Result<Nginx, Failed> {
        Nginx::start_with(service, upstreams, true).await
    }

    async fn start_with(
        service: &str,
        upstreams: &[(String, SocketAddr)],
        routed: bool,
    ) -> Result<Nginx, Failed> {
        let binary = require("nginx", "apt-get install -y nginx")?;
        let dir = tempfile::tempdir().map_err(setup("temp dir"))?;
        let d = dir.path().display();
        let addr = net::free_addr();
        let config = format!(
            "worker_processes 1;\n\
             daemon on;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log notice;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             {temp}\
             \x20   include {d}/upstreams.conf;\n\
             \x20   server {{\n\
             \x20       listen {addr};\n\
             \x20       location / {{ {location} }}\n\
             \x20   }}\n\
             }}\n",
            temp = temp_paths(dir.path()),
            location = if routed {
                let v = maps::variable(service);
                format!(
                    "proxy_pass http://${v}; proxy_set_header X-Canaryd-Side ${v}_side; \
                     add_header Set-Cookie ${v}_set_cookie;"
                )
            } else {
                format!("proxy_pass http://{service};")
            },
        );
        std::fs::create_dir(dir.path().join("tmp")).map_err(setup("tmp/"))?;
        std::fs::write(dir.path().join("nginx.conf"), config).map_err(setup("nginx.conf"))?;
        // The include must exist before NGINX starts: an operator's first version.
        let servers: String = upstreams
            .iter()
            .map(|(_, addr)| format!("    server {addr} weight=1;\n"))
            .collect();
        let variables = if routed {
            let v = maps::variable(service);
            format!(
                "map \"\" ${v} {{ default {service}; }}\n\
                 map \"\" ${v}_side {{ default \"\"; }}\n\
                 map \"\" ${v}_set_cookie {{ default \"\"; }}\n"
            )
        } else {
            String::new()
        };
        std::fs::write(
            dir.path().join("upstreams.conf"),
            format!("upstream {service} {{\n{servers}}}\n{variables}"),
        )
        .map_err(setup("upstreams.conf"))?;
        // The guard exists before the start, so a half-started NGINX is stopped too.
        let nginx = Nginx {
            binary,
            dir,
            addr,
            backends: upstreams
                .iter()
                .map(|(name, addr)| (name.clone(), addr.to_string()))
                .collect(),
        };
        nginx.run().await?;
        Ok(nginx)
    }

    /// Starts NGINX (again) and waits until its master runs and it accepts connections.
    pub async fn run(&self) -> Result<(), Failed> {
        let dir = self.dir.path();
        let out = Command::new(&self.binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(self.config())
            .arg("-e")
            .arg(self.path("error.log"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(setup("cannot start nginx"))?;
        if !out.status.success() {
            return Err(Failed(format!(
                "nginx did not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let addr = self.addr;
        wait_ready("nginx", WAIT, &self.path("error.log"), None, async || {
            self.running() && tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    }

    /// Stops NGINX (TERM, then KILL for the master and its workers) and waits until it is gone.
    pub fn stop(&self) {
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

    /// Whether its master process runs.
    pub fn running(&self) -> bool {
        self.pid().is_some_and(is_master)
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("nginx.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn config(&self) -> PathBuf {
        self.path("nginx.conf")
    }

    /// The include canaryd's driver owns.
    pub fn upstreams(&self) -> PathBuf {
        self.path("upstreams.conf")
    }

    /// The end of the error log.
    #[allow(
        dead_code,
        reason = "benches/routers.rs shows it when a round trip fails"
    )]
    pub fn log(&self) -> String {
        tail(&std::fs::read_to_string(self.path("error.log")).unwrap_or_default())
    }

    /// canaryd's driver for this NGINX and `backends` (name → address).
    pub fn router_for(&self, backends: &BTreeMap<String, String>) -> NginxRouter {
        NginxRouter::new(
            "edge",
            self.upstreams().to_str().expect("a UTF-8 temp dir"),
            self.config().to_str().expect("a UTF-8 temp dir"),
            backends,
        )
        .expect("an NGINX driver")
    }

    /// canaryd's driver for this NGINX and its upstreams.
    pub fn router(&self) -> NginxRouter {
        self.router_for(&self.backends)
    }

    /// The `spec:` of a Router document for this NGINX (indented two spaces).
    pub fn spec(&self) -> String {
        format!(
            "  kind: nginx\n  upstreamFile: \"{}\"\n  config: \"{}\"\n  backends: {{{}}}\n",
            self.upstreams().display(),
            self.config().display(),
            self.backends
                .iter()
                .map(|(name, addr)| format!("{name}: \"{addr}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// `nginx -s reload`, as an operator runs it after editing the upstream file.
    pub fn reload(&self) {
        let out = Command::new(&self.binary)
            .args(["-s", "reload", "-c"])
            .arg(self.config())
            .output()
            .expect("run nginx -s reload");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reloads NGINX has finished so far: each sends the old worker "gracefully shutting down".
    pub fn reloads(&self) -> usize {
        std::fs::read_to_string(self.path("error.log"))
            .unwrap_or_default()
            .matches("gracefully shutting down")
            .count()
    }

    /// Waits until more than `before` reloads were done, so new workers serve the new weights.
    pub async fn settle(&self, before: usize) {
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

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `*_temp_path` lines of an `http` block, in `dir/tmp` (NGINX's defaults are system
/// folders a test may not write).
pub fn temp_paths(dir: &Path) -> String {
    let d = dir.display();
    [
        ("client_body", "body"),
        ("proxy", "proxy"),
        ("fastcgi", "fastcgi"),
        ("uwsgi", "uwsgi"),
        ("scgi", "scgi"),
    ]
    .iter()
    .map(|(kind, folder)| format!("    {kind}_temp_path {d}/tmp/{folder};\n"))
    .collect()
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
