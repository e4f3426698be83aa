//! The data plane's links between nodes: room messages out to the nodes that want
//! them, in from peers to this node's rooms.
//!
//! Each node keeps one outgoing `Rooms` stream per peer, fed by a bounded queue, and
//! starts every connection with its full interest list. What arrives on a peer's stream
//! goes, in order, to one channel that the node routes to its rooms: one reader per
//! peer, so a room sees each peer's messages in the order they were sent. A message
//! that must reach a whole region (`Relay::relayed`) and came from another region is
//! passed on here to the other interested nodes of this region: one cross-region copy
//! per region, fanned out at home.
//!
//! The room messages themselves are the room's business (`room::replica`): this module
//! moves them, tracks interest, and turns the failure detector's verdicts into
//! `PeerDown` (a node's interests and presence vanish) and reconnections into `PeerUp`
//! (rooms say hello again and resync state). A peer announcing members in a room that
//! has members here becomes `Joined`: that room greets it, so replicas find each other
//! however their first members' joins and the peers' revivals interleave.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::control::ControlPlane;
use super::health::Health;
use super::interest::{Announce, Interest, RoomRef};
use crate::ids::NodeId;
use crate::transport::{Endpoint, Incoming, Purpose};

/// Messages queued to one peer at most; beyond, new ones are dropped (events come back
/// through gap repair, state through the next sync, presence with the next hello).
const PEER_QUEUE: usize = 65_536;
/// Deliveries waiting for the node's rooms at most (the peer readers wait beyond it).
const ROOMS_QUEUE: usize = 4096;
/// How often the failure detector's verdicts are read.
const VERDICT_EVERY: Duration = Duration::from_millis(100);
/// Pause before dialling a peer again after its link failed.
const REDIAL_AFTER: Duration = Duration::from_millis(250);

/// A room message the replicator carries without looking inside, except for this.
pub trait Relay {
    /// Whether every interested node of a region needs it (a relay fans it out).
    fn relayed(&self) -> bool;
}

/// One frame on a `Rooms` stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum PeerMsg<M> {
    Interest(Announce),
    /// "Send me your full interest": a node that declared the sender dead forgot it,
    /// and the sender may not have noticed anything.
    AskInterest,
    Room {
        room: RoomRef,
        msg: M,
    },
}

/// What the replicator hands to this node's rooms.
#[derive(Debug)]
pub enum Delivery<M> {
    Room {
        from: NodeId,
        room: RoomRef,
        msg: M,
    },
    /// This node's link to `node` is (re)established: rooms it shares say hello.
    PeerUp(NodeId),
    /// `node` now has members in `room`, which has members here too: the room greets it.
    Joined {
        node: NodeId,
        room: RoomRef,
    },
    /// `node` was declared dead: its presence goes, its gaps will not be filled.
    PeerDown(NodeId),
}

/// What a peer's link task is handed, in order.
enum LinkCmd<M> {
    Send(PeerMsg<M>),
    /// The node is stopping: send what is queued, end the stream once the peer has
    /// it all, then say so.
    Drain(tokio::sync::oneshot::Sender<()>),
}

pub struct Replicator<M> {
    me: NodeId,
    region: String,
    interest: Mutex<Interest>,
    links: Mutex<HashMap<NodeId, mpsc::Sender<LinkCmd<M>>>>,
    to_rooms: mpsc::Sender<Delivery<M>>,
    /// Region-wide messages this node sent to peers (originated or relayed).
    relayed_sent: std::sync::atomic::AtomicU64,
}

impl<M> Replicator<M>
where
    M: Relay + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A replicator and the channel its deliveries come out of.
    pub fn new(me: NodeId, region: String) -> (Arc<Self>, mpsc::Receiver<Delivery<M>>) {
        let (to_rooms, rx) = mpsc::channel(ROOMS_QUEUE);
        let this = Arc::new(Self {
            me,
            region,
            interest: Mutex::new(Interest::new()),
            links: Mutex::new(HashMap::new()),
            to_rooms,
            relayed_sent: Default::default(),
        });
        (this, rx)
    }

    /// Queue `msg` to `node`. False if it was dropped (no link yet, or the queue is full).
    pub fn send(&self, node: &NodeId, msg: PeerMsg<M>) -> bool {
        let link = self.links.lock().get(node).cloned();
        link.is_some_and(|l| l.try_send(LinkCmd::Send(msg)).is_ok())
    }

    /// Every other node with members in `room`.
    pub fn interested(&self, room: &RoomRef) -> Vec<NodeId> {
        self.interest.lock().nodes(room)
    }

    /// Send a message of `room` to every node that wants it: for a relayed message one
    /// node per other region (it fans out there), otherwise every interested node.
    pub fn publish(&self, room: &RoomRef, msg: M) {
        let targets = match msg.relayed() {
            true => self.interest.lock().targets(room, &self.region),
            false => self.interested(room),
        };
        self.send_each(&targets, room, msg);
    }

    /// How many region-wide messages (events) this node has sent to peers.
    pub fn relayed_sent(&self) -> u64 {
        self.relayed_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn send_each(&self, targets: &[NodeId], room: &RoomRef, msg: M) {
        let Some((last, rest)) = targets.split_last() else {
            return;
        };
        if msg.relayed() {
            self.relayed_sent
                .fetch_add(targets.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        for node in rest {
            let msg = PeerMsg::Room {
                room: room.clone(),
                msg: msg.clone(),
            };
            self.send(node, msg);
        }
        self.send(
            last,
            PeerMsg::Room {
                room: room.clone(),
                msg,
            },
        );
    }

    /// A member joined `room` here; the first one makes this node interested.
    pub fn local_join(&self, room: &RoomRef) {
        let announce = self.interest.lock().local_join(room);
        self.announce(announce);
    }

    /// A member left `room` here; the last one ends this node's interest.
    pub fn local_leave(&self, room: &RoomRef) {
        let announce = self.interest.lock().local_leave(room);
        self.announce(announce);
    }

    fn announce(&self, announce: Option<Announce>) {
        let Some(announce) = announce else { return };
        let links: Vec<_> = self.links.lock().values().cloned().collect();
        for link in links {
            let _ = link.try_send(LinkCmd::Send(PeerMsg::Interest(announce.clone())));
        }
    }

    /// Read a peer's `Rooms` stream until it ends: interest into the table, room
    /// messages (after relaying them inside this region) to the rooms.
    pub async fn serve_stream(self: Arc<Self>, from: NodeId, incoming: Incoming) {
        let (_tx, mut rx) = incoming.framed::<PeerMsg<M>, ()>();
        while let Some(frame) = rx.next().await {
            let msg = match frame {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::warn!(peer = %from, "bad rooms frame, dropping the stream: {e}");
                    return;
                }
            };
            match msg {
                PeerMsg::Interest(announce) => {
                    let shared = self.interest.lock().apply(&from, announce);
                    for room in shared {
                        let node = from.clone();
                        if self
                            .to_rooms
                            .send(Delivery::Joined { node, room })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                PeerMsg::AskInterest => {
                    let full = self.interest.lock().full();
                    self.send(&from, PeerMsg::Interest(full));
                }
                PeerMsg::Room { room, msg } => {
                    if msg.relayed() {
                        let onward = {
                            let interest = self.interest.lock();
                            match interest.region_of(&from) == Some(self.region.as_str()) {
                                true => Vec::new(),
                                false => interest.fan_out(&room, &self.region, &from),
                            }
                        };
                        // Cloned only when there is somewhere to pass it on to.
                        if !onward.is_empty() {
                            self.send_each(&onward, &room, msg.clone());
                        }
                    }
                    let delivery = Delivery::Room {
                        from: from.clone(),
                        room,
                        msg,
                    };
                    if self.to_rooms.send(delivery).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Keep a link to every node the control plane knows, and turn health verdicts into
    /// `PeerDown`, until aborted.
    pub async fn run(
        self: Arc<Self>,
        control: Arc<ControlPlane>,
        endpoint: Arc<Endpoint>,
        health: Arc<Health>,
    ) {
        let mut links = LinkTasks::default();
        let tasks = &mut links.0;
        let mut applied = control.applied();
        let mut verdicts = tokio::time::interval(VERDICT_EVERY);
        let mut dead: HashSet<NodeId> = HashSet::new();
        loop {
            let nodes: Vec<(NodeId, SocketAddr, String)> = control
                .state()
                .nodes
                .iter()
                .filter(|(id, _)| **id != self.me)
                .map(|(id, info)| (id.clone(), info.peer_addr, info.region.clone()))
                .collect();
            tasks.retain(|id, task| {
                let keep = nodes.iter().any(|(n, ..)| n == id);
                if !keep {
                    task.abort();
                    self.links.lock().remove(id);
                    self.interest.lock().forget(id);
                }
                keep
            });
            for (node, addr, region) in nodes {
                self.interest.lock().set_region(&node, &region);
                if tasks.contains_key(&node) {
                    continue;
                }
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                self.links.lock().insert(node.clone(), tx);
                let task =
                    tokio::spawn(self.clone().link(endpoint.clone(), node.clone(), addr, rx));
                tasks.insert(node, task);
            }
            loop {
                tokio::select! {
                    changed = applied.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    _ = verdicts.tick() => {
                        for node in tasks.keys() {
                            let alive = health.is_alive(node);
                            if !alive && dead.insert(node.clone()) {
                                tracing::warn!(%node, "peer declared dead: its rooms' presence goes");
                                self.interest.lock().forget(node);
                                let _ = self.to_rooms.send(Delivery::PeerDown(node.clone())).await;
                            } else if alive && dead.remove(node) {
                                // Back (a healed partition need not break the
                                // connection): it forgot our interests and we forgot
                                // its (it may not have declared us dead, so it is
                                // asked), and rooms start over with it.
                                tracing::info!(%node, "peer alive again");
                                let full = self.interest.lock().full();
                                self.send(node, PeerMsg::Interest(full));
                                self.send(node, PeerMsg::AskInterest);
                                let _ = self.to_rooms.send(Delivery::PeerUp(node.clone())).await;
                            }
                        }
                    }
                }
            }
        }
    }

    /// One peer's outgoing link, redialled whenever it fails. Every connection starts
    /// with this node's full interest, then tells the rooms the peer is reachable.
    async fn link(
        self: Arc<Self>,
        endpoint: Arc<Endpoint>,
        node: NodeId,
        addr: SocketAddr,
        mut rx: mpsc::Receiver<LinkCmd<M>>,
    ) {
        loop {
            let result: anyhow::Result<()> = async {
                let peer =
                    tokio::time::timeout(Duration::from_secs(3), endpoint.connect(&node, addr))
                        .await??;
                let (mut tx, _rx) = peer.open::<PeerMsg<M>, ()>(Purpose::Rooms).await?;
                let full = self.interest.lock().full();
                tx.send(&PeerMsg::Interest(full)).await?;
                let _ = self.to_rooms.send(Delivery::PeerUp(node.clone())).await;
                while let Some(mut cmd) = rx.recv().await {
                    // Batch what is already queued into one flush.
                    loop {
                        match cmd {
                            LinkCmd::Send(msg) => tx.feed(&msg).await?,
                            LinkCmd::Drain(done) => {
                                tx.flush().await?;
                                let stream = tx.get_mut();
                                stream.finish()?;
                                // Resolves once the peer has read all of it.
                                let _ = stream.stopped().await;
                                let _ = done.send(());
                                return Ok(());
                            }
                        }
                        match rx.try_recv() {
                            Ok(more) => cmd = more,
                            Err(_) => break,
                        }
                    }
                    tx.flush().await?;
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => return,
                Err(e) => tracing::debug!(peer = %node, "rooms link down: {e:#}"),
            }
            tokio::time::sleep(REDIAL_AFTER).await;
        }
    }

    /// The node is stopping: deliver what every link has queued, waiting at most
    /// `patience` (a peer that is down gets nothing more).
    pub async fn drain(&self, patience: Duration) {
        let links: Vec<_> = self.links.lock().values().cloned().collect();
        let drained = links.into_iter().map(|link| async move {
            let (done, rx) = tokio::sync::oneshot::channel();
            if link.send(LinkCmd::Drain(done)).await.is_ok() {
                let _ = rx.await;
            }
        });
        let _ = tokio::time::timeout(patience, futures_util::future::join_all(drained)).await;
    }
}

/// One link task per peer, aborted with the set (when `run` ends or is aborted).
#[derive(Default)]
struct LinkTasks(HashMap<NodeId, tokio::task::JoinHandle<()>>);

impl Drop for LinkTasks {
    fn drop(&mut self) {
        self.0.values().for_each(|task| task.abort());
    }
}
