//! The spec repository the spec and lint benchmarks measure: one router, many rollouts.

/// The router every rollout drives, as a `kind: Router` document (`routers.yaml`).
pub const ROUTER: &str = "apiVersion: canaryd.dev/v1alpha1
kind: Router
metadata: {name: edge}
spec:
  kind: embedded
  listen: 127.0.0.1:8080
  backends: {blue: \"http://127.0.0.1:9001\", green: \"http://127.0.0.1:9002\"}
";

/// Rollout `svc-{i}`: steps, a step analysis, a background analysis with a PromQL query and a
/// condition, and a deployment window; valid against [`ROUTER`].
pub fn rollout(i: usize) -> String {
    format!(
        "apiVersion: canaryd.dev/v1alpha1
kind: Rollout
metadata: {{name: svc-{i}}}
spec:
  router: edge
  service: svc-{i}
  stable: {{name: blue, version: \"1.{i}\"}}
  canary: {{name: green, version: \"2.{i}\"}}
  steps:
    - setWeight: 5
    - analysis:
        interval: 1m
        count: 5
        metrics:
          - {{name: errors, template: error-rate}}
    - setWeight: 25
    - pause: {{duration: 10m}}
    - setWeight: 50
    - pause: {{}}
  analysis:
    interval: 1m
    metrics:
      - name: success
        template: request-success-rate
      - name: latency
        provider: prometheus
        query: histogram_quantile(0.99, sum(rate(x_bucket{{server=\"{{{{ canary }}}}\"}}[1m])) by (le))
        successCondition: result < 250 && !isNaN(result)
  window: {{cron: \"* 9-16 * * Mon-Fri\", timezone: Europe/Berlin}}
"
    )
}
