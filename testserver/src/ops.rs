//! The write pipeline: create, update (PUT), patch, server-side apply and
//! delete, with the apiserver's object semantics.
//!
//! Owns: metadata the server controls (uid, creationTimestamp,
//! resourceVersion, generation, deletionTimestamp), optimistic concurrency,
//! status-subresource separation, managedFields for non-apply writes,
//! finalizers, CRD registration, and the **no-op rule**: a write that
//! changes nothing (ignoring managedFields timestamps) bumps nothing and
//! emits no watch event. It never speaks HTTP.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::apply;
use crate::builtins;
use crate::error::{ApiError, ApiResult};
use crate::fields::{self, Scope};
use crate::meta;
use crate::patch::{self, PatchType};
use crate::resources::{ResourceType, StorageKey};
use crate::store::Store;

/// Per-request write options.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub manager: String,
    pub force: bool,
    pub dry_run: bool,
}

/// Per-request delete options (query parameters and `DeleteOptions` body).
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// How managedFields are maintained for a write.
enum Tracking<'a> {
    /// A non-apply write by this manager.
    Update(&'a str),
    /// Server-side apply already computed them.
    Precomputed,
}

pub fn scope_for(rt: &ResourceType, subresource: Option<&str>) -> ApiResult<Scope> {
    match subresource {
        None => Ok(if rt.status_subresource {
            Scope::Main
        } else {
            Scope::Whole
        }),
        Some("status") if rt.status_subresource => Ok(Scope::Status),
        Some(_) => Err(ApiError::NoRoute),
    }
}

fn namespaces_key() -> StorageKey {
    StorageKey {
        group: String::new(),
        plural: "namespaces".into(),
    }
}

fn crd_key() -> StorageKey {
    StorageKey {
        group: "apiextensions.k8s.io".into(),
        plural: "customresourcedefinitions".into(),
    }
}

pub fn get(store: &Store, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
    store
        .get(&rt.storage, ns, name)
        .map(|o| builtins::to_served(rt, &o))
        .ok_or_else(|| ApiError::not_found(&rt.qualified(), name))
}

fn check_type(rt: &ResourceType, body: &Value) -> ApiResult<()> {
    if let Some(av) = body.get("apiVersion").and_then(Value::as_str)
        && av != rt.api_version()
    {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != rt.kind
    {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    Ok(())
}

fn set_meta(obj: &mut Value, key: &str, v: Option<Value>) {
    let md = meta::metadata_mut(obj);
    match v {
        Some(v) => {
            md.insert(key.into(), v);
        }
        None => {
            md.remove(key);
        }
    }
}

fn old_meta(old: &Value, key: &str) -> Option<Value> {
    meta::metadata(old).and_then(|m| m.get(key)).cloned()
}

pub fn create(
    store: &mut Store,
    rt: &Arc<ResourceType>,
    ns: &str,
    body: Value,
    opts: &WriteOpts,
) -> ApiResult<Value> {
    create_with(
        store,
        rt,
        ns,
        body,
        Tracking::Update(&opts.manager),
        opts.dry_run,
    )
}

fn create_with(
    store: &mut Store,
    rt: &Arc<ResourceType>,
    ns: &str,
    body: Value,
    tracking: Tracking<'_>,
    dry_run: bool,
) -> ApiResult<Value> {
    check_type(rt, &body)?;
    let mut obj = builtins::to_stored(rt, body);
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), rt.api_version().into());
        m.insert("kind".into(), rt.kind.clone().into());
    }
    let body_ns = meta::namespace(&obj).to_string();
    if rt.namespaced {
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        set_meta(&mut obj, "namespace", Some(ns.into()));
        match store.get(&namespaces_key(), "", ns) {
            None => return Err(ApiError::not_found("namespaces", ns)),
            Some(n) if meta::is_deleting(&n) => {
                return Err(ApiError::Forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )));
            }
            Some(_) => {}
        }
    } else {
        set_meta(&mut obj, "namespace", None);
    }
    let mut name = meta::name(&obj).to_string();
    if name.is_empty() {
        let Some(prefix) = meta::meta_str(&obj, "generateName").map(str::to_string) else {
            return Err(ApiError::invalid(
                &rt.qualified(),
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        };
        loop {
            name = format!("{prefix}{}", meta::random_suffix());
            if store.get(&rt.storage, ns_of(rt, ns), &name).is_none() {
                break;
            }
        }
        set_meta(&mut obj, "name", Some(name.clone().into()));
    }
    if !meta::valid_name(&name) {
        return Err(ApiError::invalid(
            &rt.qualified(),
            &name,
            format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    if store.get(&rt.storage, ns_of(rt, ns), &name).is_some() {
        return Err(ApiError::AlreadyExists {
            kind: rt.qualified(),
            name,
        });
    }
    let now = meta::now_rfc3339();
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        set_meta(&mut obj, k, None);
    }
    set_meta(&mut obj, "uid", Some(meta::new_uid().into()));
    set_meta(&mut obj, "creationTimestamp", Some(now.clone().into()));
    if rt.tracks_generation() {
        set_meta(&mut obj, "generation", Some(1.into()));
    } else {
        set_meta(&mut obj, "generation", None);
    }
    if rt.custom
        && rt.status_subresource
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    builtins::prepare(rt, None, &mut obj)?;
    if rt.storage == crd_key() {
        prepare_crd(store, None, &mut obj, dry_run)?;
    }
    meta::normalize(&mut obj);
    if let Tracking::Update(manager) = tracking {
        let scope = scope_for(rt, None)?;
        let mut entries = Vec::new();
        set_meta(&mut obj, "managedFields", None);
        fields::track_update(
            &mut entries,
            manager,
            scope,
            &rt.api_version(),
            &json!({}),
            &obj,
            &now,
        );
        fields::write_entries(&mut obj, &entries);
    }
    if dry_run {
        return Ok(builtins::to_served(rt, &obj));
    }
    let rv = store.next_rv();
    set_meta(&mut obj, "resourceVersion", Some(rv.to_string().into()));
    if !meta::owner_uids(&obj).is_empty() {
        store.gc_created.push((
            rt.storage.clone(),
            meta::namespace(&obj).to_string(),
            meta::name(&obj).to_string(),
        ));
    }
    let stored = store.put(&rt.storage, obj, rv);
    Ok(builtins::to_served(rt, &stored))
}

fn ns_of<'a>(rt: &ResourceType, ns: &'a str) -> &'a str {
    if rt.namespaced { ns } else { "" }
}

/// CRD defaulting: validates names, registers its types and fills status.
fn prepare_crd(
    store: &mut Store,
    old: Option<&Value>,
    obj: &mut Value,
    dry_run: bool,
) -> ApiResult<()> {
    let name = meta::name(obj).to_string();
    let types = crate::resources::crd_types(obj).map_err(|m| {
        ApiError::invalid("customresourcedefinitions.apiextensions.k8s.io", &name, m)
    })?;
    let mut accepted = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    if let (Some(m), Some(t)) = (accepted.as_object_mut(), types.first()) {
        m.insert("singular".into(), t.singular.clone().into());
        m.insert("listKind".into(), t.list_kind.clone().into());
    }
    let stored_versions: Vec<Value> = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    // Reuse the old conditions so re-applying an unchanged CRD is a no-op.
    let conditions = old
        .and_then(|o| o.pointer("/status/conditions"))
        .cloned()
        .unwrap_or_else(|| {
            let now = meta::now_rfc3339();
            json!([
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
            ])
        });
    if let Some(m) = obj.as_object_mut() {
        m.insert(
            "status".into(),
            json!({"conditions": conditions, "acceptedNames": accepted, "storedVersions": stored_versions}),
        );
    }
    if !dry_run {
        store.registry.register_crd(obj).map_err(|m| {
            ApiError::invalid("customresourcedefinitions.apiextensions.k8s.io", &name, m)
        })?;
    }
    Ok(())
}

/// PUT on the main resource or `/status`.
pub fn replace(
    store: &mut Store,
    rt: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    scope: Scope,
    body: Value,
    opts: &WriteOpts,
) -> ApiResult<Value> {
    check_type(rt, &body)?;
    if meta::name(&body) != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta::name(&body)
        )));
    }
    let old = store
        .get(&rt.storage, ns_of(rt, ns), name)
        .ok_or_else(|| ApiError::not_found(&rt.qualified(), name))?;
    let new = builtins::to_stored(rt, body);
    commit_update(
        store,
        rt,
        scope,
        &old,
        new,
        Tracking::Update(&opts.manager),
        opts.dry_run,
    )
}

/// PATCH of any type; apply on a missing object creates it.
/// Returns the object and whether it was created.
#[allow(clippy::too_many_arguments)]
pub fn patch(
    store: &mut Store,
    rt: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    scope: Scope,
    kind: PatchType,
    body: &[u8],
    opts: &WriteOpts,
) -> ApiResult<(Value, bool)> {
    let old = store.get(&rt.storage, ns_of(rt, ns), name);
    if kind == PatchType::Apply {
        let applied = apply::parse_body(body)?;
        check_type(rt, &applied)?;
        if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
            return Err(ApiError::BadRequest(
                "apiVersion and kind must be set in an apply configuration".into(),
            ));
        }
        let applied_name = meta::name(&applied);
        if !applied_name.is_empty() && applied_name != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({applied_name}) does not match the name on the URL ({name})"
            )));
        }
        if let (Some(old), Some(rv)) = (&old, meta::meta_str(&applied, "resourceVersion"))
            && !rv.is_empty()
            && Some(rv) != meta::meta_str(old, "resourceVersion")
        {
            return Err(ApiError::Conflict {
                kind: rt.qualified(),
                name: name.into(),
            });
        }
        let applied = builtins::to_stored(rt, applied);
        let now = meta::now_rfc3339();
        let live = old
            .as_deref()
            .map(|o| builtins::to_stored(rt, builtins::to_served(rt, o)));
        let mut merged = apply::apply(
            live.as_ref(),
            &applied,
            &opts.manager,
            opts.force,
            scope,
            &rt.api_version(),
            &now,
        )?;
        return match old {
            Some(old) => commit_update(
                store,
                rt,
                scope,
                &old,
                merged,
                Tracking::Precomputed,
                opts.dry_run,
            )
            .map(|v| (v, false)),
            None => {
                if scope == Scope::Status {
                    return Err(ApiError::not_found(&rt.qualified(), name));
                }
                set_meta(&mut merged, "name", Some(name.into()));
                let served = builtins::to_served(rt, &merged);
                create_with(store, rt, ns, served, Tracking::Precomputed, opts.dry_run)
                    .map(|v| (v, true))
            }
        };
    }
    let old = old.ok_or_else(|| ApiError::not_found(&rt.qualified(), name))?;
    let served = builtins::to_served(rt, &old);
    let patched = patch::patch(&served, kind, body)?;
    let new = builtins::to_stored(rt, patched);
    commit_update(
        store,
        rt,
        scope,
        &old,
        new,
        Tracking::Update(&opts.manager),
        opts.dry_run,
    )
    .map(|v| (v, false))
}

/// Everything outside metadata and status (what bumps `generation`).
fn spec_part(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(m) = out.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    out
}

fn comparable(obj: &Value) -> Value {
    let mut out = fields::without_times(obj);
    set_meta(&mut out, "resourceVersion", None);
    out
}

fn commit_update(
    store: &mut Store,
    rt: &Arc<ResourceType>,
    scope: Scope,
    old: &Arc<Value>,
    mut new: Value,
    tracking: Tracking<'_>,
    dry_run: bool,
) -> ApiResult<Value> {
    let name = meta::name(old).to_string();
    if let Some(rv) = meta::meta_str(&new, "resourceVersion")
        && !rv.is_empty()
        && Some(rv) != meta::meta_str(old, "resourceVersion")
    {
        return Err(ApiError::Conflict {
            kind: rt.qualified(),
            name,
        });
    }
    let client_fields = old_meta(&new, "managedFields");
    match scope {
        Scope::Main => {
            if let Some(m) = new.as_object_mut() {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
        }
        Scope::Status => {
            let status = new.get("status").cloned();
            new = (**old).clone();
            if let Some(m) = new.as_object_mut() {
                match status {
                    Some(s) => m.insert("status".into(), s),
                    None => m.remove("status"),
                };
            }
        }
        Scope::Whole => {}
    }
    if let Some(m) = new.as_object_mut() {
        for k in ["apiVersion", "kind"] {
            if let Some(v) = old.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
    }
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        set_meta(&mut new, k, old_meta(old, k));
    }
    set_meta(
        &mut new,
        "managedFields",
        client_fields.or_else(|| old_meta(old, "managedFields")),
    );
    if meta::is_deleting(old) {
        let before = meta::finalizers(old);
        if meta::finalizers(&new).iter().any(|f| !before.contains(f)) {
            return Err(ApiError::invalid(
                &rt.qualified(),
                &name,
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
            ));
        }
    }
    builtins::prepare(rt, Some(old), &mut new)?;
    if rt.storage == crd_key() {
        prepare_crd(store, Some(old), &mut new, true)?;
    }
    meta::normalize(&mut new);
    if let Tracking::Update(manager) = tracking {
        let mut entries = fields::read_entries(&new);
        fields::track_update(
            &mut entries,
            manager,
            scope,
            &rt.api_version(),
            old,
            &new,
            &meta::now_rfc3339(),
        );
        fields::write_entries(&mut new, &entries);
    }
    if rt.tracks_generation() && spec_part(old) != spec_part(&new) {
        let g = old_meta(old, "generation")
            .and_then(|g| g.as_i64())
            .unwrap_or(0);
        set_meta(&mut new, "generation", Some((g + 1).into()));
    }
    if comparable(old) == comparable(&new) {
        return Ok(builtins::to_served(rt, old));
    }
    if dry_run {
        return Ok(builtins::to_served(rt, &new));
    }
    if rt.storage == crd_key() {
        prepare_crd(store, Some(old), &mut new, false)?;
    }
    if meta::is_deleting(&new) && meta::finalizers(&new).is_empty() && rt.plural != "namespaces" {
        let last = finish_delete(store, &rt.storage, meta::namespace(old), &name);
        return Ok(builtins::to_served(rt, last.as_deref().unwrap_or(&new)));
    }
    let rv = store.next_rv();
    set_meta(&mut new, "resourceVersion", Some(rv.to_string().into()));
    if meta::owner_uids(&new) != meta::owner_uids(old) || meta::is_deleting(&new) {
        store.gc_dirty = true;
    }
    let stored = store.put(&rt.storage, new, rv);
    Ok(builtins::to_served(rt, &stored))
}

/// Removes an object for good; deleting a CRD removes its types and objects.
pub fn finish_delete(
    store: &mut Store,
    storage: &StorageKey,
    ns: &str,
    name: &str,
) -> Option<Arc<Value>> {
    let last = store.remove(storage, ns, name)?;
    if *storage == crd_key()
        && let Ok(types) = crate::resources::crd_types(&last)
        && let Some(t) = types.first()
    {
        let key = t.storage.clone();
        store.registry.remove_storage(&key);
        store.drop_storage(&key);
    }
    store.gc_dirty = true;
    Some(last)
}

/// DELETE. Returns the object and whether it is gone (false: finalizers pending).
pub fn delete(
    store: &mut Store,
    rt: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    opts: &DeleteOpts,
) -> ApiResult<(Value, bool)> {
    let ns = ns_of(rt, ns);
    let old = store
        .get(&rt.storage, ns, name)
        .ok_or_else(|| ApiError::not_found(&rt.qualified(), name))?;
    if let Some(uid) = &opts.precondition_uid
        && uid != meta::uid(&old)
    {
        return Err(ApiError::Conflict {
            kind: rt.qualified(),
            name: name.into(),
        });
    }
    if let Some(rv) = &opts.precondition_rv
        && Some(rv.as_str()) != meta::meta_str(&old, "resourceVersion")
    {
        return Err(ApiError::Conflict {
            kind: rt.qualified(),
            name: name.into(),
        });
    }
    let mut finalizers = meta::finalizers(&old);
    let extra = match opts.propagation.as_deref() {
        Some("Orphan") => Some("orphan"),
        Some("Foreground") => Some("foregroundDeletion"),
        _ => None,
    };
    if let Some(f) = extra
        && !finalizers.iter().any(|x| x == f)
    {
        finalizers.push(f.to_string());
    }
    let is_namespace = rt.storage == namespaces_key();
    if finalizers.is_empty() && !is_namespace {
        if opts.dry_run {
            return Ok((builtins::to_served(rt, &old), true));
        }
        let last = finish_delete(store, &rt.storage, ns, name);
        return Ok((
            builtins::to_served(rt, last.as_deref().unwrap_or(&old)),
            true,
        ));
    }
    let mut new = (*old).clone();
    if !meta::is_deleting(&new) {
        set_meta(
            &mut new,
            "deletionTimestamp",
            Some(meta::now_rfc3339().into()),
        );
        set_meta(&mut new, "deletionGracePeriodSeconds", Some(0.into()));
    }
    set_meta(
        &mut new,
        "finalizers",
        Some(Value::Array(
            finalizers.into_iter().map(Value::from).collect(),
        )),
    );
    if is_namespace && let Some(m) = new.as_object_mut() {
        m.insert("status".into(), json!({"phase": "Terminating"}));
    }
    meta::normalize(&mut new);
    if comparable(&old) == comparable(&new) || opts.dry_run {
        return Ok((builtins::to_served(rt, &new), false));
    }
    let rv = store.next_rv();
    set_meta(&mut new, "resourceVersion", Some(rv.to_string().into()));
    store.gc_dirty = true;
    let stored = store.put(&rt.storage, new, rv);
    Ok((builtins::to_served(rt, &stored), false))
}

/// Server-internal update used by the garbage collector: replaces the
/// stored object (already modified by the caller) if it changed.
pub fn system_update(store: &mut Store, storage: &StorageKey, mut new: Value) {
    let ns = meta::namespace(&new).to_string();
    let name = meta::name(&new).to_string();
    let Some(old) = store.get(storage, &ns, &name) else {
        return;
    };
    meta::normalize(&mut new);
    if comparable(&old) == comparable(&new) {
        return;
    }
    if meta::is_deleting(&new) && meta::finalizers(&new).is_empty() {
        finish_delete(store, storage, &ns, &name);
        return;
    }
    let rv = store.next_rv();
    set_meta(&mut new, "resourceVersion", Some(rv.to_string().into()));
    store.put(storage, new, rv);
}
