//! Failure detection: which nodes are alive, and the round trip to each.
//!
//! Every node pings every other known node over a `Purpose::Health` stream; a node not
//! heard from within the timeout (default 3 s) is dead. [`Detector`] is the sans-IO
//! part, fed "heard from X at t" and asked "is X alive at t"; [`run`] is the thin
//! driver around it. Room presence and routing read the verdicts.
//!
//! Pings and pongs run on the endpoint's own thread (`Endpoint::io`), never behind
//! room work on the node's workers: a node that is only busy must not look dead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use edgeroom_proto::ids::NodeId;
use edgeroom_transport::{Endpoint, Incoming, Purpose};

use crate::control::ControlPlane;

#[derive(Debug, Clone, Copy)]
pub struct HealthTiming {
    pub interval: Duration,
    /// Silence after which a node is declared dead.
    pub timeout: Duration,
}

impl Default for HealthTiming {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(3),
        }
    }
}

/// What the detector knows of one peer.
#[derive(Debug, Clone, Copy)]
struct PeerHealth {
    last_heard: Instant,
    rtt: Duration,
}

/// The verdicts: pure bookkeeping over "heard from" events.
#[derive(Debug)]
pub struct Detector {
    timeout: Duration,
    /// When the detector started: a peer never heard from counts as heard then, so a
    /// starting node does not declare everyone dead at once.
    started: Instant,
    peers: HashMap<NodeId, PeerHealth>,
}

impl Detector {
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            started: now,
            peers: HashMap::new(),
        }
    }

    /// A reply from `node` to a ping that took `rtt`.
    pub fn heard(&mut self, node: &NodeId, rtt: Duration, now: Instant) {
        let entry = self.peers.entry(node.clone()).or_insert(PeerHealth {
            last_heard: now,
            rtt,
        });
        entry.last_heard = now;
        // Smoothed as TCP does (7/8 old, 1/8 new), so one slow reply moves it little.
        entry.rtt = (entry.rtt * 7 + rtt) / 8;
    }

    pub fn is_alive(&self, node: &NodeId, now: Instant) -> bool {
        self.quiet_for(node, now) < self.timeout
    }

    /// How long `node` has not been heard from.
    pub fn quiet_for(&self, node: &NodeId, now: Instant) -> Duration {
        let last = self.peers.get(node).map_or(self.started, |p| p.last_heard);
        now.saturating_duration_since(last)
    }

    /// Smoothed round trip to `node`, once it has answered at least once.
    pub fn rtt(&self, node: &NodeId) -> Option<Duration> {
        self.peers.get(node).map(|p| p.rtt)
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Beat {
    Ping(u64),
    Pong(u64),
}

/// The node's shared view of its peers' health.
pub struct Health {
    me: NodeId,
    timing: HealthTiming,
    detector: Mutex<Detector>,
    /// Bumped for a peer whenever its connections must be dialled afresh (it restarted
    /// or came back from the dead): whoever caches a connection to it checks it.
    generations: Mutex<HashMap<NodeId, u64>>,
}

impl Health {
    pub fn new(me: NodeId, timing: HealthTiming) -> Arc<Self> {
        Arc::new(Self {
            me,
            timing,
            detector: Mutex::new(Detector::new(timing.timeout, Instant::now())),
            generations: Mutex::new(HashMap::new()),
        })
    }

    /// How many times `node`'s connections had to be dialled afresh; a connection to it
    /// cached in an older generation may reach nobody.
    pub fn generation(&self, node: &NodeId) -> u64 {
        self.generations.lock().get(node).copied().unwrap_or(0)
    }

    /// `node` restarted or came back from the dead: connections to it are stale.
    pub fn bump_generation(&self, node: &NodeId) {
        *self.generations.lock().entry(node.clone()).or_default() += 1;
    }

    /// Is `node` alive? This node always is.
    pub fn is_alive(&self, node: &NodeId) -> bool {
        *node == self.me || self.detector.lock().is_alive(node, Instant::now())
    }

    /// Is `node` answering its heartbeats now? Stricter than [`Health::is_alive`]: a
    /// node that missed two heartbeats in a row is not waited for by anything that can
    /// go ahead without it (it is declared dead only after the whole timeout).
    pub fn is_responsive(&self, node: &NodeId) -> bool {
        let quiet = self.detector.lock().quiet_for(node, Instant::now());
        *node == self.me || quiet < (self.timing.interval * 2).min(self.timing.timeout)
    }

    pub fn rtt(&self, node: &NodeId) -> Option<Duration> {
        self.detector.lock().rtt(node)
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn timeout(&self) -> Duration {
        self.timing.timeout
    }

    /// Answer pings on a stream a peer opened.
    pub async fn serve_stream(incoming: Incoming) {
        let (mut tx, mut rx) = incoming.framed::<Beat, Beat>();
        while let Some(Ok(Beat::Ping(n))) = rx.next().await {
            if tx.send(&Beat::Pong(n)).await.is_err() {
                return;
            }
        }
    }
}

/// One pinging task per peer, aborted with the set (when `run` ends or is aborted).
#[derive(Default)]
struct Pingers(HashMap<NodeId, tokio::task::JoinHandle<()>>);

impl Drop for Pingers {
    fn drop(&mut self) {
        self.0.values().for_each(|task| task.abort());
    }
}

/// Ping every node the control plane knows, forever (a task per peer).
pub async fn run(health: Arc<Health>, control: Arc<ControlPlane>, endpoint: Arc<Endpoint>) {
    let mut pingers = Pingers::default();
    let pinging = &mut pingers.0;
    let mut applied = control.applied();
    loop {
        let nodes: Vec<(NodeId, std::net::SocketAddr)> = control
            .state()
            .nodes
            .iter()
            .filter(|(id, _)| **id != health.me)
            .map(|(id, info)| (id.clone(), info.peer_addr))
            .collect();
        pinging.retain(|id, task| {
            let keep = nodes.iter().any(|(n, _)| n == id);
            if !keep {
                task.abort();
            }
            keep
        });
        for (node, addr) in nodes {
            pinging.entry(node.clone()).or_insert_with(|| {
                // On the endpoint's runtime: a ping must not wait behind room work, or
                // a busy node takes its peers for dead (see `Endpoint::io`).
                let pinger = ping_forever(health.clone(), endpoint.clone(), node, addr);
                endpoint.io().spawn(pinger)
            });
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

async fn ping_forever(
    health: Arc<Health>,
    endpoint: Arc<Endpoint>,
    node: NodeId,
    addr: std::net::SocketAddr,
) {
    let interval = health.timing.interval;
    loop {
        // Any failure: dial again (at most once a beat); silence makes the verdict.
        let began = Instant::now();
        let _ = ping_session(&health, &endpoint, &node, addr).await;
        tokio::time::sleep(interval.saturating_sub(began.elapsed())).await;
    }
}

impl Health {
    /// How long a ping, or a dial, may go unanswered before the pinger gives that
    /// connection up and dials afresh: two beats, or twice the round trip when that is
    /// longer, never past the timeout. A connection that lost everything for a while
    /// (a partition) backs its retransmissions off exponentially and can stay mute for
    /// seconds after the network heals; a fresh one is heard within a round trip, so
    /// a healed peer is alive again (and its links redialled) at once.
    fn patience(&self, node: &NodeId) -> Duration {
        let rtt = self.rtt(node).unwrap_or_default();
        (self.timing.interval * 2)
            .max(rtt * 2)
            .min(self.timing.timeout)
    }
}

async fn ping_session(
    health: &Health,
    endpoint: &Endpoint,
    node: &NodeId,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let peer = tokio::time::timeout(health.patience(node), endpoint.connect(node, addr)).await??;
    let (mut tx, mut rx) = peer.open::<Beat, Beat>(Purpose::Health).await?;
    let mut tick = tokio::time::interval(health.timing.interval);
    for n in 0u64.. {
        tick.tick().await;
        let sent = Instant::now();
        tx.send(&Beat::Ping(n)).await?;
        match tokio::time::timeout(health.patience(node), rx.next()).await {
            Ok(Some(Ok(Beat::Pong(m)))) if m == n => {
                let now = Instant::now();
                health.detector.lock().heard(node, now - sent, now);
            }
            _ => anyhow::bail!("no pong from {node}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    #[test]
    fn silence_past_the_timeout_is_death() {
        let t0 = Instant::now();
        let mut d = Detector::new(Duration::from_secs(3), t0);
        // Never heard from: alive until the timeout has passed since start.
        assert!(d.is_alive(&node("a"), t0 + Duration::from_secs(2)));
        assert!(!d.is_alive(&node("a"), t0 + Duration::from_secs(3)));
        d.heard(
            &node("a"),
            Duration::from_millis(80),
            t0 + Duration::from_secs(4),
        );
        assert!(d.is_alive(&node("a"), t0 + Duration::from_secs(6)));
        assert!(!d.is_alive(&node("a"), t0 + Duration::from_secs(7)));
    }

    #[test]
    fn rtt_is_smoothed() {
        let t0 = Instant::now();
        let mut d = Detector::new(Duration::from_secs(3), t0);
        assert_eq!(d.rtt(&node("a")), None);
        d.heard(&node("a"), Duration::from_millis(80), t0);
        assert_eq!(d.rtt(&node("a")), Some(Duration::from_millis(80)));
        d.heard(&node("a"), Duration::from_millis(160), t0);
        assert_eq!(d.rtt(&node("a")), Some(Duration::from_millis(90)));
    }
}
