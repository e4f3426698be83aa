//! One Engine.IO session's transport logic, without I/O: which transport carries
//! packets, what a long-poll gets, heartbeats, and the upgrade to WebSocket.
//!
//! The gateway feeds it requests, frames and the current time, and does what it
//! returns. Packets for the client wait in one queue whatever the transport: a parked
//! poll or the WebSocket takes them, so nothing is lost when the transport changes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{DecodeError, Packet, decode, decode_payload, encode_payload};

/// The handshake's heartbeat settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

/// The transport currently carrying the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet.
    ClientClose,
    /// The transport went away (socket closed, poll abandoned).
    TransportClose,
    /// The client broke the protocol.
    ParseError(String),
    PingTimeout,
    /// The server (or the layer above) ended it.
    Server(String),
}

impl CloseReason {
    /// The session's state may be kept for a reconnect (connection state recovery).
    /// A client that means to leave says so per namespace (Socket.IO DISCONNECT)
    /// before it closes; only a protocol error forfeits recovery.
    pub fn recoverable(&self) -> bool {
        !matches!(self, CloseReason::ParseError(_))
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientClose => f.write_str("client close"),
            CloseReason::TransportClose => f.write_str("transport close"),
            CloseReason::ParseError(e) => write!(f, "parse error: {e}"),
            CloseReason::PingTimeout => f.write_str("ping timeout"),
            CloseReason::Server(r) => write!(f, "server close: {r}"),
        }
    }
}

/// A message for the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Text(String),
    Binary(bytes::Bytes),
}

/// What a polling GET gets.
#[derive(Debug, PartialEq, Eq)]
pub enum PollAnswer {
    /// Answer now with this payload.
    Now(String),
    /// Park the request until [`Session::take_poll`] has something.
    Wait,
    /// A GET was already parked: HTTP 400, and the session is closed.
    Overlap,
    /// The session moved to WebSocket: HTTP 400 `Bad request`.
    WrongTransport,
}

/// Why a POST was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PostError {
    /// The session moved to WebSocket: HTTP 400 `Bad request`.
    WrongTransport,
    /// Undecodable payload: HTTP 400, and the session is closed.
    Invalid(DecodeError),
}

/// What a frame on a probing WebSocket (one that asked to take over) leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// Send this packet on the probing socket (`3probe`).
    Reply(Packet),
    /// The upgrade is complete: the probing socket is now the transport.
    Upgraded,
    /// Not part of an upgrade: close the probing socket, keep the session.
    Abort,
}

#[derive(Debug)]
pub struct Session {
    timing: Timing,
    transport: Transport,
    /// A probe was answered: a parked poll is released with a noop so the client can
    /// finish the upgrade.
    probed: bool,
    queue: VecDeque<Packet>,
    /// What `queue` holds, in bytes (`Packet::cost`).
    queued_bytes: usize,
    poll_parked: bool,
    next_ping: Instant,
    pong_due: Option<Instant>,
    closed: Option<CloseReason>,
}

impl Session {
    pub fn new(now: Instant, timing: Timing, transport: Transport) -> Self {
        Self {
            timing,
            transport,
            probed: false,
            queue: VecDeque::new(),
            queued_bytes: 0,
            poll_parked: false,
            next_ping: now + timing.ping_interval,
            pong_due: None,
            closed: None,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn closed(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// Packets waiting for the client.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Bytes waiting for the client.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queue a packet for the client.
    pub fn send(&mut self, p: Packet) {
        if self.closed.is_none() {
            self.enqueue(p);
        }
    }

    fn enqueue(&mut self, p: Packet) {
        self.queued_bytes += p.cost();
        self.queue.push_back(p);
    }

    fn take_queue(&mut self) -> Vec<Packet> {
        self.queued_bytes = 0;
        self.queue.drain(..).collect()
    }

    /// End the session. A server-side close tells the client with a close packet; a
    /// client-side one releases a parked poll with a noop.
    pub fn close(&mut self, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        match reason {
            CloseReason::Server(_) | CloseReason::PingTimeout => self.enqueue(Packet::Close),
            CloseReason::ClientClose => {
                self.take_queue();
                self.enqueue(Packet::Noop);
            }
            _ => {}
        }
        self.closed = Some(reason);
    }

    /// A polling GET arrived.
    pub fn on_poll(&mut self) -> PollAnswer {
        if self.transport != Transport::Polling {
            return PollAnswer::WrongTransport;
        }
        if self.poll_parked {
            self.close(CloseReason::ParseError("overlapping polls".into()));
            self.enqueue(Packet::Close);
            return PollAnswer::Overlap;
        }
        self.poll_parked = true;
        match self.take_poll() {
            Some(body) => PollAnswer::Now(body),
            None => PollAnswer::Wait,
        }
    }

    /// The parked poll's answer, if it has one now.
    pub fn take_poll(&mut self) -> Option<String> {
        if !self.poll_parked {
            return None;
        }
        let upgraded = self.transport == Transport::WebSocket;
        if self.queue.is_empty() && !self.probed && !upgraded {
            return None;
        }
        self.poll_parked = false;
        if upgraded || self.queue.is_empty() {
            // The WebSocket carries the queue from now on; the poll only has to end.
            return Some(encode_payload(&[Packet::Noop]));
        }
        let packets = self.take_queue();
        Some(encode_payload(&packets))
    }

    /// The parked poll's client went away.
    pub fn poll_abandoned(&mut self) {
        if self.poll_parked {
            self.poll_parked = false;
            self.close(CloseReason::TransportClose);
        }
    }

    /// A polling POST's body.
    pub fn on_post(&mut self, body: &str, now: Instant) -> Result<Vec<Inbound>, PostError> {
        if self.transport != Transport::Polling {
            return Err(PostError::WrongTransport);
        }
        let packets = match decode_payload(body) {
            Ok(p) => p,
            Err(e) => {
                self.close(CloseReason::ParseError(e.to_string()));
                return Err(PostError::Invalid(e));
            }
        };
        let mut out = Vec::new();
        for p in packets {
            if let Some(m) = self.on_packet(p, now) {
                out.push(m);
            }
            if self.closed.is_some() {
                break;
            }
        }
        Ok(out)
    }

    /// A text frame on the session's WebSocket.
    pub fn on_ws_text(&mut self, text: &str, now: Instant) -> Option<Inbound> {
        match decode(text) {
            // Over WebSocket a binary message is a binary frame, never `b...`.
            Ok(Packet::Binary(_)) => {
                self.close(CloseReason::ParseError(
                    "base64 packet on a WebSocket".into(),
                ));
                None
            }
            Ok(p) => self.on_packet(p, now),
            Err(e) => {
                self.close(CloseReason::ParseError(e.to_string()));
                None
            }
        }
    }

    fn on_packet(&mut self, p: Packet, now: Instant) -> Option<Inbound> {
        match p {
            Packet::Message(m) => return Some(Inbound::Text(m)),
            Packet::Binary(b) => return Some(Inbound::Binary(b)),
            Packet::Pong(_) => {
                self.pong_due = None;
                self.next_ping = now + self.timing.ping_interval;
            }
            Packet::Close => self.close(CloseReason::ClientClose),
            Packet::Noop => {}
            Packet::Ping(_) => self.close(CloseReason::ParseError(
                "ping from the client (heartbeats go server to client)".into(),
            )),
            Packet::Open(_) | Packet::Upgrade | Packet::Encoded(_) => {
                self.close(CloseReason::ParseError("unexpected packet".into()))
            }
        }
        None
    }

    /// Whether a WebSocket carrying this sid may start an upgrade.
    pub fn may_upgrade(&self) -> bool {
        self.transport == Transport::Polling && self.closed.is_none() && !self.probed
    }

    /// A text frame on the probing WebSocket.
    pub fn on_probe(&mut self, text: &str) -> ProbeAnswer {
        match decode(text) {
            Ok(Packet::Ping(d)) if d == "probe" && !self.probed => {
                self.probed = true;
                ProbeAnswer::Reply(Packet::Pong("probe".into()))
            }
            Ok(Packet::Upgrade) if self.probed => {
                self.transport = Transport::WebSocket;
                ProbeAnswer::Upgraded
            }
            _ => ProbeAnswer::Abort,
        }
    }

    /// The probing WebSocket went away before the upgrade finished.
    pub fn probe_failed(&mut self) {
        self.probed = false;
    }

    /// Packets for the WebSocket, once it is the transport.
    pub fn take_ws(&mut self) -> Vec<Packet> {
        std::iter::from_fn(|| self.pop_ws()).collect()
    }

    /// The next packet for the WebSocket, once it is the transport.
    pub fn pop_ws(&mut self) -> Option<Packet> {
        if self.transport != Transport::WebSocket {
            return None;
        }
        let p = self.queue.pop_front()?;
        self.queued_bytes -= p.cost();
        Some(p)
    }

    /// When [`Session::on_timeout`] must run next.
    pub fn deadline(&self) -> Instant {
        match self.pong_due {
            Some(t) => t,
            None => self.next_ping,
        }
    }

    /// Ping the client at the next `on_timeout` rather than at the heartbeat (a resume
    /// asks whether this session's client is still there). No-op while a ping is out.
    pub fn ping_now(&mut self, now: Instant) {
        if self.pong_due.is_none() {
            self.next_ping = self.next_ping.min(now);
        }
    }

    /// Time passed: send a ping, or give up on a client that did not answer one.
    pub fn on_timeout(&mut self, now: Instant) {
        match self.pong_due {
            Some(due) if now >= due => self.close(CloseReason::PingTimeout),
            None if now >= self.next_ping => {
                self.send(Packet::Ping(String::new()));
                self.pong_due = Some(now + self.timing.ping_timeout);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
    };

    fn polling() -> (Session, Instant) {
        let now = Instant::now();
        (Session::new(now, T, Transport::Polling), now)
    }

    #[test]
    fn a_poll_waits_for_packets_and_takes_them_all() {
        let (mut s, now) = polling();
        assert_eq!(s.on_poll(), PollAnswer::Wait);
        assert_eq!(s.take_poll(), None);
        s.send(Packet::Message("a".into()));
        s.send(Packet::Binary(vec![1, 2, 3, 4].into()));
        assert_eq!(s.take_poll().as_deref(), Some("4a\u{1e}bAQIDBA=="));
        s.send(Packet::Message("b".into()));
        assert_eq!(s.on_poll(), PollAnswer::Now("4b".into()));
        let got = s.on_post("4x\u{1e}bAQ==\u{1e}6", now).unwrap();
        assert_eq!(
            got,
            vec![Inbound::Text("x".into()), Inbound::Binary(vec![1].into())]
        );
    }

    #[test]
    fn overlapping_polls_close_the_session_and_release_the_first() {
        let (mut s, _) = polling();
        assert_eq!(s.on_poll(), PollAnswer::Wait);
        assert_eq!(s.on_poll(), PollAnswer::Overlap);
        assert!(s.closed().is_some());
        assert_eq!(s.take_poll().as_deref(), Some("1"));
    }

    #[test]
    fn a_bad_post_closes_the_session() {
        let (mut s, now) = polling();
        assert!(matches!(s.on_post("abc", now), Err(PostError::Invalid(_))));
        assert!(matches!(s.closed(), Some(CloseReason::ParseError(_))));
    }

    #[test]
    fn a_client_close_releases_the_poll_with_a_noop() {
        let (mut s, now) = polling();
        assert_eq!(s.on_poll(), PollAnswer::Wait);
        s.on_post("1", now).unwrap();
        assert_eq!(s.closed(), Some(&CloseReason::ClientClose));
        assert_eq!(s.take_poll().as_deref(), Some("6"));
    }

    #[test]
    fn heartbeat_pings_then_times_out() {
        let (mut s, now) = polling();
        s.on_timeout(now + Duration::from_millis(100));
        assert_eq!(s.queued(), 0);
        let t1 = now + T.ping_interval;
        assert_eq!(s.deadline(), t1);
        s.on_timeout(t1);
        assert_eq!(s.on_poll(), PollAnswer::Now("2".into()));
        // A pong restarts the interval from when it arrived.
        let t2 = t1 + Duration::from_millis(50);
        s.on_post("3", t2).unwrap();
        assert_eq!(s.deadline(), t2 + T.ping_interval);
        s.on_timeout(t2 + T.ping_interval);
        s.on_timeout(t2 + T.ping_interval + T.ping_timeout);
        assert_eq!(s.closed(), Some(&CloseReason::PingTimeout));
    }

    #[test]
    fn upgrade_moves_the_queue_to_the_websocket() {
        let (mut s, now) = polling();
        assert_eq!(s.on_poll(), PollAnswer::Wait);
        assert!(s.may_upgrade());
        assert_eq!(s.on_probe("5"), ProbeAnswer::Abort);
        assert_eq!(
            s.on_probe("2probe"),
            ProbeAnswer::Reply(Packet::Pong("probe".into()))
        );
        // The parked poll ends with a noop so the client can send `5`.
        assert_eq!(s.take_poll().as_deref(), Some("6"));
        s.send(Packet::Message("during".into()));
        assert!(s.take_ws().is_empty());
        assert_eq!(s.on_probe("5"), ProbeAnswer::Upgraded);
        assert_eq!(s.transport(), Transport::WebSocket);
        assert_eq!(s.take_ws(), vec![Packet::Message("during".into())]);
        assert_eq!(s.on_poll(), PollAnswer::WrongTransport);
        assert_eq!(s.on_post("4x", now), Err(PostError::WrongTransport));
        assert_eq!(s.on_ws_text("4hi", now), Some(Inbound::Text("hi".into())));
        s.on_ws_text("bAQ==", now);
        assert!(matches!(s.closed(), Some(CloseReason::ParseError(_))));
    }

    #[test]
    fn a_client_ping_is_a_protocol_error() {
        let now = Instant::now();
        let mut s = Session::new(now, T, Transport::WebSocket);
        assert_eq!(s.on_ws_text("2", now), None);
        assert!(matches!(s.closed(), Some(CloseReason::ParseError(_))));
    }
}
