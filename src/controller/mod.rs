//! The operator: watches EncryptedSecrets (all namespaces or a list, with an
//! optional label selector), owns their Secrets through a metadata-only
//! watch, and reconciles with [`reconcile::reconcile`]. Also runs leader
//! election and the HTTP surface (`/healthz`, `/readyz`, `/metrics`).
//!
//! One [`State`] is shared by every controller task and the HTTP server.

pub mod reconcile;
pub mod secret;
pub mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::kms::layer::{Kms, backoff_delay};
use crate::metrics::Metrics;

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
    hash: String,
    secret_rv: String,
    /// Generation for which a Synced status was written after that write.
    synced_generation: Option<Option<i64>>,
}

/// Shared by all reconcilers and the HTTP server.
pub struct State {
    pub client: Client,
    pub kms: Kms,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    cfg: Config,
    /// uid → consecutive transient failures (per-object backoff).
    failures: Mutex<HashMap<String, u32>>,
    /// uid → (source hash, Secret resourceVersion) of our last write.
    written: Mutex<HashMap<String, Written>>,
    pub ready: AtomicBool,
    pub leader: AtomicBool,
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
        State {
            metrics: kms.metrics().clone(),
            client,
            kms,
            recorder,
            cfg,
            failures: Mutex::default(),
            written: Mutex::default(),
            ready: AtomicBool::new(false),
            leader: AtomicBool::new(false),
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
        };
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.into(), w);
    }

    /// Record that a Synced status for `generation` followed the last write.
    pub fn remember_synced(&self, uid: &str, generation: Option<i64>) {
        if let Some(w) = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(uid)
        {
            w.synced_generation = Some(generation);
        }
    }

    pub fn last_write(&self, uid: &str) -> Option<(String, String)> {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .map(|w| (w.hash.clone(), w.secret_rv.clone()))
    }

    /// True when this process already wrote exactly this source into exactly
    /// this Secret version and reported it Synced for this generation. Lets
    /// the reconcile triggered by our own writes (before the watch cache has
    /// our status) skip decrypt, apply and status entirely.
    pub fn synced_in_memory(
        &self,
        uid: &str,
        hash: &str,
        secret_rv: &str,
        generation: Option<i64>,
    ) -> bool {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .is_some_and(|w| {
                w.hash == hash
                    && w.secret_rv == secret_rv
                    && w.synced_generation == Some(generation)
            })
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

/// Run one controller (one namespace scope) until `shutdown` fires.
async fn run_scope(state: Arc<State>, ns: Option<String>, shutdown: watch::Receiver<bool>) {
    let client = state.client.clone();
    let (es_api, secret_api): (Api<reconcile::Watched>, Api<Secret>) = match &ns {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        secret::MANAGED_BY_LABEL,
        secret::MANAGED_BY_VALUE
    ));
    let controller = Controller::new(es_api, watcher_config(&state.cfg))
        .owns(secret_api, owned)
        .trigger_backoff(watch_backoff())
        .with_config(ControllerConfig::default().concurrency(state.cfg.concurrency));
    spawn_gauge_updater(controller.store(), state.clone(), shutdown.clone());
    let mut stop = shutdown.clone();
    controller
        .graceful_shutdown_on(async move {
            stopped(&mut stop).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, state.clone())
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

/// `kmsecrets_encryptedsecrets{ready}` from the watch cache, so deleted
/// objects drop out without needing a reconcile. Also purges expired DEKs.
fn spawn_gauge_updater(
    store: Store<reconcile::Watched>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            let (mut ready, mut not_ready) = (0i64, 0i64);
            for obj in store.state() {
                // A malformed object counts as not ready.
                let status = obj.0.as_ref().ok().and_then(|es| es.status.as_ref());
                if status::ready_condition(status).is_some_and(|c| c.status == "True") {
                    ready += 1;
                } else {
                    not_ready += 1;
                }
            }
            state
                .metrics
                .encryptedsecrets
                .with_label_values(&["true"])
                .set(ready);
            state
                .metrics
                .encryptedsecrets
                .with_label_values(&["false"])
                .set(not_ready);
            state.kms.purge_expired();
        }
    });
}

/// Run the operator until `shutdown` fires: HTTP server, leader election
/// (if configured), then the controllers while leading.
pub async fn run(state: Arc<State>, shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let cfg = state.cfg.clone();
    let http = match cfg.http_addr {
        Some(addr) => Some(
            crate::http::serve(addr, state.clone(), shutdown.clone())
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    if let Some(h) = &http {
        info!(addr = %h.local_addr, "serving /healthz /readyz /metrics");
    }
    state.ready.store(true, Ordering::SeqCst);

    let result = match &cfg.leader_election {
        None => {
            state.leader.store(true, Ordering::SeqCst);
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
    futures::future::join_all(
        scopes
            .into_iter()
            .map(|ns| run_scope(state.clone(), ns, shutdown.clone())),
    )
    .await;
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
    state.leader.store(true, Ordering::SeqCst);
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
    state.leader.store(false, Ordering::SeqCst);
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
