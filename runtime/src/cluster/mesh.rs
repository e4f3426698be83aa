//! Accepting side of the peer mesh: every stream a peer opens goes to the part of the
//! node that serves its purpose. A stream for a purpose this node does not serve, or
//! garbage where a purpose should be, drops the peer (logged).

use std::sync::Arc;

use super::control::ControlPlane;
use super::health::Health;
use crate::room::replica::Replicator;
use crate::transport::{Endpoint, Peer, Purpose};

/// Serve peers until the endpoint closes.
pub async fn serve(
    endpoint: Arc<Endpoint>,
    control: Arc<ControlPlane>,
    replicator: Arc<Replicator>,
) {
    while let Some(accepted) = endpoint.accept().await {
        match accepted {
            Ok(peer) => {
                tokio::spawn(serve_peer(peer, control.clone(), replicator.clone()));
            }
            Err(e) => tracing::warn!("refused a peer: {e:#}"),
        }
    }
}

async fn serve_peer(peer: Peer, control: Arc<ControlPlane>, replicator: Arc<Replicator>) {
    loop {
        let incoming = match peer.accept().await {
            Ok(incoming) => incoming,
            // The connection ended, or the peer named an unknown purpose (refused there).
            Err(_) => return,
        };
        match incoming.purpose {
            Purpose::Raft => {
                tokio::spawn(control.clone().serve_stream(incoming));
            }
            Purpose::Health => {
                tokio::spawn(Health::serve_stream(incoming));
            }
            Purpose::Rooms => {
                let from = peer.node().clone();
                tokio::spawn(replicator.clone().serve_stream(from, incoming));
            }
            other => {
                peer.refuse(&format!("this node does not serve {other:?} streams yet"));
                return;
            }
        }
    }
}
