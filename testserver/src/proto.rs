//! Decoding of the Kubernetes protobuf request bodies kubectl sends for
//! built-in types (`kubectl create secret|configmap|namespace|serviceaccount`
//! use `application/vnd.kubernetes.protobuf` and have no JSON fallback).
//!
//! Owns a minimal protobuf wire decoder and the field numbers of Secret,
//! ConfigMap, Namespace, ServiceAccount and ObjectMeta. Responses are always
//! JSON; anything else is rejected with 415.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\x00";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad() -> ApiError {
    ApiError::BadRequest("malformed protobuf body".into())
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> ApiResult<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(bad)?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(bad())
    }

    fn next(&mut self) -> ApiResult<Option<(u64, Field<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| bad())?;
                let end = self.pos.checked_add(len).ok_or_else(bad)?;
                let bytes = self.buf.get(self.pos..end).ok_or_else(bad)?;
                self.pos = end;
                Field::Bytes(bytes)
            }
            1 => {
                self.pos += 8;
                Field::Fixed
            }
            5 => {
                self.pos += 4;
                Field::Fixed
            }
            _ => return Err(bad()),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn string(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

/// Go's protobuf writes empty strings; JSON omits them.
fn insert_nonempty(obj: &mut Map<String, Value>, field: &str, b: &[u8]) {
    if !b.is_empty() {
        obj.insert(field.into(), string(b));
    }
}

fn b64(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

/// A map entry (key = 1, value = 2).
fn map_entry(b: &[u8], value: fn(&[u8]) -> Value) -> ApiResult<(String, Value)> {
    let mut r = Reader::new(b);
    let (mut k, mut v) = (String::new(), value(&[]));
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = String::from_utf8_lossy(x).into_owned(),
            (2, Field::Bytes(x)) => v = value(x),
            _ => {}
        }
    }
    Ok((k, v))
}

fn insert_entry(
    obj: &mut Map<String, Value>,
    field: &str,
    b: &[u8],
    value: fn(&[u8]) -> Value,
) -> ApiResult<()> {
    let (k, v) = map_entry(b, value)?;
    if let Some(m) = obj
        .entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
    {
        m.insert(k, v);
    }
    Ok(())
}

fn push(obj: &mut Map<String, Value>, field: &str, v: Value) {
    if let Some(a) = obj.entry(field).or_insert_with(|| json!([])).as_array_mut() {
        a.push(v);
    }
}

fn owner_reference(b: &[u8]) -> ApiResult<Value> {
    let mut out = Map::new();
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => out.insert("kind".into(), string(x)),
            (3, Field::Bytes(x)) => out.insert("name".into(), string(x)),
            (4, Field::Bytes(x)) => out.insert("uid".into(), string(x)),
            (5, Field::Bytes(x)) => out.insert("apiVersion".into(), string(x)),
            (6, Field::Varint(v)) => out.insert("controller".into(), (v != 0).into()),
            (7, Field::Varint(v)) => out.insert("blockOwnerDeletion".into(), (v != 0).into()),
            _ => None,
        };
    }
    Ok(Value::Object(out))
}

fn object_meta(b: &[u8]) -> ApiResult<Value> {
    let mut out = Map::new();
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                insert_nonempty(&mut out, "name", x);
            }
            (2, Field::Bytes(x)) => {
                insert_nonempty(&mut out, "generateName", x);
            }
            (3, Field::Bytes(x)) => {
                insert_nonempty(&mut out, "namespace", x);
            }
            (6, Field::Bytes(x)) => {
                insert_nonempty(&mut out, "resourceVersion", x);
            }
            (11, Field::Bytes(x)) => insert_entry(&mut out, "labels", x, string)?,
            (12, Field::Bytes(x)) => insert_entry(&mut out, "annotations", x, string)?,
            (13, Field::Bytes(x)) => push(&mut out, "ownerReferences", owner_reference(x)?),
            (14, Field::Bytes(x)) => push(&mut out, "finalizers", string(x)),
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn decode_kind(kind: &str, b: &[u8]) -> ApiResult<Map<String, Value>> {
    let mut out = Map::new();
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(x)) => {
                out.insert("metadata".into(), object_meta(x)?);
            }
            ("Secret", 2, Field::Bytes(x)) => insert_entry(&mut out, "data", x, b64)?,
            ("Secret", 3, Field::Bytes(x)) => {
                insert_nonempty(&mut out, "type", x);
            }
            ("Secret", 4, Field::Bytes(x)) => insert_entry(&mut out, "stringData", x, string)?,
            ("Secret", 5, Field::Varint(v)) | ("ConfigMap", 4, Field::Varint(v)) => {
                out.insert("immutable".into(), (v != 0).into());
            }
            ("ConfigMap", 2, Field::Bytes(x)) => insert_entry(&mut out, "data", x, string)?,
            ("ConfigMap", 3, Field::Bytes(x)) => insert_entry(&mut out, "binaryData", x, b64)?,
            ("ServiceAccount", 4, Field::Varint(v)) => {
                out.insert("automountServiceAccountToken".into(), (v != 0).into());
            }
            ("Namespace", _, _)
            | ("ServiceAccount", _, _)
            | ("Secret", _, _)
            | ("ConfigMap", _, _) => {}
            _ => {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
    }
    Ok(out)
}

/// Decodes a `k8s\0`-prefixed protobuf body into its JSON form.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(bad)?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((n, f)) = t.next()? {
                    match (n, f) {
                        (1, Field::Bytes(x)) => {
                            api_version = String::from_utf8_lossy(x).into_owned()
                        }
                        (2, Field::Bytes(x)) => kind = String::from_utf8_lossy(x).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    if api_version != "v1" {
        return Err(ApiError::UnsupportedMediaType);
    }
    let mut out = decode_kind(&kind, raw)?;
    out.insert("apiVersion".into(), api_version.into());
    out.insert("kind".into(), kind.into());
    Ok(Value::Object(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_secret() {
        let meta = [field(1, b"s"), field(3, b"default")].concat();
        let entry = [field(1, b"a"), field(2, b"b")].concat();
        let secret = [field(1, &meta), field(2, &entry), field(3, b"Opaque")].concat();
        let tm = [field(1, b"v1"), field(2, b"Secret")].concat();
        let unknown = [field(1, &tm), field(2, &secret)].concat();
        let body = [MAGIC, &unknown[..]].concat();
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"}, "data": {"a": "Yg=="}, "type": "Opaque"})
        );
    }
}
