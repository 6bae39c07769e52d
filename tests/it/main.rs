//! Integration tests, one binary (each extra `tests/*.rs` would link the whole tree again).

#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "tests play the world around the daemon, whose clock is the real one"
)]

mod admin;
mod analysis_e2e;
mod cli;
mod crash;
mod daemon;
mod daemon_loop;
mod demo;
mod embedded;
mod examples;
mod forge;
mod git;
mod git_auth;
mod groups;
mod hardening;
mod hooks;
mod judge;
mod load;
mod notify;
mod planner;
mod prometheus;
mod router_caddy;
mod router_gateway;
mod router_haproxy;
mod router_nginx;
mod router_traefik;
mod support;
mod tidy;
mod validation;
mod wait;
mod webhook;
