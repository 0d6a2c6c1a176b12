//! Field sets (`FieldsV1`) and `metadata.managedFields` bookkeeping.
//!
//! Owns the representation of "which manager owns which field" and the
//! ownership rules of non-apply writes (an Update takes the fields it
//! changed from everyone else). Server-side apply itself lives in `apply`.
//!
//! Simplification: lists are atomic (owned as a whole); maps are granular.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// A tree of owned fields. Keys are raw FieldsV1 keys (`f:spec`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    children: BTreeMap<String, FieldSet>,
    /// This node itself is owned (a scalar, a list or an empty map).
    leaf: bool,
}

pub type Path = Vec<String>;

/// Which part of an object a write targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The main resource of a type without a status subresource.
    Whole,
    /// The main resource of a type with a status subresource: status is not
    /// the writer's.
    Main,
    /// The `/status` subresource: only status is the writer's.
    Status,
}

impl Scope {
    pub fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Status => Some("status"),
            _ => None,
        }
    }
}

/// The object with everything a field manager never owns removed.
pub fn strip_for_fields(obj: &Value, scope: Scope) -> Value {
    let mut out = obj.clone();
    let Some(map) = out.as_object_mut() else {
        return Value::Object(Map::new());
    };
    map.remove("apiVersion");
    map.remove("kind");
    match scope {
        Scope::Main => {
            map.remove("status");
        }
        Scope::Status => {
            map.retain(|k, _| k == "status");
        }
        Scope::Whole => {}
    }
    if let Some(Value::Object(md)) = map.get_mut("metadata") {
        for k in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "generateName",
        ] {
            md.remove(k);
        }
        if md.is_empty() {
            map.remove("metadata");
        }
    }
    out
}

fn field_key(name: &str) -> String {
    format!("f:{name}")
}

fn key_name(key: &str) -> &str {
    key.strip_prefix("f:").unwrap_or(key)
}

/// The value at a field path, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for k in path {
        cur = cur.as_object()?.get(key_name(k))?;
    }
    Some(cur)
}

/// Removes the value at a path; prunes parents left empty by the removal
/// unless `keep` says the parent is owned in its own right.
pub fn remove_at(obj: &mut Value, path: &[String], keep: &dyn Fn(&[String]) -> bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *obj;
    for k in parents {
        match cur.as_object_mut().and_then(|m| m.get_mut(key_name(k))) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(key_name(last));
        if m.is_empty() && !parents.is_empty() && !keep(parents) {
            remove_at(obj, parents, keep);
        }
    }
}

impl FieldSet {
    /// Every leaf of a (stripped) object.
    pub fn from_object(obj: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(map) = obj.as_object() {
            for (k, v) in map {
                set.children.insert(field_key(k), Self::from_value(v));
            }
        }
        set
    }

    fn from_value(v: &Value) -> FieldSet {
        match v {
            Value::Object(m) if !m.is_empty() => Self::from_object(v),
            _ => FieldSet {
                children: BTreeMap::new(),
                leaf: true,
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.leaf && self.children.is_empty()
    }

    pub fn leaves(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.leaf && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        let mut cur = self;
        for k in path {
            match cur.children.get(k) {
                Some(c) => cur = c,
                None => return false,
            }
        }
        cur.leaf
    }

    /// Whether any owned leaf is `path` or lies below it.
    pub fn owns_at_or_below(&self, path: &[String]) -> bool {
        let mut cur = self;
        for k in path {
            match cur.children.get(k) {
                Some(c) => cur = c,
                None => return false,
            }
        }
        !cur.is_empty()
    }

    pub fn insert(&mut self, path: &[String]) {
        let mut cur = self;
        for k in path {
            cur = cur.children.entry(k.clone()).or_default();
        }
        cur.leaf = true;
    }

    pub fn remove(&mut self, path: &[String]) {
        fn go(node: &mut FieldSet, path: &[String]) {
            match path.split_first() {
                None => node.leaf = false,
                Some((k, rest)) => {
                    if let Some(c) = node.children.get_mut(k) {
                        go(c, rest);
                        if c.is_empty() {
                            node.children.remove(k);
                        }
                    }
                }
            }
        }
        go(self, path);
    }

    /// Removes `path` and everything below it.
    pub fn remove_subtree(&mut self, path: &[String]) {
        fn go(node: &mut FieldSet, path: &[String]) {
            if let Some((k, rest)) = path.split_first() {
                if rest.is_empty() {
                    node.children.remove(k);
                } else if let Some(c) = node.children.get_mut(k) {
                    go(c, rest);
                    if c.is_empty() {
                        node.children.remove(k);
                    }
                }
            }
        }
        go(self, path);
    }

    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.leaf && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(m) = v.as_object() {
            if m.is_empty() {
                set.leaf = true;
            }
            for (k, c) in m {
                if k == "." {
                    set.leaf = true;
                } else {
                    set.children.insert(k.clone(), Self::from_fields_v1(c));
                }
            }
        }
        set
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    pub fn same_owner(&self, manager: &str, operation: &str, sub: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == sub
    }
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    operation: e
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("Update")
                        .into(),
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    time: e.get("time").and_then(Value::as_str).unwrap_or("").into(),
                    subresource: e
                        .get("subresource")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    fields: e
                        .get("fieldsV1")
                        .map(FieldSet::from_fields_v1)
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let md = crate::meta::metadata_mut(obj);
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.fields.to_fields_v1(),
            });
            if let (Some(sub), Some(m)) = (&e.subresource, v.as_object_mut()) {
                m.insert("subresource".into(), sub.clone().into());
            }
            v
        })
        .collect();
    if list.is_empty() {
        md.remove("managedFields");
    } else {
        md.insert("managedFields".into(), Value::Array(list));
    }
}

/// Drops ownership of fields that no longer exist in `obj` (stripped).
pub fn forget_missing(entries: &mut [Entry], stripped: &Value, scope: Scope) {
    for e in entries.iter_mut() {
        if !entry_in_scope(e, scope) {
            continue;
        }
        for p in e.fields.leaves() {
            if value_at(stripped, &p).is_none() {
                e.fields.remove(&p);
            }
        }
    }
}

/// Entries whose fields live in the part of the object `scope` covers.
fn entry_in_scope(e: &Entry, scope: Scope) -> bool {
    match scope {
        Scope::Whole => true,
        Scope::Main => e.subresource.is_none(),
        Scope::Status => e.subresource.as_deref() == Some("status"),
    }
}

/// Ownership after a non-apply write (create, update, patch): `manager`
/// takes every field that it added or changed; removed fields are forgotten.
pub fn track_update(
    entries: &mut Vec<Entry>,
    manager: &str,
    scope: Scope,
    api_version: &str,
    old: &Value,
    new: &Value,
    now: &str,
) {
    let old_s = strip_for_fields(old, scope);
    let new_s = strip_for_fields(new, scope);
    let changed: Vec<Path> = FieldSet::from_object(&new_s)
        .leaves()
        .into_iter()
        .filter(|p| value_at(&old_s, p) != value_at(&new_s, p))
        .collect();
    for e in entries.iter_mut() {
        for p in &changed {
            e.fields.remove_subtree(p);
        }
    }
    forget_missing(entries, &new_s, scope);
    let sub = scope.subresource();
    if !changed.is_empty() {
        let idx = match entries
            .iter()
            .position(|e| e.same_owner(manager, "Update", sub))
        {
            Some(i) => i,
            None => {
                entries.push(Entry {
                    manager: manager.into(),
                    operation: "Update".into(),
                    api_version: api_version.into(),
                    time: now.into(),
                    subresource: sub.map(str::to_string),
                    fields: FieldSet::default(),
                });
                entries.len() - 1
            }
        };
        let e = &mut entries[idx];
        for p in &changed {
            e.fields.insert(p);
        }
        e.time = now.into();
        e.api_version = api_version.into();
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// A copy of the object with managedFields timestamps blanked, for no-op
/// detection (the apiserver ignores timestamp-only managedFields changes).
pub fn without_times(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(Value::Array(list)) = out.pointer_mut("/metadata/managedFields") {
        for e in list {
            if let Some(m) = e.as_object_mut() {
                m.remove("time");
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Path {
        s.iter().map(|x| format!("f:{x}")).collect()
    }

    #[test]
    fn fieldset_roundtrip() {
        let obj =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1, "l": [1, 2], "e": {}}});
        let fs = FieldSet::from_object(&obj);
        assert!(fs.contains(&p(&["spec", "x"])));
        assert!(fs.contains(&p(&["spec", "e"])));
        assert!(!fs.contains(&p(&["spec"])));
        let v1 = fs.to_fields_v1();
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:x": {}, "f:l": {}, "f:e": {}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), fs);
    }

    #[test]
    fn update_takes_changed_fields() {
        let old = json!({"metadata": {"name": "a"}, "data": {"x": "1", "y": "2"}});
        let mut entries = vec![];
        track_update(
            &mut entries,
            "m1",
            Scope::Whole,
            "v1",
            &json!({}),
            &old,
            "t",
        );
        let new = json!({"metadata": {"name": "a"}, "data": {"x": "9", "y": "2"}});
        track_update(&mut entries, "m2", Scope::Whole, "v1", &old, &new, "t");
        assert_eq!(entries.len(), 2);
        assert!(entries[0].fields.contains(&p(&["data", "y"])));
        assert!(!entries[0].fields.contains(&p(&["data", "x"])));
        assert!(entries[1].fields.contains(&p(&["data", "x"])));
        let newer = json!({"metadata": {"name": "a"}, "data": {"x": "9"}});
        track_update(&mut entries, "m3", Scope::Whole, "v1", &new, &newer, "t");
        assert_eq!(
            entries.len(),
            1,
            "m1 lost its last field, m3 changed nothing"
        );
    }

    #[test]
    fn remove_prunes_empty_parents() {
        let mut o = json!({"spec": {"a": {"b": 1}}, "x": 1});
        remove_at(&mut o, &p(&["spec", "a", "b"]), &|_| false);
        assert_eq!(o, json!({"x": 1}));
    }
}
