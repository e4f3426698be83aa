//! One event of a room as it is logged: who it is for, where it came from, its
//! sequence number, and its encodings, made once and shared by every recipient.
//! The room core keeps these; catch-up picks from them.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use edgeroom_proto::Cursor;
use edgeroom_proto::ids::{ConnId, NodeId, RoomId, Seq};
use edgeroom_proto::native::Format;
use edgeroom_proto::payload::Payload;

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    All,
    AllExcept(ConnId),
    Only(ConnId),
}

impl Target {
    pub fn includes(&self, conn: &ConnId) -> bool {
        match self {
            Target::All => true,
            Target::AllExcept(c) => c != conn,
            Target::Only(c) => c == conn,
        }
    }
}

/// One sequenced event of the room, kept for resume and shared by every recipient.
#[derive(Debug)]
pub struct LogEntry {
    pub room: RoomId,
    pub origin: NodeId,
    pub seq: Seq,
    pub at_ms: u64,
    pub target: Target,
    pub event: String,
    pub payload: Payload,
    /// The connection whose event caused this one (none for timers).
    pub from: Option<ConnId>,
    /// For an event an idempotent emit caused: the emit's key and the event's place
    /// among the ones it caused (`<conn>/<id>#<i>`). A replica that already has an
    /// event with this key does not deliver it again (the emit was retried elsewhere).
    pub key: Option<String>,
    /// The room's cursor once this event is delivered.
    pub cursor: String,
    /// Encoded once per wire form, on first use, then shared by every recipient: the
    /// native formats, then the Socket.IO forms (see [`LogEntry::SOCKETIO_SLOTS`]).
    pub encoded: [OnceLock<Bytes>; 6],
}

impl LogEntry {
    /// An event of `room`, which leaves the room's cursor at `cursor`.
    pub fn new(room: RoomId, e: Sequenced, cursor: String) -> Self {
        Self {
            room,
            origin: e.origin,
            seq: e.seq,
            at_ms: e.at_ms,
            target: e.target,
            event: e.event,
            payload: e.payload,
            from: e.from,
            key: e.key,
            cursor,
            encoded: Default::default(),
        }
    }

    /// This event as a member whose cursor already stands at `floor` gets it: with
    /// `floor` folded into the cursor it carries. A member that came back having seen
    /// more than this replica had delivered must not be handed a cursor that forgets
    /// it, or its next resume, elsewhere, gets those events again.
    pub fn at_least(self: &Arc<Self>, floor: &Cursor) -> Arc<Self> {
        let Ok(mut cursor) = self.cursor.parse::<Cursor>() else {
            return self.clone();
        };
        if cursor.dominates(floor) {
            return self.clone();
        }
        for (origin, seq) in floor.iter() {
            cursor.advance(origin, seq);
        }
        Arc::new(self.with_cursor(cursor.to_string()))
    }

    /// The same event leaving the room's cursor at `cursor` (a member's own catch-up).
    pub fn with_cursor(&self, cursor: String) -> Self {
        Self {
            room: self.room.clone(),
            origin: self.origin.clone(),
            seq: self.seq,
            at_ms: self.at_ms,
            target: self.target.clone(),
            event: self.event.clone(),
            payload: self.payload.clone(),
            from: self.from.clone(),
            key: self.key.clone(),
            cursor,
            encoded: Default::default(),
        }
    }

    /// What keeping this event costs, in bytes, as history limits count it: its name
    /// and arguments twice (the event itself, and the wire form its members were sent,
    /// which it keeps for the next one), plus a fixed amount for the entry, its ids
    /// and its cursor.
    pub fn cost(&self) -> usize {
        const ENTRY: usize = 256;
        let body = self.event.len() + self.payload.size();
        ENTRY + self.cursor.len() + 2 * body
    }

    /// Cache slots of the Socket.IO gateway's forms of an event: in the namespace named
    /// after the room or in the main namespace, each without and with a recovery offset.
    pub const SOCKETIO_SLOTS: [usize; 4] = [2, 3, 4, 5];

    pub fn encoded(&self, format: Format, encode: impl FnOnce(&LogEntry) -> Vec<u8>) -> Bytes {
        self.encoded_in(format.index(), encode)
    }

    pub fn encoded_in(&self, slot: usize, encode: impl FnOnce(&LogEntry) -> Vec<u8>) -> Bytes {
        self.encoded[slot]
            .get_or_init(|| Bytes::from(encode(self)))
            .clone()
    }
}

/// An event with its origin and sequence number, before it is logged.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub origin: NodeId,
    pub seq: Seq,
    pub at_ms: u64,
    pub target: Target,
    pub event: String,
    pub payload: Payload,
    pub from: Option<ConnId>,
    /// See [`LogEntry::key`].
    pub key: Option<String>,
}
