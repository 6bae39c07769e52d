//! The embedded router (placeholder; being built).
use crate::model::{Observed, Traffic};
use super::RouterError;

#[derive(Debug)]
pub struct EmbeddedRouter;

impl EmbeddedRouter {
    pub fn observe(&self, _service: &str) -> Observed {
        Observed::default()
    }
    pub fn apply(&self, _service: &str, _traffic: &Traffic) -> Result<(), RouterError> {
        Ok(())
    }
}
