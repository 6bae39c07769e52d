//! Live weights per service, for `canaryd plan`: read from the routers, or from a JSON file (`{"edge/checkout": {"blue": 90, "green": 10}}`).
//!
//! Keys are `router/service`; values are the router's raw weights per backend. A service that
//! is absent is "unknown", exactly as an unreachable router would be, so the plan holds.

use std::collections::BTreeMap;

use crate::core::model::{Observed, Target};

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
