//! Reconciles deferred because their namespace's KMS share was taken, and
//! the wake-up that brings them back as soon as a worker of that namespace
//! is free.
//!
//! A deferred reconcile used to look again after a fixed 2 s. On a cold
//! start of one large namespace that was both slow and wasteful: thousands
//! of resources came back in 2-second waves (the KMS slots sat idle between
//! waves while the rate limiter had room) and each wave re-ran the cheap
//! stages of every one of them — 29,580 deferred reconciles for 10,000
//! resources (`examples/scale_real`). Now a deferred resource is *parked*
//! in its namespace's FIFO and, whenever a reconcile of that namespace
//! finishes (a worker of its share is free again), the oldest parked one is
//! triggered at once through the controller's trigger stream. The requeue
//! after [`BACKSTOP`] stays as the safety net (a wake-up that finds the share
//! taken again parks the resource at the back).
//!
//! The share bound is unchanged: a woken resource still needs a free slot
//! to reach KMS, so a stalled tenant holds no more workers than before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use super::reconcile::Watched;

/// How soon a parked reconcile looks again if no wake-up came first.
pub const BACKSTOP: Duration = Duration::from_secs(5);

/// The parked reconciles of one controller scope.
pub struct Parked {
    queues: Mutex<Queues>,
    wake: mpsc::UnboundedSender<ObjectRef<Watched>>,
}

#[derive(Default)]
struct Queues {
    by_ns: HashMap<String, VecDeque<ObjectRef<Watched>>>,
    parked: HashSet<ObjectRef<Watched>>,
}

impl Parked {
    /// The parking lot and the stream of wake-ups to merge into the
    /// controller's triggers.
    pub fn new() -> (Parked, mpsc::UnboundedReceiver<ObjectRef<Watched>>) {
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
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Park `obj` (once; parking it again keeps its place).
    pub fn park(&self, obj: ObjectRef<Watched>) {
        let mut q = self.lock();
        if q.parked.insert(obj.clone()) {
            let ns = obj.namespace.clone().unwrap_or_default();
            q.by_ns.entry(ns).or_default().push_back(obj);
        }
    }

    /// A worker of `ns` is free: trigger its oldest parked reconcile, if
    /// any. Returns whether one was woken.
    pub fn wake_one(&self, ns: &str) -> bool {
        let obj = {
            let mut q = self.lock();
            let Some(queue) = q.by_ns.get_mut(ns) else {
                return false;
            };
            let obj = queue.pop_front();
            if queue.is_empty() {
                q.by_ns.remove(ns);
            }
            let Some(obj) = obj else { return false };
            q.parked.remove(&obj);
            obj
        };
        // A closed receiver (the scope stopped) leaves the backstop requeue.
        self.wake.unbounded_send(obj).is_ok()
    }

    /// Parked reconciles right now (metrics, tests).
    pub fn len(&self) -> usize {
        self.lock().parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn r(ns: &str, name: &str) -> ObjectRef<Watched> {
        ObjectRef::new(name).within(ns)
    }

    #[tokio::test]
    async fn wakes_oldest_first_per_namespace_and_parks_once() {
        let (p, mut rx) = Parked::new();
        p.park(r("a", "1"));
        p.park(r("b", "x"));
        p.park(r("a", "2"));
        p.park(r("a", "1")); // again: keeps its place, no duplicate
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
        p.park(r("a", "1"));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_stopped_scope_drops_wake_ups() {
        let (p, rx) = Parked::new();
        drop(rx);
        p.park(r("a", "1"));
        assert!(!p.wake_one("a"));
        assert!(p.is_empty());
    }
}
