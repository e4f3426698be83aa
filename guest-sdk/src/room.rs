//! What a handler can do to its room: send, broadcast, kick, presence, timers, logs.

use serde::Serialize;

use crate::Args;
use crate::bindings::edgeroom::handler::{room as wit, types};

pub use types::Level;

/// A member of the room.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub conn: String,
    /// `null` until set with [`set_presence`].
    pub presence: serde_json::Value,
}

/// Where the handler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub app: String,
    pub room: String,
    pub node: String,
    pub region: String,
}

/// Send `event` to every member of the room.
pub fn broadcast(event: &str, args: &Args) {
    wit::broadcast(event, &args.to_payload(), None)
}

/// Send `event` to every member except `conn`.
pub fn broadcast_except(event: &str, args: &Args, conn: &str) {
    wit::broadcast(event, &args.to_payload(), Some(conn))
}

/// Send `event` to one member.
pub fn send(conn: &str, event: &str, args: &Args) {
    wit::send(conn, event, &args.to_payload())
}

/// Remove a member from the room; the client is told why.
pub fn kick(conn: &str, reason: &str) {
    wit::kick(conn, reason)
}

/// The members and their presence.
pub fn members() -> Vec<Member> {
    wit::members()
        .into_iter()
        .map(|m| Member {
            presence: serde_json::from_str(&m.presence).unwrap_or(serde_json::Value::Null),
            conn: m.conn,
        })
        .collect()
}

/// One member's presence, if it is a member.
pub fn presence(conn: &str) -> Option<serde_json::Value> {
    members()
        .into_iter()
        .find(|m| m.conn == conn)
        .map(|m| m.presence)
}

/// A member's verified identity: the `sub` of the token its client connected with.
/// `None` for an anonymous client. Trust this, never a name in the client's `auth`.
pub fn user(conn: &str) -> Option<String> {
    wit::user(conn)
}

/// Set a member's presence; the other members are told.
pub fn set_presence<T: Serialize + ?Sized>(conn: &str, presence: &T) -> Result<(), String> {
    let json = serde_json::to_string(presence).map_err(|e| e.to_string())?;
    wit::set_presence(conn, &json)
}

/// Call [`crate::Handler::on_timer`] once, `ms` milliseconds from now (replaces a pending timer).
pub fn set_timer(ms: u32) {
    wit::set_timer(ms)
}

/// Milliseconds since the Unix epoch, by the node's clock.
pub fn now_ms() -> u64 {
    wit::now_ms()
}

/// App, room, node and region.
pub fn info() -> Info {
    let c = wit::info();
    Info {
        app: c.app,
        room: c.room,
        node: c.node,
        region: c.region,
    }
}

/// Write to the node's log, tagged with the app and room.
pub fn log(level: Level, msg: &str) {
    wit::log(level, msg)
}
