//! Congestion control for links between nodes: quinn's Cubic with a floor under its
//! window.
//!
//! Why a floor: a node's peers sit across provider backbones, where a lost datagram
//! is far more often a burst dropped at a busy receiver's socket than a sign that the
//! path is full. Cubic halves its window at each loss and, on a 200 ms round trip,
//! takes seconds to grow back; at a few percent of random loss it never does. quinn's
//! BBR, tried first for that reason, was worse: after one burst of losses on a
//! 225 ms link its window fell to 20 KB and stayed there for the rest of a 150 s run
//! while messages queued behind it (geo-sim region-outage, seed 1). With the floor
//! a link always keeps `floor` bytes in flight per round trip and behaves as Cubic
//! above it.

use std::any::Any;
use std::sync::Arc;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use std::time::Instant;

use quinn_proto::RttEstimator;

/// Bytes in flight a link may always have, whatever its losses: 1 MiB, 4.5 MB/s on a
/// 225 ms round trip (the longest between the shipped regions is about 340 ms).
pub const WINDOW_FLOOR: u64 = 1 << 20;

/// Builds [`Floored`] Cubic controllers.
#[derive(Debug)]
pub struct FlooredCubic {
    cubic: Arc<CubicConfig>,
    floor: u64,
}

impl FlooredCubic {
    pub fn new(floor: u64) -> Self {
        Self {
            cubic: Arc::new(CubicConfig::default()),
            floor,
        }
    }
}

impl ControllerFactory for FlooredCubic {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.cubic.clone().build(now, current_mtu),
            floor: self.floor,
        })
    }
}

/// A controller whose window never drops below `floor`.
pub struct Floored {
    inner: Box<dyn Controller>,
    floor: u64,
}

impl Controller for Floored {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.inner.clone_box(),
            floor: self.floor,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().max(self.floor)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_window_is_cubics_but_never_below_the_floor() {
        let start = Instant::now();
        let floor = 8 * 1024;
        let mut floored = Arc::new(FlooredCubic::new(floor)).build(start, 1200);
        let mut cubic = Arc::new(CubicConfig::default()).build(start, 1200);
        assert!(
            cubic.initial_window() > floor,
            "the test wants cubic above the floor first"
        );
        assert_eq!(floored.window(), cubic.window());
        let mut seen_below = false;
        let mut t = start;
        for _ in 0..20 {
            t += Duration::from_millis(300);
            for c in [&mut floored, &mut cubic] {
                c.on_congestion_event(t, t - Duration::from_millis(100), false, 1200);
            }
            assert_eq!(floored.window(), cubic.window().max(floor));
            seen_below |= cubic.window() < floor;
        }
        assert!(seen_below, "cubic alone never went below the floor");
        assert_eq!(floored.clone_box().window(), floor);
    }
}
