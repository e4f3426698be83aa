//! The control plane's durable storage for openraft: log, vote and snapshots in redb,
//! and the state machine that applies committed commands to a [`ControlState`].
//!
//! Log entries, the vote and the committed index are written (fsync'd) before openraft
//! is told they are; the state machine lives in memory and is rebuilt on start from the
//! last snapshot plus the committed log after it, so nothing committed is lost to a
//! crash. redb calls block for an fsync (a few ms): fine at control-plane rates.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{ControlState, Response};
use super::{RaftId, TypeConfig};

/// Log index → postcard `Entry`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `committed`, `purged`, `snapshot` → postcard values.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

type StorageResult<T> = Result<T, StorageError<RaftId>>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e)
}

/// Log and vote storage. Cloning shares the database (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn get_meta<T: for<'a> Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, AnyError> {
        let txn = self.db.begin_read().map_err(any)?;
        let table = txn.open_table(META).map_err(any)?;
        let Some(v) = table.get(key).map_err(any)? else {
            return Ok(None);
        };
        postcard::from_bytes(v.value()).map(Some).map_err(any)
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), AnyError> {
        let bytes = postcard::to_stdvec(value).map_err(any)?;
        let txn = self.db.begin_write().map_err(any)?;
        txn.open_table(META)
            .map_err(any)?
            .insert(key, bytes.as_slice())
            .map_err(any)?;
        txn.commit().map_err(any)
    }
}

/// Open (or create) the control plane's database in `dir`.
pub fn open(dir: &Path) -> anyhow::Result<(LogStore, StateMachine, watch::Receiver<Applied>)> {
    std::fs::create_dir_all(dir)?;
    let db = Arc::new(Database::create(dir.join("raft.redb"))?);
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(META)?;
    txn.commit()?;
    let log = LogStore { db };
    let snapshot: Option<StoredSnapshot> = log.get_meta("snapshot")?;
    let (applied_tx, applied_rx) = watch::channel(Applied::default());
    let mut sm = StateMachine {
        log: log.clone(),
        state: Arc::new(RwLock::new(ControlState::default())),
        last_applied: None,
        membership: StoredMembership::default(),
        applied: applied_tx,
    };
    if let Some(snap) = snapshot {
        sm.restore(&snap)?;
    }
    Ok((log, sm, applied_rx))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, AnyError> {
            let txn = self.db.begin_read().map_err(any)?;
            let table = txn.open_table(LOG).map_err(any)?;
            let mut out = Vec::new();
            for item in table.range(range.clone()).map_err(any)? {
                let (_, v) = item.map_err(any)?;
                out.push(postcard::from_bytes(v.value()).map_err(any)?);
            }
            Ok(out)
        };
        read().map_err(|e| StorageError::from(StorageIOError::read_logs(&e)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let state = || -> Result<LogState<TypeConfig>, AnyError> {
            let purged: Option<LogId<RaftId>> = self.get_meta("purged")?;
            let txn = self.db.begin_read().map_err(any)?;
            let table = txn.open_table(LOG).map_err(any)?;
            let last = match table.last().map_err(any)? {
                Some((_, v)) => {
                    let entry: Entry<TypeConfig> = postcard::from_bytes(v.value()).map_err(any)?;
                    Some(entry.log_id)
                }
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        };
        state().map_err(|e| StorageError::from(StorageIOError::read_logs(&e)))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> StorageResult<()> {
        self.put_meta("vote", vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<RaftId>>> {
        self.get_meta("vote")
            .map_err(|e| StorageError::from(StorageIOError::read_vote(&e)))
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftId>>) -> StorageResult<()> {
        self.put_meta("committed", &committed)
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<RaftId>>> {
        Ok(self
            .get_meta::<Option<LogId<RaftId>>>("committed")
            .map_err(|e| StorageError::from(StorageIOError::read_logs(&e)))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let write = || -> Result<(), AnyError> {
            let txn = self.db.begin_write().map_err(any)?;
            {
                let mut table = txn.open_table(LOG).map_err(any)?;
                for entry in entries {
                    let bytes = postcard::to_stdvec(&entry).map_err(any)?;
                    table
                        .insert(entry.log_id.index, bytes.as_slice())
                        .map_err(any)?;
                }
            }
            txn.commit().map_err(any)
        };
        let result = write();
        // Durable once commit returned: tell openraft, with the error if there was one.
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result.map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> StorageResult<()> {
        self.remove_range(log_id.index..)
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> StorageResult<()> {
        self.put_meta("purged", &log_id)
            .and_then(|_| self.remove_range(..=log_id.index))
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))
    }
}

impl LogStore {
    fn remove_range(&self, range: impl RangeBounds<u64>) -> Result<(), AnyError> {
        let txn = self.db.begin_write().map_err(any)?;
        txn.open_table(LOG)
            .map_err(any)?
            .retain_in(range, |_, _| false)
            .map_err(any)?;
        txn.commit().map_err(any)
    }
}

/// How far this node's state machine has applied, published after every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    /// The running digest of the log up to `index` (`ControlState::log_digest`).
    pub digest: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, super::Member>,
    data: Vec<u8>,
}

/// Applies committed entries to the shared [`ControlState`]; builds and installs snapshots.
pub struct StateMachine {
    log: LogStore,
    state: Arc<RwLock<ControlState>>,
    last_applied: Option<LogId<RaftId>>,
    membership: StoredMembership<RaftId, super::Member>,
    applied: watch::Sender<Applied>,
}

impl StateMachine {
    /// The state every reader on this node shares.
    pub fn state(&self) -> Arc<RwLock<ControlState>> {
        self.state.clone()
    }

    fn restore(&mut self, snap: &StoredSnapshot) -> Result<(), AnyError> {
        let state: ControlState = postcard::from_bytes(&snap.data).map_err(any)?;
        *self.state.write() = state;
        self.last_applied = snap.meta.last_log_id;
        self.membership = snap.meta.last_membership.clone();
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let index = self.last_applied.map_or(0, |l| l.index);
        let digest = self.state.read().log_digest;
        self.applied.send_replace(Applied { index, digest });
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asks.
pub struct SnapshotBuilder {
    log: LogStore,
    data: Vec<u8>,
    last_applied: Option<LogId<RaftId>>,
    membership: StoredMembership<RaftId, super::Member>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.data.len()),
            None => format!("empty-{}", self.data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: std::mem::take(&mut self.data),
        };
        self.log.put_meta("snapshot", &stored).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<RaftId>>,
        StoredMembership<RaftId, super::Member>,
    )> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        {
            let mut state = self.state.write();
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                // An entry always encodes (plain data); an empty encoding would still
                // chain deterministically.
                let bytes = postcard::to_stdvec(&entry).unwrap_or_default();
                state.log_digest = super::state::chain(&state.log_digest, &bytes);
                replies.push(match entry.payload {
                    EntryPayload::Blank => Response::Done,
                    EntryPayload::Normal(command) => state.apply(command),
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Done
                    }
                });
            }
        }
        self.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let data = postcard::to_stdvec(&*self.state.read()).unwrap_or_default();
        SnapshotBuilder {
            log: self.log.clone(),
            data,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, super::Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let signature = Some(meta.signature());
        self.restore(&stored)
            .and_then(|_| self.log.put_meta("snapshot", &stored))
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(signature, &e)))
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = self
            .log
            .get_meta("snapshot")
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
