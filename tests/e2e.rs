//! End to end: the real `kmsecrets` binary (CLI and `controller` process),
//! real `kubectl`, and one scenario list run on two API servers: `real::*`
//! on a real control plane (etcd + kube-apiserver + kube-controller-manager
//! v1.37.2, built once by scripts/ensure-k8s-tools.sh) and `memory::*` on
//! the project's in-memory server started in-process. Each test has its own
//! server and its own controller(s), so tests run in parallel. KMS is the local provider except where the AWS wire
//! path matters (throttling, outage: moto behind a fault-injecting proxy).
//!
//! No sleeps to "wait for it": everything polls with a deadline
//! ([`eventually`]). One place waits a fixed time on purpose (the KMS
//! outage window), because it proves an *absence* (no hot retry loop), and
//! says so; the idle-resync test proves "no writes" by counting reconciles.
//!
//! Run: `cargo test --test e2e` (`memory::` needs /usr/bin/kubectl; the
//! control plane and its kubectl are built on first use; moto comes from
//! the test venv, see scripts/ensure-venv.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use common::cluster::{Backend, Cluster, Controller, WatchFault, eventually};
use common::{KmsProxy, Moto, aws_test_env, create_key, sdk_client};
use serde_json::{Value, json};

const NS: &str = "default";
const SECOND: Duration = Duration::from_secs(1);

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

/// Flip one bit in the middle of a base64 value.
fn flip_bit(v: &str) -> String {
    let mut raw = STANDARD.decode(v).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    STANDARD.encode(raw)
}

fn to_doc(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

// ---------------------------------------------------------------------------

async fn apply_materialises_secret_with_template_owner_status_and_columns(b: Backend) {
    let c = Cluster::start_on(b).await;
    let _ctl = c.controller(&[]);

    let manifest = c.path("secret.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1
kind: Secret
metadata:
  name: db-creds
  namespace: default
  labels: {app: payments, tier: db}
  annotations: {team: payments, owner: alice}
type: kubernetes.io/basic-auth
stringData:
  username: admin
  password: s3cret-v1
",
    )
    .unwrap();
    let es_yaml = c.encrypt(&["-f", manifest.to_str().unwrap()]);
    let es_file = c.path("db-creds.esec.yaml");
    std::fs::write(&es_file, &es_yaml).unwrap();
    c.kubectl(&["apply", "-f", es_file.to_str().unwrap()]).await;

    c.wait_ready(NS, "db-creds", "True", "Synced").await;
    let es = c.esec(NS, "db-creds").await.unwrap();
    let s = c.secret(NS, "db-creds").await.expect("Secret materialised");

    // data
    let data = c.secret_data(NS, "db-creds").await.unwrap();
    assert_eq!(data.len(), 2, "{:?}", data.keys());
    assert_eq!(data["username"], "admin");
    assert_eq!(data["password"], "s3cret-v1");
    // type, labels, annotations from the template (+ managed-by label)
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app").map(String::as_str), Some("payments"));
    assert_eq!(labels.get("tier").map(String::as_str), Some("db"));
    let ann = s.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann.get("team").map(String::as_str), Some("payments"));
    assert_eq!(ann.get("owner").map(String::as_str), Some("alice"));
    // ownerReference: controller=true, uid of the EncryptedSecret
    let orefs = s.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(orefs.len(), 1, "{orefs:?}");
    let o = &orefs[0];
    assert_eq!(o.controller, Some(true));
    assert_eq!(o.kind, "EncryptedSecret");
    assert_eq!(o.api_version, "kmsecrets.dev/v1alpha1");
    assert_eq!(o.name, "db-creds");
    assert_eq!(Some(&o.uid), es.metadata.uid.as_ref());

    // status
    let st = es.status.clone().unwrap();
    let key_id = es.spec.data_keys[0].key_id.clone();
    assert!(key_id.starts_with("local:"), "{key_id}");
    assert_eq!(st.key_id.as_deref(), Some(key_id.as_str()));
    assert_eq!(st.secret_name.as_deref(), Some("db-creds"));
    assert_eq!(st.observed_generation, es.metadata.generation);
    assert!(st.source_hash.unwrap().starts_with("sha256:"));
    assert_eq!(st.secret_resource_version, s.metadata.resource_version);

    // printer columns through kubectl (Table output)
    let table = c.kubectl(&["get", "esec", "-n", NS]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "REASON", "KEY", "AGE"], "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..4],
        ["db-creds", "True", "Synced", key_id.as_str()],
        "{table}"
    );
    // the long name and the short name are the same resource
    let long = c
        .kubectl(&["get", "encryptedsecrets", "-n", NS, "-o", "name"])
        .await;
    assert_eq!(long.trim(), "encryptedsecret.kmsecrets.dev/db-creds");
}

async fn changed_value_and_removed_key_reach_the_secret(b: Backend) {
    let c = Cluster::start_on(b).await;
    let _ctl = c.controller(&[]);
    let file = c.path("app.yaml");
    let f = file.to_str().unwrap();
    let yaml = c.encrypt(&[
        "--from-literal",
        "a=one",
        "--from-literal",
        "b=two",
        "--name",
        "app",
        "--namespace",
        NS,
    ]);
    std::fs::write(&file, yaml).unwrap();
    c.kubectl(&["apply", "-f", f]).await;
    c.wait_secret_data(NS, "app", &[("a", "one"), ("b", "two")])
        .await;
    c.wait_ready(NS, "app", "True", "Synced").await;

    // change one value in place (same DEK; b keeps its ciphertext)
    let before: Value = serde_json::to_value(c.esec(NS, "app").await.unwrap().spec).unwrap();
    c.kmsecrets(&["encrypt", "--merge-into", f, "--from-literal", "a=uno"]);
    c.kubectl(&["apply", "-f", f]).await;
    c.wait_secret_data(NS, "app", &[("a", "uno"), ("b", "two")])
        .await;
    c.wait_ready(NS, "app", "True", "Synced").await;
    let after: Value = serde_json::to_value(c.esec(NS, "app").await.unwrap().spec).unwrap();
    assert_eq!(after["encryptedData"]["b"], before["encryptedData"]["b"]);
    assert_ne!(after["encryptedData"]["a"], before["encryptedData"]["a"]);

    // re-encrypt without b: b disappears from the Secret
    let yaml = c.encrypt(&[
        "--from-literal",
        "a=uno",
        "--name",
        "app",
        "--namespace",
        NS,
    ]);
    std::fs::write(&file, yaml).unwrap();
    c.kubectl(&["apply", "-f", f]).await;
    c.wait_secret_data(NS, "app", &[("a", "uno")]).await;
    c.wait_ready(NS, "app", "True", "Synced").await;
}

async fn deleted_or_edited_secret_is_repaired(b: Backend) {
    let c = Cluster::start_on(b).await;
    let _ctl = c.controller(&[]);
    let doc = c.encrypt(&[
        "--from-literal",
        "password=pw-1",
        "--name",
        "drift",
        "--namespace",
        NS,
    ]);
    c.apply(&doc).await;
    c.wait_ready(NS, "drift", "True", "Synced").await;
    let first_uid = c.secret(NS, "drift").await.unwrap().metadata.uid;

    c.kubectl(&["delete", "secret", "drift", "-n", NS]).await;
    eventually(20 * SECOND, "deleted Secret recreated", async || {
        c.secret(NS, "drift")
            .await
            .is_some_and(|s| s.metadata.uid != first_uid)
    })
    .await;
    c.wait_secret_data(NS, "drift", &[("password", "pw-1")])
        .await;

    let patch = json!({"data": {"password": b64("hacked")}}).to_string();
    c.kubectl(&[
        "patch", "secret", "drift", "-n", NS, "--type", "merge", "-p", &patch,
    ])
    .await;
    c.wait_secret_data(NS, "drift", &[("password", "pw-1")])
        .await;
    c.wait_ready(NS, "drift", "True", "Synced").await;
}

async fn unowned_secret_is_a_conflict_until_annotated_for_adoption(b: Backend) {
    let c = Cluster::start_on(b).await;
    // Conflicts are permanent errors: retried on this interval or on change.
    let _ctl = c.controller(&["--permanent-error-retry", "1s"]);
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "taken",
        "-n",
        NS,
        "--from-literal=password=theirs",
    ])
    .await;
    let doc = c.encrypt(&[
        "--from-literal",
        "password=ours",
        "--name",
        "taken",
        "--namespace",
        NS,
    ]);
    c.apply(&doc).await;
    c.wait_ready(NS, "taken", "False", "SecretConflict").await;
    // Give the controller a few more retries (1 s each) to (not) touch it.
    let rv = c
        .secret(NS, "taken")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let es_rv = c.esec(NS, "taken").await.unwrap().metadata.resource_version;
    let retries = c.counters().await;
    eventually(10 * SECOND, "two conflict retries", async || {
        c.counters().await.since(&retries).get("get", "secrets") >= 2
    })
    .await;
    let s = c.secret(NS, "taken").await.unwrap();
    assert_eq!(
        s.metadata.resource_version, rv,
        "unowned Secret was written"
    );
    assert!(s.metadata.owner_references.unwrap_or_default().is_empty());
    assert_eq!(
        c.secret_data(NS, "taken").await.unwrap()["password"],
        "theirs"
    );
    assert_eq!(
        c.esec(NS, "taken").await.unwrap().metadata.resource_version,
        es_rv,
        "status rewritten on every retry"
    );
    let msg = kmsecrets::controller::status::ready_condition(
        c.esec(NS, "taken").await.unwrap().status.as_ref(),
    )
    .unwrap()
    .message
    .clone();
    assert!(msg.contains("kmsecrets.dev/adopt"), "{msg}");

    c.kubectl(&[
        "annotate",
        "secret",
        "taken",
        "-n",
        NS,
        "kmsecrets.dev/adopt=true",
    ])
    .await;
    c.wait_secret_data(NS, "taken", &[("password", "ours")])
        .await;
    c.wait_ready(NS, "taken", "True", "Synced").await;
    let es_uid = c.esec(NS, "taken").await.unwrap().metadata.uid.unwrap();
    let orefs = c
        .secret(NS, "taken")
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap_or_default();
    assert!(
        orefs
            .iter()
            .any(|o| o.uid == es_uid && o.controller == Some(true)),
        "{orefs:?}"
    );
}

async fn tampered_moved_renamed_or_widened_resources_fail_closed(b: Backend) {
    let c = Cluster::start_on(b).await;
    let _ctl = c.controller(&[]);
    c.kubectl(&["create", "namespace", "other"]).await;
    let good = c.encrypt_json(&[
        "--from-literal",
        "token=good-v1",
        "--name",
        "api",
        "--namespace",
        NS,
    ]);
    c.apply(&to_doc(&good)).await;
    c.wait_ready(NS, "api", "True", "Synced").await;
    let secret_rv = c.secret(NS, "api").await.unwrap().metadata.resource_version;

    let intact = async || {
        let s = c.secret(NS, "api").await.expect("Secret must survive");
        assert_eq!(
            s.metadata.resource_version, secret_rv,
            "Secret was rewritten"
        );
        assert_eq!(c.secret_data(NS, "api").await.unwrap()["token"], "good-v1");
    };

    // 1. one bit flipped in a value, same name: DecryptFailed, Secret untouched
    let mut tampered = good.clone();
    let v = tampered["spec"]["encryptedData"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    tampered["spec"]["encryptedData"]["token"] = json!(flip_bit(&v));
    c.apply(&to_doc(&tampered)).await;
    c.wait_ready(NS, "api", "False", "DecryptFailed").await;
    intact().await;

    // 2. scope widened (strict → cluster) on the same name: DecryptFailed
    let mut widened = good.clone();
    widened["spec"]["scope"] = json!("cluster");
    c.apply(&to_doc(&widened)).await;
    c.wait_ready(NS, "api", "False", "DecryptFailed").await;
    intact().await;

    // 3. the same document applied into another namespace
    let mut moved = good.clone();
    moved["metadata"]["namespace"] = json!("other");
    c.apply(&to_doc(&moved)).await;
    c.wait_ready("other", "api", "False", "DecryptFailed").await;
    assert!(c.secret("other", "api").await.is_none());

    // 4. renamed within the namespace (strict scope binds the name)
    let mut renamed = good.clone();
    renamed["metadata"]["name"] = json!("api-copy");
    c.apply(&to_doc(&renamed)).await;
    c.wait_ready(NS, "api-copy", "False", "DecryptFailed").await;
    assert!(c.secret(NS, "api-copy").await.is_none());

    // 5. two values swapped
    let two = c.encrypt_json(&[
        "--from-literal",
        "x=1",
        "--from-literal",
        "y=2",
        "--name",
        "swap",
        "--namespace",
        NS,
    ]);
    let mut swapped = two.clone();
    swapped["spec"]["encryptedData"]["x"] = two["spec"]["encryptedData"]["y"].clone();
    swapped["spec"]["encryptedData"]["y"] = two["spec"]["encryptedData"]["x"].clone();
    c.apply(&to_doc(&swapped)).await;
    c.wait_ready(NS, "swap", "False", "DecryptFailed").await;
    assert!(c.secret(NS, "swap").await.is_none());

    intact().await;
    // the good version heals it
    c.apply(&to_doc(&good)).await;
    c.wait_ready(NS, "api", "True", "Synced").await;
    assert_eq!(c.secret_data(NS, "api").await.unwrap()["token"], "good-v1");
}

/// moto + proxy + a KMS key; the proxy sits in front of moto for the controller.
async fn aws() -> (Moto, KmsProxy, String) {
    let moto = Moto::start();
    let raw = sdk_client(&moto.url()).await;
    let key = create_key(&raw, "alias/kmsecrets-e2e").await;
    let proxy = KmsProxy::start(moto.port);
    (moto, proxy, key)
}

fn aws_encrypt(c: &Cluster, moto: &Moto, key: &str, args: &[&str]) -> String {
    let url = moto.url();
    let mut all = vec!["encrypt", "--key", key, "--kms-endpoint", &url];
    all.extend_from_slice(args);
    c.kmsecrets_env(&all, &aws_test_env())
}

async fn kms_throttling_converges_and_is_counted(b: Backend) {
    let c = Cluster::start_on(b).await;
    let (moto, proxy, key) = aws().await;
    let ctl = c.controller_env(&["--kms-endpoint", &proxy.url()], &aws_test_env());
    let doc = aws_encrypt(
        &c,
        &moto,
        &key,
        &["--from-literal", "k=v", "--name", "thr", "--namespace", NS],
    );
    proxy.throttle_next(5);
    c.apply(&doc).await;
    c.wait_ready_within(NS, "thr", "True", "Synced", 60 * SECOND)
        .await;
    assert_eq!(c.secret_data(NS, "thr").await.unwrap()["k"], "v");
    assert_eq!(proxy.injected(), 5, "all injected throttles were consumed");
    let throttled = ctl.metric("kmsecrets_kms_throttled_total", &[("operation", "decrypt")]);
    assert!(
        throttled > 0.0,
        "kmsecrets_kms_throttled_total = {throttled}"
    );
    assert!(
        ctl.metric(
            "kmsecrets_kms_requests_total",
            &[("operation", "decrypt"), ("result", "success")]
        ) >= 1.0
    );
    assert!(ctl.metric("kmsecrets_kms_retries_total", &[]) > 0.0);
}

/// The KMS key's life against moto (which reports `PendingDeletion` with
/// its `DeletionDate`): the deletion of a key with 20 synced dependents is
/// noticed within one check interval — every dependent `KeysHealthy=False`
/// with the date, one Warning Event each, the key's metrics — while a
/// resource with a second, healthy copy shows redundancy lost; cancelling
/// the deletion and enabling the key brings every one back.
async fn a_key_scheduled_for_deletion_is_noticed_within_one_interval(b: Backend) {
    const N: usize = 20;
    let c = Cluster::start_on(b).await;
    let (moto, proxy, key) = aws().await;
    let raw = sdk_client(&moto.url()).await;
    let spare = create_key(&raw, "alias/kmsecrets-spare").await;
    let ctl = c.controller_env(
        &["--kms-endpoint", &proxy.url(), "--key-check-interval", "2s"],
        &aws_test_env(),
    );
    for i in 0..N {
        c.apply(&aws_encrypt(
            &c,
            &moto,
            &key,
            &[
                "--from-literal",
                "k=v",
                "--name",
                &format!("dep-{i}"),
                "--namespace",
                NS,
            ],
        ))
        .await;
    }
    c.apply(&aws_encrypt(
        &c,
        &moto,
        &key,
        &[
            "--key",
            &spare,
            "--from-literal",
            "k=v",
            "--name",
            "two",
            "--namespace",
            NS,
        ],
    ))
    .await;
    for i in 0..N {
        c.wait_ready(NS, &format!("dep-{i}"), "True", "Synced")
            .await;
    }
    c.wait_ready(NS, "two", "True", "Synced").await;
    // housekeeping runs in a live controller (it waits for the store to
    // list; a second waiter on kube-runtime's readiness was never woken)
    eventually(
        c.patience(),
        "the ready gauge counts every resource",
        async || ctl.metric("kmsecrets_encryptedsecrets", &[("ready", "true")]) == (N + 1) as f64,
    )
    .await;

    let bare = key.rsplit('/').next().unwrap().to_string();
    raw.schedule_key_deletion()
        .key_id(&bare)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let scheduled = Instant::now();
    let keys_healthy = async |name: &str| {
        c.esec(NS, name)
            .await
            .and_then(|es| es.status)
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "KeysHealthy"))
    };
    eventually(
        c.patience(),
        "every dependent shows KeysHealthy=False",
        async || {
            for i in 0..N {
                match keys_healthy(&format!("dep-{i}")).await {
                    Some(cond) if cond.status == "False" => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
    let noticed = scheduled.elapsed();
    let cond = keys_healthy("dep-0").await.unwrap();
    assert_eq!(cond.reason, "KeyPendingDeletion");
    assert!(
        cond.message.contains(&key) && cond.message.contains("deleted on 20"),
        "{}",
        cond.message
    );
    let two = keys_healthy("two").await.unwrap();
    assert_eq!(
        (two.status.as_str(), two.reason.as_str()),
        ("True", "RedundancyLost")
    );
    c.wait_ready(NS, "dep-0", "True", "Synced").await;
    eventually(c.patience(), "the key's metrics", async || {
        ctl.metric("kmsecrets_kms_key_at_risk", &[("key", &key)]) == N as f64
            && ctl.metric(
                "kmsecrets_kms_key_state",
                &[("key", &key), ("state", "PendingDeletion")],
            ) == 1.0
            && ctl.metric(
                "kmsecrets_kms_key_deletion_timestamp_seconds",
                &[("key", &key)],
            ) > 0.0
    })
    .await;
    let warnings = c
        .kubectl(&[
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "reason=KeyPendingDeletion",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(warnings.lines().count(), N, "{warnings}");

    raw.cancel_key_deletion()
        .key_id(&bare)
        .send()
        .await
        .unwrap();
    raw.enable_key().key_id(&bare).send().await.unwrap();
    eventually(c.patience(), "every dependent healthy again", async || {
        for i in 0..N {
            match keys_healthy(&format!("dep-{i}")).await {
                Some(cond) if cond.status == "True" && cond.reason == "KeysHealthy" => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    eprintln!(
        "key deletion ({b:?}): every one of {N} dependents flagged {noticed:?} after ScheduleKeyDeletion (interval 2 s)"
    );
}

async fn kms_outage_keeps_secrets_backs_off_and_recovers(b: Backend) {
    let c = Cluster::start_on(b).await;
    let (moto, proxy, key) = aws().await;
    let _ctl = c.controller_env(
        &["--kms-endpoint", &proxy.url(), "--kms-max-attempts", "2"],
        &aws_test_env(),
    );
    let steady = aws_encrypt(
        &c,
        &moto,
        &key,
        &[
            "--from-literal",
            "k=old",
            "--name",
            "steady",
            "--namespace",
            NS,
        ],
    );
    c.apply(&steady).await;
    c.wait_ready(NS, "steady", "True", "Synced").await;

    proxy.set_down(true);
    // A new resource (fresh DEK, nothing cached) and a new version of the
    // existing one (fresh DEK too) while KMS is unreachable.
    let fresh = aws_encrypt(
        &c,
        &moto,
        &key,
        &[
            "--from-literal",
            "k=fresh",
            "--name",
            "fresh",
            "--namespace",
            NS,
        ],
    );
    c.apply(&fresh).await;
    let steady2 = aws_encrypt(
        &c,
        &moto,
        &key,
        &[
            "--from-literal",
            "k=new",
            "--name",
            "steady",
            "--namespace",
            NS,
        ],
    );
    c.apply(&steady2).await;
    c.wait_ready_within(NS, "fresh", "False", "KmsUnavailable", 30 * SECOND)
        .await;
    c.wait_ready_within(NS, "steady", "False", "KmsUnavailable", 30 * SECOND)
        .await;
    assert!(c.secret(NS, "fresh").await.is_none());
    assert_eq!(c.secret_data(NS, "steady").await.unwrap()["k"], "old");

    // Bounded attempts: a fixed 5 s window on purpose, because what is
    // proven is the absence of a hot loop (per-object exponential backoff).
    let refused0 = proxy.refused();
    tokio::time::sleep(5 * SECOND).await;
    let during = proxy.refused() - refused0;
    eprintln!(
        "KMS attempts during 5 s of outage (2 resources): {during}; total refused {}",
        proxy.refused()
    );
    assert!(
        during <= 20,
        "{during} KMS attempts in 5 s: not backing off"
    );
    assert!(proxy.refused() >= 2, "the outage was never hit");
    assert_eq!(c.secret_data(NS, "steady").await.unwrap()["k"], "old");

    proxy.set_down(false);
    c.wait_ready_within(NS, "fresh", "True", "Synced", 60 * SECOND)
        .await;
    c.wait_ready_within(NS, "steady", "True", "Synced", 60 * SECOND)
        .await;
    assert_eq!(c.secret_data(NS, "fresh").await.unwrap()["k"], "fresh");
    assert_eq!(c.secret_data(NS, "steady").await.unwrap()["k"], "new");
}

async fn deletion_policy_delete_collects_and_retain_orphans(b: Backend) {
    let c = Cluster::start_on(b).await;
    let _ctl = c.controller(&[]);

    // Delete (default): the Secret goes with its EncryptedSecret (GC).
    let del = c.encrypt(&["--from-literal", "k=v", "--name", "gone", "--namespace", NS]);
    c.apply(&del).await;
    c.wait_ready(NS, "gone", "True", "Synced").await;
    c.kubectl(&["delete", "esec", "gone", "-n", NS]).await;
    // kube-controller-manager's garbage collector learns a new CRD's kind at
    // its next discovery resync (every 30 s), so on a loaded machine the
    // real GC can take longer than 20 s here (seen once in CI)
    eventually(60 * SECOND, "Secret gone garbage-collected", async || {
        c.secret(NS, "gone").await.is_none()
    })
    .await;

    // Retain: edit the YAML spec, the Secret survives without our ownerReference.
    let keep = c.encrypt(&[
        "--from-literal",
        "k=kept",
        "--name",
        "kept",
        "--namespace",
        NS,
    ]);
    assert!(keep.contains("\nspec:\n"), "{keep}");
    let keep = keep.replacen("\nspec:\n", "\nspec:\n  deletionPolicy: Retain\n", 1);
    c.apply(&keep).await;
    c.wait_ready(NS, "kept", "True", "Synced").await;
    eventually(20 * SECOND, "Retain finalizer added", async || {
        c.esec(NS, "kept")
            .await
            .and_then(|e| e.metadata.finalizers)
            .is_some_and(|f| f.iter().any(|f| f == "kmsecrets.dev/retain"))
    })
    .await;
    let uid = c.esec(NS, "kept").await.unwrap().metadata.uid.unwrap();
    c.kubectl(&["delete", "esec", "kept", "-n", NS, "--wait=false"])
        .await;
    eventually(
        20 * SECOND,
        "EncryptedSecret kept finalized and gone",
        async || c.esec(NS, "kept").await.is_none(),
    )
    .await;
    let s = c.secret(NS, "kept").await.expect("retained Secret");
    let orefs = s.metadata.owner_references.unwrap_or_default();
    assert!(!orefs.iter().any(|o| o.uid == uid), "{orefs:?}");
    assert_eq!(c.secret_data(NS, "kept").await.unwrap()["k"], "kept");
    // and the garbage collector (woken by writes) leaves it alone: after
    // more writes and a full sync of another resource it is still there
    c.kubectl(&["label", "secret", "kept", "-n", NS, "still=here"])
        .await;
    let other = c.encrypt(&[
        "--from-literal",
        "k=v",
        "--name",
        "later",
        "--namespace",
        NS,
    ]);
    c.apply(&other).await;
    c.wait_ready(NS, "later", "True", "Synced").await;
    assert!(
        c.secret(NS, "kept").await.is_some(),
        "retained Secret collected"
    );
}

async fn lease_holder(c: &Cluster) -> String {
    let out = c
        .kubectl_raw(&[
            "get",
            "lease",
            "kmsecrets-controller",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await;
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn leader_election_one_writer_and_failover(b: Backend) {
    let c = Cluster::start_on(b).await;
    let flags = [
        "--leader-elect",
        "--leader-election-namespace",
        NS,
        "--leader-election-lease-duration",
        "3s",
    ];
    let mut a = c.controller_env(&flags, &[("POD_NAME", "ctl-a".into())]);
    let mut b = c.controller_env(&flags, &[("POD_NAME", "ctl-b".into())]);
    eventually(20 * SECOND, "a lease holder", async || {
        matches!(lease_holder(&c).await.as_str(), "ctl-a" | "ctl-b")
    })
    .await;
    let holder = lease_holder(&c).await;
    let doc = c.encrypt(&["--from-literal", "k=1", "--name", "one", "--namespace", NS]);
    c.apply(&doc).await;
    c.wait_ready(NS, "one", "True", "Synced").await;
    let (leader, standby) = if holder == "ctl-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let rec = |ctl: &common::cluster::Controller| ctl.metric("kmsecrets_reconcile_total", &[]);
    // the counter moves just after the status write the test observed
    eventually(10 * SECOND, "leader counts its reconcile", async || {
        rec(leader) >= 1.0
    })
    .await;
    assert_eq!(rec(standby), 0.0, "standby reconciled while not leading");
    assert!(!standby.logs().contains("Secret written"));
    assert_eq!(lease_holder(&c).await, holder, "leadership flapped");

    let killed = Instant::now();
    leader.kill();
    let other = if holder == "ctl-a" { "ctl-b" } else { "ctl-a" };
    eventually(20 * SECOND, "standby takes the lease", async || {
        lease_holder(&c).await == other
    })
    .await;
    let took = killed.elapsed();
    let doc = c.encrypt(&["--from-literal", "k=2", "--name", "two", "--namespace", NS]);
    c.apply(&doc).await;
    c.wait_ready(NS, "two", "True", "Synced").await;
    eprintln!(
        "leader failover: lease taken {took:?} after kill -9 (lease 3s); new ES synced {:?} after kill",
        killed.elapsed()
    );
    assert!(
        took < 10 * SECOND,
        "failover took {took:?} with a 3 s lease"
    );
    assert!(standby.is_running());
    assert!(rec(standby) >= 1.0);
}

async fn expired_watches_and_dropped_streams_lose_no_updates(b: Backend) {
    let c = Cluster::start_on(b).await;
    // Default resync (10 min): only the watches can deliver these updates.
    let _ctl = c.controller(&[]);
    let file = c.path("w.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(
        &file,
        c.encrypt(&["--from-literal", "k=0", "--name", "w", "--namespace", NS]),
    )
    .unwrap();
    c.kubectl(&["apply", "-f", f]).await;
    c.wait_secret_data(NS, "w", &[("k", "0")]).await;
    c.wait_ready(NS, "w", "True", "Synced").await;

    for (round, fault) in ["expire", "drop", "expire", "drop"].iter().enumerate() {
        let wf = if *fault == "expire" {
            WatchFault::Expire
        } else {
            WatchFault::Drop
        };
        c.break_watches(wf).await;
        // source change
        let v = format!("k=after-{fault}-{round}");
        c.kmsecrets(&["encrypt", "--merge-into", f, "--from-literal", &v]);
        c.kubectl(&["apply", "-f", f]).await;
        let want = format!("after-{fault}-{round}");
        c.wait_secret_data(NS, "w", &[("k", &want)]).await;
        c.wait_ready(NS, "w", "True", "Synced").await;
        // Secret-side change (owned watch)
        c.break_watches(wf).await;
        if round % 2 == 0 {
            c.kubectl(&["delete", "secret", "w", "-n", NS]).await;
        } else {
            let patch = json!({"data": {"k": b64("drifted")}}).to_string();
            c.kubectl(&[
                "patch", "secret", "w", "-n", NS, "--type", "merge", "-p", &patch,
            ])
            .await;
        }
        c.wait_secret_data(NS, "w", &[("k", &want)]).await;
    }
    // a brand-new object after a fault
    c.break_watches(WatchFault::Expire).await;
    c.break_watches(WatchFault::Drop).await;
    let doc = c.encrypt(&["--from-literal", "k=new", "--name", "w2", "--namespace", NS]);
    c.apply(&doc).await;
    c.wait_secret_data(NS, "w2", &[("k", "new")]).await;
}

async fn idle_resync_makes_no_kms_calls_and_no_writes(b: Backend) {
    let c = Cluster::start_on(b).await;
    let ctl = c.controller(&["--resync-interval", "1s"]);
    let names = ["r1", "r2", "r3"];
    let cold = c.counters().await;
    for n in names {
        let doc = c.encrypt(&["--from-literal", "k=v", "--name", n, "--namespace", NS]);
        c.apply(&doc).await;
    }
    for n in names {
        c.wait_ready(NS, n, "True", "Synced").await;
    }
    // cold start: exactly one Secret write (a create) and one status write
    // each; the listed owned-Secret store answers that none exists yet
    let delta = c.counters().await.since(&cold);
    assert_eq!(
        delta.writes("secrets"),
        3,
        "Secret writes on cold start: {delta:?}"
    );
    assert_eq!(
        delta.get("create", "secrets"),
        3,
        "Secret creates on cold start: {delta:?}"
    );
    assert_eq!(
        delta.writes("encryptedsecrets/status"),
        3,
        "status writes on cold start: {delta:?}"
    );
    // (a read happens only when the owned-Secret watch lags our own write:
    // seen under CPU contention on the real apiserver)
    assert!(
        delta.get("get", "secrets") <= 6,
        "Secret reads on cold start: {delta:?}"
    );
    let success = || ctl.metric("kmsecrets_reconcile_total", &[("result", "success")]);
    // settle: one full resync of everything after the first sync
    let s0 = success();
    eventually(20 * SECOND, "first resync round", async || {
        success() >= s0 + 3.0
    })
    .await;

    let kms_requests = || ctl.metric("kmsecrets_kms_requests_total", &[]);
    let cache_lookups = || {
        ctl.metric("kmsecrets_dek_cache_hits_total", &[])
            + ctl.metric("kmsecrets_dek_cache_misses_total", &[])
    };
    let kms0 = kms_requests();
    let cache0 = cache_lookups();
    assert!(kms0 >= 1.0, "the initial sync must have used KMS");
    let before = c.counters().await;
    let s1 = success();
    // ≥ 3 resync periods of 3 objects each (polled, not slept)
    eventually(30 * SECOND, "three resync rounds", async || {
        success() >= s1 + 9.0
    })
    .await;
    let delta = c.counters().await.since(&before);
    assert_eq!(delta.writes("secrets"), 0, "Secret writes on idle resync");
    assert_eq!(
        delta.writes("encryptedsecrets"),
        0,
        "EncryptedSecret (status) writes on idle resync"
    );
    assert_eq!(delta.total_writes(), 0, "writes on idle resync: {delta:?}");
    assert_eq!(
        delta.get("get", "secrets"),
        0,
        "Secret reads on idle resync (the owned-Secret store answers): {delta:?}"
    );
    assert_eq!(kms_requests(), kms0, "KMS requests on idle resync");
    assert_eq!(
        cache_lookups(),
        cache0,
        "DEK lookups (decrypts) on idle resync"
    );
    eprintln!(
        "idle resync: {} reconciles, 0 writes, 0 KMS calls",
        success() - s1
    );
}

async fn no_plaintext_in_logs_events_status_or_metrics(b: Backend) {
    const CANARY: &str = "CANARY-7f3a9c";
    let canary2 = format!("{CANARY}-2");
    let c = Cluster::start_on(b).await;
    let file = c.path("canary.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(
        &file,
        c.encrypt(&[
            "--from-literal",
            &format!("password={CANARY}"),
            "--name",
            "canary",
            "--namespace",
            NS,
        ]),
    )
    .unwrap();
    let mut captured = Vec::new();

    // Phase 1: text logs at debug level. Sync, tamper (Warning event), heal, drift.
    {
        let ctl = c.controller(&["--log-level", "debug", "--permanent-error-retry", "1s"]);
        c.kubectl(&["apply", "-f", f]).await;
        c.wait_ready(NS, "canary", "True", "Synced").await;
        let mut bad: Value = serde_json::from_str(
            &c.kubectl(&["get", "esec", "canary", "-n", NS, "-o", "json"])
                .await,
        )
        .unwrap();
        let v = bad["spec"]["encryptedData"]["password"]
            .as_str()
            .unwrap()
            .to_string();
        bad["spec"]["encryptedData"]["password"] = json!(flip_bit(&v));
        bad["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        c.apply(&to_doc(&bad)).await;
        c.wait_ready(NS, "canary", "False", "DecryptFailed").await;
        c.kubectl(&["apply", "-f", f]).await;
        c.wait_ready(NS, "canary", "True", "Synced").await;
        let patch = json!({"data": {"password": b64("drift")}}).to_string();
        c.kubectl(&[
            "patch", "secret", "canary", "-n", NS, "--type", "merge", "-p", &patch,
        ])
        .await;
        c.wait_secret_data(NS, "canary", &[("password", CANARY)])
            .await;
        // a conflict on a pre-existing Secret that holds the canary too
        c.kubectl(&[
            "create",
            "secret",
            "generic",
            "squat",
            "-n",
            NS,
            &format!("--from-literal=password={CANARY}"),
        ])
        .await;
        let doc = c.encrypt(&[
            "--from-literal",
            &format!("password={canary2}"),
            "--name",
            "squat",
            "--namespace",
            NS,
        ]);
        c.apply(&doc).await;
        c.wait_ready(NS, "squat", "False", "SecretConflict").await;
        // the Event follows the status write: wait for it before this
        // controller is stopped
        eventually(c.patience(), "SecretConflict event", async || {
            c.kubectl(&["get", "events.events.k8s.io", "-n", NS, "-o", "yaml"])
                .await
                .contains("SecretConflict")
        })
        .await;
        captured.push(("text debug log".to_string(), ctl.logs()));
        captured.push(("metrics (text run)".to_string(), ctl.metrics()));
    }
    // Phase 2: JSON logs at debug level. Update, adopt.
    {
        let ctl = c.controller(&[
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--permanent-error-retry",
            "1s",
        ]);
        c.kmsecrets(&[
            "encrypt",
            "--merge-into",
            f,
            "--from-literal",
            &format!("password={canary2}"),
        ]);
        c.kubectl(&["apply", "-f", f]).await;
        c.wait_secret_data(NS, "canary", &[("password", &canary2)])
            .await;
        c.kubectl(&[
            "annotate",
            "secret",
            "squat",
            "-n",
            NS,
            "kmsecrets.dev/adopt=true",
        ])
        .await;
        c.wait_ready(NS, "squat", "True", "Synced").await;
        c.wait_ready(NS, "canary", "True", "Synced").await;
        let logs = ctl.logs();
        assert!(
            logs.lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| l.trim_start().starts_with('{')),
            "--log-format json printed a non-JSON line:\n{logs}"
        );
        captured.push(("json debug log".to_string(), logs));
        captured.push(("metrics (json run)".to_string(), ctl.metrics()));
    }
    let events_core = c.kubectl(&["get", "events", "-A", "-o", "yaml"]).await;
    let events_new = c
        .kubectl(&["get", "events.events.k8s.io", "-A", "-o", "yaml"])
        .await;
    assert!(
        events_core.contains("DecryptFailed") && events_core.contains("Synced"),
        "{events_core}"
    );
    assert!(events_new.contains("SecretConflict"), "{events_new}");
    captured.push(("core/v1 events".to_string(), events_core));
    captured.push(("events.k8s.io events".to_string(), events_new));
    let all_es: Value =
        serde_json::from_str(&c.kubectl(&["get", "esec", "-A", "-o", "json"]).await).unwrap();
    let statuses: Vec<Value> = all_es["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].clone())
        .collect();
    assert_eq!(statuses.len(), 2);
    captured.push((
        "EncryptedSecret status".to_string(),
        serde_json::to_string(&statuses).unwrap(),
    ));
    captured.push(("EncryptedSecret objects".to_string(), all_es.to_string()));

    // Plaintext and its base64 (with and without padding) must appear nowhere;
    // ciphertext (values and wrapped DEKs) nowhere but the objects themselves.
    let mut forbidden = vec![];
    for p in [CANARY, canary2.as_str()] {
        forbidden.push(p.to_string());
        forbidden.push(STANDARD.encode(p));
        forbidden.push(STANDARD_NO_PAD.encode(p));
    }
    let mut ciphertexts = vec![];
    for item in all_es["items"].as_array().unwrap() {
        for v in item["spec"]["encryptedData"].as_object().unwrap().values() {
            ciphertexts.push(v.as_str().unwrap().to_string());
        }
        for dk in item["spec"]["dataKeys"].as_array().unwrap() {
            ciphertexts.push(dk["ciphertext"].as_str().unwrap().to_string());
        }
    }
    for (what, text) in &captured {
        assert!(!text.is_empty(), "{what} is empty: nothing was checked");
        for needle in &forbidden {
            assert!(
                !text.contains(needle.as_str()),
                "{what} contains plaintext {needle:?}"
            );
        }
        if what != "EncryptedSecret objects" {
            for ct in &ciphertexts {
                assert!(
                    !text.contains(ct.as_str()),
                    "{what} contains ciphertext {ct}"
                );
            }
        }
    }
    // sanity: the controller really logged the work that was checked
    assert!(
        captured[0].1.contains("Secret written"),
        "{}",
        captured[0].1
    );
}

async fn malformed_objects_never_break_the_watch(b: Backend) {
    let c = Cluster::start_on(b).await;
    // A real apiserver validates every write against the CRD's schema, so
    // objects like these only exist where the schema was looser when they
    // were written (an older or hand-edited CRD): recreate that. The
    // in-memory server validates nothing.
    if b == Backend::Real {
        c.loosen_crd_schema().await;
    }
    let key_id = c.encrypt_json(&["--from-literal", "k=v", "--name", "x", "--namespace", NS])["spec"]
        ["dataKeys"][0]["keyId"]
        .clone();
    let bad = |name: &str, spec: Value| {
        to_doc(&json!({
            "apiVersion": "kmsecrets.dev/v1alpha1",
            "kind": "EncryptedSecret",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        }))
    };
    let apply_bad = async |doc: String| {
        c.kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &doc)
            .await;
    };
    // Present before the controller starts (initial list) ...
    apply_bad(bad("no-datakeys", json!({"encryptedData": {"k": "AAAA"}}))).await;
    apply_bad(bad(
        "bogus-scope",
        json!({"scope": "bogus", "dataKeys": [{"provider": "local", "keyId": key_id, "ciphertext": "AAAA"}]}),
    ))
    .await;
    let good1 = c.encrypt(&[
        "--from-literal",
        "k=one",
        "--name",
        "good1",
        "--namespace",
        NS,
    ]);
    c.apply(&good1).await;
    let _ctl = c.controller(&[]);
    c.wait_ready(NS, "good1", "True", "Synced").await;
    c.wait_secret_data(NS, "good1", &[("k", "one")]).await;

    // ... and arriving while it watches.
    apply_bad(bad(
        "wrong-types",
        json!({"dataKeys": "nope", "encryptedData": [1, 2]}),
    ))
    .await;
    apply_bad(bad(
        "bad-provider",
        json!({"dataKeys": [{"provider": "vault", "keyId": "k", "ciphertext": "AAAA"}]}),
    ))
    .await;
    let good2 = c.encrypt(&[
        "--from-literal",
        "k=two",
        "--name",
        "good2",
        "--namespace",
        NS,
    ]);
    c.apply(&good2).await;
    c.wait_ready(NS, "good2", "True", "Synced").await;
    c.wait_secret_data(NS, "good2", &[("k", "two")]).await;
    // an update to a good one after the bad ones still flows
    let good1b = c.encrypt(&[
        "--from-literal",
        "k=one-b",
        "--name",
        "good1",
        "--namespace",
        NS,
    ]);
    c.apply(&good1b).await;
    c.wait_secret_data(NS, "good1", &[("k", "one-b")]).await;
    // each malformed object is reported on its own status, without values
    for n in ["no-datakeys", "bogus-scope", "wrong-types", "bad-provider"] {
        let jp = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason}"#;
        eventually(
            20 * SECOND,
            &format!("{n} Ready=False InvalidSpec"),
            async || {
                c.kubectl(&["get", "esec", n, "-n", NS, "-o", jp])
                    .await
                    .trim()
                    == "False InvalidSpec"
            },
        )
        .await;
        assert!(
            c.secret(NS, n).await.is_none(),
            "Secret made from malformed {n}"
        );
    }
    let msg = c
        .kubectl(&[
            "get",
            "esec",
            "wrong-types",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.conditions[0].message}",
        ])
        .await;
    assert!(msg.contains("spec cannot be read"), "{msg}");
    assert!(!msg.contains("nope"), "status echoes a spec value: {msg}");
}

/// An `immutable: true` Secret cannot change in place; a new version of its
/// EncryptedSecret replaces it (uid changes), and the old one is never
/// deleted while decryption fails.
async fn immutable_secret_is_replaced_on_change_only_after_a_good_decrypt(b: Backend) {
    let c = Cluster::start_on(b).await;
    let _ctl = c.controller(&[]);
    let file = c.path("imm.yaml");
    let f = file.to_str().unwrap();
    let yaml = c.encrypt(&[
        "--from-literal",
        "a=one",
        "--name",
        "imm",
        "--namespace",
        NS,
    ]);
    let yaml = yaml.replace(
        "    type: Opaque\n",
        "    type: Opaque\n    immutable: true\n",
    );
    assert!(yaml.contains("immutable: true"), "{yaml}");
    std::fs::write(&file, &yaml).unwrap();
    c.kubectl(&["apply", "-f", f]).await;
    c.wait_secret_data(NS, "imm", &[("a", "one")]).await;
    c.wait_ready(NS, "imm", "True", "Synced").await;
    let first = c.secret(NS, "imm").await.unwrap();
    assert_eq!(first.immutable, Some(true));

    // a tampered version fails closed: the immutable Secret stays as it is
    let tampered = {
        let mut v: Value = serde_saphyr::from_str(&yaml).unwrap();
        let ct = v["spec"]["encryptedData"]["a"]
            .as_str()
            .unwrap()
            .to_string();
        let mut raw = kmsecrets::envelope::unb64(&ct).unwrap();
        raw[14] ^= 1;
        v["spec"]["encryptedData"]["a"] = Value::String(kmsecrets::envelope::b64(&raw));
        serde_json::to_string(&v).unwrap()
    };
    c.apply(&tampered).await;
    c.wait_ready(NS, "imm", "False", "DecryptFailed").await;
    assert_eq!(
        c.secret(NS, "imm").await.unwrap().metadata.uid,
        first.metadata.uid
    );

    // a good new value replaces the Secret
    std::fs::write(&file, &yaml).unwrap();
    c.kmsecrets(&["encrypt", "--merge-into", f, "--from-literal", "a=two"]);
    c.kubectl(&["apply", "-f", f]).await;
    c.wait_secret_data(NS, "imm", &[("a", "two")]).await;
    c.wait_ready(NS, "imm", "True", "Synced").await;
    let second = c.secret(NS, "imm").await.unwrap();
    assert_ne!(
        second.metadata.uid, first.metadata.uid,
        "replaced, not mutated"
    );
    assert_eq!(second.immutable, Some(true));
}

/// A Retain resource that later becomes unreadable is still finalized as
/// Retain on deletion: the Secret is orphaned and the object goes away.
async fn malformed_retain_resource_is_still_orphaned_on_delete(b: Backend) {
    let c = Cluster::start_on(b).await;
    // see malformed_objects_never_break_the_watch
    if b == Backend::Real {
        c.loosen_crd_schema().await;
    }
    let _ctl = c.controller(&[]);
    let yaml = c.encrypt(&["--from-literal", "k=kept", "--name", "m", "--namespace", NS]);
    let mut v: Value = serde_saphyr::from_str(&yaml).unwrap();
    v["spec"]["deletionPolicy"] = Value::String("Retain".into());
    c.apply(&serde_json::to_string(&v).unwrap()).await;
    c.wait_ready(NS, "m", "True", "Synced").await;
    eventually(20 * SECOND, "Retain finalizer added", async || {
        c.esec(NS, "m")
            .await
            .and_then(|e| e.metadata.finalizers)
            .is_some_and(|f| f.iter().any(|f| f == "kmsecrets.dev/retain"))
    })
    .await;
    // make the spec unreadable (the test server, like an apiserver without
    // the CRD's schema, accepts it)
    c.kubectl(&[
        "patch",
        "esec",
        "m",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"scope":"bogus"}}"#,
    ])
    .await;
    eventually(20 * SECOND, "InvalidSpec reported", async || {
        let out = c
            .kubectl_raw(&[
                "get",
                "esec",
                "m",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.conditions[0].reason}",
            ])
            .await;
        out.stdout == b"InvalidSpec"
    })
    .await;
    c.kubectl(&["delete", "esec", "m", "-n", NS, "--wait=false"])
        .await;
    eventually(
        20 * SECOND,
        "malformed Retain resource finalized and gone",
        async || {
            c.kubectl_raw(&["get", "esec", "m", "-n", NS])
                .await
                .status
                .code()
                == Some(1)
        },
    )
    .await;
    let s = c.secret(NS, "m").await.expect("retained Secret");
    assert!(s.metadata.owner_references.unwrap_or_default().is_empty());
    assert_eq!(c.secret_data(NS, "m").await.unwrap()["k"], "kept");
}

/// SIGTERM ends the controller within `limit`; how long it took.
async fn sigterm_stops_within(ctl: &mut Controller, limit: Duration) -> Duration {
    let t = Instant::now();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &ctl.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    while ctl.is_running() {
        assert!(
            t.elapsed() < limit,
            "SIGTERM not honoured within {limit:?} (reconciles waiting on KMS or a render give up):\n{}",
            ctl.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

/// Another namespace's resource, created now, syncs within 10 s whatever a
/// tenant is doing; how long it took since `start`.
async fn victim_syncs(c: &Cluster, start: Instant) -> Duration {
    let victim = c.encrypt(&[
        "--from-literal",
        "password=pw",
        "--name",
        "victim",
        "--namespace",
        NS,
    ]);
    c.apply(&victim).await;
    c.wait_ready_within(NS, "victim", "True", "Synced", 10 * SECOND)
        .await;
    start.elapsed()
}

// ---------------------------------------------------------------------------
/// End to end: a tenant's resources whose
/// KMS endpoint stops answering, plus resources naming regions nobody
/// configured, must not delay another namespace's resource, and SIGTERM
/// must stop the controller within the pod's grace period (30 s).
async fn a_stalled_tenant_cannot_starve_others_or_block_shutdown(b: Backend) {
    let c = Cluster::start_on(b).await;
    let (moto, proxy, key) = aws().await;
    c.kubectl(&["create", "namespace", "tenant"]).await;
    c.kubectl(&["create", "namespace", "tenant2"]).await;
    let mut ctl = c.controller_env(
        &["--kms-endpoint", &proxy.url(), "--concurrency", "8"],
        &aws_test_env(),
    );
    let mut docs = Vec::new();
    for i in 0..8 {
        docs.push(aws_encrypt(
            &c,
            &moto,
            &key,
            &[
                "--from-literal",
                "k=v",
                "--name",
                &format!("t{i}"),
                "--namespace",
                "tenant",
            ],
        ));
    }
    // another tenant: ten copies, each in a region that is neither
    // configured nor learned
    let mut far: Value = serde_json::from_str(&aws_encrypt(
        &c,
        &moto,
        &key,
        &[
            "--from-literal",
            "k=v",
            "--name",
            "far",
            "--namespace",
            "tenant2",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let copy = far["spec"]["dataKeys"][0].clone();
    far["spec"]["dataKeys"] = (0..10)
        .map(|i| {
            let mut k = copy.clone();
            k["keyId"] = json!(format!("arn:aws:kms:xx-fake-{i}:111122223333:key/x"));
            k
        })
        .collect();
    proxy.set_hang(true);
    for d in &docs {
        c.apply(d).await;
    }
    c.apply(&to_doc(&far)).await;
    eventually(30 * SECOND, "the tenant's KMS requests hang", async || {
        proxy.hung().0 >= 1
    })
    .await;
    let start = Instant::now();
    let victim_time = victim_syncs(&c, start).await;
    c.wait_ready_within("tenant2", "far", "False", "KmsAccessDenied", 10 * SECOND)
        .await;
    let es = c.esec("tenant2", "far").await.unwrap();
    let msg = kmsecrets::controller::status::ready_condition(es.status.as_ref())
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains("not one of the controller's KMS regions"),
        "{msg}"
    );
    let (hung_now, hung_max) = proxy.hung();
    assert!(
        hung_max <= 4,
        "the tenant held {hung_max} workers at once; its share of 8 is 4"
    );

    let stopped_after = sigterm_stops_within(&mut ctl, 10 * SECOND).await;
    let stop_time = stopped_after;
    proxy.set_hang(false);
    eprintln!(
        "stalled tenant ({b:?}): victim synced in {victim_time:?}; tenant held at most {hung_max} workers of 8 ({hung_now} at SIGTERM); stopped {stop_time:?} after SIGTERM"
    );
}

/// A tenant's template bombs (a loop of `*` that froze a 2-core controller for two minutes, a `~`
/// chain and a `replace` chain over a 100 KB value) cost that tenant's
/// resources only: each is `InvalidSpec` within 10 s while another
/// namespace's resource syncs and `/healthz` answers, under a 2 GiB
/// address-space limit the controller survives them and a restart, and
/// SIGTERM still ends it within 25 s.
async fn template_bombs_cost_only_their_own_resource(b: Backend) {
    const LIMIT: u64 = 2 << 30;
    let c = Cluster::start_on(b).await;
    c.kubectl(&["create", "namespace", "tenant"]).await;
    let mut ctl = c.controller_limited(&[], LIMIT);
    let big = c.path("big");
    std::fs::write(&big, "x".repeat(100 * 1024)).unwrap();
    let big_arg = format!("big={}", big.display());
    let bombs = [
        (
            "loop",
            "{% for i in range(600) %}{% set x = (user ~ (i % 10)) * 25000000 %}{% endfor %}{{ nope }}".to_string(),
            "loops are not allowed",
        ),
        (
            "chain",
            format!("{{{{ big{} }}}}", " ~ big".repeat(200)),
            "could build more than",
        ),
        (
            "replace",
            format!("{{{{ user{} }}}}", " | replace('', big)".repeat(8)),
            "could build more than",
        ),
        ("times", "{{ user * 25000000 }}".to_string(), "arithmetic"),
    ];
    for (name, template, _) in &bombs {
        let mut es = c.encrypt_json(&[
            "--from-literal",
            "user=admin",
            "--from-file",
            &big_arg,
            "--name",
            name,
            "--namespace",
            "tenant",
        ]);
        es["spec"]["template"] = json!({"data": {"out": template}});
        c.apply(&to_doc(&es)).await;
    }
    let start = Instant::now();
    let victim_time = victim_syncs(&c, start).await;
    for (name, _, want) in &bombs {
        c.wait_ready_within("tenant", name, "False", "InvalidSpec", 10 * SECOND)
            .await;
        let es = c.esec("tenant", name).await.unwrap();
        let msg = &kmsecrets::controller::status::ready_condition(es.status.as_ref())
            .unwrap()
            .message;
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(
            c.secret("tenant", name).await.is_none(),
            "{name}: no Secret"
        );
    }
    let bombs_time = start.elapsed();
    let t = Instant::now();
    assert_eq!(ctl.http_get("/healthz").0, 200);
    assert!(t.elapsed() < SECOND, "/healthz took {:?}", t.elapsed());
    assert!(ctl.is_running(), "{}", ctl.logs());

    // a restart under the same limit: the bombs are judged again, nothing falls over
    ctl.kill();
    let mut ctl = c.controller_limited(&[], LIMIT);
    c.kubectl(&["delete", "secret", "victim", "-n", NS]).await;
    c.wait_secret_data(NS, "victim", &[("password", "pw")])
        .await;
    eventually(
        c.patience(),
        "the restarted controller judged every bomb",
        async || {
            ctl.metric("kmsecrets_reconcile_total", &[("result", "InvalidSpec")])
                >= bombs.len() as f64
        },
    )
    .await;
    assert!(ctl.is_running(), "{}", ctl.logs());
    assert_eq!(ctl.http_get("/healthz").0, 200);

    let stopped_after = sigterm_stops_within(&mut ctl, 25 * SECOND).await;
    eprintln!(
        "template bombs ({b:?}): victim synced in {victim_time:?}, every bomb InvalidSpec after {bombs_time:?}, stopped {stopped_after:?} after SIGTERM"
    );
}

/// `kubectl explain` reads the CRD's schema from the server's OpenAPI v3:
/// the real apiserver publishes it, and so must the in-memory one (`kmsecrets
/// dev`), or a new user's first `kubectl explain esec.spec` fails.
async fn kubectl_explain_reads_the_crd_schema(b: Backend) {
    let c = Cluster::start_on(b).await;
    // kube-apiserver publishes a new CRD's schema a few seconds after the
    // CRD is established
    eventually(c.patience(), "the CRD's schema is published", async || {
        c.kubectl_raw(&["explain", "esec.spec"])
            .await
            .status
            .success()
    })
    .await;
    let out = c.kubectl(&["explain", "esec.spec"]).await;
    for field in ["dataKeys", "encryptedData", "scope", "template"] {
        assert!(out.contains(field), "{field} missing:\n{out}");
    }
    let out = c
        .kubectl(&["explain", "encryptedsecrets.spec.dataKeys.keyId"])
        .await;
    assert!(out.contains("keyId"), "{out}");
}

/// (metadata.generation, pod-template kmsecrets.dev/restartedAt) of a Deployment.
async fn deployment_restarts(c: &Cluster, name: &str) -> (i64, Option<String>) {
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(c.client.clone(), NS);
    let d = api.get(name).await.unwrap();
    let at = d
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("kmsecrets.dev/restartedAt").cloned());
    (d.metadata.generation.unwrap_or_default(), at)
}

/// Templates render into the Secret, and the Deployment that reads it is
/// restarted exactly once per content change: not on creation, not on a
/// controller restart, not on an unchanged re-apply; `decrypt` shows what
/// the cluster got.
async fn templates_render_and_rollout_restarts_once_per_change(b: Backend) {
    let c = Cluster::start_on(b).await;
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": NS},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}
            }
        }
    });
    c.apply(&deploy.to_string()).await;
    let (gen0, none) = deployment_restarts(&c, "api").await;
    assert_eq!(none, None);
    let mut ctl = c.controller(&[]);
    let file = c.path("db.yaml");
    let f = file.to_str().unwrap();
    let url = "postgres://app:{{ password | urlencode }}@db:5432/app";
    std::fs::write(
        &file,
        c.encrypt(&[
            "--from-literal",
            "password=p/1",
            "--template",
            &format!("url={url}"),
            "--rollout-restart",
            "Deployment/api",
            "--name",
            "db",
            "--namespace",
            NS,
        ]),
    )
    .unwrap();
    c.kubectl(&["apply", "-f", f]).await;
    c.wait_secret_data(
        NS,
        "db",
        &[
            ("password", "p/1"),
            ("url", "postgres://app:p%2F1@db:5432/app"),
        ],
    )
    .await;
    c.wait_ready(NS, "db", "True", "Synced").await;
    // decrypt renders exactly what the controller applied
    let shown: Value =
        serde_json::from_str(&c.kmsecrets(&["decrypt", "-f", f, "-o", "json"])).unwrap();
    let cluster = c.secret(NS, "db").await.unwrap();
    assert_eq!(
        shown["data"],
        serde_json::to_value(&cluster).unwrap()["data"],
        "decrypt shows what the cluster gets"
    );
    // a controller restart (and its cold-start re-verification) restarts nothing
    ctl.kill();
    let ctl2 = c.controller(&[]);
    eventually(
        c.patience(),
        "restarted controller re-verified db",
        async || ctl2.metric("kmsecrets_reconcile_total", &[("result", "success")]) >= 1.0,
    )
    .await;
    assert_eq!(
        deployment_restarts(&c, "api").await,
        (gen0, None),
        "creation/restart: none"
    );

    // content change → exactly one restart
    c.kmsecrets(&[
        "encrypt",
        "--merge-into",
        f,
        "--from-literal",
        "password=p/2",
    ]);
    c.kubectl(&["apply", "-f", f]).await;
    c.wait_secret_data(
        NS,
        "db",
        &[
            ("password", "p/2"),
            ("url", "postgres://app:p%2F2@db:5432/app"),
        ],
    )
    .await;
    eventually(c.patience(), "Deployment api restarted", async || {
        deployment_restarts(&c, "api").await.1.is_some()
    })
    .await;
    let (gen1, at) = deployment_restarts(&c, "api").await;
    assert_eq!(gen1, gen0 + 1, "one pod-template change");
    let secret = c.secret(NS, "db").await.unwrap();
    assert_eq!(
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kmsecrets.dev/content-changed-at")),
        at.as_ref()
    );
    // an unchanged re-apply: nothing
    c.kubectl(&["apply", "-f", f]).await;
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(deployment_restarts(&c, "api").await, (gen1, at));
    assert_eq!(
        ctl2.metric(
            "kmsecrets_rollout_restarts_total",
            &[("kind", "Deployment"), ("result", "success")]
        ),
        1.0
    );
}

// One scenario list, two backends: `memory::<name>` on the in-memory server,
// `real::<name>` on etcd + kube-apiserver + kube-controller-manager.

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Memory).await
                }
            )*
        }
        mod real {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Real).await
                }
            )*
        }
    };
}

on_both_backends!(
    apply_materialises_secret_with_template_owner_status_and_columns,
    changed_value_and_removed_key_reach_the_secret,
    deleted_or_edited_secret_is_repaired,
    unowned_secret_is_a_conflict_until_annotated_for_adoption,
    tampered_moved_renamed_or_widened_resources_fail_closed,
    kms_throttling_converges_and_is_counted,
    kms_outage_keeps_secrets_backs_off_and_recovers,
    deletion_policy_delete_collects_and_retain_orphans,
    leader_election_one_writer_and_failover,
    expired_watches_and_dropped_streams_lose_no_updates,
    idle_resync_makes_no_kms_calls_and_no_writes,
    no_plaintext_in_logs_events_status_or_metrics,
    malformed_objects_never_break_the_watch,
    immutable_secret_is_replaced_on_change_only_after_a_good_decrypt,
    malformed_retain_resource_is_still_orphaned_on_delete,
    a_stalled_tenant_cannot_starve_others_or_block_shutdown,
    templates_render_and_rollout_restarts_once_per_change,
    template_bombs_cost_only_their_own_resource,
    kubectl_explain_reads_the_crd_schema,
    a_key_scheduled_for_deletion_is_noticed_within_one_interval,
);
