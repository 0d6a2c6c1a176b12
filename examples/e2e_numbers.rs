//! End-to-end numbers, printed (not asserted): the real `kmsecrets
//! controller` binary against the in-memory API server, local KMS provider.
//!
//! ```sh
//! cargo run --release --example e2e_numbers            # 1,000 resources, 100 DEKs, 100 timed applies
//! cargo run --release --example e2e_numbers -- 200 20 50   # smaller: RESOURCES DEKS APPLIES
//! ```
//!
//! 1. Cold start: RESOURCES EncryptedSecrets sharing DEKS data keys exist
//!    before the controller starts (`--scope namespace`: one wrapped DEK can
//!    be copied under many names in one namespace). Reports time to all
//!    Secrets present and Ready, and KMS Decrypt calls (goal: = DEKS).
//! 2. Controller RSS (VmRSS) with RESOURCES EncryptedSecrets materialised.
//! 3. Apply → Secret present: APPLIES sequential creates with a warm DEK
//!    cache, observed through a watch; p50 / p99 / max.
//!
//! Builds `kmsecrets` in the same profile first (examples do not get the
//! binary built for them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kmsecrets::api::EncryptedSecret;
use kmsecrets_testserver::TestServer;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

const NS: &str = "bench";

fn kmsecrets_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/examples/e2e_numbers → target/<profile>/kmsecrets
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bin", "kmsecrets", "--manifest-path"])
        .arg(&manifest);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build --bin kmsecrets");
    assert!(status.success(), "cargo build --bin kmsecrets failed");
    let bin = profile_dir.join("kmsecrets");
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

fn run(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("run kmsecrets");
    assert!(
        out.status.success(),
        "kmsecrets {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Controller {
    child: Child,
    log: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn http_addr(&self) -> SocketAddr {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if let Some(addr) = logs
                .lines()
                .filter(|l| l.contains("serving /healthz"))
                .find_map(|l| {
                    let at = l.find("\"addr\":\"")? + 8;
                    let end = l[at..].find('"')? + at;
                    l[at..end].parse().ok()
                })
            {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no HTTP address in the controller log:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

/// Sum of the samples of `name` whose labels include every pair of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbls) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| lbls.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn count_ready(api: &Api<EncryptedSecret>) -> usize {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|es| {
            kmsecrets::controller::status::ready_condition(es.status.as_ref())
                .is_some_and(|c| c.status == "True")
        })
        .count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("numeric arguments: RESOURCES DEKS APPLIES")
        })
        .collect();
    let resources = args.first().copied().unwrap_or(1000);
    let deks = args.get(1).copied().unwrap_or(100).clamp(1, resources);
    let applies = args.get(2).copied().unwrap_or(100);

    let bin = kmsecrets_bin();
    let server = TestServer::start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let key = dir.path().join("local.key");
    run(&bin, &["keygen", key.to_str().unwrap()]);
    let client = kmsecrets::cli::controller::kube_client(Some(&kubeconfig))
        .await
        .unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &kmsecrets::api::crd())
        .await
        .unwrap();
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    // DEKS distinct data keys, namespace scope (renames allowed).
    let key_arg = format!("file:{}", key.display());
    let t = Instant::now();
    let templates: Vec<EncryptedSecret> = (0..deks)
        .map(|i| {
            let json = run(
                &bin,
                &[
                    "encrypt",
                    "--key",
                    &key_arg,
                    "--scope",
                    "namespace",
                    "--from-literal",
                    &format!("password=value-{i}"),
                    "--from-literal",
                    "username=bench",
                    "--name",
                    "template",
                    "--namespace",
                    NS,
                    "-o",
                    "json",
                ],
            );
            serde_json::from_str(&json).unwrap()
        })
        .collect();
    eprintln!("encrypted {deks} templates in {:?}", t.elapsed());

    let es_api: Api<EncryptedSecret> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let named = |i: usize, prefix: &str| {
        let mut es = templates[i % deks].clone();
        es.metadata.name = Some(format!("{prefix}-{i:05}"));
        es
    };
    let t = Instant::now();
    futures::stream::iter(0..resources)
        .map(|i| {
            let api = es_api.clone();
            let es = named(i, "es");
            async move { api.create(&PostParams::default(), &es).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    eprintln!("created {resources} EncryptedSecrets in {:?}", t.elapsed());

    // 1. cold start
    let log = dir.path().join("controller.log");
    let file = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let child = Command::new(&bin)
        .args(["controller", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--local-key",
        ])
        .arg(&key)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let ctl = Controller { child, log };
    let addr = ctl.http_addr();
    let mut all_secrets = None;
    loop {
        let n = secrets
            .list_metadata(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if n >= resources && all_secrets.is_none() {
            all_secrets = Some(started.elapsed());
        }
        if all_secrets.is_some() && count_ready(&es_api).await >= resources {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "cold start did not finish: {n} Secrets"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_ready = started.elapsed();
    let m = metrics(addr);
    let decrypt_ok = metric(
        &m,
        "kmsecrets_kms_requests_total",
        &[("operation", "decrypt"), ("result", "success")],
    );
    let kms_all = metric(&m, "kmsecrets_kms_requests_total", &[]);
    let hits = metric(&m, "kmsecrets_dek_cache_hits_total", &[]);
    let misses = metric(&m, "kmsecrets_dek_cache_misses_total", &[]);
    let coalesced = metric(&m, "kmsecrets_dek_cache_coalesced_total", &[]);

    // 2. RSS with every resource materialised (let the post-sync status
    // events drain first: wait for one quiet second of reconciles).
    let mut last = metric(&metrics(addr), "kmsecrets_reconcile_total", &[]);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = metric(&metrics(addr), "kmsecrets_reconcile_total", &[]);
        if now == last {
            break;
        }
        last = now;
    }
    let rss_full = ctl.rss_kib();

    // 3. apply → Secret present, warm DEK cache (template 0's DEK is cached)
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch_api = secrets.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(watch_api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = ev {
                let _ = tx.send((s.name_any(), Instant::now()));
            }
        }
    });
    let mut lat = Vec::with_capacity(applies);
    for i in 0..applies {
        let mut es = named(0, "lat");
        es.metadata.name = Some(format!("lat-{i:05}"));
        let name = es.name_any();
        let t0 = Instant::now();
        es_api.create(&PostParams::default(), &es).await.unwrap();
        loop {
            let (n, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("Secret did not appear within 60 s")
                .unwrap();
            if n == name {
                lat.push(at.saturating_duration_since(t0));
                break;
            }
        }
    }
    watch.abort();
    lat.sort();
    let m2 = metrics(addr);
    let decrypt_after = metric(
        &m2,
        "kmsecrets_kms_requests_total",
        &[("operation", "decrypt"), ("result", "success")],
    );

    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "== kmsecrets e2e numbers ({profile} build, controller as a child process, local KMS provider, in-memory API server on the same machine) =="
    );
    println!(
        "cold start, {resources} EncryptedSecrets sharing {deks} DEKs: all Secrets present {:.2?}, all Ready {:.2?}",
        all_secrets.unwrap(),
        all_ready
    );
    println!(
        "  KMS Decrypt calls (success): {decrypt_ok} (goal {deks}); all KMS requests {kms_all}; DEK cache hits {hits}, misses {misses}, coalesced {coalesced}"
    );
    println!(
        "controller RSS with {resources} EncryptedSecrets/Secrets: {:.1} MiB",
        rss_full as f64 / 1024.0
    );
    println!(
        "apply → Secret present, warm DEK cache, {applies} sequential creates: p50 {:.1?}, p99 {:.1?}, max {:.1?} (extra KMS decrypts: {})",
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
        decrypt_after - decrypt_ok
    );
    println!(
        "controller RSS after {} resources: {:.1} MiB",
        resources + applies,
        ctl.rss_kib() as f64 / 1024.0
    );
    drop(ctl);
    server.shutdown().await;
}
