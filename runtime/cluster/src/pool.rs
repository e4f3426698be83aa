//! Connections to other nodes for forwarded requests (Engine.IO requests and the
//! WebSocket tunnels they become), apart from Raft, health and room traffic.
//!
//! A QUIC connection takes a bounded number of streams at once, and a forwarded
//! WebSocket holds its stream for as long as the client stays. On one connection per
//! peer, that many long tunnels would stall every other forwarded request behind
//! them. So a peer gets as many connections as its open streams need, each carrying
//! at most [`STREAMS_PER_CONNECTION`]; a stream keeps its place until its [`Lease`]
//! is dropped. Connections are given up when they close or when the peer restarts or
//! comes back from the dead (its generation changes): such a connection may reach
//! nobody.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use edgeroom_proto::ids::NodeId;
use edgeroom_transport::Peer;

/// Streams one pooled connection carries at once: below QUIC's default of 100
/// concurrent streams a peer grants, so opening one never waits for credit.
pub const STREAMS_PER_CONNECTION: usize = 64;

/// The open streams of one pooled connection; a lease gives its place back on drop.
#[derive(Debug)]
pub struct Lease {
    open: Arc<AtomicUsize>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let before = self.open.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(
            before > 0,
            "a pooled connection gave back a stream it never lent"
        );
    }
}

struct Pooled {
    peer: Peer,
    open: Arc<AtomicUsize>,
}

impl Pooled {
    fn lend(&self) -> Lease {
        self.open.fetch_add(1, Ordering::Relaxed);
        Lease {
            open: self.open.clone(),
        }
    }
}

/// Per peer: the generation its connections were made in, and the connections.
#[derive(Default)]
pub struct Pool {
    peers: Mutex<HashMap<NodeId, (u64, Vec<Pooled>)>>,
}

impl Pool {
    /// A connection to `node` of `generation` with room for one more stream, and the
    /// lease that holds that room; `None` if a new connection is needed.
    pub fn lend(&self, node: &NodeId, generation: u64) -> Option<(Peer, Lease)> {
        let mut peers = self.peers.lock();
        let (g, conns) = peers.entry(node.clone()).or_default();
        if *g != generation {
            *g = generation;
            conns.clear();
        }
        conns.retain(|c| !c.peer.is_closed());
        conns
            .iter()
            .find(|c| c.open.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION)
            .map(|c| (c.peer.clone(), c.lend()))
    }

    /// Add a connection dialled for `node` in `generation`, lending its first stream.
    pub fn add(&self, node: &NodeId, generation: u64, peer: Peer) -> Lease {
        let mut peers = self.peers.lock();
        let (g, conns) = peers.entry(node.clone()).or_default();
        if *g != generation {
            *g = generation;
            conns.clear();
        }
        let pooled = Pooled {
            peer,
            open: Arc::default(),
        };
        let lease = pooled.lend();
        conns.push(pooled);
        lease
    }

    /// Connections open to `node` now.
    pub fn connections(&self, node: &NodeId) -> usize {
        self.peers.lock().get(node).map_or(0, |(_, c)| c.len())
    }
}
