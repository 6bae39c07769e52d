//! The router boundary: read live weights, set weights, report health. One file per driver.
//!
//! A driver is picked by the `kind` of a `Router` document through the closed [`Driver`] enum
//! (enum dispatch: adding a router is a new file and a new variant). Every driver reads the
//! live weights from the router itself, never from a cache, and `apply` sets weights, never
//! adds to them, so applying the same traffic twice is harmless. `observe_all` reads many
//! services with one read of the router (one runtime API command, API request or file read),
//! each as `observe` would, so that a look over a thousand rollouts on one router is one round
//! trip, not a thousand.

mod boundary;
pub mod caddy;
pub mod embedded;
pub mod gateway;
pub mod haproxy;
pub mod nginx;
pub mod traefik;

pub use boundary::{Call, ObservedAll, Router};

use crate::core::model::{Observed, Traffic};
use crate::core::spec::{RouterKind, RouterSpec};

/// Why a router could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The router did not answer (connection refused, timeout): try again later.
    #[error("router `{router}` unreachable: {message}")]
    Unreachable { router: String, message: String },
    /// The router answered but refused the request.
    #[error("router `{router}` refused the change: {message}")]
    Rejected { router: String, message: String },
    /// The router does not know the service or one of its backends.
    #[error("router `{router}` has no {what}")]
    Unknown { router: String, what: String },
    /// The router's configuration is wrong, or it could not be started (embedded router:
    /// address in use). Trying again does not help; an operator must act.
    #[error("router `{router}` cannot be used: {message}")]
    Setup { router: String, message: String },
}

impl RouterError {
    pub fn unreachable(router: &str, message: impl Into<String>) -> RouterError {
        RouterError::Unreachable {
            router: router.to_string(),
            message: message.into(),
        }
    }

    pub fn rejected(router: &str, message: impl Into<String>) -> RouterError {
        RouterError::Rejected {
            router: router.to_string(),
            message: message.into(),
        }
    }

    pub fn unknown(router: &str, what: impl Into<String>) -> RouterError {
        RouterError::Unknown {
            router: router.to_string(),
            what: what.into(),
        }
    }

    pub fn setup(router: &str, message: impl Into<String>) -> RouterError {
        RouterError::Setup {
            router: router.to_string(),
            message: message.into(),
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RouterError::Unreachable { .. })
    }
}

/// A configured router, ready to drive.
#[derive(Debug)]
pub enum Driver {
    Embedded(embedded::EmbeddedRouter),
    Haproxy(haproxy::HaproxyRouter),
    Traefik(traefik::TraefikRouter),
    Caddy(caddy::CaddyRouter),
    Nginx(nginx::NginxRouter),
    Gateway(gateway::GatewayRouter),
}

impl Driver {
    /// A driver for a router that runs on its own (every kind but `embedded`, which runs inside
    /// the daemon and is started there).
    pub fn connect(name: &str, spec: &RouterSpec) -> Result<Driver, RouterError> {
        match spec {
            RouterSpec::Haproxy { runtime_api } => {
                haproxy::HaproxyRouter::new(name, runtime_api).map(Driver::Haproxy)
            }
            RouterSpec::Traefik {
                api,
                dynamic_file,
                backends,
            } => {
                traefik::TraefikRouter::new(name, api, dynamic_file, backends).map(Driver::Traefik)
            }
            RouterSpec::Caddy { admin, backends } => {
                caddy::CaddyRouter::new(name, admin, backends).map(Driver::Caddy)
            }
            RouterSpec::Nginx {
                upstream_file,
                config,
                backends,
            } => nginx::NginxRouter::new(name, upstream_file, config, backends).map(Driver::Nginx),
            RouterSpec::Embedded { .. } => Err(RouterError::Setup {
                router: name.to_string(),
                message: "the embedded router runs inside `canaryd run`".to_string(),
            }),
            RouterSpec::GatewayApi {
                server,
                namespace,
                token_file,
            } => gateway::GatewayRouter::new(name, server, namespace, token_file.as_deref())
                .map(Driver::Gateway),
        }
    }

    /// The live weights of `service`, read from the router.
    pub async fn observe(&self, service: &str) -> Result<Observed, RouterError> {
        match self {
            Driver::Embedded(r) => Ok(r.observe(service)),
            Driver::Haproxy(r) => r.observe(service).await,
            Driver::Traefik(r) => r.observe(service).await,
            Driver::Caddy(r) => r.observe(service).await,
            Driver::Nginx(r) => r.observe(service).await,
            Driver::Gateway(r) => r.observe(service).await,
        }
    }

    /// The live weights of every service in `services`, read from the router in one go (one
    /// runtime-API command, one API read, one file read). The outer error: the router could not
    /// be read at all; the inner ones: that service is not known to it (or malformed).
    ///
    /// The keys are exactly the services asked for, and each value is what
    /// [`observe`](Driver::observe) of that service would have returned from the same read
    /// (same variant; a message may name its subject differently). Nothing asked for, nothing
    /// read. The one read is no snapshot where the router itself gives none: HAProxy dumps its
    /// backends one after the other, so a weight set meanwhile may show in one backend and not
    /// yet in another, just as between two `observe` calls.
    pub async fn observe_all(&self, services: &[String]) -> Result<ObservedAll, RouterError> {
        if services.is_empty() {
            return Ok(ObservedAll::new());
        }
        match self {
            Driver::Embedded(r) => Ok(r
                .observe_all(services)
                .into_iter()
                .map(|(service, observed)| (service, Ok(observed)))
                .collect()),
            Driver::Haproxy(r) => r.observe_all(services).await,
            Driver::Traefik(r) => r.observe_all(services).await,
            Driver::Caddy(r) => r.observe_all(services).await,
            Driver::Nginx(r) => r.observe_all(services).await,
            Driver::Gateway(r) => r.observe_all(services).await,
        }
    }

    /// The router's name.
    pub fn name(&self) -> &str {
        match self {
            Driver::Embedded(r) => r.name(),
            Driver::Haproxy(r) => r.name(),
            Driver::Traefik(r) => r.name(),
            Driver::Caddy(r) => r.name(),
            Driver::Nginx(r) => r.name(),
            Driver::Gateway(r) => r.name(),
        }
    }

    /// The kind of router, as a `Router` document names it.
    pub fn kind(&self) -> RouterKind {
        match self {
            Driver::Embedded(_) => RouterKind::Embedded,
            Driver::Haproxy(_) => RouterKind::Haproxy,
            Driver::Traefik(_) => RouterKind::Traefik,
            Driver::Caddy(_) => RouterKind::Caddy,
            Driver::Nginx(_) => RouterKind::Nginx,
            Driver::Gateway(_) => RouterKind::GatewayApi,
        }
    }

    /// Why this router cannot carry `traffic`: routes or a sticky key its kind cannot
    /// express ([`RouterKind::can_route`], [`RouterKind::can_stick`]).
    fn cannot_carry(&self, traffic: &Traffic) -> Option<String> {
        let kind = self.kind();
        let (what, can): (&str, fn(RouterKind) -> bool) =
            if !traffic.routes.is_empty() && !kind.can_route() {
                ("header and cookie routes", RouterKind::can_route)
            } else if traffic.sticky.is_some() && !kind.can_stick() {
                ("sticky users", RouterKind::can_stick)
            } else {
                return None;
            };
        Some(format!(
            "{what} are not supported by router kind `{}` yet; routers that can: {}",
            kind.as_str(),
            RouterKind::those_that(can)
        ))
    }

    /// Sets the traffic of `service`: a set, never an add (backends not named get 0). A router
    /// that takes weights alone refuses routes and a sticky key ([`RouterError::Setup`]) before
    /// it is touched: setting the weights without them would send the wrong users.
    pub async fn apply(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        if let Some(why) = self.cannot_carry(traffic) {
            return Err(RouterError::setup(self.name(), why));
        }
        match self {
            Driver::Embedded(r) => r.apply(service, traffic),
            Driver::Haproxy(r) => r.apply(service, traffic).await,
            Driver::Traefik(r) => r.apply(service, traffic).await,
            Driver::Caddy(r) => r.apply(service, traffic).await,
            Driver::Nginx(r) => r.apply(service, traffic).await,
            Driver::Gateway(r) => r.apply(service, traffic).await,
        }
    }

    /// Appends the router's own counters, if it keeps any, in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        match self {
            Driver::Embedded(r) => r.render_metrics(out),
            Driver::Haproxy(_)
            | Driver::Traefik(_)
            | Driver::Caddy(_)
            | Driver::Nginx(_)
            | Driver::Gateway(_) => {}
        }
    }

    /// Whether the router answers.
    pub async fn health(&self) -> Result<(), RouterError> {
        match self {
            Driver::Embedded(_) => Ok(()),
            Driver::Haproxy(r) => r.health().await,
            Driver::Traefik(r) => r.health().await,
            Driver::Caddy(r) => r.health().await,
            Driver::Nginx(r) => r.health().await,
            Driver::Gateway(r) => r.health().await,
        }
    }
}
