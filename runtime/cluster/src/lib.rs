//! edgeroom-cluster: nodes in several regions acting as one service.
//!
//! - `control`: the Raft control plane (apps, handler versions, keys, nodes, secret).
//! - `health`: failure detection and round trips between nodes.
//! - `mesh`: accepts peer connections; serves Raft and health streams itself and hands
//!   the others (room traffic, forwarded requests) to the layers above.
//! - `route`: ranks regions for a client's location (`GET /v1/route`).
//! - `config`: the `[cluster]` section of a node's config.
//!
//! Invariant: the cluster knows nodes, links and agreed metadata, never rooms. It
//! holds no reference to anything above it: what it hands over goes through bounded
//! queues the node takes once.
//!
//! [`Cluster::start`] brings a node into its cluster: certificates, QUIC endpoint, Raft,
//! then creating the cluster (voters on first start) or joining it.

pub mod config;
pub mod control;
pub mod health;
pub mod mesh;
pub mod pool;
pub mod route;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use rand::RngCore;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use config::{ClusterConfig, parse_peer};
use control::state::{Command, NodeInfo};
use control::{ControlPlane, Member, RaftTiming};
use edgeroom_proto::ids::NodeId;
use edgeroom_transport::{Endpoint, NodeTls, Purpose, RecvStream, Sealer, SendStream, Timing};
use health::{Health, HealthTiming};
use mesh::{Arrivals, Handed, Handoff};

/// Whether `alive` of `total` nodes (the asking one among the living) is the minority
/// side of a partition: too few to serve. Clusters of fewer than three never are: there
/// a node cannot tell its own isolation from its peer's death.
pub fn minority(total: usize, alive: usize) -> bool {
    total >= 3 && alive * 2 <= total
}

/// What the node brings to its cluster besides the `[cluster]` section.
pub struct Joining {
    pub node_id: NodeId,
    pub region: String,
    /// Where the Raft log and snapshots live.
    pub raft_dir: PathBuf,
    /// The cluster secret a new cluster's voters propose (a random one if `None`).
    pub secret: Option<String>,
    /// This node's admin key, made valid on every node (its salted hash is shared).
    pub admin_key: Option<String>,
    /// The node clock's wall time at start (ms since the epoch): when a configured
    /// admin key is recorded as made.
    pub started_wall_ms: u64,
    /// Seals the cluster secret in the control plane (see `edgeroom_transport::seal`).
    pub sealer: Option<Arc<Sealer>>,
    /// Where the node serves clients (its client URL unless the config names some).
    pub client_addr: SocketAddr,
    /// Streams for the layers above queued at most per purpose (`Limits::peer_streams`).
    pub handoff_queue: usize,
    /// Counts streams dropped because their queue was full.
    pub handoff_dropped: prometheus_client::metrics::counter::Counter,
    /// Peers in their handshake at once (`Limits::peer_handshakes`).
    pub handshakes: usize,
    /// Counts peers turned away past `handshakes`.
    pub handshakes_refused: prometheus_client::metrics::counter::Counter,
    /// Counts Raft requests refused because the sender's certificate names another
    /// node than the request claims.
    pub raft_refused: prometheus_client::metrics::counter::Counter,
}

/// A node's membership in its cluster.
pub struct Cluster {
    pub endpoint: Arc<Endpoint>,
    pub control: Arc<ControlPlane>,
    pub health: Arc<Health>,
    /// Connections to peers for forwarded requests, as many per peer as their open
    /// streams need (see [`pool`]).
    forwarding: pool::Pool,
    /// Peers' `Rooms` streams, taken once by the node's data plane.
    rooms: Mutex<Option<mpsc::Receiver<Handed>>>,
    /// Peers' `Forward` streams, taken once by the node's gateway.
    forwarded: Mutex<Option<mpsc::Receiver<Handed>>>,
    /// Opens the cluster secret.
    sealer: Option<Arc<Sealer>>,
    /// The mesh and the failure detector: aborted at shutdown, or with the cluster
    /// when it is dropped without one (peers then find this node silent).
    tasks: Mutex<JoinSet<()>>,
}

/// What the cluster secret is sealed for.
const CLUSTER_SECRET: &str = "cluster secret";

/// How long a starting node waits for a quorum before it gives up.
const QUORUM_PATIENCE: Duration = Duration::from_secs(120);

impl Cluster {
    /// Start this node's part of the cluster. Returns once the cluster has a secret this
    /// node knows (so resume tokens verify on every node), which needs a quorum.
    pub async fn start(joining: Joining, cluster: &ClusterConfig) -> anyhow::Result<Arc<Self>> {
        let tls = NodeTls::load(&cluster.tls_dir, joining.node_id.clone())
            .context("loading this node's cluster certificate")?;
        let endpoint = Arc::new(Endpoint::bind(
            cluster.peer_listen,
            &tls,
            cluster.wan.as_ref(),
            Timing::default(),
        )?);
        // What others dial: the configured address (a wildcard bind is not dialable),
        // or the bound one when the config left the port to the system.
        let peer_addr = match cluster.advertised(&joining.node_id) {
            Some(addr) if addr.port() != 0 => addr,
            _ => endpoint.local_addr()?,
        };
        let me = Member::new(&joining.node_id, peer_addr);
        let timing = RaftTiming {
            heartbeat: Duration::from_millis(cluster.raft_heartbeat_ms),
            election_min: Duration::from_millis(cluster.raft_election_ms),
            election_max: Duration::from_millis(cluster.raft_election_ms * 2),
            ..RaftTiming::default()
        };
        let control = ControlPlane::start(
            &joining.raft_dir,
            endpoint.clone(),
            me.clone(),
            timing,
            joining.raft_refused.clone(),
        )
        .await?;
        let health = Health::new(
            joining.node_id.clone(),
            HealthTiming {
                timeout: Duration::from_millis(cluster.failure_timeout_ms),
                interval: Duration::from_millis(cluster.failure_timeout_ms / 6),
            },
        );
        let (rooms_tx, rooms) = mpsc::channel(joining.handoff_queue);
        let (forward_tx, forwarded) = mpsc::channel(joining.handoff_queue);
        let handoff = Handoff {
            rooms: rooms_tx,
            forward: forward_tx,
            dropped: joining.handoff_dropped.clone(),
        };
        let mut tasks = JoinSet::new();
        let arrivals = Arrivals {
            max_handshakes: joining.handshakes,
            refused: joining.handshakes_refused.clone(),
        };
        tasks.spawn(mesh::serve(
            endpoint.clone(),
            control.clone(),
            handoff,
            arrivals,
        ));
        tasks.spawn(health::run(
            health.clone(),
            control.clone(),
            endpoint.clone(),
        ));
        let this = Arc::new(Self {
            endpoint,
            control,
            health,
            forwarding: Default::default(),
            rooms: Mutex::new(Some(rooms)),
            forwarded: Mutex::new(Some(forwarded)),
            sealer: joining.sealer.clone(),
            tasks: Mutex::new(tasks),
        });

        let info = NodeInfo {
            region: joining.region.clone(),
            peer_addr,
            client_urls: if cluster.client_urls.is_empty() {
                vec![format!("http://{}", joining.client_addr)]
            } else {
                cluster.client_urls.clone()
            },
            lat: cluster.lat,
            lon: cluster.lon,
        };
        let control = &this.control;
        if !cluster.voters.is_empty() {
            let mut voters = Vec::new();
            for v in &cluster.voters {
                let (node, addr) = parse_peer(v)?;
                voters.push(Member::new(&node, addr));
            }
            anyhow::ensure!(
                voters.iter().any(|v| v.name == me.name),
                "{} is not among the cluster's voters; a new node joins with `join`",
                me.name
            );
            control.initialize(&voters).await?;
            let secret = match &joining.secret {
                Some(s) => s.clone(),
                None => {
                    let mut bytes = [0u8; 32];
                    rand::rng().fill_bytes(&mut bytes);
                    hex::encode(bytes)
                }
            };
            let secret = match &joining.sealer {
                Some(sealer) => sealer.seal(CLUSTER_SECRET, secret.as_bytes())?,
                None => secret,
            };
            // Every voter proposes; the first committed wins.
            this.write_patiently(Command::InitSecret(secret)).await?;
            this.write_patiently(Command::PutNode(joining.node_id.clone(), info))
                .await?;
            this.share_admin_key(&joining).await?;
        } else if let Some(seed) = &cluster.join {
            let (node, addr) = parse_peer(seed)?;
            let seed = Member::new(&node, addr);
            if control.has_log().await {
                // A restart: already a member; refresh what it says about itself.
                this.write_patiently(Command::PutNode(joining.node_id.clone(), info))
                    .await?;
            } else {
                control
                    .join(&seed, info, cluster.voter)
                    .await
                    .with_context(|| format!("joining the cluster through {seed}"))?;
            }
            this.share_admin_key(&joining).await?;
        }
        let mut applied = control.applied();
        let deadline = tokio::time::Instant::now() + QUORUM_PATIENCE;
        while control.state().secret.is_none() {
            tokio::time::timeout_at(deadline, applied.changed())
                .await
                .context("waiting for the cluster secret")??;
        }
        Ok(this)
    }

    /// Make this node's configured admin key valid on every node, as the cluster-wide
    /// key `node:<this node>` (a salted hash is shared, never the key). Put again when
    /// the config names another key; a revoked one comes back only with a restart that
    /// still names it.
    async fn share_admin_key(&self, joining: &Joining) -> anyhow::Result<()> {
        let (node, key) = (&joining.node_id, joining.admin_key.as_deref());
        let Some(key) = key else {
            return Ok(());
        };
        let id = format!("node:{node}");
        if self
            .control
            .state()
            .admin_keys
            .get(&id)
            .is_some_and(|k| k.matches(key))
        {
            return Ok(());
        }
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let record = control::state::AdminKey::new(
            format!("configured on {node}"),
            control::state::KeyScope::Cluster,
            key,
            hex::encode(salt),
            joining.started_wall_ms,
        );
        self.write_patiently(Command::PutAdminKey { id, key: record })
            .await
    }

    /// A write that waits out a missing quorum (other voters still starting).
    async fn write_patiently(&self, command: Command) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + QUORUM_PATIENCE;
        loop {
            match self.control.write(command.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::info!("waiting for a control-plane quorum: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A stream to `node` for a forwarded request, and the lease that holds its place
    /// on its connection (drop it when the request, or the tunnel it became, ends).
    /// Connections are reused while they last and while the node has not restarted or
    /// come back from the dead (such a connection may reach nobody).
    pub async fn forward_stream(
        &self,
        node: &NodeId,
    ) -> anyhow::Result<(SendStream, RecvStream, pool::Lease)> {
        let generation = self.health.generation(node);
        let (peer, lease) = match self.forwarding.lend(node, generation) {
            Some(lent) => lent,
            None => {
                let addr = self
                    .control
                    .state()
                    .nodes
                    .get(node)
                    .map(|n| n.peer_addr)
                    .ok_or_else(|| anyhow::anyhow!("{node} is not a node of this cluster"))?;
                let peer = self.endpoint.connect(node, addr).await?;
                let lease = self.forwarding.add(node, generation, peer.clone());
                (peer, lease)
            }
        };
        let (send, recv) = peer.open_raw(Purpose::Forward).await?;
        Ok((send, recv, lease))
    }

    /// Connections this node keeps to `node` for forwarded requests.
    pub fn forward_connections(&self, node: &NodeId) -> usize {
        self.forwarding.connections(node)
    }

    /// Whether this node hears fewer than half the other nodes of a cluster of three
    /// or more (itself counted among the living): the minority side of a partition.
    pub fn cut_off(&self) -> bool {
        let state = self.control.state();
        let total = state.nodes.len();
        let alive = state
            .nodes
            .keys()
            .filter(|n| self.health.is_alive(n))
            .count();
        minority(total, alive)
    }

    /// Peers' `Rooms` streams (once: the node's data plane serves them).
    pub fn take_rooms_streams(&self) -> Option<mpsc::Receiver<Handed>> {
        self.rooms.lock().take()
    }

    /// Peers' `Forward` streams (once: the node's gateway serves them).
    pub fn take_forwarded_streams(&self) -> Option<mpsc::Receiver<Handed>> {
        self.forwarded.lock().take()
    }

    /// The cluster secret (hex) that signs resume tokens.
    /// What this node seals secrets at rest with, if it has a secrets key.
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_deref()
    }

    /// The cluster secret (hex), opened if it is sealed; an error if this node has no
    /// key to open it with.
    pub fn secret(&self) -> anyhow::Result<Option<String>> {
        let Some(stored) = self.control.state().secret.clone() else {
            return Ok(None);
        };
        let bytes =
            edgeroom_transport::seal::reveal(self.sealer.as_deref(), CLUSTER_SECRET, &stored)?;
        Ok(Some(String::from_utf8(bytes)?))
    }

    pub async fn shutdown(&self) {
        self.control.shutdown().await;
        self.tasks.lock().abort_all();
        self.endpoint.shutdown(Duration::from_secs(1)).await;
    }
}

impl Cluster {
    /// Every region of the cluster as routing sees it: live nodes' URLs, location, and
    /// this node's measured round trip to it.
    pub fn regions(&self) -> Vec<route::RegionView> {
        let state = self.control.state();
        let me = state.nodes.get(self.health.me());
        let mut by_region: std::collections::BTreeMap<&str, Vec<_>> = Default::default();
        for (id, info) in &state.nodes {
            by_region
                .entry(info.region.as_str())
                .or_default()
                .push((id, info));
        }
        by_region
            .into_iter()
            .map(|(region, nodes)| {
                let n = nodes.len() as f64;
                let location = (
                    nodes.iter().map(|(_, i)| i.lat).sum::<f64>() / n,
                    nodes.iter().map(|(_, i)| i.lon).sum::<f64>() / n,
                );
                let urls = nodes
                    .iter()
                    .filter(|(id, _)| self.health.is_alive(id))
                    .flat_map(|(_, i)| i.client_urls.iter().cloned())
                    .collect();
                let measured = me.and_then(|me| {
                    nodes.iter().find_map(|(id, info)| {
                        let rtt = self.health.rtt(id)?;
                        let span = route::distance_km((me.lat, me.lon), (info.lat, info.lon));
                        Some((rtt.as_secs_f64() * 1000.0, span))
                    })
                });
                route::RegionView {
                    region: region.to_string(),
                    location,
                    urls,
                    measured,
                }
            })
            .collect()
    }
}
