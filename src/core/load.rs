//! When a rollout's built-in load runs: while its canary is in flight (progressing, paused or
//! analysing) in a step that asks for it. Pure; the daemon starts and stops the load to match.

use crate::core::model::{Load, Rollout};
use crate::core::progress::Progress;

/// Bounds the spec must stay within.
pub const MAX_RPS: u32 = 1_000;
pub const MAX_CONCURRENCY: u32 = 256;
/// The concurrency when the spec names none: the rate, up to this.
pub const DEFAULT_CONCURRENCY: u32 = 16;

/// The load `rollout` wants now, given its recorded `progress`: its `load` while a run of its
/// current revision is in a step the load names; `None` otherwise (stable, waiting for a
/// window, promoted, aborted, rolling back, or held invalid).
pub fn wanted<'a>(rollout: &'a Rollout, progress: &Progress) -> Option<&'a Load> {
    let load = rollout.load.as_ref()?;
    let run = progress.run()?;
    if run.revision != rollout.revision {
        return None;
    }
    match &load.steps {
        Some(steps) if !steps.contains(&run.step) => None,
        _ => Some(load),
    }
}
