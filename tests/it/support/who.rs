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

/// One step as [`Sides::step`] counted it (summed over the clients with `+=`).
#[derive(Default)]
pub struct StepCount {
    /// Users on the canary (`green`).
    pub on_canary: usize,
    pub marked_total: usize,
    pub marked_canary: usize,
}

impl std::ops::AddAssign for StepCount {
    fn add_assign(&mut self, other: StepCount) {
        self.on_canary += other.on_canary;
        self.marked_total += other.marked_total;
        self.marked_canary += other.marked_canary;
    }
}

impl StepCount {
    /// The share of `users` on the canary, in percent.
    pub fn share(&self, users: usize) -> f64 {
        self.on_canary as f64 * 100.0 / users as f64
    }
}

impl Sides {
    /// What every step must show: at the abort (`weight` None) nobody on the canary, marked or
    /// not; else every marked request on it, with a sticky key each step's share of `users`
    /// within 3 points of `weight`, and nobody ever moved from the canary back to stable; and
    /// every user where the router's hash puts them.
    pub fn check(
        &self,
        name: &str,
        count: &StepCount,
        users: usize,
        weight: Option<u8>,
        sticky: bool,
    ) {
        let share = count.share(users);
        match weight {
            None => {
                assert_eq!(
                    count.marked_canary, 0,
                    "{name}: marked requests still reach the canary"
                );
                assert_eq!(count.on_canary, 0, "{name}: users still on the canary");
            }
            Some(w) => {
                assert_eq!(
                    count.marked_canary, count.marked_total,
                    "{name}: a marked request missed the canary"
                );
                let w = f64::from(w);
                assert!(
                    !sticky || (share - w).abs() <= 3.0,
                    "{name}: {share:.2} % of users on the canary at weight {w}"
                );
                assert!(
                    self.moved_back.is_empty(),
                    "moved back to stable: {:?}",
                    self.moved_back
                );
            }
        }
        assert!(
            self.not_as_modelled.is_empty(),
            "{:?}",
            self.not_as_modelled
        );
    }

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
