//! One user's side of Socket.IO v5 over an Engine.IO v4 WebSocket, sans-IO, behaving
//! as socket.io-client 4.8 does: it joins its room through the main namespace
//! (`auth.room`), emits with acks, answers pings, keeps the last event's offset, and
//! after a drop reconnects with `{pid, offset}` in its CONNECT (connection state
//! recovery). Like socket.io-client, it does not send again an emit whose ack never
//! came. Edgeroom's gateway has no idempotency ids for Socket.IO.

use std::time::Duration;

use serde_json::{Value, json};

use super::session::{Out, gap_count, numbered};
use crate::history::Op;
use crate::plan::App;

#[derive(Debug)]
pub struct SioSession {
    name: String,
    room: String,
    app: App,
    /// The recovery token of the last CONNECT.
    pid: Option<String>,
    offset: Option<String>,
    /// A member of the room as the history knows it.
    member: bool,
    /// Connected to the namespace on this connection.
    live: bool,
    /// Asked to recover on this connection.
    recovering: bool,
    node: Option<String>,
    next_n: u64,
    next_ack: u64,
    /// Ack id → message number.
    acks: std::collections::BTreeMap<u64, u64>,
    /// The server's ping interval plus its timeout, from the open packet.
    dead_after: Duration,
}

impl SioSession {
    pub fn new(name: &str, room: &str, app: App) -> Self {
        Self {
            name: name.into(),
            room: room.into(),
            app,
            pid: None,
            offset: None,
            member: false,
            live: false,
            recovering: false,
            node: None,
            next_n: 1,
            next_ack: 0,
            acks: Default::default(),
            dead_after: Duration::from_secs(45),
        }
    }

    pub fn live(&self) -> bool {
        self.live
    }

    /// How long silence may last before the connection is taken for dead (as
    /// socket.io-client does: the ping interval plus the ping timeout).
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// The connection is open to `node` (the Engine.IO open packet follows).
    pub fn connected(&mut self, node: &str) {
        self.node = Some(node.to_string());
    }

    pub fn closed(&mut self, why: &str) -> Vec<Out> {
        // socket.io-client forgets the acks of a dead connection.
        self.acks.clear();
        self.node = None;
        self.recovering = false;
        let was_live = std::mem::take(&mut self.live);
        if self.member && was_live {
            vec![Out::Record(Op::Drop {
                client: self.name.clone(),
                room: self.room.clone(),
                why: Some(why.to_string()),
            })]
        } else {
            Vec::new()
        }
    }

    pub fn send_next(&mut self) -> Vec<Out> {
        if !self.live {
            return Vec::new();
        }
        let n = self.next_n;
        self.next_n += 1;
        let ack = self.next_ack;
        self.next_ack += 1;
        self.acks.insert(ack, n);
        let (client, room) = (self.name.clone(), self.room.clone());
        let (event, op) = match self.app {
            App::Chat => (
                json!(["message", {"text": format!("{} {n}", self.name)}]),
                Op::Send { client, room, n },
            ),
            App::Counter => (
                json!(["incr", {"by": 1}]),
                Op::Increment {
                    client,
                    room,
                    id: n,
                    by: 1,
                },
            ),
        };
        vec![Out::Record(op), Out::Send(format!("42{ack}{event}"))]
    }

    /// One WebSocket text message: one Engine.IO packet.
    pub fn frame(&mut self, text: &str) -> Vec<Out> {
        let Some(kind) = text.chars().next() else {
            return Vec::new();
        };
        let rest = &text[1..];
        match kind {
            '0' => self.open(rest),
            '2' => vec![Out::Send("3".into())],
            '1' => vec![Out::Reconnect],
            '4' => self.socketio(rest),
            _ => Vec::new(),
        }
    }

    fn open(&mut self, body: &str) -> Vec<Out> {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let ms = |k: &str| v[k].as_u64().unwrap_or(25_000);
        self.dead_after = Duration::from_millis(ms("pingInterval") + ms("pingTimeout"));
        let mut auth = json!({"room": self.room});
        if self.app == App::Chat {
            auth["user"] = json!(self.name);
            auth["presence"] = json!(true);
        }
        self.recovering = false;
        if let (Some(pid), true) = (&self.pid, self.member) {
            auth["pid"] = json!(pid);
            if let Some(offset) = &self.offset {
                auth["offset"] = json!(offset);
            }
            self.recovering = true;
        }
        vec![Out::Send(format!("40{auth}"))]
    }

    fn socketio(&mut self, packet: &str) -> Vec<Out> {
        let Some(kind) = packet.chars().next() else {
            return Vec::new();
        };
        let rest = &packet[1..];
        match kind {
            '0' => self.connect_reply(rest),
            '1' | '4' => vec![Out::Reconnect],
            '2' => self.event(rest),
            '3' => self.ack(rest),
            _ => Vec::new(),
        }
    }

    fn connect_reply(&mut self, body: &str) -> Vec<Out> {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let sid = v["sid"].as_str().unwrap_or_default().to_string();
        let pid = v["pid"].as_str().map(str::to_owned);
        let recovered = self.recovering && pid.is_some() && pid == self.pid;
        let node = self.node.clone().unwrap_or_default();
        let mut out = vec![Out::Record(Op::Connect {
            client: self.name.clone(),
            node: node.clone(),
            session: sid,
        })];
        self.pid = pid;
        self.live = true;
        let (client, room) = (self.name.clone(), self.room.clone());
        if recovered {
            out.push(Out::Record(Op::Resume { client, room, node }));
        } else {
            // A new membership: what it was owed before does not follow it.
            self.offset = None;
            self.member = true;
            out.push(Out::Record(Op::Join { client, room }));
        }
        out
    }

    fn event(&mut self, body: &str) -> Vec<Out> {
        let Ok(Value::Array(args)) = serde_json::from_str::<Value>(body) else {
            return Vec::new();
        };
        let name = args.first().and_then(Value::as_str).unwrap_or_default();
        match name {
            "message" => {
                // The room's offset comes as the last argument.
                if let Some(offset) = args.last().and_then(Value::as_str) {
                    self.offset = Some(offset.to_string());
                }
                let Some((from, n)) = numbered(&args[1]) else {
                    return Vec::new();
                };
                vec![Out::Record(Op::Deliver {
                    client: self.name.clone(),
                    room: self.room.clone(),
                    from,
                    n,
                })]
            }
            "edgeroom:error" if args[1]["code"] == "history_gap" => {
                let missed = gap_count(args[1]["message"].as_str().unwrap_or_default());
                vec![Out::Record(Op::Gap {
                    client: self.name.clone(),
                    room: self.room.clone(),
                    missed,
                })]
            }
            _ => Vec::new(),
        }
    }

    fn ack(&mut self, body: &str) -> Vec<Out> {
        let digits = body.chars().take_while(char::is_ascii_digit).count();
        let Ok(id) = body[..digits].parse::<u64>() else {
            return Vec::new();
        };
        let Some(n) = self.acks.remove(&id) else {
            return Vec::new();
        };
        let args: Value = serde_json::from_str(&body[digits..]).unwrap_or(Value::Null);
        let (client, room) = (self.name.clone(), self.room.clone());
        let op = match (&args[0]["error"]["code"], self.app) {
            (Value::String(code), _) => Op::Refused {
                client,
                room,
                n,
                code: code.clone(),
            },
            (_, App::Chat) => Op::Ack { client, room, n },
            (_, App::Counter) => Op::IncrementAcked {
                client,
                room,
                id: n,
            },
        };
        vec![Out::Record(op)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(out: &[Out]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn records(out: &[Out]) -> Vec<Op> {
        out.iter()
            .filter_map(|o| match o {
                Out::Record(op) => Some(op.clone()),
                _ => None,
            })
            .collect()
    }

    const OPEN: &str = r#"0{"sid":"e1","upgrades":[],"pingInterval":5000,"pingTimeout":4000,"maxPayload":1000000}"#;

    #[test]
    fn connects_emits_with_acks_and_recovers_with_pid_and_offset() {
        let mut s = SioSession::new("u1", "chat-0", App::Chat);
        s.connected("a-1");
        let out = s.frame(OPEN);
        assert_eq!(s.dead_after(), Duration::from_secs(9));
        let connect = &sent(&out)[0];
        assert!(connect.starts_with("40{"), "{connect}");
        let auth: Value = serde_json::from_str(&connect[2..]).unwrap();
        assert_eq!(
            auth,
            json!({"room": "chat-0", "user": "u1", "presence": true})
        );
        let out = s.frame(r#"40{"sid":"m1","pid":"p1"}"#);
        assert!(matches!(&records(&out)[1], Op::Join { .. }));
        assert_eq!(sent(&s.frame("2")), ["3"], "pong");
        let out = s.send_next();
        assert_eq!(sent(&out), [r#"420["message",{"text":"u1 1"}]"#]);
        assert!(matches!(
            &records(&s.frame("430[]"))[0],
            Op::Ack { n: 1, .. }
        ));
        let out = s.frame(r#"42["message",{"user":"u2","text":"u2 9","ts":1},"a-1:3.7"]"#);
        assert!(matches!(&records(&out)[0], Op::Deliver { n: 9, .. }));
        // An emit in flight when the connection drops is forgotten, not sent again.
        s.send_next();
        assert!(matches!(&records(&s.closed("edge"))[0], Op::Drop { .. }));
        s.connected("b-1");
        let out = s.frame(OPEN);
        let auth: Value = serde_json::from_str(&sent(&out)[0][2..]).unwrap();
        assert_eq!(
            (&auth["pid"], &auth["offset"]),
            (&json!("p1"), &json!("a-1:3.7"))
        );
        let out = s.frame(r#"40{"sid":"m1","pid":"p1"}"#);
        assert!(matches!(&records(&out)[1], Op::Resume { node, .. } if node == "b-1"));
        assert!(records(&s.frame("431[]")).is_empty(), "the old ack is gone");
    }

    #[test]
    fn a_recovery_refused_is_a_new_membership_and_errors_are_refusals() {
        let mut s = SioSession::new("u1", "counter-1", App::Counter);
        s.connected("a-1");
        s.frame(OPEN);
        s.frame(r#"40{"sid":"m1","pid":"p1"}"#);
        s.closed("edge");
        s.connected("b-1");
        s.frame(OPEN);
        let out = s.frame(r#"40{"sid":"m2","pid":"p2"}"#);
        assert!(matches!(&records(&out)[1], Op::Join { .. }));
        let out = s.send_next();
        assert_eq!(sent(&out), [r#"420["incr",{"by":1}]"#]);
        let out = s.frame(r#"430[{"error":{"code":"handler_failed","message":"x"}}]"#);
        assert!(matches!(&records(&out)[0], Op::Refused { code, .. } if code == "handler_failed"));
        let gap = r#"42["edgeroom:error",{"code":"history_gap","message":"4 events were lost"}]"#;
        assert!(matches!(
            records(&s.frame(gap))[0],
            Op::Gap { missed: 4, .. }
        ));
    }
}
