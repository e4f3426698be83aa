//! Whether a client may make this node load a room: at most `room_creations_per_sec`
//! a second per connection (a token bucket each) and `max_rooms` loaded at once.
//! Loading a room costs the node an actor and a handler instance, and an empty room
//! keeps them a while, so a client opening room after room is refused
//! (`rate_limited`, then `overloaded`) instead of filling the node.

use edgeroom_host::room::RoomKey;
use edgeroom_proto::{ErrorCode, ProtoError};

use crate::Gateway;

/// A token bucket: `per_sec` tokens a second, holding at most `per_sec`. Amounts are in
/// thousandths of a token so that milliseconds refill exactly.
#[derive(Debug)]
pub struct Bucket {
    per_sec: u64,
    milli: u64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket; `per_sec` 0 never refuses.
    pub fn new(per_sec: u32, now_ms: u64) -> Self {
        let per_sec = u64::from(per_sec);
        Self {
            per_sec,
            milli: per_sec * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = self.per_sec * 1000;
        self.milli = cap.min(
            self.milli
                .saturating_add(elapsed.saturating_mul(self.per_sec)),
        );
        if self.milli < 1000 {
            return false;
        }
        self.milli -= 1000;
        true
    }
}

/// Whether a connection with `bucket` may join `key` now: a room loaded here costs
/// nothing more; one that would be loaded takes a token and a place under
/// `max_rooms` (checked, not reserved: joins racing past it overshoot by a few at
/// most). A refusal is counted.
pub fn may_create(node: &Gateway, bucket: &mut Bucket, key: &RoomKey) -> Result<(), ProtoError> {
    if node.rooms.loaded(key).is_some() {
        return Ok(());
    }
    let limits = &node.config.limits;
    if node.rooms.count() >= limits.max_rooms {
        node.metrics.rooms_refused.inc();
        return Err(ProtoError::new(
            ErrorCode::Overloaded,
            format!(
                "this node has {} rooms loaded, as many as it may; try again later or elsewhere",
                limits.max_rooms
            ),
        ));
    }
    if bucket.take(node.clock.mono_ms()) {
        return Ok(());
    }
    node.metrics.room_creations_refused.inc();
    let per_sec = limits.room_creations_per_sec;
    Err(ProtoError::new(
        ErrorCode::RateLimited,
        format!("a connection may create at most {per_sec} rooms a second; try again shortly"),
    ))
}

#[cfg(test)]
mod tests {
    use super::Bucket;

    #[test]
    fn a_bucket_refuses_past_its_rate_and_refills_with_time() {
        let mut b = Bucket::new(5, 1_000);
        assert_eq!((0..8).filter(|_| b.take(1_000)).count(), 5);
        assert!(!b.take(1_100), "100 ms refill half a token");
        assert!(b.take(1_200), "200 ms refill one");
        assert!(!b.take(1_200));
        // A long pause refills to the cap, no further.
        assert_eq!((0..8).filter(|_| b.take(60_000)).count(), 5);
        // A clock that goes back refills nothing.
        assert!(!b.take(59_000));
        let mut free = Bucket::new(0, 0);
        assert!((0..1000).all(|_| free.take(0)));
    }
}
