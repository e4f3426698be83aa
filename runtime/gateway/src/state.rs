//! What the gateway serves clients with: the node's parts it calls into, handed to it
//! at construction, and its own state — the table of Engine.IO sessions.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use edgeroom_cluster::Cluster;
use edgeroom_host::apps::Apps;
use edgeroom_host::clock::Clock;
use edgeroom_host::config::NodeConfig;
use edgeroom_host::metrics::Metrics;
use edgeroom_host::room::replica::Replicator;
use edgeroom_host::room::{Rooms, World};
use edgeroom_host::session::Sessions;
use edgeroom_host::session::token::TokenKey;
use edgeroom_proto::close::Going;

/// The gateway of one node. Every request handler gets it as its state.
pub struct Gateway {
    pub config: NodeConfig,
    /// The node's one clock.
    pub clock: Clock,
    /// Where the gateway listens (the bound address when the config asked for port 0).
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub apps: Arc<Apps<World>>,
    pub rooms: Arc<Rooms>,
    pub sessions: Arc<Sessions>,
    /// Engine.IO sessions (the Socket.IO gateway's transport layer): the gateway's own.
    pub engine: crate::engineio::Engine,
    /// One permit per client connection (native WebSocket or Engine.IO session), taken
    /// before it is accepted and held while it lives: `limits.max_connections` holds
    /// however many arrive at once.
    pub connection_slots: Arc<Semaphore>,
    /// One permit per request this node forwards to another (and the tunnel it may
    /// become), held while it lasts: `limits.forwarded_streams`.
    pub forward_slots: Arc<Semaphore>,
    pub tokens: TokenKey,
    /// Who may use the admin API, and for what.
    pub admin_keys: edgeroom_host::admin_keys::AdminKeys,
    /// Membership in a cluster; `None` for a standalone node.
    pub cluster: Option<Arc<Cluster>>,
    /// The data plane's links to the other nodes (with `cluster`).
    pub replicator: Option<Arc<Replicator>>,
    /// Turns true when the node starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Why clients must go elsewhere now, if they must: the node is stopping, or it is
    /// cut off from most of its cluster. Connections close with it; new ones are refused
    /// while it is set.
    pub clients_go: watch::Receiver<Option<Going>>,
}

impl Gateway {
    /// Resolves when the node starts shutting down.
    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// See `clients_go`: wait on it with [`gone`].
    pub fn clients_go_rx(&self) -> watch::Receiver<Option<Going>> {
        self.clients_go.clone()
    }

    /// A place for one more client connection, or `None` at `limits.max_connections`
    /// (counted as a refusal).
    pub fn connection_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.connection_slots.clone().try_acquire_owned().ok();
        if slot.is_none() {
            edgeroom_host::metrics::count(&self.metrics.sessions_refused, "node");
        }
        slot
    }

    /// Why new clients are refused now, if they are.
    pub fn refusing(&self) -> Option<Going> {
        *self.clients_go.borrow()
    }
}

/// Resolves when clients must go, with why (see [`Gateway::clients_go_rx`]).
pub async fn gone(go: &mut watch::Receiver<Option<Going>>) -> Going {
    match go.wait_for(Option::is_some).await {
        Ok(why) => why.unwrap_or(Going::Stopping),
        Err(_) => Going::Stopping,
    }
}
