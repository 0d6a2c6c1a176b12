//! The one writer of status and events: an outcome becomes a `Ready`
//! condition, an Event when one is due, and metrics — for a pipeline's
//! [`super::Done`] and for an object that could not be parsed.

use super::*;

/// One Event for an outcome (Normal when ready, Warning otherwise). A failed
/// publish is logged, never fatal.
pub(super) async fn publish(
    state: &State,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    o: &Outcome,
) {
    let ev = Event {
        type_: if o.ready() {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: o.reason.as_str().to_string(),
        note: Some(o.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = state.recorder.publish(&ev, &reference).await {
        warn!(error = %e, "cannot publish event");
    }
}

/// API errors in status: the code, the reason and the server's message
/// (which names the object and field); never the request body.
pub(super) fn api_error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// The status, merge-patched; skipped when nothing would change. An
/// Event is published when Ready flips or its reason changes, except on a
/// new resource's first sync ([`event_due`]). Returns the resourceVersion
/// the write produced (`None`: nothing was written).
pub(super) async fn write_status(
    t: &Target<'_>,
    ctx: &Context,
    outcome: &Outcome,
    sync: Option<&SyncInfo>,
) -> kube::Result<Option<String>> {
    let es = t.es;
    let prev = es.status.clone().unwrap_or_default();
    let prev_cond = ready_condition(es.status.as_ref());
    let now = Time(jiff::Timestamp::now());
    let cond = next_condition(prev_cond, outcome, es.meta().generation, now.clone());
    let prev_keys = keys_condition_of(es.status.as_ref());
    let keys_cond = keys_condition(
        es,
        &ctx.state.keys,
        prev_keys,
        es.meta().generation,
        now.clone(),
    );
    let mut next = EncryptedSecretStatus {
        observed_generation: es.meta().generation,
        secret_name: Some(t.name.clone()),
        key_id: prev.key_id.clone(),
        source_hash: prev.source_hash.clone(),
        secret_resource_version: prev.secret_resource_version.clone(),
        last_sync_time: prev.last_sync_time.clone(),
        last_rollout_restart: prev.last_rollout_restart.clone(),
        conditions: std::iter::once(cond.clone())
            .chain(keys_cond.clone())
            .chain(progress_condition(
                &prev.conditions,
                outcome,
                es.meta().generation,
                now.clone(),
            ))
            .collect(),
    };
    if let Some(s) = sync {
        let changed = prev.source_hash.as_deref() != Some(&s.hash)
            || prev.secret_resource_version != s.secret_rv;
        next.source_hash = Some(s.hash.clone());
        next.secret_resource_version = s.secret_rv.clone();
        if s.key_id.is_some() {
            next.key_id = s.key_id.clone();
        }
        if s.restarted.is_some() {
            next.last_rollout_restart = s.restarted.clone();
        }
        if changed || next.last_sync_time.is_none() {
            next.last_sync_time = Some(now.0.to_string());
        }
    }
    // Conditions compare without timestamp churn: same status/reason/message
    // and generation means no write.
    let same = prev.observed_generation == next.observed_generation
        && prev.secret_name == next.secret_name
        && prev.key_id == next.key_id
        && prev.source_hash == next.source_hash
        && prev.secret_resource_version == next.secret_resource_version
        && prev.last_sync_time == next.last_sync_time
        && prev.last_rollout_restart == next.last_rollout_restart
        && prev.conditions.len() == next.conditions.len()
        && prev
            .conditions
            .iter()
            .zip(&next.conditions)
            .all(|(p, n)| same_condition(p, n));
    if same {
        return Ok(None);
    }
    // A merge patch, not a server-side apply: the status is ours alone
    // (every field of `next` is carried over from the previous one, and the
    // condition list is replaced whole), and a merge patch costs the API
    // server far less than an apply (no structured merge, no conflict
    // detection) — at 10,000 resources it is a third of its work.
    let patch = json!({ "status": next });
    // only the new resourceVersion is read from the answer (the spec with
    // its ciphertext, the status and the managed fields are skipped unread)
    let written = t
        .es_meta_api
        .patch_status(
            &t.name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await?;
    if event_due(prev_cond, &cond) {
        publish(&ctx.state, es.object_ref(&()), outcome).await;
    }
    if let Some(k) = &keys_cond
        && key_event_due(prev_keys, k)
    {
        publish_keys(&ctx.state, es.object_ref(&()), k).await;
    }
    Ok(written.resource_version())
}

/// An object whose spec does not parse: Ready=False InvalidSpec (status
/// merge-patched, other status fields kept), one Warning event, then wait
/// for a change. Written once per generation (remembered in memory), so
/// our own status write does not loop. The Secret, if any, is left alone.
pub(super) async fn malformed(obj: &Watched, why: Malformed, ctx: &Context) -> Result<Ending> {
    let state = &ctx.state;
    let ns = obj
        .namespace()
        .ok_or(ReconcileError::Identity("namespace"))?;
    let name = obj.name_any();
    let uid = obj.uid().ok_or(ReconcileError::Identity("uid"))?;
    let part = if why.path.starts_with("status") {
        "status"
    } else {
        "spec"
    };
    let outcome = Outcome::failed(
        Reason::InvalidSpec,
        format!(
            "{part} cannot be read: {why} (values are not shown; `kmsecrets verify FILE` or `kubectl explain encryptedsecret.spec` tells what is expected)"
        ),
    );
    let generation = obj.meta().generation;
    let marker = format!("invalid:{}", generation.unwrap_or_default());
    let api: Api<Watched> = Api::namespaced(state.client.clone(), &ns);
    if obj.meta().deletion_timestamp.is_some() {
        // Our finalizer exists only for deletionPolicy Retain, so honour it
        // even though the spec cannot be read: orphan, then let go.
        if obj.finalizers().iter().any(|f| f == FINALIZER) {
            let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &ns);
            orphan_secret(&secrets, &name, &uid)
                .await
                .map_err(ReconcileError::Release)?;
            set_finalizer(&api, obj.meta(), false)
                .await
                .map_err(ReconcileError::Release)?;
        }
        state.forget(&uid);
        return Ok((Some(outcome), Action::await_change()));
    }
    if state.last_write(&uid).is_some_and(|(h, _)| h == marker) {
        return Ok((Some(outcome), Action::await_change()));
    }
    warn!(%name, namespace = %ns, error = %outcome.message, "malformed EncryptedSecret");
    let now = Time(jiff::Timestamp::now());
    let cond = next_condition(None, &outcome, generation, now.clone());
    let stalled = progress_condition(&[], &outcome, generation, now);
    let conditions: Vec<Condition> = [Some(cond), stalled].into_iter().flatten().collect();
    let patch = json!({"status": {"observedGeneration": generation, "conditions": conditions}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch_status(&name, &params, &Patch::Merge(&patch))
        .await
        .map_err(ReconcileError::Status)?;
    state.remember_write(&uid, &marker, "");
    publish(state, obj.object_ref(&()), &outcome).await;
    Ok((Some(outcome), Action::await_change()))
}

/// Conditions compare without timestamp churn.
fn same_condition(p: &Condition, n: &Condition) -> bool {
    p.type_ == n.type_
        && p.status == n.status
        && p.reason == n.reason
        && p.message == n.message
        && p.observed_generation == n.observed_generation
}

/// The `KeysHealthy` condition a status carries.
pub(super) fn keys_condition_of(status: Option<&EncryptedSecretStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == KEYS_HEALTHY)
}

/// Whether the status's `KeysHealthy` condition is not what the key table
/// says now (a key check found a change: write the status even when
/// nothing else changed).
pub(super) fn keys_condition_stale(t: &Target<'_>, ctx: &Context) -> bool {
    let prev = keys_condition_of(t.es.status.as_ref());
    let next = keys_condition(
        t.es,
        &ctx.state.keys,
        prev,
        t.es.meta().generation,
        Time(jiff::Timestamp::now()),
    );
    keys_differ(prev, next.as_ref())
}

/// Whether a `KeysHealthy` condition must change from `prev` to `next`.
pub(super) fn keys_differ(prev: Option<&Condition>, next: Option<&Condition>) -> bool {
    match (prev, next) {
        (None, None) => false,
        (Some(p), Some(n)) => !same_condition(p, n),
        _ => true,
    }
}

/// One Event per state change of a resource's keys (not per check): a
/// Warning while a key is unhealthy, Normal when all are healthy again.
fn key_event_due(prev: Option<&Condition>, next: &Condition) -> bool {
    prev.is_none_or(|p| p.status != next.status || p.reason != next.reason)
}

async fn publish_keys(
    state: &State,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    c: &Condition,
) {
    let ev = Event {
        type_: if c.reason == "KeysHealthy" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: c.reason.clone(),
        note: Some(c.message.clone()),
        action: "CheckKeys".into(),
        secondary: None,
    };
    if let Err(e) = state.recorder.publish(&ev, &reference).await {
        warn!(error = %e, "cannot publish event");
    }
}
