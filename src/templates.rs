//! Built-in metric templates that specs reference by name, like Flagger's `request-success-rate`.
//!
//! They measure the embedded router's own counters, so analysis works with nothing installed.
//! Rates are ratios (0.99, not 99 %); durations are milliseconds.

use crate::spec::{MetricTemplateSpec, ProviderKind};

/// Names of the built-in templates.
pub const BUILTIN: [&str; 3] = ["request-success-rate", "request-duration", "error-rate"];

/// The built-in template called `name`.
pub fn builtin(name: &str) -> Option<MetricTemplateSpec> {
    let (query, success) = match name {
        // Share of the canary's requests answered without a 5xx, over the interval.
        "request-success-rate" => ("success_rate", "result >= 0.99"),
        // The canary's 99th percentile latency in milliseconds, over the interval.
        "request-duration" => ("latency_p99_ms", "result <= 500"),
        // Share of the canary's requests answered with a 5xx, over the interval.
        "error-rate" => ("error_rate", "result <= 0.01"),
        _ => return None,
    };
    Some(MetricTemplateSpec {
        provider: ProviderKind::Embedded,
        query: query.to_string(),
        success_condition: Some(success.to_string()),
        failure_condition: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::condition::Condition;

    #[test]
    fn every_builtin_parses() {
        for name in BUILTIN {
            let t = builtin(name).unwrap();
            Condition::parse(t.success_condition.as_deref().unwrap()).unwrap();
        }
        assert!(builtin("nope").is_none());
    }
}
