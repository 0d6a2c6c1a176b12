//! The scale benchmark, printed (not asserted), on the real control plane
//! and on the in-memory server side by side, in one run:
//!
//! ```sh
//! cargo run --release --example scale_real                 # 10,000 EncryptedSecrets, 1,000 DEKs, quota 100/s
//! cargo run --release --example scale_real -- 2000 200 100 # RESOURCES DEKS QUOTA
//! cargo run --release --example scale_real -- 2000 200 100 real   # one backend only (real | memory)
//! SCALE_CONTROLLER_ARGS="--concurrency 16" cargo run --release --example scale_real  # non-default flags
//! SCALE_PERF=/tmp/perf.data cargo run --release --example scale_real  # also `perf record` the controller
//! SCALE_PERF=/tmp/p.data SCALE_PERF_GRAPH=dwarf cargo run --release --example scale_real -- 20000 20000 0 real local  # with callers
//! cargo run --release --example scale_real -- 100000 100000 0 real local  # local key, no KMS
//! SCALE_STEADY=200 SCALE_CONTROLLER_ARGS="--resync-interval 2m" \
//!   cargo run --release --example scale_real -- 100000 10000 100 real  # + a steady-state window
//! ```
//!
//! The fifth argument picks the key: `aws` (default: moto behind the quota
//! proxy) or `local` (`--local-key`; DEKS templates sealed to a local key,
//! no KMS, no quota: the bound is the write bound alone). SCALE_STEADY=S
//! keeps watching S seconds after convergence and prints what the
//! controller did meanwhile (with a short `--resync-interval`, a full
//! resync of everything): reconciles, API writes (from the real apiserver's
//! `apiserver_request_total`), KMS requests, controller CPU. For 100,000
//! resources raise etcd's quota: KMSECRETS_ETCD_QUOTA_BYTES=8589934592.
//!
//! Workload: RESOURCES EncryptedSecrets over DEKS data keys (AWS provider,
//! moto as KMS, `--scope namespace` templates copied under many names)
//! exist before the release controller starts with default flags; KMS sits
//! behind a proxy enforcing QUOTA crypto requests/s (ThrottlingException
//! beyond it). Printed per backend: converge seconds (all Secrets present,
//! all Ready), KMS Decrypt calls that reached KMS, throttled calls,
//! controller CPU seconds and peak RSS (VmHWM), and — measured in the same
//! run — the API server's own write rate for the controller's write mix (a
//! plain client creating owned Secrets and merge-patching EncryptedSecret
//! statuses at concurrency 32; the older reference, a plain client
//! server-side-applying small Secrets at concurrency 8, is printed beside
//! it) and the KMS peer's own Decrypt rate (a plain client at concurrency
//! 16, no quota), so that the bound is
//! max(DEKS ÷ min(QUOTA, peer rate), writes needed ÷ write-mix rate) with
//! writes needed = one Secret create + one status patch per resource.
//!
//! The bound's write mix is a burst (2,000 pairs at most: seconds) against
//! a nearly empty cluster, while a cold start writes for minutes into a
//! filling one. So after the run the write mix is measured again with the
//! controller stopped, against the end state and sustained
//! (SCALE_END_MIX=PAIRS, default RESOURCES ÷ 5 up to 20,000; 0 skips it),
//! and printed beside the first; the bound stays the one measured before
//! the start. "first Secret" is the controller's start and initial
//! list (at 100,000 resources, most of it is the list); SCALE_LIST_PROBE=1
//! times a plain client reading the namespace before the controller
//! starts: 100 and 500 objects per page, and one streaming list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/aws.rs"]
mod aws;
mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kmsecrets::api::EncryptedSecret;
use kmsecrets_envtest::ControlPlane;
use kmsecrets_envtest::peers::{KmsProxy, Moto};
use kmsecrets_testserver::TestServer;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use support::{Controller, kmsecrets_bin, metric, metrics};

const NS: &str = "bench";

struct Params {
    resources: usize,
    deks: usize,
    quota: f64,
    local: bool,
}

struct Row {
    backend: &'static str,
    write_rate: f64,
    /// The same write mix measured again after the cold start, with the
    /// controller stopped: the API server holding every resource and its
    /// Secret (`None`: not measured, see SCALE_END_MIX).
    end_write_rate: Option<f64>,
    ssa_rate: f64,
    kms_rate: f64,
    /// The controller's first Secret: its start and initial list.
    first_secret: Duration,
    secrets_present: Duration,
    all_ready: Duration,
    decrypts: u64,
    throttled: u64,
    cpu: f64,
    peak_rss_mib: f64,
    bound: f64,
}

/// A KMS key in moto (CreateKey through the SDK).
async fn moto_key(url: &str) -> String {
    let key = aws::sdk_client(url)
        .await
        .create_key()
        .send()
        .await
        .expect("CreateKey on moto");
    key.key_metadata.unwrap().arn.unwrap()
}

/// DEKS templates: one `kmsecrets encrypt` of a DEKS-document stream (each
/// document gets its own data key).
fn templates(bin: &Path, dir: &Path, kms: &[&str], deks: usize) -> Vec<EncryptedSecret> {
    // encrypt reads at most 1,024 documents from one file: 1,000 per run
    let mut all = Vec::with_capacity(deks);
    for first in (0..deks).step_by(1000) {
        let mut src = String::new();
        for i in first..deks.min(first + 1000) {
            src.push_str(&format!(
                "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: t{i}, namespace: {NS}}}\nstringData: {{password: value-{i}, username: bench}}\n"
            ));
        }
        let file = dir.join("templates.yaml");
        std::fs::write(&file, src).unwrap();
        let out = Command::new(bin)
            .arg("encrypt")
            .args(kms)
            .args(["--scope", "namespace"])
            .args(["-o", "json", "-f"])
            .arg(&file)
            .envs(aws::aws_test_env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "encrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        // JSON output of several documents: a List, or one object per line
        let v: serde_json::Value = serde_json::from_str(&text)
            .or_else(|_| {
                let items: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
                    .into_iter::<serde_json::Value>()
                    .collect::<Result<_, _>>()?;
                Ok::<_, serde_json::Error>(serde_json::json!({"items": items}))
            })
            .unwrap();
        let items = v.get("items").cloned().unwrap_or(serde_json::json!([v]));
        let chunk: Vec<EncryptedSecret> = serde_json::from_value(items).unwrap();
        all.extend(chunk);
    }
    all
}

/// Server-side applies `n` Secrets at concurrency 8 into a scratch
/// namespace; writes/s.
async fn write_rate(client: &Client, n: usize) -> f64 {
    let ns = "write-rate";
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let s = serde_json::json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("w-{i:05}")},
                    "data": {"password": "dmFsdWU=", "username": "YmVuY2g="},
                });
                api.patch(
                    &format!("w-{i:05}"),
                    &PatchParams::apply("bench-writer"),
                    &Patch::Apply(s),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    n as f64 / t.elapsed().as_secs_f64()
}

/// Decrypts/s the KMS peer itself serves (through the proxy, no quota):
/// `n` Decrypts of one ciphertext at the controller's worker concurrency.
/// The KMS bound uses min(quota, this): a quota the peer cannot reach on
/// this machine is no bound anyone could meet.
/// The controller's own write mix done by a plain client at the
/// controller's default concurrency (32): `n` Secret creates (with an owner
/// reference and the managed-by label, as the controller's) and `n` JSON
/// merge patches of an EncryptedSecret's status (a Ready condition, the
/// source hash, the Secret's resourceVersion), on scratch objects in a
/// scratch namespace, deleted afterwards. Writes/s over the 2n writes: the
/// fastest the API server on this machine takes exactly what a cold start
/// needs.
async fn mix_rate(client: &Client, tpl: &[EncryptedSecret], n: usize, clean_up: bool) -> f64 {
    let ns = "write-mix";
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await;
    let es_api: Api<EncryptedSecret> = Api::namespaced(client.clone(), ns);
    let created: Vec<EncryptedSecret> = futures::stream::iter(0..n)
        .map(|i| {
            let api = es_api.clone();
            let mut es = tpl[i % tpl.len()].clone();
            es.metadata.name = Some(format!("m-{i:05}"));
            es.metadata.namespace = Some(ns.into());
            async move { api.create(&PostParams::default(), &es).await }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    futures::stream::iter(created.iter())
        .map(|es| {
            let (secrets, es_api) = (secrets.clone(), es_api.clone());
            async move {
                let name = es.metadata.name.clone().unwrap();
                let owner = serde_json::json!([{
                    "apiVersion": "kmsecrets.dev/v1alpha1", "kind": "EncryptedSecret",
                    "name": name, "uid": es.metadata.uid, "controller": true,
                    "blockOwnerDeletion": true,
                }]);
                let s: Secret = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "ownerReferences": owner,
                                 "labels": {"app.kubernetes.io/managed-by": "bench-mix"}},
                    "data": {"password": "dmFsdWU=", "username": "YmVuY2g="},
                }))
                .unwrap();
                let s = secrets.create(&PostParams::default(), &s).await?;
                let status = serde_json::json!({"status": {
                    "observedGeneration": es.metadata.generation,
                    "secretName": name,
                    "keyId": es.spec.data_keys[0].key_id,
                    "lastSyncTime": "2026-01-01T00:00:00Z",
                    "sourceHash": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                    "secretResourceVersion": s.metadata.resource_version,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Synced",
                        "message": format!("Secret {name} is up to date"),
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                        "observedGeneration": es.metadata.generation}],
                }});
                es_api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let rate = 2.0 * n as f64 / t.elapsed().as_secs_f64();
    if !clean_up {
        return rate;
    }
    // the controller must not find these (Secrets first: nothing left for
    // the garbage collector to do during the measurement that follows)
    futures::stream::iter(created.iter())
        .map(|es| {
            let secrets = secrets.clone();
            let name = es.metadata.name.clone().unwrap();
            async move { secrets.delete(&name, &Default::default()).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    futures::stream::iter(created.iter())
        .map(|es| {
            let es_api = es_api.clone();
            let name = es.metadata.name.clone().unwrap();
            async move { es_api.delete(&name, &Default::default()).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    rate
}

/// How long a plain client takes to read every EncryptedSecret of the
/// namespace: paged lists of `page` objects (`None`: one streaming list,
/// a watch with `sendInitialEvents`), decoded typed. A diagnostic printed
/// before the controller starts (SCALE_LIST_PROBE=1): the controller's
/// own initial list is most of its time to the first Secret.
async fn list_time(client: &Client, page: Option<u32>) -> (Duration, usize) {
    let api: Api<EncryptedSecret> = Api::namespaced(client.clone(), NS);
    let t = Instant::now();
    let mut n = 0;
    match page {
        Some(page) => {
            let mut token = None;
            loop {
                let mut lp = ListParams::default().limit(page);
                lp.continue_token = token;
                let list = api.list(&lp).await.unwrap();
                n += list.items.len();
                token = list.metadata.continue_.filter(|c| !c.is_empty());
                if token.is_none() {
                    break;
                }
            }
        }
        None => {
            let wp = kube::api::WatchParams {
                bookmarks: true,
                send_initial_events: true,
                ..Default::default()
            };
            let mut events = api.watch(&wp, "0").await.unwrap().boxed();
            while let Some(ev) = events.try_next().await.unwrap() {
                match ev {
                    kube::api::WatchEvent::Added(_) => n += 1,
                    kube::api::WatchEvent::Bookmark(b)
                        if b.metadata
                            .annotations
                            .contains_key("k8s.io/initial-events-end") =>
                    {
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    (t.elapsed(), n)
}

async fn kms_rate(proxy_url: &str, key: &str, n: usize) -> f64 {
    let kms = aws::sdk_client(proxy_url).await;
    let blob = kms
        .encrypt()
        .key_id(key)
        .plaintext(aws_sdk_kms::primitives::Blob::new(vec![7u8; 32]))
        .encryption_context("kmsecrets.dev/bench", "rate")
        .send()
        .await
        .expect("Encrypt on moto")
        .ciphertext_blob
        .unwrap();
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| {
            let (kms, blob) = (kms.clone(), blob.clone());
            async move {
                kms.decrypt()
                    .ciphertext_blob(blob)
                    .encryption_context("kmsecrets.dev/bench", "rate")
                    .send()
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    n as f64 / t.elapsed().as_secs_f64()
}

/// Live counts of the namespace's Secrets and of its Ready
/// EncryptedSecrets, kept by two watches (polling full lists of 10,000
/// objects twice a second cost the in-memory server — which runs in this
/// process — more CPU than the controller under test).
#[derive(Clone, Default)]
struct Counts {
    secrets: Arc<AtomicUsize>,
    ready: Arc<AtomicUsize>,
}

impl Counts {
    async fn watch(client: &Client) -> Counts {
        let c = Counts::default();
        let (listed_tx, mut listed) = tokio::sync::mpsc::channel::<()>(2);
        let secrets: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), NS);
        let (n, tx) = (c.secrets.clone(), listed_tx.clone());
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut w =
                std::pin::pin!(watcher(secrets, watcher::Config::default()).default_backoff());
            while let Some(ev) = w.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        seen.insert(o.metadata.name.unwrap_or_default());
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        seen.remove(&o.metadata.name.unwrap_or_default());
                    }
                    Ok(watcher::Event::InitDone) => {
                        let _ = tx.send(()).await;
                    }
                    _ => {}
                }
                n.store(seen.len(), Ordering::SeqCst);
            }
        });
        let es: Api<EncryptedSecret> = Api::namespaced(client.clone(), NS);
        let (n, tx) = (c.ready.clone(), listed_tx);
        tokio::spawn(async move {
            let mut ready = HashSet::new();
            let mut w = std::pin::pin!(watcher(es, watcher::Config::default()).default_backoff());
            while let Some(ev) = w.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let name = o.metadata.name.clone().unwrap_or_default();
                        if kmsecrets::controller::status::ready_condition(o.status.as_ref())
                            .is_some_and(|c| c.status == "True")
                        {
                            ready.insert(name);
                        } else {
                            ready.remove(&name);
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        ready.remove(&o.metadata.name.unwrap_or_default());
                    }
                    Ok(watcher::Event::InitDone) => {
                        let _ = tx.send(()).await;
                    }
                    _ => {}
                }
                n.store(ready.len(), Ordering::SeqCst);
            }
        });
        for _ in 0..2 {
            listed.recv().await.expect("count watches listed");
        }
        c
    }
}

/// API write requests (create, update, patch, apply, delete) so far, by
/// (verb, resource), summed over every client of the real apiserver.
async fn api_writes(cp: Option<&ControlPlane>) -> Option<Vec<((String, String), u64)>> {
    let counts = cp?.request_counts().await.ok()?;
    Some(
        counts
            .into_iter()
            .filter(|((verb, _), _)| {
                matches!(
                    verb.as_str(),
                    "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
                )
            })
            .collect(),
    )
}

/// The writes between two [`api_writes`] snapshots: "N (verb resource: n, …)".
fn writes_between(a: &[((String, String), u64)], b: &[((String, String), u64)]) -> String {
    let before: std::collections::HashMap<_, _> = a.iter().cloned().collect();
    let parts: Vec<String> = b
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{} {}: {d}", k.0, k.1))
        })
        .collect();
    let total: u64 = b.iter().map(|(_, n)| n).sum::<u64>() - a.iter().map(|(_, n)| n).sum::<u64>();
    format!("{total} ({})", parts.join(", "))
}

async fn run_backend(
    backend: &'static str,
    kubeconfig: &Path,
    cp: Option<&ControlPlane>,
    bin: &Path,
    dir: &Path,
    p: &Params,
) -> Row {
    // AWS: moto behind the quota proxy; local: a key file, no KMS
    let (_moto, proxy, key) = if p.local {
        let key = dir.join("local.key");
        if !key.exists() {
            let st = Command::new(bin).arg("keygen").arg(&key).status().unwrap();
            assert!(st.success(), "kmsecrets keygen");
        }
        (None, None, format!("file:{}", key.display()))
    } else {
        let moto = Moto::start();
        let key = moto_key(&moto.url()).await;
        let proxy = KmsProxy::start(moto.port);
        (Some(moto), Some(proxy), key)
    };
    let kms_args: Vec<String> = match &proxy {
        Some(proxy) => vec!["--kms-endpoint".into(), proxy.url()],
        None => vec![
            "--local-key".into(),
            key.trim_start_matches("file:").to_string(),
        ],
    };
    let client = kmsecrets_envtest::client_for(kubeconfig).await.unwrap();

    let crd = Command::new(bin).arg("crd").output().unwrap();
    let mut apply = Command::new(kmsecrets_envtest::tool("kubectl"))
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut apply.stdin.take().unwrap(), &crd.stdout).unwrap();
    assert!(apply.wait().unwrap().success(), "CRD install");
    // let discovery catch up with the new resource
    let es_api: Api<EncryptedSecret> = Api::namespaced(client.clone(), NS);
    let t = Instant::now();
    while es_api.list(&ListParams::default().limit(1)).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "CRD not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await;

    let t = Instant::now();
    // encrypt straight at the KMS peer (no quota)
    let mut enc_args = vec!["--key", key.as_str()];
    let moto_url = _moto.as_ref().map(|m| m.url());
    if let Some(u) = &moto_url {
        enc_args.extend(["--kms-endpoint", u.as_str()]);
    }
    let tpl = templates(bin, dir, &enc_args, p.deks);
    eprintln!(
        "[{backend}] encrypted {} templates in {:.1?}",
        tpl.len(),
        t.elapsed()
    );

    let t = Instant::now();
    futures::stream::iter(0..p.resources)
        .map(|i| {
            let api = es_api.clone();
            let mut es = tpl[i % tpl.len()].clone();
            es.metadata.name = Some(format!("es-{i:05}"));
            async move { api.create(&PostParams::default(), &es).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    eprintln!(
        "[{backend}] created {} EncryptedSecrets in {:.1?}",
        p.resources,
        t.elapsed()
    );

    if std::env::var_os("SCALE_LIST_PROBE").is_some() {
        for page in [Some(100), Some(500), None] {
            let (d, n) = list_time(&client, page).await;
            let how = page.map_or_else(
                || "one streaming list".to_string(),
                |p| format!("{p} per page"),
            );
            eprintln!("[{backend}] plain-client read of {n} EncryptedSecrets, {how}: {d:.1?}");
        }
    }
    let n_writes = (p.resources / 5).clamp(200, 2000);
    let ssa_rate = write_rate(&client, n_writes).await;
    eprintln!("[{backend}] plain-client SSA write rate: {ssa_rate:.0}/s over {n_writes} Secrets");
    let rate = mix_rate(&client, &tpl, n_writes, true).await;
    eprintln!(
        "[{backend}] plain-client controller write mix (create Secret + merge-patch status): {rate:.0} writes/s over {n_writes} pairs"
    );

    let peer_rate = match &proxy {
        Some(proxy) => {
            let r = kms_rate(&proxy.url(), &key, 300).await;
            eprintln!("[{backend}] KMS peer alone: {r:.0} Decrypts/s (concurrency 16, no quota)");
            proxy.set_quota(Some(p.quota));
            r
        }
        None => f64::INFINITY,
    };
    let decrypts_now = || proxy.as_ref().map_or(0, |p| p.decrypts());
    let throttled_now = || proxy.as_ref().map_or(0, |p| p.injected());
    let (dec0, thr0) = (decrypts_now(), throttled_now());
    let counts = Counts::watch(&client).await;
    let log = dir.join(format!("controller-{backend}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let child = support::own_group(&mut Command::new(bin))
        .arg("controller")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-secure=false",
            "--log-format",
            "json",
        ])
        .args(&kms_args)
        // extra controller flags for experiments (the table is for defaults)
        .args(
            std::env::var("SCALE_CONTROLLER_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .envs(aws::aws_test_env())
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    // SCALE_PERF=FILE: sample the controller with `perf record` for the
    // whole cold start (a profile, not part of the table);
    // SCALE_PERF_GRAPH=dwarf: call graphs by DWARF unwinding (the release
    // build has no frame pointers, so `-g` alone attributes nothing to its
    // callers; large files: use it on short runs)
    let perf = std::env::var("SCALE_PERF").ok().map(|out| {
        let graph = match std::env::var("SCALE_PERF_GRAPH").as_deref() {
            Ok("dwarf") => "--call-graph=dwarf,16384",
            _ => "-g",
        };
        Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "499", graph, "-o"])
            .arg(format!("{out}.{backend}"))
            .args(["-p", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("SCALE_PERF set but perf does not start")
    });
    let ctl = Controller { child, log };
    let addr = ctl.http_addr();
    let mut present = None;
    let mut first = None;
    let progress = std::env::var_os("SCALE_PROGRESS").is_some();
    let mut last_print = Instant::now();
    loop {
        let n = counts.secrets.load(Ordering::SeqCst);
        if first.is_none() && n > 0 {
            first = Some(started.elapsed());
        }
        if present.is_none() && n >= p.resources {
            present = Some(started.elapsed());
        }
        let ready = counts.ready.load(Ordering::SeqCst);
        if progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{backend}] {:>5.1} s: {n} Secrets, {ready} Ready, {} Decrypts, controller RSS {} MiB (anon {}, file {})",
                started.elapsed().as_secs_f64(),
                decrypts_now() - dec0,
                support::proc_status_kib(ctl.child.id(), "VmRSS:") / 1024,
                support::proc_status_kib(ctl.child.id(), "RssAnon:") / 1024,
                support::proc_status_kib(ctl.child.id(), "RssFile:") / 1024,
            );
        }
        if present.is_some() && ready >= p.resources {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "[{backend}] cold start did not converge in 20 min; log {}",
            ctl.log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_ready = started.elapsed();
    let m = metrics(addr);
    let cpu = ctl.cpu_seconds();
    let rss = ctl.peak_rss_kib() as f64 / 1024.0;
    let decrypts = decrypts_now() - dec0;
    let throttled = throttled_now() - thr0;
    let ctl_decrypts = metric(
        &m,
        "kmsecrets_kms_requests_total",
        &[("operation", "decrypt"), ("result", "success")],
    );
    let reconciles = metric(&m, "kmsecrets_reconcile_total", &[]);
    let deferred = metric(&m, "kmsecrets_reconcile_deferred_total", &[]);
    eprintln!("[{backend}] reconciles {reconciles} (+ {deferred} deferred)");
    let mean = |name: &str, labels: &[(&str, &str)]| {
        let sum = metric(&m, &format!("{name}_sum"), labels);
        let n = metric(&m, &format!("{name}_count"), labels);
        1000.0 * sum / n.max(1.0)
    };
    eprintln!(
        "[{backend}] KMS Decrypt: mean {:.1} ms per request; mean {:.1} ms waiting for the rate limiter",
        mean(
            "kmsecrets_kms_request_duration_seconds",
            &[("operation", "decrypt")]
        ),
        mean("kmsecrets_kms_rate_limit_wait_seconds", &[]),
    );
    eprintln!(
        "[{backend}] converged: Secrets {present:.1?}, Ready {all_ready:.1?}; proxy Decrypts {decrypts}, throttled {throttled}; controller counted {ctl_decrypts} successful decrypts"
    );
    // SCALE_STEADY=S: what a quiet controller does for S seconds
    if let Some(secs) = std::env::var("SCALE_STEADY")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let (cpu0, rec0) = (ctl.cpu_seconds(), reconciles);
        let (w0, d0) = (api_writes(cp).await, decrypts_now());
        let kms0 = metric(&metrics(addr), "kmsecrets_kms_requests_total", &[]);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let m = metrics(addr);
        let writes = match (w0, api_writes(cp).await) {
            (Some(a), Some(b)) => writes_between(&a, &b),
            _ => "n/a (in-memory server)".into(),
        };
        eprintln!(
            "[{backend}] steady state over {secs} s: {} reconciles, {writes} API writes, {} KMS requests \
             (controller's count; {} Decrypts at the proxy), controller CPU {:.2} s, RSS {} MiB",
            metric(&m, "kmsecrets_reconcile_total", &[]) - rec0,
            metric(&m, "kmsecrets_kms_requests_total", &[]) - kms0,
            decrypts_now() - d0,
            ctl.cpu_seconds() - cpu0,
            support::proc_status_kib(ctl.child.id(), "VmRSS:") / 1024,
        );
    }
    if let Some(mut perf) = perf {
        // SIGINT lets perf write its data file
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    drop(ctl);
    // the same write mix again at the end state (the API server holding
    // every resource and its Secret), sustained: SCALE_END_MIX pairs
    // (default RESOURCES ÷ 5, at most 20,000; 0 skips it), left in place
    let end_pairs = std::env::var("SCALE_END_MIX")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or((p.resources / 5).clamp(200, 20_000));
    let end_write_rate = if end_pairs == 0 {
        None
    } else {
        let r = mix_rate(&client, &tpl, end_pairs, false).await;
        eprintln!(
            "[{backend}] plain-client controller write mix at the end state (controller stopped): {r:.0} writes/s over {end_pairs} pairs"
        );
        Some(r)
    };
    let writes_needed = 2.0 * p.resources as f64;
    let kms_bound = if p.local {
        0.0
    } else {
        p.deks as f64 / p.quota.min(peer_rate)
    };
    let bound = kms_bound.max(writes_needed / rate);
    Row {
        backend,
        write_rate: rate,
        end_write_rate,
        ssa_rate,
        kms_rate: peer_rate,
        first_secret: first.unwrap(),
        secrets_present: present.unwrap(),
        all_ready,
        decrypts,
        throttled,
        cpu,
        peak_rss_mib: rss,
        bound,
    }
}

fn kubeconfig_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.kubeconfig"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: f64| -> f64 {
        args.get(i)
            .map(|a| {
                a.parse()
                    .expect("arguments: RESOURCES DEKS QUOTA [real|memory]")
            })
            .unwrap_or(d)
    };
    let p = Params {
        resources: num(0, 10_000.0) as usize,
        deks: num(1, 1_000.0) as usize,
        quota: num(2, 100.0),
        local: match args.get(4).map(String::as_str) {
            None | Some("aws") => false,
            Some("local") => true,
            Some(o) => panic!("fifth argument: aws | local, not {o}"),
        },
    };
    let only = args.get(3).cloned();
    let bin = kmsecrets_bin();
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();

    if only.as_deref() != Some("memory") {
        let cp = ControlPlane::start().await.unwrap();
        eprintln!("[real] control plane ready in {:.1?}", cp.start_time);
        let kc = kubeconfig_of(dir.path(), "real");
        std::fs::copy(cp.kubeconfig(), &kc).unwrap();
        rows.push(run_backend("real", &kc, Some(&cp), &bin, dir.path(), &p).await);
        let apiserver_cpu = cp
            .pid("kube-apiserver")
            .map(support::cpu_seconds)
            .unwrap_or(0.0);
        let etcd_cpu = cp.pid("etcd").map(support::cpu_seconds).unwrap_or(0.0);
        eprintln!(
            "[real] kube-apiserver CPU {apiserver_cpu:.1} s, etcd CPU {etcd_cpu:.1} s (whole run)"
        );
    }
    if only.as_deref() != Some("real") {
        let server = TestServer::start("127.0.0.1:0").await.unwrap();
        let kc = kubeconfig_of(dir.path(), "memory");
        server.write_kubeconfig(&kc).unwrap();
        rows.push(run_backend("memory", &kc, None, &bin, dir.path(), &p).await);
        server.shutdown().await;
    }

    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let kms = if p.local {
        "local key (no KMS)".to_string()
    } else {
        format!("KMS quota {}/s (moto behind a throttling proxy)", p.quota)
    };
    println!(
        "== scale: {} EncryptedSecrets over {} DEKs, {kms}, {profile} controller, default flags, cold start ==",
        p.resources, p.deks
    );
    println!(
        "| backend | SSA writes/s (plain client) | write mix/s (plain client) | write mix/s at the end | KMS peer Decrypts/s | bound s | first Secret s | Secrets present s | all Ready s | ÷ bound | KMS Decrypts | throttled | controller CPU s | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} | {:.1} | {:.0} |",
            r.backend,
            r.ssa_rate,
            r.write_rate,
            r.end_write_rate
                .map_or_else(|| "—".to_string(), |e| format!("{e:.0}")),
            r.kms_rate,
            r.bound,
            r.first_secret.as_secs_f64(),
            r.secrets_present.as_secs_f64(),
            r.all_ready.as_secs_f64(),
            r.all_ready.as_secs_f64() / r.bound,
            r.decrypts,
            r.throttled,
            r.cpu,
            r.peak_rss_mib,
        );
    }
}
