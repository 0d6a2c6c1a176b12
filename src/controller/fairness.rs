//! Fairness between namespaces: one tenant's slow or failing resources must
//! never hold every worker.
//!
//! # Namespace slots
//! The open stage (the only one that can wait on KMS) takes a slot of its
//! namespace's share: half the workers (`--max-workers-per-namespace`), of
//! which half for resources whose last attempt failed. A reconcile whose
//! data key is cached needs no slot.
//!
//! # Parking
//! A reconcile that finds its namespace's share taken is *parked* under its
//! namespace (FIFO) and under the data key it waits for (the cache keys of
//! its copies), and triggered at once through the controller's trigger
//! stream when
//! - a reconcile of its namespace leaves the KMS stage: the oldest parked
//!   one may take the freed slot, and
//! - its data key arrives in the cache: every resource parked for it now
//!   opens without KMS.
//!
//! A requeue after [`BACKSTOP`] is the safety net (a wake-up that finds the
//! share taken again parks the resource anew). A woken resource still needs
//! a free slot to reach KMS, so a stalled tenant holds no more workers than
//! its share. Measured effect on a 10,000-resource cold start:
//! `docs/tuning.md`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use super::State;
use super::watched::Watched;
use crate::kms::cache::CacheKey;
use crate::sync::LockExt;

/// How soon a parked reconcile looks again if no wake-up came first.
pub const BACKSTOP: Duration = Duration::from_secs(10);

type Ref = ObjectRef<Watched>;

/// The parked reconciles of one controller scope.
pub struct Parked {
    queues: Mutex<Queues>,
    wake: mpsc::UnboundedSender<Ref>,
}

/// Both indexes are lazy: an entry whose object was already woken through
/// the other one is skipped (and dropped) when reached; [`Parked::compact`]
/// drops the rest. One parked object is one shared allocation, whichever
/// indexes hold it (a cold start parks thousands at once).
#[derive(Default)]
struct Queues {
    parked: HashSet<Arc<Ref>>,
    by_ns: HashMap<String, VecDeque<Arc<Ref>>>,
    by_key: HashMap<CacheKey, Vec<Arc<Ref>>>,
}

impl Parked {
    /// The parking lot and the stream of wake-ups to merge into the
    /// controller's triggers.
    pub fn new() -> (Parked, mpsc::UnboundedReceiver<Ref>) {
        let (wake, rx) = mpsc::unbounded();
        (
            Parked {
                queues: Mutex::default(),
                wake,
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock_or_recover()
    }

    /// Reconcile `obj` now, through the same trigger stream (a key it
    /// depends on changed state).
    pub fn trigger(&self, obj: Ref) {
        let _ = self.wake.unbounded_send(obj);
    }

    /// Park `obj`, waiting for a slot of its namespace or for any of `keys`
    /// (parking it again while parked keeps its place).
    pub fn park(&self, obj: Ref, keys: &[CacheKey]) {
        let mut q = self.lock();
        if q.parked.contains(&obj) {
            return;
        }
        let obj = Arc::new(obj);
        if !q.parked.insert(obj.clone()) {
            return;
        }
        for k in keys {
            q.by_key.entry(*k).or_default().push(obj.clone());
        }
        let ns = obj.namespace.clone().unwrap_or_default();
        q.by_ns.entry(ns).or_default().push_back(obj);
    }

    /// A slot of `ns` is free: trigger its oldest parked reconcile, if any.
    /// Returns whether one was woken.
    pub fn wake_one(&self, ns: &str) -> bool {
        let obj = {
            let mut q = self.lock();
            let Queues { parked, by_ns, .. } = &mut *q;
            let Some(queue) = by_ns.get_mut(ns) else {
                return false;
            };
            let mut found = None;
            while let Some(o) = queue.pop_front() {
                if parked.remove(&o) {
                    found = Some(o);
                    break;
                }
            }
            if queue.is_empty() {
                by_ns.remove(ns);
            }
            let Some(obj) = found else { return false };
            obj
        };
        self.send(Arc::unwrap_or_clone(obj))
    }

    /// One of `keys` is now cached: trigger every reconcile parked for it.
    /// Returns how many.
    pub fn arrived(&self, keys: &[CacheKey]) -> usize {
        let woken: Vec<Arc<Ref>> = {
            let mut q = self.lock();
            let Queues { parked, by_key, .. } = &mut *q;
            keys.iter()
                .filter_map(|k| by_key.remove(k))
                .flatten()
                .filter(|o| parked.remove(o))
                .collect()
        };
        woken
            .into_iter()
            .filter(|o| self.send(Ref::clone(o)))
            .count()
    }

    /// A closed receiver (the scope stopped) leaves the backstop requeue.
    fn send(&self, obj: Ref) -> bool {
        self.wake.unbounded_send(obj).is_ok()
    }

    /// Forget parked objects that are gone (`live` says no) and index
    /// entries of objects no longer parked (housekeeping).
    pub fn compact(&self, live: impl Fn(&Ref) -> bool) {
        let mut q = self.lock();
        let Queues {
            parked,
            by_ns,
            by_key,
        } = &mut *q;
        parked.retain(|o| live(o));
        by_ns.retain(|_, v| {
            v.retain(|o| parked.contains(o));
            !v.is_empty()
        });
        by_key.retain(|_, v| {
            v.retain(|o| parked.contains(o));
            !v.is_empty()
        });
    }

    /// Parked reconciles right now (metrics, tests).
    pub fn len(&self) -> usize {
        self.lock().parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index entries (live and stale), for tests.
    pub fn index_len(&self) -> usize {
        let q = self.lock();
        q.by_ns.values().map(VecDeque::len).sum::<usize>()
            + q.by_key.values().map(Vec::len).sum::<usize>()
    }
}

/// A held slot of a namespace's share (see [`State::namespace_slot`]);
/// released on drop.
pub struct NamespaceSlot<'a> {
    slots: &'a Mutex<HashMap<String, (usize, usize)>>,
    ns: String,
    failing: bool,
}

impl Drop for NamespaceSlot<'_> {
    fn drop(&mut self) {
        let mut slots = self.slots.lock_or_recover();
        if let Some(n) = slots.get_mut(&self.ns) {
            n.0 = n.0.saturating_sub(1);
            if self.failing {
                n.1 = n.1.saturating_sub(1);
            }
            if *n == (0, 0) {
                slots.remove(&self.ns);
            }
        }
    }
}

impl State {
    /// Workers one namespace may hold in the open (KMS) stage at once
    /// (`--max-workers-per-namespace`, default half of `--concurrency`), and
    /// the share of those its failing resources may hold (half again, at
    /// least one).
    pub fn namespace_shares(&self) -> (usize, usize) {
        let all = self
            .cfg
            .max_workers_per_namespace
            .unwrap_or(usize::from(self.cfg.concurrency) / 2)
            .max(1);
        (all, (all / 2).max(1))
    }

    /// A slot in `ns`'s share of the open stage (`failing`: the object's
    /// last attempt failed), or `None` when the share is taken.
    pub fn namespace_slot(&self, ns: &str, failing: bool) -> Option<NamespaceSlot<'_>> {
        let (all_max, failing_max) = self.namespace_shares();
        let mut slots = self.namespace_slots.lock_or_recover();
        let n = slots.entry(ns.to_string()).or_default();
        if n.0 >= all_max || (failing && n.1 >= failing_max) {
            if *n == (0, 0) {
                slots.remove(ns);
            }
            return None;
        }
        n.0 += 1;
        if failing {
            n.1 += 1;
        }
        Some(NamespaceSlot {
            slots: &self.namespace_slots,
            ns: ns.to_string(),
            failing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn r(ns: &str, name: &str) -> Ref {
        ObjectRef::new(name).within(ns)
    }

    const K1: CacheKey = [1; 32];
    const K2: CacheKey = [2; 32];

    #[tokio::test]
    async fn a_free_slot_wakes_the_oldest_of_its_namespace_and_parking_is_once() {
        let (p, mut rx) = Parked::new();
        p.park(r("a", "1"), &[K1]);
        p.park(r("b", "x"), &[K1]);
        p.park(r("a", "2"), &[K2]);
        p.park(r("a", "1"), &[K1]); // again: keeps its place, no duplicate
        assert_eq!(p.len(), 3);
        assert!(p.wake_one("a"));
        assert_eq!(rx.next().await.unwrap(), r("a", "1"));
        assert!(p.wake_one("a"));
        assert_eq!(rx.next().await.unwrap(), r("a", "2"));
        assert!(!p.wake_one("a"), "namespace a has nothing parked");
        assert_eq!(p.len(), 1, "namespace b untouched");
        assert!(p.wake_one("b"));
        assert_eq!(rx.next().await.unwrap(), r("b", "x"));
        assert!(p.is_empty());
        // parked again after its wake-up: queued again
        p.park(r("a", "1"), &[K1]);
        assert_eq!(p.len(), 1);
    }

    #[tokio::test]
    async fn an_arrived_key_wakes_everyone_waiting_for_it_in_every_namespace() {
        let (p, mut rx) = Parked::new();
        p.park(r("a", "1"), &[K1]);
        p.park(r("a", "2"), &[K2]);
        p.park(r("b", "3"), &[K2, K1]); // two copies: either key will do
        assert_eq!(p.arrived(&[K1]), 2);
        let mut got = vec![rx.next().await.unwrap(), rx.next().await.unwrap()];
        got.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(got, vec![r("a", "1"), r("b", "3")]);
        assert_eq!(p.len(), 1);
        // b/3 was woken through K1: K2 wakes only a/2
        assert_eq!(p.arrived(&[K2]), 1);
        assert_eq!(rx.next().await.unwrap(), r("a", "2"));
        // the namespace queues only hold stale entries now: skipped
        assert!(!p.wake_one("a"));
        assert!(!p.wake_one("b"));
        assert_eq!(p.arrived(&[K1, K2]), 0);
    }

    #[test]
    fn compact_drops_what_was_woken_through_the_other_index() {
        let (p, _rx) = Parked::new();
        for i in 0..100 {
            p.park(r("a", &i.to_string()), &[K1]);
        }
        p.park(r("a", "never"), &[K2]);
        assert_eq!(p.arrived(&[K1]), 100);
        p.park(r("a", "deleted"), &[K2]);
        assert!(p.index_len() > 100, "stale namespace entries remain");
        p.compact(|o| o.name != "deleted");
        assert_eq!(p.len(), 1, "the deleted object is forgotten");
        assert_eq!(p.index_len(), 2, "one live object, in both indexes");
    }

    #[test]
    fn a_stopped_scope_drops_wake_ups() {
        let (p, rx) = Parked::new();
        drop(rx);
        p.park(r("a", "1"), &[K1]);
        assert!(!p.wake_one("a"));
        assert!(p.is_empty());
    }
}
