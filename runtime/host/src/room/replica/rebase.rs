//! Compacting a replicated room's document (see `edgeroom_room::state::rebase`): the
//! replica that compacts, when, and how the others follow.
//!
//! - **Who and when.** The room actor asks (`Input::Compact`) when the saved document
//!   outweighs its content. Only the replica with the lowest node id among those it
//!   knows compacts, and only when every replica it has ever heard from in the room is
//!   reachable: no replica cut off by a partition makes another base, and every
//!   replica whose writes the copy may lack hears of it. It need not wait until the
//!   others hold what it holds (in a busy room that is never): a replica redoes its
//!   own writes the copy lacks, and answers held for a peer to hold their change now
//!   wait for one to hold the copy.
//! - **Following.** The copy goes to every replica (`Rebase`). Messages of the
//!   document carry their sender's base; one on another base is not taken in: the
//!   replica on the older base is sent the newer document (`Rebase`, or asked for it
//!   with `Behind`), and rebases onto it, doing its own writes the copy lacks again.

use super::{Ctx, Replica, RoomMsg};
use crate::room::world::World;
use edgeroom_proto::ids::NodeId;
use edgeroom_room::state::Base;

/// Largest document sent whole in a `Rebase` (under the 4 MiB frame of room links).
/// A room whose document is larger is not compacted.
const MAX_REBASE_BYTES: usize = 3 << 20;

impl Replica {
    /// The base of the room's document, once the replica has read it.
    pub fn base(&self) -> Option<&Base> {
        self.base.as_ref()
    }

    /// The base of the room's document.
    pub(super) fn base_of(&mut self, w: &mut World) -> &Base {
        self.base.get_or_insert_with(|| w.doc.base())
    }

    /// Compact the document if this replica is the one to, and now is the time.
    /// Whether it did is seen in the document's base.
    pub(super) fn compact(&mut self, w: &mut World, ctx: &mut Ctx) {
        let me = w.core.origin().clone();
        let alive = ctx.peers.alive();
        let reachable: Vec<NodeId> = ctx
            .peers
            .interested()
            .into_iter()
            .filter(|n| alive.contains(n))
            .collect();
        if self.known.iter().any(|n| *n < me || !reachable.contains(n)) {
            return;
        }
        let base = Base {
            epoch: self.base_of(w).epoch + 1,
            by: me.to_string(),
        };
        let mut copy = match w.doc.compact_as(base.clone()) {
            Ok(copy) => copy,
            Err(e) => {
                tracing::warn!(room = %self.room.1, "could not compact the room's document: {e}");
                return;
            }
        };
        let bytes = copy.save();
        if bytes.len() > MAX_REBASE_BYTES {
            tracing::debug!(room = %self.room.1, bytes = bytes.len(), "document too large to send whole: not compacted");
            return;
        }
        // Answers still waiting now wait for a peer to hold the copy (`on_new_base`).
        w.replace_doc(copy);
        self.on_new_base(w, base.clone());
        for node in reachable {
            self.told_base.insert(node.clone(), base.clone());
            ctx.send(&node, RoomMsg::Rebase(bytes.clone()));
        }
    }

    /// A peer's document is on `theirs`, not this one's base: the older one gets the
    /// newer document, once per link.
    pub(super) fn other_base(&mut self, w: &mut World, from: &NodeId, theirs: Base, ctx: &mut Ctx) {
        let mine = self.base_of(w).clone();
        if self.told_base.get(from) == Some(&theirs.clone().max(mine.clone())) {
            return;
        }
        if theirs < mine {
            let bytes = w.doc.save();
            if bytes.len() <= MAX_REBASE_BYTES {
                ctx.send(from, RoomMsg::Rebase(bytes));
            }
            self.told_base.insert(from.clone(), mine);
        } else if theirs > mine {
            ctx.send(from, RoomMsg::Behind(mine));
            self.told_base.insert(from.clone(), theirs);
        }
    }

    /// A peer's document, on a base that may be newer: rebase onto it.
    pub(super) fn rebase(&mut self, w: &mut World, from: &NodeId, doc: &[u8], ctx: &mut Ctx) {
        let rebased = match w.doc.rebased(doc) {
            Ok(r) => r,
            Err(e) => {
                // Not newer (a second copy of one this replica took), or unreadable.
                tracing::debug!(room = %self.room.1, peer = %from, "no rebase: {e}");
                return;
            }
        };
        if rebased.too_far_behind {
            tracing::warn!(room = %self.room.1, "rebased from further behind than the copy remembers: this replica's unsent writes were not redone");
        }
        tracing::debug!(room = %self.room.1, peer = %from, base = ?rebased.base,
            redone = rebased.redone, dropped = rebased.dropped, "rebased the room's document");
        w.rebase_doc(rebased.doc);
        self.on_new_base(w, rebased.base);
        // Writes done again are news to every replica; what others wrote since the copy,
        // the sync conversations bring.
        self.sync_all(w, "rebase", ctx);
    }

    /// The document is on `base` now: what was known of the peers' documents
    /// concerned the old one.
    fn on_new_base(&mut self, w: &mut World, base: Base) {
        self.base = Some(base);
        self.sync.clear();
        self.confirmed.clear();
        self.unconfirmed.clear();
        let heads = w.doc.heads();
        // Answers still waiting wait for a peer to hold the new document.
        for p in self.pending.iter_mut().filter(|p| !p.heads.is_empty()) {
            p.heads.clone_from(&heads);
        }
        self.sent_heads = Some(heads);
    }
}
