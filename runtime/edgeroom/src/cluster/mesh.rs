//! Accepting side of the peer mesh: every stream a peer opens goes to the part of the
//! node that serves its purpose. A stream for a purpose this node does not serve, or
//! garbage where a purpose should be, drops the peer (logged).

use std::sync::Arc;

use parking_lot::Mutex;

use super::control::ControlPlane;
use super::health::Health;
use crate::room::replica::Replicator;
use edgeroom_transport::{Endpoint, Incoming, Peer, Purpose};

/// Serves a forwarded request stream (the gateway's, set once the router exists and
/// taken away when the node stops: it holds the node).
pub type ForwardHandler = Arc<dyn Fn(Incoming) + Send + Sync>;

/// The parts of the node that serve peers' streams.
#[derive(Clone)]
pub struct Serving {
    pub control: Arc<ControlPlane>,
    pub replicator: Arc<Replicator>,
    pub forwarded: Arc<Mutex<Option<ForwardHandler>>>,
}

/// Serve peers until the endpoint closes.
pub async fn serve(endpoint: Arc<Endpoint>, serving: Serving) {
    while let Some(accepted) = endpoint.accept().await {
        match accepted {
            Ok(peer) => {
                tokio::spawn(serve_peer(peer, serving.clone()));
            }
            Err(e) => tracing::warn!("refused a peer: {e:#}"),
        }
    }
}

async fn serve_peer(peer: Peer, serving: Serving) {
    loop {
        let incoming = match peer.accept().await {
            Ok(incoming) => incoming,
            // The connection ended, or the peer named an unknown purpose (refused there).
            Err(_) => return,
        };
        match incoming.purpose {
            Purpose::Raft => {
                tokio::spawn(serving.control.clone().serve_stream(incoming));
            }
            Purpose::Health => {
                tokio::spawn(Health::serve_stream(incoming));
            }
            Purpose::Rooms => {
                let from = peer.node().clone();
                tokio::spawn(serving.replicator.clone().serve_stream(from, incoming));
            }
            Purpose::Forward => match serving.forwarded.lock().clone() {
                Some(serve) => serve(incoming),
                // Not serving clients yet: the forwarding node answers for us.
                None => drop(incoming),
            },
            other => {
                peer.refuse(&format!("this node does not serve {other:?} streams yet"));
                return;
            }
        }
    }
}
