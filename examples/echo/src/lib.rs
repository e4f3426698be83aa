//! `echo`: the smallest useful handler, and the contract the test suites and
//! benchmarks rely on.
//!
//! - joins: everyone is accepted;
//! - `echo`: with a reply requested, the reply is exactly the received arguments;
//!   otherwise the sender alone gets event `echo` with them;
//! - `broadcast`: every other member gets event `broadcast` with the arguments; the
//!   reply (no arguments) comes after the broadcast was accepted for delivery;
//! - `whoami`: replies `{conn, room, node, region}`.

use edgeroom_sdk::{Args, Event, Handler, room};
use serde_json::json;

struct Echo;

impl Handler for Echo {
    fn on_message(ev: Event) -> Result<Option<Args>, String> {
        match ev.name.as_str() {
            "echo" if ev.wants_reply => Ok(Some(ev.args)),
            "echo" => {
                room::send(&ev.conn, "echo", &ev.args);
                Ok(None)
            }
            "broadcast" => {
                room::broadcast_except("broadcast", &ev.args, &ev.conn);
                Ok(Some(Args::new()))
            }
            "whoami" => {
                let info = room::info();
                Ok(Some(Args::json(&json!({
                    "conn": ev.conn,
                    "room": info.room,
                    "node": info.node,
                    "region": info.region,
                }))))
            }
            other => Err(format!("unknown event {other:?}")),
        }
    }
}

edgeroom_sdk::export_handler!(Echo);
