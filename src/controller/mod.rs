//! The operator: watches EncryptedSecrets (all namespaces or a list, with an
//! optional label selector), owns their Secrets through a metadata-only
//! watch, and reconciles with [`reconcile::reconcile`]. Also runs leader
//! election and the HTTP surface (`/healthz`, `/readyz`, `/metrics`).
//!
//! One [`State`] is shared by every controller task and the HTTP server.

pub mod parked;
pub mod reconcile;
pub mod secret;
pub mod status;
pub mod watched;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::ADOPT_ANNOTATION;
use crate::backoff::backoff_delay;
use crate::http::Probes;
use crate::kms::aws::RegionPolicy;
use crate::kms::layer::Kms;
use crate::metrics::Metrics;
use reconcile::{Context, SecretMeta, Watched};

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
    /// Secret types allowed although the cluster would fill them with a
    /// credential (see [`secret::CREDENTIAL_TYPES`]).
    pub allowed_secret_types: Vec<String>,
    /// The AWS regions KMS requests may go to; learned from synced
    /// resources as well (see [`crate::kms::aws::RegionPolicy`]). `None`:
    /// any region.
    pub regions: Option<Arc<RegionPolicy>>,
    /// Workers one namespace may hold in the KMS stage at once (`None`:
    /// half of `concurrency`); its failing resources get half of that.
    pub max_workers_per_namespace: Option<usize>,
    /// After SIGTERM, how long in-flight reconciles may take before the
    /// process exits anyway (below the pod's terminationGracePeriodSeconds).
    pub shutdown_timeout: Duration,
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
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
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

#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    pub lease_duration: Duration,
    pub identity: String,
}

/// What this process last wrote for one EncryptedSecret.
#[derive(Clone, Debug, Default)]
struct Written {
    // boxed strings (no spare capacity, 16 bytes inline): one of these
    // lives per resource
    hash: Box<str>,
    secret_rv: Box<str>,
    /// Generation for which a Synced status was written after that write.
    synced_generation: Option<Option<i64>>,
    /// The EncryptedSecret's resourceVersion our Synced status write
    /// returned (see [`State::is_status_echo`]).
    status_rv: Option<Box<str>>,
}

/// Shared by all reconcilers and the HTTP server.
pub struct State {
    pub client: Client,
    pub kms: Kms,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub(crate) cfg: Config,
    /// uid → consecutive transient failures (per-object backoff).
    failures: Mutex<HashMap<String, u32>>,
    /// namespace → (resources in the open stage, of which failing).
    namespace_slots: Mutex<HashMap<String, (usize, usize)>>,
    /// uid → (source hash, Secret resourceVersion) of our last write.
    written: Mutex<HashMap<Box<str>, Written>>,
    /// `/readyz` and leadership flags, shared with the HTTP surface.
    pub probes: Arc<Probes>,
    /// Set once shutdown begins: a reconcile still waiting on KMS gives up
    /// (nothing was written yet) instead of holding the shutdown.
    pub stopping: watch::Sender<bool>,
    /// Template renders in flight ([`reconcile::RENDERS`]).
    pub renders: Arc<tokio::sync::Semaphore>,
}

impl State {
    pub fn new(client: Client, kms: Kms, cfg: Config, identity: &str) -> State {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "kmsecrets".into(),
                instance: Some(identity.to_string()),
            },
        );
        let metrics = kms.metrics().clone();
        for r in status::Reason::ALL {
            let label = if r == status::Reason::Synced {
                "success"
            } else {
                r.as_str()
            };
            metrics.reconcile.with_label_values(&[label]);
        }
        State {
            metrics,
            client,
            kms,
            recorder,
            cfg,
            failures: Mutex::default(),
            namespace_slots: Mutex::default(),
            written: Mutex::default(),
            probes: Arc::default(),
            stopping: watch::Sender::new(false),
            renders: Arc::new(tokio::sync::Semaphore::new(reconcile::RENDERS)),
        }
    }

    /// Per-object exponential backoff with full jitter: 1 s doubling to 5 min.
    pub fn backoff(&self, uid: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(uid.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let d = backoff_delay(
            *n - 1,
            Duration::from_secs(1),
            Duration::from_secs(300),
            &mut rand::thread_rng(),
        );
        d.max(Duration::from_millis(200))
    }

    /// Whether the object's last attempt failed transiently.
    pub fn is_failing(&self, uid: &str) -> bool {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(uid)
    }

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
        let mut slots = self
            .namespace_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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

    pub fn succeeded(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    pub fn slow_retry(&self) -> Duration {
        reconcile::jittered(self.cfg.slow_retry)
    }

    /// A conflicting unowned Secret is not watched (we only watch our own),
    /// so an adopt annotation added later is noticed by polling it: a
    /// metadata GET at most every 30 s per conflicting object.
    pub fn conflict_retry(&self) -> Duration {
        reconcile::jittered(self.cfg.slow_retry.min(Duration::from_secs(30)))
    }

    pub fn resync(&self) -> Duration {
        reconcile::jittered(self.cfg.resync_interval)
    }

    pub fn remember_write(&self, uid: &str, hash: &str, rv: &str) {
        let w = Written {
            hash: hash.into(),
            secret_rv: rv.into(),
            synced_generation: None,
            status_rv: None,
        };
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.into(), w);
    }

    /// Record that a Synced status for `generation` followed the last write;
    /// `status_rv`: the resourceVersion that status write returned (`None`:
    /// nothing needed writing).
    pub fn remember_synced(&self, uid: &str, generation: Option<i64>, status_rv: Option<String>) {
        if let Some(w) = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(uid)
        {
            w.synced_generation = Some(generation);
            if status_rv.is_some() {
                w.status_rv = status_rv.map(String::into_boxed_str);
            }
        }
    }

    /// True when `rv` is the EncryptedSecret version our own Synced status
    /// write produced: its watch event carries nothing the reconcile that
    /// wrote it did not already act on (a resourceVersion names one state
    /// of the object), so it triggers no reconcile.
    pub fn is_status_echo(&self, uid: &str, rv: &str) -> bool {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .is_some_and(|w| w.status_rv.as_deref() == Some(rv))
    }

    /// True when `secret_rv` is the Secret version our own last apply for
    /// `uid` produced and a Synced status followed it: the Secret's watch
    /// event triggers no reconcile of its owner (its store is updated all
    /// the same).
    pub fn is_secret_echo(&self, uid: &str, secret_rv: &str) -> bool {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .is_some_and(|w| w.synced_generation.is_some() && &*w.secret_rv == secret_rv)
    }

    /// [`Self::is_status_echo`] for a watched EncryptedSecret.
    pub fn watched_is_echo(&self, w: &Watched) -> bool {
        let md = w.meta();
        match (&md.uid, &md.resource_version) {
            (Some(uid), Some(rv)) => self.is_status_echo(uid, rv),
            _ => false,
        }
    }

    /// [`Self::is_secret_echo`] for an owned Secret (by its controller
    /// owner reference).
    pub fn secret_is_echo(&self, m: &SecretMeta) -> bool {
        let md = &m.metadata;
        let Some(rv) = md.resource_version.as_deref() else {
            return false;
        };
        md.owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .is_some_and(|o| self.is_secret_echo(&o.uid, rv))
    }

    pub fn last_write(&self, uid: &str) -> Option<(String, String)> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .map(|w| (w.hash.to_string(), w.secret_rv.to_string()))
    }

    /// True when this process already wrote the source of `generation` into
    /// exactly this Secret version and reported it Synced. Lets the
    /// reconciles triggered by our own writes (the Secret's and the status's
    /// watch events) skip hashing, decrypt, apply and status entirely.
    ///
    /// The generation stands for the source: the hash covers only the spec
    /// and the (immutable) name and namespace, and the API server bumps
    /// `metadata.generation` on every spec change of a custom resource. An
    /// object without a generation is compared by `hash` (computed only
    /// then).
    pub fn synced_in_memory(
        &self,
        uid: &str,
        hash: impl FnOnce() -> String,
        secret_rv: &str,
        generation: Option<i64>,
    ) -> bool {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = written.get(uid) else {
            return false;
        };
        if &*w.secret_rv != secret_rv || w.synced_generation != Some(generation) {
            return false;
        }
        if generation.is_some() {
            return true;
        }
        let recorded = w.hash.clone();
        drop(written);
        *recorded == *hash()
    }

    /// Drop the per-object memory of every object not in `live` (deleted
    /// without a finalizer never reach a reconcile). Returns how many.
    pub fn retain_objects(&self, live: &HashSet<String>) -> usize {
        let mut n = 0;
        {
            let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
            let before = w.len();
            w.retain(|uid, _| live.contains(&**uid));
            n += before - w.len();
        }
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let before = f.len();
        f.retain(|uid, _| live.contains(uid));
        n + before - f.len()
    }

    /// Entries of per-object memory (written + failures), for tests.
    pub fn tracked_objects(&self) -> usize {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).len()
            + self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len()
    }

    pub fn forget(&self, uid: &str) {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        self.succeeded(uid);
    }
}

/// Lists use the default (most recent, consistent) semantic, not
/// `any_semantic()` (resourceVersion=0): an RV=0 list may be served from a
/// lagging watch cache (stale reads, kubernetes/kubernetes#59848), and after
/// a `410 too old resource version` client-go's reflector relists with
/// RV="" for the same reason. Consistent lists are served from the watch
/// cache since Kubernetes 1.34, so this costs etcd nothing extra.
fn watcher_config(cfg: &Config) -> watcher::Config {
    let mut wc = watcher::Config::default();
    if let Some(sel) = &cfg.label_selector {
        wc = wc.labels(sel);
    }
    wc
}

/// Backoff of the watches after an error: 0.5 s doubling to 5 s (jittered),
/// reset after 30 s without errors. kube-runtime's default (0.8 s to 30 s,
/// reset after 120 s) was measured on a real kube-apiserver: a graceful
/// restart refuses connections for ~18 s, the first watch afterwards is a
/// `410 Expired` (the new watch cache starts at etcd's current revision),
/// and by then the backoff had reached 30–50 s, so the controller missed
/// changes for close to a minute after the apiserver was back. With a 5 s
/// cap it resumes within seconds; a relist every 5 s per watch during an
/// outage is no load for an apiserver.
fn watch_backoff() -> ResetTimerBackoff<WatchBackoff> {
    ResetTimerBackoff::new(WatchBackoff::default(), Duration::from_secs(30))
}

/// Full-jitter exponential delays, 0.5 s doubling to a 5 s cap (see
/// [`watch_backoff`]).
#[derive(Default)]
struct WatchBackoff {
    attempt: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = backoff_delay(
            self.attempt,
            Duration::from_millis(500),
            Duration::from_secs(5),
            &mut rand::thread_rng(),
        );
        self.attempt = self.attempt.saturating_add(1);
        // full jitter can draw ~0: keep a floor so a flapping apiserver is
        // not hammered
        Some(d.max(Duration::from_millis(200)))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The Secret metadata the owned-Secret store keeps: identity, version,
/// owner references and the adopt annotation. Labels, other annotations and
/// managedFields are dropped (memory: at 10,000 Secrets the managedFields
/// alone are several MiB).
pub fn trim_secret_meta(m: &mut SecretMeta) {
    m.types = None;
    let md = &mut m.metadata;
    md.managed_fields = None;
    md.labels = None;
    if let Some(a) = md.annotations.as_mut() {
        a.retain(|k, _| k == ADOPT_ANNOTATION);
    }
}

/// What reconcile never reads from an EncryptedSecret: managedFields and
/// kubectl's last-applied copy (a second copy of every ciphertext).
pub fn trim_watched(w: &mut Watched) {
    let md = w.meta_mut();
    md.managed_fields = None;
    if let Some(a) = md.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The owned-Secret store of one scope and the stream that fills it (and
/// triggers owners): a metadata-only watch of Secrets labelled as ours.
/// A changed Secret for which `echo` holds (our own write, see
/// [`State::secret_is_echo`]) updates the store but triggers nothing.
pub fn owned_secrets(
    client: Client,
    ns: Option<&str>,
    echo: impl Fn(&SecretMeta) -> bool + Send + 'static,
) -> (
    Store<SecretMeta>,
    impl futures::Stream<Item = Result<SecretMeta, watcher::Error>> + Send + 'static,
) {
    let api: Api<SecretMeta> = match ns {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let cfg = watcher::Config::default().labels(&format!(
        "{}={}",
        secret::MANAGED_BY_LABEL,
        secret::MANAGED_BY_VALUE
    ));
    let (store, writer) = reflector::store();
    let stream = watcher(api, cfg).modify(trim_secret_meta).reflect(writer);
    let stream = touched_and_vanished(stream, store.clone(), echo);
    (store, stream)
}

/// The objects a watch event touches, plus those a relist shows gone.
///
/// `touched_objects()` yields nothing for an object deleted while the watch
/// was broken: after a `410 Expired` or a dropped stream the watcher relists
/// (`Init` … `InitApply` … `InitDone`), and an object missing from the new
/// list simply never appears. For the owned Secrets that is a deletion the
/// controller would not repair until the next resync (10 min by default).
/// So at `Init` the store (the reflector fills a side buffer until
/// `InitDone`, so it still holds the pre-relist state) is snapshotted, and
/// at `InitDone` every snapshotted object the relist did not return is
/// yielded like a `Delete`, which triggers its owner.
///
/// A listed or changed object for which `quiet` holds is not yielded
/// (deletions always are).
pub fn touched_and_vanished<K, S>(
    events: S,
    store: Store<K>,
    quiet: impl Fn(&K) -> bool + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    use kube::runtime::reflector::ObjectRef;
    // (the pre-relist snapshot, the refs the relist has returned so far)
    type Relist<K> = Option<(Vec<Arc<K>>, HashSet<ObjectRef<K>>)>;
    events
        .scan(
            None::<(Vec<Arc<K>>, HashSet<ObjectRef<K>>)>,
            move |relist: &mut Relist<K>, ev| {
                let out: Vec<Result<K, watcher::Error>> = match ev {
                    Err(e) => vec![Err(e)],
                    Ok(watcher::Event::Init) => {
                        *relist = Some((store.state(), HashSet::new()));
                        Vec::new()
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        if let Some((_, seen)) = relist.as_mut() {
                            seen.insert(ObjectRef::from_obj(&o));
                        }
                        if quiet(&o) { Vec::new() } else { vec![Ok(o)] }
                    }
                    Ok(watcher::Event::InitDone) => match relist.take() {
                        Some((before, seen)) => before
                            .into_iter()
                            .filter(|o| !seen.contains(&ObjectRef::from_obj(o.as_ref())))
                            .map(|o| Ok(o.as_ref().clone()))
                            .collect(),
                        None => Vec::new(),
                    },
                    Ok(watcher::Event::Apply(o)) if quiet(&o) => Vec::new(),
                    Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => vec![Ok(o)],
                };
                futures::future::ready(Some(futures::stream::iter(out)))
            },
        )
        .flatten()
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
    // store, and trigger nothing (see `State::is_status_echo`)
    let echoes = state.clone();
    let es_stream = watcher(es_api, watcher_config(&state.cfg))
        .modify(trim_watched)
        .reflect(es_writer)
        .applied_objects()
        .try_filter(move |w| futures::future::ready(!echoes.watched_is_echo(w)));
    // parked reconciles come back through the same trigger stream
    let (parked, wakes) = parked::Parked::new();
    let store = es_store.clone();
    let wakes = wakes
        .filter_map(move |r| futures::future::ready(store.get(&r).map(|o| Ok(o.as_ref().clone()))));
    let echoes = state.clone();
    let (secrets, owned) = owned_secrets(client, ns, move |m| echoes.secret_is_echo(m));
    let controller = Controller::for_stream(futures::stream::select(es_stream, wakes), es_store)
        .owns_stream(owned)
        .trigger_backoff(watch_backoff())
        .with_config(ControllerConfig::default().concurrency(state.cfg.concurrency));
    let ctx = Arc::new(Context {
        state: state.clone(),
        secrets,
        parked,
    });
    (controller, ctx)
}

/// Run one scope's controller until `shutdown` fires.
async fn run_scope(
    controller: Controller<Watched>,
    ctx: Arc<Context>,
    ns: Option<String>,
    shutdown: watch::Receiver<bool>,
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
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        // Only once every store has listed: a store still empty at start-up
        // must not erase the memory of objects it has not seen yet.
        let listed = futures::future::join_all(stores.iter().map(|s| s.wait_until_ready()));
        tokio::select! {
            _ = listed => {}
            _ = stopped(&mut shutdown) => return,
        }
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            housekeeping(&stores, &state);
            for (ctx, store) in ctxs.iter().zip(&stores) {
                ctx.parked.compact(|r| store.get(r).is_some());
            }
        }
    });
}

/// One round of [`spawn_housekeeping`]; `stores` must have listed.
pub fn housekeeping(stores: &[Store<Watched>], state: &State) {
    let (mut ready, mut not_ready) = (0i64, 0i64);
    let mut live = HashSet::new();
    for store in stores {
        for obj in store.state() {
            if let Some(uid) = obj.meta().uid.clone() {
                live.insert(uid);
            }
            // A malformed object counts as not ready.
            if obj.ready() {
                ready += 1;
            } else {
                not_ready += 1;
            }
        }
    }
    let m = &state.metrics;
    m.encryptedsecrets.with_label_values(&["true"]).set(ready);
    m.encryptedsecrets
        .with_label_values(&["false"])
        .set(not_ready);
    state.retain_objects(&live);
    state.kms.purge_expired();
}

/// Run the operator until `shutdown` fires: HTTP server, leader election
/// (if configured), then the controllers while leading.
pub async fn run(state: Arc<State>, shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let cfg = state.cfg.clone();
    let http = match cfg.http_addr {
        Some(addr) => Some(
            crate::http::serve(addr, state.probes.clone(), state.metrics.clone(), {
                let mut shutdown = shutdown.clone();
                async move { stopped(&mut shutdown).await }
            })
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    if let Some(h) = &http {
        info!(addr = %h.local_addr, "serving /healthz /readyz /metrics");
    }
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
        Some(le) => run_with_lease(state.clone(), le.clone(), shutdown.clone()).await,
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
    result
}

async fn run_controllers(state: Arc<State>, shutdown: watch::Receiver<bool>) {
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
    spawn_housekeeping(stores, ctxs, state.clone(), shutdown);
    futures::future::join_all(runs).await;
}

async fn run_with_lease(
    state: Arc<State>,
    le: LeaderElection,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let secs = le.lease_duration.as_secs().max(2);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(state.client.clone(), &le.name)
        .with_namespace(&le.namespace)
        .with_identity(&le.identity)
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .with_field_manager(format!("kmsecrets-{}", le.identity))
        .build()
        .await
        .map_err(|e| format!("leader election setup failed: {e}"))?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %le.name, namespace = %le.namespace, identity = %le.identity, "waiting for leadership");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return Err("leader election stopped".into()) },
            _ = stopped(&mut shutdown) => { drop(leading); let _ = task.await; return Ok(()); }
        }
    }
    info!("acquired leadership");
    state.probes.leader.store(true, Ordering::SeqCst);
    // Run until shutdown or until leadership is lost; losing it stops our
    // controllers first so two leaders never write at once.
    let (stop_tx, stop_rx) = watch::channel(false);
    let controllers = tokio::spawn(run_controllers(state.clone(), stop_rx));
    let lost = tokio::select! {
        _ = stopped(&mut shutdown) => false,
        _ = async { while leading.changed().await.is_ok() { if !*leading.borrow() { break; } } } => true,
    };
    let _ = stop_tx.send(true);
    let _ = controllers.await;
    state.probes.leader.store(false, Ordering::SeqCst);
    drop(leading);
    // Bounded: leadership is typically lost because the API server (or its
    // etcd) is unreachable, and then neither the lease manager's last
    // request nor the release returns. Found on a real control plane with
    // etcd stopped: without a bound the replica hung here for good, alive
    // and healthy but never a candidate again.
    match tokio::time::timeout(LEASE_STOP_TIMEOUT, task).await {
        Ok(Ok(Ok(m))) => {
            if tokio::time::timeout(LEASE_STOP_TIMEOUT, m.release())
                .await
                .is_err()
            {
                warn!("lease release timed out");
            }
        }
        Ok(Ok(Err(e))) => error!(error = %e, "lease manager failed"),
        Ok(Err(e)) => error!(error = %e, "lease task panicked"),
        Err(_) => warn!("lease manager did not stop in time"),
    }
    if lost {
        Err("lost leadership; exiting so a fresh start can compete again".into())
    } else {
        Ok(())
    }
}

/// How long stopping the lease manager (and releasing the Lease) may take
/// before the process exits anyway; the Lease then simply expires.
const LEASE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves once the shutdown channel says stop (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(name: &str, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(items: &[Result<ConfigMap, watcher::Error>]) -> Vec<String> {
        items
            .iter()
            .map(|r| r.as_ref().map(|o| o.name_any()).unwrap_or_default())
            .collect()
    }

    use kube::ResourceExt;

    /// An object deleted while the watch was broken is absent from the
    /// relist; it must still trigger its owner (as a Delete would have).
    #[tokio::test]
    async fn a_relist_yields_objects_that_vanished_during_the_gap() {
        use watcher::Event::*;
        let (store, writer) = reflector::store::<ConfigMap>();
        let events = vec![
            Ok(Init),
            Ok(InitApply(cm("a", "1"))),
            Ok(InitApply(cm("b", "2"))),
            Ok(InitDone),
            Ok(Apply(cm("c", "3"))),
            // the watch broke; b and c were deleted meanwhile, a changed
            Ok(Init),
            Ok(InitApply(cm("a", "4"))),
            Ok(InitDone),
            Ok(Delete(cm("a", "5"))),
        ];
        let out: Vec<_> =
            touched_and_vanished(stream::iter(events).reflect(writer), store.clone(), |_| {
                false
            })
            .collect()
            .await;
        let got = names(&out);
        assert_eq!(got[..4], ["a", "b", "c", "a"]);
        // the vanished ones, in the store's (hash) order
        let mut vanished = got[4..6].to_vec();
        vanished.sort();
        assert_eq!(vanished, ["b", "c"]);
        assert_eq!(got[6..], ["a"]);
        assert!(
            store
                .get(&reflector::ObjectRef::new("b").within("ns"))
                .is_none()
        );
        // a first list (empty store) yields only what it lists
        let (store, writer) = reflector::store::<ConfigMap>();
        let out: Vec<_> = touched_and_vanished(
            stream::iter(vec![Ok(Init), Ok(InitApply(cm("x", "1"))), Ok(InitDone)]).reflect(writer),
            store,
            |_| false,
        )
        .collect()
        .await;
        assert_eq!(names(&out), ["x"]);
    }

    /// Quiet objects (our own writes' echoes) update the store but are not
    /// yielded; deletions and objects a relist shows gone always are.
    #[tokio::test]
    async fn quiet_changes_update_the_store_and_trigger_nothing() {
        use watcher::Event::*;
        let (store, writer) = reflector::store::<ConfigMap>();
        let events = vec![
            Ok(Init),
            Ok(InitApply(cm("a", "1"))),
            Ok(InitApply(cm("q", "2"))),
            Ok(InitDone),
            Ok(Apply(cm("b", "3"))),
            Ok(Apply(cm("q", "4"))),
            Ok(Init),
            Ok(InitApply(cm("b", "5"))),
            Ok(InitDone),
            Ok(Delete(cm("b", "6"))),
        ];
        let quiet = |c: &ConfigMap| c.metadata.name.as_deref() == Some("q");
        let out: Vec<_> =
            touched_and_vanished(stream::iter(events).reflect(writer), store.clone(), quiet)
                .collect()
                .await;
        let got = names(&out);
        // a, b; after the relist b is listed again; a and q vanished (the
        // quiet q too: it was deleted); then b's deletion
        assert_eq!(got[..3], ["a", "b", "b"]);
        let mut vanished = got[3..5].to_vec();
        vanished.sort();
        assert_eq!(vanished, ["a", "q"]);
        assert_eq!(got[5..], ["b"]);
    }
}
