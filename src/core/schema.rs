//! JSON Schemas for every document kind and for the status file, generated from the Rust types.
//!
//! `schemas/` holds the committed output; a test fails when it drifts from the types, and
//! `canaryd schema --write schemas/` regenerates it.

use schemars::{JsonSchema, Schema};

use crate::core::record::StatusFile;
use crate::core::spec::{AnyDoc, MetricTemplateDoc, RolloutDoc, RolloutGroupDoc, RouterDoc};

/// Every schema as (file name under `schemas/`, pretty JSON with a trailing newline).
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        ("rollout.json", render::<RolloutDoc>()),
        ("router.json", render::<RouterDoc>()),
        ("metric-template.json", render::<MetricTemplateDoc>()),
        ("rollout-group.json", render::<RolloutGroupDoc>()),
        ("canaryd.json", render::<AnyDoc>()),
        ("status.json", render::<StatusFile>()),
        (
            "group-status.json",
            render::<crate::core::group::GroupStatusFile>(),
        ),
    ]
}

fn render<T: JsonSchema>() -> String {
    let schema: Schema = schemars::schema_for!(T);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is always JSON");
    text.push('\n');
    text
}
