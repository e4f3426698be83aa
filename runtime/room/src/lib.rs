//! A room's bookkeeping, with no I/O: what a room knows and decides, fed events and the
//! time by the node's room actors and replication, answering with what to do.
//!
//! - `core`: members and presence, the event log with its sequence numbers, resume
//!   cursors, idempotent publishes; `log`: one logged event and its shared encodings;
//!   `catchup`: what a resuming member is owed.
//! - `order`: per-origin FIFO of what other nodes' replicas send (duplicates dropped,
//!   gaps repaired or counted); `interest`: which nodes have members where, and where a
//!   message goes.
//! - `runs`: sequence runs from a durable counter, so numbers only grow per origin.
//! - `state`: the room's Automerge document, addressed by path.
//!
//! Invariant: no sockets, no tokio, no task, no clock read — time and randomness come
//! in as arguments, so every decision here is unit-tested and replayable.

pub mod catchup;
pub mod core;
pub mod interest;
pub mod log;
pub mod order;
pub mod runs;
pub mod state;
