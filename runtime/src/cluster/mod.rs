//! The cluster: nodes in several regions acting as one service.
//!
//! - `control`: the Raft control plane (apps, handler versions, keys, nodes, secret).
//! - `mesh`: accepts peer connections and hands each stream to the part that serves
//!   its purpose.

pub mod control;
pub mod mesh;
