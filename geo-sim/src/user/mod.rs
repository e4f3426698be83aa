//! Simulated users: each asks an edge for its nearest healthy region
//! (`/v1/route`), connects there over the native protocol, joins its room and sends at
//! its rate; when its edge fails it moves to the next region of that answer and
//! resumes. Its access link delays every frame both ways by its distance to the edge
//! (fibre at 200 km/ms plus a last mile); client-link faults (churn, resets, stalls)
//! come from the plan. What it sees goes to the history.
//!
//! `session` (native) and `sio` (Socket.IO as socket.io-client does it) are the
//! protocol sides, sans-IO; this module is their driver.

pub mod session;
pub mod sio;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::geo::{Map, access_ms};
use crate::plan::{App, Plan, Protocol, UserPlan};
use crate::recorder::Recorder;
use crate::scenario::FaultKind;
use session::{Out, Session};
use sio::SioSession;

/// A user's protocol side.
enum Client {
    Native(Session),
    SocketIo(SioSession),
}

impl Client {
    /// The node refused the session this client resumed: start afresh next time.
    fn session_refused(&mut self) {
        if let Client::Native(s) = self {
            s.session_refused();
        }
    }

    fn new(me: &UserPlan, room: &str, app: App) -> Self {
        match me.protocol {
            Protocol::Native => Client::Native(Session::new(&me.name, room, app)),
            Protocol::SocketIo => Client::SocketIo(SioSession::new(&me.name, room, app)),
        }
    }

    fn connected(&mut self, node: &str) {
        if let Client::SocketIo(s) = self {
            s.connected(node);
        }
    }

    fn frame(&mut self, text: &str) -> Vec<Out> {
        match self {
            Client::Native(s) => s.frame(text),
            Client::SocketIo(s) => s.frame(text),
        }
    }

    fn closed(&mut self, why: &str) -> Vec<Out> {
        match self {
            Client::Native(s) => s.closed(why),
            Client::SocketIo(s) => s.closed(why),
        }
    }

    fn send_next(&mut self) -> Vec<Out> {
        match self {
            Client::Native(s) => s.send_next(),
            Client::SocketIo(s) => s.send_next(),
        }
    }

    fn live(&self) -> bool {
        match self {
            Client::Native(s) => s.live(),
            Client::SocketIo(s) => s.live(),
        }
    }

    /// A native client pings when things go quiet; a Socket.IO client answers the
    /// server's pings and waits for them.
    fn ping(&mut self) -> Option<Out> {
        match self {
            Client::Native(s) => Some(s.ping()),
            Client::SocketIo(_) => None,
        }
    }

    /// Silence after which the connection is given up.
    fn dead_after(&self) -> Duration {
        match self {
            Client::Native(_) => DEAD,
            Client::SocketIo(s) => s.dead_after(),
        }
    }
}

/// How long a connection attempt may take.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);
/// Silence after which a user pings, and after which it gives the connection up.
const QUIET: Duration = Duration::from_secs(3);
const DEAD: Duration = Duration::from_secs(6);
/// Longest wait between attempts to find an edge.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// An edge a user may ask for directions: every node, as a DNS name would list them.
#[derive(Debug, Clone)]
pub struct Front {
    pub node: String,
    pub url: String,
    pub region: String,
    pub place: (f64, f64),
}

/// What every user shares.
pub struct World {
    pub plan: Arc<Plan>,
    pub map: Arc<Map>,
    pub recorder: Recorder,
    pub fronts: Vec<Front>,
    pub http: reqwest::Client,
    /// True once the WAN and access delays are on (after calibration).
    pub emulated: watch::Receiver<bool>,
    /// False once traffic stops (settling).
    pub sending: watch::Receiver<bool>,
    /// True when users are to close cleanly and end.
    pub finish: watch::Receiver<bool>,
}

impl World {
    /// When the run proper starts (WAN on, faults' times count from here).
    fn run_start(&self) -> Instant {
        self.recorder.start() + self.plan.run_start()
    }
}

/// What a user does to its own connection, from the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LinkFault {
    /// Force-closed (FIN, no close frame); away this long before coming back.
    Close(Duration),
    /// TCP reset.
    Reset,
    /// Nothing moves either way for this long.
    Stall(Duration),
}

/// This user's client-link faults, in time order.
fn link_faults(world: &World, rng: &mut StdRng) -> VecDeque<(Instant, LinkFault)> {
    let start = world.run_start();
    let mut out = Vec::new();
    for f in &world.plan.faults {
        let at = start + f.at;
        let until = start + f.until.unwrap_or(world.plan.duration);
        match f.kind {
            FaultKind::Churn { every_s, away_s } => {
                let every = Duration::from_secs_f64(every_s);
                let mut t = at + every.mul_f64(rng.random::<f64>());
                while t < until {
                    out.push((t, LinkFault::Close(Duration::from_secs_f64(away_s))));
                    t += every.mul_f64(rng.random_range(0.8..1.2));
                }
            }
            FaultKind::ClientReset { share } if rng.random::<f64>() < share => {
                out.push((at, LinkFault::Reset));
            }
            FaultKind::ClientStall { share } if rng.random::<f64>() < share => {
                out.push((at, LinkFault::Stall(until.saturating_duration_since(at))));
            }
            _ => {}
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out.into()
}

/// Why a connection ended.
enum End {
    Finished,
    /// The edge closed or broke it.
    Dropped,
    /// Nothing was heard on it for too long.
    Silent,
    /// Reset by the plan.
    Reset,
    /// Churned away by the plan: back after this long.
    Away(Duration),
    /// The room refused the join.
    Refused,
}

/// Resolves once `flag` is true (never, if its sender is gone while it is false).
pub async fn until(flag: &mut watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One user, from its arrival until the run finishes.
pub async fn run(world: Arc<World>, me: UserPlan) {
    let room = &world.plan.rooms[me.room];
    let mut rng = StdRng::seed_from_u64(me.seed);
    let mut session = Client::new(&me, &room.name, room.app);
    let mut faults = link_faults(&world, &mut rng);
    let mut finish = world.finish.clone();
    tokio::select! {
        () = sleep_until(world.recorder.start() + me.join_at) => {}
        () = until(&mut finish) => return,
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        if *finish.borrow() {
            return;
        }
        let end = match connect(&world, &me, &mut rng).await {
            Some((ws, front)) => {
                backoff = Duration::from_millis(100);
                world
                    .recorder
                    .tally
                    .connected
                    .fetch_add(1, Ordering::Relaxed);
                let end = serve(&world, &me, &mut session, ws, &front, &mut rng, &mut faults).await;
                world
                    .recorder
                    .tally
                    .connected
                    .fetch_sub(1, Ordering::Relaxed);
                let why = match end {
                    // The run is over: the member stays a member to the end of the
                    // history.
                    End::Finished => return,
                    End::Silent => "silent",
                    End::Away(_) => "churn",
                    End::Reset => "reset",
                    End::Dropped | End::Refused => "edge",
                };
                for out in session.closed(why) {
                    if let Out::Record(op) = out {
                        world.recorder.record(op);
                    }
                }
                end
            }
            None => End::Refused,
        };
        let wait = match end {
            End::Finished => return,
            End::Dropped | End::Silent | End::Reset => Duration::ZERO,
            End::Away(away) => away,
            End::Refused => {
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        tokio::select! {
            () = sleep(wait) => {}
            () = until(&mut finish) => return,
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// This user's one-way access delay to a node in `region`, when delays are on.
fn access(world: &World, me: &UserPlan, place: (f64, f64)) -> Duration {
    if !*world.emulated.borrow() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(access_ms(me.place, place, world.plan.last_mile_ms) / 1000.0)
}

/// Ask the nearest edge that answers for the healthy regions, nearest first, and
/// connect to the first of them that takes the connection; if none does, ask the next
/// edge (the one asked may be the one that is failing).
async fn connect(world: &World, me: &UserPlan, rng: &mut StdRng) -> Option<(Ws, Front)> {
    let mut fronts = world.fronts.clone();
    fronts.sort_by(|a, b| {
        let d = |f: &Front| crate::geo::distance_km(me.place, f.place);
        d(a).total_cmp(&d(b))
    });
    let room = &world.plan.rooms[me.room];
    let presence = u8::from(room.app == App::Chat);
    let mut tried: Vec<String> = Vec::new();
    for asked in &fronts {
        let rtt = access(world, me, asked.place) * 2;
        sleep(rtt).await;
        let url = format!(
            "{}/v1/route?lat={}&lon={}",
            asked.url, me.place.0, me.place.1
        );
        let got = async {
            world
                .http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        };
        let Ok(Ok(text)) = timeout(Duration::from_secs(2), got).await else {
            continue;
        };
        let Ok(answer) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        for region in answer["regions"].as_array().into_iter().flatten() {
            let mut urls: Vec<String> = region["urls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .filter(|u| !tried.contains(u))
                .collect();
            if urls.is_empty() {
                continue;
            }
            let first = rng.random_range(0..urls.len());
            urls.rotate_left(first);
            for url in urls {
                tried.push(url.clone());
                let Some(front) = fronts.iter().find(|f| f.url == url).cloned() else {
                    continue;
                };
                let ws_url = ws_url(me, &url, room.app, presence);
                // The handshake crosses the access link once each way.
                let one_way = access(world, me, front.place);
                sleep(one_way).await;
                if let Ok(Ok((ws, _))) =
                    timeout(CONNECT_PATIENCE, tokio_tungstenite::connect_async(&ws_url)).await
                {
                    sleep(one_way).await;
                    return Some((ws, front));
                }
            }
        }
    }
    None
}

/// Where a user's WebSocket goes: the native endpoint (no state frames; presence in
/// chat rooms), or the app's Engine.IO endpoint.
fn ws_url(me: &UserPlan, base: &str, app: App, presence: u8) -> String {
    let base = format!("ws{}", base.trim_start_matches("http"));
    match me.protocol {
        Protocol::Native => format!(
            "{base}/v1/ws?app={}&state=0&presence={presence}",
            app.name()
        ),
        Protocol::SocketIo => format!(
            "{base}/apps/{}/socket.io/?EIO=4&transport=websocket",
            app.name()
        ),
    }
}

/// Set SO_LINGER to zero, so closing the socket resets it (RST, not FIN).
fn reset_on_close(ws: &Ws) {
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        let _ = tcp.set_zero_linger();
    }
}

/// One connection, until it ends.
async fn serve(
    world: &World,
    me: &UserPlan,
    session: &mut Client,
    ws: Ws,
    front: &Front,
    rng: &mut StdRng,
    faults: &mut VecDeque<(Instant, LinkFault)>,
) -> End {
    let mut ws = ws;
    session.connected(&front.node);
    // Faults that fell due while away are gone.
    while faults.front().is_some_and(|(t, _)| *t <= Instant::now()) {
        faults.pop_front();
    }
    let mut inbound: VecDeque<(Instant, String)> = VecDeque::new();
    let mut outbound: VecDeque<(Instant, String)> = VecDeque::new();
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let mut stalled_until: Option<Instant> = None;
    let interval = |rng: &mut StdRng| {
        Duration::from_secs_f64(rng.random_range(0.5..1.5) / me.rate_per_s.max(1e-3))
    };
    let mut next_send = Instant::now() + interval(rng);
    let mut finish = world.finish.clone();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
    let far = Instant::now() + Duration::from_secs(86_400);
    loop {
        let now = Instant::now();
        let stalled = stalled_until.is_some_and(|t| now < t);
        let in_due = inbound.front().map_or(far, |(t, _)| *t);
        let out_due = match stalled {
            true => far,
            false => outbound.front().map_or(far, |(t, _)| *t),
        };
        let fault_due = faults.front().map_or(far, |(t, _)| *t);
        let sending = *world.sending.borrow() && session.live();
        let mut outs = Vec::new();
        let mut finished = false;
        tokio::select! {
            biased;
            () = until(&mut finish) => finished = true,
            msg = ws.next(), if !stalled => match msg {
                Some(Ok(Message::Text(t))) => {
                    let delay = access(world, me, front.place);
                    inbound.push_back((Instant::now() + delay, t.to_string()));
                }
                Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == edgeroom_proto::close::ws_code::UNAUTHORIZED => {
                    // Refused the session it resumed (a token the session replaced):
                    // it starts afresh.
                    session.session_refused();
                    return End::Dropped;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return End::Dropped,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            () = sleep_until(in_due), if in_due < far => {
                if let Some((_, text)) = inbound.pop_front() {
                    last_heard = Instant::now();
                    pinged = false;
                    outs = session.frame(&text);
                }
            }
            () = sleep_until(out_due), if out_due < far => {
                if let Some((_, text)) = outbound.pop_front()
                    && ws.send(Message::Text(text.into())).await.is_err()
                {
                    return End::Dropped;
                }
            }
            () = sleep_until(next_send), if sending => {
                next_send = Instant::now() + interval(rng);
                outs = session.send_next();
            }
            () = sleep_until(fault_due), if fault_due < far => {
                if let Some((_, f)) = faults.pop_front() {
                    match f {
                        LinkFault::Close(away) => return End::Away(away),
                        LinkFault::Reset => {
                            reset_on_close(&ws);
                            return End::Reset;
                        }
                        LinkFault::Stall(d) => stalled_until = Some(Instant::now() + d),
                    }
                }
            }
            _ = heartbeat.tick() => {
                let silent = last_heard.elapsed();
                if silent > session.dead_after() {
                    return End::Silent;
                }
                if silent > QUIET && !pinged {
                    pinged = true;
                    outs = session.ping().into_iter().collect();
                }
            }
        }
        if finished {
            let close = CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            };
            let _ = timeout(Duration::from_secs(1), ws.close(Some(close))).await;
            return End::Finished;
        }
        for out in outs {
            match out {
                Out::Send(text) => {
                    let delay = access(world, me, front.place);
                    outbound.push_back((Instant::now() + delay, text));
                }
                Out::Record(op) => world.recorder.record(op),
                Out::Reconnect => return End::Refused,
            }
        }
    }
}
