//! The periodic resync (`--resync-interval`), without a timer per object.
//!
//! A successful reconcile used to end in `Action::requeue(resync)`: every
//! synced resource then held an entry in kube-runtime's scheduler (a
//! `DelayQueue` slot, a hash-map entry and a cloned `ObjectRef` with four
//! strings) for as long as the controller ran — measured at 10,000
//! resources as ~6.5 MiB of the heap, the largest cost after the watch
//! stores themselves, and it grows with every resource.
//!
//! Instead a synced resource now awaits a change, and one sweep per
//! controller triggers every stored resource once per interval: the
//! interval is cut into at most [`MAX_SLOTS`] ticks, each resource belongs
//! to one tick by a hash of its uid (salted per process, so replicas and
//! restarts do not line up), and each tick triggers its resources through
//! the scope's trigger stream (the one parked reconciles use), paced by
//! finished reconciles like a listed store ([`super::feed`]). A resync
//! therefore costs the same reconcile as before — nothing at all for a
//! resource in sync — spread evenly over the interval, and no memory per
//! resource between sweeps.
//!
//! Failures keep their own requeues (backoff, slow retry, conflict poll):
//! only a success hands a resource to the sweep.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

use super::feed::reference;
use tokio::sync::watch as channel;

use super::reconcile::Context;
use super::watched::Watched;
use crate::sync::stopped;

/// Ticks per resync interval at most (one per second below ten seconds).
/// Each tick reads the whole store once to find its slot's resources, so
/// fewer ticks cost less CPU (at 100,000 resources one pass is ~40 ms;
/// sixty per interval were a tenth of the controller's CPU); the resources
/// of a tick are triggered paced (see [`super::feed`]), so a larger slot is
/// no burst for the scheduler.
pub const MAX_SLOTS: u64 = 10;

/// How one interval is cut: (ticks, time between ticks).
pub fn slots(interval: Duration) -> (u64, Duration) {
    let n = interval.as_secs().clamp(1, MAX_SLOTS);
    (n, interval / n as u32)
}

/// The tick (of `n`) a resource with `uid` is resynced in.
pub fn slot_of(salt: &impl BuildHasher, uid: &str, n: u64) -> u64 {
    salt.hash_one(uid) % n.max(1)
}

/// The resources of `store` whose slot is `slot` (one pass).
pub fn slot_refs(
    store: &Store<Watched>,
    salt: &impl BuildHasher,
    slot: u64,
    n: u64,
) -> Vec<ObjectRef<Watched>> {
    store
        .state()
        .into_iter()
        .filter(|obj| {
            obj.meta()
                .uid
                .as_deref()
                .is_some_and(|uid| slot_of(salt, uid, n) == slot)
        })
        .filter_map(|obj| reference(&obj))
        .collect()
}

/// The sweep over every scope's store, once each has been fed whole after
/// its first list (that feed reconciles every resource once: the first
/// interval starts when it is done), until `shutdown`.
pub fn spawn(
    stores: Vec<Store<Watched>>,
    ctxs: Vec<Arc<Context>>,
    interval: Duration,
    mut shutdown: channel::Receiver<bool>,
) {
    tokio::spawn(async move {
        let all_fed = async {
            for ctx in &ctxs {
                ctx.feed.fed().await;
            }
        };
        tokio::select! {
            _ = all_fed => {}
            _ = stopped(&mut shutdown) => return,
        }
        let salt = std::collections::hash_map::RandomState::new();
        let (n, every) = slots(interval);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut slot = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            for (store, ctx) in stores.iter().zip(&ctxs) {
                let refs = slot_refs(store, &salt, slot, n);
                tokio::select! {
                    _ = ctx.feed.feed_refs(refs, &ctx.parked) => {}
                    _ = stopped(&mut shutdown) => return,
                }
            }
            slot = (slot + 1) % n;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_is_cut_into_at_most_ten_ticks_covering_it() {
        assert_eq!(slots(Duration::from_secs(1)), (1, Duration::from_secs(1)));
        assert_eq!(slots(Duration::from_secs(5)), (5, Duration::from_secs(1)));
        assert_eq!(
            slots(Duration::from_secs(600)),
            (10, Duration::from_secs(60))
        );
        assert_eq!(
            slots(Duration::from_millis(1500)),
            (1, Duration::from_millis(1500))
        );
        let (n, every) = slots(Duration::from_secs(3600));
        assert_eq!(every * n as u32, Duration::from_secs(3600));
    }

    #[test]
    fn every_resource_has_one_slot_and_the_slots_are_even() {
        let salt = std::collections::hash_map::RandomState::new();
        let n = 60;
        let mut counts = vec![0usize; n as usize];
        for i in 0..60_000 {
            let uid = format!("7c0a5e4e-0000-4000-8000-{i:012}");
            let s = slot_of(&salt, &uid, n);
            assert_eq!(s, slot_of(&salt, &uid, n), "stable within a process");
            counts[s as usize] += 1;
        }
        // 1,000 expected per slot; a hash that clumps would miss this
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(min >= Some(&800) && max <= Some(&1200), "{min:?}..{max:?}");
        assert_eq!(slot_of(&salt, "x", 1), 0);
        assert_eq!(slot_of(&salt, "x", 0), 0, "no division by zero");
    }
}
