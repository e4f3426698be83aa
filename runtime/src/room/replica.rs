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
//! - **Presence.** Each node owns its members' entries. `Hello` carries them all (on a
//!   new replica or a reconnection), `Presence` the changes; a node declared dead loses
//!   its entries on every other node.
//!
//! A room's sequence numbers start, each time it loads, at the load time in µs, so a
//! room that reloads never reuses a number a peer already delivered; an event carries
//! where its run of numbers started (`since`), so peers skip the gap at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync;

use super::core::{LogEntry, Sequenced, Target};
use super::world::{Outgoing, World};
use crate::cluster::interest::RoomRef;
use crate::cluster::order::{Inbound, Received};
use crate::cluster::replicate::{self, PeerMsg, Relay};
use crate::ids::{ConnId, NodeId, Seq};
use crate::payload::Payload;
use crate::protocol::native::ServerFrame;
use crate::protocol::{ErrorCode, ProtoError};

pub type Replicator = replicate::Replicator<RoomMsg>;

/// How long a gap waits for the missing events before the origin is asked for them.
const REPAIR_PATIENCE: Duration = Duration::from_millis(300);
/// Events held per origin while a gap is open, at most.
const MAX_HELD: usize = 10_000;

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

    fn into_sequenced(self) -> Sequenced {
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
    /// The sender has (or again reaches) a replica: all its members' presence. Resets
    /// the receiver's state sync with it; `reply` asks for a hello back.
    Hello {
        presence: Vec<(ConnId, String)>,
        reply: bool,
    },
    Presence {
        joined: Vec<(ConnId, String)>,
        left: Vec<ConnId>,
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

pub struct Replica {
    rep: Arc<Replicator>,
    room: RoomRef,
    inbound: Inbound<WireEvent>,
    sync: HashMap<NodeId, sync::State>,
}

impl Replica {
    pub fn new(rep: Arc<Replicator>, room: RoomRef) -> Self {
        Self {
            rep,
            room,
            inbound: Inbound::new(&Default::default(), REPAIR_PATIENCE, MAX_HELD),
            sync: HashMap::new(),
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

    /// A member joined here. The first one makes this node a replica: it says hello to
    /// the others, which answer with their presence and state.
    pub fn member_joined(&mut self, w: &mut World) {
        self.rep.local_join(&self.room);
        if w.core.members().len() == 1 {
            for node in self.rep.interested(&self.room) {
                self.hello(w, &node, true);
            }
        }
    }

    pub fn member_left(&mut self) {
        self.rep.local_leave(&self.room);
    }

    fn hello(&mut self, w: &mut World, node: &NodeId, reply: bool) {
        let presence = w
            .core
            .members()
            .iter()
            .map(|(c, m)| (c.clone(), m.presence.clone()))
            .collect();
        self.send(node, RoomMsg::Hello { presence, reply });
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
            RoomMsg::Hello { presence, reply } => {
                let old = w.remote.remove(&from).unwrap_or_default();
                let new: BTreeMap<ConnId, String> = presence.into_iter().collect();
                let left = old
                    .keys()
                    .filter(|c| !new.contains_key(*c))
                    .cloned()
                    .collect();
                let joined = new
                    .iter()
                    .filter(|(c, p)| old.get(*c) != Some(*p))
                    .map(|(c, p)| (c.clone(), p.clone()))
                    .collect();
                w.remote.insert(from.clone(), new);
                push_presence(w, joined, left);
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
                let entries = w.remote.entry(from).or_default();
                for c in &left {
                    entries.remove(c);
                }
                for (c, p) in &joined {
                    entries.insert(c.clone(), p.clone());
                }
                push_presence(w, joined, left);
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

    /// This node's link to `node` came (back) up: start over with it.
    pub fn peer_up(&mut self, w: &mut World, node: &NodeId) {
        if self.rep.interested(&self.room).contains(node) {
            self.hello(w, node, true);
        }
    }

    /// `node` was declared dead: its members vanish here, and what it never sent will
    /// not come.
    pub fn peer_down(&mut self, w: &mut World, node: &NodeId) {
        self.sync.remove(node);
        if let Some(gone) = w.remote.remove(node) {
            push_presence(w, vec![], gone.into_keys().collect());
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

/// Presence news from another node, for the members here.
fn push_presence(w: &mut World, joined: Vec<(ConnId, String)>, left: Vec<ConnId>) {
    if joined.is_empty() && left.is_empty() {
        return;
    }
    let frame = ServerFrame::Presence {
        room: w.place.room.clone(),
        joined,
        left,
        snapshot: false,
    };
    w.push_all(&frame, None);
}
