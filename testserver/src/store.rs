//! The object store: objects by storage key / namespace / name, the global
//! resourceVersion counter, the uid index and the bounded watch-event log.
//!
//! # Guarantees
//! - Every committed change gets a fresh, strictly increasing resourceVersion
//!   and exactly one watch event, appended to the log and broadcast while the
//!   store lock is held, so a watcher that subscribes under the same lock
//!   never misses or duplicates an event.
//! - It never interprets object semantics (finalizers, managedFields,
//!   subresources); `ops` does that and calls `put` / `remove` here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::meta;
use crate::resources::{Registry, StorageKey};

/// Default number of events kept for watch resumption. Sized so a watcher
/// can resume after a dropped stream during a 20k-object load test while the
/// log itself stays a few MB (events share their objects with the store).
pub const DEFAULT_LOG_CAPACITY: usize = 50_000;

/// Broadcast ring size. A watcher that falls this far behind gets an
/// in-stream 410, as it would from a real apiserver's watch cache.
const BROADCAST_CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed change.
#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub storage: StorageKey,
    pub kind: EventType,
    /// The object after the change (for DELETED: its last state, new rv).
    pub object: Arc<Value>,
    /// The object before the change, for selector transitions.
    pub prev: Option<Arc<Value>>,
}

/// Something the broadcast channel carries: a change, or a control signal.
#[derive(Debug, Clone)]
pub enum Signal {
    Event(Arc<WatchEvent>),
    /// Fault injection: end every open watch with an in-stream 410.
    Expire,
    /// Fault injection: abort every open watch connection.
    Drop,
}

pub type ObjKey = (String, String);

pub struct Store {
    rv: u64,
    pub registry: Registry,
    objects: HashMap<StorageKey, BTreeMap<ObjKey, Arc<Value>>>,
    uids: HashMap<String, (StorageKey, ObjKey)>,
    log: VecDeque<Arc<WatchEvent>>,
    log_capacity: usize,
    /// Watches may resume from any rv >= floor.
    floor: u64,
    tx: broadcast::Sender<Signal>,
    /// Set by writes that need a full garbage-collector pass (a deletion,
    /// an owner being deleted, references that changed).
    pub gc_dirty: bool,
    /// Objects created with ownerReferences since the last pass: only
    /// these need looking at (do their owners exist?), not every object.
    /// A cold start of 10,000 owned Secrets used to cost a full scan of the
    /// store every 20 ms.
    pub gc_created: Vec<(StorageKey, String, String)>,
}

impl Store {
    pub fn new(log_capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Store {
            rv: 1,
            registry: Registry::with_builtins(),
            objects: HashMap::new(),
            uids: HashMap::new(),
            log: VecDeque::new(),
            log_capacity: log_capacity.max(1),
            floor: 1,
            tx,
            gc_dirty: false,
            gc_created: Vec::new(),
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.tx.subscribe()
    }

    pub fn signal(&self, s: Signal) {
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(s);
    }

    /// Forgets the event log: every watch resuming from an older rv gets 410.
    pub fn compact(&mut self) {
        self.log.clear();
        self.floor = self.rv;
    }

    pub fn get(&self, storage: &StorageKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(storage)?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn uid_exists(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    /// Objects of a storage, optionally in one namespace, in (ns, name) order,
    /// starting strictly after `after` when given (list pagination).
    pub fn list(
        &self,
        storage: &StorageKey,
        ns: Option<&str>,
        after: Option<&ObjKey>,
    ) -> Vec<Arc<Value>> {
        let Some(map) = self.objects.get(storage) else {
            return vec![];
        };
        let iter: Box<dyn Iterator<Item = (&ObjKey, &Arc<Value>)>> = match (ns, after) {
            (_, Some(after)) => Box::new(map.range::<ObjKey, _>((
                std::ops::Bound::Excluded(after.clone()),
                std::ops::Bound::Unbounded,
            ))),
            (Some(ns), None) => Box::new(map.range::<ObjKey, _>((ns.to_string(), String::new())..)),
            (None, None) => Box::new(map.iter()),
        };
        iter.take_while(|((n, _), _)| ns.is_none_or(|ns| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// All storages that have objects (for the garbage collector).
    pub fn storages(&self) -> Vec<StorageKey> {
        self.objects.keys().cloned().collect()
    }

    pub fn count(&self, storage: &StorageKey) -> usize {
        self.objects.get(storage).map_or(0, BTreeMap::len)
    }

    /// Allocates the next resourceVersion.
    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, ev: WatchEvent) {
        let ev = Arc::new(ev);
        self.log.push_back(ev.clone());
        while self.log.len() > self.log_capacity {
            if let Some(old) = self.log.pop_front() {
                self.floor = old.rv;
            }
        }
        self.signal(Signal::Event(ev));
    }

    /// Stores `obj` (whose metadata.resourceVersion must already be `rv`)
    /// and emits ADDED or MODIFIED.
    pub fn put(&mut self, storage: &StorageKey, obj: Value, rv: u64) -> Arc<Value> {
        let key = (
            meta::namespace(&obj).to_string(),
            meta::name(&obj).to_string(),
        );
        let uid = meta::uid(&obj).to_string();
        let obj = Arc::new(obj);
        let prev = self
            .objects
            .entry(storage.clone())
            .or_default()
            .insert(key.clone(), obj.clone());
        self.uids.insert(uid, (storage.clone(), key));
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(WatchEvent {
            rv,
            storage: storage.clone(),
            kind,
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Removes an object, emitting DELETED with its last state at a new rv.
    pub fn remove(&mut self, storage: &StorageKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        let key = (ns.to_string(), name.to_string());
        let prev = self.objects.get_mut(storage)?.remove(&key)?;
        self.uids.remove(meta::uid(&prev));
        let rv = self.next_rv();
        let mut last = (*prev).clone();
        meta::metadata_mut(&mut last).insert("resourceVersion".into(), rv.to_string().into());
        let last = Arc::new(last);
        self.record(WatchEvent {
            rv,
            storage: storage.clone(),
            kind: EventType::Deleted,
            object: last.clone(),
            prev: Some(prev),
        });
        Some(last)
    }

    /// Events with rv > `since` for a storage, or `None` when `since` is
    /// older than the log keeps (the caller answers 410 Expired).
    pub fn events_since(&self, storage: &StorageKey, since: u64) -> Option<Vec<Arc<WatchEvent>>> {
        if since < self.floor {
            return None;
        }
        let start = self.log.partition_point(|e| e.rv <= since);
        Some(
            self.log
                .range(start..)
                .filter(|e| e.storage == *storage)
                .cloned()
                .collect(),
        )
    }

    /// Removes every object of a storage (its CRD was deleted).
    pub fn drop_storage(&mut self, storage: &StorageKey) {
        let keys: Vec<ObjKey> = self
            .objects
            .get(storage)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for (ns, name) in keys {
            self.remove(storage, &ns, &name);
        }
        self.objects.remove(storage);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> StorageKey {
        StorageKey {
            group: String::new(),
            plural: "secrets".into(),
        }
    }

    #[test]
    fn list_by_namespace_and_after() {
        let mut s = Store::new(10);
        for (ns, n) in [("a", "x"), ("b", "y"), ("b", "z"), ("c", "w")] {
            let rv = s.next_rv();
            s.put(
                &key(),
                json!({"metadata": {"namespace": ns, "name": n, "uid": format!("{ns}{n}"), "resourceVersion": rv.to_string()}}),
                rv,
            );
        }
        assert_eq!(s.list(&key(), Some("b"), None).len(), 2);
        assert_eq!(s.list(&key(), None, None).len(), 4);
        let after = ("b".to_string(), "y".to_string());
        assert_eq!(s.list(&key(), Some("b"), Some(&after)).len(), 1);
        assert_eq!(s.list(&key(), None, Some(&after)).len(), 2);
    }

    #[test]
    fn log_is_bounded_and_floor_moves() {
        let mut s = Store::new(2);
        for i in 0..5 {
            let rv = s.next_rv();
            s.put(
                &key(),
                json!({"metadata": {"namespace": "a", "name": format!("n{i}"), "uid": i.to_string()}}),
                rv,
            );
        }
        assert!(s.events_since(&key(), 1).is_none());
        let evs = s.events_since(&key(), s.floor()).expect("within log");
        assert_eq!(evs.len(), 2);
        s.compact();
        assert!(s.events_since(&key(), s.current_rv() - 1).is_none());
        assert_eq!(
            s.events_since(&key(), s.current_rv()).map(|v| v.len()),
            Some(0)
        );
    }
}
