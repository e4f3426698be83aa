//! The room's state: one replicated document (Automerge) addressed by `/` paths.
//!
//! Paths name map keys and list indices: `messages`, `players/alice/score`,
//! `messages/0`. Writes create missing maps on the way. Members receive the whole
//! state after each event that changed it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::edgeroom::handler::room as wit;

/// The value at `path` as JSON.
pub fn get_json(path: &str) -> Option<serde_json::Value> {
    wit::state_get(path).and_then(|s| serde_json::from_str(&s).ok())
}

/// The value at `path`, deserialized; `None` if absent or of another shape.
pub fn get<T: DeserializeOwned>(path: &str) -> Option<T> {
    get_json(path).and_then(|v| serde_json::from_value(v).ok())
}

/// Set the value at `path`.
pub fn put<T: Serialize + ?Sized>(path: &str, value: &T) -> Result<(), String> {
    wit::state_put(
        path,
        &serde_json::to_string(value).map_err(|e| e.to_string())?,
    )
}

/// Add `by` to the counter at `path` (created at 0). Concurrent increments on
/// different nodes add up. Returns the new value.
pub fn increment(path: &str, by: i64) -> Result<i64, String> {
    wit::state_increment(path, by)
}

/// Append to the list at `path` (created if absent); returns the new length.
pub fn push<T: Serialize + ?Sized>(path: &str, value: &T) -> Result<u32, String> {
    wit::state_push(
        path,
        &serde_json::to_string(value).map_err(|e| e.to_string())?,
    )
}

/// Remove the value at `path`.
pub fn delete(path: &str) -> Result<(), String> {
    wit::state_delete(path)
}
