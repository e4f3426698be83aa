//! Edgeroom: an edge node that runs WebAssembly room handlers.
//!
//! Clients join rooms over WebSocket; each room runs its app's handler (a wasm
//! component) one event at a time, keeps its state in an Automerge document and its
//! recent events in a log that lets clients resume without loss. See ARCHITECTURE.md
//! for the map; `docs/protocol.md` for the wire contract.
//!
//! Layering, top to bottom: `gateway` → `session` → `room` → `sandbox` / `state`,
//! with `store`, `apps` and `metrics` beside them; ids and wire codecs are the
//! `edgeroom-proto` crate below them all.

pub mod apps;
pub mod builder;
pub mod clock;
pub mod config;
pub mod examples;
pub mod fleet;
pub mod gateway;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod room;
pub mod session;
pub mod store;

pub use builder::{NodeBuilder, NodeHandle};
pub use clock::Clock;
pub use config::NodeConfig;
pub use node::{Node, RunningNode, start, start_with_clock};
