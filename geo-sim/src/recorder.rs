//! Writing a run's history as it happens: every user, the fault timeline and the
//! observer hand their records to one writer task, stamped by one clock (milliseconds
//! since the run began), which appends them to `history.jsonl`. What was written
//! survives an interrupted run.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::history::{Op, Record};

/// Running totals for the progress line.
#[derive(Debug, Default)]
pub struct Tally {
    pub acknowledged: AtomicU64,
    pub delivered: AtomicU64,
    /// Users connected now (their drivers keep it).
    pub connected: AtomicU64,
    pub drops: AtomicU64,
    /// When the last drop happened (ms on the history's clock).
    pub last_drop_ms: AtomicU64,
    /// Session id → client, from every `connect`: who a node's member list names.
    pub sessions: Mutex<HashMap<String, String>>,
}

/// Hands records to the writer. Cheap to clone; every clone stamps by the same start.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    tx: mpsc::UnboundedSender<Record>,
    pub tally: Arc<Tally>,
}

impl Recorder {
    /// Start the writer on `path`; the task ends, flushed, once every recorder is
    /// dropped, returning how many records it wrote.
    pub fn create(
        path: &Path,
    ) -> anyhow::Result<(Recorder, tokio::task::JoinHandle<anyhow::Result<u64>>)> {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            let mut n = 0u64;
            while let Some(r) = rx.blocking_recv() {
                serde_json::to_writer(&mut out, &r)?;
                out.write_all(b"\n")?;
                n += 1;
                // Keep what is written readable while a long run goes on.
                if rx.is_empty() {
                    out.flush()?;
                }
            }
            out.flush()?;
            Ok(n)
        });
        Ok((
            Recorder {
                start: Instant::now(),
                tx,
                tally: Arc::default(),
            },
            writer,
        ))
    }

    /// Milliseconds since the run began: the history's one clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn record(&self, op: Op) {
        let t = &self.tally;
        match &op {
            Op::Ack { .. } | Op::IncrementAcked { .. } => {
                t.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Op::Deliver { .. } => {
                t.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Op::Drop { .. } => {
                t.drops.fetch_add(1, Ordering::Relaxed);
                t.last_drop_ms.store(self.now_ms(), Ordering::Relaxed);
            }
            Op::Connect {
                client, session, ..
            } => {
                if let Ok(mut s) = t.sessions.lock() {
                    s.insert(session.clone(), client.clone());
                }
            }
            _ => {}
        }
        // The writer outlives every recorder; a send fails only once it is gone.
        let _ = self.tx.send(Record {
            t_ms: self.now_ms(),
            op,
        });
    }
}
