//! The paced feed: how a whole store reaches the workers after a list.
//!
//! kube-runtime's controller takes every trigger as it comes and keeps it
//! in its scheduler until a worker is free: a hash-map entry, a delay-queue
//! entry and a pending-set entry, each with a copy of the object reference
//! (four strings). A list of N resources triggered at once therefore made
//! the scheduler hold N of each — at 10,000 resources a 6.8 MiB peak of
//! hash tables alone, which never shrink afterwards, growing linearly
//! with N.
//!
//! So a list triggers nothing by itself (`scope_controller`, and
//! `watch::RelistExt` for the owned Secrets); once it is done, the
//! [`Feed`] walks the store and triggers its resources through
//! the scope's trigger stream no faster than reconciles finish: at most
//! [`Feed::bound`] are outstanding (twice `--concurrency`: every worker has
//! its next resource waiting). The cold start does the same work in the same
//! order of arrival; the scheduler holds dozens of entries, not N.
//!
//! A reconcile deferred for its namespace's KMS share (parked, see
//! [`super::fairness`]) keeps its place until it is woken and done: a cold
//! start of N resources behind a few data keys parks at most
//! [`Feed::bound`] of them, not N (measured at 100,000 resources over
//! 10,000 data keys before this: 79,750 deferrals, each parked and
//! requeued, and a 339 MiB peak).
//!
//! The store is fed grouped by data key ([`by_data_key`]): resources
//! sharing one follow each other, so one unwrap serves the group while its
//! places are taken, and the KMS calls spread over the whole cold start
//! instead of filling every place at its beginning.
//!
//! A trigger can end in no reconcile of its own (the resource was deleted
//! meanwhile, or merged with one already queued): the feed then waits at
//! most [`STALL`] for a finished reconcile before it goes on, so a lost
//! permit slows it for a moment and never stops it.

use std::sync::Arc;
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Semaphore, watch};

use super::fairness::Parked;
use super::watched::Watched;

/// How long the feed waits for a reconcile to finish before it triggers
/// the next resource anyway.
pub const STALL: Duration = Duration::from_millis(500);

/// Paces the triggers of a whole store (see the module docs).
pub struct Feed {
    permits: Semaphore,
    bound: usize,
    /// Whole stores fed so far (see [`Feed::fed`]).
    fed: watch::Sender<u64>,
}

impl Feed {
    /// A feed keeping at most `bound` (at least 1) triggers outstanding.
    pub fn new(bound: usize) -> Feed {
        let bound = bound.max(1);
        Feed {
            permits: Semaphore::new(bound),
            bound,
            fed: watch::Sender::new(0),
        }
    }

    /// Resolves once a whole listed store has been fed (every resource
    /// triggered). The resync sweep starts its first interval then: the
    /// first feed already reconciles everything once, and a sweep running
    /// beside it during a long cold start triggered half of the resources
    /// a second time (measured at 100,000 resources: 155,174 reconciles).
    pub async fn fed(&self) {
        let mut rx = self.fed.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// Triggers outstanding at most.
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// A reconcile finished: one more resource may be triggered.
    pub fn done(&self) {
        if self.permits.available_permits() < self.bound {
            self.permits.add_permits(1);
        }
    }

    /// Wait for a free place (at most [`STALL`]) and take it.
    async fn take(&self) {
        if let Ok(Ok(p)) = tokio::time::timeout(STALL, self.permits.acquire()).await {
            p.forget();
        }
    }

    /// Trigger every resource of `store` through `parked`'s trigger stream,
    /// paced, grouped by data key (see [`by_data_key`]); returns how many.
    /// The store is read once, up front (each object is let go as it is
    /// triggered).
    pub async fn feed(&self, store: &Store<Watched>, parked: &Parked) -> usize {
        let refs = by_data_key(store.state())
            .into_iter()
            .filter_map(|obj| reference(&obj));
        let n = self.feed_refs(refs, parked).await;
        self.fed.send_modify(|f| *f += 1);
        n
    }

    /// Trigger `refs` through `parked`'s trigger stream, paced; returns how
    /// many.
    pub async fn feed_refs(
        &self,
        refs: impl IntoIterator<Item = ObjectRef<Watched>>,
        parked: &Parked,
    ) -> usize {
        let mut n = 0;
        for r in refs {
            self.take().await;
            parked.trigger(r);
            n += 1;
        }
        n
    }
}

/// `objs` ordered so that resources sharing a data key are next to each
/// other ([`Watched::data_key_group`]); the groups themselves in a hash
/// order, which interleaves namespaces and providers.
///
/// Why: the feed keeps at most [`Feed::bound`] resources outstanding, and a
/// resource whose data key is not cached holds its place until KMS (rate
/// limited) has unwrapped it. In store order (random) nearly every resource
/// at the start of a cold start needs a data key of its own, so the
/// outstanding places fill with KMS waits and resources whose key is
/// already cached cannot pass them: the start runs at the KMS quota, not
/// at the API server's speed. Grouped, the first resource of a group
/// unwraps its data key and the rest of the group finds it cached; the KMS
/// calls spread evenly over the whole cold start (a group per place).
/// Resources with a data key each see no change.
pub fn by_data_key(objs: Vec<Arc<Watched>>) -> Vec<Arc<Watched>> {
    let mut objs = objs;
    // one spec read per object (not one per comparison)
    objs.sort_by_cached_key(|o| o.data_key_group());
    objs
}

/// A watched object's name and namespace as a trigger (no uid or
/// resourceVersion copied: triggers compare by name and namespace).
pub fn reference(obj: &Watched) -> Option<ObjectRef<Watched>> {
    let md = obj.meta();
    let r = ObjectRef::new(md.name.as_deref()?);
    Some(match md.namespace.as_deref() {
        Some(ns) => r.within(ns),
        None => r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn obj(name: &str) -> Watched {
        let es = crate::api::EncryptedSecret {
            metadata: kube::core::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: serde_json::from_value(serde_json::json!({
                "dataKeys": [], "encryptedData": {}
            }))
            .unwrap_or_else(|e| panic!("spec: {e}")),
            status: None,
        };
        Watched::new(&es)
    }

    fn sharing(name: &str, ns: &str, ciphertext: &str) -> Watched {
        let es = crate::api::EncryptedSecret {
            metadata: kube::core::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: serde_json::from_value(serde_json::json!({
                "dataKeys": [
                    {"provider": "aws-kms", "keyId": "arn:aws:kms:eu-west-1:111122223333:key/k", "ciphertext": ciphertext},
                    {"provider": "aws-kms", "keyId": "arn:aws:kms:eu-west-1:111122223333:key/other", "ciphertext": format!("{ciphertext}-2")},
                ],
                "encryptedData": {"v": "x"}
            }))
            .unwrap_or_else(|e| panic!("spec: {e}")),
            status: None,
        };
        Watched::new(&es)
    }

    #[test]
    fn the_store_is_fed_grouped_by_data_key() {
        // 4 data keys × 5 resources each, interleaved; two namespaces share
        // one ciphertext (their encryption contexts differ: two data keys)
        let mut objs = Vec::new();
        for i in 0..20 {
            let (ns, ct) = match i % 4 {
                3 => ("other", "ct-0".to_string()),
                k => ("ns", format!("ct-{k}")),
            };
            objs.push(Arc::new(sharing(&format!("o{i:02}"), ns, &ct)));
        }
        let group = |o: &Watched| {
            let md = o.meta();
            format!(
                "{}/{}",
                md.namespace.as_deref().unwrap_or(""),
                md.name
                    .as_deref()
                    .map_or(0, |n| n[1..].parse::<u32>().unwrap_or(0) % 4)
            )
        };
        let fed: Vec<String> = by_data_key(objs.clone()).iter().map(|o| group(o)).collect();
        assert_eq!(fed.len(), 20);
        let mut runs = fed.clone();
        runs.dedup();
        assert_eq!(runs.len(), 4, "each data key's resources together: {fed:?}");
        // the same store feeds in the same order
        let again: Vec<String> = by_data_key(objs).iter().map(|o| group(o)).collect();
        assert_eq!(fed, again);
        // a released resource (no data key needed) and one without a
        // readable spec are fed too
        let released = sharing("r", "ns", "ct-1");
        released.release(super::super::watched::Facts::default());
        assert_eq!(released.data_key_group(), 0);
        assert_ne!(sharing("a", "ns", "ct-1").data_key_group(), 0);
        assert_eq!(obj("empty").data_key_group(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_feed_keeps_at_most_its_bound_outstanding_and_never_stops() {
        let (store, mut writer) = reflector::store::<Watched>();
        writer.apply_watcher_event(&Event::Init);
        for i in 0..10 {
            writer.apply_watcher_event(&Event::InitApply(obj(&format!("o{i}"))));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let (parked, mut wakes) = Parked::new();
        let feed = std::sync::Arc::new(Feed::new(3));
        let run = {
            let (feed, store) = (feed.clone(), store.clone());
            tokio::spawn(async move { feed.feed(&store, &parked).await })
        };
        let fed = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.fed().await })
        };
        // three go out at once, then nothing while no reconcile finishes
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(wakes.next().await);
        }
        tokio::time::sleep(STALL / 2).await;
        assert!(wakes.try_recv().is_err(), "a fourth before any finished");
        // each finished reconcile lets one more go
        feed.done();
        got.push(wakes.next().await);
        tokio::time::sleep(STALL / 4).await;
        assert!(wakes.try_recv().is_err());
        assert!(
            !fed.is_finished(),
            "fed before every resource was triggered"
        );
        // a trigger that never finishes stalls the feed for STALL at most
        let total = run.await.unwrap_or_else(|e| panic!("feed: {e}"));
        assert_eq!(total, 10);
        tokio::time::timeout(Duration::from_secs(1), fed)
            .await
            .unwrap_or_else(|_| panic!("fed() did not resolve after the feed"))
            .unwrap_or_else(|e| panic!("fed: {e}"));
        while let Ok(r) = wakes.try_recv() {
            got.push(Some(r));
        }
        let mut names: Vec<_> = got.into_iter().flatten().map(|r| r.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 10, "every resource once: {names:?}");
        // more done() than were fed never raises the bound
        for _ in 0..10 {
            feed.done();
        }
        assert_eq!(feed.permits.available_permits(), feed.bound());
    }
}
