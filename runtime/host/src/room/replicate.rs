//! The data plane's links between nodes: room messages out to the nodes that want
//! them, in from peers to this node's rooms.
//!
//! Each node keeps one outgoing `Rooms` stream per peer, fed by a bounded queue, and
//! starts every connection with its full interest list and a request for the peer's. What arrives on a peer's stream
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
//!
//! Links never go stale: every `Rooms` stream starts with the opener's incarnation (a
//! random number each process picks at start) and the acceptor answers with its own.
//! A stream from a new incarnation of a peer means it restarted: its old self is
//! declared gone (`PeerDown`) and this node's link to it is redialled at once, as it
//! is when the failure detector finds a dead peer alive again. Messages queued for a
//! peer wait in its link's queue across redials; what was written into a connection
//! that died is repaired after the redial (hellos carry where each replica is).
//!
//! Rooms never wait on a link: a message that finds its peer's queue full is dropped
//! (`edgeroom_peer_messages_dropped`), and once that queue has drained the link is
//! treated as reconnected: the peer gets this node's full interest again (an
//! announcement may have been among the dropped) and the rooms say hello (`PeerUp`),
//! which repairs the events and changes that were dropped like a dead connection's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use edgeroom_cluster::control::ControlPlane;
use edgeroom_cluster::health::Health;
use edgeroom_proto::ids::NodeId;
use edgeroom_room::interest::{Announce, Interest, RoomRef, Since};
use edgeroom_transport::{Endpoint, FrameError, FrameTx, Incoming, Peer, Purpose};

use crate::metrics::{KindLabel, PathGauges, PeerLabel};
use tokio::sync::watch;

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
    /// What it is, for the count of messages sent (`edgeroom_peer_messages_sent`).
    fn kind(&self) -> &'static str;
}

/// One frame on a `Rooms` stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum PeerMsg<M> {
    /// The first frame of every stream: which incarnation of its node opened it.
    Open {
        incarnation: u64,
    },
    Interest(Announce),
    /// "Send me your full interest": at the start of every link session (its opener
    /// may have declared the receiver dead and forgotten it, unnoticed there).
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
    /// `node` now has members in `room` (since `since`, by its wall clock), which has
    /// members here too: the room greets it.
    Joined {
        node: NodeId,
        room: RoomRef,
        since: Since,
    },
    /// `node` was declared dead: its presence goes, its gaps will not be filled.
    PeerDown(NodeId),
}

/// The acceptor's one frame back on a `Rooms` stream: its incarnation.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Opened {
    pub incarnation: u64,
}

/// This node's outgoing link to one peer.
struct Link<M> {
    tx: mpsc::Sender<LinkCmd<M>>,
    /// Bumped to make the link drop its connection and dial again.
    reset: watch::Sender<u64>,
    /// The incarnation of the peer the current connection reaches (0: not connected).
    connected_to: Arc<std::sync::atomic::AtomicU64>,
    /// Connections made so far (a revived peer is redialled only if the connection in
    /// use is the one from before it was declared dead).
    sessions: Arc<std::sync::atomic::AtomicU64>,
    /// A message was dropped since the link last (re)started its session.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// The connection in use, if any (for its path's figures).
    conn: Arc<Mutex<Option<Peer>>>,
}

/// What a peer's link task is handed, in order.
enum LinkCmd<M> {
    Send(PeerMsg<M>),
    /// The node is stopping: send what is queued, end the stream once the peer has
    /// it all, then say so.
    Drain(tokio::sync::oneshot::Sender<()>),
}

/// What a replicator counts (the node exposes them at `/metrics`).
#[derive(Clone, Default)]
pub struct LinkMetrics {
    /// Frames from peers that do not parse.
    pub refused: Counter,
    /// Messages dropped because they would not fit a peer frame.
    pub too_large: Counter,
    /// Messages written to peers' streams, by kind.
    pub sent: Family<KindLabel, Counter>,
    /// Messages dropped unsent (the peer's queue was full, or no link), by kind.
    pub dropped: Family<KindLabel, Counter>,
    /// Messages waiting in each peer's link.
    pub queued: Family<PeerLabel, Gauge>,
    /// Each link's connection: round trip, congestion window, packets lost.
    pub path: PathGauges,
}

pub struct Replicator<M> {
    me: NodeId,
    region: String,
    /// This process's incarnation: a fresh random number at every start.
    incarnation: u64,
    health: Arc<Health>,
    peer_queue: usize,
    metrics: LinkMetrics,
    interest: Mutex<Interest>,
    links: Mutex<HashMap<NodeId, Link<M>>>,
    /// The incarnation each peer's streams last came from.
    peers_seen: Mutex<HashMap<NodeId, u64>>,
    to_rooms: mpsc::Sender<Delivery<M>>,
    /// Region-wide messages this node sent to peers (originated or relayed).
    relayed_sent: std::sync::atomic::AtomicU64,
}

impl<M> Replicator<M>
where
    M: Relay + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A replicator and the channel its deliveries come out of.
    /// `peer_queue`: messages queued to one peer at most (`Limits::peer_queue`).
    pub fn new(
        me: NodeId,
        region: String,
        health: Arc<Health>,
        peer_queue: usize,
        metrics: LinkMetrics,
    ) -> (Arc<Self>, mpsc::Receiver<Delivery<M>>) {
        let (to_rooms, rx) = mpsc::channel(ROOMS_QUEUE);
        let this = Arc::new(Self {
            me,
            region,
            incarnation: rand::random::<u64>().max(1),
            health,
            peer_queue,
            metrics,
            interest: Mutex::new(Interest::new()),
            links: Mutex::new(HashMap::new()),
            peers_seen: Mutex::new(HashMap::new()),
            to_rooms,
            relayed_sent: Default::default(),
        });
        (this, rx)
    }

    /// Queue `msg` to `node`. False if it was dropped (no link yet, or the queue is
    /// full: the link repairs what it lost once it has drained, see the module doc).
    pub fn send(&self, node: &NodeId, msg: PeerMsg<M>) -> bool {
        let link = self
            .links
            .lock()
            .get(node)
            .map(|l| (l.tx.clone(), l.lost.clone()));
        let kind = msg.kind();
        let sent = match link {
            Some((tx, lost)) => {
                let sent = tx.try_send(LinkCmd::Send(msg)).is_ok();
                if !sent {
                    lost.store(true, std::sync::atomic::Ordering::Release);
                }
                sent
            }
            None => false,
        };
        if !sent {
            count(&self.metrics.dropped, kind);
        }
        sent
    }

    /// Other nodes that answer the failure detector now (a peer that went quiet for a
    /// couple of heartbeats is not waited for).
    pub fn alive_peers(&self) -> Vec<NodeId> {
        let nodes: Vec<NodeId> = self.links.lock().keys().cloned().collect();
        nodes
            .into_iter()
            .filter(|n| self.health.is_responsive(n))
            .collect()
    }

    /// The region `node` is in, as the control plane says.
    pub fn region_of(&self, node: &NodeId) -> Option<String> {
        self.interest.lock().region_of(node).map(str::to_owned)
    }

    /// Whether this node hears too few of the cluster to serve (see
    /// `edgeroom_cluster::minority`).
    pub fn cut_off(&self) -> bool {
        let nodes: Vec<NodeId> = self.links.lock().keys().cloned().collect();
        let alive = nodes.iter().filter(|n| self.health.is_alive(n)).count();
        edgeroom_cluster::minority(nodes.len() + 1, alive + 1)
    }

    /// How many connections the link to `node` has made.
    fn sessions(&self, node: &NodeId) -> u64 {
        self.links
            .lock()
            .get(node)
            .map_or(0, |l| l.sessions.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Drop this node's connection to `node` and dial again at once.
    fn redial(&self, node: &NodeId) {
        self.health.bump_generation(node);
        if let Some(link) = self.links.lock().get(node) {
            link.reset.send_modify(|g| *g += 1);
        }
    }

    /// Whether this node has members in `room` (or is adopting one there).
    pub fn is_local(&self, room: &RoomRef) -> bool {
        self.interest.lock().is_local(room)
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

    /// A member joined `room` here at `now` (wall clock); the first one makes this
    /// node interested.
    pub fn local_join(&self, room: &RoomRef, now: Since) {
        let announce = self.interest.lock().local_join(room, now);
        self.announce(announce);
    }

    /// A member left `room` here; the last one ends this node's interest.
    pub fn local_leave(&self, room: &RoomRef) {
        let announce = self.interest.lock().local_leave(room);
        self.announce(announce);
    }

    fn announce(&self, announce: Option<Announce>) {
        let Some(announce) = announce else { return };
        let nodes: Vec<NodeId> = self.links.lock().keys().cloned().collect();
        for node in nodes {
            self.send(&node, PeerMsg::Interest(announce.clone()));
        }
    }

    /// Serve the `Rooms` streams peers open (handed over by the cluster's mesh) until
    /// the cluster stops handing them over; each stream's reader is owned here.
    pub async fn serve_streams(self: Arc<Self>, mut streams: mpsc::Receiver<(NodeId, Incoming)>) {
        let mut readers = tokio::task::JoinSet::new();
        while let Some((from, incoming)) = streams.recv().await {
            readers.spawn(self.clone().serve_stream(from, incoming));
            while readers.try_join_next().is_some() {}
        }
    }

    /// Read a peer's `Rooms` stream until it ends: interest into the table, room
    /// messages (after relaying them inside this region) to the rooms.
    pub async fn serve_stream(self: Arc<Self>, from: NodeId, incoming: Incoming) {
        let (mut tx, mut rx) = incoming.framed::<PeerMsg<M>, Opened>();
        let incarnation = match rx.next().await {
            Some(Ok(PeerMsg::Open { incarnation })) => incarnation,
            Some(Ok(_)) => {
                tracing::warn!(peer = %from, "rooms stream without its opening frame; dropped");
                return;
            }
            Some(Err(e)) => {
                self.metrics.refused.inc();
                tracing::warn!(peer = %from, "bad rooms frame, dropping the stream: {e}");
                return;
            }
            None => return,
        };
        if tx
            .send(&Opened {
                incarnation: self.incarnation,
            })
            .await
            .is_err()
        {
            return;
        }
        if !self.opened_by(&from, incarnation).await {
            return;
        }
        while let Some(frame) = rx.next().await {
            let msg = match frame {
                Ok(msg) => msg,
                Err(e) => {
                    self.metrics.refused.inc();
                    tracing::warn!(peer = %from, "bad rooms frame, dropping the stream: {e}");
                    return;
                }
            };
            match msg {
                PeerMsg::Interest(announce) => {
                    let shared = self.interest.lock().apply(&from, announce);
                    for (room, since) in shared {
                        let node = from.clone();
                        if self
                            .to_rooms
                            .send(Delivery::Joined { node, room, since })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                PeerMsg::Open { .. } => {
                    tracing::warn!(peer = %from, "a second opening frame; dropping the stream");
                    return;
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

    /// A stream from `from`'s incarnation `incarnation` begins. A new incarnation
    /// means the peer restarted: what its old self held here goes (`PeerDown`), and
    /// this node's link, which may still reach the old one, dials afresh. False when
    /// the node's rooms are gone (it is stopping).
    async fn opened_by(&self, from: &NodeId, incarnation: u64) -> bool {
        let before = self.peers_seen.lock().insert(from.clone(), incarnation);
        let restarted = before.is_some_and(|b| b != incarnation);
        let stale_link = self.links.lock().get(from).is_some_and(|l| {
            let to = l.connected_to.load(std::sync::atomic::Ordering::Acquire);
            to != 0 && to != incarnation
        });
        if restarted {
            tracing::info!(peer = %from, "peer restarted: its old presence goes");
            self.interest.lock().forget(from);
            if self
                .to_rooms
                .send(Delivery::PeerDown(from.clone()))
                .await
                .is_err()
            {
                return false;
            }
        }
        if restarted || stale_link {
            self.redial(from);
        }
        true
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
        // Peers declared dead, with the link's connection count at the time.
        let mut dead: HashMap<NodeId, u64> = HashMap::new();
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
                let (tx, rx) = mpsc::channel(self.peer_queue);
                let (reset, reset_rx) = watch::channel(0);
                let connected_to = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let sessions = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let conn = Arc::new(Mutex::new(None));
                let link = Link {
                    tx,
                    reset,
                    connected_to: connected_to.clone(),
                    sessions: sessions.clone(),
                    lost: lost.clone(),
                    conn: conn.clone(),
                };
                self.links.lock().insert(node.clone(), link);
                let dial = Dial {
                    endpoint: endpoint.clone(),
                    node: node.clone(),
                    addr,
                    reset: reset_rx,
                    connected_to,
                    sessions,
                    lost,
                    conn,
                    queued: self
                        .metrics
                        .queued
                        .get_or_create(&PeerLabel {
                            peer: node.to_string(),
                        })
                        .clone(),
                };
                let task = tokio::spawn(self.clone().link(dial, rx));
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
                        self.read_paths();
                        for node in tasks.keys() {
                            let alive = health.is_alive(node);
                            if !alive && !dead.contains_key(node) {
                                dead.insert(node.clone(), self.sessions(node));
                                tracing::warn!(%node, "peer declared dead: its rooms' presence goes");
                                self.interest.lock().forget(node);
                                let _ = self.to_rooms.send(Delivery::PeerDown(node.clone())).await;
                            } else if let Some(at_death) = dead.get(node).copied().filter(|_| alive) {
                                dead.remove(node);
                                // Back: its connection may be one a restart or a long
                                // partition left dead, so it is dialled afresh. The new
                                // connection starts with our full interest and asks for
                                // its (forgotten here, and it may not have noticed
                                // anything), and rooms start over with it once it is up.
                                // A link that came up since the verdict has done so.
                                tracing::info!(%node, "peer alive again");
                                if self.sessions(node) == at_death {
                                    self.redial(node);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Read every link's connection figures into the gauges.
    fn read_paths(&self) {
        let links: Vec<(NodeId, Option<Peer>)> = self
            .links
            .lock()
            .iter()
            .map(|(n, l)| (n.clone(), l.conn.lock().clone()))
            .collect();
        let g = &self.metrics.path;
        for (node, conn) in links {
            let Some(conn) = conn else { continue };
            let path = conn.path();
            let label = PeerLabel {
                peer: node.to_string(),
            };
            g.rtt_seconds
                .get_or_create(&label)
                .set(path.rtt.as_secs_f64());
            g.cwnd_bytes.get_or_create(&label).set(path.cwnd as i64);
            g.packets_sent
                .get_or_create(&label)
                .set(path.sent_packets as i64);
            g.packets_lost
                .get_or_create(&label)
                .set(path.lost_packets as i64);
        }
    }

    /// One peer's outgoing link, redialled whenever it fails or is reset. Every
    /// connection starts with this node's incarnation and full interest, then tells
    /// the rooms the peer is reachable (they say hello again: anything written into a
    /// connection that died is repaired from there).
    async fn link(self: Arc<Self>, mut dial: Dial, mut rx: mpsc::Receiver<LinkCmd<M>>) {
        loop {
            dial.reset.borrow_and_update();
            let mut reset = dial.reset.clone();
            let result = tokio::select! {
                r = self.link_session(&dial, &mut rx) => r,
                _ = reset.changed() => Err(anyhow::anyhow!("reset")),
            };
            dial.connected_to
                .store(0, std::sync::atomic::Ordering::Release);
            *dial.conn.lock() = None;
            match result {
                Ok(()) => return,
                Err(e) => tracing::debug!(peer = %dial.node, "rooms link down: {e:#}"),
            }
            // A reset dials again at once; a failure waits a little.
            if !dial.reset.has_changed().unwrap_or(false) {
                tokio::select! {
                    _ = tokio::time::sleep(REDIAL_AFTER) => {}
                    _ = dial.reset.changed() => {}
                }
            }
        }
    }

    async fn link_session(
        &self,
        dial: &Dial,
        rx: &mut mpsc::Receiver<LinkCmd<M>>,
    ) -> anyhow::Result<()> {
        let connect = dial.endpoint.connect(&dial.node, dial.addr);
        let peer = tokio::time::timeout(Duration::from_secs(3), connect).await??;
        *dial.conn.lock() = Some(peer.clone());
        let (mut tx, mut answers) = peer.open::<PeerMsg<M>, Opened>(Purpose::Rooms).await?;
        tx.send(&PeerMsg::Open {
            incarnation: self.incarnation,
        })
        .await?;
        let opened = tokio::time::timeout(Duration::from_secs(3), answers.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("{} closed the stream", dial.node))??;
        dial.connected_to
            .store(opened.incarnation, std::sync::atomic::Ordering::Release);
        dial.sessions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // What was dropped before is repaired by this session's start like the rest.
        dial.lost.store(false, std::sync::atomic::Ordering::Release);
        self.greet(dial, &mut tx).await?;
        while let Some(mut cmd) = rx.recv().await {
            // Batch what is already queued into one flush.
            loop {
                match cmd {
                    // A message that cannot fit a frame is dropped here, not sent to
                    // break the link (which would redial and meet it again, forever).
                    // Clients' events are refused before they get this big.
                    LinkCmd::Send(msg) => match tx.feed(&msg).await {
                        Err(FrameError::TooLarge { len, max }) => {
                            self.metrics.too_large.inc();
                            tracing::error!(peer = %dial.node, len, max, "dropped a room message too large for a peer frame");
                        }
                        sent => {
                            sent?;
                            count(&self.metrics.sent, msg.kind());
                        }
                    },
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
            dial.queued.set(rx.len() as i64);
            // Drained after dropping some: start over with the peer as after a
            // reconnection (the drops happened while the queue was full, so nothing
            // sent since is missing from what the greeting repairs).
            if rx.is_empty() && dial.lost.swap(false, std::sync::atomic::Ordering::AcqRel) {
                tracing::info!(peer = %dial.node, "link dropped messages while its queue was full; greeting the peer again");
                self.greet(dial, &mut tx).await?;
            }
        }
        Ok(())
    }

    /// Start over with `dial`'s peer: this node's full interest, a request for the
    /// peer's, then the rooms say hello (`PeerUp`). The request rides the new session:
    /// one queued when a verdict reset the link could be taken by the dying session and
    /// lost with it, and a peer that never noticed would not announce again (this
    /// node then sent it nothing of the rooms where it is its region's only replica).
    async fn greet(&self, dial: &Dial, tx: &mut FrameTx<PeerMsg<M>>) -> anyhow::Result<()> {
        let full = self.interest.lock().full();
        tx.feed(&PeerMsg::Interest(full)).await?;
        tx.send(&PeerMsg::AskInterest).await?;
        let _ = self
            .to_rooms
            .send(Delivery::PeerUp(dial.node.clone()))
            .await;
        Ok(())
    }

    /// The node is stopping: deliver what every link has queued, waiting at most
    /// `patience` (a peer that is down gets nothing more).
    pub async fn drain(&self, patience: Duration) {
        let links: Vec<_> = self.links.lock().values().map(|l| l.tx.clone()).collect();
        let drained = links.into_iter().map(|link| async move {
            let (done, rx) = tokio::sync::oneshot::channel();
            if link.send(LinkCmd::Drain(done)).await.is_ok() {
                let _ = rx.await;
            }
        });
        let _ = tokio::time::timeout(patience, futures_util::future::join_all(drained)).await;
    }
}

/// Where and how a link dials its peer.
struct Dial {
    endpoint: Arc<Endpoint>,
    node: NodeId,
    addr: SocketAddr,
    reset: watch::Receiver<u64>,
    connected_to: Arc<std::sync::atomic::AtomicU64>,
    sessions: Arc<std::sync::atomic::AtomicU64>,
    lost: Arc<std::sync::atomic::AtomicBool>,
    conn: Arc<Mutex<Option<Peer>>>,
    /// `edgeroom_peer_queued` for this peer.
    queued: Gauge,
}

impl<M: Relay> PeerMsg<M> {
    /// What it is, for the counts by kind.
    fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Room { msg, .. } => msg.kind(),
            PeerMsg::Open { .. } => "open",
            PeerMsg::Interest(_) | PeerMsg::AskInterest => "interest",
        }
    }
}

fn count(family: &Family<KindLabel, Counter>, kind: &'static str) {
    family.get_or_create(&KindLabel { kind: kind.into() }).inc();
}

/// One link task per peer, aborted with the set (when `run` ends or is aborted).
#[derive(Default)]
struct LinkTasks(HashMap<NodeId, tokio::task::JoinHandle<()>>);

impl Drop for LinkTasks {
    fn drop(&mut self) {
        self.0.values().for_each(|task| task.abort());
    }
}
