//! Stages 1–3: deletion and the `Retain` finalizer, admission of the
//! Secret type (pure), who controls the existing Secret, and whether
//! anything changed since our last write.

use super::*;

/// 1. Deletion, and the finalizer `deletionPolicy: Retain` needs.
pub(super) async fn finalize(t: &Target<'_>, ctx: &Context) -> Stage<()> {
    let meta = t.es.meta();
    let has_finalizer = t.es.finalizers().iter().any(|f| f == FINALIZER);
    if meta.deletion_timestamp.is_some() {
        if has_finalizer {
            api!(
                format_args!("orphaning Secret {}", t.name),
                orphan_secret(&t.secrets, &t.name, &t.uid).await
            );
            api!(
                "removing the finalizer",
                set_finalizer(&t.es_api, meta, false).await
            );
            info!(name = %t.name, namespace = %t.ns, "deletionPolicy Retain: Secret orphaned");
        }
        ctx.state.forget(&t.uid);
        return stop(Outcome::synced(&t.name), Report::Nothing, Next::AwaitChange);
    }
    let wants_finalizer = t.es.spec.deletion_policy == DeletionPolicy::Retain;
    if wants_finalizer != has_finalizer {
        api!(
            "updating the finalizer",
            set_finalizer(&t.es_api, meta, wants_finalizer).await
        );
    }
    ControlFlow::Continue(())
}

/// 1b. Refuse Secrets the cluster would turn into credentials (pure; before
///     any read, decrypt or write).
pub(super) fn admit(t: &Target<'_>, ctx: &Context) -> Stage<()> {
    match secret::admit(t.es, &ctx.state.cfg.allowed_secret_types) {
        Ok(()) => ControlFlow::Continue(()),
        Err(why) => stop(
            Outcome::failed(Reason::InvalidSpec, why),
            Report::Status(None),
            Next::SlowRetry,
        ),
    }
}

/// 2. The existing Secret's metadata, if any, and whether we may write it.
///
/// The owned-Secret store answers; no request is made when it has the
/// Secret, or when it has listed and does not (a new resource: [`apply`]
/// then creates the Secret, and a create fails rather than overwrite a
/// Secret someone else made). The store is not trusted to be complete —
/// and the Secret is read — only before its first list, while our own
/// last write may not have reached it yet, and while a conflict is being
/// polled (the values are not sent to a Secret that is not ours).
pub(super) async fn ownership(t: &Target<'_>, ctx: &Context) -> Stage<Option<SecretMeta>> {
    // Until the owned-Secret watch has listed once, every lookup would miss;
    // wait for it (bounded, so a broken Secret watch degrades to GETs
    // instead of stalling reconciles).
    let listed = tokio::time::timeout(STORE_WAIT, ctx.secrets.wait_until_ready())
        .await
        .is_ok();
    let current = match ctx.secrets.get(&ObjectRef::new(&t.name).within(&t.ns)) {
        Some(m) => Some((*m).clone()),
        None if listed && !store_may_miss_it(t, ctx) => None,
        // Not ours (no managed-by label), or the store lags our own write.
        None => api!(
            format_args!("reading Secret {}", t.name),
            t.secrets.get_metadata_opt(&t.name).await
        )
        .map(SecretMeta::from_meta),
    };
    match current {
        None => ControlFlow::Continue(None),
        Some(meta) => controlled(t, meta).map_continue(Some),
    }
}

/// Whether a Secret missing from the (listed) owned-Secret store may exist
/// anyway: we wrote it and the watch has not caught up, or the last look
/// found a Secret that is not ours.
pub(super) fn store_may_miss_it(t: &Target<'_>, ctx: &Context) -> bool {
    ctx.state.last_write(&t.uid).is_some()
        || ready_condition(t.es.status.as_ref())
            .is_some_and(|c| c.reason == Reason::SecretConflict.as_str())
}

/// Whether we control the existing Secret `meta` (our controller owner
/// reference, or the adopt annotation); `SecretConflict` otherwise.
pub(super) fn controlled(t: &Target<'_>, meta: SecretMeta) -> Stage<SecretMeta> {
    let controller = meta.controller.as_deref();
    let ours = controller.is_some_and(|o| *o.uid == *t.uid);
    if ours || meta.adopt {
        return ControlFlow::Continue(meta);
    }
    let who = controller.map_or("no controller".to_string(), |o| {
        format!("controlled by {} {}", o.kind, o.name)
    });
    let name = &t.name;
    stop(
        Outcome::failed(
            Reason::SecretConflict,
            format!(
                "Secret {name} already exists ({who}); not overwriting it. Delete it, or annotate it {ADOPT_ANNOTATION}=\"true\" to let kmsecrets take it over"
            ),
        ),
        Report::Status(None),
        Next::ConflictPoll,
    )
}

/// 3. Nothing to do when the source and the Secret are what we last wrote
///    (memory first: the status of our own last write may not have reached
///    the watch cache yet). Continues with the source hash.
pub(super) fn in_sync(
    t: &Target<'_>,
    ctx: &Context,
    current: Option<&SecretMeta>,
) -> Stage<String> {
    let current_rv = current.and_then(|m| m.resource_version.as_deref().map(String::from));
    let status = t.es.status.as_ref();
    let generation = t.es.meta().generation;
    if let Some(rv) = &current_rv
        && ctx
            .state
            .synced_in_memory(&t.uid, || source_hash(t.es), rv, generation)
    {
        debug!(name = %t.name, namespace = %t.ns, "in sync (own last write); nothing to do");
        return stop(Outcome::synced(&t.name), Report::Nothing, Next::Resync);
    }
    let hash = source_hash(t.es);
    let remembered = ctx.state.last_write(&t.uid);
    // Our own write of exactly this source into exactly this Secret version
    // is proof enough (e.g. the status write after it failed: write the
    // status, do not apply again); the status is, when it says Ready.
    let by_memory = current_rv.is_some()
        && remembered
            .as_ref()
            .is_some_and(|(h, rv)| *h == hash && Some(rv) == current_rv.as_ref());
    let by_status = current_rv.is_some()
        && status.is_some_and(|s| {
            s.source_hash.as_deref() == Some(hash.as_str())
                && s.secret_resource_version == current_rv
        })
        && ready_condition(status).is_some_and(|c| c.status == "True");
    if by_memory || by_status {
        debug!(name = %t.name, namespace = %t.ns, "in sync; nothing to do");
        let sync = SyncInfo {
            hash,
            secret_rv: current_rv,
            key_id: status.and_then(|s| s.key_id.clone()),
            content_changed_at: None,
            restarted: None,
        };
        return stop(
            Outcome::synced(&t.name),
            Report::Status(Some(sync)),
            Next::Resync,
        );
    }
    ControlFlow::Continue(hash)
}

/// 3b. The status may not record the last write (the leader that made it
///    died before its status write, or that write failed): the Secret's own
///    `kmsecrets.dev/source-hash` annotation says which source it was
///    written from. When that is this source and no other field manager has
///    written its `data`, `stringData` or `type` since (managedFields, one
///    metadata GET), the Secret holds what this reconcile would write:
///    record it in status instead of decrypting and applying again — after
///    a failover the new leader neither unwraps nor rewrites what its
///    predecessor finished. Not taken with rolloutRestartTargets (a restart
///    may still be owed for that write).
pub(super) async fn written_before(
    t: &Target<'_>,
    current: Option<&SecretMeta>,
    hash: String,
) -> Stage<String> {
    let Some(meta) = current else {
        return ControlFlow::Continue(hash);
    };
    if !meta.from_source(&hash) || !t.es.spec.rollout_restart_targets.is_empty() {
        return ControlFlow::Continue(hash);
    }
    // the store keeps no managedFields: read them (any failure: the normal path)
    let Ok(Some(full)) = t.secrets.get_metadata_opt(&t.name).await else {
        return ControlFlow::Continue(hash);
    };
    let m = &full.metadata;
    let foreign = m.managed_fields.iter().flatten().any(|f| {
        f.manager.as_deref() != Some(FIELD_MANAGER)
            && f.fields_v1.as_ref().is_some_and(|v| {
                ["f:data", "f:stringData", "f:type"]
                    .iter()
                    .any(|k| v.0.get(k).is_some())
            })
    });
    let still_from_this_source = m
        .annotations
        .as_ref()
        .and_then(|a| a.get(secret::SOURCE_HASH_ANNOTATION))
        == Some(&hash);
    if foreign
        || !still_from_this_source
        || m.resource_version.as_deref() != meta.resource_version.as_deref()
    {
        return ControlFlow::Continue(hash);
    }
    debug!(name = %t.name, namespace = %t.ns, "Secret already written from this source; recording it");
    let sync = SyncInfo {
        hash,
        secret_rv: m.resource_version.clone(),
        key_id: t.es.status.as_ref().and_then(|s| s.key_id.clone()),
        content_changed_at: None,
        restarted: None,
    };
    stop(
        Outcome::synced(&t.name),
        Report::Status(Some(sync)),
        Next::Resync,
    )
}

pub(super) async fn set_finalizer<K>(
    api: &Api<K>,
    meta: &ObjectMeta,
    present: bool,
) -> kube::Result<()>
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
    // (a watched object always has a name)
    let name = meta.name.as_deref().unwrap_or_default();
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Remove our ownerReference from the Secret so garbage collection leaves it.
pub(super) async fn orphan_secret(
    secrets: &Api<Secret>,
    name: &str,
    uid: &str,
) -> kube::Result<()> {
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
