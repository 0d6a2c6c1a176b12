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

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kmsecrets::api::EncryptedSecret;
use kmsecrets_testserver::TestServer;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use support::{Controller, kmsecrets_bin, metric, metrics, run};

const NS: &str = "bench";

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
    let client = kmsecrets::cli::controller::kube_client(Some(&kubeconfig), Default::default())
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
            "--metrics-secure=false",
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
        let mut stream = watcher(watch_api, watcher::Config::default())
            .default_backoff()
            .boxed();
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
