//! What a member joins a room with, as every replica of the room keeps it.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// A member's credentials in one room: the `auth` JSON its client sent (what `on-join`
/// is given) and the identity its token proved, if it presented one. Handlers trust
/// `user`, never a name inside `json`, which any client can write.
///
/// Replicated between nodes in a compact binary encoding: every field is always written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAuth {
    pub json: String,
    pub user: Option<UserId>,
}

impl JoinAuth {
    /// An anonymous member's auth.
    pub fn anonymous(json: impl Into<String>) -> Self {
        Self {
            json: json.into(),
            user: None,
        }
    }

    /// What keeping it costs, in bytes, as member-record limits count it.
    pub fn size(&self) -> usize {
        self.json.len() + self.user.as_ref().map_or(0, |u| u.as_str().len())
    }
}
