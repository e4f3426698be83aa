//! A fleet of nodes in one process, as the integration tests and geo-sim run them: N
//! nodes in their regions, one cluster CA and a certificate each, every node's peer
//! traffic over one shared emulated network ([`Wan`]), voters that form the cluster
//! together. Nodes start on runtimes of their own ([`NodeBuilder`]), so any of them can
//! be killed and started again from its data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgeroom_proto::ids::{AppName, NodeId};
use edgeroom_transport::{ClusterCa, Wan};

use crate::builder::{NodeBuilder, NodeHandle};
use edgeroom_gateway::Gateway;
use edgeroom_host::config::{ClusterConfig, NodeConfig};

/// One node of a fleet: its name, region and location.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: NodeId,
    pub region: String,
    /// (latitude, longitude)
    pub place: (f64, f64),
}

impl Member {
    pub fn new(name: &str, region: &str, place: (f64, f64)) -> anyhow::Result<Self> {
        Ok(Self {
            name: NodeId::new(name)?,
            region: region.into(),
            place,
        })
    }
}

pub struct Fleet {
    members: Vec<Member>,
    root: PathBuf,
    peers: Vec<SocketAddr>,
    wan: Wan,
    tweak: Arc<dyn Fn(&mut NodeConfig) + Send + Sync>,
}

impl Fleet {
    /// A fleet under `root` (certificates in `root/certs`, each node's data in
    /// `root/<name>`), each member on a free loopback peer port.
    pub fn new(root: &Path, members: Vec<Member>) -> anyhow::Result<Self> {
        let ca = ClusterCa::generate("fleet")?;
        let certs = root.join("certs");
        ca.save(&certs)?;
        std::fs::write(
            certs.join("secrets.key"),
            edgeroom_transport::Sealer::generate_hex(),
        )?;
        let mut peers = Vec::new();
        for m in &members {
            ca.issue_into(&certs, &m.name)?;
            peers.push(SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)));
        }
        Ok(Self {
            members,
            root: root.to_path_buf(),
            peers,
            wan: Wan::new(),
            tweak: Arc::new(|_| {}),
        })
    }

    /// Draw the network's losses and jitter from `seed` (a scenario that replays).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.wan = Wan::seeded(seed);
        self
    }

    /// Change every node's config before it starts (limits, timings, dev mode...).
    pub fn with_config(mut self, tweak: impl Fn(&mut NodeConfig) + Send + Sync + 'static) -> Self {
        self.tweak = Arc::new(tweak);
        self
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The peer (QUIC) address of each member, in order.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.peers
    }

    /// The emulated network between the members' peer ports.
    pub fn wan(&self) -> &Wan {
        &self.wan
    }

    /// Member `i`'s config: a voter of the fleet's cluster, listening for clients on a
    /// free loopback port, in dev mode, with the fleet's tweak applied last.
    pub fn config(&self, i: usize) -> NodeConfig {
        let m = &self.members[i];
        let mut c = NodeConfig::new(m.name.clone(), self.root.join(m.name.as_str()));
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.dev = true;
        c.region = m.region.clone();
        c.secrets_key_file = Some(self.root.join("certs").join("secrets.key"));
        let mut cluster = ClusterConfig::new(self.peers[i], self.root.join("certs"));
        cluster.voters = self
            .members
            .iter()
            .zip(&self.peers)
            .map(|(m, a)| format!("{}@{a}", m.name))
            .collect();
        (cluster.lat, cluster.lon) = m.place;
        cluster.raft_heartbeat_ms = 100;
        cluster.raft_election_ms = 500;
        cluster.wan = Some(self.wan.clone());
        c.cluster = Some(cluster);
        (self.tweak)(&mut c);
        c
    }

    pub fn builder(&self, i: usize) -> NodeBuilder {
        NodeBuilder::new(self.config(i))
    }

    /// Start every member (voters start together: each waits for the cluster to agree
    /// on its secret) and wait until the cluster is formed.
    pub async fn start(&self) -> anyhow::Result<Vec<NodeHandle>> {
        let starting = (0..self.len()).map(|i| self.builder(i).start());
        let nodes = futures_util::future::try_join_all(starting).await?;
        let all: Vec<&Gateway> = nodes.iter().map(|n| &*n.node().gateway).collect();
        wait_formed(&all, Duration::from_secs(20)).await?;
        Ok(nodes)
    }
}

/// Resolves once every node of `nodes` knows all of them and has heard from each of
/// the others (so a test or scenario starts from a complete health view).
pub async fn wait_formed(nodes: &[&Gateway], within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let missing: Vec<String> = nodes
            .iter()
            .filter_map(|n| {
                let cluster = n.cluster.as_ref()?;
                let known = cluster.control.state().nodes.len();
                let heard = nodes
                    .iter()
                    .filter(|o| o.config.node_id != n.config.node_id)
                    .filter(|o| {
                        let id = &o.config.node_id;
                        cluster.health.is_alive(id) && cluster.health.rtt(id).is_some()
                    })
                    .count();
                (known < nodes.len() || heard + 1 < nodes.len())
                    .then(|| format!("{}: knows {known}, heard {heard}", n.config.node_id))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the fleet did not form within {within:?}: {}",
            missing.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deploy `wasm` as `app` through `via`'s control plane and wait until every node of
/// `nodes` serves the new version; returns it.
pub async fn deploy(
    via: &Gateway,
    nodes: &[&Gateway],
    app: &str,
    wasm: &[u8],
    within: Duration,
) -> anyhow::Result<u64> {
    let app = AppName::new(app)?;
    let cluster = via
        .cluster
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{} is not in a cluster", via.config.node_id))?;
    let deployed = edgeroom_host::registry::deploy(cluster, &via.apps, &app, wasm.to_vec(), None)
        .await
        .map_err(|e| anyhow::anyhow!("deploy of {app}: {e}"))?;
    let deadline = tokio::time::Instant::now() + within;
    for n in nodes {
        loop {
            let live = n
                .apps
                .subscribe(&app)
                .and_then(|rx| rx.borrow().as_ref().map(|l| l.version));
            if live == Some(deployed.version) {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} never served {app} v{}",
                n.config.node_id,
                deployed.version
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(deployed.version)
}

/// A loopback UDP port free now.
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
