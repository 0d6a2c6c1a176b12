//! Our KMS layer next to aws-sdk-kms's own adaptive retry mode, against the
//! same moving, shared quota (printed, not asserted).
//!
//! ```sh
//! cargo run --release --example limiter_bench               # every scenario, concurrency 8 and 64
//! cargo run --release --example limiter_bench -- 1 3        # only scenarios 1 and 3
//! ```
//!
//! The KMS peer is local-kms (the pinned Go build; real KMS JSON protocol)
//! behind the test suite's quota proxy: Decrypt/GenerateDataKey beyond the
//! quota get `ThrottlingException`, as KMS answers. The quota is a token
//! bucket holding one second of requests (KMS's per-second quotas).
//!
//! Each row is one client decrypting N distinct data keys at concurrency C:
//! - **ours**: [`kmsecrets::kms::layer::Kms`] with its adaptive limiter
//!   (ceiling `--kms-qps` 1000: a ceiling, not a guess), its retries
//!   (8 attempts, full-jitter backoff) and no cache hits (distinct keys);
//! - **sdk adaptive**: a plain `aws_sdk_kms::Client` with
//!   `RetryConfig::adaptive()` (the SDK's client-side rate limiter, CUBIC)
//!   and 8 attempts; our limiter is not involved.
//!
//! Scenarios (DESIGN issue 13):
//! 1. quota 20/s, 200 data keys (bound 10 s);
//! 2. quota 100/s, dropping to 30/s for 20 s (from t = 5 s), back to 100/s;
//!    3,000 data keys (bound 44 s); also the seconds from the restore until
//!    the client's success rate (1 s window) reaches 90 of 100/s;
//! 3. quota 100/s shared with a second, independent client that sends
//!    50 requests/s throughout (it never retries); 1,000 data keys (bound
//!    20 s: what is left of the quota).
//!
//! Columns: attempts (requests that reached the quota), throttled (share of
//! them), time ÷ bound (bound = the time an ideal client needs at the
//! quota it can have).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::primitives::Blob;
use futures::StreamExt;
use kmsecrets::kms::aws::AwsOptions;
use kmsecrets::kms::layer::{Kms, LayerConfig, Providers};
use kmsecrets::kms::{Provider, WrappedKey};
use kmsecrets::metrics::Metrics;
use kmsecrets_envtest::peers::{KmsProxy, LocalKms};

const REGION: &str = "us-east-1";

fn creds() -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new("bench", "bench", None, None, "limiter-bench")
}

fn sdk(endpoint: &str, retry: RetryConfig) -> aws_sdk_kms::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_kms::config::Builder::new()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_sdk_kms::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(creds())
        .retry_config(retry)
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

fn context() -> BTreeMap<String, String> {
    [("bench".to_string(), "limiter".to_string())].into()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Client {
    Ours,
    SdkAdaptive,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Ours => "ours",
            Client::SdkAdaptive => "sdk adaptive",
        }
    }
}

struct Scenario {
    id: u8,
    what: &'static str,
    keys: usize,
    bound: f64,
    /// (seconds from the start, quota)
    schedule: Vec<(f64, f64)>,
    /// A second client's steady request rate on the same quota.
    competitor: Option<f64>,
    /// For the recovery column: when the quota is restored, and to what.
    restore: Option<(f64, f64)>,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            id: 1,
            what: "quota 20/s, 200 DEKs",
            keys: 200,
            bound: 200.0 / 20.0,
            schedule: vec![(0.0, 20.0)],
            competitor: None,
            restore: None,
        },
        Scenario {
            id: 2,
            what: "quota 100 → 30 (20 s) → 100/s, 3,000 DEKs",
            keys: 3000,
            // 5 s at 100 (500), 20 s at 30 (600), 1,900 at 100 (19 s)
            bound: 44.0,
            schedule: vec![(0.0, 100.0), (5.0, 30.0), (25.0, 100.0)],
            competitor: None,
            restore: Some((25.0, 100.0)),
        },
        Scenario {
            id: 3,
            what: "quota 100/s, half taken by another client, 1,000 DEKs",
            keys: 1000,
            bound: 1000.0 / 50.0,
            schedule: vec![(0.0, 100.0)],
            competitor: Some(50.0),
            restore: None,
        },
    ]
}

struct Row {
    attempts: u64,
    throttled: u64,
    secs: f64,
    failed: usize,
    recovery: Option<f64>,
}

/// Seconds from `at` until the success rate over a trailing 1 s window
/// first reaches 90% of `rate`.
fn recovery(successes: &[f64], at: f64, rate: f64) -> Option<f64> {
    let mut s: Vec<f64> = successes.to_vec();
    s.sort_by(f64::total_cmp);
    let need = (0.9 * rate).ceil() as usize;
    // window ending at s[i]: successes in (s[i] - 1, s[i]]
    let mut lo = 0;
    for hi in 0..s.len() {
        while s[hi] - s[lo] > 1.0 {
            lo += 1;
        }
        if s[hi] >= at + 1.0 && hi + 1 - lo >= need {
            return Some(s[hi] - at - 1.0).map(|r| r.max(0.0));
        }
    }
    None
}

async fn run(
    sc: &Scenario,
    client: Client,
    conc: usize,
    kms_port: u16,
    key_id: &str,
    blobs: &Arc<Vec<Vec<u8>>>,
) -> Row {
    let proxy = KmsProxy::start(kms_port);
    proxy.set_quota(Some(sc.schedule[0].1));
    let competitor_proxy = sc
        .competitor
        .map(|_| KmsProxy::start_sharing_quota(kms_port, &proxy));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    // the quota schedule
    let sched = {
        let changes: Vec<(f64, f64)> = sc.schedule[1..].to_vec();
        let proxy_quota = Arc::new(proxy_handle(&proxy));
        tokio::spawn(async move {
            for (at, q) in changes {
                tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
                proxy_quota(q);
            }
        })
    };
    // the independent client: a steady rate, no retries
    let comp = match (&competitor_proxy, sc.competitor) {
        (Some(cp), Some(rate)) => {
            let c = sdk(&cp.url(), RetryConfig::disabled());
            let (stop, blobs, key) = (stop.clone(), blobs.clone(), key_id.to_string());
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    tick.tick().await;
                    let c = c.clone();
                    let blob = blobs[i % blobs.len()].clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        let mut req = c.decrypt().ciphertext_blob(Blob::new(blob)).key_id(key);
                        for (k, v) in context() {
                            req = req.encryption_context(k, v);
                        }
                        let _ = req.send().await;
                    });
                    i += 1;
                }
            }))
        }
        _ => None,
    };
    let successes = Arc::new(Mutex::new(Vec::with_capacity(sc.keys)));
    let failed = match client {
        Client::Ours => {
            let kms = Kms::new(
                Providers::new(AwsOptions {
                    region: Some(REGION.into()),
                    endpoint: Some(proxy.url()),
                    static_credentials: Some(creds()),
                    ..Default::default()
                }),
                LayerConfig {
                    qps: 1000.0,
                    ..LayerConfig::default()
                },
                Arc::new(Metrics::new()),
            );
            let tracer = std::env::var("TRACE").is_ok().then(|| {
                let (kms, stop) = (kms.clone(), stop.clone());
                let injected = proxy_counter(&proxy);
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        eprintln!(
                            "t={:.2} rate={:.1} throttled={}",
                            start.elapsed().as_secs_f64(),
                            kms.limiter().rate(),
                            injected()
                        );
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                })
            });
            let _tracer = tracer;
            futures::stream::iter(0..sc.keys)
                .map(|i| {
                    let (kms, blobs, successes) = (kms.clone(), blobs.clone(), successes.clone());
                    let w = WrappedKey::symmetric(Provider::AwsKms, key_id, blobs[i].clone());
                    async move {
                        let ok = kms.unwrap(&w, &context()).await.is_ok();
                        if ok {
                            successes
                                .lock()
                                .unwrap()
                                .push(start.elapsed().as_secs_f64());
                        }
                        ok
                    }
                })
                .buffer_unordered(conc)
                .filter(|ok| futures::future::ready(!*ok))
                .count()
                .await
        }
        Client::SdkAdaptive => {
            let c = sdk(&proxy.url(), RetryConfig::adaptive().with_max_attempts(8));
            futures::stream::iter(0..sc.keys)
                .map(|i| {
                    let (c, blobs, successes) = (c.clone(), blobs.clone(), successes.clone());
                    let key = key_id.to_string();
                    async move {
                        let mut req = c
                            .decrypt()
                            .ciphertext_blob(Blob::new(blobs[i].clone()))
                            .key_id(key);
                        for (k, v) in context() {
                            req = req.encryption_context(k, v);
                        }
                        let ok = req.send().await.is_ok();
                        if ok {
                            successes
                                .lock()
                                .unwrap()
                                .push(start.elapsed().as_secs_f64());
                        }
                        ok
                    }
                })
                .buffer_unordered(conc)
                .filter(|ok| futures::future::ready(!*ok))
                .count()
                .await
        }
    };
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sched.abort();
    if let Some(c) = comp {
        let _ = c.await;
    }
    let s = successes.lock().unwrap().clone();
    Row {
        attempts: proxy.forwarded() + proxy.injected(),
        throttled: proxy.injected(),
        secs,
        failed,
        recovery: sc.restore.and_then(|(at, rate)| recovery(&s, at, rate)),
    }
}

/// Throttles answered by `proxy` so far, readable from another task.
fn proxy_counter(proxy: &KmsProxy) -> impl Fn() -> u64 + Send + Sync + 'static {
    let st = proxy.counters();
    move || st.injected()
}

/// A `Send` handle that moves the proxy's quota (the proxy itself stays
/// with the run).
fn proxy_handle(proxy: &KmsProxy) -> impl Fn(f64) + Send + Sync + 'static {
    let shadow = KmsProxy::start_sharing_quota(0, proxy);
    move |q| shadow.change_quota(q)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pick: Vec<u8> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let kms = LocalKms::start();
    let setup = sdk(&kms.url(), RetryConfig::standard());
    let key_id = setup
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let most = scenarios().iter().map(|s| s.keys).max().unwrap();
    let t = Instant::now();
    let blobs: Vec<Vec<u8>> = futures::stream::iter(0..most)
        .map(|_| {
            let (setup, key_id) = (setup.clone(), key_id.clone());
            async move {
                let mut req = setup
                    .generate_data_key_without_plaintext()
                    .key_id(key_id)
                    .number_of_bytes(32);
                for (k, v) in context() {
                    req = req.encryption_context(k, v);
                }
                req.send()
                    .await
                    .unwrap()
                    .ciphertext_blob
                    .unwrap()
                    .into_inner()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let blobs = Arc::new(blobs);
    eprintln!(
        "{} data keys from local-kms in {:?}",
        blobs.len(),
        t.elapsed()
    );

    println!(
        "| scenario | concurrency | client | attempts | throttled | time ÷ bound | recovery to 90% |"
    );
    println!("|---|---|---|---|---|---|---|");
    for sc in scenarios() {
        if !pick.is_empty() && !pick.contains(&sc.id) {
            continue;
        }
        for conc in [8usize, 64] {
            for client in [Client::Ours, Client::SdkAdaptive] {
                let r = run(&sc, client, conc, kms.port, &key_id, &blobs).await;
                let rec = match (sc.restore, r.recovery) {
                    (None, _) => "—".to_string(),
                    (Some(_), Some(s)) => format!("{s:.1} s"),
                    (Some(_), None) => "never".to_string(),
                };
                let failed = if r.failed > 0 {
                    format!(" ({} failed)", r.failed)
                } else {
                    String::new()
                };
                println!(
                    "| {}. {} | {conc} | {} | {} | {} ({:.1}%) | {:.2}{failed} | {rec} |",
                    sc.id,
                    sc.what,
                    client.name(),
                    r.attempts,
                    r.throttled,
                    100.0 * r.throttled as f64 / r.attempts.max(1) as f64,
                    r.secs / sc.bound,
                );
                // let the quota's bucket and local-kms settle between runs
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
