//! Live weights per service, for `canaryd plan`: read from the routers, or from a JSON file (`{"edge/checkout": {"blue": 90, "green": 10}}`).
//!
//! Keys are `router/service`; values are the router's raw weights per backend. A service that
//! is absent is "unknown", exactly as an unreachable router would be, so the plan holds.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::core::model::{Catalog, Observed, Rollout, Target};
use crate::core::spec::RouterSpec;
use crate::edge::router::Driver;

/// Live weights per `router/service`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveWeights(BTreeMap<String, Observed>);

/// Why a live-weights file was refused.
#[derive(Debug, thiserror::Error)]
#[error("live weights: {0}")]
pub struct LiveError(String);

impl LiveWeights {
    pub fn parse(json: &str) -> Result<LiveWeights, LiveError> {
        let raw: BTreeMap<String, BTreeMap<String, u32>> =
            serde_json::from_str(json).map_err(|e| {
                LiveError(format!(
                    "{e} (expected {{\"router/service\": {{\"backend\": weight, ...}}, ...}})"
                ))
            })?;
        for key in raw.keys() {
            if !key.contains('/') {
                return Err(LiveError(format!("key `{key}` is not `router/service`")));
            }
        }
        Ok(LiveWeights(
            raw.into_iter()
                .map(|(k, backends)| (k, Observed::weights(backends)))
                .collect(),
        ))
    }

    /// Records what `target`'s router reported for its service.
    pub fn insert(&mut self, target: &Target, observed: Observed) {
        self.0
            .insert(format!("{}/{}", target.router, target.service), observed);
    }

    /// The weights of `target`'s service, if known.
    pub fn get(&self, target: &Target) -> Option<&Observed> {
        self.0.get(&format!("{}/{}", target.router, target.service))
    }

    /// The live weights of every rollout's service in `catalog`, read from its router (one
    /// read per router, as the daemon's look, within `timeout`), with the routers in
    /// `routers` (the controller configuration) before the repository's. A service that
    /// cannot be read stays unknown; why is in the warnings, one line each.
    pub async fn from_routers(
        catalog: &Catalog,
        routers: &BTreeMap<String, RouterSpec>,
        timeout: Duration,
    ) -> (LiveWeights, Vec<String>) {
        LiveWeights::of(&catalog.rollouts, catalog, routers, timeout).await
    }

    /// [`from_routers`](LiveWeights::from_routers) for `rollouts` alone (of `catalog`).
    pub async fn of<'a>(
        rollouts: impl IntoIterator<Item = &'a Rollout>,
        catalog: &Catalog,
        routers: &BTreeMap<String, RouterSpec>,
        timeout: Duration,
    ) -> (LiveWeights, Vec<String>) {
        let mut live = LiveWeights::default();
        let mut warnings = Vec::new();
        let mut by_router: BTreeMap<&str, Vec<&Rollout>> = BTreeMap::new();
        for r in rollouts {
            by_router.entry(&r.target().router).or_default().push(r);
        }
        for (router, rollouts) in by_router {
            let Some(spec) = routers.get(router).or_else(|| catalog.routers.get(router)) else {
                warnings.push(format!(
                    "no router `{router}` in the configuration or the repository"
                ));
                continue;
            };
            let services: Vec<String> = rollouts
                .iter()
                .map(|r| r.target().service.clone())
                .collect();
            let read = match Driver::connect(router, spec) {
                Ok(driver) => tokio::time::timeout(timeout, driver.observe_all(&services))
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::edge::router::RouterError::unreachable(
                            router,
                            format!("no answer in {} s", timeout.as_secs()),
                        ))
                    }),
                Err(e) => Err(e),
            };
            for r in rollouts {
                let target = r.target();
                match read.as_ref().map(|all| all.get(&target.service)) {
                    Ok(Some(Ok(observed))) => live.insert(target, observed.clone()),
                    Ok(Some(Err(e))) | Err(e) => {
                        warnings.push(format!("{e}: weights of `{}` unknown", r.name));
                    }
                    Ok(None) => warnings.push(format!(
                        "router `{router}` did not report service `{}`: weights of `{}` unknown",
                        target.service, r.name
                    )),
                }
            }
        }
        (live, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Backend;

    #[test]
    fn reads_weights_by_router_and_service() {
        let live = LiveWeights::parse(r#"{"edge/web": {"blue": 90, "green": 10}}"#).unwrap();
        let target = Target {
            router: "edge".into(),
            service: "web".into(),
            stable: Backend {
                name: "blue".into(),
                version: None,
            },
            canary: None,
        };
        assert_eq!(live.get(&target).unwrap().backends["green"], 10);
        let other = Target {
            service: "api".into(),
            ..target
        };
        assert!(live.get(&other).is_none());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(LiveWeights::parse("[]").is_err());
        assert!(LiveWeights::parse(r#"{"web": {"a": 1}}"#).is_err());
        assert!(LiveWeights::parse(r#"{"e/web": {"a": -1}}"#).is_err());
    }
}
