//! The example handlers, built from `examples/` by the build script and embedded, so
//! `edgeroom dev` and the tests need no files beside the binary.

/// `examples/echo`.
pub const ECHO: &[u8] = include_bytes!(concat!(env!("EDGEROOM_EXAMPLES_DIR"), "/echo.wasm"));
/// `examples/chat`.
pub const CHAT: &[u8] = include_bytes!(concat!(env!("EDGEROOM_EXAMPLES_DIR"), "/chat.wasm"));
/// `examples/counter`.
pub const COUNTER: &[u8] = include_bytes!(concat!(env!("EDGEROOM_EXAMPLES_DIR"), "/counter.wasm"));

/// Every example, by app name.
pub const ALL: [(&str, &[u8]); 3] = [("echo", ECHO), ("chat", CHAT), ("counter", COUNTER)];
