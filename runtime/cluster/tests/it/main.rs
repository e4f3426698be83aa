//! edgeroom-cluster's integration tests: real QUIC endpoints, real redb, real openraft.

mod control;
mod health;
mod mesh;
