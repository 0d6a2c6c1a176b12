//! Non-apply patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
//! and a strategic-merge-patch subset.
//!
//! Pure functions from (object, patch body) to a new object; the caller
//! commits. Strategic merge is JSON merge plus: `$patch` / `$retainKeys` /
//! `$setElementOrder` directives are understood or dropped, and lists of
//! objects are merged by their `name` (or `uid`, `type`) key.

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> ApiResult<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            _ => Err(ApiError::UnsupportedMediaType),
        }
    }
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))
}

/// Applies a non-apply patch to `obj`.
pub fn patch(obj: &Value, kind: PatchType, body: &[u8]) -> ApiResult<Value> {
    let mut out = obj.clone();
    match kind {
        PatchType::Merge => {
            let p = parse_json(body)?;
            json_patch::merge(&mut out, &p);
        }
        PatchType::Strategic => {
            let p = parse_json(body)?;
            strategic_merge(&mut out, &p);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding JSON patch: {e}")))?;
            for op in ops.0 {
                // The apiserver's JSON patch treats a missing path as null in
                // `test` (kube-runtime's finalizer helper relies on this).
                if let json_patch::PatchOperation::Test(t) = &op
                    && t.value.is_null()
                    && out.pointer(t.path.as_str()).is_none()
                {
                    continue;
                }
                json_patch::patch(&mut out, &[op]).map_err(|e| {
                    ApiError::PatchFailed(format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ))
                })?;
            }
        }
        PatchType::Apply => return Err(ApiError::Internal("apply is not a plain patch".into())),
    }
    Ok(out)
}

/// Merge keys tried, in order, for lists of objects.
const MERGE_KEYS: [&str; 4] = ["name", "uid", "type", "containerPort"];

fn merge_key(list: &[Value]) -> Option<&'static str> {
    MERGE_KEYS
        .into_iter()
        .find(|k| !list.is_empty() && list.iter().all(|i| i.get(k).is_some_and(|v| !v.is_null())))
}

/// Strategic merge patch, subset (see the module docs).
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Value::Array(del)) = (t.get_mut(field), v) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with("$setElementOrder/") || k.starts_with("$retainKeys") {
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(inner)
                if inner.get("$patch").and_then(Value::as_str) == Some("delete") =>
            {
                t.remove(k);
            }
            Value::Object(_) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(entry, v);
            }
            Value::Array(items) => {
                let merged = match (t.get(k), merge_key(items)) {
                    (Some(Value::Array(cur)), Some(key)) if merge_key(cur) == Some(key) => {
                        Some(merge_list(cur, items, key))
                    }
                    _ => None,
                };
                let clean: Vec<Value> = merged.unwrap_or_else(|| {
                    items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .cloned()
                        .collect()
                });
                t.insert(k.clone(), Value::Array(clean));
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
}

fn merge_list(cur: &[Value], items: &[Value], key: &str) -> Vec<Value> {
    let mut out: Vec<Value> = cur.to_vec();
    for item in items {
        let id = item.get(key);
        let pos = out.iter().position(|x| x.get(key) == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut out[i], item),
            (None, false) => {
                let mut clean = item.clone();
                if let Some(m) = clean.as_object_mut() {
                    m.remove("$patch");
                }
                out.push(clean)
            }
            (None, true) => {}
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls() {
        let o = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let out = patch(&o, PatchType::Merge, br#"{"b": {"c": null}, "e": 5}"#).expect("patch");
        assert_eq!(out, json!({"a": 1, "b": {"d": 3}, "e": 5}));
    }

    #[test]
    fn json_patch_null_test_on_missing_path() {
        let o = json!({"metadata": {"name": "x"}});
        let body = br#"[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata/finalizers","value":["f"]}]"#;
        let out = patch(&o, PatchType::Json, body).expect("patch");
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
        let bad = br#"[{"op":"test","path":"/metadata/name","value":"y"}]"#;
        assert_eq!(
            patch(&o, PatchType::Json, bad).map_err(|e| e.code()),
            Err(422)
        );
    }

    #[test]
    fn strategic_merges_named_lists() {
        let o = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "3"}, {"name": "a", "$patch": "delete"}], "$setElementOrder/containers": []}});
        let mut out = o.clone();
        strategic_merge(&mut out, &p);
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "b", "image": "3"}]}})
        );
        let mut s = json!({"data": {"a": "x"}});
        strategic_merge(&mut s, &json!({"data": {"a": null, "b": "y"}}));
        assert_eq!(s, json!({"data": {"b": "y"}}));
    }
}
