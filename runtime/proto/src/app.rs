//! An app's settings: what its operator sets through the admin API and the control
//! plane agrees on (the same JSON in both).

use serde::{Deserialize, Serialize};

/// An app's settings, set through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Socket.IO namespaces (besides `/`) clients may connect to: a regular expression
    /// the whole name must match. `None` accepts any.
    pub namespaces: Option<String>,
    /// Socket.IO connection state recovery (`pid` and offsets).
    pub recovery: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            namespaces: None,
            recovery: true,
        }
    }
}
