//! One benchmark client connection, over Edgeroom's native protocol or Socket.IO v5 over
//! an Engine.IO WebSocket (which also drives the Socket.IO peers in `bench/`).
//!
//! The writer half is a task fed through a channel, so the reader can answer
//! Engine.IO pings without the caller's help.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Native,
    Socketio,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub protocol: Protocol,
    /// The node connections go to; with several nodes of one cluster, the first.
    pub addr: SocketAddr,
    /// Every node, `addr` first: `connect_to` picks one.
    pub nodes: Vec<SocketAddr>,
    /// Native: the app. Socket.IO: unused (the path picks the app).
    pub app: String,
    /// Socket.IO: the Engine.IO path, e.g. `/socket.io/`.
    pub path: String,
}

/// What the server sent, as far as the benchmarks care.
#[derive(Debug)]
pub enum Incoming {
    /// A reply to an emit, with its first argument.
    Ack {
        ok: bool,
        data: Value,
    },
    /// An event with its first argument.
    Event {
        event: String,
        data: Value,
    },
    Other,
}

pub struct Sender {
    tx: mpsc::UnboundedSender<Message>,
    protocol: Protocol,
    room: String,
}

pub struct Receiver {
    stream: futures_util::stream::SplitStream<Ws>,
    tx: mpsc::UnboundedSender<Message>,
    protocol: Protocol,
}

impl Target {
    fn url(&self, addr: SocketAddr) -> String {
        match self.protocol {
            Protocol::Native => format!("ws://{addr}/v1/ws?app={}", self.app),
            Protocol::Socketio => {
                format!("ws://{addr}{}?EIO=4&transport=websocket", self.path)
            }
        }
    }

    /// Connect (from `from`, if given) and join `room`.
    pub async fn connect(
        &self,
        room: &str,
        from: Option<std::net::IpAddr>,
    ) -> anyhow::Result<(Sender, Receiver)> {
        self.connect_to(0, room, from).await
    }

    /// [`Target::connect`] to node `node` (modulo the number of nodes).
    pub async fn connect_to(
        &self,
        node: usize,
        room: &str,
        from: Option<std::net::IpAddr>,
    ) -> anyhow::Result<(Sender, Receiver)> {
        let addr = self
            .nodes
            .get(node % self.nodes.len().max(1))
            .copied()
            .unwrap_or(self.addr);
        let ws = match from {
            None => tokio_tungstenite::connect_async(self.url(addr)).await?.0,
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                let stream = socket.connect(addr).await?;
                stream.set_nodelay(true)?;
                let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
                tokio_tungstenite::client_async(self.url(addr), stream)
                    .await?
                    .0
            }
        };
        let (mut sink, mut stream) = ws.split();
        match self.protocol {
            Protocol::Native => {
                let join = json!({"type": "join", "room": room, "ref": 0});
                sink.send(Message::Text(join.to_string().into())).await?;
                loop {
                    let t = next_text(&mut stream).await?;
                    let v: Value = serde_json::from_str(&t)?;
                    if v["type"] == "reply" && v["ref"] == 0 {
                        anyhow::ensure!(v["ok"] == true, "join refused: {v}");
                        break;
                    }
                }
            }
            Protocol::Socketio => {
                let open = next_text(&mut stream).await?;
                anyhow::ensure!(open.starts_with('0'), "expected an open packet, got {open}");
                let connect = format!("40{}", json!({ "room": room }));
                sink.send(Message::Text(connect.into())).await?;
                loop {
                    let t = next_text(&mut stream).await?;
                    if t == "2" {
                        sink.send(Message::Text("3".into())).await?;
                    } else if t.starts_with("40") {
                        break;
                    } else if t.starts_with("44") {
                        anyhow::bail!("connect refused: {t}");
                    }
                }
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(m) = rx.try_recv() {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        Ok((
            Sender {
                tx: tx.clone(),
                protocol: self.protocol,
                room: room.to_owned(),
            },
            Receiver {
                stream,
                tx,
                protocol: self.protocol,
            },
        ))
    }
}

async fn next_text(stream: &mut futures_util::stream::SplitStream<Ws>) -> anyhow::Result<String> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => anyhow::bail!("closed by the server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection closed"),
        }
    }
}

impl Sender {
    /// Emit `event` with one argument, asking for a reply when `ack` is given.
    pub fn emit(&self, event: &str, data: &Value, ack: Option<u64>) -> anyhow::Result<()> {
        let text = match self.protocol {
            Protocol::Native => {
                let mut f =
                    json!({"type": "emit", "room": self.room, "event": event, "data": data});
                if let Some(id) = ack {
                    f["ref"] = json!(id);
                }
                f.to_string()
            }
            Protocol::Socketio => {
                let id = ack.map(|i| i.to_string()).unwrap_or_default();
                format!("42{id}{}", json!([event, data]))
            }
        };
        self.tx
            .send(Message::Text(text.into()))
            .map_err(|_| anyhow::anyhow!("connection writer stopped"))
    }
}

impl Receiver {
    /// The next thing the server sent; `None` when the connection ended.
    pub async fn next(&mut self) -> Option<anyhow::Result<Incoming>> {
        loop {
            let t = match self.stream.next().await? {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(e) => return Some(Err(e.into())),
            };
            let parsed = match self.protocol {
                Protocol::Native => parse_native(t.as_str()),
                Protocol::Socketio => {
                    if t.as_str() == "2" {
                        let _ = self.tx.send(Message::Text("3".into()));
                        continue;
                    }
                    parse_socketio(t.as_str())
                }
            };
            return Some(parsed);
        }
    }
}

fn parse_native(t: &str) -> anyhow::Result<Incoming> {
    let mut v: Value = serde_json::from_str(t)?;
    let first = |v: &mut Value| match v.get_mut("data") {
        Some(d) => d.take(),
        None => v["args"].get_mut(0).map(Value::take).unwrap_or(Value::Null),
    };
    Ok(match v["type"].as_str() {
        Some("reply") => Incoming::Ack {
            ok: v["ok"] == true,
            data: first(&mut v),
        },
        Some("event") => Incoming::Event {
            event: v["event"].as_str().unwrap_or_default().to_owned(),
            data: first(&mut v),
        },
        _ => Incoming::Other,
    })
}

/// `42[...]` events and `43<id>[...]` acks of the main namespace.
fn parse_socketio(t: &str) -> anyhow::Result<Incoming> {
    let Some(rest) = t.strip_prefix('4') else {
        return Ok(Incoming::Other);
    };
    let mut chars = rest.chars();
    let kind = chars.next().map(String::from).unwrap_or_default();
    let rest = chars.as_str();
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    // The ack id: replies come in order, so the benchmarks only count them.
    let json = &rest[digits..];
    let mut args: Vec<Value> = match kind.as_str() {
        "2" | "3" => serde_json::from_str(json)?,
        _ => return Ok(Incoming::Other),
    };
    Ok(if kind == "3" {
        Incoming::Ack {
            ok: true,
            data: args.get_mut(0).map(Value::take).unwrap_or(Value::Null),
        }
    } else {
        let mut it = args.drain(..);
        let event = it
            .next()
            .and_then(|e| e.as_str().map(str::to_owned))
            .unwrap_or_default();
        Incoming::Event {
            event,
            data: it.next().unwrap_or(Value::Null),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socketio_acks_and_events() {
        match parse_socketio("4312[{\"t\":5}]").unwrap() {
            Incoming::Ack { data, .. } => assert_eq!(data["t"].as_u64(), Some(5)),
            other => panic!("{other:?}"),
        }
        match parse_socketio("42[\"broadcast\",{\"p\":1},\"n1:4\"]").unwrap() {
            Incoming::Event { event, data } => {
                assert_eq!((event.as_str(), data["p"].as_u64()), ("broadcast", Some(1)))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_socketio("3").unwrap(), Incoming::Other));
        assert!(parse_socketio("42{").is_err());
    }

    #[test]
    fn parses_native_replies_and_events() {
        match parse_native(r#"{"type":"reply","ref":3,"ok":true,"data":{"t":1}}"#).unwrap() {
            Incoming::Ack { ok, data } => assert!(ok && data["t"] == 1),
            other => panic!("{other:?}"),
        }
        match parse_native(r#"{"type":"event","event":"b","args":[{"p":2},3]}"#).unwrap() {
            Incoming::Event { event, data } => assert!(event == "b" && data["p"] == 2),
            other => panic!("{other:?}"),
        }
    }
}
