//! What the daemon asks of a router, as a trait: [`super::Driver`] is the real router of each
//! kind, and a program embedding the daemon (its tests) may hand it others, such as an
//! in-memory router on a paused clock.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use super::RouterError;
use super::embedded::EmbeddedRouter;
use crate::core::model::{Observed, Traffic};

/// A call to a router in flight.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, RouterError>> + Send + 'a>>;

/// The live weights of several services read at once: the outer error when the router could
/// not be read at all, an inner one for a service it does not know.
pub type ObservedAll = BTreeMap<String, Result<Observed, RouterError>>;

/// A router the daemon drives. Reads come from the router itself, never a cache; `apply` sets
/// weights, never adds to them, so applying the same traffic twice is harmless.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// The live weights of every service in `services`, in one read of the router where it
    /// can (one runtime-API command, one API read, one file read).
    fn observe_all<'a>(&'a self, services: &'a [String]) -> Call<'a, ObservedAll>;

    /// Sets the weights of `service`: a set, never an add (backends not named get 0).
    fn apply<'a>(&'a self, service: &'a str, traffic: &'a Traffic) -> Call<'a, ()>;

    /// Whether the router answers.
    fn health(&self) -> Call<'_, ()>;

    /// Appends the router's own counters, if it keeps any, in Prometheus text format.
    fn render_metrics(&self, _out: &mut String) {}

    /// The embedded router, whose counters are the `embedded` metric provider.
    fn embedded(&self) -> Option<&EmbeddedRouter> {
        None
    }
}

impl Router for super::Driver {
    fn observe_all<'a>(&'a self, services: &'a [String]) -> Call<'a, ObservedAll> {
        Box::pin(super::Driver::observe_all(self, services))
    }

    fn apply<'a>(&'a self, service: &'a str, traffic: &'a Traffic) -> Call<'a, ()> {
        Box::pin(super::Driver::apply(self, service, traffic))
    }

    fn health(&self) -> Call<'_, ()> {
        Box::pin(super::Driver::health(self))
    }

    fn render_metrics(&self, out: &mut String) {
        super::Driver::render_metrics(self, out);
    }

    fn embedded(&self) -> Option<&EmbeddedRouter> {
        match self {
            super::Driver::Embedded(r) => Some(r),
            _ => None,
        }
    }
}
