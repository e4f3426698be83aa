//! One user's side of the native protocol, sans-IO: frames in, frames to send and
//! history records out. The driver (`user::drive`) owns the socket, the delays and
//! the clock; this knows what a careful client does — join once, resume with its token
//! and cursor after a drop, send again (same idempotency id) what was never
//! acknowledged, and say what it saw.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::history::Op;
use crate::plan::App;

/// What the session wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Write this frame.
    Send(String),
    Record(Op),
    /// Give up on this connection and start again (a join the room refused).
    Reconnect,
}

/// Who sent a chat message and its number: the chat example's broadcast is
/// `{user, text: "<user> <n>", ts}` and geo-sim's users write `<name> <n>`.
pub fn numbered(message: &Value) -> Option<(String, u64)> {
    let (from, n) = message["text"].as_str()?.split_once(' ')?;
    Some((from.to_string(), n.parse().ok()?))
}

/// How many events a `history_gap` notice says were lost (its message starts with the
/// count).
pub fn gap_count(message: &str) -> u64 {
    message
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What a `ref` was for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Waiting {
    Join,
    Resume,
    /// The ping after a resume: once answered, every room was taken over (a room that
    /// could not be says so before it).
    ResumeSettled,
    Emit(u64),
    Ping,
}

#[derive(Debug)]
pub struct Session {
    name: String,
    room: String,
    app: App,
    /// The session to resume, once there is one.
    token: Option<String>,
    /// This connection's own session, which becomes the one to resume if it joins.
    conn_token: Option<String>,
    /// The room's cursor after the last event received.
    cursor: Option<String>,
    /// A member of the room, as the history knows it (joined, not left or refused a
    /// resume).
    member: bool,
    /// A member on this very connection (joined or resumed on it).
    live: bool,
    /// The node of this connection.
    node: Option<String>,
    next_n: u64,
    next_ref: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Sent, not answered: (n, the emit without its ref), sent again after a resume.
    unanswered: BTreeMap<u64, Value>,
}

impl Session {
    pub fn new(name: &str, room: &str, app: App) -> Self {
        Self {
            name: name.into(),
            room: room.into(),
            app,
            token: None,
            conn_token: None,
            cursor: None,
            member: false,
            live: false,
            node: None,
            next_n: 1,
            next_ref: 1,
            waiting: BTreeMap::new(),
            unanswered: BTreeMap::new(),
        }
    }

    /// A member on this connection: it may send.
    pub fn live(&self) -> bool {
        self.live
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    fn send(&mut self, mut frame: Value, waiting: Waiting) -> Out {
        let r = self.next_ref;
        self.next_ref += 1;
        frame["ref"] = json!(r);
        self.waiting.insert(r, waiting);
        Out::Send(frame.to_string())
    }

    fn record(&self, op: Op) -> Out {
        Out::Record(op)
    }

    /// The connection went away: the member (if it is one) dropped; what was waiting
    /// for an answer waits for the resume — a chat message, which the room passes over
    /// if it has it already, not an increment: an increment the node took before it
    /// was cut off may still count after the heal, so sending it again could count it
    /// twice (see `docs/protocol.md`). It stays unanswered.
    pub fn closed(&mut self, why: &str) -> Vec<Out> {
        self.waiting.clear();
        if self.app == App::Counter {
            self.unanswered.clear();
        }
        self.node = None;
        let was_live = std::mem::take(&mut self.live);
        if self.member && was_live {
            vec![self.record(Op::Drop {
                client: self.name.clone(),
                room: self.room.clone(),
                why: Some(why.to_string()),
            })]
        } else {
            Vec::new()
        }
    }

    /// A ping, to learn whether the connection still carries anything.
    pub fn ping(&mut self) -> Out {
        self.send(json!({"type": "ping"}), Waiting::Ping)
    }

    /// The workload's next message (chat) or increment (counter), if it may send.
    pub fn send_next(&mut self) -> Vec<Out> {
        if !self.live {
            return Vec::new();
        }
        let n = self.next_n;
        self.next_n += 1;
        let (emit, op) = match self.app {
            App::Chat => (
                json!({"type": "emit", "room": self.room, "event": "message",
                       "data": {"text": format!("{} {n}", self.name)},
                       "id": format!("{}-{n}", self.name)}),
                Op::Send {
                    client: self.name.clone(),
                    room: self.room.clone(),
                    n,
                },
            ),
            App::Counter => (
                json!({"type": "emit", "room": self.room, "event": "incr",
                       "data": {"by": 1}, "id": format!("{}-{n}", self.name)}),
                Op::Increment {
                    client: self.name.clone(),
                    room: self.room.clone(),
                    id: n,
                    by: 1,
                },
            ),
        };
        self.unanswered.insert(n, emit.clone());
        vec![self.record(op), self.send(emit, Waiting::Emit(n))]
    }

    /// One frame from the server.
    pub fn frame(&mut self, text: &str) -> Vec<Out> {
        let Ok(f) = serde_json::from_str::<Value>(text) else {
            return Vec::new();
        };
        match f["type"].as_str() {
            Some("welcome") => self.welcome(&f),
            Some("reply") => self.reply(&f),
            Some("event") => self.event(&f),
            Some("error") => self.error(&f),
            Some("kicked") => {
                self.member = false;
                self.live = false;
                vec![self.record(Op::Leave {
                    client: self.name.clone(),
                    room: self.room.clone(),
                })]
            }
            _ => Vec::new(),
        }
    }

    fn welcome(&mut self, f: &Value) -> Vec<Out> {
        let node = f["node"].as_str().unwrap_or_default().to_string();
        let session = f["session"].as_str().unwrap_or_default().to_string();
        if f["resumed"].as_bool() == Some(true) {
            // The session's next token (the one the resume used is spent); the
            // resume's reply follows, and the room is settled after it.
            self.conn_token = f["resume_token"].as_str().map(str::to_owned);
            return Vec::new();
        }
        self.node = Some(node.clone());
        self.conn_token = f["resume_token"].as_str().map(str::to_owned);
        let mut out = vec![self.record(Op::Connect {
            client: self.name.clone(),
            node,
            session,
        })];
        match (&self.token, self.member) {
            (Some(token), true) => {
                // The room is always named: another node takes the member over only
                // for the rooms a resume names. Before its first event the cursor is
                // empty, which replays the room's whole log (what the client had in an
                // earlier membership comes again: the checker counts it).
                let frame = json!({"type": "resume", "token": token,
                    "cursors": {self.room.clone(): self.cursor.clone().unwrap_or_default()}});
                out.push(self.send(frame, Waiting::Resume));
            }
            _ => {
                let frame = json!({"type": "join", "room": self.room, "auth": {"user": self.name}});
                out.push(self.send(frame, Waiting::Join));
            }
        }
        out
    }

    fn join_again(&mut self) -> Vec<Out> {
        self.forget_membership();
        let frame = json!({"type": "join", "room": self.room, "auth": {"user": self.name}});
        vec![self.send(frame, Waiting::Join)]
    }

    /// The old membership is over: what was not answered will never be.
    fn forget_membership(&mut self) {
        self.member = false;
        self.live = false;
        self.unanswered.clear();
        self.cursor = None;
    }

    /// The node refused the session to this client (closed with 4001 after a resume
    /// with a token the session had replaced): the next connection starts afresh.
    pub fn session_refused(&mut self) {
        self.token = None;
        self.forget_membership();
    }

    fn reply(&mut self, f: &Value) -> Vec<Out> {
        let Some(waiting) = f["ref"].as_u64().and_then(|r| self.waiting.remove(&r)) else {
            return Vec::new();
        };
        let ok = f["ok"].as_bool() == Some(true);
        let code = f["error"]["code"].as_str().unwrap_or("unknown").to_string();
        match waiting {
            Waiting::Join if ok => {
                self.member = true;
                self.live = true;
                self.token = self.conn_token.clone();
                vec![self.record(Op::Join {
                    client: self.name.clone(),
                    room: self.room.clone(),
                })]
            }
            Waiting::Join => vec![Out::Reconnect],
            Waiting::Resume if ok => {
                // This connection is the old session now, with its next token.
                self.token = self.conn_token.clone();
                vec![self.send(json!({"type": "ping"}), Waiting::ResumeSettled)]
            }
            // Unknown session, window passed, bad token: a new membership.
            Waiting::Resume => self.join_again(),
            Waiting::ResumeSettled => {
                if !self.member {
                    return Vec::new();
                }
                self.live = true;
                let mut out = vec![self.record(Op::Resume {
                    client: self.name.clone(),
                    room: self.room.clone(),
                    node: self.node.clone().unwrap_or_default(),
                })];
                let again: Vec<(u64, Value)> = self
                    .unanswered
                    .iter()
                    .map(|(n, e)| (*n, e.clone()))
                    .collect();
                for (n, emit) in again {
                    out.push(self.send(emit, Waiting::Emit(n)));
                }
                out
            }
            Waiting::Emit(n) => {
                self.unanswered.remove(&n);
                let (client, room) = (self.name.clone(), self.room.clone());
                vec![self.record(match (ok, self.app) {
                    (true, App::Chat) => Op::Ack { client, room, n },
                    (true, App::Counter) => Op::IncrementAcked {
                        client,
                        room,
                        id: n,
                    },
                    (false, _) => Op::Refused {
                        client,
                        room,
                        n,
                        code,
                    },
                })]
            }
            Waiting::Ping => Vec::new(),
        }
    }

    fn event(&mut self, f: &Value) -> Vec<Out> {
        if f["room"].as_str() != Some(&self.room) {
            return Vec::new();
        }
        if let Some(c) = f["cursor"].as_str() {
            self.cursor = Some(c.to_string());
        }
        if f["event"].as_str() != Some("message") {
            return Vec::new();
        }
        let Some((from, n)) = numbered(&f["data"]) else {
            return Vec::new();
        };
        vec![self.record(Op::Deliver {
            client: self.name.clone(),
            room: self.room.clone(),
            from,
            n,
        })]
    }

    fn error(&mut self, f: &Value) -> Vec<Out> {
        let message = f["message"].as_str().unwrap_or_default();
        match f["code"].as_str() {
            Some("history_gap") => {
                let missed = gap_count(message);
                vec![self.record(Op::Gap {
                    client: self.name.clone(),
                    room: self.room.clone(),
                    missed,
                })]
            }
            // The resume went through, but no replica could take the member over.
            Some("resume_failed") if f["room"].as_str() == Some(&self.room) => self.join_again(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(out: &[Out]) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send(s) => serde_json::from_str(s).ok(),
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

    fn welcome(node: &str, resumed: bool) -> String {
        json!({"type": "welcome", "session": "s1", "node": node, "region": "r",
               "resume_token": "tok", "resumed": resumed})
        .to_string()
    }

    fn reply(r: u64, ok: bool) -> String {
        if ok {
            json!({"type": "reply", "ref": r, "ok": true, "args": []}).to_string()
        } else {
            json!({"type": "reply", "ref": r, "ok": false,
                   "error": {"code": "resume_failed", "message": "gone"}})
            .to_string()
        }
    }

    #[test]
    fn joins_sends_and_resumes_with_its_cursor_sending_again_what_was_not_answered() {
        let mut s = Session::new("u1", "chat-0", App::Chat);
        let out = s.frame(&welcome("a-1", false));
        assert_eq!(sent(&out)[0]["type"], "join");
        assert_eq!(sent(&out)[0]["auth"]["user"], "u1");
        let out = s.frame(&reply(1, true));
        assert!(matches!(&records(&out)[0], Op::Join { .. }));
        assert!(s.live());
        let out = s.send_next();
        let emit = &sent(&out)[0];
        assert_eq!(emit["data"]["text"], "u1 1");
        assert_eq!(emit["id"], "u1-1");
        let ev = json!({"type": "event", "room": "chat-0", "event": "message",
                        "data": {"user": "u2", "text": "u2 7", "ts": 1}, "cursor": "a-1:1.3"});
        let out = s.frame(&ev.to_string());
        assert_eq!(
            records(&out),
            vec![Op::Deliver {
                client: "u1".into(),
                room: "chat-0".into(),
                from: "u2".into(),
                n: 7
            }]
        );
        // The connection drops before message 1 is answered.
        assert!(matches!(&records(&s.closed("edge"))[0], Op::Drop { .. }));
        assert!(s.send_next().is_empty(), "no sending while away");
        let out = s.frame(&welcome("b-1", false));
        let resume = &sent(&out)[0];
        assert_eq!(resume["type"], "resume");
        assert_eq!(resume["token"], "tok");
        assert_eq!(resume["cursors"]["chat-0"], "a-1:1.3");
        let r = resume["ref"].as_u64().unwrap();
        let rotated = json!({"type": "welcome", "session": "s1", "node": "b-1", "region": "r",
                             "resume_token": "tok2", "resumed": true});
        assert!(s.frame(&rotated.to_string()).is_empty());
        let out = s.frame(&reply(r, true));
        let ping = sent(&out)[0].clone();
        assert_eq!(ping["type"], "ping");
        let out = s.frame(&reply(ping["ref"].as_u64().unwrap(), true));
        assert_eq!(
            records(&out),
            vec![Op::Resume {
                client: "u1".into(),
                room: "chat-0".into(),
                node: "b-1".into()
            }]
        );
        let again = &sent(&out)[0];
        assert_eq!(again["id"], "u1-1", "sent again with its idempotency id");
        let out = s.frame(&reply(again["ref"].as_u64().unwrap(), true));
        assert!(matches!(&records(&out)[0], Op::Ack { n: 1, .. }));
        // The next resume uses the token the last one was given.
        s.closed("edge");
        let out = s.frame(&welcome("c-1", false));
        assert_eq!(sent(&out)[0]["token"], "tok2");
        // Refused the session (a token it never got, say): it starts afresh.
        s.closed("edge");
        s.session_refused();
        let out = s.frame(&welcome("c-1", false));
        assert_eq!(sent(&out)[0]["type"], "join");
    }

    #[test]
    fn a_failed_resume_is_a_new_membership() {
        let mut s = Session::new("u1", "counter-1", App::Counter);
        s.frame(&welcome("a-1", false));
        s.frame(&reply(1, true));
        let out = s.send_next();
        assert!(matches!(
            &records(&out)[0],
            Op::Increment { id: 1, by: 1, .. }
        ));
        s.closed("edge");
        let out = s.frame(&welcome("b-1", false));
        let r = sent(&out)[0]["ref"].as_u64().unwrap();
        let out = s.frame(&reply(r, false));
        let join = &sent(&out)[0];
        assert_eq!(join["type"], "join");
        let out = s.frame(&reply(join["ref"].as_u64().unwrap(), true));
        assert!(matches!(&records(&out)[0], Op::Join { .. }));
        // The unanswered increment is not sent again under a new membership.
        assert_eq!(sent(&s.send_next())[0]["id"], "u1-2");
    }

    #[test]
    fn an_unanswered_increment_is_not_sent_again_after_a_resume() {
        let mut s = Session::new("u1", "counter-1", App::Counter);
        s.frame(&welcome("a-1", false));
        s.frame(&reply(1, true));
        s.send_next();
        s.closed("edge");
        let out = s.frame(&welcome("b-1", false));
        let r = sent(&out)[0]["ref"].as_u64().unwrap();
        let out = s.frame(&reply(r, true));
        let ping = sent(&out)[0]["ref"].as_u64().unwrap();
        let out = s.frame(&reply(ping, true));
        assert!(matches!(&records(&out)[0], Op::Resume { .. }));
        assert!(sent(&out).is_empty(), "the increment stays unanswered");
    }

    #[test]
    fn a_room_that_could_not_be_taken_over_is_joined_again_and_gaps_are_counted() {
        let mut s = Session::new("u1", "chat-0", App::Chat);
        s.frame(&welcome("a-1", false));
        s.frame(&reply(1, true));
        s.closed("edge");
        let out = s.frame(&welcome("b-1", false));
        let r = sent(&out)[0]["ref"].as_u64().unwrap();
        let out = s.frame(&reply(r, true));
        let ping = sent(&out)[0]["ref"].as_u64().unwrap();
        let err = json!({"type": "error", "code": "resume_failed", "room": "chat-0",
                         "message": "no longer a member of chat-0; join it again"});
        let out = s.frame(&err.to_string());
        assert_eq!(sent(&out)[0]["type"], "join");
        assert!(
            records(&s.frame(&reply(ping, true))).is_empty(),
            "no resume recorded"
        );
        let gap = json!({"type": "error", "code": "history_gap", "room": "chat-0",
                         "message": "3 events from node a-1 were lost"});
        assert!(matches!(
            records(&s.frame(&gap.to_string()))[0],
            Op::Gap { missed: 3, .. }
        ));
    }
}
