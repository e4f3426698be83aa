//! Durable storage on the node's disk (redb): the handler registry and room documents.
//!
//! Blocking: callers on async tasks go through `spawn_blocking`. The cluster moves the
//! registry into the Raft state machine; room documents stay here.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use edgeroom_proto::app::AppConfig;
use edgeroom_proto::ids::{AppName, RoomId};

/// Handler wasm by sha256 (hex).
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("handler_blobs");
/// App name → JSON [`AppRecord`].
const APPS: TableDefinition<&str, &str> = TableDefinition::new("apps");
/// `app/room` → saved Automerge document.
const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_docs");
/// Node-wide counters that must survive restarts (`runs`: see `room::runs`).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

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
}

fn room_key(app: &AppName, room: &RoomId) -> String {
    format!("{app}/{room}")
}

impl Store {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("edgeroom.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(BLOBS)?;
        txn.open_table(APPS)?;
        txn.open_table(ROOMS)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        Ok(Self { db })
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
    pub fn put_config(&self, app: &AppName, config: &AppConfig) -> anyhow::Result<()> {
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
            out.push((AppName::new(k.value())?, serde_json::from_str(v.value())?));
        }
        Ok(out)
    }

    pub fn blob(&self, sha256: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let blobs = txn.open_table(BLOBS)?;
        Ok(blobs.get(sha256)?.map(|v| v.value().to_vec()))
    }

    pub fn save_room(&self, app: &AppName, room: &RoomId, doc: &[u8]) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(ROOMS)?
            .insert(room_key(app, room).as_str(), doc)?;
        txn.commit()?;
        Ok(())
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

    pub fn load_room(&self, app: &AppName, room: &RoomId) -> anyhow::Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let rooms = txn.open_table(ROOMS)?;
        Ok(rooms
            .get(room_key(app, room).as_str())?
            .map(|v| v.value().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.counter("never").unwrap(), 0);
        assert!(
            s.load_room(&app, &RoomId::new("other").unwrap())
                .unwrap()
                .is_none()
        );
    }
}
