//! A room's replica in a cluster: what it tells the room's other replicas, and what it
//! does with what they tell it.
//!
//! Every node with members in a room runs the room (its own actor, handler instance,
//! log and document) and talks to the others through `cluster::replicate`:
//!
//! - **Events.** What this node's handler sends is delivered here at once, then
//!   forwarded (one copy per interested region). What arrives from a peer goes through
//!   `cluster::order::Inbound`: per-origin FIFO, duplicates dropped, gaps held and then
//!   repaired from the origin's log (`Repair`/`Repaired`), or skipped with a notice when
//!   the origin no longer has them. Remote events enter this replica's log, so a client
//!   resumes here from a cursor another node gave it.
//! - **State.** The Automerge sync protocol with every other replica, after every
//!   change on either side; a peer's reconnection restarts it from scratch.
//! - **Presence.** Each node owns its members' entries. `Hello` carries them all (a
//!   replica greets a node that newly has members in the room, and every peer after a
//!   reconnection; the greeted one answers), `Presence` the changes; a node declared
//!   dead loses its entries on every other node.
//!
//! A room's sequence numbers start, each time it loads, at the load time in µs, so a
//! room that reloads never reuses a number a peer already delivered; an event carries
//! where its run of numbers started (`since`), so peers skip the gap at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync;
use tokio::sync::oneshot;

use super::core::{LogEntry, Sequenced, Target};
use super::outbox::Link;
use super::world::{Outgoing, RemoteMember, World};
use crate::cluster::interest::RoomRef;
use crate::cluster::order::{Inbound, Received};
use crate::cluster::replicate::{self, PeerMsg, Relay};
use crate::ids::{ConnId, NodeId, Seq};
use crate::payload::Payload;
use crate::protocol::native::ServerFrame;
use crate::protocol::{Cursor, ErrorCode, ProtoError};

pub type Replicator = replicate::Replicator<RoomMsg>;

/// How long a gap waits for the missing events before the origin is asked for them.
const REPAIR_PATIENCE: Duration = Duration::from_millis(300);
/// Events held per origin while a gap is open, at most.
const MAX_HELD: usize = 10_000;
/// How long taking over a member from another node waits for the other replicas'
/// history before it goes ahead with what it has.
const ADOPT_PATIENCE: Duration = Duration::from_secs(1);
/// Once one replica answered, how long the others get. Every replica logs every event
/// it received, so one answer has all but what another origin had not yet passed on;
/// the rest comes live or through gap repair from its origin (a dead node is often
/// among those that never answer, which is why this does not wait for everyone).
const ADOPT_GRACE: Duration = Duration::from_millis(100);
/// Payload bytes per backfill message, at most (well below the frame limit).
const BACKFILL_PART: usize = 1 << 20;

/// One event on the wire between replicas.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WireEvent {
    pub origin: NodeId,
    pub seq: Seq,
    /// The first sequence number of the origin's current run (see the module doc).
    pub since: Seq,
    pub at_ms: u64,
    pub target: Target,
    pub event: String,
    pub json: String,
    pub binaries: Vec<Vec<u8>>,
    pub from: Option<ConnId>,
}

impl WireEvent {
    fn new(e: &LogEntry, since: Seq) -> Self {
        Self {
            origin: e.origin.clone(),
            seq: e.seq,
            since,
            at_ms: e.at_ms,
            target: e.target.clone(),
            event: e.event.clone(),
            json: e.payload.json.clone(),
            binaries: e.payload.binaries.clone(),
            from: e.from.clone(),
        }
    }

    pub fn into_sequenced(self) -> Sequenced {
        Sequenced {
            origin: self.origin,
            seq: self.seq,
            at_ms: self.at_ms,
            target: self.target,
            event: self.event,
            payload: Payload {
                json: self.json,
                binaries: self.binaries,
            },
            from: self.from,
        }
    }
}

/// What replicas of a room tell each other.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum RoomMsg {
    Event(WireEvent),
    /// The sender has (or again reaches) a replica: all its members, and the last
    /// event it sequenced (the receiver asks for what it lacks of them: the tail of a
    /// partition is no gap until something follows it). Resets the receiver's state
    /// sync with it; `reply` asks for a hello back.
    Hello {
        members: Vec<(ConnId, RemoteMember)>,
        head: Seq,
        reply: bool,
    },
    /// Members the sender took on (joined, changed presence, or moved to it) or lost.
    Presence {
        joined: Vec<(ConnId, RemoteMember)>,
        left: Vec<ConnId>,
    },
    /// Send me every event in your log after this cursor, and what you know of this
    /// member: it is moving here.
    Backfill {
        after: String,
        conn: ConnId,
    },
    /// The answer for the member moving, in log order, in parts of at most
    /// `BACKFILL_PART` bytes of payload; the last part carries the member's record, if
    /// the sender knows it.
    Backfilled {
        conn: ConnId,
        events: Vec<WireEvent>,
        last: bool,
        member: Option<RemoteMember>,
    },
    /// A handler on the sender's node kicked this member, which the receiver holds.
    Kick {
        conn: ConnId,
        reason: String,
    },
    /// An Automerge sync message.
    Sync(Vec<u8>),
    /// Ask the receiver (the origin) for its events `from..=to`.
    Repair {
        from: Seq,
        to: Seq,
    },
    /// The answer: what it still has, and the first number it can still give.
    Repaired {
        events: Vec<WireEvent>,
        first_available: Seq,
    },
}

impl Relay for RoomMsg {
    fn relayed(&self) -> bool {
        matches!(self, RoomMsg::Event(_))
    }
}

/// A member whose client resumed here while another node held it: it waits for the
/// other replicas' history (or `ADOPT_PATIENCE`) before the room takes it on.
pub struct Adoption {
    pub conn: ConnId,
    pub link: Link,
    pub cursor: Option<Cursor>,
    pub done: oneshot::Sender<super::AdoptOutcome>,
    /// The member as the replicas that answered described it (the latest claim).
    pub record: Option<RemoteMember>,
    /// The history the other replicas sent for this member, in their log order.
    pub backlog: Vec<WireEvent>,
    waiting: HashSet<NodeId>,
    deadline: Instant,
    first_answer: Option<Instant>,
}

impl Adoption {
    pub fn new(
        conn: ConnId,
        link: Link,
        cursor: Option<Cursor>,
        done: oneshot::Sender<super::AdoptOutcome>,
    ) -> Self {
        Self {
            conn,
            link,
            cursor,
            done,
            record: None,
            backlog: Vec::new(),
            waiting: HashSet::new(),
            deadline: Instant::now(),
            first_answer: None,
        }
    }
}

pub struct Replica {
    rep: Arc<Replicator>,
    room: RoomRef,
    inbound: Inbound<WireEvent>,
    sync: HashMap<NodeId, sync::State>,
    adoptions: Vec<Adoption>,
}

impl Replica {
    pub fn new(rep: Arc<Replicator>, room: RoomRef) -> Self {
        Self {
            rep,
            room,
            inbound: Inbound::new(&Default::default(), REPAIR_PATIENCE, MAX_HELD),
            sync: HashMap::new(),
            adoptions: Vec::new(),
        }
    }

    /// Where this node's numbering of a room starts when it loads now.
    pub fn first_seq(now_ms: u64) -> Seq {
        Seq(now_ms.saturating_mul(1000))
    }

    fn send(&self, node: &NodeId, msg: RoomMsg) {
        self.rep.send(
            node,
            PeerMsg::Room {
                room: self.room.clone(),
                msg,
            },
        );
    }

    /// A member joined here. The first one makes this node a replica: its peers learn
    /// that from its interest and greet it (`peer_up`), it answers with its own hello.
    pub fn member_joined(&mut self) {
        self.rep.local_join(&self.room);
    }

    pub fn member_left(&mut self) {
        self.rep.local_leave(&self.room);
    }

    fn hello(&mut self, w: &mut World, node: &NodeId, reply: bool) {
        let members = w.local_records();
        let head = w.core.head().get(w.core.origin());
        self.send(
            node,
            RoomMsg::Hello {
                members,
                head,
                reply,
            },
        );
        let state = self.sync.entry(node.clone()).or_default();
        *state = sync::State::new();
        if let Some(msg) = w.doc.sync_message(state) {
            self.send(node, RoomMsg::Sync(msg));
        }
    }

    /// Send what the last call produced to the other replicas.
    pub fn flush(&mut self, w: &mut World) {
        let Some(out) = w.outgoing.as_mut().map(std::mem::take) else {
            return;
        };
        let Outgoing {
            events,
            joined,
            left,
            state,
            kicks,
        } = out;
        let since = w.core.first_seq();
        for e in events {
            self.rep
                .publish(&self.room, RoomMsg::Event(WireEvent::new(&e, since)));
        }
        if !joined.is_empty() || !left.is_empty() {
            self.rep
                .publish(&self.room, RoomMsg::Presence { joined, left });
        }
        if state {
            self.sync_all(w);
        }
        // After the call's events, so a kicked member gets those sent straight to it.
        for (node, conn, reason) in kicks {
            self.send(&node, RoomMsg::Kick { conn, reason });
        }
    }

    /// Offer every other replica what it lacks of the document.
    fn sync_all(&mut self, w: &mut World) {
        for node in self.rep.interested(&self.room) {
            let state = self.sync.entry(node.clone()).or_default();
            if let Some(msg) = w.doc.sync_message(state) {
                self.send(&node, RoomMsg::Sync(msg));
            }
        }
    }

    /// A message from another replica.
    pub fn receive(&mut self, w: &mut World, from: NodeId, msg: RoomMsg, now: Instant) {
        match msg {
            RoomMsg::Event(e) => self.take_event(w, e, now),
            RoomMsg::Hello {
                members,
                head,
                reply,
            } => {
                if let Some(delivered) = self.inbound.delivered(&from)
                    && delivered < head
                {
                    let (first, to) = (delivered.next(), head);
                    self.send(&from, RoomMsg::Repair { from: first, to });
                }
                let old = w.remote.remove(&from).unwrap_or_default();
                let new = self.claims(w, &from, members);
                let left = old
                    .keys()
                    .filter(|c| !new.contains_key(*c))
                    .cloned()
                    .collect();
                let joined = new
                    .iter()
                    .filter(|(c, m)| old.get(*c).map(|o| &o.presence) != Some(&m.presence))
                    .map(|(c, m)| (c.clone(), m.presence.clone()))
                    .collect();
                w.remote.insert(from.clone(), new);
                w.push_presence(joined, left);
                match reply {
                    true => self.hello(w, &from, false),
                    false => {
                        let state = self.sync.entry(from.clone()).or_default();
                        if let Some(msg) = w.doc.sync_message(state) {
                            self.send(&from, RoomMsg::Sync(msg));
                        }
                    }
                }
            }
            RoomMsg::Presence { joined, left } => {
                let joined = self.claims(w, &from, joined);
                let entries = w.remote.entry(from).or_default();
                let left: Vec<ConnId> = left
                    .into_iter()
                    .filter(|c| entries.remove(c).is_some())
                    .collect();
                let joined = joined
                    .into_iter()
                    .map(|(c, m)| {
                        let presence = m.presence.clone();
                        entries.insert(c.clone(), m);
                        (c, presence)
                    })
                    .collect();
                w.push_presence(joined, left);
            }
            RoomMsg::Kick { conn, reason } => {
                // The actor carries it out after this message, as after a call.
                if w.core.member(&conn).is_some() {
                    w.kicks.push((conn, reason));
                }
            }
            RoomMsg::Backfill { after, conn } => {
                let after: Cursor = after.parse().unwrap_or_default();
                let since = w.core.first_seq();
                let me = w.core.origin().clone();
                // In parts that stay well under the frame limit.
                let mut parts = vec![Vec::new()];
                let mut bytes = 0;
                for e in w.core.replay_all(&after) {
                    if bytes >= BACKFILL_PART {
                        parts.push(Vec::new());
                        bytes = 0;
                    }
                    bytes += e.payload.json.len()
                        + e.payload.binaries.iter().map(Vec::len).sum::<usize>();
                    let since = if e.origin == me { since } else { Seq(0) };
                    if let Some(part) = parts.last_mut() {
                        part.push(WireEvent::new(&e, since));
                    }
                }
                let mut member = match w.core.member(&conn) {
                    Some(m) => Some(m.into()),
                    None => w
                        .remote
                        .values()
                        .find_map(|m| m.get(&conn).cloned())
                        .or_else(|| w.departed.get(&conn).map(|(m, _)| m.clone())),
                };
                let n = parts.len();
                for (i, events) in parts.into_iter().enumerate() {
                    let last = i + 1 == n;
                    let msg = RoomMsg::Backfilled {
                        conn: conn.clone(),
                        events,
                        last,
                        member: if last { member.take() } else { None },
                    };
                    self.send(&from, msg);
                }
            }
            RoomMsg::Backfilled {
                conn,
                events,
                last,
                member,
            } => {
                let adoption = self.adoptions.iter_mut().find(|a| a.conn == conn);
                if let Some(a) = adoption {
                    // Kept for this member's replay: the room's log may start later
                    // than its cursor (another member's adoption set where it starts).
                    a.backlog.extend(events.iter().cloned());
                    if last {
                        a.waiting.remove(&from);
                        a.first_answer.get_or_insert(now);
                    }
                    if let Some(m) = member
                        && a.record
                            .as_ref()
                            .is_none_or(|r| r.claimed_ms < m.claimed_ms)
                    {
                        a.record = Some(m);
                    }
                }
                for e in events {
                    self.take_event(w, e, now);
                }
            }
            RoomMsg::Sync(bytes) => {
                let state = self.sync.entry(from.clone()).or_default();
                match w.doc.receive_sync(state, &bytes) {
                    Ok(changed) => {
                        // Answer (the protocol is a conversation), and pass the change on.
                        if let Some(msg) = w.doc.sync_message(state) {
                            self.send(&from, RoomMsg::Sync(msg));
                        }
                        if changed {
                            w.doc_changed();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(peer = %from, room = %self.room.1, "bad sync message: {e}");
                        self.sync.remove(&from);
                    }
                }
            }
            RoomMsg::Repair { from: first, to } => {
                let (events, first_available) = w.core.own_range(first, to);
                let since = w.core.first_seq();
                let events = events.iter().map(|e| WireEvent::new(e, since)).collect();
                self.send(
                    &from,
                    RoomMsg::Repaired {
                        events,
                        first_available,
                    },
                );
            }
            RoomMsg::Repaired {
                events,
                first_available,
            } => {
                let (ready, skipped) = self.inbound.skip_to(&from, first_available);
                self.deliver(w, ready, skipped);
                for e in events {
                    self.take_event(w, e, now);
                }
            }
        }
    }

    fn take_event(&mut self, w: &mut World, e: WireEvent, now: Instant) {
        let origin = e.origin.clone();
        if origin == *w.core.origin() {
            return;
        }
        // The first event heard from an origin starts its sequence here (what came
        // before was not for this replica); an origin that started a new run of
        // numbers will never send the rest of the old one.
        let start = match self.inbound.delivered(&origin) {
            None => Some(e.seq),
            Some(d) if e.since.0 > d.0 + 1 => Some(e.since),
            Some(_) => None,
        };
        if let Some(start) = start {
            let (ready, _) = self.inbound.skip_to(&origin, start);
            self.deliver(w, ready, 0);
        }
        match self.inbound.receive(&origin, e.seq, e, now) {
            Received::Deliver(ready) => self.deliver(w, ready, 0),
            Received::Duplicate | Received::Held | Received::Overflow => {}
        }
    }

    fn deliver(&mut self, w: &mut World, ready: Vec<(NodeId, Seq, WireEvent)>, skipped: u64) {
        if skipped > 0 {
            let frame = ServerFrame::Error {
                error: ProtoError::new(
                    ErrorCode::HistoryGap,
                    format!("{skipped} events from another node were lost"),
                ),
                room: Some(w.place.room.clone()),
            };
            w.push_all(&frame, None);
        }
        for (_, _, e) in ready {
            let entry = w.core.append(e.into_sequenced());
            w.deliver(&entry);
        }
    }

    /// Ask origins for the events of gaps that stayed open too long.
    pub fn poll(&mut self, now: Instant) {
        for r in self.inbound.poll(now) {
            self.send(
                &r.origin,
                RoomMsg::Repair {
                    from: r.from,
                    to: r.to,
                },
            );
        }
    }

    /// Members another node says it holds. A member held by two nodes belongs to the
    /// one that took it on last (its client resumed there): the older claim is ignored
    /// where it arrives second; a member this node held and lost that way leaves here
    /// without a word to anyone (it did not leave the room).
    fn claims(
        &mut self,
        w: &mut World,
        from: &NodeId,
        members: Vec<(ConnId, RemoteMember)>,
    ) -> BTreeMap<ConnId, RemoteMember> {
        let me = w.core.origin().clone();
        let mut out = BTreeMap::new();
        for (conn, m) in members {
            if let Some(local) = w.core.member(&conn) {
                if (m.claimed_ms, from) <= (local.claimed_ms, &me) {
                    continue;
                }
                w.links.remove(&conn);
                w.core.leave(&conn);
                self.member_left();
            }
            let newer_elsewhere = w.remote.iter().any(|(node, others)| {
                node != from
                    && others
                        .get(&conn)
                        .is_some_and(|o| (o.claimed_ms, node) > (m.claimed_ms, from))
            });
            if newer_elsewhere {
                continue;
            }
            for (node, others) in w.remote.iter_mut() {
                if node != from {
                    others.remove(&conn);
                }
            }
            w.departed.remove(&conn);
            out.insert(conn, m);
        }
        out
    }

    /// A client resumed here as a member another node held: ask every other replica
    /// for the history after its cursor, and hold the member until they answered.
    pub fn adopt(&mut self, w: &mut World, mut a: Adoption, now: Instant) {
        let peers = self.rep.interested(&self.room);
        // Counted as interest while it waits, so the peers' messages keep coming.
        self.rep.local_join(&self.room);
        if w.core.members().is_empty() && self.adoptions.is_empty() {
            for node in &peers {
                self.hello(w, node, true);
            }
        }
        // What the client saw of each origin is where this replica starts with it.
        if let Some(cursor) = &a.cursor {
            for (origin, seq) in cursor.iter() {
                if self.inbound.delivered(origin).is_none() && origin != w.core.origin() {
                    self.inbound.skip_to(origin, seq.next());
                }
            }
        }
        let after = a.cursor.as_ref().map(Cursor::to_string).unwrap_or_default();
        for node in &peers {
            let conn = a.conn.clone();
            let after = after.clone();
            self.send(node, RoomMsg::Backfill { after, conn });
        }
        // A replica that already had members has its own log: it counts as an answer.
        if !w.core.members().is_empty() {
            a.first_answer = Some(now);
        }
        a.waiting = peers.into_iter().collect();
        a.deadline = now + ADOPT_PATIENCE;
        self.adoptions.push(a);
    }

    /// Of what the other replicas sent for an adopted member, the events after its
    /// cursor, for it, and not in `replay` (what this replica's log gives it): once
    /// each, in per-origin order, each with the member's cursor after it.
    pub fn earlier(
        room: &crate::ids::RoomId,
        conn: &ConnId,
        cursor: &Cursor,
        replay: &super::core::Replay,
        backlog: Vec<WireEvent>,
    ) -> Vec<Arc<LogEntry>> {
        let in_log: HashSet<(&NodeId, Seq)> =
            replay.events.iter().map(|e| (&e.origin, e.seq)).collect();
        let mut seen = HashSet::new();
        let mut extra: Vec<WireEvent> = backlog
            .into_iter()
            .filter(|e| {
                !cursor.covers(&e.origin, e.seq)
                    && e.target.includes(conn)
                    && !in_log.contains(&(&e.origin, e.seq))
                    && seen.insert((e.origin.clone(), e.seq))
            })
            .collect();
        // Several replicas' logs, merged: by time, then each origin's put back in
        // sequence order in the places its events took.
        extra.sort_by_key(|e| e.at_ms);
        let mut places: HashMap<NodeId, Vec<usize>> = HashMap::new();
        for (i, e) in extra.iter().enumerate() {
            places.entry(e.origin.clone()).or_default().push(i);
        }
        let mut slots: Vec<Option<WireEvent>> = extra.into_iter().map(Some).collect();
        for idx in places.values() {
            let mut run: Vec<WireEvent> = idx.iter().filter_map(|&i| slots[i].take()).collect();
            run.sort_by_key(|e| e.seq);
            for (&i, e) in idx.iter().zip(run) {
                slots[i] = Some(e);
            }
        }
        let mut at = cursor.clone();
        slots
            .into_iter()
            .flatten()
            .map(|e| {
                at.advance(&e.origin, e.seq);
                Arc::new(LogEntry::new(
                    room.clone(),
                    e.into_sequenced(),
                    at.to_string(),
                ))
            })
            .collect()
    }

    /// Adoptions whose history is in (or that waited long enough): the actor takes
    /// the members on.
    pub fn adoptions_due(&mut self, now: Instant) -> Vec<Adoption> {
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.adoptions)
            .into_iter()
            .partition(|a| {
                a.waiting.is_empty()
                    || now >= a.deadline
                    || a.first_answer.is_some_and(|t| now >= t + ADOPT_GRACE)
            });
        self.adoptions = waiting;
        for _ in &due {
            self.rep.local_leave(&self.room);
        }
        due
    }

    /// This node's link to `node` came (back) up, or `node` just got members in this
    /// room: start over with it.
    pub fn peer_up(&mut self, w: &mut World, node: &NodeId) {
        if self.rep.interested(&self.room).contains(node) {
            self.hello(w, node, true);
        }
    }

    /// `node` was declared dead: its members vanish here, and what it never sent will
    /// not come.
    pub fn peer_down(&mut self, w: &mut World, node: &NodeId) {
        self.sync.remove(node);
        for a in &mut self.adoptions {
            a.waiting.remove(node);
        }
        if let Some(gone) = w.remote.remove(node) {
            let left = gone.keys().cloned().collect();
            let now = w.now_ms.max(crate::apps::now_ms());
            w.departed
                .extend(gone.into_iter().map(|(c, m)| (c, (m, now))));
            w.push_presence(vec![], left);
        }
        let (ready, skipped) = self.inbound.give_up(node);
        self.deliver(w, ready, skipped);
    }
}

/// A peer's message for a room that is not loaded here: a repair request gets "nothing
/// left before now" (the log went with the room), the rest is moot.
pub(super) fn unloaded(env: &super::RoomEnv, key: &super::RoomKey, from: &NodeId, msg: RoomMsg) {
    let (Some(rep), RoomMsg::Repair { to, .. }) = (&env.replicator, msg) else {
        return;
    };
    let reply = RoomMsg::Repaired {
        events: Vec::new(),
        first_available: to.next(),
    };
    rep.send(
        from,
        PeerMsg::Room {
            room: (key.app.clone(), key.room.clone()),
            msg: reply,
        },
    );
}
