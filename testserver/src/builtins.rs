//! Behaviour specific to built-in types: Secret `stringData` and defaults,
//! `immutable` Secrets/ConfigMaps, Namespace defaults, and the conversion
//! between core/v1 and events.k8s.io/v1 Events (stored once, served twice).
//!
//! Pure functions over objects; `ops` calls them on every write and read.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::meta;
use crate::resources::{Conversion, ResourceType};

/// Type-specific defaulting and validation for a create (`old` = None) or
/// an update. Runs on the stored (not served) form.
pub fn prepare(rt: &ResourceType, old: Option<&Value>, new: &mut Value) -> ApiResult<()> {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "secrets") => prepare_secret(rt, old, new),
        ("", "configmaps") => check_immutable(rt, old, new, &["data", "binaryData"]),
        ("", "namespaces") => {
            if old.is_none() {
                let name = meta::name(new).to_string();
                let labels = meta::metadata_mut(new)
                    .entry("labels")
                    .or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), name.into());
                }
                if let Some(m) = new.as_object_mut() {
                    m.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
                    m.insert("status".into(), json!({"phase": "Active"}));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn prepare_secret(rt: &ResourceType, old: Option<&Value>, new: &mut Value) -> ApiResult<()> {
    let name = meta::name(new).to_string();
    let Some(obj) = new.as_object_mut() else {
        return Ok(());
    };
    if let Some(Value::Object(string_data)) = obj.remove("stringData") {
        let data = obj.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        if let Some(d) = data.as_object_mut() {
            for (k, v) in string_data {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                d.insert(
                    k,
                    base64::engine::general_purpose::STANDARD
                        .encode(text)
                        .into(),
                );
            }
        }
    }
    if let Some(Value::Object(d)) = obj.get("data") {
        for (k, v) in d {
            let ok = v
                .as_str()
                .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
            if !ok {
                return Err(ApiError::invalid(
                    &rt.plural,
                    &name,
                    format!("data[{k}]: Invalid value: illegal base64 data"),
                ));
            }
        }
    }
    if matches!(obj.get("data"), Some(Value::Object(d)) if d.is_empty()) {
        obj.remove("data");
    }
    if !obj.get("type").is_some_and(Value::is_string) {
        obj.insert("type".into(), "Opaque".into());
    }
    if let Some(old) = old
        && old.get("type") != new.get("type")
    {
        return Err(ApiError::invalid(
            &rt.plural,
            &name,
            "type: Invalid value: field is immutable",
        ));
    }
    check_immutable(rt, old, new, &["data"])
}

fn check_immutable(
    rt: &ResourceType,
    old: Option<&Value>,
    new: &Value,
    fields: &[&str],
) -> ApiResult<()> {
    let Some(old) = old else { return Ok(()) };
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    let changed = fields.iter().any(|f| old.get(*f) != new.get(*f))
        || new.get("immutable").and_then(Value::as_bool) != Some(true);
    if changed {
        return Err(ApiError::invalid(
            &rt.plural,
            meta::name(new),
            "data: Forbidden: field is immutable when `immutable` is set",
        ));
    }
    Ok(())
}

/// Stored form → the form served for `rt`.
pub fn to_served(rt: &ResourceType, stored: &Value) -> Value {
    let mut out = match rt.conversion {
        Conversion::None => stored.clone(),
        Conversion::CoreEvent => event_to_core(stored),
    };
    if let Some(m) = out.as_object_mut() {
        m.insert("apiVersion".into(), rt.api_version().into());
        m.insert("kind".into(), rt.kind.clone().into());
    }
    out
}

/// Served (request) form → the stored form.
pub fn to_stored(rt: &ResourceType, served: Value) -> Value {
    match rt.conversion {
        Conversion::None => served,
        Conversion::CoreEvent => event_from_core(served),
    }
}

const RENAMES: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("count", "deprecatedCount"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("source", "deprecatedSource"),
    ("reportingComponent", "reportingController"),
];

fn rename(obj: &Value, from_core: bool) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            let new_key = RENAMES
                .iter()
                .find(|(core, ev)| if from_core { core == k } else { ev == k })
                .map(|(core, ev)| if from_core { *ev } else { *core })
                .unwrap_or(k.as_str());
            out.insert(new_key.to_string(), v.clone());
        }
    }
    out
}

fn event_to_core(ev: &Value) -> Value {
    let mut out = rename(ev, false);
    if !out.contains_key("source")
        && let Some(c) = out.get("reportingComponent").cloned()
    {
        let mut src = json!({"component": c});
        if let (Some(host), Some(m)) = (ev.get("reportingInstance"), src.as_object_mut()) {
            m.insert("host".into(), host.clone());
        }
        out.insert("source".into(), src);
    }
    if let Some(series) = ev.get("series") {
        if !out.contains_key("count")
            && let Some(c) = series.get("count")
        {
            out.insert("count".into(), c.clone());
        }
        if !out.contains_key("lastTimestamp")
            && let Some(t) = series.get("lastObservedTime").and_then(Value::as_str)
        {
            out.insert("lastTimestamp".into(), truncate_micro(t).into());
        }
        out.remove("series");
    }
    if !out.contains_key("firstTimestamp")
        && let Some(t) = ev.get("eventTime").and_then(Value::as_str)
    {
        out.insert("firstTimestamp".into(), truncate_micro(t).into());
    }
    if !out.contains_key("lastTimestamp")
        && let Some(t) = out.get("firstTimestamp").cloned()
    {
        out.insert("lastTimestamp".into(), t);
    }
    if !out.contains_key("count") {
        out.insert("count".into(), 1.into());
    }
    Value::Object(out)
}

fn truncate_micro(t: &str) -> String {
    match t.parse::<jiff::Timestamp>() {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => t.to_string(),
    }
}

fn event_from_core(core: Value) -> Value {
    let mut out = rename(&core, true);
    if !out.contains_key("reportingController")
        && let Some(c) = core.pointer("/source/component")
    {
        out.insert("reportingController".into(), c.clone());
    }
    if !out.contains_key("eventTime") {
        let t = core
            .get("firstTimestamp")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(meta::now_micro);
        out.insert("eventTime".into(), t.into());
    }
    Value::Object(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn rt(group: &str, version: &str, plural: &str) -> std::sync::Arc<ResourceType> {
        Registry::with_builtins()
            .get(group, version, plural)
            .expect("builtin")
    }

    #[test]
    fn secret_string_data_and_default_type() {
        let rt = rt("", "v1", "secrets");
        let mut s =
            json!({"metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"b": "hello"}});
        prepare(&rt, None, &mut s).expect("valid");
        assert_eq!(s["data"], json!({"a": "eA==", "b": "aGVsbG8="}));
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }

    #[test]
    fn immutable_secret() {
        let rt = rt("", "v1", "secrets");
        let old = json!({"metadata": {"name": "s"}, "type": "Opaque", "immutable": true, "data": {"a": "eA=="}});
        let mut new = old.clone();
        new["data"]["a"] = json!("eQ==");
        assert_eq!(
            prepare(&rt, Some(&old), &mut new).map_err(|e| e.code()),
            Err(422)
        );
        let mut same = old.clone();
        assert!(prepare(&rt, Some(&old), &mut same).is_ok());
    }

    #[test]
    fn events_roundtrip() {
        let core = rt("", "v1", "events");
        let ev = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p"}, "note": "hi", "reason": "R", "type": "Normal", "reportingController": "c", "eventTime": "2024-01-01T00:00:00.000000Z"});
        let served = to_served(&core, &ev);
        assert_eq!(served["involvedObject"]["name"], "p");
        assert_eq!(served["message"], "hi");
        assert_eq!(served["source"]["component"], "c");
        assert_eq!(served["lastTimestamp"], "2024-01-01T00:00:00Z");
        let back = to_stored(&core, served);
        assert_eq!(back["note"], "hi");
        assert_eq!(back["regarding"]["name"], "p");
    }
}
