//! Stage 7: after a write that changed the Secret's content, restart the
//! `rolloutRestartTargets` (once per change).

use super::*;

/// 7. After a write: restart the rolloutRestartTargets when the Secret's
///    content-change time is one they have not been restarted for
///    (`status.lastRolloutRestart`). Each target's pod template gets
///    `kmsecrets.dev/restartedAt` = that time (a merge patch; repeating it
///    is a no-op, so a retry after a crash or a stale status restarts
///    nothing twice). A failure is a Warning Event `RolloutRestartFailed`
///    and a metric; it never changes the Secret's outcome and is not
///    retried for the same change.
pub(super) async fn restart(t: &Target<'_>, ctx: &Context, mut d: Done) -> Done {
    let Done::Judged {
        report: Report::Status(Some(sync)),
        ..
    } = &mut d
    else {
        return d;
    };
    let Some(at) = sync.content_changed_at.clone() else {
        return d;
    };
    let last =
        t.es.status
            .as_ref()
            .and_then(|s| s.last_rollout_restart.as_deref());
    if last == Some(at.as_str()) {
        sync.restarted = Some(at);
        return d;
    }
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        secret::RESTARTED_AT_ANNOTATION: at,
    }}}}});
    for target in &t.es.spec.rollout_restart_targets {
        let kind = target.kind;
        let name = target.name.as_str();
        let result = patch_workload(ctx.state.client.clone(), &t.ns, kind, name, &patch).await;
        ctx.state
            .metrics
            .rollout_restarts
            .with_label_values(&[kind.as_str(), result.label()])
            .inc();
        let why = match result {
            Restart::Requested => {
                info!(name = %t.name, namespace = %t.ns, target_kind = kind.as_str(), target = name, "rollout restart requested: the Secret's content changed");
                continue;
            }
            Restart::NotFound => {
                format!("{} {name} not found in namespace {}", kind.as_str(), t.ns)
            }
            Restart::Forbidden(e) => format!(
                "the controller may not patch {} {name} ({e}); grant it with the chart's rolloutRestart.enabled=true or deploy/rollout-restart",
                kind.as_str(),
            ),
            Restart::Failed(e) => format!("restarting {} {name} failed: {e}", kind.as_str()),
        };
        warn!(name = %t.name, namespace = %t.ns, target_kind = kind.as_str(), target = name, error = %why, "rollout restart failed");
        let ev = Event {
            type_: EventType::Warning,
            reason: "RolloutRestartFailed".into(),
            note: Some(why),
            action: "RolloutRestart".into(),
            secondary: None,
        };
        if let Err(e) = ctx.state.recorder.publish(&ev, &t.es.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }
    sync.restarted = Some(at);
    d
}

/// What patching one restart target came to (the `result` label and the
/// Event's text; the API error text is bounded, never a value).
enum Restart {
    Requested,
    NotFound,
    Forbidden(String),
    Failed(String),
}

impl Restart {
    fn label(&self) -> &'static str {
        match self {
            Restart::Requested => "success",
            Restart::NotFound => "not_found",
            Restart::Forbidden(_) => "forbidden",
            Restart::Failed(_) => "error",
        }
    }
}

/// The restart annotation merged into one workload's pod template; the
/// three workload kinds differ only in their type.
async fn patch_workload(
    client: kube::Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    patch: &serde_json::Value,
) -> Restart {
    async fn merge<K>(api: Api<K>, name: &str, patch: &serde_json::Value) -> kube::Result<()>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(name, &params, &Patch::Merge(patch))
            .await
            .map(drop)
    }
    let res = match kind {
        WorkloadKind::Deployment => {
            merge(Api::<Deployment>::namespaced(client, ns), name, patch).await
        }
        WorkloadKind::StatefulSet => {
            merge(Api::<StatefulSet>::namespaced(client, ns), name, patch).await
        }
        WorkloadKind::DaemonSet => {
            merge(Api::<DaemonSet>::namespaced(client, ns), name, patch).await
        }
    };
    let e = match res {
        Ok(()) => return Restart::Requested,
        Err(e) => e,
    };
    match &e {
        kube::Error::Api(s) if s.code == 404 => Restart::NotFound,
        kube::Error::Api(s) if s.code == 403 => Restart::Forbidden(api_error_text(&e)),
        _ => Restart::Failed(api_error_text(&e)),
    }
}
