//! Durable storage on the node's disk (redb): the handler registry, room documents
//! and (standalone) each room's journal (`journal`), admin keys and secrets.
//!
//! Blocking: callers on async tasks go through `spawn_blocking`. The cluster moves the
//! registry into the Raft state machine; room documents stay here.

mod group;
mod journal;

pub use group::GroupWriter;
pub use journal::{Batch, Journal, event_key};

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use edgeroom_cluster::control::state::AdminKey;
use edgeroom_proto::app::AppConfig;
use edgeroom_proto::ids::{AppName, RoomId};

/// Handler wasm by sha256 (hex).
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("handler_blobs");
/// App name → JSON [`AppRecord`].
const APPS: TableDefinition<&str, &str> = TableDefinition::new("apps");
/// `app/room` → saved Automerge document.
const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_docs");
/// `app/room`, then `\0` and a 20-digit sequence number → changes made after the
/// document was last saved whole (Automerge incremental saves), in order. A whole save
/// removes them.
const ROOM_CHANGES: TableDefinition<&str, &[u8]> = TableDefinition::new("room_changes");
/// Node-wide counters that must survive restarts (`runs`: see `room::runs`).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Node-wide secrets that must survive restarts (a standalone node's resume-token key).
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// A standalone node's admin keys: id → the record as JSON (salted hashes only).
const ADMIN_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("admin_keys");

/// One deployed handler version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    pub deployed_at_ms: u64,
}

/// Everything kept about an app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Oldest first; the last one is live.
    pub versions: Vec<VersionRecord>,
    #[serde(default)]
    pub config: AppConfig,
}

pub struct Store {
    db: Database,
    /// Seals app settings' shared secrets before they are written (see `sealed`).
    sealer: Option<std::sync::Arc<edgeroom_transport::Sealer>>,
}

fn room_key(app: &AppName, room: &RoomId) -> String {
    format!("{app}/{room}")
}

/// The keys of a room's appended changes: `key\0` up to (not including) `key\x01`.
/// Room names have no control characters, so no other room's keys fall between.
fn change_range(key: &str) -> (String, String) {
    (format!("{key}\0"), format!("{key}\x01"))
}

impl Store {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("edgeroom.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(BLOBS)?;
        txn.open_table(APPS)?;
        txn.open_table(ROOMS)?;
        txn.open_table(ROOM_CHANGES)?;
        txn.open_table(COUNTERS)?;
        txn.open_table(SECRETS)?;
        txn.open_table(ADMIN_KEYS)?;
        Self::open_journal(&txn)?;
        txn.commit()?;
        Ok(Self { db, sealer: None })
    }

    /// Record a new live version of `app` (and its wasm, if new).
    pub fn put_version(
        &self,
        app: &AppName,
        record: &VersionRecord,
        wasm: &[u8],
    ) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut blobs = txn.open_table(BLOBS)?;
            if blobs.get(record.sha256.as_str())?.is_none() {
                blobs.insert(record.sha256.as_str(), wasm)?;
            }
            let mut apps = txn.open_table(APPS)?;
            let mut app_record: AppRecord = match apps.get(app.as_str())? {
                Some(v) => serde_json::from_str(v.value())?,
                None => AppRecord::default(),
            };
            app_record.versions.push(record.clone());
            apps.insert(app.as_str(), serde_json::to_string(&app_record)?.as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Record `app`'s settings (creating the app).
    /// The store, sealing app secrets with `sealer` from now on.
    pub fn with_sealer(
        mut self,
        sealer: Option<std::sync::Arc<edgeroom_transport::Sealer>>,
    ) -> Self {
        self.sealer = sealer;
        self
    }

    pub fn put_config(&self, app: &AppName, config: &AppConfig) -> anyhow::Result<()> {
        let config = &crate::sealed::seal_config(app, config, self.sealer.as_deref())?;
        let txn = self.db.begin_write()?;
        {
            let mut apps = txn.open_table(APPS)?;
            let mut app_record: AppRecord = match apps.get(app.as_str())? {
                Some(v) => serde_json::from_str(v.value())?,
                None => AppRecord::default(),
            };
            app_record.config = config.clone();
            apps.insert(app.as_str(), serde_json::to_string(&app_record)?.as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn apps(&self) -> anyhow::Result<Vec<(AppName, AppRecord)>> {
        let txn = self.db.begin_read()?;
        let apps = txn.open_table(APPS)?;
        let mut out = Vec::new();
        for row in apps.iter()? {
            let (k, v) = row?;
            let app = AppName::new(k.value())?;
            let mut record: AppRecord = serde_json::from_str(v.value())?;
            record.config =
                crate::sealed::open_config(&app, &record.config, self.sealer.as_deref())
                    .map_err(|e| e.context(format!("the settings of app {app}")))?;
            out.push((app, record));
        }
        Ok(out)
    }

    pub fn blob(&self, sha256: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let blobs = txn.open_table(BLOBS)?;
        Ok(blobs.get(sha256)?.map(|v| v.value().to_vec()))
    }

    /// Save a room's whole document, replacing the changes appended before it.
    pub fn save_room(&self, app: &AppName, room: &RoomId, doc: &[u8]) -> anyhow::Result<()> {
        let key = room_key(app, room);
        let txn = self.db.begin_write()?;
        txn.open_table(ROOMS)?.insert(key.as_str(), doc)?;
        {
            let mut changes = txn.open_table(ROOM_CHANGES)?;
            let (from, to) = change_range(&key);
            changes.retain_in(from.as_str()..to.as_str(), |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Append changes made since the last save, durably (the commit is synced to disk
    /// before this returns): what an acknowledged change waits for on a node that no
    /// other replica backs.
    pub fn append_room_changes(
        &self,
        app: &AppName,
        room: &RoomId,
        changes: &[u8],
    ) -> anyhow::Result<()> {
        let key = room_key(app, room);
        let txn = self.db.begin_write()?;
        Self::append_changes_in(&txn, &key, changes)?;
        txn.commit()?;
        Ok(())
    }

    fn append_changes_in(
        txn: &redb::WriteTransaction,
        key: &str,
        changes: &[u8],
    ) -> anyhow::Result<()> {
        let (from, to) = change_range(key);
        let mut table = txn.open_table(ROOM_CHANGES)?;
        let next = match table.range(from.as_str()..to.as_str())?.next_back() {
            Some(last) => {
                let (k, _) = last?;
                let n: u64 = k.value()[key.len() + 1..].parse().unwrap_or(0);
                n + 1
            }
            None => 0,
        };
        table.insert(format!("{key}\0{next:020}").as_str(), changes)?;
        Ok(())
    }

    /// The secret named `name`, set to `fresh` the first time it is asked for.
    pub fn secret_or_init(&self, name: &str, fresh: &[u8]) -> anyhow::Result<Vec<u8>> {
        let txn = self.db.begin_write()?;
        let secret = {
            let mut table = txn.open_table(SECRETS)?;
            let existing = table.get(name)?.map(|v| v.value().to_vec());
            match existing {
                Some(s) => s,
                None => {
                    table.insert(name, fresh)?;
                    fresh.to_vec()
                }
            }
        };
        txn.commit()?;
        Ok(secret)
    }

    /// Replace the secret named `name`.
    pub fn put_secret(&self, name: &str, value: &[u8]) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SECRETS)?.insert(name, value)?;
        txn.commit()?;
        Ok(())
    }

    /// A standalone node's admin keys by id.
    pub fn admin_keys(&self) -> anyhow::Result<BTreeMap<String, AdminKey>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ADMIN_KEYS)?;
        let mut keys = BTreeMap::new();
        for row in table.iter()? {
            let (id, record) = row?;
            keys.insert(
                id.value().to_owned(),
                serde_json::from_slice(record.value())?,
            );
        }
        Ok(keys)
    }

    /// Add or replace an admin key.
    pub fn put_admin_key(&self, id: &str, key: &AdminKey) -> anyhow::Result<()> {
        let record = serde_json::to_vec(key)?;
        let txn = self.db.begin_write()?;
        txn.open_table(ADMIN_KEYS)?.insert(id, record.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Remove an admin key; false if there was none of that id.
    pub fn remove_admin_key(&self, id: &str) -> anyhow::Result<bool> {
        let txn = self.db.begin_write()?;
        let removed = txn.open_table(ADMIN_KEYS)?.remove(id)?.is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// A counter's value (0 if never set).
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COUNTERS)?;
        Ok(table.get(name)?.map_or(0, |v| v.value()))
    }

    /// Raise a counter to `value`, durably (never lowers it).
    pub fn raise_counter(&self, name: &str, value: u64) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(COUNTERS)?;
            let old = table.get(name)?.map_or(0, |v| v.value());
            table.insert(name, old.max(value))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// A room's document as saved: the last whole save followed by the changes
    /// appended since (Automerge loads the two together).
    pub fn load_room(&self, app: &AppName, room: &RoomId) -> anyhow::Result<Option<Vec<u8>>> {
        let key = room_key(app, room);
        let txn = self.db.begin_read()?;
        let rooms = txn.open_table(ROOMS)?;
        let mut doc = rooms.get(key.as_str())?.map(|v| v.value().to_vec());
        let changes = txn.open_table(ROOM_CHANGES)?;
        let (from, to) = change_range(&key);
        for entry in changes.range(from.as_str()..to.as_str())? {
            let (_, v) = entry?;
            doc.get_or_insert_with(Vec::new)
                .extend_from_slice(v.value());
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_changes_follow_the_whole_save_until_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let app = AppName::new("chat").unwrap();
        let (lobby, lobby2) = (
            RoomId::new("lobby").unwrap(),
            RoomId::new("lobby2").unwrap(),
        );
        let s = Store::open(dir.path()).unwrap();
        s.append_room_changes(&app, &lobby, b"<a>").unwrap();
        assert_eq!(s.load_room(&app, &lobby).unwrap().unwrap(), b"<a>");
        s.save_room(&app, &lobby, b"doc").unwrap();
        s.append_room_changes(&app, &lobby2, b"other").unwrap();
        for chunk in [b"<1>", b"<2>", b"<3>"] {
            s.append_room_changes(&app, &lobby, chunk).unwrap();
        }
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load_room(&app, &lobby).unwrap().unwrap(), b"doc<1><2><3>");
        s.save_room(&app, &lobby, b"whole").unwrap();
        assert_eq!(s.load_room(&app, &lobby).unwrap().unwrap(), b"whole");
        assert_eq!(s.load_room(&app, &lobby2).unwrap().unwrap(), b"other");
    }

    #[test]
    fn versions_and_rooms_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let app = AppName::new("chat").unwrap();
        let room = RoomId::new("lobby").unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let v = VersionRecord {
                version: 1,
                sha256: "ab".into(),
                size: 3,
                deployed_at_ms: 7,
            };
            s.put_version(&app, &v, b"abc").unwrap();
            s.save_room(&app, &room, b"doc").unwrap();
            s.raise_counter("runs", 9).unwrap();
            s.raise_counter("runs", 3).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let apps = s.apps().unwrap();
        assert_eq!(apps.len(), 1);
        assert_eq!(apps[0].1.versions[0].sha256, "ab");
        assert_eq!(s.blob("ab").unwrap().unwrap(), b"abc");
        assert_eq!(s.load_room(&app, &room).unwrap().unwrap(), b"doc");
        assert_eq!(s.counter("runs").unwrap(), 9);
        let first = s.secret_or_init("resume", b"one").unwrap();
        assert_eq!(first, b"one");
        assert_eq!(s.secret_or_init("resume", b"two").unwrap(), b"one");
        assert_eq!(s.counter("never").unwrap(), 0);
        assert!(
            s.load_room(&app, &RoomId::new("other").unwrap())
                .unwrap()
                .is_none()
        );
    }
}
