//! Edgeroom's vocabulary and wire codecs: the typed ids every layer speaks (`ids`), the
//! payload model (`payload`), and the codecs clients speak — `native` (Edgeroom's own
//! WebSocket protocol, docs/protocol.md), `engineio` and `socketio` (the Socket.IO stack's
//! two layers), `cursor` (the resume cursor every protocol shares).
//!
//! Invariant: pure functions and state machines over bytes and a given time — no
//! sockets, no tokio, no clock read here, no shared state. Anything a peer or client
//! sends that does not parse is an error value, never a panic or a default.

pub mod app;
pub mod close;
pub mod cursor;
pub mod engineio;
pub mod ids;
pub mod member;
pub mod native;
pub mod payload;
pub mod socketio;

#[cfg(test)]
mod fuzz;

pub use cursor::Cursor;

/// Error codes clients see, in `reply.error.code` and `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON / MessagePack, or a field has the wrong type.
    BadFrame,
    UnknownType,
    MissingField,
    TooLarge,
    InvalidName,
    UnknownApp,
    AlreadyJoined,
    NotJoined,
    TooManyRooms,
    /// The handler refused (its error message is the message).
    Rejected,
    /// The handler trapped, ran past its deadline or out of memory.
    HandlerFailed,
    /// No handler is deployed for the app.
    NoHandler,
    BadToken,
    /// This app needs a token and the connection has presented none.
    Unauthorized,
    /// The connection's token has expired: present a fresh one.
    TokenExpired,
    /// The connection's token does not allow this in this room.
    Forbidden,
    ResumeFailed,
    /// Events were lost from history before the client resumed.
    HistoryGap,
    BadState,
    /// The node has no capacity for this now (its handler instances, or the app's share
    /// of them, are all in use); try again later.
    Overloaded,
    /// The client did this too often (rooms created per second); try again later.
    RateLimited,
    Internal,
}

impl ErrorCode {
    /// Every code, for reading one back by name.
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::BadFrame,
        ErrorCode::UnknownType,
        ErrorCode::MissingField,
        ErrorCode::TooLarge,
        ErrorCode::InvalidName,
        ErrorCode::UnknownApp,
        ErrorCode::AlreadyJoined,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::Rejected,
        ErrorCode::HandlerFailed,
        ErrorCode::NoHandler,
        ErrorCode::BadToken,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::ResumeFailed,
        ErrorCode::HistoryGap,
        ErrorCode::BadState,
        ErrorCode::Overloaded,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];

    /// The code named `name` (see [`ErrorCode::as_str`]).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::UnknownApp => "unknown_app",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Rejected => "rejected",
            ErrorCode::HandlerFailed => "handler_failed",
            ErrorCode::NoHandler => "no_handler",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::HistoryGap => "history_gap",
            ErrorCode::BadState => "bad_state",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error with a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
