//! The operator: watches EncryptedSecrets (all namespaces or a list, with an
//! optional label selector), owns their Secrets through a metadata-only
//! watch, and reconciles with [`reconcile::reconcile`]. Also runs leader
//! election and the HTTP surface (`/healthz`, `/readyz`, `/metrics`).
//!
//! This file only wires the parts together, one concern a file:
//! - [`state`]: the shared [`State`] and the memory of our own writes;
//! - [`fairness`]: namespace slots and parked reconciles;
//! - [`feed`]: a listed store reaches the workers paced, not all at once;
//! - [`watch`]: the watches, the relist repair, trims, backoff;
//! - [`leader`]: leader election;
//! - [`resync`]: the periodic resync, one sweep instead of a timer per object;
//! - [`reconcile`]: the pipeline, one file per stage group;
//! - [`status`]: the conditions (pure); the Secret itself is built by
//!   [`crate::secret`] (pure, shared with the CLI);
//! - [`watched`]: the compact store of EncryptedSecrets;
//! - [`lean`]: decoding without `managedFields`, write answers as a version.
//!
//! Kept on purpose, with tests that guard them: the layering test
//! (`tests/layering.rs`: nothing below imports anything above), the
//! exact-cost reconcile rig (`tests/reconcile.rs`: every API request of a
//! reconcile counted) and the end-to-end suite on both API servers
//! (`tests/e2e.rs`).

pub mod fairness;
pub mod feed;
pub mod keys;
pub mod leader;
pub mod lean;
pub mod reconcile;
pub mod resync;
pub mod state;
pub mod status;
pub mod watch;
pub mod watched;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use tokio::sync::watch as channel;
use tracing::{info, warn};

use crate::sync::stopped;

pub use leader::LeaderElection;
pub use state::State;
pub use watch::{SecretMeta, owned_secrets, trim_watched};

use crate::kms::regions::RegionPolicy;
use reconcile::Context;
use watch::{watch_backoff, watcher_config};
use watched::Watched;

/// Controller settings (the `kmsecrets controller` flags, already parsed).
#[derive(Clone, Debug)]
pub struct Config {
    /// Empty = all namespaces.
    pub namespaces: Vec<String>,
    pub label_selector: Option<String>,
    pub concurrency: u16,
    pub resync_interval: Duration,
    /// Retry interval for permanent errors (IAM may be fixed later).
    pub slow_retry: Duration,
    pub leader_election: Option<LeaderElection>,
    pub http_addr: Option<SocketAddr>,
    /// `/metrics` over HTTPS with TokenReview + SubjectAccessReview; `None`:
    /// in plain HTTP on `http_addr` (`--metrics-secure=false`).
    pub secure_metrics: Option<crate::http::SecureMetrics>,
    /// Secret types allowed although the cluster would fill them with a
    /// credential (see [`crate::secret::CREDENTIAL_TYPES`]).
    pub allowed_secret_types: Vec<String>,
    /// The AWS regions KMS requests may go to; learned from synced
    /// resources as well (see [`crate::kms::regions::RegionPolicy`]). `None`:
    /// any region.
    pub regions: Option<Arc<RegionPolicy>>,
    /// Workers one namespace may hold in the KMS stage at once (`None`:
    /// half of `concurrency`); its failing resources get half of that.
    pub max_workers_per_namespace: Option<usize>,
    /// After SIGTERM, how long in-flight reconciles may take before the
    /// process exits anyway (below the pod's terminationGracePeriodSeconds).
    pub shutdown_timeout: Duration,
    /// How often every tracked KMS key is described ([`keys`]); zero: never.
    pub key_check_interval: Duration,
    /// KMS keys whose health is tracked at most.
    pub max_tracked_keys: usize,
}

/// One scope's controller: EncryptedSecrets (trimmed, see [`trim_watched`])
/// and the owned Secrets' metadata, feeding [`reconcile::reconcile`].
fn scope_controller(state: &Arc<State>, ns: Option<&str>) -> (Controller<Watched>, Arc<Context>) {
    let client = state.client.clone();
    let es_api: Api<Watched> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (es_store, es_writer) = reflector::store();
    // our own status writes come back as watch events: they update the
    // store, and trigger nothing (see `State::is_own_status_write`)
    let echoes = state.clone();
    // `Store::wait_until_ready` wakes only its last poller (kube-runtime's
    // DelayedInit keeps one waker, and the controller itself waits on this
    // store), so the tasks that need "this store has listed" wait on a
    // channel set once the reflector has applied the first InitDone
    let (listed_tx, listed) = channel::channel(false);
    // every completed list (the first, and relists after a broken watch)
    // is fed to the workers paced (see `feed`); the list's own objects
    // trigger nothing
    let (lists_tx, lists) = channel::channel(0u64);
    // the echo of our own Synced status write is stored released: the
    // reconcile that wrote it needed the texts for the last time (see
    // `watched`)
    let released = state.clone();
    let es_stream = watcher(es_api, watcher_config(&state.cfg))
        .modify(move |w| {
            trim_watched(w);
            let md = w.meta();
            if released.is_own_status_write(w)
                && md.deletion_timestamp.is_none()
                && md
                    .uid
                    .as_deref()
                    .is_some_and(|uid| released.synced_at(uid, md.generation))
            {
                w.release_own();
            }
        })
        .reflect(es_writer)
        .inspect(move |ev| {
            if matches!(ev, Ok(watcher::Event::InitDone)) {
                listed_tx.send_replace(true);
                lists_tx.send_modify(|n| *n += 1);
            }
        })
        .try_filter_map(move |ev| {
            futures::future::ready(Ok(match ev {
                watcher::Event::Apply(w) if !echoes.is_quiet_status_event(&w) => Some(w),
                _ => None,
            }))
        });
    // parked reconciles come back through the same trigger stream
    let (parked, wakes) = fairness::Parked::new();
    let store = es_store.clone();
    let wakes = wakes.filter_map(move |r| {
        futures::future::ready(store.get(&r).map(|_| Ok(Watched::trigger(&r))))
    });
    let echoes = state.clone();
    let (secrets, owned) = owned_secrets(client, ns, move |m| echoes.is_quiet_secret_event(m));
    // a changed or deleted owned Secret triggers its EncryptedSecret
    let store = es_store.clone();
    let owners = owned.filter_map(move |s| {
        futures::future::ready(match s {
            Ok(s) => s
                .owner()
                .filter(|r| store.get(r).is_some())
                .map(|r| Ok(Watched::trigger(&r))),
            Err(e) => Some(Err(e)),
        })
    });
    let triggers = futures::stream::select(futures::stream::select(es_stream, wakes), owners);
    let controller = Controller::for_stream(triggers, es_store)
        .trigger_backoff(watch_backoff())
        .with_config(ControllerConfig::default().concurrency(state.cfg.concurrency));
    let ctx = Arc::new(Context {
        state: state.clone(),
        store: controller.store(),
        secrets,
        parked,
        listed,
        feed: feed::Feed::new(2 * usize::from(state.cfg.concurrency)),
    });
    spawn_feed(controller.store(), ctx.clone(), lists);
    (controller, ctx)
}

/// Feed the store to the workers after each completed list (see [`feed`]);
/// ends with the scope (its list channel closes).
fn spawn_feed(store: Store<Watched>, ctx: Arc<Context>, mut lists: channel::Receiver<u64>) {
    tokio::spawn(async move {
        while lists.changed().await.is_ok() {
            lists.mark_unchanged();
            let n = ctx.feed.feed(&store, &ctx.parked).await;
            tracing::debug!(resources = n, "listed store fed to the workers");
        }
    });
}

/// Run one scope's controller until `shutdown` fires.
async fn run_scope(
    controller: Controller<Watched>,
    ctx: Arc<Context>,
    ns: Option<String>,
    shutdown: channel::Receiver<bool>,
) {
    let mut stop = shutdown.clone();
    controller
        .graceful_shutdown_on(async move {
            stopped(&mut stop).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok(_) => {}
                // Watch errors (e.g. a malformed object, an expired
                // resourceVersion) are logged; the watcher retries with
                // backoff and one bad object never stops the others.
                Err(e) => warn!(error = %e, "controller event"),
            }
        })
        .await;
    info!(
        namespace = ns.as_deref().unwrap_or("*"),
        "controller stopped"
    );
}

/// One housekeeping task over every scope's store:
/// `kmsecrets_encryptedsecrets{ready}` summed over all scopes (so deleted
/// objects drop out without a reconcile), per-object memory of deleted
/// objects evicted, expired DEKs purged, stale parking entries dropped.
fn spawn_housekeeping(
    stores: Vec<Store<Watched>>,
    ctxs: Vec<Arc<Context>>,
    state: Arc<State>,
    mut shutdown: channel::Receiver<bool>,
) {
    tokio::spawn(async move {
        // Only once every store has listed: a store still empty at start-up
        // must not erase the memory of objects it has not seen yet.
        tokio::select! {
            _ = all_listed(&ctxs) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut round = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            // the gauge every 5 s; the eviction (a set of every live uid)
            // every minute: at 100,000 resources it was, every 5 s, 7 % of
            // the controller's CPU
            if round.is_multiple_of(EVICT_EVERY) {
                housekeeping(&stores, &state);
            } else {
                count_ready(&stores, &state);
            }
            round += 1;
            for (ctx, store) in ctxs.iter().zip(&stores) {
                ctx.parked.compact(|r| store.get(r).is_some());
            }
        }
    });
}

/// Key health ([`keys`]): a check once every store has listed, then every
/// `--key-check-interval` (±10%); resources under a key whose state changed
/// are reconciled through their scope's trigger stream.
fn spawn_key_checks(
    stores: Vec<Store<Watched>>,
    ctxs: Vec<Arc<Context>>,
    state: Arc<State>,
    mut shutdown: channel::Receiver<bool>,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = all_listed(&ctxs) => {}
            _ = stopped(&mut shutdown) => return,
        }
        loop {
            for r in keys::check_keys(&stores, &state).await {
                if let Some((ctx, _)) = ctxs.iter().zip(&stores).find(|(_, s)| s.get(&r).is_some())
                {
                    ctx.parked.trigger(r);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(crate::backoff::jittered(state.cfg.key_check_interval)) => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    });
}

/// Resolves once every scope's EncryptedSecret store has listed.
async fn all_listed(ctxs: &[Arc<Context>]) {
    for ctx in ctxs {
        let _ = ctx.listed.clone().wait_for(|l| *l).await;
    }
}

/// Housekeeping rounds (of 5 s) between two evictions of deleted objects'
/// memory.
const EVICT_EVERY: u64 = 12;

/// One full round of [`spawn_housekeeping`]: the ready gauge, eviction of
/// the memory of deleted objects, expired DEKs; `stores` must have listed.
pub fn housekeeping(stores: &[Store<Watched>], state: &State) {
    let objects: Vec<Arc<Watched>> = stores.iter().flat_map(|s| s.state()).collect();
    let ready = objects.iter().filter(|o| o.ready()).count();
    set_ready_gauge(state, ready, objects.len());
    let live: HashSet<&str> = objects
        .iter()
        .filter_map(|o| o.meta().uid.as_deref())
        .collect();
    state.retain_objects(|uid| live.contains(uid));
    state.kms.purge_expired();
}

/// The ready gauge and expired DEKs only (the rounds between evictions),
/// the stores read in place ([`visit`]).
fn count_ready(stores: &[Store<Watched>], state: &State) {
    let (mut ready, mut all) = (0, 0);
    for store in stores {
        visit(store, |o| {
            all += 1;
            ready += usize::from(o.ready());
        });
    }
    set_ready_gauge(state, ready, all);
    state.kms.purge_expired();
}

/// Calls `f` with every object of `store`, in place under the store's read
/// lock. `Store::state()` copies all N `Arc`s into a `Vec` on every call:
/// done every 5 s for the gauge, at 100,000 resources that copy and its
/// drop were ~1 % of a cold start's CPU. `f` must be quick: the store's
/// writer waits meanwhile.
fn visit(store: &Store<Watched>, f: impl FnMut(&Watched)) {
    let f = std::cell::RefCell::new(f);
    // `find` with a predicate that never holds walks every entry
    let none = store.find(|o| {
        (f.borrow_mut())(o);
        false
    });
    debug_assert!(none.is_none());
}

/// `kmsecrets_encryptedsecrets{ready}`: `ready` of `all` (a malformed
/// object counts as not ready).
fn set_ready_gauge(state: &State, ready: usize, all: usize) {
    let m = &state.metrics;
    let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    m.encryptedsecrets
        .with_label_values(&["true"])
        .set(gauge(ready));
    m.encryptedsecrets
        .with_label_values(&["false"])
        .set(gauge(all.saturating_sub(ready)));
}

/// Run the operator until `shutdown` fires: HTTP server, leader election
/// (if configured), then the controllers while leading.
pub async fn run(state: Arc<State>, shutdown: channel::Receiver<bool>) -> Result<(), String> {
    let cfg = state.cfg.clone();
    let plain_metrics = cfg.secure_metrics.is_none();
    let http = match cfg.http_addr {
        Some(addr) => Some(
            crate::http::serve(
                addr,
                state.probes.clone(),
                state.metrics.clone(),
                plain_metrics,
                {
                    let mut shutdown = shutdown.clone();
                    async move { stopped(&mut shutdown).await }
                },
            )
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    if let Some(h) = &http {
        let what = if plain_metrics {
            "/healthz /readyz /metrics"
        } else {
            "/healthz /readyz"
        };
        info!(addr = %h.local_addr, "serving {what}");
    }
    let secure = match &cfg.secure_metrics {
        Some(m) => {
            let auth = Arc::new(crate::http::auth::Authorizer::new(
                state.client.clone(),
                m.auth_cache_ttl,
            ));
            let h = crate::http::serve_metrics(m, state.metrics.clone(), auth, {
                let mut shutdown = shutdown.clone();
                async move { stopped(&mut shutdown).await }
            })
            .await?;
            info!(addr = %h.local_addr, "serving /metrics over HTTPS (TokenReview + SubjectAccessReview: get /metrics)");
            Some(h)
        }
        None => None,
    };
    state.probes.ready.store(true, Ordering::SeqCst);
    tokio::spawn({
        let (state, mut shutdown) = (state.clone(), shutdown.clone());
        async move {
            stopped(&mut shutdown).await;
            state.stopping.send_replace(true);
        }
    });

    let result = match &cfg.leader_election {
        None => {
            state.probes.leader.store(true, Ordering::SeqCst);
            run_controllers(state.clone(), shutdown.clone()).await;
            Ok(())
        }
        Some(le) => {
            let s = state.clone();
            leader::run_with_lease(state.clone(), le.clone(), shutdown.clone(), move |stop| {
                run_controllers(s, stop)
            })
            .await
        }
    };
    if let Some(h) = http {
        if result.is_ok() {
            let _ = h.task.await;
        } else {
            // A failed run (e.g. leadership lost) must end the process; the
            // HTTP server only stops on shutdown, so waiting for it kept a
            // replica that had lost the lease alive forever (found on a
            // real control plane with etcd stopped).
            h.task.abort();
        }
    }
    if let Some(h) = secure {
        h.task.abort();
    }
    result
}

async fn run_controllers(state: Arc<State>, shutdown: channel::Receiver<bool>) {
    let scopes: Vec<Option<String>> = if state.cfg.namespaces.is_empty() {
        vec![None]
    } else {
        state.cfg.namespaces.iter().cloned().map(Some).collect()
    };
    info!(namespaces = ?scopes, "starting controllers");
    let mut stores = Vec::new();
    let mut ctxs = Vec::new();
    let mut runs = Vec::new();
    for ns in scopes {
        let (controller, ctx) = scope_controller(&state, ns.as_deref());
        stores.push(controller.store());
        ctxs.push(ctx.clone());
        runs.push(run_scope(controller, ctx, ns, shutdown.clone()));
    }
    if !state.cfg.key_check_interval.is_zero() {
        spawn_key_checks(
            stores.clone(),
            ctxs.clone(),
            state.clone(),
            shutdown.clone(),
        );
    }
    resync::spawn(
        stores.clone(),
        ctxs.clone(),
        state.cfg.resync_interval,
        shutdown.clone(),
    );
    spawn_housekeeping(stores, ctxs, state.clone(), shutdown);
    futures::future::join_all(runs).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn obj(name: &str, ready: bool) -> Watched {
        let status = ready.then(|| {
            serde_json::json!({"conditions": [{"type": "Ready", "status": "True",
                "reason": "Synced", "message": "", "lastTransitionTime": "2026-12-07T00:00:00Z"}]})
        });
        let es: crate::api::EncryptedSecret = serde_json::from_value(serde_json::json!({
            "apiVersion": "kmsecrets.dev/v1alpha1", "kind": "EncryptedSecret",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"dataKeys": []},
            "status": status,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Watched::new(&es)
    }

    /// The in-place walk sees every object once, and the store is unchanged.
    #[test]
    fn visit_walks_every_object_in_place() {
        let (store, mut writer) = reflector::store::<Watched>();
        writer.apply_watcher_event(&Event::Init);
        for i in 0..7 {
            writer.apply_watcher_event(&Event::InitApply(obj(&format!("o{i}"), i % 3 == 0)));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let (mut names, mut ready) = (Vec::new(), 0);
        visit(&store, |o| {
            names.push(o.meta().name.clone().unwrap_or_default());
            ready += usize::from(o.ready());
        });
        names.sort();
        assert_eq!(names, (0..7).map(|i| format!("o{i}")).collect::<Vec<_>>());
        assert_eq!(ready, 3, "o0, o3, o6");
        assert_eq!(store.state().len(), 7);
    }
}
