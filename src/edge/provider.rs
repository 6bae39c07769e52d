//! Metric providers: where analysis values come from. A metric's query is taken for one
//! target's canary over a window and gives a [`Reading`] (a value, or no data, and the samples
//! behind it), or an error: a provider error is not a metric failure, the analysis counts it
//! separately. The judge's metrics are taken for both sides, as series, and scored here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::core::analysis::{self, Measurement, Outcome, Reading};
use crate::core::judge::{self, MetricClass, Samples};
use crate::core::model::{Judge, Metric, Target};
use crate::core::promql::{self, Vars};
use crate::core::record::MetricValue;
use crate::core::spec::ProviderKind;
use crate::edge::prometheus::{Prometheus, PrometheusConfig};
use crate::edge::router::Router;

/// A query in flight.
pub type Query<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// A source of metric values that answers PromQL: [`Prometheus`] itself, or whatever a
/// program embedding the daemon hands it (its tests: an in-memory one on a paused clock).
pub trait MetricsProvider: Send + Sync + std::fmt::Debug {
    /// The value of `query` at `at`; `None` when there is no data.
    fn instant<'a>(&'a self, query: &'a str, at: DateTime<Utc>) -> Query<'a, Option<f64>>;

    /// The values of `query` over `[start, end]` every `step`, oldest first.
    fn range<'a>(
        &'a self,
        query: &'a str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Duration,
    ) -> Query<'a, Vec<f64>>;
}

impl MetricsProvider for Prometheus {
    fn instant<'a>(&'a self, query: &'a str, at: DateTime<Utc>) -> Query<'a, Option<f64>> {
        Box::pin(async move {
            Prometheus::instant(self, query, at)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn range<'a>(
        &'a self,
        query: &'a str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Duration,
    ) -> Query<'a, Vec<f64>> {
        Box::pin(async move {
            Prometheus::range(self, query, start, end, step)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The providers configured for the controller. The embedded one needs nothing: it is the
/// embedded router itself.
#[derive(Clone, Debug, Default)]
pub struct Providers {
    /// The `prometheus` provider.
    pub prometheus: Option<Arc<dyn MetricsProvider>>,
    /// The client hooks are called with (`None`: the system's CA certificates could not be
    /// loaded; hooks then fail with that reason).
    pub http: Option<crate::edge::https::Client>,
}

impl Providers {
    /// The providers the controller configuration sets up.
    pub fn from_config(config: &crate::edge::repo::Config) -> Result<Providers, String> {
        Self::new(config.prometheus.as_ref())
    }

    pub fn new(prometheus: Option<&PrometheusConfig>) -> Result<Providers, String> {
        let prometheus = prometheus
            .map(Prometheus::new)
            .transpose()
            .map_err(|e| format!("prometheus: {e}"))?;
        Ok(Providers {
            prometheus: prometheus.map(|p| Arc::new(p) as Arc<dyn MetricsProvider>),
            http: crate::edge::https::client().ok(),
        })
    }

    fn prometheus(&self, metric: &str) -> Result<&dyn MetricsProvider, String> {
        self.prometheus
            .as_deref()
            .ok_or_else(|| no_prometheus(metric))
    }
}

/// The variables of `target`'s queries, measuring `side` over `interval`.
fn vars(target: &Target, side: Side, interval: Duration) -> Vars<'_> {
    Vars {
        canary: backend(target, Side::Canary),
        stable: &target.stable.name,
        service: &target.service,
        target: backend(target, side),
        interval,
    }
}

fn render(query: &str, vars: &Vars<'_>) -> Result<String, String> {
    promql::render(query, vars).map_err(|e| format!("query template: {e}"))
}

/// What one measurement took, for the analysis and for the evidence in Git.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Taken {
    pub reading: Reading,
    /// The query as sent (variables filled in), for the status file.
    pub query: Option<String>,
    /// The judge's verdict, when the metric is the judge.
    pub verdict: Option<judge::Verdict>,
    /// Why there is no value, when there is none for a reason worth telling.
    pub no_data: Option<String>,
    /// What the measurement says besides its value (a hook's answer).
    pub note: Option<String>,
}

/// The side of a rollout a query is taken for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Canary,
    Stable,
}

/// Measures `metric` and judges the value: the measurement for the analysis, and the value
/// with its evidence (samples, query, why, the judge's statistics) for the status file.
pub async fn take(
    metric: &Metric,
    target: &Target,
    router: Option<&dyn Router>,
    window: Duration,
    providers: &Providers,
    now: DateTime<Utc>,
) -> (Measurement, MetricValue) {
    let taken = measure(metric, target, router, window, providers, now).await;
    let (reading, query, verdict, no_data, note) = match taken {
        Ok(t) => (Ok(t.reading), t.query, t.verdict, t.no_data, t.note),
        Err(e) => (Err(e), None, None, None, None),
    };
    let mut m = analysis::evaluate(metric, reading, now);
    if let Some(n) = note
        && m.message.is_none()
    {
        m.message = Some(n);
    }
    if let Some(v) = &verdict
        && m.message.is_none()
    {
        m.message = Some(v.brief());
    }
    if let Some(why) = no_data
        && m.value.is_none()
        && m.outcome == Outcome::Inconclusive
    {
        m.message = Some(why);
    }
    let condition = match &metric.judge {
        Some(j) => Some(format!(
            "score >= {} (marginal {})",
            j.thresholds.pass, j.thresholds.marginal
        )),
        None => metric
            .success
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| metric.failure.as_ref().map(|c| format!("not {c}"))),
    };
    let value = MetricValue {
        metric: metric.name.clone(),
        value: m.value,
        outcome: m.outcome,
        condition,
        at: now,
        samples: m.samples,
        query,
        message: m.message.clone(),
        judge: verdict,
    };
    (m, value)
}

/// Measures `metric` for the canary of `target`, whose router is `router`, over the `window`
/// ending `now`.
pub async fn measure(
    metric: &Metric,
    target: &Target,
    router: Option<&dyn Router>,
    window: Duration,
    providers: &Providers,
    now: DateTime<Utc>,
) -> Result<Taken, String> {
    if target.canary.is_none() {
        return Ok(Taken::default());
    }
    if let Some(j) = &metric.judge {
        return judge_once(j, target, router, window, providers, now).await;
    }
    if let Some(hook) = &metric.hook {
        let Some(client) = &providers.http else {
            return Err("no HTTP client: the system's CA certificates cannot be loaded".into());
        };
        let answer = crate::edge::hook::call(client, hook, "analysing").await;
        return Ok(Taken {
            reading: Reading::value(Some(if answer.ok { 1.0 } else { 0.0 })),
            note: Some(answer.evidence),
            ..Taken::default()
        });
    }
    match metric.provider {
        ProviderKind::Embedded => {
            let r = embedded(&metric.name, target, router)?;
            let (value, samples) = r
                .reading(
                    &target.service,
                    backend(target, Side::Canary),
                    &metric.query,
                    window,
                )
                .map_err(|e| e.to_string())?;
            Ok(Taken {
                reading: Reading {
                    value,
                    samples: Some(samples),
                },
                query: Some(metric.query.clone()),
                ..Taken::default()
            })
        }
        ProviderKind::Prometheus => {
            let prometheus = providers.prometheus(&metric.name)?;
            let vars = vars(target, Side::Canary, window);
            let query = render(&metric.query, &vars)?;
            let value = prometheus.instant(&query, now).await?;
            let samples = match &metric.samples_query {
                Some(q) => {
                    let q = render(q, &vars)?;
                    let n = prometheus
                        .instant(&q, now)
                        .await
                        .map_err(|e| format!("samples query: {e}"))?;
                    // increase() extrapolates: 39.6 requests were 40.
                    Some(n.map_or(0, |n| n.max(0.0).round() as u64))
                }
                None => None,
            };
            Ok(Taken {
                reading: Reading { value, samples },
                query: Some(query),
                ..Taken::default()
            })
        }
    }
}

fn no_prometheus(metric: &str) -> String {
    format!(
        "metric `{metric}` uses the prometheus provider, but no `prometheus:` is configured for the controller"
    )
}

fn backend(target: &Target, side: Side) -> &str {
    match (side, &target.canary) {
        (Side::Canary, Some(c)) => &c.name,
        _ => &target.stable.name,
    }
}

/// The embedded router of `target`, which metric `name` is measured on.
fn embedded<'a>(
    name: &str,
    target: &Target,
    router: Option<&'a dyn Router>,
) -> Result<&'a crate::edge::router::embedded::EmbeddedRouter, String> {
    match router.map(|r| r.embedded()) {
        Some(Some(r)) => Ok(r),
        Some(None) => Err(format!(
            "metric `{name}` uses the embedded provider, but router `{}` is not the embedded router",
            target.router
        )),
        None => Err(format!(
            "router `{}` is not running here: the embedded provider's counters live in the daemon that runs it",
            target.router
        )),
    }
}

/// The spacing of the judge's samples: its `step`, or a tenth of the window, at least 1 s.
pub fn judge_step(j: &Judge, window: Duration) -> Duration {
    j.step
        .unwrap_or_else(|| (window / 10).max(Duration::from_secs(1)))
}

/// Samples every judged metric for both sides over the same window and scores them. Half or
/// more of the counted metrics without data (or a critical one) is no data, not a score: no
/// data is never evidence either way.
async fn judge_once(
    j: &Judge,
    target: &Target,
    router: Option<&dyn Router>,
    window: Duration,
    providers: &Providers,
    now: DateTime<Utc>,
) -> Result<Taken, String> {
    let step = judge_step(j, window);
    let mut series = Vec::with_capacity(j.metrics.len());
    for m in &j.metrics {
        let mut sides = [Vec::new(), Vec::new()];
        for (i, side) in [Side::Canary, Side::Stable].into_iter().enumerate() {
            let values = match m.provider {
                ProviderKind::Embedded => embedded(&m.spec.name, target, router)?
                    .series(
                        &target.service,
                        backend(target, side),
                        &m.query,
                        window,
                        step,
                    )
                    .map_err(|e| e.to_string())?,
                ProviderKind::Prometheus => {
                    let query = render(&m.query, &vars(target, side, step))?;
                    // Points at start + step … now: each covers the step before it, so the
                    // first covers the window's first step, not the one before the window.
                    let start = now - chrono::Duration::from_std(window).unwrap_or_default()
                        + chrono::Duration::from_std(step).unwrap_or_default();
                    providers
                        .prometheus(&m.spec.name)?
                        .range(&query, start, now, step)
                        .await
                        .map_err(|e| format!("{}: {e}", m.spec.name))?
                }
            };
            sides[i] = judged(values, j.min_samples);
        }
        series.push(sides);
    }
    let samples: Vec<Samples<'_>> = j
        .metrics
        .iter()
        .zip(&series)
        .map(|(m, [canary, stable])| Samples {
            spec: &m.spec,
            canary,
            baseline: stable,
        })
        .collect();
    let verdict = judge::judge(&samples, j.confidence, j.thresholds);
    let counted: Vec<&judge::MetricResult> = verdict.metrics.iter().filter(|m| !m.muted).collect();
    let missing: Vec<&str> = counted
        .iter()
        .filter(|m| m.class == MetricClass::NoData)
        .map(|m| m.name.as_str())
        .collect();
    let critical_missing = counted
        .iter()
        .any(|m| m.critical && m.class == MetricClass::NoData);
    let no_data = (counted.is_empty() || 2 * missing.len() >= counted.len() || critical_missing)
        .then(|| {
            format!(
                "no data for {} (fewer than {} samples a side)",
                missing.join(", "),
                j.min_samples
            )
        });
    Ok(Taken {
        reading: Reading {
            value: no_data.is_none().then_some(verdict.score),
            samples: None,
        },
        query: None,
        verdict: Some(verdict),
        no_data,
        note: None,
    })
}

/// A side's samples as the judge takes them: NaN (no requests in a step) removed, ±Inf (a
/// histogram quantile past its top bucket: a canary that hangs) kept as a huge finite value, since
/// an infinite shift makes its tolerance band infinite and would class the metric a pass; too few
/// left is none.
fn judged(mut values: Vec<f64>, min_samples: u64) -> Vec<f64> {
    values.retain(|v| !v.is_nan());
    for v in &mut values {
        *v = v.clamp(-1e300, 1e300);
    }
    if (values.len() as u64) < min_samples {
        values.clear();
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::judge::{CONF_LEVEL, MetricSpec, classify};

    #[test]
    fn a_hanging_canary_is_high_not_a_pass() {
        let canary = judged(vec![f64::INFINITY; 6], 5);
        let stable = judged(vec![20.0, 21.0, 19.5, 20.5, 22.0, f64::NAN], 5);
        assert_eq!(stable.len(), 5);
        let mut spec = MetricSpec::new("latency");
        spec.direction = crate::core::judge::Direction::Increase;
        let r = classify(&spec, &canary, &stable, CONF_LEVEL);
        assert_eq!(r.class, MetricClass::High, "{r:?}");
    }

    #[test]
    fn too_few_samples_are_none() {
        assert!(judged(vec![1.0, f64::NAN, 2.0], 3).is_empty());
        assert_eq!(judged(vec![1.0, 2.0, 3.0], 3).len(), 3);
    }
}
