//! What the node counts, exposed as Prometheus text at `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// The path of the room link to each peer (its QUIC connection), as last read.
#[derive(Clone, Debug, Default)]
pub struct PathGauges {
    pub rtt_seconds: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    pub cwnd_bytes: Family<PeerLabel, Gauge>,
    /// Packets sent and lost on the current connection.
    pub packets_sent: Family<PeerLabel, Gauge>,
    pub packets_lost: Family<PeerLabel, Gauge>,
}

impl PathGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "peer_rtt_seconds",
            "Smoothed round trip of the room link to each peer",
            self.rtt_seconds.clone(),
        );
        registry.register(
            "peer_cwnd_bytes",
            "Congestion window of the room link to each peer",
            self.cwnd_bytes.clone(),
        );
        registry.register(
            "peer_packets_sent",
            "Packets sent on the room link's current connection to each peer",
            self.packets_sent.clone(),
        );
        registry.register(
            "peer_packets_lost",
            "Packets lost on the room link's current connection to each peer",
            self.packets_lost.clone(),
        );
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    /// Client TCP sockets open now (see `gateway::front`).
    pub sockets: Gauge,
    /// Client sockets closed on arrival over a cap, by cap (`node`, `ip`).
    pub sockets_refused: Family<KindLabel, Counter>,
    /// Client connections (native WebSockets, Engine.IO handshakes) refused over a
    /// cap, by cap (`node`: `max_connections`; `ip`: `engineio_sessions_per_ip`).
    pub sessions_refused: Family<KindLabel, Counter>,
    /// Client sockets closed because a request's head (or the next request on a
    /// kept-alive connection) did not come in time.
    pub http_timeouts: Counter,
    pub rooms: Gauge,
    pub handler_instances: Gauge,
    /// Bytes of events rooms keep for resume (see `limits.history_max_bytes`).
    pub history_bytes: Gauge,
    /// Resumable (detached) sessions kept now, and the bytes they hold.
    pub sessions_detached: Gauge,
    pub sessions_detached_bytes: Gauge,
    /// Detached sessions dropped over `limits.max_detached_sessions` /
    /// `detached_sessions_bytes` (they can no longer be resumed).
    pub sessions_evicted: Counter,
    pub events: Counter,
    pub events_per_second: Gauge<f64, AtomicU64>,
    pub deliveries: Counter,
    pub handler_call_seconds: Histogram,
    pub handler_errors: Family<KindLabel, Counter>,
    pub slow_consumers: Counter,
    pub bad_frames: Family<KindLabel, Counter>,
    pub deploys: Counter,
    /// Peer messages waiting for a busy room (see `room::post`).
    pub peer_backlog: Gauge,
    pub peer_messages_shed: Family<KindLabel, Counter>,
    /// Room messages written to peers, by kind (what replication costs the links).
    pub peer_messages_sent: Family<KindLabel, Counter>,
    /// Room messages to peers dropped unsent, by kind: the link's queue was full
    /// (`limits.peer_queue`) or there was no link yet.
    pub peer_messages_dropped: Family<KindLabel, Counter>,
    /// Room messages waiting in the link to each peer.
    pub peer_queued: Family<PeerLabel, Gauge>,
    pub peer_path: PathGauges,
    /// Frames from peers that did not parse: the stream is dropped, by purpose.
    pub peer_frames_refused: Family<KindLabel, Counter>,
    /// Streams peers opened that found their queue full (`limits.peer_streams`).
    pub peer_streams_dropped: Counter,
    /// Peers turned away because too many were in their handshake
    /// (`limits.peer_handshakes`).
    pub peer_handshakes_refused: Counter,
    /// Raft requests (a join, a write, a Raft message) refused because the sender's
    /// certificate names another node than the request claims, or a non-member wrote.
    pub raft_requests_refused: Counter,
    /// Engine.IO requests not forwarded to their session's node because
    /// `limits.forwarded_streams` were under way.
    pub forwards_refused: Counter,
    /// Room documents rebuilt without their history once it outweighed their content
    /// (a standalone room's; a replicated room's counted by the replica that compacts).
    pub state_compactions: Counter,
    /// Sync conversations a room's replica started with a peer, by why: `hello`,
    /// `lacking` (changes waited in vain for ones they depend on), `first` (a call's
    /// changes before any were sent), `large`, `peer_down`, `rebase`.
    pub state_syncs: Family<KindLabel, Counter>,
    /// Calls whose changes went unchecked for reaching every other replica: the room
    /// had `limits.rechecked_calls` waiting.
    pub changes_unchecked: Counter,
    /// Idempotent emits' events the replicas of their origin's region withheld from
    /// their members, by kind: `withheld` as they came, `unconfirmed` shown without
    /// their origin's word (waited too long, or over the bound: a retry elsewhere may
    /// show them twice), `superseded` never shown (a rerun of the emit was instead).
    pub events_withheld: Family<KindLabel, Counter>,
    /// Emits refused because a room had `limits.unconfirmed_replies` answers waiting
    /// for another node to confirm.
    pub emits_unconfirmed_refused: Counter,
    /// Handler instances refused over a cap, by cap (`node`: `sandbox.max_instances`;
    /// `app`: `sandbox.max_instances_per_app`).
    pub instances_refused: Family<KindLabel, Counter>,
    /// Joins refused because their connection created rooms faster than
    /// `limits.room_creations_per_sec`.
    pub room_creations_refused: Counter,
    /// Client joins refused because the node had `limits.max_rooms` loaded.
    pub rooms_refused: Counter,
    /// Room messages dropped because they would not fit a peer frame.
    pub peer_messages_too_large: Counter,
    /// Client credentials refused, by error code (`unauthorized`, `bad_token`,
    /// `token_expired`, `forbidden`).
    pub auth_refused: Family<KindLabel, Counter>,
    /// Idempotency ids forgotten over `limits.idempotency_max_ids` or
    /// `idempotency_max_bytes` (a retry of one runs again).
    pub idempotency_ids_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edgeroom");
        let connections = Gauge::default();
        let sockets = Gauge::default();
        let sockets_refused = Family::default();
        let http_timeouts = Counter::default();
        let sessions_refused = Family::default();
        let rooms = Gauge::default();
        let handler_instances = Gauge::default();
        let history_bytes = Gauge::default();
        let sessions_detached = Gauge::default();
        let sessions_detached_bytes = Gauge::default();
        let sessions_evicted = Counter::default();
        let events = Counter::default();
        let events_per_second = Gauge::<f64, AtomicU64>::default();
        let deliveries = Counter::default();
        // 1 µs .. ~1 s, doubling.
        let handler_call_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 21),
        );
        let handler_errors = Family::default();
        let slow_consumers = Counter::default();
        let bad_frames = Family::default();
        let deploys = Counter::default();
        let peer_backlog = Gauge::default();
        let peer_messages_shed = Family::default();
        let peer_messages_sent = Family::default();
        let peer_messages_dropped = Family::default();
        let peer_queued = Family::default();
        let peer_path = PathGauges::default();
        peer_path.register(&mut registry);
        let peer_frames_refused = Family::default();
        let peer_streams_dropped = Counter::default();
        let peer_handshakes_refused = Counter::default();
        let raft_requests_refused = Counter::default();
        let forwards_refused = Counter::default();
        let state_compactions = Counter::default();
        let state_syncs = Family::default();
        let changes_unchecked = Counter::default();
        let events_withheld = Family::default();
        let emits_unconfirmed_refused = Counter::default();
        let instances_refused = Family::default();
        let room_creations_refused = Counter::default();
        let rooms_refused = Counter::default();
        let peer_messages_too_large = Counter::default();
        let auth_refused = Family::default();
        let idempotency_ids_dropped = Counter::default();
        registry.register(
            "connections",
            "Client connections open now",
            connections.clone(),
        );
        registry.register("sockets", "Client TCP sockets open now", sockets.clone());
        registry.register(
            "sockets_refused",
            "Client sockets closed on arrival over a cap, by cap (node, ip)",
            sockets_refused.clone(),
        );
        registry.register(
            "sessions_refused",
            "Client connections refused over a cap, by cap (node: max_connections, ip: Engine.IO sessions per address)",
            sessions_refused.clone(),
        );
        registry.register(
            "http_timeouts",
            "Client sockets closed for sending no request head in time",
            http_timeouts.clone(),
        );
        registry.register("rooms", "Rooms loaded on this node", rooms.clone());
        registry.register(
            "handler_instances",
            "Live handler instances",
            handler_instances.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of events rooms keep for resume, as history limits count them",
            history_bytes.clone(),
        );
        registry.register(
            "sessions_detached",
            "Resumable sessions whose connection is gone, kept now",
            sessions_detached.clone(),
        );
        registry.register(
            "sessions_detached_bytes",
            "Bytes the resumable sessions hold (their rooms and how each was joined)",
            sessions_detached_bytes.clone(),
        );
        registry.register(
            "sessions_evicted",
            "Resumable sessions dropped over the detached-session caps",
            sessions_evicted.clone(),
        );
        registry.register("events", "Client events handled", events.clone());
        registry.register(
            "events_per_second",
            "Client events handled per second, over the last second",
            events_per_second.clone(),
        );
        registry.register(
            "deliveries",
            "Frames queued to clients by rooms",
            deliveries.clone(),
        );
        registry.register(
            "handler_call_seconds",
            "Time of one handler call",
            handler_call_seconds.clone(),
        );
        registry.register(
            "handler_errors",
            "Handler calls that failed, by kind",
            handler_errors.clone(),
        );
        registry.register(
            "slow_consumers_dropped",
            "Connections dropped because they did not read fast enough",
            slow_consumers.clone(),
        );
        registry.register(
            "bad_frames",
            "Client frames refused, by error code",
            bad_frames.clone(),
        );
        registry.register("deploys", "Handler versions deployed", deploys.clone());
        registry.register(
            "peer_backlog",
            "Messages from peers waiting for a room whose inbox is full",
            peer_backlog.clone(),
        );
        registry.register(
            "peer_messages_shed",
            "Messages from peers dropped because their room's backlog was full, by kind",
            peer_messages_shed.clone(),
        );
        registry.register(
            "peer_frames_refused",
            "Frames from peers that did not parse (their stream was dropped), by purpose",
            peer_frames_refused.clone(),
        );
        registry.register(
            "peer_streams_dropped",
            "Streams peers opened that were dropped because too many waited to be served",
            peer_streams_dropped.clone(),
        );
        registry.register(
            "peer_handshakes_refused",
            "Peers turned away because too many were in their handshake at once",
            peer_handshakes_refused.clone(),
        );
        registry.register(
            "raft_requests_refused",
            "Raft requests refused because the sending node may not make them",
            raft_requests_refused.clone(),
        );
        registry.register(
            "forwards_refused",
            "Engine.IO requests not forwarded because too many forwarded requests were under way",
            forwards_refused.clone(),
        );
        registry.register(
            "state_compactions",
            "Room documents rebuilt without their history",
            state_compactions.clone(),
        );
        registry.register(
            "state_syncs",
            "Sync conversations rooms' replicas started with a peer, by why",
            state_syncs.clone(),
        );
        registry.register(
            "changes_unchecked",
            "Calls whose changes went unchecked for reaching every other replica (limits.rechecked_calls)",
            changes_unchecked.clone(),
        );
        registry.register(
            "events_withheld",
            "Idempotent emits' events withheld next door until their origin confirmed them, by kind",
            events_withheld.clone(),
        );
        registry.register(
            "emits_unconfirmed_refused",
            "Emits refused because their room had too many answers waiting for another node to confirm",
            emits_unconfirmed_refused.clone(),
        );
        registry.register(
            "instances_refused",
            "Handler instances refused over a cap, by cap (node, app)",
            instances_refused.clone(),
        );
        registry.register(
            "room_creations_refused",
            "Joins refused because their connection created rooms too fast",
            room_creations_refused.clone(),
        );
        registry.register(
            "rooms_refused",
            "Client joins refused because the node had as many rooms loaded as it may",
            rooms_refused.clone(),
        );
        registry.register(
            "idempotency_ids_dropped",
            "Idempotency ids forgotten over their count or byte cap",
            idempotency_ids_dropped.clone(),
        );
        registry.register(
            "auth_refused",
            "Client credentials refused, by error code",
            auth_refused.clone(),
        );
        registry.register(
            "peer_messages_sent",
            "Room messages written to peers, by kind",
            peer_messages_sent.clone(),
        );
        registry.register(
            "peer_messages_dropped",
            "Room messages to peers dropped unsent (the link's queue was full, or no link), by kind",
            peer_messages_dropped.clone(),
        );
        registry.register(
            "peer_queued",
            "Room messages waiting in the link to each peer",
            peer_queued.clone(),
        );
        registry.register(
            "peer_messages_too_large",
            "Room messages to peers dropped because they would not fit a frame",
            peer_messages_too_large.clone(),
        );
        Self {
            registry,
            connections,
            sockets,
            sockets_refused,
            http_timeouts,
            sessions_refused,
            rooms,
            handler_instances,
            history_bytes,
            sessions_detached,
            sessions_detached_bytes,
            sessions_evicted,
            events,
            events_per_second,
            deliveries,
            handler_call_seconds,
            handler_errors,
            slow_consumers,
            bad_frames,
            deploys,
            peer_backlog,
            peer_messages_shed,
            peer_messages_sent,
            peer_messages_dropped,
            peer_queued,
            peer_path,
            peer_frames_refused,
            peer_streams_dropped,
            peer_handshakes_refused,
            raft_requests_refused,
            forwards_refused,
            state_compactions,
            state_syncs,
            changes_unchecked,
            events_withheld,
            emits_unconfirmed_refused,
            instances_refused,
            room_creations_refused,
            rooms_refused,
            peer_messages_too_large,
            auth_refused,
            idempotency_ids_dropped,
        }
    }

    pub fn handler_error(&self, kind: &str) {
        self.handler_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn peer_shed(&self, kind: &str) {
        self.peer_messages_shed
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn bad_frame(&self, code: &str) {
        count(&self.bad_frames, code);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Update `events_per_second` from the event counter; call about once a second.
    pub fn sample_rates(&self, last: &AtomicU64, elapsed_secs: f64) {
        let now = self.events.get();
        let before = last.swap(now, Ordering::Relaxed);
        if elapsed_secs > 0.0 {
            self.events_per_second
                .set(now.saturating_sub(before) as f64 / elapsed_secs);
        }
    }
}

impl edgeroom_sandbox::Meter for Metrics {
    fn instances(&self, delta: i64) {
        self.handler_instances.inc_by(delta);
    }

    fn call_seconds(&self, seconds: f64) {
        self.handler_call_seconds.observe(seconds);
    }

    fn failed(&self, kind: &str) {
        self.handler_error(kind);
    }

    fn refused(&self, scope: &str) {
        count(&self.instances_refused, scope);
    }
}

/// One more of `kind` in a counter family.
pub fn count(family: &Family<KindLabel, Counter>, kind: &str) {
    family.get_or_create(&KindLabel { kind: kind.into() }).inc();
}
