//! Stage 6: write the Secret, only ever after a complete, authenticated
//! decrypt — in pipeline order: 6a create, 6b server-side apply, 6c prune
//! keys a create left behind, 6d mark a content change for restarts.

use super::*;
use crate::controller::lean::Written;

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
    let req = kube::core::Request::new(t.secrets.resource_url())
        .get(&t.name, &kube::api::GetParams::default());
    let old: Secret = match secret_request(&t.secrets, req, "get").await {
        Ok(old) => old,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
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
    // versions of this Secret that arrive before our writes' answers are
    // judged by them (see `State::is_quiet_secret_event`)
    let during = ctx.state.secret_write(&t.uid);
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
            // someone else's version arrived while we wrote: its trigger was
            // held back, so run again once this reconcile ends
            let next = match during.finish(secret_rv.as_deref()) {
                Arrived::Other => Next::Again,
                Arrived::Echo | Arrived::Nothing => Next::Resync,
            };
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
                next,
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
    secret_request(&t.secrets, req, "create").await
}

/// Server-side apply of `secret` (forced: the Secret is ours).
async fn apply_secret(t: &Target<'_>, secret: &Secret) -> Result<SecretWritten, kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let req = kube::core::Request::new(t.secrets.resource_url()).patch(
        &t.name,
        &params,
        &Patch::Apply(secret),
    );
    secret_request(&t.secrets, req, "patch").await
}

/// Send a request about one of our Secrets and decode its answer as `T`
/// (a write's lean [`SecretWritten`]: no values, managed fields left as
/// text). Every request whose answer holds a Secret's values goes through
/// here, not through `Api<Secret>`'s typed calls: their `Client::request`
/// logs the whole answer text when it does not decode, and a non-UTF-8
/// answer's error carries its bytes (and a position that depends on them).
/// Here either is an error that names the request and nothing of the
/// answer.
async fn secret_request<T: serde::de::DeserializeOwned>(
    secrets: &Api<Secret>,
    req: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    verb: &'static str,
) -> Result<T, kube::Error> {
    let undecodable = || {
        kube::Error::SerdeError(serde::de::Error::custom(format_args!(
            "the API server's answer to a Secret {verb} does not decode"
        )))
    };
    let mut req = req.map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert(verb);
    let text = match secrets.clone().into_client().request_text(req).await {
        Ok(text) => text,
        Err(kube::Error::FromUtf8(_)) => return Err(undecodable()),
        Err(e) => return Err(e),
    };
    serde_json::from_str(&text).map_err(|_| undecodable())
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
        let req = kube::core::Request::new(t.secrets.resource_url()).delete(&t.name, &dp);
        // (the answer, the deleted Secret or a Status, is not read)
        let deleted = secret_request::<serde::de::IgnoredAny>(&t.secrets, req, "delete").await;
        if deleted.is_ok() {
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
    let req = kube::core::Request::new(t.secrets.resource_url()).patch(
        &t.name,
        &params,
        &Patch::Merge(&patch),
    );
    let pruned: Written<Secret> = secret_request(&t.secrets, req, "patch").await?;
    Ok(pruned.resource_version())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Mutex;

    /// An answer holding a Secret's values that does not decode (cut off),
    /// as a broken proxy or API server could send.
    const LEAKY: &str = r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","resourceVersion":"7"},"stringData":{"password":"hunter2"},"data":{"password":"aHVudGVyMg==""#;

    /// A client whose API server answers GET, merge patch and DELETE with
    /// [`LEAKY`] (or with bytes that are not UTF-8) and a server-side apply
    /// with "immutable" (so the replace path deletes).
    fn client(utf8: bool) -> kube::Client {
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| async move {
            let apply = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
            let (code, body) = if apply {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "Secret \"db\" is invalid: data: Forbidden: field is immutable",
                    "reason": "Invalid", "code": 422});
                (422, status.to_string().into_bytes())
            } else if utf8 {
                (200, LEAKY.as_bytes().to_vec())
            } else {
                let mut b = LEAKY.as_bytes().to_vec();
                b.push(0xff);
                (200, b)
            };
            let res = http::Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(kube::client::Body::from(body))
                .unwrap();
            Ok::<_, std::convert::Infallible>(res)
        });
        kube::Client::new(svc, "app")
    }

    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn es(restart: bool) -> EncryptedSecret {
        let targets = if restart {
            json!([{"kind": "Deployment", "name": "web"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "apiVersion": "kmsecrets.dev/v1alpha1", "kind": "EncryptedSecret",
            "metadata": {"name": "db", "namespace": "app", "uid": "e-1"},
            "spec": {"dataKeys": [], "rolloutRestartTargets": targets},
        }))
        .unwrap()
    }

    fn target<'a>(es: &'a EncryptedSecret, client: &kube::Client) -> Target<'a> {
        Target {
            es,
            ns: "app".into(),
            name: "db".into(),
            uid: "e-1".into(),
            es_api: Api::namespaced(client.clone(), "app"),
            es_meta_api: Api::namespaced(client.clone(), "app"),
            secrets: Api::namespaced(client.clone(), "app"),
        }
    }

    /// Every request whose answer holds a Secret's values — the full read
    /// before a content change, the prune patch, the delete of an immutable
    /// Secret, the writes — fails without the answer, or anything of it,
    /// reaching a log line or the error (kube's typed calls log the whole
    /// answer text at WARN when it does not decode).
    #[tokio::test]
    async fn an_undecodable_secret_answer_reaches_no_log_and_no_error() {
        let logs = Logs::default();
        let sink = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(sub);
        tracing::warn!("capture works");
        let meta = SecretMeta {
            name: "db".into(),
            namespace: "app".into(),
            uid: Some("s-1".into()),
            ..SecretMeta::default()
        };
        let (restarting, plain) = (es(true), es(false));
        let mut errors = Vec::new();
        for utf8 in [true, false] {
            let client = client(utf8);
            let (t, t_plain) = (target(&restarting, &client), target(&plain, &client));
            let mut secret = Secret::default();
            let read = mark_content_change(&t, &mut secret, Some(&meta)).await;
            errors.push(format!(
                "{:?}",
                read.expect_err("a GET that does not decode")
            ));
            let written: SecretWritten = serde_json::from_value(json!({
                "metadata": {"resourceVersion": "6", "managedFields": [{"manager": FIELD_MANAGER,
                    "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {"f:old": {}, "f:password": {}}}}]},
                "data": {"old": "eA==", "password": "eA=="},
            }))
            .unwrap();
            let keys = BTreeSet::from(["password".to_string()]);
            let pruned = prune_created_keys(&t, written, &keys).await;
            errors.push(format!(
                "{:?}",
                pruned.expect_err("a patch that does not decode")
            ));
            let created = create(&t, &secret).await;
            errors.push(format!("{:?}", created.expect_err("a create")));
            // apply says immutable; the delete's answer does not decode, so
            // nothing is applied again and the apply's error is kept
            match update(&t_plain, &mut secret, &meta).await {
                ControlFlow::Break(_) => {}
                ControlFlow::Continue(w) => panic!("written: {w:?}"),
            }
        }
        let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
        assert!(logs.contains("capture works"), "{logs}");
        assert!(
            logs.contains("replacing it"),
            "the delete was reached: {logs}"
        );
        for text in errors.iter().chain([&logs]) {
            for needle in ["hunter2", "aHVudGVy", "stringData"] {
                // (the failure names the line, the fixture's value masked)
                let line = text.lines().find(|l| l.contains(needle));
                assert!(
                    line.is_none(),
                    "{needle} in: {}",
                    line.unwrap_or_default().replace(needle, "<VALUE>")
                );
            }
        }
        assert!(
            errors.iter().all(|e| e.contains("does not decode")),
            "{errors:?}"
        );
    }
}
