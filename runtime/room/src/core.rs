//! The room's bookkeeping, with no I/O: members and presence, the event log with its
//! sequence numbers, resume cursors, and idempotent publishes.
//!
//! The room actor feeds it what happened and the current time, and acts on what it
//! returns. Nothing here awaits, locks or reads a clock, so it is tested directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::catchup::{CatchUp, catch_up};
pub use crate::log::{LogEntry, Sequenced, Target};
use edgeroom_proto::Cursor;
use edgeroom_proto::ids::{ConnId, NodeId, RoomId, Seq};
use edgeroom_proto::member::JoinAuth;
use edgeroom_proto::payload::Payload;

/// A member of the room.
#[derive(Debug, Clone)]
pub struct Member {
    /// JSON; `null` until the handler sets it.
    pub presence: String,
    /// What the member joined with (kept to re-join after a long absence).
    pub auth: JoinAuth,
    /// The member's claim: 1 when it joined, and each time its client resumes on
    /// another node, one more than the highest claim that node heard of. Of two nodes
    /// that both think they hold a member, the newer session token wins, then the
    /// higher claim, a tie going to the greater node id: no two nodes' clocks are ever
    /// compared.
    pub claim: u64,
    /// The generation of the newest resume token the member's session was given (0
    /// where its protocol's tokens do not rotate): a resume on another node with an
    /// older one is refused, so a captured token is spent once the client moves on.
    pub token: u64,
    /// `Some(t)` while the member's connection is gone: since when.
    pub detached_since_ms: Option<u64>,
    /// Everything queued to the member, per origin, as of its detach (the resume point
    /// when the client does not say what it received). Set when the member detaches
    /// rather than per delivery, which keeps fan-out free of lookups.
    pub last_queued: Cursor,
}

/// Results remembered for idempotent emits, keyed by the client's `id`.
#[derive(Debug, Clone)]
pub struct Remembered<R> {
    pub at_ms: u64,
    pub result: R,
    /// What keeping it costs (see [`Weight`]), counted against `LogLimits::max_ids_bytes`.
    weight: usize,
}

/// What a remembered result costs to keep, in bytes, as the idempotency limits count it.
pub trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for () {
    fn weight(&self) -> usize {
        0
    }
}

impl Weight for Result<Option<Payload>, edgeroom_proto::ProtoError> {
    fn weight(&self) -> usize {
        match self {
            Ok(Some(p)) => p.size(),
            Ok(None) => 0,
            Err(e) => e.message.len(),
        }
    }
}

/// A remembered id's fixed cost besides its key and result: the map entry and the
/// order queue's copy of the key.
const ID_OVERHEAD: usize = 64;

/// Limits of the log: an event goes once it is older than `max_age_ms`, or the oldest
/// goes while there are more than `max_events` or they cost more than `max_bytes` (see
/// [`LogEntry::cost`]; the newest event is kept whatever it costs). Idempotency ids
/// are kept as long as events, and the oldest go while there are more than `max_ids`
/// or they cost more than `max_ids_bytes` (key, result and 64 bytes each).
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub max_age_ms: u64,
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_ids: usize,
    pub max_ids_bytes: usize,
}

#[derive(Debug)]
pub struct RoomCore<R> {
    origin: NodeId,
    room: RoomId,
    next_seq: Seq,
    members: BTreeMap<ConnId, Member>,
    log: VecDeque<Arc<LogEntry>>,
    /// What the events in `log` cost, in bytes (see [`LogEntry::cost`]).
    log_bytes: usize,
    limits: LogLimits,
    /// This node's first sequence number in this room since the room was loaded.
    first_seq: Seq,
    /// Per origin, the highest sequence number no longer in the log.
    evicted: Cursor,
    head: Cursor,
    ids: HashMap<String, Remembered<R>>,
    /// The ids in the order they were remembered, oldest first (an id remembered again
    /// keeps its place).
    ids_order: VecDeque<String>,
    /// What the remembered ids cost, in bytes.
    ids_bytes: usize,
    /// Ids forgotten over `max_ids` / `max_ids_bytes` (not by age) since the room
    /// loaded: a retry of one of those runs again.
    ids_dropped: u64,
}

impl<R: Clone + Weight> RoomCore<R> {
    /// A room whose events from this node are numbered from `first_seq` on (the first
    /// number of a fresh run: see `room::runs`).
    pub fn new(origin: NodeId, room: RoomId, first_seq: Seq, limits: LogLimits) -> Self {
        debug_assert_eq!(first_seq.n, 1, "a room starts a fresh run");
        Self {
            origin,
            room,
            next_seq: first_seq,
            first_seq,
            members: BTreeMap::new(),
            log: VecDeque::new(),
            log_bytes: 0,
            limits,
            evicted: Cursor::default(),
            head: Cursor::default(),
            ids: HashMap::new(),
            ids_order: VecDeque::new(),
            ids_bytes: 0,
            ids_dropped: 0,
        }
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    pub fn members(&self) -> &BTreeMap<ConnId, Member> {
        &self.members
    }

    pub fn member(&self, conn: &ConnId) -> Option<&Member> {
        self.members.get(conn)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The room's version vector: every event so far.
    pub fn head(&self) -> &Cursor {
        &self.head
    }

    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Add a member with its claim (1 for a fresh join). False if it already is one.
    pub fn join(&mut self, conn: ConnId, auth: JoinAuth, claim: u64) -> bool {
        debug_assert!(claim > 0, "claims start at 1");
        if self.members.contains_key(&conn) {
            return false;
        }
        self.members.insert(
            conn,
            Member {
                presence: "null".into(),
                auth,
                claim,
                token: 0,
                detached_since_ms: None,
                last_queued: Cursor::default(),
            },
        );
        true
    }

    /// The member's session was given the token of `generation`: false if that is
    /// not news (or it is no member).
    pub fn set_token(&mut self, conn: &ConnId, generation: u64) -> bool {
        match self.members.get_mut(conn) {
            Some(m) if m.token != generation => {
                m.token = generation;
                true
            }
            _ => false,
        }
    }

    /// Remove a member; returns it if it was one.
    pub fn leave(&mut self, conn: &ConnId) -> Option<Member> {
        self.members.remove(conn)
    }

    pub fn set_presence(&mut self, conn: &ConnId, presence: String) -> bool {
        match self.members.get_mut(conn) {
            Some(m) => {
                m.presence = presence;
                true
            }
            None => false,
        }
    }

    /// The member's connection is gone; it stays a member for the presence grace.
    /// Everything in the log so far was queued to it, except from `lost_at` on when a
    /// push to it failed.
    /// `shown`: the cursor members here were last given (the head, but for this node's
    /// own events still held for confirmation).
    pub fn detach(
        &mut self,
        conn: &ConnId,
        now_ms: u64,
        lost_at: Option<&LogEntry>,
        shown: &Cursor,
    ) {
        let upto = match lost_at {
            Some(e) => self.cursor_before(e),
            None => shown.clone(),
        };
        if let Some(m) = self.members.get_mut(conn) {
            if m.detached_since_ms.is_none() {
                for (origin, seq) in upto.iter() {
                    m.last_queued.advance(origin, seq);
                }
            }
            m.detached_since_ms.get_or_insert(now_ms);
        }
    }

    /// The room's cursor just before `entry` was logged: per origin, one below the
    /// first of its events from `entry` on (per-origin order is log order).
    fn cursor_before(&self, entry: &LogEntry) -> Cursor {
        let Some(at) = self
            .log
            .iter()
            .rposition(|e| e.origin == entry.origin && e.seq == entry.seq)
        else {
            return self.head.clone();
        };
        let mut firsts: BTreeMap<&NodeId, Seq> = BTreeMap::new();
        for e in self.log.range(at..) {
            firsts.entry(&e.origin).or_insert(e.seq);
        }
        let mut out = Cursor::default();
        for (origin, seq) in self.head.iter() {
            let upto = firsts.get(origin).map_or(seq, |s| s.prev());
            out.advance(origin, upto);
        }
        out
    }

    /// The member is back: the events it has not seen, by its cursor (or, without one,
    /// after what was last queued to it).
    pub fn reattach(&mut self, conn: &ConnId, cursor: Option<&Cursor>) -> Option<CatchUp> {
        let m = self.members.get_mut(conn)?;
        m.detached_since_ms = None;
        let from = match cursor {
            Some(c) => c.clone(),
            None => m.last_queued.clone(),
        };
        Some(self.replay_for(conn, &from))
    }

    /// The events after `from` that `conn` should receive, and how many of those
    /// that were used the log no longer has (or never had).
    pub fn replay_for(&self, conn: &ConnId, from: &Cursor) -> CatchUp {
        self.catch_up(conn, from, Vec::new(), &[])
    }

    /// [`RoomCore::replay_for`], with what other replicas sent for the member and
    /// the positions they said they reached.
    pub fn catch_up(
        &self,
        conn: &ConnId,
        from: &Cursor,
        others: Vec<Arc<LogEntry>>,
        heads: &[&Cursor],
    ) -> CatchUp {
        let mut used = vec![&self.evicted, &self.head];
        used.extend_from_slice(heads);
        catch_up(conn, from, self.replay_all(from), others, &used, &self.head)
    }

    /// Per origin, the highest number no longer in the log.
    pub fn evicted(&self) -> &Cursor {
        &self.evicted
    }

    /// Where this replica starts with `origin`: nothing before `first` is owed here,
    /// and every number before it was used (the origin said so). Members joining from
    /// now on are not owed what came before.
    pub fn mark_start(&mut self, origin: &NodeId, first: Seq) {
        self.head.advance(origin, first.prev());
    }

    /// An event of `origin` this replica passes over without logging it (it has the
    /// same event under another origin: an emit retried elsewhere): the cursor moves
    /// past it all the same, so what follows is no gap.
    pub fn pass(&mut self, origin: &NodeId, seq: Seq) {
        self.head.advance(origin, seq);
    }

    /// `origin`'s events in the log after `after`, in order.
    pub fn origin_after(&self, origin: &NodeId, after: Seq) -> Vec<Arc<LogEntry>> {
        self.log
            .iter()
            .filter(|e| e.origin == *origin && e.seq > after)
            .cloned()
            .collect()
    }

    /// `origin`'s events in the log after `after`, found from the newest back: costs
    /// what is new, not the whole log (what a standalone room's journal asks after
    /// every acknowledged emit).
    pub fn newest_after(&self, origin: &NodeId, after: Seq) -> Vec<Arc<LogEntry>> {
        let mut out: Vec<Arc<LogEntry>> = self
            .log
            .iter()
            .rev()
            // Per origin the log is in sequence order: the first of its events at or
            // below `after` has only older ones behind it.
            .take_while(|e| !(e.origin == *origin && e.seq <= after))
            .filter(|e| e.origin == *origin)
            .cloned()
            .collect();
        out.reverse();
        debug_assert!(
            out.windows(2).all(|w| w[0].seq < w[1].seq),
            "in sequence order"
        );
        out
    }

    /// The first of this node's own events in the log stamped after `since_ms` (found
    /// from the newest back: costs what came since), if any.
    pub fn own_since(&self, since_ms: u64) -> Option<Seq> {
        self.log
            .iter()
            .rev()
            .take_while(|e| e.at_ms > since_ms)
            .filter(|e| e.origin == self.origin)
            .map(|e| e.seq)
            .last()
    }

    /// Every event in the log after `after`, whoever it was for, oldest first.
    pub fn replay_all(&self, after: &Cursor) -> Vec<Arc<LogEntry>> {
        // The log is in delivery order, so per origin in sequence order: what is
        // after `after` is a suffix of each origin's events.
        self.log
            .iter()
            .filter(|e| !after.covers(&e.origin, e.seq))
            .cloned()
            .collect()
    }

    /// Sequence a new event from this node and keep it in the log.
    pub fn publish(
        &mut self,
        now_ms: u64,
        target: Target,
        event: String,
        payload: Payload,
        from: Option<ConnId>,
        key: Option<String>,
    ) -> Arc<LogEntry> {
        let seq = self.next_seq;
        debug_assert_eq!(seq.run, self.first_seq.run, "one run per loaded room");
        debug_assert!(seq.n < u64::MAX, "a run never holds 2^64 events");
        self.next_seq = seq.next();
        let origin = self.origin.clone();
        self.append(Sequenced {
            origin,
            seq,
            at_ms: now_ms,
            target,
            event,
            payload,
            from,
            key,
        })
    }

    /// Take back an event of this room's journal (a restarted standalone node), in
    /// order, before anything new: as [`RoomCore::append`], and what came before the
    /// first one of its origin counts as gone (a resume from before it is a gap).
    pub fn restore(&mut self, e: Sequenced) -> Arc<LogEntry> {
        if self.head.seen(&e.origin).is_none() {
            self.evicted.advance(&e.origin, e.seq.prev());
        }
        self.append(e)
    }

    /// Take back a member of this room's journal: detached since `now_ms` (its
    /// connection went with the node), owed everything the log still holds.
    pub fn restore_member(&mut self, conn: ConnId, auth: JoinAuth, now_ms: u64) {
        if self.join(conn.clone(), auth, 1) {
            let owed = self.evicted.clone();
            if let Some(m) = self.members.get_mut(&conn) {
                m.detached_since_ms = Some(now_ms);
                m.last_queued = owed;
            }
        }
    }

    /// Keep an event another node sequenced (delivered here in its origin's order).
    pub fn append(&mut self, e: Sequenced) -> Arc<LogEntry> {
        debug_assert!(
            !self.head.covers(&e.origin, e.seq),
            "sequence numbers only grow per origin"
        );
        self.head.advance(&e.origin, e.seq);
        let entry = Arc::new(LogEntry::new(self.room.clone(), e, self.head.to_string()));
        self.log_bytes += entry.cost();
        self.log.push_back(entry.clone());
        while self.log.len() > self.limits.max_events
            || (self.log_bytes > self.limits.max_bytes && self.log.len() > 1)
        {
            self.evict_front();
        }
        entry
    }

    fn evict_front(&mut self) {
        if let Some(e) = self.log.pop_front() {
            self.evicted.advance(&e.origin, e.seq);
            debug_assert!(
                self.log_bytes >= e.cost(),
                "the log's bytes count what it holds"
            );
            self.log_bytes = self.log_bytes.saturating_sub(e.cost());
        }
    }

    /// What the events kept for resume cost, in bytes (see [`LogEntry::cost`]).
    pub fn log_bytes(&self) -> usize {
        self.log_bytes
    }

    /// This node's events of this room in `from..=to` still in the log, and the first
    /// number it can still give: what is below it in this run is gone for good, and an
    /// earlier run (the room reloaded since) is over.
    pub fn own_range(&self, from: Seq, to: Seq) -> (Vec<Arc<LogEntry>>, Seq) {
        let events: Vec<_> = self
            .log
            .iter()
            .filter(|e| e.origin == self.origin && e.seq >= from && e.seq <= to)
            .cloned()
            .collect();
        let evicted = self.evicted.get(&self.origin);
        let first = match evicted.run == self.first_seq.run {
            true => evicted.next(),
            false => self.first_seq,
        };
        (events, first)
    }

    /// The number this node's next event here will get.
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    pub fn origin(&self) -> &NodeId {
        &self.origin
    }

    pub fn first_seq(&self) -> Seq {
        self.first_seq
    }

    /// How many idempotency ids are remembered now.
    pub fn ids_len(&self) -> usize {
        self.ids.len()
    }

    /// Every idempotency id remembered now.
    pub fn remembered_ids(&self) -> impl Iterator<Item = &String> {
        self.ids.keys()
    }

    /// An idempotency id's remembered answer with when it was remembered.
    pub fn remembered_entry(&self, id: &str) -> Option<&Remembered<R>> {
        self.ids.get(id)
    }

    /// The result of an earlier emit with this idempotency id, if still remembered.
    pub fn remembered(&self, id: &str) -> Option<&R> {
        self.ids.get(id).map(|r| &r.result)
    }

    pub fn remember(&mut self, id: String, now_ms: u64, result: R) {
        let weight = ID_OVERHEAD + 2 * id.len() + result.weight();
        self.ids_bytes += weight;
        let entry = Remembered {
            at_ms: now_ms,
            result,
            weight,
        };
        match self.ids.insert(id.clone(), entry) {
            Some(old) => self.ids_bytes -= old.weight,
            None => self.ids_order.push_back(id),
        }
        while self.ids.len() > self.limits.max_ids
            || (self.ids_bytes > self.limits.max_ids_bytes && self.ids.len() > 1)
        {
            self.forget_oldest_id();
            self.ids_dropped += 1;
        }
        debug_assert_eq!(
            self.ids.len(),
            self.ids_order.len(),
            "every id has its place"
        );
    }

    fn forget_oldest_id(&mut self) {
        if let Some(id) = self.ids_order.pop_front()
            && let Some(r) = self.ids.remove(&id)
        {
            self.ids_bytes -= r.weight;
        }
    }

    /// What the remembered idempotency ids cost, in bytes.
    pub fn ids_bytes(&self) -> usize {
        self.ids_bytes
    }

    /// Ids forgotten over the count or byte cap since the room loaded.
    pub fn ids_dropped(&self) -> u64 {
        self.ids_dropped
    }

    /// Drop what is older than the log window. Returns the members whose connection has
    /// been gone longer than `grace_ms`: the actor makes them leave.
    pub fn expire(&mut self, now_ms: u64, grace_ms: u64) -> Vec<ConnId> {
        let cutoff = now_ms.saturating_sub(self.limits.max_age_ms);
        while self.log.front().is_some_and(|e| e.at_ms < cutoff) {
            self.evict_front();
        }
        // Remembered in time order, so what is too old is at the front (an id
        // remembered again keeps its older place and goes a little early).
        while let Some(id) = self.ids_order.front() {
            match self.ids.get(id) {
                Some(r) if r.at_ms >= cutoff => break,
                _ => self.forget_oldest_id(),
            }
        }
        self.members
            .iter()
            .filter(|(_, m)| {
                m.detached_since_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= grace_ms)
            })
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Members whose connection is live.
    pub fn attached(&self) -> impl Iterator<Item = &ConnId> {
        self.members
            .iter()
            .filter(|(_, m)| m.detached_since_ms.is_none())
            .map(|(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> RoomCore<()> {
        RoomCore::new(
            NodeId::new("n1").unwrap(),
            RoomId::new("r").unwrap(),
            Seq::first(1),
            LogLimits {
                max_age_ms: 1000,
                max_events: 3,
                max_bytes: usize::MAX,
                max_ids: usize::MAX,
                max_ids_bytes: usize::MAX,
            },
        )
    }

    fn conn(s: &str) -> ConnId {
        ConnId::from_trusted(s.into())
    }

    /// A restarted room's journal: events of an earlier run come back first, gone
    /// before the first of them counts as a gap, and what is new is found from the
    /// newest back, the same as a scan of the whole log finds it.
    #[test]
    fn restored_events_come_first_and_the_newest_are_found_from_the_back() {
        let n1 = NodeId::new("n1").unwrap();
        let mut c: RoomCore<()> = RoomCore::new(
            n1.clone(),
            RoomId::new("r").unwrap(),
            Seq::first(9),
            LogLimits {
                max_age_ms: u64::MAX,
                max_events: 100,
                max_bytes: usize::MAX,
                max_ids: usize::MAX,
                max_ids_bytes: usize::MAX,
            },
        );
        for n in 5..=7 {
            c.restore(Sequenced {
                origin: n1.clone(),
                seq: Seq::new(3, n),
                at_ms: 0,
                target: Target::All,
                event: "e".into(),
                payload: Payload::default(),
                from: None,
                key: None,
            });
        }
        assert_eq!(c.evicted().get(&n1), Seq::new(3, 4));
        for _ in 0..3 {
            c.publish(0, Target::All, "e".into(), Payload::default(), None, None);
        }
        for after in [
            Seq::default(),
            Seq::new(3, 6),
            Seq::new(9, 0),
            Seq::new(9, 2),
            Seq::new(9, 3),
        ] {
            let scan: Vec<Seq> = c.origin_after(&n1, after).iter().map(|e| e.seq).collect();
            let back: Vec<Seq> = c.newest_after(&n1, after).iter().map(|e| e.seq).collect();
            assert_eq!(scan, back, "after {after:?}");
        }
        assert_eq!(c.newest_after(&n1, Seq::new(9, 1)).len(), 2);
    }

    #[test]
    fn history_is_bounded_in_bytes_keeping_the_newest_event() {
        let limits = LogLimits {
            max_age_ms: u64::MAX,
            max_events: 1000,
            max_bytes: 10_000,
            max_ids: usize::MAX,
            max_ids_bytes: usize::MAX,
        };
        let mut c: RoomCore<()> = RoomCore::new(
            NodeId::new("n1").unwrap(),
            RoomId::new("r").unwrap(),
            Seq::first(1),
            limits,
        );
        let big = |n: usize| Payload {
            json: format!("[\"{}\"]", "x".repeat(n)),
            binaries: vec![],
        };
        let mut costs = Vec::new();
        for _ in 0..10 {
            costs.push(
                c.publish(0, Target::All, "e".into(), big(1_000), None, None)
                    .cost(),
            );
        }
        assert!(c.log_bytes() <= 10_000, "{}", c.log_bytes());
        let kept = c.replay_all(&Cursor::default()).len();
        assert_eq!(c.log_bytes(), costs[10 - kept..].iter().sum::<usize>());
        assert!((3..10).contains(&kept), "{kept} kept");
        // What went is known to be gone (resume from before it is a gap).
        assert_eq!(
            c.evicted.get(&NodeId::new("n1").unwrap()).n,
            (10 - kept) as u64
        );
        // One event bigger than the whole budget replaces everything, and is kept.
        let huge = c.publish(0, Target::All, "e".into(), big(20_000), None, None);
        assert_eq!(c.replay_all(&Cursor::default()).len(), 1);
        assert_eq!(c.log_bytes(), huge.cost());
    }

    #[test]
    fn idempotency_ids_are_bounded_by_count_and_bytes_oldest_first() {
        let limits = LogLimits {
            max_age_ms: 1_000,
            max_events: 10,
            max_bytes: usize::MAX,
            max_ids: 3,
            max_ids_bytes: 1_000,
        };
        type Answer = Result<Option<Payload>, edgeroom_proto::ProtoError>;
        let mut c: RoomCore<Answer> = RoomCore::new(
            NodeId::new("n1").unwrap(),
            RoomId::new("r").unwrap(),
            Seq::first(1),
            limits,
        );
        for id in ["a", "b", "c", "d"] {
            c.remember(id.into(), 0, Ok(None));
        }
        // By count: the oldest went.
        assert!(c.remembered("a").is_none());
        assert_eq!(c.ids_dropped(), 1);
        assert!(["b", "c", "d"].iter().all(|id| c.remembered(id).is_some()));
        // By bytes: an answer of 900 bytes leaves room for itself alone.
        let big = Payload {
            json: format!("[\"{}\"]", "x".repeat(896)),
            binaries: vec![],
        };
        c.remember("e".into(), 10, Ok(Some(big)));
        assert!(c.remembered("d").is_none() && c.remembered("e").is_some());
        assert_eq!(c.ids_dropped(), 4, "b, c and d made room for e");
        assert_eq!(c.ids_bytes(), ID_OVERHEAD + 2 + 900);
        // Remembered again: counted once.
        c.remember("e".into(), 20, Ok(None));
        assert_eq!(c.ids_bytes(), ID_OVERHEAD + 2);
        // By age, as before.
        c.remember("f".into(), 900, Ok(None));
        c.expire(1_500, u64::MAX);
        assert!(
            c.remembered("e").is_none(),
            "remembered at 20 (its place from 10)"
        );
        assert!(c.remembered("f").is_some());
        assert_eq!(c.ids_bytes(), ID_OVERHEAD + 2);
    }

    #[test]
    fn sequences_and_targets() {
        let mut c = core();
        assert!(c.join(conn("a"), JoinAuth::anonymous("null"), 1));
        assert!(!c.join(conn("a"), JoinAuth::anonymous("null"), 1));
        let e1 = c.publish(0, Target::All, "x".into(), Payload::empty(), None, None);
        let e2 = c.publish(
            0,
            Target::AllExcept(conn("a")),
            "y".into(),
            Payload::empty(),
            None,
            None,
        );
        assert_eq!((e1.seq, e2.seq), (Seq::new(1, 1), Seq::new(1, 2)));
        assert_eq!(e2.cursor, "n1:1.2");
        assert!(!e2.target.includes(&conn("a")) && e2.target.includes(&conn("b")));
    }

    #[test]
    fn replay_gives_missed_events_once_in_order() {
        let mut c = core();
        c.join(conn("a"), JoinAuth::anonymous("null"), 1);
        c.publish(0, Target::All, "1".into(), Payload::empty(), None, None);
        c.detach(&conn("a"), 10, None, &c.head().clone());
        c.publish(20, Target::All, "2".into(), Payload::empty(), None, None);
        c.publish(
            20,
            Target::Only(conn("b")),
            "not-mine".into(),
            Payload::empty(),
            None,
            None,
        );
        c.publish(
            30,
            Target::Only(conn("a")),
            "3".into(),
            Payload::empty(),
            None,
            None,
        );
        let r = c.reattach(&conn("a"), None).unwrap();
        let names: Vec<_> = r.events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["2", "3"]);
        assert_eq!(r.missing, 0);
        // A client that says it saw up to n1:1.2 gets only what came after.
        let r = c
            .reattach(&conn("a"), Some(&"n1:1.2".parse().unwrap()))
            .unwrap();
        assert_eq!(r.events.len(), 1);
    }

    #[test]
    fn eviction_makes_a_replay_incomplete() {
        let mut c = core();
        c.join(conn("a"), JoinAuth::anonymous("null"), 1);
        for i in 0..5 {
            c.publish(i, Target::All, i.to_string(), Payload::empty(), None, None);
        }
        assert_eq!(c.log_len(), 3);
        let r = c.replay_for(&conn("a"), &"n1:1.1".parse().unwrap());
        assert_eq!(r.missing, 1, "1.2 was evicted");
        assert_eq!(r.events.len(), 3);
        let r = c.replay_for(&conn("a"), &"n1:1.2".parse().unwrap());
        assert_eq!(r.missing, 0);
        c.expire(2000, 0);
        assert_eq!(c.log_len(), 0);
        // Everything after 1.2 went: the member is told, though no event is left.
        assert_eq!(
            c.replay_for(&conn("a"), &"n1:1.2".parse().unwrap()).missing,
            3
        );
    }

    #[test]
    fn a_start_mark_owes_members_nothing_before_it() {
        let mut c = core();
        let b = NodeId::new("b").unwrap();
        c.mark_start(&b, Seq::new(4, 20));
        c.join(conn("a"), JoinAuth::anonymous("null"), 1);
        let joined_at = c.head().clone();
        c.append(Sequenced {
            origin: b.clone(),
            seq: Seq::new(4, 20),
            at_ms: 0,
            target: Target::All,
            event: "x".into(),
            payload: Payload::empty(),
            from: None,
            key: None,
        });
        let r = c.replay_for(&conn("a"), &joined_at);
        assert_eq!((r.events.len(), r.missing), (1, 0));
        // A member whose cursor is older than where this replica started is told
        // what it cannot have here.
        let r = c.replay_for(&conn("a"), &"b:4.5".parse().unwrap());
        assert_eq!((r.events.len(), r.missing), (1, 14));
    }

    #[test]
    fn detached_members_leave_after_grace() {
        let mut c = core();
        c.join(conn("a"), JoinAuth::anonymous("null"), 1);
        c.join(conn("b"), JoinAuth::anonymous("null"), 1);
        c.detach(&conn("a"), 100, None, &c.head().clone());
        assert!(c.expire(150, 100).is_empty());
        assert_eq!(c.expire(200, 100), vec![conn("a")]);
        assert_eq!(c.attached().cloned().collect::<Vec<_>>(), vec![conn("b")]);
    }
}
