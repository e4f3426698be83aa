//! One edge node: wires storage, sandbox, registry, rooms and sessions together and
//! serves them over HTTP. [`start`] returns a handle that stops it cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use edgeroom_cluster::{Cluster, Joining};
use edgeroom_gateway::Gateway;
use edgeroom_host::admin_keys::AdminKeys;
use edgeroom_host::apps::Apps;
use edgeroom_host::clock::Clock;
use edgeroom_host::config::NodeConfig;
use edgeroom_host::metrics::Metrics;
use edgeroom_host::room::replica::Replicator;
use edgeroom_host::room::replicate::LinkMetrics;
use edgeroom_host::room::{RoomCmd, RoomEnv, RoomKey, Rooms, World};
use edgeroom_host::session::token::TokenKey;
use edgeroom_host::session::{DetachedCaps, Sessions};
use edgeroom_host::store::{GroupWriter, Store};
use edgeroom_proto::close::Going;
use edgeroom_sandbox::Sandbox;
use edgeroom_transport::{Sealer, seal};

/// One node: its gateway (which holds every part clients reach) and what only the
/// node itself holds — the sandbox, and the senders of its stop and go-away signals.
pub struct Node {
    pub gateway: Arc<Gateway>,
    pub sandbox: Arc<Sandbox<World>>,
    shutdown: watch::Sender<bool>,
    /// Why clients must go elsewhere now, if they must (see `Gateway::clients_go`).
    clients_go: watch::Sender<Option<Going>>,
}

/// The store's secret that signs a standalone node's resume tokens.
const RESUME_SECRET: &str = "resume_tokens";
/// The store's counter of sequence runs handed out (see `room::runs`).
const RUNS: &str = "runs";

/// A started node.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    server: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    /// Every other long-lived task of the node; each ends on the shutdown signal or
    /// when what it serves closes, and whatever is left is aborted once the node has
    /// drained — or when this handle is dropped without a drain, which then also lets
    /// go of the node (the fence task holds it). Per-connection tasks end with their
    /// connections.
    tasks: JoinSet<()>,
}

/// Open the node's storage, load its handlers and start serving on `config.listen`
/// (port 0 picks a free port; see [`RunningNode::addr`]).
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    start_with_clock(config, Clock::system()).await
}

/// A standalone node's resume-token key from its store: made the first time, sealed
/// there when the node has a secrets key (and sealed on the first start that has one).
fn standalone_secret(store: &Store, sealer: Option<&Sealer>) -> anyhow::Result<TokenKey> {
    let fresh = TokenKey::random_key();
    let fresh = match sealer {
        Some(s) => s.seal(RESUME_SECRET, &fresh)?.into_bytes(),
        None => fresh.to_vec(),
    };
    let stored = store.secret_or_init(RESUME_SECRET, &fresh)?;
    let sealed = std::str::from_utf8(&stored)
        .ok()
        .filter(|s| seal::is_sealed(s));
    let key = match (sealed, sealer) {
        (Some(text), _) => seal::reveal(sealer, RESUME_SECRET, text)?,
        (None, Some(s)) => {
            store.put_secret(RESUME_SECRET, s.seal(RESUME_SECRET, &stored)?.as_bytes())?;
            stored
        }
        (None, None) => stored,
    };
    Ok(TokenKey::new(key))
}

/// [`start`] with the clock the node is to keep its time by (skewed, stepped, or
/// tokio's paused time in a simulation).
pub async fn start_with_clock(config: NodeConfig, clock: Clock) -> anyhow::Result<RunningNode> {
    config.check()?;
    let metrics = Arc::new(Metrics::new());
    let sealer = match &config.secrets_key_file {
        Some(path) => Some(Arc::new(Sealer::load(path)?)),
        None => {
            tracing::warn!(
                "no secrets_key_file: the secret that signs resume tokens and apps' shared token keys are kept in the clear in the data directory"
            );
            None
        }
    };
    let store = Arc::new(Store::open(&config.data_dir)?.with_sealer(sealer.clone()));
    let runs = {
        let store = store.clone();
        let reserved = store.counter(RUNS)?;
        let persist: edgeroom_room::runs::Persist =
            Box::new(move |upto| store.raise_counter(RUNS, upto));
        Arc::new(edgeroom_room::runs::Runs::durable(reserved, persist)?)
    };
    let sandbox = Sandbox::new(
        config.sandbox.clone(),
        config.compile_cache_dir(),
        metrics.clone(),
    )?;
    let apps = {
        let (sandbox, store, metrics) = (sandbox.clone(), store.clone(), metrics.clone());
        let max = config.limits.max_handler_bytes;
        let clock = clock.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || Apps::open(sandbox, store, max, metrics, clock))
                .await??,
        )
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let cluster = match &config.cluster {
        Some(c) => {
            let joining = Joining {
                node_id: config.node_id.clone(),
                region: config.region.clone(),
                raft_dir: config.data_dir.join("raft"),
                secret: config.secret.clone(),
                admin_key: config.admin_key.clone(),
                started_wall_ms: clock.wall_ms(),
                sealer: sealer.clone(),
                client_addr: addr,
                handoff_queue: config.limits.peer_streams,
                handoff_dropped: metrics.peer_streams_dropped.clone(),
                handshakes: config.limits.peer_handshakes,
                handshakes_refused: metrics.peer_handshakes_refused.clone(),
                raft_refused: metrics.raft_requests_refused.clone(),
            };
            Some(Cluster::start(joining, c).await?)
        }
        None => None,
    };
    let mut tasks = JoinSet::new();
    let (replicator, deliveries) = match &cluster {
        Some(cluster) => {
            let refused = metrics
                .peer_frames_refused
                .get_or_create(&edgeroom_host::metrics::KindLabel {
                    kind: "rooms".into(),
                })
                .clone();
            let link_metrics = LinkMetrics {
                refused,
                too_large: metrics.peer_messages_too_large.clone(),
                sent: metrics.peer_messages_sent.clone(),
                dropped: metrics.peer_messages_dropped.clone(),
                queued: metrics.peer_queued.clone(),
                path: metrics.peer_path.clone(),
            };
            let (replicator, deliveries) = Replicator::new(
                config.node_id.clone(),
                config.region.clone(),
                cluster.health.clone(),
                config.limits.peer_queue,
                link_metrics,
            );
            tasks.spawn(replicator.clone().run(
                cluster.control.clone(),
                cluster.endpoint.clone(),
                cluster.health.clone(),
            ));
            if let Some(streams) = cluster.take_rooms_streams() {
                tasks.spawn(replicator.clone().serve_streams(streams));
            }
            (Some(replicator), Some(deliveries))
        }
        None => (None, None),
    };
    // In a cluster every node signs with the agreed secret, so tokens verify anywhere.
    let secret = match &cluster {
        Some(c) => c.secret()?,
        None => None,
    }
    .or_else(|| config.secret.clone());
    let tokens = match secret {
        Some(hex_secret) => TokenKey::new(
            hex::decode(hex_secret).map_err(|e| anyhow::anyhow!("secret is not hex: {e}"))?,
        ),
        // A standalone node keeps its own, so tokens outlive a restart.
        None => {
            let store = store.clone();
            let sealer = sealer.clone();
            tokio::task::spawn_blocking(move || standalone_secret(&store, sealer.as_deref()))
                .await??
        }
    };
    let admin_keys = match &cluster {
        Some(c) => AdminKeys::Cluster(c.clone()),
        None => AdminKeys::Local(store.clone()),
    };
    admin_keys
        .keep_configured(
            config.node_id.as_str(),
            config.admin_key.as_deref(),
            clock.wall_ms(),
        )
        .await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let rooms = Rooms::new(RoomEnv {
        node: config.node_id.clone(),
        region: config.region.clone(),
        limits: config.limits.clone(),
        sandbox: sandbox.clone(),
        apps: apps.clone(),
        store: store.clone(),
        journal: GroupWriter::new(store.clone())?,
        runs,
        metrics: metrics.clone(),
        shutdown: shutdown_rx,
        replicator: replicator.clone(),
        clock: clock.clone(),
    });
    if let Some(deliveries) = deliveries {
        tasks.spawn(rooms.clone().serve_peers(deliveries));
    }
    let clients_go = watch::channel(None).0;
    let connection_slots = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
    let sessions = Arc::new(Sessions::new(
        Duration::from_millis(config.limits.resume_probe_ms),
        DetachedCaps {
            sessions: config.limits.max_detached_sessions,
            bytes: config.limits.detached_sessions_bytes,
        },
    ));
    let gateway = Arc::new(Gateway {
        connection_slots,
        forward_slots: Arc::new(tokio::sync::Semaphore::new(config.limits.forwarded_streams)),
        config,
        addr,
        metrics,
        apps,
        rooms,
        sessions,
        engine: Default::default(),
        tokens,
        admin_keys,
        cluster,
        replicator,
        shutdown: shutdown.subscribe(),
        clients_go: clients_go.subscribe(),
        clock,
    });
    if gateway.cluster.is_none() {
        let keys = edgeroom_host::room::restore_sessions(
            store.clone(),
            &gateway.sessions,
            gateway.clock.mono_ms(),
        )
        .await?;
        if !keys.is_empty() {
            tracing::info!(
                rooms = keys.len(),
                "sessions of the last run are resumable again"
            );
            let rooms = gateway.rooms.clone();
            tasks.spawn(async move {
                for key in keys {
                    rooms.inspect(&key, None).await;
                }
            });
        }
    }
    let node = Arc::new(Node {
        gateway: gateway.clone(),
        sandbox,
        shutdown,
        clients_go,
    });
    if let Some(cluster) = &gateway.cluster {
        tasks.spawn(edgeroom_host::registry::follow(
            cluster.clone(),
            gateway.apps.clone(),
            gateway.shutdown_rx(),
        ));
    }

    let app = edgeroom_gateway::router(gateway.clone());
    if let Some(streams) = gateway
        .cluster
        .as_ref()
        .and_then(|c| c.take_forwarded_streams())
    {
        tasks.spawn(edgeroom_gateway::forward::serve_streams(
            edgeroom_gateway::forwarded_router(gateway.clone()),
            streams,
            gateway.shutdown_rx(),
            gateway.config.limits.forwarded_streams,
            gateway.metrics.clone(),
        ));
    }
    let server = tokio::spawn({
        let (stop, limits) = (gateway.shutdown_rx(), gateway.config.limits.clone());
        let metrics = gateway.metrics.clone();
        async move { edgeroom_gateway::front::serve(listener, app, &limits, metrics, stop).await }
    });
    let upkeep = tokio::spawn(upkeep(gateway.clone()));
    if gateway.cluster.is_some() {
        tasks.spawn(fence(node.clone()));
    }
    tracing::info!(node = %gateway.config.node_id, region = %gateway.config.region, %addr, "node listening");
    Ok(RunningNode {
        addr,
        node,
        server,
        upkeep,
        tasks,
    })
}

/// A node that cannot hear most of its cluster sends its clients away (they resume on
/// nodes that can, with everything the room did meanwhile) and refuses new ones, until
/// it hears a majority again. Clusters of fewer than three nodes never fence: there a
/// node cannot tell its own isolation from its peer's death.
async fn fence(node: Arc<Node>) {
    let Some(cluster) = node.gateway.cluster.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut stop = node.gateway.shutdown_rx();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let cut_off = cluster.cut_off();
        let refusing = node.gateway.refusing();
        let fenced = refusing == Some(Going::CutOff);
        if cut_off && !fenced && refusing.is_none() {
            tracing::warn!("cut off from most of the cluster: sending clients elsewhere");
            node.clients_go.send_replace(Some(Going::CutOff));
        } else if !cut_off && fenced {
            tracing::info!("back in touch with the cluster: accepting clients");
            node.clients_go.send_replace(None);
        }
    }
}

/// Once a second: expire resumable sessions past their window, sample rates.
async fn upkeep(node: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stop = node.shutdown_rx();
    let last_events = AtomicU64::new(0);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        node.metrics
            .sample_rates(&last_events, now.duration_since(last).as_secs_f64());
        last = now;
        let (detached, bytes) = node.sessions.detached();
        node.metrics.sessions_detached.set(detached as i64);
        node.metrics.sessions_detached_bytes.set(bytes as i64);
        let evicted = node.sessions.evicted_total();
        let counted = node.metrics.sessions_evicted.get();
        node.metrics
            .sessions_evicted
            .inc_by(evicted.saturating_sub(counted));
        for (conn, app, rooms) in node
            .sessions
            .expire(node.clock.mono_ms(), node.config.limits.resume_window_ms)
        {
            for room in rooms.into_keys() {
                if let Some(h) = node.rooms.loaded(&RoomKey {
                    app: app.clone(),
                    room,
                }) {
                    h.send(RoomCmd::End { conn: conn.clone() }).await;
                }
            }
        }
    }
}

impl RunningNode {
    /// Stop (a drain): stop accepting, close client connections (they resume elsewhere
    /// with their tokens and cursors), let every room save and send its replicas what it
    /// has, wait until the peers have received it, then release storage. Waits up to
    /// `grace` for rooms, connections and peers.
    pub async fn shutdown(self, grace: Duration) {
        self.node.clients_go.send_replace(Some(Going::Stopping));
        let _ = self.node.shutdown.send(true);
        let deadline = Instant::now() + grace;
        let gateway = &self.node.gateway;
        while (gateway.metrics.rooms.get() > 0 || gateway.metrics.connections.get() > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout(grace, self.server).await;
        let _ = self.upkeep.await;
        let mut tasks = self.tasks;
        if let Some(replicator) = &gateway.replicator {
            // What the rooms sent their replicas on the way out reaches them first.
            let left = deadline.saturating_duration_since(Instant::now());
            replicator.drain(left.max(Duration::from_millis(500))).await;
        }
        tasks.abort_all();
        if let Some(cluster) = &gateway.cluster {
            cluster.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeroom_host::session::token::Claims;
    use edgeroom_proto::ids::{AppName, ConnId};

    fn token(key: &TokenKey) -> String {
        key.sign(&Claims {
            session: ConnId::random(),
            app: AppName::new("a").unwrap(),
            node: None,
            generation: 0,
        })
    }

    /// The standalone resume-token key survives restarts, sealed in the store once the
    /// node has a secrets key (a key kept in the clear before is sealed on the first
    /// start with one), and opens only with that key.
    #[test]
    fn the_standalone_token_key_is_sealed_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plain = standalone_secret(&store, None).unwrap();
        let stored = store.secret_or_init(RESUME_SECRET, b"unused").unwrap();
        assert!(!seal::is_sealed(&String::from_utf8_lossy(&stored)));

        let sealer = Sealer::from_hex(&Sealer::generate_hex()).unwrap();
        let sealed = standalone_secret(&store, Some(&sealer)).unwrap();
        assert!(
            sealed.verify(&token(&plain)).is_ok(),
            "the same key, now sealed"
        );
        let stored = store.secret_or_init(RESUME_SECRET, b"unused").unwrap();
        let text = String::from_utf8(stored).unwrap();
        assert!(seal::is_sealed(&text), "{text}");
        let again = standalone_secret(&store, Some(&sealer)).unwrap();
        assert!(again.verify(&token(&plain)).is_ok());
        let other = Sealer::from_hex(&Sealer::generate_hex()).unwrap();
        assert!(standalone_secret(&store, Some(&other)).is_err());
        assert!(
            standalone_secret(&store, None).is_err(),
            "sealed, and no key to open it"
        );
    }
}
