//! `counter`: a shared counter kept as a CRDT counter, so increments made on
//! different nodes at once add up instead of overwriting each other.
//!
//! - `incr {by}` adds `by` (default 1) to state `count` and replies `{count}`;
//! - `get` replies `{count}`;
//! - members receive the room state after every change (the node does that).

use edgeroom_sdk::{Args, Event, Handler, state};
use serde_json::json;

struct Counter;

impl Handler for Counter {
    fn on_message(ev: Event) -> Result<Option<Args>, String> {
        match ev.name.as_str() {
            "incr" => {
                let by = match ev.args.get(0) {
                    None => 1,
                    Some(v) => v
                        .to_json()
                        .and_then(|j| j.get("by").cloned())
                        .map_or(Ok(1), |b| b.as_i64().ok_or("by must be an integer"))?,
                };
                let count = state::increment("count", by)?;
                Ok(Some(Args::json(&json!({ "count": count }))))
            }
            "get" => Ok(Some(Args::json(
                &json!({ "count": state::get::<i64>("count").unwrap_or(0) }),
            ))),
            other => Err(format!("unknown event {other:?}")),
        }
    }
}

edgeroom_sdk::export_handler!(Counter);
