//! The runtime's integration tests, in one binary so the heavy dependencies (wasmtime,
//! cranelift, openraft, quinn, automerge, axum) are linked once: real nodes on loopback,
//! real QUIC and Raft, the example handlers compiled for real, third-party clients.
//! Each module is one area; `common` holds the shared test support.

mod common;

mod auth;
mod cli;
mod cluster;
mod dataplane;
mod deploy;
mod examples;
mod hostile;
mod native;
mod resume;
mod sandbox;
mod socketio;
