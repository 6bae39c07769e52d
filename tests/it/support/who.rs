//! Traffic that says who sees the canary, as the router tests apply it.

use canaryd::core::model::{Criterion, Field, Match, Pattern, Route, Sticky, Traffic};

// The key HAProxy's rig loads its snippet for; the embedded router takes any.
use super::rig::haproxy::STICKY_KEY;

/// `t` with `canary` named the canary, users kept on their side by [`STICKY_KEY`], and the
/// marked group (`X-Canary: always`) routed to the canary whatever its weight.
pub fn marked_and_sticky(mut t: Traffic, canary: &str) -> Traffic {
    t.routes = vec![Route {
        name: "marked".to_string(),
        matches: vec![Match {
            all: vec![Criterion {
                on: Field::Header,
                name: "X-Canary".to_string(),
                value: Pattern::Exact("always".to_string()),
            }],
        }],
        backend: canary.to_string(),
    }];
    t.sticky = Some(Sticky::Header(STICKY_KEY.to_string()));
    t.canary = Some(canary.to_string());
    t
}
