//! The native protocol codec (docs/protocol.md is the contract).
//!
//! One object per WebSocket frame with a `type` field. Text frames are JSON, where a
//! binary value is written `{"$binary":"<base64>"}`; binary frames are MessagePack with
//! the same fields, where binary values are MessagePack `bin`. A connection picks its
//! format when it connects and the server answers in it.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Cursor, ErrorCode, ProtoError};
use crate::ids::{ConnId, RoomId};
use crate::payload::{Payload, extract_base64_binaries, inline_base64_binaries, placeholder};

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Json, Format::MsgPack];
    /// Position in per-format caches.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A client's request id, echoed in the reply: a number or a string.
pub type Ref = Value;

/// Longest event name.
pub const MAX_EVENT_NAME: usize = 256;

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Join {
        room: RoomId,
        auth: String,
        r#ref: Option<Ref>,
    },
    Leave {
        room: RoomId,
        r#ref: Option<Ref>,
    },
    Emit {
        room: RoomId,
        event: String,
        payload: Payload,
        r#ref: Option<Ref>,
        id: Option<String>,
    },
    Resume {
        token: String,
        cursors: BTreeMap<RoomId, Cursor>,
        r#ref: Option<Ref>,
    },
    Ping {
        r#ref: Option<Ref>,
    },
    /// Present a credential (a JWT of the app), or a fresh one before the current
    /// expires.
    Authenticate {
        token: String,
        r#ref: Option<Ref>,
    },
    /// Read a joined room's history: the events after `cursor` (from the log's start
    /// without one), oldest first, at most `limit`.
    History {
        room: RoomId,
        cursor: Option<Cursor>,
        limit: Option<u32>,
        r#ref: Option<Ref>,
    },
}

/// A frame that could not be decoded; `r#ref` is set when the frame had a readable one,
/// so the error can be sent as that request's reply.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub error: ProtoError,
    pub r#ref: Option<Ref>,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type")]
    ty: Option<&'a str>,
    room: Option<String>,
    auth: Option<&'a RawValue>,
    #[serde(rename = "ref")]
    r#ref: Option<Value>,
    event: Option<String>,
    data: Option<&'a RawValue>,
    args: Option<&'a RawValue>,
    id: Option<String>,
    token: Option<String>,
    cursors: Option<BTreeMap<String, String>>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref")]
    r#ref: Option<Value>,
}

/// Decode a text (JSON) frame of at most `max` bytes.
pub fn decode_text(text: &str, max: usize) -> Result<ClientFrame, DecodeError> {
    decode_json(text, Vec::new(), max)
}

/// Decode a binary (MessagePack) frame of at most `max` bytes.
pub fn decode_binary(bytes: &[u8], max: usize) -> Result<ClientFrame, DecodeError> {
    let bad = |m: String| DecodeError {
        error: ProtoError::new(ErrorCode::BadFrame, m),
        r#ref: None,
    };
    if bytes.len() > max {
        return Err(too_large(bytes.len(), max, None));
    }
    let value = rmpv::decode::read_value(&mut &bytes[..])
        .map_err(|e| bad(format!("not MessagePack: {e}")))?;
    let mut binaries = Vec::new();
    let json = msgpack_to_json(value, &mut binaries, 0).map_err(bad)?;
    decode_json(&json.to_string(), binaries, usize::MAX)
}

fn too_large(len: usize, max: usize, r#ref: Option<Ref>) -> DecodeError {
    DecodeError {
        error: ProtoError::new(
            ErrorCode::TooLarge,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ),
        r#ref,
    }
}

fn decode_json(text: &str, binaries: Vec<Bytes>, max: usize) -> Result<ClientFrame, DecodeError> {
    let ref_of = || {
        serde_json::from_str::<RefOnly>(text)
            .ok()
            .and_then(|r| r.r#ref)
            .filter(valid_ref)
    };
    if text.len() > max {
        return Err(too_large(text.len(), max, ref_of()));
    }
    // Kept as raw JSON, a deeper value would pass here and fail every later parse
    // (it reached members as no arguments at all): refused at the door instead.
    if json_depth(text) > MAX_FRAME_DEPTH {
        return Err(DecodeError {
            error: ProtoError::new(
                ErrorCode::BadFrame,
                format!("frame nested deeper than {MAX_FRAME_DEPTH} levels"),
            ),
            r#ref: ref_of(),
        });
    }
    let raw: RawFrame = serde_json::from_str(text).map_err(|e| DecodeError {
        error: ProtoError::new(ErrorCode::BadFrame, format!("not a valid frame: {e}")),
        r#ref: ref_of(),
    })?;
    let r#ref = raw.r#ref.clone();
    let fail = |code, message: String| DecodeError {
        error: ProtoError::new(code, message),
        r#ref: r#ref.clone().filter(valid_ref),
    };
    if let Some(r) = &r#ref
        && !valid_ref(r)
    {
        return Err(fail(
            ErrorCode::BadFrame,
            "ref must be a number or a string of at most 128 bytes".into(),
        ));
    }
    let ty = raw
        .ty
        .ok_or_else(|| fail(ErrorCode::MissingField, "missing field `type`".into()))?;
    let room = |raw_room: Option<String>| -> Result<RoomId, DecodeError> {
        let name = raw_room.ok_or_else(|| {
            fail(
                ErrorCode::MissingField,
                format!("`{ty}` needs field `room`"),
            )
        })?;
        RoomId::new(&name).map_err(|e| fail(ErrorCode::InvalidName, e.to_string()))
    };
    match ty {
        "join" => {
            let auth = raw
                .auth
                .map(|a| a.get().to_owned())
                .unwrap_or_else(|| "null".into());
            Ok(ClientFrame::Join {
                room: room(raw.room)?,
                auth,
                r#ref,
            })
        }
        "leave" => Ok(ClientFrame::Leave {
            room: room(raw.room)?,
            r#ref,
        }),
        "emit" => {
            let room = room(raw.room)?;
            let event = raw.event.ok_or_else(|| {
                fail(ErrorCode::MissingField, "`emit` needs field `event`".into())
            })?;
            if event.is_empty() || event.len() > MAX_EVENT_NAME {
                return Err(fail(
                    ErrorCode::InvalidName,
                    format!("event name must be 1 to {MAX_EVENT_NAME} bytes"),
                ));
            }
            let payload = match (raw.data, raw.args) {
                (Some(_), Some(_)) => {
                    return Err(fail(
                        ErrorCode::BadFrame,
                        "give `data` or `args`, not both".into(),
                    ));
                }
                (Some(data), None) => payload_from(&format!("[{}]", data.get()), binaries),
                (None, Some(args)) => payload_from(args.get(), binaries),
                (None, None) => Ok(Payload::empty()),
            }
            .map_err(|m| fail(ErrorCode::BadFrame, m))?;
            if raw
                .id
                .as_ref()
                .is_some_and(|id| id.is_empty() || id.len() > 128)
            {
                return Err(fail(
                    ErrorCode::BadFrame,
                    "id must be 1 to 128 bytes".into(),
                ));
            }
            Ok(ClientFrame::Emit {
                room,
                event,
                payload,
                r#ref,
                id: raw.id,
            })
        }
        "resume" => {
            let token = raw.token.ok_or_else(|| {
                fail(
                    ErrorCode::MissingField,
                    "`resume` needs field `token`".into(),
                )
            })?;
            let mut cursors = BTreeMap::new();
            for (name, c) in raw.cursors.unwrap_or_default() {
                let room =
                    RoomId::new(&name).map_err(|e| fail(ErrorCode::InvalidName, e.to_string()))?;
                let c = c
                    .parse::<Cursor>()
                    .map_err(|e| fail(ErrorCode::BadFrame, e.to_string()))?;
                cursors.insert(room, c);
            }
            Ok(ClientFrame::Resume {
                token,
                cursors,
                r#ref,
            })
        }
        "ping" => Ok(ClientFrame::Ping { r#ref }),
        "history" => {
            let cursor = match raw.cursor {
                Some(c) => Some(
                    c.parse::<Cursor>()
                        .map_err(|e| fail(ErrorCode::BadFrame, e.to_string()))?,
                ),
                None => None,
            };
            Ok(ClientFrame::History {
                room: room(raw.room)?,
                cursor,
                limit: raw.limit,
                r#ref,
            })
        }
        "authenticate" => {
            let token = raw.token.ok_or_else(|| {
                fail(
                    ErrorCode::MissingField,
                    "`authenticate` needs field `token`".into(),
                )
            })?;
            Ok(ClientFrame::Authenticate { token, r#ref })
        }
        other => Err(fail(
            ErrorCode::UnknownType,
            format!("unknown frame type {:?}", truncate(other, 64)),
        )),
    }
}

fn valid_ref(r: &Value) -> bool {
    match r {
        Value::Number(_) => true,
        Value::String(s) => s.len() <= 128,
        _ => false,
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Turn an argument array (JSON text, maybe with `$binary` objects) into a payload.
/// Text without `$binary` is kept as it came, byte for byte.
fn payload_from(args: &str, mut binaries: Vec<Bytes>) -> Result<Payload, String> {
    if !args.trim_start().starts_with('[') {
        return Err("`args` must be an array".into());
    }
    if !args.contains(crate::payload::BINARY_KEY) {
        return Ok(Payload {
            json: args.to_owned(),
            binaries,
        });
    }
    let mut v: Value = serde_json::from_str(args).map_err(|e| e.to_string())?;
    extract_base64_binaries(&mut v, &mut binaries)?;
    Ok(Payload {
        json: v.to_string(),
        binaries,
    })
}

/// Deepest nesting of arrays and objects a JSON frame may have, the frame itself
/// counted: every value in it must parse again later, within serde_json's limit.
pub const MAX_FRAME_DEPTH: usize = 120;

/// How deeply arrays and objects nest in JSON `text` (0 for a scalar), without parsing
/// it: brackets inside strings do not count. Linear, and never recursive, so a hostile
/// frame cannot make it deep.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn msgpack_to_json(
    v: rmpv::Value,
    binaries: &mut Vec<Bytes>,
    depth: usize,
) -> Result<Value, String> {
    use rmpv::Value as M;
    if depth > MAX_FRAME_DEPTH {
        return Err(format!(
            "MessagePack nested deeper than {MAX_FRAME_DEPTH} levels"
        ));
    }
    Ok(match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => {
            if let Some(u) = i.as_u64() {
                Value::from(u)
            } else if let Some(s) = i.as_i64() {
                Value::from(s)
            } else {
                return Err("integer out of range".into());
            }
        }
        M::F32(f) => serde_json::Number::from_f64(f64::from(f))
            .map(Value::Number)
            .ok_or("non-finite float")?,
        M::F64(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or("non-finite float")?,
        M::String(s) => Value::String(s.into_str().ok_or("string is not UTF-8")?),
        M::Binary(b) => {
            binaries.push(b.into());
            placeholder(binaries.len() - 1)
        }
        M::Array(a) => Value::Array(
            a.into_iter()
                .map(|x| msgpack_to_json(x, binaries, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        M::Map(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                let M::String(k) = k else {
                    return Err("map keys must be strings".into());
                };
                o.insert(
                    k.into_str().ok_or("key is not UTF-8")?,
                    msgpack_to_json(v, binaries, depth + 1)?,
                );
            }
            Value::Object(o)
        }
        M::Ext(..) => return Err("MessagePack extension types are not supported".into()),
    })
}

fn json_to_msgpack(v: Value, binaries: &[Bytes]) -> rmpv::Value {
    use rmpv::Value as M;
    if let Some(b) = crate::payload::as_placeholder(&v).and_then(|n| binaries.get(n)) {
        return M::Binary(b.to_vec());
    }
    match v {
        Value::Null => M::Nil,
        Value::Bool(b) => M::Boolean(b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                M::from(u)
            } else if let Some(i) = n.as_i64() {
                M::from(i)
            } else {
                M::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => M::String(s.into()),
        Value::Array(a) => M::Array(
            a.into_iter()
                .map(|x| json_to_msgpack(x, binaries))
                .collect(),
        ),
        Value::Object(o) => M::Map(
            o.into_iter()
                .map(|(k, v)| (M::String(k.into()), json_to_msgpack(v, binaries)))
                .collect(),
        ),
    }
}

/// A frame from the server. Events are encoded through [`encode_event`] instead, once per
/// broadcast.
#[derive(Debug, Clone)]
pub enum ServerFrame {
    Welcome {
        session: ConnId,
        node: String,
        region: String,
        resume_token: String,
        resumed: bool,
    },
    Reply {
        r#ref: Ref,
        result: Result<Option<Payload>, ProtoError>,
    },
    Presence {
        room: RoomId,
        joined: Vec<(ConnId, String)>,
        left: Vec<ConnId>,
        snapshot: bool,
    },
    State {
        room: RoomId,
        state: String,
    },
    /// What changed in the room's state since the last `State` or `StatePatch`: JSON
    /// Patch operations (RFC 6902), a JSON array.
    StatePatch {
        room: RoomId,
        patch: String,
    },
    Error {
        error: ProtoError,
        room: Option<RoomId>,
    },
    Kicked {
        room: RoomId,
        reason: String,
    },
}

/// An event as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventView<'a> {
    pub room: &'a RoomId,
    pub event: &'a str,
    pub payload: &'a Payload,
    pub from: Option<&'a ConnId>,
    pub cursor: &'a str,
}

/// Encoded bytes: text for JSON connections, binary for MessagePack ones.
pub type Encoded = Vec<u8>;

/// The JSON form of a payload's arguments: `data` when there is exactly one, else `args`.
fn args_fields(p: &Payload, out: &mut serde_json::Map<String, Value>) {
    let mut args: Vec<Value> = match serde_json::from_str(&p.json) {
        Ok(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    if !p.binaries.is_empty() {
        args.iter_mut()
            .for_each(|a| inline_base64_binaries(a, &p.binaries));
    }
    if args.len() == 1 {
        out.insert("data".into(), args.pop().unwrap_or(Value::Null));
    } else {
        out.insert("args".into(), Value::Array(args));
    }
}

#[derive(Serialize)]
struct RawEvent<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<&'a RawValue>,
    from: Option<&'a str>,
    cursor: &'a str,
}

/// Encode an event. JSON without binaries is spliced from the payload's text, byte for byte.
pub fn encode_event(e: &EventView<'_>, format: Format) -> Encoded {
    if format == Format::Json && e.payload.binaries.is_empty() {
        let args = e.payload.raw_args().unwrap_or_default();
        let whole = RawValue::from_string(e.payload.json.clone()).ok();
        let (data, args) = if args.len() == 1 {
            (args.first().map(|a| &**a), None)
        } else {
            (None, whole.as_deref())
        };
        let raw = RawEvent {
            ty: "event",
            room: e.room.as_str(),
            event: e.event,
            data,
            args,
            from: e.from.map(ConnId::as_str),
            cursor: e.cursor,
        };
        return serde_json::to_vec(&raw).unwrap_or_default();
    }
    let mut o = serde_json::Map::new();
    o.insert("type".into(), "event".into());
    o.insert("room".into(), e.room.as_str().into());
    o.insert("event".into(), e.event.into());
    o.insert(
        "from".into(),
        e.from
            .map(|c| Value::from(c.as_str()))
            .unwrap_or(Value::Null),
    );
    o.insert("cursor".into(), e.cursor.into());
    finish(o, Some(e.payload), format)
}

/// Encode any other server frame.
pub fn encode(frame: &ServerFrame, format: Format) -> Encoded {
    let mut o = serde_json::Map::new();
    let mut payload = None;
    let err = |e: &ProtoError| serde_json::json!({"code": e.code.as_str(), "message": e.message});
    match frame {
        ServerFrame::Welcome {
            session,
            node,
            region,
            resume_token,
            resumed,
        } => {
            o.insert("type".into(), "welcome".into());
            o.insert("session".into(), session.as_str().into());
            o.insert("node".into(), node.as_str().into());
            o.insert("region".into(), region.as_str().into());
            o.insert("resume_token".into(), resume_token.as_str().into());
            o.insert("resumed".into(), (*resumed).into());
        }
        ServerFrame::Reply { r#ref, result } => {
            o.insert("type".into(), "reply".into());
            o.insert("ref".into(), r#ref.clone());
            o.insert("ok".into(), result.is_ok().into());
            match result {
                Ok(Some(p)) => payload = Some(p),
                Ok(None) => {
                    o.insert("args".into(), Value::Array(Vec::new()));
                }
                Err(e) => {
                    o.insert("error".into(), err(e));
                }
            }
        }
        ServerFrame::Presence {
            room,
            joined,
            left,
            snapshot,
        } => {
            o.insert("type".into(), "presence".into());
            o.insert("room".into(), room.as_str().into());
            let joined: Vec<Value> = joined
                .iter()
                .map(|(c, p)| serde_json::json!({"conn": c.as_str(), "presence": serde_json::from_str::<Value>(p).unwrap_or(Value::Null)}))
                .collect();
            o.insert("joined".into(), joined.into());
            o.insert(
                "left".into(),
                left.iter()
                    .map(|c| Value::from(c.as_str()))
                    .collect::<Vec<_>>()
                    .into(),
            );
            if *snapshot {
                o.insert("snapshot".into(), true.into());
            }
        }
        ServerFrame::State { room, state } => {
            o.insert("type".into(), "state".into());
            o.insert("room".into(), room.as_str().into());
            o.insert(
                "state".into(),
                serde_json::from_str(state).unwrap_or(Value::Null),
            );
        }
        ServerFrame::StatePatch { room, patch } => {
            o.insert("type".into(), "state_patch".into());
            o.insert("room".into(), room.as_str().into());
            o.insert(
                "patch".into(),
                serde_json::from_str(patch).unwrap_or(Value::Array(Vec::new())),
            );
        }
        ServerFrame::Error { error, room } => {
            o.insert("type".into(), "error".into());
            o.insert("code".into(), error.code.as_str().into());
            o.insert("message".into(), error.message.as_str().into());
            if let Some(room) = room {
                o.insert("room".into(), room.as_str().into());
            }
        }
        ServerFrame::Kicked { room, reason } => {
            o.insert("type".into(), "kicked".into());
            o.insert("room".into(), room.as_str().into());
            o.insert("reason".into(), reason.as_str().into());
        }
    }
    finish(o, payload, format)
}

fn finish(
    mut o: serde_json::Map<String, Value>,
    payload: Option<&Payload>,
    format: Format,
) -> Encoded {
    match format {
        Format::Json => {
            if let Some(p) = payload {
                args_fields(p, &mut o);
            }
            serde_json::to_vec(&Value::Object(o)).unwrap_or_default()
        }
        Format::MsgPack => {
            let mut m = json_to_msgpack(Value::Object(o), &[]);
            if let (Some(p), rmpv::Value::Map(entries)) = (payload, &mut m) {
                let mut args: Vec<Value> = match serde_json::from_str(&p.json) {
                    Ok(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                if args.len() == 1 {
                    let one = args.pop().unwrap_or(Value::Null);
                    entries.push(("data".into(), json_to_msgpack(one, &p.binaries)));
                } else {
                    entries.push((
                        "args".into(),
                        json_to_msgpack(Value::Array(args), &p.binaries),
                    ));
                }
            }
            let mut out = Vec::new();
            // Writing into a Vec cannot fail.
            let _ = rmpv::encode::write_value(&mut out, &m);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(n: &str) -> RoomId {
        RoomId::new(n).unwrap()
    }

    #[test]
    fn json_depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(r#"["[[[", "\"]]]", {}]"#), 2);
    }

    /// A value nested deeper than later parses allow is refused with a code, never
    /// taken and delivered empty; one just within is taken and parses again.
    #[test]
    fn a_frame_nested_too_deeply_is_refused() {
        let nested = |levels: usize| "[".repeat(levels) + &"]".repeat(levels);
        let frame = |data: String| {
            format!(r#"{{"type":"emit","room":"r","event":"e","data":{data},"ref":7}}"#)
        };
        let e = decode_text(&frame(nested(30_000)), 1 << 20).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::BadFrame);
        assert!(e.error.message.contains("nested"), "{}", e.error.message);
        let ok = decode_text(&frame(nested(MAX_FRAME_DEPTH - 1)), 1 << 20).unwrap();
        let ClientFrame::Emit { payload, .. } = ok else {
            panic!("{ok:?}")
        };
        let again: Result<Value, _> = serde_json::from_str(&payload.json);
        assert!(again.is_ok(), "the payload no longer parses");
    }

    #[test]
    fn decodes_every_client_frame() {
        let f = decode_text(
            r#"{"type":"join","room":"lobby","auth":{"user":"ann"},"ref":1}"#,
            1000,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Join {
                room: room("lobby"),
                auth: r#"{"user":"ann"}"#.into(),
                r#ref: Some(1.into())
            }
        );
        let f = decode_text(r#"{"type":"emit","room":"lobby","event":"echo","data":{"n":9007199254740991},"ref":"a"}"#, 1000).unwrap();
        let ClientFrame::Emit { payload, .. } = f else {
            panic!()
        };
        assert_eq!(payload.json, r#"[{"n":9007199254740991}]"#);
        let f = decode_text(
            r#"{"type":"emit","room":"r","event":"e","args":[1,{"$binary":"/wA="}]}"#,
            1000,
        )
        .unwrap();
        let ClientFrame::Emit { payload, .. } = f else {
            panic!()
        };
        assert_eq!(payload.binaries, vec![vec![255, 0]]);
        assert_eq!(payload.json, r#"[1,{"_placeholder":true,"num":0}]"#);
        let f = decode_text(
            r#"{"type":"resume","token":"t","cursors":{"r":"n1:2.4"}}"#,
            1000,
        )
        .unwrap();
        let ClientFrame::Resume { cursors, .. } = f else {
            panic!()
        };
        assert_eq!(cursors[&room("r")].to_string(), "n1:2.4");
        assert!(matches!(
            decode_text(r#"{"type":"leave","room":"r"}"#, 100),
            Ok(ClientFrame::Leave { .. })
        ));
        assert!(matches!(
            decode_text(r#"{"type":"ping","ref":3}"#, 100),
            Ok(ClientFrame::Ping { .. })
        ));
        assert!(matches!(
            decode_text(r#"{"type":"authenticate","token":"t.k.n","ref":4}"#, 100),
            Ok(ClientFrame::Authenticate { token, .. }) if token == "t.k.n"
        ));
        assert!(matches!(
            decode_text(r#"{"type":"authenticate"}"#, 100),
            Err(DecodeError {
                error: ProtoError {
                    code: ErrorCode::MissingField,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn bad_frames_get_codes_and_keep_their_ref() {
        let code = |t: &str| decode_text(t, 100).unwrap_err();
        assert_eq!(code("{nope").error.code, ErrorCode::BadFrame);
        assert_eq!(code("[]").error.code, ErrorCode::BadFrame);
        assert_eq!(
            code(r#"{"type":"fly","ref":5}"#).error.code,
            ErrorCode::UnknownType
        );
        assert_eq!(code(r#"{"type":"fly","ref":5}"#).r#ref, Some(5.into()));
        assert_eq!(
            code(r#"{"type":"join","ref":5}"#).error.code,
            ErrorCode::MissingField
        );
        assert_eq!(code(r#"{"room":"r"}"#).error.code, ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"type":"join","room":"a b"}"#).error.code,
            ErrorCode::InvalidName
        );
        assert_eq!(
            code(r#"{"type":"join","room":7,"ref":2}"#).r#ref,
            Some(2.into())
        );
        assert_eq!(
            code(r#"{"type":"emit","room":"r","event":"e","args":{}}"#)
                .error
                .code,
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"type":"emit","room":"r","event":"e","data":{"$binary":"%"}}"#)
                .error
                .code,
            ErrorCode::BadFrame
        );
        let big = format!(
            r#"{{"type":"emit","ref":9,"room":"r","event":"e","data":"{}"}}"#,
            "x".repeat(200)
        );
        let e = decode_text(&big, 100).unwrap_err();
        assert_eq!(
            (e.error.code, e.r#ref),
            (ErrorCode::TooLarge, Some(9.into()))
        );
        assert_eq!(
            decode_binary(&[0xc1], 100).unwrap_err().error.code,
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn msgpack_frames_carry_binary_both_ways() {
        use rmpv::Value as M;
        let frame = M::Map(vec![
            ("type".into(), "emit".into()),
            ("room".into(), "r".into()),
            ("event".into(), "e".into()),
            (
                "data".into(),
                M::Map(vec![("b".into(), M::Binary(vec![1, 2, 3]))]),
            ),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &frame).unwrap();
        let ClientFrame::Emit { payload, .. } = decode_binary(&bytes, 1000).unwrap() else {
            panic!()
        };
        assert_eq!(payload.binaries, vec![vec![1, 2, 3]]);
        let r = room("r");
        let out = encode_event(
            &EventView {
                room: &r,
                event: "e",
                payload: &payload,
                from: None,
                cursor: "n1:1",
            },
            Format::MsgPack,
        );
        let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
        let data = v
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("data"))
            .unwrap()
            .1
            .clone();
        assert_eq!(data, M::Map(vec![("b".into(), M::Binary(vec![1, 2, 3]))]));
    }

    #[test]
    fn events_splice_json_exactly() {
        let r = room("r");
        let p = Payload {
            json: r#"[{"big":12345678901234567890123,"s":"\u00e9"}]"#.into(),
            binaries: vec![],
        };
        let out = encode_event(
            &EventView {
                room: &r,
                event: "e",
                payload: &p,
                from: None,
                cursor: "n1:1",
            },
            Format::Json,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""data":{"big":12345678901234567890123,"s":"\u00e9"}"#),
            "{text}"
        );
        let two = Payload {
            json: "[1,2]".into(),
            binaries: vec![],
        };
        let out = encode_event(
            &EventView {
                room: &r,
                event: "e",
                payload: &two,
                from: None,
                cursor: "",
            },
            Format::Json,
        );
        assert!(String::from_utf8(out).unwrap().contains(r#""args":[1,2]"#));
        let bin = Payload {
            json: r#"[{"_placeholder":true,"num":0}]"#.into(),
            binaries: vec![vec![0, 255].into()],
        };
        let out = encode(
            &ServerFrame::Reply {
                r#ref: 1.into(),
                result: Ok(Some(bin)),
            },
            Format::Json,
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"], serde_json::json!({"$binary": "AP8="}));
    }
}
