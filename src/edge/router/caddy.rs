//! The Caddy driver: reads and sets the `weighted_round_robin` weights of a `reverse_proxy` handler, and the header, cookie and query routes tried before it, through Caddy's admin API.
//!
//! A rollout's `service` is the `@id` of a `reverse_proxy` handler; the router's `backends` map
//! backend names to the upstreams' `dial` addresses, compared as exact strings. The user's
//! config needs nothing more: the handler, with `@id`, the `weighted_round_robin` policy and
//! every backend among its upstreams (the canary at weight 0 before a rollout).
//!
//! # Reading
//!
//! `observe` and `observe_all` read the whole config with one `GET {admin}/config/` and find
//! each handler by its `@id` in it, wherever it stands, as `GET /id/<@id>` does; the routes
//! stand beside the handler, not in it, so one read of the config holds both. An upstream
//! beyond the end of the weights array gets nothing in Caddy, so it is reported as 0; an
//! upstream whose dial address is not in `backends` is reported under that address, so traffic
//! going somewhere unexpected shows up as drift rather than being hidden.
//!
//! # Routes
//!
//! A rollout's routes live in a `subroute` handler with `@id` `canaryd-<service>-routes`,
//! placed in the same `handle` list just before the driven handler: Caddy runs the handlers of
//! a list in order, and a subroute none of whose routes match calls the next one, the weighted
//! split. Each canaryd route is one Caddy route: its matches are matcher sets (ORed), each
//! match's criteria matchers of one set (ANDed): `header` (exact, `prefix*`), `header_regexp`
//! (regexes, and cookies inside the `Cookie` header), `query` (exact), and `vars`/`vars_regexp`
//! on the `{http.request.cookie.*}` and `{http.request.uri.query.*}` placeholders (cookie
//! regexes, query prefixes and regexes); `routes.rs` has the table. Its handler is a copy of
//! the driven handler (transport, timeouts, headers, the backend's upstream entry) with only
//! the route backend's upstream and no load balancing, so routed requests are proxied as the
//! others are. The subroute is removed when the traffic has no routes (abort, promotion), which
//! leaves the config as the operator wrote it. `observe` parses the matchers back (see
//! `routes.rs` for how the criteria's order and the route's name are kept, and what an edited
//! route reads as), so a hand edit shows as drift and the next apply puts the routes back.
//!
//! What Caddy cannot express is refused with [`RouterError::Setup`] before anything is written:
//! a match needing two values of one matcher key (two regexes on one header, two regex-matched
//! cookies or query parameters: `vars_regexp` ORs its keys, so a set holds one), and a cookie or
//! query name with braces (Caddy reads them as a placeholder). A regex Rust's `regex` accepts
//! but Go's RE2 does not is refused by Caddy when it loads the config (the old config stays)
//! and reported as `Setup` too.
//!
//! **Side propagation.** A routed request carries `X-Canaryd-Side: <service>=canary` (or
//! `=stable` for a route to another backend), set by the route's proxy in place of any the
//! client sent. Requests of the weighted split do not: the driven handler picks the upstream
//! itself, and naming the side there would mean editing the operator's handler (its
//! `headers`); they carry whatever the client sent unless the operator strips it.
//!
//! **No sticky users.** Caddy's `cookie` policy pins the upstream of a first draw and ignores
//! weights on the cookie path (a weight-0 canary keeps its users), and its `header`/`query`
//! policies hash without weights (rendezvous over the upstreams): neither puts a user on the
//! canary exactly when its bucket is below the weight, so `apply` refuses a sticky key (`Setup`),
//! as lint does ([`RouterKind::can_stick`]).
//!
//! # Writing
//!
//! `apply` reads the whole config (one `GET {admin}/config/`, with its `Etag`), finds the
//! handler's `handle` list, and builds the list as it should be: the weights array in upstream
//! order (upstreams not named get 0; an address reported by `observe` is accepted as a name)
//! and canaryd's subroute just before the handler, rendered from the traffic's routes, or
//! removed. When that is the list already, nothing is written, so no config reload happens.
//! Otherwise the list is `PATCH`ed whole with `If-Match` set to the config's `Etag`, so routes
//! and weights change in one config load, and a concurrent edit anywhere in the config makes
//! Caddy answer 412: the read and write are tried again, a few times. A subroute of that `@id`
//! found anywhere else (moved by hand) is refused rather than duplicated. Caddy applies a change
//! by loading a new config, which closes idle keep-alive connections of its HTTP servers (a
//! client that sends on one as it closes sees a transport error; in-flight requests finish),
//! and on Linux binds a new `SO_REUSEPORT` socket for each listener and closes the old one
//! (`listen_unix.go`), so a connection the kernel queued on the old socket just then is reset
//! (derived from the source; the tests see a few transport errors per reload under load, never
//! a 5xx). Hence canaryd writes nothing when nothing changes. Weight 0 is accepted and sends no
//! traffic, but all weights 0 is refused by Caddy (`Rejected`).
//!
//! Every request is bounded by [`REQUEST_TIMEOUT`]; one whose connection fails (not one that
//! times out) is tried again twice, 50 ms apart, because Caddy replaces its admin server on
//! every config load and a request just after a change can meet a closing connection. Neither
//! errors nor `Debug` show the admin URL's user info.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use reqwest::header::{ETAG, IF_MATCH};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::{ObservedAll, RouterError};
use crate::core::model::{Observed, Traffic};
use crate::core::spec::RouterKind;

mod routes;

/// The bound on each request to the admin API, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `apply` reads and writes again when the handler changed in between (HTTP 412).
const CONFLICT_ATTEMPTS: usize = 3;
/// Tries of one request whose connection failed (see `CaddyRouter::send`).
const TRANSPORT_ATTEMPTS: u32 = 3;
/// The pause before trying a failed connection again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How much of an error answer from Caddy is quoted.
const MAX_QUOTE: usize = 300;

/// A Caddy server driven through its admin API.
pub struct CaddyRouter {
    name: String,
    admin: Url,
    /// Backend name → dial address.
    backends: BTreeMap<String, String>,
    /// Dial address → backend name.
    by_dial: BTreeMap<String, String>,
    client: reqwest::Client,
}

impl fmt::Debug for CaddyRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaddyRouter")
            .field("name", &self.name)
            .field("admin", &shown(&self.admin))
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

/// The admin URL without user info, for messages.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    // Both fail only for URLs without a host, which `new` refuses.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// What canaryd needs of a `reverse_proxy` handler.
#[derive(Debug, PartialEq, Eq)]
struct Handler {
    /// Dial addresses in config order.
    upstreams: Vec<String>,
    /// `None` when the selection policy is not `weighted_round_robin`; `Some(None)` when it is
    /// but has no `weights` array.
    weights: Option<Option<Vec<u32>>>,
    /// The selection policy named in the config, for messages ("" when none).
    policy: String,
}

/// Reads a handler as `GET /id/<service>` returns it.
#[cfg(test)]
fn parse_handler(body: &[u8]) -> Result<Handler, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("handler is not JSON: {e}"))?;
    handler(&v)
}

/// Reads a handler, the object that has its `@id`.
fn handler(v: &Value) -> Result<Handler, String> {
    let kind = v.get("handler").and_then(Value::as_str).unwrap_or("");
    if kind != "reverse_proxy" {
        return Err(format!("handler is `{kind}`, not `reverse_proxy`"));
    }
    let upstreams = match v.get("upstreams") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|u| {
                u.get("dial")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| "an upstream has no `dial` address".to_string())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`upstreams` is not an array".into()),
    };
    let selection = v.pointer("/load_balancing/selection_policy");
    let policy = selection
        .and_then(|s| s.get("policy"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let weights = if policy == "weighted_round_robin" {
        match selection.and_then(|s| s.get("weights")) {
            None | Some(Value::Null) => Some(None),
            Some(Value::Array(list)) => Some(Some(
                list.iter()
                    .map(|w| {
                        w.as_u64()
                            .and_then(|w| u32::try_from(w).ok())
                            .ok_or_else(|| format!("weight `{w}` is not a whole number"))
                    })
                    .collect::<Result<_, _>>()?,
            )),
            Some(_) => return Err("`weights` is not an array".into()),
        }
    } else {
        None
    };
    Ok(Handler {
        upstreams,
        weights,
        policy,
    })
}

/// One step of a path into the config: an object's key or an array's index.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The path of every object in `config` (the whole config, as `GET /config/` returns it) that
/// has an `@id` in `wanted`, by that `@id`: where `GET /id/<@id>` would look. Caddy refuses a
/// config in which two objects have one `@id`.
fn paths(
    config: &Value,
    wanted: &BTreeSet<&str>,
    at: &mut Vec<Step>,
    found: &mut BTreeMap<String, Vec<Step>>,
) {
    match config {
        Value::Object(object) => {
            if let Some(id) = object.get("@id").and_then(Value::as_str)
                && wanted.contains(id)
            {
                found.entry(id.to_string()).or_insert_with(|| at.clone());
            }
            for (k, v) in object {
                at.push(Step::Key(k.clone()));
                paths(v, wanted, at, found);
                at.pop();
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                at.push(Step::Index(i));
                paths(v, wanted, at, found);
                at.pop();
            }
        }
        _ => {}
    }
}

/// The value at `path` in `config`.
fn at<'a>(config: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(config, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

/// Where a driven handler stands: in a `handle` list, at `index`, perhaps after canaryd's
/// subroute.
struct Place<'a> {
    /// The path of the list.
    list_path: Vec<Step>,
    list: &'a [Value],
    index: usize,
}

impl<'a> Place<'a> {
    /// The place of the object at `path`; `None` when it is not in a list.
    fn of(config: &'a Value, path: &[Step]) -> Option<Place<'a>> {
        let (Step::Index(index), list_path) = path.split_last()? else {
            return None;
        };
        let list = at(config, list_path)?.as_array()?;
        Some(Place {
            list_path: list_path.to_vec(),
            list,
            index: *index,
        })
    }

    fn handler(&self) -> &'a Value {
        &self.list[self.index]
    }

    /// canaryd's subroute for `service`, when it stands just before the handler.
    fn subroute(&self, service: &str) -> Option<&'a Value> {
        let before = self.list.get(self.index.checked_sub(1)?)?;
        (before.get("@id").and_then(Value::as_str) == Some(&routes::subroute_id(service)))
            .then_some(before)
    }
}

/// The live weights per backend name (the dial address for upstreams not in `by_dial`);
/// upstreams past the end of `weights` get 0, and an address listed twice gets the sum.
fn observed(upstreams: &[String], weights: &[u32], by_dial: &BTreeMap<String, String>) -> Observed {
    let mut backends = BTreeMap::new();
    for (i, dial) in upstreams.iter().enumerate() {
        let name = by_dial.get(dial).unwrap_or(dial);
        let w = weights.get(i).copied().unwrap_or(0);
        let entry: &mut u32 = backends.entry(name.clone()).or_default();
        *entry = entry.saturating_add(w);
    }
    Observed::weights(backends)
}

/// The weights array, in upstream order, that sets `traffic`: upstreams not named get 0, and an
/// address listed twice gets its weight once (first occurrence). `Err` names a backend that is
/// neither in `backends` nor an upstream's address, or whose address is not an upstream.
fn desired(
    upstreams: &[String],
    traffic: &Traffic,
    backends: &BTreeMap<String, String>,
) -> Result<Vec<u32>, String> {
    let mut weights = vec![0u32; upstreams.len()];
    for (name, weight) in &traffic.backends {
        let dial = backends.get(name).unwrap_or(name);
        let Some(i) = upstreams.iter().position(|u| u == dial) else {
            return Err(if backends.contains_key(name) {
                format!("upstream `{dial}` for backend `{name}`")
            } else {
                format!("backend `{name}`")
            });
        };
        weights[i] = u32::from(weight.get());
    }
    Ok(weights)
}

/// A path as the admin API names it, for messages: `/config/apps/http/...`.
fn admin_path(path: &[Step]) -> String {
    let mut out = "/config".to_string();
    for step in path {
        match step {
            Step::Key(k) => out.push_str(&format!("/{k}")),
            Step::Index(i) => out.push_str(&format!("/{i}")),
        }
    }
    out
}

/// Caddy's `{"error": "..."}` answer, shortened; else the start of the body.
fn caddy_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// One answer of the admin API.
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: Vec<u8>,
}

impl CaddyRouter {
    /// The router's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A driver for the Caddy whose admin API is at `admin` (plain `http://`, e.g.
    /// `http://127.0.0.1:2019`); `backends` maps backend names to upstream dial addresses.
    /// Checks the configuration only; talks to nobody.
    pub fn new(
        name: &str,
        admin: &str,
        backends: &BTreeMap<String, String>,
    ) -> Result<CaddyRouter, RouterError> {
        let setup = |message: String| RouterError::Setup {
            router: name.to_string(),
            message,
        };
        let mut url = Url::parse(admin).map_err(|e| setup(format!("admin url: {e}")))?;
        if url.scheme() != "http" {
            return Err(setup(format!(
                "admin url scheme `{}` is not supported (only http)",
                url.scheme()
            )));
        }
        if url.host().is_none() || url.query().is_some() || url.fragment().is_some() {
            return Err(setup(format!(
                "admin url `{}` must be http://host:port with an optional path",
                shown(&url)
            )));
        }
        // The base path ends without a slash; request paths are appended as segments.
        let base = shown(&url);
        url.path_segments_mut()
            .map_err(|()| setup(format!("admin url `{base}` cannot have a path")))?
            .pop_if_empty();
        if backends.is_empty() {
            return Err(setup("no backends".into()));
        }
        let mut by_dial = BTreeMap::new();
        for (backend, dial) in backends {
            if dial.trim().is_empty() {
                return Err(setup(format!("backend `{backend}` has no dial address")));
            }
            if let Some(other) = by_dial.insert(dial.clone(), backend.clone()) {
                return Err(setup(format!(
                    "backends `{other}` and `{backend}` have the same dial address `{dial}`"
                )));
            }
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            // Caddy closes admin connections on every config load; polls are seconds apart.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| setup(format!("http client: {e}")))?;
        Ok(CaddyRouter {
            name: name.to_string(),
            admin: url,
            backends: backends.clone(),
            by_dial,
            client,
        })
    }

    /// The live weights and routes of the handler `@id` = `service`, in Caddy's own scale,
    /// from one `GET {admin}/config/` (see [`CaddyRouter::observe_all`]).
    pub async fn observe(&self, service: &str) -> Result<Observed, RouterError> {
        let (config, _) = self.config().await?;
        self.observe_in(&config, service)
    }

    /// The live weights and routes of the handlers `@id` = each of `services`, from one
    /// `GET {admin}/config/`: the whole config, because an `@id` may stand anywhere in it (a
    /// handler in a `subroute`, in any server), as `GET /id/<@id>` finds it, and because
    /// canaryd's routes stand beside the handler, not in it. A service with no object of that
    /// `@id` is [`RouterError::Unknown`].
    pub async fn observe_all(&self, services: &[String]) -> Result<ObservedAll, RouterError> {
        let (config, _) = self.config().await?;
        let wanted: BTreeSet<&str> = services.iter().map(String::as_str).collect();
        let mut found = BTreeMap::new();
        paths(&config, &wanted, &mut Vec::new(), &mut found);
        Ok(services
            .iter()
            .map(|service| {
                let observed = match found.get(service) {
                    Some(path) => self.observed_at(&config, path, service),
                    None => Err(self.no_such_id(service)),
                };
                (service.clone(), observed)
            })
            .collect())
    }

    /// What `service` carries in `config`, the whole config.
    fn observe_in(&self, config: &Value, service: &str) -> Result<Observed, RouterError> {
        let path = self.path_of(config, service)?;
        self.observed_at(config, &path, service)
    }

    /// What the handler at `path` in `config`, `@id` = `service`, carries: its weights, and
    /// the routes of canaryd's subroute just before it.
    fn observed_at(
        &self,
        config: &Value,
        path: &[Step],
        service: &str,
    ) -> Result<Observed, RouterError> {
        let object = at(config, path).ok_or_else(|| self.no_such_id(service))?;
        let handler = self.handler(service, handler(object))?;
        let weights = self.weighted(service, &handler)?;
        let mut observed = observed(
            &handler.upstreams,
            weights.as_deref().unwrap_or(&[]),
            &self.by_dial,
        );
        if let Some(sub) = Place::of(config, path).and_then(|p| p.subroute(service)) {
            observed.routes = routes::parse(sub, |dial| {
                self.by_dial
                    .get(dial)
                    .cloned()
                    .unwrap_or_else(|| dial.to_string())
            });
        }
        Ok(observed)
    }

    /// The path of the object `@id` = `service` in `config`.
    fn path_of(&self, config: &Value, service: &str) -> Result<Vec<Step>, RouterError> {
        let mut found = BTreeMap::new();
        paths(
            config,
            &BTreeSet::from([service]),
            &mut Vec::new(),
            &mut found,
        );
        found
            .remove(service)
            .ok_or_else(|| self.no_such_id(service))
    }

    /// Sets the traffic of the handler `@id` = `service`: its weights to `traffic`'s
    /// percentages, and canaryd's subroute just before it to `traffic`'s routes (removed when
    /// there are none), with one write of the `handle` list that holds them, guarded by the
    /// `Etag` of the config read. Nothing is written when both are already so.
    pub async fn apply(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        if traffic.sticky.is_some() {
            return Err(RouterError::setup(
                &self.name,
                format!(
                    "sticky users are not supported by router kind `caddy`: its cookie policy \
                     keeps a weight-0 upstream's users and its header hashing ignores weights, \
                     so neither is monotone; routers that can: {}",
                    RouterKind::those_that(RouterKind::can_stick)
                ),
            ));
        }
        for _ in 0..CONFLICT_ATTEMPTS {
            let (config, etag) = self.config().await?;
            let path = self.path_of(&config, service)?;
            let Some(place) = Place::of(&config, &path) else {
                return Err(self.unknown(format!(
                    "reverse_proxy handler with @id `{service}` in a `handle` list"
                )));
            };
            let driven = place.handler();
            let handler = self.handler(service, handler(driven))?;
            self.weighted(service, &handler)?;
            let unknown = |what: String| self.unknown(format!("{what} in service `{service}`"));
            let weights = desired(&handler.upstreams, traffic, &self.backends).map_err(unknown)?;
            let dial_of = |name: &str| {
                let dial = self.backends.get(name).map_or(name, String::as_str);
                if handler.upstreams.iter().any(|u| u == dial) {
                    Ok(dial.to_string())
                } else if self.backends.contains_key(name) {
                    Err(format!("upstream `{dial}` for backend `{name}`"))
                } else {
                    Err(format!("backend `{name}`"))
                }
            };
            for route in &traffic.routes {
                dial_of(&route.backend).map_err(unknown)?;
            }
            let sub = routes::render(
                service,
                &traffic.routes,
                traffic.canary.as_deref(),
                driven,
                dial_of,
            )
            .map_err(|e| RouterError::setup(&self.name, format!("service `{service}`: {e}")))?;
            let id = routes::subroute_id(service);
            let ours = place.subroute(service).is_some();
            if let Some(elsewhere) = self.path_of(&config, &id).ok().filter(|_| !ours) {
                return Err(RouterError::setup(
                    &self.name,
                    format!(
                        "canaryd's subroute `{id}` stands at {}, not just before the handler \
                         `{service}`: remove it and canaryd writes it again in its place",
                        admin_path(&elsewhere)
                    ),
                ));
            }
            let mut list = place.list.to_vec();
            let mut index = place.index;
            if ours {
                list.remove(index - 1);
                index -= 1;
            }
            list[index]["load_balancing"]["selection_policy"]["weights"] = Value::from(weights);
            if let Some(sub) = sub {
                list.insert(index, sub);
            }
            if list == place.list {
                return Ok(());
            }
            let mut segments = vec!["config".to_string()];
            for step in &place.list_path {
                match step {
                    Step::Key(k) if k.contains('/') || k.is_empty() => {
                        return Err(RouterError::setup(
                            &self.name,
                            format!(
                                "the admin API cannot address the key `{k}` on the way to \
                                 service `{service}`"
                            ),
                        ));
                    }
                    Step::Key(k) => segments.push(k.clone()),
                    Step::Index(i) => segments.push(i.to_string()),
                }
            }
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            let body = serde_json::to_vec(&list).map_err(|e| self.rejected(e.to_string()))?;
            let answer = self
                .send(Method::PATCH, &segments, etag.as_deref(), Some(body))
                .await?;
            match answer.status {
                s if s.is_success() => return Ok(()),
                StatusCode::PRECONDITION_FAILED => continue,
                _ if caddy_message(&answer.body).contains("compiling matcher regexp") => {
                    return Err(RouterError::setup(
                        &self.name,
                        format!(
                            "service `{service}`: Caddy (Go's RE2) cannot compile a route's \
                             regex: {}",
                            caddy_message(&answer.body)
                        ),
                    ));
                }
                _ => return Err(self.refused(service, &answer)),
            }
        }
        Err(self.rejected(format!(
            "service `{service}` changed under every one of {CONFLICT_ATTEMPTS} attempts to set its traffic"
        )))
    }

    /// The whole config and its `Etag`.
    async fn config(&self) -> Result<(Value, Option<String>), RouterError> {
        let answer = self.send(Method::GET, &["config", ""], None, None).await?;
        if !answer.status.is_success() {
            return Err(self.rejected(format!(
                "reading the config answered {}: {}",
                answer.status,
                caddy_message(&answer.body)
            )));
        }
        let config: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| self.rejected(format!("the config is not JSON: {e}")))?;
        Ok((config, answer.etag))
    }

    /// Whether the admin API answers.
    pub async fn health(&self) -> Result<(), RouterError> {
        let answer = self
            .send(Method::GET, &["config", "admin"], None, None)
            .await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(self.rejected(format!(
                "health check answered {}: {}",
                answer.status,
                caddy_message(&answer.body)
            )))
        }
    }

    /// A handler read, or why the object `@id` = `service` is none canaryd can drive.
    fn handler(
        &self,
        service: &str,
        read: Result<Handler, String>,
    ) -> Result<Handler, RouterError> {
        read.map_err(|e| RouterError::Unknown {
            router: self.name.clone(),
            what: format!("reverse_proxy handler with @id `{service}` ({e})"),
        })
    }

    /// The live weights array of a `weighted_round_robin` handler (`None` if it has none).
    fn weighted(&self, service: &str, handler: &Handler) -> Result<Option<Vec<u32>>, RouterError> {
        handler.weights.clone().ok_or_else(|| RouterError::Unknown {
            router: self.name.clone(),
            what: format!(
                "weighted_round_robin selection policy in service `{service}` (policy is `{}`)",
                if handler.policy.is_empty() {
                    "random, the default"
                } else {
                    &handler.policy
                }
            ),
        })
    }

    /// One request, tried again after a short pause when the connection failed (not when it
    /// timed out): Caddy replaces its admin server on every config load and closes the
    /// connections it holds, so a request right after a change can meet a closing connection.
    /// Every request canaryd makes is idempotent (a read, or a write of absolute weights
    /// guarded by `If-Match`), so trying again is safe.
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        if_match: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, RouterError> {
        let mut url = self.admin.clone();
        url.path_segments_mut()
            .map_err(|()| self.rejected("admin url cannot have a path".into()))?
            .extend(path);
        let mut attempt = 1;
        loop {
            let mut request = self.client.request(method.clone(), url.clone());
            if let Some(tag) = if_match {
                request = request.header(IF_MATCH, tag);
            }
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            match Self::exchange(request).await {
                Ok(answer) => return Ok(answer),
                Err(e) if !e.is_timeout() && attempt < TRANSPORT_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(self.unreachable(&e)),
            }
        }
    }

    async fn exchange(request: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
        let response = request.send().await?;
        let status = response.status();
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await?;
        Ok(Answer {
            status,
            etag,
            body: body.to_vec(),
        })
    }

    /// A transport error, without the URL (it may carry user info).
    fn unreachable(&self, e: &reqwest::Error) -> RouterError {
        let message = if e.is_timeout() {
            format!(
                "admin api `{}` did not answer within {}s",
                shown(&self.admin),
                REQUEST_TIMEOUT.as_secs()
            )
        } else {
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("admin api `{}`: {cause}", shown(&self.admin))
        };
        RouterError::Unreachable {
            router: self.name.clone(),
            message,
        }
    }

    fn rejected(&self, message: String) -> RouterError {
        RouterError::rejected(&self.name, message)
    }

    fn unknown(&self, what: String) -> RouterError {
        RouterError::unknown(&self.name, what)
    }

    fn no_such_id(&self, service: &str) -> RouterError {
        RouterError::Unknown {
            router: self.name.clone(),
            what: format!("service `{service}` (no config object with that @id)"),
        }
    }

    /// An answer other than success: 404 means no handler with that `@id`.
    fn refused(&self, service: &str, answer: &Answer) -> RouterError {
        if answer.status == StatusCode::NOT_FOUND {
            self.no_such_id(service)
        } else {
            self.rejected(format!(
                "service `{service}`: {}: {}",
                answer.status,
                caddy_message(&answer.body)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn traffic(pairs: &[(&str, i64)]) -> Traffic {
        Traffic::of(pairs).unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const HANDLER: &str = r#"{"@id":"checkout","handler":"reverse_proxy",
        "load_balancing":{"selection_policy":{"policy":"weighted_round_robin","weights":[90,10]}},
        "upstreams":[{"dial":"127.0.0.1:9001"},{"dial":"127.0.0.1:9002"}]}"#;

    #[test]
    fn a_weighted_handler_is_parsed() {
        let h = parse_handler(HANDLER.as_bytes()).unwrap();
        assert_eq!(h.upstreams, strings(&["127.0.0.1:9001", "127.0.0.1:9002"]));
        assert_eq!(h.weights, Some(Some(vec![90, 10])));
    }

    #[test]
    fn other_policies_and_handlers_are_told_apart() {
        let random = r#"{"handler":"reverse_proxy","upstreams":[{"dial":"a:1"}]}"#;
        let h = parse_handler(random.as_bytes()).unwrap();
        assert_eq!((h.weights, h.policy.as_str()), (None, ""));
        let first = r#"{"handler":"reverse_proxy","load_balancing":{"selection_policy":{"policy":"first"}}}"#;
        let h = parse_handler(first.as_bytes()).unwrap();
        assert_eq!((h.weights, h.policy.as_str()), (None, "first"));
        let bare = r#"{"handler":"reverse_proxy","load_balancing":{"selection_policy":{"policy":"weighted_round_robin"}}}"#;
        assert_eq!(parse_handler(bare.as_bytes()).unwrap().weights, Some(None));
        let files = r#"{"handler":"file_server"}"#;
        assert!(
            parse_handler(files.as_bytes())
                .unwrap_err()
                .contains("file_server")
        );
        let negative = HANDLER.replace("[90,10]", "[-1,10]");
        assert!(parse_handler(negative.as_bytes()).is_err());
        assert!(parse_handler(b"null").is_err());
    }

    #[test]
    fn observed_weights_are_named_by_dial_address() {
        let by_dial = map(&[("127.0.0.1:9001", "blue"), ("127.0.0.1:9002", "green")]);
        let check = |upstreams: &[&str], weights: &[u32], expected: &[(&str, u32)]| {
            let got = observed(&strings(upstreams), weights, &by_dial);
            let want: BTreeMap<String, u32> =
                expected.iter().map(|(n, w)| (n.to_string(), *w)).collect();
            assert_eq!(got.backends, want, "{upstreams:?} {weights:?}");
        };
        check(
            &["127.0.0.1:9001", "127.0.0.1:9002"],
            &[90, 10],
            &[("blue", 90), ("green", 10)],
        );
        // Order is Caddy's, not ours.
        check(
            &["127.0.0.1:9002", "127.0.0.1:9001"],
            &[90, 10],
            &[("blue", 10), ("green", 90)],
        );
        // Too few weights: the rest get nothing in Caddy; extra weights mean nothing.
        check(
            &["127.0.0.1:9001", "127.0.0.1:9002"],
            &[50],
            &[("blue", 50), ("green", 0)],
        );
        check(&["127.0.0.1:9001"], &[50, 7], &[("blue", 50)]);
        // An unknown upstream shows under its address; a repeated one is summed.
        check(
            &["127.0.0.1:9001", "10.0.0.9:80", "127.0.0.1:9001"],
            &[1, 2, 3],
            &[("blue", 4), ("10.0.0.9:80", 2)],
        );
    }

    #[test]
    fn desired_weights_follow_upstream_order_and_zero_the_rest() {
        let backends = map(&[("blue", "127.0.0.1:9001"), ("green", "127.0.0.1:9002")]);
        let ups = strings(&["127.0.0.1:9002", "10.0.0.9:80", "127.0.0.1:9001"]);
        let check = |t: Traffic, expected: Result<Vec<u32>, String>| {
            assert_eq!(desired(&ups, &t, &backends), expected, "{t:?}");
        };
        check(traffic(&[("blue", 90), ("green", 10)]), Ok(vec![10, 0, 90]));
        check(traffic(&[("blue", 100)]), Ok(vec![0, 0, 100]));
        // The name `observe` gave an unknown upstream is accepted.
        check(
            traffic(&[("blue", 100), ("10.0.0.9:80", 0)]),
            Ok(vec![0, 0, 100]),
        );
        check(
            traffic(&[("blue", 50), ("red", 50)]),
            Err("backend `red`".into()),
        );
        let only_blue = strings(&["127.0.0.1:9001"]);
        assert_eq!(
            desired(&only_blue, &traffic(&[("green", 100)]), &backends),
            Err("upstream `127.0.0.1:9002` for backend `green`".into())
        );
    }

    #[test]
    fn handlers_are_found_by_id_with_canaryds_subroute_just_before_them() {
        let config = serde_json::json!({"apps": {"http": {"servers": {"srv0": {"routes": [
            {"handle": [
                {"@id": "canaryd-checkout-routes", "handler": "subroute"},
                {"@id": "checkout", "handler": "reverse_proxy"},
            ]},
            {"handle": [{"handler": "subroute", "routes": [{"handle": [
                {"@id": "canaryd-search-routes", "handler": "subroute"},
                {"handler": "headers"},
                {"@id": "search", "handler": "reverse_proxy"},
            ]}]}]},
        ]}}}}});
        let wanted = BTreeSet::from(["checkout", "search", "nope"]);
        let mut found = BTreeMap::new();
        paths(&config, &wanted, &mut Vec::new(), &mut found);
        assert_eq!(found.len(), 2);
        let checkout = &found["checkout"];
        assert_eq!(
            admin_path(checkout),
            "/config/apps/http/servers/srv0/routes/0/handle/1"
        );
        assert_eq!(at(&config, checkout).unwrap()["@id"], "checkout");
        let place = Place::of(&config, checkout).unwrap();
        assert_eq!(
            admin_path(&place.list_path),
            "/config/apps/http/servers/srv0/routes/0/handle"
        );
        assert_eq!(place.index, 1);
        assert!(place.subroute("checkout").is_some());
        assert!(place.subroute("search").is_none());
        // Inside a subroute; canaryd's subroute not just before it is not read as its routes.
        let search = Place::of(&config, &found["search"]).unwrap();
        assert_eq!(
            admin_path(&search.list_path),
            "/config/apps/http/servers/srv0/routes/1/handle/0/routes/0/handle"
        );
        assert!(search.subroute("search").is_none());
        // Not in a list: no place.
        assert!(Place::of(&config, &[Step::Key("apps".into())]).is_none());
    }

    #[test]
    fn caddy_errors_are_quoted_briefly() {
        assert_eq!(
            caddy_message(br#"{"error":"unknown object ID 'x'"}"#),
            "unknown object ID 'x'"
        );
        assert_eq!(caddy_message(b" plain text \n"), "plain text");
        let long = format!(r#"{{"error":"{}"}}"#, "é".repeat(1000));
        assert_eq!(
            caddy_message(long.as_bytes()).chars().count(),
            MAX_QUOTE + 1
        );
    }

    #[test]
    fn configuration_is_checked_and_user_info_hidden() {
        let backends = map(&[("blue", "127.0.0.1:9001"), ("green", "127.0.0.1:9002")]);
        let r = CaddyRouter::new("edge", "http://admin:s3cret@127.0.0.1:2019/", &backends).unwrap();
        let debug = format!("{r:?}");
        assert!(
            !debug.contains("s3cret") && debug.contains("127.0.0.1:2019"),
            "{debug}"
        );
        let setup = |admin: &str, backends: &BTreeMap<String, String>| match CaddyRouter::new(
            "edge", admin, backends,
        ) {
            Err(RouterError::Setup { message, .. }) => message,
            other => panic!("{admin}: {other:?}"),
        };
        assert!(setup("https://127.0.0.1:2019", &backends).contains("https"));
        assert!(setup("localhost:2019", &backends).contains("scheme"));
        assert!(setup("127.0.0.1:2019", &backends).contains("admin url"));
        assert!(setup("not a url", &backends).contains("admin url"));
        assert!(setup("http://127.0.0.1:2019", &BTreeMap::new()).contains("no backends"));
        let twice = map(&[("blue", "127.0.0.1:9001"), ("green", "127.0.0.1:9001")]);
        assert!(setup("http://127.0.0.1:2019", &twice).contains("same dial address"));
        let secret = setup("http://u:s3cret@127.0.0.1:2019?x=1", &backends);
        assert!(!secret.contains("s3cret"), "{secret}");
    }
}
