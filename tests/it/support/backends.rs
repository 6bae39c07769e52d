//! canaryd's own demo backends ([`canaryd::backend`]) on loopback ports, a group at a time,
//! for a router (or a test) to stand in front of; they stop when the group is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use canaryd::backend::{self, BackendConfig, Quirks};
use tokio_util::sync::CancellationToken;

use super::net;

/// One backend to start: a [`BackendConfig`] with [`Quirks`], or nothing at all (`down`).
#[derive(Clone, Debug)]
pub struct Server {
    pub config: BackendConfig,
    pub quirks: Quirks,
    /// Nothing listens at its address: connections are refused.
    pub down: bool,
}

impl Server {
    /// `name` at version `v1`, answering every request at once.
    pub fn new(name: &str) -> Server {
        Server {
            config: BackendConfig {
                name: name.to_string(),
                version: "v1".to_string(),
                fail_fraction: 0.0,
                latency: Duration::ZERO,
            },
            quirks: Quirks::default(),
            down: false,
        }
    }

    pub fn version(mut self, version: &str) -> Server {
        self.config.version = version.to_string();
        self
    }

    /// Fails exactly this fraction of its requests with a 500, spread evenly.
    pub fn failing(mut self, fraction: f64) -> Server {
        self.config.fail_fraction = fraction;
        self
    }

    pub fn latency(mut self, latency: Duration) -> Server {
        self.config.latency = latency;
        self
    }

    /// Waits its latency on every `n`-th request only (the first included).
    pub fn latency_every(mut self, n: u64) -> Server {
        self.quirks.latency_every = n;
        self
    }

    /// Answers with the headers it was sent.
    pub fn echo_headers(mut self) -> Server {
        self.quirks.echo_headers = true;
        self
    }

    pub fn down(mut self) -> Server {
        self.down = true;
        self
    }
}

/// Started backends, in the order given; stopped on drop.
pub struct Backends {
    addrs: Vec<(String, SocketAddr)>,
    served: BTreeMap<String, Arc<AtomicU64>>,
    stop: CancellationToken,
}

impl Backends {
    /// Starts `servers` on the current runtime, each on a port the system picks.
    pub async fn start(servers: &[Server]) -> Backends {
        let stop = CancellationToken::new();
        let mut addrs = Vec::new();
        let mut served = BTreeMap::new();
        for s in servers {
            let name = s.config.name.clone();
            if s.down {
                addrs.push((name, net::free_addr()));
                continue;
            }
            let (listener, addr) = net::listener().await;
            let (_, count) =
                backend::spawn_with(listener, s.config.clone(), s.quirks.clone(), stop.clone())
                    .await;
            served.insert(name.clone(), count);
            addrs.push((name, addr));
        }
        Backends {
            addrs,
            served,
            stop,
        }
    }

    /// Name and address of each, in the order they were given.
    pub fn upstreams(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// `http://<address>` of `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}", self[name])
    }

    /// Requests answered so far, by all of them.
    pub fn served(&self) -> u64 {
        self.served.values().map(|c| c.load(Ordering::SeqCst)).sum()
    }
}

impl std::ops::Index<&str> for Backends {
    type Output = SocketAddr;

    /// The address of `name`; panics for a name not started.
    fn index(&self, name: &str) -> &SocketAddr {
        self.addrs
            .iter()
            .find_map(|(n, addr)| (n == name).then_some(addr))
            .unwrap_or_else(|| panic!("no backend `{name}`"))
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
