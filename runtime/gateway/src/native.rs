//! The native protocol driver: one task pair per WebSocket connection.
//!
//! The reader decodes frames and turns them into room commands, in order; the writer
//! drains the connection's bounded outbox. Everything a client is sent — replies,
//! events, presence, state, errors — goes through that one queue, so it arrives in
//! the order it was produced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::Gateway;
use crate::auth;
use crate::rate::{self, Bucket};
use edgeroom_host::credential::{Capability, Credential};
use edgeroom_host::room::{
    AdoptOutcome, Interest, JoinOutcome, Link, Outbound, Outbox, OutboxReader, QueueBound,
    ReattachOutcome, RoomCmd, RoomHandle, RoomKey,
};
use edgeroom_host::session::token::Claims;
use edgeroom_host::session::{Holder, ResumeError, SessionRooms};
use edgeroom_proto::close::Disconnect;
use edgeroom_proto::ids::{AppName, ConnId, RoomId};
use edgeroom_proto::member::JoinAuth;
use edgeroom_proto::native::{self, ClientFrame, DecodeError, EventView, Format, Ref, ServerFrame};
use edgeroom_proto::payload::Payload;
use edgeroom_proto::{Cursor, ErrorCode, ProtoError};

/// Close codes (RFC 6455 and the private range).
/// A client sending only bad frames is cut off after this many in a row.
const MAX_BAD_FRAMES_IN_A_ROW: u32 = 100;
/// Server pings this often; a client silent for three intervals is gone.
const PING_EVERY: Duration = Duration::from_secs(20);
/// How long a resume waits for an older connection of the session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(3);
/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;
/// How long a closing connection may take to accept its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Events a history read returns without a `limit`, and at most with one.
const HISTORY_DEFAULT_EVENTS: usize = 100;
const HISTORY_MAX_EVENTS: usize = 1000;
/// Most bytes of events in one history reply (the rest is another read away).
const HISTORY_REPLY_BYTES: usize = 1 << 20;

struct Joined {
    handle: RoomHandle,
    auth: JoinAuth,
}

struct Conn {
    node: Arc<Gateway>,
    app: AppName,
    conn: ConnId,
    token: String,
    /// The generation of `token` (see `Claims::generation`).
    generation: u64,
    /// A room refused to let this connection take its session over: it leaves what
    /// it took and lets go of the session, which stays its owner's.
    refused: bool,
    outbox: Outbox,
    /// Whether this connection takes presence and state frames (`?presence=0&state=0`).
    interest: Interest,
    rooms: BTreeMap<RoomId, Joined>,
    bad_in_a_row: u32,
    /// Rooms this connection may still cause the node to load (see `rate`).
    creations: Bucket,
    /// Who the client is and what it may do; `None` until it presents a token where
    /// its app needs one.
    credential: Option<Credential>,
    /// When the connection is closed unless it authenticates (or refreshes) first.
    deadline: Option<Instant>,
}

/// Serve one upgraded connection until it ends.
pub async fn serve(
    socket: WebSocket,
    node: Arc<Gateway>,
    app: AppName,
    format: Format,
    interest: Interest,
    credential: Option<Credential>,
) {
    let metrics = node.metrics.clone();
    metrics.connections.inc();
    let limits = &node.config.limits;
    let bound = QueueBound {
        frames: limits.outbound_queue,
        bytes: limits.outbound_queue_bytes,
    };
    let (outbox, rx, kill) = Outbox::new(bound, format, metrics.clone());
    let conn_id = ConnId::random();
    let token = node.tokens.sign(&Claims {
        session: conn_id.clone(),
        app: app.clone(),
        node: Some(node.config.node_id.clone()),
        generation: 0,
    });
    let holder = Holder {
        user: credential.as_ref().and_then(|c| c.user.clone()),
        generation: 0,
        any_generation: false,
    };
    node.sessions.attach(conn_id.clone(), kill.clone(), holder);

    let (sink, mut stream) = socket.split();
    let (writer_done_tx, writer_done) = oneshot::channel();
    let writer = tokio::spawn(write_loop(sink, rx, kill.clone(), format, writer_done_tx));

    let mut c = Conn {
        node: node.clone(),
        app,
        conn: conn_id,
        token,
        generation: 0,
        refused: false,
        outbox,
        interest,
        rooms: BTreeMap::new(),
        bad_in_a_row: 0,
        creations: Bucket::new(limits.room_creations_per_sec, node.clock.mono_ms()),
        deadline: None,
        credential: None,
    };
    match credential {
        Some(credential) => c.set_credential(credential),
        None => {
            c.deadline = Some(node.clock.now() + Duration::from_millis(limits.auth_wait_ms));
        }
    }
    c.send(ServerFrame::Welcome {
        session: c.conn.clone(),
        node: node.config.node_id.to_string(),
        region: node.config.region.clone(),
        resume_token: c.token.clone(),
        resumed: false,
    });

    let mut go = node.clients_go_rx();
    let mut explicit_close = false;
    let mut writer_done = std::pin::pin!(writer_done);
    loop {
        let next = tokio::select! {
            m = tokio::time::timeout(PING_EVERY * 3, stream.next()) => m,
            _ = &mut writer_done => break,
            why = crate::gone(&mut go) => {
                kill.kill(why);
                break;
            }
            _ = until(c.deadline) => {
                kill.kill(match c.credential {
                    Some(_) => Disconnect::TokenExpired,
                    None => Disconnect::Unauthenticated,
                });
                break;
            }
        };
        let msg = match next {
            Err(_) => {
                kill.kill(Disconnect::NoTraffic);
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // Over the hard frame limit, bad UTF-8, broken framing: protocol-fatal.
                kill.kill(Disconnect::ProtocolError(e.to_string()));
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        kill.heard();
        let max = node.config.limits.max_frame_bytes;
        let frame = match msg {
            Message::Text(t) => native::decode_text(t.as_str(), max),
            Message::Binary(b) => native::decode_binary(&b, max),
            Message::Close(f) => {
                explicit_close = f
                    .as_ref()
                    .is_some_and(|f| f.code == edgeroom_proto::close::ws_code::NORMAL);
                break;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if !c.handle(frame).await {
            break;
        }
    }

    let app = c.app.clone();
    let mut rooms = SessionRooms::new();
    let ending = explicit_close || c.refused;
    for (room, joined) in std::mem::take(&mut c.rooms) {
        let cmd = if ending {
            RoomCmd::End {
                conn: c.conn.clone(),
            }
        } else {
            RoomCmd::Detach {
                conn: c.conn.clone(),
                outbox: c.outbox.clone(),
            }
        };
        joined.handle.send(cmd).await;
        rooms.insert(room, joined.auth);
    }
    if ending {
        node.sessions.end(&c.conn);
    } else {
        node.sessions
            .detach(c.conn.clone(), app, rooms, node.clock.mono_ms());
    }
    kill.kill(Disconnect::ConnectionClosed);
    let _ = writer.await;
    metrics.connections.dec();
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: OutboxReader,
    kill: Arc<edgeroom_host::room::KillSwitch>,
    format: Format,
    done: oneshot::Sender<()>,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        let first = tokio::select! {
            biased;
            _ = kill.killed() => break,
            item = rx.recv() => match item {
                Some(item) => to_message(&item, format),
                None => break,
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
            // A resume asks whether this client is still there: its pong says so.
            _ = kill.probed() => Message::Ping(Bytes::new()),
        };
        // Whatever else is already queued goes out in the same write: one syscall for a
        // burst, not one per frame.
        let write = async {
            sink.feed(first).await?;
            for _ in 0..WRITE_BATCH {
                match rx.try_recv() {
                    Ok(item) => sink.feed(to_message(&item, format)).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        // A client that stops reading blocks the write; the kill switch still wins.
        tokio::select! {
            biased;
            _ = kill.killed() => break,
            written = write => if written.is_err() { break },
        }
    }
    if let Some(reason) = kill.reason() {
        let frame = CloseFrame {
            code: reason.ws_code(),
            reason: Utf8Bytes::from(truncate_reason(&reason.to_string())),
        };
        // Whatever is still queued in the socket goes first; give a slow reader a while.
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = done.send(());
}

/// Sleeps until `at`; never wakes for `None`.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Close reasons must fit a control frame (123 bytes).
fn truncate_reason(r: &str) -> String {
    let mut end = r.len().min(123);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    r[..end].to_owned()
}

fn to_message(item: &Outbound, format: Format) -> Message {
    let bytes = match item {
        Outbound::Event(e) => e.encoded(format, |e| {
            let view = EventView {
                room: &e.room,
                event: &e.event,
                payload: &e.payload,
                from: e.from.as_ref(),
                cursor: &e.cursor,
            };
            native::encode_event(&view, format)
        }),
        Outbound::Shared(s) => s.encoded(format, |f| native::encode(f, format)),
        Outbound::Frame(f) => Bytes::from(native::encode(f, format)),
    };
    match format {
        // Encoded from Rust strings by serde_json: always UTF-8.
        Format::Json => {
            Message::Text(Utf8Bytes::try_from(bytes).unwrap_or_else(|_| Utf8Bytes::from("{}")))
        }
        Format::MsgPack => Message::Binary(bytes),
    }
}

impl Conn {
    fn send(&self, frame: ServerFrame) {
        let _ = self.outbox.frame(frame);
    }

    fn answer(&self, r#ref: Option<Ref>, error: ProtoError, room: Option<RoomId>) {
        self.node.metrics.bad_frame(error.code.as_str());
        match r#ref {
            Some(r#ref) => self.send(ServerFrame::Reply {
                r#ref,
                result: Err(error),
            }),
            None => self.send(ServerFrame::Error { error, room }),
        }
    }

    /// How `room` reaches this connection: presence and state frames unless the client
    /// said otherwise when it connected, presence only where its token allows.
    fn link(&self, room: &RoomId) -> Link {
        let presence = self
            .credential
            .as_ref()
            .is_some_and(|c| c.allows(room, Capability::Presence));
        let interest = Interest {
            presence: self.interest.presence && presence,
            state: self.interest.state,
        };
        Link::new(self.outbox.clone(), interest).with_token(self.generation)
    }

    fn set_credential(&mut self, credential: Credential) {
        self.deadline = auth::expiry(&self.node, &credential);
        self.credential = Some(credential);
    }

    /// The connection's credential, or the error to answer with if it has none.
    fn credential(&self) -> Result<&Credential, ProtoError> {
        self.credential
            .as_ref()
            .ok_or_else(|| auth::required(&self.node))
    }

    /// A token presented after connecting: the first, or a fresh one before the
    /// current expires. A fresh token must name the same user.
    fn authenticate(&mut self, token: &str, r#ref: Option<Ref>) {
        let credential = match auth::check(&self.node, &self.app, Some(token)) {
            Ok(c) => c,
            Err(e) => return self.answer(r#ref, e, None),
        };
        if let Some(current) = &self.credential
            && current.user.is_some()
            && current.user != credential.user
        {
            let e = ProtoError::new(
                ErrorCode::BadToken,
                "a fresh token must name the same user as the connection's",
            );
            return self.answer(r#ref, e, None);
        }
        self.set_credential(credential);
        if let Some(r#ref) = r#ref {
            self.send(ServerFrame::Reply {
                r#ref,
                result: Ok(None),
            });
        }
    }

    fn key(&self, room: &RoomId) -> RoomKey {
        RoomKey {
            app: self.app.clone(),
            room: room.clone(),
        }
    }

    /// Handle one decoded (or undecodable) frame. False ends the connection.
    async fn handle(&mut self, frame: Result<ClientFrame, DecodeError>) -> bool {
        let frame = match frame {
            Ok(f) => {
                self.bad_in_a_row = 0;
                f
            }
            Err(DecodeError { error, r#ref }) => {
                self.answer(r#ref, error, None);
                self.bad_in_a_row += 1;
                if self.bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW {
                    self.outbox.kill(Disconnect::TooManyBadFrames);
                    return false;
                }
                return true;
            }
        };
        match frame {
            ClientFrame::Join { room, auth, r#ref } => self.join(room, auth, r#ref).await,
            ClientFrame::Leave { room, r#ref } => {
                let Some(joined) = self.rooms.remove(&room) else {
                    self.answer(
                        r#ref,
                        ProtoError::new(ErrorCode::NotJoined, format!("not a member of {room}")),
                        Some(room),
                    );
                    return true;
                };
                let (done, was) = oneshot::channel();
                let sent = joined
                    .handle
                    .send(RoomCmd::Leave {
                        conn: self.conn.clone(),
                        r#ref: r#ref.clone(),
                        done,
                    })
                    .await;
                if !sent || was.await != Ok(true) {
                    self.answer(
                        r#ref,
                        ProtoError::new(ErrorCode::NotJoined, format!("not a member of {room}")),
                        Some(room),
                    );
                }
            }
            ClientFrame::Emit {
                room,
                event,
                payload,
                r#ref,
                id,
            } => {
                let Some(joined) = self.rooms.get(&room) else {
                    self.answer(
                        r#ref,
                        ProtoError::new(
                            ErrorCode::NotJoined,
                            format!("join {room} before emitting to it"),
                        ),
                        Some(room),
                    );
                    return true;
                };
                let allowed = self
                    .credential()
                    .and_then(|c| auth::may(&self.node, c, &room, Capability::Publish));
                if let Err(e) = allowed {
                    self.answer(r#ref, e, Some(room));
                    return true;
                }
                let cmd = RoomCmd::Emit {
                    conn: self.conn.clone(),
                    outbox: self.outbox.clone(),
                    event,
                    payload,
                    r#ref: r#ref.clone(),
                    id,
                };
                if !joined.handle.send(cmd).await {
                    self.rooms.remove(&room);
                    self.answer(
                        r#ref,
                        ProtoError::new(
                            ErrorCode::Internal,
                            format!("room {room} stopped; join it again"),
                        ),
                        Some(room),
                    );
                }
            }
            ClientFrame::Resume {
                token,
                cursors,
                r#ref,
            } => {
                self.resume(token, cursors, r#ref).await;
                // Refused a session it claimed: the connection goes.
                return !self.refused;
            }
            ClientFrame::Authenticate { token, r#ref } => self.authenticate(&token, r#ref),
            ClientFrame::History {
                room,
                cursor,
                limit,
                r#ref,
            } => self.history(room, cursor, limit, r#ref).await,
            ClientFrame::Ping { r#ref } => {
                if let Some(r#ref) = r#ref {
                    self.send(ServerFrame::Reply {
                        r#ref,
                        result: Ok(None),
                    });
                }
            }
        }
        true
    }

    /// A history read: the events of a joined room after `cursor` that this member
    /// may see, where the token allows `history`. In the reply's data: `events` (as
    /// `event` frames in JSON, attachments inline), `more` (the limit or the byte
    /// bound cut them short: ask again after the last one's cursor) and `missing`
    /// (events after the cursor the log no longer has).
    async fn history(
        &mut self,
        room: RoomId,
        cursor: Option<Cursor>,
        limit: Option<u32>,
        r#ref: Option<Ref>,
    ) {
        if let Err(e) = self
            .credential()
            .and_then(|c| auth::may(&self.node, c, &room, Capability::History))
        {
            return self.answer(r#ref, e, Some(room));
        }
        let not_joined =
            || ProtoError::new(ErrorCode::NotJoined, format!("not a member of {room}"));
        let Some(joined) = self.rooms.get(&room) else {
            return self.answer(r#ref, not_joined(), Some(room.clone()));
        };
        let (done, read) = oneshot::channel();
        let asked = joined
            .handle
            .send(RoomCmd::History {
                conn: self.conn.clone(),
                after: cursor.unwrap_or_default(),
                done,
            })
            .await;
        let Some(read) = read.await.ok().flatten().filter(|_| asked) else {
            return self.answer(r#ref, not_joined(), Some(room.clone()));
        };
        let limit = limit
            .map_or(HISTORY_DEFAULT_EVENTS, |l| l as usize)
            .clamp(1, HISTORY_MAX_EVENTS);
        // Each event's JSON form is spliced into the reply as it is encoded, not
        // parsed back.
        let (mut events, mut bytes) = (Vec::new(), 0);
        for e in &read.events {
            let view = EventView {
                room: &room,
                event: &e.event,
                payload: &e.payload,
                from: e.from.as_ref(),
                cursor: &e.cursor,
            };
            let encoded = native::encode_event(&view, Format::Json);
            if events.len() == limit
                || (bytes + encoded.len() > HISTORY_REPLY_BYTES && !events.is_empty())
            {
                break;
            }
            bytes += encoded.len();
            events.push(encoded);
        }
        let more = events.len() < read.events.len();
        let events = events.join(&b","[..]);
        let data = format!(
            r#"{{"events":[{}],"more":{more},"missing":{}}}"#,
            String::from_utf8_lossy(&events),
            read.missing
        );
        if let Some(r#ref) = r#ref {
            self.send(ServerFrame::Reply {
                r#ref,
                result: Ok(Some(Payload {
                    json: format!("[{data}]"),
                    binaries: Vec::new(),
                })),
            });
        }
    }

    async fn join(&mut self, room: RoomId, auth: String, r#ref: Option<Ref>) {
        let user = match self
            .credential()
            .and_then(|c| auth::may(&self.node, c, &room, Capability::Join).map(|()| c))
        {
            Ok(c) => c.user.clone(),
            Err(e) => return self.answer(r#ref, e, Some(room)),
        };
        let auth = JoinAuth { json: auth, user };
        // A room already in `rooms` still gets the join: it knows whether we are a
        // member (it answers `already_joined`) or were kicked meanwhile.
        let max = self.node.config.limits.max_rooms_per_conn;
        if self.rooms.len() >= max && !self.rooms.contains_key(&room) {
            self.answer(
                r#ref,
                ProtoError::new(
                    ErrorCode::TooManyRooms,
                    format!("a connection may be in at most {max} rooms"),
                ),
                Some(room),
            );
            return;
        }
        let key = self.key(&room);
        if let Err(e) = rate::may_create(&self.node, &mut self.creations, &key) {
            self.answer(r#ref, e, Some(room));
            return;
        }
        match self
            .node
            .rooms
            .join(
                &key,
                &self.conn,
                &auth,
                &self.link(&room),
                r#ref.clone(),
                None,
            )
            .await
        {
            Some((JoinOutcome::Joined, handle)) => {
                self.rooms.insert(room, Joined { handle, auth });
            }
            Some(_) => {}
            None => self.answer(
                r#ref,
                ProtoError::new(
                    ErrorCode::UnknownApp,
                    format!("app {} does not exist", self.app),
                ),
                Some(room),
            ),
        }
    }

    async fn resume(
        &mut self,
        token: String,
        cursors: BTreeMap<RoomId, Cursor>,
        r#ref: Option<Ref>,
    ) {
        let user = match self.credential() {
            Ok(c) => c.user.clone(),
            Err(e) => return self.answer(r#ref, e, None),
        };
        let claims = match self.node.tokens.verify(&token) {
            Ok(c) if c.app == self.app => c,
            Ok(_) => {
                self.answer(
                    r#ref,
                    ProtoError::new(ErrorCode::BadToken, "resume token belongs to another app"),
                    None,
                );
                return;
            }
            Err(e) => {
                self.answer(
                    r#ref,
                    ProtoError::new(ErrorCode::BadToken, e.to_string()),
                    None,
                );
                return;
            }
        };
        if !self.rooms.is_empty() {
            self.answer(
                r#ref,
                ProtoError::new(ErrorCode::BadState, "resume must come before any join"),
                None,
            );
            return;
        }
        let old = claims.session;
        if old == self.conn {
            self.answer(
                r#ref,
                ProtoError::new(
                    ErrorCode::BadState,
                    "this connection already is that session",
                ),
                None,
            );
            return;
        }
        let rooms = match self
            .node
            .sessions
            .take(
                &old,
                &self.app,
                user.as_ref(),
                claims.generation,
                TAKEOVER_WAIT,
            )
            .await
        {
            Ok(rooms) => Some(rooms),
            // Another node held the session (it may be dead): the rooms the client
            // names take the member over from their other replicas.
            Err(ResumeError::Gone) if self.node.cluster.is_some() && !cursors.is_empty() => None,
            Err(
                e @ (ResumeError::Gone
                | ResumeError::WrongApp
                | ResumeError::Busy
                | ResumeError::OtherUser
                | ResumeError::Stale
                | ResumeError::Live),
            ) => {
                self.answer(
                    r#ref,
                    ProtoError::new(
                        ErrorCode::ResumeFailed,
                        format!("{e}; continuing as a new session"),
                    ),
                    None,
                );
                return;
            }
        };
        // This connection becomes the old session, with the session's next token: the
        // one it came with is spent.
        self.node.sessions.end(&self.conn);
        self.conn = old;
        let generation = claims.generation.saturating_add(1);
        self.generation = generation;
        self.token = self.node.tokens.sign(&Claims {
            session: self.conn.clone(),
            app: self.app.clone(),
            node: Some(self.node.config.node_id.clone()),
            generation,
        });
        let holder = Holder {
            user,
            generation,
            any_generation: false,
        };
        self.node
            .sessions
            .attach(self.conn.clone(), self.outbox.kill_switch(), holder);
        self.send(ServerFrame::Welcome {
            session: self.conn.clone(),
            node: self.node.config.node_id.to_string(),
            region: self.node.config.region.clone(),
            resume_token: self.token.clone(),
            resumed: true,
        });
        if let Some(r#ref) = r#ref.clone() {
            self.send(ServerFrame::Reply {
                r#ref,
                result: Ok(None),
            });
        }
        let Some(rooms) = rooms else {
            self.adopt(cursors).await;
            return;
        };
        for (room, auth) in rooms {
            let key = self.key(&room);
            let cursor = cursors.get(&room).cloned();
            let handle = match self
                .node
                .rooms
                .reattach(&key, &self.conn, &self.link(&room), cursor.clone())
                .await
            {
                Some((ReattachOutcome::Reattached, h)) => Some(h),
                Some((_, _)) => match self
                    .node
                    .rooms
                    .join(&key, &self.conn, &auth, &self.link(&room), None, cursor)
                    .await
                {
                    Some((JoinOutcome::Joined, h)) => Some(h),
                    _ => None,
                },
                None => None,
            };
            if let Some(handle) = handle {
                self.rooms.insert(room, Joined { handle, auth });
            }
        }
    }

    /// Resume on this node a session another node held: each room the client names
    /// takes the member over from its other replicas, replaying from its cursor.
    async fn adopt(&mut self, cursors: BTreeMap<RoomId, Cursor>) {
        for (room, cursor) in cursors {
            let key = self.key(&room);
            let link = self.link(&room);
            let user = self.credential.as_ref().and_then(|c| c.user.as_ref());
            let adopted = self
                .node
                .rooms
                .adopt(&key, &self.conn, &link, Some(cursor), user)
                .await;
            match adopted {
                Some((AdoptOutcome::Adopted { auth }, handle)) => {
                    self.rooms.insert(room, Joined { handle, auth });
                }
                // A spent token, or another user's session: this connection lets go
                // of it and goes (the rooms it did take on see it leave).
                Some((AdoptOutcome::Refused, _)) => {
                    self.refused = true;
                    self.outbox.kill(Disconnect::SessionRefused);
                    return;
                }
                _ => self.send(ServerFrame::Error {
                    error: ProtoError::new(
                        ErrorCode::ResumeFailed,
                        format!("no longer a member of {room}; join it again"),
                    ),
                    room: Some(room),
                }),
            }
        }
    }
}
