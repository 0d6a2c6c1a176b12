//! Stage 6: write the Secret, only ever after a complete, authenticated
//! decrypt — in pipeline order: 6a create, 6b server-side apply, 6c prune
//! keys a create left behind, 6d mark a content change for restarts.

use super::*;

/// 6d. With rolloutRestartTargets, whether this write changes the Secret's
///     content: the existing Secret is read in full (its data, for the
///     comparison only) and the content-change annotation is carried over,
///     or set to now when `data` or `type` differ. A new Secret has no
///     change time (creation restarts nothing).
pub(super) async fn mark_content_change(
    t: &Target<'_>,
    secret: &mut Secret,
    current: Option<&SecretMeta>,
) -> kube::Result<()> {
    if t.es.spec.rollout_restart_targets.is_empty() || current.is_none() {
        return Ok(());
    }
    let Some(old) = t.secrets.get_opt(&t.name).await? else {
        return Ok(());
    };
    let empty = std::collections::BTreeMap::new();
    let changed = old.data.as_ref().unwrap_or(&empty) != secret.data.as_ref().unwrap_or(&empty)
        || old.type_.as_deref().unwrap_or("Opaque") != secret.type_.as_deref().unwrap_or("Opaque");
    let at = if changed {
        Some(jiff::Timestamp::now().to_string())
    } else {
        old.annotations()
            .get(secret::CONTENT_CHANGED_ANNOTATION)
            .cloned()
    };
    drop(old);
    if let Some(at) = at {
        secret
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(secret::CONTENT_CHANGED_ANNOTATION.into(), at);
    }
    Ok(())
}

/// 6. Write the Secret, only ever after a complete, authenticated decrypt.
///    A new Secret is created (an atomic create-if-absent: a Secret someone
///    made meanwhile is never overwritten; it is read and judged by
///    [`controlled`]); an existing one is server-side applied, and an
///    immutable one whose content changed is replaced (delete preconditioned
///    on its uid, then apply).
pub(super) async fn apply(
    t: &Target<'_>,
    ctx: &Context,
    mut secret: Secret,
    current: Option<&SecretMeta>,
    hash: String,
    key_id: String,
) -> Done {
    let keys: BTreeSet<String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    let written = match current {
        None => match create(t, &secret).await {
            Ok(created) => created,
            Err(e) if is_already_exists(&e) => {
                let meta = match t.secrets.get_metadata_opt(&t.name).await {
                    Ok(Some(meta)) => SecretMeta::from_meta(meta),
                    // created and deleted between the two requests: again soon
                    Ok(None) => {
                        return request_failed(format_args!("creating Secret {}", t.name), &e);
                    }
                    Err(e) => return request_failed(format_args!("reading Secret {}", t.name), &e),
                };
                let meta = stage!(controlled(t, meta));
                stage!(update(t, &mut secret, &meta).await)
            }
            Err(e) => return apply_failed(t, &e),
        },
        Some(meta) => stage!(update(t, &mut secret, meta).await),
    };
    let changed_at = secret
        .annotations()
        .get(secret::CONTENT_CHANGED_ANNOTATION)
        .cloned();
    drop(secret);
    match prune_created_keys(t, written, &keys).await {
        Ok(secret_rv) => {
            // Remembered before the status write: if that fails, the retry
            // still knows the Secret is already written.
            ctx.state
                .remember_write(&t.uid, &hash, secret_rv.as_deref().unwrap_or_default());
            info!(name = %t.name, namespace = %t.ns, "Secret written");
            done(
                Outcome::synced(&t.name),
                Report::Status(Some(SyncInfo {
                    hash,
                    secret_rv,
                    key_id: Some(key_id),
                    content_changed_at: changed_at,
                    restarted: None,
                })),
                Next::Resync,
            )
        }
        Err(e) => apply_failed(t, &e),
    }
}

/// Writing the Secret failed: `ApplyFailed`, backoff; the Secret stays as
/// it was.
fn apply_failed(t: &Target<'_>, e: &kube::Error) -> Done {
    done(
        Outcome::failed(
            Reason::ApplyFailed,
            format!("applying Secret {} failed: {}", t.name, api_error_text(e)),
        ),
        Report::Status(None),
        Next::Backoff,
    )
}

/// 6a. Create a Secret the owned-Secret store says does not exist.
pub(super) async fn create(t: &Target<'_>, secret: &Secret) -> Result<SecretWritten, kube::Error> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        dry_run: false,
    };
    let body = serde_json::to_vec(secret).map_err(kube::Error::SerdeError)?;
    let req = kube::core::Request::new(t.secrets.resource_url()).create(&params, body);
    send_secret_write(t, req, "create").await
}

/// Server-side apply of `secret` (forced: the Secret is ours).
async fn apply_secret(t: &Target<'_>, secret: &Secret) -> Result<SecretWritten, kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let req = kube::core::Request::new(t.secrets.resource_url()).patch(
        &t.name,
        &params,
        &Patch::Apply(secret),
    );
    send_secret_write(t, req, "patch").await
}

/// Send a write of one of our Secrets; its answer is decoded lean (see
/// [`SecretWritten`]: no values, managed fields left as text). Decoded
/// here rather than by `Client::request`, which logs the whole answer
/// when it does not decode — and a Secret's answer holds its values; the
/// error says so without a position (a position would depend on them).
async fn send_secret_write(
    t: &Target<'_>,
    req: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    verb: &'static str,
) -> Result<SecretWritten, kube::Error> {
    let mut req = req.map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert(verb);
    let text = t.secrets.clone().into_client().request_text(req).await?;
    serde_json::from_str(&text).map_err(|_| {
        kube::Error::SerdeError(serde::de::Error::custom(
            "the API server's answer to a Secret write does not decode",
        ))
    })
}

/// 6b. Server-side apply over an existing Secret we control (`meta`),
///     replacing it when it is immutable and its content changed.
pub(super) async fn update(
    t: &Target<'_>,
    secret: &mut Secret,
    meta: &SecretMeta,
) -> Stage<SecretWritten> {
    api!(
        format_args!("reading Secret {}", t.name),
        mark_content_change(t, secret, Some(meta)).await
    );
    let mut result = apply_secret(t, secret).await;
    if let Err(e) = &result
        && is_immutable_conflict(e)
    {
        info!(name = %t.name, namespace = %t.ns, "Secret is immutable; replacing it");
        let dp = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: meta.uid.as_deref().map(String::from),
                resource_version: None,
            }),
            ..Default::default()
        };
        if t.secrets.delete(&t.name, &dp).await.is_ok() {
            result = apply_secret(t, secret).await;
        }
    }
    match result {
        Ok(written) => ControlFlow::Continue(written),
        Err(e) => ControlFlow::Break(apply_failed(t, &e)),
    }
}

/// 6c. A Secret we created holds its keys under our `Update` entry of
///     managedFields (a create is an update to the server), and a later
///     server-side apply does not remove a field another entry still owns:
///     a key dropped from the EncryptedSecret would stay in the Secret. Such
///     keys — in `data`, no longer applied, and owned by our create — are
///     removed with a merge patch preconditioned on the resourceVersion just
///     written. Costs nothing (no request) when there are none. Returns the
///     Secret's resourceVersion after the write.
pub(super) async fn prune_created_keys(
    t: &Target<'_>,
    written: SecretWritten,
    keys: &BTreeSet<String>,
) -> Result<Option<String>, kube::Error> {
    let rv = written.resource_version().map(String::from);
    let stale = keys_left_by_create(&written, keys);
    drop(written);
    if stale.is_empty() {
        return Ok(rv);
    }
    let data: serde_json::Map<String, serde_json::Value> = stale
        .into_iter()
        .map(|k| (k, serde_json::Value::Null))
        .collect();
    let patch = json!({"metadata": {"resourceVersion": rv}, "data": data});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let pruned = t
        .secrets
        .patch(&t.name, &params, &Patch::Merge(&patch))
        .await?;
    Ok(pruned.metadata.resource_version)
}

/// The keys of `written.data` that are not in `keys` and that our own
/// `Update` managedFields entry (the create) owns. The managed fields are
/// parsed only when a key is left over at all.
pub fn keys_left_by_create(written: &SecretWritten, keys: &BTreeSet<String>) -> Vec<String> {
    if written.data_keys().iter().all(|k| keys.contains(k)) {
        return Vec::new();
    }
    let managed = written.managed_fields();
    let created: BTreeSet<&str> = managed
        .iter()
        .filter(|e| {
            e.manager.as_deref() == Some(FIELD_MANAGER)
                && e.operation.as_deref() == Some("Update")
                && e.subresource.as_deref().is_none_or(str::is_empty)
        })
        .filter_map(|e| e.fields_v1.as_ref()?.0.get("f:data")?.as_object())
        .flat_map(|m| m.keys().filter_map(|k| k.strip_prefix("f:")))
        .collect();
    written
        .data_keys()
        .iter()
        .filter(|k| !keys.contains(*k) && created.contains(k.as_str()))
        .cloned()
        .collect()
}

pub(super) fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

pub(super) fn is_immutable_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 && s.message.contains("immutable"))
}
