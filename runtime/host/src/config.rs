//! Node configuration: `node.toml` for `edgeroom serve`, built in code for `edgeroom dev` and tests.
//!
//! Every limit the node enforces is named here, so an operator can see and change it.

pub use edgeroom_sandbox::SandboxConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use edgeroom_cluster::config::{ClusterConfig, parse_peer};
use edgeroom_proto::ids::{AppName, NodeId};

/// One node's settings. Durations are in milliseconds in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id: the origin of the messages it sequences.
    pub node_id: NodeId,
    #[serde(default = "default_region")]
    pub region: String,
    /// Where clients and the admin API connect.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Durable state: the handler registry and room documents.
    pub data_dir: PathBuf,
    /// Compiled handlers are cached here by sha256 (defaults to `data_dir/compiled`).
    #[serde(default)]
    pub compile_cache_dir: Option<PathBuf>,
    /// Bearer key for the admin API. Required unless `dev` is true.
    #[serde(default)]
    pub admin_key: Option<String>,
    /// Dev mode: the admin API is open to anyone who can reach it.
    #[serde(default)]
    pub dev: bool,
    /// The app `/socket.io/` serves.
    #[serde(default)]
    pub default_app: Option<AppName>,
    /// Secret that signs resume tokens (hex). Random per start when absent, which
    /// only matters for resume across restarts.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file of 64 hex digits (32 random bytes) every node of the cluster holds: the
    /// secret that signs resume tokens is kept sealed with it, in the Raft log and the
    /// store, not in the clear. `edgeroom cluster init` writes one (`secrets.key`).
    #[serde(default)]
    pub secrets_key_file: Option<PathBuf>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub sandbox: SandboxConfig,
    #[serde(default)]
    pub socketio: SocketIoConfig,
    /// Member of a cluster; absent: a standalone node.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// The Socket.IO gateway (Engine.IO v4 / Socket.IO v5).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Heartbeat: the server pings this often...
    pub ping_interval_ms: u64,
    /// ...and closes a session whose pong is this late.
    pub ping_timeout_ms: u64,
    /// Largest polling POST body and WebSocket message (`maxPayload`).
    pub max_payload: usize,
    /// A connection that joins no namespace this long after its handshake is closed.
    pub connect_timeout_ms: u64,
    /// Origins allowed to make cross-origin requests. A listed origin is echoed and may
    /// send credentials; `"*"` lets any other origin in without credentials. Empty: no
    /// CORS headers.
    pub cors_origins: Vec<String>,
    /// Serve a raw Engine.IO echo (every message sent back as it came) at this path,
    /// for the Engine.IO protocol test suite. Off unless set.
    pub engineio_echo_path: Option<String>,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_payload: 1_000_000,
            connect_timeout_ms: 45_000,
            cors_origins: vec!["*".into()],
            engineio_echo_path: None,
        }
    }
}

/// Bounds on what clients may send and how much the node keeps.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest client frame accepted; a larger one gets a `too_large` error.
    pub max_frame_bytes: usize,
    /// Frames above this close the connection (the WebSocket layer never buffers more).
    pub max_frame_hard_bytes: usize,
    /// Outbound frames queued per connection; beyond it the client is a slow consumer and is dropped.
    pub outbound_queue: usize,
    /// The same in bytes (what the queued events and frames keep alive), so a client
    /// that stops reading holds at most this much memory.
    pub outbound_queue_bytes: usize,
    /// Commands queued per room before senders wait.
    pub room_inbox: usize,
    /// Messages from peers held per room while its inbox is full (other rooms go on
    /// being served). Past it new events are shed and repaired from their origin; past
    /// twice it anything is. Counted in `edgeroom_peer_messages_shed`.
    pub peer_backlog: usize,
    /// Events from one origin a room's replica holds while a gap before them is being
    /// repaired; later ones are dropped and repaired in order afterwards.
    pub held_per_origin: usize,
    /// Messages queued to one peer; beyond it new ones are dropped (events come back
    /// through gap repair, state through the next sync, presence with the next hello).
    pub peer_queue: usize,
    /// In a cluster: answers to emits a room holds until another node confirms it has
    /// what their calls produced; past it the room refuses emits (`internal`, try
    /// again) until confirmations catch up. Counted in
    /// `edgeroom_emits_unconfirmed_refused`.
    pub unconfirmed_replies: usize,
    /// In a cluster: calls per room whose changes the room checks again a second later
    /// reached every other replica (sending them again to any that has not said so),
    /// keeping each call's last 16 change hashes: 128 KiB per room at 256. Past it the
    /// oldest call goes unchecked (a replica lacking its changes gets them at its next
    /// sync), counted in `edgeroom_changes_unchecked`.
    pub rechecked_calls: usize,
    /// Streams peers opened (room links, forwarded requests) waiting to be served, per
    /// kind; beyond it a new one is dropped and counted (`edgeroom_peer_streams_dropped`).
    pub peer_streams: usize,
    /// Peers in their QUIC handshake at once; beyond it a new one is turned away and
    /// counted (`edgeroom_peer_handshakes_refused`). Each handshake runs on its own, so
    /// a slow or mute one holds up no other; this bounds what mute ones can hold.
    pub peer_handshakes: usize,
    /// Engine.IO packets held for a client that is not polling; beyond it the session
    /// stops taking from its outbox, which then fills and drops the client as a slow
    /// consumer.
    pub engineio_queue: usize,
    /// The same in bytes: past it a session takes nothing more from its outbox, which
    /// then fills and drops the client as a slow consumer.
    pub engineio_queue_bytes: usize,
    /// How long a room keeps its events for resume.
    pub history_ms: u64,
    /// Most events a room keeps, whatever their age.
    pub history_max_events: usize,
    /// Most bytes of events a room keeps, whatever their age: an event's name and
    /// arguments count twice (the event, and the wire form kept for the next member),
    /// plus 256 bytes and its cursor. The oldest go first; the newest is kept whatever
    /// its size. A client resuming from before what is kept gets `history_gap`.
    pub history_max_bytes: usize,
    /// Idempotency ids (an emit's `id`, with its answer, for a retry to get the same
    /// answer) a room remembers at most; they are kept as long as history, and the
    /// oldest go first. A retry after its id went runs again.
    pub idempotency_max_ids: usize,
    /// Bytes of idempotency ids and answers a room remembers at most (key, answer and
    /// 64 bytes each); the oldest go first.
    pub idempotency_max_bytes: usize,
    /// How long a disconnected session stays resumable.
    pub resume_window_ms: u64,
    /// How long a disconnected session keeps its presence before it leaves its rooms.
    pub presence_grace_ms: u64,
    /// In a cluster: how long a client resuming as a member another node held waits,
    /// at most, for every live peer to say what it has of the member's history (a peer
    /// that stops answering heartbeats is not waited for). What no replica could give
    /// is counted to the client (`history_gap`).
    pub adopt_patience_ms: u64,
    /// An empty room drops its handler instance after this long.
    pub instance_idle_ms: u64,
    /// An empty room with no history left is unloaded after this long (its state is saved).
    pub room_idle_ms: u64,
    /// Largest handler upload.
    pub max_handler_bytes: usize,
    /// Largest event a client may emit, in bytes: its name, JSON arguments and binary
    /// attachments together (Socket.IO attachments travel apart, so only this bounds
    /// their sum). A larger one is refused with `too_large`: it has to fit one frame
    /// between nodes (4 MiB).
    pub max_event_bytes: usize,
    /// Largest `auth` a member may join with, in bytes; a larger one is refused with
    /// `too_large`. Every replica keeps it, and a room's members travel together when
    /// nodes meet.
    pub max_auth_bytes: usize,
    /// Largest presence a handler may set for a member, in bytes of JSON; a larger one
    /// is refused (the handler's `set-presence` returns an error). Every replica keeps
    /// it and every member that takes presence is sent it.
    pub max_presence_bytes: usize,
    /// Shortest timer a handler may set, in ms: a shorter one (0 included) waits this
    /// long, so a handler re-arming itself cannot spin its room.
    pub min_timer_ms: u32,
    /// Log lines one room's handler may write a second; the rest are dropped and
    /// counted (`edgeroom_handler_errors_total{kind="log_rate"}`).
    pub handler_log_lines_per_sec: u32,
    /// Rooms a connection may join at once.
    pub max_rooms_per_conn: usize,
    /// Rooms one connection may cause this node to load, a second (a bucket of as many,
    /// refilled at that rate); a join beyond it is refused with `rate_limited` and counted
    /// in `edgeroom_room_creations_refused`. Joining a room already loaded is not counted.
    /// 0: no limit.
    pub room_creations_per_sec: u32,
    /// Rooms loaded on this node at once (an empty room stays loaded while it keeps
    /// history for resume); a client join that would load one more is refused with
    /// `overloaded` and counted in `edgeroom_rooms_refused`.
    pub max_rooms: usize,
    /// Concurrent client connections.
    pub max_connections: usize,
    /// Engine.IO sessions (Socket.IO clients) one IP address may hold; a handshake
    /// beyond it is refused with 429 and counted in
    /// `edgeroom_sessions_refused{kind="ip"}`. (A polling session outlives the requests
    /// that made it, so the socket caps do not bound it.)
    pub engineio_sessions_per_ip: usize,
    /// Client TCP sockets open at once (HTTP requests, long-polls, WebSockets); a new
    /// one beyond it is closed at once and counted in
    /// `edgeroom_sockets_refused{kind="node"}`. 0: the process's open-file limit less
    /// 256 (kept for the store, peers and logs).
    pub max_sockets: usize,
    /// Client TCP sockets one IP address may hold open; a new one beyond it is closed
    /// at once and counted in `edgeroom_sockets_refused{kind="ip"}`.
    pub sockets_per_ip: usize,
    /// How long a client may take to send a request's head, and how long a kept-alive
    /// HTTP connection may sit idle before its next request; past it the socket is
    /// closed and counted in `edgeroom_http_timeouts`.
    pub http_header_timeout_ms: u64,
    /// How long a connection may stay open without a credential where its app needs
    /// one (a native client may send its token in an `authenticate` frame after
    /// connecting); past it the connection is closed with 4001.
    pub auth_wait_ms: u64,
    /// How long a resume waits for the connection still holding its session to answer
    /// a ping before counting it gone; one that answers keeps the session (`live`).
    pub resume_probe_ms: u64,
    /// Bytes of changes appended to a room's saved document (on a standalone node with
    /// each acknowledged write, in a cluster each second) before they are folded into
    /// a whole save (or the size of the last whole save,
    /// if larger), so a load reads at most about twice the document.
    pub state_append_bytes: usize,
    /// Writes and changes a room's document takes in before it is compacted (its
    /// replicas together, see `replica::rebase`): taking in a change walks history
    /// this long, deleted list entries too.
    pub state_compact_changes: usize,
    /// In a cluster: Engine.IO requests this node forwards to the nodes owning their
    /// sessions at once, upgraded WebSocket tunnels included (and as many forwarded
    /// streams it serves for others); beyond it a client gets `503` and it is counted in
    /// `edgeroom_forwards_refused`.
    pub forwarded_streams: usize,
    /// Largest a room's state may grow, in bytes of its JSON (what a joining member is
    /// sent): a handler write that would take it past is refused (the handler's call
    /// returns an error) and counted (`edgeroom_handler_errors{kind="state_full"}`).
    pub state_max_bytes: usize,
    /// Resumable sessions (a client gone, its session kept for the resume window) a node
    /// keeps at most, and their bytes (each session's rooms and how it joined each);
    /// past either the oldest is dropped — it can no longer be resumed and leaves its
    /// rooms — and counted (`edgeroom_sessions_evicted`).
    pub max_detached_sessions: usize,
    pub detached_sessions_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_frame_hard_bytes: 16 * 1024 * 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 16 * 1024 * 1024,
            room_inbox: 1024,
            peer_backlog: 4096,
            held_per_origin: 10_000,
            peer_queue: 65_536,
            unconfirmed_replies: 4096,
            rechecked_calls: 256,
            peer_streams: 1024,
            peer_handshakes: 256,
            engineio_queue: 4096,
            engineio_queue_bytes: 16 * 1024 * 1024,
            history_ms: 120_000,
            history_max_events: 100_000,
            history_max_bytes: 8 * 1024 * 1024,
            idempotency_max_ids: 10_000,
            idempotency_max_bytes: 4 * 1024 * 1024,
            resume_window_ms: 120_000,
            presence_grace_ms: 15_000,
            adopt_patience_ms: 2_000,
            instance_idle_ms: 30_000,
            room_idle_ms: 300_000,
            max_handler_bytes: 16 * 1024 * 1024,
            max_event_bytes: 2 * 1024 * 1024,
            max_auth_bytes: 16 * 1024,
            max_presence_bytes: 4 * 1024,
            min_timer_ms: 10,
            handler_log_lines_per_sec: 50,
            max_rooms_per_conn: 100,
            room_creations_per_sec: 20,
            max_rooms: 20_000,
            max_connections: 19_000,
            engineio_sessions_per_ip: 256,
            max_sockets: 0,
            sockets_per_ip: 1024,
            http_header_timeout_ms: 10_000,
            auth_wait_ms: 10_000,
            resume_probe_ms: 1_500,
            state_append_bytes: 64 * 1024,
            state_compact_changes: 1024,
            forwarded_streams: 8192,
            state_max_bytes: 2 * 1024 * 1024,
            max_detached_sessions: 50_000,
            detached_sessions_bytes: 256 * 1024 * 1024,
        }
    }
}

fn default_region() -> String {
    "local".into()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl NodeConfig {
    /// A config for a node with the given id and data directory and default everything else.
    pub fn new(node_id: NodeId, data_dir: PathBuf) -> Self {
        Self {
            node_id,
            region: default_region(),
            listen: default_listen(),
            data_dir,
            compile_cache_dir: None,
            admin_key: None,
            dev: false,
            default_app: None,
            secret: None,
            secrets_key_file: None,
            limits: Limits::default(),
            sandbox: SandboxConfig::default(),
            socketio: SocketIoConfig::default(),
            cluster: None,
        }
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: NodeConfig = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Refuse settings the node cannot run with.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.dev || self.admin_key.is_some(),
            "admin_key is required unless dev = true"
        );
        // Dev mode without a key leaves deploys and app settings open to whoever can
        // reach the port: only to this machine.
        anyhow::ensure!(
            !self.dev || self.admin_key.is_some() || self.listen.ip().is_loopback(),
            "dev mode opens the admin API to anyone who can reach {}: listen on a loopback \
             address, or set an admin key (edgeroom dev --admin-key KEY)",
            self.listen
        );
        anyhow::ensure!(
            self.limits.max_frame_bytes <= self.limits.max_frame_hard_bytes,
            "max_frame_bytes exceeds max_frame_hard_bytes"
        );
        anyhow::ensure!(
            self.limits.outbound_queue > 0
                && self.limits.room_inbox > 0
                && self.limits.peer_backlog > 0
                && self.limits.held_per_origin > 0
                && self.limits.peer_queue > 0
                && self.limits.unconfirmed_replies > 0
                && self.limits.rechecked_calls > 0
                && self.limits.peer_streams > 0
                && self.limits.peer_handshakes > 0
                && self.limits.engineio_queue > 0,
            "queues must hold at least one item"
        );
        anyhow::ensure!(
            self.limits.sockets_per_ip > 0
                && self.limits.engineio_sessions_per_ip > 0
                && self.limits.http_header_timeout_ms > 0,
            "sockets_per_ip, engineio_sessions_per_ip and http_header_timeout_ms must be positive"
        );
        anyhow::ensure!(
            self.sandbox.tick_ms > 0 && self.sandbox.call_deadline_ms >= self.sandbox.tick_ms,
            "call_deadline_ms must be at least one tick"
        );
        anyhow::ensure!(
            self.sandbox.max_memory_bytes >= 1 << 20,
            "max_memory_bytes must be at least 1 MiB"
        );
        anyhow::ensure!(
            self.socketio.ping_interval_ms > 0 && self.socketio.ping_timeout_ms > 0,
            "socketio ping_interval_ms and ping_timeout_ms must be positive"
        );
        if let Some(c) = &self.cluster {
            c.check()?;
            anyhow::ensure!(
                !self.listen.ip().is_unspecified() || !c.client_urls.is_empty(),
                "cluster: client_urls is required when listen is a wildcard address \
                 (other regions hand it to clients)"
            );
            anyhow::ensure!(
                c.advertised(&self.node_id).is_some(),
                "cluster: peer_advertise is required when peer_listen is a wildcard address"
            );
            // Handlers travel in Raft entries, a few per frame.
            let per_append = edgeroom_cluster::control::MAX_ENTRIES_PER_APPEND as usize;
            let most = (edgeroom_transport::Purpose::Raft.max_frame() - (1 << 20)) / per_append;
            anyhow::ensure!(
                self.limits.max_handler_bytes <= most,
                "in a cluster, limits.max_handler_bytes may be at most {most}"
            );
        }
        if let Some(p) = &self.socketio.engineio_echo_path {
            anyhow::ensure!(
                p.starts_with('/') && p.ends_with('/') && p.len() > 2,
                "socketio.engineio_echo_path must look like /engine.io/"
            );
        }
        Ok(())
    }

    pub fn compile_cache_dir(&self) -> PathBuf {
        self.compile_cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("compiled"))
    }
}

impl Limits {
    pub fn history(&self) -> Duration {
        Duration::from_millis(self.history_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_dev_admin_api_stays_on_loopback() {
        let mut c = NodeConfig::new(NodeId::new("d").unwrap(), "/tmp/x".into());
        c.dev = true;
        c.listen = "127.0.0.1:8080".parse().unwrap();
        assert!(c.check().is_ok());
        c.listen = "0.0.0.0:8080".parse().unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("admin API to anyone"), "{e}");
        c.admin_key = Some("k".into());
        assert!(c.check().is_ok());
    }

    #[test]
    fn parses_a_node_file() {
        let c = NodeConfig::from_toml(
            r#"
            node_id = "n1"
            region = "eu-west"
            listen = "127.0.0.1:9000"
            data_dir = "/var/lib/edgeroom"
            admin_key = "k"
            default_app = "chat"
            [limits]
            max_frame_bytes = 1000
            [sandbox]
            call_deadline_ms = 20
            "#,
        )
        .unwrap();
        assert_eq!(c.node_id.as_str(), "n1");
        assert_eq!(c.limits.max_frame_bytes, 1000);
        assert_eq!(c.limits.outbound_queue, 1024);
        assert_eq!(c.sandbox.call_deadline_ms, 20);
    }

    #[test]
    fn parses_a_cluster_section() {
        let base = "node_id = \"us-east\"\ndata_dir = \"/d\"\ndev = true\n[cluster]\npeer_listen = \"10.0.0.1:7000\"\ntls_dir = \"/certs\"\n";
        let c = NodeConfig::from_toml(&format!(
            "{base}voters = [\"us-east@10.0.0.1:7000\", \"eu-west@10.0.0.2:7000\"]\nlat = 37.37\nlon = -79.82\n"
        ))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.voters.len(), 2);
        assert_eq!(cluster.raft_heartbeat_ms, 300);
        // Neither voters nor join, both, a malformed peer, a bad latitude: refused.
        for bad in [
            String::new(),
            "voters = [\"a@1.2.3.4:5\"]\njoin = \"a@1.2.3.4:5\"\n".into(),
            "join = \"no-at-sign\"\n".into(),
            "join = \"a@1.2.3.4:5\"\nlat = 91.0\n".into(),
            // Handlers travel in Raft frames: not bigger than they allow.
            "join = \"a@1.2.3.4:5\"\n[limits]\nmax_handler_bytes = 40000000\n".into(),
        ] {
            assert!(
                NodeConfig::from_toml(&format!("{base}{bad}")).is_err(),
                "{bad}"
            );
        }
        // A wildcard peer address needs an address to advertise.
        let wild = base.replace("10.0.0.1:7000", "0.0.0.0:7000");
        for (extra, ok) in [
            ("join = \"a@1.2.3.4:5\"\n", false),
            (
                "join = \"a@1.2.3.4:5\"\npeer_advertise = \"10.0.0.1:7000\"\n",
                true,
            ),
            ("voters = [\"us-east@10.0.0.1:7000\"]\n", true),
        ] {
            assert_eq!(
                NodeConfig::from_toml(&format!("{wild}{extra}")).is_ok(),
                ok,
                "{extra}"
            );
        }
        // Clients cannot be sent to 0.0.0.0: a wildcard listen needs client_urls.
        let wild_listen = base.replace(
            "dev = true",
            "dev = true\nadmin_key = \"k\"\nlisten = \"0.0.0.0:8080\"",
        );
        let join = "join = \"a@1.2.3.4:5\"\n";
        assert!(NodeConfig::from_toml(&format!("{wild_listen}{join}")).is_err());
        let urls = "client_urls = [\"https://edge.example.com\"]\n";
        assert!(NodeConfig::from_toml(&format!("{wild_listen}{join}{urls}")).is_ok());
    }

    #[test]
    fn refuses_an_open_admin_api_outside_dev() {
        let e = NodeConfig::from_toml("node_id = \"n1\"\ndata_dir = \"/tmp/x\"\n").unwrap_err();
        assert!(e.to_string().contains("admin_key"), "{e}");
        assert!(
            NodeConfig::from_toml("node_id = \"n1\"\ndata_dir = \"/tmp/x\"\nbogus = 1\n").is_err()
        );
    }
}
