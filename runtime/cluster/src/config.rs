//! A node's place in its cluster, as its config file gives it (`[cluster]`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use edgeroom_proto::ids::NodeId;

/// This node's place in a cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// UDP address for QUIC between nodes.
    pub peer_listen: SocketAddr,
    /// The address other nodes dial, when `peer_listen` is a wildcard such as
    /// `0.0.0.0:7000` (a voter's own entry in `voters` serves too).
    #[serde(default)]
    pub peer_advertise: Option<SocketAddr>,
    /// Holds `ca.crt` and this node's `<node_id>.crt` / `.key` (`edgeroom cluster init`).
    pub tls_dir: PathBuf,
    /// A new cluster's voters, `name@host:port` (their peer addresses), the same list on
    /// each of them. A voter creates the cluster on its first start.
    #[serde(default)]
    pub voters: Vec<String>,
    /// Or join a running cluster through any of its nodes, `name@host:port`.
    #[serde(default)]
    pub join: Option<String>,
    /// When joining: become a voter (else a learner).
    #[serde(default)]
    pub voter: bool,
    /// Where this node is, for nearest-region routing.
    #[serde(default)]
    pub lat: f64,
    #[serde(default)]
    pub lon: f64,
    /// Base URLs clients reach this node at (default `http://<listen>`).
    #[serde(default)]
    pub client_urls: Vec<String>,
    /// The Raft leader's heartbeat. Every Raft RPC must be answered within one
    /// heartbeat (openraft times it out), so this should exceed the longest round trip
    /// between voters: the default suits voters on every continent but the farthest
    /// pair (the longest round trip in Azure's published figures is about 340 ms).
    #[serde(default = "default_heartbeat_ms")]
    pub raft_heartbeat_ms: u64,
    /// Raft elections start after a silence of this much (randomised up to twice),
    /// plus the leader's lease (twice this): a dead leader is replaced after 3–4
    /// times this.
    #[serde(default = "default_election_ms")]
    pub raft_election_ms: u64,
    /// Tests and simulations only: the emulated network the peer traffic crosses.
    #[serde(skip)]
    pub wan: Option<edgeroom_transport::Wan>,
    /// A peer silent this long is declared dead: its rooms' presence vanishes
    /// everywhere and it leaves the routing table. Pings go out every sixth of it.
    #[serde(default = "default_failure_timeout_ms")]
    pub failure_timeout_ms: u64,
}

fn default_failure_timeout_ms() -> u64 {
    3000
}

fn default_heartbeat_ms() -> u64 {
    300
}

fn default_election_ms() -> u64 {
    1000
}

impl ClusterConfig {
    /// The peer address other nodes dial for `me`: its entry among the voters, else
    /// `peer_advertise`, else `peer_listen` unless that is a wildcard.
    pub fn advertised(&self, me: &NodeId) -> Option<SocketAddr> {
        let listed = self
            .voters
            .iter()
            .filter_map(|v| parse_peer(v).ok())
            .find(|(node, _)| node == me)
            .map(|(_, addr)| addr);
        listed
            .or(self.peer_advertise)
            .or((!self.peer_listen.ip().is_unspecified()).then_some(self.peer_listen))
    }

    pub fn new(peer_listen: SocketAddr, tls_dir: PathBuf) -> Self {
        Self {
            peer_listen,
            peer_advertise: None,
            tls_dir,
            voters: Vec::new(),
            join: None,
            voter: false,
            lat: 0.0,
            lon: 0.0,
            client_urls: Vec::new(),
            raft_heartbeat_ms: default_heartbeat_ms(),
            raft_election_ms: default_election_ms(),
            failure_timeout_ms: default_failure_timeout_ms(),
            wan: None,
        }
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.voters.is_empty() != self.join.is_none(),
            "cluster: give either voters (a new cluster) or join (an existing one)"
        );
        for peer in self.voters.iter().chain(&self.join) {
            parse_peer(peer)?;
        }
        anyhow::ensure!(
            self.lat.is_finite()
                && self.lon.is_finite()
                && self.lat.abs() <= 90.0
                && self.lon.abs() <= 180.0,
            "cluster: lat/lon out of range"
        );
        anyhow::ensure!(
            self.raft_heartbeat_ms > 0 && self.raft_election_ms >= 3 * self.raft_heartbeat_ms,
            "cluster: raft_election_ms must be at least 3 heartbeats"
        );
        anyhow::ensure!(
            self.failure_timeout_ms >= 300,
            "cluster: failure_timeout_ms must be at least 300"
        );
        Ok(())
    }
}

/// `name@host:port` → (node id, peer address).
pub fn parse_peer(s: &str) -> anyhow::Result<(NodeId, SocketAddr)> {
    let (name, addr) = s
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("cluster peer {s:?} is not name@host:port"))?;
    Ok((
        NodeId::new(name)?,
        addr.parse()
            .map_err(|e| anyhow::anyhow!("cluster peer {s:?}: {e}"))?,
    ))
}
