//! What each router kind can express of a route's criterion, beyond what every kind shares
//! ([`crate::core::spec::RouterKind::can_route`] and friends): names a router cannot read,
//! regexes it cannot hold. Lint refuses these with the spec's line; the drivers refuse them
//! again at apply, before touching the router.

use crate::core::model::{Criterion, Field, Pattern};
use crate::core::spec::RouterKind;

/// Why `kind` cannot match `c`, if it cannot.
pub fn refusal(kind: RouterKind, c: &Criterion) -> Option<String> {
    let word = |ch: char| ch.is_ascii_alphanumeric() || ch == '_';
    match kind {
        RouterKind::Haproxy => {
            if !haproxy_name(&c.name) {
                return Some(format!(
                    "haproxy's snippet names `{}` in its configuration: letters, digits, `_`, `-` \
                     and `.` only",
                    c.name
                ));
            }
            match &c.value {
                Pattern::Regex(r) if r.chars().any(|ch| ch.is_whitespace() || ch.is_control()) => {
                    Some(format!(
                        "regex `{r}` holds whitespace, which haproxy's runtime API splits on; \
                         write `\\x20` for a space"
                    ))
                }
                _ => None,
            }
        }
        RouterKind::Nginx => {
            let readable = match c.on {
                Field::Header => c.name.chars().all(|ch| word(ch) || ch == '-'),
                Field::Cookie | Field::Query => c.name.chars().all(word),
            };
            if c.name.is_empty() || !readable {
                return Some(format!(
                    "nginx reads `{}` through a variable whose name holds letters, digits and `_` \
                     only (`-` too in a header name)",
                    c.name
                ));
            }
            match &c.value {
                Pattern::Regex(r) if anchors_to_subject(r) => Some(format!(
                    "regex `{r}`: nginx matches it inside a key of several lines, where `\\A`, \
                     `\\z`, `\\Z` and `\\G` would not stand at the value's ends (`^` and `$` do)"
                )),
                _ => None,
            }
        }
        RouterKind::Traefik => match (&c.on, &c.value) {
            (Field::Cookie, Pattern::Exact(v) | Pattern::Prefix(v)) if v.contains(';') => Some(
                format!("cookie `{}`: a cookie value cannot hold `;`", c.name),
            ),
            (Field::Cookie, Pattern::Regex(r)) => cookie_regex_refusal(r).map(|why| {
                format!(
                    "cookie `{}` by regex `{r}`: {why}, which traefik (no cookie matcher) cannot \
                     hold to one cookie's value",
                    c.name
                )
            }),
            _ => None,
        },
        RouterKind::Embedded | RouterKind::Caddy | RouterKind::GatewayApi => None,
    }
}

/// Whether `name` can stand as it is in HAProxy's configuration (a fetch's argument, a map
/// key's prefix): letters, digits, `_`, `-` and `.`.
pub fn haproxy_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Whether `regex` uses `\A`, `\z`, `\Z` or `\G`.
pub fn anchors_to_subject(regex: &str) -> bool {
    let b = regex.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\\' {
            if matches!(b[i + 1], b'A' | b'z' | b'Z' | b'G') {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// Why a cookie regex cannot be narrowed to one cookie's value: an assertion inside the value
/// (other than a leading `^` and a trailing `$`), or bytes (`(?-u)`).
fn cookie_regex_refusal(r: &str) -> Option<String> {
    use regex_syntax::hir::{Class, Hir, HirKind, Look};
    let hir = regex_syntax::Parser::new().parse(r).ok()?;
    fn inner(hir: &Hir) -> Option<String> {
        match hir.kind() {
            HirKind::Look(look) => Some(format!("it asserts {look:?} inside the value")),
            HirKind::Class(Class::Bytes(_)) => Some("it matches bytes (`(?-u)`)".to_string()),
            HirKind::Literal(l) if std::str::from_utf8(&l.0).is_err() => {
                Some("it matches bytes that are not UTF-8 (`(?-u)`)".to_string())
            }
            HirKind::Repetition(rep) => inner(&rep.sub),
            HirKind::Capture(cap) => inner(&cap.sub),
            HirKind::Concat(parts) | HirKind::Alternation(parts) => parts.iter().find_map(inner),
            _ => None,
        }
    }
    match hir.kind() {
        HirKind::Look(Look::Start | Look::End) => None,
        HirKind::Concat(parts) => {
            let start = usize::from(matches!(
                parts.first().map(Hir::kind),
                Some(HirKind::Look(Look::Start))
            ));
            let end = parts.len()
                - usize::from(matches!(
                    parts.last().map(Hir::kind),
                    Some(HirKind::Look(Look::End))
                ));
            parts[start..end.max(start)].iter().find_map(inner)
        }
        _ => inner(&hir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(on: Field, name: &str, value: Pattern) -> Criterion {
        Criterion {
            on,
            name: name.to_string(),
            value,
        }
    }

    #[test]
    fn each_kind_refuses_what_it_cannot_read_and_no_more() {
        let header = |name: &str| c(Field::Header, name, Pattern::Exact("1".into()));
        let regex = |on: Field, r: &str| c(on, "tier", Pattern::Regex(r.into()));
        assert!(refusal(RouterKind::Nginx, &header("X-Canary")).is_none());
        assert!(refusal(RouterKind::Nginx, &header("X.Canary")).is_some());
        assert!(refusal(RouterKind::Haproxy, &header("X.Canary")).is_none());
        assert!(refusal(RouterKind::Haproxy, &header("X:Canary")).is_some());
        assert!(refusal(RouterKind::Haproxy, &regex(Field::Header, "a b")).is_some());
        assert!(refusal(RouterKind::Nginx, &regex(Field::Header, r"\Agold")).is_some());
        assert!(refusal(RouterKind::Nginx, &regex(Field::Header, r"^gold$")).is_none());
        assert!(refusal(RouterKind::Traefik, &regex(Field::Cookie, r"^g.*d$")).is_none());
        assert!(refusal(RouterKind::Traefik, &regex(Field::Cookie, r"\bgold")).is_some());
        assert!(refusal(RouterKind::Traefik, &regex(Field::Header, r"\bgold")).is_none());
        let semicolon = c(Field::Cookie, "tier", Pattern::Exact("a;b".into()));
        assert!(refusal(RouterKind::Traefik, &semicolon).is_some());
        for kind in [
            RouterKind::Embedded,
            RouterKind::Caddy,
            RouterKind::GatewayApi,
        ] {
            assert!(refusal(kind, &header("X.Canary")).is_none());
        }
    }
}
