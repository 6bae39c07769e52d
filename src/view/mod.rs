//! What the CLI prints, human or JSON: pure functions of what the core decided.

pub mod report;
pub mod status;
