//! The Socket.IO layer of one Engine.IO session: namespaces as rooms.
//!
//! Each namespace the client connects is a member of one room (its socket id is the
//! member's id, which handlers see). All of them share the session's one outbox, so
//! everything the rooms send leaves in the order it was produced; packets from the
//! client are handled one at a time in arrival order, never one task per event.
//!
//! Connection state recovery: the `pid` is a signed resume token for the member, and
//! an event's offset is the room cursor after it. A CONNECT with `{pid, offset}` takes
//! the detached member back and replays what came after the offset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Gateway;
use crate::auth;
use crate::rate::{self, Bucket};
use edgeroom_host::apps::AppSettings;
use edgeroom_host::credential::{Capability, Credential};
use edgeroom_host::room::{
    AdoptOutcome, Interest, JoinOutcome, Link, Outbound, Outbox, ReattachOutcome, RoomCmd,
    RoomHandle, RoomKey,
};
use edgeroom_host::session::token::Claims;
use edgeroom_host::session::{Holder, ResumeError, SessionRooms};
use edgeroom_proto::engineio::session::{CloseReason, Session};
use edgeroom_proto::engineio::{self, Packet as EioPacket};
use edgeroom_proto::ids::{AppName, ConnId, RoomId};
use edgeroom_proto::member::JoinAuth;
use edgeroom_proto::native::ServerFrame;
use edgeroom_proto::payload::Payload;
use edgeroom_proto::socketio::{self, Kind, Packet, Reassembly};
use edgeroom_proto::{Cursor, ErrorCode, ProtoError};
use edgeroom_room::core::LogEntry;

/// Where a recovering member was found.
enum Recovered {
    /// Detached on this node, with the auth it joined with.
    Here(ConnId, JoinAuth),
    /// Not here: in a cluster, another node held it (it may be dead).
    Elsewhere(ConnId),
}

impl Recovered {
    fn member(&self) -> &ConnId {
        match self {
            Recovered::Here(m, _) | Recovered::Elsewhere(m) => m,
        }
    }
}

/// What a recovering CONNECT asks for.
struct Resume<'a> {
    nsp: &'a str,
    room: &'a RoomId,
    link: &'a Link,
    offset: Option<Cursor>,
    credential: &'a Credential,
}

/// How long a recovering CONNECT waits for the old connection to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(3);

/// Reserved events: what Edgeroom itself tells Socket.IO clients.
pub const PRESENCE_EVENT: &str = "edgeroom:presence";
pub const STATE_EVENT: &str = "edgeroom:state";
pub const STATE_PATCH_EVENT: &str = "edgeroom:state-patch";
pub const ERROR_EVENT: &str = "edgeroom:error";
/// What a client emits (with an ack) to present a fresh token before its current one
/// expires: `socket.emit("edgeroom:authenticate", token, ack)`.
pub const AUTHENTICATE_EVENT: &str = "edgeroom:authenticate";

/// One connected (or connecting) namespace.
struct Socket {
    nsp: String,
    room: RoomId,
    member: ConnId,
    /// Connection state recovery is on for it (its `pid` is derived from `member`).
    recoverable: bool,
    handle: Option<RoomHandle>,
    connected: bool,
    auth: JoinAuth,
    /// What its CONNECT's `auth.token` allows (or the anonymous credential).
    credential: Credential,
    /// When the namespace is disconnected unless a fresh token comes first.
    expires: Option<Instant>,
}

/// A session's namespaces: a few at most, so a vector (a map's buckets would cost
/// every idle connection more memory than its sockets).
#[derive(Default)]
struct Sockets(Vec<Socket>);

impl Sockets {
    fn get(&self, nsp: &str) -> Option<&Socket> {
        self.0.iter().find(|s| s.nsp == nsp)
    }
    fn get_mut(&mut self, nsp: &str) -> Option<&mut Socket> {
        self.0.iter_mut().find(|s| s.nsp == nsp)
    }
    fn by_room(&self, room: &RoomId) -> Option<&Socket> {
        self.0.iter().find(|s| &s.room == room)
    }
    fn push(&mut self, socket: Socket) {
        // Exact growth: most sessions have one namespace for their whole life.
        self.0.reserve_exact(1);
        self.0.push(socket);
    }
    fn remove(&mut self, nsp: &str) -> Option<Socket> {
        let i = self.0.iter().position(|s| s.nsp == nsp)?;
        Some(self.0.swap_remove(i))
    }
    fn remove_room(&mut self, room: &RoomId) -> Option<Socket> {
        let i = self.0.iter().position(|s| &s.room == room)?;
        Some(self.0.swap_remove(i))
    }
}

/// What a reply from a room answers.
enum Pending {
    Connect { nsp: String },
    Ack { nsp: String, id: u64 },
}

pub struct SocketIo {
    node: Arc<Gateway>,
    app: AppName,
    settings: Arc<AppSettings>,
    outbox: Outbox,
    reassembly: Reassembly,
    sockets: Sockets,
    /// Replies awaited from rooms, by ref.
    pending: Vec<(u64, Pending)>,
    next_ref: u64,
    /// Close the session if no namespace is connected by then.
    connect_by: Option<Instant>,
    /// Rooms this session may still cause the node to load (see `rate`).
    creations: Bucket,
}

/// A protocol error: the whole Engine.IO session closes.
type Fatal = String;

impl SocketIo {
    pub fn new(
        node: Arc<Gateway>,
        app: AppName,
        settings: Arc<AppSettings>,
        outbox: Outbox,
    ) -> Self {
        let connect_by = node.clock.now().into_std()
            + Duration::from_millis(node.config.socketio.connect_timeout_ms);
        Self {
            app,
            settings,
            outbox,
            reassembly: Reassembly::default(),
            sockets: Sockets::default(),
            pending: Vec::new(),
            next_ref: 0,
            connect_by: Some(connect_by),
            creations: Bucket::new(
                node.config.limits.room_creations_per_sec,
                node.clock.mono_ms(),
            ),
            node,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        let expiries = self.sockets.0.iter().filter_map(|sk| sk.expires);
        self.connect_by.into_iter().chain(expiries).min()
    }

    pub async fn on_timeout(&mut self, now: Instant, s: &mut Session) {
        if self.connect_by.is_some_and(|t| now >= t) {
            self.connect_by = None;
            if self.sockets.0.is_empty() {
                s.close(CloseReason::Server("no namespace connected in time".into()));
            }
        }
        // A namespace whose token expired is disconnected, as a kicked one is.
        while let Some(i) = self
            .sockets
            .0
            .iter()
            .position(|sk| sk.expires.is_some_and(|t| now >= t))
        {
            let socket = self.sockets.0.swap_remove(i);
            let nsp = socket.nsp.clone();
            self.end(socket).await;
            let body =
                json!({ "code": ErrorCode::TokenExpired.as_str(), "message": "token expired" });
            self.emit(s, &nsp, ERROR_EVENT, &body);
            send_packet(s, Packet::new(Kind::Disconnect, &nsp, None));
        }
    }

    /// A text message from the client.
    pub async fn on_text(&mut self, text: &str, s: &mut Session) {
        let whole = self.reassembly.text(text);
        self.on_decoded(whole.map_err(|e| e.to_string()), s).await;
    }

    /// A binary message from the client: an attachment.
    pub async fn on_binary(&mut self, bytes: bytes::Bytes, s: &mut Session) {
        let whole = self.reassembly.binary(bytes);
        self.on_decoded(whole.map_err(|e| e.to_string()), s).await;
    }

    async fn on_decoded(
        &mut self,
        whole: Result<Option<socketio::Whole>, String>,
        s: &mut Session,
    ) {
        let r = match whole {
            Ok(Some((packet, binaries))) => self.dispatch(packet, binaries, s).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.node.metrics.bad_frame("socketio_bad_packet");
            s.close(CloseReason::ParseError(e));
        }
    }

    async fn dispatch(
        &mut self,
        p: Packet,
        binaries: Vec<bytes::Bytes>,
        s: &mut Session,
    ) -> Result<(), Fatal> {
        match p.kind {
            // Boxed: joining is rare and its future large; every session's task would
            // carry it otherwise.
            Kind::Connect => Box::pin(self.connect(p, s)).await,
            Kind::Disconnect => {
                let socket = self
                    .sockets
                    .remove(&p.nsp)
                    .ok_or("DISCONNECT for a namespace not connected")?;
                self.end(socket).await;
                Ok(())
            }
            Kind::Event => {
                let socket = match self.sockets.get(&p.nsp) {
                    Some(sk) if sk.connected => sk,
                    _ => return Err(format!("EVENT for {} before CONNECT", p.nsp)),
                };
                let data = p.data.as_deref().ok_or("EVENT without data")?;
                let (event, payload) =
                    socketio::split_event(data, binaries).map_err(|e| e.to_string())?;
                payload.validate()?;
                if event == AUTHENTICATE_EVENT {
                    let result = self.authenticate(&p.nsp, &payload);
                    self.answer_local(s, &p.nsp, p.id, result);
                    return Ok(());
                }
                let allowed = auth::may(
                    &self.node,
                    &socket.credential,
                    &socket.room,
                    Capability::Publish,
                );
                if let Err(e) = allowed {
                    self.answer_local(s, &p.nsp, p.id, Err(e));
                    return Ok(());
                }
                let handle = socket.handle.clone().ok_or("namespace has no room")?;
                let member = socket.member.clone();
                let r#ref = p.id.map(|id| {
                    self.remember(Pending::Ack {
                        nsp: p.nsp.clone(),
                        id,
                    })
                });
                let cmd = RoomCmd::Emit {
                    conn: member,
                    outbox: self.outbox.clone(),
                    event,
                    payload,
                    r#ref: r#ref.clone(),
                    id: None,
                };
                if !handle.send(cmd).await {
                    // The room stopped under us (it only does when the node stops).
                    send_packet(s, Packet::new(Kind::Disconnect, &p.nsp, None));
                    self.sockets.remove(&p.nsp);
                }
                Ok(())
            }
            // Acks answer server emits that asked for one; Edgeroom asks for none.
            Kind::Ack => Ok(()),
            Kind::ConnectError => Err("CONNECT_ERROR from a client".into()),
        }
    }

    fn remember(&mut self, p: Pending) -> Value {
        self.next_ref += 1;
        // Exact growth: an idle session keeps whatever capacity this reaches.
        self.pending.reserve_exact(1);
        self.pending.push((self.next_ref, p));
        Value::from(self.next_ref)
    }

    async fn connect(&mut self, p: Packet, s: &mut Session) -> Result<(), Fatal> {
        let nsp = p.nsp;
        if self.sockets.get(&nsp).is_some() {
            return Err(format!("second CONNECT for {nsp}"));
        }
        if !self.settings.accepts_namespace(&nsp) {
            self.connect_error(s, &nsp, "Invalid namespace", None);
            return Ok(());
        }
        let auth: serde_json::Map<String, Value> = match p.data.as_deref() {
            Some(d) => serde_json::from_str(d).map_err(|e| e.to_string())?,
            None => serde_json::Map::new(),
        };
        let room = match (nsp.as_str(), auth.get("room")) {
            ("/", Some(Value::String(r))) => match RoomId::new(r) {
                Ok(r) => r,
                Err(e) => {
                    self.connect_error(s, &nsp, &e.to_string(), Some("invalid_name"));
                    return Ok(());
                }
            },
            ("/", Some(_)) => {
                self.connect_error(s, &nsp, "auth.room must be a string", Some("invalid_name"));
                return Ok(());
            }
            _ => match RoomId::new(&nsp) {
                Ok(r) => r,
                Err(_) => {
                    self.connect_error(s, &nsp, "Invalid namespace", None);
                    return Ok(());
                }
            },
        };
        if self.sockets.by_room(&room).is_some() {
            let msg = format!("room {room} is already connected through another namespace");
            self.connect_error(s, &nsp, &msg, Some("already_joined"));
            return Ok(());
        }
        let max = self.node.config.limits.max_rooms_per_conn;
        if self.sockets.0.len() >= max {
            let msg = format!("a connection may be in at most {max} namespaces");
            self.connect_error(s, &nsp, &msg, Some("too_many_rooms"));
            return Ok(());
        }
        // The token is checked here and kept from the handler, which gets its `sub`.
        let mut auth = auth;
        let credential = match auth.remove("token") {
            None => auth::check(&self.node, &self.app, None),
            Some(Value::String(t)) => auth::check(&self.node, &self.app, Some(&t)),
            Some(_) => Err(ProtoError::new(
                ErrorCode::BadToken,
                "auth.token must be a string",
            )),
        };
        let credential = match credential
            .and_then(|c| auth::may(&self.node, &c, &room, Capability::Join).map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                self.connect_error(s, &nsp, &e.message, Some(e.code.as_str()));
                return Ok(());
            }
        };
        let flag = |k: &str| auth.get(k) == Some(&Value::Bool(true));
        let presence = flag("presence") && credential.allows(&room, Capability::Presence);
        let state = flag("state");
        let link = Link::new(self.outbox.clone(), Interest { presence, state });
        let auth_json = JoinAuth {
            json: Value::Object(auth.clone()).to_string(),
            user: credential.user.clone(),
        };
        self.connect_by = None;

        if self.settings.config.recovery
            && let Some(Value::String(pid)) = auth.get("pid")
            && let Some(found) = self.recover(pid, &room, &credential).await
        {
            let offset = match auth.get("offset") {
                Some(Value::String(o)) => o.parse::<Cursor>().ok(),
                _ => None,
            };
            let resumed = Resume {
                nsp: &nsp,
                room: &room,
                link: &link,
                offset,
                credential: &credential,
            };
            if self.resume(found, resumed, s).await {
                return Ok(());
            }
            // Not recoverable after all (the member left the room for good): a new
            // session, as socket.io gives once the old one is gone.
        }

        let key = self.key(&room);
        if let Err(e) = rate::may_create(&self.node, &mut self.creations, &key) {
            self.connect_error(s, &nsp, &e.message, Some(e.code.as_str()));
            return Ok(());
        }
        let member = ConnId::random();
        self.sockets.push(Socket {
            nsp: nsp.clone(),
            room: room.clone(),
            member: member.clone(),
            recoverable: self.settings.config.recovery,
            handle: None,
            connected: false,
            auth: auth_json.clone(),
            expires: auth::expiry(&self.node, &credential).map(|t| t.into_std()),
            credential: credential.clone(),
        });
        let r#ref = self.remember(Pending::Connect { nsp: nsp.clone() });
        match self
            .node
            .rooms
            .join(&key, &member, &auth_json, &link, Some(r#ref), None)
            .await
        {
            Some((JoinOutcome::Joined, h)) => {
                // A pid never rotates: socket.io-client reports `recovered` only when
                // the pid it gets back is the one it sent.
                let holder = Holder {
                    user: credential.user,
                    generation: 0,
                    any_generation: false,
                };
                self.node
                    .sessions
                    .attach(member, self.outbox.kill_switch(), holder);
                if let Some(sk) = self.sockets.get_mut(&nsp) {
                    sk.handle = Some(h);
                }
            }
            // The room answers the ref with the refusal; the socket goes when it does.
            Some(_) => {}
            None => {
                self.sockets.remove(&nsp);
                let msg = format!("app {} does not exist", self.app);
                self.connect_error(s, &nsp, &msg, Some("unknown_app"));
            }
        }
        Ok(())
    }

    /// Takes a recovering member back into its room (from this node's detached
    /// sessions, or from the room's replicas when another node held it) and answers the
    /// CONNECT with its old id. False when the room no longer has it as a member and
    /// the session cannot be restored: nothing has been sent, the caller starts afresh.
    async fn resume(&mut self, found: Recovered, r: Resume<'_>, s: &mut Session) -> bool {
        let key = self.key(r.room);
        let member = found.member().clone();
        // A takeover of this member from now on closes this connection.
        let holder = Holder {
            user: r.credential.user.clone(),
            generation: 0,
            any_generation: false,
        };
        self.node
            .sessions
            .attach(member.clone(), self.outbox.kill_switch(), holder);
        let back = match found {
            Recovered::Here(_, auth) => {
                let reattached = self
                    .node
                    .rooms
                    .reattach(&key, &member, r.link, r.offset.clone())
                    .await;
                match reattached {
                    Some((ReattachOutcome::Reattached, h)) => Some((h, auth)),
                    // Away past the presence grace but within the resume window (the
                    // session was kept, so it did not leave): join again, then replay
                    // from the offset.
                    Some(_) => match self
                        .node
                        .rooms
                        .join(&key, &member, &auth, r.link, None, r.offset)
                        .await
                    {
                        Some((JoinOutcome::Joined, h)) => Some((h, auth)),
                        _ => None,
                    },
                    None => None,
                }
            }
            // Another node held it, or it left: only the room's replicas can tell, and
            // only a member they still hold is taken over. One that left (an explicit
            // disconnect, or away past the grace) is not restored, as in socket.io.
            Recovered::Elsewhere(_) => {
                let user = r.credential.user.as_ref();
                match self
                    .node
                    .rooms
                    .adopt(&key, &member, r.link, r.offset, user)
                    .await
                {
                    Some((AdoptOutcome::Adopted { auth }, h)) => Some((h, auth)),
                    _ => None,
                }
            }
        };
        let Some((handle, auth)) = back else {
            self.node.sessions.end(&member);
            return false;
        };
        let socket = Socket {
            nsp: r.nsp.to_owned(),
            room: r.room.clone(),
            member,
            recoverable: true,
            handle: Some(handle),
            connected: true,
            auth,
            expires: auth::expiry(&self.node, r.credential).map(|t| t.into_std()),
            credential: r.credential.clone(),
        };
        // The replay the room queued leaves after this CONNECT: both go through this
        // task, and the outbox is read only once this packet is handled.
        s.send(self.connect_ok(r.nsp, &socket));
        self.sockets.push(socket);
        true
    }

    /// The member a `pid` names, if it can be taken over for `room`: detached here
    /// (with the auth it joined with), or, in a cluster, held by another node. A
    /// session of another room is left as it was.
    async fn recover(
        &self,
        pid: &str,
        room: &RoomId,
        credential: &Credential,
    ) -> Option<Recovered> {
        let claims = self.node.tokens.verify(pid).ok()?;
        if claims.app != self.app {
            return None;
        }
        let member = claims.session;
        let rooms = match self
            .node
            .sessions
            .take(
                &member,
                &self.app,
                credential.user.as_ref(),
                claims.generation,
                TAKEOVER_WAIT,
            )
            .await
        {
            Ok(rooms) => rooms,
            Err(ResumeError::Gone) if self.node.cluster.is_some() => {
                return Some(Recovered::Elsewhere(member));
            }
            Err(_) => return None,
        };
        match rooms.get(room).cloned() {
            Some(auth) => Some(Recovered::Here(member, auth)),
            None => {
                self.node.sessions.detach(
                    member,
                    self.app.clone(),
                    rooms,
                    self.node.clock.mono_ms(),
                );
                None
            }
        }
    }

    fn key(&self, room: &RoomId) -> RoomKey {
        RoomKey {
            app: self.app.clone(),
            room: room.clone(),
        }
    }

    fn connect_ok(&self, nsp: &str, socket: &Socket) -> EioPacket {
        // Written by hand to keep the reference key order: sid, then pid.
        let sid = Value::from(socket.member.as_str());
        let reply = if socket.recoverable {
            // The pid is the member's resume token: the same member always gets the same
            // one, on whichever node (the client checks it is unchanged to know it
            // recovered), so it is made when needed rather than kept, and names no node.
            let pid = self.node.tokens.sign(&Claims {
                session: socket.member.clone(),
                app: self.app.clone(),
                node: None,
                generation: 0,
            });
            format!("{{\"sid\":{sid},\"pid\":{}}}", Value::from(pid))
        } else {
            format!("{{\"sid\":{sid}}}")
        };
        EioPacket::Message(socketio::encode(&Packet::new(
            Kind::Connect,
            nsp,
            Some(reply),
        )))
    }

    /// A fresh token for namespace `nsp` (its first argument), before the current
    /// expires. It must name the same user.
    fn authenticate(&mut self, nsp: &str, payload: &Payload) -> Result<(), ProtoError> {
        let args: Vec<Value> = serde_json::from_str(&payload.json).unwrap_or_default();
        let Some(Value::String(token)) = args.first() else {
            return Err(ProtoError::new(
                ErrorCode::MissingField,
                format!("{AUTHENTICATE_EVENT} takes the token as its argument"),
            ));
        };
        let credential = auth::check(&self.node, &self.app, Some(token))?;
        let expires = auth::expiry(&self.node, &credential).map(|t| t.into_std());
        let socket = self
            .sockets
            .get_mut(nsp)
            .ok_or_else(|| ProtoError::new(ErrorCode::NotJoined, "namespace not connected"))?;
        if socket.credential.user.is_some() && socket.credential.user != credential.user {
            return Err(ProtoError::new(
                ErrorCode::BadToken,
                "a fresh token must name the same user as the namespace's",
            ));
        }
        socket.credential = credential;
        socket.expires = expires;
        Ok(())
    }

    /// Answer an event the gateway handled itself: its ack if it asked for one
    /// (`[{ok: true}]` or `[{error}]`, as room replies), else an error event.
    fn answer_local(
        &self,
        s: &mut Session,
        nsp: &str,
        ack: Option<u64>,
        result: Result<(), ProtoError>,
    ) {
        let body = match &result {
            Ok(()) => json!({ "ok": true }),
            Err(e) => json!({ "error": { "code": e.code.as_str(), "message": e.message } }),
        };
        match (ack, result) {
            (Some(id), _) => {
                let mut p = Packet::new(Kind::Ack, nsp, Some(json!([body]).to_string()));
                p.id = Some(id);
                send_packet(s, p);
            }
            (None, Ok(())) => {}
            (None, Err(_)) => self.emit(s, nsp, ERROR_EVENT, &body["error"]),
        }
    }

    fn connect_error(&self, s: &mut Session, nsp: &str, message: &str, code: Option<&str>) {
        let mut body = json!({ "message": message });
        if let Some(code) = code {
            body["data"] = json!({ "code": code });
        }
        send_packet(
            s,
            Packet::new(Kind::ConnectError, nsp, Some(body.to_string())),
        );
    }

    /// A namespace ends for good (client DISCONNECT, or the session closed for good).
    async fn end(&self, socket: Socket) {
        if let Some(h) = &socket.handle {
            h.send(RoomCmd::End {
                conn: socket.member.clone(),
            })
            .await;
        }
        self.node.sessions.end(&socket.member);
    }

    /// The Engine.IO session closed: keep each namespace resumable when the client did
    /// not mean to leave and recovery is on, else leave.
    pub async fn on_close(&mut self, reason: &CloseReason) {
        let keep = reason.recoverable() && self.settings.config.recovery;
        for socket in std::mem::take(&mut self.sockets.0) {
            // A namespace the room accepted counts, even if its CONNECT reply is still
            // queued; one the room has not accepted has nothing to end.
            if socket.handle.is_none() {
                continue;
            }
            if !keep {
                self.end(socket).await;
                continue;
            }
            if let Some(h) = &socket.handle {
                h.send(RoomCmd::Detach {
                    conn: socket.member.clone(),
                    outbox: self.outbox.clone(),
                })
                .await;
            }
            let mut rooms = SessionRooms::new();
            rooms.insert(socket.room.clone(), socket.auth.clone());
            self.node.sessions.detach(
                socket.member,
                self.app.clone(),
                rooms,
                self.node.clock.mono_ms(),
            );
        }
    }

    /// Something a room queued for this connection.
    pub fn on_outbound(&mut self, item: Outbound, s: &mut Session) {
        match item {
            Outbound::Event(e) => self.event(&e, s),
            Outbound::Shared(shared) => self.frame(&shared.frame, s),
            Outbound::Frame(f) => self.frame(&f, s),
        }
    }

    fn event(&mut self, e: &LogEntry, s: &mut Session) {
        let Some(nsp) = self.sockets.by_room(&e.room).map(|s| s.nsp.as_str()) else {
            return;
        };
        let main = nsp == "/" && e.room.as_str() != "/";
        let recovery = self.settings.config.recovery;
        let slot = LogEntry::SOCKETIO_SLOTS[usize::from(main) * 2 + usize::from(recovery)];
        // The whole Engine.IO packet, encoded once per form and shared.
        let packet = e.encoded_in(slot, |e| {
            let offset = recovery.then_some(e.cursor.as_str());
            let data = socketio::event_data(&e.event, &e.payload, offset);
            let mut p = Packet::new(Kind::Event, nsp, Some(data));
            p.attachments = e.payload.binaries.len();
            engineio::encode(&EioPacket::Message(socketio::encode(&p))).into_bytes()
        });
        s.send(EioPacket::Encoded(packet));
        for b in &e.payload.binaries {
            s.send(EioPacket::Binary(b.clone()));
        }
    }

    fn frame(&mut self, f: &ServerFrame, s: &mut Session) {
        match f {
            ServerFrame::Reply { r#ref, result } => self.reply(r#ref, result, s),
            ServerFrame::Presence {
                room,
                joined,
                left,
                snapshot,
            } => {
                // Only members that asked for presence get it (the room's `Interest`).
                let Some(nsp) = self.namespace_of(room) else {
                    return;
                };
                let joined: Vec<Value> = joined
                    .iter()
                    .map(|(c, p)| {
                        let presence = serde_json::from_str::<Value>(p).unwrap_or(Value::Null);
                        json!({ "id": c.as_str(), "presence": presence })
                    })
                    .collect();
                let left: Vec<&str> = left.iter().map(|c| c.as_str()).collect();
                let body = json!({ "joined": joined, "left": left, "snapshot": snapshot });
                self.emit(s, &nsp, PRESENCE_EVENT, &body);
            }
            ServerFrame::State { room, state } => {
                let Some(nsp) = self.namespace_of(room) else {
                    return;
                };
                let state = serde_json::from_str::<Value>(state).unwrap_or(Value::Null);
                self.emit(s, &nsp, STATE_EVENT, &state);
            }
            ServerFrame::StatePatch { room, patch } => {
                let Some(nsp) = self.namespace_of(room) else {
                    return;
                };
                let patch = serde_json::from_str::<Value>(patch).unwrap_or(Value::Null);
                self.emit(s, &nsp, STATE_PATCH_EVENT, &patch);
            }
            ServerFrame::Error { error, room } => {
                let Some(nsp) = room.as_ref().and_then(|r| self.namespace_of(r)) else {
                    return;
                };
                let body = json!({ "code": error.code.as_str(), "message": error.message });
                self.emit(s, &nsp, ERROR_EVENT, &body);
            }
            ServerFrame::Kicked { room, reason } => {
                let Some(socket) = self.sockets.remove_room(room) else {
                    return;
                };
                self.node.sessions.end(&socket.member);
                let nsp = socket.nsp;
                let body = json!({ "code": "kicked", "message": reason });
                self.emit(s, &nsp, ERROR_EVENT, &body);
                send_packet(s, Packet::new(Kind::Disconnect, &nsp, None));
            }
            ServerFrame::Welcome { .. } => {}
        }
    }

    fn namespace_of(&self, room: &RoomId) -> Option<String> {
        self.sockets.by_room(room).map(|s| s.nsp.clone())
    }

    /// An event of Edgeroom's own (never offset: it is not part of the room's history).
    fn emit(&self, s: &mut Session, nsp: &str, event: &str, body: &Value) {
        let data = json!([event, body]).to_string();
        send_packet(s, Packet::new(Kind::Event, nsp, Some(data)));
    }

    fn reply(
        &mut self,
        r#ref: &Value,
        result: &Result<Option<Payload>, ProtoError>,
        s: &mut Session,
    ) {
        let Some(i) = r#ref
            .as_u64()
            .and_then(|r| self.pending.iter().position(|(id, _)| *id == r))
        else {
            return;
        };
        let (_, pending) = self.pending.swap_remove(i);
        match pending {
            Pending::Connect { nsp } => match result {
                Ok(_) => {
                    let Some(socket) = self.sockets.get_mut(&nsp) else {
                        return;
                    };
                    socket.connected = true;
                    if let Some(socket) = self.sockets.get(&nsp) {
                        s.send(self.connect_ok(&nsp, socket));
                    }
                }
                Err(e) => {
                    self.sockets.remove(&nsp);
                    self.connect_error(s, &nsp, &e.message, Some(e.code.as_str()));
                }
            },
            Pending::Ack { nsp, id } => {
                if self.sockets.get(&nsp).is_none() {
                    return;
                }
                let (data, binaries) = match result {
                    Ok(Some(p)) => (socketio::ack_data(p), p.binaries.clone()),
                    Ok(None) => ("[]".to_owned(), Vec::new()),
                    Err(e) => (
                        json!([{ "error": { "code": e.code.as_str(), "message": e.message } }])
                            .to_string(),
                        Vec::new(),
                    ),
                };
                let mut p = Packet::new(Kind::Ack, &nsp, Some(data));
                p.id = Some(id);
                p.attachments = binaries.len();
                send_packet(s, p);
                for b in binaries {
                    s.send(EioPacket::Binary(b));
                }
            }
        }
    }
}

/// Queue one Socket.IO packet (without attachments) as an Engine.IO message.
fn send_packet(s: &mut Session, p: Packet) {
    s.send(EioPacket::Message(socketio::encode(&p)));
}
