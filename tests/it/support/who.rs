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

/// What a sticky load saw, step after step: which side each user was on, who moved from the
/// canary back to stable, and who landed where the router's own hash does not put them.
pub struct Sides {
    previous: Vec<Option<String>>,
    pub moved_back: Vec<String>,
    pub not_as_modelled: Vec<String>,
}

/// One step as [`Sides::step`] counted it.
pub struct StepCount {
    /// Users on the canary (`green`).
    pub on_canary: usize,
    pub marked_total: usize,
    pub marked_canary: usize,
}

impl Sides {
    pub fn new(users: usize) -> Sides {
        Sides {
            previous: vec![None; users],
            moved_back: Vec::new(),
            not_as_modelled: Vec::new(),
        }
    }

    /// Folds step `name`'s answers in: `users` as (user index, backend), `marked` the backends
    /// of the marked requests, `model` (when sticky) whether user `user-<i>` belongs on the
    /// canary by the router's hash.
    pub fn step(
        &mut self,
        name: &str,
        users: Vec<(usize, String)>,
        marked: &[String],
        model: Option<&dyn Fn(&str) -> bool>,
    ) -> StepCount {
        let mut on_canary = 0;
        for (u, b) in users {
            let user = format!("user-{u}");
            if let Some(on) = model {
                let want = if on(&user) { "green" } else { "blue" };
                if b != want {
                    self.not_as_modelled
                        .push(format!("{user} on {b} at {name}"));
                }
            }
            if self.previous[u].as_deref() == Some("green") && b != "green" {
                self.moved_back.push(format!("{user} at {name}"));
            }
            on_canary += usize::from(b == "green");
            self.previous[u] = Some(b);
        }
        StepCount {
            on_canary,
            marked_total: marked.len(),
            marked_canary: marked.iter().filter(|b| *b == "green").count(),
        }
    }
}
