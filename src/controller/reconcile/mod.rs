//! The reconcile pipeline for one EncryptedSecret. [`reconcile`] reads top
//! down as named stages; each returns the next stage's input or an early
//! [`Done`], and the status and event are written once, at the end
//! ([`finish`]), from that outcome:
//!
//! 1. `finalize` — deletion, and the finalizer (only for
//!    `deletionPolicy: Retain`); then `admit` — Secret types that would
//!    make the cluster mint a credential are refused (pure) [`ownership`]
//! 2. `ownership` — who controls the existing Secret (metadata from the
//!    owned-Secret store; a GET only before its first list, while it lags
//!    our own write, or while a conflict is polled) [`ownership`]
//! 3. `in_sync` — source hash + Secret resourceVersion unchanged since our
//!    last write → nothing to do; `written_before` — the Secret was written
//!    from this source (its annotation) and nobody else wrote its data
//!    since → record it, no decrypt, no write (a failover) [`ownership`]
//! 4. `unwrap_and_decrypt` — the DEK through the KMS layer, then every
//!    value (async edge; [`resource::open_resource`]) [`decrypt`]
//! 5. `build` — the Secret object; templates rendered off the runtime
//!    [`decrypt`]
//! 6. `apply` — create a new Secret (create-if-absent), server-side apply
//!    an existing one (async edge), replacing an immutable Secret when its
//!    content changed [`apply`]
//! 7. `restart` — after a write that changed the Secret's content, the
//!    `rolloutRestartTargets` are restarted (once per change) [`restart`]
//!
//! Then `finish` writes status and event once ([`report`]).
//!
//! # Guarantees
//! - A failing KMS or decryption never deletes or empties a Secret: writes
//!   happen only after a complete, authenticated decrypt.
//! - A Secret we do not control is never overwritten unless it carries
//!   `kmsecrets.dev/adopt: "true"`. A Secret missing from the owned-Secret
//!   store (which only holds Secrets labelled as ours) is created, never
//!   applied: if one of that name exists after all, the create fails and
//!   the Secret is read and judged, so an unlabelled Secret of the same name
//!   is never clobbered.
//! - When nothing changed there is no KMS call, no decrypt, no API read and
//!   no write.
//! - Status, events and logs carry bounded text: reasons, key ids, field
//!   names, API error codes; never a value.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::State;
use super::fairness::{self, Parked};
use super::keys::{KEYS_HEALTHY, keys_condition, keys_condition_for};
use super::state::Arrived;
use super::status::{
    Outcome, Reason, event_due, next_condition, progress_condition, ready_condition,
};
use crate::api::{
    ADOPT_ANNOTATION, DeletionPolicy, EncryptedSecret, EncryptedSecretStatus, FIELD_MANAGER,
    FINALIZER, WorkloadKind,
};
use crate::backoff::jittered;
use crate::resource::{self, Opened};
use crate::secret::{self, build_owned, source_hash};

/// What the controller watches: metadata parsed, spec and status as compact
/// text opened per reconcile; a malformed object still lands in the store
/// instead of failing the whole list or watch (see [`super::watched`]).
pub use super::watched::{Facts, Malformed, Watched};

pub use super::lean::SecretWritten;
pub use super::watch::SecretMeta;

/// What one reconcile runs with: the shared [`State`] and the owned-Secret
/// store of its namespace scope.
pub struct Context {
    pub state: Arc<State>,
    /// The scope's EncryptedSecret store (a status write's early echo is
    /// released in it, see `finish`).
    pub store: Store<Watched>,
    pub secrets: Store<SecretMeta>,
    /// Reconciles deferred for their namespace's KMS share, woken when one
    /// of its workers is free (see [`super::fairness`]).
    pub parked: Parked,
    /// True once the scope's EncryptedSecret store has listed.
    pub listed: tokio::sync::watch::Receiver<bool>,
    /// Paces the triggers of a listed store (see [`super::feed`]).
    pub feed: super::feed::Feed,
}

/// What ends a reconcile in `error_policy` (per-object backoff) instead of
/// a status: the one rule is that an API failure *inside* a stage becomes
/// the reconcile's outcome (`ApiError`, written to status like any other),
/// so only what cannot be reported that way is an error here.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object lacks what identifies it (the server should never send one).
    #[error("object has no {0}")]
    Identity(&'static str),
    /// The final status write failed: nowhere left to report it.
    #[error("writing status failed: {0}")]
    Status(#[source] kube::Error),
    /// Orphaning the Secret of a malformed, deleted `Retain` resource failed.
    #[error("releasing a deleted resource failed: {0}")]
    Release(#[source] kube::Error),
    /// Reading a resource whose spec the store released failed.
    #[error("reading the resource failed: {0}")]
    Read(#[source] kube::Error),
}

impl ReconcileError {
    /// Bounded `result` label: every failure here is an API request that
    /// failed or an object the server should never send.
    pub fn reason(&self) -> Reason {
        Reason::ApiError
    }
}

/// How long a reconcile waits for the owned-Secret store's first list.
const STORE_WAIT: Duration = Duration::from_secs(10);

type Result<T, E = ReconcileError> = std::result::Result<T, E>;

/// How a reconcile ended, before its status is written.
#[derive(Debug)]
pub enum Done {
    /// Judged: the outcome, what [`finish`] reports, when to look again.
    Judged {
        outcome: Outcome,
        report: Report,
        next: Next,
    },
    /// Not attempted: its namespace's share of the KMS stage was taken. The
    /// resource is parked ([`super::fairness`]); no KMS call, no status
    /// write; counted in `kmsecrets_reconcile_deferred_total`.
    Deferred,
}

/// What [`finish`] writes.
#[derive(Debug)]
pub enum Report {
    /// No status write (deleted, or our own last write is already reported).
    Nothing,
    /// Status from the outcome; `Some` also records a completed sync, `None`
    /// keeps the previous sync fields (the existing Secret stays as it is).
    Status(Option<SyncInfo>),
}

/// When to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    AwaitChange,
    Resync,
    /// Done, but a change held back meanwhile must be looked at: run again
    /// at once.
    Again,
    Backoff,
    SlowRetry,
    ConflictPoll,
}

#[derive(Debug, Clone)]
pub struct SyncInfo {
    hash: String,
    secret_rv: Option<String>,
    key_id: Option<String>,
    /// The applied Secret's content-change time (with restart targets).
    content_changed_at: Option<String>,
    /// The content change whose restarts [`restart`] has now requested.
    restarted: Option<String>,
}

/// Either the next stage's input or an early end.
type Stage<T> = ControlFlow<Done, T>;

/// Run a stage: continue with its value, or return its `Done`.
macro_rules! stage {
    ($e:expr) => {
        match $e {
            ControlFlow::Continue(v) => v,
            ControlFlow::Break(done) => return done,
        }
    };
}

/// An API request inside a stage: its value, or the stage ends with the
/// failure as its outcome (`ApiError`, backoff) — `$doing` says what was
/// being done ("reading Secret db").
macro_rules! api {
    ($doing:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return ControlFlow::Break(request_failed($doing, &e)),
        }
    };
}

// after the macro: the stage files use `stage!`
mod apply;
mod decrypt;
mod ownership;
mod report;
mod restart;

pub use apply::keys_left_by_create;
use apply::*;
use decrypt::*;
use ownership::*;
use report::*;
use restart::*;

fn done(outcome: Outcome, report: Report, next: Next) -> Done {
    Done::Judged {
        outcome,
        report,
        next,
    }
}

fn stop<T>(outcome: Outcome, report: Report, next: Next) -> Stage<T> {
    ControlFlow::Break(done(outcome, report, next))
}

/// A failed API request as the reconcile's outcome: `ApiError`, backoff,
/// status written.
fn request_failed(doing: impl std::fmt::Display, e: &kube::Error) -> Done {
    done(
        Outcome::failed(
            Reason::ApiError,
            format!("{doing} failed: {}", api_error_text(e)),
        ),
        Report::Status(None),
        Next::Backoff,
    )
}

/// The resource being reconciled, with the identity every stage needs.
struct Target<'a> {
    es: &'a EncryptedSecret,
    ns: String,
    name: String,
    uid: String,
    es_api: Api<EncryptedSecret>,
    /// The same resource, answers decoded for their resourceVersion only
    /// (see [`super::lean::Written`]).
    es_meta_api: Api<super::lean::Written<EncryptedSecret>>,
    secrets: Api<Secret>,
}

impl<'a> Target<'a> {
    fn new(es: &'a EncryptedSecret, ctx: &Context) -> Result<Target<'a>> {
        let ns = es
            .namespace()
            .ok_or(ReconcileError::Identity("namespace"))?;
        let uid = es.uid().ok_or(ReconcileError::Identity("uid"))?;
        let client = ctx.state.client.clone();
        Ok(Target {
            es,
            name: es.name_any(),
            uid,
            es_api: Api::namespaced(client.clone(), &ns),
            es_meta_api: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client, &ns),
            ns,
        })
    }
}

pub async fn reconcile(obj: Arc<Watched>, ctx: Arc<Context>) -> Result<Action> {
    let start = std::time::Instant::now();
    // The object and the stages' state (~14 KB) are boxed once here
    // instead of being moved with the future through kube-runtime's queue
    // on every reconcile.
    let res = match obj.released() {
        Some(facts) => Box::pin(settled_or_read(&obj, &facts, &ctx)).await,
        None => Box::pin(open_and_reconcile(&obj, &ctx)).await,
    };
    // a deferred resource is parked: its place in the feed stays taken
    // until it has really been reconciled (else a cold start behind a few
    // data keys would park the whole list, each with a scheduler requeue)
    if !matches!(res, Ok((None, _))) {
        ctx.feed.done();
    }
    let m = &ctx.state.metrics;
    m.reconcile_duration.observe(start.elapsed().as_secs_f64());
    let label = match &res {
        Ok((None, _)) => {
            m.reconcile_deferred.inc();
            return res.map(|(_, a)| a);
        }
        Ok((Some(o), _)) if o.ready() => "success",
        Ok((Some(o), _)) => o.reason.as_str(),
        Err(e) => e.reason().as_str(),
    };
    m.reconcile.with_label_values(&[label]).inc();
    res.map(|(_, a)| a)
}

/// The spec parsed from the store's text, then the pipeline; a resource
/// found synced at its generation has its spec released in the store.
async fn open_and_reconcile(obj: &Watched, ctx: &Context) -> Result<Ending> {
    let es = match obj.parse() {
        Ok(es) => es,
        // `Malformed` names the failing field, never a value.
        Err(m) => return malformed(obj, m, ctx).await,
    };
    let res = reconcile_valid(&es, ctx).await;
    let md = es.meta();
    if matches!(&res, Ok((Some(o), _)) if o.ready())
        && md.deletion_timestamp.is_none()
        && md
            .uid
            .as_deref()
            .is_some_and(|uid| ctx.state.synced_at(uid, md.generation))
    {
        obj.release(Facts::of(&es.spec, es.status.as_ref()));
    }
    res
}

/// Our Synced status write's echo, stored before the write's answer was
/// read: released in place, as the watch releases an echo read after it
/// (see `super::watched`).
fn release_echo(es: &EncryptedSecret, ctx: &Context, rv: Option<&str>) {
    let md = es.meta();
    let (Some(name), Some(ns), Some(rv)) = (md.name.as_deref(), md.namespace.as_deref(), rv) else {
        return;
    };
    let Some(stored) = ctx.store.get(&ObjectRef::new(name).within(ns)) else {
        return;
    };
    let md = stored.meta();
    if md.resource_version.as_deref() != Some(rv)
        || md.deletion_timestamp.is_some()
        || stored.released().is_some()
        || !md
            .uid
            .as_deref()
            .is_some_and(|uid| ctx.state.synced_at(uid, md.generation))
    {
        return;
    }
    if let Ok(echo) = stored.parse() {
        stored.release(Facts::of(&echo.spec, echo.status.as_ref()));
    }
}

/// 0. A resource whose spec was released (see [`super::watched`]): done
///    when [`settled`] says nothing can have changed; otherwise it is read
///    again (one GET) and goes through the pipeline like any other.
async fn settled_or_read(obj: &Watched, facts: &Facts, ctx: &Context) -> Result<Ending> {
    let ns = obj
        .namespace()
        .ok_or(ReconcileError::Identity("namespace"))?;
    let name = obj.name_any();
    if settled(obj, facts, ctx) {
        if let Some(uid) = obj.meta().uid.as_deref() {
            ctx.state.succeeded(uid);
        }
        debug!(name = %name, namespace = %ns, "in sync (own last write); nothing to do");
        return Ok((Some(Outcome::synced(&name)), Action::await_change()));
    }
    let api: Api<Watched> = Api::namespaced(ctx.state.client.clone(), &ns);
    match api.get_opt(&name).await.map_err(ReconcileError::Read)? {
        Some(mut fresh) => {
            super::trim_watched(&mut fresh);
            open_and_reconcile(&fresh, ctx).await
        }
        // deleted meanwhile: its deletion event follows
        None => Ok((Some(Outcome::synced(&name)), Action::await_change())),
    }
}

/// Whether a resource with a released spec needs no work: not being
/// deleted, its finalizer as its deletion policy wants, its Secret (in the
/// owned-Secret store) exactly the version this process wrote and reported
/// Synced at this generation, and its `KeysHealthy` condition what the key
/// table says now. The same checks as the pipeline's `finalize` and
/// `in_sync`, without the spec text: the generation stands for it.
pub fn settled(obj: &Watched, facts: &Facts, ctx: &Context) -> bool {
    let md = obj.meta();
    let (Some(uid), Some(name), Some(ns)) = (
        md.uid.as_deref(),
        md.name.as_deref(),
        md.namespace.as_deref(),
    ) else {
        return false;
    };
    if md.deletion_timestamp.is_some()
        || md.generation.is_none()
        || obj.finalizers().iter().any(|f| f == FINALIZER) != facts.retain
    {
        return false;
    }
    let Some(secret) = ctx.secrets.get(&ObjectRef::new(name).within(ns)) else {
        return false;
    };
    let Some(rv) = secret.resource_version.as_deref() else {
        return false;
    };
    // with a generation the hash is never computed
    if !ctx
        .state
        .synced_in_memory(uid, String::new, rv, md.generation)
    {
        return false;
    }
    let prev = facts.keys_condition.as_deref();
    let next = keys_condition_for(
        facts,
        &ctx.state.keys,
        prev,
        md.generation,
        Time(jiff::Timestamp::now()),
    );
    !keys_differ(prev, next.as_ref())
}

pub fn error_policy(es: Arc<Watched>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = es.uid().unwrap_or_default();
    warn!(name = %es.name_any(), namespace = es.namespace().as_deref().unwrap_or(""), error = %err, "reconcile failed");
    Action::requeue(ctx.state.backoff(&key))
}

/// The outcome (`None`: deferred) and when to look again.
type Ending = (Option<Outcome>, Action);

async fn reconcile_valid(es: &EncryptedSecret, ctx: &Context) -> Result<Ending> {
    let t = Target::new(es, ctx)?;
    let done = pipeline(&t, ctx).await;
    finish(&t, ctx, done).await
}

/// The stages, in order.
async fn pipeline(t: &Target<'_>, ctx: &Context) -> Done {
    stage!(finalize(t, ctx).await);
    stage!(admit(t, ctx));
    let current = stage!(ownership(t, ctx).await);
    let hash = stage!(in_sync(t, ctx, current.as_ref()));
    let hash = stage!(written_before(t, current.as_ref(), hash).await);
    let opened = stage!(unwrap_and_decrypt(t, ctx).await);
    let secret = stage!(build(t.es, &opened, &hash, &ctx.state).await);
    let key_id = opened.key_id.clone();
    drop(opened);
    let done = apply(t, ctx, secret, current.as_ref(), hash, key_id).await;
    restart(t, ctx, done).await
}

/// The one place status and events are written, and the per-object memory
/// updated, from a stage's [`Done`].
async fn finish(t: &Target<'_>, ctx: &Context, d: Done) -> Result<Ending> {
    let state = &ctx.state;
    let Done::Judged {
        outcome,
        report,
        next,
    } = d
    else {
        return Ok((None, Action::requeue(jittered(fairness::BACKSTOP))));
    };
    let generation = t.es.meta().generation;
    // a key check changed what the KeysHealthy condition must say: write
    // the status even when the reconcile itself had nothing to report
    let report = match report {
        Report::Nothing
            if outcome.ready()
                && t.es.meta().deletion_timestamp.is_none()
                && keys_condition_stale(t, ctx) =>
        {
            Report::Status(None)
        }
        r => r,
    };
    if let Report::Status(sync) = &report {
        if let Some(s) = sync {
            state.remember_write(&t.uid, &s.hash, s.secret_rv.as_deref().unwrap_or_default());
        }
        let during = sync.is_some().then(|| state.status_write(&t.uid));
        let written = write_status(t, ctx, &outcome, sync.as_ref()).await;
        let arrived = during.map(|d| d.finish(written.as_ref().ok().and_then(|rv| rv.as_deref())));
        let status_rv = written.map_err(ReconcileError::Status)?;
        if sync.is_some() {
            state.remember_synced(&t.uid, generation, status_rv.clone());
        }
        match arrived {
            // someone else's version arrived while the write was in flight:
            // its trigger was held back, so run again now
            Some(Arrived::Other) => return Ok((Some(outcome), Action::requeue(Duration::ZERO))),
            // our echo came before the answer: release it in the store as
            // the watch does for an echo that comes after
            Some(Arrived::Echo) => release_echo(t.es, ctx, status_rv.as_deref()),
            _ => {}
        }
    }
    let action = match next {
        Next::AwaitChange => Action::await_change(),
        // the periodic resync is one sweep over the store, not a timer per
        // object (see `super::resync`)
        Next::Resync => {
            state.succeeded(&t.uid);
            Action::await_change()
        }
        Next::Again => {
            state.succeeded(&t.uid);
            Action::requeue(Duration::ZERO)
        }
        Next::Backoff => Action::requeue(state.backoff(&t.uid)),
        Next::SlowRetry => Action::requeue(state.slow_retry()),
        Next::ConflictPoll => Action::requeue(state.conflict_retry()),
    };
    Ok((Some(outcome), action))
}
