//! Event arguments: JSON values and binary, binary possibly nested anywhere.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::Payload;

/// One argument value: JSON, plus binary.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Binary(Vec<u8>),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

impl Value {
    /// The JSON of this value, or `None` if it holds binary.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        Some(match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Number(n) => serde_json::Value::Number(n.clone()),
            Value::String(s) => s.clone().into(),
            Value::Binary(_) => return None,
            Value::Array(a) => {
                serde_json::Value::Array(a.iter().map(Value::to_json).collect::<Option<_>>()?)
            }
            Value::Object(o) => serde_json::Value::Object(
                o.iter()
                    .map(|(k, v)| Some((k.clone(), v.to_json()?)))
                    .collect::<Option<_>>()?,
            ),
        })
    }

    /// The bytes, if this is binary.
    pub fn as_binary(&self) -> Option<&[u8]> {
        match self {
            Value::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// A field of an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(o) => o.get(key),
            _ => None,
        }
    }

    fn from_wire(v: serde_json::Value, binaries: &[Vec<u8>]) -> Value {
        if let Some(n) = placeholder(&v)
            && let Some(b) = binaries.get(n)
        {
            return Value::Binary(b.clone());
        }
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Value::Number(n),
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(a) => Value::Array(
                a.into_iter()
                    .map(|x| Value::from_wire(x, binaries))
                    .collect(),
            ),
            serde_json::Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| (k, Value::from_wire(x, binaries)))
                    .collect(),
            ),
        }
    }

    fn to_wire(&self, binaries: &mut Vec<Vec<u8>>) -> serde_json::Value {
        match self {
            Value::Binary(b) => {
                binaries.push(b.clone());
                serde_json::json!({"_placeholder": true, "num": binaries.len() - 1})
            }
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Number(n) => serde_json::Value::Number(n.clone()),
            Value::String(s) => s.clone().into(),
            Value::Array(a) => {
                serde_json::Value::Array(a.iter().map(|x| x.to_wire(binaries)).collect())
            }
            Value::Object(o) => serde_json::Value::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), x.to_wire(binaries)))
                    .collect(),
            ),
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::from_wire(v, &[])
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Binary(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.into())
    }
}

fn placeholder(v: &serde_json::Value) -> Option<usize> {
    let o = v.as_object()?;
    if o.len() == 2 && o.get("_placeholder")? == &serde_json::Value::Bool(true) {
        return usize::try_from(o.get("num")?.as_u64()?).ok();
    }
    None
}

/// The arguments of an event (a Socket.IO event may have several; a native event has one).
///
/// Passing `Args` on unchanged (for example as a reply) costs no parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    json: String,
    binaries: Vec<Vec<u8>>,
}

impl Default for Args {
    fn default() -> Self {
        Self::new()
    }
}

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Self {
            json: "[]".into(),
            binaries: Vec::new(),
        }
    }

    /// One argument, from anything serializable.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        Self {
            json: serde_json::Value::Array(vec![v]).to_string(),
            binaries: Vec::new(),
        }
    }

    /// Arguments from values (which may hold binary).
    pub fn from_values(values: &[Value]) -> Self {
        let mut binaries = Vec::new();
        let wire: Vec<serde_json::Value> =
            values.iter().map(|v| v.to_wire(&mut binaries)).collect();
        Self {
            json: serde_json::Value::Array(wire).to_string(),
            binaries,
        }
    }

    /// All arguments as values, binary included.
    pub fn values(&self) -> Vec<Value> {
        match serde_json::from_str::<serde_json::Value>(&self.json) {
            Ok(serde_json::Value::Array(a)) => a
                .into_iter()
                .map(|v| Value::from_wire(v, &self.binaries))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Argument `i` as a value.
    pub fn get(&self, i: usize) -> Option<Value> {
        self.values().into_iter().nth(i)
    }

    /// Argument `i` deserialized from JSON. Fails if it is missing, holds binary, or
    /// has another shape.
    pub fn parse<T: DeserializeOwned>(&self, i: usize) -> Result<T, String> {
        let v = self
            .get(i)
            .ok_or_else(|| format!("argument {i} is missing"))?;
        let j = v
            .to_json()
            .ok_or_else(|| format!("argument {i} holds binary"))?;
        serde_json::from_value(j).map_err(|e| format!("argument {i}: {e}"))
    }

    /// How many arguments there are.
    pub fn len(&self) -> usize {
        match serde_json::from_str::<Vec<serde::de::IgnoredAny>>(&self.json) {
            Ok(v) => v.len(),
            Err(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The wire form: a JSON array with binary placeholders, and the binaries.
    pub fn raw(&self) -> (&str, &[Vec<u8>]) {
        (&self.json, &self.binaries)
    }

    pub(crate) fn from_payload(p: Payload) -> Self {
        Self {
            json: p.json,
            binaries: p.binaries,
        }
    }

    pub(crate) fn into_payload(self) -> Payload {
        Payload {
            json: self.json,
            binaries: self.binaries,
        }
    }

    pub(crate) fn to_payload(&self) -> Payload {
        Payload {
            json: self.json.clone(),
            binaries: self.binaries.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_nests_and_round_trips() {
        let mut obj = BTreeMap::new();
        obj.insert("img".to_string(), Value::Binary(vec![0, 255]));
        obj.insert(
            "n".to_string(),
            Value::from(serde_json::json!(9007199254740991u64)),
        );
        let args = Args::from_values(&[Value::Object(obj.clone()), Value::from("x")]);
        assert_eq!(args.len(), 2);
        assert_eq!(args.get(0), Some(Value::Object(obj)));
        assert_eq!(
            args.get(0).unwrap().get("img").unwrap().as_binary(),
            Some(&[0u8, 255][..])
        );
        assert_eq!(args.parse::<String>(1).unwrap(), "x");
        assert!(args.parse::<serde_json::Value>(0).is_err());
        assert!(args.parse::<u8>(5).is_err());
        assert_eq!(
            Args::json(&serde_json::json!({"a": 1}))
                .parse::<serde_json::Value>(0)
                .unwrap()["a"],
            1
        );
        assert!(Args::new().is_empty());
    }
}
