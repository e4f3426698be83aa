//! Runs of sequence numbers: each time a room loads on this node, it numbers its
//! events in a fresh run (see [`Seq`]), taken here.
//!
//! Runs come from one counter per node that only grows, kept on disk: a room that
//! reloads, a node that restarts (cleanly or after kill -9) and a wall clock that
//! steps back all get a run above every run handed out before, so a number is never
//! used twice and peers never drop a new event as a duplicate. The counter is
//! reserved in blocks, one disk write per [`BLOCK`] runs; a restart skips what was
//! left of the block, which costs nothing (runs are not dense, only numbers within a
//! run are).

use parking_lot::Mutex;

use edgeroom_proto::ids::Seq;

/// Runs reserved on disk per write.
pub const BLOCK: u64 = 1024;

/// Where the reservation is kept: writes "every run below this may have been used".
pub type Persist = Box<dyn Fn(u64) -> anyhow::Result<()> + Send + Sync>;

pub struct Runs {
    inner: Mutex<Counter>,
    persist: Option<Persist>,
}

struct Counter {
    next: u64,
    /// Runs below this are reserved on disk.
    reserved: u64,
}

impl Runs {
    /// A counter that starts at `reserved` (what the disk says may have been used), and
    /// writes its reservations through `persist`. The first block is reserved at once,
    /// so a failing disk shows at start.
    pub fn durable(reserved: u64, persist: Persist) -> anyhow::Result<Self> {
        let start = reserved.max(1);
        persist(start + BLOCK)?;
        Ok(Self {
            inner: Mutex::new(Counter {
                next: start,
                reserved: start + BLOCK,
            }),
            persist: Some(persist),
        })
    }

    /// A counter kept in memory only (tests, and nodes without a disk).
    pub fn in_memory(first: u64) -> Self {
        Self {
            inner: Mutex::new(Counter {
                next: first.max(1),
                reserved: u64::MAX,
            }),
            persist: None,
        }
    }

    /// The next run. Blocks on a disk write once per [`BLOCK`] runs (callers on async
    /// tasks take it inside `spawn_blocking`, with the room's other loading).
    pub fn take(&self) -> anyhow::Result<u64> {
        let mut c = self.inner.lock();
        if c.next >= c.reserved {
            let upto = c.reserved.saturating_add(BLOCK);
            if let Some(persist) = &self.persist {
                persist(upto)?;
            }
            c.reserved = upto;
        }
        let run = c.next;
        c.next += 1;
        debug_assert!(run >= 1 && run < c.reserved, "a run is reserved before use");
        Ok(run)
    }

    /// The first number of a fresh run.
    pub fn first_seq(&self) -> anyhow::Result<Seq> {
        self.take().map(Seq::first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn runs_only_grow_across_restarts() {
        let disk = Arc::new(AtomicU64::new(0));
        let persist = |d: Arc<AtomicU64>| -> Persist {
            Box::new(move |v| {
                d.store(v, Ordering::SeqCst);
                Ok(())
            })
        };
        let mut seen = Vec::new();
        for _restart in 0..3 {
            let runs = Runs::durable(disk.load(Ordering::SeqCst), persist(disk.clone())).unwrap();
            for _ in 0..(BLOCK + 5) {
                seen.push(runs.take().unwrap());
            }
            // Whatever was handed out is below what the disk holds.
            assert!(*seen.last().unwrap() < disk.load(Ordering::SeqCst));
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert_eq!(seen[0], 1);
    }

    #[test]
    fn a_failing_disk_refuses_a_run() {
        let runs = Runs::durable(
            0,
            Box::new(|v| {
                anyhow::ensure!(v < 2 * BLOCK, "disk full");
                Ok(())
            }),
        )
        .unwrap();
        for _ in 0..BLOCK {
            runs.take().unwrap();
        }
        assert!(runs.take().is_err());
    }
}
