//! Stages 4–5: unwrap the data key and decrypt (the only stage that waits
//! on KMS; fair between namespaces, see [`super::super::fairness`]), then
//! build the Secret — templates rendered off the async runtime.

use super::*;

/// 4. Unwrap and decrypt. A failure keeps the existing Secret untouched.
///
/// Fairness: unless one of its data-key copies is cached (then nothing
/// here waits on KMS), the stage needs a slot of the namespace's share
/// ([`State::namespace_slot`]: half the workers, of which half for
/// resources whose last attempt failed); when the share is taken the
/// reconcile is deferred (no KMS call, no status write) and parked until a
/// slot of its namespace frees or its data key arrives (see
/// [`super::super::fairness`]; 10 s at the latest), so one tenant's stuck resources
/// never hold every worker. A
/// resource that unwraps teaches the region policy its copies' regions,
/// for its namespace only (see [`crate::kms::regions::RegionPolicy`]).
pub(super) async fn unwrap_and_decrypt(t: &Target<'_>, ctx: &Context) -> Stage<Opened> {
    let state = &ctx.state;
    let opened = match resource::open_resource_cached(&state.kms, t.es) {
        // The data key is cached: nothing here can wait on KMS, so no slot.
        Ok(r) => r,
        Err(keys) => {
            let Some(slot) = state.namespace_slot(&t.ns, state.is_failing(&t.uid)) else {
                ctx.parked
                    .park(ObjectRef::new(&t.name).within(&t.ns), &keys);
                return ControlFlow::Break(Done::Deferred);
            };
            let mut stopping = state.stopping.subscribe();
            let r = tokio::select! {
                r = resource::open_resource(&state.kms, t.es) => r,
                _ = stopping.wait_for(|s| *s) => {
                    // shutting down: nothing written yet, the next leader retries
                    return ControlFlow::Break(Done::Deferred);
                }
            };
            drop(slot);
            // those waiting for this data key now find it cached; the
            // oldest parked one of the namespace may take the freed slot
            if r.is_ok() {
                ctx.parked.arrived(&keys);
            }
            ctx.parked.wake_one(&t.ns);
            r
        }
    };
    match opened {
        Ok(opened) => {
            if let Some(policy) = &state.cfg.regions {
                policy.learn_from(
                    &t.ns,
                    &opened.key_id,
                    t.es.spec
                        .data_keys
                        .iter()
                        .filter(|k| k.provider == crate::api::Provider::AwsKms)
                        .map(|k| k.key_id.as_str()),
                );
            }
            ControlFlow::Continue(opened)
        }
        Err(e) => {
            let next = if e.is_transient() {
                Next::Backoff
            } else {
                Next::SlowRetry
            };
            stop(
                Outcome::failed(e.reason(), e.to_string()),
                Report::Status(None),
                next,
            )
        }
    }
}

/// 5. The Secret to apply: the opened values and what `template.data`
///    renders from them. A render error is `InvalidSpec` naming the
///    template key; the existing Secret stays as it is.
///
///    Templates render on the blocking pool, at most [`super::super::state::TEMPLATE_RENDERS`] at a time,
///    under a deadline: the async runtime (one thread by default: every
///    watch, probe and other tenant's reconcile) never runs a render, and a
///    render that fails or overruns costs this resource only. The template
///    module bounds a render's work before it starts, so the deadline is a
///    second guard, not the first.
pub(super) async fn build(
    es: &EncryptedSecret,
    opened: &Opened,
    hash: &str,
    state: &State,
) -> Stage<Secret> {
    let rendered = match es.spec.template.as_ref().map(|t| &t.data) {
        Some(templates) if !templates.is_empty() => {
            render_off_runtime(state, templates.clone(), opened.values.clone()).await
        }
        _ => Ok(resource::Plaintext::new()),
    };
    match rendered.and_then(|r| resource::with_rendered(&opened.values, r)) {
        Ok(data) => ControlFlow::Continue(build_owned(es, &data, hash)),
        Err(e) => stop(
            Outcome::failed(e.reason(), e.to_string()),
            Report::Status(None),
            Next::SlowRetry,
        ),
    }
}

/// How long one render may take before the resource fails (the bounded
/// language renders the largest allowed template in milliseconds).
pub const RENDER_DEADLINE: Duration = Duration::from_secs(5);

pub(super) async fn render_off_runtime(
    state: &State,
    templates: std::collections::BTreeMap<String, String>,
    values: resource::Plaintext,
) -> std::result::Result<resource::Plaintext, resource::ResourceError> {
    use resource::ResourceError::InvalidSpec;
    let Ok(permit) = state.renders.clone().acquire_owned().await else {
        return Err(InvalidSpec(
            "spec.template.data: the controller is stopping".into(),
        ));
    };
    // The permit goes with the work: a render past its deadline still
    // counts against RENDERS until it really ends.
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        crate::template::render(&templates, &values)
    });
    match tokio::time::timeout(RENDER_DEADLINE, task).await {
        Ok(Ok(r)) => r.map_err(|e| InvalidSpec(e.to_string())),
        Ok(Err(_)) => Err(InvalidSpec("spec.template.data: rendering failed".into())),
        Err(_) => Err(InvalidSpec(format!(
            "spec.template.data: rendering took longer than {} s",
            RENDER_DEADLINE.as_secs()
        ))),
    }
}
