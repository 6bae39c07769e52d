//! What canaryd writes into, and reads back from, Traefik's routers for a service's routes: names, rules, priorities and the side header (pure; no I/O).
//!
//! Route `i` (of `n`) of service `S`, in front of the user's router `U` that serves `S@file`,
//! is the router `canaryd:<S>:<i>:<route name>:<U>` (each part percent-encoded, so `:` and
//! `@` never occur in one; `U` is qualified, `checkout@file` → `checkout%40file`) with:
//!
//! - `rule`: `(<U's rule>) && (<the matches>)`: the matches ORed with ` || `, the criteria of
//!   one match ANDed with ` && ` (in parentheses when both occur), each criterion one matcher:
//!   - header exact `v`: ``Header(`name`, `v`)``; prefix `p`: ``HeaderRegexp(`name`, `^<p escaped>`)``;
//!     regex `r`: ``HeaderRegexp(`name`, `^(?:r)$`)`` (Go's regexp finds a match anywhere; the
//!     model matches the whole value);
//!   - query: the same with `Query` and `QueryRegexp`;
//!   - cookie (Traefik has no cookie matcher): a regex over the `Cookie` header,
//!     `(?:^|;)\s*name\s*=\s*v\s*(?:;|$)` for an exact value, without the tail for a prefix,
//!     so that `beta=on` fits `a=1; beta=on` and not `xbeta=on` nor `beta=one`. A regex `r`
//!     is `(?:r)` in that place, ANDed with the same regex where `r` is narrowed: `;` taken
//!     out of each of its classes and literals, written in Go's syntax (`\x{..}` ranges), so
//!     that `g.*d` fits `tier=gold` but not `tier=gx; id=d` (Go's regexp has no lookaround
//!     that could stop `.*` at the `;`). The first carries `r` for the read-back.
//!
//!   Strings are Go literals: between backticks, or double-quoted with escapes when the text
//!   holds a backtick.
//! - `priority`: `U`'s effective priority (its own, or its rule's length, as Traefik's API
//!   reports it) plus `n - i`: above `U`, in route order, and as little above it as can be.
//! - `service`: `<S>-<backend>`, the load balancer canaryd writes for that backend.
//! - `entryPoints`, `tls`, `observability` and `parentRefs` copied from `U`, and `U`'s
//!   middlewares followed by `canaryd:<S>:canary` or `canaryd:<S>:stable`, a `headers`
//!   middleware setting `X-Canaryd-Side: <S>=canary` (or `=stable`) on the request.
//!
//! Read back, every router under canaryd's names for `S` is parsed into its route; a router
//! that is not exactly what canaryd would write now (edited by hand, its `U` gone or changed,
//! refused by Traefik) is reported under the route's name with ` (not as canaryd wrote it:
//! <why>)` appended, and a route missing in front of one of the user's routers likewise, so
//! that the daemon sees drift and applies again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::core::model::{Criterion, Field, Match, Pattern, Route};
use crate::core::spec::RouterKind;

/// The prefix of every router and middleware name canaryd writes.
const PREFIX: &str = "canaryd:";
/// The request header naming the side a request was sent to.
pub use crate::core::model::SIDE_HEADER;

/// `part` with every byte outside `[A-Za-z0-9._~-]` written `%XX`.
fn encode(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b"._~-".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The inverse of [`encode`]; `None` for text `encode` does not produce.
fn decode(part: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(part.len());
    let mut rest = part.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let text = String::from_utf8(bytes).ok()?;
    (encode(&text) == part).then_some(text)
}

/// The name of route `index`'s router in front of the user's router `user` (qualified).
pub fn router_name(service: &str, index: usize, route: &str, user: &str) -> String {
    format!(
        "{PREFIX}{}:{index}:{}:{}",
        encode(service),
        encode(route),
        encode(user)
    )
}

/// One of canaryd's route routers, as its name says.
#[derive(Debug, PartialEq)]
pub struct RouterKey {
    pub service: String,
    pub index: usize,
    pub route: String,
    /// The user's router it stands in front of, qualified (`checkout@file`).
    pub user: String,
}

/// What [`router_name`] made the (local) name `name` from, if it did.
pub fn parse_router_name(name: &str) -> Option<RouterKey> {
    let mut parts = name.strip_prefix(PREFIX)?.split(':');
    let (service, index, route, user) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let index: usize = index.parse().ok()?;
    (index.to_string() == *index_text(name)?).then_some(())?;
    Some(RouterKey {
        service: decode(service)?,
        index,
        route: decode(route)?,
        user: decode(user)?,
    })
}

/// The index part of a router name, as written (so `01` is not taken for `1`).
fn index_text(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.split(':').nth(1)
}

/// Whether the (local) router or middleware name `name` is one of canaryd's for `service`.
pub fn is_ours(name: &str, service: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split(':').next())
        .is_some_and(|s| decode(s).as_deref() == Some(service))
}

/// The name of the middleware that marks requests sent to the canary (or to stable).
pub fn side_middleware(service: &str, canary: bool) -> String {
    let side = if canary { "canary" } else { "stable" };
    format!("{PREFIX}{}:{side}", encode(service))
}

/// The `headers` middleware [`side_middleware`] names.
pub fn side_middleware_config(service: &str, canary: bool) -> Value {
    let side = if canary { "canary" } else { "stable" };
    json!({ "headers": { "customRequestHeaders": { SIDE_HEADER: format!("{service}={side}") } } })
}

/// `text` as a Go string literal, as Traefik's rule parser reads one.
fn literal(text: &str) -> String {
    // A raw string holds neither a backtick nor, read by Go's scanner, a carriage return (it
    // is dropped) or NUL (refused); control characters are escaped instead.
    if !text.chars().any(|c| c == '`' || c.is_control()) {
        return format!("`{text}`");
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Why `c` cannot be written as a Traefik matcher, if it cannot.
pub fn check(c: &Criterion) -> Result<(), String> {
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
    };
    match c.on {
        Field::Header | Field::Cookie if !token(&c.name) => {
            return Err(format!("`{}` is no header or cookie name", c.name));
        }
        Field::Query if c.name.is_empty() => return Err("a query parameter needs a name".into()),
        _ => {}
    }
    match (&c.on, &c.value) {
        (Field::Cookie, Pattern::Regex(r)) => within_a_cookie(r).map(|_| ()).map_err(|why| {
            format!(
                "cookie `{}` by regex `{r}`: {why}, which canaryd cannot hold to one cookie's \
                 value in a regex over the `Cookie` header; routers that can: {}",
                c.name,
                RouterKind::those_that(|k| k.can_route_by_cookie() && k != RouterKind::Traefik)
            )
        }),
        (Field::Cookie, Pattern::Exact(v) | Pattern::Prefix(v)) if v.contains(';') => Err(format!(
            "cookie `{}`: a cookie value cannot hold `;`",
            c.name
        )),
        (_, Pattern::Regex(r)) => regex::Regex::new(r)
            .map(|_| ())
            .map_err(|e| format!("regex `{r}`: {e}")),
        _ => Ok(()),
    }
}

/// The start of every cookie regex: the cookie's name, at the start of the header or after a
/// `;`, and its `=`.
fn cookie_head(name: &str) -> String {
    format!(r"(?:^|;)\s*{}\s*=\s*", regex::escape(name))
}

/// The end of a cookie regex whose value must be whole.
const COOKIE_TAIL: &str = r"\s*(?:;|$)";

/// The regex a cookie criterion is matched with, over the `Cookie` header. A regex `r` is
/// written as this regex, `r` kept as it is so that it reads back, ANDed with
/// [`strict_cookie_regex`], which holds `r` to one cookie's value.
fn cookie_regex(name: &str, value: &Pattern) -> String {
    let head = cookie_head(name);
    match value {
        Pattern::Exact(v) => format!("{head}{}{COOKIE_TAIL}", regex::escape(v)),
        Pattern::Prefix(p) => format!("{head}{}", regex::escape(p)),
        Pattern::Regex(r) => format!("{head}(?:{r}){COOKIE_TAIL}"),
    }
}

/// The regex over the `Cookie` header that cookie `name`'s value fits whole regex `r`:
/// `r` with `;` taken out of every character it may match, so that a match cannot run past
/// the cookie's value (a value holds no `;`, and a string without `;` fits `r` exactly when it
/// fits `r` so narrowed), in Go's syntax. `None` for what [`within_a_cookie`] refuses.
fn strict_cookie_regex(name: &str, r: &str) -> Option<String> {
    let narrowed = within_a_cookie(r).ok()?;
    Some(format!("{}(?:{narrowed}){COOKIE_TAIL}", cookie_head(name)))
}

/// Regex `r` (whole-value, RE2 syntax) with `;` taken out of every character it matches,
/// written in the part of Go's syntax both dialects read alike (non-capturing groups, classes
/// of `\x{..}` ranges); why not, for what has no such form: assertions other than a leading
/// `^` and a trailing `$` (which whole-value matching implies), and byte-oriented `(?-u)`.
fn within_a_cookie(r: &str) -> Result<String, String> {
    use regex_syntax::hir::{Hir, HirKind, Look};
    let hir = regex_syntax::Parser::new()
        .parse(r)
        .map_err(|e| format!("not a regular expression: {e}"))?;
    // `^` and `$` at the ends are implied by matching the whole value.
    let hir = match hir.kind() {
        HirKind::Look(Look::Start | Look::End) => Hir::empty(),
        HirKind::Concat(parts) => {
            let mut parts = parts.clone();
            if matches!(
                parts.first().map(Hir::kind),
                Some(HirKind::Look(Look::Start))
            ) {
                parts.remove(0);
            }
            if matches!(parts.last().map(Hir::kind), Some(HirKind::Look(Look::End))) {
                parts.pop();
            }
            Hir::concat(parts)
        }
        _ => hir,
    };
    let mut out = String::new();
    go_without_semicolon(&hir, &mut out)?;
    Ok(out)
}

/// Writes `hir` to `out` in Go's regexp syntax, `;` taken out of every class and literal.
fn go_without_semicolon(hir: &regex_syntax::hir::Hir, out: &mut String) -> Result<(), String> {
    use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, HirKind};
    // Matches nothing: the complement of every character.
    const NOTHING: &str = r"[^\x{0}-\x{10ffff}]";
    let char_ = |out: &mut String, c: char| {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else {
            let _ = write!(out, r"\x{{{:x}}}", u32::from(c));
        }
    };
    let group =
        |out: &mut String, parts: &[regex_syntax::hir::Hir], sep: &str| -> Result<(), String> {
            out.push_str("(?:");
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                go_without_semicolon(part, out)?;
            }
            out.push(')');
            Ok(())
        };
    match hir.kind() {
        HirKind::Empty => out.push_str("(?:)"),
        HirKind::Literal(literal) => {
            let text = std::str::from_utf8(&literal.0)
                .map_err(|_| "it matches bytes that are not UTF-8 (`(?-u)`)".to_string())?;
            out.push_str("(?:");
            for c in text.chars() {
                if c == ';' {
                    out.push_str(NOTHING);
                } else {
                    char_(out, c);
                }
            }
            out.push(')');
        }
        HirKind::Class(Class::Unicode(class)) => {
            let mut class = class.clone();
            class.difference(&ClassUnicode::new([ClassUnicodeRange::new(';', ';')]));
            if class.ranges().is_empty() {
                out.push_str(NOTHING);
            } else {
                out.push('[');
                for range in class.ranges() {
                    char_(out, range.start());
                    if range.end() != range.start() {
                        out.push('-');
                        char_(out, range.end());
                    }
                }
                out.push(']');
            }
        }
        HirKind::Class(Class::Bytes(_)) => {
            return Err("it matches bytes (`(?-u)`)".to_string());
        }
        HirKind::Look(look) => return Err(format!("it asserts {look:?} inside the value")),
        HirKind::Repetition(rep) => {
            group(out, std::slice::from_ref(&*rep.sub), "")?;
            match (rep.min, rep.max) {
                (0, Some(1)) => out.push('?'),
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (m, None) => {
                    let _ = write!(out, "{{{m},}}");
                }
                (m, Some(n)) if m == n => {
                    let _ = write!(out, "{{{m}}}");
                }
                (m, Some(n)) => {
                    let _ = write!(out, "{{{m},{n}}}");
                }
            }
            if !rep.greedy {
                out.push('?');
            }
        }
        HirKind::Capture(capture) => group(out, std::slice::from_ref(&*capture.sub), "")?,
        HirKind::Concat(parts) => group(out, parts, "")?,
        HirKind::Alternation(parts) => group(out, parts, "|")?,
    }
    Ok(())
}

/// One criterion as a Traefik matcher; see the module docs.
fn criterion(c: &Criterion) -> String {
    let regexp = |value: &Pattern| match value {
        Pattern::Exact(v) => regex::escape(v),
        Pattern::Prefix(p) => format!("^{}", regex::escape(p)),
        Pattern::Regex(r) => format!("^(?:{r})$"),
    };
    let (matcher, name, value) = match (&c.on, &c.value) {
        (Field::Header, Pattern::Exact(v)) => ("Header", c.name.as_str(), v.clone()),
        (Field::Query, Pattern::Exact(v)) => ("Query", c.name.as_str(), v.clone()),
        (Field::Header, p) => ("HeaderRegexp", c.name.as_str(), regexp(p)),
        (Field::Query, p) => ("QueryRegexp", c.name.as_str(), regexp(p)),
        (Field::Cookie, p) => ("HeaderRegexp", "Cookie", cookie_regex(&c.name, p)),
    };
    let one = format!("{matcher}({}, {})", literal(name), literal(&value));
    match (&c.on, &c.value) {
        (Field::Cookie, Pattern::Regex(r)) => {
            // `check` refuses a regex that has no strict form.
            let strict = strict_cookie_regex(&c.name, r).unwrap_or_default();
            format!(
                "{one} && HeaderRegexp({}, {})",
                literal("Cookie"),
                literal(&strict)
            )
        }
        _ => one,
    }
}

/// The matches as one Traefik rule expression: ORed, their criteria ANDed.
pub fn matches_rule(matches: &[Match]) -> String {
    let one = |m: &Match| {
        let all: Vec<String> = m.all.iter().map(criterion).collect();
        let joined = all.join(" && ");
        if matches.len() > 1 && all.len() > 1 {
            format!("({joined})")
        } else {
            joined
        }
    };
    matches.iter().map(one).collect::<Vec<_>>().join(" || ")
}

/// The whole rule of a route's router in front of a user's router with rule `user_rule`.
pub fn rule(user_rule: &str, matches: &[Match]) -> String {
    format!("({user_rule}) && ({})", matches_rule(matches))
}

/// A token of the rule subset canaryd writes.
#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Open,
    Close,
    Comma,
    And,
    Or,
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {}
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            '&' if chars.next_if_eq(&'&').is_some() => out.push(Token::And),
            '|' if chars.next_if_eq(&'|').is_some() => out.push(Token::Or),
            '`' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('`') => break,
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(Token::Str(s));
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('"') => s.push('"'),
                            Some('\\') => s.push('\\'),
                            Some('u') => {
                                let hex: String = chars.by_ref().take(4).collect();
                                let c = u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .and_then(char::from_u32)
                                    .ok_or_else(|| format!("bad escape `\\u{hex}`"))?;
                                s.push(c);
                            }
                            other => return Err(format!("escape `\\{other:?}`")),
                        },
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(Token::Str(s));
            }
            c if c.is_ascii_alphabetic() => {
                let mut s = String::from(c);
                while let Some(c) = chars.next_if(char::is_ascii_alphanumeric) {
                    s.push(c);
                }
                out.push(Token::Ident(s));
            }
            c => return Err(format!("unexpected `{c}`")),
        }
    }
    Ok(out)
}

/// Parses `tokens` as [`matches_rule`] writes them.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, want: &Token) -> bool {
        let hit = self.peek() == Some(want);
        self.at += usize::from(hit);
        hit
    }

    fn expect(&mut self, want: Token) -> Result<(), String> {
        if self.eat(&want) {
            Ok(())
        } else {
            Err(format!("expected {want:?} at token {}", self.at))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        match self.tokens.get(self.at) {
            Some(Token::Str(s)) => {
                self.at += 1;
                Ok(s.clone())
            }
            _ => Err(format!("expected a string at token {}", self.at)),
        }
    }

    fn or(&mut self) -> Result<Vec<Match>, String> {
        let mut matches = vec![self.and()?];
        while self.eat(&Token::Or) {
            matches.push(self.and()?);
        }
        Ok(matches)
    }

    fn and(&mut self) -> Result<Match, String> {
        if self.eat(&Token::Open) {
            let m = self.and()?;
            self.expect(Token::Close)?;
            return Ok(m);
        }
        let mut all = vec![self.call()?];
        while self.eat(&Token::And) {
            all.push(self.call()?);
        }
        // A cookie regex is written twice, as given and narrowed to one cookie; keep the first.
        let mut kept: Vec<Criterion> = Vec::with_capacity(all.len());
        for c in all {
            let companion = match (kept.last(), &c) {
                (Some(before), after)
                    if before.on == Field::Cookie && after.on == Field::Cookie =>
                {
                    match (&before.value, &after.value) {
                        (Pattern::Regex(r), Pattern::Regex(narrowed)) => {
                            strict_cookie_regex(&before.name, r)
                                == Some(cookie_regex(
                                    &after.name,
                                    &Pattern::Regex(narrowed.clone()),
                                ))
                        }
                        _ => false,
                    }
                }
                _ => false,
            };
            if !companion {
                kept.push(c);
            }
        }
        Ok(Match { all: kept })
    }

    fn call(&mut self) -> Result<Criterion, String> {
        let Some(Token::Ident(matcher)) = self.tokens.get(self.at) else {
            return Err(format!("expected a matcher at token {}", self.at));
        };
        let matcher = matcher.clone();
        self.at += 1;
        self.expect(Token::Open)?;
        let name = self.string()?;
        self.expect(Token::Comma)?;
        let value = self.string()?;
        self.expect(Token::Close)?;
        let regex_value = |v: &str| {
            if let Some(inner) = v.strip_prefix("^(?:").and_then(|v| v.strip_suffix(")$")) {
                Some(Pattern::Regex(inner.to_string()))
            } else {
                v.strip_prefix('^').and_then(unescape).map(Pattern::Prefix)
            }
        };
        let criterion = |on, name: String, value| Criterion { on, name, value };
        let parsed = match matcher.as_str() {
            "Header" => Some(criterion(Field::Header, name, Pattern::Exact(value))),
            "Query" => Some(criterion(Field::Query, name, Pattern::Exact(value))),
            "HeaderRegexp" if name == "Cookie" => parse_cookie(&value),
            "HeaderRegexp" => regex_value(&value).map(|p| criterion(Field::Header, name, p)),
            "QueryRegexp" => regex_value(&value).map(|p| criterion(Field::Query, name, p)),
            _ => None,
        };
        parsed.ok_or_else(|| format!("`{matcher}` is not a matcher canaryd writes"))
    }
}

/// The text [`regex::escape`] made `escaped` from, if it did.
fn unescape(escaped: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    (regex::escape(&out) == escaped).then_some(out)
}

/// The cookie criterion [`cookie_regex`] wrote as `regex`, if it did.
fn parse_cookie(regex: &str) -> Option<Criterion> {
    let rest = regex.strip_prefix(r"(?:^|;)\s*")?;
    let (name, value) = rest.split_once(r"\s*=\s*")?;
    let name = unescape(name)?;
    let value = match value.strip_suffix(COOKIE_TAIL) {
        Some(whole) => match whole.strip_prefix("(?:").and_then(|w| w.strip_suffix(')')) {
            Some(r) => Pattern::Regex(r.to_string()),
            None => Pattern::Exact(unescape(whole)?),
        },
        None => Pattern::Prefix(unescape(value)?),
    };
    Some(Criterion {
        on: Field::Cookie,
        name,
        value,
    })
}

/// The matches of the rule `whole`, written by [`rule`] in front of a router with rule
/// `user_rule`; why not, when it was not.
pub fn parse_rule(whole: &str, user_rule: &str) -> Result<Vec<Match>, String> {
    let ours = whole
        .strip_prefix(&format!("({user_rule}) && ("))
        .and_then(|r| r.strip_suffix(')'))
        .ok_or("its rule does not begin with its router's rule")?;
    let mut parser = Parser {
        tokens: tokens(ours)?,
        at: 0,
    };
    let matches = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(format!("unexpected text at token {}", parser.at));
    }
    if rule(user_rule, &matches) != whole {
        return Err("its rule is not written as canaryd writes it".into());
    }
    Ok(matches)
}

/// A user's router, as Traefik's raw data describes it (`name@provider` → description).
pub struct UserRouter<'a> {
    pub name: &'a str,
    pub info: &'a Value,
}

impl UserRouter<'_> {
    fn provider(&self) -> &str {
        self.name.rsplit_once('@').map_or("", |(_, p)| p)
    }

    fn rule(&self) -> &str {
        self.info.get("rule").and_then(Value::as_str).unwrap_or("")
    }

    /// Its priority as Traefik routes by it: its own, else its rule's length.
    fn priority(&self) -> i64 {
        match self.info.get("priority").and_then(Value::as_i64) {
            Some(p) if p != 0 => p,
            _ => i64::try_from(self.rule().len()).unwrap_or(i64::MAX),
        }
    }

    /// Why canaryd cannot stand in front of it, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        match self.info.get("ruleSyntax").and_then(Value::as_str) {
            Some("v2") => Err(format!(
                "router `{}` uses `ruleSyntax: v2`; canaryd writes v3 rules in front of it",
                self.name
            )),
            _ => Ok(()),
        }
    }

    /// `names` qualified with this router's provider where they are not.
    fn qualified(&self, names: &Value) -> Value {
        let qualify = |n: &Value| match n.as_str() {
            Some(s) if !s.contains('@') => Value::String(format!("{s}@{}", self.provider())),
            _ => n.clone(),
        };
        names
            .as_array()
            .map_or(Value::Null, |a| a.iter().map(qualify).collect())
    }
}

impl UserRouter<'_> {
    fn entry_points(&self) -> BTreeSet<&str> {
        self.info
            .get("entryPoints")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// Whether canaryd's `count` routers may stand just above `user` (priorities `p + 1` to
/// `p + count`): not when another router on one of its entry points has a priority there,
/// for a request both rules fit would then go to the canary instead of that router's service.
/// Why not, naming the router, when there is no room.
pub fn room_above(
    user: &UserRouter<'_>,
    routers: &BTreeMap<String, Value>,
    count: usize,
) -> Result<(), String> {
    let p = user.priority();
    let top = p.saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
    let ours = user.entry_points();
    let crowded: Vec<String> = routers
        .iter()
        .filter(|(name, _)| !name.starts_with(PREFIX) && name.as_str() != user.name)
        .map(|(name, info)| UserRouter { name, info })
        .filter(|other| {
            let q = other.priority();
            // No entry points named: Traefik puts the router on every default one.
            let shared = ours.is_empty()
                || other.entry_points().is_empty()
                || !other.entry_points().is_disjoint(&ours);
            shared && q > p && q <= top
        })
        .map(|other| format!("`{}` (priority {})", other.name, other.priority()))
        .collect();
    if crowded.is_empty() {
        return Ok(());
    }
    Err(format!(
        "routes go in routers at priorities {} to {top}, just above `{}` ({p}), where {} \
         would lose requests both rules fit to the canary; give `{}` a priority below {} (or \
         the other routers one above {top})",
        p + 1,
        user.name,
        crowded.join(", "),
        user.name,
        p.saturating_sub(i64::try_from(count).unwrap_or(0)).max(1),
    ))
}

/// The user's routers that send requests to `service@file`, by name, canaryd's own left out.
pub fn user_routers<'a>(
    routers: &'a BTreeMap<String, Value>,
    service: &str,
) -> Vec<UserRouter<'a>> {
    let target = format!("{service}@file");
    routers
        .iter()
        .filter(|(name, _)| !name.starts_with(PREFIX))
        .map(|(name, info)| UserRouter { name, info })
        .filter(|u| {
            let to = u.info.get("service").and_then(Value::as_str).unwrap_or("");
            match to.contains('@') {
                true => to == target,
                false => format!("{to}@{}", u.provider()) == target,
            }
        })
        .collect()
}

/// The router for route `index` of `count` of `service` in front of `user`, sending to the
/// canary's side header when `canary`.
pub fn router_config(
    service: &str,
    index: usize,
    count: usize,
    route: &Route,
    user: &UserRouter<'_>,
    canary: bool,
) -> Value {
    let mut out = Map::new();
    let info = user.info;
    if let Some(e) = info.get("entryPoints") {
        out.insert("entryPoints".into(), e.clone());
    }
    let mut middlewares = match info.get("middlewares") {
        Some(m) => user.qualified(m).as_array().cloned().unwrap_or_default(),
        None => Vec::new(),
    };
    middlewares.push(Value::String(format!(
        "{}@file",
        side_middleware(service, canary)
    )));
    out.insert("middlewares".into(), Value::Array(middlewares));
    out.insert(
        "service".into(),
        Value::String(format!("{service}-{}", route.backend)),
    );
    out.insert(
        "rule".into(),
        Value::String(rule(user.rule(), &route.matches)),
    );
    let above = i64::try_from(count - index).unwrap_or(i64::MAX);
    out.insert(
        "priority".into(),
        json!(user.priority().saturating_add(above)),
    );
    if let Some(tls) = info.get("tls") {
        let mut tls = tls.clone();
        // TLS options are named in the user's provider, like middlewares.
        if let Some(options) = tls.get_mut("options")
            && let Some(q) = user.qualified(&json!([options.clone()])).get(0)
        {
            *options = q.clone();
        }
        out.insert("tls".into(), tls);
    }
    if let Some(o) = info.get("observability") {
        out.insert("observability".into(), o.clone());
    }
    if let Some(p) = info.get("parentRefs") {
        out.insert("parentRefs".into(), user.qualified(p));
    }
    Value::Object(out)
}

/// The routes of `service` read back from Traefik's raw data (`routers`, `middlewares`, by
/// qualified name), in order; each one that is not exactly what canaryd writes is marked so
/// that it differs from any route canaryd sets (see the module docs).
pub fn read_back(
    service: &str,
    routers: &BTreeMap<String, Value>,
    middlewares: &BTreeMap<String, Value>,
) -> Vec<Route> {
    let users = user_routers(routers, service);
    let ours: Vec<(RouterKey, &Value)> = routers
        .iter()
        .filter_map(|(name, info)| {
            let local = name.strip_suffix("@file")?;
            let key = parse_router_name(local)?;
            (key.service == service).then_some((key, info))
        })
        .collect();
    let count = ours.iter().map(|(k, _)| k.index + 1).max().unwrap_or(0);
    let mut by_index: BTreeMap<usize, Vec<Seen<'_>>> = BTreeMap::new();
    for (key, info) in &ours {
        let (route, why) = read_one(service, key, info, count, &users, middlewares);
        by_index.entry(key.index).or_default().push(Seen {
            route,
            why,
            user: key.user.as_str(),
        });
    }
    let all_users: BTreeSet<&str> = users.iter().map(|u| u.name).collect();
    by_index
        .into_values()
        .map(|copies| {
            let first = &copies[0].route;
            let mut why: Option<String> = copies.iter().find_map(|c| c.why.clone());
            if why.is_none() && copies.iter().any(|c| c.route != *first) {
                why = Some("its routers in front of different routers differ".into());
            }
            let covered: BTreeSet<&str> = copies.iter().map(|c| c.user).collect();
            if why.is_none()
                && let Some(missing) = all_users.difference(&covered).next()
            {
                why = Some(format!("it is missing in front of router `{missing}`"));
            }
            let mut route = first.clone();
            if let Some(why) = why {
                route.name = format!("{} (not as canaryd wrote it: {why})", route.name);
            }
            route
        })
        .collect()
}

/// One route router of canaryd's, read back.
struct Seen<'a> {
    route: Route,
    /// Why it is not what canaryd would write now, if it is not.
    why: Option<String>,
    /// The user's router it stands in front of.
    user: &'a str,
}

/// One of canaryd's route routers read back, and why it is not what canaryd writes, if not.
fn read_one(
    service: &str,
    key: &RouterKey,
    info: &Value,
    count: usize,
    users: &[UserRouter<'_>],
    middlewares: &BTreeMap<String, Value>,
) -> (Route, Option<String>) {
    let target = info.get("service").and_then(Value::as_str).unwrap_or("");
    let local = target.strip_suffix("@file").unwrap_or(target);
    let backend = local
        .strip_prefix(&format!("{service}-"))
        .unwrap_or(local)
        .to_string();
    let user = users.iter().find(|u| u.name == key.user);
    let user_rule = user.map_or("", |u| u.rule());
    let rule = info.get("rule").and_then(Value::as_str).unwrap_or("");
    let parsed = parse_rule(rule, user_rule);
    let route = Route {
        name: key.route.clone(),
        matches: parsed.clone().unwrap_or_default(),
        backend,
    };
    let why = (|| {
        let Some(user) = user else {
            return Some(format!("router `{}` no longer serves it", key.user));
        };
        if let Err(e) = parsed {
            return Some(e);
        }
        match info.get("status").and_then(Value::as_str) {
            Some("enabled") | None => {}
            Some(status) => {
                let err = info.get("error").or_else(|| info.get("err"));
                return Some(format!(
                    "traefik has it {status}{}",
                    err.map(|e| format!(": {e}")).unwrap_or_default()
                ));
            }
        }
        let mut live = info.clone();
        if let Some(live) = live.as_object_mut() {
            for extra in ["status", "using", "error", "err"] {
                live.remove(extra);
            }
        }
        let side = [true, false]
            .into_iter()
            .find(|&canary| router_config(service, key.index, count, &route, user, canary) == live);
        let Some(canary) = side else {
            return Some("its configuration differs".into());
        };
        let name = format!("{}@file", side_middleware(service, canary));
        let mut m = middlewares.get(&name).cloned().unwrap_or(Value::Null);
        if let Some(m) = m.as_object_mut() {
            m.remove("status");
            m.remove("usedBy");
        }
        (m != side_middleware_config(service, canary))
            .then(|| format!("middleware `{name}` differs"))
    })();
    (route, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_refuse_to_stand_above_a_router_they_would_rob() {
        let routers: BTreeMap<String, Value> = serde_json::from_value(json!({
            "web@file": {"entryPoints": ["web"], "service": "checkout", "rule": "PathPrefix(`/`)", "status": "enabled"},
            "api@file": {"entryPoints": ["web"], "service": "api", "rule": "PathPrefix(`/api`)", "status": "enabled"},
            "admin@file": {"entryPoints": ["admin"], "service": "api", "rule": "PathPrefix(`/apix`)", "status": "enabled"},
        }))
        .unwrap();
        let users = user_routers(&routers, "checkout");
        // `PathPrefix(`/`)` is 15 long, `PathPrefix(`/api`)` 18: three routes reach 18.
        assert!(room_above(&users[0], &routers, 2).is_ok());
        let why = room_above(&users[0], &routers, 3).unwrap_err();
        assert!(why.contains("`api@file` (priority 18)"), "{why}");
        // On another entry point it is no rival.
        assert!(!why.contains("admin@file"), "{why}");
    }

    fn c(on: Field, name: &str, value: Pattern) -> Criterion {
        Criterion {
            on,
            name: name.to_string(),
            value,
        }
    }

    fn one(c: Criterion) -> Vec<Match> {
        vec![Match { all: vec![c] }]
    }

    #[test]
    fn names_round_trip_and_cannot_be_confused() {
        let name = router_name("check:out", 3, "testers & co", "checkout@file");
        assert_eq!(
            name,
            "canaryd:check%3Aout:3:testers%20%26%20co:checkout%40file"
        );
        assert_eq!(
            parse_router_name(&name),
            Some(RouterKey {
                service: "check:out".into(),
                index: 3,
                route: "testers & co".into(),
                user: "checkout@file".into(),
            })
        );
        assert!(is_ours(&name, "check:out"));
        assert!(!is_ours(&name, "check"));
        assert!(is_ours(&side_middleware("check:out", true), "check:out"));
        for bad in [
            "canaryd:a:01:r:u",
            "canaryd:a:x:r:u",
            "canaryd:a:1:r",
            "canaryd:a:1:r:u:v",
            "canaryd:a:1:r:%zz",
            "canaryd:a:1:r:%61",
            "other:a:1:r:u",
        ] {
            assert_eq!(parse_router_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn criteria_render_as_traefik_matchers() {
        let table = [
            (
                c(Field::Header, "X-Canary", Pattern::Exact("always".into())),
                "Header(`X-Canary`, `always`)",
            ),
            (
                c(Field::Header, "X-Canary", Pattern::Prefix("a.b".into())),
                r"HeaderRegexp(`X-Canary`, `^a\.b`)",
            ),
            (
                c(Field::Header, "X-Canary", Pattern::Regex("b|c".into())),
                "HeaderRegexp(`X-Canary`, `^(?:b|c)$`)",
            ),
            (
                c(Field::Query, "app", Pattern::Exact("ios".into())),
                "Query(`app`, `ios`)",
            ),
            (
                c(
                    Field::Query,
                    "app",
                    Pattern::Regex("ios|android-[0-9]+".into()),
                ),
                "QueryRegexp(`app`, `^(?:ios|android-[0-9]+)$`)",
            ),
            (
                c(Field::Cookie, "beta", Pattern::Exact("on".into())),
                r"HeaderRegexp(`Cookie`, `(?:^|;)\s*beta\s*=\s*on\s*(?:;|$)`)",
            ),
            (
                c(Field::Cookie, "beta", Pattern::Prefix("o".into())),
                r"HeaderRegexp(`Cookie`, `(?:^|;)\s*beta\s*=\s*o`)",
            ),
            (
                c(Field::Header, "X-Q", Pattern::Exact("a`b\"c\\".into())),
                r#"Header(`X-Q`, "a`b\"c\\")"#,
            ),
            (
                c(Field::Query, "q", Pattern::Regex("a\nb\u{85}".into())),
                r#"QueryRegexp(`q`, "^(?:a\u000ab\u0085)$")"#,
            ),
        ];
        for (criterion, want) in table {
            let m = one(criterion);
            assert_eq!(matches_rule(&m), want);
            let whole = rule("Host(`shop`)", &m);
            assert_eq!(parse_rule(&whole, "Host(`shop`)"), Ok(m), "{whole}");
        }
    }

    #[test]
    fn matches_are_ored_and_criteria_anded() {
        let m = vec![
            Match {
                all: vec![
                    c(Field::Header, "X-A", Pattern::Exact("1".into())),
                    c(Field::Query, "b", Pattern::Prefix("2".into())),
                ],
            },
            Match {
                all: vec![c(Field::Cookie, "c", Pattern::Exact("3".into()))],
            },
        ];
        let whole = rule("PathPrefix(`/`)", &m);
        assert_eq!(
            whole,
            r"(PathPrefix(`/`)) && ((Header(`X-A`, `1`) && QueryRegexp(`b`, `^2`)) || HeaderRegexp(`Cookie`, `(?:^|;)\s*c\s*=\s*3\s*(?:;|$)`))"
        );
        assert_eq!(parse_rule(&whole, "PathPrefix(`/`)"), Ok(m.clone()));
        // One match of two criteria needs no parentheses.
        let and = vec![m[0].clone()];
        let whole = rule("PathPrefix(`/`)", &and);
        assert!(whole.ends_with("&& (Header(`X-A`, `1`) && QueryRegexp(`b`, `^2`))"));
        assert_eq!(parse_rule(&whole, "PathPrefix(`/`)"), Ok(and));
    }

    #[test]
    fn the_cookie_regex_holds_to_one_cookie() {
        let m = one(c(Field::Cookie, "beta", Pattern::Exact("on".into())));
        let rule = matches_rule(&m);
        let re = rule
            .strip_prefix("HeaderRegexp(`Cookie`, `")
            .and_then(|r| r.strip_suffix("`)"))
            .unwrap();
        // Rust's regex reads this subset as Go's does.
        let re = regex::Regex::new(re).unwrap();
        for fits in [
            "beta=on",
            "a=1; beta=on",
            "beta=on;a=1",
            "a=1;beta = on ; b=2",
        ] {
            assert!(re.is_match(fits), "{fits}");
        }
        for not in ["xbeta=on", "beta=one", "beta=o", "a=beta=on", "betaon"] {
            assert!(!re.is_match(not), "{not}");
        }
    }

    #[test]
    fn a_cookie_regex_is_held_to_one_cookie_and_reads_back() {
        let m = one(c(Field::Cookie, "beta", Pattern::Regex("o.*1|x;y".into())));
        let whole = rule("Host(`a`)", &m);
        assert_eq!(parse_rule(&whole, "Host(`a`)"), Ok(m.clone()));
        let text = matches_rule(&m);
        let (loose, strict) = text.split_once(" && ").unwrap();
        let pattern = |matcher: &str| {
            let inner = matcher
                .strip_prefix("HeaderRegexp(`Cookie`, `")
                .and_then(|r| r.strip_suffix("`)"))
                .unwrap()
                .to_string();
            regex::Regex::new(&inner).unwrap()
        };
        let (loose, strict) = (pattern(loose), pattern(strict));
        // Both must fit, as Traefik ANDs them.
        let fits = |header: &str| loose.is_match(header) && strict.is_match(header);
        for yes in ["beta=oX1", "a=2; beta=o1; c=3", "beta=o1 ;c"] {
            assert!(fits(yes), "{yes}");
        }
        // `.*` cannot run into the next cookie, and `x;y` cannot fit one value.
        for no in ["beta=oX; y=1", "xbeta=o1", "beta=o", "beta=x;y", "beta=o1x"] {
            assert!(!fits(no), "{no}");
        }
        // The anchors that whole-value matching implies are kept as written.
        let anchored = one(c(Field::Cookie, "b", Pattern::Regex("^on$".into())));
        assert_eq!(
            parse_rule(&rule("Host(`a`)", &anchored), "Host(`a`)"),
            Ok(anchored)
        );
    }

    #[test]
    fn what_traefik_cannot_hold_is_refused_and_foreign_rules_are_not_parsed() {
        assert!(check(&c(Field::Cookie, "b", Pattern::Regex("o.*".into()))).is_ok());
        assert!(check(&c(Field::Cookie, "b", Pattern::Regex("^o.*$".into()))).is_ok());
        assert!(check(&c(Field::Cookie, "b", Pattern::Regex(r"o\b".into()))).is_err());
        assert!(check(&c(Field::Cookie, "b", Pattern::Regex("(?-u:\\xff)".into()))).is_err());
        assert!(check(&c(Field::Cookie, "b", Pattern::Exact("a;b".into()))).is_err());
        assert!(check(&c(Field::Header, "a b", Pattern::Exact("x".into()))).is_err());
        assert!(check(&c(Field::Query, "", Pattern::Exact("x".into()))).is_err());
        assert!(check(&c(Field::Header, "X", Pattern::Regex("(".into()))).is_err());
        assert!(check(&c(Field::Query, "q x", Pattern::Exact("x".into()))).is_ok());
        let user = "Host(`a`)";
        for foreign in [
            "Host(`a`)",
            "(Host(`b`)) && (Header(`X`, `1`))",
            "(Host(`a`)) && (Method(`GET`))",
            "(Host(`a`)) && (HeaderRegexp(`X`, `a.b`))",
            "(Host(`a`)) && (Header(`X`, `1`) && Header(`Y`, `2`) || Header(`Z`, `3`))",
            "(Host(`a`)) && (Header(`X`,`1`))",
            "(Host(`a`)) && (HeaderRegexp(`Cookie`, `beta=on`))",
        ] {
            assert!(parse_rule(foreign, user).is_err(), "{foreign}");
        }
    }

    fn raw(json: &str) -> BTreeMap<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn routers_are_written_in_front_of_each_user_router_and_read_back() {
        let routers = raw(r#"{
            "web@file": {"entryPoints": ["web"], "service": "checkout", "rule": "PathPrefix(`/`)", "priority": 15, "middlewares": ["auth@file"], "status": "enabled"},
            "tls@docker": {"entryPoints": ["websecure"], "service": "checkout@file", "rule": "Host(`shop`)", "priority": 100, "middlewares": ["strip"], "tls": {}, "status": "enabled"},
            "other@file": {"service": "cart", "rule": "Host(`cart`)", "status": "enabled"}
        }"#);
        let users = user_routers(&routers, "checkout");
        assert_eq!(
            users.iter().map(|u| u.name).collect::<Vec<_>>(),
            ["tls@docker", "web@file"]
        );
        let route = |name: &str, value: &str| Route {
            name: name.into(),
            matches: one(c(Field::Header, "X-Canary", Pattern::Exact(value.into()))),
            backend: "green".into(),
        };
        let routes = [route("first", "a"), route("second", "b")];
        let mut all = routers.clone();
        for (i, r) in routes.iter().enumerate() {
            for u in &users {
                let mut config = router_config("checkout", i, 2, r, u, true);
                config["status"] = json!("enabled");
                let name = router_name("checkout", i, &r.name, u.name);
                all.insert(format!("{name}@file"), config);
            }
        }
        let first_tls =
            &all[&format!("{}@file", router_name("checkout", 0, "first", "tls@docker"))];
        assert_eq!(first_tls["priority"], json!(102));
        assert_eq!(
            first_tls["middlewares"],
            json!(["strip@docker", "canaryd:checkout:canary@file"])
        );
        assert_eq!(first_tls["tls"], json!({}));
        assert_eq!(first_tls["service"], json!("checkout-green"));
        let side = BTreeMap::from([(
            "canaryd:checkout:canary@file".to_string(),
            side_middleware_config("checkout", true),
        )]);
        assert_eq!(read_back("checkout", &all, &side), routes.to_vec());
        assert!(read_back("cart", &all, &side).is_empty());

        // A hand edit of one copy, a missing copy, an edited middleware: all differ.
        let mut edited = all.clone();
        let key = format!("{}@file", router_name("checkout", 1, "second", "web@file"));
        edited.get_mut(&key).unwrap()["priority"] = json!(1);
        let seen = read_back("checkout", &edited, &side);
        assert_eq!(seen[0], routes[0]);
        assert!(
            seen[1].name.starts_with("second (not as canaryd wrote it"),
            "{seen:?}"
        );
        let mut missing = all.clone();
        missing.remove(&key);
        assert_ne!(read_back("checkout", &missing, &side), routes.to_vec());
        let mut other_side = side.clone();
        other_side.insert(
            "canaryd:checkout:canary@file".into(),
            side_middleware_config("checkout", false),
        );
        assert_ne!(read_back("checkout", &all, &other_side), routes.to_vec());
        // The user changed their rule: canaryd's copies are stale.
        let mut changed = all.clone();
        changed.get_mut("web@file").unwrap()["rule"] = json!("PathPrefix(`/shop`)");
        assert_ne!(read_back("checkout", &changed, &side), routes.to_vec());
    }
}
