//! What a handler sees of its room while it runs: the [`RoomApi`] the sandbox calls.
//!
//! Sends and broadcasts are sequenced and queued to members at once, inside the host
//! call, so a reply that follows a broadcast is always behind it. Kicks wait until the
//! call returns, because a kicked member's `on-leave` is a handler call of its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::outbox::{Link, Outbound, PushError, Shared};
use crate::metrics::Metrics;
use edgeroom_proto::ids::{ConnId, NodeId, RoomId};
use edgeroom_proto::member::JoinAuth;
use edgeroom_proto::native::ServerFrame;
use edgeroom_proto::payload::Payload;
use edgeroom_proto::{Cursor, ErrorCode, ProtoError};
use edgeroom_room::catchup::CatchUp;
use edgeroom_room::core::{LogEntry, RoomCore, Target};
use edgeroom_room::state::RoomDoc;
use edgeroom_sandbox::RoomApi;

/// The outcome of an emit, remembered for idempotent retries.
pub type EmitResult = Result<Option<Payload>, ProtoError>;

/// Where the room lives, for `info()` and logs.
#[derive(Debug, Clone)]
pub struct Place {
    pub app: String,
    pub room: RoomId,
    pub node: String,
    pub region: String,
}

pub struct World {
    pub place: Place,
    pub core: RoomCore<EmitResult>,
    pub doc: RoomDoc,
    /// Live connections of attached members.
    pub links: HashMap<ConnId, Link>,
    /// Members that have seen more of some origin than this replica had delivered
    /// when they came (adopted from a replica that was ahead): events their floor
    /// covers are not sent to them again. Emptied as the room catches up.
    pub floors: HashMap<ConnId, Cursor>,
    /// The connection whose event is being handled (the `from` of what it causes).
    pub current: Option<ConnId>,
    /// The idempotency key (`<conn>/<id>`) of the emit being handled, if it has one,
    /// and how many events it caused so far: each event it causes carries
    /// `<key>#<i>`, so a replica that has it under another origin passes it over.
    pub call_key: Option<(String, u32)>,
    /// The connection whose `on-join` is running: its presence is announced with the
    /// join, once accepted, not before.
    pub joining: Option<ConnId>,
    /// Kicks requested during the current call.
    pub kicks: Vec<(ConnId, String)>,
    /// Connections that fell behind or vanished while being sent to.
    /// With the first event that did not reach them, if it was an event.
    pub lost: Vec<(ConnId, Option<Arc<LogEntry>>)>,
    /// In a cluster: what peers must hear of, gathered during a call and sent after it.
    pub outgoing: Option<Outgoing>,
    /// When set, this node's events of the current call are kept here instead of going
    /// to members at once: the replica sends them once another replica holds them.
    pub held: Option<Vec<Arc<LogEntry>>>,
    /// The last of this node's own events its members have been shown. While later
    /// ones are held for confirmation, the cursors members are given (and the point a
    /// dropped member resumes from) stop there for this origin: a cursor never covers
    /// an event its member did not get.
    pub own_shown: edgeroom_proto::ids::Seq,
    /// Members on other nodes, by the node that holds them.
    pub remote: BTreeMap<NodeId, BTreeMap<ConnId, RemoteMember>>,
    /// Members of nodes declared dead, since when: gone from presence, but a client
    /// that resumes here within the resume window is taken back as it was.
    pub departed: HashMap<ConnId, (RemoteMember, u64)>,
    /// The document changed since members last got the state.
    pub state_changed: bool,
    /// The document's heads as every member that takes state here has it (its
    /// snapshot plus the patches since): what the next patch starts from. `None`
    /// while no member here takes state.
    state_shown: Option<Vec<automerge::ChangeHash>>,
    /// The document changed since it was last saved.
    pub unsaved: bool,
    /// `on-timer` requested in this many ms.
    pub timer: Option<u32>,
    /// This node's monotonic milliseconds (`Clock::mono_ms`): what log entries are
    /// stamped with.
    pub now_ms: u64,
    /// Wall time for the handler's `now-ms`, shown, never compared across nodes.
    pub wall_ms: u64,
    pub metrics: Arc<Metrics>,
    /// Largest event the handler may send (`limits.max_event_bytes`): a larger one is
    /// dropped and counted, since it could not reach the room's other replicas.
    pub max_event_bytes: usize,
    /// Largest presence the handler may set (`limits.max_presence_bytes`).
    pub max_presence_bytes: usize,
    /// Shortest timer the handler may set (`limits.min_timer_ms`).
    pub min_timer_ms: u32,
    /// Log lines the handler may write a second (`limits.handler_log_lines_per_sec`),
    /// and the lines written in the current second (which second, by `now_ms`).
    pub log_lines_per_sec: u32,
    log_window: (u64, u32),
    /// Largest the document may grow, in bytes of its JSON (`limits.state_max_bytes`):
    /// a handler write that would take it past is refused.
    pub max_state_bytes: usize,
    /// The document's size in bytes of JSON: counted exactly now and then
    /// ([`World::count_state_bytes`]), estimated from each write in between.
    state_bytes: usize,
    /// The document was replaced (compacted or rebased) since its last whole save:
    /// changes appended to the old one would not rebuild it, so the next write is a
    /// whole save.
    pub doc_replaced: bool,
}

impl World {
    pub fn new(
        place: Place,
        core: RoomCore<EmitResult>,
        doc: RoomDoc,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            place,
            core,
            doc,
            links: HashMap::new(),
            floors: HashMap::new(),
            current: None,
            call_key: None,
            joining: None,
            kicks: Vec::new(),
            lost: Vec::new(),
            outgoing: None,
            held: None,
            own_shown: edgeroom_proto::ids::Seq::default(),
            remote: BTreeMap::new(),
            departed: HashMap::new(),
            state_changed: false,
            state_shown: None,
            unsaved: false,
            timer: None,
            now_ms: 0,
            wall_ms: 0,
            metrics,
            max_event_bytes: usize::MAX,
            max_presence_bytes: usize::MAX,
            min_timer_ms: 0,
            log_lines_per_sec: u32::MAX,
            log_window: (0, 0),
            max_state_bytes: usize::MAX,
            state_bytes: 0,
            doc_replaced: false,
        }
    }

    /// Count the document's size exactly (O(document): on load, at saves, and when an
    /// estimate says a write would not fit). Changes merged from other replicas are
    /// not estimated; this catches them up.
    pub fn count_state_bytes(&mut self) -> usize {
        self.state_bytes = self.doc.to_json().to_string().len();
        self.state_bytes
    }

    /// The document's size in bytes of JSON as last counted, with the handler's writes
    /// since estimated (changes merged from other replicas are not).
    pub fn state_bytes(&self) -> usize {
        self.state_bytes
    }

    /// Make room for a write that adds `adds` bytes of JSON and removes `removes`:
    /// refused (and counted) if it would take the document past `max_state_bytes`.
    /// A write that shrinks the document is always let through.
    fn make_room(&mut self, adds: usize, removes: usize) -> Result<(), String> {
        let fits = |bytes: usize| bytes.saturating_sub(removes).saturating_add(adds);
        if adds <= removes || fits(self.state_bytes) <= self.max_state_bytes {
            self.state_bytes = fits(self.state_bytes);
            return Ok(());
        }
        // The estimate errs high after a write that then failed, and low after changes
        // merged from other replicas: count before refusing.
        let exact = fits(self.count_state_bytes());
        if exact > self.max_state_bytes {
            self.metrics.handler_error("state_full");
            return Err(format!(
                "the room's state would be over {} bytes (limits.state_max_bytes): delete something first",
                self.max_state_bytes
            ));
        }
        self.state_bytes = exact;
        Ok(())
    }

    /// Bytes of JSON at `path` now (0 if nothing is there).
    fn bytes_at(&self, path: &str) -> usize {
        self.doc
            .get(path)
            .ok()
            .flatten()
            .map_or(0, |v| v.to_string().len())
    }

    /// Take another replica's document, rebased (see `replica::rebase`): members were
    /// shown the old one, so they get the new one whole.
    pub fn rebase_doc(&mut self, doc: RoomDoc) {
        self.doc = doc;
        self.count_state_bytes();
        self.unsaved = true;
        self.doc_replaced = true;
        self.state_changed = false;
        if self.state_shown.take().is_some() {
            let frame = self.state_frame();
            self.push_all(&frame, None);
            self.state_shown = Some(self.doc.heads());
        }
    }

    /// Replace the document with a compacted copy of it (same content, no history):
    /// members hold the same JSON, so what they are shown next starts from here.
    pub fn replace_doc(&mut self, doc: RoomDoc) {
        debug_assert_eq!(
            doc.to_json(),
            self.doc.to_json(),
            "a replacement changes content"
        );
        self.doc = doc;
        self.doc_replaced = true;
        if self.state_shown.is_some() {
            self.state_shown = Some(self.doc.heads());
        }
    }

    /// Whether the handler's event fits `max_event_bytes`; one that does not is counted
    /// (`edgeroom_handler_errors{kind="too_large"}`) and logged.
    fn fits(&self, event: &str, payload: &Payload) -> bool {
        let size = event.len() + payload.size();
        let fits = size <= self.max_event_bytes;
        if !fits {
            self.metrics.handler_error("too_large");
            tracing::warn!(app = %self.place.app, room = %self.place.room, size, max = self.max_event_bytes, "handler event over max_event_bytes dropped");
        }
        fits
    }

    /// Queue a frame to one member's connection.
    pub fn push(&mut self, conn: &ConnId, item: Outbound) {
        let Some(link) = self.links.get(conn).filter(|l| l.wants(&item)) else {
            return;
        };
        let event = match &item {
            Outbound::Event(e) => Some(e.clone()),
            _ => None,
        };
        match link.outbox.push(item) {
            Ok(()) => {
                self.metrics.deliveries.inc();
            }
            Err(PushError::SlowConsumer | PushError::Closed) => {
                self.lost.push((conn.clone(), event));
            }
        }
    }

    /// Sequence an event and queue it to every attached member it targets.
    pub fn publish(&mut self, target: Target, event: String, payload: Payload) -> Arc<LogEntry> {
        let from = self.current.clone();
        let key = self.call_key.as_mut().map(|(key, i)| {
            *i += 1;
            format!("{key}#{}", *i - 1)
        });
        if let Some(k) = &key {
            // Remembered like a delivered one: the same event from elsewhere is passed.
            self.core.remember(k.clone(), self.now_ms, Ok(None));
        }
        let entry = self
            .core
            .publish(self.now_ms, target, event, payload, from, key);
        if let Some(out) = &mut self.outgoing {
            out.events.push(entry.clone());
        }
        match &mut self.held {
            Some(held) => held.push(entry.clone()),
            None => self.deliver(&entry),
        }
        entry
    }

    /// The cursor members here have been given: the head, but for this node's own
    /// events still held.
    pub fn shown(&self) -> Cursor {
        let mut c = self.core.head().clone();
        let own = self.core.origin();
        if c.seen(own).is_some_and(|s| s > self.own_shown) {
            c.set(own, self.own_shown);
        }
        c
    }

    /// `entry` as members here get it: with the cursor they are at once they have it.
    /// That is the log's own cursor for the latest event, unless this node's events are
    /// being held, or one of them goes out after later events from elsewhere.
    fn as_shown(&mut self, entry: &Arc<LogEntry>) -> Outbound {
        if entry.origin == *self.core.origin() {
            self.own_shown = self.own_shown.max(entry.seq);
        }
        let shown = self.shown();
        let same = shown == *self.core.head() && entry.cursor == shown.to_string();
        match same {
            true => Outbound::Event(entry.clone()),
            false => Outbound::Event(Arc::new(entry.with_cursor(shown.to_string()))),
        }
    }

    /// Queue a logged event to every attached member it targets.
    pub fn deliver(&mut self, entry: &Arc<LogEntry>) {
        let item = self.as_shown(entry);
        let target = &entry.target;
        self.fan_out(&item, |c| target.includes(c));
    }

    /// Queue a logged event to the attached members it targets among `among`.
    pub fn deliver_among(
        &mut self,
        entry: &Arc<LogEntry>,
        among: &std::collections::HashSet<ConnId>,
    ) {
        let item = self.as_shown(entry);
        let target = &entry.target;
        self.fan_out(&item, |c| among.contains(c) && target.includes(c));
    }

    /// Members joined (with their presence) or left here: tell the members here and,
    /// in a cluster, the other replicas.
    pub fn presence_changed(&mut self, joined: Vec<(ConnId, String)>, left: Vec<ConnId>) {
        if let Some(out) = &mut self.outgoing {
            out.joined.extend(
                joined
                    .iter()
                    .filter_map(|(c, _)| Some((c.clone(), self.core.member(c)?.into()))),
            );
            out.left.extend(left.iter().cloned());
        }
        self.push_presence(joined, left);
    }

    /// A member's record changed without its presence (a new resume token): only the
    /// other replicas need to hear of it.
    pub fn member_changed(&mut self, conn: &ConnId) {
        if let (Some(out), Some(m)) = (&mut self.outgoing, self.core.member(conn)) {
            out.joined.push((conn.clone(), m.into()));
        }
    }

    /// Tell the members here who joined or left (nothing if nobody did).
    pub fn push_presence(&mut self, joined: Vec<(ConnId, String)>, left: Vec<ConnId>) {
        if joined.is_empty() && left.is_empty() {
            return;
        }
        let frame = ServerFrame::Presence {
            room: self.place.room.clone(),
            joined,
            left,
            snapshot: false,
        };
        self.push_all(&frame, None);
    }

    /// Every member's presence, here and on other nodes.
    pub fn all_presence(&self) -> Vec<(ConnId, String)> {
        let local = self
            .core
            .members()
            .iter()
            .map(|(c, m)| (c.clone(), m.presence.clone()));
        let remote = self
            .remote
            .values()
            .flatten()
            .map(|(c, m)| (c.clone(), m.presence.clone()));
        local.chain(remote).collect()
    }

    /// The members here as the other replicas learn of them.
    pub fn local_records(&self) -> Vec<(ConnId, RemoteMember)> {
        self.core
            .members()
            .iter()
            .map(|(c, m)| (c.clone(), m.into()))
            .collect()
    }

    /// Queue a frame to every attached member, optionally but one. The frame is
    /// encoded once per wire format, however many members get it.
    pub fn push_all(&mut self, frame: &ServerFrame, except: Option<&ConnId>) {
        let item = Outbound::Shared(Shared::new(frame.clone()));
        self.fan_out(&item, |c| Some(c) != except);
    }

    /// Queue `item` to the attached members `to` selects, without copying it or the
    /// member list.
    fn fan_out(&mut self, item: &Outbound, to: impl Fn(&ConnId) -> bool) {
        let event = match item {
            Outbound::Event(e) => Some(e),
            _ => None,
        };
        let World {
            links,
            floors,
            lost,
            metrics,
            ..
        } = self;
        let seen = |c: &ConnId| match (event, floors.is_empty()) {
            (Some(e), false) => floors.get(c).is_some_and(|f| f.covers(&e.origin, e.seq)),
            _ => false,
        };
        let mut delivered = 0;
        for (conn, link) in links
            .iter()
            .filter(|(c, l)| to(c) && l.wants(item) && !seen(c))
        {
            // Only a member with a floor (just taken over from a replica that was
            // ahead) gets its own copy; everyone else shares the one encoding.
            let floor = event
                .filter(|_| !floors.is_empty())
                .and_then(|e| floors.get(conn).map(|f| (e, f)));
            let item = match floor {
                Some((e, floor)) => Outbound::Event(e.at_least(floor)),
                None => item.clone(),
            };
            match link.outbox.push(item) {
                Ok(()) => delivered += 1,
                Err(PushError::SlowConsumer | PushError::Closed) => {
                    lost.push((conn.clone(), event.cloned()))
                }
            }
        }
        metrics.deliveries.inc_by(delivered);
    }

    /// What a returning member missed: a notice with the count of what is lost for
    /// good, if anything is, then the events.
    pub fn send_replay(&mut self, conn: &ConnId, replay: CatchUp) {
        if replay.missing > 0 {
            let message = format!(
                "{} events were lost before you came back: no replica has them any more",
                replay.missing
            );
            let frame = ServerFrame::Error {
                error: ProtoError::new(ErrorCode::HistoryGap, message),
                room: Some(self.place.room.clone()),
            };
            self.push(conn, Outbound::frame(frame));
        }
        for e in replay.events {
            self.push(conn, Outbound::Event(e));
        }
    }

    /// Presence and state, for a member that just joined or came back (what it asked
    /// for: a presence snapshot of a big room is big).
    pub fn send_snapshot(&mut self, conn: &ConnId) {
        let Some(interest) = self.links.get(conn).map(|l| l.interest) else {
            return;
        };
        if interest.presence {
            let snapshot = ServerFrame::Presence {
                room: self.place.room.clone(),
                joined: self.all_presence(),
                left: vec![],
                snapshot: true,
            };
            self.push(conn, Outbound::frame(snapshot));
        }
        if interest.state {
            // Everyone else first gets what changed so far, so that this member's
            // snapshot and theirs are the same version, and the next patch fits both.
            if std::mem::take(&mut self.state_changed) {
                self.flush_state(Some(conn));
            }
            if self.state_shown.is_none() {
                self.state_shown = Some(self.doc.heads());
            }
            let state = self.state_frame();
            self.push(conn, Outbound::frame(state));
        }
    }

    /// The document changed: members that take state get what changed, as a JSON
    /// Patch encoded once for all of them, instead of the whole document each time.
    pub fn flush_state(&mut self, except: Option<&ConnId>) {
        if !self.links.values().any(|l| l.interest.state) {
            // Nobody to keep a version for: the next member starts from a snapshot.
            self.state_shown = None;
            return;
        }
        let Some(before) = self.state_shown.take() else {
            return;
        };
        let ops = self.doc.patch_since(&before);
        self.state_shown = Some(self.doc.heads());
        if ops.is_empty() {
            return;
        }
        let frame = ServerFrame::StatePatch {
            room: self.place.room.clone(),
            patch: serde_json::Value::Array(ops).to_string(),
        };
        self.push_all(&frame, except);
    }

    /// The room's state as members see it.
    pub fn state_frame(&self) -> ServerFrame {
        ServerFrame::State {
            room: self.place.room.clone(),
            state: self.doc.to_json().to_string(),
        }
    }

    fn is_member(&self, conn: &str) -> Option<ConnId> {
        let conn = ConnId::from_trusted(conn.to_owned());
        self.core.member(&conn).map(|_| conn)
    }

    /// A member here or on another node.
    fn is_anywhere(&self, conn: &str) -> Option<ConnId> {
        let conn = ConnId::from_trusted(conn.to_owned());
        let remote = self.remote.values().any(|m| m.contains_key(&conn));
        (remote || self.core.member(&conn).is_some()).then_some(conn)
    }

    fn changed<T>(&mut self, r: Result<T, String>) -> Result<T, String> {
        if r.is_ok() {
            self.doc_changed();
        }
        r
    }

    /// The document changed here: members get the state, the disk and the other
    /// replicas the change.
    pub fn doc_changed(&mut self) {
        self.doc_received();
        if let Some(out) = &mut self.outgoing {
            out.state = true;
        }
    }

    /// A peer's change came in: members get the state and the disk the change; the
    /// replica passes it on to the others later, if they still lack it.
    pub fn doc_received(&mut self) {
        self.state_changed = true;
        self.unsaved = true;
    }
}

/// A member held by another node, as that node describes it: enough to show its
/// presence here and to take it over if its client resumes here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteMember {
    pub presence: String,
    pub auth: JoinAuth,
    /// See `Member::claim`.
    pub claim: u64,
    /// See `Member::token`.
    pub token: u64,
}

impl From<&edgeroom_room::core::Member> for RemoteMember {
    fn from(m: &edgeroom_room::core::Member) -> Self {
        Self {
            presence: m.presence.clone(),
            auth: m.auth.clone(),
            claim: m.claim,
            token: m.token,
        }
    }
}

/// What a call produced that the room's other replicas must hear of.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// Events this node sequenced.
    pub events: Vec<Arc<LogEntry>>,
    pub joined: Vec<(ConnId, RemoteMember)>,
    pub left: Vec<ConnId>,
    /// The document changed.
    pub state: bool,
    /// Kicks of members another node holds, for that node to carry out.
    pub kicks: Vec<(NodeId, ConnId, String)>,
    /// Idempotent emits handled with success, and their replies: a retry that lands on
    /// another replica gets the same answer instead of running again.
    pub handled: Vec<(String, Option<Payload>)>,
}

fn parse_json(json: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))
}

impl RoomApi for World {
    fn broadcast(&mut self, event: String, payload: Payload, except: Option<String>) {
        let target = match except {
            Some(c) => Target::AllExcept(ConnId::from_trusted(c)),
            None => Target::All,
        };
        if self.fits(&event, &payload) {
            self.publish(target, event, payload);
        }
    }

    fn send(&mut self, conn: String, event: String, payload: Payload) {
        // A member on another node gets it there: every replica has every event.
        if let Some(conn) = self.is_anywhere(&conn)
            && self.fits(&event, &payload)
        {
            self.publish(Target::Only(conn), event, payload);
        }
    }

    fn kick(&mut self, conn: String, reason: String) {
        if let Some(conn) = self.is_member(&conn) {
            self.kicks.push((conn, reason));
            return;
        }
        // A member on another node: that node removes it (and runs its on-leave).
        let conn = ConnId::from_trusted(conn);
        let holder = self.remote.iter().find(|(_, m)| m.contains_key(&conn));
        if let (Some((node, _)), Some(out)) = (holder, &mut self.outgoing) {
            out.kicks.push((node.clone(), conn, reason));
        }
    }

    fn members(&mut self) -> Vec<(String, String)> {
        self.all_presence()
            .into_iter()
            .map(|(c, p)| (c.as_str().to_owned(), p))
            .collect()
    }

    fn user(&mut self, conn: &str) -> Option<String> {
        let conn = ConnId::from_trusted(conn.to_owned());
        let auth = match self.core.member(&conn) {
            Some(m) => &m.auth,
            None => &self.remote.values().find_map(|m| m.get(&conn))?.auth,
        };
        auth.user.as_ref().map(|u| u.as_str().to_owned())
    }

    fn set_presence(&mut self, conn: String, presence_json: String) -> Result<(), String> {
        if presence_json.len() > self.max_presence_bytes {
            self.metrics.handler_error("too_large");
            return Err(format!(
                "presence of {} bytes is over the {}-byte limit",
                presence_json.len(),
                self.max_presence_bytes
            ));
        }
        parse_json(&presence_json)?;
        let conn = self.is_member(&conn).ok_or("no such member")?;
        self.core.set_presence(&conn, presence_json.clone());
        if self.joining.as_ref() == Some(&conn) {
            return Ok(());
        }
        self.presence_changed(vec![(conn, presence_json)], vec![]);
        Ok(())
    }

    fn state_get(&mut self, path: &str) -> Option<String> {
        self.doc.get(path).ok().flatten().map(|v| v.to_string())
    }

    // Each write counts what it adds (the value and its key, or a new counter's
    // digits) against `max_state_bytes`; a replacement or a delete what it removes.

    fn state_put(&mut self, path: &str, json: &str) -> Result<(), String> {
        let v = parse_json(json)?;
        let old = self.bytes_at(path);
        self.make_room(json.len() + path.len(), old)?;
        let r = self.doc.put(path, &v);
        self.changed(r)
    }

    fn state_increment(&mut self, path: &str, by: i64) -> Result<i64, String> {
        const COUNTER: usize = 24;
        self.make_room(path.len() + COUNTER, 0)?;
        let r = self.doc.increment(path, by);
        self.changed(r)
    }

    fn state_push(&mut self, path: &str, json: &str) -> Result<u32, String> {
        let v = parse_json(json)?;
        self.make_room(json.len() + 1, 0)?;
        let r = self.doc.push(path, &v);
        self.changed(r)
    }

    fn state_delete(&mut self, path: &str) -> Result<(), String> {
        let old = self.bytes_at(path);
        let r = self.doc.delete(path);
        if r.is_ok() {
            self.state_bytes = self.state_bytes.saturating_sub(old);
        }
        self.changed(r)
    }

    fn set_timer(&mut self, ms: u32) {
        self.timer = Some(ms.max(self.min_timer_ms));
    }

    fn now_ms(&mut self) -> u64 {
        self.wall_ms
    }

    fn log(&mut self, level: tracing::Level, msg: &str) {
        let second = self.now_ms / 1000;
        if self.log_window.0 != second {
            self.log_window = (second, 0);
        }
        if self.log_window.1 >= self.log_lines_per_sec {
            self.metrics.handler_error("log_rate");
            return;
        }
        self.log_window.1 += 1;
        let (app, room) = (&self.place.app, self.place.room.as_str());
        match level {
            tracing::Level::ERROR => tracing::error!(app, room, "handler: {msg}"),
            tracing::Level::WARN => tracing::warn!(app, room, "handler: {msg}"),
            tracing::Level::INFO => tracing::info!(app, room, "handler: {msg}"),
            tracing::Level::DEBUG => tracing::debug!(app, room, "handler: {msg}"),
            _ => tracing::trace!(app, room, "handler: {msg}"),
        }
    }

    fn info(&mut self) -> [String; 4] {
        let p = &self.place;
        [
            p.app.clone(),
            p.room.as_str().to_owned(),
            p.node.clone(),
            p.region.clone(),
        ]
    }
}
