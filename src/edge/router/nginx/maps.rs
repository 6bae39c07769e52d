//! The blocks canaryd renders into the NGINX upstream file so that a service's routes and sticky users pick a backend (per-backend `upstream`s, `map`, `split_clients`), and how they are read back (pure; no I/O).
//!
//! For service `checkout` (its variables are named from `canaryd_` and the service name with
//! `-` and `.` as `_`), routes `marked` (header `X-Canary: always`) and `apps` (query `app`
//! matching `ios|android`, to blue), sticky by header `X-User-Id` at 10 %:
//!
//! ```text
//! upstream checkout__blue {
//!     server 127.0.0.1:9001;
//! }
//! upstream checkout__green {
//!     server 127.0.0.1:9002;
//! }
//! map "header:X-Canary\n$http_x_canary\nquery:app\n$arg_app" $canaryd_checkout {
//!     default $canaryd_checkout_sticky;
//!     "~(?#route marked)(?m)\Aheader:X-Canary\nalways\nquery:app\n.*\z" checkout__green;
//!     "~(?#route apps)(?m)\Aheader:X-Canary\n.*\nquery:app\n(?:ios|android)\z" checkout__blue;
//! }
//! map "header:X-User-Id\n$http_x_user_id" $canaryd_checkout_sticky {
//!     default $canaryd_checkout_split;
//!     "header:X-User-Id\n" checkout;
//! }
//! split_clients "$http_x_user_id" $canaryd_checkout_split {
//!     10% checkout__green;
//!     * checkout__blue;
//! }
//! map $canaryd_checkout $canaryd_checkout_side {
//!     default "";
//!     checkout__blue checkout=stable;
//!     checkout__green checkout=canary;
//! }
//! map "" $canaryd_checkout_set_cookie {
//!     default "";
//! }
//! ```
//!
//! **Routes** are one `map` whose source is a composite key: one line per *slot*, a label
//! (`header:X-Canary`, `cookie:beta`, `query:app`) then the value NGINX reads for it
//! (`$http_x_canary`, `$cookie_beta`, `$arg_app`), all joined by newlines (no header, cookie or
//! query value holds a newline). Every match of every route is one regex entry, in route order
//! (NGINX tries a map's regexes in the order written and takes the first that matches; every
//! entry is a regex, so no exact string jumps the queue). An entry names its route in a PCRE
//! comment and spells every slot in order, with `.*` where the match does not look; the
//! criteria of one match are ANDed by sitting in one regex, and the matches of a route are
//! ORed by being several entries with the same value. Exact values are escaped literals, a
//! prefix is the literal then `[^\n]*`, a regex is `(?:…)` (multiline mode, so its own `^` and
//! `$` stand at its value's ends). A slot label may repeat: the slots are the shortest list
//! found greedily of which every match's criteria, in their order, are a subsequence, so a
//! match reads back with its criteria in the order given.
//!
//! **The fallback** (the map's `default`): the sticky split when there is a sticky key, else
//! the service's weighted `upstream <service>`. A header key that a request lacks (or sends
//! empty) falls back to the weighted upstream; a cookie key that a request lacks is made up
//! from `$request_id`, with which the request is split and which
//! `$canaryd_<service>_set_cookie` offers to the client as the cookie.
//!
//! **Sticky users** are one `split_clients` over the key with the canary listed first at its
//! weight and the other backends after it, the last as `*` (0 % lines, which NGINX refuses, are
//! left out). `split_clients` hashes the key with MurmurHash2 and gives the first part whose
//! cumulative bound the hash is below ([`on_canary`]), so raising the canary's weight only ever
//! moves users onto it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::core::express::anchors_to_subject;
use crate::core::model::{
    Criterion, Field, Match, Observed, Pattern, Route, Sticky, Traffic, Weight,
};

/// The attributes of the cookie `$canaryd_<service>_set_cookie` sets (as the embedded router's).
const COOKIE_ATTRIBUTES: &str = "Path=/; Max-Age=86400; HttpOnly; SameSite=Lax";

/// The variable (without `$`) that names `service`'s upstream for a request:
/// `canaryd_` and the service name with `-` and `.` as `_`.
pub fn variable(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("canaryd_{name}")
}

/// The upstream of one backend of `service`, which routes and the sticky split name.
pub fn backend_upstream(service: &str, backend: &str) -> String {
    format!("{service}__{backend}")
}

/// Every variable (with `$`) canaryd defines for `service`.
pub fn variables(service: &str) -> [String; 6] {
    let v = variable(service);
    ["", "_sticky", "_key", "_split", "_side", "_set_cookie"].map(|s| format!("${v}{s}"))
}

/// A `map` or `split_clients` block as read from the file: its source (the key, unescaped as
/// NGINX reads it) and its entries' words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defined {
    /// `split_clients` (else `map`).
    pub split: bool,
    pub key: String,
    pub entries: Vec<Vec<String>>,
    pub line: usize,
}

/// MurmurHash2 (32 bits, seed 0) as NGINX computes it (`ngx_murmur_hash2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    // NGINX seeds with the length, truncated to 32 bits.
    let mut h = data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Whether NGINX's `split_clients`, as rendered here, puts the user with `key` on the canary at
/// `canary` percent: MurmurHash2 of the key below the canary's bound, `100·w · (2³²−1) / 10000`
/// (the first part's bound; 100 % is the catch-all). The same rule as canaryd's
/// [`crate::core::model::on_canary`] with another hash, so a user's side on NGINX is not its
/// side on another kind of router.
pub fn on_canary(key: &str, canary: Weight) -> bool {
    match canary.get() {
        0 => false,
        100 => true,
        w => murmur2(key.as_bytes()) < bound(w),
    }
}

fn bound(percent: u8) -> u32 {
    // At most 0xffffffff: the product stays below 2^64 and the quotient fits.
    u32::try_from(u64::from(percent) * 100 * 0xffff_ffff / 10_000).unwrap_or(u32::MAX)
}

/// A request value NGINX can read: a header, cookie or query parameter by name.
type Slot = (Field, String);

fn field_word(on: Field) -> &'static str {
    match on {
        Field::Header => "header",
        Field::Cookie => "cookie",
        Field::Query => "query",
    }
}

/// The NGINX variable holding `name` of `on`, or why there is none: `$http_` takes header
/// names in lower case with `-` as `_`; `$cookie_` and `$arg_` take names of letters, digits
/// and `_` (NGINX compares them without case).
fn nginx_variable(on: Field, name: &str) -> Result<String, String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    match on {
        Field::Header if !name.is_empty() && name.chars().all(|c| word(c) || c == '-') => Ok(
            format!("$http_{}", name.to_ascii_lowercase().replace('-', "_")),
        ),
        Field::Cookie | Field::Query if !name.is_empty() && name.chars().all(word) => {
            let prefix = if on == Field::Cookie { "cookie" } else { "arg" };
            Ok(format!("${prefix}_{name}"))
        }
        Field::Header => Err(format!(
            "header `{}`: nginx reads headers as `$http_<name>`, names of letters, digits, `-` \
             and `_` only",
            name.escape_debug()
        )),
        _ => Err(format!(
            "{} `{}`: nginx reads cookies and query parameters as `$cookie_<name>` and \
             `$arg_<name>`, names of letters, digits and `_` only",
            field_word(on),
            name.escape_debug()
        )),
    }
}

fn label(slot: &Slot) -> String {
    format!("{}:{}", field_word(slot.0), slot.1)
}

/// Characters a PCRE treats as syntax outside a class.
fn is_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '^' | '$' | '.' | '|' | '?' | '*' | '+' | '(' | ')' | '[' | ']' | '{' | '}'
    )
}

/// `text` as a PCRE literal: syntax escaped, control characters as `\xHH`.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_meta(c) {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// A literal from the front of `text` (up to a newline, an unescaped `[` or an escape that is
/// no literal's), and the rest; `None` for syntax no literal holds.
fn read_literal(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut rest = text;
    loop {
        let mut chars = rest.chars();
        match chars.next() {
            None | Some('\n' | '[') => return Some((out, rest)),
            Some('\\') => match chars.next() {
                Some('x') => {
                    let hex = chars.as_str().get(..2)?;
                    out.push(char::from(u8::from_str_radix(hex, 16).ok()?));
                    rest = &chars.as_str()[2..];
                }
                Some(m) if is_meta(m) => {
                    out.push(m);
                    rest = chars.as_str();
                }
                _ => return Some((out, rest)),
            },
            Some(m) if is_meta(m) => return None,
            Some(c) => {
                out.push(c);
                rest = chars.as_str();
            }
        }
    }
}

/// Where the group opened just before `text` closes: the byte index of its `)` in `text`.
/// Escapes (`\Q…\E` included) and classes (`[…]`, `[[:alpha:]]`) are skipped.
fn group_end(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut depth = 1usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if b.get(i + 1) == Some(&b'Q') => {
                i = text[i + 2..].find("\\E").map_or(b.len(), |e| i + 2 + e + 2);
            }
            b'\\' => i += 2,
            b'[' => {
                let mut j = i + 1;
                if b.get(j) == Some(&b'^') {
                    j += 1;
                }
                if b.get(j) == Some(&b']') {
                    j += 1;
                }
                loop {
                    match b.get(j)? {
                        b'\\' => j += 2,
                        b'[' if b.get(j + 1) == Some(&b':') => {
                            j = j + 2 + text[j + 2..].find(":]")? + 2;
                        }
                        b']' => break,
                        _ => j += 1,
                    }
                }
                i = j + 1;
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// A route name inside a PCRE comment: `%`, `)` and control characters as `%XX`.
fn encode_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c == '%' || c == ')' || c.is_ascii_control() {
            let _ = write!(out, "%{:02X}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

fn decode_name(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let hex = rest.get(at + 1..at + 3)?;
        out.push(char::from(u8::from_str_radix(hex, 16).ok()?));
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// `text` as one NGINX word: as it is when it needs no quotes, else double-quoted with `"`, a
/// newline, a tab, a carriage return and a backslash NGINX would read as an escape, escaped.
pub fn quote(text: &str) -> String {
    let plain = !text.is_empty()
        && !text.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, ';' | '{' | '}' | '#' | '"' | '\'' | '\\')
        });
    if plain {
        return text.to_string();
    }
    let mut out = String::from("\"");
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // NGINX keeps a backslash before any other character.
            '\\' => match chars.peek() {
                Some(n) if !matches!(n, '"' | '\'' | '\\' | 'n' | 't' | 'r') => out.push('\\'),
                _ => out.push_str("\\\\"),
            },
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The slots of `routes`' matches and, per match in order, the slot of each criterion.
fn slots_of(routes: &[Route]) -> (Vec<Slot>, Vec<Vec<usize>>) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut placed = Vec::new();
    for m in routes.iter().flat_map(|r| &r.matches) {
        let mut at = 0;
        let mut mine = Vec::new();
        for c in &m.all {
            let want = (c.on, c.name.clone());
            let k = match slots[at..].iter().position(|s| *s == want) {
                Some(k) => at + k,
                None => {
                    slots.push(want);
                    slots.len() - 1
                }
            };
            mine.push(k);
            at = k + 1;
        }
        placed.push(mine);
    }
    (slots, placed)
}

/// The regex entry of one match (without the leading `~`).
fn match_regex(route: &str, slots: &[Slot], m: &Match, placed: &[usize]) -> String {
    let mut out = format!("(?#route {})(?m)\\A", encode_name(route));
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&literal(&label(slot)));
        out.push('\n');
        match placed.iter().position(|k| *k == i).map(|j| &m.all[j].value) {
            None => out.push_str(".*"),
            Some(Pattern::Exact(v)) => out.push_str(&literal(v)),
            Some(Pattern::Prefix(v)) => {
                out.push_str(&literal(v));
                out.push_str("[^\n]*");
            }
            Some(Pattern::Regex(r)) => {
                let _ = write!(out, "(?:{r})");
            }
        }
    }
    out.push_str("\\z");
    out
}

/// The blocks (each without a final newline) that give `service` the routes and sticky key of
/// `traffic`, with `addresses` (backend → server address) for the per-backend upstreams; why
/// not when NGINX cannot express them.
pub fn render(
    service: &str,
    traffic: &Traffic,
    addresses: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    let v = variable(service);
    let (slots, placed) = slots_of(&traffic.routes);
    let mut key_lines = Vec::new();
    for slot in &slots {
        key_lines.push(label(slot));
        key_lines.push(nginx_variable(slot.0, &slot.1)?);
    }
    for route in &traffic.routes {
        for c in route.matches.iter().flat_map(|m| &m.all) {
            if let Pattern::Regex(r) = &c.value
                && (anchors_to_subject(r) || group_end(&format!("{r})")) != Some(r.len()))
            {
                return Err(format!(
                    "route `{}`: regex `{}` cannot go into nginx's map, which matches it inside \
                     a key of several lines: `^` and `$` stand at the value's ends there, \
                     `\\A`, `\\z`, `\\Z` and `\\G` would not (and its groups must balance)",
                    route.name,
                    r.escape_debug()
                ));
            }
        }
    }
    let mut backends: BTreeSet<&str> = traffic.backends.keys().map(String::as_str).collect();
    backends.extend(traffic.routes.iter().map(|r| r.backend.as_str()));
    let mut blocks = Vec::new();
    for b in &backends {
        let address = addresses
            .get(*b)
            .ok_or_else(|| format!("backend `{b}` has no address"))?;
        blocks.push(format!(
            "upstream {} {{\n    server {address};\n}}",
            quote(&backend_upstream(service, b))
        ));
    }
    // Routes, then the fallback.
    let fallback = match &traffic.sticky {
        Some(Sticky::Header(_)) => format!("${v}_sticky"),
        Some(Sticky::Cookie(_)) => format!("${v}_split"),
        None => service.to_string(),
    };
    let mut map = format!(
        "map {} ${v} {{\n    default {};\n",
        quote(&key_lines.join("\n")),
        quote(&fallback)
    );
    let mut k = 0;
    for route in &traffic.routes {
        for m in &route.matches {
            let regex = match_regex(&route.name, &slots, m, &placed[k]);
            k += 1;
            let _ = writeln!(
                map,
                "    {} {};",
                quote(&format!("~{regex}")),
                quote(&backend_upstream(service, &route.backend))
            );
        }
    }
    map.push('}');
    blocks.push(map);
    // Sticky users.
    let mut set_cookie = format!("map \"\" ${v}_set_cookie {{\n    default \"\";\n}}");
    if let Some(sticky) = &traffic.sticky {
        let (on, name) = match sticky {
            Sticky::Header(n) => (Field::Header, n),
            Sticky::Cookie(n) => (Field::Cookie, n),
        };
        let var = nginx_variable(on, name)?;
        let lab = label(&(on, name.clone()));
        let source = quote(&format!("{lab}\n{var}"));
        let none = quote(&format!("{lab}\n"));
        let split_key = match on {
            Field::Header => {
                blocks.push(format!(
                    "map {source} ${v}_sticky {{\n    default ${v}_split;\n    {none} {};\n}}",
                    quote(service)
                ));
                var
            }
            _ => {
                blocks.push(format!(
                    "map {source} ${v}_key {{\n    default {var};\n    {none} $request_id;\n}}"
                ));
                set_cookie = format!(
                    "map {source} ${v}_set_cookie {{\n    default \"\";\n    {none} {};\n}}",
                    quote(&format!("{name}=$request_id; {COOKIE_ATTRIBUTES}"))
                );
                format!("${v}_key")
            }
        };
        let mut split = format!("split_clients {} ${v}_split {{\n", quote(&split_key));
        let parts = split_parts(traffic);
        for (i, (backend, weight)) in parts.iter().enumerate() {
            let upstream = quote(&backend_upstream(service, backend));
            if i + 1 == parts.len() {
                let _ = writeln!(split, "    * {upstream};");
            } else {
                let _ = writeln!(split, "    {weight}% {upstream};");
            }
        }
        if parts.is_empty() {
            let _ = writeln!(split, "    * {};", quote(service));
        }
        split.push('}');
        blocks.push(split);
    }
    // The side, for the next hop.
    let canary = traffic.canary.as_deref();
    let canary_weight = canary
        .and_then(|c| traffic.backends.get(c))
        .map_or(0, |w| w.get());
    let weighted = match canary_weight {
        0 => format!("{service}=stable"),
        100 => format!("{service}=canary"),
        _ => String::new(),
    };
    let mut side = format!("map ${v} ${v}_side {{\n    default {};\n", quote(&weighted));
    for b in &backends {
        let which = if Some(*b) == canary {
            "canary"
        } else {
            "stable"
        };
        let _ = writeln!(
            side,
            "    {} {};",
            quote(&backend_upstream(service, b)),
            quote(&format!("{service}={which}"))
        );
    }
    side.push('}');
    blocks.push(side);
    blocks.push(set_cookie);
    Ok(blocks)
}

/// The sticky split's parts: the canary first, then the other backends in name order, each at
/// its weight; backends at 0 left out.
fn split_parts(traffic: &Traffic) -> Vec<(String, u8)> {
    let canary = traffic.canary.as_deref();
    let first = canary.and_then(|c| Some((c.to_string(), traffic.backends.get(c)?.get())));
    first
        .into_iter()
        .chain(
            traffic
                .backends
                .iter()
                .filter(|(name, _)| Some(name.as_str()) != canary)
                .map(|(name, w)| (name.clone(), w.get())),
        )
        .filter(|(_, w)| *w > 0)
        .collect()
}

/// The routes and sticky key that [`render`] wrote for `service` into `defined` (variable with
/// `$` → block), with `weights` the service's weighted upstream as read; no routes and no key
/// when canaryd never rendered them. A sticky split whose parts disagree with `weights` (edited
/// by hand) reads as no key, so that the next apply writes it again. Why not, when a block is
/// not one canaryd writes.
pub fn read(
    service: &str,
    defined: &BTreeMap<String, Defined>,
    weights: &Observed,
) -> Result<(Vec<Route>, Option<Sticky>), String> {
    let [main, sticky_var, key_var, split_var, ..] = variables(service);
    let Some(map) = defined.get(&main) else {
        return Ok((Vec::new(), None));
    };
    let not_ours = |d: &Defined, what: String| {
        format!(
            "line {}: {what} is not what canaryd writes for `{main}`",
            d.line
        )
    };
    if map.split {
        return Err(not_ours(map, "a split_clients".to_string()));
    }
    let slots = slots_of_key(&map.key).ok_or_else(|| not_ours(map, "the map's source".into()))?;
    let prefix = backend_upstream(service, "");
    let mut routes: Vec<Route> = Vec::new();
    let mut fallback = None;
    for entry in &map.entries {
        match entry.as_slice() {
            [d, value] if d == "default" => fallback = Some(value.as_str()),
            [regex, upstream] if regex.starts_with('~') => {
                let (name, m) = read_entry(&regex[1..], &slots)
                    .ok_or_else(|| not_ours(map, format!("entry `{}`", regex.escape_debug())))?;
                let backend = upstream.strip_prefix(&prefix).unwrap_or(upstream);
                match routes.last_mut() {
                    Some(r) if r.name == name && r.backend == backend => r.matches.push(m),
                    _ => routes.push(Route {
                        name,
                        matches: vec![m],
                        backend: backend.to_string(),
                    }),
                }
            }
            other => return Err(not_ours(map, format!("entry `{}`", other.join(" ")))),
        }
    }
    let (sticky, split_key) = match fallback {
        Some(f) if f == service => return Ok((routes, None)),
        Some(f) if f == sticky_var => {
            let (sticky, var) = read_key(defined.get(&sticky_var), Field::Header)
                .ok_or_else(|| not_ours(map, format!("`{sticky_var}`")))?;
            (sticky, var)
        }
        Some(f) if f == split_var => {
            let (sticky, _) = read_key(defined.get(&key_var), Field::Cookie)
                .ok_or_else(|| not_ours(map, format!("`{key_var}`")))?;
            (sticky, key_var.clone())
        }
        _ => return Err(not_ours(map, "the default".to_string())),
    };
    let fits = defined
        .get(&split_var)
        .is_some_and(|s| s.split && s.key == split_key && split_fits(service, s, weights));
    Ok((routes, fits.then_some(sticky)))
}

/// The slots a map's source names; `None` when it is not a source [`render`] writes.
fn slots_of_key(key: &str) -> Option<Vec<Slot>> {
    if key.is_empty() {
        return Some(Vec::new());
    }
    let lines: Vec<&str> = key.split('\n').collect();
    lines
        .chunks(2)
        .map(|pair| {
            let [label, var] = pair else { return None };
            let slot = slot_of_label(label)?;
            (nginx_variable(slot.0, &slot.1).ok()? == *var).then_some(slot)
        })
        .collect()
}

fn slot_of_label(label: &str) -> Option<Slot> {
    let (word, name) = label.split_once(':')?;
    let on = match word {
        "header" => Field::Header,
        "cookie" => Field::Cookie,
        "query" => Field::Query,
        _ => return None,
    };
    Some((on, name.to_string()))
}

/// The route name and match of one regex entry (without `~`).
fn read_entry(regex: &str, slots: &[Slot]) -> Option<(String, Match)> {
    let rest = regex.strip_prefix("(?#route ")?;
    let close = rest.find(')')?;
    let name = decode_name(&rest[..close])?;
    let mut rest = rest[close + 1..].strip_prefix("(?m)\\A")?;
    let mut all = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            rest = rest.strip_prefix('\n')?;
        }
        rest = rest
            .strip_prefix(&literal(&label(slot)))?
            .strip_prefix('\n')?;
        let value = if let Some(after) = rest.strip_prefix(".*") {
            rest = after;
            None
        } else if let Some(group) = rest.strip_prefix("(?:") {
            let end = group_end(group)?;
            rest = &group[end + 1..];
            Some(Pattern::Regex(group[..end].to_string()))
        } else {
            let (text, after) = read_literal(rest)?;
            if let Some(after) = after.strip_prefix("[^\n]*") {
                rest = after;
                Some(Pattern::Prefix(text))
            } else {
                rest = after;
                Some(Pattern::Exact(text))
            }
        };
        if let Some(value) = value {
            all.push(Criterion {
                on: slot.0,
                name: slot.1.clone(),
                value,
            });
        }
    }
    (rest == "\\z").then_some((name, Match { all }))
}

/// The sticky key of the map that tests whether a request has it, and the variable it reads.
fn read_key(map: Option<&Defined>, on: Field) -> Option<(Sticky, String)> {
    let map = map.filter(|m| !m.split)?;
    let (label, var) = map.key.split_once('\n')?;
    let (field, name) = slot_of_label(label)?;
    (field == on && nginx_variable(on, &name).ok()? == var).then_some(())?;
    let sticky = match on {
        Field::Header => Sticky::Header(name),
        _ => Sticky::Cookie(name),
    };
    Some((sticky, var.to_string()))
}

/// Whether the split's parts give each backend its share of `weights`.
fn split_fits(service: &str, split: &Defined, weights: &Observed) -> bool {
    let want: BTreeMap<String, u8> = weights
        .percentages()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, w)| w.get() > 0)
        .map(|(b, w)| (b, w.get()))
        .collect();
    let prefix = backend_upstream(service, "");
    let mut seen = BTreeMap::new();
    let mut total = 0u32;
    for (i, entry) in split.entries.iter().enumerate() {
        let [share, upstream] = entry.as_slice() else {
            return false;
        };
        let percent = if share == "*" && i + 1 == split.entries.len() {
            100u32.saturating_sub(total)
        } else {
            match share.strip_suffix('%').and_then(|p| p.parse::<u32>().ok()) {
                Some(p) => p,
                None => return false,
            }
        };
        total = total.saturating_add(percent);
        if upstream == service && want.is_empty() {
            continue;
        }
        let Some(backend) = upstream.strip_prefix(&prefix) else {
            return false;
        };
        seen.insert(
            backend.to_string(),
            u8::try_from(percent).unwrap_or(u8::MAX),
        );
    }
    seen == want
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn murmur2_is_nginxs() {
        // The real check is NGINX itself: tests/it/router_nginx.rs puts every user where
        // `on_canary` says. Here: the empty key, and no collisions among the test's users.
        assert_eq!(murmur2(b""), 0);
        let mut seen = BTreeSet::new();
        for user in (0..2_000).map(|i| format!("u{i}")) {
            seen.insert(murmur2(user.as_bytes()));
            let mut was = false;
            for w in [0, 10, 25, 50, 100] {
                let now = on_canary(&user, Weight::new(w).unwrap());
                assert!(!was || now, "{user} left the canary at {w}");
                was = now;
            }
        }
        assert_eq!(seen.len(), 2_000);
    }

    #[test]
    fn literals_and_names_read_back() {
        for text in ["always", "a.b c;d\\e$", "x\ny\t", "(ab)[c]{d}^|?*+", "é"] {
            let lit = literal(text);
            assert_eq!(read_literal(&lit), Some((text.to_string(), "")), "{lit}");
        }
        for name in ["marked", "a)b%c", "x\ny", ""] {
            assert_eq!(decode_name(&encode_name(name)).unwrap(), name);
        }
    }

    #[test]
    fn groups_end_where_the_regex_does() {
        for r in [
            "a|b",
            "[)]x",
            "[^]()]",
            "\\)",
            "(a(b))",
            "[[:alpha:])]",
            "\\Q)(\\E",
            "[\\]]",
        ] {
            assert_eq!(group_end(&format!("{r})")), Some(r.len()), "{r}");
        }
        assert_eq!(group_end("(a)"), None);
        assert!(anchors_to_subject("\\Aab"));
        assert!(!anchors_to_subject("\\\\A"));
    }

    #[test]
    fn quoting_is_undone_as_nginx_reads_it() {
        assert_eq!(quote("checkout__blue"), "checkout__blue");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        assert_eq!(quote("\\A\\."), "\"\\A\\.\"");
        assert_eq!(quote("\\n\\\\"), "\"\\\\n\\\\\\\\\"");
        assert_eq!(quote("x\\"), "\"x\\\\\"");
        assert_eq!(quote("say \"hi\""), "\"say \\\"hi\\\"\"");
    }

    fn criterion(on: Field, name: &str, value: Pattern) -> Criterion {
        Criterion {
            on,
            name: name.to_string(),
            value,
        }
    }

    #[test]
    fn slots_keep_every_matchs_order() {
        let h = |n: &str| criterion(Field::Header, n, Pattern::Exact("1".into()));
        let routes = vec![Route {
            name: "r".into(),
            matches: vec![
                Match {
                    all: vec![h("A"), h("B")],
                },
                Match {
                    all: vec![h("B"), h("A")],
                },
                Match {
                    all: vec![h("A"), h("A")],
                },
            ],
            backend: "green".into(),
        }];
        let (slots, placed) = slots_of(&routes);
        let names: Vec<&str> = slots.iter().map(|s| s.1.as_str()).collect();
        assert_eq!(names, ["A", "B", "A"]);
        assert_eq!(placed, [vec![0, 1], vec![1, 2], vec![0, 2]]);
    }
}
