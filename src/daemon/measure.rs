//! Taking the measurements a plan asks for, off the daemon's own state: a job owns what it
//! needs, so many rollouts measure at once and a slow provider holds up only its rollout.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::analysis;
use crate::model::Rollout;
use crate::plan::{Due, Sample};
use crate::provider::{self, Providers};
use crate::record::MetricValue;
use crate::router::Router;

/// The measurements of one rollout, back from their task.
#[derive(Debug)]
pub(super) struct Measured {
    pub rollout: String,
    pub samples: Vec<Sample>,
    pub values: Vec<MetricValue>,
    /// Why measurements failed, for the log and `/metrics`.
    pub errors: Vec<String>,
}

/// Measures every metric in `due` for `r`: the samples for its next plan, the values for its
/// status file, and why any measurement failed (for the log and `/metrics`).
pub(super) async fn take_all(
    r: Rollout,
    due: Vec<Due>,
    driver: Option<Arc<dyn Router>>,
    providers: Arc<Providers>,
    now: DateTime<Utc>,
) -> (Vec<Sample>, Vec<MetricValue>, Vec<String>) {
    let target = r.target();
    let mut samples = Vec::new();
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for due in due {
        let Some(a) = due.analysis.of(&r) else {
            continue;
        };
        let Some(metric) = a.metrics.iter().find(|m| m.name == due.metric) else {
            continue;
        };
        let (m, value) = provider::take(
            metric,
            target,
            driver.as_deref(),
            a.window(),
            &providers,
            now,
        )
        .await;
        if m.outcome == analysis::Outcome::Error {
            let why = m.message.as_deref().unwrap_or("no message");
            errors.push(format!("metric `{}`: {why}", metric.name));
        }
        values.push(value);
        samples.push(Sample {
            revision: r.revision.clone(),
            analysis: due.analysis,
            metric: due.metric,
            measurement: m,
        });
    }
    (samples, values, errors)
}
