//! Group commit for rooms' journals: every standalone room waits for its batch to be
//! on disk before it answers, and a synced commit costs about the same for one room's
//! batch as for a hundred. So one writer thread takes every batch waiting when it is
//! free, writes them in one transaction and syncs once; each room gets its answer
//! when that commit is done. Under load the commits grow instead of queueing; alone,
//! a room's batch is written at once, as before.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Batch, Store};
use edgeroom_proto::ids::{AppName, RoomId};

/// Most bytes of batches in one commit: a commit holds its batches in memory, and a
/// huge one would keep the rooms behind it waiting on its sync.
const MAX_GROUP_BYTES: usize = 16 << 20;

struct Request {
    app: AppName,
    room: RoomId,
    batch: Batch,
    done: oneshot::Sender<Result<(), String>>,
}

/// The node's journal writer. The thread it runs on ends when the last clone of
/// this handle is dropped (its queue closes): it belongs to the rooms that hold it.
/// It holds the store only while it writes, so a stopped node's store closes when
/// the node lets go of it (a restart in the same process opens it again).
#[derive(Clone)]
pub struct GroupWriter {
    tx: mpsc::UnboundedSender<Request>,
}

impl GroupWriter {
    /// Starts the writer thread for `store`. The queue needs no bound of its own:
    /// each room has at most one batch in it at a time (it waits for the answer).
    pub fn new(store: Arc<Store>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(&store, rx))?;
        Ok(Self { tx })
    }

    /// Write a room's batch; returns once it is synced to disk, with the batches of
    /// the other rooms that were waiting at the same time.
    pub async fn write(&self, app: &AppName, room: &RoomId, batch: Batch) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        let request = Request {
            app: app.clone(),
            room: room.clone(),
            batch,
            done,
        };
        if self.tx.send(request).is_err() {
            return Err("the journal writer stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the journal writer stopped".into()))
    }
}

fn write_loop(store: &std::sync::Weak<Store>, mut rx: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.batch.bytes();
        let mut group = vec![first];
        while bytes < MAX_GROUP_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.batch.bytes();
            group.push(next);
        }
        let batches: Vec<_> = group.iter().map(|r| (&r.app, &r.room, &r.batch)).collect();
        let result = match store.upgrade() {
            Some(store) => store.write_rooms(&batches).map_err(|e| format!("{e:#}")),
            None => Err("the node's store is closed".into()),
        };
        for r in group {
            let _ = r.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Batch {
        Batch {
            events: vec![(crate::store::event_key(1, u64::from(n)), vec![n; 8])],
            ..Batch::default()
        }
    }

    /// Rooms writing at once are all written, each readable after its answer.
    #[tokio::test]
    async fn batches_written_together_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let writer = GroupWriter::new(store.clone()).unwrap();
        let app = AppName::new("a").unwrap();
        let rooms: Vec<RoomId> = (0..20)
            .map(|i| RoomId::new(&format!("r{i}")).unwrap())
            .collect();
        let writes = rooms.iter().enumerate().map(|(i, room)| {
            let writer = writer.clone();
            let app = app.clone();
            async move { writer.write(&app, room, batch(i as u8)).await }
        });
        for result in futures_util::future::join_all(writes).await {
            result.unwrap();
        }
        for (i, room) in rooms.iter().enumerate() {
            let journal = store.room_journal(&app, room).unwrap();
            assert_eq!(journal.events.len(), 1, "room {i}");
            assert_eq!(journal.events[0], vec![i as u8; 8]);
        }
    }
}
