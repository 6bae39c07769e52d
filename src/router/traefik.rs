//! The traefik driver (placeholder; being built).

#[allow(unused_imports)]
use std::collections::BTreeMap;

use super::RouterError;
use crate::model::{Observed, Traffic};

#[derive(Debug)]
pub struct TraefikRouter;

impl TraefikRouter {
    pub fn new(
        _name: &str,
        _api: &str,
        _dynamic_file: &str,
        _backends: &BTreeMap<String, String>,
    ) -> Result<TraefikRouter, RouterError> {
        Err(RouterError::Setup {
            router: "traefik".into(),
            message: "not built yet".into(),
        })
    }

    pub async fn observe(&self, _service: &str) -> Result<Observed, RouterError> {
        Ok(Observed::default())
    }

    pub async fn apply(&self, _service: &str, _traffic: &Traffic) -> Result<(), RouterError> {
        Ok(())
    }

    pub async fn health(&self) -> Result<(), RouterError> {
        Ok(())
    }
}
