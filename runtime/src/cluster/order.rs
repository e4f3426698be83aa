//! Per-origin FIFO for a room's messages from other nodes: deliver in sequence order,
//! drop duplicates, ask the origin to repair gaps.
//!
//! Every message carries its origin node and a per-(origin, room) sequence number. A
//! replica of the room on another node feeds whatever arrives (live forwards, repair
//! answers, in any order and any number of times) into [`Inbound::receive`] and gets
//! back, in order, exactly the messages to deliver to its members. A gap that stays
//! open for `patience` becomes a [`Repair`] request for the origin's room log; it is
//! asked again every `patience` until filled. Sans-IO: fed messages and time, returns
//! actions; the room actor does the I/O (`room::replica`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::ids::{NodeId, Seq};
use crate::protocol::cursor::Cursor;

/// Ask `origin` for its messages `from..=to` of this room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub origin: NodeId,
    pub from: Seq,
    pub to: Seq,
}

/// What [`Inbound::receive`] did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<T> {
    /// These, in order (the message and any it unblocked), are next for the members.
    Deliver(Vec<(NodeId, Seq, T)>),
    /// Already delivered or already waiting: dropped.
    Duplicate,
    /// Held until the messages before it arrive.
    Held,
    /// Too far ahead to hold: dropped; a repair will bring it back in order.
    Overflow,
}

struct Origin<T> {
    delivered: Seq,
    waiting: BTreeMap<u64, T>,
    /// When the current gap was first seen, and when it was last asked for.
    gap_since: Option<Instant>,
    asked_at: Option<Instant>,
}

impl<T> Origin<T> {
    fn new(delivered: Seq) -> Self {
        Self {
            delivered,
            waiting: BTreeMap::new(),
            gap_since: None,
            asked_at: None,
        }
    }

    /// Move every held message that is now next into `out`, in order.
    fn release(&mut self, origin: &NodeId, out: &mut Vec<(NodeId, Seq, T)>) {
        while let Some(next) = self.waiting.remove(&(self.delivered.0 + 1)) {
            self.delivered = Seq(self.delivered.0 + 1);
            out.push((origin.clone(), self.delivered, next));
        }
        // A gap is closed once nothing waits; otherwise the rest of it is still open.
        if self.waiting.is_empty() {
            self.gap_since = None;
            self.asked_at = None;
        }
    }
}

pub struct Inbound<T> {
    origins: HashMap<NodeId, Origin<T>>,
    patience: Duration,
    /// Messages held per origin at most; beyond, the newest are dropped and repaired.
    max_waiting: usize,
}

impl<T> Inbound<T> {
    /// Starting after `cursor`: what it covers counts as delivered.
    pub fn new(cursor: &Cursor, patience: Duration, max_waiting: usize) -> Self {
        let origins = cursor
            .iter()
            .map(|(origin, seq)| (origin.clone(), Origin::new(seq)))
            .collect();
        Self {
            origins,
            patience,
            max_waiting,
        }
    }

    /// Take in one message from `origin`.
    pub fn receive(&mut self, origin: &NodeId, seq: Seq, msg: T, now: Instant) -> Received<T> {
        let o = self
            .origins
            .entry(origin.clone())
            .or_insert_with(|| Origin::new(Seq(0)));
        if seq <= o.delivered || o.waiting.contains_key(&seq.0) {
            return Received::Duplicate;
        }
        if seq.0 > o.delivered.0 + 1 {
            if o.waiting.len() >= self.max_waiting {
                return Received::Overflow;
            }
            o.waiting.insert(seq.0, msg);
            o.gap_since.get_or_insert(now);
            return Received::Held;
        }
        let mut out = vec![(origin.clone(), seq, msg)];
        o.delivered = seq;
        o.release(origin, &mut out);
        Received::Deliver(out)
    }

    /// Repairs due at `now`: gaps open for `patience`, asked again every `patience`.
    pub fn poll(&mut self, now: Instant) -> Vec<Repair> {
        let mut out = Vec::new();
        for (origin, o) in &mut self.origins {
            let (Some(since), Some((&first_waiting, _))) =
                (o.gap_since, o.waiting.first_key_value())
            else {
                continue;
            };
            let due = match o.asked_at {
                None => now.duration_since(since) >= self.patience,
                Some(asked) => now.duration_since(asked) >= self.patience,
            };
            if due {
                o.asked_at = Some(now);
                out.push(Repair {
                    origin: origin.clone(),
                    from: Seq(o.delivered.0 + 1),
                    to: Seq(first_waiting - 1),
                });
            }
        }
        out
    }

    /// The origin has nothing before `seq` any more (its log was trimmed, or it was
    /// declared dead): give up on the gap and go on from there. Returns what that
    /// unblocks, and how many messages were skipped (for a "gap" notice to members).
    pub fn skip_to(&mut self, origin: &NodeId, seq: Seq) -> (Vec<(NodeId, Seq, T)>, u64) {
        let o = self
            .origins
            .entry(origin.clone())
            .or_insert_with(|| Origin::new(Seq(0)));
        if seq.0 <= o.delivered.0 + 1 {
            return (Vec::new(), 0);
        }
        let skipped = (seq.0 - 1 - o.delivered.0) - o.waiting.range(..seq.0).count() as u64;
        let mut out = Vec::new();
        // Held messages below `seq` still go out, in order.
        let below: Vec<u64> = o.waiting.range(..seq.0).map(|(s, _)| *s).collect();
        for s in below {
            if let Some(msg) = o.waiting.remove(&s) {
                out.push((origin.clone(), Seq(s), msg));
            }
        }
        o.delivered = Seq(seq.0 - 1);
        o.release(origin, &mut out);
        (out, skipped)
    }

    /// The last sequence number delivered from `origin`; `None` if never heard of.
    pub fn delivered(&self, origin: &NodeId) -> Option<Seq> {
        self.origins.get(origin).map(|o| o.delivered)
    }

    /// `origin` is gone for good (declared dead): deliver what it sent that waits
    /// behind a gap, skipping the gap. Returns that, and how many were skipped.
    pub fn give_up(&mut self, origin: &NodeId) -> (Vec<(NodeId, Seq, T)>, u64) {
        let last = self
            .origins
            .get(origin)
            .and_then(|o| o.waiting.last_key_value().map(|(s, _)| *s));
        match last {
            Some(last) => self.skip_to(origin, Seq(last + 1)),
            None => (Vec::new(), 0),
        }
    }

    /// Everything delivered so far, per origin: the replica's resume cursor.
    pub fn cursor(&self) -> Cursor {
        let mut c = Cursor::default();
        for (origin, o) in &self.origins {
            c.advance(origin, o.delivered);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn seqs(r: Received<u32>) -> Vec<u64> {
        match r {
            Received::Deliver(v) => v.into_iter().map(|(_, s, _)| s.0).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn in_order_duplicates_and_held() {
        let t = Instant::now();
        let mut inb = Inbound::new(&Cursor::default(), Duration::from_millis(50), 100);
        let a = node("a");
        assert_eq!(seqs(inb.receive(&a, Seq(1), 1, t)), [1]);
        assert_eq!(inb.receive(&a, Seq(1), 1, t), Received::Duplicate);
        assert_eq!(inb.receive(&a, Seq(3), 3, t), Received::Held);
        assert_eq!(inb.receive(&a, Seq(3), 3, t), Received::Duplicate);
        assert_eq!(seqs(inb.receive(&a, Seq(2), 2, t)), [2, 3]);
        assert_eq!(inb.cursor().get(&a), Seq(3));
    }

    #[test]
    fn origins_are_independent() {
        let t = Instant::now();
        let mut inb = Inbound::new(&Cursor::default(), Duration::from_millis(50), 100);
        assert_eq!(inb.receive(&node("a"), Seq(2), 2, t), Received::Held);
        assert_eq!(seqs(inb.receive(&node("b"), Seq(1), 1, t)), [1]);
    }

    #[test]
    fn starts_after_a_cursor() {
        let t = Instant::now();
        let cursor: Cursor = "a:10".parse().unwrap();
        let mut inb = Inbound::new(&cursor, Duration::from_millis(50), 100);
        assert_eq!(inb.receive(&node("a"), Seq(10), 0, t), Received::Duplicate);
        assert_eq!(seqs(inb.receive(&node("a"), Seq(11), 0, t)), [11]);
    }

    #[test]
    fn a_gap_is_repaired_after_patience_and_asked_again() {
        let t = Instant::now();
        let p = Duration::from_millis(50);
        let mut inb = Inbound::new(&Cursor::default(), p, 100);
        let a = node("a");
        inb.receive(&a, Seq(1), 1, t);
        inb.receive(&a, Seq(5), 5, t);
        assert!(inb.poll(t + p / 2).is_empty(), "not before patience");
        let due = inb.poll(t + p);
        assert_eq!(
            due,
            [Repair {
                origin: a.clone(),
                from: Seq(2),
                to: Seq(4)
            }]
        );
        assert!(
            inb.poll(t + p + p / 2).is_empty(),
            "not twice in one patience"
        );
        assert_eq!(inb.poll(t + 2 * p).len(), 1, "asked again");
        // The repair answer fills it, in any order.
        assert_eq!(inb.receive(&a, Seq(3), 3, t), Received::Held);
        assert_eq!(seqs(inb.receive(&a, Seq(2), 2, t)), [2, 3]);
        assert_eq!(inb.poll(t + 10 * p)[0].from, Seq(4));
        assert_eq!(seqs(inb.receive(&a, Seq(4), 4, t)), [4, 5]);
        assert!(inb.poll(t + 20 * p).is_empty(), "closed");
    }

    #[test]
    fn skipping_a_lost_gap_delivers_what_waits() {
        let t = Instant::now();
        let mut inb = Inbound::new(&Cursor::default(), Duration::from_millis(50), 100);
        let a = node("a");
        inb.receive(&a, Seq(1), 1, t);
        inb.receive(&a, Seq(4), 4, t);
        inb.receive(&a, Seq(6), 6, t);
        let (out, skipped) = inb.skip_to(&a, Seq(5));
        let got: Vec<u64> = out.iter().map(|(_, s, _)| s.0).collect();
        // 2 and 3 are lost; 4 was held and goes out; 5 is still awaited, 6 waits.
        assert_eq!((got, skipped), (vec![4], 2));
        assert_eq!(seqs(inb.receive(&a, Seq(5), 5, t)), [5, 6]);
    }

    #[test]
    fn overflow_is_dropped_not_held() {
        let t = Instant::now();
        let mut inb = Inbound::new(&Cursor::default(), Duration::from_millis(50), 2);
        let a = node("a");
        inb.receive(&a, Seq(3), 3, t);
        inb.receive(&a, Seq(4), 4, t);
        assert_eq!(inb.receive(&a, Seq(5), 5, t), Received::Overflow);
        assert_eq!(inb.poll(t + Duration::from_secs(1))[0].to, Seq(2));
    }

    /// Any interleaving of three origins' messages, each sent up to three times and
    /// shuffled, comes out per-origin in order, each exactly once.
    #[test]
    fn shuffled_duplicated_streams_come_out_in_order_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let t = Instant::now();
            let mut inb = Inbound::new(&Cursor::default(), Duration::from_millis(50), 10_000);
            let origins = [node("a"), node("b"), node("c")];
            let mut wire = Vec::new();
            for (i, o) in origins.iter().enumerate() {
                for s in 1..=rng.random_range(1..60u64) {
                    for _ in 0..rng.random_range(1..=3) {
                        wire.push((o.clone(), Seq(s), (i, s)));
                    }
                }
            }
            let sent: HashMap<NodeId, u64> = origins
                .iter()
                .map(|o| {
                    (
                        o.clone(),
                        wire.iter()
                            .filter(|w| &w.0 == o)
                            .map(|w| w.1.0)
                            .max()
                            .unwrap(),
                    )
                })
                .collect();
            wire.shuffle(&mut rng);
            let mut got: HashMap<NodeId, Vec<u64>> = HashMap::new();
            for (o, s, m) in wire {
                if let Received::Deliver(v) = inb.receive(&o, s, m, t) {
                    for (o, s, _) in v {
                        got.entry(o).or_default().push(s.0);
                    }
                }
            }
            for o in &origins {
                let expect: Vec<u64> = (1..=sent[o]).collect();
                assert_eq!(got[o], expect);
            }
        }
    }
}
