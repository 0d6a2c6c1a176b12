//! The reconcile pipeline for one EncryptedSecret:
//!
//! 1. finalizer bookkeeping (only for `deletionPolicy: Retain`)
//! 2. ownership check of the existing Secret (metadata only)
//! 3. in-sync check: source hash + Secret resourceVersion → nothing to do
//! 4. resolve: unwrap the DEK through the KMS layer (async edge)
//! 5. decrypt values (pure)
//! 6. build the Secret (pure)
//! 7. apply it with server-side apply (async edge)
//! 8. status + event on transitions
//!
//! # Guarantees
//! - A failing KMS or decryption never deletes or empties a Secret: writes
//!   happen only after a complete, authenticated decrypt.
//! - A Secret we do not control is never overwritten unless it carries
//!   `kmsecrets.dev/adopt: "true"`.
//! - When nothing changed there is no KMS call, no decrypt and no write.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::State;
use super::secret::{build_owned, source_hash};
use super::status::{Outcome, is_transition, next_condition, ready_condition};
use crate::api::{
    ADOPT_ANNOTATION, DeletionPolicy, EncryptedSecret, EncryptedSecretStatus, FIELD_MANAGER,
    FINALIZER,
};
use crate::resource::{self, ResourceError};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no {0}")]
    Missing(&'static str),
}

impl ReconcileError {
    pub fn reason(&self) -> &'static str {
        "ApplyFailed"
    }
}

type Result<T, E = ReconcileError> = std::result::Result<T, E>;

/// What the controller watches: a malformed object deserializes as `Err`
/// with its metadata only, instead of failing the whole list or watch (a
/// typed list fails to decode as a whole when one item does not parse).
pub type Watched = DeserializeGuard<EncryptedSecret>;

pub async fn reconcile(obj: Arc<Watched>, state: Arc<State>) -> Result<Action> {
    let start = std::time::Instant::now();
    let res = match &obj.0 {
        Ok(es) => reconcile_inner(es, &state).await,
        Err(invalid) => malformed(&obj, invalid, &state).await,
    };
    state
        .metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    let label = match &res {
        Ok((o, _)) if o.ready => "success",
        Ok((o, _)) => o.reason,
        Err(e) => e.reason(),
    };
    state.metrics.reconcile.with_label_values(&[label]).inc();
    res.map(|(_, a)| a)
}

pub fn error_policy(es: Arc<Watched>, err: &ReconcileError, state: Arc<State>) -> Action {
    let key = es.uid().unwrap_or_default();
    warn!(name = %es.name_any(), namespace = es.namespace().as_deref().unwrap_or(""), error = %err, "reconcile failed");
    Action::requeue(state.backoff(&key))
}

async fn reconcile_inner(es: &EncryptedSecret, state: &State) -> Result<(Outcome, Action)> {
    let ns = es.namespace().ok_or(ReconcileError::Missing("namespace"))?;
    let name = es.name_any();
    let uid = es.uid().ok_or(ReconcileError::Missing("uid"))?;
    let es_api: Api<EncryptedSecret> = Api::namespaced(state.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &ns);

    // 1. deletion and finalizer
    if es.meta().deletion_timestamp.is_some() {
        if es.finalizers().iter().any(|f| f == FINALIZER) {
            orphan_secret(&secrets, &name, &uid).await?;
            set_finalizer(&es_api, es.meta(), false).await?;
            info!(%name, namespace = %ns, "deletionPolicy Retain: Secret orphaned");
        }
        state.forget(&uid);
        return Ok((Outcome::synced(&name), Action::await_change()));
    }
    let wants_finalizer = es.spec.deletion_policy == DeletionPolicy::Retain;
    let has_finalizer = es.finalizers().iter().any(|f| f == FINALIZER);
    if wants_finalizer != has_finalizer {
        set_finalizer(&es_api, es.meta(), wants_finalizer).await?;
    }

    // 2. who owns the Secret now (metadata only: no plaintext in memory)
    let current = secrets.get_metadata_opt(&name).await?;
    if let Some(meta) = &current {
        let controller = meta
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let ours = controller.is_some_and(|o| o.uid == uid);
        let adopt = meta
            .annotations()
            .get(ADOPT_ANNOTATION)
            .is_some_and(|v| v == "true");
        if !ours && !adopt {
            let who = controller.map_or("no controller".to_string(), |o| {
                format!("controlled by {} {}", o.kind, o.name)
            });
            let outcome = Outcome::failed(
                "SecretConflict",
                format!(
                    "Secret {name} already exists ({who}); not overwriting it. Delete it, or annotate it {ADOPT_ANNOTATION}=\"true\" to let kmsecrets take it over"
                ),
            );
            write_status(&es_api, es, state, &outcome, None).await?;
            return Ok((outcome, Action::requeue(state.conflict_retry())));
        }
    }

    // 3. in sync? Compare with what we last wrote (memory first: the status
    //    of our own last write may not have reached the watch cache yet).
    let hash = source_hash(es);
    let current_rv = current
        .as_ref()
        .and_then(|m| m.metadata.resource_version.clone());
    let status = es.status.as_ref();
    let generation = es.meta().generation;
    if let Some(rv) = &current_rv
        && state.synced_in_memory(&uid, &hash, rv, generation)
    {
        state.succeeded(&uid);
        debug!(%name, namespace = %ns, "in sync (own last write); nothing to do");
        return Ok((Outcome::synced(&name), Action::requeue(state.resync())));
    }
    let remembered = state.last_write(&uid);
    let in_sync = current_rv.is_some()
        && (remembered
            .as_ref()
            .is_some_and(|(h, rv)| *h == hash && Some(rv) == current_rv.as_ref())
            || status.is_some_and(|s| {
                s.source_hash.as_deref() == Some(hash.as_str())
                    && s.secret_resource_version == current_rv
            }));
    if in_sync && ready_condition(status).is_some_and(|c| c.status == "True") {
        let outcome = Outcome::synced(&name);
        let sync = SyncInfo {
            hash,
            secret_rv: current_rv,
            key_id: status.and_then(|s| s.key_id.clone()),
        };
        let rv = sync.secret_rv.clone().unwrap_or_default();
        write_status(&es_api, es, state, &outcome, Some(&sync)).await?;
        state.remember_write(&uid, &sync.hash, &rv);
        state.remember_synced(&uid, generation);
        state.succeeded(&uid);
        debug!(%name, namespace = %ns, "in sync; nothing to do");
        return Ok((outcome, Action::requeue(state.resync())));
    }

    // 4-5. resolve and decrypt
    let opened = async {
        let binding = resource::validate(es)?;
        let (dek, key_id) = resource::unwrap_dek(&state.kms, es).await?;
        let values = resource::open(&dek, &binding, &es.spec)?;
        Ok::<_, ResourceError>((values, key_id))
    }
    .await;
    let (values, key_id) = match opened {
        Ok(v) => v,
        Err(e) => {
            let outcome = Outcome::failed(e.reason(), e.to_string());
            // Keep the previous sync info: the existing Secret stays as it is.
            write_status(&es_api, es, state, &outcome, None).await?;
            let action = if e.is_transient() {
                Action::requeue(state.backoff(&uid))
            } else {
                Action::requeue(state.slow_retry())
            };
            return Ok((outcome, action));
        }
    };

    // 6-7. build and apply
    let secret = build_owned(es, &values);
    drop(values);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut result = secrets.patch(&name, &params, &Patch::Apply(&secret)).await;
    if let Err(e) = &result
        && is_immutable_conflict(e)
        && let Some(meta) = &current
    {
        // An immutable Secret cannot change in place: replace it. The delete
        // is preconditioned on the uid we just checked is ours (or adopted),
        // and happens only after a complete, authenticated decrypt.
        info!(%name, namespace = %ns, "Secret is immutable; replacing it");
        let dp = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: meta.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if secrets.delete(&name, &dp).await.is_ok() {
            result = secrets.patch(&name, &params, &Patch::Apply(&secret)).await;
        }
    }
    let applied = match result {
        Ok(s) => s,
        Err(e) => {
            let outcome = Outcome::failed(
                "ApplyFailed",
                format!("applying Secret {name} failed: {}", api_error_text(&e)),
            );
            write_status(&es_api, es, state, &outcome, None).await?;
            return Ok((outcome, Action::requeue(state.backoff(&uid))));
        }
    };
    drop(secret);
    let secret_rv = applied.metadata.resource_version.clone();
    drop(applied);
    state.remember_write(&uid, &hash, secret_rv.as_deref().unwrap_or_default());

    // 8. status
    let outcome = Outcome::synced(&name);
    let sync = SyncInfo {
        hash,
        secret_rv,
        key_id: Some(key_id),
    };
    write_status(&es_api, es, state, &outcome, Some(&sync)).await?;
    state.remember_synced(&uid, generation);
    state.succeeded(&uid);
    info!(%name, namespace = %ns, "Secret applied");
    Ok((outcome, Action::requeue(state.resync())))
}

fn is_immutable_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 && s.message.contains("immutable"))
}

/// An object whose spec does not parse: Ready=False InvalidSpec (status
/// merge-patched, other status fields kept), one Warning event, then wait
/// for a change. Written once per generation (remembered in memory), so
/// our own status write does not loop. The Secret, if any, is left alone.
async fn malformed(
    obj: &Watched,
    invalid: &InvalidObject,
    state: &State,
) -> Result<(Outcome, Action)> {
    let ns = obj
        .namespace()
        .ok_or(ReconcileError::Missing("namespace"))?;
    let name = obj.name_any();
    let uid = obj.uid().ok_or(ReconcileError::Missing("uid"))?;
    let outcome = Outcome::failed(
        "InvalidSpec",
        format!("spec cannot be read: {}", redact_quoted(&invalid.error)),
    );
    let generation = obj.meta().generation;
    let marker = format!("invalid:{}", generation.unwrap_or_default());
    let api: Api<Watched> = Api::namespaced(state.client.clone(), &ns);
    if obj.meta().deletion_timestamp.is_some() {
        // Our finalizer exists only for deletionPolicy Retain, so honour it
        // even though the spec cannot be read: orphan, then let go.
        if obj.finalizers().iter().any(|f| f == FINALIZER) {
            let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &ns);
            orphan_secret(&secrets, &name, &uid).await?;
            set_finalizer(&api, obj.meta(), false).await?;
        }
        state.forget(&uid);
        return Ok((outcome, Action::await_change()));
    }
    if state.last_write(&uid).is_some_and(|(h, _)| h == marker) {
        return Ok((outcome, Action::await_change()));
    }
    warn!(%name, namespace = %ns, error = %outcome.message, "malformed EncryptedSecret");
    let cond = next_condition(None, &outcome, generation, Time(jiff::Timestamp::now()));
    let patch = json!({"status": {"observedGeneration": generation, "conditions": [cond]}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch_status(&name, &params, &Patch::Merge(&patch))
        .await?;
    state.remember_write(&uid, &marker, "");
    let ev = Event {
        type_: EventType::Warning,
        reason: outcome.reason.to_string(),
        note: Some(outcome.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = state.recorder.publish(&ev, &obj.object_ref(&())).await {
        warn!(error = %e, "cannot publish event");
    }
    Ok((outcome, Action::await_change()))
}

/// Serde errors quote offending values (`invalid type: string "..."`); a
/// misplaced ciphertext must not reach status, events or logs.
fn redact_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let (mut quoted, mut escaped) = (false, false);
    for c in s.chars() {
        if quoted && escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            out.push_str(if quoted { "...\"" } else { "\"" });
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// API errors in status: code and reason only, never the request body.
fn api_error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

struct SyncInfo {
    hash: String,
    secret_rv: Option<String>,
    key_id: Option<String>,
}

/// Server-side apply of the status; skipped when nothing would change. An
/// Event is published when Ready flips or its reason changes.
async fn write_status(
    api: &Api<EncryptedSecret>,
    es: &EncryptedSecret,
    state: &State,
    outcome: &Outcome,
    sync: Option<&SyncInfo>,
) -> Result<()> {
    let prev = es.status.clone().unwrap_or_default();
    let prev_cond = ready_condition(es.status.as_ref());
    let now = Time(jiff::Timestamp::now());
    let cond = next_condition(prev_cond, outcome, es.meta().generation, now.clone());
    let mut next = EncryptedSecretStatus {
        observed_generation: es.meta().generation,
        secret_name: Some(es.name_any()),
        key_id: prev.key_id.clone(),
        source_hash: prev.source_hash.clone(),
        secret_resource_version: prev.secret_resource_version.clone(),
        last_sync_time: prev.last_sync_time.clone(),
        conditions: vec![cond.clone()],
    };
    if let Some(s) = sync {
        let changed = prev.source_hash.as_deref() != Some(&s.hash)
            || prev.secret_resource_version != s.secret_rv;
        next.source_hash = Some(s.hash.clone());
        next.secret_resource_version = s.secret_rv.clone();
        if s.key_id.is_some() {
            next.key_id = s.key_id.clone();
        }
        if changed || next.last_sync_time.is_none() {
            next.last_sync_time = Some(now.0.to_string());
        }
    }
    // Conditions compare without timestamps churn: same status/reason/message
    // and generation means no write.
    let same = prev.observed_generation == next.observed_generation
        && prev.secret_name == next.secret_name
        && prev.key_id == next.key_id
        && prev.source_hash == next.source_hash
        && prev.secret_resource_version == next.secret_resource_version
        && prev.last_sync_time == next.last_sync_time
        && prev_cond.is_some_and(|p| {
            p.status == cond.status
                && p.reason == cond.reason
                && p.message == cond.message
                && p.observed_generation == cond.observed_generation
        })
        && prev.conditions.len() == 1;
    if same {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": crate::api::KIND,
        "status": next,
    });
    api.patch_status(
        &es.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    if is_transition(prev_cond, &cond) {
        let ev = Event {
            type_: if outcome.ready {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: outcome.reason.to_string(),
            note: Some(outcome.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = state.recorder.publish(&ev, &es.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }
    Ok(())
}

async fn set_finalizer<K>(api: &Api<K>, meta: &kube::api::ObjectMeta, present: bool) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut finalizers: Vec<String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    // resourceVersion makes this an optimistic write: a concurrent change
    // gives 409 and a retry with fresh state.
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": meta.resource_version}});
    let name = meta
        .name
        .as_deref()
        .ok_or(ReconcileError::Missing("name"))?;
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Remove our ownerReference from the Secret so garbage collection leaves it.
async fn orphan_secret(secrets: &Api<Secret>, name: &str, uid: &str) -> Result<()> {
    let Some(meta) = secrets.get_metadata_opt(name).await? else {
        return Ok(());
    };
    let refs: Vec<_> = meta.metadata.owner_references.clone().unwrap_or_default();
    if !refs.iter().any(|o| o.uid == uid) {
        return Ok(());
    }
    let keep: Vec<_> = refs.into_iter().filter(|o| o.uid != uid).collect();
    let patch = json!({"metadata": {"ownerReferences": keep, "resourceVersion": meta.metadata.resource_version}});
    secrets
        .patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Slow retry for permanent errors, with ±10% jitter so many failing
/// objects do not retry in lockstep.
pub fn jittered(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

#[cfg(test)]
mod tests {
    use super::redact_quoted;

    #[test]
    fn quoted_values_are_redacted_from_parse_errors() {
        assert_eq!(
            redact_quoted(r#"invalid type: string "c2VjcmV0\"x", expected a sequence"#),
            r#"invalid type: string "...", expected a sequence"#
        );
        assert_eq!(
            redact_quoted("missing field `dataKeys`"),
            "missing field `dataKeys`"
        );
    }
}
