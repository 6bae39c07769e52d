//! Integration tests, one binary (each extra `tests/*.rs` would link the whole tree again).

mod cli;
mod examples;
mod planner;
mod validation;
