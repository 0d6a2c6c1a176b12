//! `reconcile()` called in-process, one stage at a time, against the
//! in-memory API server (request counters) and the fake KMS (call
//! counters): exact API and KMS cost of a cold start, a resync and a
//! restart, and the safety rules (conflict/adopt, immutable replace, a
//! failing KMS keeps the Secret). No processes, no kubectl, no sleeps: every
//! wait polls with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kmsecrets::api::{
    DataKey, EncryptedSecret, EncryptedSecretSpec, Provider, Scope, SecretTemplate,
};
use kmsecrets::controller::fairness::Parked;
use kmsecrets::controller::reconcile::{Context, Facts, Watched, reconcile};
use kmsecrets::controller::status::ready_condition;
use kmsecrets::controller::{Config, State, housekeeping, owned_secrets};
use kmsecrets::kms::Operation;
use kmsecrets::kms::fake::{FakeKms, KeyState};
use kmsecrets::kms::layer::{Kms, LayerConfig, Providers};
use kmsecrets::metrics::Metrics;
use kmsecrets::resource::{self, Plaintext};
use kmsecrets::wrap::{self, KeyRef};
use kmsecrets_envtest::eventually;
use kmsecrets_testserver::{Counters, TestServer};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use zeroize::Zeroizing;

const NS: &str = "app";
const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/reconcile";
/// A key whose calls never return (set [`KeyState::Hanging`] after sealing).
const HANG: &str = "arn:aws:kms:eu-west-1:111122223333:key/hang";
/// A key in a region that is down.
const DOWN: &str = "arn:aws:kms:eu-south-9:111122223333:key/down";
const UNWRAP_DEADLINE: Duration = Duration::from_secs(2);

struct Rig {
    /// The parked reconciles' wake-ups (what the controller would merge
    /// into its triggers); a test may take it.
    wakes: std::sync::Mutex<Option<UnboundedReceiver<ObjectRef<Watched>>>>,
    server: TestServer,
    client: Client,
    fake: Arc<FakeKms>,
    kms: Kms,
    ctx: Arc<Context>,
    es_store: Store<Watched>,
    es: Api<EncryptedSecret>,
    secrets: Api<Secret>,
}

fn controller_config() -> Config {
    Config {
        namespaces: vec![NS.into()],
        label_selector: None,
        concurrency: 8,
        resync_interval: Duration::from_secs(300),
        slow_retry: Duration::from_secs(300),
        leader_election: None,
        http_addr: None,
        secure_metrics: None,
        allowed_secret_types: Vec::new(),
        regions: None,
        max_workers_per_namespace: None,
        shutdown_timeout: Duration::from_secs(25),
        key_check_interval: Duration::from_secs(300),
        max_tracked_keys: 1000,
    }
}

/// How long the rig waits for a condition.
const PATIENCE: Duration = Duration::from_secs(20);

/// The rig's watchers back off on errors as the controller's do (a watcher
/// without backoff retries in a hot loop and starves the test's runtime)
/// and say what failed.
async fn log_watch_error<T>(item: Result<T, watcher::Error>) {
    if let Err(e) = item {
        eprintln!("rig watch error (retried with backoff): {e}");
    }
}

impl Rig {
    async fn start() -> Rig {
        let server = TestServer::start("127.0.0.1:0").await.unwrap();
        let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml()).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        // a request the server never answers fails the test, never hangs it
        config.read_timeout = Some(Duration::from_secs(60));
        let client = Client::try_from(config).unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &kmsecrets::api::crd())
            .await
            .unwrap();
        let nss: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(NS.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        nss.create(&PostParams::default(), &ns).await.unwrap();
        let es: Api<EncryptedSecret> = Api::namespaced(client.clone(), NS);
        eventually(PATIENCE, "CRD served", async || {
            es.list(&Default::default()).await.is_ok()
        })
        .await;
        let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY, HANG, DOWN]));
        let rig = Rig::with_fake(server, client, fake).await;
        rig.server.reset_counters();
        rig
    }

    /// A fresh controller State (as after a restart) over the same server
    /// and KMS.
    async fn with_fake(server: TestServer, client: Client, fake: Arc<FakeKms>) -> Rig {
        let kms = Kms::new(
            Providers::new(Default::default()).with(fake.clone()),
            LayerConfig {
                unwrap_deadline: Some(UNWRAP_DEADLINE),
                ..LayerConfig::default()
            },
            Arc::new(Metrics::new()),
        );
        let state = Arc::new(State::new(
            client.clone(),
            kms.clone(),
            controller_config(),
            "reconcile-test",
        ));
        let (parked, wakes) = Parked::new();
        let echoes = state.clone();
        let (secrets, stream) = owned_secrets(client.clone(), Some(NS), move |m| {
            echoes.is_own_secret_write(m)
        });
        tokio::spawn(stream.default_backoff().for_each(log_watch_error));
        let (es_store, writer) = reflector::store();
        let es_api: Api<Watched> = Api::namespaced(client.clone(), NS);
        tokio::spawn(
            watcher(es_api, Default::default())
                .default_backoff()
                .reflect(writer)
                .for_each(log_watch_error),
        );
        Rig {
            es: Api::namespaced(client.clone(), NS),
            secrets: Api::namespaced(client.clone(), NS),
            server,
            client,
            fake,
            kms,
            ctx: Arc::new(Context {
                state,
                store: es_store.clone(),
                secrets,
                parked,
                listed: tokio::sync::watch::channel(true).1,
                feed: kmsecrets::controller::feed::Feed::new(16),
            }),
            wakes: std::sync::Mutex::new(Some(wakes)),
            es_store,
        }
    }

    async fn restart(self) -> Rig {
        let Rig {
            server,
            client,
            fake,
            ..
        } = self;
        Rig::with_fake(server, client, fake).await
    }

    /// An EncryptedSecret sealed for `name` under the fake KMS key.
    async fn sealed(&self, name: &str, values: &[(&str, &str)]) -> EncryptedSecret {
        self.sealed_in(NS, name, values, &[KEY]).await
    }

    /// Sealed for `ns`/`name`, one data-key copy per key (all enabled now).
    async fn sealed_in(
        &self,
        ns: &str,
        name: &str,
        values: &[(&str, &str)],
        key_ids: &[&str],
    ) -> EncryptedSecret {
        self.sealed_scoped(ns, name, values, key_ids, Scope::Strict)
            .await
    }

    /// [`Rig::sealed_in`] with a binding scope (`Namespace`: copies under
    /// other names share the data key, and so its cache entry).
    async fn sealed_scoped(
        &self,
        ns: &str,
        name: &str,
        values: &[(&str, &str)],
        key_ids: &[&str],
        scope: Scope,
    ) -> EncryptedSecret {
        let mut es = EncryptedSecret::new(
            name,
            EncryptedSecretSpec {
                scope,
                encryption_context: Default::default(),
                data_keys: vec![DataKey {
                    provider: Provider::AwsKms,
                    key_id: KEY.into(),
                    algorithm: None,
                    ciphertext: "AA==".into(),
                }],
                encrypted_data: BTreeMap::new(),
                template: None,
                rollout_restart_targets: Vec::new(),
                deletion_policy: Default::default(),
            },
        );
        es.metadata.namespace = Some(ns.into());
        let binding = resource::binding_of(&es).unwrap();
        let ctx = binding.encryption_context();
        let keys: Vec<KeyRef> = key_ids
            .iter()
            .map(|k| KeyRef::new(Provider::AwsKms, *k))
            .collect();
        let (dek, data_keys) = wrap::new_dek(&self.kms, &keys, &ctx).await.unwrap();
        let plain: Plaintext = values
            .iter()
            .map(|(k, v)| (k.to_string(), Zeroizing::new(v.as_bytes().to_vec())))
            .collect();
        es.spec.encrypted_data = resource::seal(&dek, &binding, &plain, None).unwrap();
        es.spec.data_keys = data_keys;
        es
    }

    /// Re-seal `es` with new values (same name, fresh data key).
    async fn reseal(&self, es: &EncryptedSecret, values: &[(&str, &str)]) -> EncryptedSecret {
        let mut fresh = self.sealed(&es.name_any(), values).await;
        fresh.metadata = es.metadata.clone();
        fresh.spec.template = es.spec.template.clone();
        fresh.status = None;
        fresh
    }

    async fn create(&self, es: &EncryptedSecret) -> EncryptedSecret {
        self.es.create(&PostParams::default(), es).await.unwrap()
    }

    async fn replace(&self, es: &EncryptedSecret) -> EncryptedSecret {
        self.es
            .replace(&es.name_any(), &PostParams::default(), es)
            .await
            .unwrap()
    }

    async fn get(&self, name: &str) -> EncryptedSecret {
        self.es.get(name).await.unwrap()
    }

    /// Someone labels the resource: a new version without a new generation.
    async fn label(&self, name: &str) -> EncryptedSecret {
        let label = serde_json::json!({"metadata": {"labels": {"team": "a"}}});
        self.es
            .patch(name, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .unwrap()
    }

    /// One reconcile of the object as the server has it now.
    async fn reconcile(&self, name: &str) -> EncryptedSecret {
        let es = self.get(name).await;
        self.reconcile_obj(es).await;
        self.get(name).await
    }

    async fn reconcile_obj(&self, es: EncryptedSecret) {
        reconcile(Arc::new(Watched::new(&es)), self.ctx.clone())
            .await
            .expect("reconcile");
    }

    /// Wait until the owned-Secret store shows `name` at the server's
    /// current resourceVersion (the watch caught up).
    async fn store_caught_up(&self, name: &str) {
        let want = self.secrets.get(name).await.unwrap().resource_version();
        eventually(PATIENCE, "owned-Secret store caught up", async || {
            self.ctx
                .secrets
                .get(&reflector::ObjectRef::new(name).within(NS))
                .is_some_and(|m| m.resource_version.as_deref() == want.as_deref())
        })
        .await;
    }

    fn counters(&self) -> Counters {
        self.server.counters()
    }

    async fn secret_data(&self, name: &str) -> BTreeMap<String, Vec<u8>> {
        self.secrets
            .get(name)
            .await
            .unwrap()
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }
}

fn reason(es: &EncryptedSecret) -> String {
    ready_condition(es.status.as_ref())
        .map(|c| format!("{}/{}", c.status, c.reason))
        .unwrap_or_default()
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Requests of one kind in a counter delta.
struct Cost {
    secret_writes: u64,
    status_writes: u64,
    gets: u64,
    total: u64,
}

fn cost(c: &Counters) -> Cost {
    Cost {
        secret_writes: c.writes("secrets"),
        status_writes: c.writes("encryptedsecrets/status"),
        gets: c.verb_total("get"),
        total: c.iter().map(|(_, _, n)| n).sum(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_resync_and_restart_cost_exactly_what_they_must() {
    const N: usize = 10;
    let rig = Rig::start().await;
    for i in 0..N {
        let es = rig
            .sealed(&format!("s{i}"), &[("password", "hunter2")])
            .await;
        rig.create(&es).await;
    }
    let kms_before = rig.fake.calls(Operation::Decrypt);
    let before = rig.counters();
    for i in 0..N {
        let es = rig.reconcile(&format!("s{i}")).await;
        assert_eq!(reason(&es), "True/Synced");
    }
    // the test's own reads of the objects (one GET per reconcile() call and
    // one after it) are not the controller's
    let own_gets = 2 * N as u64;
    let c = cost(&rig.counters().since(&before));
    assert_eq!(c.secret_writes, N as u64, "one Secret write per resource");
    assert_eq!(
        rig.counters().since(&before).get("create", "secrets"),
        N as u64,
        "a new Secret is created (create-if-absent), not applied"
    );
    assert_eq!(c.status_writes, N as u64, "one status write per resource");
    // the listed owned-Secret store says the Secrets do not exist: no read
    assert_eq!(c.gets - own_gets, 0, "no Secret read on a cold start");
    assert_eq!(
        c.total - own_gets,
        2 * N as u64,
        "nothing but one Secret write and one status write per resource"
    );
    assert_eq!(
        rig.fake.calls(Operation::Decrypt) - kms_before,
        N as u64,
        "one Decrypt per data key"
    );
    for i in 0..N {
        assert_eq!(
            rig.secret_data(&format!("s{i}")).await,
            data(&[("password", "hunter2")])
        );
    }

    // resync: every resource unchanged → no request of any kind, no KMS call
    for i in 0..N {
        rig.store_caught_up(&format!("s{i}")).await;
    }
    let objs: Vec<_> = (0..N).map(|i| format!("s{i}")).collect();
    let mut fresh = Vec::new();
    for name in &objs {
        fresh.push(rig.get(name).await);
    }
    let (before, kms_before) = (rig.counters(), rig.fake.total_calls());
    for es in fresh.clone() {
        rig.reconcile_obj(es).await;
    }
    let c = cost(&rig.counters().since(&before));
    assert_eq!(
        c.total, 0,
        "a resync of unchanged resources makes no request"
    );
    assert_eq!(rig.fake.total_calls(), kms_before, "and no KMS call");

    // controller restart (no memory): still nothing, the status says it all
    let rig = rig.restart().await;
    for name in &objs {
        rig.store_caught_up(name).await;
    }
    let (before, kms_before) = (rig.counters(), rig.fake.total_calls());
    for es in fresh {
        rig.reconcile_obj(es).await;
    }
    let c = cost(&rig.counters().since(&before));
    assert_eq!(
        c.total, 0,
        "a restarted controller re-verifies N synced resources with no request"
    );
    assert_eq!(rig.fake.total_calls(), kms_before);
}

/// A created Secret's keys belong to our create (an `Update` managedFields
/// entry), so a later server-side apply alone would not remove a dropped
/// key: the controller prunes it, and only then reports Synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_dropped_from_a_created_secret_leaves_the_secret() {
    let rig = Rig::start().await;
    let es = rig.sealed("app", &[("a", "one"), ("b", "two")]).await;
    rig.create(&es).await;
    let es = rig.reconcile("app").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(
        rig.secret_data("app").await,
        data(&[("a", "one"), ("b", "two")])
    );
    let created = rig.secrets.get("app").await.unwrap();
    // the answer to a write, as the controller decodes it
    let created: kmsecrets::controller::reconcile::SecretWritten =
        serde_json::from_str(&serde_json::to_string(&created).unwrap()).unwrap();
    let left = |keys: &[&str]| {
        let keys = keys.iter().map(|k| k.to_string()).collect();
        kmsecrets::controller::reconcile::keys_left_by_create(&created, &keys)
    };
    assert_eq!(left(&["a"]), ["b"], "the create owns the keys");
    assert!(left(&["a", "b"]).is_empty(), "nothing left over");
    assert_eq!(left(&[]), ["a", "b"]);
    rig.store_caught_up("app").await;

    // a changed value and a dropped key, in one resealed spec
    rig.replace(&rig.reseal(&es, &[("a", "uno")]).await).await;
    let before = rig.counters();
    let es = rig.reconcile("app").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(rig.secret_data("app").await, data(&[("a", "uno")]));
    let c = rig.counters().since(&before);
    // apply + the prune (merge patch) + status
    assert_eq!(c.writes("secrets"), 2, "{c:?}");
    let s = rig.secrets.get("app").await.unwrap();
    assert_eq!(
        es.status.as_ref().unwrap().secret_resource_version,
        s.metadata.resource_version,
        "the status names the pruned Secret's version"
    );

    // the next drop needs no prune: the apply owns what is left
    rig.store_caught_up("app").await;
    let es = rig.get("app").await;
    rig.replace(&rig.reseal(&es, &[("c", "three")]).await).await;
    let before = rig.counters();
    let es = rig.reconcile("app").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(rig.secret_data("app").await, data(&[("c", "three")]));
    assert_eq!(rig.counters().since(&before).writes("secrets"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_secret_is_left_alone_until_annotated_for_adoption() {
    let rig = Rig::start().await;
    let theirs = Secret {
        metadata: ObjectMeta {
            name: Some("db".into()),
            ..Default::default()
        },
        data: Some([("password".to_string(), ByteString(b"theirs".to_vec()))].into()),
        ..Default::default()
    };
    rig.secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let es = rig.sealed("db", &[("password", "ours")]).await;
    rig.create(&es).await;
    let before = rig.counters();
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "False/SecretConflict");
    let msg = &ready_condition(es.status.as_ref()).unwrap().message;
    assert!(msg.contains("kmsecrets.dev/adopt"), "{msg}");
    // the store (ours only) does not show it: one create attempt, which the
    // server refuses (AlreadyExists), then a read; never an apply
    let c = rig.counters().since(&before);
    assert_eq!(c.get("create", "secrets"), 1, "{c:?}");
    assert_eq!(c.get("patch", "secrets"), 0, "{c:?}");
    assert_eq!(c.get("get", "secrets"), 1, "{c:?}");
    assert_eq!(rig.secret_data("db").await, data(&[("password", "theirs")]));
    let theirs_rv = rig.secrets.get("db").await.unwrap().resource_version();
    // the conflict is re-reported on the next reconcile without a second write
    let before = rig.counters();
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "False/SecretConflict");
    let c = rig.counters().since(&before);
    assert_eq!(c.total_writes(), 0, "same conflict, no new status write");
    assert_eq!(
        rig.secrets.get("db").await.unwrap().resource_version(),
        theirs_rv,
        "the conflicting Secret was written"
    );

    let adopt = serde_json::json!({"metadata": {"annotations": {"kmsecrets.dev/adopt": "true"}}});
    rig.secrets
        .patch("db", &PatchParams::default(), &Patch::Merge(&adopt))
        .await
        .unwrap();
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(rig.secret_data("db").await, data(&[("password", "ours")]));
    let s = rig.secrets.get("db").await.unwrap();
    let owner = s
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    assert_eq!(owner.map(|o| o.uid.as_str()), es.uid().as_deref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_secret_is_replaced_on_change_and_kept_on_kms_failure() {
    let rig = Rig::start().await;
    let mut es = rig.sealed("frozen", &[("token", "v1")]).await;
    es.spec.template = Some(SecretTemplate {
        immutable: Some(true),
        ..Default::default()
    });
    rig.create(&es).await;
    let es = rig.reconcile("frozen").await;
    assert_eq!(reason(&es), "True/Synced");
    let first = rig.secrets.get("frozen").await.unwrap();
    assert_eq!(first.immutable, Some(true));

    // new content: the immutable Secret is deleted (uid-preconditioned) and
    // re-created
    let changed = rig.reseal(&es, &[("token", "v2")]).await;
    rig.replace(&changed).await;
    rig.store_caught_up("frozen").await;
    let es = rig.reconcile("frozen").await;
    assert_eq!(reason(&es), "True/Synced");
    let second = rig.secrets.get("frozen").await.unwrap();
    assert_ne!(second.uid(), first.uid(), "replaced, not patched");
    assert_eq!(rig.secret_data("frozen").await, data(&[("token", "v2")]));

    // new content but KMS refuses: nothing deleted, nothing written, the
    // status says why
    let changed = rig.reseal(&es, &[("token", "v3")]).await;
    rig.replace(&changed).await;
    rig.fake.set_key_state(KEY, KeyState::Disabled);
    rig.store_caught_up("frozen").await;
    let before = rig.counters();
    let es = rig.reconcile("frozen").await;
    assert_eq!(reason(&es), "False/KmsKeyDisabled");
    let c = rig.counters().since(&before);
    assert_eq!(
        c.writes("secrets"),
        0,
        "a failing KMS never touches the Secret"
    );
    assert_eq!(c.writes("encryptedsecrets/status"), 1);
    let kept = rig.secrets.get("frozen").await.unwrap();
    assert_eq!(kept.uid(), second.uid());
    assert_eq!(rig.secret_data("frozen").await, data(&[("token", "v2")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_kms_failure_keeps_the_secret_and_recovers() {
    let rig = Rig::start().await;
    let es = rig.sealed("db", &[("password", "one")]).await;
    rig.create(&es).await;
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "True/Synced");
    let rv = rig.secrets.get("db").await.unwrap().resource_version();

    let changed = rig.reseal(&es, &[("password", "two")]).await;
    rig.replace(&changed).await;
    rig.fake.set_unavailable(true);
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "False/KmsUnavailable");
    assert_eq!(rig.secrets.get("db").await.unwrap().resource_version(), rv);
    assert_eq!(rig.secret_data("db").await, data(&[("password", "one")]));

    rig.fake.set_unavailable(false);
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(rig.secret_data("db").await, data(&[("password", "two")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_secret_is_repaired_and_deleted_objects_are_forgotten() {
    let rig = Rig::start().await;
    let es = rig.sealed("db", &[("password", "right")]).await;
    rig.create(&es).await;
    rig.reconcile("db").await;
    rig.store_caught_up("db").await;

    // someone edits the Secret: the store sees a new resourceVersion
    let edit = serde_json::json!({"data": {"password": "d3Jvbmc="}});
    rig.secrets
        .patch("db", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    rig.store_caught_up("db").await;
    let before = rig.counters();
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(rig.counters().since(&before).writes("secrets"), 1);
    assert_eq!(rig.secret_data("db").await, data(&[("password", "right")]));

    // deleted without a finalizer: no reconcile runs for it, housekeeping
    // evicts what the controller remembered
    let state = &rig.ctx.state;
    assert!(state.tracked_objects() > 0);
    rig.es.delete("db", &DeleteParams::default()).await.unwrap();
    eventually(
        PATIENCE,
        "EncryptedSecret gone from the store",
        async || rig.es_store.state().is_empty(),
    )
    .await;
    housekeeping(std::slice::from_ref(&rig.es_store), state);
    assert_eq!(state.tracked_objects(), 0);
}

/// A resource this process synced keeps only its facts in the store (its
/// spec text is released): a resync of it costs no request at all, and a
/// reconcile that needs the spec reads the resource once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_spec_costs_nothing_when_settled_and_one_read_when_not() {
    let rig = Rig::start().await;
    let es = rig.sealed("db", &[("password", "right")]).await;
    rig.create(&es).await;
    let obj = Arc::new(Watched::new(&rig.get("db").await));
    let held = obj.text_len();
    reconcile(obj.clone(), rig.ctx.clone()).await.unwrap();
    assert_eq!(reason(&rig.get("db").await), "True/Synced");
    assert_eq!(
        obj.released(),
        Some(Facts {
            retain: false,
            local: false,
            kms_keys: vec![KEY.into()].into(),
            keys_condition: None,
        }),
        "released once synced"
    );
    assert!(obj.text_len() < held);
    rig.store_caught_up("db").await;
    let (before, kms_before) = (rig.counters(), rig.fake.total_calls());
    for _ in 0..3 {
        reconcile(obj.clone(), rig.ctx.clone()).await.unwrap();
    }
    assert_eq!(
        cost(&rig.counters().since(&before)).total,
        0,
        "a settled resource costs no request"
    );
    assert_eq!(rig.fake.total_calls(), kms_before, "and no KMS call");

    // its Secret is deleted: the resource is read once, the Secret restored
    rig.secrets
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    eventually(PATIENCE, "Secret gone from the store", async || {
        rig.ctx
            .secrets
            .get(&ObjectRef::new("db").within(NS))
            .is_none()
    })
    .await;
    let before = rig.counters();
    reconcile(obj.clone(), rig.ctx.clone()).await.unwrap();
    let d = rig.counters().since(&before);
    assert_eq!(d.get("get", "encryptedsecrets"), 1, "one read: {d:?}");
    assert_eq!(d.writes("secrets"), 1);
    assert_eq!(rig.secret_data("db").await, data(&[("password", "right")]));

    // deleted meanwhile: the read finds nothing, and nothing is written
    rig.es.delete("db", &DeleteParams::default()).await.unwrap();
    let stale = Arc::new(Watched::new(&es));
    stale.release(Facts::default());
    let before = rig.counters();
    reconcile(stale, rig.ctx.clone()).await.unwrap();
    let d = rig.counters().since(&before);
    assert_eq!(d.get("get", "encryptedsecrets"), 1, "{d:?}");
    assert_eq!(cost(&d).total, 1, "nothing but the read: {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_gauge_sums_every_namespace_scope() {
    let rig = Rig::start().await;
    for n in ["a", "b"] {
        rig.create(&rig.sealed(n, &[("k", "v")]).await).await;
        rig.reconcile(n).await;
    }
    // a second scope: another namespace with one synced and one failing
    let nss: Api<Namespace> = Api::all(rig.client.clone());
    let other = Namespace {
        metadata: ObjectMeta {
            name: Some("other".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    nss.create(&PostParams::default(), &other).await.unwrap();
    let other_api: Api<EncryptedSecret> = Api::namespaced(rig.client.clone(), "other");
    for (n, ok) in [("c", true), ("d", false)] {
        let mut es = rig.sealed(n, &[("k", "v")]).await;
        es.metadata.namespace = Some("other".into());
        other_api.create(&PostParams::default(), &es).await.unwrap();
        let status = serde_json::json!({"status": {"conditions": [{
            "type": "Ready", "status": if ok { "True" } else { "False" },
            "reason": if ok { "Synced" } else { "DecryptFailed" }, "message": "",
            "lastTransitionTime": "2026-12-01T00:00:00Z"}]}});
        other_api
            .patch_status(n, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let (other_store, writer) = reflector::store();
    let api: Api<Watched> = Api::namespaced(rig.client.clone(), "other");
    tokio::spawn(
        watcher(api, Default::default())
            .default_backoff()
            .reflect(writer)
            .for_each(log_watch_error),
    );
    let stores = [rig.es_store.clone(), other_store];
    eventually(
        PATIENCE,
        "both stores hold their objects with status",
        async || {
            stores.iter().map(|s| s.state().len()).sum::<usize>() == 4
                && stores.iter().flat_map(|s| s.state()).all(|o| {
                    o.parse()
                        .is_ok_and(|es| ready_condition(es.status.as_ref()).is_some())
                })
        },
    )
    .await;
    let state = &rig.ctx.state;
    housekeeping(&stores, state);
    let m = state.metrics.render();
    assert!(
        m.contains("kmsecrets_encryptedsecrets{ready=\"true\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("kmsecrets_encryptedsecrets{ready=\"false\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_token_type_is_refused_and_nothing_is_created() {
    let rig = Rig::start().await;
    for (name, ty, ann) in [
        ("mint", "kubernetes.io/service-account-token", None),
        ("boot", "bootstrap.kubernetes.io/token", None),
        (
            "point",
            "Opaque",
            Some(("kubernetes.io/service-account.name", "deployer")),
        ),
    ] {
        let mut es = rig.sealed(name, &[("token", "x")]).await;
        es.spec.template = Some(SecretTemplate {
            type_: Some(ty.into()),
            metadata: ann.map(|(k, v)| kmsecrets::api::TemplateMetadata {
                annotations: [(k.to_string(), v.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        rig.create(&es).await;
        let (before, kms_before) = (rig.counters(), rig.fake.total_calls());
        let es = rig.reconcile(name).await;
        assert_eq!(reason(&es), "False/InvalidSpec", "{name}");
        let msg = &ready_condition(es.status.as_ref()).unwrap().message;
        assert!(msg.contains("--allow-secret-type"), "{msg}");
        assert!(!msg.contains("deployer"), "the annotation's value: {msg}");
        let c = rig.counters().since(&before);
        assert_eq!(c.writes("secrets"), 0, "{name}: no Secret written");
        assert_eq!(rig.fake.total_calls(), kms_before, "{name}: no KMS call");
        assert!(rig.secrets.get_opt(name).await.unwrap().is_none(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_object_memory_stays_flat_under_churn() {
    const CYCLES: usize = 1000;
    let rig = Rig::start().await;
    let template = rig.sealed("churn", &[("k", "v")]).await;
    let state = rig.ctx.state.clone();
    let mut peak = 0;
    for i in 0..CYCLES {
        // same name, new uid each time: a normally deleted resource (no
        // finalizer) never reaches a reconcile after its deletion
        rig.create(&template).await;
        rig.reconcile("churn").await;
        rig.es
            .delete("churn", &DeleteParams::default())
            .await
            .unwrap();
        if i % 100 == 99 {
            eventually(PATIENCE, "store emptied", async || {
                rig.es_store.state().is_empty()
            })
            .await;
            peak = peak.max(state.tracked_objects());
            housekeeping(std::slice::from_ref(&rig.es_store), &state);
            assert_eq!(state.tracked_objects(), 0, "after {} cycles", i + 1);
        }
    }
    eprintln!(
        "churn: {CYCLES} create/sync/delete cycles; per-object entries peaked at {peak} between sweeps, 0 after each"
    );
    assert!(peak <= 200, "{peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_values_never_reach_status_or_events() {
    let rig = Rig::start().await;
    let dynamic: Api<kube::core::DynamicObject> = Api::namespaced_with(
        rig.client.clone(),
        NS,
        &kube::core::ApiResource::erase::<EncryptedSecret>(&()),
    );
    for (name, field, canary, needle, path) in [
        (
            "pin",
            "encryptedData",
            serde_json::json!({"pin": 987654321}),
            "987654321",
            "spec.encryptedData.pin",
        ),
        (
            "scope",
            "scope",
            serde_json::json!("SuperSecretPassw0rd"),
            "SuperSecretPassw0rd",
            "spec.scope",
        ),
        (
            "float",
            "encryptedData",
            serde_json::json!({"x": 31415.92653}),
            "31415.92653",
            "spec.encryptedData.x",
        ),
    ] {
        let es = rig.create(&rig.sealed(name, &[("k", "v")]).await).await;
        let mut raw = serde_json::to_value(&es).unwrap();
        raw["spec"][field] = canary;
        // the server holds the bad object (the in-memory server does not
        // enforce the CRD's types; a real one would refuse these, but an
        // older CRD or a schema gap must not leak either)
        let obj: kube::core::DynamicObject = serde_json::from_value(raw).unwrap();
        let stored = dynamic
            .replace(name, &PostParams::default(), &obj)
            .await
            .unwrap();
        let guard: Watched =
            serde_json::from_value(serde_json::to_value(&stored).unwrap()).unwrap();
        assert!(guard.parse().is_err(), "{name} must not deserialize");
        reconcile(Arc::new(guard), rig.ctx.clone()).await.unwrap();
        let es = dynamic.get(name).await.unwrap();
        let status = serde_json::to_string(&es.data["status"]).unwrap();
        assert!(status.contains("InvalidSpec"), "{name}: {status}");
        assert!(!status.contains(needle), "{name}: {status}");
        assert!(status.contains(path), "{name} names the field: {status}");
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(rig.client.clone(), NS);
    let all =
        serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    assert!(
        all.contains("InvalidSpec"),
        "the Warning events exist: {all}"
    );
    for needle in ["987654321", "SuperSecretPassw0rd", "31415.92653"] {
        assert!(!all.contains(needle), "{needle} in events");
    }
}

async fn create_namespace(client: &Client, name: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    nss.create(&PostParams::default(), &ns).await.unwrap();
}

/// In-process: a tenant whose resources
/// hang in KMS holds at most its namespace's share of the workers (half of
/// `--concurrency`; a quarter once they have failed), each reconcile ends at
/// the unwrap deadline, and another namespace's resource syncs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_tenant_holds_its_share_of_workers_and_no_more() {
    let rig = Rig::start().await;
    create_namespace(&rig.client, "tenant").await;
    let tenant: Api<EncryptedSecret> = Api::namespaced(rig.client.clone(), "tenant");
    let mut stuck = Vec::new();
    for i in 0..8 {
        let es = rig
            .sealed_in("tenant", &format!("t{i}"), &[("k", "v")], &[HANG])
            .await;
        stuck.push(tenant.create(&PostParams::default(), &es).await.unwrap());
    }
    rig.fake.set_key_state(HANG, KeyState::Hanging);
    let state = rig.ctx.state.clone();
    // concurrency 8: the tenant may hold 4 workers, 2 once failing
    assert_eq!(state.namespace_shares(), (4, 2));

    let run_all = |objs: Vec<EncryptedSecret>| {
        objs.into_iter()
            .map(|es| {
                let ctx = rig.ctx.clone();
                tokio::spawn(async move {
                    let start = Instant::now();
                    reconcile(Arc::new(Watched::new(&es)), ctx).await.unwrap();
                    start.elapsed()
                })
            })
            .collect::<Vec<_>>()
    };
    let deferred0 = state.metrics.reconcile_deferred.get();
    let started = Instant::now();
    let first = run_all(stuck.clone());
    eventually(PATIENCE, "the tenant holds its share", async || {
        rig.fake.hanging_now() == 4
    })
    .await;
    // the other four were deferred at once, without a KMS call
    eventually(PATIENCE, "four deferred", async || {
        state.metrics.reconcile_deferred.get() - deferred0 == 4
    })
    .await;
    assert_eq!(rig.fake.hanging_now(), 4, "never more than the share");

    // another namespace's resource syncs while the tenant hangs
    let victim = rig.sealed("victim", &[("password", "pw")]).await;
    rig.create(&victim).await;
    let t = Instant::now();
    let es = rig.reconcile("victim").await;
    let victim_time = t.elapsed();
    assert_eq!(reason(&es), "True/Synced");
    assert!(
        rig.fake.hanging_now() == 4,
        "the victim synced while the tenant hung"
    );

    // every reconcile ends by the unwrap deadline
    let mut longest = Duration::ZERO;
    for h in first {
        longest = longest.max(h.await.unwrap());
    }
    assert!(
        longest < UNWRAP_DEADLINE + Duration::from_secs(2),
        "a reconcile took {longest:?}"
    );
    eventually(PATIENCE, "the deadline released every call", async || {
        rig.fake.hanging_now() == 0
    })
    .await;
    let hung: Vec<EncryptedSecret> = {
        let mut v = Vec::new();
        for es in &stuck {
            let now = tenant.get(&es.name_any()).await.unwrap();
            if ready_condition(now.status.as_ref()).is_some() {
                v.push(now);
            }
        }
        v
    };
    assert_eq!(hung.len(), 4, "only the four that ran report a status");
    for es in &hung {
        let c = ready_condition(es.status.as_ref()).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "KmsUnavailable")
        );
        assert!(c.message.contains("--unwrap-timeout"), "{}", c.message);
    }

    // once failing, they get half the share
    let again = run_all(hung);
    eventually(PATIENCE, "failing resources hold two workers", async || {
        rig.fake.hanging_now() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        rig.fake.hanging_now(),
        2,
        "never more than the failing share"
    );
    for h in again {
        h.await.unwrap();
    }
    eprintln!(
        "hanging tenant (8 resources, --concurrency 8): held 4 workers, then 2 once failing; victim synced in {victim_time:?}; longest tenant reconcile {longest:?} (deadline {UNWRAP_DEADLINE:?}); whole scenario {:?}",
        started.elapsed()
    );
}

/// While a tenant's share of KMS slots is taken, a resource whose data key
/// is cached still syncs (a cache hit needs no slot), and a resource that
/// needs KMS is deferred, parked, and woken the moment a slot frees (not
/// after a blind requeue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_needs_no_slot_and_a_parked_reconcile_wakes_when_one_frees() {
    let rig = Rig::start().await;
    let mut wakes = rig.wakes.lock().unwrap().take().unwrap();
    create_namespace(&rig.client, "tenant").await;
    let tenant: Api<EncryptedSecret> = Api::namespaced(rig.client.clone(), "tenant");
    let state = rig.ctx.state.clone();

    // a data key of the tenant's, cached by a first sync
    let c0 = rig
        .sealed_scoped("tenant", "c0", &[("k", "v")], &[KEY], Scope::Namespace)
        .await;
    let c0 = tenant.create(&PostParams::default(), &c0).await.unwrap();
    rig.reconcile_obj(c0.clone()).await;
    let mut c1 = c0.clone();
    c1.metadata = ObjectMeta {
        name: Some("c1".into()),
        namespace: Some("tenant".into()),
        ..Default::default()
    };
    let c1 = tenant.create(&PostParams::default(), &c1).await.unwrap();
    let needs_kms = rig.sealed_in("tenant", "p", &[("k", "v")], &[KEY]).await;
    let needs_kms = tenant
        .create(&PostParams::default(), &needs_kms)
        .await
        .unwrap();

    // the tenant's whole share (4 of 8) hangs in KMS
    let mut stuck = Vec::new();
    for i in 0..4 {
        let es = rig
            .sealed_in("tenant", &format!("t{i}"), &[("k", "v")], &[HANG])
            .await;
        stuck.push(tenant.create(&PostParams::default(), &es).await.unwrap());
    }
    rig.fake.set_key_state(HANG, KeyState::Hanging);
    let hung: Vec<_> = stuck
        .into_iter()
        .map(|es| {
            let ctx = rig.ctx.clone();
            tokio::spawn(async move { reconcile(Arc::new(Watched::new(&es)), ctx).await.unwrap() })
        })
        .collect();
    eventually(PATIENCE, "the tenant holds its share", async || {
        rig.fake.hanging_now() == 4
    })
    .await;

    // cached: syncs now, without a KMS call and without a slot
    let decrypts = rig.fake.calls(Operation::Decrypt);
    rig.reconcile_obj(c1).await;
    let c1 = tenant.get("c1").await.unwrap();
    assert_eq!(reason(&c1), "True/Synced");
    assert_eq!(rig.fake.calls(Operation::Decrypt), decrypts, "a cache hit");
    assert_eq!(rig.fake.hanging_now(), 4);

    // needs KMS: deferred and parked, nothing written
    let deferred = state.metrics.reconcile_deferred.get();
    let t = Instant::now();
    rig.reconcile_obj(needs_kms).await;
    assert_eq!(state.metrics.reconcile_deferred.get(), deferred + 1);
    assert_eq!(rig.ctx.parked.len(), 1);
    assert!(tenant.get("p").await.unwrap().status.is_none());

    // the hung calls end at the unwrap deadline and free their slots: the
    // parked one is triggered then, well before the 10 s backstop
    let woken = tokio::time::timeout(UNWRAP_DEADLINE + Duration::from_secs(3), wakes.next())
        .await
        .expect("the parked reconcile is woken when a slot frees")
        .unwrap();
    let waited = t.elapsed();
    assert_eq!(woken, ObjectRef::new("p").within("tenant"));
    assert!(rig.ctx.parked.is_empty());
    for h in hung {
        h.await.unwrap();
    }
    let p = tenant.get("p").await.unwrap();
    rig.reconcile_obj(p).await;
    assert_eq!(reason(&tenant.get("p").await.unwrap()), "True/Synced");
    eprintln!(
        "parked reconcile woken {waited:?} after it was deferred (deadline {UNWRAP_DEADLINE:?})"
    );
}

/// A transient failure of one copy moves on to the next copy at once (one
/// attempt, not all of them), and a resource over the size limits is
/// refused before any KMS call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_region_costs_one_attempt_and_oversized_specs_none() {
    let rig = Rig::start().await;
    let es = rig.sealed_in(NS, "dr", &[("k", "v")], &[DOWN, KEY]).await;
    rig.create(&es).await;
    rig.fake.set_key_state(DOWN, KeyState::Unreachable);
    let before = rig.fake.calls(Operation::Decrypt);
    let t = Instant::now();
    let es = rig.reconcile("dr").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(
        rig.fake.calls(Operation::Decrypt) - before,
        2,
        "one attempt at the down region, one at the next copy"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(es.status.unwrap().key_id.as_deref(), Some(KEY));

    let mut big = rig.sealed("big", &[("k", "v")]).await;
    let copy = big.spec.data_keys[0].clone();
    big.spec.data_keys = vec![copy; kmsecrets::api::limits::DATA_KEYS + 1];
    rig.create(&big).await;
    let calls = rig.fake.total_calls();
    let es = rig.reconcile("big").await;
    assert_eq!(reason(&es), "False/InvalidSpec");
    let msg = &ready_condition(es.status.as_ref()).unwrap().message;
    assert!(msg.contains("dataKeys has 11 entries; at most 10"), "{msg}");
    assert_eq!(rig.fake.total_calls(), calls, "no KMS call");
}

/// `template.data` as the controller renders it: every DESIGN example, the
/// source-hash annotation, and a render error that keeps the last good
/// Secret and never quotes a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_render_into_the_secret_and_a_broken_one_keeps_the_last_good() {
    let rig = Rig::start().await;
    let mut es = rig
        .sealed(
            "registry",
            &[
                ("username", "ci-bot"),
                ("password", "p@ss:w/rd"),
                ("registry", "ghcr.io"),
            ],
        )
        .await;
    let templates: BTreeMap<String, String> = [
        (
            ".dockerconfigjson",
            r#"{"auths":{"{{ registry }}":{"auth":"{{ (username ~ ":" ~ password) | b64encode }}"}}}"#,
        ),
        (
            "url",
            "postgres://{{ username | urlencode }}:{{ password | urlencode }}@db:5432/app",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    es.spec.template = Some(SecretTemplate {
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: templates,
        ..Default::default()
    });
    rig.create(&es).await;
    let es = rig.reconcile("registry").await;
    assert_eq!(reason(&es), "True/Synced");
    let got = rig.secret_data("registry").await;
    let cfg: serde_json::Value = serde_json::from_slice(&got[".dockerconfigjson"]).unwrap();
    assert_eq!(cfg["auths"]["ghcr.io"]["auth"], "Y2ktYm90OnBAc3M6dy9yZA==");
    assert_eq!(
        String::from_utf8(got["url"].clone()).unwrap(),
        "postgres://ci-bot:p%40ss%3Aw%2Frd@db:5432/app"
    );
    assert_eq!(got["password"], b"p@ss:w/rd");
    let secret = rig.secrets.get("registry").await.unwrap();
    assert_eq!(
        secret.annotations().get("kmsecrets.dev/source-hash"),
        es.status.as_ref().unwrap().source_hash.as_ref(),
        "the Secret carries status.sourceHash"
    );

    // a template that fails at render time (the canary is a value): the
    // existing Secret stays, the status names the template key only
    let canary = "CANARY-d41d8cd9";
    let mut broken = rig
        .reseal(
            &es,
            &[("username", canary), ("password", "x"), ("registry", "r")],
        )
        .await;
    broken
        .spec
        .template
        .as_mut()
        .unwrap()
        .data
        .insert("port".into(), "{{ username | int }}".into());
    rig.replace(&broken).await;
    let es = rig.reconcile("registry").await;
    assert_eq!(reason(&es), "False/InvalidSpec");
    let status = serde_json::to_string(&es.status).unwrap();
    assert!(status.contains("spec.template.data[port]"), "{status}");
    assert!(
        !status.contains("CANARY"),
        "a value reached the status: {status}"
    );
    assert_eq!(
        rig.secret_data("registry").await,
        got,
        "a render error keeps the last good Secret"
    );
}

async fn deployment(client: &Client, name: &str) -> Api<k8s_openapi::api::apps::v1::Deployment> {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), NS);
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}
            }
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    api
}

/// (generation, restartedAt annotation) of a Deployment.
async fn restarts(
    api: &Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
) -> (i64, Option<String>) {
    let d = api.get(name).await.unwrap();
    let at = d
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("kmsecrets.dev/restartedAt").cloned());
    (d.metadata.generation.unwrap_or_default(), at)
}

/// Restarts happen exactly once per content change: not on creation, a
/// no-op resync, a controller restart (= failover: a new State), a rotation
/// that keeps the values, or a retried reconcile; a missing target is a
/// Warning and does not block the Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_restarts_happen_once_per_content_change() {
    let rig = Rig::start().await;
    let deploys = deployment(&rig.client, "api").await;
    let (gen0, none) = restarts(&deploys, "api").await;
    assert_eq!(none, None);
    let targets: Vec<kmsecrets::api::RolloutRestartTarget> = vec![
        "Deployment/api".parse().unwrap(),
        "StatefulSet/missing".parse().unwrap(),
    ];
    let mut es = rig.sealed("db", &[("password", "one")]).await;
    es.spec.rollout_restart_targets = targets.clone();
    rig.create(&es).await;
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(
        restarts(&deploys, "api").await,
        (gen0, None),
        "creation restarts nothing"
    );

    // no-op resync, then a restarted controller (as after a failover)
    rig.store_caught_up("db").await;
    let es = rig.reconcile("db").await;
    let rig = rig.restart().await;
    rig.store_caught_up("db").await;
    rig.reconcile_obj(es.clone()).await;
    assert_eq!(
        restarts(&deploys, "api").await,
        (gen0, None),
        "resync/restart: none"
    );

    // rotation: new data key and ciphertext, same values → a write, no restart
    let mut rotated = rig.reseal(&es, &[("password", "one")]).await;
    rotated.spec.rollout_restart_targets = targets.clone();
    rig.replace(&rotated).await;
    rig.store_caught_up("db").await;
    let before = rig.counters();
    let es = rig.reconcile("db").await;
    assert_eq!(reason(&es), "True/Synced");
    assert_eq!(
        rig.counters().since(&before).writes("secrets"),
        1,
        "rotation re-applies"
    );
    assert_eq!(
        restarts(&deploys, "api").await,
        (gen0, None),
        "same content: no restart"
    );

    // a content change: exactly one restart, with the Secret's change time
    let mut changed = rig.reseal(&es, &[("password", "two")]).await;
    changed.spec.rollout_restart_targets = targets.clone();
    rig.replace(&changed).await;
    rig.store_caught_up("db").await;
    let es = rig.reconcile("db").await;
    assert_eq!(
        reason(&es),
        "True/Synced",
        "a missing target never blocks the Secret"
    );
    let secret = rig.secrets.get("db").await.unwrap();
    let at = secret
        .annotations()
        .get("kmsecrets.dev/content-changed-at")
        .cloned()
        .expect("content-change time on the Secret");
    assert_eq!(
        restarts(&deploys, "api").await,
        (gen0 + 1, Some(at.clone()))
    );
    assert_eq!(
        es.status.as_ref().unwrap().last_rollout_restart.as_deref(),
        Some(at.as_str())
    );
    let m = rig.ctx.state.metrics.render();
    assert!(
        m.contains(r#"kmsecrets_rollout_restarts_total{kind="StatefulSet",result="not_found"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"kmsecrets_rollout_restarts_total{kind="Deployment",result="success"} 1"#)
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(rig.client.clone(), NS);
    let failed: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RolloutRestartFailed"))
        .collect();
    assert_eq!(failed.len(), 1, "one Warning for the missing StatefulSet");
    assert_eq!(failed[0].type_.as_deref(), Some("Warning"));
    let note = failed[0].note.clone().unwrap_or_default();
    assert!(note.contains("StatefulSet missing not found"), "{note}");

    // resync and restart after the change: nothing more
    rig.store_caught_up("db").await;
    rig.reconcile("db").await;
    let rig = rig.restart().await;
    rig.store_caught_up("db").await;
    let es = rig.reconcile("db").await;
    assert_eq!(
        restarts(&deploys, "api").await,
        (gen0 + 1, Some(at.clone()))
    );

    // the status write after the restarts was lost (a crash): the retry
    // re-requests the same restart, which changes nothing
    let lost =
        serde_json::json!({"status": {"lastRolloutRestart": null, "secretResourceVersion": "0"}});
    rig.es
        .patch_status("db", &PatchParams::default(), &Patch::Merge(&lost))
        .await
        .unwrap();
    let rig = rig.restart().await;
    rig.store_caught_up("db").await;
    let es2 = rig.reconcile("db").await;
    assert_eq!(reason(&es2), "True/Synced");
    assert_eq!(
        es2.status.as_ref().unwrap().last_rollout_restart.as_deref(),
        Some(at.as_str())
    );
    assert_eq!(
        restarts(&deploys, "api").await,
        (gen0 + 1, Some(at)),
        "no second rollout"
    );
    drop(es);
}

/// The echo of our status write and the write's answer leave the API server
/// together, and either may be read first: a version that arrives while the
/// write is in flight triggers nothing then, and is judged by the answer —
/// our own version is an echo, any other runs the resource again.
#[tokio::test]
async fn a_version_arriving_during_our_status_write_is_judged_by_its_answer() {
    use kmsecrets::controller::state::Arrived;
    let rig = Rig::start().await;
    let state = &rig.ctx.state;
    let es = rig.sealed("db", &[("password", "right")]).await;
    rig.create(&es).await;
    let fresh = rig.get("db").await;
    let uid = fresh.metadata.uid.clone().unwrap();
    let rv = fresh.metadata.resource_version.clone().unwrap();
    let seen = Watched::new(&fresh);
    // no write in flight: an ordinary change triggers
    assert!(!state.is_quiet_status_event(&seen));

    // the answer names the version that arrived: our echo
    let w = state.status_write(&uid);
    assert!(state.is_quiet_status_event(&seen));
    assert_eq!(w.finish(Some(&rv)), Arrived::Echo);
    assert!(
        !state.is_quiet_status_event(&seen),
        "held back after the write ended"
    );

    // the answer names another version: someone else's change came in
    let w = state.status_write(&uid);
    assert!(state.is_quiet_status_event(&seen));
    assert_eq!(w.finish(Some("another")), Arrived::Other);

    // two versions arrived: one of them is not ours
    let w = state.status_write(&uid);
    assert!(state.is_quiet_status_event(&seen));
    let labelled = rig.label("db").await;
    let labelled_rv = labelled.metadata.resource_version.clone().unwrap();
    assert!(state.is_quiet_status_event(&Watched::new(&labelled)));
    assert_eq!(w.finish(Some(&labelled_rv)), Arrived::Other);

    // the write failed: whatever arrived must run again
    let w = state.status_write(&uid);
    assert!(state.is_quiet_status_event(&seen));
    assert_eq!(w.finish(None), Arrived::Other);
    // nothing arrived: the echo is still to come (recognised by its version)
    assert_eq!(state.status_write(&uid).finish(Some(&rv)), Arrived::Nothing);

    // a reconcile cancelled mid-write forgets it
    drop(state.status_write(&uid));
    assert!(!state.is_quiet_status_event(&seen));

    // another resource's write holds nothing back for this one
    let _other = state.status_write("some-other-uid");
    assert!(!state.is_quiet_status_event(&seen));
}

/// The same for the owned Secret: a version of it that arrives while we are
/// writing it triggers nothing then, and is judged by the write's answer
/// (over one HTTP/2 connection the echo of our create often comes first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_version_arriving_during_our_secret_write_is_judged_by_its_answer() {
    use kmsecrets::controller::state::Arrived;
    let rig = Rig::start().await;
    let state = &rig.ctx.state;
    let es = rig.sealed("db", &[("password", "right")]).await;
    rig.create(&es).await;
    let synced = rig.reconcile("db").await;
    let uid = synced.metadata.uid.clone().unwrap();
    // someone edits the Secret: a version that is not our last write
    let edit = serde_json::json!({"data": {"password": "d3Jvbmc="}});
    rig.secrets
        .patch("db", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    rig.store_caught_up("db").await;
    let edited = rig
        .ctx
        .secrets
        .get(&ObjectRef::new("db").within(NS))
        .map(|m| (*m).clone())
        .unwrap();
    let rv = edited.resource_version.clone().unwrap();
    // no write in flight: drift triggers its owner
    assert!(!state.is_quiet_secret_event(&edited));

    // the answer names the version that arrived: our echo
    let w = state.secret_write(&uid);
    assert!(state.is_quiet_secret_event(&edited));
    assert_eq!(w.finish(Some(&rv)), Arrived::Echo);
    assert!(
        !state.is_quiet_secret_event(&edited),
        "held back after the write ended"
    );
    // the answer names another version: someone else's change came in
    let w = state.secret_write(&uid);
    assert!(state.is_quiet_secret_event(&edited));
    assert_eq!(w.finish(Some("another")), Arrived::Other);
    // a failed write: whatever arrived must be looked at
    let w = state.secret_write(&uid);
    assert!(state.is_quiet_secret_event(&edited));
    assert_eq!(w.finish(None), Arrived::Other);
    // nothing arrived: the echo is still to come (recognised by its version)
    assert_eq!(state.secret_write(&uid).finish(Some(&rv)), Arrived::Nothing);
    // a reconcile cancelled (or a write failed) mid-write forgets it
    drop(state.secret_write(&uid));
    assert!(!state.is_quiet_secret_event(&edited));
    // another owner's write holds nothing back for this Secret, and a status
    // write holds back no Secret
    let _other = state.secret_write("some-other-uid");
    let _status = state.status_write(&uid);
    assert!(!state.is_quiet_secret_event(&edited));
    drop(_status);

    // the reconcile that repairs the drift: its own write's echo is quiet
    let repaired = rig.reconcile("db").await;
    assert_eq!(reason(&repaired), "True/Synced");
    rig.store_caught_up("db").await;
    assert_eq!(rig.secret_data("db").await, data(&[("password", "right")]));
    let ours = rig
        .ctx
        .secrets
        .get(&ObjectRef::new("db").within(NS))
        .map(|m| (*m).clone())
        .unwrap();
    assert!(state.is_quiet_secret_event(&ours));
}

/// The watch events our own writes cause (the Secret we applied, the status
/// we wrote) are recognised as echoes and trigger no reconcile; any other
/// change to either object is not an echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_writes_are_echoes_and_nobody_elses_are() {
    let rig = Rig::start().await;
    let state = &rig.ctx.state;
    let es = rig.sealed("db", &[("password", "right")]).await;
    rig.create(&es).await;
    let stored = |name: &str| {
        rig.ctx
            .secrets
            .get(&ObjectRef::new(name).within(NS))
            .map(|m| (*m).clone())
    };
    // not reconciled yet: nothing is an echo
    let fresh = rig.get("db").await;
    assert!(!state.is_own_status_write(&Watched::new(&fresh)));

    let synced = rig.reconcile("db").await;
    assert_eq!(reason(&synced), "True/Synced");
    rig.store_caught_up("db").await;
    // the object as the watch delivers it after our status write, and the
    // Secret as the owned-Secret watch delivers it after our create
    assert!(state.is_own_status_write(&Watched::new(&synced)));
    assert!(state.is_own_secret_write(&stored("db").unwrap()));
    // the version before our status write is not
    assert!(!state.is_own_status_write(&Watched::new(&fresh)));

    // someone edits the Secret: not an echo (drift must be repaired)
    let edit = serde_json::json!({"data": {"password": "d3Jvbmc="}});
    rig.secrets
        .patch("db", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    rig.store_caught_up("db").await;
    let edited = stored("db").unwrap();
    assert!(!state.is_own_secret_write(&edited));
    // a version our apply wrote is an echo as soon as the apply is
    // remembered, before the Synced status that follows it is written (the
    // echo usually arrives while that write is in flight)
    let uid = synced.metadata.uid.clone().unwrap();
    let rv = edited.resource_version.clone().unwrap();
    state.remember_write(&uid, "any", &rv);
    assert!(state.is_own_secret_write(&edited));
    assert!(!state.synced_at(&uid, synced.metadata.generation));
    // someone labels the EncryptedSecret (a change without a new generation)
    let labelled = rig.label("db").await;
    assert!(!state.is_own_status_write(&Watched::new(&labelled)));

    // the repair is our write again, and so is its status
    let repaired = rig.reconcile("db").await;
    rig.store_caught_up("db").await;
    assert_eq!(rig.secret_data("db").await, data(&[("password", "right")]));
    assert!(state.is_own_secret_write(&stored("db").unwrap()));
    assert!(state.is_own_status_write(&Watched::new(&repaired)));

    // a status someone else rewrites is not ours
    let clobber = serde_json::json!({"status": {"conditions": []}});
    let clobbered = rig
        .es
        .patch_status("db", &PatchParams::default(), &Patch::Merge(&clobber))
        .await
        .unwrap();
    assert!(!state.is_own_status_write(&Watched::new(&clobbered)));
}

fn keys_healthy(
    es: &EncryptedSecret,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    es.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kmsecrets::controller::keys::KEYS_HEALTHY)
        .cloned()
}

async fn event_reasons(client: &Client) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// A key scheduled for deletion under 20 synced resources: one
/// DescribeKey per key per check, never per resource; every dependent
/// shows `KeysHealthy=False` with the date and the command that saves it
/// (Ready untouched), one Warning Event each per change and not per check;
/// a resource with a second, healthy copy shows redundancy lost; the
/// metrics say it; the data keys cached under the key are revoked, so an
/// edited resource fails at once; re-enabling the key brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pending_deletion_flags_its_dependents_and_revokes_its_data_keys() {
    use kmsecrets::controller::keys::check_keys;
    let rig = Rig::start().await;
    for i in 0..20 {
        rig.create(&rig.sealed(&format!("only-{i}"), &[("k", "v")]).await)
            .await;
        rig.reconcile(&format!("only-{i}")).await;
    }
    rig.create(&rig.sealed_in(NS, "both", &[("k", "v")], &[KEY, HANG]).await)
        .await;
    rig.reconcile("both").await;
    eventually(PATIENCE, "the store holds all 21", async || {
        rig.es_store.state().len() == 21
    })
    .await;
    let stores = [rig.es_store.clone()];
    let state = &rig.ctx.state;
    let describes = || rig.fake.calls(Operation::DescribeKey);

    let d0 = describes();
    assert!(
        check_keys(&stores, state).await.is_empty(),
        "healthy keys trigger nothing"
    );
    assert_eq!(describes() - d0, 2, "one DescribeKey per distinct key");
    assert!(keys_healthy(&rig.get("only-0").await).is_none());
    let cached = rig.kms.cache_len();
    assert!(cached >= 21, "{cached}");

    rig.fake.set_key_state(KEY, KeyState::PendingDeletion);
    let triggered = check_keys(&stores, state).await;
    assert_eq!(triggered.len(), 21, "every dependent is reconciled");
    assert_eq!(
        rig.kms.cache_len(),
        0,
        "data keys unwrapped under the key revoked"
    );
    for r in &triggered {
        rig.reconcile(&r.name).await;
    }
    for i in 0..20 {
        let es = rig.get(&format!("only-{i}")).await;
        let c = keys_healthy(&es).expect("KeysHealthy");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "KeyPendingDeletion")
        );
        assert!(
            c.message.contains(KEY) && c.message.contains("2031-01-08"),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("kmsecrets rotate --rewrap --key"),
            "{}",
            c.message
        );
        assert_eq!(reason(&es), "True/Synced", "Ready is untouched");
    }
    let c = keys_healthy(&rig.get("both").await).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "RedundancyLost")
    );
    assert!(c.message.contains(KEY), "{}", c.message);
    let text = state.metrics.render();
    for line in [
        format!("kmsecrets_kms_key_state{{key=\"{KEY}\",state=\"PendingDeletion\"}} 1"),
        format!("kmsecrets_kms_key_state{{key=\"{KEY}\",state=\"Enabled\"}} 0"),
        format!("kmsecrets_kms_key_dependents{{key=\"{KEY}\"}} 21"),
        format!("kmsecrets_kms_key_at_risk{{key=\"{KEY}\"}} 20"),
        format!("kmsecrets_kms_key_at_risk{{key=\"{HANG}\"}} 0"),
        format!("kmsecrets_kms_key_deletion_timestamp_seconds{{key=\"{KEY}\"}} 1925596800"),
        "kmsecrets_kms_key_health_enabled 1".to_string(),
    ] {
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    let warnings = |reasons: &[String], r: &str| reasons.iter().filter(|x| *x == r).count();
    let reasons = event_reasons(&rig.client).await;
    assert_eq!(warnings(&reasons, "KeyPendingDeletion"), 20, "{reasons:?}");
    assert_eq!(warnings(&reasons, "RedundancyLost"), 1);

    // a check that finds nothing new triggers nothing and writes nothing
    let d1 = describes();
    assert!(check_keys(&stores, state).await.is_empty());
    assert_eq!(describes() - d1, 2);
    rig.reconcile("only-0").await;
    assert_eq!(
        warnings(&event_reasons(&rig.client).await, "KeyPendingDeletion"),
        20
    );

    // an edit after the revocation needs the key, which refuses: fails now,
    // not at the cache TTL; the Secret stays
    let mut es = rig.get("only-1").await;
    es.spec.template = Some(kmsecrets::api::SecretTemplate {
        data: [("url".to_string(), "x={{ k }}".to_string())].into(),
        ..Default::default()
    });
    rig.replace(&es).await;
    let es = rig.reconcile("only-1").await;
    assert_ne!(reason(&es), "True/Synced");
    assert_eq!(rig.secret_data("only-1").await, data(&[("k", "v")]));

    // the deletion cancelled and the key enabled: back to healthy
    rig.fake.set_key_state(KEY, KeyState::Enabled);
    let triggered = check_keys(&stores, state).await;
    assert_eq!(triggered.len(), 21);
    for r in &triggered {
        rig.reconcile(&r.name).await;
    }
    let c = keys_healthy(&rig.get("only-0").await).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "KeysHealthy")
    );
    let reasons = event_reasons(&rig.client).await;
    assert_eq!(warnings(&reasons, "KeysHealthy"), 21, "{reasons:?}");
}
