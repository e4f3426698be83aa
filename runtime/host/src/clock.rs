//! The node's one clock, taken at construction.
//!
//! Monotonic time is tokio's: timers, deadlines and every age the node keeps
//! (presence grace, log expiry, resumable sessions, failure detection) read it, so a
//! test or simulation that pauses tokio time moves all of them together. Ages kept as
//! milliseconds count from the clock's start ([`Clock::mono_ms`]) and never cross nodes.
//! Wall time — the system clock plus an offset a test may set or step — is read only
//! where a time is shown or stored for people (a deploy's date, a handler's `now-ms`):
//! no decision compares wall times, so a stepped or skewed clock changes no outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Clock {
    start: Instant,
    wall_offset_ms: Arc<AtomicI64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system's clocks, as they are.
    pub fn system() -> Self {
        Self::with_wall_offset(0)
    }

    /// Wall time `offset_ms` away from the system's (a node whose clock is skewed).
    pub fn with_wall_offset(offset_ms: i64) -> Self {
        Self {
            start: Instant::now(),
            wall_offset_ms: Arc::new(AtomicI64::new(offset_ms)),
        }
    }

    /// Step wall time by `ms` (back if negative), as an NTP correction would.
    pub fn step_wall(&self, ms: i64) {
        self.wall_offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Set wall time `ms` away from the system's (a simulation skewing this node).
    pub fn set_wall_offset(&self, ms: i64) {
        self.wall_offset_ms.store(ms, Ordering::Relaxed);
    }

    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Milliseconds since this clock started: for ages this node keeps.
    pub fn mono_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Milliseconds since the Unix epoch, offset: only to show or store.
    pub fn wall_ms(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        u64::try_from(system.saturating_add(self.wall_offset_ms.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn monotonic_time_is_tokios_and_wall_steps_move_only_wall_time() {
        let clock = Clock::with_wall_offset(-3_600_000);
        let wall = clock.wall_ms();
        tokio::time::advance(std::time::Duration::from_millis(1500)).await;
        assert_eq!(clock.mono_ms(), 1500);
        clock.step_wall(-10_000);
        assert_eq!(clock.mono_ms(), 1500, "a wall step leaves ages alone");
        assert!(clock.wall_ms() < wall, "stepped back");
    }
}
