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
    let Report::Status(Some(sync)) = &mut d.report else {
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
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let client = ctx.state.client.clone();
    for target in &t.es.spec.rollout_restart_targets {
        let kind = target.kind;
        let name = target.name.as_str();
        let res = match kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), &t.ns)
                .patch(name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
            WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), &t.ns)
                .patch(name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
            WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), &t.ns)
                .patch(name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
        };
        let result = match &res {
            Ok(()) => "success",
            Err(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Err(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Err(_) => "error",
        };
        ctx.state
            .metrics
            .rollout_restarts
            .with_label_values(&[kind.as_str(), result])
            .inc();
        match res {
            Ok(()) => {
                info!(name = %t.name, namespace = %t.ns, target_kind = kind.as_str(), target = name, "rollout restart requested: the Secret's content changed");
            }
            Err(e) => {
                let why = match result {
                    "not_found" => {
                        format!("{} {name} not found in namespace {}", kind.as_str(), t.ns)
                    }
                    "forbidden" => format!(
                        "the controller may not patch {} {name} ({}); grant it with the chart's rolloutRestart.enabled=true or deploy/rollout-restart",
                        kind.as_str(),
                        api_error_text(&e)
                    ),
                    _ => format!(
                        "restarting {} {name} failed: {}",
                        kind.as_str(),
                        api_error_text(&e)
                    ),
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
        }
    }
    sync.restarted = Some(at);
    d
}
