//! [`State`]: what every reconcile, the housekeeping task and the HTTP
//! server share — clients, KMS layer, metrics, recorder, configuration — and
//! the controller's memory of each object: its transient failures (for
//! backoff) and what this process last wrote for it ([`Written`]: the
//! source hash and Secret version, the Synced status that followed), which
//! lets the reconciles triggered by our own writes end without work.
//!
//! Never holds plaintext or data keys (the DEK cache is the KMS layer's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};
use tokio::sync::watch;

use super::keys::KeyHealthTable;
use super::watch::SecretMeta;
use super::watched::Watched;
use super::{Config, status};
use crate::backoff::{backoff_delay, jittered};
use crate::http::Probes;
use crate::kms::layer::Kms;
use crate::metrics::Metrics;
use crate::sync::LockExt;

/// Template renders in flight at once, across every scope: renders compete
/// for the machine's cores, and two keep one free for the async runtime on
/// a 2-core node.
pub const TEMPLATE_RENDERS: usize = 2;

/// What this process last wrote for one EncryptedSecret.
#[derive(Clone, Debug, Default)]
pub(super) struct Written {
    // boxed strings (no spare capacity, 16 bytes inline): one of these
    // lives per resource
    hash: Box<str>,
    secret_rv: Box<str>,
    /// Generation for which a Synced status was written after that write.
    synced_generation: Option<Option<i64>>,
    /// The EncryptedSecret's resourceVersion our Synced status write
    /// returned (see [`State::wrote_status_version`]).
    status_rv: Option<Box<str>>,
}

/// What a watch delivered for one resource while our write of it (its
/// status, or its Secret) was in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DuringWrite {
    Nothing,
    One(Box<str>),
    Several,
}

impl DuringWrite {
    fn saw(&mut self, rv: &str) {
        *self = match std::mem::replace(self, DuringWrite::Several) {
            DuringWrite::Nothing => DuringWrite::One(rv.into()),
            DuringWrite::One(seen) if &*seen == rv => DuringWrite::One(seen),
            _ => DuringWrite::Several,
        };
    }
}

/// What arrived while a write was in flight, judged by its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// Nothing: the echo is still to come (and is recognised then).
    Nothing,
    /// Exactly the version the write made: the stored object is our echo.
    Echo,
    /// Another version (someone else's change, or the write failed): the
    /// resource must be reconciled again.
    Other,
}

/// A write in flight ([`State::status_write`], [`State::secret_write`]);
/// dropping it unfinished (a cancelled reconcile, a failed write) forgets
/// it.
pub struct WriteInFlight<'a> {
    writes: &'a Mutex<HashMap<Box<str>, DuringWrite>>,
    uid: Box<str>,
}

impl<'a> WriteInFlight<'a> {
    fn begin(writes: &'a Mutex<HashMap<Box<str>, DuringWrite>>, uid: &str) -> Self {
        writes
            .lock_or_recover()
            .insert(uid.into(), DuringWrite::Nothing);
        WriteInFlight {
            writes,
            uid: uid.into(),
        }
    }

    /// Ends the write: `rv` is the version it made (`None`: it failed).
    pub fn finish(self, rv: Option<&str>) -> Arrived {
        // (the guard's drop then finds nothing left to remove)
        let seen = self.writes.lock_or_recover().remove(&self.uid);
        match (seen, rv) {
            (None | Some(DuringWrite::Nothing), _) => Arrived::Nothing,
            (Some(DuringWrite::One(v)), Some(rv)) if &*v == rv => Arrived::Echo,
            _ => Arrived::Other,
        }
    }
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        self.writes.lock_or_recover().remove(&self.uid);
    }
}

/// True (and `rv` remembered) when a write for `uid` is in flight.
fn held_back(writes: &Mutex<HashMap<Box<str>, DuringWrite>>, uid: &str, rv: &str) -> bool {
    match writes.lock_or_recover().get_mut(uid) {
        Some(seen) => {
            seen.saw(rv);
            true
        }
        None => false,
    }
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
    pub(super) namespace_slots: Mutex<HashMap<String, (usize, usize)>>,
    /// uid → (source hash, Secret resourceVersion) of our last write.
    written: Mutex<HashMap<Box<str>, Written>>,
    /// uid → the EncryptedSecret versions its watch delivered while our
    /// Synced status write was in flight (at most `--concurrency` entries;
    /// see [`State::status_write`]).
    status_writes: Mutex<HashMap<Box<str>, DuringWrite>>,
    /// uid → the owned Secret's versions its watch delivered while our write
    /// of that Secret was in flight (see [`State::secret_write`]).
    secret_writes: Mutex<HashMap<Box<str>, DuringWrite>>,
    /// `/readyz` and leadership flags, shared with the HTTP surface.
    pub probes: Arc<Probes>,
    /// Set once shutdown begins: a reconcile still waiting on KMS gives up
    /// (nothing was written yet) instead of holding the shutdown.
    pub stopping: watch::Sender<bool>,
    /// Template renders in flight ([`TEMPLATE_RENDERS`]).
    pub renders: Arc<tokio::sync::Semaphore>,
    /// What the last key check found ([`super::keys`]).
    pub keys: KeyHealthTable,
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
            status_writes: Mutex::default(),
            secret_writes: Mutex::default(),
            probes: Arc::default(),
            stopping: watch::Sender::new(false),
            renders: Arc::new(tokio::sync::Semaphore::new(TEMPLATE_RENDERS)),
            keys: KeyHealthTable::default(),
        }
    }

    /// Per-object exponential backoff with full jitter: 1 s doubling to 5 min.
    pub fn backoff(&self, uid: &str) -> Duration {
        let mut f = self.failures.lock_or_recover();
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
        self.failures.lock_or_recover().contains_key(uid)
    }

    pub fn succeeded(&self, uid: &str) {
        self.failures.lock_or_recover().remove(uid);
    }

    pub fn slow_retry(&self) -> Duration {
        jittered(self.cfg.slow_retry)
    }

    /// A conflicting unowned Secret is not watched (we only watch our own),
    /// so an adopt annotation added later is noticed by polling it: a
    /// metadata GET at most every 30 s per conflicting object.
    pub fn conflict_retry(&self) -> Duration {
        jittered(self.cfg.slow_retry.min(Duration::from_secs(30)))
    }

    pub fn remember_write(&self, uid: &str, hash: &str, rv: &str) {
        let w = Written {
            hash: hash.into(),
            secret_rv: rv.into(),
            synced_generation: None,
            status_rv: None,
        };
        self.written.lock_or_recover().insert(uid.into(), w);
    }

    /// Record that a Synced status for `generation` followed the last write;
    /// `status_rv`: the resourceVersion that status write returned (`None`:
    /// nothing needed writing).
    pub fn remember_synced(&self, uid: &str, generation: Option<i64>, status_rv: Option<String>) {
        if let Some(w) = self.written.lock_or_recover().get_mut(uid) {
            w.synced_generation = Some(generation);
            if status_rv.is_some() {
                w.status_rv = status_rv.map(String::into_boxed_str);
            }
        }
    }

    /// True when this process reported the resource Synced at `generation`
    /// (its spec may then be released, see [`super::watched`]).
    pub fn synced_at(&self, uid: &str, generation: Option<i64>) -> bool {
        generation.is_some()
            && self
                .written
                .lock_or_recover()
                .get(uid)
                .is_some_and(|w| w.synced_generation == Some(generation))
    }

    /// True when `rv` is the EncryptedSecret version our own Synced status
    /// write produced: its watch event carries nothing the reconcile that
    /// wrote it did not already act on (a resourceVersion names one state
    /// of the object), so it triggers no reconcile.
    pub fn wrote_status_version(&self, uid: &str, rv: &str) -> bool {
        self.written
            .lock_or_recover()
            .get(uid)
            .is_some_and(|w| w.status_rv.as_deref() == Some(rv))
    }

    /// True when `secret_rv` is the Secret version our own last apply for
    /// `uid` produced: the Secret's watch event triggers no reconcile of its
    /// owner (its store is updated all the same).
    ///
    /// It holds from the moment the apply is remembered, before the status
    /// write that follows it: the echo usually arrives while that write is
    /// in flight, and a trigger then would queue a second reconcile of a
    /// resource that is being finished (a third of all reconciles of a cold
    /// start). Nothing is lost: the Secret at that version is what the
    /// reconcile wrote, and a failed status write requeues the resource
    /// through the error policy.
    pub fn wrote_secret_version(&self, uid: &str, secret_rv: &str) -> bool {
        !secret_rv.is_empty()
            && self
                .written
                .lock_or_recover()
                .get(uid)
                .is_some_and(|w| &*w.secret_rv == secret_rv)
    }

    /// [`Self::wrote_status_version`] for a watched EncryptedSecret.
    pub fn is_own_status_write(&self, w: &Watched) -> bool {
        let md = w.meta();
        match (&md.uid, &md.resource_version) {
            (Some(uid), Some(rv)) => self.wrote_status_version(uid, rv),
            _ => false,
        }
    }

    /// [`Self::wrote_secret_version`] for an owned Secret (by its controller
    /// owner reference).
    pub fn is_own_secret_write(&self, m: &SecretMeta) -> bool {
        match (m.controller_uid(), m.resource_version.as_deref()) {
            (Some(uid), Some(rv)) => self.wrote_secret_version(uid, rv),
            _ => false,
        }
    }

    /// True when a watch event of `w` triggers nothing: our own Synced
    /// status write's echo ([`Self::is_own_status_write`]), or any version
    /// that arrives while such a write is in flight — held back until the
    /// write's answer says which version it made ([`StatusWrite::finish`]).
    ///
    /// The echo and the write's answer leave the API server together; which
    /// of the two this process reads first is up to the connection (over
    /// one HTTP/2 connection the echo often comes first: a third more
    /// reconciles at 100,000 resources before this).
    pub fn is_quiet_status_event(&self, w: &Watched) -> bool {
        if self.is_own_status_write(w) {
            return true;
        }
        let md = w.meta();
        match (md.uid.as_deref(), md.resource_version.as_deref()) {
            (Some(uid), Some(rv)) => held_back(&self.status_writes, uid, rv),
            _ => false,
        }
    }

    /// Begins a Synced status write for `uid` (see
    /// [`Self::is_quiet_status_event`]); the returned guard ends it.
    pub fn status_write(&self, uid: &str) -> WriteInFlight<'_> {
        WriteInFlight::begin(&self.status_writes, uid)
    }

    /// True when an owned Secret's watch event triggers no reconcile of its
    /// owner: our own last write's echo ([`Self::is_own_secret_write`]), or
    /// any version that arrives while we are writing that Secret — held back
    /// until the write's answer says which version it made
    /// ([`WriteInFlight::finish`]; the store is updated either way). As with
    /// the status, over one HTTP/2 connection the echo of a create often
    /// arrives before the create's answer.
    pub fn is_quiet_secret_event(&self, m: &SecretMeta) -> bool {
        if self.is_own_secret_write(m) {
            return true;
        }
        match (m.controller_uid(), m.resource_version.as_deref()) {
            (Some(uid), Some(rv)) => held_back(&self.secret_writes, uid, rv),
            _ => false,
        }
    }

    /// Begins the writes of `uid`'s Secret (see
    /// [`Self::is_quiet_secret_event`]); the returned guard ends them.
    pub fn secret_write(&self, uid: &str) -> WriteInFlight<'_> {
        WriteInFlight::begin(&self.secret_writes, uid)
    }

    pub fn last_write(&self, uid: &str) -> Option<(String, String)> {
        self.written
            .lock_or_recover()
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
        let written = self.written.lock_or_recover();
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
    pub fn retain_objects(&self, live: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        {
            let mut w = self.written.lock_or_recover();
            let before = w.len();
            w.retain(|uid, _| live(uid));
            n += before - w.len();
        }
        let mut f = self.failures.lock_or_recover();
        let before = f.len();
        f.retain(|uid, _| live(uid));
        n + before - f.len()
    }

    /// Entries of per-object memory (written + failures), for tests.
    pub fn tracked_objects(&self) -> usize {
        self.written.lock_or_recover().len() + self.failures.lock_or_recover().len()
    }

    pub fn forget(&self, uid: &str) {
        self.written.lock_or_recover().remove(uid);
        self.succeeded(uid);
    }
}
