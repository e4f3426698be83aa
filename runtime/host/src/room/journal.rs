//! What a standalone room writes to its journal besides its document, and how it
//! reads it back after a restart (see `store::journal` for the storage).
//!
//! Events are kept as they travel between replicas ([`WireEvent`]) with the wall time
//! they were logged; idempotency answers as their code and message or payload;
//! members as their `JoinAuth`. Ages cross a restart by wall time, the one clock that
//! does: a restored item is as old as the wall clock says, at most as old as the
//! node's own clock can express (its start), so history never outlives its window by
//! more than the downtime.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::replica::WireEvent;
use super::world::{EmitResult, World};
use crate::store::{Batch, event_key};
use edgeroom_proto::ids::{ConnId, NodeId, Seq};
use edgeroom_proto::member::JoinAuth;
use edgeroom_proto::payload::Payload;
use edgeroom_proto::{ErrorCode, ProtoError};
use edgeroom_room::log::Sequenced;

#[derive(Serialize, Deserialize)]
struct StoredEvent {
    wall_ms: u64,
    event: WireEvent,
}

#[derive(Serialize, Deserialize)]
enum StoredAnswer {
    Ok {
        wall_ms: u64,
        reply: Option<(String, Vec<Vec<u8>>)>,
    },
    Err {
        wall_ms: u64,
        code: String,
        message: String,
    },
}

/// Times for reading a journal back: now on both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

impl Now {
    /// This node's monotonic time for something logged at `wall_ms`.
    fn mono_of(self, wall_ms: u64) -> u64 {
        let age = self.wall_ms.saturating_sub(wall_ms);
        self.mono_ms.saturating_sub(age)
    }

    /// The wall time of something logged at monotonic `mono_ms`.
    fn wall_of(self, mono_ms: u64) -> u64 {
        self.wall_ms
            .saturating_sub(self.mono_ms.saturating_sub(mono_ms))
    }
}

pub fn decode_event(bytes: &[u8], now: Now) -> Option<Sequenced> {
    let stored: StoredEvent = postcard::from_bytes(bytes).ok()?;
    Some(stored.event.into_sequenced(now.mono_of(stored.wall_ms)))
}

pub fn decode_answer(bytes: &[u8], now: Now) -> Option<(u64, EmitResult)> {
    match postcard::from_bytes(bytes).ok()? {
        StoredAnswer::Ok { wall_ms, reply } => {
            let reply = reply.map(|(json, binaries)| Payload {
                json,
                binaries: binaries.into_iter().map(Into::into).collect(),
            });
            Some((now.mono_of(wall_ms), Ok(reply)))
        }
        StoredAnswer::Err {
            wall_ms,
            code,
            message,
        } => {
            let code = ErrorCode::from_name(&code).unwrap_or(ErrorCode::Internal);
            Some((now.mono_of(wall_ms), Err(ProtoError::new(code, message))))
        }
    }
}

pub fn decode_member(bytes: &[u8]) -> Option<JoinAuth> {
    postcard::from_bytes(bytes).ok()
}

/// What of a room is in its journal already, so each write carries only what is new.
#[derive(Debug)]
pub struct Journaled {
    origin: NodeId,
    /// This node's events up to here are written.
    events_upto: Seq,
    /// Idempotency ids remembered since the last write.
    pub ids: Vec<String>,
    /// The members written; compared with the room's when `members_changed`.
    members: BTreeSet<ConnId>,
    pub members_changed: bool,
    /// The timer as written (wall ms), if any.
    timer: Option<u64>,
    /// The last event trimmed from the journal.
    trimmed: Seq,
    /// Idempotency ids in the journal, about (written, less those trimmed).
    ids_written: usize,
}

impl Journaled {
    /// A room loaded with `members` and `timer` from its journal, numbering its own
    /// events from `first`.
    pub fn new(origin: NodeId, first: Seq, members: BTreeSet<ConnId>, timer: Option<u64>) -> Self {
        Self {
            origin,
            events_upto: first.prev(),
            ids: Vec::new(),
            members,
            members_changed: false,
            timer,
            trimmed: Seq::default(),
            ids_written: 0,
        }
    }

    /// What to write now: `changes` of the document, the events and ids since the
    /// last write, the members that came or went, and the timer (`timer_wall`) if it
    /// changed. Marks it all written.
    pub fn batch(
        &mut self,
        w: &World,
        changes: Vec<u8>,
        timer_wall: Option<u64>,
        now: Now,
    ) -> Batch {
        let mut batch = Batch {
            changes,
            ..Batch::default()
        };
        for e in w.core.newest_after(&self.origin, self.events_upto) {
            let stored = StoredEvent {
                wall_ms: now.wall_of(e.at_ms),
                event: WireEvent::new(&e),
            };
            if let Ok(bytes) = postcard::to_allocvec(&stored) {
                batch.events.push((event_key(e.seq.run, e.seq.n), bytes));
            }
            self.events_upto = e.seq;
        }
        for id in std::mem::take(&mut self.ids) {
            let Some(r) = w.core.remembered_entry(&id) else {
                continue;
            };
            let wall_ms = now.wall_of(r.at_ms);
            let stored = match &r.result {
                Ok(reply) => StoredAnswer::Ok {
                    wall_ms,
                    reply: reply.as_ref().map(|p| {
                        let binaries = p.binaries.iter().map(|b| b.to_vec()).collect();
                        (p.json.clone(), binaries)
                    }),
                },
                Err(e) => StoredAnswer::Err {
                    wall_ms,
                    code: e.code.as_str().into(),
                    message: e.message.clone(),
                },
            };
            if let Ok(bytes) = postcard::to_allocvec(&stored) {
                batch.ids.push((id, bytes));
                self.ids_written += 1;
            }
        }
        if std::mem::take(&mut self.members_changed) {
            let now_members: BTreeSet<ConnId> = w.core.members().keys().cloned().collect();
            for conn in now_members.difference(&self.members) {
                let Some(m) = w.core.member(conn) else {
                    continue;
                };
                if let Ok(bytes) = postcard::to_allocvec(&m.auth) {
                    batch.joined.push((conn.as_str().to_owned(), bytes));
                }
            }
            for conn in self.members.difference(&now_members) {
                batch.left.push(conn.as_str().to_owned());
            }
            self.members = now_members;
        }
        if timer_wall != self.timer {
            batch.timer = Some(timer_wall);
            self.timer = timer_wall;
        }
        batch
    }

    /// What to trim from the journal, if anything: up to which of this node's events
    /// (the last the room no longer keeps), and whether ids were forgotten.
    pub fn take_trim(&mut self, w: &World) -> Option<(Option<String>, bool)> {
        let gone = w.core.evicted().get(&self.origin);
        let events = (gone > self.trimmed).then(|| {
            self.trimmed = gone;
            event_key(gone.run, gone.n)
        });
        let ids = self.ids_written > w.core.ids_len();
        if ids {
            self.ids_written = w.core.ids_len();
        }
        (events.is_some() || ids).then_some((events, ids))
    }
}

/// A restarted standalone node: the members its rooms' journals hold lost their
/// connections with the node. Their sessions become resumable again (for the resume
/// window, from now). Returns the rooms to load now: those members are in (so that a
/// member who does not come back leaves after the presence grace) and those with a
/// timer pending (so that it fires when due).
pub async fn restore_sessions(
    store: std::sync::Arc<crate::store::Store>,
    sessions: &crate::session::Sessions,
    now_ms: u64,
) -> anyhow::Result<Vec<super::RoomKey>> {
    use std::collections::BTreeMap;
    let (members, timers) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((store.journaled_members()?, store.journaled_timers()?))
    })
    .await??;
    let mut found: BTreeMap<(edgeroom_proto::ids::AppName, String), crate::session::SessionRooms> =
        BTreeMap::new();
    let mut rooms: BTreeSet<super::RoomKey> = timers
        .into_iter()
        .map(|(app, room)| super::RoomKey { app, room })
        .collect();
    for (app, room, conn, bytes) in members {
        let Some(auth) = decode_member(&bytes) else {
            continue;
        };
        rooms.insert(super::RoomKey {
            app: app.clone(),
            room: room.clone(),
        });
        found.entry((app, conn)).or_default().insert(room, auth);
    }
    for ((app, conn), joined) in found {
        let user = joined.values().find_map(|a| a.user.clone());
        sessions.restore(ConnId::from_trusted(conn), app, joined, user, now_ms);
    }
    Ok(rooms.into_iter().collect())
}
