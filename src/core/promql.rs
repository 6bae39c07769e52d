//! PromQL query templates: the `{{ canary }}`-style variables a metric's query may use, rendered safely into PromQL, and the built-in queries per router.
//!
//! # Variables
//!
//! | variable | value |
//! |---|---|
//! | `{{ canary }}` | the canary backend's name |
//! | `{{ stable }}` | the stable backend's name |
//! | `{{ service }}` | the rollout's service (HAProxy: the `backend`; Traefik: the weighted service) |
//! | `{{ target }}` | the side being measured: the canary for threshold checks; the canary or the stable for the canary-versus-baseline judge |
//! | `{{ interval }}` | the metric's window as a Prometheus duration: `30s`, `1m30s`, `1500ms` |
//!
//! Whitespace inside the braces is optional (`{{canary}}`). Anything else between `{{` and `}}`
//! is an error, and so is a `{{` without its `}}`; [`check`] finds them for `canaryd lint` with
//! the byte offset of the offending text.
//!
//! # Escaping
//!
//! Names are substituted inside PromQL double-quoted string literals (`{server="{{ target }}"}`),
//! so every string value is escaped for one: `\` → `\\`, `"` → `\"`, newline → `\n`, other
//! control characters → `\uXXXX`. A value can therefore never end the string early or inject
//! PromQL. Values are **string-escaped, not regex-escaped**: in a regex matcher
//! (`{pod=~"{{ canary }}-.*"}`) a name like `api.v2` matches `apiXv2` too. Write
//! `{{ canary | regex }}` there: the value is regex-quoted (RE2's `\.+*?()|[]{}^$`), then
//! string-escaped, so `api.v2` becomes `api\\.v2` in the query text and matches only itself.
//! The `regex` filter applies to names, not to `{{ interval }}`.
//!
//! # Intervals
//!
//! `{{ interval }}` is rounded to the nearest millisecond (Prometheus' resolution), at least
//! `1ms`, and written with Prometheus' units (`d`, `h`, `m`, `s`, `ms`, largest first, all of
//! which Prometheus 2.x accepts chained: `1m30s500ms`). A range shorter than about twice the
//! scrape interval holds fewer than two samples of a series, and `rate()`/`increase()` over it
//! come out empty: the metric then has no data. Use at least 2× (better 4×) the scrape interval.

use std::fmt::Write as _;
use std::time::Duration;

/// Values for the variables of one query.
#[derive(Clone, Copy, Debug)]
pub struct Vars<'a> {
    pub canary: &'a str,
    pub stable: &'a str,
    pub service: &'a str,
    /// The side being measured: the canary for threshold checks; the canary or the stable for
    /// the canary-versus-baseline judge.
    pub target: &'a str,
    pub interval: Duration,
}

/// The variable names a query may use.
pub const VARIABLES: [&str; 5] = ["canary", "stable", "service", "target", "interval"];

/// What is wrong with a query's template syntax. `offset` is a byte offset into the query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{` at byte {offset} is never closed with `}}}}`")]
    Unclosed { offset: usize },
    #[error(
        "`{{{{ }}}}` at byte {offset} names no variable (use one of: canary, stable, service, target, interval)"
    )]
    Empty { offset: usize },
    #[error(
        "unknown variable `{name}` at byte {offset} (use one of: canary, stable, service, target, interval)"
    )]
    Unknown { name: String, offset: usize },
    #[error("unknown filter `{filter}` at byte {offset} (the only filter is `regex`, for names)")]
    UnknownFilter { filter: String, offset: usize },
    #[error(
        "`{{{{ interval | regex }}}}` at byte {offset}: the `regex` filter applies to names only"
    )]
    RegexOfInterval { offset: usize },
}

impl TemplateError {
    /// The byte offset in the query where the problem starts.
    pub fn offset(&self) -> usize {
        match self {
            TemplateError::Unclosed { offset }
            | TemplateError::Empty { offset }
            | TemplateError::Unknown { offset, .. }
            | TemplateError::UnknownFilter { offset, .. }
            | TemplateError::RegexOfInterval { offset } => *offset,
        }
    }
}

/// One variable of a query, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Canary,
    Stable,
    Service,
    Target,
    Interval,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    None,
    Regex,
}

/// A piece of a parsed query: text as it is, or a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece<'q> {
    Text(&'q str),
    Var(Var, Filter),
}

/// Splits `query` into text and variables, or says what is wrong first.
fn parse(query: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = 0;
    while let Some(found) = query[rest..].find("{{") {
        let open = rest + found;
        if open > rest {
            pieces.push(Piece::Text(&query[rest..open]));
        }
        let inner_start = open + 2;
        let Some(len) = query[inner_start..].find("}}") else {
            return Err(TemplateError::Unclosed { offset: open });
        };
        let inner = &query[inner_start..inner_start + len];
        pieces.push(parse_var(inner, inner_start, open)?);
        rest = inner_start + len + 2;
    }
    if rest < query.len() {
        pieces.push(Piece::Text(&query[rest..]));
    }
    Ok(pieces)
}

/// Parses `name` or `name | filter`; `at` is `inner`'s offset in the query, `open` the `{{`'s.
fn parse_var(inner: &str, at: usize, open: usize) -> Result<Piece<'static>, TemplateError> {
    // The offset of a trimmed part of `inner`, within the query.
    let offset_of = |part: &str| at + (part.as_ptr() as usize - inner.as_ptr() as usize);
    let (name_part, filter_part) = match inner.split_once('|') {
        Some((n, f)) => (n, Some(f)),
        None => (inner, None),
    };
    let name = name_part.trim();
    if name.is_empty() {
        return Err(TemplateError::Empty { offset: open });
    }
    let var = match name {
        "canary" => Var::Canary,
        "stable" => Var::Stable,
        "service" => Var::Service,
        "target" => Var::Target,
        "interval" => Var::Interval,
        _ => {
            return Err(TemplateError::Unknown {
                name: name.to_string(),
                offset: offset_of(name),
            });
        }
    };
    let filter = match filter_part.map(str::trim) {
        None => Filter::None,
        Some("regex") if var == Var::Interval => {
            return Err(TemplateError::RegexOfInterval { offset: open });
        }
        Some("regex") => Filter::Regex,
        Some(other) => {
            return Err(TemplateError::UnknownFilter {
                filter: other.to_string(),
                offset: if other.is_empty() {
                    open
                } else {
                    offset_of(other)
                },
            });
        }
    };
    Ok(Piece::Var(var, filter))
}

/// Renders `query` with `vars`. Names are escaped for a PromQL double-quoted string (and
/// regex-quoted first with `| regex`); the interval is a Prometheus duration.
pub fn render(query: &str, vars: &Vars<'_>) -> Result<String, TemplateError> {
    let pieces = parse(query)?;
    let mut out = String::with_capacity(query.len() + 32);
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(Var::Interval, _) => out.push_str(&duration(vars.interval)),
            Piece::Var(var, filter) => {
                let value = match var {
                    Var::Canary => vars.canary,
                    Var::Stable => vars.stable,
                    Var::Service => vars.service,
                    Var::Target => vars.target,
                    Var::Interval => unreachable!("handled above"),
                };
                match filter {
                    Filter::None => escape_string(value, &mut out),
                    Filter::Regex => escape_string(&quote_regex(value), &mut out),
                }
            }
        }
    }
    Ok(out)
}

/// Checks a query's template syntax without values, for `canaryd lint`: the first problem,
/// with its byte offset.
pub fn check(query: &str) -> Result<(), TemplateError> {
    parse(query).map(|_| ())
}

/// A duration as Prometheus writes it, rounded to the nearest millisecond and at least `1ms`:
/// `30s`, `1m30s`, `1500ms` → `1s500ms`, `2d`.
pub fn duration(d: Duration) -> String {
    // Round half up to whole milliseconds.
    let millis = (d.as_nanos() + 500_000) / 1_000_000;
    let millis = u64::try_from(millis).unwrap_or(u64::MAX).max(1);
    crate::core::spec::duration::display(Duration::from_millis(millis)).to_string()
}

/// Appends `value` escaped for the inside of a PromQL double-quoted string.
fn escape_string(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                // Control characters are all in the BMP, so four hex digits suffice.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// The characters RE2 gives a meaning; Go's `regexp.QuoteMeta` escapes these.
const REGEX_META: &str = r"\.+*?()|[]{}^$";

/// `value` as an RE2 regex that matches exactly it (Go's `regexp.QuoteMeta`).
fn quote_regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if REGEX_META.contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Built-in PromQL per router, in the variables above; `{{ target }}` is the side measured.
///
/// Every query returns exactly one series (or none), and a target that served nothing in the
/// window comes out as "no data" (an empty answer or NaN, which the client turns into `None`),
/// never as a perfect success rate or zero errors. Rates are ratios in 0..=1 (Flagger's are
/// ×100); latencies are milliseconds.
///
/// Verified against HAProxy 2.6.12 (its built-in exporter, `USE_PROMEX`) and Traefik 3.7 by
/// `tests/it/prometheus.rs`.
///
/// # HAProxy
///
/// The exporter is a service in a frontend:
/// `http-request use-service prometheus-exporter if { path /metrics }`. A rollout's `service` is
/// the HAProxy `backend` (label `proxy`), its stable and canary are `server`s (label `server`).
/// Every server's series exist, at 0, from the moment HAProxy starts.
///
/// A request fails when the server answered 5xx (`haproxy_server_http_responses_total{code="5xx"}`)
/// **or** HAProxy could not get an answer from it: a refused or failed connection
/// (`haproxy_server_connection_errors_total`; HAProxy then answers 503) or a server that timed out
/// or aborted (`haproxy_server_response_errors_total`; HAProxy answers 504/502). HAProxy counts
/// those two only there, not among the server's 5xx responses, so a canary that hangs would
/// otherwise look like one without traffic. A response cut off after its headers counts once as
/// its status and once as a response error.
///
/// # Traefik
///
/// `--metrics.prometheus=true`, with the metrics on an entry point
/// (`--metrics.prometheus.entryPoint=metrics`). canaryd's Traefik driver writes one
/// `loadBalancer` child `<service>-<backend>@file` per backend under the weighted
/// `<service>@file`; only the children get `traefik_service_*` series (label `service`), the
/// weighted parent gets none. Traefik creates a series at the first request with a given
/// `code`/`method`/`protocol`, not at 0 beforehand:
///
/// - a target's 5xx series does not exist until its first 5xx, and its non-5xx series not until
///   its first success: each side of a ratio falls back to 0 (`or vector(0)`) while the target
///   has requests, so a healthy canary reads 0 errors and a broken one 0 success, not "no data";
/// - a new series shows in `rate()` only from its second sample, so a canary's first errors
///   show about one scrape later than with HAProxy (whose series exist at 0 from the start);
/// - Prometheus extrapolates a series born inside the window back towards zero, which recovers
///   its first scrape's count under steady traffic (the tests count exactly); a burst that
///   starts a series with many requests at once is undercounted.
///
/// Traefik answers 502/504 itself when the backend refuses or times out, under the child's
/// name, so those count as errors.
pub mod builtin {
    /// The routers with built-in queries.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Router {
        Haproxy,
        Traefik,
    }

    impl Router {
        pub const ALL: [Router; 2] = [Router::Haproxy, Router::Traefik];
    }

    /// The denominator of HAProxy's rates: every request the target was sent.
    macro_rules! haproxy_total {
        () => {
            concat!(
                "(",
                r#"sum(rate(haproxy_server_http_responses_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}]))"#,
                r#" + sum(rate(haproxy_server_connection_errors_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}]))"#,
                r#" + sum(rate(haproxy_server_response_errors_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}]))"#,
                ")",
            )
        };
    }

    /// HAProxy: share of the target's requests answered without a 5xx and without a
    /// connection or response error, over the interval. NaN (no data) when it had none.
    pub const HAPROXY_SUCCESS_RATE: &str = concat!(
        r#"sum(rate(haproxy_server_http_responses_total{proxy="{{ service }}",server="{{ target }}",code!="5xx"}[{{ interval }}]))"#,
        " / ",
        haproxy_total!(),
    );

    /// HAProxy: share of the target's requests answered 5xx or failed (connection refused,
    /// timeout, aborted), over the interval. NaN (no data) when it had none.
    pub const HAPROXY_ERROR_RATE: &str = concat!(
        "(",
        r#"sum(rate(haproxy_server_http_responses_total{proxy="{{ service }}",server="{{ target }}",code="5xx"}[{{ interval }}]))"#,
        r#" + sum(rate(haproxy_server_connection_errors_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}]))"#,
        r#" + sum(rate(haproxy_server_response_errors_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}]))"#,
        ") / ",
        haproxy_total!(),
    );

    /// HAProxy 2.6 has no latency histogram. This is the server's **average** response time in
    /// ms (`haproxy_server_response_time_average_seconds`: from sending the request to the
    /// server until its response headers, the `Tr` of HAProxy's logs), as Flagger's NGINX query
    /// is an average, not a p99. HAProxy averages over the server's **last 512 responses** (its
    /// HELP text says 1024), not over the interval, and after a start it divides by 512 until
    /// 512 responses were seen, so it reads low (e.g. ~40 % of the truth after 200 responses)
    /// until then. Milliseconds are whole (the exporter's resolution). Only defined while the
    /// target answered requests in the interval; else no data (a server that only refuses
    /// connections has no response time, and reads as no data, not as 0 ms).
    /// `haproxy_server_total_time_average_seconds` is not used: it adds the client's side
    /// (sending the response to a slow client), which is not the canary's doing; with the
    /// tests' fast client both read the same.
    pub const HAPROXY_LATENCY: &str = concat!(
        r#"(avg(haproxy_server_response_time_average_seconds{proxy="{{ service }}",server="{{ target }}"}) * 1000)"#,
        r#" and on() (sum(rate(haproxy_server_http_responses_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}])) > 0)"#,
    );

    /// HAProxy: requests the target was sent over the interval (answered, refused or timed
    /// out). `increase()` extrapolates to the window's edges: over a window of N scrape
    /// intervals the count can be off by up to about 1/N of it. 0 for a server without traffic.
    pub const HAPROXY_REQUEST_COUNT: &str = concat!(
        r#"sum(increase(haproxy_server_http_responses_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}]))"#,
        r#" + sum(increase(haproxy_server_connection_errors_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}]))"#,
        r#" + sum(increase(haproxy_server_response_errors_total{proxy="{{ service }}",server="{{ target }}"}[{{ interval }}]))"#,
    );

    /// Traefik: share of the target's requests answered without a 5xx, over the interval.
    /// Empty or NaN (no data) when it had none; 0 when it answered only 5xx.
    pub const TRAEFIK_SUCCESS_RATE: &str = concat!(
        "(",
        r#"sum(rate(traefik_service_requests_total{service="{{ service }}-{{ target }}@file",code!~"5.."}[{{ interval }}]))"#,
        " or vector(0)) / ",
        r#"sum(rate(traefik_service_requests_total{service="{{ service }}-{{ target }}@file"}[{{ interval }}]))"#,
    );

    /// Traefik: share of the target's requests answered 5xx (including Traefik's own 502/504
    /// for it), over the interval. Empty or NaN (no data) when it had none; 0 when it has
    /// requests but no 5xx series yet.
    pub const TRAEFIK_ERROR_RATE: &str = concat!(
        "(",
        r#"sum(rate(traefik_service_requests_total{service="{{ service }}-{{ target }}@file",code=~"5.."}[{{ interval }}]))"#,
        " or vector(0)) / ",
        r#"sum(rate(traefik_service_requests_total{service="{{ service }}-{{ target }}@file"}[{{ interval }}]))"#,
    );

    /// Traefik: the target's p99 latency in ms over the interval, from
    /// `traefik_service_request_duration_seconds_bucket` (the time in the service: the
    /// round trip to the backend). `histogram_quantile` interpolates inside a bucket, so the
    /// answer is only as fine as the buckets: with Traefik's default buckets (0.1, 0.3, 1.2,
    /// 5 s) any p99 under 100 ms reads ~99 ms. Set finer ones, e.g.
    /// `--metrics.prometheus.buckets=0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5`.
    pub const TRAEFIK_LATENCY: &str = concat!(
        "histogram_quantile(0.99, sum by (le) (",
        r#"rate(traefik_service_request_duration_seconds_bucket{service="{{ service }}-{{ target }}@file"}[{{ interval }}])"#,
        ")) * 1000",
    );

    /// Traefik: requests the target served over the interval (its own 502/504 for it
    /// included). No data when it has never served one since Traefik started (no series yet):
    /// treat that as 0 in a minimum-sample rule. `increase()` extrapolates to the window's
    /// edges, as for HAProxy, and a series born in the window is extrapolated back to zero
    /// (see above).
    pub const TRAEFIK_REQUEST_COUNT: &str = concat!(
        "sum(",
        r#"increase(traefik_service_requests_total{service="{{ service }}-{{ target }}@file"}[{{ interval }}])"#,
        ")",
    );

    /// Share of the target's requests not answered 5xx (nor failed) over `{{ interval }}`, 0..=1.
    pub fn success_rate(router: Router) -> &'static str {
        match router {
            Router::Haproxy => HAPROXY_SUCCESS_RATE,
            Router::Traefik => TRAEFIK_SUCCESS_RATE,
        }
    }

    /// Share of the target's requests answered 5xx (or failed) over `{{ interval }}`, 0..=1.
    pub fn error_rate(router: Router) -> &'static str {
        match router {
            Router::Haproxy => HAPROXY_ERROR_RATE,
            Router::Traefik => TRAEFIK_ERROR_RATE,
        }
    }

    /// The target's latency in milliseconds: Traefik's p99, HAProxy's average (see
    /// [`HAPROXY_LATENCY`]).
    pub fn latency(router: Router) -> &'static str {
        match router {
            Router::Haproxy => HAPROXY_LATENCY,
            Router::Traefik => TRAEFIK_LATENCY,
        }
    }

    /// Requests the target served over `{{ interval }}`, for a minimum-sample-size rule.
    pub fn request_count(router: Router) -> &'static str {
        match router {
            Router::Haproxy => HAPROXY_REQUEST_COUNT,
            Router::Traefik => TRAEFIK_REQUEST_COUNT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vars(interval: Duration) -> Vars<'static> {
        Vars {
            canary: "green",
            stable: "blue",
            service: "checkout",
            target: "green",
            interval,
        }
    }

    fn check_render(query: &str, expected: Result<&str, TemplateError>) {
        let got = render(query, &vars(Duration::from_secs(30)));
        assert_eq!(got.as_deref().map_err(Clone::clone), expected, "{query}");
    }

    #[test]
    fn renders_variables_with_or_without_spaces() {
        check_render(
            r#"x{server="{{ canary }}",backend="{{stable}}"}"#,
            Ok(r#"x{server="green",backend="blue"}"#),
        );
        check_render(
            "rate(x{s=\"{{   service\t}}\"}[{{interval}}])",
            Ok(r#"rate(x{s="checkout"}[30s])"#),
        );
        check_render("{{target}}{{target}}", Ok("greengreen"));
        check_render("no variables", Ok("no variables"));
        check_render("", Ok(""));
        // A single brace is PromQL's own.
        check_render(r#"x{a="b"}"#, Ok(r#"x{a="b"}"#));
        check_render(r#"{{ canary | regex }}"#, Ok("green"));
        check_render(r#"{{canary|regex}}"#, Ok("green"));
    }

    #[test]
    fn refuses_what_is_not_a_variable() {
        check_render("x{{ canary", Err(TemplateError::Unclosed { offset: 1 }));
        check_render(
            "ok {{ canary }} then {{ cnary }}",
            Err(TemplateError::Unknown {
                name: "cnary".into(),
                offset: 24,
            }),
        );
        check_render("{{ }}", Err(TemplateError::Empty { offset: 0 }));
        check_render(
            "ab{{ canary | upper }}",
            Err(TemplateError::UnknownFilter {
                filter: "upper".into(),
                offset: 14,
            }),
        );
        check_render(
            "{{ canary | }}",
            Err(TemplateError::UnknownFilter {
                filter: String::new(),
                offset: 0,
            }),
        );
        check_render(
            "{{ interval | regex }}",
            Err(TemplateError::RegexOfInterval { offset: 0 }),
        );
        // Flagger's spelling is not ours.
        check_render(
            "{{ namespace }}",
            Err(TemplateError::Unknown {
                name: "namespace".into(),
                offset: 3,
            }),
        );
        assert_eq!(check("a {{ b }}").unwrap_err().offset(), 5);
        assert!(check("{{ interval }} {{canary}}").is_ok());
        let e = check("x{{ cnary }}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown variable `cnary` at byte 4 (use one of: canary, stable, service, target, interval)"
        );
        assert_eq!(
            check("x{{").unwrap_err().to_string(),
            "`{{` at byte 1 is never closed with `}}`"
        );
    }

    #[test]
    fn names_are_escaped_for_a_string_and_on_request_for_a_regex() {
        let v = Vars {
            canary: "a\"b\\c\nd\te\u{1}é",
            stable: "api.v2+(x)",
            service: "s",
            target: "t",
            interval: Duration::from_secs(1),
        };
        assert_eq!(
            render(r#""{{ canary }}""#, &v).unwrap(),
            r#""a\"b\\c\nd\te\u0001é""#
        );
        assert_eq!(render(r#""{{ stable }}""#, &v).unwrap(), r#""api.v2+(x)""#);
        assert_eq!(
            render(r#""{{ stable | regex }}""#, &v).unwrap(),
            r#""api\\.v2\\+\\(x\\)""#
        );
        assert_eq!(
            render(r#""{{ canary | regex }}""#, &v).unwrap(),
            r#""a\"b\\\\c\nd\te\u0001é""#
        );
    }

    #[test]
    fn intervals_are_prometheus_durations() {
        let ms = Duration::from_millis;
        for (d, text) in [
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m30s"),
            (ms(1500), "1s500ms"),
            (ms(250), "250ms"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(86_400 + 7200 + 5), "1d2h5s"),
            (Duration::ZERO, "1ms"),
            (Duration::from_micros(400), "1ms"),
            (Duration::from_micros(1499), "1ms"),
            (Duration::from_micros(1500), "2ms"),
            (Duration::from_nanos(2_999_999_999), "3s"),
        ] {
            assert_eq!(duration(d), text, "{d:?}");
        }
    }

    #[test]
    fn builtins_use_only_known_variables() {
        use builtin::*;
        for router in Router::ALL {
            for q in [
                success_rate(router),
                error_rate(router),
                latency(router),
                request_count(router),
            ] {
                check(q).unwrap_or_else(|e| panic!("{q}: {e}"));
                let rendered = render(q, &vars(Duration::from_secs(60))).unwrap();
                assert!(!rendered.contains("{{"), "{rendered}");
                assert!(rendered.contains("[1m]"), "{rendered}");
                // Balanced parentheses and braces (a cheap check; the real one is Prometheus).
                for (open, close) in [('(', ')'), ('{', '}'), ('[', ']')] {
                    assert_eq!(
                        rendered.matches(open).count(),
                        rendered.matches(close).count(),
                        "{rendered}"
                    );
                }
            }
        }
    }

    /// Reads a PromQL double-quoted string starting at `text[0] == '"'`: its value, and the
    /// rest after the closing quote. The escapes are Go's, as PromQL's lexer takes them.
    fn unquote(text: &str) -> Option<(String, &str)> {
        let mut chars = text.char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((value, &text[i + 1..])),
                '\n' => return None,
                '\\' => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    'r' => value.push('\r'),
                    't' => value.push('\t'),
                    'u' => {
                        let hex: String = (0..4)
                            .map(|_| chars.next().map(|(_, c)| c))
                            .collect::<Option<_>>()?;
                        value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    _ => return None,
                },
                c => value.push(c),
            }
        }
        None
    }

    proptest! {
        #[test]
        fn no_value_escapes_its_string(value in any::<String>(), other in "[a-z{}|\"\\\\]{0,8}") {
            let v = Vars { canary: &value, stable: &other, service: &value, target: &value, interval: Duration::from_secs(1) };
            let rendered = render(r#"x{a="{{ canary }}",b="{{stable}}"}"#, &v).unwrap();
            let rest = rendered.strip_prefix("x{a=").unwrap();
            let (a, rest) = unquote(rest).expect("a well-formed string");
            prop_assert_eq!(&a, &value);
            let rest = rest.strip_prefix(",b=").unwrap();
            let (b, rest) = unquote(rest).expect("a well-formed string");
            prop_assert_eq!(&b, &other);
            prop_assert_eq!(rest, "}");
            // No raw newline either: PromQL refuses one inside a string.
            prop_assert!(!rendered.contains('\n'));
        }

        #[test]
        fn a_regex_quoted_value_is_a_well_formed_string_of_a_literal_regex(value in any::<String>()) {
            let v = Vars { canary: &value, stable: "", service: "", target: "", interval: Duration::from_secs(1) };
            let rendered = render(r#""{{ canary | regex }}""#, &v).unwrap();
            let (regex, rest) = unquote(&rendered).expect("a well-formed string");
            prop_assert_eq!(rest, "");
            // Unquoting the regex gives the value back: every metacharacter is escaped.
            let mut literal = String::new();
            let mut chars = regex.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    let next = chars.next().expect("an escape is followed by a character");
                    prop_assert!(REGEX_META.contains(next), "escaped {:?}", next);
                    literal.push(next);
                } else {
                    prop_assert!(c == '\\' || !REGEX_META.contains(c), "unescaped {:?}", c);
                    literal.push(c);
                }
            }
            prop_assert_eq!(literal, value);
        }

        #[test]
        fn check_never_panics_and_agrees_with_render(query in "[a-z{}| ]{0,30}") {
            let v = vars(Duration::from_secs(5));
            prop_assert_eq!(check(&query).err(), render(&query, &v).err());
        }
    }
}
