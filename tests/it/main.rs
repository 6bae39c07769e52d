//! Integration tests, one binary (each extra `tests/*.rs` would link the whole tree again).

#![allow(clippy::unwrap_used)]

mod cli;
mod demo;
mod examples;
mod planner;
mod validation;
