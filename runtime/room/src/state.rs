//! Room state: one Automerge document per room, addressed by `/`-separated paths.
//!
//! Handlers read and write JSON at a path; lists take numeric segments. Counters are
//! Automerge counters, so increments made concurrently on different replicas sum
//! instead of overwriting each other. Replicas send each other their changes
//! ([`RoomDoc::changes_since`], [`RoomDoc::apply_changes`]) and catch up with the
//! Automerge sync protocol ([`RoomDoc::sync_message`], [`RoomDoc::receive_sync`]).
//!
//! Replicas create containers concurrently: two nodes whose first `incr` lands at the
//! same moment would each create a counter at `count`, Automerge would keep one, and
//! the other's increments would vanish with it. So a map, list or counter that a path
//! needs and that does not exist yet is created by a *genesis* change that every
//! replica computes byte for byte the same (an actor derived from the path, no
//! dependencies beyond the path's own genesis changes, time 0): the copies merge into
//! one object. This holds while every step of the path was created that way; below a
//! value a handler `put` as a whole, creation is ordinary (last writer wins).

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, PatchAction, Prop, ROOT, ReadDoc,
    ScalarValue, Value, sync, sync::SyncDoc,
};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// Deepest path a handler may address.
const MAX_SEGMENTS: usize = 32;
/// Deepest JSON a handler may store.
const MAX_DEPTH: usize = 64;

mod rebase;
use rebase::Write;
pub use rebase::{Base, Rebased};

/// A room's document.
#[derive(Debug, Default)]
pub struct RoomDoc {
    doc: AutoCommit,
    /// A replicated room's node: each write is committed as its own change with the
    /// write in its message, so it can be done again on a rebased document (see
    /// `rebase`). `None` on a standalone node.
    writer: Option<String>,
    /// Writes made and changes taken in since the document was loaded or compacted.
    history: usize,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn segments(path: &str) -> Result<Vec<&str>, String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() > MAX_SEGMENTS {
        return Err(format!("path has more than {MAX_SEGMENTS} segments"));
    }
    Ok(segs)
}

impl RoomDoc {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn load(bytes: &[u8]) -> Result<Self, String> {
        AutoCommit::load(bytes)
            .map(|doc| Self {
                doc,
                ..Self::default()
            })
            .map_err(err)
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// The changes since the last `save` or `save_incremental`: appended to what
    /// `save` wrote, the whole is what `load` reads back. Empty if nothing changed.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.doc.save_incremental()
    }

    /// Writes made here and changes taken in since the document was loaded or
    /// compacted. What a change costs to take in grows with it: Automerge finds where
    /// a list insert or delete goes by walking the list's history, deleted elements
    /// too (a chat list of 100 messages took 60 µs a change fresh, 1.4 ms after 6,000
    /// messages).
    pub fn history(&self) -> usize {
        self.history
    }

    /// Identifies the document's version: compare before and after to see a change.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Which of `changes` (hex change hashes) this document does not hold yet: how a
    /// replica is asked whether it has caught up with another's heads. A hash that is
    /// not a change hash at all is reported missing.
    pub fn missing<'a>(&mut self, changes: &'a [String]) -> Vec<&'a str> {
        changes
            .iter()
            .filter(|h| {
                h.parse::<ChangeHash>()
                    .map_or(true, |hash| self.doc.get_change_by_hash(&hash).is_none())
            })
            .map(String::as_str)
            .collect()
    }

    /// Whether a replica whose heads are `theirs` holds every change of `mine` (which
    /// this document holds): each is among `theirs` or their ancestors. How a replica
    /// learns that another has its latest change.
    pub fn covered(&mut self, mine: &[ChangeHash], theirs: &[ChangeHash]) -> bool {
        mine.iter()
            .all(|h| theirs.contains(h) || self.descends(theirs, h))
    }

    /// Whether `h` is an ancestor of one of `heads` (heads this document does not
    /// know prove nothing). The walk back from `heads` costs what was made since `h`,
    /// not the whole history: a change that descends from `h` numbers its ops after
    /// `h`'s, so a path back to `h` crosses no change whose ops end before `h`'s do,
    /// and one of `h`'s own actor with a later sequence number holds `h` (an actor's
    /// changes form a chain).
    fn descends(&mut self, heads: &[ChangeHash], h: &ChangeHash) -> bool {
        let Some(target) = self.doc.get_change_meta_by_hash(h) else {
            return false;
        };
        let (actor, seq, max_op) = (target.actor.into_owned(), target.seq, target.max_op);
        let mut seen = std::collections::HashSet::new();
        let mut stack = heads.to_vec();
        while let Some(x) = stack.pop() {
            if x == *h {
                return true;
            }
            if !seen.insert(x) {
                continue;
            }
            let Some(meta) = self.doc.get_change_meta_by_hash(&x) else {
                continue;
            };
            // `<`, not `<=`: a descendant with no ops ends where `h` does.
            if meta.max_op < max_op {
                continue;
            }
            if *meta.actor == actor && meta.seq >= seq {
                return true;
            }
            stack.extend(meta.deps);
        }
        false
    }

    /// What changed since `before` (heads this document holds), as JSON Patch
    /// operations (RFC 6902) that turn the JSON view at `before` into the current one.
    /// Lists change by index (an insert or delete at the front is one operation, not a
    /// rewrite of the list); a new map or list comes whole, as it is now.
    pub fn patch_since(&mut self, before: &[ChangeHash]) -> Vec<Json> {
        let after = self.doc.get_heads();
        let patches = self.doc.diff(before, &after);
        let mut ops = Vec::new();
        // Objects already written whole (new ones, and texts): later patches inside
        // them are already in what was written.
        let mut whole: std::collections::HashSet<ObjId> = std::collections::HashSet::new();
        for p in patches {
            if whole.contains(&p.obj) || p.path.iter().any(|(o, _)| whole.contains(o)) {
                continue;
            }
            let at = pointer(&p.path);
            let child = |key: &dyn std::fmt::Display| format!("{at}/{}", escape(&key.to_string()));
            match p.action {
                PatchAction::PutMap { key, value, .. } => {
                    let v = self.written(value, &mut whole);
                    ops.push(op("add", &child(&key), Some(v)));
                }
                PatchAction::PutSeq { index, value, .. } => {
                    let v = self.written(value, &mut whole);
                    ops.push(op("replace", &child(&index), Some(v)));
                }
                PatchAction::Insert { index, values } => {
                    for (i, (v, id, _)) in values.iter().enumerate() {
                        let v = self.written((v.clone(), id.clone()), &mut whole);
                        ops.push(op("add", &child(&(index + i)), Some(v)));
                    }
                }
                PatchAction::DeleteMap { key } => ops.push(op("remove", &child(&key), None)),
                PatchAction::DeleteSeq { index, length } => {
                    if self.doc.object_type(&p.obj) == Ok(ObjType::Text) {
                        ops.push(self.text_op(&p.obj, &at, &mut whole));
                    } else {
                        let path = child(&index);
                        ops.extend((0..length).map(|_| op("remove", &path, None)));
                    }
                }
                PatchAction::SpliceText { .. } => ops.push(self.text_op(&p.obj, &at, &mut whole)),
                PatchAction::Increment { prop, .. } => {
                    let now = self
                        .doc
                        .get(&p.obj, prop.clone())
                        .ok()
                        .flatten()
                        .map_or(Json::Null, |(v, id)| value_json(&self.doc, v, &id));
                    let path = match prop {
                        Prop::Map(k) => child(&k),
                        Prop::Seq(i) => child(&i),
                    };
                    ops.push(op("replace", &path, Some(now)));
                }
                // The winning value came in its put; marks are not in the JSON view.
                PatchAction::Conflict { .. } | PatchAction::Mark { .. } => {}
            }
        }
        ops
    }

    /// A value a patch writes: an object whole (and remembered as written).
    fn written(
        &self,
        (v, id): (Value<'_>, ObjId),
        whole: &mut std::collections::HashSet<ObjId>,
    ) -> Json {
        if matches!(v, Value::Object(_)) {
            whole.insert(id.clone());
        }
        value_json(&self.doc, v, &id)
    }

    /// A text changed: its whole current value, once.
    fn text_op(&self, obj: &ObjId, at: &str, whole: &mut std::collections::HashSet<ObjId>) -> Json {
        whole.insert(obj.clone());
        op(
            "replace",
            at,
            Some(Json::String(self.doc.text(obj).unwrap_or_default())),
        )
    }

    /// The whole document as JSON.
    pub fn to_json(&self) -> Json {
        value_json(&self.doc, Value::Object(ObjType::Map), &ROOT)
    }

    /// The value at `path` as JSON; the whole document for an empty path.
    pub fn get(&self, path: &str) -> Result<Option<Json>, String> {
        let segs = segments(path)?;
        let Some((last, parents)) = segs.split_last() else {
            return Ok(Some(self.to_json()));
        };
        let Some(obj) = self.walk(parents)? else {
            return Ok(None);
        };
        let prop = prop_for(&self.doc, &obj, last)?;
        Ok(self
            .doc
            .get(&obj, prop)
            .map_err(err)?
            .map(|(v, id)| value_json(&self.doc, v, &id)))
    }

    /// The object at the end of `segs`, if every step exists and is an object.
    fn walk(&self, segs: &[&str]) -> Result<Option<ObjId>, String> {
        let mut obj = ROOT;
        for seg in segs {
            let prop = prop_for(&self.doc, &obj, seg)?;
            match self.doc.get(&obj, prop).map_err(err)? {
                Some((Value::Object(_), id)) => obj = id,
                _ => return Ok(None),
            }
        }
        Ok(Some(obj))
    }

    /// Set the value at `path`, creating missing maps on the way.
    pub fn put(&mut self, path: &str, value: &Json) -> Result<(), String> {
        check_depth(value, 0)?;
        let (obj, prop) = self.resolve(path)?;
        if let Prop::Seq(i) = prop
            && i >= self.doc.length(&obj)
        {
            return Err(format!("index {i} is past the end of the list"));
        }
        put_json(&mut self.doc, &obj, prop, value, false).map_err(err)?;
        self.record(|| Write::Put {
            path: path.into(),
            value: value.clone(),
        });
        Ok(())
    }

    /// Add `by` to the counter at `path`, creating it at 0 if absent. Returns the new value.
    pub fn increment(&mut self, path: &str, by: i64) -> Result<i64, String> {
        let (obj, prop, shared) = self.resolve_shared(path)?;
        let existing = match self.doc.get(&obj, prop.clone()).map_err(err)? {
            Some((Value::Scalar(s), _)) if s.is_counter() => true,
            Some(_) => return Err(format!("`{path}` holds a value that is not a counter")),
            None => false,
        };
        let made = !existing && shared && self.genesis(path, Leaf::Counter, &obj, &prop)?.is_some();
        if !existing && !made {
            self.doc
                .put(&obj, prop.clone(), ScalarValue::counter(0))
                .map_err(err)?;
        }
        self.doc.increment(&obj, prop.clone(), by).map_err(err)?;
        self.record(|| Write::Incr {
            path: path.into(),
            by,
        });
        Ok(self
            .doc
            .get(&obj, prop)
            .map_err(err)?
            .and_then(|(v, _)| v.as_i64())
            .unwrap_or(0))
    }

    /// Append to the list at `path` (created if absent). Returns the new length.
    pub fn push(&mut self, path: &str, value: &Json) -> Result<u32, String> {
        check_depth(value, 0)?;
        let (obj, prop, shared) = self.resolve_shared(path)?;
        let list = match self.doc.get(&obj, prop.clone()).map_err(err)? {
            Some((Value::Object(ObjType::List), id)) => id,
            Some(_) => return Err(format!("`{path}` is not a list")),
            None => match shared {
                true => self.genesis(path, Leaf::List, &obj, &prop)?,
                false => None,
            }
            .map_or_else(
                || self.doc.put_object(&obj, prop.clone(), ObjType::List),
                Ok,
            )
            .map_err(err)?,
        };
        let n = self.doc.length(&list);
        put_json(&mut self.doc, &list, Prop::Seq(n), value, true).map_err(err)?;
        self.record(|| Write::Push {
            path: path.into(),
            value: value.clone(),
        });
        u32::try_from(n + 1).map_err(err)
    }

    /// Remove the value at `path` (no error if it is already absent).
    pub fn delete(&mut self, path: &str) -> Result<(), String> {
        let segs = segments(path)?;
        let Some((last, parents)) = segs.split_last() else {
            return Err("cannot delete the whole document".into());
        };
        let Some(obj) = self.walk(parents)? else {
            return Ok(());
        };
        let prop = prop_for(&self.doc, &obj, last)?;
        if let Prop::Seq(i) = prop
            && i >= self.doc.length(&obj)
        {
            return Ok(());
        }
        self.doc.delete(&obj, prop).map_err(err)?;
        self.record(|| Write::Delete { path: path.into() });
        Ok(())
    }

    /// The parent object and last property of `path`, creating missing maps.
    fn resolve(&mut self, path: &str) -> Result<(ObjId, Prop), String> {
        self.resolve_shared(path).map(|(obj, prop, _)| (obj, prop))
    }

    /// [`RoomDoc::resolve`], and whether every step of the path is a genesis object
    /// (so what is created at its end can be a genesis object too).
    fn resolve_shared(&mut self, path: &str) -> Result<(ObjId, Prop, bool), String> {
        let segs = segments(path)?;
        let Some((last, parents)) = segs.split_last() else {
            return Err("path must name a value inside the document".into());
        };
        let mut obj = ROOT;
        let mut shared = true;
        for (i, seg) in parents.iter().enumerate() {
            let prop = prop_for(&self.doc, &obj, seg)?;
            let here = &segs[..=i];
            let next = match self.doc.get(&obj, prop.clone()).map_err(err)? {
                Some((Value::Object(_), id)) => Some(id),
                Some((Value::Scalar(_), _)) => return Err(format!("`{seg}` is not an object")),
                None => None,
            };
            obj = match next {
                Some(id) => {
                    shared &= is_genesis(&id, here, Leaf::Map);
                    id
                }
                None if matches!(prop, Prop::Map(_)) => {
                    let made = match shared {
                        true => self.genesis(&here.join("/"), Leaf::Map, &obj, &prop)?,
                        false => None,
                    };
                    match made {
                        Some(id) => id,
                        None => {
                            shared = false;
                            self.doc.put_object(&obj, prop, ObjType::Map).map_err(err)?
                        }
                    }
                }
                None => return Err(format!("index `{seg}` is past the end of the list")),
            };
        }
        let prop = prop_for(&self.doc, &obj, last)?;
        shared &= matches!(prop, Prop::Map(_));
        Ok((obj, prop, shared))
    }

    /// Create what `path` needs at its end through its genesis changes. Returns the
    /// object (none for a counter) if the genesis value is now at `prop` of `obj`;
    /// `None` if it is not (it was created before and deleted since: the genesis
    /// change is already in the history and applying it again changes nothing).
    fn genesis(
        &mut self,
        path: &str,
        leaf: Leaf,
        obj: &ObjId,
        prop: &Prop,
    ) -> Result<Option<ObjId>, String> {
        let segs = segments(path)?;
        let changes = genesis_changes(&segs, leaf).map_err(err)?;
        self.doc.apply_changes(changes).map_err(err)?;
        let values = self.doc.get_all(obj, prop.clone()).map_err(err)?;
        let mine = values
            .into_iter()
            .find(|(_, id)| is_genesis(id, &segs, leaf));
        Ok(match (mine, leaf) {
            (Some((Value::Object(_), id)), Leaf::Map | Leaf::List) => Some(id),
            (Some(_), Leaf::Counter) => Some(ROOT),
            _ => None,
        })
    }

    /// The same content without its history: what a room that has no other replica
    /// keeps once history outweighs content (a chat list that keeps 100 messages holds
    /// every message ever sent in its history). Containers and counters that a path's
    /// genesis changes made are made by those changes again, so a replica's later
    /// genesis changes still merge into them; everything else is copied as is, in one
    /// change. Counters stay counters.
    pub fn compacted(&self) -> Result<RoomDoc, String> {
        let mut fresh = RoomDoc::new();
        fresh.copy_object(&self.doc, &ROOT, &ROOT, &mut Vec::new(), true)?;
        fresh.doc.commit_with(CommitOptions::default().with_time(0));
        debug_assert_eq!(
            fresh.to_json(),
            self.to_json(),
            "compaction changed the content"
        );
        Ok(fresh)
    }

    /// Copy the children of `from` in `src` into `to` here. `path` is where `from` is;
    /// `shared`: whether every step of it is a genesis map.
    fn copy_object(
        &mut self,
        src: &AutoCommit,
        from: &ObjId,
        to: &ObjId,
        path: &mut Vec<String>,
        shared: bool,
    ) -> Result<(), String> {
        let props: Vec<Prop> = match src.object_type(from).map_err(err)? {
            ObjType::Map | ObjType::Table => src.keys(from).map(Prop::Map).collect(),
            ObjType::List | ObjType::Text => (0..src.length(from)).map(Prop::Seq).collect(),
        };
        for prop in props {
            let Some((value, id)) = src.get(from, prop.clone()).map_err(err)? else {
                continue;
            };
            path.push(match &prop {
                Prop::Map(k) => k.clone(),
                Prop::Seq(i) => i.to_string(),
            });
            // Only a map's children can be genesis objects (list items never are).
            let shared = shared && matches!(prop, Prop::Map(_));
            self.copy_value(src, value, &id, to, prop, path, shared)?;
            path.pop();
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_value(
        &mut self,
        src: &AutoCommit,
        value: Value<'_>,
        id: &ObjId,
        to: &ObjId,
        prop: Prop,
        path: &mut Vec<String>,
        shared: bool,
    ) -> Result<(), String> {
        let segs: Vec<String> = path.clone();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        match value {
            Value::Object(kind @ (ObjType::Map | ObjType::Table | ObjType::List)) => {
                let leaf = if kind == ObjType::List {
                    Leaf::List
                } else {
                    Leaf::Map
                };
                let genesis = shared && is_genesis(id, &segs, leaf);
                let made = match genesis {
                    true => self.genesis(&segs.join("/"), leaf, to, &prop)?,
                    false => None,
                };
                let child = match (made, &prop) {
                    (Some(child), _) => child,
                    (None, Prop::Seq(i)) => self.doc.insert_object(to, *i, kind).map_err(err)?,
                    (None, Prop::Map(k)) => {
                        self.doc.put_object(to, k.as_str(), kind).map_err(err)?
                    }
                };
                self.copy_object(src, id, &child, path, genesis && leaf == Leaf::Map)
            }
            Value::Object(ObjType::Text) => {
                let text = ScalarValue::Str(src.text(id).map_err(err)?.into());
                self.put_scalar(to, prop, text)
            }
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Counter(c) if shared && is_genesis(id, &segs, Leaf::Counter) => {
                    self.genesis(&segs.join("/"), Leaf::Counter, to, &prop)?;
                    let n = i64::from(c);
                    if n != 0 {
                        self.doc.increment(to, prop, n).map_err(err)?;
                    }
                    Ok(())
                }
                other => self.put_scalar(to, prop, other.clone()),
            },
        }
    }

    fn put_scalar(&mut self, to: &ObjId, prop: Prop, value: ScalarValue) -> Result<(), String> {
        match prop {
            Prop::Seq(i) => self.doc.insert(to, i, value),
            Prop::Map(k) => self.doc.put(to, k.as_str(), value),
        }
        .map_err(err)
    }

    /// This document's changes that are not among `heads` or their ancestors, encoded:
    /// what a replica sends its peers after it changed the document.
    pub fn changes_since(&mut self, heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        let hashed = self.hashed_changes_since(heads);
        hashed.into_iter().map(|(_, c)| c).collect()
    }

    /// As [`RoomDoc::changes_since`], with each change's hash.
    pub fn hashed_changes_since(&mut self, heads: &[ChangeHash]) -> Vec<(ChangeHash, Vec<u8>)> {
        self.doc
            .get_changes(heads)
            .into_iter()
            .map(|c| (c.hash(), c.raw_bytes().to_vec()))
            .collect()
    }

    /// The changes among `hashes` this document holds, in the order given.
    pub fn changes_by_hash(&mut self, hashes: &[ChangeHash]) -> Vec<(ChangeHash, Vec<u8>)> {
        hashes
            .iter()
            .filter_map(|h| self.doc.get_change_by_hash(h))
            .map(|c| (c.hash(), c.raw_bytes().to_vec()))
            .collect()
    }

    /// Take in changes a peer sent. One whose dependencies this document lacks waits
    /// inside it until they come (the sync protocol brings them). Whether the document
    /// changed, and which of the given changes it holds now.
    pub fn apply_changes(
        &mut self,
        changes: &[Vec<u8>],
    ) -> Result<(bool, Vec<ChangeHash>), String> {
        let (changed, mut held) = self.apply_groups(&[changes]);
        held.pop()
            .unwrap_or(Ok(Vec::new()))
            .map(|held| (changed, held))
    }

    /// Take in changes that came in groups (peers' messages), in one Automerge call:
    /// its cost is mostly a walk of the history per call, not per change (16
    /// changes at once took a quarter of 16 calls). Whether the document changed, and
    /// per group which of its changes the document holds now, or why the group was
    /// refused: one that does not parse is refused alone, and if Automerge refuses
    /// the whole, each group is tried alone.
    pub fn apply_groups(
        &mut self,
        groups: &[&[Vec<u8>]],
    ) -> (bool, Vec<Result<Vec<ChangeHash>, String>>) {
        let parse = |group: &[Vec<u8>]| {
            group
                .iter()
                .map(|b| Change::from_bytes(b.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)
        };
        let before = self.doc.get_heads();
        let mut hashes = Vec::with_capacity(groups.len());
        let mut all = Vec::new();
        for group in groups {
            hashes.push(parse(group).map(|changes| {
                let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
                all.extend(changes);
                hashes
            }));
        }
        self.history = self.history.saturating_add(all.len());
        if let Err(e) = self.doc.apply_changes(all) {
            for (group, hashes) in groups.iter().zip(hashes.iter_mut()) {
                let alone = match groups.len() {
                    1 => Err(err(&e)),
                    _ => parse(group).and_then(|c| self.doc.apply_changes(c).map_err(err)),
                };
                if let (Err(e), Ok(_)) = (alone, &hashes) {
                    *hashes = Err(e);
                }
            }
        }
        let held = hashes
            .into_iter()
            .map(|h| h.map(|h| h.into_iter().filter(|h| self.knows(h)).collect()))
            .collect();
        (self.doc.get_heads() != before, held)
    }

    /// Whether changes taken in wait inside for changes this document lacks.
    pub fn waiting(&mut self) -> bool {
        !self.doc.get_missing_deps(&[]).is_empty()
    }

    /// Whether this document holds the change `hash`.
    pub fn knows(&mut self, hash: &ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(hash).is_some()
    }

    /// The next Automerge sync message for a peer whose sync state is `state`, if
    /// there is anything to say. `news`: the peer's last message brought changes
    /// (or this starts a conversation), and it learns from this one that they arrived.
    ///
    /// Otherwise a conversation ends once this side has everything the peer announced
    /// and nothing to send it. Automerge's protocol goes on until both hold the same
    /// heads, which in a busy room (replicas change it every few milliseconds) is
    /// never: a conversation a hello started then lasted as long as the traffic, every
    /// step of it reading the whole history, on both sides. What either side changes
    /// later reaches the other as changes of their own (see the host's replica).
    pub fn sync_message(&mut self, state: &mut sync::State, news: bool) -> Option<Vec<u8>> {
        let message = self.doc.sync().generate_sync_message(state)?;
        let caught_up = state
            .their_heads
            .as_ref()
            .is_some_and(|theirs| theirs.iter().all(|h| self.knows(h)));
        if !news && caught_up && message.need.is_empty() && message.changes.is_empty() {
            return None;
        }
        Some(message.encode())
    }

    /// Take in a peer's sync message. True if the document changed.
    pub fn receive_sync(&mut self, state: &mut sync::State, bytes: &[u8]) -> Result<bool, String> {
        let message = sync::Message::decode(bytes).map_err(err)?;
        let before = self.doc.get_heads();
        self.doc
            .sync()
            .receive_sync_message(state, message)
            .map_err(err)?;
        let changed = self.doc.get_heads() != before;
        self.history = self.history.saturating_add(usize::from(changed));
        Ok(changed)
    }
}

/// What a genesis change creates at the end of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Map,
    List,
    Counter,
}

/// The actor of the genesis change that creates `leaf` at `path`.
fn genesis_actor(path: &[&str], leaf: Leaf) -> ActorId {
    let mut h = Sha256::new();
    h.update(b"edgeroom-genesis\0");
    h.update([leaf as u8]);
    for seg in path {
        h.update(b"\0");
        h.update(seg.as_bytes());
    }
    ActorId::from(&h.finalize()[..16])
}

fn is_genesis(id: &ObjId, path: &[&str], leaf: Leaf) -> bool {
    matches!(id, ObjId::Id(_, actor, _) if *actor == genesis_actor(path, leaf))
}

/// The changes that create every map on `path` and `leaf` at its end, identical on
/// every replica.
fn genesis_changes(path: &[&str], leaf: Leaf) -> Result<Vec<Change>, automerge::AutomergeError> {
    let mut g = AutoCommit::new();
    let mut obj = ROOT;
    let mut out = Vec::with_capacity(path.len());
    for (i, seg) in path.iter().enumerate() {
        let kind = if i + 1 == path.len() { leaf } else { Leaf::Map };
        g.set_actor(genesis_actor(&path[..=i], kind));
        match kind {
            Leaf::Map => obj = g.put_object(&obj, *seg, ObjType::Map)?,
            Leaf::List => obj = g.put_object(&obj, *seg, ObjType::List)?,
            Leaf::Counter => g.put(&obj, *seg, ScalarValue::counter(0))?,
        }
        g.commit_with(CommitOptions::default().with_time(0));
        out.extend(g.get_last_local_change());
    }
    Ok(out)
}

fn check_depth(v: &Json, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("value nested deeper than {MAX_DEPTH}"));
    }
    match v {
        Json::Array(a) => a.iter().try_for_each(|x| check_depth(x, depth + 1)),
        Json::Object(o) => o.values().try_for_each(|x| check_depth(x, depth + 1)),
        _ => Ok(()),
    }
}

fn prop_for(doc: &AutoCommit, obj: &ObjId, seg: &str) -> Result<Prop, String> {
    match doc.object_type(obj).map_err(err)? {
        ObjType::List | ObjType::Text => seg
            .parse::<usize>()
            .map(Prop::Seq)
            .map_err(|_| format!("`{seg}` is not a list index")),
        ObjType::Map | ObjType::Table => Ok(Prop::Map(seg.to_owned())),
    }
}

/// A JSON Pointer (RFC 6901) to the object at the end of a patch's path.
fn pointer(path: &[(ObjId, Prop)]) -> String {
    path.iter()
        .map(|(_, prop)| match prop {
            Prop::Map(k) => format!("/{}", escape(k)),
            Prop::Seq(i) => format!("/{i}"),
        })
        .collect()
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn op(kind: &str, path: &str, value: Option<Json>) -> Json {
    let mut o = serde_json::Map::new();
    o.insert("op".into(), kind.into());
    o.insert("path".into(), path.into());
    if let Some(v) = value {
        o.insert("value".into(), v);
    }
    Json::Object(o)
}

fn scalar_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::from(b.clone()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Json::Null,
    }
}

fn value_json(doc: &AutoCommit, v: Value<'_>, id: &ObjId) -> Json {
    match v {
        Value::Scalar(s) => scalar_json(&s),
        Value::Object(ObjType::Text) => Json::String(doc.text(id).unwrap_or_default()),
        Value::Object(ObjType::List) => Json::Array(
            (0..doc.length(id))
                .filter_map(|i| doc.get(id, i).ok().flatten())
                .map(|(v, cid)| value_json(doc, v, &cid))
                .collect(),
        ),
        Value::Object(ObjType::Map | ObjType::Table) => Json::Object(
            doc.keys(id)
                .filter_map(|k| {
                    doc.get(id, &k)
                        .ok()
                        .flatten()
                        .map(|(v, cid)| (k, value_json(doc, v, &cid)))
                })
                .collect(),
        ),
    }
}

fn json_scalar(j: &Json) -> ScalarValue {
    match j {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => n
            .as_i64()
            .map(ScalarValue::Int)
            .or_else(|| n.as_u64().map(ScalarValue::Uint))
            .unwrap_or_else(|| ScalarValue::F64(n.as_f64().unwrap_or(0.0))),
        Json::String(s) => ScalarValue::from(s.as_str()),
        _ => ScalarValue::Null,
    }
}

/// Write JSON at `prop` of `obj`: objects and arrays become Automerge maps and lists.
/// `insert` inserts into a list instead of overwriting.
fn put_json(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prop: Prop,
    j: &Json,
    insert: bool,
) -> Result<(), automerge::AutomergeError> {
    let make = |doc: &mut AutoCommit, t: ObjType| match (&prop, insert) {
        (Prop::Seq(i), true) => doc.insert_object(obj, *i, t),
        _ => doc.put_object(obj, prop.clone(), t),
    };
    match j {
        Json::Object(m) => {
            let id = make(doc, ObjType::Map)?;
            for (k, v) in m {
                put_json(doc, &id, Prop::Map(k.clone()), v, false)?;
            }
        }
        Json::Array(a) => {
            let id = make(doc, ObjType::List)?;
            for (i, v) in a.iter().enumerate() {
                put_json(doc, &id, Prop::Seq(i), v, true)?;
            }
        }
        s => match (&prop, insert) {
            (Prop::Seq(i), true) => doc.insert(obj, *i, json_scalar(s))?,
            _ => doc.put(obj, prop.clone(), json_scalar(s))?,
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_read_and_write_json() {
        let mut d = RoomDoc::new();
        d.put("players/alice", &json!({"score": 3, "tags": ["a", "b"]}))
            .unwrap();
        assert_eq!(d.get("players/alice/score").unwrap(), Some(json!(3)));
        assert_eq!(d.get("/players/alice/tags/1").unwrap(), Some(json!("b")));
        assert_eq!(d.get("nobody/here").unwrap(), None);
        assert_eq!(d.push("messages", &json!({"text": "hi"})).unwrap(), 1);
        assert_eq!(d.push("messages", &json!("two")).unwrap(), 2);
        d.delete("messages/0").unwrap();
        assert_eq!(d.get("messages").unwrap(), Some(json!(["two"])));
        assert!(d.put("messages/5", &json!(1)).is_err());
        assert!(d.push("players/alice/score", &json!(1)).is_err());
        assert_eq!(
            d.to_json(),
            json!({"players": {"alice": {"score": 3, "tags": ["a", "b"]}}, "messages": ["two"]})
        );
    }

    /// Applying the patch to the JSON before gives the JSON after, whatever the
    /// changes: random puts, pushes, deletes, increments, nested objects, and a
    /// concurrent replica's changes merged in.
    #[test]
    fn patches_turn_the_view_before_into_the_view_after() {
        use rand::{Rng, SeedableRng};
        for seed in 0..40 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut d = RoomDoc::new();
            let mut other = RoomDoc {
                doc: d.doc.fork(),
                ..RoomDoc::default()
            };
            let mut shown = d.to_json();
            let mut heads = d.heads();
            for step in 0..60 {
                for _ in 0..rng.random_range(1..4) {
                    let target = if rng.random_bool(0.2) {
                        &mut other
                    } else {
                        &mut d
                    };
                    let key = ["a", "b/c", "~t", "list"][rng.random_range(0..4)];
                    let _ = match rng.random_range(0..6) {
                        0 => target.put(key, &json!({"n": step, "inner": [1, {"x": step}]})),
                        1 => target.push("list", &json!(step)).map(|_| ()),
                        2 => target.delete("list/0"),
                        3 => target
                            .increment("count", rng.random_range(-3..4))
                            .map(|_| ()),
                        4 => target.put(&format!("m/{}", step % 5), &json!(step)),
                        _ => target.delete(&format!("m/{}", step % 5)),
                    };
                }
                if rng.random_bool(0.3) {
                    let theirs = other.doc.save();
                    d.doc.load_incremental(&theirs).unwrap();
                }
                let ops = d.patch_since(&heads);
                let patch: json_patch::Patch =
                    serde_json::from_value(Json::Array(ops.clone())).unwrap();
                json_patch::patch(&mut shown, &patch)
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}: {ops:?}"));
                assert_eq!(shown, d.to_json(), "seed {seed} step {step}: {ops:?}");
                heads = d.heads();
            }
        }
    }

    #[test]
    fn a_sliding_window_list_costs_two_operations_per_message() {
        let mut d = RoomDoc::new();
        for i in 0..100 {
            d.push("messages", &json!({"text": format!("message {i}")}))
                .unwrap();
        }
        let heads = d.heads();
        d.push("messages", &json!({"text": "new"})).unwrap();
        d.delete("messages/0").unwrap();
        let ops = d.patch_since(&heads);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(Json::Array(ops).to_string().len() < 120);
    }

    #[test]
    fn changes_in_groups_are_taken_in_together_and_a_bad_group_is_refused_alone() {
        let mut a = RoomDoc::new();
        let mut groups = Vec::new();
        for i in 0..3 {
            let heads = a.heads();
            a.push("messages", &json!(i)).unwrap();
            groups.push(a.changes_since(&heads));
        }
        let bad = vec![b"not a change".to_vec()];
        let mut b = RoomDoc::new();
        let given: Vec<&[Vec<u8>]> = vec![&groups[0], &bad, &groups[1], &groups[2]];
        let (changed, held) = b.apply_groups(&given);
        assert!(changed);
        assert_eq!(b.to_json(), a.to_json());
        assert!(held[1].is_err(), "{held:?}");
        for (i, g) in [0, 2, 3].into_iter().zip(&groups) {
            assert_eq!(held[i].as_ref().unwrap().len(), g.len(), "group {i}");
        }
        // A group whose dependencies have not come is taken in but not held.
        let mut c = RoomDoc::new();
        let (_, held) = c.apply_groups(&[&groups[2], &groups[0]]);
        assert!(held[0].as_ref().unwrap().is_empty(), "{held:?}");
        assert_eq!(held[1].as_ref().unwrap().len(), groups[0].len());
        assert_eq!(b.history(), groups.iter().map(Vec::len).sum::<usize>());
    }

    #[test]
    fn history_counts_what_was_written_and_taken_in_since_the_last_compaction() {
        let mut a = RoomDoc::new();
        let mut b = RoomDoc::new();
        for i in 0..150 {
            let heads = a.heads();
            a.push("messages", &json!(i)).unwrap();
            if i >= 100 {
                a.delete("messages/0").unwrap();
            }
            b.apply_changes(&a.changes_since(&heads)).unwrap();
        }
        b.increment("count", 1).unwrap();
        assert_eq!(a.history(), 200);
        assert!(b.history() >= 150, "{}", b.history());
        let compacted = a.compacted().unwrap();
        assert_eq!(compacted.history(), 0);
        assert_eq!(RoomDoc::load(&a.save()).unwrap().history(), 0);
    }

    #[test]
    fn counters_sum_across_replicas() {
        let mut a = RoomDoc::new();
        a.increment("count", 0).unwrap();
        let mut b = RoomDoc {
            doc: a.doc.fork(),
            ..RoomDoc::default()
        };
        a.increment("count", 2).unwrap();
        b.increment("count", 5).unwrap();
        a.doc.merge(&mut b.doc).unwrap();
        assert_eq!(a.get("count").unwrap(), Some(json!(7)));
        assert!(a.increment("", 1).is_err());
        a.put("s", &json!("x")).unwrap();
        assert!(a.increment("s", 1).is_err());
    }

    #[test]
    fn changes_sent_as_they_are_apply_once_their_dependencies_are_there() {
        let mut a = RoomDoc::new();
        a.increment("count", 1).unwrap();
        let mut b = RoomDoc {
            doc: a.doc.fork(),
            ..RoomDoc::default()
        };
        let start = a.heads();
        a.increment("count", 2).unwrap();
        let first = a.changes_since(&start);
        let middle = a.heads();
        a.increment("count", 4).unwrap();
        let second = a.changes_since(&middle);
        assert_eq!(
            (first.len(), second.len()),
            (1, 1),
            "a call's own changes only"
        );

        // The second arrives first: it waits, and is not held.
        let (changed, held) = b.apply_changes(&second).unwrap();
        assert!(!changed && held.is_empty());
        assert_eq!(b.get("count").unwrap(), Some(json!(1)));
        let (changed, held) = b.apply_changes(&first).unwrap();
        assert!(changed);
        assert_eq!(held.len(), 1);
        assert_eq!(
            b.get("count").unwrap(),
            Some(json!(7)),
            "the waiting one applied too"
        );
        assert_eq!(b.heads(), a.heads());
        // Again: nothing changes, and it is held.
        let (changed, held) = b.apply_changes(&second).unwrap();
        assert!(!changed && held.len() == 1);
        assert!(b.apply_changes(&[vec![1, 2, 3]]).is_err());
    }

    #[test]
    fn a_replica_says_which_of_anothers_heads_it_lacks() {
        let mut a = RoomDoc::new();
        a.increment("count", 1).unwrap();
        let mut b = RoomDoc {
            doc: a.doc.fork(),
            ..RoomDoc::default()
        };
        b.increment("count", 1).unwrap();
        let theirs: Vec<String> = b.heads().iter().map(|h| h.to_string()).collect();
        let mine: Vec<String> = a.heads().iter().map(|h| h.to_string()).collect();
        assert_eq!(
            a.missing(&theirs),
            theirs.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(
            b.missing(&mine).is_empty(),
            "b forked from a: it has a's heads"
        );
        a.doc.merge(&mut b.doc).unwrap();
        assert!(a.missing(&theirs).is_empty());
        // a now holds b's change: b's heads cover a's old ones, not a's new ones.
        let old: Vec<ChangeHash> = mine.iter().map(|h| h.parse().unwrap()).collect();
        let theirs_h: Vec<ChangeHash> = theirs.iter().map(|h| h.parse().unwrap()).collect();
        let now = a.heads();
        assert!(a.covered(&old, &theirs_h), "b forked from a");
        assert!(a.covered(&theirs_h, &theirs_h));
        assert!(
            !a.covered(&now, &old),
            "a's merged heads are beyond its old ones"
        );
        assert_eq!(a.missing(&["nonsense".to_string()]), ["nonsense"]);
    }

    /// `covered` walks back only through recent changes; it must agree with the whole
    /// history's answer (every change beyond a replica's heads, read out of Automerge)
    /// on documents that fork, write concurrently, merge and sometimes write nothing.
    #[test]
    fn covered_agrees_with_the_whole_history_on_forks_and_merges() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        let mut docs: Vec<RoomDoc> = vec![RoomDoc::new()];
        docs[0].increment("count", 1).unwrap();
        for _ in 0..2 {
            let fork = RoomDoc {
                doc: docs[0].doc.fork(),
                ..RoomDoc::default()
            };
            docs.push(fork);
        }
        let mut seen_heads: Vec<Vec<ChangeHash>> = Vec::new();
        for step in 0..300 {
            let i = rng.random_range(0..docs.len());
            match rng.random_range(0..10) {
                0..=5 => {
                    docs[i].increment("count", 1).unwrap();
                }
                6 => {
                    docs[i]
                        .put(&format!("k{}", step % 7), &Json::from(step))
                        .unwrap();
                }
                7 => {
                    docs[i].doc.empty_change(CommitOptions::default());
                }
                _ => {
                    let j = (i + 1 + rng.random_range(0..docs.len() - 1)) % docs.len();
                    let mut other = docs[j].doc.fork();
                    docs[i].doc.merge(&mut other).unwrap();
                }
            }
            seen_heads.push(docs[i].heads());
        }
        let mut all = docs[0].doc.fork();
        for d in &mut docs[1..] {
            all.merge(&mut d.doc).unwrap();
        }
        let mut whole = RoomDoc {
            doc: all,
            ..RoomDoc::default()
        };
        let (mut yes, mut no) = (0, 0);
        for _ in 0..400 {
            let mine = &seen_heads[rng.random_range(0..seen_heads.len())];
            let theirs = &seen_heads[rng.random_range(0..seen_heads.len())];
            let beyond: std::collections::HashSet<ChangeHash> = whole
                .doc
                .get_changes_meta(theirs)
                .iter()
                .map(|c| c.hash)
                .collect();
            let truth = mine.iter().all(|h| !beyond.contains(h));
            assert_eq!(
                whole.covered(mine, theirs),
                truth,
                "{mine:?} under {theirs:?}"
            );
            if truth { yes += 1 } else { no += 1 }
        }
        assert!(
            yes > 50 && no > 50,
            "both answers exercised: {yes} yes, {no} no"
        );
    }

    /// Three replicas whose first increments are concurrent, synced with the Automerge
    /// sync protocol in every direction: every increment counts, everywhere.
    #[test]
    fn concurrent_first_increments_sum_after_sync() {
        let mut docs = [RoomDoc::new(), RoomDoc::new(), RoomDoc::new()];
        for (i, d) in docs.iter_mut().enumerate() {
            d.increment("count", i as i64 + 1).unwrap();
            d.increment("game/score", 10).unwrap();
            d.push("game/log", &json!(i)).unwrap();
        }
        let mut states: Vec<Vec<sync::State>> = (0..3)
            .map(|_| (0..3).map(|_| sync::State::new()).collect())
            .collect();
        for _round in 0..6 {
            for a in 0..3 {
                for b in 0..3 {
                    if a == b {
                        continue;
                    }
                    if let Some(msg) = docs[a].sync_message(&mut states[a][b], true) {
                        docs[b].receive_sync(&mut states[b][a], &msg).unwrap();
                    }
                }
            }
        }
        for d in &docs {
            assert_eq!(d.get("count").unwrap(), Some(json!(6)));
            assert_eq!(d.get("game/score").unwrap(), Some(json!(30)));
            let log = d.get("game/log").unwrap().unwrap();
            assert_eq!(log.as_array().unwrap().len(), 3, "{log}");
        }
        assert!(
            docs[0]
                .receive_sync(&mut sync::State::new(), b"junk")
                .is_err()
        );
    }

    /// A chat that keeps its last 100 messages: history grows with every message ever
    /// sent, content does not. Compacted, the document keeps the content, its counters
    /// stay counters, and first writes another replica makes later (genesis changes)
    /// still land in the same containers.
    #[test]
    fn compaction_drops_history_and_keeps_content_and_shared_containers() {
        let mut d = RoomDoc::new();
        d.put("owner", &json!({"name": "ann", "since": 1.5}))
            .unwrap();
        d.increment("stats/sent", 0).unwrap();
        d.push("odd", &json!([1, {"a/b": null}])).unwrap();
        for i in 0..1_000 {
            d.push(
                "messages",
                &json!({"text": format!("message {i} with some words")}),
            )
            .unwrap();
            if i >= 100 {
                d.delete("messages/0").unwrap();
            }
            d.increment("stats/sent", 1).unwrap();
        }
        d.put("local", &json!({"n": 1})).unwrap();
        let before = d.save().len();
        let mut c = d.compacted().unwrap();
        assert_eq!(c.to_json(), d.to_json());
        let after = c.save().len();
        assert!(after * 5 < before, "{before} bytes before, {after} after");

        // Still counters, still the shared ones: another replica's first increment of
        // `stats/sent` and first push to `messages` merge into them.
        c.increment("stats/sent", 1).unwrap();
        let mut other = RoomDoc::new();
        other.increment("stats/sent", 5).unwrap();
        other.push("messages", &json!("from elsewhere")).unwrap();
        c.apply_changes(&other.changes_since(&[])).unwrap();
        assert_eq!(c.get("stats/sent").unwrap(), Some(json!(1_006)));
        let messages = c.get("messages").unwrap().unwrap();
        assert_eq!(messages.as_array().unwrap().len(), 101, "{messages}");
        // And it loads as any saved document does.
        let loaded = RoomDoc::load(&c.save()).unwrap();
        assert_eq!(loaded.to_json(), c.to_json());
    }

    #[test]
    fn survives_save_and_load() {
        let mut d = RoomDoc::new();
        d.put("k", &json!([1, {"x": null}])).unwrap();
        let h = d.heads();
        let bytes = d.save();
        let mut e = RoomDoc::load(&bytes).unwrap();
        assert_eq!(e.to_json(), json!({"k": [1, {"x": null}]}));
        assert_eq!(e.heads(), h);
        assert!(RoomDoc::load(b"garbage").is_err());
    }
}
