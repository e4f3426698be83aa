//! geo-sim: rehearse region failures before they happen.
//!
//! - `geo`: the map — region coordinates and the measured round trip between every
//!   pair (shipped: Azure's published P95 figures), fibre and access delays.
//! - `history`: the recorded history of a run, one JSON object per line.
//! - `scenario`: scenario files (topology, users, links, faults), checked against the
//!   map before anything starts.
//! - `check`: the checker — lost, duplicated, unexpected, out-of-order and skipped
//!   messages; counters, documents, presence and the control plane after the run.
//!
//! Invariant: the checker judges only what the history records; it is pure, so any
//! history can be checked again offline (`geo-sim check`).

pub mod analysis;
pub mod check;
pub mod emulation;
pub mod geo;
pub mod history;
pub mod network;
pub mod nodes;
pub mod observe;
pub mod plan;
pub mod recorder;
pub mod report;
pub mod run;
pub mod scenario;
pub mod user;
