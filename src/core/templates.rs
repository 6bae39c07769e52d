//! Built-in metric templates that specs reference by name, like Flagger's `request-success-rate`.
//!
//! What a name measures depends on the rollout's router: the embedded router's own counters
//! (analysis with nothing installed), or PromQL over the exporters of HAProxy and Traefik.
//! Rates are ratios (0.99, not 99 %); durations are milliseconds. The request templates ask
//! for [`MIN_REQUESTS`] requests in the window before they give a verdict.

use crate::core::promql::builtin as promql;
use crate::core::spec::{MetricTemplateSpec, ProviderKind, RouterKind};

/// Names of the built-in templates.
pub const BUILTIN: [&str; 4] = [
    "request-success-rate",
    "request-duration",
    "error-rate",
    "request-count",
];

/// Requests a built-in request template needs in its window before it gives a verdict: below
/// it a single failed request would decide (1 of 3 is 33 % errors). Override per check with
/// `minSamples`.
pub const MIN_REQUESTS: u64 = 20;

/// The built-in template called `name` for a router of `kind`; `None` when there is no such
/// name, or no query for that router (see [`kinds_for`]).
pub fn builtin(name: &str, kind: RouterKind) -> Option<MetricTemplateSpec> {
    let success = match name {
        "request-success-rate" => Some("result >= 0.99"),
        "request-duration" => Some("result <= 500"),
        "error-rate" => Some("result <= 0.01"),
        "request-count" => None,
        _ => return None,
    };
    let (provider, query, samples_query) = match kind {
        RouterKind::Embedded => {
            let query = match name {
                // Share of the canary's requests answered without a 5xx, over the interval.
                "request-success-rate" => "success_rate",
                // The canary's 99th percentile latency in milliseconds, over the interval.
                "request-duration" => "latency_p99_ms",
                // Share of the canary's requests answered with a 5xx, over the interval.
                "error-rate" => "error_rate",
                _ => "request_count",
            };
            (ProviderKind::Embedded, query.to_string(), None)
        }
        RouterKind::Haproxy | RouterKind::Traefik => {
            let router = if kind == RouterKind::Haproxy {
                promql::Router::Haproxy
            } else {
                promql::Router::Traefik
            };
            let query = match name {
                "request-success-rate" => promql::success_rate(router),
                "request-duration" => promql::latency(router),
                "error-rate" => promql::error_rate(router),
                _ => promql::request_count(router),
            };
            let samples = promql::request_count(router);
            (
                ProviderKind::Prometheus,
                query.to_string(),
                Some(samples.to_string()),
            )
        }
        _ => return None,
    };
    let counts_requests = name != "request-count";
    Some(MetricTemplateSpec {
        provider,
        query,
        success_condition: success.map(str::to_string),
        failure_condition: None,
        min_samples: counts_requests.then_some(MIN_REQUESTS),
        samples_query,
    })
}

/// The router kinds `name` has a query for, for error messages.
pub fn kinds_for(name: &str) -> Vec<RouterKind> {
    RouterKind::ALL
        .into_iter()
        .filter(|k| builtin(name, *k).is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::spec::condition::Condition;

    #[test]
    fn every_builtin_parses() {
        for kind in [
            RouterKind::Embedded,
            RouterKind::Haproxy,
            RouterKind::Traefik,
        ] {
            for name in BUILTIN {
                let t = builtin(name, kind).unwrap();
                if let Some(c) = t.success_condition.as_deref() {
                    Condition::parse(c).unwrap();
                }
                crate::core::promql::check(&t.query).unwrap();
            }
        }
        assert!(builtin("error-rate", RouterKind::Caddy).is_none());
        assert!(builtin("nope", RouterKind::Embedded).is_none());
    }
}
