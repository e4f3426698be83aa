//! Resume cursors: a version vector over message origins.
//!
//! Each node sequences the messages it originates per room, so "what a client has
//! seen of a room" is, for every origin, the highest sequence number delivered.
//! On the wire a cursor is `origin:run.n` pairs joined by commas (`n1:3.42,n2:1.7`): per
//! origin the last event seen, as its run and its number in that run (see [`Seq`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::ids::{NodeId, Seq};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<NodeId, Seq>);

impl Cursor {
    /// The highest sequence seen from `origin` (0 when none).
    pub fn get(&self, origin: &NodeId) -> Seq {
        self.0.get(origin).copied().unwrap_or_default()
    }

    /// The highest sequence seen from `origin`, if it names that origin at all.
    pub fn seen(&self, origin: &NodeId) -> Option<Seq> {
        self.0.get(origin).copied()
    }

    /// How many origins it names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Record that `seq` from `origin` was seen; never moves backwards.
    pub fn advance(&mut self, origin: &NodeId, seq: Seq) {
        let entry = self.0.entry(origin.clone()).or_default();
        *entry = (*entry).max(seq);
    }

    /// Set what was seen from `origin` to `seq` exactly (back, too).
    pub fn set(&mut self, origin: &NodeId, seq: Seq) {
        self.0.insert(origin.clone(), seq);
    }

    /// Whether this cursor has seen everything `other` has.
    pub fn dominates(&self, other: &Cursor) -> bool {
        other.0.iter().all(|(origin, seq)| self.get(origin) >= *seq)
    }

    /// Every origin and the highest sequence seen from it.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, Seq)> {
        self.0.iter().map(|(origin, seq)| (origin, *seq))
    }

    /// Whether a message `(origin, seq)` is already covered by this cursor.
    pub fn covers(&self, origin: &NodeId, seq: Seq) -> bool {
        self.get(origin) >= seq
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (origin, seq)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{origin}:{seq}")?;
        }
        Ok(())
    }
}

// Between nodes a cursor travels as its string; one that does not parse fails the
// frame (refused, never read as "nothing seen").
impl serde::Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a cursor string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor: {0}")]
pub struct BadCursor(&'static str);

impl FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let mut out = BTreeMap::new();
        if s.is_empty() {
            return Ok(Cursor(out));
        }
        if s.len() > 4096 {
            return Err(BadCursor("too long"));
        }
        for part in s.split(',') {
            let (origin, seq) = part
                .rsplit_once(':')
                .ok_or(BadCursor("expected origin:seq"))?;
            let origin = NodeId::new(origin).map_err(|_| BadCursor("bad origin"))?;
            let seq = seq
                .parse::<Seq>()
                .map_err(|_| BadCursor("bad sequence number"))?;
            out.insert(origin, seq);
        }
        Ok(Cursor(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_advances() {
        let n1 = NodeId::new("n1").unwrap();
        let n2 = NodeId::new("n2").unwrap();
        let mut c = Cursor::default();
        assert_eq!(c.to_string(), "");
        c.advance(&n2, Seq::new(1, 7));
        c.advance(&n1, Seq::new(2, 42));
        c.advance(&n1, Seq::new(2, 3));
        // A later run is ahead of every number of an earlier one.
        c.advance(&n2, Seq::new(1, 9));
        assert_eq!(c.to_string(), "n1:2.42,n2:1.9");
        assert_eq!("n1:2.42,n2:1.9".parse::<Cursor>().unwrap(), c);
        assert!(c.covers(&n1, Seq::new(2, 42)) && !c.covers(&n1, Seq::new(2, 43)));
        assert!(c.covers(&n1, Seq::new(1, 1000)) && !c.covers(&n1, Seq::new(3, 1)));
        for bad in [
            "n1", "n1:x", ":1", "n 1:2", "n1:-1", "n1:7", "n1:1.", "n1:.1", "n1:1.2.3", "n1:+1.2",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
