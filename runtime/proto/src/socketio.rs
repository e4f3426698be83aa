//! Socket.IO v5 packets (pure codec, no I/O), carried in Engine.IO messages.
//!
//! `<type>[<attachments>-][<namespace>,][<ack id>][JSON]`, types `0` CONNECT, `1`
//! DISCONNECT, `2` EVENT, `3` ACK, `4` CONNECT_ERROR, `5` BINARY_EVENT, `6` BINARY_ACK.
//! A binary packet is followed by its attachments, one Engine.IO binary message each;
//! [`Reassembly`] puts them back together. JSON is kept as the text that arrived, so
//! arguments are relayed byte for byte.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::payload::Payload;

/// Most attachments one packet may announce (as the reference server).
pub const MAX_ATTACHMENTS: usize = 10;

/// Event names a client may not use: they are Socket.IO's own.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    /// EVENT, or BINARY_EVENT when `attachments > 0`.
    Event,
    /// ACK, or BINARY_ACK when `attachments > 0`.
    Ack,
    ConnectError,
}

/// One Socket.IO packet; `data` is raw JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<String>,
    pub attachments: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("bad attachment count")]
    BadAttachments,
    #[error("bad ack id")]
    BadId,
    #[error("invalid payload for this packet type")]
    BadPayload,
    #[error("binary attachment without a packet waiting for it")]
    UnexpectedBinary,
    #[error("text packet while attachments are awaited")]
    ExpectedBinary,
}

impl Packet {
    pub fn new(kind: Kind, nsp: &str, data: Option<String>) -> Self {
        Self {
            kind,
            nsp: nsp.to_owned(),
            id: None,
            data,
            attachments: 0,
        }
    }
}

/// Decode a packet's text.
pub fn decode(text: &str) -> Result<Packet, DecodeError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let ty = *bytes.first().ok_or(DecodeError::Empty)?;
    i += 1;
    let (kind, binary) = match ty {
        b'0' => (Kind::Connect, false),
        b'1' => (Kind::Disconnect, false),
        b'2' => (Kind::Event, false),
        b'3' => (Kind::Ack, false),
        b'4' => (Kind::ConnectError, false),
        b'5' => (Kind::Event, true),
        b'6' => (Kind::Ack, true),
        _ => return Err(DecodeError::UnknownType),
    };
    let mut attachments = 0;
    if binary {
        let dash = text[i..].find('-').ok_or(DecodeError::BadAttachments)? + i;
        attachments = text[i..dash]
            .parse::<usize>()
            .map_err(|_| DecodeError::BadAttachments)?;
        if attachments > MAX_ATTACHMENTS {
            return Err(DecodeError::BadAttachments);
        }
        i = dash + 1;
    }
    let mut nsp = "/".to_owned();
    if bytes.get(i) == Some(&b'/') {
        let end = text[i..].find(',').map_or(text.len(), |c| c + i);
        nsp = text[i..end].to_owned();
        i = (end + 1).min(text.len());
    }
    let digits = text[i..].bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        let id = text[i..i + digits]
            .parse::<u64>()
            .map_err(|_| DecodeError::BadId)?;
        i += digits;
        Some(id)
    } else {
        None
    };
    let rest = &text[i..];
    let data = if rest.is_empty() {
        None
    } else {
        Some(rest.to_owned())
    };
    check_payload(kind, data.as_deref())?;
    Ok(Packet {
        kind,
        nsp,
        id,
        data,
        attachments,
    })
}

fn check_payload(kind: Kind, data: Option<&str>) -> Result<(), DecodeError> {
    let bad = DecodeError::BadPayload;
    match (kind, data) {
        (Kind::Connect, None) | (Kind::Disconnect, None) => Ok(()),
        (Kind::Connect, Some(d)) => {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(d)
                .map(drop)
                .map_err(|_| bad)
        }
        (Kind::ConnectError, Some(d)) => match serde_json::from_str::<serde_json::Value>(d) {
            Ok(serde_json::Value::String(_) | serde_json::Value::Object(_)) => Ok(()),
            _ => Err(bad),
        },
        (Kind::Event, Some(d)) => {
            let args: Vec<&RawValue> = serde_json::from_str(d).map_err(|_| bad.clone())?;
            let first = args.first().ok_or(bad.clone())?;
            match serde_json::from_str::<serde_json::Value>(first.get()) {
                Ok(serde_json::Value::String(name))
                    if !RESERVED_EVENTS.contains(&name.as_str()) =>
                {
                    Ok(())
                }
                Ok(serde_json::Value::Number(_)) => Ok(()),
                _ => Err(bad),
            }
        }
        (Kind::Ack, Some(d)) => serde_json::from_str::<Vec<&RawValue>>(d)
            .map(drop)
            .map_err(|_| bad),
        _ => Err(bad),
    }
}

/// Encode a packet's text (its attachments are sent after it, separately).
pub fn encode(p: &Packet) -> String {
    let ty = match (p.kind, p.attachments > 0) {
        (Kind::Connect, _) => '0',
        (Kind::Disconnect, _) => '1',
        (Kind::Event, false) => '2',
        (Kind::Ack, false) => '3',
        (Kind::ConnectError, _) => '4',
        (Kind::Event, true) => '5',
        (Kind::Ack, true) => '6',
    };
    let mut out = String::with_capacity(16 + p.nsp.len() + p.data.as_ref().map_or(0, String::len));
    out.push(ty);
    if p.attachments > 0 {
        out.push_str(&p.attachments.to_string());
        out.push('-');
    }
    if p.nsp != "/" {
        out.push_str(&p.nsp);
        out.push(',');
    }
    if let Some(id) = p.id {
        out.push_str(&id.to_string());
    }
    if let Some(d) = &p.data {
        out.push_str(d);
    }
    out
}

/// An EVENT's name and arguments, from its data array (`["name", arg, ...]`).
/// Arguments keep their exact text.
pub fn split_event(data: &str, binaries: Vec<Bytes>) -> Result<(String, Payload), DecodeError> {
    let items: Vec<&RawValue> = serde_json::from_str(data).map_err(|_| DecodeError::BadPayload)?;
    let (first, args) = items.split_first().ok_or(DecodeError::BadPayload)?;
    let name = match serde_json::from_str::<serde_json::Value>(first.get()) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(DecodeError::BadPayload),
    };
    Ok((
        name,
        Payload {
            json: join_raw(args.iter().map(|a| a.get())),
            binaries,
        },
    ))
}

/// An EVENT's data array: the name, then the payload's arguments, then the
/// connection-state-recovery offset when there is one. Spliced from the payload's
/// array text, never re-parsed: this runs once per event and namespace form.
pub fn event_data(name: &str, args: &Payload, offset: Option<&str>) -> String {
    let name = serde_json::Value::from(name).to_string();
    let offset = offset.map(|o| serde_json::Value::from(o).to_string());
    let inner = array_items(&args.json);
    let mut out = String::with_capacity(args.json.len() + name.len() + 32);
    out.push('[');
    out.push_str(&name);
    for part in [Some(inner), offset.as_deref()].into_iter().flatten() {
        if !part.is_empty() {
            out.push(',');
            out.push_str(part);
        }
    }
    out.push(']');
    out
}

/// An ACK's data array: the payload's arguments (already an array).
pub fn ack_data(args: &Payload) -> String {
    format!("[{}]", array_items(&args.json))
}

/// The text between a JSON array's brackets (a payload's `json` is always an array;
/// anything else is treated as no arguments).
fn array_items(json: &str) -> &str {
    let t = json.trim();
    match t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(inner) => inner.trim(),
        None => "",
    }
}

fn join_raw<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

/// A packet with its attachments.
pub type Whole = (Packet, Vec<Bytes>);

/// Collects a binary packet's attachments.
#[derive(Debug, Default)]
pub struct Reassembly {
    waiting: Option<Whole>,
}

impl Reassembly {
    /// A text message arrived: a whole packet, or the head of a binary one (then `None`
    /// until its attachments are in).
    pub fn text(&mut self, text: &str) -> Result<Option<Whole>, DecodeError> {
        if self.waiting.is_some() {
            return Err(DecodeError::ExpectedBinary);
        }
        let p = decode(text)?;
        if p.attachments == 0 {
            return Ok(Some((p, Vec::new())));
        }
        let n = p.attachments;
        self.waiting = Some((p, Vec::with_capacity(n)));
        Ok(None)
    }

    /// A binary message arrived: the next attachment of the waiting packet.
    pub fn binary(&mut self, bytes: Bytes) -> Result<Option<Whole>, DecodeError> {
        let (p, bins) = self.waiting.as_mut().ok_or(DecodeError::UnexpectedBinary)?;
        bins.push(bytes);
        if bins.len() < p.attachments {
            return Ok(None);
        }
        Ok(self.waiting.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Packet {
        decode(text).unwrap()
    }

    #[test]
    fn decodes_the_reference_examples() {
        assert_eq!(p("0"), Packet::new(Kind::Connect, "/", None));
        assert_eq!(p("0/custom"), Packet::new(Kind::Connect, "/custom", None));
        assert_eq!(
            p("0/admin,{\"token\":\"1\"}").data.as_deref(),
            Some("{\"token\":\"1\"}")
        );
        assert_eq!(p("1/admin,"), Packet::new(Kind::Disconnect, "/admin", None));
        let e = p("212[\"foo\",1]");
        assert_eq!(
            (e.kind, e.id, e.data.as_deref()),
            (Kind::Event, Some(12), Some("[\"foo\",1]"))
        );
        let a = p("3/admin,13[\"bar\"]");
        assert_eq!(
            (a.kind, a.nsp.as_str(), a.id),
            (Kind::Ack, "/admin", Some(13))
        );
        let b = p("51-[\"baz\",{\"_placeholder\":true,\"num\":0}]");
        assert_eq!((b.kind, b.attachments), (Kind::Event, 1));
        let ba = p("61-/admin,15[\"bar\",{\"_placeholder\":true,\"num\":0}]");
        assert_eq!(
            (ba.kind, ba.attachments, ba.id, ba.nsp.as_str()),
            (Kind::Ack, 1, Some(15), "/admin")
        );
        assert_eq!(
            p("4/random,{\"message\":\"Invalid namespace\"}").kind,
            Kind::ConnectError
        );
    }

    #[test]
    fn refuses_what_the_reference_refuses() {
        for bad in [
            "",
            "7",
            "abc",
            "2abc[\"x\"]",
            "2[]",
            "2{}",
            "2[\"connect\"]",
            "2[null]",
            "0[1]",
            "1{}",
            "3{}",
            "5[\"x\"]",
            "5x-[\"x\"]",
            "511-[\"x\"]",
            "4[1]",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn encoding_inverts_decoding() {
        for text in [
            "0",
            "0/custom,{\"sid\":\"x\"}",
            "1/admin,",
            "2[\"foo\"]",
            "212[\"foo\",{\"3\":[true]}]",
            "3/admin,13[\"bar\"]",
            "51-[\"baz\",{\"_placeholder\":true,\"num\":0}]",
            "4/random,{\"message\":\"Invalid namespace\"}",
        ] {
            assert_eq!(encode(&p(text)), text);
        }
    }

    #[test]
    fn events_split_and_rebuild_byte_for_byte() {
        let (name, args) = split_event("[\"msg\",{\"3\":[true]},1.50,\"é\"]", vec![]).unwrap();
        assert_eq!(name, "msg");
        assert_eq!(args.json, "[{\"3\":[true]},1.50,\"é\"]");
        assert_eq!(
            event_data(&name, &args, None),
            "[\"msg\",{\"3\":[true]},1.50,\"é\"]"
        );
        assert_eq!(event_data("e", &Payload::empty(), None), "[\"e\"]");
        assert_eq!(
            event_data("e", &args, Some("n1:4")),
            "[\"e\",{\"3\":[true]},1.50,\"é\",\"n1:4\"]"
        );
        assert_eq!(ack_data(&args), "[{\"3\":[true]},1.50,\"é\"]");
    }

    #[test]
    fn attachments_are_collected_in_order() {
        let mut r = Reassembly::default();
        assert_eq!(r.binary(vec![1].into()), Err(DecodeError::UnexpectedBinary));
        assert!(
            r.text(
                "52-[\"up\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]"
            )
            .unwrap()
            .is_none()
        );
        assert_eq!(r.text("2[\"x\"]"), Err(DecodeError::ExpectedBinary));
        assert!(r.binary(vec![1].into()).unwrap().is_none());
        let (pkt, bins) = r.binary(vec![2, 3].into()).unwrap().unwrap();
        assert_eq!(
            (pkt.attachments, bins),
            (2, vec![Bytes::from(vec![1]), Bytes::from(vec![2, 3])])
        );
        assert!(r.text("2[\"x\"]").unwrap().is_some());
    }
}
