//! The edges, where I/O lives: Git, the routers, the metric providers, the forge, the daemon
//! that drives them, the admin and webhook endpoints, and the one-shot commands' readers.

pub mod admin;
pub mod analyze;
pub mod backend;
pub mod clock;
pub mod daemon;
pub mod demo;
pub mod forge;
pub mod git;
pub mod hook;
pub mod https;
pub mod listener;
pub mod live;
pub mod load;
pub mod notify;
pub mod prometheus;
pub mod provider;
pub mod repo;
pub mod router;
pub mod secret;
pub mod telemetry;
pub mod wait;
pub mod webhook;
