//! Accepting side of the peer mesh: every stream a peer opens goes to the part of the
//! node that serves its purpose. The cluster serves Raft and health itself; streams for
//! the layers above it (room traffic, forwarded requests) are handed over through a
//! bounded queue per purpose, so the cluster never names what they carry and holds no
//! reference to the node above it. A stream for a purpose this node does not serve, or
//! garbage where a purpose should be, drops the peer (logged); a stream that finds its
//! queue full is dropped and counted (the peer's side sees it fail and retries).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::control::ControlPlane;
use crate::health::Health;
use edgeroom_proto::ids::NodeId;
use edgeroom_transport::{Endpoint, Incoming, Peer, Purpose};

/// How many peers may be in their handshake at once, and the count of those turned
/// away past it.
#[derive(Clone)]
pub struct Arrivals {
    pub max_handshakes: usize,
    pub refused: Counter,
}

/// A stream for a layer above the cluster, with the peer that opened it.
pub type Handed = (NodeId, Incoming);

/// The queues streams for the layers above are handed over through.
#[derive(Clone)]
pub struct Handoff {
    pub rooms: mpsc::Sender<Handed>,
    pub forward: mpsc::Sender<Handed>,
    /// Streams dropped because their queue was full.
    pub dropped: Counter,
}

/// Serve peers until the endpoint closes. Every task serving a peer is owned here and
/// ends with this one.
///
/// Each arriving peer's handshake runs in its own task: a handshake takes a round trip
/// at least, and one a peer stalls in lasts the idle timeout, which a loop taking them
/// in turn would make every other peer wait out (heartbeats then miss, peers declare
/// each other dead, and their redials queue up behind the same loop).
pub async fn serve(
    endpoint: Arc<Endpoint>,
    control: Arc<ControlPlane>,
    handoff: Handoff,
    arrivals: Arrivals,
) {
    let mut peers = JoinSet::new();
    let handshaking = Arc::new(Semaphore::new(arrivals.max_handshakes));
    while let Some(arriving) = endpoint.arrival().await {
        while peers.try_join_next().is_some() {}
        let Ok(permit) = handshaking.clone().try_acquire_owned() else {
            // Counted, not logged: a flood of them must not flood the log as well.
            arrivals.refused.inc();
            arriving.refuse();
            continue;
        };
        let (control, handoff) = (control.clone(), handoff.clone());
        let io = endpoint.io().clone();
        peers.spawn(async move {
            let handshake = arriving.handshake().await;
            drop(permit);
            match handshake {
                Ok(peer) => serve_peer(peer, control, handoff, io).await,
                Err(e) => tracing::warn!("refused a peer: {e:#}"),
            }
        });
    }
}

/// `io` is the endpoint's own runtime: heartbeats are answered there, never behind
/// room work (see `edgeroom_transport::Endpoint::io`).
async fn serve_peer(peer: Peer, control: Arc<ControlPlane>, handoff: Handoff, io: Handle) {
    let mut streams = JoinSet::new();
    loop {
        let incoming = match peer.accept().await {
            Ok(incoming) => incoming,
            // The connection ended, or the peer named an unknown purpose (refused there).
            Err(_) => return,
        };
        while streams.try_join_next().is_some() {}
        let queue = match incoming.purpose {
            Purpose::Raft => {
                streams.spawn(control.clone().serve_stream(peer.node().clone(), incoming));
                continue;
            }
            Purpose::Health => {
                streams.spawn_on(Health::serve_stream(incoming), &io);
                continue;
            }
            Purpose::Rooms => &handoff.rooms,
            Purpose::Forward => &handoff.forward,
            other => {
                peer.refuse(&format!("this node does not serve {other:?} streams yet"));
                return;
            }
        };
        if queue.try_send((peer.node().clone(), incoming)).is_err() {
            // Full, or nobody serves it (not yet, or no longer): the opener retries.
            handoff.dropped.inc();
        }
    }
}
