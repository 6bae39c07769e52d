//! Metric providers: where analysis values come from. Each takes a metric's query for one
//! target's canary over a window and returns a value, `None` for "no data", or an error (a
//! provider error is not a metric failure: the analysis counts it separately).

use std::time::Duration;

use crate::model::{Metric, Target};
use crate::router::Driver;
use crate::spec::ProviderKind;

/// Measures `metric` for the canary of `target`, whose router is `router`, over `window`.
pub fn measure(
    metric: &Metric,
    target: &Target,
    router: Option<&Driver>,
    window: Duration,
) -> Result<Option<f64>, String> {
    let Some(canary) = &target.canary else {
        return Ok(None);
    };
    match metric.provider {
        ProviderKind::Embedded => match router {
            Some(Driver::Embedded(r)) => r
                .query(&target.service, &canary.name, &metric.query, window)
                .map_err(|e| e.to_string()),
            Some(_) => Err(format!(
                "metric `{}` uses the embedded provider, but router `{}` is not the embedded router",
                metric.name, target.router
            )),
            None => Err(format!("router `{}` is not running", target.router)),
        },
        ProviderKind::Prometheus => Err(format!(
            "metric `{}` uses the prometheus provider, which this build cannot query yet",
            metric.name
        )),
    }
}
