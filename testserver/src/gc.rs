//! The garbage collector: ownerReference cascading (background, foreground
//! and orphan propagation) and namespace termination.
//!
//! Runs asynchronously like kube-controller-manager's GC: woken after writes
//! that may matter, it deletes dependents whose owners (by uid) are all
//! gone, strips references to owners deleted with `orphan`, completes
//! `foregroundDeletion`, and empties then removes terminating namespaces.
//! It never serves requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::admin::lock;
use crate::meta;
use crate::ops;
use crate::resources::StorageKey;
use crate::server::Shared;
use crate::store::Store;

/// Pause between passes so a burst of writes costs one scan, not one each.
const COALESCE: Duration = Duration::from_millis(20);
/// Upper bound on cascade passes per wake-up (each pass goes one level).
const MAX_PASSES: usize = 64;

pub async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shared.gc_notify.notified() => {}
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(COALESCE).await;
        for _ in 0..MAX_PASSES {
            let changed = {
                let mut store = lock(&shared.store);
                let created = std::mem::take(&mut store.gc_created);
                if std::mem::take(&mut store.gc_dirty) {
                    pass(&mut store)
                } else {
                    created_pass(&mut store, &created)
                }
            };
            if !changed {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Deletes an object the way a background-propagation DELETE would.
fn delete_object(store: &mut Store, storage: &StorageKey, obj: &Value) -> bool {
    let (ns, name) = (
        meta::namespace(obj).to_string(),
        meta::name(obj).to_string(),
    );
    if meta::is_deleting(obj) {
        return false;
    }
    if meta::finalizers(obj).is_empty() {
        ops::finish_delete(store, storage, &ns, &name).is_some()
    } else {
        let mut new = obj.clone();
        let md = meta::metadata_mut(&mut new);
        md.insert("deletionTimestamp".into(), meta::now_rfc3339().into());
        md.insert("deletionGracePeriodSeconds".into(), 0.into());
        ops::system_update(store, storage, new);
        true
    }
}

fn without_finalizer(obj: &Value, finalizer: &str) -> Value {
    let mut new = obj.clone();
    let kept: Vec<Value> = meta::finalizers(obj)
        .into_iter()
        .filter(|f| f != finalizer)
        .map(Value::from)
        .collect();
    meta::metadata_mut(&mut new).insert("finalizers".into(), Value::Array(kept));
    new
}

/// The objects created with owners since the last pass: deleted when none
/// of their owners exists (created after the owner was deleted, as the real
/// garbage collector would). Returns whether anything changed.
pub fn created_pass(store: &mut Store, created: &[(StorageKey, String, String)]) -> bool {
    let mut changed = false;
    for (storage, ns, name) in created {
        let Some(obj) = store.get(storage, ns, name) else {
            continue;
        };
        let owners = meta::owner_uids(&obj);
        if !owners.is_empty() && owners.iter().all(|u| !store.uid_exists(u)) {
            changed |= delete_object(store, storage, &obj);
        }
    }
    changed
}

/// One GC pass. Returns whether anything changed.
pub fn pass(store: &mut Store) -> bool {
    let mut all: Vec<(StorageKey, Arc<Value>)> = Vec::new();
    for storage in store.storages() {
        for obj in store.list(&storage, None, None) {
            all.push((storage.clone(), obj));
        }
    }
    let mut dependents: HashMap<String, Vec<(StorageKey, Arc<Value>)>> = HashMap::new();
    for (storage, obj) in &all {
        for uid in meta::owner_uids(obj) {
            dependents
                .entry(uid)
                .or_default()
                .push((storage.clone(), obj.clone()));
        }
    }
    let mut changed = false;

    // Dependents whose owners are all gone.
    for (storage, obj) in &all {
        let owners = meta::owner_uids(obj);
        if !owners.is_empty() && owners.iter().all(|u| !store.uid_exists(u)) {
            changed |= delete_object(store, storage, obj);
        }
    }

    // Owners being deleted with orphan / foreground propagation.
    for (storage, owner) in &all {
        if !meta::is_deleting(owner) {
            continue;
        }
        let finalizers = meta::finalizers(owner);
        let uid = meta::uid(owner).to_string();
        let deps = dependents.get(&uid).cloned().unwrap_or_default();
        if finalizers.iter().any(|f| f == "orphan") {
            for (dstorage, dep) in &deps {
                let Some(current) = store.get(dstorage, meta::namespace(dep), meta::name(dep))
                else {
                    continue;
                };
                let mut new = (*current).clone();
                if let Some(Value::Array(refs)) = new.pointer_mut("/metadata/ownerReferences") {
                    refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                }
                ops::system_update(store, dstorage, new);
            }
            if let Some(current) = store.get(storage, meta::namespace(owner), meta::name(owner)) {
                ops::system_update(store, storage, without_finalizer(&current, "orphan"));
            }
            changed = true;
        } else if finalizers.iter().any(|f| f == "foregroundDeletion") {
            let live: Vec<_> = deps
                .iter()
                .filter(|(s, d)| store.get(s, meta::namespace(d), meta::name(d)).is_some())
                .collect();
            if live.is_empty() {
                if let Some(current) = store.get(storage, meta::namespace(owner), meta::name(owner))
                {
                    ops::system_update(
                        store,
                        storage,
                        without_finalizer(&current, "foregroundDeletion"),
                    );
                    changed = true;
                }
            } else {
                for (s, d) in live {
                    changed |= delete_object(store, s, d);
                }
            }
        }
    }

    // Terminating namespaces: delete their content, then the namespace.
    let ns_key = StorageKey {
        group: String::new(),
        plural: "namespaces".into(),
    };
    for (storage, ns_obj) in &all {
        if *storage != ns_key || !meta::is_deleting(ns_obj) {
            continue;
        }
        let ns = meta::name(ns_obj).to_string();
        let mut remaining = 0;
        for s in store.storages() {
            if s == ns_key {
                continue;
            }
            for obj in store.list(&s, Some(&ns), None) {
                remaining += 1;
                changed |= delete_object(store, &s, &obj);
            }
        }
        if remaining == 0 && meta::finalizers(ns_obj).is_empty() {
            ops::finish_delete(store, &ns_key, "", &ns);
            changed = true;
        }
    }
    changed
}
