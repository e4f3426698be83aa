//! The Engine.IO server: HTTP long-polling and WebSocket transports, upgrades,
//! heartbeats, and the session table.
//!
//! Each session is one task that owns a sans-IO [`Session`] and the layer above it
//! (Socket.IO, or the raw echo the Engine.IO test suite expects). HTTP requests for a
//! session are handed to that task over a channel, so one session's packets — from
//! polls, posts and its WebSocket — are handled in arrival order by one owner.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, SinkExt};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::socketio::SocketIo;
use crate::Gateway;
use edgeroom_host::metrics;
use edgeroom_host::room::{KillSwitch, Outbound, Outbox, OutboxReader, QueueBound};
use edgeroom_proto::close::Disconnect;
use edgeroom_proto::engineio::session::{
    CloseReason, Inbound, PollAnswer, PostError, ProbeAnswer, Session, Timing, Transport,
};
use edgeroom_proto::engineio::{self, Handshake, Packet, RequestError};
use edgeroom_proto::ids::AppName;
use edgeroom_proto::native::Format;

/// Requests waiting for a session's task; more are refused (a client has at most a
/// poll, a post and an upgrade in flight).
const INPUT_QUEUE: usize = 16;
/// Initial WebSocket read buffer (tungstenite's default is 128 KiB per connection).
const READ_BUFFER: usize = 1024;
/// How long a client-closed polling session waits for a poll that raced the close.
const RACING_POLL: Duration = Duration::from_millis(200);
/// Messages already read from a WebSocket handled in one go before writing.
const READ_BATCH: usize = 32;
/// The most of an unwanted request body read (and dropped) before answering, and for
/// how long (see `drain`).
const DRAIN_BYTES: usize = 16 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// How long a probing WebSocket may take to send `5`.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session serves.
#[derive(Clone)]
pub enum Service {
    /// Socket.IO for an app.
    SocketIo(AppName),
    /// Every message sent back as it came (the Engine.IO test suite's server).
    Echo,
}

/// A request handed to a session's task.
enum Input {
    Poll(oneshot::Sender<Response>),
    Post(Box<(String, oneshot::Sender<Response>)>),
    WebSocket(Box<WebSocket>),
}

/// Requests for one session, handed over by HTTP handlers. A plain queue rather than a
/// channel: a channel preallocates room for 32 items, and most sessions are idle.
#[derive(Default)]
struct Inbox {
    queue: Mutex<std::collections::VecDeque<Input>>,
    notify: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Inbox {
    /// Queue a request; it comes back if the session is gone or swamped.
    fn push(&self, input: Input) -> Result<(), Input> {
        let mut q = self.queue.lock();
        if self.closed.load(std::sync::atomic::Ordering::Acquire) || q.len() >= INPUT_QUEUE {
            return Err(input);
        }
        q.push_back(input);
        drop(q);
        self.notify.notify_one();
        Ok(())
    }

    async fn recv(&self) -> Input {
        loop {
            let notified = self.notify.notified();
            if let Some(input) = self.queue.lock().pop_front() {
                return input;
            }
            notified.await;
        }
    }

    /// Refuse new requests; returns those still queued.
    fn close(&self) -> Vec<Input> {
        let mut q = self.queue.lock();
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        q.drain(..).collect()
    }
}

struct Link {
    inbox: Arc<Inbox>,
    service: Service,
}

/// Every Engine.IO session of this node.
#[derive(Default)]
pub struct Engine {
    sessions: Mutex<HashMap<String, Link>>,
    /// Sessions per client address (see `limits.engineio_sessions_per_ip`).
    per_ip: crate::front::PerAddress,
}

/// A session's place in its client address's count; given back when it drops.
struct IpPlace {
    node: Arc<Gateway>,
    ip: IpAddr,
}

impl IpPlace {
    /// A place for one more session from `ip`, unless that address holds its share.
    fn take(node: &Arc<Gateway>, ip: IpAddr) -> Option<IpPlace> {
        let max = node.config.limits.engineio_sessions_per_ip;
        node.engine.per_ip.take(ip, max).then(|| IpPlace {
            node: node.clone(),
            ip,
        })
    }
}

impl Drop for IpPlace {
    fn drop(&mut self) {
        self.node.engine.per_ip.give_back(self.ip);
    }
}

/// Engine.IO's error body: `{"code": N, "message": ...}`.
/// An Engine.IO request error with the reference server's message.
fn eio_error(node: &Gateway, status: StatusCode, error: RequestError) -> Response {
    eio_answer(node, status, error, error.message())
}

/// A request the server refuses (Engine.IO's `Forbidden`), saying why.
fn eio_refuse(node: &Gateway, status: StatusCode, message: &str) -> Response {
    eio_answer(node, status, RequestError::Forbidden, message)
}

fn eio_answer(node: &Gateway, status: StatusCode, error: RequestError, message: &str) -> Response {
    let code = error.code();
    node.metrics.bad_frame(&format!("engineio_{code}"));
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}

fn text(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=UTF-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The query of an Engine.IO request.
#[derive(Debug, Default, serde::Deserialize)]
pub struct EioQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// Serve one Engine.IO request for `service`.
pub async fn handle(node: Arc<Gateway>, service: Service, req: Request) -> Response {
    let (method, headers) = (req.method.clone(), req.headers.clone());
    let origin = headers.get(header::ORIGIN).cloned();
    let mut res = route(&node, service, req).await;
    cors(&node, origin, &headers, &method, &mut res);
    res
}

/// An Engine.IO request's parts, as the Engine.IO server takes them.
pub struct Request {
    method: Method,
    headers: HeaderMap,
    query: Option<EioQuery>,
    ws: Option<WebSocketUpgrade>,
    body: Body,
    /// The client's address, when it connected here (see `front::ClientAddr`).
    client: Option<IpAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Request {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let query = axum::extract::Query::<EioQuery>::try_from_uri(&parts.uri)
            .ok()
            .map(|q| q.0);
        let ws = <WebSocketUpgrade as axum::extract::FromRequestParts<S>>::from_request_parts(
            &mut parts, state,
        )
        .await
        .ok();
        let client = parts
            .extensions
            .get::<crate::front::ClientAddr>()
            .map(|a| a.0.ip().to_canonical());
        Ok(Self {
            method: parts.method,
            headers: parts.headers,
            query,
            ws,
            body,
            client,
        })
    }
}

async fn route(node: &Arc<Gateway>, service: Service, req: Request) -> Response {
    let Request {
        method,
        headers,
        query,
        ws,
        body,
        client,
    } = req;
    let (method, headers) = (&method, &headers);
    if method == Method::OPTIONS && headers.contains_key(header::ORIGIN) {
        return empty(StatusCode::NO_CONTENT);
    }
    let Some(q) = query else {
        return eio_error(node, StatusCode::BAD_REQUEST, RequestError::BadRequest);
    };
    let websocket = match q.transport.as_deref() {
        Some("polling") => false,
        Some("websocket") => true,
        _ => {
            return eio_error(
                node,
                StatusCode::BAD_REQUEST,
                RequestError::UnknownTransport,
            );
        }
    };
    if let Some(sid) = q.sid {
        let link = {
            let sessions = node.engine.sessions.lock();
            sessions
                .get(&sid)
                .filter(|l| same_service(&l.service, &service))
                .map(|l| l.inbox.clone())
        };
        let Some(inbox) = link else {
            drain(body).await;
            return eio_error(node, StatusCode::BAD_REQUEST, RequestError::UnknownSid);
        };
        if websocket {
            let Some(ws) = ws else {
                return eio_error(node, StatusCode::BAD_REQUEST, RequestError::BadRequest);
            };
            let max = node.config.socketio.max_payload;
            return sized(ws, max).on_upgrade(move |socket| async move {
                let _ = inbox.push(Input::WebSocket(Box::new(socket)));
            });
        }
        return match *method {
            Method::GET => ask(&inbox, Input::Poll).await,
            Method::POST => {
                let max = node.config.socketio.max_payload;
                let body = match read_post(body, max).await {
                    Ok(b) => b,
                    Err(PostBody::TooLarge) => {
                        node.metrics.bad_frame("engineio_too_large");
                        return empty(StatusCode::PAYLOAD_TOO_LARGE);
                    }
                    Err(PostBody::Broken) => return empty(StatusCode::BAD_REQUEST),
                };
                let Ok(body) = String::from_utf8(body) else {
                    node.metrics.bad_frame("engineio_not_utf8");
                    return empty(StatusCode::BAD_REQUEST);
                };
                ask(&inbox, |r| Input::Post(Box::new((body, r)))).await
            }
            _ => eio_error(
                node,
                StatusCode::BAD_REQUEST,
                RequestError::BadHandshakeMethod,
            ),
        };
    }
    if *method != Method::GET {
        return eio_error(
            node,
            StatusCode::BAD_REQUEST,
            RequestError::BadHandshakeMethod,
        );
    }
    if let Some(why) = node.refusing() {
        return eio_refuse(node, StatusCode::SERVICE_UNAVAILABLE, why.message());
    }
    if websocket && ws.is_none() {
        return eio_error(node, StatusCode::BAD_REQUEST, RequestError::BadRequest);
    }
    if q.eio.as_deref() != Some("4") {
        return eio_error(
            node,
            StatusCode::BAD_REQUEST,
            RequestError::UnsupportedProtocolVersion,
        );
    }
    if let Service::SocketIo(app) = &service
        && !node.apps.exists(app)
    {
        return eio_refuse(
            node,
            StatusCode::NOT_FOUND,
            &format!("app {app} does not exist"),
        );
    }
    let Some(slot) = node.connection_slot() else {
        return eio_refuse(
            node,
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is at its connection limit; try another",
        );
    };
    // Requests a peer forwarded carry no address: their client was counted where it
    // connected, and a handshake is never forwarded.
    let place = match client {
        Some(ip) => match IpPlace::take(node, ip) {
            Some(place) => Some(place),
            None => {
                metrics::count(&node.metrics.sessions_refused, "ip");
                return eio_refuse(
                    node,
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many sessions from this address",
                );
            }
        },
        None => None,
    };
    let sid = super::forward::new_sid(node);
    let transport = if websocket {
        Transport::WebSocket
    } else {
        Transport::Polling
    };
    let handshake = Handshake {
        sid: sid.clone(),
        upgrades: if websocket {
            vec![]
        } else {
            vec!["websocket".into()]
        },
        ping_interval: node.config.socketio.ping_interval_ms,
        ping_timeout: node.config.socketio.ping_timeout_ms,
        max_payload: node.config.socketio.max_payload as u64,
    };
    let inbox = Arc::new(Inbox::default());
    node.engine.sessions.lock().insert(
        sid.clone(),
        Link {
            inbox: inbox.clone(),
            service: service.clone(),
        },
    );
    let mut driver = Driver::new(node.clone(), sid, service, transport, inbox);
    driver.places = (Some(slot), place);
    match ws {
        Some(ws) if websocket => {
            let max = node.config.socketio.max_payload;
            sized(ws, max).on_upgrade(move |mut socket| async move {
                let open = Utf8Bytes::from(engineio::encode(&handshake.packet()));
                if socket.send(Message::Text(open)).await.is_ok() {
                    // A task of its own, so the upgrade's task (and what it holds) ends.
                    tokio::spawn(driver.run(Some(socket)));
                } else {
                    driver.abandon();
                }
            })
        }
        _ => {
            tokio::spawn(driver.run(None));
            text(engineio::encode(&handshake.packet()))
        }
    }
}

/// Why a POST body was not taken.
enum PostBody {
    /// Over `max_payload` (what followed was read and dropped).
    TooLarge,
    /// The client's body broke off.
    Broken,
}

/// A POST body of at most `max` bytes. A larger one is still read to its end (and
/// dropped) before the answer, as [`drain`] does.
async fn read_post(mut body: Body, max: usize) -> Result<Vec<u8>, PostBody> {
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(PostBody::Broken);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if got.len() + data.len() > max {
            drain(body).await;
            return Err(PostBody::TooLarge);
        }
        got.extend_from_slice(&data);
    }
    Ok(got)
}

/// Read and drop a request body answered without it, up to `DRAIN_BYTES` for at most
/// `DRAIN_TIME`: a socket closed with unread bytes is reset, and the client loses the
/// answer with it (the reference server reads them too). Past the bound the
/// connection is closed anyway.
async fn drain(mut body: Body) {
    let read = async {
        let mut left = DRAIN_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            if n >= left {
                break;
            }
            left -= n;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// A WebSocket with the payload limit, and a small read buffer: most sessions are idle,
/// and the buffer grows when a large message arrives.
fn sized(ws: WebSocketUpgrade, max: usize) -> WebSocketUpgrade {
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
}

fn same_service(a: &Service, b: &Service) -> bool {
    match (a, b) {
        (Service::SocketIo(x), Service::SocketIo(y)) => x == y,
        (Service::Echo, Service::Echo) => true,
        _ => false,
    }
}

/// Hand a request to its session and wait for the answer.
async fn ask(inbox: &Inbox, make: impl FnOnce(oneshot::Sender<Response>) -> Input) -> Response {
    let (reply, answer) = oneshot::channel();
    if inbox.push(make(reply)).is_err() {
        return empty(StatusCode::BAD_REQUEST);
    }
    // The session dropped the request: it closed meanwhile.
    answer
        .await
        .unwrap_or_else(|_| empty(StatusCode::BAD_REQUEST))
}

/// CORS headers for browser clients, by the configured origins.
fn cors(
    node: &Gateway,
    origin: Option<HeaderValue>,
    req: &HeaderMap,
    method: &Method,
    res: &mut Response,
) {
    let Some(origin) = origin else { return };
    let allowed = &node.config.socketio.cors_origins;
    let listed = origin
        .to_str()
        .is_ok_and(|o| allowed.iter().any(|a| a == o));
    let h = res.headers_mut();
    if listed {
        // A named origin may send credentials (cookies, `withCredentials`).
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    } else if allowed.iter().any(|a| a == "*") {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        return;
    }
    if method == Method::OPTIONS {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET,POST,OPTIONS"),
        );
        if let Some(asked) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
    }
}

/// The layer above Engine.IO.
enum Upper {
    SocketIo(Box<SocketIo>),
    /// Holds its (unused) outbox so the session's queue stays open.
    Echo(#[allow(dead_code)] Outbox),
}

/// One session's task.
struct Driver {
    node: Arc<Gateway>,
    sid: String,
    session: Session,
    upper: Upper,
    outbox_rx: OutboxReader,
    kill: Arc<KillSwitch>,
    parked: Option<oneshot::Sender<Response>>,
    ws: Option<WebSocket>,
    /// Boxed: rarely there, and large.
    probe: Option<Box<(WebSocket, Instant)>>,
    inbox: Arc<Inbox>,
    /// Its connection slot and its place in its client address's count, for as long
    /// as the session lives.
    places: (Option<tokio::sync::OwnedSemaphorePermit>, Option<IpPlace>),
}

impl Driver {
    fn new(
        node: Arc<Gateway>,
        sid: String,
        service: Service,
        transport: Transport,
        inbox: Arc<Inbox>,
    ) -> Self {
        let timing = Timing {
            ping_interval: Duration::from_millis(node.config.socketio.ping_interval_ms),
            ping_timeout: Duration::from_millis(node.config.socketio.ping_timeout_ms),
        };
        let bound = QueueBound {
            frames: node.config.limits.outbound_queue,
            bytes: node.config.limits.outbound_queue_bytes,
        };
        let (outbox, outbox_rx, kill) = Outbox::new(bound, Format::Json, node.metrics.clone());
        let upper = match service {
            Service::SocketIo(app) => {
                let settings = node.apps.settings(&app).unwrap_or_default();
                Upper::SocketIo(Box::new(SocketIo::new(node.clone(), app, settings, outbox)))
            }
            Service::Echo => Upper::Echo(outbox),
        };
        node.metrics.connections.inc();
        Self {
            session: Session::new(node.clock.now().into_std(), timing, transport),
            node,
            sid,
            upper,
            outbox_rx,
            kill,
            parked: None,
            ws: None,
            probe: None,
            inbox,
            places: (None, None),
        }
    }

    /// The WebSocket handshake failed before the session started.
    fn abandon(self) {
        self.node.engine.sessions.lock().remove(&self.sid);
        self.node.metrics.connections.dec();
    }

    async fn run(mut self, ws: Option<WebSocket>) {
        self.ws = ws;
        let mut go = self.node.clients_go_rx();
        // One timer, moved as deadlines change (boxed: it is large, and most sessions idle).
        let mut timer = Box::pin(tokio::time::sleep_until(self.session.deadline().into()));
        loop {
            if !self.flush().await {
                self.session.close(CloseReason::TransportClose);
            }
            if self.session.closed().is_some() {
                break;
            }
            let deadline = match self.upper_deadline() {
                Some(t) => t.min(self.session.deadline()),
                None => self.session.deadline(),
            };
            let deadline = match &self.probe {
                Some(probe) => deadline.min(probe.1 + UPGRADE_TIMEOUT),
                None => deadline,
            };
            if timer.deadline() != deadline.into() {
                timer.as_mut().reset(deadline.into());
            }
            let limits = &self.node.config.limits;
            let room_for_more = self.session.queued() < limits.engineio_queue
                && self.session.queued_bytes() < limits.engineio_queue_bytes;
            // In this order when several are ready: an upgrade's `5` before a poll that
            // came after it, and queued output before more input.
            tokio::select! {
                biased;
                reason = self.kill.killed() => {
                    self.session.close(CloseReason::Server(reason.to_string()));
                }
                // The client is told to go (a close packet) and may recover elsewhere.
                why = crate::gone(&mut go) => {
                    self.session.close(CloseReason::Server(why.to_string()));
                }
                _ = &mut timer => self.on_timeout().await,
                // A resume asks whether this session's client is still there.
                _ = self.kill.probed() => self.session.ping_now(self.node.clock.now().into_std()),
                // Boxed: upgrades are rare and this future holds a whole WebSocket.
                m = recv_probe(&mut self.probe) => Box::pin(self.on_probe(m)).await,
                input = self.inbox.recv() => self.on_input(input).await,
                item = self.outbox_rx.recv(), if room_for_more => match item {
                    Some(item) => self.on_outbound(item),
                    None => self.session.close(CloseReason::Server("outbox closed".into())),
                },
                m = recv(&mut self.ws) => {
                    self.on_ws(m).await;
                    // Whatever else the socket already holds is handled before writing:
                    // the replies then leave in one write rather than one each.
                    for _ in 0..READ_BATCH {
                        let Some(ws) = self.ws.as_mut() else { break };
                        if self.session.closed().is_some() {
                            break;
                        }
                        match ws.recv().now_or_never() {
                            Some(m) => self.on_ws(m).await,
                            None => break,
                        }
                    }
                }
                _ = parked_closed(&mut self.parked) => self.session.poll_abandoned(),
            }
        }
        // Boxed: the close path's futures would otherwise sit in every session's task.
        Box::pin(self.finish()).await;
    }

    fn upper_deadline(&self) -> Option<Instant> {
        match &self.upper {
            Upper::SocketIo(sio) => sio.deadline(),
            Upper::Echo(_) => None,
        }
    }

    async fn on_timeout(&mut self) {
        let now = self.node.clock.now().into_std();
        self.session.on_timeout(now);
        if let Upper::SocketIo(sio) = &mut self.upper {
            sio.on_timeout(now, &mut self.session).await;
        }
        if let Some(probe) = &self.probe
            && now >= probe.1 + UPGRADE_TIMEOUT
        {
            self.probe = None;
            self.session.probe_failed();
        }
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Poll(reply) => match self.session.on_poll() {
                PollAnswer::Now(body) => {
                    let _ = reply.send(text(body));
                }
                PollAnswer::Wait => self.parked = Some(reply),
                PollAnswer::Overlap => {
                    self.node.metrics.bad_frame("engineio_overlapping_poll");
                    let _ = reply.send(empty(StatusCode::BAD_REQUEST));
                }
                PollAnswer::WrongTransport => {
                    let _ = reply.send(eio_error(
                        &self.node,
                        StatusCode::BAD_REQUEST,
                        RequestError::BadRequest,
                    ));
                }
            },
            Input::Post(post) => {
                let (body, reply) = *post;
                self.on_post(&body, reply).await;
            }
            Input::WebSocket(mut socket) => {
                if self.session.may_upgrade() && self.probe.is_none() {
                    self.probe = Some(Box::new((*socket, self.node.clock.now().into_std())));
                } else {
                    // Already upgraded (or upgrading): this socket is not needed.
                    let _ = socket.send(Message::Close(None)).await;
                }
            }
        }
    }

    async fn on_post(&mut self, body: &str, reply: oneshot::Sender<Response>) {
        match self.session.on_post(body, self.node.clock.now().into_std()) {
            Ok(messages) => {
                self.kill.heard();
                for m in messages {
                    self.deliver(m).await;
                }
                let _ = reply.send(([(header::CONTENT_TYPE, "text/html")], "ok").into_response());
            }
            Err(PostError::WrongTransport) => {
                let _ = reply.send(eio_error(
                    &self.node,
                    StatusCode::BAD_REQUEST,
                    RequestError::BadRequest,
                ));
            }
            Err(PostError::Invalid(_)) => {
                self.node.metrics.bad_frame("engineio_bad_payload");
                let _ = reply.send(empty(StatusCode::BAD_REQUEST));
            }
        }
    }

    async fn on_ws(&mut self, m: Option<Result<Message, axum::Error>>) {
        let now = self.node.clock.now().into_std();
        match m {
            Some(Ok(Message::Text(t))) => {
                self.kill.heard();
                if let Some(m) = self.session.on_ws_text(t.as_str(), now) {
                    self.deliver(m).await;
                }
            }
            Some(Ok(Message::Binary(b))) => {
                self.kill.heard();
                // Binary frames are binary messages as they are (no type byte).
                self.deliver(Inbound::Binary(b)).await;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None => {
                self.ws = None;
                self.session.close(CloseReason::TransportClose);
            }
            Some(Err(e)) => {
                self.ws = None;
                self.node.metrics.bad_frame("engineio_websocket_error");
                self.session
                    .close(CloseReason::ParseError(format!("websocket: {e}")));
            }
        }
    }

    async fn on_probe(&mut self, m: Option<Result<Message, axum::Error>>) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        let (mut socket, since) = *probe;
        let answer = match m {
            Some(Ok(Message::Text(t))) => self.session.on_probe(t.as_str()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                self.probe = Some(Box::new((socket, since)));
                return;
            }
            _ => ProbeAnswer::Abort,
        };
        match answer {
            ProbeAnswer::Reply(p) => {
                let frame = Message::Text(Utf8Bytes::from(engineio::encode(&p)));
                if socket.send(frame).await.is_ok() {
                    self.probe = Some(Box::new((socket, since)));
                } else {
                    self.session.probe_failed();
                }
            }
            ProbeAnswer::Upgraded => {
                self.ws = Some(socket);
                if let Some(parked) = self.parked.take()
                    && let Some(body) = self.session.take_poll()
                {
                    let _ = parked.send(text(body));
                }
            }
            ProbeAnswer::Abort => {
                self.session.probe_failed();
                let _ = socket.send(Message::Close(None)).await;
            }
        }
    }

    async fn deliver(&mut self, m: Inbound) {
        match &mut self.upper {
            // Boxed: the Socket.IO layer's futures are large, and this task lives as
            // long as its (mostly idle) session.
            Upper::SocketIo(sio) => match m {
                Inbound::Text(t) => Box::pin(sio.on_text(&t, &mut self.session)).await,
                Inbound::Binary(b) => Box::pin(sio.on_binary(b, &mut self.session)).await,
            },
            Upper::Echo(_) => self.session.send(match m {
                Inbound::Text(t) => Packet::Message(t),
                Inbound::Binary(b) => Packet::Binary(b),
            }),
        }
    }

    fn on_outbound(&mut self, item: Outbound) {
        if let Upper::SocketIo(sio) = &mut self.upper {
            sio.on_outbound(item, &mut self.session);
            // Whatever else is queued joins the same write.
            while self.session.queued() < self.node.config.limits.engineio_queue {
                match self.outbox_rx.try_recv() {
                    Ok(item) => sio.on_outbound(item, &mut self.session),
                    Err(_) => break,
                }
            }
        }
    }

    /// Write what is queued to the transport that can take it. False: the WebSocket
    /// failed.
    async fn flush(&mut self) -> bool {
        if let Some(parked) = self.parked.take() {
            match self.session.take_poll() {
                Some(body) => {
                    let _ = parked.send(text(body));
                }
                None => self.parked = Some(parked),
            }
        }
        let Some(ws) = self.ws.as_mut() else {
            return true;
        };
        let Some(first) = self.session.pop_ws() else {
            return true;
        };
        let session = &mut self.session;
        let write = async {
            ws.feed(ws_message(first)).await?;
            while let Some(p) = session.pop_ws() {
                ws.feed(ws_message(p)).await?;
            }
            ws.flush().await
        };
        // A client that stops reading blocks the write; the kill switch still wins.
        let outcome = tokio::select! {
            biased;
            r = write => Ok(r.is_ok()),
            reason = self.kill.killed() => Err(reason),
        };
        match outcome {
            Ok(written) => written,
            Err(reason) => {
                self.session.close(CloseReason::Server(reason.to_string()));
                false
            }
        }
    }

    async fn finish(mut self) {
        // A client's close packet may overtake the poll it sent just before (they come
        // on separate HTTP connections): that poll still gets its noop, as it would
        // had it arrived first.
        if self.parked.is_none()
            && self.session.closed() == Some(&CloseReason::ClientClose)
            && self.session.transport() == Transport::Polling
            && let Ok(Input::Poll(reply)) =
                tokio::time::timeout(RACING_POLL, self.inbox.recv()).await
            && let PollAnswer::Now(body) = self.session.on_poll()
        {
            let _ = reply.send(text(body));
        }
        self.node.engine.sessions.lock().remove(&self.sid);
        // Requests that raced the close are told the session is gone.
        for input in self.inbox.close() {
            let reply = match input {
                Input::Poll(r) => Some(r),
                Input::Post(post) => Some(post.1),
                Input::WebSocket(_) => None,
            };
            if let Some(r) = reply {
                let _ = r.send(eio_error(
                    &self.node,
                    StatusCode::BAD_REQUEST,
                    RequestError::UnknownSid,
                ));
            }
        }
        let reason = self
            .session
            .closed()
            .cloned()
            .unwrap_or(CloseReason::TransportClose);
        // A parked poll takes the close (or noop); the WebSocket gets it, then a close frame.
        if let Some(parked) = self.parked.take() {
            let body = self.session.take_poll().unwrap_or_else(|| "1".into());
            let _ = parked.send(text(body));
        }
        if let Some(mut ws) = self.ws.take() {
            let packets = self.session.take_ws();
            let close = async {
                for p in packets {
                    ws.feed(ws_message(p)).await?;
                }
                ws.send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: Utf8Bytes::from_static(""),
                })))
                .await
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        }
        if let Upper::SocketIo(sio) = &mut self.upper {
            sio.on_close(&reason).await;
        }
        self.kill.kill(Disconnect::SessionClosed);
        self.node.metrics.connections.dec();
        tracing::debug!(sid = %self.sid, %reason, "engine.io session closed");
    }
}

/// One Engine.IO packet as one WebSocket frame.
fn ws_message(p: Packet) -> Message {
    match p {
        Packet::Binary(b) => Message::Binary(b),
        // Shared bytes go out as they are: no copy per session.
        Packet::Encoded(b) => match Utf8Bytes::try_from(b) {
            Ok(t) => Message::Text(t),
            Err(e) => Message::Text(Utf8Bytes::from(e.to_string())),
        },
        p => Message::Text(Utf8Bytes::from(engineio::encode(&p))),
    }
}

async fn recv(ws: &mut Option<WebSocket>) -> Option<Result<Message, axum::Error>> {
    match ws {
        Some(ws) => ws.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_probe(
    probe: &mut Option<Box<(WebSocket, Instant)>>,
) -> Option<Result<Message, axum::Error>> {
    match probe {
        Some(probe) => probe.0.recv().await,
        None => std::future::pending().await,
    }
}

async fn parked_closed(parked: &mut Option<oneshot::Sender<Response>>) {
    match parked {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}
