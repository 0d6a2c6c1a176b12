//! The load scenario shared by `examples/load.rs` (prints numbers) and
//! `tests/load.rs` (smaller, generous sanity bounds).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::core::PartialObjectMeta;

use super::{EncryptedSecret, client, esec, install_crd};

/// Requests in flight while loading.
const CONCURRENCY: usize = 32;

#[derive(Debug)]
pub struct Report {
    pub objects_per_kind: usize,
    pub load_time: Duration,
    pub list_secrets: Duration,
    pub list_esecs: Duration,
    pub list_secrets_metadata: Duration,
    pub list_label_selected: Duration,
    pub watchers: usize,
    pub watch_fanout: Duration,
    pub list_secrets_raw: Duration,
    pub list_esecs_raw: Duration,
    pub rss_before_kib: u64,
    pub rss_loaded_kib: u64,
    pub rss_after_kib: u64,
}

/// Resident set size of this process (server and client share it).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

pub async fn run(n: usize, watchers: usize) -> Report {
    let rss_before_kib = rss_kib();
    let server = super::start().await;
    let client = client(&server).await;
    install_crd(&client).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let esecs: Api<EncryptedSecret> = Api::namespaced(client.clone(), "default");

    let t = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(CONCURRENCY, |i| {
            let secrets = secrets.clone();
            let esecs = esecs.clone();
            async move {
                let mut s = Secret::default();
                s.metadata.name = Some(format!("secret-{i:05}"));
                s.metadata.labels = Some([("shard".to_string(), (i % 10).to_string())].into());
                s.string_data = Some([("password".to_string(), format!("value-{i}"))].into());
                secrets.create(&PostParams::default(), &s).await.unwrap();
                let e = esec(&format!("esec-{i:05}"), &[("password", "Y2lwaGVydGV4dA==")]);
                esecs.create(&PostParams::default(), &e).await.unwrap();
            }
        })
        .await;
    let load_time = t.elapsed();
    let rss_loaded_kib = rss_kib();

    // Server side only: the response body as text, no typed decoding.
    let raw = |path: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::get(path).body(Vec::new()).unwrap();
            let t = Instant::now();
            let body = client.request_text(req).await.unwrap();
            assert!(body.len() > 1000);
            t.elapsed()
        }
    };
    let list_secrets_raw = raw("/api/v1/namespaces/default/secrets").await;
    let list_esecs_raw =
        raw("/apis/kmsecrets.dev/v1alpha1/namespaces/default/encryptedsecrets").await;

    let t = Instant::now();
    let list = secrets.list(&ListParams::default()).await.unwrap();
    let list_secrets = t.elapsed();
    assert_eq!(list.items.len(), n);
    let t = Instant::now();
    let list = esecs.list(&ListParams::default()).await.unwrap();
    let list_esecs = t.elapsed();
    assert_eq!(list.items.len(), n);
    let meta: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    let list = meta.list(&ListParams::default()).await.unwrap();
    let list_secrets_metadata = t.elapsed();
    assert_eq!(list.items.len(), n);
    let t = Instant::now();
    let list = secrets
        .list(&ListParams::default().labels("shard=3"))
        .await
        .unwrap();
    let list_label_selected = t.elapsed();
    assert_eq!(list.items.len(), (0..n).filter(|i| i % 10 == 3).count());

    // Watchers start at the current version, then one write fans out.
    let rv = list.metadata.resource_version.clone().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let esecs = esecs.clone();
        let seen = seen.clone();
        let rv = rv.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = esecs
                .watch(&kube::api::WatchParams::default().timeout(60), &rv)
                .await
                .unwrap()
                .boxed();
            while let Some(Ok(ev)) = s.next().await {
                if let kube::api::WatchEvent::Added(o) = ev
                    && o.name_any() == "fanout"
                {
                    seen.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }));
    }
    // Each watch request must be registered before the write; poll the counter.
    super::eventually("watchers connected", || async {
        (server.counters().get("watch", "encryptedsecrets") as usize >= watchers).then_some(())
    })
    .await;
    let t = Instant::now();
    esecs
        .create(&PostParams::default(), &esec("fanout", &[]))
        .await
        .unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let watch_fanout = t.elapsed();
    assert_eq!(seen.load(Ordering::SeqCst), watchers);

    let rss_after_kib = rss_kib();
    server.shutdown().await;
    Report {
        objects_per_kind: n,
        load_time,
        list_secrets,
        list_esecs,
        list_secrets_metadata,
        list_label_selected,
        watchers,
        watch_fanout,
        list_secrets_raw,
        list_esecs_raw,
        rss_before_kib,
        rss_loaded_kib,
        rss_after_kib,
    }
}
