//! Names and identifiers with meaning: apps, rooms, connections, nodes, sequence numbers.
//!
//! Anything that arrives from the network as a name is validated here once, so the
//! rest of the node can hold these types without re-checking them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {name:?}: {why}")]
pub struct InvalidName {
    pub kind: &'static str,
    pub name: String,
    pub why: &'static str,
}

fn check(
    kind: &'static str,
    name: &str,
    max: usize,
    ok: impl Fn(char) -> bool,
) -> Result<(), InvalidName> {
    let refuse = |why| {
        Err(InvalidName {
            kind,
            name: name.chars().take(80).collect(),
            why,
        })
    };
    if name.is_empty() {
        return refuse("must not be empty");
    }
    if name.len() > max {
        return refuse("too long");
    }
    if !name.chars().all(ok) {
        return refuse("has a character outside the allowed set");
    }
    Ok(())
}

/// An application: a namespace of rooms served by one handler.
/// `[a-z0-9_-]`, 1 to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

impl AppName {
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        check("app name", name, 64, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
        })?;
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A room inside an app. Printable ASCII without spaces, quotes or backslashes,
/// 1 to 128 characters; Socket.IO namespaces (`/lobby`) are valid room names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomId(String);

impl RoomId {
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        check("room name", name, 128, |c| {
            c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\'' | '`')
        })?;
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client session. Stays the same when the client resumes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(String);

impl ConnId {
    /// A fresh random id (128 bits, URL-safe).
    pub fn random() -> Self {
        use base64::Engine as _;
        let bytes: [u8; 16] = rand::random();
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
    /// An id read back from a token this node signed.
    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// For APIs that take `&String` (the generated handler bindings).
    pub fn as_string(&self) -> &String {
        &self.0
    }
}

/// A node of the cluster: the origin of the messages it sequences.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        check("node id", name, 64, |c| {
            c.is_ascii_alphanumeric() || c == '-' || c == '_'
        })?;
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A per-(origin, room) sequence number. The first message is 1; 0 means "nothing yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

macro_rules! string_conversions {
    ($($t:ident),*) => {$(
        impl TryFrom<String> for $t {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                Self::new(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
string_conversions!(AppName, RoomId, NodeId);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(AppName::new("chat-2").is_ok());
        assert!(AppName::new("Chat").is_err());
        assert!(AppName::new("").is_err());
        assert!(AppName::new(&"a".repeat(65)).is_err());
        assert!(RoomId::new("/lobby").is_ok());
        assert!(RoomId::new("game:42/blue").is_ok());
        assert!(RoomId::new("has space").is_err());
        assert!(RoomId::new("quote\"").is_err());
        assert!(RoomId::new(&"r".repeat(129)).is_err());
        assert_eq!(
            RoomId::new("x y").unwrap_err().why,
            "has a character outside the allowed set"
        );
    }

    #[test]
    fn conn_ids_are_unique() {
        assert_ne!(ConnId::random(), ConnId::random());
    }
}
