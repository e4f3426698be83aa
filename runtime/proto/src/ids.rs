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

/// A member's verified identity: the `sub` of the token its client presented.
/// Any non-control characters, 1 to 256 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        check("user id", name, 256, |c| !c.is_control())?;
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

/// A per-(origin, room) sequence number: the `n`th event of one **run** of the
/// origin's numbering. A room starts a new run each time it loads on a node (the node
/// hands out runs from a durable counter, see `room::runs`), so numbers only grow per
/// (origin, room) across reloads, restarts and clock steps, and a new run is never
/// mistaken for a gap: numbers are dense within a run, and nothing is known between
/// the end of one run and the start of the next. `n` starts at 1; `n == 0` means
/// "before the first event of `run`", and `Seq::default()` "nothing yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Seq {
    pub run: u64,
    pub n: u64,
}

impl Seq {
    pub const fn new(run: u64, n: u64) -> Seq {
        Seq { run, n }
    }

    /// The first number of `run`.
    pub const fn first(run: u64) -> Seq {
        Seq { run, n: 1 }
    }

    /// The number after this one, in the same run. Saturates: a peer's number may be
    /// anything, and must not overflow here (a room's own numbering asserts it never
    /// gets near).
    pub fn next(self) -> Seq {
        Seq {
            run: self.run,
            n: self.n.saturating_add(1),
        }
    }

    /// The number before this one in its run (`n == 0` for the first).
    pub fn prev(self) -> Seq {
        Seq {
            run: self.run,
            n: self.n.saturating_sub(1),
        }
    }

    /// How many numbers of this one's run lie strictly between `after` and this one,
    /// counting only what is known to have been used: numbers of an earlier run past
    /// `after` are unknown (that run may have ended there), so they are not counted.
    pub fn used_since(self, after: Seq) -> u64 {
        match self.run.cmp(&after.run) {
            std::cmp::Ordering::Equal => self.n.saturating_sub(after.n).saturating_sub(1),
            std::cmp::Ordering::Greater => self.n.saturating_sub(1),
            std::cmp::Ordering::Less => 0,
        }
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.run, self.n)
    }
}

impl std::str::FromStr for Seq {
    type Err = &'static str;

    /// `run.n`, both decimal.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (run, n) = s.split_once('.').ok_or("expected run.n")?;
        let digits = |d: &str| {
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err("not a number");
            }
            d.parse::<u64>().map_err(|_| "too large")
        };
        Ok(Seq::new(digits(run)?, digits(n)?))
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
string_conversions!(AppName, RoomId, NodeId, UserId);

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

    #[test]
    fn sequence_arithmetic_on_any_peer_number_saturates() {
        let top = Seq::new(3, u64::MAX);
        assert_eq!(top.next(), top);
        assert_eq!(Seq::new(3, 0).prev(), Seq::new(3, 0));
        assert_eq!(top.used_since(Seq::new(3, 0)), u64::MAX - 1);
        assert_eq!(Seq::new(2, 5).used_since(top), 0);
        assert_eq!(Seq::new(4, 9).used_since(Seq::new(3, 2)), 8);
        assert_eq!("3.18446744073709551615".parse::<Seq>(), Ok(top));
        assert!("3.18446744073709551616".parse::<Seq>().is_err());
        assert!("3.-1".parse::<Seq>().is_err());
        assert!("31".parse::<Seq>().is_err());
    }
}
