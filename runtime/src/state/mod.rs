//! Room state: one Automerge document per room, addressed by `/`-separated paths.
//!
//! Handlers read and write JSON at a path; lists take numeric segments. Counters are
//! Automerge counters, so increments made concurrently on different replicas sum
//! instead of overwriting each other. The document is what replicas sync.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue, Value};
use serde_json::Value as Json;

/// Deepest path a handler may address.
const MAX_SEGMENTS: usize = 32;
/// Deepest JSON a handler may store.
const MAX_DEPTH: usize = 64;

/// A room's document.
#[derive(Debug, Default)]
pub struct RoomDoc {
    doc: AutoCommit,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn segments(path: &str) -> Result<Vec<&str>, String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() > MAX_SEGMENTS {
        return Err(format!("path has more than {MAX_SEGMENTS} segments"));
    }
    Ok(segs)
}

impl RoomDoc {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn load(bytes: &[u8]) -> Result<Self, String> {
        AutoCommit::load(bytes).map(|doc| Self { doc }).map_err(err)
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Identifies the document's version: compare before and after to see a change.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The whole document as JSON.
    pub fn to_json(&self) -> Json {
        value_json(&self.doc, Value::Object(ObjType::Map), &ROOT)
    }

    /// The value at `path` as JSON; the whole document for an empty path.
    pub fn get(&self, path: &str) -> Result<Option<Json>, String> {
        let segs = segments(path)?;
        let Some((last, parents)) = segs.split_last() else {
            return Ok(Some(self.to_json()));
        };
        let Some(obj) = self.walk(parents)? else {
            return Ok(None);
        };
        let prop = prop_for(&self.doc, &obj, last)?;
        Ok(self
            .doc
            .get(&obj, prop)
            .map_err(err)?
            .map(|(v, id)| value_json(&self.doc, v, &id)))
    }

    /// The object at the end of `segs`, if every step exists and is an object.
    fn walk(&self, segs: &[&str]) -> Result<Option<ObjId>, String> {
        let mut obj = ROOT;
        for seg in segs {
            let prop = prop_for(&self.doc, &obj, seg)?;
            match self.doc.get(&obj, prop).map_err(err)? {
                Some((Value::Object(_), id)) => obj = id,
                _ => return Ok(None),
            }
        }
        Ok(Some(obj))
    }

    /// Set the value at `path`, creating missing maps on the way.
    pub fn put(&mut self, path: &str, value: &Json) -> Result<(), String> {
        check_depth(value, 0)?;
        let (obj, prop) = self.resolve(path)?;
        if let Prop::Seq(i) = prop
            && i >= self.doc.length(&obj)
        {
            return Err(format!("index {i} is past the end of the list"));
        }
        put_json(&mut self.doc, &obj, prop, value, false).map_err(err)
    }

    /// Add `by` to the counter at `path`, creating it at 0 if absent. Returns the new value.
    pub fn increment(&mut self, path: &str, by: i64) -> Result<i64, String> {
        let (obj, prop) = self.resolve(path)?;
        let existing = match self.doc.get(&obj, prop.clone()).map_err(err)? {
            Some((Value::Scalar(s), _)) if s.is_counter() => true,
            Some(_) => return Err(format!("`{path}` holds a value that is not a counter")),
            None => false,
        };
        if !existing {
            self.doc
                .put(&obj, prop.clone(), ScalarValue::counter(0))
                .map_err(err)?;
        }
        self.doc.increment(&obj, prop.clone(), by).map_err(err)?;
        Ok(self
            .doc
            .get(&obj, prop)
            .map_err(err)?
            .and_then(|(v, _)| v.as_i64())
            .unwrap_or(0))
    }

    /// Append to the list at `path` (created if absent). Returns the new length.
    pub fn push(&mut self, path: &str, value: &Json) -> Result<u32, String> {
        check_depth(value, 0)?;
        let (obj, prop) = self.resolve(path)?;
        let list = match self.doc.get(&obj, prop.clone()).map_err(err)? {
            Some((Value::Object(ObjType::List), id)) => id,
            Some(_) => return Err(format!("`{path}` is not a list")),
            None => self
                .doc
                .put_object(&obj, prop, ObjType::List)
                .map_err(err)?,
        };
        let n = self.doc.length(&list);
        put_json(&mut self.doc, &list, Prop::Seq(n), value, true).map_err(err)?;
        u32::try_from(n + 1).map_err(err)
    }

    /// Remove the value at `path` (no error if it is already absent).
    pub fn delete(&mut self, path: &str) -> Result<(), String> {
        let segs = segments(path)?;
        let Some((last, parents)) = segs.split_last() else {
            return Err("cannot delete the whole document".into());
        };
        let Some(obj) = self.walk(parents)? else {
            return Ok(());
        };
        let prop = prop_for(&self.doc, &obj, last)?;
        if let Prop::Seq(i) = prop
            && i >= self.doc.length(&obj)
        {
            return Ok(());
        }
        self.doc.delete(&obj, prop).map_err(err)
    }

    /// The parent object and last property of `path`, creating missing maps.
    fn resolve(&mut self, path: &str) -> Result<(ObjId, Prop), String> {
        let segs = segments(path)?;
        let Some((last, parents)) = segs.split_last() else {
            return Err("path must name a value inside the document".into());
        };
        let mut obj = ROOT;
        for seg in parents {
            let prop = prop_for(&self.doc, &obj, seg)?;
            let next = match self.doc.get(&obj, prop.clone()).map_err(err)? {
                Some((Value::Object(_), id)) => Some(id),
                Some((Value::Scalar(_), _)) => return Err(format!("`{seg}` is not an object")),
                None => None,
            };
            obj = match next {
                Some(id) => id,
                None if matches!(prop, Prop::Map(_)) => {
                    self.doc.put_object(&obj, prop, ObjType::Map).map_err(err)?
                }
                None => return Err(format!("index `{seg}` is past the end of the list")),
            };
        }
        let prop = prop_for(&self.doc, &obj, last)?;
        Ok((obj, prop))
    }
}

fn check_depth(v: &Json, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("value nested deeper than {MAX_DEPTH}"));
    }
    match v {
        Json::Array(a) => a.iter().try_for_each(|x| check_depth(x, depth + 1)),
        Json::Object(o) => o.values().try_for_each(|x| check_depth(x, depth + 1)),
        _ => Ok(()),
    }
}

fn prop_for(doc: &AutoCommit, obj: &ObjId, seg: &str) -> Result<Prop, String> {
    match doc.object_type(obj).map_err(err)? {
        ObjType::List | ObjType::Text => seg
            .parse::<usize>()
            .map(Prop::Seq)
            .map_err(|_| format!("`{seg}` is not a list index")),
        ObjType::Map | ObjType::Table => Ok(Prop::Map(seg.to_owned())),
    }
}

fn scalar_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::from(b.clone()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Json::Null,
    }
}

fn value_json(doc: &AutoCommit, v: Value<'_>, id: &ObjId) -> Json {
    match v {
        Value::Scalar(s) => scalar_json(&s),
        Value::Object(ObjType::Text) => Json::String(doc.text(id).unwrap_or_default()),
        Value::Object(ObjType::List) => Json::Array(
            (0..doc.length(id))
                .filter_map(|i| doc.get(id, i).ok().flatten())
                .map(|(v, cid)| value_json(doc, v, &cid))
                .collect(),
        ),
        Value::Object(ObjType::Map | ObjType::Table) => Json::Object(
            doc.keys(id)
                .filter_map(|k| {
                    doc.get(id, &k)
                        .ok()
                        .flatten()
                        .map(|(v, cid)| (k, value_json(doc, v, &cid)))
                })
                .collect(),
        ),
    }
}

fn json_scalar(j: &Json) -> ScalarValue {
    match j {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => n
            .as_i64()
            .map(ScalarValue::Int)
            .or_else(|| n.as_u64().map(ScalarValue::Uint))
            .unwrap_or_else(|| ScalarValue::F64(n.as_f64().unwrap_or(0.0))),
        Json::String(s) => ScalarValue::from(s.as_str()),
        _ => ScalarValue::Null,
    }
}

/// Write JSON at `prop` of `obj`: objects and arrays become Automerge maps and lists.
/// `insert` inserts into a list instead of overwriting.
fn put_json(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prop: Prop,
    j: &Json,
    insert: bool,
) -> Result<(), automerge::AutomergeError> {
    let make = |doc: &mut AutoCommit, t: ObjType| match (&prop, insert) {
        (Prop::Seq(i), true) => doc.insert_object(obj, *i, t),
        _ => doc.put_object(obj, prop.clone(), t),
    };
    match j {
        Json::Object(m) => {
            let id = make(doc, ObjType::Map)?;
            for (k, v) in m {
                put_json(doc, &id, Prop::Map(k.clone()), v, false)?;
            }
        }
        Json::Array(a) => {
            let id = make(doc, ObjType::List)?;
            for (i, v) in a.iter().enumerate() {
                put_json(doc, &id, Prop::Seq(i), v, true)?;
            }
        }
        s => match (&prop, insert) {
            (Prop::Seq(i), true) => doc.insert(obj, *i, json_scalar(s))?,
            _ => doc.put(obj, prop.clone(), json_scalar(s))?,
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_read_and_write_json() {
        let mut d = RoomDoc::new();
        d.put("players/alice", &json!({"score": 3, "tags": ["a", "b"]}))
            .unwrap();
        assert_eq!(d.get("players/alice/score").unwrap(), Some(json!(3)));
        assert_eq!(d.get("/players/alice/tags/1").unwrap(), Some(json!("b")));
        assert_eq!(d.get("nobody/here").unwrap(), None);
        assert_eq!(d.push("messages", &json!({"text": "hi"})).unwrap(), 1);
        assert_eq!(d.push("messages", &json!("two")).unwrap(), 2);
        d.delete("messages/0").unwrap();
        assert_eq!(d.get("messages").unwrap(), Some(json!(["two"])));
        assert!(d.put("messages/5", &json!(1)).is_err());
        assert!(d.push("players/alice/score", &json!(1)).is_err());
        assert_eq!(
            d.to_json(),
            json!({"players": {"alice": {"score": 3, "tags": ["a", "b"]}}, "messages": ["two"]})
        );
    }

    #[test]
    fn counters_sum_across_replicas() {
        let mut a = RoomDoc::new();
        a.increment("count", 0).unwrap();
        let mut b = RoomDoc { doc: a.doc.fork() };
        a.increment("count", 2).unwrap();
        b.increment("count", 5).unwrap();
        a.doc.merge(&mut b.doc).unwrap();
        assert_eq!(a.get("count").unwrap(), Some(json!(7)));
        assert!(a.increment("", 1).is_err());
        a.put("s", &json!("x")).unwrap();
        assert!(a.increment("s", 1).is_err());
    }

    #[test]
    fn survives_save_and_load() {
        let mut d = RoomDoc::new();
        d.put("k", &json!([1, {"x": null}])).unwrap();
        let h = d.heads();
        let bytes = d.save();
        let mut e = RoomDoc::load(&bytes).unwrap();
        assert_eq!(e.to_json(), json!({"k": [1, {"x": null}]}));
        assert_eq!(e.heads(), h);
        assert!(RoomDoc::load(b"garbage").is_err());
    }
}
