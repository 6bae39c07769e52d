//! canaryd's routes as a Caddy `subroute` handler, and back: each route a Caddy route whose matcher sets are the route's matches and whose handler proxies to the route's backend.
//!
//! A [`Match`] becomes one matcher set (Caddy ORs the sets of a route and ANDs the matchers of
//! a set). Each criterion takes the first free *slot* among those that can express it:
//!
//! | criterion              | slots, in order of preference                                               |
//! |------------------------|-----------------------------------------------------------------------------|
//! | header exact `v`       | `header {name: [v]}`; `header_regexp {name: ^v$}`                           |
//! | header prefix `p`      | `header {name: [p*]}`; `header_regexp {name: ^p}`                           |
//! | header regex `r`       | `header_regexp {name: ^(?:r)$}`                                             |
//! | cookie exact / prefix  | `header_regexp {Cookie: (?:^\|;\s*)name=v(?:;\|$)}` (`[^;]*` after a prefix); `vars` / `vars_regexp` on `{http.request.cookie.name}` |
//! | cookie regex `r`       | `vars_regexp {"{http.request.cookie.name}": ^(?:r)$}`                       |
//! | query exact `v`        | `query {name: [v]}`; `vars` / `vars_regexp` on `{http.request.uri.query.name}` |
//! | query prefix / regex   | `vars_regexp {"{http.request.uri.query.name}": ^p / ^(?:r)$}`                |
//!
//! (`v` and `p` escaped as regex literals where a regex holds them.) A slot is one key of one
//! matcher: `header`, `header_regexp` and `query` AND their keys, so each key is a slot; `vars`
//! and `vars_regexp` OR theirs, so each is one slot per set. The `header` and `query` matchers
//! expand placeholders in values and read a leading or trailing `*` (and a `query` value `*`) as
//! a wildcard, so a value with braces or such a star takes the regex slot instead. A match that
//! needs more slots than a set has (say two regexes on one header, or two cookie regexes) is
//! refused with a message saying which criteria collide.
//!
//! Caddy's matchers are maps, so the order of a match's criteria is not in them, nor is the
//! route's name: both ride along as the route, serialised, in a `vars` handler at the head of
//! the Caddy route (`canaryd_route`, which sets a request variable and nothing else). Reading
//! back parses the matchers themselves and reports the route from `canaryd_route` only if the
//! criteria it lists are exactly those the matcher sets hold, set by set; otherwise the route
//! as parsed (criteria in Caddy's key order), or, when a matcher is not one canaryd writes, a
//! route with no matches whose backend says why: either way not what was applied, so a hand
//! edit shows as drift.
//!
//! Semantics, against the embedded router's: a header criterion is tried on each field line
//! of the header, as there; a cookie's exact or prefix value is matched inside the `Cookie`
//! header (any cookie of that name, name compared with case); through a `{http.request.cookie.*}`
//! placeholder Caddy takes the first cookie whose name equals *without* case, and a missing
//! cookie reads as empty (so a pattern that fits `""` fits a request without the cookie). A
//! query placeholder reads the first value only, and Go decodes `+` in a query as a space.
//! Regexes are Go's RE2, whose syntax is close to, not the same as, the Rust `regex` lint
//! checks them with: Caddy refuses a pattern it cannot compile (the old config stays).

use serde_json::{Map, Value, json};

use crate::core::model::{Criterion, Field, Match, Pattern, Route};

/// The request header that names the side a routed request was sent to.
pub use crate::core::model::SIDE_HEADER;
/// The `vars` key that carries the route's name and the order of its criteria.
const META: &str = "canaryd_route";
const COOKIE_PREFIX: &str = r"(?:^|;\s*)";
const COOKIE_SUFFIX: &str = "(?:;|$)";
const COOKIE_PLACEHOLDER: &str = "http.request.cookie.";
const QUERY_PLACEHOLDER: &str = "http.request.uri.query.";
/// What RE2 reads as syntax outside a class; every other character stands for itself.
const META_CHARS: &str = r"\.+*?()|[]{}^$";

/// The `@id` of the `subroute` handler that holds `service`'s routes.
pub fn subroute_id(service: &str) -> String {
    format!("canaryd-{service}-routes")
}

/// The `subroute` handler for `routes` (`None` when there are none), to stand just before
/// `driven`, the `reverse_proxy` handler of `service`: each route proxies as `driven` does,
/// to the one upstream of its backend (`dial_of` a backend name, `Err` naming it when the
/// handler has no such upstream), and sets [`SIDE_HEADER`] on the request. `Err` says what
/// Caddy's matchers cannot express.
pub fn render(
    service: &str,
    routes: &[Route],
    canary: Option<&str>,
    driven: &Value,
    dial_of: impl Fn(&str) -> Result<String, String>,
) -> Result<Option<Value>, String> {
    if routes.is_empty() {
        return Ok(None);
    }
    let mut caddy_routes = Vec::new();
    for route in routes {
        let name = &route.name;
        if route.matches.is_empty() {
            return Err(format!(
                "route `{name}` has no matches (Caddy would send it every request)"
            ));
        }
        let sets = route
            .matches
            .iter()
            .map(|m| matcher_set(m).map_err(|e| format!("route `{name}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let dial = dial_of(&route.backend)?;
        let side = if canary == Some(route.backend.as_str()) {
            "canary"
        } else {
            "stable"
        };
        let meta = serde_json::to_value(route).map_err(|e| e.to_string())?;
        caddy_routes.push(json!({
            "match": sets,
            "handle": [
                {"handler": "vars", META: meta},
                proxy(driven, &dial, &format!("{service}={side}")),
            ],
        }));
    }
    Ok(Some(json!({
        "@id": subroute_id(service),
        "handler": "subroute",
        "routes": caddy_routes,
    })))
}

/// A copy of the driven handler (transport, timeouts, headers…) with one upstream, `dial`,
/// no load balancing and no `@id`, setting [`SIDE_HEADER`] to `side`.
fn proxy(driven: &Value, dial: &str, side: &str) -> Value {
    let mut p = driven.clone();
    if let Value::Object(o) = &mut p {
        o.remove("@id");
        o.remove("load_balancing");
        let upstream = o
            .get("upstreams")
            .and_then(Value::as_array)
            .and_then(|list| list.iter().find(|u| u["dial"] == dial))
            .cloned()
            .unwrap_or_else(|| json!({"dial": dial}));
        o.insert("upstreams".into(), json!([upstream]));
    }
    let set = object_at(object_at(object_at(&mut p, "headers"), "request"), "set");
    set[SIDE_HEADER] = json!([side]);
    p
}

/// The object under `key` in `v`, made an object (and `v` too) if it was not one.
fn object_at<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.is_object() {
        *v = json!({});
    }
    let slot = &mut v[key];
    if !slot.is_object() {
        *slot = json!({});
    }
    slot
}

/// Where a criterion is held in a matcher set.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    /// `{module: {key: value}}` with `module` one of `header`, `header_regexp`, `query`.
    Keyed(&'static str, String),
    /// `vars` or `vars_regexp`: one per set.
    Single(&'static str),
}

/// One way to hold a criterion: the slot, and the value under its key.
type Way = (Slot, String, Value);

/// The matcher set of one match.
fn matcher_set(m: &Match) -> Result<Value, String> {
    let mut taken: Vec<(Slot, String, Value)> = Vec::new();
    for c in &m.all {
        let ways = ways(c)?;
        let free = ways
            .into_iter()
            .find(|(slot, _, _)| !taken.iter().any(|(t, _, _)| t == slot));
        match free {
            Some(way) => taken.push(way),
            None => {
                return Err(format!(
                    "{} cannot join the other criteria of its match: Caddy's matchers hold one \
                     value per header, one cookie pattern in the `Cookie` header and one \
                     placeholder regex per matcher set (split the match, or use another router: \
                     embedded or haproxy)",
                    describe(c)
                ));
            }
        }
    }
    let mut set = Map::new();
    for (slot, key, value) in taken {
        let module = match slot {
            Slot::Keyed(module, _) | Slot::Single(module) => module,
        };
        let entry = set
            .entry(module)
            .or_insert_with(|| Value::Object(Map::new()));
        entry[key] = value;
    }
    Ok(Value::Object(set))
}

fn describe(c: &Criterion) -> String {
    crate::core::model::describe_matches(&[Match {
        all: vec![c.clone()],
    }])
}

/// Every way Caddy can hold `c`, best first.
fn ways(c: &Criterion) -> Result<Vec<Way>, String> {
    let name = c.name.as_str();
    let regexp = |pattern: String| json!({ "pattern": pattern });
    let braces = |s: &str| s.contains(['{', '}']);
    let mut ways: Vec<Way> = Vec::new();
    match c.on {
        Field::Header => {
            let key = || name.to_string();
            match &c.value {
                Pattern::Exact(v) if !braces(v) && !v.starts_with('*') && !v.ends_with('*') => {
                    ways.push((Slot::Keyed("header", key()), key(), json!([v])));
                }
                Pattern::Prefix(p) if !braces(p) && !p.starts_with('*') => {
                    ways.push((
                        Slot::Keyed("header", key()),
                        key(),
                        json!([format!("{p}*")]),
                    ));
                }
                _ => {}
            }
            let pattern = anchored(&c.value);
            ways.push((Slot::Keyed("header_regexp", key()), key(), regexp(pattern)));
        }
        Field::Cookie | Field::Query => {
            if braces(name) {
                return Err(format!(
                    "{}: Caddy reads braces in a name as a placeholder",
                    describe(c)
                ));
            }
            let (placeholder, native) = if c.on == Field::Cookie {
                (format!("{{{COOKIE_PLACEHOLDER}{name}}}"), cookie_regex(c))
            } else {
                let native = match &c.value {
                    Pattern::Exact(v) if !braces(v) && v != "*" => Some((
                        Slot::Keyed("query", name.to_string()),
                        name.to_string(),
                        json!([v]),
                    )),
                    _ => None,
                };
                (format!("{{{QUERY_PLACEHOLDER}{name}}}"), native)
            };
            ways.extend(native);
            if let Pattern::Exact(v) = &c.value
                && !braces(v)
            {
                ways.push((Slot::Single("vars"), placeholder.clone(), json!([v])));
            }
            ways.push((
                Slot::Single("vars_regexp"),
                placeholder,
                regexp(anchored(&c.value)),
            ));
        }
    }
    Ok(ways)
}

/// A cookie's exact or prefix value as a regex over the `Cookie` header (`None` for a regex,
/// whose anchors would mean the whole header there, or for a name no cookie can have).
fn cookie_regex(c: &Criterion) -> Option<Way> {
    let name = &c.name;
    if name.is_empty() || name.contains(['=', ';']) {
        return None;
    }
    let value = match &c.value {
        Pattern::Exact(v) => escape(v),
        Pattern::Prefix(p) => format!("{}[^;]*", escape(p)),
        Pattern::Regex(_) => return None,
    };
    let pattern = format!("{COOKIE_PREFIX}{}={value}{COOKIE_SUFFIX}", escape(name));
    Some((
        Slot::Keyed("header_regexp", "Cookie".into()),
        "Cookie".into(),
        json!({ "pattern": pattern }),
    ))
}

/// A pattern as a regex over the whole value: `^v$`, `^p`, `^(?:r)$`.
fn anchored(p: &Pattern) -> String {
    match p {
        Pattern::Exact(v) => format!("^{}$", escape(v)),
        Pattern::Prefix(v) => format!("^{}", escape(v)),
        Pattern::Regex(r) => format!("^(?:{r})$"),
    }
}

/// `s` as an RE2 literal: each syntax character escaped with a backslash.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if META_CHARS.contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// The literal an [`escape`]d string stands for; `None` when it holds unescaped syntax.
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => out.push(e),
                _ => return None,
            },
            c if META_CHARS.contains(c) => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A regex [`anchored`] wrote, back.
fn unanchored(pattern: &str) -> Option<Pattern> {
    let rest = pattern.strip_prefix('^')?;
    if let Some(r) = rest.strip_prefix("(?:").and_then(|r| r.strip_suffix(")$")) {
        return Some(Pattern::Regex(r.to_string()));
    }
    if let Some(v) = rest.strip_suffix('$')
        && let Some(v) = unescape(v)
    {
        return Some(Pattern::Exact(v));
    }
    unescape(rest).map(Pattern::Prefix)
}

/// A pattern [`cookie_regex`] wrote, back: the cookie's name and value.
fn uncookie(pattern: &str) -> Option<(String, Pattern)> {
    let inner = pattern
        .strip_prefix(COOKIE_PREFIX)?
        .strip_suffix(COOKIE_SUFFIX)?;
    let (name, value) = inner.split_once('=')?;
    let value = match value.strip_suffix("[^;]*") {
        Some(p) => Pattern::Prefix(unescape(p)?),
        None => Pattern::Exact(unescape(value)?),
    };
    Some((unescape(name)?, value))
}

/// The routes of a `subroute` handler [`render`] wrote, in order; `backend_of` names a dial
/// address.
pub fn parse(subroute: &Value, backend_of: impl Fn(&str) -> String) -> Vec<Route> {
    let list = subroute
        .get("routes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    list.iter().map(|r| route(r, &backend_of)).collect()
}

/// One Caddy route back into a canaryd route (see the module doc for what an edited one gives).
fn route(r: &Value, backend_of: &impl Fn(&str) -> String) -> Route {
    let handle = r.get("handle").and_then(Value::as_array);
    let meta: Option<Route> = handle
        .and_then(|h| h.first())
        .filter(|h| h["handler"] == "vars")
        .and_then(|h| h.get(META))
        .and_then(|m| serde_json::from_value(m.clone()).ok());
    let name = meta.as_ref().map_or("?", |m| m.name.as_str()).to_string();
    let unreadable = |why: String| Route {
        name: name.clone(),
        matches: Vec::new(),
        backend: format!("(unreadable: {why})"),
    };
    let proxy = handle
        .and_then(|h| h.get(1))
        .filter(|_| handle.map(Vec::len) == Some(2));
    let dial = proxy
        .filter(|p| p["handler"] == "reverse_proxy")
        .and_then(|p| p.get("upstreams"))
        .and_then(Value::as_array)
        .filter(|u| u.len() == 1)
        .and_then(|u| u[0]["dial"].as_str());
    let Some(dial) = dial else {
        return unreadable("not a vars handler and a reverse_proxy to one upstream".into());
    };
    let backend = backend_of(dial);
    let sets = match r.get("match") {
        Some(Value::Array(sets)) if !sets.is_empty() => sets,
        _ => return unreadable("no matcher sets".into()),
    };
    let mut matches = Vec::new();
    for set in sets {
        match criteria(set) {
            Ok(all) => matches.push(Match { all }),
            Err(why) => return unreadable(why),
        }
    }
    let parsed = Route {
        name,
        matches,
        backend,
    };
    match meta {
        Some(meta) if same_criteria(&meta, &parsed) => meta,
        _ => parsed,
    }
}

/// Whether `a` and `b` have the same name, backend and matches, each match holding the same
/// criteria in any order.
fn same_criteria(a: &Route, b: &Route) -> bool {
    a.name == b.name
        && a.backend == b.backend
        && a.matches.len() == b.matches.len()
        && a.matches.iter().zip(&b.matches).all(|(x, y)| {
            let mut rest = y.all.clone();
            x.all.len() == y.all.len()
                && x.all
                    .iter()
                    .all(|c| match rest.iter().position(|d| d == c) {
                        Some(i) => {
                            rest.swap_remove(i);
                            true
                        }
                        None => false,
                    })
        })
}

/// The criteria of one matcher set, in Caddy's key order.
fn criteria(set: &Value) -> Result<Vec<Criterion>, String> {
    let set = set.as_object().ok_or("a matcher set is not an object")?;
    let mut all = Vec::new();
    for (module, matcher) in set {
        let entries = matcher
            .as_object()
            .ok_or_else(|| format!("matcher `{module}` is not an object"))?;
        let single = matches!(module.as_str(), "vars" | "vars_regexp");
        if single && entries.len() != 1 {
            return Err(format!("matcher `{module}` has {} keys", entries.len()));
        }
        for (key, value) in entries {
            let bad = || format!("matcher `{module}` `{key}`: {value}");
            let one = || match value.as_array().map(Vec::as_slice) {
                Some([Value::String(v)]) => Some(v.clone()),
                _ => None,
            };
            let pattern = || match value.as_object() {
                Some(o) if o.len() == 1 => o.get("pattern").and_then(Value::as_str),
                _ => None,
            };
            let criterion = |on, name: &str, value| Criterion {
                on,
                name: name.to_string(),
                value,
            };
            let c = match module.as_str() {
                "header" => {
                    let v = one().ok_or_else(bad)?;
                    let value = if v.contains(['{', '}']) || (v.starts_with('*') && v != "*") {
                        return Err(bad());
                    } else if let Some(p) = v.strip_suffix('*') {
                        Pattern::Prefix(p.to_string())
                    } else {
                        Pattern::Exact(v)
                    };
                    criterion(Field::Header, key, value)
                }
                "header_regexp" => {
                    let p = pattern().ok_or_else(bad)?;
                    if key.eq_ignore_ascii_case("cookie") && p.starts_with(COOKIE_PREFIX) {
                        let (name, value) = uncookie(p).ok_or_else(bad)?;
                        criterion(Field::Cookie, &name, value)
                    } else {
                        criterion(Field::Header, key, unanchored(p).ok_or_else(bad)?)
                    }
                }
                "query" => {
                    let v = one().filter(|v| v != "*" && !v.contains(['{', '}']));
                    criterion(Field::Query, key, Pattern::Exact(v.ok_or_else(bad)?))
                }
                "vars" | "vars_regexp" => {
                    let inner = key
                        .strip_prefix('{')
                        .and_then(|k| k.strip_suffix('}'))
                        .ok_or_else(bad)?;
                    let (on, name) = if let Some(n) = inner.strip_prefix(COOKIE_PLACEHOLDER) {
                        (Field::Cookie, n)
                    } else if let Some(n) = inner.strip_prefix(QUERY_PLACEHOLDER) {
                        (Field::Query, n)
                    } else {
                        return Err(bad());
                    };
                    let value = if module == "vars" {
                        Pattern::Exact(one().ok_or_else(bad)?)
                    } else {
                        unanchored(pattern().ok_or_else(bad)?).ok_or_else(bad)?
                    };
                    criterion(on, name, value)
                }
                other => return Err(format!("matcher `{other}` is not one canaryd writes")),
            };
            all.push(c);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn c(on: Field, name: &str, value: Pattern) -> Criterion {
        Criterion {
            on,
            name: name.to_string(),
            value,
        }
    }

    fn exact(v: &str) -> Pattern {
        Pattern::Exact(v.to_string())
    }
    fn prefix(v: &str) -> Pattern {
        Pattern::Prefix(v.to_string())
    }
    fn regex(v: &str) -> Pattern {
        Pattern::Regex(v.to_string())
    }

    fn route(name: &str, matches: Vec<Vec<Criterion>>, backend: &str) -> Route {
        Route {
            name: name.to_string(),
            matches: matches.into_iter().map(|all| Match { all }).collect(),
            backend: backend.to_string(),
        }
    }

    const DRIVEN: &str = r#"{"@id":"checkout","handler":"reverse_proxy",
        "transport":{"protocol":"http","dial_timeout":1000000000},
        "headers":{"request":{"set":{"X-Env":["prod"]}}},
        "load_balancing":{"selection_policy":{"policy":"weighted_round_robin","weights":[90,10]}},
        "upstreams":[{"dial":"127.0.0.1:9001"},{"dial":"127.0.0.1:9002","max_requests":5}]}"#;

    fn dial_of(name: &str) -> Result<String, String> {
        match name {
            "blue" => Ok("127.0.0.1:9001".into()),
            "green" => Ok("127.0.0.1:9002".into()),
            other => Err(format!("backend `{other}`")),
        }
    }

    fn backend_of(dial: &str) -> String {
        match dial {
            "127.0.0.1:9001" => "blue".into(),
            "127.0.0.1:9002" => "green".into(),
            other => other.into(),
        }
    }

    fn rendered(routes: &[Route]) -> Value {
        let driven: Value = serde_json::from_str(DRIVEN).unwrap();
        render("checkout", routes, Some("green"), &driven, dial_of)
            .unwrap()
            .unwrap()
    }

    /// Rendered, then through JSON text as Caddy hands it back, then parsed.
    fn round_trip(routes: &[Route]) -> Vec<Route> {
        let text = serde_json::to_string(&rendered(routes)).unwrap();
        parse(&serde_json::from_str(&text).unwrap(), backend_of)
    }

    #[test]
    fn every_kind_of_criterion_reads_back_as_written() {
        let routes = vec![
            route(
                "testers",
                vec![
                    vec![c(Field::Header, "X-Canary", exact("always"))],
                    vec![c(Field::Cookie, "beta", prefix("on"))],
                    vec![
                        c(Field::Query, "app", regex("ios|android-[0-9]+")),
                        c(Field::Header, "x-canary", prefix("lower")),
                        c(Field::Cookie, "team", exact("a.b c;d\\e$")),
                    ],
                ],
                "green",
            ),
            route(
                "odd values",
                vec![
                    vec![c(Field::Header, "X-Star", exact("*all*"))],
                    vec![c(Field::Header, "X-Star", prefix("*"))],
                    vec![c(Field::Header, "X-Brace", exact("{env.HOME}"))],
                    vec![c(Field::Query, "q", exact("*"))],
                    vec![c(Field::Query, "q", exact("plain"))],
                    vec![c(Field::Cookie, "c", regex("^on$"))],
                    vec![c(Field::Header, "X-Empty", prefix(""))],
                    vec![c(Field::Header, "X-Empty", exact(""))],
                    vec![c(Field::Header, "X-Regex", regex("(?i)a|b"))],
                    vec![c(Field::Header, "X-Unicode", exact("héllo ✓"))],
                ],
                "blue",
            ),
            // Two criteria on one header, on one cookie, on one query parameter.
            route(
                "same field twice",
                vec![vec![
                    c(Field::Header, "X-Canary", exact("a")),
                    c(Field::Header, "X-Canary", regex("a|b")),
                    c(Field::Cookie, "beta", exact("on")),
                    c(Field::Cookie, "beta", prefix("o")),
                    c(Field::Query, "app", exact("ios")),
                ]],
                "green",
            ),
        ];
        assert_eq!(round_trip(&routes), routes);
    }

    #[test]
    fn criteria_take_the_matchers_that_hold_them_as_caddy_reads_them() {
        let set = |all: Vec<Criterion>| matcher_set(&Match { all }).unwrap();
        assert_eq!(
            set(vec![
                c(Field::Header, "X-Canary", exact("always")),
                c(Field::Header, "X-Team", prefix("core")),
                c(Field::Query, "app", exact("ios")),
            ]),
            json!({
                "header": {"X-Canary": ["always"], "X-Team": ["core*"]},
                "query": {"app": ["ios"]},
            })
        );
        // A star or a brace would be a wildcard or a placeholder: a regex holds it.
        assert_eq!(
            set(vec![c(Field::Header, "X-Canary", exact("a*"))]),
            json!({"header_regexp": {"X-Canary": {"pattern": r"^a\*$"}}})
        );
        assert_eq!(
            set(vec![c(Field::Header, "X-Canary", prefix("{x}"))]),
            json!({"header_regexp": {"X-Canary": {"pattern": r"^\{x\}"}}})
        );
        // A cookie value inside the Cookie header, anchored between separators.
        assert_eq!(
            set(vec![c(Field::Cookie, "beta", exact("on"))]),
            json!({"header_regexp": {"Cookie": {"pattern": r"(?:^|;\s*)beta=on(?:;|$)"}}})
        );
        assert_eq!(
            set(vec![c(Field::Cookie, "beta", regex("on|yes"))]),
            json!({"vars_regexp": {"{http.request.cookie.beta}": {"pattern": "^(?:on|yes)$"}}})
        );
        assert_eq!(
            set(vec![c(Field::Query, "app", prefix("and"))]),
            json!({"vars_regexp": {"{http.request.uri.query.app}": {"pattern": "^and"}}})
        );
    }

    #[test]
    fn the_cookie_pattern_fits_that_cookie_only() {
        let Some((_, _, v)) = cookie_regex(&c(Field::Cookie, "a", exact("1"))) else {
            panic!()
        };
        let re = regex::Regex::new(v["pattern"].as_str().unwrap()).unwrap();
        for fits in ["a=1", "x=2; a=1", "a=1; x=2", "x=2;a=1"] {
            assert!(re.is_match(fits), "{fits}");
        }
        for misses in ["xa=1", "a=12", "a=", "x=a=1", "b=1"] {
            assert!(!re.is_match(misses), "{misses}");
        }
    }

    #[test]
    fn what_a_set_cannot_hold_is_refused_with_the_criterion_named() {
        let driven: Value = serde_json::from_str(DRIVEN).unwrap();
        let refused = |all: Vec<Criterion>| {
            render(
                "checkout",
                &[route("r", vec![all], "green")],
                None,
                &driven,
                dial_of,
            )
            .unwrap_err()
        };
        let e = refused(vec![
            c(Field::Header, "X-A", regex("1")),
            c(Field::Header, "X-A", regex("2")),
        ]);
        assert!(e.contains("route `r`: X-A~2 cannot join"), "{e}");
        let e = refused(vec![
            c(Field::Query, "a", prefix("1")),
            c(Field::Cookie, "b", regex("2")),
        ]);
        assert!(e.contains("cookie b~2"), "{e}");
        let e = refused(vec![c(Field::Query, "{a}", exact("1"))]);
        assert!(e.contains("braces"), "{e}");
        let e = render(
            "checkout",
            &[route("r", vec![], "green")],
            None,
            &driven,
            dial_of,
        )
        .unwrap_err();
        assert!(e.contains("no matches"), "{e}");
        let e = render(
            "checkout",
            &[route(
                "r",
                vec![vec![c(Field::Header, "X", exact("1"))]],
                "red",
            )],
            None,
            &driven,
            dial_of,
        )
        .unwrap_err();
        assert_eq!(e, "backend `red`");
    }

    #[test]
    fn a_route_proxies_as_the_driven_handler_does_and_names_its_side() {
        let routes = [
            route(
                "to green",
                vec![vec![c(Field::Header, "X", exact("1"))]],
                "green",
            ),
            route(
                "to blue",
                vec![vec![c(Field::Header, "X", exact("2"))]],
                "blue",
            ),
        ];
        let sub = rendered(&routes);
        assert_eq!(sub["@id"], "canaryd-checkout-routes");
        assert_eq!(sub["handler"], "subroute");
        let green = &sub["routes"][0]["handle"][1];
        assert_eq!(
            green,
            &json!({"handler": "reverse_proxy",
                "transport": {"protocol": "http", "dial_timeout": 1000000000},
                "headers": {"request": {"set": {
                    "X-Env": ["prod"], "X-Canaryd-Side": ["checkout=canary"]}}},
                "upstreams": [{"dial": "127.0.0.1:9002", "max_requests": 5}]})
        );
        let blue = &sub["routes"][1]["handle"][1];
        assert_eq!(
            blue["headers"]["request"]["set"]["X-Canaryd-Side"],
            json!(["checkout=stable"])
        );
        let none = render("checkout", &[], None, &json!({}), dial_of).unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn an_edited_route_reads_back_different() {
        let routes = vec![route(
            "testers",
            vec![vec![
                c(Field::Query, "app", exact("ios")),
                c(Field::Header, "X-Canary", exact("always")),
            ]],
            "green",
        )];
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut sub = rendered(&routes);
            f(&mut sub["routes"][0]);
            parse(&sub, backend_of)
        };
        assert_eq!(edit(&|_| {}), routes);
        // A value changed: the route as parsed, criteria in Caddy's order.
        let got = edit(&|r| r["match"][0]["header"]["X-Canary"] = json!(["sometimes"]));
        assert_eq!(
            got[0].matches[0].all,
            [
                c(Field::Header, "X-Canary", exact("sometimes")),
                c(Field::Query, "app", exact("ios")),
            ]
        );
        // A criterion added, a matcher canaryd does not write, another upstream.
        let got = edit(&|r| r["match"][0]["header"]["X-More"] = json!(["1"]));
        assert_ne!(got, routes);
        let got = edit(&|r| r["match"][0]["path"] = json!(["/admin*"]));
        assert!(
            got[0].matches.is_empty() && got[0].backend.contains("path"),
            "{got:?}"
        );
        let got = edit(&|r| r["handle"][1]["upstreams"][0]["dial"] = json!("10.0.0.1:80"));
        assert_eq!(got[0].backend, "10.0.0.1:80");
        let got = edit(&|r| r["handle"][1]["upstreams"] = json!([]));
        assert!(got[0].backend.starts_with("(unreadable"), "{got:?}");
        // The metadata edited alone: the matchers win.
        let got = edit(&|r| {
            r["handle"][0][META]["matches"][0]["all"][0]["value"] = json!({"exact": "android"})
        });
        assert_eq!(got[0].matches[0].all.len(), 2);
        assert_ne!(got, routes);
    }

    #[test]
    fn escaping_is_undone_exactly() {
        for s in ["", "plain", r"a.b c;d\e$", "^(?:x)$", "[]{}|*+?", "é✓"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s), "{s}");
            assert_eq!(unanchored(&anchored(&exact(s))), Some(exact(s)));
            assert_eq!(unanchored(&anchored(&prefix(s))), Some(prefix(s)));
            // RE2 and Rust's regex read the escapes alike: the literal fits itself only.
            let re = regex::Regex::new(&anchored(&exact(s))).unwrap();
            assert!(re.is_match(s) && !re.is_match(&format!("{s}x")), "{s}");
        }
        assert_eq!(unescape("a.b"), None);
        assert_eq!(unescape(r"a\"), None);
        assert_eq!(unanchored("a"), None);
    }
}
