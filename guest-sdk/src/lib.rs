//! Write Edgeroom room handlers in Rust.
//!
//! A handler is a WebAssembly component that Edgeroom runs once per room per node. It
//! decides who may join, answers and relays events, and keeps the room's state in a
//! replicated document. Implement [`Handler`] (every method has a default), export it
//! with [`export_handler!`], and build with `cargo build --target wasm32-wasip2 --release`.
//!
//! ```no_run
//! use edgeroom_sdk::{Args, Event, Handler, room, state};
//! use serde_json::json;
//!
//! struct Scoreboard;
//!
//! impl Handler for Scoreboard {
//!     // Anyone with a name may join; the name is their presence.
//!     fn on_join(conn: String, auth: serde_json::Value) -> Result<(), String> {
//!         let name = auth["name"].as_str().ok_or("auth.name is required")?;
//!         room::set_presence(&conn, &json!({ "name": name }))
//!     }
//!
//!     fn on_message(ev: Event) -> Result<Option<Args>, String> {
//!         match ev.name.as_str() {
//!             // `score {points}`: add to the sender's total, tell everyone, reply with the total.
//!             "score" => {
//!                 let points: i64 = ev.args.parse::<serde_json::Value>(0)?["points"].as_i64().unwrap_or(1);
//!                 let total = state::increment(&format!("scores/{}", ev.conn), points)?;
//!                 room::broadcast("scored", &Args::json(&json!({ "conn": ev.conn, "total": total })));
//!                 Ok(Some(Args::json(&json!({ "total": total }))))
//!             }
//!             other => Err(format!("unknown event {other}")),
//!         }
//!     }
//! }
//!
//! edgeroom_sdk::export_handler!(Scoreboard);
//! ```
//!
//! The handler crate is a `cdylib`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//! [dependencies]
//! edgeroom-sdk = "0.1"
//! serde_json = "1"
//! ```
//!
//! Rules of the sandbox: each call has a CPU deadline (50 ms by default) and each
//! instance a memory cap (32 MiB by default); there is no filesystem, network, clock
//! or environment (use [`room::now_ms`]). Memory does not outlive the instance, which
//! is replaced on deploy, after a failed call and when the room goes idle: keep what
//! matters in [`state`].

mod args;
pub mod room;
pub mod state;

pub use args::{Args, Value};

#[doc(hidden)]
#[allow(
    missing_docs,
    dead_code,
    clippy::all,
    clippy::pedantic,
    unsafe_op_in_unsafe_fn
)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "handler",
        pub_export_macro: true,
    });
}

/// A connection id: stable for a client session, also across resume.
pub type ConnId = String;

/// An event a member sent.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who sent it.
    pub conn: ConnId,
    /// The event name.
    pub name: String,
    /// Its arguments.
    pub args: Args,
    /// Whether the sender waits for a reply (a Socket.IO ack or a native `ref`).
    pub wants_reply: bool,
}

/// A room handler. Every method has a default, so implement only what you need.
///
/// Calls for one room never overlap: each runs to completion before the next starts.
pub trait Handler {
    /// A connection asks to join. `auth` is what the client sent (`null` when nothing).
    /// Return an error to refuse it; the client sees the message. Default: accept.
    fn on_join(conn: ConnId, auth: serde_json::Value) -> Result<(), String> {
        let _ = (conn, auth);
        Ok(())
    }

    /// A member sent an event. `Ok(Some(args))` is the reply when the sender asked for
    /// one; an error is sent back to the sender. Default: refuse every event.
    fn on_message(event: Event) -> Result<Option<Args>, String> {
        Err(format!("this room does not handle event {:?}", event.name))
    }

    /// A member left: explicitly, by disconnecting for good, or by being kicked.
    fn on_leave(conn: ConnId) {
        let _ = conn;
    }

    /// The timer set with [`room::set_timer`] fired.
    fn on_timer() {}
}

#[doc(hidden)]
pub struct Adapter<H>(core::marker::PhantomData<H>);

impl<H: Handler> bindings::Guest for Adapter<H> {
    fn on_join(conn: String, auth: String) -> Result<(), String> {
        let auth = serde_json::from_str(&auth).unwrap_or(serde_json::Value::Null);
        H::on_join(conn, auth)
    }

    fn on_message(
        conn: String,
        event: String,
        payload: bindings::Payload,
        wants_reply: bool,
    ) -> Result<Option<bindings::Payload>, String> {
        let event = Event {
            conn,
            name: event,
            args: Args::from_payload(payload),
            wants_reply,
        };
        H::on_message(event).map(|r| r.map(Args::into_payload))
    }

    fn on_leave(conn: String) {
        H::on_leave(conn)
    }

    fn on_timer() {
        H::on_timer()
    }
}

/// Export a [`Handler`] as this component's entry points. Use it once, in the handler crate.
#[macro_export]
macro_rules! export_handler {
    ($ty:ty) => {
        const _: () = {
            type __EdgeroomGuest = $crate::Adapter<$ty>;
    $crate::bindings::export!(__EdgeroomGuest with_types_in $crate::bindings);
        };
    };
}
