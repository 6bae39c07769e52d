//! The routers the daemon drives: started on demand from their spec (restarted when it
//! changes), or handed in by the program running the daemon; and whether each answers, for
//! `/readyz`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Daemon, look};
use crate::core::model::Catalog;
use crate::core::spec::RouterSpec;
use crate::edge::router::embedded::EmbeddedRouter;
use crate::edge::router::{Driver, Router};
use crate::edge::telemetry::ErrorClass;

/// A router the daemon drives, with the spec it was started from.
#[derive(Debug)]
pub(super) struct Running {
    spec: RouterSpec,
    pub driver: Arc<dyn Router>,
    pub stop: CancellationToken,
}

impl Daemon {
    /// The driver of router `name`, started (or restarted, when its spec changed) on demand.
    pub(super) async fn driver(
        &mut self,
        name: &str,
        catalog: &Catalog,
    ) -> Option<Arc<dyn Router>> {
        if let Some(r) = self.settings.attached.get(name) {
            return Some(r.clone());
        }
        let spec = self
            .settings
            .routers
            .get(name)
            .or_else(|| catalog.routers.get(name))?
            .clone();
        if let Some(r) = self.drivers.get(name)
            && r.spec == spec
        {
            return Some(r.driver.clone());
        }
        if let Some(old) = self.drivers.remove(name) {
            old.stop.cancel();
        }
        let stop = self.shutdown.child_token();
        let started = match &spec {
            RouterSpec::Embedded {
                listen,
                backends,
                limits,
            } => EmbeddedRouter::start(name, listen, backends.clone(), limits, stop.clone())
                .await
                .map(Driver::Embedded),
            other => Driver::connect(name, other),
        };
        match started {
            Ok(driver) => {
                tracing::info!(router = name, "router started");
                let driver: Arc<dyn Router> = Arc::new(driver);
                // Its counters join /metrics, in place of those of the driver it replaces.
                self.shown
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.to_string(), driver.clone());
                self.drivers.insert(
                    name.to_string(),
                    Running {
                        spec,
                        driver: driver.clone(),
                        stop,
                    },
                );
                Some(driver)
            }
            Err(e) => {
                self.error(ErrorClass::Router, None, e.to_string());
                None
            }
        }
    }

    /// Asks each router driven but not read in this look whether it answers, and tells
    /// `/readyz` which do not.
    pub(super) async fn check_routers(&mut self) {
        let driven: BTreeMap<String, Arc<dyn Router>> = self
            .drivers
            .iter()
            .map(|(name, r)| (name.clone(), r.driver.clone()))
            .chain(self.settings.attached.clone())
            .collect();
        let mut health = std::mem::take(&mut self.routers_read);
        health.retain(|name, _| driven.contains_key(name));
        let unread: Vec<(String, Arc<dyn Router>)> = driven
            .into_iter()
            .filter(|(name, _)| !health.contains_key(name))
            .collect();
        let timeout = self.settings.router_timeout;
        let jobs = unread
            .iter()
            .map(|(name, d)| {
                let (name, d) = (name.clone(), d.clone());
                async move { look::within(&name, timeout, d.health()).await }
            })
            .collect();
        for ((name, _), answer) in unread.into_iter().zip(look::bounded(jobs).await) {
            health.insert(name, answer.err());
        }
        self.admin.set_routers(health);
    }

    /// The driver of a router already running.
    pub(super) fn running(&self, name: &str) -> Option<Arc<dyn Router>> {
        match self.settings.attached.get(name) {
            Some(r) => Some(r.clone()),
            None => self.drivers.get(name).map(|d| d.driver.clone()),
        }
    }
}
