//! The cluster: nodes in several regions acting as one service.
//!
//! - `control`: the Raft control plane (apps, handler versions, keys, nodes, secret).
//! - `mesh`: accepts peer connections and hands each stream to the part that serves
//!   its purpose.
//! - `registry`: keeps this node's handlers in step with the control plane.
//! - `health`: failure detection and round trips between nodes.
//! - `route`: ranks regions for a client's location (`GET /v1/route`).
//! - `replicate`: the data plane's links: room messages to the nodes that want them,
//!   peers' messages to this node's rooms (what they say is `room::replica`'s).
//! - `interest`, `order`: the data plane's sans-IO cores: which nodes want a room's
//!   messages and the one relay per region, and per-origin FIFO, dedupe and gap repair
//!   on the receiving side.
//!
//! [`Cluster::start`] brings a node into its cluster: certificates, QUIC endpoint, Raft,
//! then creating the cluster (voters on first start) or joining it.

pub mod control;
pub mod health;
pub mod mesh;
pub mod registry;
pub mod replicate;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use tokio::task::JoinHandle;

use crate::apps::{AppSettings, Apps, DeployError, Deployed};
use crate::config::{ClusterConfig, NodeConfig, parse_peer};
use crate::room::World;
use crate::room::replica::{Replicator, RoomMsg};
use crate::store::AppConfig;
use control::state::{Command, NodeInfo, Response};
use control::{ControlPlane, Member, RaftTiming};
use edgeroom_proto::ids::AppName;
use edgeroom_transport::{Endpoint, NodeTls, Peer, Timing};
use health::{Health, HealthTiming};

/// A node's membership in its cluster.
pub struct Cluster {
    pub endpoint: Arc<Endpoint>,
    pub control: Arc<ControlPlane>,
    pub health: Arc<Health>,
    pub replicator: Arc<Replicator>,
    /// Connections to peers for requests (forwarded HTTP), reused while the peer's
    /// generation (see `Replicator::generation`) stays the same.
    peers: parking_lot::Mutex<std::collections::HashMap<edgeroom_proto::ids::NodeId, (u64, Peer)>>,
    /// Serves `Forward` streams; set once the node's router exists.
    pub forwarded: Arc<parking_lot::Mutex<Option<mesh::ForwardHandler>>>,
    /// What peers send this node's rooms; taken once by the node that serves them.
    deliveries:
        parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<replicate::Delivery<RoomMsg>>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long a starting node waits for a quorum before it gives up.
const QUORUM_PATIENCE: Duration = Duration::from_secs(120);

impl Cluster {
    /// Start this node's part of the cluster. Returns once the cluster has a secret this
    /// node knows (so resume tokens verify on every node), which needs a quorum.
    pub async fn start(
        config: &NodeConfig,
        cluster: &ClusterConfig,
        client_addr: SocketAddr,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<Arc<Self>> {
        let tls = NodeTls::load(&cluster.tls_dir, config.node_id.clone())
            .context("loading this node's cluster certificate")?;
        let endpoint = Arc::new(Endpoint::bind(
            cluster.peer_listen,
            &tls,
            cluster.wan.as_ref(),
            Timing::default(),
        )?);
        // What others dial: the configured address (a wildcard bind is not dialable),
        // or the bound one when the config left the port to the system.
        let peer_addr = match cluster.advertised(&config.node_id) {
            Some(addr) if addr.port() != 0 => addr,
            _ => endpoint.local_addr()?,
        };
        let me = Member::new(&config.node_id, peer_addr);
        let timing = RaftTiming {
            heartbeat: Duration::from_millis(cluster.raft_heartbeat_ms),
            election_min: Duration::from_millis(cluster.raft_election_ms),
            election_max: Duration::from_millis(cluster.raft_election_ms * 2),
            ..RaftTiming::default()
        };
        let control = ControlPlane::start(
            &config.data_dir.join("raft"),
            endpoint.clone(),
            me.clone(),
            timing,
        )
        .await?;
        let health = Health::new(
            config.node_id.clone(),
            HealthTiming {
                timeout: Duration::from_millis(cluster.failure_timeout_ms),
                interval: Duration::from_millis(cluster.failure_timeout_ms / 6),
            },
        );
        let (replicator, deliveries) = Replicator::new(
            config.node_id.clone(),
            config.region.clone(),
            health.clone(),
            config.limits.peer_queue,
            metrics
                .peer_frames_refused
                .get_or_create(&crate::metrics::KindLabel {
                    kind: "rooms".into(),
                })
                .clone(),
        );
        let forwarded = Arc::new(parking_lot::Mutex::new(None));
        let serving = mesh::Serving {
            control: control.clone(),
            replicator: replicator.clone(),
            forwarded: forwarded.clone(),
        };
        let tasks = vec![
            tokio::spawn(mesh::serve(endpoint.clone(), serving)),
            tokio::spawn(health::run(
                health.clone(),
                control.clone(),
                endpoint.clone(),
            )),
            tokio::spawn(
                replicator
                    .clone()
                    .run(control.clone(), endpoint.clone(), health.clone()),
            ),
        ];
        let this = Arc::new(Self {
            endpoint,
            control,
            health,
            replicator,
            peers: Default::default(),
            forwarded,
            deliveries: parking_lot::Mutex::new(Some(deliveries)),
            tasks,
        });

        let info = NodeInfo {
            region: config.region.clone(),
            peer_addr,
            client_urls: if cluster.client_urls.is_empty() {
                vec![format!("http://{client_addr}")]
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
            let secret = match &config.secret {
                Some(s) => s.clone(),
                None => {
                    let mut bytes = [0u8; 32];
                    rand::rng().fill_bytes(&mut bytes);
                    hex::encode(bytes)
                }
            };
            // Every voter proposes; the first committed wins.
            this.write_patiently(Command::InitSecret(secret)).await?;
            this.write_patiently(Command::PutNode(config.node_id.clone(), info))
                .await?;
            this.share_admin_key(config).await?;
        } else if let Some(seed) = &cluster.join {
            let (node, addr) = parse_peer(seed)?;
            let seed = Member::new(&node, addr);
            if control.has_log().await {
                // A restart: already a member; refresh what it says about itself.
                this.write_patiently(Command::PutNode(config.node_id.clone(), info))
                    .await?;
            } else {
                control
                    .join(&seed, info, cluster.voter)
                    .await
                    .with_context(|| format!("joining the cluster through {seed}"))?;
            }
            this.share_admin_key(config).await?;
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

    /// Make this node's admin key valid on every node (its hash, not the key, is shared).
    async fn share_admin_key(&self, config: &NodeConfig) -> anyhow::Result<()> {
        let Some(key) = &config.admin_key else {
            return Ok(());
        };
        let sha256 = control::state::sha256_hex(key.as_bytes());
        if self.control.state().admin_keys.contains(&sha256) {
            return Ok(());
        }
        self.write_patiently(Command::AddAdminKey { sha256 }).await
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

    /// Deploy through the control plane: checked here, committed through Raft, installed
    /// here before this returns and on every other node as it applies the log.
    pub async fn deploy(
        &self,
        apps: &Apps<World>,
        app: &AppName,
        wasm: Vec<u8>,
        base: Option<u64>,
    ) -> Result<Deployed, DeployError> {
        let wasm = apps.validate(wasm).await?;
        let command = Command::Deploy {
            app: app.clone(),
            wasm,
            base,
        };
        match self.control.write(command).await {
            Ok(Response::Deployed {
                version, unchanged, ..
            }) => {
                let wasm = self
                    .control
                    .state()
                    .live_handler(app)
                    .filter(|(v, _)| v.version == version)
                    .map(|(_, bytes)| bytes.to_vec());
                match wasm {
                    // This node's registry follower may have installed it already:
                    // whether anything changed is the control plane's answer.
                    Some(wasm) => apps.install(app, version, wasm).await.map(|mut d| {
                        d.unchanged = unchanged;
                        d
                    }),
                    // Another deploy followed at once; it is being installed instead.
                    None => Err(DeployError::Conflict { current: version }),
                }
            }
            Ok(Response::Conflict { current }) => Err(DeployError::Conflict { current }),
            Ok(other) => Err(DeployError::Unavailable(format!("unexpected {other:?}"))),
            Err(e) => Err(DeployError::Unavailable(e.to_string())),
        }
    }

    /// Change an app's settings everywhere.
    pub async fn configure(
        &self,
        apps: &Apps<World>,
        app: &AppName,
        config: AppConfig,
    ) -> Result<(), DeployError> {
        AppSettings::new(config.clone()).map_err(DeployError::Invalid)?;
        let command = Command::Configure {
            app: app.clone(),
            config,
        };
        self.control
            .write(command)
            .await
            .map_err(|e| DeployError::Unavailable(e.to_string()))?;
        registry::catch_up(&self.control, apps).await;
        Ok(())
    }

    /// A connection to `node`, reused while it lasts (and while the node has not
    /// restarted or come back from the dead: such a connection may reach nobody).
    pub async fn peer(&self, node: &edgeroom_proto::ids::NodeId) -> anyhow::Result<Peer> {
        let generation = self.replicator.generation(node);
        if let Some((_, p)) = self
            .peers
            .lock()
            .get(node)
            .filter(|(g, p)| *g == generation && !p.is_closed())
        {
            return Ok(p.clone());
        }
        let addr = self
            .control
            .state()
            .nodes
            .get(node)
            .map(|n| n.peer_addr)
            .ok_or_else(|| anyhow::anyhow!("{node} is not a node of this cluster"))?;
        let p = self.endpoint.connect(node, addr).await?;
        self.peers
            .lock()
            .insert(node.clone(), (generation, p.clone()));
        Ok(p)
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
        total >= 3 && alive * 2 <= total
    }

    /// What peers send this node's rooms (once: the node's rooms serve it).
    pub fn take_deliveries(
        &self,
    ) -> Option<tokio::sync::mpsc::Receiver<replicate::Delivery<RoomMsg>>> {
        self.deliveries.lock().take()
    }

    /// The cluster secret (hex) that signs resume tokens.
    pub fn secret(&self) -> Option<String> {
        self.control.state().secret.clone()
    }

    pub async fn shutdown(&self) {
        self.forwarded.lock().take();
        self.control.shutdown().await;
        for task in &self.tasks {
            task.abort();
        }
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
