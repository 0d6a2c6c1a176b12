//! The peers benchmark: kmsecrets beside Bitnami Sealed Secrets and External
//! Secrets Operator, each on a fresh real control plane, printed as one
//! table (not asserted; not part of CI).
//!
//! ```sh
//! cargo run --release --example peers_bench                  # N = 1,000, every contender
//! cargo run --release --example peers_bench -- 10000         # N = 10,000
//! cargo run --release --example peers_bench -- 1000 kmsecrets eso   # a subset
//! cargo run --release --example peers_bench -- 1000 'sealed-secrets --kubeclient-qps=-1'
//! ```
//!
//! Contenders: `kmsecrets` (local key), `sealed-secrets`, `eso` (its fake
//! provider), each at its shipped defaults; words after a contender's name
//! are extra flags, and such a row is labelled with them. The default list
//! is `kmsecrets`, `sealed-secrets`, `sealed-secrets --kubeclient-qps=-1`
//! (its client-side rate limit off; kube-rs clients have none) and `eso`.
//! The peers are built from the modules pinned under tools/peers/ by
//! scripts/ensure-peers.sh (cached; ~10 min cold for External Secrets).
//!
//! Per contender: etcd + kube-apiserver v1.37.2 (+ kube-controller-manager)
//! from the tool build, TLS and RBAC; 100 namespaces; N resources of 3
//! values each, created before the controller starts:
//! - kmsecrets: EncryptedSecrets from `kmsecrets encrypt --key file:KEY`
//!   (one data key per resource, strict scope); the controller gets
//!   `--local-key KEY`, runs as the admin user.
//! - Sealed Secrets: SealedSecrets sealed offline with its own pkg/crypto
//!   (tools/peers/sealed-secrets/sealbulk, strict scope) to a 4096-bit key
//!   created as the controller's active key in kube-system. The controller
//!   only runs with in-cluster config: it is started in a private mount
//!   namespace (`unshare -m`) where a tmpfs on /run holds a ServiceAccount
//!   token (TokenRequest; the account is bound to cluster-admin), the CA and
//!   the namespace, with KUBERNETES_SERVICE_HOST/PORT pointing at the
//!   apiserver. Unmodified build.
//! - External Secrets: one SecretStore per namespace with the fake provider
//!   holding that namespace's values; one ExternalSecret of 3 keys per
//!   resource; the controller runs as the admin user (KUBECONFIG).
//!
//! Every controller binds its HTTP ports to free ports on 127.0.0.1 (the
//! only flags changed). Printed: time from the controller's start to all N
//! Secrets present and to all N resources Ready (Synced for Sealed
//! Secrets); controller CPU (utime + stime) and per resource; peak RSS
//! (VmHWM); kube-apiserver and etcd CPU over the same window; API requests
//! over the window from the apiserver's `apiserver_request_total` (they
//! include kube-controller-manager's and this harness's few: 2 lists, 2
//! watches); a content check of 25 sampled Secrets against the values.
//!
//! Environment: PEERS_TIMEOUT (seconds per contender, default 1800; a row
//! that times out says how far it got), KMSECRETS_BIN (the kmsecrets binary
//! to run, e.g. a jemalloc build), PEERS_PROGRESS=1 (progress every 5 s).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kmsecrets_envtest::ControlPlane;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::Controller;

const NAMESPACES: usize = 100;
const SAMPLES: usize = 25;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kmsecrets,
    SealedSecrets,
    Eso,
}

struct Contender {
    kind: Kind,
    extra: Vec<String>,
}

impl Contender {
    fn parse(spec: &str) -> Contender {
        let mut words = spec.split_whitespace().map(str::to_string);
        let kind = match words.next().as_deref() {
            Some("kmsecrets") => Kind::Kmsecrets,
            Some("sealed-secrets") => Kind::SealedSecrets,
            Some("eso") => Kind::Eso,
            other => {
                panic!("unknown contender {other:?}: kmsecrets | sealed-secrets | eso [FLAGS]")
            }
        };
        Contender {
            kind,
            extra: words.collect(),
        }
    }

    fn label(&self) -> String {
        let name = match self.kind {
            Kind::Kmsecrets => "kmsecrets (local key)",
            Kind::SealedSecrets => "Sealed Secrets v0.40.0",
            Kind::Eso => "ESO v0.16.2 (fake provider)",
        };
        if self.extra.is_empty() {
            name.to_string()
        } else {
            format!("{name} `{}`", self.extra.join(" "))
        }
    }

    /// The resource whose readiness is counted, and its condition type.
    fn resource(&self) -> (ApiResource, &'static str) {
        let (g, v, k, plural, cond) = match self.kind {
            Kind::Kmsecrets => (
                "kmsecrets.dev",
                "v1alpha1",
                "EncryptedSecret",
                "encryptedsecrets",
                "Ready",
            ),
            Kind::SealedSecrets => (
                "bitnami.com",
                "v1alpha1",
                "SealedSecret",
                "sealedsecrets",
                "Synced",
            ),
            Kind::Eso => (
                "external-secrets.io",
                "v1",
                "ExternalSecret",
                "externalsecrets",
                "Ready",
            ),
        };
        (
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural),
            cond,
        )
    }
}

fn ns(i: usize) -> String {
    format!("bench-{:02}", i % NAMESPACES)
}

fn name(i: usize) -> String {
    format!("s-{i:06}")
}

/// Resource i's three values (deterministic, distinct per resource).
fn values(i: usize) -> [(&'static str, String); 3] {
    let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    [
        ("username", format!("user-{i}")),
        (
            "password",
            format!("{h:016x}{:016x}", h.rotate_left(29) ^ 0xA5A5),
        ),
        (
            "url",
            format!("postgres://db-{}.bench.svc:5432/app-{i}", i % NAMESPACES),
        ),
    ]
}

fn plain_secret(i: usize) -> Value {
    let data: serde_json::Map<String, Value> = values(i)
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name(i), "namespace": ns(i)},
        "type": "Opaque",
        "stringData": data,
    })
}

struct Peers {
    dir: PathBuf,
}

impl Peers {
    /// Builds (or finds cached) the peers: scripts/ensure-peers.sh.
    fn ensure() -> Peers {
        let script = kmsecrets_envtest::repo_root().join("scripts/ensure-peers.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed (it builds Sealed Secrets and External Secrets from the Go module proxy)",
            script.display()
        );
        Peers {
            dir: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    fn crds(&self, peer: &str) -> PathBuf {
        self.dir.join("crds").join(peer)
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut child = Command::new(kmsecrets_envtest::tool("kubectl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        std::io::Write::write_all(&mut input, data).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses JSON output of one or more documents (a List, or objects one
/// after another) into the objects.
fn json_documents(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    docs.into_iter()
        .flat_map(|d| match d.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => vec![d],
        })
        .collect()
}

/// Creates `objs` through the API at concurrency 32.
async fn create_all(client: &Client, ar: &ApiResource, objs: Vec<Value>) {
    futures::stream::iter(objs)
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().unwrap().to_string();
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, ar);
            let obj: DynamicObject = serde_json::from_value(o).unwrap();
            async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

async fn wait_served(client: &Client, ar: &ApiResource) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    let t = Instant::now();
    while api
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} not served",
            ar.kind
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The input a contender needs, made once per N (before any timing).
struct Inputs {
    n: usize,
    dir: PathBuf,
}

impl Inputs {
    fn secrets_jsonl(&self) -> PathBuf {
        let p = self.dir.join("secrets.jsonl");
        if !p.exists() {
            let mut s = String::new();
            for i in 0..self.n {
                s.push_str(&plain_secret(i).to_string());
                s.push('\n');
            }
            std::fs::write(&p, s).unwrap();
        }
        p
    }

    /// kmsecrets: key file and EncryptedSecrets (one data key each).
    fn kmsecrets(&self, bin: &Path) -> (PathBuf, Vec<Value>) {
        let key = self.dir.join("local.key");
        let out = self.dir.join("encrypted.json");
        if !out.exists() {
            let st = Command::new(bin)
                .arg("keygen")
                .arg(&key)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "kmsecrets keygen");
            // JSON is YAML: one flow document per Secret, 1,000 per file
            // (encrypt reads at most 1,024 documents from one file)
            let lines: Vec<String> = std::fs::read_to_string(self.secrets_jsonl())
                .unwrap()
                .lines()
                .map(|l| format!("---\n{l}\n"))
                .collect();
            let t = Instant::now();
            let mut all = Vec::new();
            for (c, chunk) in lines.chunks(1000).enumerate() {
                let src = self.dir.join(format!("secrets-{c}.yaml"));
                std::fs::write(&src, chunk.concat()).unwrap();
                let o = Command::new(bin)
                    .args(["encrypt", "--key"])
                    .arg(format!("file:{}", key.display()))
                    .args(["-o", "json", "-f"])
                    .arg(&src)
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "kmsecrets encrypt: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                all.extend_from_slice(&o.stdout);
                all.push(b'\n');
            }
            std::fs::write(&out, &all).unwrap();
            eprintln!(
                "[inputs] kmsecrets encrypt of {} Secrets: {:.1?}",
                self.n,
                t.elapsed()
            );
        }
        let docs = json_documents(&std::fs::read_to_string(&out).unwrap());
        assert_eq!(docs.len(), self.n);
        (key, docs)
    }

    /// Sealed Secrets: its key Secret and the SealedSecrets (sealbulk).
    fn sealed(&self, peers: &Peers) -> (Value, Vec<Value>) {
        let out = self.dir.join("sealed.jsonl");
        if !out.exists() {
            let t = Instant::now();
            let o = Command::new(peers.bin("sealbulk"))
                .stdin(std::fs::File::open(self.secrets_jsonl()).unwrap())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "sealbulk: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::fs::write(&out, &o.stdout).unwrap();
            eprintln!(
                "[inputs] sealbulk of {} Secrets: {:.1?}",
                self.n,
                t.elapsed()
            );
        }
        let mut docs = json_documents(&std::fs::read_to_string(&out).unwrap());
        let key = docs.remove(0);
        assert_eq!(docs.len(), self.n);
        (key, docs)
    }

    /// ESO: one fake-provider SecretStore per namespace, one
    /// ExternalSecret per resource.
    fn eso(&self) -> (Vec<Value>, Vec<Value>) {
        let mut store_data: Vec<Vec<Value>> = vec![Vec::new(); NAMESPACES.min(self.n)];
        let mut ess = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let mut data = Vec::new();
            for (k, v) in values(i) {
                let remote = format!("{}/{k}", name(i));
                store_data[i % NAMESPACES].push(json!({"key": remote, "value": v}));
                data.push(json!({"secretKey": k, "remoteRef": {"key": remote}}));
            }
            ess.push(json!({
                "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                "metadata": {"name": name(i), "namespace": ns(i)},
                "spec": {
                    "secretStoreRef": {"name": "fake", "kind": "SecretStore"},
                    "target": {"name": name(i)},
                    "data": data,
                },
            }));
        }
        let stores = store_data
            .into_iter()
            .enumerate()
            .map(|(j, data)| {
                json!({
                    "apiVersion": "external-secrets.io/v1", "kind": "SecretStore",
                    "metadata": {"name": "fake", "namespace": ns(j)},
                    "spec": {"provider": {"fake": {"data": data}}},
                })
            })
            .collect();
        (stores, ess)
    }
}

/// Secrets present in the bench namespaces and resources Ready, kept by
/// two watches started before the controller.
/// Both watches stop when this is dropped.
#[derive(Default)]
struct Counts {
    secrets: Arc<AtomicUsize>,
    ready: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Counts {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn condition_true(o: &DynamicObject, cond: &str) -> bool {
    o.data["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == cond && c["status"] == "True")
    })
}

impl Counts {
    async fn watch(client: &Client, ar: &ApiResource, cond: &'static str) -> Counts {
        let mut c = Counts::default();
        let (tx, mut listed) = tokio::sync::mpsc::channel::<()>(2);
        let secrets: Api<PartialObjectMeta<Secret>> = Api::all(client.clone());
        let (n, t) = (c.secrets.clone(), tx.clone());
        c.tasks.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            let key = |o: &PartialObjectMeta<Secret>| {
                let ns = o.metadata.namespace.clone().unwrap_or_default();
                ns.starts_with("bench-")
                    .then(|| (ns, o.metadata.name.clone().unwrap_or_default()))
            };
            let mut w =
                std::pin::pin!(watcher(secrets, watcher::Config::default()).default_backoff());
            while let Some(ev) = w.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        if let Some(k) = key(&o) {
                            seen.insert(k);
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        if let Some(k) = key(&o) {
                            seen.remove(&k);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        let _ = t.send(()).await;
                    }
                    _ => {}
                }
                n.store(seen.len(), Ordering::SeqCst);
            }
        }));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        let (n, t) = (c.ready.clone(), tx);
        c.tasks.push(tokio::spawn(async move {
            let mut ready = HashSet::new();
            let mut w = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(ev) = w.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let k = (o.metadata.namespace.clone(), o.metadata.name.clone());
                        if condition_true(&o, cond) {
                            ready.insert(k);
                        } else {
                            ready.remove(&k);
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        ready.remove(&(o.metadata.namespace.clone(), o.metadata.name.clone()));
                    }
                    Ok(watcher::Event::InitDone) => {
                        let _ = t.send(()).await;
                    }
                    _ => {}
                }
                n.store(ready.len(), Ordering::SeqCst);
            }
        }));
        for _ in 0..2 {
            listed.recv().await.expect("count watches listed");
        }
        c
    }
}

struct Row {
    label: String,
    n: usize,
    present: Option<f64>,
    ready: Option<f64>,
    /// (Secrets present, resources Ready) when the run timed out.
    timed_out: Option<(usize, usize)>,
    /// Why each crash of the controller happened (it was restarted).
    restarts: Vec<String>,
    cpu: f64,
    rss_mib: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    requests: u64,
    content: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sum_requests(v: &[((String, String), u64)]) -> u64 {
    v.iter().map(|(_, n)| n).sum()
}

/// The sampled Secrets' values against what they were made from.
async fn content_check(client: &Client, n: usize) -> String {
    let mut idx: Vec<usize> = (0..SAMPLES).map(|k| k * n / SAMPLES + k % 7).collect();
    idx.push(n - 1);
    idx.retain(|&i| i < n);
    idx.sort_unstable();
    idx.dedup();
    let mut ok = 0;
    for &i in &idx {
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns(i));
        let Ok(s) = api.get(&name(i)).await else {
            continue;
        };
        let data = s.data.unwrap_or_default();
        let good = data.len() == 3
            && values(i)
                .iter()
                .all(|(k, v)| data.get(*k).is_some_and(|b| b.0 == v.as_bytes()));
        ok += usize::from(good);
    }
    format!("{ok}/{} match", idx.len())
}

async fn run(c: &Contender, inputs: &Inputs, peers: Option<&Peers>, bin: &Path) -> Row {
    let label = c.label();
    let n = inputs.n;
    let cp = ControlPlane::start().await.unwrap();
    let kc = cp.kubeconfig().to_path_buf();
    let client = cp.client().await.unwrap();
    eprintln!("[{label}] control plane ready in {:.1?}", cp.start_time);
    for j in 0..NAMESPACES.min(n) {
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns(j)}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let (ar, cond) = c.resource();
    let t = Instant::now();
    // install, create the inputs; returns how to start the controller
    let mut cmd;
    match c.kind {
        Kind::Kmsecrets => {
            let crd = Command::new(bin).arg("crd").output().unwrap();
            kubectl(&kc, &["apply", "-f", "-"], Some(&crd.stdout));
            wait_served(&client, &ar).await;
            let (key, docs) = inputs.kmsecrets(bin);
            create_all(&client, &ar, docs).await;
            cmd = Command::new(bin);
            cmd.arg("controller")
                .arg("--kubeconfig")
                .arg(&kc)
                .arg("--local-key")
                .arg(&key)
                .args(["--http-addr", "127.0.0.1:0", "--metrics-addr"])
                .arg(format!("127.0.0.1:{}", free_port()))
                .env_remove("KUBECONFIG");
        }
        Kind::SealedSecrets => {
            let peers = peers.unwrap();
            let crds = peers.crds("sealed-secrets");
            kubectl(&kc, &["apply", "-f", crds.to_str().unwrap()], None);
            wait_served(&client, &ar).await;
            let (key, docs) = inputs.sealed(peers);
            let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
            secrets
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(key).unwrap(),
                )
                .await
                .unwrap();
            create_all(&client, &ar, docs).await;
            // in-cluster identity: a ServiceAccount bound to cluster-admin
            kubectl(
                &kc,
                &[
                    "-n",
                    "kube-system",
                    "create",
                    "serviceaccount",
                    "sealed-secrets-controller",
                ],
                None,
            );
            kubectl(
                &kc,
                &[
                    "create",
                    "clusterrolebinding",
                    "sealed-secrets-controller",
                    "--clusterrole=cluster-admin",
                    "--serviceaccount=kube-system:sealed-secrets-controller",
                ],
                None,
            );
            let token = kubectl(
                &kc,
                &[
                    "-n",
                    "kube-system",
                    "create",
                    "token",
                    "sealed-secrets-controller",
                    "--duration=48h",
                ],
                None,
            );
            let sa = cp.dir().join("sa");
            std::fs::create_dir_all(&sa).unwrap();
            std::fs::write(sa.join("token"), token.trim()).unwrap();
            std::fs::write(sa.join("ca.crt"), cp.ca_pem()).unwrap();
            std::fs::write(sa.join("namespace"), "kube-system").unwrap();
            let port = cp.url().rsplit(':').next().unwrap().to_string();
            cmd = Command::new("unshare");
            cmd.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(
                    "mount -t tmpfs tmpfs /run && \
                     mkdir -p /run/secrets/kubernetes.io/serviceaccount && \
                     cp \"$SA_DIR\"/* /run/secrets/kubernetes.io/serviceaccount/ && \
                     exec \"$@\"",
                )
                .arg("sh")
                .arg(peers.bin("sealed-secrets-controller"))
                .arg(format!("--listen-addr=127.0.0.1:{}", free_port()))
                .arg(format!("--listen-metrics-addr=127.0.0.1:{}", free_port()))
                .env("SA_DIR", &sa)
                .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
                .env("KUBERNETES_SERVICE_PORT", port)
                .env_remove("KUBECONFIG");
        }
        Kind::Eso => {
            let peers = peers.unwrap();
            let crds = peers.crds("external-secrets");
            // CRDs too large for client-side apply's annotation
            kubectl(
                &kc,
                &["apply", "--server-side", "-f", crds.to_str().unwrap()],
                None,
            );
            wait_served(&client, &ar).await;
            let (stores, ess) = inputs.eso();
            let store_ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("external-secrets.io", "v1", "SecretStore"),
                "secretstores",
            );
            wait_served(&client, &store_ar).await;
            create_all(&client, &store_ar, stores).await;
            create_all(&client, &ar, ess).await;
            cmd = Command::new(peers.bin("external-secrets"));
            cmd.arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
                .env("KUBECONFIG", &kc);
        }
    }
    cmd.args(&c.extra);
    eprintln!("[{label}] {n} resources created in {:.1?}", t.elapsed());

    let counts = Counts::watch(&client, &ar, cond).await;
    let req0 = sum_requests(&cp.request_counts().await.unwrap());
    let (api0, etcd0) = (
        support::cpu_seconds(cp.pid("kube-apiserver").unwrap()),
        support::cpu_seconds(cp.pid("etcd").unwrap()),
    );
    let log = cp.dir().join("contender.log");
    let file = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let child = support::own_group(&mut cmd)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let ctl = Controller { child, log };
    let timeout = Duration::from_secs(
        std::env::var("PEERS_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1800),
    );
    let progress = std::env::var_os("PEERS_PROGRESS").is_some();
    let (mut present, mut ready, mut timed_out) = (None, None, None);
    let mut last = Instant::now();
    let mut ctl = ctl;
    let (mut prior_cpu, mut prior_hwm, mut last_cpu, mut last_hwm) = (0.0, 0u64, 0.0, 0u64);
    let mut restarts: Vec<String> = Vec::new();
    loop {
        let (s, r) = (
            counts.secrets.load(Ordering::SeqCst),
            counts.ready.load(Ordering::SeqCst),
        );
        let el = started.elapsed().as_secs_f64();
        if present.is_none() && s >= n {
            present = Some(el);
        }
        if ready.is_none() && r >= n {
            ready = Some(el);
        }
        if present.is_some() && ready.is_some() {
            break;
        }
        // what the process used so far (read before a crash reaps it)
        let (c, h) = (ctl.cpu_seconds(), ctl.peak_rss_kib());
        if c > 0.0 {
            (last_cpu, last_hwm) = (c, h);
        }
        if let Ok(Some(st)) = ctl.child.try_wait() {
            // restarted as a Deployment would restart it; the crash is
            // reported in the row
            let tail: Vec<String> = ctl.logs().lines().map(str::to_string).collect();
            let why = tail
                .iter()
                .find(|l| l.starts_with("fatal error:") || l.starts_with("panic:"))
                .cloned()
                .unwrap_or_else(|| format!("{st}"));
            eprintln!("[{label}] controller exited ({st}: {why}) at {el:.1} s; restarting it");
            restarts.push(why);
            prior_cpu += last_cpu;
            prior_hwm = prior_hwm.max(last_hwm);
            (last_cpu, last_hwm) = (0.0, 0);
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(&ctl.log)
                .unwrap();
            ctl.child = cmd
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
        }
        if started.elapsed() > timeout {
            timed_out = Some((s, r));
            break;
        }
        if progress && last.elapsed() >= Duration::from_secs(5) {
            last = Instant::now();
            eprintln!(
                "[{label}] {el:>6.1} s: {s} Secrets, {r} ready, RSS {} MiB",
                support::proc_status_kib(ctl.child.id(), "VmRSS:") / 1024
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let cpu = prior_cpu + ctl.cpu_seconds();
    let rss_mib = prior_hwm.max(ctl.peak_rss_kib()) as f64 / 1024.0;
    let pid = ctl.child.id();
    eprintln!(
        "[{label}] at the end: RSS {} KiB = anonymous {} + file {} KiB; peak {} KiB; {} threads",
        support::proc_status_kib(pid, "VmRSS:"),
        support::proc_status_kib(pid, "RssAnon:"),
        support::proc_status_kib(pid, "RssFile:"),
        support::proc_status_kib(pid, "VmHWM:"),
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .unwrap_or("?")
            .trim(),
    );
    if let Ok(hold) = std::env::var("PEERS_HOLD") {
        // diagnostics: keep the converged controller running (pid printed)
        eprintln!("[{label}] holding pid {pid} for {hold} s");
        tokio::time::sleep(Duration::from_secs(hold.parse().unwrap())).await;
    }
    let apiserver_cpu = support::cpu_seconds(cp.pid("kube-apiserver").unwrap()) - api0;
    let etcd_cpu = support::cpu_seconds(cp.pid("etcd").unwrap()) - etcd0;
    let requests = sum_requests(&cp.request_counts().await.unwrap()) - req0;
    drop(ctl);
    drop(counts);
    let content = content_check(&client, n).await;
    eprintln!(
        "[{label}] Secrets {present:?} s, ready {ready:?} s, CPU {cpu:.1} s, peak RSS {rss_mib:.1} MiB, \
         apiserver CPU {apiserver_cpu:.1} s, etcd CPU {etcd_cpu:.1} s, {requests} API requests, content {content}"
    );
    Row {
        label,
        n,
        present,
        ready,
        timed_out,
        restarts,
        cpu,
        rss_mib,
        apiserver_cpu,
        etcd_cpu,
        requests,
        content,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .first()
        .map(|a| a.parse().expect("usage: peers_bench [N] [CONTENDER...]"))
        .unwrap_or(1000);
    let specs: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        [
            "kmsecrets",
            "sealed-secrets",
            "sealed-secrets --kubeclient-qps=-1",
            "eso",
        ]
        .map(String::from)
        .to_vec()
    };
    let contenders: Vec<Contender> = specs.iter().map(|s| Contender::parse(s)).collect();
    let peers = contenders
        .iter()
        .any(|c| c.kind != Kind::Kmsecrets)
        .then(Peers::ensure);
    let bin = support::image_bin();
    kmsecrets_envtest::tools_dir();
    let dir = tempfile::Builder::new()
        .prefix("kmsecrets-peers-")
        .tempdir()
        .unwrap();
    let inputs = Inputs {
        n,
        dir: dir.path().to_path_buf(),
    };
    let mut rows = Vec::new();
    for c in &contenders {
        rows.push(run(c, &inputs, peers.as_ref(), &bin).await);
    }

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "== peers: N = {n} resources of 3 values over {} namespaces, created before the controller starts; \
         one fresh etcd + kube-apiserver v1.37.2 per row; {cores} cores ==",
        NAMESPACES.min(n)
    );
    println!(
        "| contender | all Secrets present s | all Ready/Synced s | controller CPU s | CPU per resource ms | peak RSS MiB | kube-apiserver CPU s | etcd CPU s | API requests | per resource | content (sampled) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let secs = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
    for r in rows {
        let label = match r.timed_out {
            Some((s, rd)) => format!("{} (timed out: {s}/{} present, {rd} ready)", r.label, r.n),
            None => r.label.clone(),
        };
        let label = if r.restarts.is_empty() {
            label
        } else {
            format!(
                "{label} (crashed and restarted {}×: {})",
                r.restarts.len(),
                r.restarts[0]
            )
        };
        println!(
            "| {label} | {} | {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} |",
            secs(r.present),
            secs(r.ready),
            r.cpu,
            1000.0 * r.cpu / r.n as f64,
            r.rss_mib,
            r.apiserver_cpu,
            r.etcd_cpu,
            r.requests,
            r.requests as f64 / r.n as f64,
            r.content,
        );
    }
}
