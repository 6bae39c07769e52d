//! What canaryd writes into, and reads back from, the two runtime maps of an HAProxy backend that routes requests: its routes and its sticky split, as map entries (pure; no I/O).
//!
//! **Routes** live in `canaryd.<backend>.routes.map`, looked up with `map_reg`: one entry per
//! criterion, in route order, whose key is a regular expression over `<field>:<name>=<value>`
//! (the sample the snippet builds) and whose value is `<server>/<route name>`:
//!
//! - exact `always` on header `X-Canary`: `^(?i:header:X-Canary=)always$` (header names
//!   without case; cookie and query names as they are: `^cookie:beta=…`)
//! - prefix `be`: `^(?i:header:X-Canary=)be` (no `$`)
//! - regex `b.*`: `^(?i:header:X-Canary=)(?:b.*)$` (the whole value, as the model matches)
//!
//! Literal text is escaped (`\.`, and `\x20` for a space) so that a regex key reads back as the
//! route it came from. A match of several criteria (ANDed) has no such entry and is refused.
//!
//! **Sticky users** live in `canaryd.<backend>.sticky.map`, looked up with `map_str`: `key`
//! (`header:X-User-Id` or `cookie:uid`, what the snippet hashes), `threshold` (100·w of the
//! canary's weight w: a user is on the canary exactly when its bucket is below it), `canary`
//! and `stable` (the servers the two sides go to). An empty map: no sticky split.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::core::express::haproxy_name;
use crate::core::model::{Criterion, Field, Match, Observed, Pattern, Route, Sticky, Traffic};

/// One map entry: key, value.
pub type Entry = (String, String);

/// The file name (not the path) of a backend's routes map.
pub fn routes_map(service: &str) -> String {
    format!("canaryd.{service}.routes.map")
}

/// The file name (not the path) of a backend's sticky map.
pub fn sticky_map(service: &str) -> String {
    format!("canaryd.{service}.sticky.map")
}

fn field_word(on: Field) -> &'static str {
    match on {
        Field::Header => "header",
        Field::Cookie => "cookie",
        Field::Query => "query",
    }
}

/// The snippet's fetch of a field: the first occurrence of a header, whole (`req.hdr()` would
/// take the last one and split it on commas), a cookie, a query parameter percent-decoded (`+`
/// kept, as the embedded router keeps it: a URI query, not a form).
fn fetch(on: Field, name: &str) -> String {
    match on {
        Field::Header => format!("req.fhdr({name},1)"),
        Field::Cookie => format!("req.cook({name})"),
        Field::Query => format!("url_param({name}),url_dec"),
    }
}

/// The configuration lines a backend needs so that canaryd can route requests on `routes_on`
/// (each field and name a route may test) and split users by `sticky`, with both maps in
/// `map_dir` (empty files the configuration loads; canaryd fills them at run time). They go in
/// the `backend` section, before its `server` lines.
pub fn snippet(
    service: &str,
    map_dir: &str,
    routes_on: &[(Field, &str)],
    sticky: Option<&Sticky>,
) -> String {
    let dir = map_dir.trim_end_matches('/');
    let routes = format!("{dir}/{}", routes_map(service));
    let split = format!("{dir}/{}", sticky_map(service));
    let mut s = format!(
        "    # canaryd: routes and sticky users of backend `{service}` (maps filled at run time)\n"
    );
    for (i, (on, name)) in routes_on.iter().enumerate() {
        let _ = write!(
            s,
            "    http-request set-var(txn.canaryd_v{i}) {fetch}\n    \
             http-request set-var(txn.canaryd_route) str({word}:{name}=),concat(,txn.canaryd_v{i},),map_reg({routes}) \
             if {{ var(txn.canaryd_v{i}) -m found }} !{{ var(txn.canaryd_route) -m found }}\n",
            fetch = fetch(*on, name),
            word = field_word(*on),
        );
    }
    if let Some(key) = sticky {
        let (on, name) = match key {
            Sticky::Header(n) => (Field::Header, n),
            Sticky::Cookie(n) => (Field::Cookie, n),
        };
        let f = fetch(on, name);
        let _ = write!(
            s,
            "    http-request set-var(txn.canaryd_bucket) {f},crc32,mod(10000) if {{ {f} -m len gt 0 }}\n    \
             http-request set-var(txn.canaryd_threshold) str(threshold),map_str({split},-1)\n"
        );
    }
    if !routes_on.is_empty() {
        s.push_str(
            "    use-server %[var(txn.canaryd_route),field(1,/)] if { var(txn.canaryd_route) -m found }\n",
        );
    }
    if sticky.is_some() {
        let _ = write!(
            s,
            "    use-server %[str(canary),map_str({split})] if {{ var(txn.canaryd_bucket),sub(txn.canaryd_threshold) -m int lt 0 }}\n    \
             use-server %[str(stable),map_str({split})] if {{ var(txn.canaryd_bucket) -m found }} {{ str(stable),map_str({split}) -m found }}\n"
        );
    }
    s
}

/// Characters a PCRE treats as syntax outside a class.
fn is_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '^' | '$' | '.' | '|' | '?' | '*' | '+' | '(' | ')' | '[' | ']' | '{' | '}'
    )
}

/// `text` as a literal in a PCRE with no whitespace or control character in it.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_meta(c) {
            out.push('\\');
            out.push(c);
        } else if c == ' ' || c.is_ascii_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// The routes' map entries, in order; why not when a route has no such entries.
pub fn route_entries(routes: &[Route]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for route in routes {
        if !haproxy_name(&route.name) {
            return Err(format!(
                "route `{}`: haproxy's map holds route names of letters, digits, `_`, `-` and `.` only",
                route.name.escape_debug()
            ));
        }
        let value = format!("{}/{}", route.backend, route.name);
        for m in &route.matches {
            let [c] = m.all.as_slice() else {
                return Err(format!(
                    "route `{}`: haproxy routes each match on one header, cookie or query \
                     parameter; a match of {} criteria (ANDed) cannot be expressed in its maps \
                     without a reload",
                    route.name,
                    m.all.len()
                ));
            };
            if !haproxy_name(&c.name) {
                return Err(format!(
                    "route `{}`: `{}` is not a name canaryd writes into haproxy's configuration",
                    route.name,
                    c.name.escape_debug()
                ));
            }
            // Header names compare without case, as HTTP has them (the snippet may spell one
            // otherwise than the rollout); cookie and query names as they are.
            let prefix = match c.on {
                Field::Header => format!("^(?i:header:{}=)", escape(&c.name)),
                on => format!("^{}:{}=", field_word(on), escape(&c.name)),
            };
            let key = match &c.value {
                Pattern::Exact(v) => format!("{prefix}{}$", escape(v)),
                Pattern::Prefix(v) => format!("{prefix}{}", escape(v)),
                Pattern::Regex(r) => {
                    if r.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(format!(
                            "route `{}`: regex `{}` holds whitespace, which haproxy's runtime \
                             api cannot take in a map key; write `\\x20` for a space",
                            route.name,
                            r.escape_debug()
                        ));
                    }
                    format!("{prefix}(?:{r})$")
                }
            };
            entries.push((key, value.clone()));
        }
    }
    Ok(entries)
}

/// The routes that `route_entries` wrote into `entries`; why not when one is not canaryd's.
pub fn routes_of(entries: &[Entry]) -> Result<Vec<Route>, String> {
    let mut routes: Vec<Route> = Vec::new();
    for (key, value) in entries {
        let not_ours = || format!("map entry `{key} {value}` is not one canaryd writes");
        let (backend, name) = value.split_once('/').ok_or_else(not_ours)?;
        let criterion = criterion_of(key).ok_or_else(not_ours)?;
        let m = Match {
            all: vec![criterion],
        };
        match routes.last_mut() {
            Some(last) if last.name == name && last.backend == backend => last.matches.push(m),
            _ => routes.push(Route {
                name: name.to_string(),
                matches: vec![m],
                backend: backend.to_string(),
            }),
        }
    }
    Ok(routes)
}

/// The criterion a key of [`route_entries`] stands for.
fn criterion_of(key: &str) -> Option<Criterion> {
    let rest = key.strip_prefix('^')?;
    let (on, name, body) = if let Some(header) = rest.strip_prefix("(?i:header:") {
        let (name, body) = header.split_once("=)")?;
        (Field::Header, name, body)
    } else {
        let (word, rest) = rest.split_once(':')?;
        let on = match word {
            "cookie" => Field::Cookie,
            "query" => Field::Query,
            _ => return None,
        };
        let (name, body) = rest.split_once('=')?;
        (on, name, body)
    };
    if !haproxy_name(&name.replace('\\', "")) {
        return None;
    }
    let name = unescape(name)?.0;
    let value = if let Some(r) = body.strip_prefix("(?:").and_then(|b| b.strip_suffix(")$")) {
        Pattern::Regex(r.to_string())
    } else {
        match unescape(body)? {
            (v, true) => Pattern::Exact(v),
            (v, false) => Pattern::Prefix(v),
        }
    };
    Some(Criterion { on, name, value })
}

/// The text of an escaped literal, and whether it ended with an (unescaped) `$`.
fn unescape(text: &str) -> Option<(String, bool)> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'x' => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                }
                m if is_meta(m) => out.push(m),
                _ => return None,
            },
            '$' if chars.as_str().is_empty() => return Some((out, true)),
            m if is_meta(m) => return None,
            c => out.push(c),
        }
    }
    Some((out, false))
}

/// The sticky map's entries for `traffic`; why not when its weights have no single stable
/// server for the users off the canary.
pub fn sticky_entries(traffic: &Traffic) -> Result<Vec<Entry>, String> {
    let Some(key) = &traffic.sticky else {
        return Ok(Vec::new());
    };
    let (word, name) = match key {
        Sticky::Header(n) => ("header", n),
        Sticky::Cookie(n) => ("cookie", n),
    };
    if !haproxy_name(name) {
        return Err(format!(
            "sticky key `{}` is not a name canaryd writes into haproxy's configuration",
            name.escape_debug()
        ));
    }
    let canary = traffic.canary.as_deref();
    let threshold = canary
        .and_then(|c| traffic.backends.get(c))
        .map_or(0, |w| 100 * u32::from(w.get()));
    let stable: Vec<&String> = traffic
        .backends
        .iter()
        .filter(|(name, w)| Some(name.as_str()) != canary && w.get() > 0)
        .map(|(name, _)| name)
        .collect();
    if stable.len() > 1 {
        return Err(format!(
            "sticky users on haproxy need one stable server beside the canary; the weights give \
             traffic to {}",
            stable
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut entries = vec![
        ("key".to_string(), format!("{word}:{name}")),
        ("threshold".to_string(), threshold.to_string()),
    ];
    if let Some(c) = canary {
        entries.push(("canary".to_string(), c.to_string()));
    }
    if let Some(s) = stable.first() {
        entries.push(("stable".to_string(), (*s).clone()));
    }
    Ok(entries)
}

/// The sticky key of a sticky map's entries (`None`: an empty map, no split).
pub fn sticky_of(entries: &[Entry]) -> Result<Option<Sticky>, String> {
    let by_key: BTreeMap<&str, &str> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let Some(key) = by_key.get("key") else {
        return match entries.first() {
            None => Ok(None),
            Some((k, v)) => Err(format!("sticky map entry `{k} {v}` comes without a `key`")),
        };
    };
    if by_key
        .get("threshold")
        .and_then(|t| t.parse::<u32>().ok())
        .is_none()
    {
        return Err("sticky map has no numeric `threshold`".to_string());
    }
    match key.split_once(':') {
        Some(("header", n)) => Ok(Some(Sticky::Header(n.to_string()))),
        Some(("cookie", n)) => Ok(Some(Sticky::Cookie(n.to_string()))),
        _ => Err(format!(
            "sticky map has key `{key}`, not `header:…` or `cookie:…`"
        )),
    }
}

/// Whether the sticky map's `entries` are the split that `observed`'s weights and key name:
/// the threshold 100·w of the canary's share, the stable server the one other server with
/// weight. A map edited by hand (a threshold of 9000 under weights 90/10) sends users where no
/// step says; the driver then reports no sticky key, which the planner sees as drift.
pub fn split_agrees(observed: &Observed, entries: &[Entry]) -> bool {
    let Some(key) = &observed.sticky else {
        return entries.is_empty();
    };
    let canary = entries
        .iter()
        .find(|(k, _)| k == "canary")
        .map(|(_, v)| v.clone());
    let traffic = Traffic {
        backends: observed.percentages().unwrap_or_default(),
        routes: Vec::new(),
        sticky: Some(key.clone()),
        canary,
    };
    let Ok(mut want) = sticky_entries(&traffic) else {
        return false;
    };
    let mut have = entries.to_vec();
    want.sort();
    have.sort();
    want == have
}

/// `arg` as one argument on a runtime API line: HAProxy drops a backslash and keeps the next
/// character, and would end the command at `;` or the argument at a space.
pub fn cli_arg(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    for c in arg.chars() {
        if matches!(c, '\\' | ';' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The entries in the answer to `show map <file>`: `<id> <key> <value>` a line.
pub fn parse_entries(answer: &str) -> Result<Vec<Entry>, String> {
    answer
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(key), Some(value)) if id.starts_with("0x") => {
                    Ok((key.to_string(), value.to_string()))
                }
                _ => Err(format!("unexpected line in `show map`: `{line}`")),
            }
        })
        .collect()
}

/// File name → path of every map in the answer to `show map`: a `# id (file) description`
/// header, then `<id> (<path>) …` a line.
pub fn parse_map_list(answer: &str) -> Result<BTreeMap<String, String>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    match lines.next() {
        Some(h) if h.starts_with('#') => {}
        None => return Ok(BTreeMap::new()),
        Some(first) => return Err(format!("unexpected answer to `show map`: `{first}`")),
    }
    let mut maps = BTreeMap::new();
    for line in lines {
        let path = line
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(path, _)| path)
            .ok_or_else(|| format!("unexpected line in `show map`: `{line}`"))?;
        let file = path.rsplit('/').next().unwrap_or(path);
        maps.insert(file.to_string(), path.to_string());
    }
    Ok(maps)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn route(name: &str, criteria: &[(Field, &str, Pattern)]) -> Route {
        Route {
            name: name.to_string(),
            matches: criteria
                .iter()
                .map(|(on, n, v)| Match {
                    all: vec![Criterion {
                        on: *on,
                        name: n.to_string(),
                        value: v.clone(),
                    }],
                })
                .collect(),
            backend: "green".to_string(),
        }
    }

    #[test]
    fn routes_round_trip_through_their_keys() {
        let routes = vec![
            route(
                "testers",
                &[
                    (Field::Header, "X-Canary", Pattern::Exact("always".into())),
                    (
                        Field::Header,
                        "X-Canary",
                        Pattern::Exact("a.b c\\d;$".into()),
                    ),
                    (Field::Cookie, "beta", Pattern::Prefix("on(".into())),
                ],
            ),
            route(
                "mobile",
                &[(
                    Field::Query,
                    "app",
                    Pattern::Regex("ios|android\\x20".into()),
                )],
            ),
        ];
        let entries = route_entries(&routes).unwrap();
        assert_eq!(entries[0].0, "^(?i:header:X-Canary=)always$");
        assert_eq!(entries[1].0, "^(?i:header:X-Canary=)a\\.b\\x20c\\\\d;\\$$");
        assert_eq!(entries[2].0, "^cookie:beta=on\\(");
        assert_eq!(
            entries[3],
            (
                "^query:app=(?:ios|android\\x20)$".to_string(),
                "green/mobile".to_string()
            )
        );
        assert_eq!(routes_of(&entries).unwrap(), routes);
        // The exact key matches the whole value, the prefix key its start.
        let re = regex::Regex::new(&entries[1].0).unwrap();
        assert!(re.is_match("header:X-Canary=a.b c\\d;$"));
        assert!(re.is_match("header:x-canary=a.b c\\d;$"));
        assert!(!re.is_match("header:X-Canary=aXb c\\d;$"));
        assert!(!re.is_match("header:X-Canary=A.b c\\d;$"));
    }

    #[test]
    fn what_maps_cannot_hold_is_refused() {
        let mut and = route("both", &[]);
        and.matches = vec![Match {
            all: vec![
                route("x", &[(Field::Header, "a", Pattern::Exact("1".into()))]).matches[0].all[0]
                    .clone(),
                route("x", &[(Field::Cookie, "b", Pattern::Exact("2".into()))]).matches[0].all[0]
                    .clone(),
            ],
        }];
        let e = route_entries(&[and]).unwrap_err();
        assert!(e.contains("a match of 2 criteria (ANDed)"), "{e}");
        for bad in [
            route("a b", &[(Field::Header, "a", Pattern::Exact("1".into()))]),
            route("r", &[(Field::Header, "a b", Pattern::Exact("1".into()))]),
            route("r", &[(Field::Header, "a", Pattern::Regex("a b".into()))]),
        ] {
            assert!(route_entries(&[bad]).is_err());
        }
        for key in [
            "(?i:header:a=)1",
            "^header:a=1",
            "^other:a=1",
            "^(?i:header:a=)x.y",
            "^(?i:header:a=)\\q",
        ] {
            assert!(criterion_of(key).is_none(), "{key}");
        }
    }

    #[test]
    fn a_sticky_split_agrees_with_the_weights_it_was_written_for_only() {
        let mut t = Traffic::of(&[("blue", 75), ("green", 25)]).unwrap();
        t.sticky = Some(Sticky::Header("X-User-Id".to_string()));
        t.canary = Some("green".to_string());
        let entries = sticky_entries(&t).unwrap();
        let observed = Observed {
            backends: BTreeMap::from([("blue".to_string(), 75), ("green".to_string(), 25)]),
            routes: Vec::new(),
            sticky: t.sticky.clone(),
        };
        assert!(split_agrees(&observed, &entries));
        let mut moved = entries.clone();
        moved.retain(|(k, _)| k != "threshold");
        moved.push(("threshold".to_string(), "9000".to_string()));
        assert!(!split_agrees(&observed, &moved));
        // Weights changed by hand under an untouched map: the map no longer agrees either.
        let mut reweighted = observed.clone();
        reweighted.backends.insert("green".to_string(), 50);
        reweighted.backends.insert("blue".to_string(), 50);
        assert!(!split_agrees(&reweighted, &entries));
        // No key, no entries: nothing to disagree with.
        let plain = Observed::weights(observed.backends.clone());
        assert!(split_agrees(&plain, &[]));
    }

    #[test]
    fn sticky_entries_put_users_below_the_threshold_on_the_canary() {
        let mut t = Traffic::of(&[("blue", 75), ("green", 25)]).unwrap();
        assert!(sticky_entries(&t).unwrap().is_empty());
        t.sticky = Some(Sticky::Header("X-User-Id".into()));
        t.canary = Some("green".into());
        let entries = sticky_entries(&t).unwrap();
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("key", "header:X-User-Id"),
                ("threshold", "2500"),
                ("canary", "green"),
                ("stable", "blue")
            ]
        );
        assert_eq!(sticky_of(&entries).unwrap(), t.sticky);
        assert_eq!(sticky_of(&[]).unwrap(), None);
        let mut three = Traffic::of(&[("a", 50), ("b", 25), ("green", 25)]).unwrap();
        three.sticky = t.sticky.clone();
        three.canary = t.canary.clone();
        assert!(sticky_entries(&three).unwrap_err().contains("`a`, `b`"));
    }

    #[test]
    fn runtime_api_answers_about_maps() {
        let list = "# id (file) description\n0 (/etc/h/canaryd.checkout.routes.map) pattern loaded from file '/etc/h/canaryd.checkout.routes.map' used by map at file 'h.cfg' line 14. curr_ver=0 next_ver=0 entry_cnt=0\n\n";
        let maps = parse_map_list(list).unwrap();
        assert_eq!(
            maps["canaryd.checkout.routes.map"],
            "/etc/h/canaryd.checkout.routes.map"
        );
        assert!(parse_map_list("Unknown command\n").is_err());
        let entries = parse_entries("0x55ad8ee4cfa0 ^header:X-Canary=always$ green/t\n\n").unwrap();
        assert_eq!(
            entries,
            [(
                "^header:X-Canary=always$".to_string(),
                "green/t".to_string()
            )]
        );
        assert!(parse_entries("Unknown map identifier.\n").is_err());
        assert_eq!(cli_arg("a\\.b;c d"), "a\\\\.b\\;c\\ d");
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The README shows the snippet as this function writes it.
    #[test]
    fn the_readme_shows_the_snippet() {
        let snippet = snippet(
            "checkout",
            "/etc/haproxy",
            &[(Field::Header, "X-Canary"), (Field::Cookie, "beta")],
            Some(&Sticky::Header("X-User-Id".to_string())),
        );
        let readme = include_str!("../../../../README.md");
        if !readme.contains(&snippet) {
            panic!("README.md lacks the snippet:\n{snippet}");
        }
    }
}
