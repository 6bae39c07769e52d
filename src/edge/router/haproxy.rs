//! The HAProxy driver: reads and sets server weights, routes and sticky users of an HAProxy `backend` through the runtime API (stats socket).
//!
//! A rollout's `service` is an HAProxy `backend`; its stable and canary are `server`s in it.
//! Weights are read with `show servers state <backend>` (the `srv_uweight` column, the weight
//! the runtime API sets) and set with `set weight <backend>/<server> <N>`: a multiple of the
//! percentages on HAProxy's 0..=256 scale (0 drains a server), chosen by `weights_for`.
//! `observe_all` reads every backend with one line, `show servers state;show backend`: the
//! first lists the servers of all backends (grouped here by the `be_name` column), the second
//! names all backends, so that one without servers (which has no line in the first) reads as
//! empty, as `observe` reads it, and not as unknown.
//!
//! Each line goes over its own connection (the socket's non-interactive mode: write one line,
//! read the answer to EOF), bounded by [`REQUEST_TIMEOUT`]. `apply` reads the backend's servers
//! first, so that it refuses unknown servers before changing anything and knows the weights it
//! changes from, then sends all of a change's `set weight` commands on one line, `;`-separated.
//!
//! No runtime API command sets two servers' weights, and a line is not atomic: the management
//! guide says of a line only that it "is processed as a whole" and "It is possible to send
//! multiple commands in this mode, they need to be delimited by a semi-colon (';')"
//! (doc/management.txt, "Unix Socket commands"), while src/cli.c (v2.6.0) runs those commands
//! one at a time and yields to the scheduler in between ("this forces us to yield between
//! pipelined commands"); each `set weight` takes only its own server's lock, and other threads
//! route meanwhile. So the driver picks the weights (`weights_for`): any multiple of the
//! percentages splits the same, and one that changes a single server passes through no state
//! between (10 % → 30 % as 252/28 → 252/108). From or to 0 % it orders two commands so the
//! state between splits as before (`order`). Only a change the 0..=256 scale cannot make in
//! one command (80 % → 71 %) still shows one other split, for one scheduler pass.
//!
//! Routes and sticky users live in two runtime maps of the backend, which its configuration
//! loads and consults through a fixed snippet ([`maps`], [`maps::snippet`]): `apply` replaces
//! each map's entries at once (`prepare map`, `add map @<version>`, `commit map`) and then sets
//! the weights; `observe` and `observe_all` find the maps by file name in `show map` (on the
//! same line as the servers) and read them back into [`Observed`]'s routes and sticky key. A
//! backend without the maps holds no routes; routes or a sticky key for it are refused.
//!
//! Weights set through the runtime API live in the running process only: a reload or restart
//! goes back to the configuration's weights unless a `server-state-file` is loaded. The
//! daemon's read back then sees the difference as drift.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};

use super::{ObservedAll, RouterError};
use crate::core::model::{Observed, Traffic};

pub mod maps;

/// How long one runtime API command may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest answer read to a command about one backend (`show servers state <backend>`, a
/// line of `set weight`); one backend's is far smaller. A longer answer is an error, never
/// read cut short.
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// The longest answer read to [`EVERY_BACKEND`]. A server's line is about 100 bytes (95 with
/// 25-character backend names on HAProxy 2.6), so 10,000 backends of 2 servers answer about
/// 2 MB (read in 30 to 60 ms here); this bound holds over 100,000 servers even at 250 bytes a
/// line, and [`REQUEST_TIMEOUT`] bounds the time it may take.
const MAX_EVERY_ANSWER: usize = 32 * 1024 * 1024;
/// The longest line of map commands canaryd sends (HAProxy reads a line into one buffer,
/// 16 kB by default).
const MAX_LINE: usize = 8 * 1024;
/// What a backend's maps hold: its routes, its sticky key and the sticky map's entries.
type RequestState = (
    Vec<crate::core::model::Route>,
    Option<crate::core::model::Sticky>,
    Vec<maps::Entry>,
);
/// The line `observe_all` sends: every backend's servers, every backend's name, every map
/// (whose canaryd maps it then reads on one more line, if there are any).
const EVERY_BACKEND: &str = "show servers state;show backend;show map";

/// Where HAProxy's runtime API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    /// A `stats socket /path` (written `unix:/path`).
    Unix(PathBuf),
    /// A `stats socket ipv4@host:port`, as `host:port` (resolved when connecting).
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:/path` or `host:port`; the error says why not.
    fn parse(runtime_api: &str) -> Result<Endpoint, String> {
        let s = runtime_api.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!(
                    "runtime api `{runtime_api}` names no socket path (write `unix:/run/haproxy/admin.sock`)"
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "runtime api `{runtime_api}` is neither `unix:/path` nor `host:port`"
            ));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "runtime api `{runtime_api}` is neither `unix:/path` nor `host:port`"
            ));
        }
        Ok(Endpoint::Tcp(s.to_string()))
    }
}

/// HAProxy driven through its runtime API.
#[derive(Clone, Debug)]
pub struct HaproxyRouter {
    name: String,
    endpoint: Endpoint,
}

impl HaproxyRouter {
    /// The router's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks `runtime_api` (`unix:/run/haproxy/admin.sock` or `127.0.0.1:9999`); connects to
    /// nothing yet.
    pub fn new(name: &str, runtime_api: &str) -> Result<HaproxyRouter, RouterError> {
        let endpoint = Endpoint::parse(runtime_api).map_err(|message| RouterError::Setup {
            router: name.to_string(),
            message,
        })?;
        Ok(HaproxyRouter {
            name: name.to_string(),
            endpoint,
        })
    }

    /// The live weights of every server of backend `service`, as HAProxy reports them
    /// (`srv_uweight`, 0..=256).
    pub async fn observe(&self, service: &str) -> Result<Observed, RouterError> {
        self.check_name("backend", service)?;
        let answer = self
            .command(
                &format!("show servers state {service};show map"),
                MAX_ANSWER,
            )
            .await?;
        let answers = split_answers(&answer);
        let state = answers.first().map_or("", String::as_str);
        let backends = parse_servers_state(state).map_err(|message| {
            self.answer_error(&format!("backend `{service}`"), state, message)
        })?;
        // HAProxy knows the backend (else it said so, above); without servers it has no line.
        let mut observed = self.servers_of(service, backends.get(service))?;
        let files = self.map_list(answers.get(1))?;
        let mut states = self.request_states(&files, &[service]).await?;
        if let Some(state) = states.remove(service) {
            held(&mut observed, state?);
        }
        Ok(observed)
    }

    /// The live weights of every backend in `services`, from one line over one connection
    /// (`EVERY_BACKEND`); a backend HAProxy does not have is [`RouterError::Unknown`].
    pub async fn observe_all(&self, services: &[String]) -> Result<ObservedAll, RouterError> {
        let answer = self.command(EVERY_BACKEND, MAX_EVERY_ANSWER).await?;
        let mut all = self.observations(&answer, services)?;
        let files = self.map_list(split_answers(&answer).get(2))?;
        let read: Vec<&str> = all
            .iter()
            .filter(|(_, o)| o.is_ok())
            .map(|(s, _)| s.as_str())
            .collect();
        let states = self.request_states(&files, &read).await?;
        for (service, state) in states {
            if let Some(Ok(observed)) = all.get_mut(&service) {
                match state {
                    Ok(state) => held(observed, state),
                    Err(e) => _ = all.insert(service, Err(e)),
                }
            }
        }
        Ok(all)
    }

    /// File name → path of every map HAProxy holds, from its answer to `show map` (`None`:
    /// the connection ended before it).
    fn map_list(&self, answer: Option<&String>) -> Result<BTreeMap<String, String>, RouterError> {
        let Some(answer) = answer else {
            return Err(self.unreachable(format!(
                "runtime api {} did not answer `show map`",
                self.where_()
            )));
        };
        maps::parse_map_list(answer).map_err(|m| self.rejected(m))
    }

    /// File name → path of every map HAProxy holds (`show map`).
    async fn map_files(&self) -> Result<BTreeMap<String, String>, RouterError> {
        let answer = self.command("show map", MAX_EVERY_ANSWER).await?;
        self.map_list(Some(&answer))
    }

    /// The routes and sticky key that the maps of each of `services` hold (one line for all;
    /// a backend without canaryd's maps holds none and is left out).
    async fn request_states(
        &self,
        files: &BTreeMap<String, String>,
        services: &[&str],
    ) -> Result<BTreeMap<String, Result<RequestState, RouterError>>, RouterError> {
        let mut wanted = Vec::new();
        for service in services {
            for file in [maps::routes_map(service), maps::sticky_map(service)] {
                if let Some(path) = files.get(&file) {
                    wanted.push((service.to_string(), file, path.clone()));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(BTreeMap::new());
        }
        let line: Vec<String> = wanted
            .iter()
            .map(|(_, _, path)| format!("show map {}", maps::cli_arg(path)))
            .collect();
        let answer = self.command(&line.join(";"), MAX_EVERY_ANSWER).await?;
        let answers = split_answers(&answer);
        if answers.len() < wanted.len() {
            return Err(self.unreachable(format!(
                "runtime api {} answered {} of {} `show map` commands",
                self.where_(),
                answers.len(),
                wanted.len()
            )));
        }
        let mut states: BTreeMap<String, Result<RequestState, RouterError>> = BTreeMap::new();
        for ((service, file, _), text) in wanted.into_iter().zip(answers) {
            let state = states
                .entry(service.clone())
                .or_insert_with(|| Ok((Vec::new(), None, Vec::new())));
            let Ok((routes, sticky, split)) = state else {
                continue;
            };
            let read = maps::parse_entries(&text).and_then(|entries| {
                if file == maps::routes_map(&service) {
                    *routes = maps::routes_of(&entries)?;
                } else {
                    *sticky = maps::sticky_of(&entries)?;
                    *split = entries;
                }
                Ok(())
            });
            if let Err(m) = read {
                *state = Err(self.rejected(format!("backend `{service}`, map `{file}`: {m}")));
            }
        }
        Ok(states)
    }

    /// Replaces the entries of map `path` at once: a new version (`prepare map`), its entries
    /// (`add map @<version>`, on lines of at most [`MAX_LINE`] bytes), then `commit map`, which
    /// swaps it in atomically; requests see the old entries or the new, never a mix.
    async fn replace_map(&self, path: &str, entries: &[maps::Entry]) -> Result<(), RouterError> {
        let map = maps::cli_arg(path);
        let answer = self
            .command(&format!("prepare map {map}"), MAX_ANSWER)
            .await?;
        let version = answer
            .trim()
            .strip_prefix("New version created:")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                self.rejected(format!("`prepare map {path}` answered `{}`", answer.trim()))
            })?;
        let mut commands: Vec<String> = entries
            .iter()
            .map(|(k, v)| {
                format!(
                    "add map @{version} {map} {} {}",
                    maps::cli_arg(k),
                    maps::cli_arg(v)
                )
            })
            .collect();
        commands.push(format!("commit map @{version} {map}"));
        let mut line: Vec<String> = Vec::new();
        let mut length = 0;
        for (i, command) in commands.iter().enumerate() {
            line.push(command.clone());
            length += command.len() + 1;
            let last = i + 1 == commands.len();
            // The commit goes alone, once every entry was accepted.
            if last || length + commands[i + 1].len() > MAX_LINE || i + 2 == commands.len() {
                let answer = self.command(&line.join(";"), MAX_ANSWER).await?;
                let answers = split_answers(&answer);
                if answers.len() < line.len() {
                    return Err(self.unreachable(format!(
                        "runtime api {} answered {} of {} map commands",
                        self.where_(),
                        answers.len(),
                        line.len()
                    )));
                }
                if let Some((command, text)) = line
                    .iter()
                    .zip(&answers)
                    .find(|(_, a)| !a.trim().is_empty())
                {
                    return Err(self.rejected(format!("`{command}`: {}", text.trim())));
                }
                line.clear();
                length = 0;
            }
        }
        Ok(())
    }

    /// What the answer to [`EVERY_BACKEND`] says of each of `services`.
    fn observations(&self, answer: &str, services: &[String]) -> Result<ObservedAll, RouterError> {
        let answers = split_answers(answer);
        let ([state, names] | [state, names, _]) = answers.as_slice() else {
            let message = format!(
                "runtime api {} gave {} answers to the commands of `{EVERY_BACKEND}`",
                self.where_(),
                answers.len()
            );
            // Fewer: the connection ended early.
            return Err(if answers.len() < 2 {
                self.unreachable(message)
            } else {
                self.rejected(message)
            });
        };
        let backends = parse_servers_state(state).map_err(|m| self.rejected(m))?;
        let known = parse_backends(names).map_err(|m| self.rejected(m))?;
        let observe = |service: &str| {
            self.check_name("backend", service)?;
            if !known.contains(service) {
                return Err(self.unknown(format!("backend `{service}`")));
            }
            self.servers_of(service, backends.get(service))
        };
        Ok(services
            .iter()
            .map(|service| (service.clone(), observe(service)))
            .collect())
    }

    /// The weights of backend `service` from its servers' lines in a parsed answer (`None`:
    /// it has none, so no server).
    fn servers_of(
        &self,
        service: &str,
        servers: Option<&Result<Servers, String>>,
    ) -> Result<Observed, RouterError> {
        match servers {
            None => Ok(Observed::default()),
            Some(Ok(servers)) => Ok(Observed::weights(servers.clone())),
            Some(Err(message)) => Err(self.rejected(format!("backend `{service}`: {message}"))),
        }
    }

    /// Sets the weights of backend `service`'s servers to `traffic`'s percentages; servers it
    /// does not name get 0. Refuses (changing nothing) when a named server does not exist. When
    /// HAProxy refuses a command, it has still run the others on the line; the error names the
    /// refused one, and the read back shows where the backend stands.
    pub async fn apply(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        let live = self.observe(service).await?;
        let named = traffic
            .backends
            .keys()
            .chain(traffic.routes.iter().map(|r| &r.backend))
            .chain(&traffic.canary);
        for server in named {
            self.check_name("server", server)?;
            if !live.backends.contains_key(server) {
                return Err(self.unknown(format!("server `{server}` in backend `{service}`")));
            }
        }
        self.apply_maps(service, traffic).await?;
        for line in plan_lines(&live.backends, traffic) {
            if line.is_empty() {
                continue;
            }
            let commands: Vec<String> = line
                .iter()
                .map(|(server, weight)| format!("set weight {service}/{server} {weight}"))
                .collect();
            let answer = self.command(&commands.join(";"), MAX_ANSWER).await?;
            let answers = split_answers(&answer);
            for (i, (server, weight)) in line.iter().enumerate() {
                let Some(text) = answers.get(i) else {
                    return Err(self.unreachable(format!(
                        "runtime api {} answered {} of {} `set weight` commands",
                        self.where_(),
                        answers.len(),
                        line.len()
                    )));
                };
                if !text.is_empty() {
                    return Err(self.answer_error(
                        &format!("server `{server}` in backend `{service}`"),
                        text,
                        format!("setting weight {weight} of `{service}/{server}`: {text}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sets the routes and sticky maps of `service` to `traffic`'s (see [`maps`]); refuses
    /// ([`RouterError::Setup`], changing nothing) what the maps cannot hold, and routes or a
    /// sticky key on a backend whose configuration lacks the map ([`maps::snippet`]). A
    /// backend without the maps and nothing to put in them is left alone.
    async fn apply_maps(&self, service: &str, traffic: &Traffic) -> Result<(), RouterError> {
        let setup = |m: String| RouterError::setup(&self.name, format!("backend `{service}`: {m}"));
        let routes = maps::route_entries(&traffic.routes).map_err(setup)?;
        let sticky = maps::sticky_entries(traffic).map_err(setup)?;
        let files = self.map_files().await?;
        let mut changes = Vec::new();
        for (file, entries, what) in [
            (maps::routes_map(service), routes, "routes"),
            (maps::sticky_map(service), sticky, "sticky users"),
        ] {
            match files.get(&file) {
                Some(path) => changes.push((path.clone(), entries)),
                None if entries.is_empty() => {}
                None => {
                    return Err(setup(format!(
                        "its configuration loads no map `{file}`, so haproxy cannot carry {what}; \
                         add canaryd's snippet to the backend (see the README)"
                    )));
                }
            }
        }
        for (path, entries) in changes {
            self.replace_map(&path, &entries).await?;
        }
        Ok(())
    }

    /// Whether the runtime API answers (`show version`).
    pub async fn health(&self) -> Result<(), RouterError> {
        let answer = self.command("show version", MAX_ANSWER).await?;
        if answer.trim().is_empty() {
            return Err(RouterError::Rejected {
                router: self.name.clone(),
                message: "runtime api gave an empty answer to `show version`".to_string(),
            });
        }
        Ok(())
    }

    /// Sends one line (one command, or several `;`-separated) over a fresh connection and reads
    /// the answer to EOF, within [`REQUEST_TIMEOUT`]; an answer longer than `limit` bytes is
    /// an error ([`RouterError::Setup`]: asking again gets as long an answer).
    async fn command(&self, command: &str, limit: usize) -> Result<String, RouterError> {
        let exchange = async {
            match &self.endpoint {
                Endpoint::Unix(path) => {
                    exchange(UnixStream::connect(path).await?, command, limit).await
                }
                Endpoint::Tcp(addr) => {
                    exchange(TcpStream::connect(addr).await?, command, limit).await
                }
            }
        };
        let verb = command.split(' ').take(2).collect::<Vec<_>>().join(" ");
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(answer)) if answer.len() > limit => Err(RouterError::setup(
                &self.name,
                format!(
                    "runtime api {} answered `{verb}` with over {} MiB, more than canaryd reads",
                    self.where_(),
                    limit / (1024 * 1024)
                ),
            )),
            Ok(Ok(answer)) => Ok(match String::from_utf8(answer) {
                Ok(text) => text,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
            Ok(Err(e)) => Err(self.unreachable(format!("runtime api {}: {e}", self.where_()))),
            Err(_) => Err(self.unreachable(format!(
                "runtime api {} did not answer `{verb}` within {:?}",
                self.where_(),
                REQUEST_TIMEOUT
            ))),
        }
    }

    fn where_(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(path) => format!("unix:{}", path.display()),
            Endpoint::Tcp(addr) => addr.clone(),
        }
    }

    /// Names HAProxy accepts ([A-Za-z0-9_.:-]); anything else cannot exist there and must not
    /// reach the command line (a `;` or newline would start another command).
    fn check_name(&self, what: &str, name: &str) -> Result<(), RouterError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if valid {
            Ok(())
        } else {
            Err(self.unknown(format!("{what} `{}`", name.escape_debug())))
        }
    }

    /// Turns an answer that is not what was asked for into `Unknown` when HAProxy says the
    /// backend or server does not exist, else into `Rejected`.
    fn answer_error(&self, subject: &str, answer: &str, message: String) -> RouterError {
        if says_unknown(answer) {
            self.unknown(subject.to_string())
        } else {
            RouterError::Rejected {
                router: self.name.clone(),
                message,
            }
        }
    }

    fn unknown(&self, what: String) -> RouterError {
        RouterError::unknown(&self.name, what)
    }

    fn rejected(&self, message: String) -> RouterError {
        RouterError::rejected(&self.name, message)
    }

    fn unreachable(&self, message: String) -> RouterError {
        RouterError::unreachable(&self.name, message)
    }
}

/// Writes `command` and reads the answer to EOF, or to one byte past `limit` (so that the
/// caller can tell an answer that long from one cut there).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(limit as u64 + 1)
        .read_to_end(&mut answer)
        .await?;
    Ok(answer)
}

/// Whether an answer is HAProxy saying the backend or server does not exist
/// ("Can't find backend.", "No such backend.", "No such server.").
fn says_unknown(answer: &str) -> bool {
    let a = answer.trim_start();
    a.starts_with("Can't find backend") || a.starts_with("No such ")
}

/// A backend's servers: name → `srv_uweight`.
type Servers = BTreeMap<String, u32>;

/// Backend name (`be_name`) → its servers, from the answer to `show servers state` of one
/// backend or of all: a version line (`1`), a `# `-prefixed header naming the columns, one line
/// per server (a backend without servers has none). A line that names its backend but whose
/// server cannot be read makes that backend an error and leaves the others readable.
fn parse_servers_state(answer: &str) -> Result<BTreeMap<String, Result<Servers, String>>, String> {
    let mut lines = answer.lines().map(str::trim).filter(|l| !l.is_empty());
    let version = lines.next().unwrap_or_default();
    if version != "1" {
        let first = answer.trim().lines().next().unwrap_or_default();
        return Err(format!(
            "unexpected answer to `show servers state`: `{first}`"
        ));
    }
    let header: Vec<&str> = match lines.next().and_then(|l| l.strip_prefix('#')) {
        Some(h) => h.split_whitespace().collect(),
        None => return Err("`show servers state` answered without a header".to_string()),
    };
    let column = |field: &str| {
        header
            .iter()
            .position(|h| *h == field)
            .ok_or_else(|| format!("`show servers state` has no `{field}` column"))
    };
    let (backend_at, name_at, weight_at) = (
        column("be_name")?,
        column("srv_name")?,
        column("srv_uweight")?,
    );
    let too_short = |line: &str| format!("`show servers state` line too short: `{line}`");
    let mut backends = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let backend = fields.get(backend_at).ok_or_else(|| too_short(line))?;
        let server = match (fields.get(name_at), fields.get(weight_at)) {
            (Some(name), Some(weight)) => weight
                .parse::<u32>()
                .map(|weight| ((*name).to_string(), weight))
                .map_err(|_| format!("server `{name}` has weight `{weight}`, not a number")),
            _ => Err(too_short(line)),
        };
        let entry = backends
            .entry((*backend).to_string())
            .or_insert_with(|| Ok(Servers::new()));
        if let Ok(servers) = entry {
            match server {
                Ok((name, weight)) => _ = servers.insert(name, weight),
                Err(message) => *entry = Err(message),
            }
        }
    }
    Ok(backends)
}

/// The backend names in the answer to `show backend`: a `# name` header, one name a line.
fn parse_backends(answer: &str) -> Result<BTreeSet<&str>, String> {
    let mut lines = answer.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some(header) if header.starts_with('#') => {
            Ok(lines.filter_map(|l| l.split_whitespace().next()).collect())
        }
        first => Err(format!(
            "unexpected answer to `show backend`: `{}`",
            first.unwrap_or_default()
        )),
    }
}

/// The answers to a line of commands, one per command: HAProxy ends each command's output with
/// an empty line and no command prints one. A successful `set weight` prints nothing.
/// `observed` with what its backend's maps hold; a sticky split that disagrees with the weights
/// (a hand edit of the map) is reported as no sticky key, so the planner sees drift and sets it
/// again ([`maps::split_agrees`]).
fn held(observed: &mut Observed, (routes, sticky, split): RequestState) {
    observed.routes = routes;
    observed.sticky = sticky;
    if !maps::split_agrees(observed, &split) {
        observed.sticky = None;
    }
}

fn split_answers(output: &str) -> Vec<String> {
    let mut answers = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in output.lines() {
        if line.is_empty() {
            answers.push(current.join("\n"));
            current.clear();
        } else {
            current.push(line);
        }
    }
    answers
}

/// A server's weight to set.
type Change = (String, u32);

/// The highest weight `set weight` takes.
const MAX_WEIGHT: u32 = 256;

/// The `set weight` commands that turn `live` into `traffic`, grouped in the lines to send them
/// on: the weights of [`weights_for`] (every live server; 0 for one `traffic` does not name),
/// in the order of [`order`]. Servers that keep their weight come last.
fn plan_lines(live: &BTreeMap<String, u32>, traffic: &Traffic) -> Vec<Vec<Change>> {
    order(live, &weights_for(live, traffic))
}

/// The weights (0..=[`MAX_WEIGHT`]) that split requests exactly as `traffic` says, chosen so
/// that HAProxy shows no split on the way that neither `live` nor the end is.
///
/// HAProxy's weights are relative: any multiple of the percentages (divided by their greatest
/// common divisor) splits the same. A change of one server's weight passes through no state
/// between, so a multiple that keeps every server but one at its live weight is taken first
/// (80/20 → 70/30 as 56/24 ... or, from 252/28 for 10 %, 252/108 for 30 %: one command).
/// Next come the multiples whose commands can be ordered so that every state on the way splits
/// as before or as after (a step from or to 0 %: the server that keeps no weight moves first),
/// then the fewest commands. Among equals, the weights from which most other splits are one
/// command away ([`reach`]), so that the next step is likely one command too.
fn weights_for(live: &BTreeMap<String, u32>, traffic: &Traffic) -> BTreeMap<String, u32> {
    let percent: BTreeMap<&String, u32> = live
        .keys()
        .map(|server| {
            let w = traffic.backends.get(server).map_or(0, |w| w.get());
            (server, u32::from(w))
        })
        .collect();
    let divisor = percent.values().fold(0, |g, &p| gcd(g, p));
    let Some(largest) = percent.values().map(|&p| p / divisor.max(1)).max() else {
        return BTreeMap::new();
    };
    if largest == 0 {
        return percent.into_keys().map(|s| (s.clone(), 0)).collect();
    }
    let candidate = |k: u32| -> BTreeMap<String, u32> {
        percent
            .iter()
            .map(|(&s, &p)| (s.clone(), p / divisor * k))
            .collect()
    };
    (1..=MAX_WEIGHT / largest)
        .map(candidate)
        .max_by_key(|w| {
            let changes = w.iter().filter(|&(s, v)| live.get(s) != Some(v)).count();
            let clean = changes <= 1 || clean_order(live, w).is_some();
            // Ties keep the first (smallest) multiple.
            (clean, std::cmp::Reverse(changes), reach(w))
        })
        .unwrap_or_else(|| candidate(1))
}

/// How many whole-percent splits of a two-server backend are one `set weight` away from
/// `weights` (0 for any other backend).
fn reach(weights: &BTreeMap<String, u32>) -> usize {
    let [a, b] = weights.values().copied().collect::<Vec<_>>()[..] else {
        return 0;
    };
    // To a share p (percent) of the first server: keep the first, set the second to
    // a·(100-p)/p, or keep the second and set the first to b·p/(100-p).
    let fits = |keep: u32, num: u32, den: u32| {
        keep > 0
            && (keep * num).is_multiple_of(den)
            && (1..=MAX_WEIGHT).contains(&(keep * num / den))
    };
    (1..100)
        .filter(|&p| fits(a, 100 - p, p) || fits(b, p, 100 - p))
        .count()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The lines that set `target` from `live`: one line in an order whose every state on the way
/// splits requests as `live` or as `target` does ([`clean_order`]) when there is one; else,
/// raises first, which keeps some weight throughout (HAProxy answers 503 when no server has
/// any) and passes through one other split for one scheduler pass.
///
/// A full switch (no server carries traffic both before and after) has no clean order and
/// sends its lowers on a second line, once its raises were accepted: HAProxy runs the rest of a
/// line after refusing a command (a static algorithm refuses any weight but 0 and the
/// configured one), and a refused raise followed by the lowers would leave no weight at all.
fn order(live: &BTreeMap<String, u32>, target: &BTreeMap<String, u32>) -> Vec<Vec<Change>> {
    let (mut changed, mut same) = (Vec::new(), Vec::new());
    for (server, &w) in target {
        let now = live.get(server).copied().unwrap_or(0);
        if w == now {
            same.push((server.clone(), w));
        } else {
            changed.push((server.clone(), w, now));
        }
    }
    let raises: Vec<Change> = changed
        .iter()
        .filter(|(_, w, now)| w > now)
        .map(|(s, w, _)| (s.clone(), *w))
        .collect();
    let lowers: Vec<Change> = changed
        .iter()
        .filter(|(_, w, now)| w < now)
        .map(|(s, w, _)| (s.clone(), *w))
        .collect();
    if let Some(line) = clean_order(live, target) {
        return vec![[line, same].concat()];
    }
    let kept = target
        .iter()
        .any(|(s, &w)| w > 0 && live.get(s).is_some_and(|&now| now > 0));
    if !kept && !raises.is_empty() && !lowers.is_empty() {
        return vec![raises, [lowers, same].concat()];
    }
    vec![[raises, lowers, same].concat()]
}

/// An order of the changes from `live` to `target` in which every state on the way splits
/// requests exactly as `live` or as `target` does (never with no weight at all); `None` when
/// no order does. Tries every order of up to 5 changes (a rollout changes 2, a replaced canary
/// 3).
fn clean_order(
    live: &BTreeMap<String, u32>,
    target: &BTreeMap<String, u32>,
) -> Option<Vec<Change>> {
    let changes: Vec<Change> = target
        .iter()
        .filter(|&(s, w)| live.get(s).copied().unwrap_or(0) != *w)
        .map(|(s, &w)| (s.clone(), w))
        .collect();
    if changes.len() <= 1 {
        return Some(changes);
    }
    if changes.len() > 5 {
        return None;
    }
    let mut indices: Vec<usize> = (0..changes.len()).collect();
    loop {
        let mut state = live.clone();
        let clean = indices[..indices.len() - 1].iter().all(|&i| {
            let (server, w) = &changes[i];
            state.insert(server.clone(), *w);
            same_split(&state, live) || same_split(&state, target)
        });
        if clean {
            return Some(indices.iter().map(|&i| changes[i].clone()).collect());
        }
        if !next_permutation(&mut indices) {
            return None;
        }
    }
}

/// Whether `a` and `b` split requests exactly alike: both carry weight, and each server's
/// share of `a`'s total is its share of `b`'s (a server missing from one has weight 0 there).
fn same_split(a: &BTreeMap<String, u32>, b: &BTreeMap<String, u32>) -> bool {
    let total = |m: &BTreeMap<String, u32>| m.values().map(|&w| u64::from(w)).sum::<u64>();
    let (ta, tb) = (total(a), total(b));
    let weight = |m: &BTreeMap<String, u32>, s: &String| u64::from(m.get(s).copied().unwrap_or(0));
    ta > 0
        && tb > 0
        && a.keys()
            .chain(b.keys())
            .all(|s| weight(a, s) * tb == weight(b, s) * ta)
}

/// The next permutation in lexicographic order; false after the last.
fn next_permutation(v: &mut [usize]) -> bool {
    let Some(i) = (1..v.len()).rev().find(|&i| v[i - 1] < v[i]) else {
        return false;
    };
    let j = (i..v.len()).rev().find(|&j| v[j] > v[i - 1]).unwrap_or(i);
    v.swap(i - 1, j);
    v[i..].reverse();
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 checkout 1 blue 127.0.0.1 2 0 100 100 2 1 0 2 0 0 0 0 - 18556 - 0 0 - - 0\n3 checkout 2 green 127.0.0.1 2 0 37 0 2 1 0 2 0 0 0 0 - 18557 - 0 0 - - 0\n\n";

    fn traffic(pairs: &[(&str, i64)]) -> Traffic {
        Traffic::of(pairs).unwrap()
    }

    fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    /// A backend and its servers' weights, or why they cannot be read.
    type Backend<'a> = (&'a str, Result<&'a [(&'a str, u32)], &'a str>);

    /// Each backend's servers, or its error, as `parse_servers_state` gives them.
    fn by_backend(pairs: &[Backend]) -> BTreeMap<String, Result<Servers, String>> {
        pairs
            .iter()
            .map(|(b, s)| {
                let servers = s.map(weights).map_err(str::to_string);
                (b.to_string(), servers)
            })
            .collect()
    }

    #[test]
    fn servers_state_is_read_by_its_header() {
        assert_eq!(
            parse_servers_state(STATE).unwrap(),
            by_backend(&[("checkout", Ok(&[("blue", 100), ("green", 37)]))])
        );
        // Columns are found by name, not position.
        let moved = "1\n# srv_uweight x srv_name be_name\n7 - a b\n0 - c b\n";
        assert_eq!(
            parse_servers_state(moved).unwrap(),
            by_backend(&[("b", Ok(&[("a", 7), ("c", 0)]))])
        );
        // A backend without servers has no line.
        assert_eq!(
            parse_servers_state("1\n# be_name srv_name srv_uweight\n\n").unwrap(),
            BTreeMap::new()
        );
    }

    #[test]
    fn odd_servers_state_answers_are_errors() {
        for answer in [
            "Can't find backend.\n\n",
            "",
            "1\n",
            "1\nno header\n",
            "1\n# be_name srv_name\nb a\n",
            "1\n# srv_name srv_uweight\na 1\n",
            "1\n# srv_name srv_uweight be_name\na 1\n",
        ] {
            assert!(parse_servers_state(answer).is_err(), "{answer:?}");
        }
        // A line that names its backend spoils that backend only.
        let answer = "1\n# be_name srv_name srv_uweight\nb a 1\nb c heavy\nb d 2\nok a 3\nshort\n";
        assert_eq!(
            parse_servers_state(answer).unwrap(),
            by_backend(&[
                ("b", Err("server `c` has weight `heavy`, not a number")),
                ("ok", Ok(&[("a", 3)])),
                ("short", Err("`show servers state` line too short: `short`")),
            ])
        );
    }

    /// HAProxy 2.6.12's answer to `show servers state;show backend` (captured from a real
    /// process): `checkout` and `cart` with two servers, `empty` with none, `both` a `listen`
    /// section, `off` a disabled backend.
    const EVERY: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 checkout 1 blue 127.0.0.1 2 0 100 100 1 1 0 2 0 0 0 0 - 19001 - 0 0 - - 0\n3 checkout 2 green 127.0.0.1 2 0 0 0 1 1 0 2 0 0 0 0 - 19002 - 0 0 - - 0\n5 cart 1 blue 127.0.0.1 2 0 30 30 1 1 0 2 0 0 0 0 - 19001 - 0 0 - - 0\n5 cart 2 green 127.0.0.1 2 0 70 70 1 1 0 2 0 0 0 0 - 19002 - 0 0 - - 0\n6 both 1 a 127.0.0.1 2 0 1 1 1 1 0 2 0 0 0 0 - 19001 - 0 0 - - 0\n7 off 0 x 127.0.0.1 2 0 5 5 1 1 0 2 0 0 0 0 - 19001 - 0 0 - - 0\n\n# name\ncheckout\nempty\ncart\nboth\noff\n\n";

    #[test]
    fn one_answer_gives_every_backend_and_names_the_unknown() {
        let r = HaproxyRouter::new("edge", "unix:/nonexistent").unwrap();
        let services: Vec<String> = ["checkout", "cart", "empty", "both", "off", "nope", "a;b"]
            .map(str::to_string)
            .to_vec();
        let all = r.observations(EVERY, &services).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), {
            let mut sorted: Vec<&String> = services.iter().collect();
            sorted.sort();
            sorted
        });
        let observed = |service: &str| match &all[service] {
            Ok(o) => o.backends.clone(),
            Err(e) => panic!("{service}: {e}"),
        };
        assert_eq!(
            observed("checkout"),
            weights(&[("blue", 100), ("green", 0)])
        );
        assert_eq!(observed("cart"), weights(&[("blue", 30), ("green", 70)]));
        assert_eq!(observed("empty"), BTreeMap::new());
        assert_eq!(observed("both"), weights(&[("a", 1)]));
        assert_eq!(observed("off"), weights(&[("x", 5)]));
        for unknown in ["nope", "a;b"] {
            assert!(
                matches!(&all[unknown], Err(RouterError::Unknown { what, .. }) if what.starts_with("backend `")),
                "{unknown}: {:?}",
                all[unknown]
            );
        }
        // Cut short, the line is unreadable as a whole and transient; refused, not transient.
        let cut = &EVERY[..EVERY.find("\n\n").unwrap() + 2];
        let e = r.observations(cut, &services).unwrap_err();
        assert!(e.is_transient(), "{e}");
        let e = r
            .observations("Permission denied\n\nPermission denied\n\n", &services)
            .unwrap_err();
        assert!(matches!(e, RouterError::Rejected { .. }), "{e:?}");
    }

    #[test]
    fn unknown_answers_are_recognised() {
        assert!(says_unknown("Can't find backend.\n\n"));
        assert!(says_unknown("No such backend.\n"));
        assert!(says_unknown("No such server.\n"));
        assert!(!says_unknown(
            "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.\n"
        ));
        assert!(!says_unknown("Permission denied\n"));
    }

    /// Sends `lines` to a backend at `live`, one command at a time: where it ends, and the
    /// states on the way (after each command but the last).
    fn walk(
        live: &BTreeMap<String, u32>,
        lines: &[Vec<Change>],
    ) -> (BTreeMap<String, u32>, Vec<BTreeMap<String, u32>>) {
        let mut state = live.clone();
        let mut on_the_way = Vec::new();
        for (server, w) in lines.iter().flatten() {
            on_the_way.push(state.clone());
            state.insert(server.clone(), *w);
        }
        on_the_way.remove(0);
        (state, on_the_way)
    }

    /// Walks `blue`/`green` from the configuration's 100/0 through `steps` (green's
    /// percentages): every change ends exactly at its split; returns the changes that passed
    /// through a third split, as (from, to).
    fn third_splits(steps: &[u32]) -> Vec<(u32, u32)> {
        let mut live = weights(&[("blue", 100), ("green", 0)]);
        let mut from = 0;
        let mut unclean = Vec::new();
        for &g in steps {
            let t = traffic(&[("blue", 100 - i64::from(g)), ("green", i64::from(g))]);
            let lines = plan_lines(&live, &t);
            let (end, on_the_way) = walk(&live, &lines);
            let exact: BTreeMap<String, u32> = t
                .backends
                .iter()
                .map(|(s, w)| (s.clone(), u32::from(w.get())))
                .collect();
            assert!(same_split(&end, &exact), "{from} -> {g}: {end:?}");
            assert!(end.values().all(|&w| w <= MAX_WEIGHT));
            if !on_the_way
                .iter()
                .all(|s| same_split(s, &live) || same_split(s, &end))
            {
                unclean.push((from, g));
            }
            live = end;
            from = g;
        }
        unclean
    }

    #[test]
    fn steps_of_ten_and_quarters_change_with_no_third_split() {
        let up: Vec<u32> = (1..=10).map(|i| i * 10).collect();
        let tens: Vec<u32> = [0]
            .into_iter()
            .chain(up.iter().copied())
            .chain(up.iter().rev().skip(1).copied())
            .chain([0])
            .chain(up.iter().copied())
            .collect();
        assert_eq!(third_splits(&tens), []);
        assert_eq!(third_splits(&[10, 20, 30, 50, 100]), []);
        assert_eq!(third_splits(&[5, 10, 25, 50, 75, 100]), []);
        assert_eq!(third_splits(&[10, 25, 50, 75, 50, 25, 10, 0]), []);
        assert_eq!(third_splits(&[1, 10, 100]), []);
        // An abort from anywhere is one command.
        for g in [1, 13, 37, 50, 99] {
            assert_eq!(third_splits(&[g, 0]).len(), third_splits(&[g]).len());
        }
    }

    #[test]
    fn a_one_command_change_keeps_the_other_weight() {
        let lines = plan_lines(
            &weights(&[("blue", 252), ("green", 28)]),
            &traffic(&[("blue", 70), ("green", 30)]),
        );
        assert_eq!(
            lines,
            [vec![("green".to_string(), 108), ("blue".to_string(), 252)]]
        );
    }

    #[test]
    fn lines_keep_weight_on_the_way_and_zero_the_unnamed() {
        let check = |live: &[(&str, u32)], t: &[(&str, i64)]| {
            let live = weights(live);
            let lines = plan_lines(&live, &traffic(t));
            let (end, on_the_way) = walk(&live, &lines);
            assert!(
                on_the_way.iter().all(|s| s.values().any(|&w| w > 0)),
                "{live:?} -> {t:?}: {lines:?}"
            );
            let exact: BTreeMap<String, u32> =
                t.iter().map(|(s, w)| (s.to_string(), *w as u32)).collect();
            assert!(same_split(&end, &exact), "{live:?} -> {t:?}: {end:?}");
            assert_eq!(end.len(), live.len());
            lines
        };
        // Between two splits that no one-server change joins, raises go first.
        let lines = check(
            &[("blue", 80), ("green", 20)],
            &[("blue", 71), ("green", 29)],
        );
        assert_eq!(lines.len(), 1);
        assert!(lines[0][0].1 > 20, "{lines:?}");
        // A full switch: the lowers only once the raise was accepted.
        let lines = check(
            &[("blue", 100), ("green", 0)],
            &[("blue", 0), ("green", 100)],
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0][0].0, "green");
        assert_eq!(lines[1], [("blue".to_string(), 0)]);
        let lines = check(
            &[("blue", 0), ("green", 100), ("old", 0)],
            &[("blue", 100), ("green", 0)],
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        // Nothing to change: the same weights, once more.
        let lines = check(
            &[("blue", 90), ("green", 10)],
            &[("blue", 90), ("green", 10)],
        );
        assert_eq!(
            lines,
            [vec![("blue".to_string(), 90), ("green".to_string(), 10)]]
        );
        // A server not named goes to 0.
        let lines = check(
            &[("blue", 50), ("green", 50), ("old", 20)],
            &[("blue", 100)],
        );
        assert!(
            lines.concat().contains(&("old".to_string(), 0)),
            "{lines:?}"
        );
        check(
            &[("a", 0), ("blue", 80), ("green", 20)],
            &[("blue", 70), ("green", 30)],
        );
        // Nothing had weight.
        check(&[("blue", 0), ("green", 0)], &[("blue", 90), ("green", 10)]);
    }

    #[test]
    fn a_lines_answers_are_split_per_command() {
        assert_eq!(split_answers("\n\n"), ["", ""]);
        assert_eq!(
            split_answers("\nNo such server.\n\nPermission denied\n\n\n"),
            ["", "No such server.", "Permission denied", ""]
        );
        // Cut short: only the answers that ended.
        assert_eq!(split_answers("\nNo such"), [""]);
        assert!(split_answers("").is_empty());
    }

    #[test]
    fn runtime_api_addresses() {
        let ok = |s: &str| HaproxyRouter::new("edge", s).unwrap().endpoint;
        assert_eq!(
            ok("unix:/run/haproxy/admin.sock"),
            Endpoint::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(ok("127.0.0.1:9999"), Endpoint::Tcp("127.0.0.1:9999".into()));
        assert_eq!(ok("haproxy:9999"), Endpoint::Tcp("haproxy:9999".into()));
        assert_eq!(ok("[::1]:9999"), Endpoint::Tcp("[::1]:9999".into()));
        for bad in [
            "",
            "unix:",
            "127.0.0.1",
            ":9999",
            "host:0",
            "host:http",
            "host:70000",
        ] {
            let err = HaproxyRouter::new("edge", bad).unwrap_err();
            assert!(matches!(err, RouterError::Setup { .. }), "{bad:?}: {err:?}");
            assert!(err.to_string().contains("router `edge`"), "{err}");
        }
    }

    #[test]
    fn names_that_could_smuggle_commands_are_unknown() {
        let r = HaproxyRouter::new("edge", "unix:/nonexistent").unwrap();
        assert!(r.check_name("backend", "checkout-v2.eu:1_a").is_ok());
        for bad in ["", "a b", "a;shutdown sessions", "a\nb", "a/b"] {
            assert!(
                matches!(
                    r.check_name("backend", bad),
                    Err(RouterError::Unknown { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
