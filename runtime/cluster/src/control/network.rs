//! Raft RPCs over the peer transport: one `Purpose::Raft` stream per call.
//!
//! The dialling side implements openraft's `RaftNetwork`; the accepting side is
//! `ControlPlane::serve_stream`. Follower → leader writes and join requests travel the
//! same way, so an operator can talk to any node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::state::{Command, NodeInfo, Response};
use super::{Member, RaftId, TypeConfig};
use edgeroom_proto::ids::NodeId;
use edgeroom_transport::{Endpoint, Peer, Purpose};

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<RaftId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write submitted on a follower, for the leader to commit.
    Write(Command),
    /// A node asks to be added to the cluster.
    Join {
        member: Member,
        info: NodeInfo,
        voter: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<RaftId>, RaftError<RaftId>>),
    Vote(Result<VoteResponse<RaftId>, RaftError<RaftId>>),
    Snapshot(Result<InstallSnapshotResponse<RaftId>, RaftError<RaftId, InstallSnapshotError>>),
    Write(Result<Written, WriteError>),
}

/// A committed write: the state machine's response and the entry's log index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Written {
    pub response: Response,
    pub index: u64,
}

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("no leader: the control plane has no quorum right now")]
    NoLeader,
    /// Another membership change is under way (nodes joining at once): try again.
    #[error("the cluster is changing its membership; try again")]
    Busy,
    #[error("the control plane refused the write: {0}")]
    Failed(String),
    /// The node that sent the request may not make it (checked against the name in
    /// its certificate, not the request's contents).
    #[error("refused: {0}")]
    Refused(String),
    /// A join goes to the leader itself, which checks the joiner's certificate: ask it.
    #[error("not the leader: ask {0}")]
    Redirect(Member),
}

/// Connections to other nodes, shared by every Raft replication stream and forwarder.
///
/// A connection is dialled by a task of its own, not inside the call that needed it:
/// a QUIC handshake over a long link takes two round trips, which may be longer than
/// one Raft RPC may wait, and a dial cancelled with its RPC would be started again
/// and cancelled again forever. A call waits for the dial as long as it may; the dial
/// goes on, and the next call finds the connection. A connection is given up only
/// once it has closed (a restarted peer answers the old one with a reset), never
/// because one call timed out.
#[derive(Clone)]
pub struct Network {
    endpoint: Arc<Endpoint>,
    peers: Arc<Mutex<HashMap<NodeId, Slot>>>,
    /// The dials under way; they end with the network.
    dials: Arc<Mutex<JoinSet<()>>>,
}

/// A peer's connection, or the dial that will make it.
#[derive(Clone)]
enum Slot {
    Ready(Peer),
    /// Resolves to the connection, or why there is none.
    Dialing(watch::Receiver<Option<Result<Peer, String>>>),
}

impl Network {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        Self {
            endpoint,
            peers: Arc::default(),
            dials: Arc::default(),
        }
    }

    /// One request, one reply, on a fresh stream (about 150 µs on loopback).
    pub async fn call(
        &self,
        to: &Member,
        request: &RaftRequest,
        timeout: Duration,
    ) -> anyhow::Result<RaftReply> {
        let result = tokio::time::timeout(timeout, self.call_inner(to, request)).await;
        result.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout:?}")))
    }

    async fn call_inner(&self, to: &Member, request: &RaftRequest) -> anyhow::Result<RaftReply> {
        let peer = self.peer(to).await?;
        let (mut tx, mut rx) = peer.open::<RaftRequest, RaftReply>(Purpose::Raft).await?;
        tx.send(request).await?;
        match rx.next().await {
            Some(reply) => Ok(reply?),
            None => anyhow::bail!("{} closed the stream without a reply", to.name),
        }
    }

    /// The connection to `to`: the one there is if it is still open, else the one a
    /// dial (started now, or already under way) makes.
    async fn peer(&self, to: &Member) -> anyhow::Result<Peer> {
        let node = to.node_id()?;
        let mut dialing = {
            let mut peers = self.peers.lock();
            match peers.get(&node) {
                Some(Slot::Ready(peer)) if !peer.is_closed() => return Ok(peer.clone()),
                Some(Slot::Dialing(rx)) => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    peers.insert(node.clone(), Slot::Dialing(rx.clone()));
                    let (endpoint, peers, addr) =
                        (self.endpoint.clone(), self.peers.clone(), to.addr()?);
                    let mut dials = self.dials.lock();
                    while dials.try_join_next().is_some() {}
                    dials.spawn(async move {
                        let dialled = endpoint.connect(&node, addr).await;
                        let mut peers = peers.lock();
                        match &dialled {
                            Ok(peer) => peers.insert(node, Slot::Ready(peer.clone())),
                            // The next call dials again.
                            Err(_) => peers.remove(&node),
                        };
                        let _ = tx.send(Some(dialled.map_err(|e| format!("{e:#}"))));
                    });
                    rx
                }
            }
        };
        let done = dialing
            .wait_for(Option::is_some)
            .await
            .map_err(|_| anyhow::anyhow!("the dial to {} was dropped", to.name))?;
        match done.clone() {
            Some(Ok(peer)) => Ok(peer),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => Err(anyhow::anyhow!("the dial to {} has no result", to.name)),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerRpc;

    async fn new_client(&mut self, target: RaftId, node: &Member) -> PeerRpc {
        PeerRpc {
            network: self.clone(),
            target,
            member: node.clone(),
        }
    }
}

/// Raft's view of one peer.
pub struct PeerRpc {
    network: Network,
    target: RaftId,
    member: Member,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<RaftId, Member, RaftError<RaftId, E>>>;

impl PeerRpc {
    async fn call(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftReply, Unreachable> {
        self.network
            .call(&self.member, &request, option.hard_ttl())
            .await
            .map_err(|e| Unreachable::new(&std::io::Error::other(format!("{e:#}"))))
    }

    // The error type is openraft's, fixed by `RaftNetwork`.
    #[allow(clippy::result_large_err)]
    fn remote<T, E: std::error::Error>(
        &self,
        result: Result<T, RaftError<RaftId, E>>,
    ) -> RpcResult<T, E> {
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn unexpected<E>(what: &str) -> RPCError<RaftId, Member, E>
where
    E: std::error::Error,
{
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "unexpected reply to {what}"
    ))))
}

impl RaftNetwork<TypeConfig> for PeerRpc {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftId>> {
        match self.call(RaftRequest::Append(rpc), &option).await? {
            RaftReply::Append(r) => self.remote(r),
            _ => Err(unexpected("append")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<RaftId>, InstallSnapshotError> {
        match self.call(RaftRequest::Snapshot(rpc), &option).await? {
            RaftReply::Snapshot(r) => self.remote(r),
            _ => Err(unexpected("install_snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<RaftId>> {
        match self.call(RaftRequest::Vote(rpc), &option).await? {
            RaftReply::Vote(r) => self.remote(r),
            _ => Err(unexpected("vote")),
        }
    }
}
