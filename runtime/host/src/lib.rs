//! edgeroom-host: what a node is made of below its gateway — room actors and their
//! replication links, the handler registry, sessions and resume tokens, storage,
//! metrics, config and the node's one clock.
//!
//! Each loaded room is one task (`room`) that owns its members, log, document and
//! handler instance (`edgeroom-sandbox`), fed commands through a bounded queue; in a
//! cluster its replica on every node with members talks to the others through
//! `room::replicate`, over links the cluster hands over (`edgeroom-cluster`).
//!
//! Invariant: nothing here speaks a client protocol or holds a client socket — rooms
//! queue what members are sent into bounded outboxes and never wait on a client; the
//! gateway above turns sockets into room commands and outboxes into frames.

pub mod admin_keys;
pub mod apps;
pub mod clock;
pub mod config;
pub mod credential;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod registry;
pub mod room;
pub mod sealed;
pub mod session;
pub mod store;

pub use clock::Clock;
pub use config::NodeConfig;
