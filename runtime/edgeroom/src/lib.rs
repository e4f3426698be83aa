//! Edgeroom: an edge node that runs WebAssembly room handlers.
//!
//! Clients join rooms over WebSocket; each room runs its app's handler (a wasm
//! component) one event at a time, keeps its state in an Automerge document and its
//! recent events in a log that lets clients resume without loss. See ARCHITECTURE.md
//! for the map; `docs/protocol.md` for the wire contract.
//!
//! This crate is the top of the stack: it wires a node together from the layers below
//! (`edgeroom-gateway` → `edgeroom-host` → `edgeroom-cluster` / `edgeroom-sandbox` →
//! `edgeroom-transport` / `edgeroom-room` → `edgeroom-proto`), starts it (`node`,
//! `builder`, `serve`), runs fleets of them in one process (`fleet`) and is the CLI.

pub mod builder;
pub mod examples;
pub mod fleet;
pub mod node;
pub mod serve;

pub use builder::{NodeBuilder, NodeHandle};
pub use edgeroom_host::{Clock, NodeConfig, clock, config};
pub use node::{Node, RunningNode, start, start_with_clock};
