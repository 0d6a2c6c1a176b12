//! Server-side apply (`application/apply-patch+yaml`).
//!
//! Owns merging an applied configuration into the live object with
//! per-manager ownership: conflicts with other managers (409 unless forced),
//! removal of fields a manager stops applying, and the manager's `Apply`
//! managedFields entry. It never commits; `ops` does.

use serde_json::Value;

use crate::error::{ApiError, ApiResult, ApplyConflict};
use crate::fields::{
    Entry, FieldSet, Scope, forget_missing, read_entries, remove_at, strip_for_fields, value_at,
    write_entries,
};

/// Parses an apply body: JSON, or YAML (kubectl sends JSON, users may send YAML).
pub fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("apply body is not UTF-8".into()))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
}

fn drop_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
        for x in m.values_mut() {
            drop_nulls(x);
        }
    }
}

/// Recursive merge: maps merge, anything else replaces.
pub fn deep_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|k| format!(".{}", k.strip_prefix("f:").unwrap_or(k)))
        .collect()
}

/// Applies `applied` as `manager` onto `live` (or an empty object when
/// creating). Returns the merged object with updated managedFields.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    api_version: &str,
    now: &str,
) -> ApiResult<Value> {
    let mut merged = live
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    let mut content = strip_for_fields(applied, scope);
    drop_nulls(&mut content);
    let applied_set = FieldSet::from_object(&content);
    let sub = scope.subresource();
    let mut entries: Vec<Entry> = live.map(read_entries).unwrap_or_default();
    let mine = entries
        .iter()
        .position(|e| e.same_owner(manager, "Apply", sub));

    // Conflicts: another manager owns a field this apply would change.
    let mut conflicts: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        for p in applied_set.leaves() {
            if e.fields.owns_at_or_below(&p) && value_at(&merged, &p) != value_at(&content, &p) {
                conflicts.push((i, p));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            let mut list: Vec<ApplyConflict> = conflicts
                .iter()
                .map(|(i, p)| ApplyConflict {
                    manager: entries[*i].manager.clone(),
                    field: dotted(p),
                })
                .collect();
            list.dedup();
            return Err(ApiError::ApplyConflicts { conflicts: list });
        }
        for (i, p) in &conflicts {
            entries[*i].fields.remove_subtree(p);
        }
    }

    deep_merge(&mut merged, &content);

    // Fields this manager applied before but not now are removed unless
    // another manager still owns them.
    if let Some(i) = mine {
        let previous = entries[i].fields.clone();
        for p in previous.leaves() {
            if value_at(&content, &p).is_some() {
                continue;
            }
            let shared = entries
                .iter()
                .enumerate()
                .any(|(j, e)| j != i && e.fields.owns_at_or_below(&p));
            if !shared {
                let others: Vec<&Entry> = entries
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, e)| e)
                    .collect();
                let keep = |parent: &[String]| {
                    applied_set.contains(parent) || others.iter().any(|e| e.fields.contains(parent))
                };
                remove_at(&mut merged, &p, &keep);
            }
        }
    }

    let entry = Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now.into(),
        subresource: sub.map(str::to_string),
        fields: applied_set,
    };
    match mine {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    let stripped = strip_for_fields(&merged, scope);
    forget_missing(&mut entries, &stripped, scope);
    entries.retain(|e| !e.fields.is_empty());
    write_entries(&mut merged, &entries);
    Ok(merged)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "d"}, "data": data})
    }

    #[test]
    fn removes_fields_no_longer_applied() {
        let v1 = apply(
            None,
            &secret(json!({"a": "1", "b": "2"})),
            "ctl",
            false,
            Scope::Whole,
            "v1",
            "t",
        )
        .expect("first apply");
        let v2 = apply(
            Some(&v1),
            &secret(json!({"a": "1"})),
            "ctl",
            false,
            Scope::Whole,
            "v1",
            "t",
        )
        .expect("second apply");
        assert_eq!(v2["data"], json!({"a": "1"}));
    }

    #[test]
    fn conflicts_and_force() {
        let v1 = apply(
            None,
            &secret(json!({"a": "1"})),
            "one",
            false,
            Scope::Whole,
            "v1",
            "t",
        )
        .expect("first apply");
        let err = apply(
            Some(&v1),
            &secret(json!({"a": "2"})),
            "two",
            false,
            Scope::Whole,
            "v1",
            "t",
        )
        .expect_err("conflict");
        assert_eq!(err.code(), 409);
        assert!(
            err.to_string().contains("conflict with \"one\": .data.a"),
            "{err}"
        );
        // Same value: shared ownership, no conflict.
        let shared = apply(
            Some(&v1),
            &secret(json!({"a": "1"})),
            "two",
            false,
            Scope::Whole,
            "v1",
            "t",
        )
        .expect("same value");
        // "one" stops applying a; "two" still owns it, so it stays.
        let kept = apply(
            Some(&shared),
            &secret(json!({"z": "1"})),
            "one",
            false,
            Scope::Whole,
            "v1",
            "t",
        )
        .expect("apply");
        assert_eq!(kept["data"]["a"], "1");
        let forced = apply(
            Some(&v1),
            &secret(json!({"a": "2"})),
            "two",
            true,
            Scope::Whole,
            "v1",
            "t",
        )
        .expect("forced");
        assert_eq!(forced["data"]["a"], "2");
        let entries = read_entries(&forced);
        assert_eq!(entries.len(), 1, "one lost its only field: {entries:?}");
    }

    #[test]
    fn yaml_body() {
        let v = parse_body(b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n").expect("yaml");
        assert_eq!(v["metadata"]["name"], "x");
    }
}
