//! Why the server ends a client's connection: typed reasons, the text a client reads in
//! its close frame or Engine.IO close, and the WebSocket close code each maps to.
//! Gateways decide codes from the variant, never from the text.

use std::fmt;

/// WebSocket close codes (RFC 6455 §7.4.1) the native gateway sends.
pub mod ws_code {
    /// The client closed; the server answers in kind.
    pub const NORMAL: u16 = 1000;
    /// The server goes away: it stops, is cut off, or hands the session elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke a rule (read too slowly, sent garbage).
    pub const POLICY: u16 = 1008;
    /// The client's credential is missing or has expired: connect again with a fresh
    /// token (private range, RFC 6455 §7.4.2).
    pub const UNAUTHORIZED: u16 = 4001;
}

/// Why a node sends all its clients away (and refuses new ones meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Going {
    /// The node is shutting down.
    Stopping,
    /// The node cannot hear most of its cluster.
    CutOff,
}

impl Going {
    /// The word `/healthz` answers with.
    pub fn status(self) -> &'static str {
        match self {
            Going::Stopping => "stopping",
            Going::CutOff => "cut_off",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Going::Stopping => "server shutting down; resume on another node",
            Going::CutOff => "this node is cut off from its cluster; resume on another node",
        }
    }
}

impl fmt::Display for Going {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Why one connection is ended from outside the task that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// Its outbox was full: the client reads slower than its rooms write.
    SlowConsumer {
        /// The outbox's bound, in frames.
        limit: usize,
    },
    /// Its outbox held more bytes than its bound: the client reads slower than its rooms
    /// write, and what waits for it is large.
    Backlog {
        /// The outbox's bound, in bytes.
        bytes: usize,
    },
    /// It sent too many frames that did not parse.
    TooManyBadFrames,
    /// Its transport broke the protocol (over the frame limit, bad UTF-8, bad framing).
    ProtocolError(String),
    /// Nothing was heard from it for three ping intervals.
    NoTraffic,
    /// It closed the connection.
    ConnectionClosed,
    /// Its Engine.IO session ended.
    SessionClosed,
    /// Its session was resumed on another connection.
    ResumedElsewhere,
    /// The node sends every client away.
    Going(Going),
    /// Its token expired and no fresh one came.
    TokenExpired,
    /// It presented no token in time where the app needs one.
    Unauthenticated,
    /// It resumed with a token its session had replaced, or as another user: the
    /// session is not its to take.
    SessionRefused,
}

impl Disconnect {
    /// The WebSocket close code for this reason.
    pub fn ws_code(&self) -> u16 {
        match self {
            Disconnect::SlowConsumer { .. }
            | Disconnect::Backlog { .. }
            | Disconnect::TooManyBadFrames
            | Disconnect::ProtocolError(_) => ws_code::POLICY,
            Disconnect::ConnectionClosed => ws_code::NORMAL,
            Disconnect::TokenExpired | Disconnect::Unauthenticated | Disconnect::SessionRefused => {
                ws_code::UNAUTHORIZED
            }
            Disconnect::NoTraffic
            | Disconnect::SessionClosed
            | Disconnect::ResumedElsewhere
            | Disconnect::Going(_) => ws_code::GOING_AWAY,
        }
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::SlowConsumer { limit } => {
                write!(f, "slow consumer: more than {limit} frames waiting")
            }
            Disconnect::Backlog { bytes } => {
                write!(f, "slow consumer: more than {bytes} bytes waiting")
            }
            Disconnect::TooManyBadFrames => f.write_str("too many bad frames"),
            Disconnect::ProtocolError(e) => write!(f, "protocol error: {e}"),
            Disconnect::NoTraffic => f.write_str("no traffic from client"),
            Disconnect::ConnectionClosed => f.write_str("connection closed"),
            Disconnect::SessionClosed => f.write_str("session closed"),
            Disconnect::ResumedElsewhere => f.write_str("session resumed on another connection"),
            Disconnect::Going(g) => g.fmt(f),
            Disconnect::TokenExpired => f.write_str("token expired"),
            Disconnect::Unauthenticated => f.write_str("no token presented"),
            Disconnect::SessionRefused => f.write_str(
                "resume refused: the token was replaced, or the session is another user's",
            ),
        }
    }
}

impl From<Going> for Disconnect {
    fn from(g: Going) -> Self {
        Disconnect::Going(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_client_did_is_a_policy_close_and_the_rest_goes_away() {
        assert_eq!(
            Disconnect::SlowConsumer { limit: 8 }.ws_code(),
            ws_code::POLICY
        );
        assert_eq!(
            Disconnect::SlowConsumer { limit: 8 }.to_string(),
            "slow consumer: more than 8 frames waiting"
        );
        assert_eq!(
            Disconnect::ProtocolError("x".into()).ws_code(),
            ws_code::POLICY
        );
        assert_eq!(Disconnect::ConnectionClosed.ws_code(), ws_code::NORMAL);
        assert_eq!(
            Disconnect::from(Going::CutOff).ws_code(),
            ws_code::GOING_AWAY
        );
        assert_eq!(
            Disconnect::from(Going::Stopping).to_string(),
            Going::Stopping.message()
        );
    }
}
