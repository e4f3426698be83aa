//! Event arguments as they travel through the node.
//!
//! A [`Payload`] is the argument list of one event: a JSON array whose binary values are
//! Socket.IO placeholders (`{"_placeholder":true,"num":N}`) naming entries of `binaries`.
//! Gateways convert their wire form to this once on the way in and once per broadcast on
//! the way out; handlers and rooms never re-encode it.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

/// The arguments of one event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload {
    /// A JSON array, with binary values replaced by placeholders.
    pub json: String,
    /// Shared, not copied: an event's attachments go to every recipient as they are.
    pub binaries: Vec<Bytes>,
}

/// The key of the object that carries binary in the native protocol's JSON form.
pub const BINARY_KEY: &str = "$binary";

impl Payload {
    /// No arguments.
    pub fn empty() -> Self {
        Self {
            json: "[]".into(),
            binaries: Vec::new(),
        }
    }

    /// The argument list from already-parsed values with binaries as placeholders.
    pub fn from_values(args: &[Value], binaries: Vec<Bytes>) -> Self {
        Self {
            json: Value::Array(args.to_vec()).to_string(),
            binaries,
        }
    }

    /// Its bytes: the JSON text and every attachment (what size limits count).
    pub fn size(&self) -> usize {
        self.json.len() + self.binaries.iter().map(Bytes::len).sum::<usize>()
    }

    /// The arguments as raw JSON texts (placeholders left as they are).
    pub fn raw_args(&self) -> Result<Vec<Box<RawValue>>, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    /// Check that `json` is an array and every placeholder names an existing binary.
    /// The JSON itself was parsed by the codec that built the payload.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.json.trim();
        if !(t.starts_with('[') && t.ends_with(']')) {
            return Err("payload must be a JSON array of arguments".into());
        }
        // The common case, text only: a placeholder would need the key `_placeholder`
        // (spelled out, or with `\u` escapes), so without either there is nothing to
        // check and nothing is parsed again.
        if self.binaries.is_empty()
            && !self.json.contains("_placeholder")
            && !self.json.contains("\\u")
        {
            return Ok(());
        }
        let v: Value =
            serde_json::from_str(&self.json).map_err(|e| format!("payload is not JSON: {e}"))?;
        if !v.is_array() {
            return Err("payload must be a JSON array of arguments".into());
        }
        let mut ok = true;
        walk_placeholders(&v, &mut |n| ok &= n < self.binaries.len());
        if ok {
            Ok(())
        } else {
            Err("a binary placeholder names no attachment".into())
        }
    }
}

/// The placeholder object for binary attachment `num`.
pub fn placeholder(num: usize) -> Value {
    serde_json::json!({"_placeholder": true, "num": num})
}

/// `Some(n)` if `v` is a placeholder object.
pub fn as_placeholder(v: &Value) -> Option<usize> {
    let o = v.as_object()?;
    if o.len() == 2 && o.get("_placeholder")? == &Value::Bool(true) {
        return usize::try_from(o.get("num")?.as_u64()?).ok();
    }
    None
}

fn walk_placeholders(v: &Value, f: &mut impl FnMut(usize)) {
    if let Some(n) = as_placeholder(v) {
        f(n);
        return;
    }
    match v {
        Value::Array(a) => a.iter().for_each(|x| walk_placeholders(x, f)),
        Value::Object(o) => o.values().for_each(|x| walk_placeholders(x, f)),
        _ => {}
    }
}

/// Replace `{"$binary": "<base64>"}` objects by placeholders, moving the bytes to `binaries`.
pub fn extract_base64_binaries(v: &mut Value, binaries: &mut Vec<Bytes>) -> Result<(), String> {
    match v {
        Value::Object(o) if o.len() == 1 && o.contains_key(BINARY_KEY) => {
            let Some(Value::String(s)) = o.get(BINARY_KEY) else {
                return Err(format!("{BINARY_KEY} must hold a base64 string"));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("{BINARY_KEY} is not valid base64: {e}"))?;
            binaries.push(bytes.into());
            *v = placeholder(binaries.len() - 1);
        }
        Value::Object(o) => o
            .values_mut()
            .try_for_each(|x| extract_base64_binaries(x, binaries))?,
        Value::Array(a) => a
            .iter_mut()
            .try_for_each(|x| extract_base64_binaries(x, binaries))?,
        _ => {}
    }
    Ok(())
}

/// Replace placeholders by `{"$binary": "<base64>"}` objects.
pub fn inline_base64_binaries(v: &mut Value, binaries: &[Bytes]) {
    if let Some(n) = as_placeholder(v) {
        if let Some(b) = binaries.get(n) {
            *v = serde_json::json!({ BINARY_KEY: base64::engine::general_purpose::STANDARD.encode(b) });
        }
        return;
    }
    match v {
        Value::Object(o) => o
            .values_mut()
            .for_each(|x| inline_base64_binaries(x, binaries)),
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| inline_base64_binaries(x, binaries)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_binaries_round_trip_through_placeholders() {
        let mut v = serde_json::json!([{"a": {"$binary": "AAEC"}, "b": [{"$binary": ""}]}, 1]);
        let mut bins = Vec::new();
        extract_base64_binaries(&mut v, &mut bins).unwrap();
        assert_eq!(bins, vec![vec![0, 1, 2], vec![]]);
        assert_eq!(v[0]["a"], placeholder(0));
        let p = Payload::from_values(v.as_array().unwrap(), bins.clone());
        p.validate().unwrap();
        inline_base64_binaries(&mut v, &bins);
        assert_eq!(
            v,
            serde_json::json!([{"a": {"$binary": "AAEC"}, "b": [{"$binary": ""}]}, 1])
        );
    }

    #[test]
    fn refuses_bad_payloads() {
        assert!(
            Payload {
                json: "{}".into(),
                binaries: vec![]
            }
            .validate()
            .is_err()
        );
        assert!(
            Payload {
                json: "[{\"_placeholder\":true,\"num\":0}]".into(),
                binaries: vec![]
            }
            .validate()
            .is_err()
        );
        let mut v = serde_json::json!({"$binary": 5});
        assert!(extract_base64_binaries(&mut v, &mut Vec::new()).is_err());
        let mut v = serde_json::json!({"$binary": "!!"});
        assert!(extract_base64_binaries(&mut v, &mut Vec::new()).is_err());
    }
}
