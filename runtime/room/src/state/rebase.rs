//! Compacting a replicated room's document, and rebasing replicas onto it.
//!
//! Replicas merge each other's Automerge changes, so no one replica can drop its
//! history alone: a change made elsewhere names the changes it depends on. Instead one
//! replica (the compactor) makes a compacted copy — the same content, no history —
//! marked with a [`Base`] (which compaction this is) and, per Automerge actor, the
//! last of its changes the copy holds. Every replica then *rebases* onto that copy:
//! it takes it whole and does again its own writes the copy does not hold (made
//! meanwhile, or cut off by a partition). That is why a replicated room's writes
//! carry the write itself in their change's message: it is done again by path (a
//! push is pushed again, an increment added again), not replayed as operations on
//! objects the copy no longer has. A replica only ever redoes its own writes, so
//! none is done twice; the compactor only compacts once every replica it knows holds
//! what it holds, so none is left out.

use std::collections::BTreeMap;

use automerge::transaction::CommitOptions;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{RoomDoc, err};

/// Actors the marker remembers at most (a few per replica per compaction): the
/// oldest compactions' go first. A replica that many compactions behind redoes none
/// of its writes (they could be in the copy already); it is told in `Rebased`.
const MAX_INCLUDED: usize = 4096;

/// Which compaction a document descends from: the `epoch`-th, made by node `by`.
/// Ordered, so that of two made at once every replica keeps the same one.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Base {
    pub epoch: u64,
    pub by: String,
}

/// A write as a replica records it in its change's message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "w", rename_all = "snake_case")]
pub(super) enum Write {
    Put { path: String, value: Json },
    Incr { path: String, by: i64 },
    Push { path: String, value: Json },
    Delete { path: String },
}

#[derive(Serialize, Deserialize)]
struct Tagged {
    node: String,
    write: Write,
}

/// The message of a compacted copy's marker change.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Marker {
    base: Base,
    /// Per actor (hex): the last of its changes the copy holds, and the epoch of the
    /// compaction that saw it.
    included: BTreeMap<String, (u64, u64)>,
}

/// A replica's document after a rebase.
#[derive(Debug)]
pub struct Rebased {
    pub doc: RoomDoc,
    pub base: Base,
    /// Heads of the copy before this replica's writes were done again on it.
    pub copy_heads: Vec<automerge::ChangeHash>,
    /// Writes done again; writes that no longer applied (the path now holds something
    /// else), dropped.
    pub redone: usize,
    pub dropped: usize,
    /// This replica was further behind than the copy remembers: it redid nothing.
    pub too_far_behind: bool,
}

impl RoomDoc {
    /// Tag this document's writes as `node`'s (a replicated room's).
    pub fn tag_writes(&mut self, node: &str) {
        self.writer = Some(node.to_owned());
    }

    /// Commit what a write just did as its own change, the write in its message.
    pub(super) fn record(&mut self, write: impl FnOnce() -> Write) {
        self.history = self.history.saturating_add(1);
        let Some(node) = &self.writer else { return };
        let tagged = Tagged {
            node: node.clone(),
            write: write(),
        };
        if let Ok(message) = serde_json::to_string(&tagged) {
            self.doc
                .commit_with(CommitOptions::default().with_message(message));
        }
    }

    /// The compaction this document descends from (the default before the first).
    /// Reads the whole history: at load, not per message.
    pub fn base(&mut self) -> Base {
        self.marker().base
    }

    fn marker(&mut self) -> Marker {
        self.doc
            .get_changes(&[])
            .iter()
            .filter_map(|c| serde_json::from_str::<Marker>(c.message()?).ok())
            .max_by(|a, b| a.base.cmp(&b.base))
            .unwrap_or_default()
    }

    /// A compacted copy of this document, marked as compaction `base`: the same
    /// content without history, and which changes of each actor it holds (this
    /// document's and, from the marker it descends from, earlier ones').
    pub fn compact_as(&mut self, base: Base) -> Result<RoomDoc, String> {
        let mut marker = self.marker();
        for c in self.doc.get_changes(&[]) {
            let seen = marker
                .included
                .entry(c.actor_id().to_hex_string())
                .or_insert((0, base.epoch));
            if c.seq() >= seen.0 {
                *seen = (c.seq(), base.epoch);
            }
        }
        while marker.included.len() > MAX_INCLUDED {
            let oldest = marker
                .included
                .iter()
                .min_by_key(|(_, (_, epoch))| *epoch)
                .map(|(actor, _)| actor.clone());
            match oldest {
                Some(actor) => marker.included.remove(&actor),
                None => break,
            };
        }
        marker.base = base;
        let mut copy = self.compacted()?;
        let message = serde_json::to_string(&marker).map_err(err)?;
        copy.doc
            .empty_change(CommitOptions::default().with_message(message).with_time(0));
        copy.writer = self.writer.clone();
        Ok(copy)
    }

    /// This replica's document rebased onto `copy` (another replica's compacted
    /// document, with what was written to it since): the copy, with this replica's
    /// own writes that it does not hold done again, in the order they were made.
    /// Refused unless the copy's base is newer than this document's.
    pub fn rebased(&mut self, copy: &[u8]) -> Result<Rebased, String> {
        let mut doc = RoomDoc::load(copy)?;
        let marker = doc.marker();
        let mine = self.base();
        if marker.base <= mine {
            // Writes made since a base are merged as changes, not redone.
            return Err(format!(
                "the copy's base {:?} is not newer than this document's {:?}",
                marker.base, mine
            ));
        }
        let too_far_behind = mine.epoch + 1 < marker.base.epoch
            && marker
                .included
                .values()
                .all(|(_, epoch)| *epoch > mine.epoch + 1);
        let writes: Vec<Write> = match (&self.writer, too_far_behind) {
            (Some(node), false) => self
                .doc
                .get_changes(&[])
                .iter()
                .filter(|c| {
                    marker
                        .included
                        .get(&c.actor_id().to_hex_string())
                        .is_none_or(|(seq, _)| c.seq() > *seq)
                })
                .filter_map(|c| serde_json::from_str::<Tagged>(c.message()?).ok())
                .filter(|t| &t.node == node)
                .map(|t| t.write)
                .collect(),
            _ => Vec::new(),
        };
        doc.writer = self.writer.clone();
        let copy_heads = doc.heads();
        let (mut redone, mut dropped) = (0, 0);
        for w in &writes {
            let done = match w {
                Write::Put { path, value } => doc.put(path, value),
                Write::Incr { path, by } => doc.increment(path, *by).map(drop),
                Write::Push { path, value } => doc.push(path, value).map(drop),
                Write::Delete { path } => doc.delete(path),
            };
            match done {
                Ok(()) => redone += 1,
                Err(_) => dropped += 1,
            }
        }
        Ok(Rebased {
            doc,
            base: marker.base,
            copy_heads,
            redone,
            dropped,
            too_far_behind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replica(node: &str) -> RoomDoc {
        let mut d = RoomDoc::new();
        d.tag_writes(node);
        d
    }

    fn sync_pair(a: &mut RoomDoc, b: &mut RoomDoc) {
        let to_b = a.changes_since(&[]);
        b.apply_changes(&to_b).unwrap();
        let to_a = b.changes_since(&[]);
        a.apply_changes(&to_a).unwrap();
    }

    /// Two replicas write, one compacts, each rebases with writes made meanwhile:
    /// both end with the same content, every write counted once, and later changes
    /// merge as before — with far less history.
    #[test]
    fn replicas_rebase_onto_a_compacted_copy_without_losing_or_doubling_a_write() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        for i in 0..200 {
            a.increment("count", 1).unwrap();
            b.push("chat", &json!({"i": i, "text": "x".repeat(40)}))
                .unwrap();
            b.delete("chat/0").ok();
        }
        sync_pair(&mut a, &mut b);
        assert_eq!(a.to_json(), b.to_json());
        let before = a.save().len();

        // `a` compacts; meanwhile `b` writes twice more, which `a` never saw.
        let base = Base {
            epoch: 1,
            by: "a".into(),
        };
        let mut a = a.compact_as(base.clone()).unwrap();
        b.increment("count", 5).unwrap();
        b.push("chat", &json!("late")).unwrap();
        a.increment("count", 1).unwrap();

        let copy = a.save();
        assert!(copy.len() * 4 < before, "{} vs {before}", copy.len());
        let rebased = b.rebased(&copy).unwrap();
        assert_eq!(rebased.base, base);
        assert_eq!((rebased.redone, rebased.dropped), (2, 0));
        let mut b = rebased.doc;
        assert_eq!(b.base(), base);
        sync_pair(&mut a, &mut b);
        assert_eq!(a.to_json(), b.to_json());
        // 200 + 1 from `a`, 5 from `b` (redone), and `b`'s late push, once.
        assert_eq!(a.to_json(), json!({"count": 206, "chat": ["late"]}));

        // Rebasing onto the same base again is refused: what is written on one base
        // is merged, not redone.
        assert!(b.rebased(&a.save()).is_err());
    }

    /// A write the copy already holds is not done again; a replica's restart keeps
    /// its writes in its saved document, which rebases the same way.
    #[test]
    fn writes_the_copy_holds_are_not_redone_also_after_a_reload() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        b.increment("n", 3).unwrap();
        sync_pair(&mut a, &mut b);
        b.increment("n", 4).unwrap();
        let mut b = RoomDoc::load(&b.save()).unwrap();
        b.tag_writes("b");
        let mut a = a
            .compact_as(Base {
                epoch: 1,
                by: "a".into(),
            })
            .unwrap();
        let rebased = b.rebased(&a.save()).unwrap();
        assert_eq!(rebased.redone, 1, "only the write `a` never saw");
        let mut b = rebased.doc;
        sync_pair(&mut a, &mut b);
        assert_eq!(b.to_json(), json!({"n": 7}));
    }
}
