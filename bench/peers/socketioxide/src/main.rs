//! Benchmark peer: a socketioxide Socket.IO server implementing Edgeroom's `echo`
//! contract (`echo`, `broadcast`, `whoami`; rooms from `auth.room`), so the same load
//! generator can drive it, the Node peer and Edgeroom's `echo` example.

use std::{convert::Infallible, fmt, sync::Arc};

use serde::{Deserialize, Serialize, de, ser::SerializeTuple};
use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Data, SocketRef},
    handler::{FromMessageParts, Value as RawValue},
    socket::Socket,
};

/// All arguments of an event, however many. socketioxide expands tuple-like types
/// into separate arguments (any other type is only the first argument), so this
/// (de)serializes as a tuple of variable length.
struct Args(Vec<Value>);

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Args;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Args, A::Error> {
                let mut args = Vec::new();
                while let Some(v) = seq.next_element()? {
                    args.push(v);
                }
                Ok(Args(args))
            }
        }
        d.deserialize_tuple(usize::MAX, V)
    }
}

impl Serialize for Args {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

/// Whether the client asked for an acknowledgement (`AckSender` cannot tell).
struct WantsAck(bool);

impl<A: Adapter> FromMessageParts<A> for WantsAck {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        _: &mut RawValue,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(WantsAck(ack_id.is_some()))
    }
}

async fn on_connect(socket: SocketRef, Data(auth): Data<Value>) {
    let room = auth["room"].as_str().unwrap_or("/").to_owned();
    socket.join(room.clone());

    socket.on(
        "echo",
        async |s: SocketRef, WantsAck(wants), ack: AckSender, Data(args): Data<Args>| {
            if wants {
                ack.send(&args).ok();
            } else {
                s.emit("echo", &args).ok();
            }
        },
    );
    let to = room.clone();
    socket.on(
        "broadcast",
        async move |s: SocketRef, ack: AckSender, Data(args): Data<Args>| {
            s.to(to).emit("broadcast", &args).await.ok();
            ack.send(&Args(Vec::new())).ok();
        },
    );
    socket.on("whoami", async move |s: SocketRef, ack: AckSender| {
        ack.send(&json!({ "conn": s.id.to_string(), "room": room })).ok();
    });
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // max_payload matches Socket.IO's maxHttpBufferSize default (1 MB; socketioxide's is 100 kB).
    let (layer, io) = SocketIo::builder().max_payload(1_000_000).build_layer();
    io.ns("/", on_connect);
    let app = axum::Router::new().layer(layer);

    let port = std::env::var("PORT").unwrap_or_else(|_| "3001".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    axum::serve(listener, app).await
}
