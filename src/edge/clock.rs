//! Time, read in one place.
//!
//! Every other module takes the time as a parameter: the planner gets `now`, the daemon a
//! [`Clock`]. Clippy's `disallowed-methods` (see `clippy.toml`) refuses `Utc::now`,
//! `SystemTime::now` and `Instant::now` anywhere but here, and a tidy test checks the same.
//!
//! The daemon's clock runs on tokio's time, so a test that pauses tokio (`start_paused`) moves
//! the daemon's wall clock with it: windows, pauses, deadlines and retries play out in
//! milliseconds, in order, with no sleep in the test.

use std::time::SystemTime;

use chrono::{DateTime, Utc};

/// The daemon's notion of now.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system's wall clock (a production daemon; follows NTP steps).
    System,
    /// A wall clock driven by tokio's monotonic time from a fixed origin: under a paused
    /// runtime it advances only when tokio's time does.
    Tokio {
        wall: DateTime<Utc>,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// A wall clock that follows tokio's time, starting at `wall` now. Call it inside the
    /// runtime whose time it follows.
    pub fn tokio_from(wall: DateTime<Utc>) -> Clock {
        Clock::Tokio {
            wall,
            origin: instant(),
        }
    }

    /// The wall-clock time.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => wall(),
            Clock::Tokio { wall, origin } => {
                let elapsed = instant().saturating_duration_since(*origin);
                *wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::TimeDelta::MAX)
            }
        }
    }
}

/// The system's wall-clock time: for one-shot commands (`status`, `plan`, `analyze`), which
/// show what holds at the moment they run.
#[allow(
    clippy::disallowed_methods,
    reason = "the one place the wall clock is read"
)]
pub fn wall() -> DateTime<Utc> {
    Utc::now()
}

/// The system time, for protocols that compare it with a server's (a JWT's issue time).
#[allow(
    clippy::disallowed_methods,
    reason = "the one place the system time is read"
)]
pub fn system_time() -> SystemTime {
    SystemTime::now()
}

/// Monotonic time, for deadlines, timeouts and durations; tokio's, so that it pauses with a
/// paused runtime.
#[allow(
    clippy::disallowed_methods,
    reason = "the one place monotonic time is read"
)]
pub fn instant() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_tokios_time() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = Clock::tokio_from(start);
        assert_eq!(clock.now(), start);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now(), start + chrono::Duration::milliseconds(90_250));
    }
}
