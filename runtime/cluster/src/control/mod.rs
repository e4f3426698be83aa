//! The control plane: one Raft group (openraft) that agrees on apps, handler versions,
//! admin keys, nodes and the cluster secret.
//!
//! - `state`: what is agreed on, and the pure `apply`.
//! - `store`: openraft's log, vote and snapshot storage in redb, and the state machine.
//! - `network`: Raft RPCs, forwarded writes and joins over the peer transport.
//!
//! Voters are typically one node per region (3 or 5); every other node is a learner:
//! it receives the log and serves from its copy of the state, but does not vote. Any
//! node accepts a write and forwards it to the leader.

pub mod network;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use edgeroom_proto::ids::NodeId;
use edgeroom_transport::{Endpoint, Incoming};
use network::{Network, RaftReply, RaftRequest, WriteError, Written};
use state::{Command, ControlState, NodeInfo, Response};
use store::Applied;

/// openraft's node id. Derived from the node's name, so every node computes the same.
pub type RaftId = u64;

pub fn raft_id(node: &NodeId) -> RaftId {
    let digest = Sha256::digest(node.as_str().as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// A member of the Raft group as openraft stores it: enough to dial it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_addr: String,
}

impl Member {
    pub fn new(node: &NodeId, peer_addr: SocketAddr) -> Self {
        Self {
            name: node.to_string(),
            peer_addr: peer_addr.to_string(),
        }
    }

    pub fn node_id(&self) -> anyhow::Result<NodeId> {
        Ok(NodeId::new(&self.name)?)
    }

    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.peer_addr.parse()?)
    }

    pub fn raft_id(&self) -> anyhow::Result<RaftId> {
        Ok(raft_id(&self.node_id()?))
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = RaftId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Raft timing. Elections must outlast the slowest inter-region round trip by far.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Take a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(200),
            election_min: Duration::from_millis(800),
            election_max: Duration::from_millis(1600),
            snapshot_every: 1000,
        }
    }
}

/// A node's part in the control plane.
pub struct ControlPlane {
    raft: Raft<TypeConfig>,
    me: Member,
    state: Arc<RwLock<ControlState>>,
    applied: watch::Receiver<Applied>,
    network: Network,
    /// Requests refused because the peer's certificate does not name who they claim.
    refused: Counter,
}

/// What `GET /v1/cluster` and `edgeroom cluster status` show of the control plane.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node: String,
    pub role: &'static str,
    pub leader: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The running digest of the log this node applied up to `applied_index` (hex):
    /// equal at equal indexes on every node, or the logs forked.
    pub applied_digest: String,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// Known only on the leader: how many entries each node is behind.
    pub lag: BTreeMap<String, u64>,
}

/// Entries per AppendEntries; times the largest handler, must stay under the Raft
/// stream's frame limit (`transport::Purpose::max_frame`).
pub const MAX_ENTRIES_PER_APPEND: u64 = 3;

/// How long a forwarded write may wait for a leader.
const WRITE_PATIENCE: Duration = Duration::from_secs(10);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a joining node keeps asking: membership changes go one at a time, each a
/// few round trips of the longest link, and a fleet starting at once queues up.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

impl ControlPlane {
    /// Open (or create) this node's Raft storage under `dir` and start its Raft. A new
    /// cluster then needs [`ControlPlane::initialize`] on one node; a restarted node
    /// carries on from its log.
    pub async fn start(
        dir: &Path,
        endpoint: Arc<Endpoint>,
        me: Member,
        timing: RaftTiming,
        refused: Counter,
    ) -> anyhow::Result<Arc<Self>> {
        let (log, sm, applied) = store::open(dir)?;
        let state = sm.state();
        let config = openraft::Config {
            cluster_name: "edgeroom".into(),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election_min.as_millis() as u64,
            election_timeout_max: timing.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
            // An entry may carry a whole handler (16 MiB by default): a few per append
            // keep each Raft frame under `Purpose::Raft`'s limit.
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            max_in_snapshot_log_to_keep: timing.snapshot_every / 2,
            ..Default::default()
        }
        .validate()?;
        let network = Network::new(endpoint);
        let raft = Raft::new(me.raft_id()?, Arc::new(config), network.clone(), log, sm).await?;
        Ok(Arc::new(Self {
            raft,
            me,
            state,
            applied,
            network,
            refused,
        }))
    }

    /// Create a new cluster with these voters (this node among them). Does nothing on a
    /// node that already has a log, so it is safe to call on every start.
    pub async fn initialize(&self, voters: &[Member]) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        let mut members = BTreeMap::new();
        for m in voters {
            members.insert(m.raft_id()?, m.clone());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another voter initialized first: same outcome.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether this node already belongs to a cluster (it has a vote or a log).
    pub async fn has_log(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// The agreed state as this node has applied it.
    pub fn state(&self) -> parking_lot::RwLockReadGuard<'_, ControlState> {
        self.state.read()
    }

    /// Changes whenever this node applies more of the log.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied.clone()
    }

    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Commit `command` through the leader, wherever it is, and wait until this node has
    /// applied it too, so a read here right after sees the write.
    pub async fn write(&self, command: Command) -> Result<Response, WriteError> {
        let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
        let written = self.commit(command, deadline).await?;
        self.wait_applied(written.index, deadline).await;
        Ok(written.response)
    }

    /// Commit on the leader (here, or forwarded), retrying while there is none.
    async fn commit(
        &self,
        command: Command,
        deadline: tokio::time::Instant,
    ) -> Result<Written, WriteError> {
        loop {
            let attempt = match self.raft.client_write(command.clone()).await {
                Ok(w) => Ok(Written {
                    response: w.response().clone(),
                    index: w.log_id().index,
                }),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                    match (fwd.leader_id, fwd.leader_node) {
                        (Some(id), Some(leader)) => {
                            self.forward(id, &leader, command.clone()).await
                        }
                        _ => Err(WriteError::NoLeader),
                    }
                }
                Err(e) => Err(WriteError::Failed(e.to_string())),
            };
            match attempt {
                // No leader yet, or the leader moved or died mid-call: try again.
                Err(WriteError::NoLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Send the write to the leader `id`. Given up as soon as this node sees another
    /// leader or none: a killed leader never answers, and waiting out `RPC_TIMEOUT`
    /// would hold the write for seconds after a new one is elected. (A write the old
    /// leader committed just before it went is then tried again, as after any timeout:
    /// a deploy of the same bytes comes back `unchanged`, the other commands set what
    /// they set again.)
    async fn forward(
        &self,
        id: RaftId,
        leader: &Member,
        command: Command,
    ) -> Result<Written, WriteError> {
        let mut metrics = self.raft.metrics();
        let request = RaftRequest::Write(command);
        let call = self.network.call(leader, &request, RPC_TIMEOUT);
        let reply = tokio::select! {
            reply = call => reply,
            _ = metrics.wait_for(|m| m.current_leader != Some(id)) => {
                return Err(WriteError::NoLeader);
            }
        };
        match reply {
            Ok(RaftReply::Write(result)) => result,
            Ok(_) => Err(WriteError::Failed("unexpected reply".into())),
            Err(_) => Err(WriteError::NoLeader),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) {
        let mut applied = self.applied.clone();
        let _ = tokio::time::timeout_at(deadline, applied.wait_for(|a| a.index >= index)).await;
    }

    /// Ask the cluster (through `seed`, any node of it) to add this node: as a learner,
    /// then as a voter if `voter`. Also records its `info` in the control state.
    pub async fn join(&self, seed: &Member, info: NodeInfo, voter: bool) -> anyhow::Result<()> {
        let request = RaftRequest::Join {
            member: self.me.clone(),
            info,
            voter,
        };
        let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
        let mut ask = seed.clone();
        loop {
            match self.network.call(&ask, &request, RPC_TIMEOUT).await {
                Ok(RaftReply::Write(Ok(_))) => return Ok(()),
                Ok(RaftReply::Write(Err(WriteError::Redirect(leader))))
                    if tokio::time::Instant::now() < deadline =>
                {
                    ask = leader;
                }
                Ok(RaftReply::Write(Err(WriteError::NoLeader | WriteError::Busy)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(RaftReply::Write(Err(e))) => return Err(e.into()),
                Ok(_) => anyhow::bail!("unexpected reply to join"),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Add `member` (leader only; others forward): learner first so it catches up, then
    /// voter if asked; then its `info`.
    async fn admit(
        &self,
        member: Member,
        info: NodeInfo,
        voter: bool,
    ) -> Result<Written, WriteError> {
        let id = member
            .raft_id()
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        let node = member
            .node_id()
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        let fail = |e: RaftError<RaftId, ClientWriteError<RaftId, Member>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => WriteError::NoLeader,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )) => WriteError::Busy,
            e => WriteError::Failed(e.to_string()),
        };
        self.raft
            .add_learner(id, member, true)
            .await
            .map_err(fail)?;
        if voter {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(fail)?;
        }
        let deadline = tokio::time::Instant::now() + WRITE_PATIENCE;
        self.commit(Command::PutNode(node, info), deadline).await
    }

    /// Serve one Raft stream the peer `caller` opened (the node its certificate names):
    /// requests in, replies out, until it closes. A request that claims to come from
    /// another node ends the stream.
    pub async fn serve_stream(self: Arc<Self>, caller: NodeId, incoming: Incoming) {
        let (mut tx, mut rx) = incoming.framed::<RaftRequest, RaftReply>();
        while let Some(request) = rx.next().await {
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("bad raft frame: {e}");
                    return;
                }
            };
            let reply = match self.check_caller(&caller, &request) {
                Ok(()) => self.handle(request).await,
                Err(why) => {
                    self.refused.inc();
                    tracing::warn!(peer = %caller, "refused a raft request: {why}");
                    match request {
                        RaftRequest::Write(_) | RaftRequest::Join { .. } => {
                            RaftReply::Write(Err(WriteError::Refused(why)))
                        }
                        // A Raft message under another node's name: nothing to answer.
                        _ => return,
                    }
                }
            };
            if tx.send(&reply).await.is_err() {
                return;
            }
        }
    }

    /// Whether the node `caller` (named by its certificate) may send `request`. Raft
    /// messages must come from the candidate or leader they name; a join adds only the
    /// node that asks; writes come only from members of the cluster, and a node puts
    /// only its own record.
    fn check_caller(&self, caller: &NodeId, request: &RaftRequest) -> Result<(), String> {
        let id = raft_id(caller);
        let sender = match request {
            RaftRequest::Append(rpc) => rpc.vote.leader_id().voted_for(),
            // A vote from outside the membership this node knows would still move its
            // term on and unseat a leader. (Appends are not checked so: a joining node
            // learns the membership from them.)
            RaftRequest::Vote(_) if !self.is_member(caller) => {
                return Err(format!("{caller} asked for a vote but is not a member"));
            }
            RaftRequest::Vote(rpc) => rpc.vote.leader_id().voted_for(),
            RaftRequest::Snapshot(rpc) => rpc.vote.leader_id().voted_for(),
            RaftRequest::Join { member, .. } => {
                return if member.name == caller.as_str() {
                    Ok(())
                } else {
                    Err(format!("{caller} asked to add {}", member.name))
                };
            }
            RaftRequest::Write(command) => {
                if !self.is_member(caller) {
                    return Err(format!("{caller} is not a member of the cluster"));
                }
                return match command {
                    Command::PutNode(node, _) if node != caller => {
                        Err(format!("{caller} wrote the record of {node}"))
                    }
                    _ => Ok(()),
                };
            }
        };
        if sender == Some(id) {
            Ok(())
        } else {
            Err(format!(
                "{caller} sent a raft message in another node's name"
            ))
        }
    }

    /// Whether `node` is a voter or learner of the membership this node knows.
    fn is_member(&self, node: &NodeId) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&raft_id(node))
            .is_some_and(|m| m.name == node.as_str())
    }

    async fn handle(&self, request: RaftRequest) -> RaftReply {
        match request {
            RaftRequest::Append(rpc) => RaftReply::Append(self.raft.append_entries(rpc).await),
            RaftRequest::Vote(rpc) => RaftReply::Vote(self.raft.vote(rpc).await),
            RaftRequest::Snapshot(rpc) => {
                RaftReply::Snapshot(self.raft.install_snapshot(rpc).await)
            }
            // Committed here if this node leads, never forwarded again: the leader
            // checks the certificate of whoever sends it a write, so the writer asks
            // the leader itself (`NoLeader` makes it look again).
            RaftRequest::Write(command) => {
                RaftReply::Write(match self.raft.client_write(command).await {
                    Ok(w) => Ok(Written {
                        response: w.response().clone(),
                        index: w.log_id().index,
                    }),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        Err(WriteError::NoLeader)
                    }
                    Err(e) => Err(WriteError::Failed(e.to_string())),
                })
            }
            RaftRequest::Join {
                member,
                info,
                voter,
            } => RaftReply::Write(match self.leader_member() {
                Some(l) if l == self.me => self.admit(member, info, voter).await,
                Some(l) => Err(WriteError::Redirect(l)),
                None => Err(WriteError::NoLeader),
            }),
        }
    }

    fn leader_member(&self) -> Option<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }

    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        // The index and digest as the state machine published them together.
        let applied = *self.applied.borrow();
        let membership = m.membership_config.membership();
        let name = |id: &RaftId| {
            membership
                .get_node(id)
                .map_or_else(|| id.to_string(), |n| n.name.clone())
        };
        let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, matched)| {
                        let at = matched.map_or(0, |l| l.index);
                        (name(id), last.saturating_sub(at))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status {
            node: self.me.name.clone(),
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Candidate => "candidate",
                ServerState::Follower => "follower",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            leader: m.current_leader.as_ref().map(name),
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|_| applied.index),
            applied_digest: hex::encode(applied.digest),
            voters: voters.iter().map(name).collect(),
            learners: membership.learner_ids().map(|id| name(&id)).collect(),
            lag,
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
