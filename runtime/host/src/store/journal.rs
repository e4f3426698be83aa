//! A standalone room's journal: what a room has besides its document that must
//! outlive the node — its events (for resume), its idempotency answers (so a retry
//! after a restart gets the same answer), its members (so their sessions resume), and
//! its pending timer. Written in the same synced transaction as the document's
//! changes, before the answer that acknowledges them; trimmed as the room forgets.
//!
//! Encoding is the caller's: values here are bytes under ordered keys
//! (`<room key>\0<item>`), so a room's items are one key range.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Store, change_range, room_key};
use edgeroom_proto::ids::{AppName, RoomId};

/// Events by room and sequence number (`<room>\0<run:020>.<n:020>`).
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_events");
/// Idempotency answers by room and id.
const IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_ids");
/// Members by room and connection.
const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_members");
/// A room's pending timer: when it fires, wall-clock ms.
const TIMERS: TableDefinition<&str, u64> = TableDefinition::new("room_timers");

/// What one room writes at once.
#[derive(Debug, Default)]
pub struct Batch {
    /// The document's changes since the last write (an Automerge incremental save).
    pub changes: Vec<u8>,
    /// New events: (item key from [`event_key`], bytes).
    pub events: Vec<(String, Vec<u8>)>,
    /// Idempotency answers: (id, bytes).
    pub ids: Vec<(String, Vec<u8>)>,
    /// Members who joined, and members who left.
    pub joined: Vec<(String, Vec<u8>)>,
    pub left: Vec<String>,
    /// The timer, if it changed: `Some(None)` when it was cleared.
    pub timer: Option<Option<u64>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.events.is_empty()
            && self.ids.is_empty()
            && self.joined.is_empty()
            && self.left.is_empty()
            && self.timer.is_none()
    }

    /// About what writing it costs, in bytes.
    pub fn bytes(&self) -> usize {
        let items =
            |v: &[(String, Vec<u8>)]| v.iter().map(|(k, b)| k.len() + b.len()).sum::<usize>();
        self.changes.len()
            + items(&self.events)
            + items(&self.ids)
            + items(&self.joined)
            + self.left.iter().map(String::len).sum::<usize>()
    }
}

/// What a room finds in its journal when it loads.
#[derive(Debug, Default)]
pub struct Journal {
    /// Events in sequence order.
    pub events: Vec<Vec<u8>>,
    pub ids: Vec<(String, Vec<u8>)>,
    pub members: Vec<(String, Vec<u8>)>,
    pub timer: Option<u64>,
}

/// A member in some room's journal: the room, its connection, its record's bytes.
pub type JournaledMember = (AppName, RoomId, String, Vec<u8>);

/// The item key of an event numbered `run.n`: in sequence order.
pub fn event_key(run: u64, n: u64) -> String {
    format!("{run:020}.{n:020}")
}

/// The room a key made by `room_key` names (an app name has no `/`).
fn parse_room_key(key: &str) -> Option<(AppName, RoomId)> {
    let (app, room) = key.split_once('/')?;
    Some((AppName::new(app).ok()?, RoomId::new(room).ok()?))
}

fn item(room: &str, item: &str) -> String {
    format!("{room}\0{item}")
}

impl Store {
    pub(super) fn open_journal(txn: &redb::WriteTransaction) -> anyhow::Result<()> {
        txn.open_table(EVENTS)?;
        txn.open_table(IDS)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(TIMERS)?;
        Ok(())
    }

    /// Write a room's batch in one transaction, synced before this returns.
    pub fn write_room(&self, app: &AppName, room: &RoomId, batch: &Batch) -> anyhow::Result<()> {
        self.write_rooms(&[(app, room, batch)])
    }

    /// Write several rooms' batches in one transaction, synced once before this
    /// returns: all of them or, on an error, none.
    pub fn write_rooms(&self, batches: &[(&AppName, &RoomId, &Batch)]) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        for (app, room, batch) in batches {
            Self::write_room_in(&txn, &room_key(app, room), batch)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn write_room_in(txn: &redb::WriteTransaction, key: &str, batch: &Batch) -> anyhow::Result<()> {
        if !batch.changes.is_empty() {
            Self::append_changes_in(txn, key, &batch.changes)?;
        }
        let mut events = txn.open_table(EVENTS)?;
        for (k, v) in &batch.events {
            events.insert(item(key, k).as_str(), v.as_slice())?;
        }
        let mut ids = txn.open_table(IDS)?;
        for (k, v) in &batch.ids {
            ids.insert(item(key, k).as_str(), v.as_slice())?;
        }
        let mut members = txn.open_table(MEMBERS)?;
        for (k, v) in &batch.joined {
            members.insert(item(key, k).as_str(), v.as_slice())?;
        }
        for k in &batch.left {
            members.remove(item(key, k).as_str())?;
        }
        let mut timers = txn.open_table(TIMERS)?;
        match batch.timer {
            Some(Some(at)) => {
                timers.insert(key, at)?;
            }
            Some(None) => {
                timers.remove(key)?;
            }
            None => {}
        }
        Ok(())
    }

    /// Forget a room's events up to `last_event` (an [`event_key`], inclusive) and
    /// the ids `keep` does not keep.
    pub fn trim_room(
        &self,
        app: &AppName,
        room: &RoomId,
        last_event: Option<&str>,
        keep: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let key = room_key(app, room);
        let (from, to) = change_range(&key);
        let txn = self.db.begin_write()?;
        {
            if let Some(last) = last_event {
                let upto = item(&key, last);
                txn.open_table(EVENTS)?
                    .retain_in(from.as_str()..=upto.as_str(), |_, _| false)?;
            }
            let skip = key.len() + 1;
            txn.open_table(IDS)?
                .retain_in(from.as_str()..to.as_str(), |k, _| keep(&k[skip..]))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// A room's journal as it was last written.
    pub fn room_journal(&self, app: &AppName, room: &RoomId) -> anyhow::Result<Journal> {
        let key = room_key(app, room);
        let (from, to) = change_range(&key);
        let skip = key.len() + 1;
        let txn = self.db.begin_read()?;
        let mut journal = Journal::default();
        for row in txn.open_table(EVENTS)?.range(from.as_str()..to.as_str())? {
            journal.events.push(row?.1.value().to_vec());
        }
        for row in txn.open_table(IDS)?.range(from.as_str()..to.as_str())? {
            let (k, v) = row?;
            journal
                .ids
                .push((k.value()[skip..].to_owned(), v.value().to_vec()));
        }
        for row in txn.open_table(MEMBERS)?.range(from.as_str()..to.as_str())? {
            let (k, v) = row?;
            journal
                .members
                .push((k.value()[skip..].to_owned(), v.value().to_vec()));
        }
        journal.timer = txn
            .open_table(TIMERS)?
            .get(key.as_str())?
            .map(|v| v.value());
        Ok(journal)
    }

    /// Every room that has members in its journal, with them: whose sessions a
    /// restarted node must know, and which rooms it must load to expire the ones that
    /// do not come back.
    pub fn journaled_members(&self) -> anyhow::Result<Vec<JournaledMember>> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(MEMBERS)?.iter()? {
            let (k, v) = row?;
            let Some((key, conn)) = k.value().split_once('\0') else {
                continue;
            };
            if let Some((app, room)) = parse_room_key(key) {
                out.push((app, room, conn.to_owned(), v.value().to_vec()));
            }
        }
        Ok(out)
    }
}

impl Store {
    /// Every room with a timer pending in its journal: a restarted node loads them,
    /// so the timers fire when they were due.
    pub fn journaled_timers(&self) -> anyhow::Result<Vec<(AppName, RoomId)>> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(TIMERS)?.iter()? {
            let (k, _) = row?;
            out.extend(parse_room_key(k.value()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_journal_is_written_together_trimmed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let app = AppName::new("chat").unwrap();
        let (a, b) = (RoomId::new("a").unwrap(), RoomId::new("a/b").unwrap());
        let batch = |n: u64| Batch {
            events: vec![(event_key(3, n), vec![n as u8])],
            ids: vec![(format!("c/{n}"), vec![n as u8])],
            joined: vec![(format!("conn{n}"), vec![1])],
            timer: Some(Some(1000 + n)),
            ..Batch::default()
        };
        for n in 1..=3 {
            store.write_room(&app, &a, &batch(n)).unwrap();
        }
        store.write_room(&app, &b, &batch(9)).unwrap();
        let left = Batch {
            left: vec!["conn2".into()],
            timer: Some(None),
            ..Batch::default()
        };
        store.write_room(&app, &b, &left).unwrap();
        store
            .trim_room(&app, &a, Some(&event_key(3, 1)), &|id| id != "c/2")
            .unwrap();
        let j = store.room_journal(&app, &a).unwrap();
        assert_eq!(j.events, vec![vec![2], vec![3]]);
        assert_eq!(
            j.ids,
            vec![("c/1".into(), vec![1]), ("c/3".into(), vec![3])]
        );
        assert_eq!(j.members.len(), 3);
        assert_eq!(j.timer, Some(1003));
        // Another room's items (a name that extends this one's) are its own.
        let jb = store.room_journal(&app, &b).unwrap();
        assert_eq!(jb.events, vec![vec![9]]);
        assert_eq!(jb.timer, None);
        assert_eq!(
            store.journaled_timers().unwrap(),
            vec![(app.clone(), a.clone())]
        );
        let all = store.journaled_members().unwrap();
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(all.iter().any(|(_, r, c, _)| *r == b && c == "conn9"));
    }
}
