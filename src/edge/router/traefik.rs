//! The Traefik driver: writes weighted services, and routers for header, cookie and query routes, into a file-provider file it owns, and reads them back from Traefik's API.
//!
//! # Writing
//!
//! For a rollout's `service` canaryd writes, into `dynamic_file` (which must lie in a directory
//! Traefik's file provider watches), one `loadBalancer` service `<service>-<backend>` per
//! backend named in the traffic, with that backend's URL as its only server, and `<service>` as
//! a `weighted` service over them. The weighted list is exactly the backends named, so `apply`
//! sets and never adds. Other services in the file are kept as they are (they are canaryd's own,
//! for other rollouts). The file is replaced atomically: written to a hidden `.tmp` file in the
//! same directory (Traefik loads only `.yaml`, `.yml` and `.toml` files), synced, then renamed
//! over the old one, and only when its text changes (a repeated apply writes nothing, so
//! Traefik does not reload). Traefik picks it up after its provider throttle and swaps its
//! handler whole, so a request sees old or new routes and weights, never half of each, and
//! none fails; `observe` shows the old state for a moment, and the daemon reads back.
//!
//! # What the user configures
//!
//! Their own Traefik router (rule, entry points, TLS, middlewares; any provider) sends
//! requests to `<service>@file`. canaryd never edits it.
//!
//! # Routes: routers in front of the user's
//!
//! Traefik has no routes inside a service: matching is what routers do. So each route of the
//! traffic becomes, for each of the user's routers that sends to `<service>@file` (found in the
//! same `GET {api}/api/rawdata` that proves Traefik answers), a router of canaryd's in the same
//! file: rule `(<their rule>) && (<the route's matches>)`, the same entry points, TLS,
//! observability and middlewares, a priority just above theirs (Traefik's default priority is
//! the rule's length; route *i* of *n* gets theirs + *n* − *i*, so routes are tried in order and
//! before the weighted split), and as service the route backend's `<service>-<backend>`. The
//! matchers, names and read-back are in the `routes` submodule (`traefik/routes.rs`). A
//! request header, cookie (exact or prefix) or query parameter, exact, prefix or regex,
//! several criteria ANDed, several matches ORed, all hold; a route set is a set: routers of
//! canaryd's for the service that the traffic does not name are removed, so no routes (an
//! abort, a promotion) leaves only the user's router.
//!
//! A cookie matched by regex `r` is two matchers over the `Cookie` header, ANDed: `r` as
//! given (so that it reads back), and `r` with `;` taken out of every character it may match,
//! in Go's syntax, so that a match cannot run past one cookie's value (see `routes`).
//!
//! Refused at `apply` with [`RouterError::Setup`], before anything is written: a cookie regex
//! with an assertion inside the value (`\b`) or a byte-oriented `(?-u)` part, a cookie value
//! holding `;`, a user router with `ruleSyntax: v2`, and sticky users (below); with
//! [`RouterError::Unknown`], routes when no router of the user's sends to `<service>@file`
//! (there is nothing to stand in front of). Query values are compared as Go decodes them (`+`
//! reads as a space; the embedded router leaves it), and a regex is Go's RE2 dialect, which
//! lacks a few of Rust's forms (class set operations such as `[a&&b]`): Traefik then disables
//! the router, and the read-back says so, as drift.
//!
//! # Side header
//!
//! A route's routers end their middlewares with `canaryd:<service>:canary` (or `:stable`, when
//! the route's backend is not [`Traffic::canary`]), a `headers` middleware that sets
//! `X-Canaryd-Side: <service>=canary` (or `=stable`) on the request, replacing one the client
//! sent. Requests of the weighted split carry none: Traefik attaches middlewares to routers,
//! and the split happens below the user's router, inside the `weighted` service, whose
//! children take no middlewares; a client's own `X-Canaryd-Side` passes through there.
//!
//! # Sticky users: refused
//!
//! Traefik's only stickiness is the weighted service's sticky cookie, which pins the side a
//! user's first request drew (by weighted round robin), stable as well as canary: returning
//! stable users never draw again, so the canary's share of users lags the weight, and the key
//! is Traefik's own cookie, not the user's (`wrr.go`: the cookie is written for whichever
//! child served). That is not monotone, so [`RouterKind::can_stick`] is false for Traefik,
//! lint refuses `sticky`, and `apply` refuses a traffic with a sticky key.
//!
//! # Reading
//!
//! `observe` and `observe_all` read everything with one `GET {api}/api/rawdata` (every
//! router, middleware and service at once; unlike `/api/http/services` it is not paginated),
//! and read the dynamic file once more only when one of the services asked for is missing
//! there. The weighted service's `weighted.services[].{name, weight}` give the weights (a
//! missing weight is Traefik's default, 1): names `<service>-<backend>` are reported as
//! `<backend>`; any other name is reported as it is, so a hand-made extra service shows up as
//! an unexpected backend. Weights are Traefik's own integers; canaryd writes percentages. The
//! routes are parsed back from canaryd's routers as Traefik holds them; one that is not exactly
//! what canaryd would write now (edited, removed, refused, or its user router's rule changed)
//! reads as a route that differs, so the daemon sees drift and applies again. The sticky key
//! always reads as none.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use super::nginx::remove_stale_temps;
use super::{ObservedAll, RouterError};
use crate::core::model::{Observed, Traffic};
use crate::core::spec::RouterKind;

mod routes;

/// How long one request to Traefik's API may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long reading and replacing the dynamic file may take.
const FILE_TIMEOUT: Duration = Duration::from_secs(2);

/// A Traefik instance driven through a file-provider file and its API.
pub struct TraefikRouter {
    /// Boxed: the driver enum stays small (one pointer for this variant).
    inner: Box<Inner>,
}

struct Inner {
    name: String,
    /// The API's base URL, without credentials.
    api: Url,
    /// `user`, `password` from the API URL, sent as basic auth; never logged.
    credentials: Option<(String, Option<String>)>,
    dynamic_file: PathBuf,
    /// Backend name → upstream URL.
    backends: BTreeMap<String, String>,
    client: reqwest::Client,
    /// One read-modify-write of the dynamic file at a time.
    writing: tokio::sync::Mutex<()>,
}

impl fmt::Debug for TraefikRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("TraefikRouter")
            .field("name", &inner.name)
            .field("api", &inner.api.as_str())
            .field(
                "credentials",
                &inner.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("dynamic_file", &inner.dynamic_file)
            .field("backends", &inner.backends.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TraefikRouter {
    /// The router's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Checks the configuration; does no I/O.
    ///
    /// `api`: Traefik's API, plain `http://` (credentials in the URL are sent as basic auth).
    /// `dynamic_file`: a `.yaml`/`.yml` file in a directory Traefik's file provider watches.
    /// `backends`: backend name → upstream URL (`http://127.0.0.1:9001`).
    pub fn new(
        name: &str,
        api: &str,
        dynamic_file: &str,
        backends: &BTreeMap<String, String>,
    ) -> Result<TraefikRouter, RouterError> {
        let setup = |message: String| RouterError::Setup {
            router: name.to_string(),
            message,
        };
        let mut api_url = Url::parse(api)
            .map_err(|e| setup(format!("api `{}` is not a url: {e}", redact(api))))?;
        if api_url.scheme() != "http" || api_url.host_str().is_none() {
            return Err(setup(format!(
                "api `{}` must be an http:// url with a host",
                redact(api)
            )));
        }
        let credentials = (!api_url.username().is_empty()).then(|| {
            (
                api_url.username().to_string(),
                api_url.password().map(str::to_string),
            )
        });
        // Neither can fail on an http URL with a host.
        let _ = api_url.set_username("");
        let _ = api_url.set_password(None);

        let path = PathBuf::from(dynamic_file);
        let yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml"));
        if !yaml || path.file_name().is_none() {
            return Err(setup(format!(
                "dynamic file `{dynamic_file}` must be a .yaml or .yml file"
            )));
        }

        if backends.is_empty() {
            return Err(setup("no backends configured".to_string()));
        }
        for (backend, url) in backends {
            check_name(backend).map_err(|why| setup(format!("backend name `{backend}` {why}")))?;
            let parsed = Url::parse(url)
                .map_err(|e| setup(format!("backend `{backend}` url `{}`: {e}", redact(url))))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(setup(format!(
                    "backend `{backend}` url `{}` must be http:// or https:// with a host",
                    redact(url)
                )));
            }
        }

        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| setup(format!("http client: {}", innermost(&e))))?;
        Ok(TraefikRouter {
            inner: Box::new(Inner {
                name: name.to_string(),
                api: api_url,
                credentials,
                dynamic_file: path,
                backends: backends.clone(),
                client,
                writing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The live weights and routes of `service`, read from Traefik's API.
    pub async fn observe(&self, service: &str) -> Result<Observed, RouterError> {
        self.inner.observe(service).await
    }

    /// The live weights and routes of each of `services`, from one read of Traefik's API
    /// (`GET {api}/api/rawdata`, every service at once, not paginated) and, only when one of
    /// them is not loaded, one read of the dynamic file.
    pub async fn observe_all(&self, services: &[String]) -> Result<ObservedAll, RouterError> {
        self.inner.observe_all(services).await
    }

    /// Sets the weights and routes of `service` by rewriting the dynamic file; the weighted
    /// service lists exactly the backends named, and canaryd's routers for the service are
    /// exactly the traffic's routes. Refuses a backend that is not configured
    /// ([`RouterError::Unknown`]), what Traefik cannot hold and sticky users
    /// ([`RouterError::Setup`]), and, when Traefik's API does not answer, changes nothing
    /// ([`RouterError::Unreachable`]).
    pub async fn apply(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        self.inner.apply(service, traffic).await
    }

    /// Whether Traefik's API answers (`GET {api}/api/version`).
    pub async fn health(&self) -> Result<(), RouterError> {
        self.inner.health().await
    }
}

impl Inner {
    async fn observe(&self, service: &str) -> Result<Observed, RouterError> {
        self.check_service(service)?;
        let mut all = self.observe_all(&[service.to_string()]).await?;
        all.remove(service)
            .unwrap_or_else(|| Ok(Observed::default()))
    }

    /// Traefik's raw data: every router, middleware and service, all at once.
    async fn raw_data(&self) -> Result<RawData, RouterError> {
        let (status, body) = self.get(&["api", "rawdata"]).await?;
        if !status.is_success() {
            return Err(self.bad_status(status));
        }
        serde_json::from_str(&body).map_err(|e| RouterError::Setup {
            router: self.name.clone(),
            message: format!(
                "api `{}` answered something that is not traefik's raw data: {e}",
                self.api
            ),
        })
    }

    async fn observe_all(&self, services: &[String]) -> Result<ObservedAll, RouterError> {
        let raw = self.raw_data().await?;
        let loaded = |service: &str| raw.services.get(&format!("{service}@file"));
        // Read only when a service is missing from the API, once for all of them (else never
        // consulted).
        let written = match services.iter().any(|s| loaded(s).is_none()) {
            true => self.written().await,
            false => Written::Nothing,
        };
        Ok(services
            .iter()
            .map(|service| {
                let observed = self
                    .check_service(service)
                    .and_then(|()| match loaded(service) {
                        None => self.not_loaded(service, &written),
                        Some(info) => self
                            .parsed(
                                service,
                                parse_service(service, ServiceInfo::deserialize(info)),
                            )
                            .map(|observed| Observed {
                                routes: routes::read_back(service, &raw.routers, &raw.middlewares),
                                ..observed
                            }),
                    });
                (service.clone(), observed)
            })
            .collect())
    }

    /// What a service the API does not have means: not written yet, nothing carries traffic
    /// for it, which is what canaryd sets first; written but not loaded yet (the provider's
    /// throttle), ask again soon.
    fn not_loaded(&self, service: &str, written: &Written) -> Result<Observed, RouterError> {
        if written.defines(service) {
            Err(RouterError::Unreachable {
                router: self.name.clone(),
                message: format!("service `{service}@file` is written but not loaded yet"),
            })
        } else {
            Ok(Observed::default())
        }
    }

    /// The weights read from Traefik's description of `service`, or why there are none.
    fn parsed(
        &self,
        service: &str,
        parsed: Result<Observed, ParseError>,
    ) -> Result<Observed, RouterError> {
        parsed.map_err(|e| match e {
            ParseError::NotWeighted(kind) => RouterError::Unknown {
                router: self.name.clone(),
                what: format!("weighted service `{service}@file` (it is a {kind} service)"),
            },
            ParseError::Json(message) => RouterError::Setup {
                router: self.name.clone(),
                message: format!(
                    "api `{}` answered something that is not a traefik service: {message}",
                    self.api
                ),
            },
        })
    }

    async fn apply(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        self.check_service(service)?;
        let mut children = Vec::with_capacity(traffic.backends.len());
        for (backend, weight) in &traffic.backends {
            let Some(url) = self.backends.get(backend) else {
                return Err(RouterError::Unknown {
                    router: self.name.clone(),
                    what: format!("backend `{backend}` (service `{service}`)"),
                });
            };
            children.push(Child {
                backend: backend.clone(),
                url: url.clone(),
                weight: u32::from(weight.get()),
            });
        }
        let setup = |message: String| RouterError::Setup {
            router: self.name.clone(),
            message: format!("service `{service}`: {message}"),
        };
        if let Some(sticky) = &traffic.sticky {
            return Err(setup(format!(
                "sticky users (by {sticky}) are not supported: traefik's only stickiness is a \
                 cookie that pins whichever side a user's first request drew, stable too, \
                 which is not monotone; routers that can: {}",
                RouterKind::those_that(RouterKind::can_stick)
            )));
        }
        for route in &traffic.routes {
            if !self.backends.contains_key(&route.backend) {
                return Err(RouterError::Unknown {
                    router: self.name.clone(),
                    what: format!(
                        "backend `{}` (route `{}` of service `{service}`)",
                        route.backend, route.name
                    ),
                });
            }
            if !traffic.backends.contains_key(&route.backend) {
                // Its load balancer is written only for the backends the weights name.
                return Err(setup(format!(
                    "route `{}` sends to backend `{}`, which the weights do not name (give it \
                     weight 0)",
                    route.name, route.backend
                )));
            }
            if route.matches.is_empty() || route.matches.iter().any(|m| m.all.is_empty()) {
                return Err(setup(format!(
                    "route `{}` has a match list or a match that is empty",
                    route.name
                )));
            }
            for c in route.matches.iter().flat_map(|m| &m.all) {
                routes::check(c).map_err(|why| setup(format!("route `{}`: {why}", route.name)))?;
            }
        }
        // A write while Traefik is down would succeed and be reported as one; say so instead.
        // Routes stand in front of the user's routers, which the raw data names.
        let (routers, middlewares) = if traffic.routes.is_empty() {
            self.health().await?;
            (Vec::new(), Vec::new())
        } else {
            let raw = self.raw_data().await?;
            if routes::user_routers(&raw.routers, service).is_empty() {
                return Err(RouterError::Unknown {
                    router: self.name.clone(),
                    what: format!(
                        "router sending requests to `{service}@file` (routes stand in front of \
                         the user's own; route to the weighted service first)"
                    ),
                });
            }
            route_routers(service, traffic, &raw.routers).map_err(setup)?
        };

        let _writing = self.writing.lock().await;
        let file = self.dynamic_file.clone();
        let service_owned = service.to_string();
        let job = tokio::task::spawn_blocking(move || {
            let ours = Ours {
                children: &children,
                routers: &routers,
                middlewares: &middlewares,
            };
            replace_service(&file, &service_owned, &ours)
        });
        match tokio::time::timeout(FILE_TIMEOUT, job).await {
            Err(_) => Err(RouterError::Unreachable {
                router: self.name.clone(),
                message: format!(
                    "writing dynamic file `{}` took over {}s",
                    self.dynamic_file.display(),
                    FILE_TIMEOUT.as_secs()
                ),
            }),
            Ok(Err(join)) => Err(RouterError::Setup {
                router: self.name.clone(),
                message: format!(
                    "writing dynamic file `{}` stopped: {join}",
                    self.dynamic_file.display()
                ),
            }),
            Ok(Ok(Err(message))) => Err(RouterError::Setup {
                router: self.name.clone(),
                message: format!("dynamic file `{}`: {message}", self.dynamic_file.display()),
            }),
            Ok(Ok(Ok(()))) => {
                tracing::debug!(router = %self.name, service, "wrote weighted service");
                Ok(())
            }
        }
    }

    async fn health(&self) -> Result<(), RouterError> {
        let (status, _) = self.get(&["api", "version"]).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.bad_status(status))
        }
    }

    /// What the dynamic file canaryd owns defines.
    async fn written(&self) -> Written {
        let file = self.dynamic_file.clone();
        tokio::task::spawn_blocking(move || match std::fs::read_to_string(&file) {
            Ok(text) => match serde_saphyr::from_str::<Value>(&text) {
                Ok(doc) => Written::Doc(doc),
                Err(_) => Written::Unreadable,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Written::Nothing,
            Err(_) => Written::Unreadable,
        })
        .await
        .unwrap_or(Written::Unreadable)
    }

    fn check_service(&self, service: &str) -> Result<(), RouterError> {
        check_name(service).map_err(|why| RouterError::Setup {
            router: self.name.clone(),
            message: format!("service name `{service}` {why}"),
        })
    }

    /// `GET` the API path made of `segments` (each percent-encoded) below the base URL.
    async fn get(&self, segments: &[&str]) -> Result<(StatusCode, String), RouterError> {
        let mut url = self.api.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let mut request = self.client.get(url);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, password.as_deref());
        }
        let unreachable = |e: reqwest::Error| RouterError::Unreachable {
            router: self.name.clone(),
            message: if e.is_timeout() {
                format!(
                    "api `{}` did not answer within {}s",
                    self.api,
                    REQUEST_TIMEOUT.as_secs()
                )
            } else {
                format!("api `{}`: {}", self.api, innermost(&e))
            },
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.text().await.map_err(unreachable)?;
        Ok((status, body))
    }

    /// The error for an answer that is neither success nor "not found".
    fn bad_status(&self, status: StatusCode) -> RouterError {
        let router = self.name.clone();
        if status.is_server_error() {
            RouterError::Unreachable {
                router,
                message: format!("api `{}` answered {status}", self.api),
            }
        } else {
            RouterError::Setup {
                router,
                message: format!(
                    "api `{}` answered {status} (is it Traefik's API, with the right credentials?)",
                    self.api
                ),
            }
        }
    }
}

/// Why a name cannot be used as (part of) a Traefik service name, if it cannot.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name
        .chars()
        .any(|c| c == '@' || c == '/' || c.is_whitespace() || c.is_control())
    {
        Err("cannot be a traefik service name (no `@`, `/` or spaces)")
    } else {
        Ok(())
    }
}

/// `url` without the `user:password@` part, for messages.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The deepest cause of an HTTP error ("Connection refused"), without the URL.
fn innermost(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The dynamic file, as read to tell a service not written from one not loaded yet.
enum Written {
    /// There is no such file.
    Nothing,
    Doc(Value),
    /// It could not be read or parsed: it counts as defining every service, so that nothing is
    /// assumed unset.
    Unreadable,
}

impl Written {
    /// Whether the file defines `service`.
    fn defines(&self, service: &str) -> bool {
        match self {
            Written::Nothing => false,
            Written::Doc(doc) => doc
                .pointer("/http/services")
                .and_then(|services| services.get(service))
                .is_some(),
            Written::Unreadable => true,
        }
    }
}

/// Why a service answer could not be read as weights.
#[derive(Debug, PartialEq)]
enum ParseError {
    /// The service exists but is of this other type (`loadbalancer`, `mirroring`, ...).
    NotWeighted(String),
    Json(String),
}

/// What `GET /api/rawdata` holds of interest here: every service, by qualified name, as
/// `GET /api/http/services/<name>` describes it but for `name`, `provider` and `type`.
#[derive(Deserialize)]
struct RawData {
    #[serde(default)]
    services: BTreeMap<String, Value>,
    #[serde(default)]
    routers: BTreeMap<String, Value>,
    #[serde(default)]
    middlewares: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct ServiceInfo {
    #[serde(default)]
    weighted: Option<Weighted>,
    /// Given by `/api/http/services/<name>` only; found from the other fields in raw data.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default, rename = "loadBalancer")]
    load_balancer: Option<IgnoredAny>,
    #[serde(default)]
    mirroring: Option<IgnoredAny>,
    #[serde(default)]
    failover: Option<IgnoredAny>,
}

impl ServiceInfo {
    /// The service's type, as Traefik names it (`loadbalancer`, `mirroring`, ...).
    fn kind(&self) -> String {
        let named = [
            (self.load_balancer.is_some(), "loadbalancer"),
            (self.mirroring.is_some(), "mirroring"),
            (self.failover.is_some(), "failover"),
        ];
        let found = named.iter().find(|(present, _)| *present).map(|(_, k)| *k);
        self.kind
            .clone()
            .or_else(|| found.map(str::to_string))
            .unwrap_or_else(|| "non-weighted".to_string())
    }
}

#[derive(Deserialize)]
struct Weighted {
    #[serde(default)]
    services: Vec<WeightedRef>,
}

#[derive(Deserialize)]
struct WeightedRef {
    name: String,
    /// Traefik's default is 1.
    #[serde(default)]
    weight: Option<u32>,
}

/// The weights of weighted service `service`, by backend, as Traefik describes it (read from
/// `/api/http/services/<name>` or from one entry of `/api/rawdata`).
fn parse_service(
    service: &str,
    info: Result<ServiceInfo, serde_json::Error>,
) -> Result<Observed, ParseError> {
    let info = info.map_err(|e| ParseError::Json(e.to_string()))?;
    let kind = info.kind();
    let Some(weighted) = info.weighted else {
        return Err(ParseError::NotWeighted(kind));
    };
    let prefix = format!("{service}-");
    let mut backends = BTreeMap::new();
    for child in weighted.services {
        let local = child
            .name
            .split_once('@')
            .map_or(child.name.as_str(), |(n, _)| n);
        let backend = local.strip_prefix(&prefix).unwrap_or(local);
        *backends.entry(backend.to_string()).or_insert(0u32) += child.weight.unwrap_or(1);
    }
    Ok(Observed::weights(backends))
}

/// One backend of a weighted service to write.
#[derive(Clone, Debug)]
struct Child {
    backend: String,
    url: String,
    weight: u32,
}

/// A named router or middleware configuration, as the dynamic file holds it.
type Named = (String, Value);

/// Everything canaryd writes for one service.
struct Ours<'a> {
    children: &'a [Child],
    /// One router per route and user's router (see [`routes`]).
    routers: &'a [Named],
    /// The side-header middlewares those routers use.
    middlewares: &'a [Named],
}

/// The routers that carry `traffic`'s routes for `service`, in front of each of the user's
/// routers in `routers` (Traefik's raw data) that serves `<service>@file`, and the
/// middlewares they use; why not, when they cannot be written.
fn route_routers(
    service: &str,
    traffic: &Traffic,
    routers: &BTreeMap<String, Value>,
) -> Result<(Vec<Named>, Vec<Named>), String> {
    let users = routes::user_routers(routers, service);
    let count = traffic.routes.len();
    for user in &users {
        user.check()?;
        if count > 0 {
            routes::room_above(user, routers, count)?;
        }
    }
    let (mut out, mut sides) = (Vec::new(), BTreeMap::new());
    for (index, route) in traffic.routes.iter().enumerate() {
        let canary = traffic.canary.as_deref() == Some(route.backend.as_str());
        sides.insert(
            routes::side_middleware(service, canary),
            routes::side_middleware_config(service, canary),
        );
        for user in &users {
            out.push((
                routes::router_name(service, index, &route.name, user.name),
                routes::router_config(service, index, count, route, user, canary),
            ));
        }
    }
    Ok((out, sides.into_iter().collect()))
}

/// Replaces `service` in the dynamic file `file` (created if missing), atomically.
fn replace_service(file: &Path, service: &str, ours: &Ours<'_>) -> Result<(), String> {
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let rendered = render(existing.as_deref(), service, ours)?;
    if existing.as_deref() == Some(rendered.as_str()) {
        return Ok(());
    }
    write_atomically(file, &rendered)
}

/// The dynamic file `existing` (none: empty) with `service`, its children, and its routes'
/// routers and middlewares replaced.
fn render(existing: Option<&str>, service: &str, ours: &Ours<'_>) -> Result<String, String> {
    let mut doc: Value = match existing {
        Some(text) if !text.trim().is_empty() => serde_saphyr::from_str(text)
            .map_err(|e| format!("not yaml canaryd can keep, left as it is: {e}"))?,
        _ => Value::Object(Map::new()),
    };
    for (section, named) in [("routers", ours.routers), ("middlewares", ours.middlewares)] {
        let map = section_mut(&mut doc, section)?;
        map.retain(|name, _| !routes::is_ours(name, service));
        map.extend(named.iter().cloned());
        if map.is_empty() {
            remove_empty(&mut doc, section);
        }
    }
    let children = ours.children;
    let services = section_mut(&mut doc, "services")?;
    // Drop the children this service had, so a backend no longer named leaves no orphan.
    let prefix = format!("{service}-");
    let old: Vec<String> = services
        .get(service)
        .and_then(|s| s.pointer("/weighted/services"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    for name in old {
        services.remove(&name);
    }
    let mut refs = Vec::with_capacity(children.len());
    for child in children {
        let name = format!("{service}-{}", child.backend);
        services.insert(
            name.clone(),
            serde_json::json!({ "loadBalancer": { "servers": [ { "url": child.url } ] } }),
        );
        refs.push(serde_json::json!({ "name": name, "weight": child.weight }));
    }
    services.insert(
        service.to_string(),
        serde_json::json!({ "weighted": { "services": refs } }),
    );
    serde_saphyr::to_string(&doc).map_err(|e| format!("cannot render it: {e}"))
}

/// Drops `doc.http.<section>` (found empty), and `doc.http` if that leaves it empty.
fn remove_empty(doc: &mut Value, section: &str) {
    if let Some(http) = doc.get_mut("http").and_then(Value::as_object_mut) {
        http.remove(section);
        if http.is_empty()
            && let Some(root) = doc.as_object_mut()
        {
            root.remove("http");
        }
    }
}

/// `doc.http.<section>`, created where missing.
fn section_mut<'a>(
    doc: &'a mut Value,
    section: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let not_a_map = |key: &str| format!("`{key}` is not a mapping, left as it is");
    let root = doc
        .as_object_mut()
        .ok_or_else(|| not_a_map("(top level)"))?;
    let http = root
        .entry("http")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| not_a_map("http"))?;
    http.entry(section)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| not_a_map(&format!("http.{section}")))
}

/// Writes `text` to a hidden `.tmp` file beside `file` (Traefik ignores that extension), syncs
/// it and renames it over `file`. Such files that a killed canaryd left there are removed first.
fn write_atomically(file: &Path, text: &str) -> Result<(), String> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let base = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    remove_stale_temps(dir, &format!(".{base}."));
    let tmp = dir.join(format!(".{base}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot replace it: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Criterion, Field, Match, Pattern, Route};

    fn child(backend: &str, weight: u32) -> Child {
        Child {
            backend: backend.to_string(),
            url: format!("http://127.0.0.1:900{}", backend.len()),
            weight,
        }
    }

    /// The file with `service`'s weights replaced, and no routes.
    fn weights(
        existing: Option<&str>,
        service: &str,
        children: &[Child],
    ) -> Result<String, String> {
        let ours = Ours {
            children,
            routers: &[],
            middlewares: &[],
        };
        render(existing, service, &ours)
    }

    fn parse(service: &str, body: &str) -> Result<Observed, ParseError> {
        parse_service(service, serde_json::from_str(body))
    }

    fn parsed(yaml: &str) -> Value {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn parses_the_weighted_answer_of_traefik_3() {
        // As Traefik 3.7 answers `GET /api/http/services/checkout@file`.
        let body = r#"{"weighted":{"services":[{"name":"checkout-blue","weight":90},{"name":"checkout-green","weight":0}]},"status":"enabled","usedBy":["checkout@file"],"name":"checkout@file","provider":"file","type":"weighted"}"#;
        let observed = parse("checkout", body).unwrap();
        assert_eq!(
            observed.backends,
            BTreeMap::from([("blue".to_string(), 90), ("green".to_string(), 0)])
        );
    }

    #[test]
    fn parse_keeps_foreign_names_and_defaults_weight_to_one() {
        let body = r#"{"weighted":{"services":[{"name":"checkout-blue@file"},{"name":"legacy@docker","weight":3}]},"type":"weighted"}"#;
        let observed = parse("checkout", body).unwrap();
        assert_eq!(
            observed.backends,
            BTreeMap::from([("blue".to_string(), 1), ("legacy".to_string(), 3)])
        );
    }

    #[test]
    fn parse_refuses_other_service_types_and_garbage() {
        let lb =
            r#"{"loadBalancer":{"servers":[{"url":"http://127.0.0.1:1"}]},"type":"loadbalancer"}"#;
        assert_eq!(
            parse("checkout", lb),
            Err(ParseError::NotWeighted("loadbalancer".to_string()))
        );
        assert!(matches!(
            parse("checkout", "<html>"),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn renders_a_weighted_service_and_one_load_balancer_per_backend() {
        let out = weights(None, "checkout", &[child("blue", 90), child("green", 10)]).unwrap();
        let want = parsed(
            "http:
  services:
    checkout:
      weighted:
        services:
          - {name: checkout-blue, weight: 90}
          - {name: checkout-green, weight: 10}
    checkout-blue:
      loadBalancer:
        servers: [{url: 'http://127.0.0.1:9004'}]
    checkout-green:
      loadBalancer:
        servers: [{url: 'http://127.0.0.1:9005'}]
",
        );
        assert_eq!(parsed(&out), want, "{out}");
    }

    #[test]
    fn render_keeps_other_services_and_drops_this_ones_old_children() {
        let first = weights(None, "cart", &[child("a", 100)]).unwrap();
        let second = weights(
            Some(&first),
            "checkout",
            &[child("blue", 50), child("red", 50)],
        )
        .unwrap();
        let third = weights(Some(&second), "checkout", &[child("blue", 100)]).unwrap();
        let doc = parsed(&third);
        let services = doc.pointer("/http/services").unwrap().as_object().unwrap();
        let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["cart", "cart-a", "checkout", "checkout-blue"]);
        assert_eq!(
            doc.pointer("/http/services/checkout/weighted/services")
                .unwrap(),
            &serde_json::json!([{ "name": "checkout-blue", "weight": 100 }])
        );
    }

    #[test]
    fn render_is_stable_so_a_repeated_apply_writes_nothing() {
        let once = weights(None, "checkout", &[child("blue", 90), child("green", 10)]).unwrap();
        let twice = weights(
            Some(&once),
            "checkout",
            &[child("blue", 90), child("green", 10)],
        )
        .unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn render_keeps_hand_written_extras_and_refuses_what_it_cannot_keep() {
        let hand = "http:\n  routers:\n    r: {rule: 'PathPrefix(`/`)', service: checkout@file}\n";
        let out = weights(Some(hand), "checkout", &[child("blue", 100)]).unwrap();
        assert_eq!(
            parsed(&out).pointer("/http/routers/r/service"),
            Some(&serde_json::json!("checkout@file"))
        );
        assert!(weights(Some("http: [1, 2]\n"), "checkout", &[]).is_err());
        assert!(weights(Some("http: {services: {"), "checkout", &[]).is_err());
        assert!(weights(Some("   \n"), "checkout", &[]).is_ok());
    }

    #[test]
    fn routes_are_written_as_a_set_beside_what_is_not_canaryds() {
        let routers: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"web@file": {"entryPoints": ["web"], "service": "checkout", "rule": "PathPrefix(`/`)", "priority": 15},
                "old@file": {"service": "checkout", "rule": "Host(`a`)", "ruleSyntax": "v2"}}"#,
        )
        .unwrap();
        let marked = Route {
            name: "marked".into(),
            matches: vec![Match {
                all: vec![Criterion {
                    on: Field::Header,
                    name: "X-Canary".into(),
                    value: Pattern::Exact("always".into()),
                }],
            }],
            backend: "green".into(),
        };
        let mut t = Traffic {
            routes: vec![marked],
            canary: Some("green".into()),
            ..Traffic::of(&[("blue", 100), ("green", 0)]).unwrap()
        };
        // A user router in the v2 syntax cannot have a v3 rule put in front of it.
        let e = route_routers("checkout", &t, &routers).unwrap_err();
        assert!(e.contains("ruleSyntax: v2"), "{e}");
        let routers: BTreeMap<String, Value> = routers
            .into_iter()
            .filter(|(n, _)| n != "old@file")
            .collect();
        let (named, sides) = route_routers("checkout", &t, &routers).unwrap();
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].0, "canaryd:checkout:0:marked:web%40file");
        assert_eq!(sides[0].0, "canaryd:checkout:canary");
        let children = [child("blue", 100), child("green", 0)];
        let hand = "http:\n  routers:\n    mine: {rule: 'Host(`x`)', service: checkout@file}\n";
        let ours = Ours {
            children: &children,
            routers: &named,
            middlewares: &sides,
        };
        let with = render(Some(hand), "checkout", &ours).unwrap();
        let doc = parsed(&with);
        let names = |section: &str| -> Vec<String> {
            doc.pointer(&format!("/http/{section}"))
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            names("routers"),
            ["canaryd:checkout:0:marked:web%40file", "mine"]
        );
        assert_eq!(names("middlewares"), ["canaryd:checkout:canary"]);
        assert_eq!(render(Some(&with), "checkout", &ours).unwrap(), with);
        // No routes: canaryd's routers and middlewares go, the user's stay.
        t.routes.clear();
        let without = weights(Some(&with), "checkout", &children).unwrap();
        let doc = parsed(&without);
        assert!(doc.pointer("/http/routers/mine").is_some(), "{without}");
        assert!(doc.pointer("/http/middlewares").is_none(), "{without}");
        assert!(!without.contains("canaryd:"), "{without}");
    }

    #[test]
    fn new_checks_the_configuration() {
        let backends = BTreeMap::from([("blue".to_string(), "http://127.0.0.1:9001".to_string())]);
        let ok = TraefikRouter::new(
            "edge",
            "http://u:secret@127.0.0.1:8080",
            "/d/c.yaml",
            &backends,
        )
        .unwrap();
        let debug = format!("{ok:?}");
        assert!(
            !debug.contains("secret") && debug.contains("<redacted>"),
            "{debug}"
        );

        let setup =
            |api: &str, file: &str, backends: &BTreeMap<String, String>| match TraefikRouter::new(
                "edge", api, file, backends,
            ) {
                Err(RouterError::Setup { message, .. }) => message,
                other => panic!("expected a setup error, got {other:?}"),
            };
        let m = setup("https://u:secret@h:1", "/d/c.yaml", &backends);
        assert!(m.contains("http://") && !m.contains("secret"), "{m}");
        assert!(setup("not a url", "/d/c.yaml", &backends).contains("not a url"));
        assert!(setup("http://h:1", "/d/c.toml", &backends).contains(".yaml"));
        assert!(setup("http://h:1", "/d/c.yaml", &BTreeMap::new()).contains("no backends"));
        let bad = BTreeMap::from([("b@d".to_string(), "http://h:1".to_string())]);
        assert!(setup("http://h:1", "/d/c.yaml", &bad).contains("`b@d`"));
        let bad = BTreeMap::from([("blue".to_string(), "ftp://h:1".to_string())]);
        assert!(setup("http://h:1", "/d/c.yaml", &bad).contains("`blue`"));
    }

    #[test]
    fn names_that_traefik_cannot_hold_are_refused() {
        assert!(check_name("checkout").is_ok());
        assert!(check_name("check-out_2.v1").is_ok());
        for bad in ["", "a@file", "a/b", "a b", "a\n"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_write_removes_the_temporary_files_of_dead_canaryds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("canary.yaml");
        // No pid goes that high on Linux (at most 2^22).
        let dead = dir.path().join(".canary.yaml.999999999.tmp");
        let other = dir.path().join(".canary.yaml.backup.tmp");
        std::fs::write(&dead, "half").unwrap();
        std::fs::write(&other, "theirs").unwrap();
        write_atomically(&file, "http: {}\n").unwrap();
        assert!(!dead.exists());
        assert!(other.exists());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "http: {}\n");
    }
}
