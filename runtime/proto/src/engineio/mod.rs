//! Engine.IO v4 packets and polling payloads (pure codec, no I/O).
//!
//! A packet is a type digit and its data: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop. Over WebSocket each packet is one frame (a binary
//! frame is a binary message, with no type byte). Over HTTP long-polling, packets are
//! joined by `\x1e` in one text body, binary messages written `b<base64>`.

pub mod session;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The record separator between packets of a polling payload.
pub const SEPARATOR: char = '\x1e';

/// What an Engine.IO server answers a bad HTTP request with: a JSON body
/// `{"code", "message"}`, numbered and worded as the reference server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    /// Refused by the server (a message says why).
    Forbidden,
    UnsupportedProtocolVersion,
}

impl RequestError {
    pub fn code(self) -> u8 {
        match self {
            RequestError::UnknownTransport => 0,
            RequestError::UnknownSid => 1,
            RequestError::BadHandshakeMethod => 2,
            RequestError::BadRequest => 3,
            RequestError::Forbidden => 4,
            RequestError::UnsupportedProtocolVersion => 5,
        }
    }

    /// The reference server's message for it.
    pub fn message(self) -> &'static str {
        match self {
            RequestError::UnknownTransport => "Transport unknown",
            RequestError::UnknownSid => "Session ID unknown",
            RequestError::BadHandshakeMethod => "Bad handshake method",
            RequestError::BadRequest => "Bad request",
            RequestError::Forbidden => "Forbidden",
            RequestError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// The handshake: JSON `{sid, upgrades, pingInterval, pingTimeout, maxPayload}`.
    Open(String),
    Close,
    /// `Ping("probe")` starts an upgrade.
    Ping(String),
    Pong(String),
    Message(String),
    Binary(bytes::Bytes),
    Upgrade,
    Noop,
    /// A whole text packet, type digit included, encoded once and shared by every
    /// session it goes to (a room's event). Never produced by decoding.
    Encoded(bytes::Bytes),
}

impl Packet {
    /// What waiting in a session's queue costs, in bytes (what it keeps alive).
    pub fn cost(&self) -> usize {
        const PACKET: usize = 16;
        PACKET
            + match self {
                Packet::Open(s) | Packet::Ping(s) | Packet::Pong(s) | Packet::Message(s) => s.len(),
                Packet::Binary(b) | Packet::Encoded(b) => b.len(),
                Packet::Close | Packet::Upgrade | Packet::Noop => 0,
            }
    }
}

/// Why a packet or payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("binary packet is not valid base64")]
    BadBase64,
}

/// Decode one text packet (a WebSocket text frame, or one segment of a polling payload).
pub fn decode(text: &str) -> Result<Packet, DecodeError> {
    let mut chars = text.chars();
    let ty = chars.next().ok_or(DecodeError::Empty)?;
    let data = chars.as_str();
    Ok(match ty {
        '0' => Packet::Open(data.to_owned()),
        '1' => Packet::Close,
        '2' => Packet::Ping(data.to_owned()),
        '3' => Packet::Pong(data.to_owned()),
        '4' => Packet::Message(data.to_owned()),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        'b' => Packet::Binary(B64.decode(data).map_err(|_| DecodeError::BadBase64)?.into()),
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// Encode a packet as text: binary becomes `b<base64>` (the polling form).
pub fn encode(p: &Packet) -> String {
    match p {
        Packet::Open(json) => format!("0{json}"),
        Packet::Close => "1".into(),
        Packet::Ping(d) => format!("2{d}"),
        Packet::Pong(d) => format!("3{d}"),
        Packet::Message(m) => format!("4{m}"),
        Packet::Binary(b) => format!("b{}", B64.encode(b)),
        Packet::Upgrade => "5".into(),
        Packet::Noop => "6".into(),
        Packet::Encoded(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// Decode a polling POST body. Stops at the first bad packet, as the reference does.
pub fn decode_payload(body: &str) -> Result<Vec<Packet>, DecodeError> {
    body.split(SEPARATOR).map(decode).collect()
}

/// Encode packets as one polling GET body.
pub fn encode_payload(packets: &[Packet]) -> String {
    let mut out = String::new();
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.push_str(&encode(p));
    }
    out
}

/// The handshake data of an `Open` packet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    pub sid: String,
    pub upgrades: Vec<String>,
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: u64,
}

impl Handshake {
    pub fn packet(&self) -> Packet {
        Packet::Open(serde_json::to_string(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        for p in [
            Packet::Close,
            Packet::Ping("probe".into()),
            Packet::Pong(String::new()),
            Packet::Message("héllo".into()),
            Packet::Binary(vec![1, 2, 3, 4].into()),
            Packet::Binary(bytes::Bytes::new()),
            Packet::Upgrade,
            Packet::Noop,
        ] {
            assert_eq!(decode(&encode(&p)).unwrap(), p);
        }
        assert_eq!(
            encode(&Packet::Binary(vec![1, 2, 3, 4].into())),
            "bAQIDBA=="
        );
    }

    #[test]
    fn payloads_split_on_the_record_separator() {
        let body = "4hello\u{1e}bAQIDBA==\u{1e}2";
        let packets = decode_payload(body).unwrap();
        assert_eq!(
            packets,
            vec![
                Packet::Message("hello".into()),
                Packet::Binary(vec![1, 2, 3, 4].into()),
                Packet::Ping(String::new())
            ]
        );
        assert_eq!(encode_payload(&packets), body);
        assert_eq!(
            decode_payload("4a\u{1e}x"),
            Err(DecodeError::UnknownType('x'))
        );
        assert_eq!(decode_payload(""), Err(DecodeError::Empty));
        assert_eq!(decode("b!!"), Err(DecodeError::BadBase64));
    }

    #[test]
    fn handshake_has_the_reference_shape() {
        let h = Handshake {
            sid: "s".into(),
            upgrades: vec!["websocket".into()],
            ping_interval: 300,
            ping_timeout: 200,
            max_payload: 1_000_000,
        };
        assert_eq!(
            encode(&h.packet()),
            r#"0{"sid":"s","upgrades":["websocket"],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}"#
        );
    }
}
