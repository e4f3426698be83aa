//! What a handler sees of its room while it runs: the [`RoomApi`] the sandbox calls.
//!
//! Sends and broadcasts are sequenced and queued to members at once, inside the host
//! call, so a reply that follows a broadcast is always behind it. Kicks wait until the
//! call returns, because a kicked member's `on-leave` is a handler call of its own.

use std::collections::HashMap;
use std::sync::Arc;

use super::core::{LogEntry, RoomCore, Target};
use super::outbox::{Link, Outbound, PushError, Shared};
use crate::ids::{ConnId, RoomId, Seq};
use crate::metrics::Metrics;
use crate::payload::Payload;
use crate::protocol::ProtoError;
use crate::protocol::native::ServerFrame;
use crate::sandbox::RoomApi;
use crate::state::RoomDoc;

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
    /// The connection whose event is being handled (the `from` of what it causes).
    pub current: Option<ConnId>,
    /// The connection whose `on-join` is running: its presence is announced with the
    /// join, once accepted, not before.
    pub joining: Option<ConnId>,
    /// Kicks requested during the current call.
    pub kicks: Vec<(ConnId, String)>,
    /// Connections that fell behind or vanished while being sent to.
    /// With the first event that did not reach them, if it was an event.
    pub lost: Vec<(ConnId, Option<Seq>)>,
    /// The document changed since members last got the state.
    pub state_changed: bool,
    /// The document changed since it was last saved.
    pub unsaved: bool,
    /// `on-timer` requested in this many ms.
    pub timer: Option<u32>,
    pub now_ms: u64,
    pub metrics: Arc<Metrics>,
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
            current: None,
            joining: None,
            kicks: Vec::new(),
            lost: Vec::new(),
            state_changed: false,
            unsaved: false,
            timer: None,
            now_ms: 0,
            metrics,
        }
    }

    /// Queue a frame to one member's connection.
    pub fn push(&mut self, conn: &ConnId, item: Outbound) {
        let Some(link) = self.links.get(conn).filter(|l| l.wants(&item)) else {
            return;
        };
        let seq = match &item {
            Outbound::Event(e) => Some(e.seq),
            _ => None,
        };
        match link.outbox.push(item) {
            Ok(()) => {
                self.metrics.deliveries.inc();
            }
            Err(PushError::SlowConsumer | PushError::Closed) => {
                self.lost.push((conn.clone(), seq));
            }
        }
    }

    /// Sequence an event and queue it to every attached member it targets.
    pub fn publish(&mut self, target: Target, event: String, payload: Payload) -> Arc<LogEntry> {
        let from = self.current.clone();
        let entry = self.core.publish(self.now_ms, target, event, payload, from);
        let item = Outbound::Event(entry.clone());
        let target = &entry.target;
        self.fan_out(&item, |c| target.includes(c));
        entry
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
        let seq = match item {
            Outbound::Event(e) => Some(e.seq),
            _ => None,
        };
        let World {
            links,
            lost,
            metrics,
            ..
        } = self;
        let mut delivered = 0;
        for (conn, link) in links.iter().filter(|(c, l)| to(c) && l.wants(item)) {
            match link.outbox.push(item.clone()) {
                Ok(()) => delivered += 1,
                Err(PushError::SlowConsumer | PushError::Closed) => lost.push((conn.clone(), seq)),
            }
        }
        metrics.deliveries.inc_by(delivered);
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

    fn changed<T>(&mut self, r: Result<T, String>) -> Result<T, String> {
        if r.is_ok() {
            self.state_changed = true;
            self.unsaved = true;
        }
        r
    }
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
        self.publish(target, event, payload);
    }

    fn send(&mut self, conn: String, event: String, payload: Payload) {
        if let Some(conn) = self.is_member(&conn) {
            self.publish(Target::Only(conn), event, payload);
        }
    }

    fn kick(&mut self, conn: String, reason: String) {
        if let Some(conn) = self.is_member(&conn) {
            self.kicks.push((conn, reason));
        }
    }

    fn members(&mut self) -> Vec<(String, String)> {
        self.core
            .members()
            .iter()
            .map(|(c, m)| (c.as_str().to_owned(), m.presence.clone()))
            .collect()
    }

    fn set_presence(&mut self, conn: String, presence_json: String) -> Result<(), String> {
        parse_json(&presence_json)?;
        let conn = self.is_member(&conn).ok_or("no such member")?;
        self.core.set_presence(&conn, presence_json.clone());
        if self.joining.as_ref() == Some(&conn) {
            return Ok(());
        }
        let frame = ServerFrame::Presence {
            room: self.place.room.clone(),
            joined: vec![(conn, presence_json)],
            left: vec![],
            snapshot: false,
        };
        self.push_all(&frame, None);
        Ok(())
    }

    fn state_get(&mut self, path: &str) -> Option<String> {
        self.doc.get(path).ok().flatten().map(|v| v.to_string())
    }

    fn state_put(&mut self, path: &str, json: &str) -> Result<(), String> {
        let v = parse_json(json)?;
        let r = self.doc.put(path, &v);
        self.changed(r)
    }

    fn state_increment(&mut self, path: &str, by: i64) -> Result<i64, String> {
        let r = self.doc.increment(path, by);
        self.changed(r)
    }

    fn state_push(&mut self, path: &str, json: &str) -> Result<u32, String> {
        let v = parse_json(json)?;
        let r = self.doc.push(path, &v);
        self.changed(r)
    }

    fn state_delete(&mut self, path: &str) -> Result<(), String> {
        let r = self.doc.delete(path);
        self.changed(r)
    }

    fn set_timer(&mut self, ms: u32) {
        self.timer = Some(ms);
    }

    fn now_ms(&mut self) -> u64 {
        self.now_ms
    }

    fn log(&mut self, level: tracing::Level, msg: &str) {
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
