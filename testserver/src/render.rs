//! Response shapes chosen by the `Accept` header: full objects,
//! `PartialObjectMetadata(List)` and `Table` (with CRD printer columns and a
//! JSONPath subset).
//!
//! Pure: takes served objects, returns JSON. Never reads the store.

use serde_json::{Value, json};

use crate::meta;
use crate::resources::{PrinterColumn, ResourceType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Full,
    Metadata,
    Table,
}

/// Picks the first representation we can serve from an `Accept` list.
pub fn format_from_accept(accept: &str) -> Format {
    for part in accept.split(',') {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        let base = params.first().copied().unwrap_or("");
        if base != "application/json" && base != "*/*" && !base.is_empty() {
            continue;
        }
        let as_ = params
            .iter()
            .find_map(|p| p.strip_prefix("as="))
            .unwrap_or("");
        let version = params
            .iter()
            .find_map(|p| p.strip_prefix("v="))
            .unwrap_or("v1");
        match as_ {
            "" => return Format::Full,
            "Table" if version == "v1" => return Format::Table,
            "PartialObjectMetadata" | "PartialObjectMetadataList" if version == "v1" => {
                return Format::Metadata;
            }
            _ => continue,
        }
    }
    Format::Full
}

pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A single object in the requested format.
pub fn object(rt: &ResourceType, format: Format, obj: Value) -> Value {
    match format {
        Format::Full => obj,
        Format::Metadata => partial_metadata(&obj),
        Format::Table => table(rt, std::slice::from_ref(&obj), None, None),
    }
}

/// A list in the requested format.
pub fn list(
    rt: &ResourceType,
    format: Format,
    items: Vec<Value>,
    rv: u64,
    cont: Option<String>,
) -> Value {
    let mut md = json!({"resourceVersion": rv.to_string()});
    if let (Some(c), Some(m)) = (&cont, md.as_object_mut()) {
        m.insert("continue".into(), c.clone().into());
    }
    match format {
        Format::Full => json!({
            "kind": rt.list_kind,
            "apiVersion": rt.api_version(),
            "metadata": md,
            "items": items,
        }),
        Format::Metadata => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": md,
            "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
        }),
        Format::Table => table(rt, &items, Some(rv), cont),
    }
}

struct Column {
    name: &'static str,
    type_: &'static str,
    format: &'static str,
    path: &'static str,
}

const fn col(
    name: &'static str,
    type_: &'static str,
    format: &'static str,
    path: &'static str,
) -> Column {
    Column {
        name,
        type_,
        format,
        path,
    }
}

/// Columns of built-in types; `@` paths are computed cells.
fn builtin_columns(rt: &ResourceType) -> Vec<Column> {
    let name = col("Name", "string", "name", ".metadata.name");
    let age = col("Age", "date", "", ".metadata.creationTimestamp");
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "secrets") => vec![
            name,
            col("Type", "string", "", ".type"),
            col("Data", "integer", "", "@datacount"),
            age,
        ],
        ("", "configmaps") => vec![name, col("Data", "integer", "", "@datacount"), age],
        ("", "namespaces") => vec![name, col("Status", "string", "", ".status.phase"), age],
        ("coordination.k8s.io", "leases") => {
            vec![
                name,
                col("Holder", "string", "", ".spec.holderIdentity"),
                age,
            ]
        }
        ("", "events") => vec![
            col("Last Seen", "string", "", "@lastseen"),
            col("Type", "string", "", ".type"),
            col("Reason", "string", "", ".reason"),
            col("Object", "string", "", "@involved"),
            col("Message", "string", "", ".message"),
        ],
        ("events.k8s.io", "events") => vec![
            col("Last Seen", "string", "", "@lastseen"),
            col("Type", "string", "", ".type"),
            col("Reason", "string", "", ".reason"),
            col("Object", "string", "", "@regarding"),
            col("Message", "string", "", ".note"),
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![name, col("Created At", "date", "date-time", "@created")]
        }
        _ => vec![name, age],
    }
}

fn object_ref(r: Option<&Value>) -> Value {
    let Some(r) = r else { return Value::Null };
    let kind = r
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_lowercase();
    let name = r.get("name").and_then(Value::as_str).unwrap_or("");
    format!("{kind}/{name}").into()
}

fn computed(path: &str, obj: &Value) -> Value {
    match path {
        "@datacount" => {
            let n = ["data", "binaryData"]
                .iter()
                .filter_map(|k| obj.get(*k).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            n.into()
        }
        "@involved" => object_ref(obj.get("involvedObject")),
        "@regarding" => object_ref(obj.get("regarding")),
        "@lastseen" => {
            let t = ["lastTimestamp", "deprecatedLastTimestamp", "eventTime"]
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_str))
                .or_else(|| meta::meta_str(obj, "creationTimestamp"));
            t.map(meta::human_age)
                .map(Value::from)
                .unwrap_or(Value::Null)
        }
        "@created" => meta::meta_str(obj, "creationTimestamp")
            .map(Value::from)
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn cell(type_: &str, values: Vec<Value>) -> Value {
    let v = match values.len() {
        0 => return Value::Null,
        1 => values.into_iter().next().unwrap_or(Value::Null),
        _ => Value::from(
            values
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    o => o.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    match (type_, &v) {
        ("date", Value::String(s)) => meta::human_age(s).into(),
        ("string", Value::String(_)) | ("integer", Value::Number(_)) => v,
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => v,
        ("string", Value::Object(_) | Value::Array(_)) => v.to_string().into(),
        _ => v,
    }
}

pub fn table(rt: &ResourceType, items: &[Value], rv: Option<u64>, cont: Option<String>) -> Value {
    let (defs, rows): (Vec<Value>, Vec<Value>) = match &rt.printer_columns {
        Some(cols) => crd_table(cols, items),
        None => {
            let cols = builtin_columns(rt);
            let defs = cols
                .iter()
                .map(|c| json!({"name": c.name, "type": c.type_, "format": c.format, "description": "", "priority": 0}))
                .collect();
            let rows = items
                .iter()
                .map(|o| {
                    let cells: Vec<Value> = cols
                        .iter()
                        .map(|c| {
                            if c.path.starts_with('@') {
                                computed(c.path, o)
                            } else {
                                cell(c.type_, jsonpath(o, c.path))
                            }
                        })
                        .collect();
                    json!({"cells": cells, "object": partial_metadata(o)})
                })
                .collect();
            (defs, rows)
        }
    };
    let mut md = json!({});
    if let Some(m) = md.as_object_mut() {
        if let Some(rv) = rv {
            m.insert("resourceVersion".into(), rv.to_string().into());
        }
        if let Some(c) = cont {
            m.insert("continue".into(), c.into());
        }
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": md,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

fn crd_table(cols: &[PrinterColumn], items: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    let default_age = [PrinterColumn {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        json_path: ".metadata.creationTimestamp".into(),
        description: String::new(),
        priority: 0,
    }];
    let cols = if cols.is_empty() {
        &default_age[..]
    } else {
        cols
    };
    for c in cols {
        defs.push(json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}));
    }
    let rows = items
        .iter()
        .map(|o| {
            let mut cells = vec![Value::from(meta::name(o))];
            for c in cols {
                cells.push(cell(&c.type_, jsonpath(o, &c.json_path)));
            }
            json!({"cells": cells, "object": partial_metadata(o)})
        })
        .collect();
    (defs, rows)
}

/// A JSONPath subset: `.a.b`, `[N]`, `[*]`, `[?(@.k=="v")]` (also `!=`),
/// optionally wrapped in `{ }`.
pub fn jsonpath(obj: &Value, path: &str) -> Vec<Value> {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim();
    let mut cur = vec![obj.clone()];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = find_bracket_end(r) else {
                return vec![];
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            cur = cur.into_iter().flat_map(|v| index(&v, inner)).collect();
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            rest = &r[end..];
            if field.is_empty() {
                continue;
            }
            cur = cur
                .into_iter()
                .filter_map(|v| v.get(field).cloned())
                .collect();
        }
    }
    cur
}

fn find_bracket_end(s: &str) -> Option<usize> {
    let mut in_quote = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' | '\'' => in_quote = !in_quote,
            ']' if !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

fn index(v: &Value, inner: &str) -> Vec<Value> {
    let Some(items) = v.as_array() else {
        return vec![];
    };
    let inner = inner.trim();
    if inner == "*" {
        return items.clone();
    }
    if let Ok(i) = inner.parse::<i64>() {
        let idx = if i < 0 { items.len() as i64 + i } else { i };
        return usize::try_from(idx)
            .ok()
            .and_then(|i| items.get(i))
            .cloned()
            .into_iter()
            .collect();
    }
    let Some(expr) = inner.strip_prefix("?(").and_then(|x| x.strip_suffix(')')) else {
        return vec![];
    };
    let (lhs, rhs, negate) = if let Some((l, r)) = expr.split_once("!=") {
        (l, r, true)
    } else if let Some((l, r)) = expr.split_once("==") {
        (l, r, false)
    } else {
        return vec![];
    };
    let field = lhs.trim().trim_start_matches('@');
    let want = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
    items
        .iter()
        .filter(|item| {
            let got = jsonpath(item, field);
            let s = match got.first() {
                Some(Value::String(s)) => s.clone(),
                Some(o) => o.to_string(),
                None => String::new(),
            };
            (s == want) != negate
        })
        .cloned()
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"keyId": "k", "conditions": [
            {"type": "Synced", "status": "False"},
            {"type": "Ready", "status": "True", "reason": "Decrypted"}
        ]}});
        assert_eq!(jsonpath(&o, ".status.keyId"), vec![json!("k")]);
        assert_eq!(
            jsonpath(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![json!("True")]
        );
        assert_eq!(
            jsonpath(&o, r#"{.status.conditions[?(@.type=="Ready")].reason}"#),
            vec![json!("Decrypted")]
        );
        assert_eq!(
            jsonpath(&o, ".status.conditions[0].type"),
            vec![json!("Synced")]
        );
        assert_eq!(jsonpath(&o, ".status.conditions[*].type").len(), 2);
        assert!(jsonpath(&o, ".status.missing").is_empty());
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(
            format_from_accept(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
            ),
            Format::Table
        );
        assert_eq!(
            format_from_accept("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            Format::Metadata
        );
        assert_eq!(
            format_from_accept("application/vnd.kubernetes.protobuf, */*"),
            Format::Full
        );
        assert_eq!(format_from_accept(""), Format::Full);
    }
}
