//! KMS layer benchmark (real time): unwrap 10,000 resources over 1,000
//! distinct data keys at concurrency 64 against a fake KMS with 5 ms latency
//! and a 100 requests/s quota — with the layer (cache + single-flight +
//! adaptive limiter) and, side by side, with cache and coalescing off.
//!
//! `cargo bench --bench kms_layer` (add `-- --quick` for a 10x smaller run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kmsecrets::kms::fake::FakeKms;
use kmsecrets::kms::layer::{Kms, LayerConfig, Providers};
use kmsecrets::kms::{EncryptionContext, KmsProvider, Provider, WrappedKey};
use kmsecrets::metrics::Metrics;

const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/bench";
const QUOTA: f64 = 100.0;

struct Run {
    label: &'static str,
    calls: u64,
    throttled: u64,
    wall: Duration,
    ok: usize,
}

async fn run(
    label: &'static str,
    cfg: LayerConfig,
    keys: Arc<Vec<(WrappedKey, EncryptionContext)>>,
    resources: usize,
) -> Run {
    let fake = Arc::new(
        FakeKms::new(Provider::AwsKms, &[KEY])
            .with_latency(Duration::from_millis(5))
            .with_quota(QUOTA, 10.0),
    );
    let kms = Kms::new(
        Providers::new(Default::default()).with(fake.clone()),
        cfg,
        Arc::new(Metrics::new()),
    );
    let n = keys.len();
    let start = Instant::now();
    let ok = futures::stream::iter(0..resources)
        .map(|i| {
            let (kms, keys) = (kms.clone(), keys.clone());
            async move {
                let (w, c) = &keys[(i * 7919) % n];
                kms.unwrap(w, c).await.is_ok()
            }
        })
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    Run {
        label,
        calls: fake.total_calls(),
        throttled: fake.throttled(),
        wall: start.elapsed(),
        ok,
    }
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (resources, deks) = if quick { (1_000, 100) } else { (10_000, 1_000) };
    let generator = FakeKms::new(Provider::AwsKms, &[KEY]);
    let mut keys = Vec::new();
    for i in 0..deks {
        let c: EncryptionContext = [
            ("kmsecrets.dev/scope".to_string(), "cluster".to_string()),
            ("i".into(), i.to_string()),
        ]
        .into();
        keys.push((generator.generate_data_key(KEY, &c).await.unwrap().1, c));
    }
    let keys = Arc::new(keys);
    let bound = deks as f64 / QUOTA;
    println!(
        "workload: {resources} unwraps over {deks} distinct DEKs, concurrency 64; fake KMS 5 ms latency, quota {QUOTA}/s (burst 10)"
    );
    println!("quota bound for the layer = distinct DEKs / quota = {bound:.1} s\n");
    // Configured above the quota on purpose (a quota shared with other KMS
    // users is never known exactly): the adaptive limiter must find it.
    let layer_cfg = LayerConfig {
        qps: 200.0,
        burst: 20,
        ..LayerConfig::default()
    };
    let naive_cfg = LayerConfig {
        cache_ttl: Duration::ZERO,
        coalesce: false,
        ..layer_cfg.clone()
    };
    let a = run(
        "layer (cache + single-flight + AIMD)",
        layer_cfg,
        keys.clone(),
        resources,
    )
    .await;
    let b = run(
        "naive (cache and coalescing off)",
        naive_cfg,
        keys.clone(),
        resources,
    )
    .await;
    println!(
        "{:<40} {:>8} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "run", "ok", "calls", "throttled", "thr %", "wall s", "÷bound"
    );
    for r in [&a, &b] {
        println!(
            "{:<40} {:>8} {:>10} {:>10} {:>9.2}% {:>12.2} {:>8.2}",
            r.label,
            r.ok,
            r.calls,
            r.throttled,
            100.0 * r.throttled as f64 / r.calls.max(1) as f64,
            r.wall.as_secs_f64(),
            r.wall.as_secs_f64() / bound
        );
    }
    println!(
        "\nKMS calls: {} vs {} naive ({:.1}x fewer); wall time {:.2}x faster",
        a.calls,
        b.calls,
        b.calls as f64 / a.calls.max(1) as f64,
        b.wall.as_secs_f64() / a.wall.as_secs_f64()
    );
    let goals = a.calls as usize <= deks + deks / 50
        && a.wall.as_secs_f64() <= 1.15 * bound
        && a.throttled as f64 <= 0.02 * a.calls as f64;
    println!(
        "goals (calls ≈ {deks}, wall ≤ 1.15 × bound, throttled ≤ 2%): {}",
        if goals { "MET" } else { "NOT MET" }
    );
}
