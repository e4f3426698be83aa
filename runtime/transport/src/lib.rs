//! How nodes talk to each other: QUIC (quinn) with mutual TLS (rustls), one stream per
//! purpose, length-delimited postcard frames with size limits.
//!
//! - `tls`: the cluster CA, node certificates, rustls configs (identity = certificate).
//! - `frame`: the sans-IO frame codec and the typed stream halves built on it.
//! - `endpoint`: bind, dial, accept, open and accept purpose streams.
//! - `congestion`: the links' congestion controller (Cubic with a floor).
//! - `io`: the thread peer traffic runs on, apart from the node's workers.
//! - `wan`: the UDP shim that adds delay, jitter, loss and partitions per pair of nodes,
//!   so tests and `geo-sim` run the real QUIC stack over an emulated WAN.
//!
//! Everything above this module (Raft, room replication, forwarding) sees only
//! `Endpoint`, `Peer` and typed frames.

pub mod congestion;
pub mod endpoint;
pub mod frame;
mod io;
pub mod seal;
pub mod tls;
pub mod wan;

pub use endpoint::{Arriving, Endpoint, Incoming, PathStats, Peer, Purpose, Timing, close};
pub use frame::{FrameError, FrameRx, FrameTx};
/// The QUIC stream types `Peer::open_raw` and `Incoming::into_raw` give out.
pub use quinn::{RecvStream, SendStream};
pub use seal::Sealer;
pub use tls::{ClusterCa, NodeTls};
pub use wan::{Burst, LinkRule, Wan};
