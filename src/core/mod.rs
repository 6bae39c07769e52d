//! The pure core: what users write, validated, and every decision taken on it. Nothing here
//! does I/O or reads the clock; time comes in as `now`, and nothing fails but by returning
//! values.

pub mod analysis;
pub mod audience;
pub mod diag;
pub mod express;
pub mod group;
pub mod judge;
pub mod limits;
pub mod load;
pub mod model;
pub mod notify;
pub mod number;
pub mod par;
pub mod plan;
pub mod progress;
pub mod promql;
pub mod record;
pub mod schema;
pub mod spec;
pub mod templates;
pub mod validate;
pub mod wait;
pub mod yaml;
