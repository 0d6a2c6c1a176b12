//! kube-rs 5 clients and kube-runtime against the test server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

fn secret_apply(name: &str, data: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"}, "data": data})
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed: {0}")]
struct ReconcileError(#[from] kube::Error);

struct Ctx {
    client: kube::Client,
    reconciles: AtomicUsize,
}

/// A miniature kmsecrets reconcile: SSA an owned Secret, SSA the status.
async fn reconcile(obj: Arc<EncryptedSecret>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let ns = obj.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = obj.controller_owner_ref(&()).expect("has uid");
    let data: serde_json::Map<String, serde_json::Value> = obj
        .spec
        .encrypted_data
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": obj.name_any(), "ownerReferences": [owner]},
        "data": data,
    });
    let pp = PatchParams::apply("kmsecrets-test").force();
    secrets
        .patch(&obj.name_any(), &pp, &Patch::Apply(&secret))
        .await?;
    let esecs: Api<EncryptedSecret> = Api::namespaced(ctx.client.clone(), &ns);
    let status = json!({
        "apiVersion": "kmsecrets.dev/v1alpha1", "kind": "EncryptedSecret",
        "status": {"observedGeneration": obj.metadata.generation, "keyId": "alias/test",
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Decrypted"}]},
    });
    esecs
        .patch_status(&obj.name_any(), &pp, &Patch::Apply(&status))
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<EncryptedSecret>, _: &ReconcileError, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn controller_reconciles_and_settles() {
    let server = start().await;
    let client = client(&server).await;
    install_crd(&client).await;
    let esecs: Api<EncryptedSecret> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    esecs
        .create(
            &PostParams::default(),
            &esec("db", &[("password", "cGFzcw==")]),
        )
        .await
        .unwrap();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        reconciles: AtomicUsize::new(0),
    });
    let controller = Controller::new(esecs.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    eventually("Secret created by the controller", || async {
        secrets.get_opt("db").await.unwrap()
    })
    .await;
    let ready = eventually("status Ready", || async {
        let e = esecs.get("db").await.unwrap();
        let s = e.status?;
        (s.conditions.first()?.status == "True").then_some(s)
    })
    .await;
    assert_eq!(ready.observed_generation, Some(1));

    // A spec change reconciles again and updates the Secret.
    esecs
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"encryptedData": {"password": "bmV3"}}})),
        )
        .await
        .unwrap();
    eventually("Secret follows the spec", || async {
        let s = secrets.get("db").await.unwrap();
        (s.data?.get("password")?.0 == b"new").then_some(())
    })
    .await;
    eventually("observedGeneration 2", || async {
        let s = esecs.get("db").await.unwrap().status?;
        (s.observed_generation == Some(2)).then_some(())
    })
    .await;

    // Steady state: the controller's own no-op writes must not trigger more
    // reconciles. Watch the counters over a fixed window (a negative check
    // needs a window; nothing is being waited for).
    let rv = server.resource_version();
    let before = ctx.reconciles.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = ctx.reconciles.load(Ordering::SeqCst);
    assert!(
        after - before <= 2,
        "controller hot-loops: {before} -> {after} reconciles"
    );
    assert_eq!(
        server.resource_version(),
        rv,
        "no-op reconciles must not write"
    );
    handle.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn watcher_resumes_after_drop_and_relists_after_410() {
    let server = start().await;
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let stream = watcher(secrets.clone(), watcher::Config::default().timeout(30));
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    sink.lock().unwrap().push(s.name_any())
                }
                Ok(watcher::Event::Init) => sink.lock().unwrap().push("<init>".into()),
                Ok(_) => {}
                Err(e) => sink.lock().unwrap().push(format!("<error {e}>")),
            }
        }
    });
    let has = |name: &str| seen.lock().unwrap().iter().any(|n| n == name);
    let create = |name: &'static str| {
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    name,
                    &PatchParams::apply("t"),
                    &Patch::Apply(secret_apply(name, json!({"a": "eA=="}))),
                )
                .await
                .unwrap();
        }
    };
    create("one").await;
    eventually("first event", || async { has("one").then_some(()) }).await;
    let lists = server.counters().get("list", "secrets");
    assert_eq!(lists, 1);

    // A dropped stream resumes from the last resourceVersion without a re-list.
    let watches = server.counters().get("watch", "secrets");
    server.faults().drop_streams();
    create("two").await;
    eventually("event after drop", || async { has("two").then_some(()) }).await;
    assert!(
        server.counters().get("watch", "secrets") > watches,
        "watch was restarted"
    );
    assert_eq!(
        server.counters().get("list", "secrets"),
        1,
        "resumed without re-listing"
    );

    // An expired resourceVersion (in-stream 410) forces a re-list.
    server.faults().expire_watches();
    create("three").await;
    eventually("re-list after 410", || async {
        (server.counters().get("list", "secrets") >= 2).then_some(())
    })
    .await;
    eventually("event after 410", || async { has("three").then_some(()) }).await;
    let inits = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|n| *n == "<init>")
        .count();
    assert!(
        inits >= 2,
        "watcher restarted from a list: {:?}",
        seen.lock().unwrap()
    );
    task.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn ssa_removes_unapplied_fields_and_reports_conflicts() {
    let server = start().await;
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let a = PatchParams::apply("manager-a");
    secrets
        .patch(
            "s",
            &a,
            &Patch::Apply(secret_apply("s", json!({"x": "MQ==", "y": "Mg=="}))),
        )
        .await
        .unwrap();
    let s = secrets
        .patch(
            "s",
            &a,
            &Patch::Apply(secret_apply("s", json!({"x": "MQ=="}))),
        )
        .await
        .unwrap();
    let data = s.data.unwrap();
    assert!(
        data.contains_key("x") && !data.contains_key("y"),
        "y was removed: {data:?}"
    );

    let b = PatchParams::apply("manager-b");
    let err = secrets
        .patch(
            "s",
            &b,
            &Patch::Apply(secret_apply("s", json!({"x": "OQ=="}))),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), 409);
    assert!(err.to_string().contains("manager-a"), "{err}");

    let forced = secrets
        .patch(
            "s",
            &b.clone().force(),
            &Patch::Apply(secret_apply("s", json!({"x": "OQ=="}))),
        )
        .await
        .unwrap();
    let managers: Vec<String> = forced
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(
        managers,
        vec!["manager-b".to_string()],
        "ownership moved to b"
    );

    // A field applied by two managers with the same value survives one of
    // them dropping it.
    secrets
        .patch(
            "s",
            &a,
            &Patch::Apply(secret_apply("s", json!({"x": "OQ==", "z": "Mw=="}))),
        )
        .await
        .unwrap();
    let s = secrets
        .patch(
            "s",
            &a,
            &Patch::Apply(secret_apply("s", json!({"z": "Mw=="}))),
        )
        .await
        .unwrap();
    assert!(s.data.unwrap().contains_key("x"), "b still owns x");
    server.shutdown().await;
}

#[tokio::test]
async fn noop_apply_changes_nothing() {
    let server = start().await;
    let client = client(&server).await;
    install_crd(&client).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let esecs: Api<EncryptedSecret> = Api::namespaced(client.clone(), "default");
    let pp = PatchParams::apply("ctl");
    let first = secrets
        .patch(
            "n",
            &pp,
            &Patch::Apply(secret_apply("n", json!({"k": "dg=="}))),
        )
        .await
        .unwrap();
    esecs
        .create(&PostParams::default(), &esec("e", &[]))
        .await
        .unwrap();
    let status = json!({"apiVersion": "kmsecrets.dev/v1alpha1", "kind": "EncryptedSecret",
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    esecs
        .patch_status("e", &pp, &Patch::Apply(&status))
        .await
        .unwrap();

    // Watch from "now" and count events.
    let rv = server.resource_version();
    let events = Arc::new(AtomicUsize::new(0));
    let counter = events.clone();
    let mut stream = secrets
        .watch(
            &kube::api::WatchParams::default().timeout(5),
            &rv.to_string(),
        )
        .await
        .unwrap()
        .boxed();
    let task = tokio::spawn(async move {
        while let Some(Ok(_)) = stream.next().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let again = secrets
        .patch(
            "n",
            &pp,
            &Patch::Apply(secret_apply("n", json!({"k": "dg=="}))),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), first.resource_version());
    assert_eq!(
        again.managed_fields(),
        first.managed_fields(),
        "no managedFields churn"
    );
    esecs
        .patch_status("e", &pp, &Patch::Apply(&status))
        .await
        .unwrap();
    // Merge patch and update that change nothing are no-ops too.
    secrets
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "dg=="}})),
        )
        .await
        .unwrap();
    let current = secrets.get("n").await.unwrap();
    secrets
        .replace("n", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(
        server.resource_version(),
        rv,
        "global resourceVersion unchanged"
    );

    // A real change does produce an event on the same watch.
    secrets
        .patch(
            "n",
            &pp,
            &Patch::Apply(secret_apply("n", json!({"k": "dw=="}))),
        )
        .await
        .unwrap();
    eventually("one event for the real change", || async {
        (events.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    task.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let server = start().await;
    let client = client(&server).await;
    install_crd(&client).await;
    let esecs: Api<EncryptedSecret> = Api::namespaced(client.clone(), "default");
    let mut obj = esec("st", &[("a", "b")]);
    obj.status = Some(EncryptedSecretStatus {
        key_id: Some("ignored".into()),
        ..Default::default()
    });
    let created = esecs.create(&PostParams::default(), &obj).await.unwrap();
    assert!(created.status.is_none(), "status is dropped on create");
    assert_eq!(created.metadata.generation, Some(1));

    // Status through the main resource is ignored.
    let p = esecs
        .patch(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"keyId": "x"}})),
        )
        .await
        .unwrap();
    assert!(p.status.is_none());
    assert_eq!(
        p.resource_version(),
        created.resource_version(),
        "nothing changed"
    );

    // Status through /status changes only status and not generation.
    let s = esecs
        .patch_status(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"keyId": "k1"}, "spec": {"scope": "cluster-wide"}})),
        )
        .await
        .unwrap();
    assert_eq!(s.status.unwrap().key_id.as_deref(), Some("k1"));
    assert_eq!(s.spec.scope.as_deref(), Some("strict"));
    assert_eq!(s.metadata.generation, Some(1));

    // Spec changes bump generation; label changes don't.
    let l = esecs
        .patch(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(l.metadata.generation, Some(1));
    let g = esecs
        .patch(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scope": "cluster-wide"}})),
        )
        .await
        .unwrap();
    assert_eq!(g.metadata.generation, Some(2));
    assert_eq!(
        g.status.unwrap().key_id.as_deref(),
        Some("k1"),
        "status kept"
    );

    // replace_status with a stale resourceVersion conflicts.
    let mut stale = s_clone(&l);
    stale.status = Some(EncryptedSecretStatus::default());
    let err = esecs
        .replace_status("st", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(code(&err), 409);
    server.shutdown().await;
}

fn s_clone(e: &EncryptedSecret) -> EncryptedSecret {
    e.clone()
}

#[tokio::test]
async fn finalizer_flow() {
    let server = start().await;
    let client = client(&server).await;
    install_crd(&client).await;
    let esecs: Api<EncryptedSecret> = Api::namespaced(client.clone(), "default");
    esecs
        .create(&PostParams::default(), &esec("f", &[]))
        .await
        .unwrap();
    const NAME: &str = "kmsecrets.dev/cleanup";
    let cleaned = Arc::new(AtomicUsize::new(0));

    let run = |obj: EncryptedSecret| {
        let esecs = esecs.clone();
        let cleaned = cleaned.clone();
        async move {
            finalizer(&esecs, NAME, Arc::new(obj), |ev| async move {
                if let FinalizerEvent::Cleanup(_) = ev {
                    cleaned.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, ReconcileError>(Action::await_change())
            })
            .await
            .unwrap()
        }
    };
    // First pass adds the finalizer.
    run(esecs.get("f").await.unwrap()).await;
    let obj = esecs.get("f").await.unwrap();
    assert_eq!(obj.finalizers(), &[NAME.to_string()]);

    // Delete: the object stays, with a deletionTimestamp.
    esecs.delete("f", &DeleteParams::default()).await.unwrap();
    let deleting = esecs.get("f").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let err = esecs
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [NAME, "other/new"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), 422, "no new finalizers while deleting");

    // Cleanup removes the finalizer; the object is then gone.
    run(deleting).await;
    assert_eq!(cleaned.load(Ordering::SeqCst), 1);
    assert!(esecs.get_opt("f").await.unwrap().is_none());
    server.shutdown().await;
}

fn owner_ref(owner: &EncryptedSecret) -> OwnerReference {
    owner.controller_owner_ref(&()).expect("owner has a uid")
}

#[tokio::test]
async fn garbage_collector_cascades() {
    let server = start().await;
    let client = client(&server).await;
    install_crd(&client).await;
    let esecs: Api<EncryptedSecret> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let mut ids = Vec::new();
    for name in ["bg", "orphan", "fg"] {
        let owner = esecs
            .create(&PostParams::default(), &esec(name, &[]))
            .await
            .unwrap();
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.owner_references = Some(vec![owner_ref(&owner)]);
        secrets.create(&PostParams::default(), &s).await.unwrap();
        ids.push(owner);
    }
    // Background (the default): the owner goes at once, the dependent soon after.
    esecs.delete("bg", &DeleteParams::default()).await.unwrap();
    eventually("dependent of bg collected", || async {
        secrets.get_opt("bg").await.unwrap().is_none().then_some(())
    })
    .await;

    // Orphan: the dependent stays and loses its ownerReference.
    esecs
        .delete("orphan", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually("orphan owner gone", || async {
        esecs
            .get_opt("orphan")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let s = secrets.get("orphan").await.unwrap();
    assert!(s.metadata.owner_references.unwrap_or_default().is_empty());

    // Foreground: dependents first, then the owner.
    esecs
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("foreground owner gone", || async {
        esecs.get_opt("fg").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(secrets.get_opt("fg").await.unwrap().is_none());

    // A dependent created pointing at a uid that does not exist is collected.
    let mut dangling = Secret::default();
    dangling.metadata.name = Some("dangling".into());
    let mut r = owner_ref(&ids[0]);
    r.uid = "00000000-0000-0000-0000-000000000000".into();
    dangling.metadata.owner_references = Some(vec![r]);
    secrets
        .create(&PostParams::default(), &dangling)
        .await
        .unwrap();
    eventually("dangling dependent collected", || async {
        secrets
            .get_opt("dangling")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn lease_optimistic_concurrency() {
    let server = start().await;
    let client = client(&server).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let mut lease = Lease::default();
    lease.metadata.name = Some("leader".into());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some("a".into()),
        lease_duration_seconds: Some(15),
        ..Default::default()
    });
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut renew = created.clone();
    renew.spec.as_mut().unwrap().holder_identity = Some("a-renewed".into());
    let renewed = leases
        .replace("leader", &PostParams::default(), &renew)
        .await
        .unwrap();
    assert_ne!(renewed.resource_version(), created.resource_version());
    // The same stale object again: 409.
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let err = leases
        .replace("leader", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(code(&err), 409);
    // SSA without force by another manager conflicts; with the same value it doesn't.
    let apply = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"}, "spec": {"holderIdentity": holder}});
    let err = leases
        .patch(
            "leader",
            &PatchParams::apply("b"),
            &Patch::Apply(apply("b")),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), 409);
    leases
        .patch(
            "leader",
            &PatchParams::apply("b"),
            &Patch::Apply(apply("a-renewed")),
        )
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn partial_object_metadata_list_and_watch() {
    let server = start().await;
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .patch(
            "m1",
            &PatchParams::apply("t"),
            &Patch::Apply(secret_apply("m1", json!({"a": "eA=="}))),
        )
        .await
        .unwrap();
    let meta: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), "default");
    let list = meta.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].name_any(), "m1");
    assert!(
        list.metadata
            .resource_version
            .is_some_and(|rv| !rv.is_empty())
    );

    let stream = watcher(meta.clone(), watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream.touched_objects());
    let first = stream.try_next().await.unwrap().unwrap();
    assert_eq!(first.name_any(), "m1");
    secrets
        .patch(
            "m2",
            &PatchParams::apply("t"),
            &Patch::Apply(secret_apply("m2", json!({"a": "eA=="}))),
        )
        .await
        .unwrap();
    let second = tokio::time::timeout(DEADLINE, stream.try_next())
        .await
        .expect("watch event in time")
        .unwrap()
        .unwrap();
    assert_eq!(second.name_any(), "m2");
    assert_eq!(
        second.types.map(|t| t.kind).as_deref(),
        Some("PartialObjectMetadata")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn recorder_events_readable_as_core_events() {
    let server = start().await;
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s = secrets
        .patch(
            "ev",
            &PatchParams::apply("t"),
            &Patch::Apply(secret_apply("ev", json!({}))),
        )
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kmsecrets-test".into(),
            instance: Some("pod-0".into()),
        },
    );
    let reference: ObjectReference = s.object_ref(&());
    let ev = Event {
        type_: EventType::Normal,
        reason: "Synced".into(),
        note: Some("Secret written".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let list = core.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "the second publish patched the series");
    let e = &list.items[0];
    assert_eq!(e.message.as_deref(), Some("Secret written"));
    assert_eq!(e.involved_object.name.as_deref(), Some("ev"));
    assert_eq!(e.reason.as_deref(), Some("Synced"));
    assert_eq!(e.count, Some(2));
    server.shutdown().await;
}

#[tokio::test]
async fn injected_failures_and_counters() {
    let server = start().await;
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    server
        .faults()
        .fail_next(Some("list"), Some("secrets"), 500, 1);
    let err = secrets.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(code(&err), 500);
    secrets.list(&ListParams::default()).await.unwrap();
    server.faults().fail_next(Some("patch"), None, 409, 2);
    for _ in 0..2 {
        let err = secrets
            .patch(
                "x",
                &PatchParams::apply("t"),
                &Patch::Apply(secret_apply("x", json!({}))),
            )
            .await
            .unwrap_err();
        assert_eq!(code(&err), 409);
    }
    server.faults().fail_next(None, Some("secrets"), 429, 1);
    // kube-rs retries a 429 by itself; the retry reaches the store (404).
    assert_eq!(code(&secrets.get("x").await.unwrap_err()), 404);
    let c = server.counters();
    assert_eq!(c.get("list", "secrets"), 2);
    assert_eq!(c.get("patch", "secrets"), 2);
    assert_eq!(c.get("get", "secrets"), 2, "the 429 and its retry");
    assert_eq!(server.faults().pending_failures(), 0);

    // The same through the admin endpoints.
    let req = |method: &str, path: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    client
        .request_text(req(
            "POST",
            "/_testserver/faults/fail",
            r#"{"verb":"get","resource":"secrets","code":500}"#,
        ))
        .await
        .unwrap();
    assert_eq!(code(&secrets.get("x").await.unwrap_err()), 500);
    let counters: serde_json::Value = serde_json::from_str(
        &client
            .request_text(req("GET", "/_testserver/counters", ""))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        counters
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["verb"] == "get" && c["resource"] == "secrets" && c["count"] == 3),
        "{counters}"
    );
    client
        .request_text(req(
            "POST",
            "/_testserver/faults/latency",
            r#"{"ms":300,"verb":"get"}"#,
        ))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let _ = secrets.get_opt("x").await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    client
        .request_text(req("DELETE", "/_testserver/faults", ""))
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn watch_semantics() {
    use kube::api::{WatchEvent, WatchParams};
    let server = start().await;
    let client = client(&server).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let apply = |name: &str, labels: serde_json::Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels}});
    let pp = PatchParams::apply("t");
    secrets
        .patch("w1", &pp, &Patch::Apply(apply("w1", json!({}))))
        .await
        .unwrap();

    // resourceVersion 0: existing objects arrive as ADDED, then bookmarks;
    // timeoutSeconds ends the stream.
    let mut s = secrets
        .watch(&WatchParams::default().timeout(2), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next(&mut s, DEADLINE).await, Some(Ok(WatchEvent::Added(o))) if o.name_any() == "w1")
    );
    assert!(matches!(
        next(&mut s, DEADLINE).await,
        Some(Ok(WatchEvent::Bookmark(_)))
    ));
    while let Some(ev) = next(&mut s, DEADLINE).await {
        assert!(matches!(ev, Ok(WatchEvent::Bookmark(_))), "{ev:?}");
    }

    // Streaming list: ADDED for existing objects, then the initial-events-end bookmark.
    let mut s = secrets
        .watch(&WatchParams::streaming_lists().timeout(5), "")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next(&mut s, DEADLINE).await,
        Some(Ok(WatchEvent::Added(_)))
    ));
    match next(&mut s, DEADLINE).await {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_eq!(
                b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }

    // Selector transitions: entering the selection is ADDED, leaving is DELETED.
    let rv = server.resource_version().to_string();
    let mut s = secrets
        .watch(
            &WatchParams::default()
                .labels("app=x")
                .disable_bookmarks()
                .timeout(10),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    secrets
        .patch("w1", &pp, &Patch::Apply(apply("w1", json!({"app": "x"}))))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut s, DEADLINE).await,
        Some(Ok(WatchEvent::Added(_)))
    ));
    secrets
        .patch("w1", &pp, &Patch::Apply(apply("w1", json!({"app": "y"}))))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut s, DEADLINE).await,
        Some(Ok(WatchEvent::Deleted(_)))
    ));

    // A too-old resourceVersion is an in-stream 410 on a 200 response.
    server.faults().expire_watches();
    let mut s = secrets
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("HTTP 200 even for an expired version")
        .boxed();
    match next(&mut s, DEADLINE).await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected an in-stream 410, got {other:?}"),
    }
    server.shutdown().await;
}

async fn next<T>(
    s: &mut futures::stream::BoxStream<'static, kube::Result<T>>,
    deadline: Duration,
) -> Option<kube::Result<T>> {
    tokio::time::timeout(deadline, s.next())
        .await
        .expect("watch event in time")
}
