//! A node's QUIC endpoint: dial peers, accept peers, open a stream per purpose.
//!
//! Identity comes from the certificates only: a dialled peer must present the certificate
//! of the node we meant, and an accepted peer is whoever its certificate names. Each
//! stream starts with one byte naming its [`Purpose`]; the purpose fixes the frame limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use quinn::AsyncUdpSocket;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::frame::{FrameCodec, FrameRx, FrameTx};
use super::io::IoThread;
use super::tls::{NodeTls, node_dns_name, node_of};
use super::wan::{Wan, WanSocket};
use edgeroom_proto::ids::NodeId;

/// What a stream carries. Each purpose gets its own streams, so a big snapshot never
/// holds up a room message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Purpose {
    /// Raft RPCs: votes, appends, snapshots.
    Raft = 1,
    /// Room traffic: interest, messages, gap repair.
    Rooms = 2,
    /// Automerge sync of room documents.
    StateSync = 3,
    /// Client requests forwarded to the node that owns their session.
    Forward = 4,
    /// Heartbeats for failure detection.
    Health = 5,
}

impl Purpose {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Raft,
            2 => Self::Rooms,
            3 => Self::StateSync,
            4 => Self::Forward,
            5 => Self::Health,
            _ => return None,
        })
    }

    /// Largest frame on such a stream.
    pub fn max_frame(self) -> usize {
        match self {
            // Snapshots and handler versions (wasm bytes) travel here.
            Self::Raft => 64 << 20,
            Self::Rooms | Self::StateSync | Self::Forward => 4 << 20,
            Self::Health => 4 << 10,
        }
    }
}

/// QUIC application error codes we close with.
pub mod close {
    pub const NORMAL: u32 = 0;
    /// The peer sent something we could not decode or did not expect.
    pub const PROTOCOL: u32 = 1;
    /// The peer is not a member of this cluster.
    pub const UNKNOWN_NODE: u32 = 2;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 3;
}

/// Transport timing. The idle timeout only reclaims dead connections; failure
/// detection proper is the cluster's heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A node's QUIC endpoint. Dropped, its connections end at once, closes not yet sent
/// included, as when the process dies (a crash test relies on it, and the port is free
/// again at once): call [`Endpoint::shutdown`] first to tell peers.
/// Bytes of datagrams the peer socket may hold unread (see `Endpoint::bind`).
const RECV_BUFFER: usize = 8 << 20;

pub struct Endpoint {
    quic: quinn::Endpoint,
    node: NodeId,
    /// Where the QUIC stack and the WAN shim run (last: dropped after `quic`).
    io: IoThread,
}

impl Endpoint {
    /// Bind `addr` (UDP). With a [`Wan`], datagrams cross the emulated network.
    pub fn bind(
        addr: SocketAddr,
        tls: &NodeTls,
        wan: Option<&Wan>,
        timing: Timing,
    ) -> anyhow::Result<Self> {
        let io = IoThread::start(&format!("peer-io-{}", tls.node))?;
        let runtime = io.quinn();
        let socket = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("binding the peer port {addr}"))?;
        // A node busy for a moment must not drop its peers' datagrams at the socket
        // (each loss costs a congestion event): ask for more than the usual 208 KiB.
        // The kernel caps it at `net.core.rmem_max`; failing to get it is no error.
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(RECV_BUFFER);
        let mut udp = runtime.wrap_udp_socket(socket)?;
        if let Some(wan) = wan {
            let _in = io.handle().enter();
            udp = Arc::new(WanSocket::new(udp, wan.clone())?) as Arc<dyn AsyncUdpSocket>;
        }
        let transport = Arc::new(transport_config(timing)?);
        let mut server = tls.server_config()?;
        server.transport_config(transport.clone());
        let mut client = tls.client_config()?;
        client.transport_config(transport);
        let mut quic = quinn::Endpoint::new_with_abstract_socket(
            tls.endpoint_config(),
            Some(server),
            udp,
            runtime,
        )?;
        quic.set_default_client_config(client);
        Ok(Self {
            quic,
            node: tls.node.clone(),
            io,
        })
    }

    /// The runtime peer traffic runs on (see `io`): for what must answer a peer
    /// however busy the node's workers are, such as heartbeats.
    pub fn io(&self) -> &tokio::runtime::Handle {
        self.io.handle()
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.quic.local_addr()?)
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Dial `node` at `addr`. Fails unless the peer there holds `node`'s certificate
    /// from our cluster CA.
    pub async fn connect(&self, node: &NodeId, addr: SocketAddr) -> anyhow::Result<Peer> {
        let conn = self
            .quic
            .connect(addr, &node_dns_name(node))?
            .await
            .with_context(|| format!("connecting to {node} at {addr}"))?;
        Ok(Peer {
            node: node.clone(),
            conn,
        })
    }

    /// The next peer asking to connect, before its handshake. `None` once the endpoint
    /// is closed. The handshake takes a round trip at least, and a peer that stalls in
    /// it holds it for the idle timeout: a server runs each [`Arriving::handshake`] in a
    /// task of its own, so one slow peer holds up no other.
    pub async fn arrival(&self) -> Option<Arriving> {
        self.quic.accept().await.map(Arriving)
    }

    /// Close every connection and stop accepting.
    pub fn close(&self) {
        self.quic.close(close::SHUTDOWN.into(), b"shutting down");
    }

    /// Close, then wait (at most `grace`) until peers have been told.
    pub async fn shutdown(&self, grace: Duration) {
        self.close();
        let _ = tokio::time::timeout(grace, self.quic.wait_idle()).await;
    }
}

/// A peer asking to connect, its handshake not yet run.
pub struct Arriving(quinn::Incoming);

impl Arriving {
    pub fn remote(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Turn it away at once, without a handshake.
    pub fn refuse(self) {
        self.0.refuse();
    }

    /// Run the mutual-TLS handshake: the peer is whoever its certificate names.
    pub async fn handshake(self) -> anyhow::Result<Peer> {
        accepted(self.0).await
    }
}

async fn accepted(incoming: quinn::Incoming) -> anyhow::Result<Peer> {
    let remote = incoming.remote_address();
    let conn = incoming
        .await
        .with_context(|| format!("handshake with {remote}"))?;
    let node = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(node_of))
        .unwrap_or_else(|| Err(anyhow::anyhow!("no client certificate")));
    match node {
        Ok(node) => Ok(Peer { node, conn }),
        Err(e) => {
            conn.close(close::UNKNOWN_NODE.into(), b"certificate names no node");
            Err(e.context(format!("peer at {remote}")))
        }
    }
}

fn transport_config(timing: Timing) -> anyhow::Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(timing.keep_alive));
    t.max_idle_timeout(Some(timing.idle_timeout.try_into()?));
    // Long links between regions, where losses are mostly bursts at a busy receiver:
    // see `congestion`.
    t.congestion_controller_factory(Arc::new(crate::congestion::FlooredCubic::new(
        crate::congestion::WINDOW_FLOOR,
    )));
    Ok(t)
}

/// What a connection's path looks like now (see [`Peer::path`]).
#[derive(Debug, Clone, Copy)]
pub struct PathStats {
    /// The smoothed round trip.
    pub rtt: Duration,
    /// The congestion window, bytes.
    pub cwnd: u64,
    /// Packets sent and declared lost on this connection so far.
    pub sent_packets: u64,
    pub lost_packets: u64,
}

/// A connection to another node of the cluster.
#[derive(Clone)]
pub struct Peer {
    node: NodeId,
    conn: quinn::Connection,
}

/// A new stream from a peer: its purpose, then typed frames once the caller picks `T`.
pub struct Incoming {
    pub purpose: Purpose,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Incoming {
    /// The stream's bytes as they come (for a purpose that carries its own protocol).
    pub fn into_raw(self) -> (quinn::SendStream, quinn::RecvStream) {
        (self.send, self.recv)
    }

    /// Frames of `Req` in (what the opener sends), `Rep` out.
    pub fn framed<Req: DeserializeOwned, Rep: Serialize>(self) -> (FrameTx<Rep>, FrameRx<Req>) {
        framed(self.purpose, self.send, self.recv)
    }
}

fn framed<Out: Serialize, In: DeserializeOwned>(
    purpose: Purpose,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> (FrameTx<Out>, FrameRx<In>) {
    let max = purpose.max_frame();
    (
        FramedWrite::new(send, FrameCodec::new(max)),
        FramedRead::new(recv, FrameCodec::new(max)),
    )
}

impl Peer {
    /// The node at the other end, as its certificate names it.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// How the connection's path is doing, for the node's metrics.
    pub fn path(&self) -> PathStats {
        let p = self.conn.stats().path;
        PathStats {
            rtt: p.rtt,
            cwnd: p.cwnd,
            sent_packets: p.sent_packets,
            lost_packets: p.lost_packets,
        }
    }

    /// Open a stream for `purpose`: frames of `Req` out, `Rep` in.
    pub async fn open<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        purpose: Purpose,
    ) -> anyhow::Result<(FrameTx<Req>, FrameRx<Rep>)> {
        let (mut send, recv) = self.conn.open_bi().await?;
        send.write_all(&[purpose as u8]).await?;
        Ok(framed(purpose, send, recv))
    }

    /// Open a stream for `purpose` that carries bytes as they are.
    pub async fn open_raw(
        &self,
        purpose: Purpose,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.conn.open_bi().await?;
        send.write_all(&[purpose as u8]).await?;
        Ok((send, recv))
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// The next stream the peer opened. A stream naming no known purpose drops the peer.
    pub async fn accept(&self) -> anyhow::Result<Incoming> {
        let (send, mut recv) = self.conn.accept_bi().await?;
        let mut tag = [0u8; 1];
        recv.read_exact(&mut tag).await?;
        let Some(purpose) = Purpose::from_byte(tag[0]) else {
            self.refuse(&format!("unknown stream purpose {}", tag[0]));
            bail!(
                "{} opened a stream of unknown purpose {}",
                self.node,
                tag[0]
            );
        };
        Ok(Incoming {
            purpose,
            send,
            recv,
        })
    }

    /// Drop a peer that broke the protocol; it is logged here so every caller need not.
    pub fn refuse(&self, why: &str) {
        tracing::warn!(peer = %self.node, addr = %self.remote_address(), "dropping peer: {why}");
        self.conn.close(close::PROTOCOL.into(), why.as_bytes());
    }

    /// Close with a code from [`close`].
    pub fn close(&self, code: u32, reason: &str) {
        self.conn.close(code.into(), reason.as_bytes());
    }

    /// Resolves when the connection ends, with why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }
}
