//! The KMS resilience layer against the fake provider, under tokio paused
//! time: cache, single-flight, limiter, retries, metrics. Deterministic: no
//! wall-clock sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kmsecrets::envelope::Dek;
use kmsecrets::kms::fake::{FakeKms, KeyState};
use kmsecrets::kms::layer::{Kms, LayerConfig, Providers, backoff_delay};
use kmsecrets::kms::{
    Algorithm, EncryptionContext, KmsError, KmsProvider, Operation, Provider, WrappedKey,
};
use kmsecrets::metrics::Metrics;
use kmsecrets::resource;
use kmsecrets::wrap::{self, KeyRef};
use rand::SeedableRng;

const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/fake";

fn ctx(i: usize) -> EncryptionContext {
    [
        ("kmsecrets.dev/scope".to_string(), "cluster".to_string()),
        ("n".to_string(), i.to_string()),
    ]
    .into()
}

fn layer(fake: Arc<FakeKms>, cfg: LayerConfig) -> Kms {
    let providers = Providers::new(Default::default()).with(fake);
    Kms::new(providers, cfg, Arc::new(Metrics::new()))
}

fn fast_cfg() -> LayerConfig {
    LayerConfig {
        qps: 1e6,
        burst: 1_000_000,
        ..LayerConfig::default()
    }
}

async fn wrapped(fake: &FakeKms, n: usize) -> Vec<(WrappedKey, EncryptionContext)> {
    let mut out = Vec::new();
    for i in 0..n {
        let c = ctx(i);
        let (_, w) = fake.generate_data_key(KEY, &c).await.unwrap();
        out.push((w, c));
    }
    out
}

fn metric(kms: &Kms, line_prefix: &str) -> f64 {
    let text = kms.metrics().render();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test(start_paused = true)]
async fn thousand_concurrent_unwraps_make_one_call() {
    let fake =
        Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]).with_latency(Duration::from_millis(5)));
    let (w, c) = wrapped(&fake, 1).await.remove(0);
    let base = fake.calls(Operation::Decrypt);
    let kms = layer(fake.clone(), fast_cfg());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (kms, w, c) = (kms.clone(), w.clone(), c.clone());
            tokio::spawn(async move { kms.unwrap(&w, &c).await.map(|d| *d.expose()) })
        })
        .collect();
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        keys.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(keys.len(), 1, "every waiter gets the same DEK");
    assert_eq!(fake.calls(Operation::Decrypt) - base, 1);
    assert_eq!(metric(&kms, "kmsecrets_dek_cache_misses_total"), 1.0);
    assert_eq!(
        metric(&kms, "kmsecrets_dek_cache_coalesced_total")
            + metric(&kms, "kmsecrets_dek_cache_hits_total"),
        999.0
    );
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_over_thousand_deks_make_thousand_calls() {
    let fake =
        Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]).with_latency(Duration::from_millis(5)));
    let keys = Arc::new(wrapped(&fake, 1000).await);
    let base = fake.calls(Operation::Decrypt);
    let kms = layer(fake.clone(), fast_cfg());
    let ok = futures::stream::iter(0..10_000usize)
        .map(|i| {
            let (kms, keys) = (kms.clone(), keys.clone());
            async move {
                // interleave so the same DEK is requested concurrently too
                let (w, c) = &keys[(i * 7919) % 1000];
                kms.unwrap(w, c).await.is_ok()
            }
        })
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(ok, 10_000);
    assert_eq!(fake.calls(Operation::Decrypt) - base, 1000);
    assert_eq!(kms.cache_len(), 1000);
    assert_eq!(metric(&kms, "kmsecrets_dek_cache_entries"), 1000.0);
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_refetches_and_ttl_zero_disables() {
    let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]));
    let (w, c) = wrapped(&fake, 1).await.remove(0);
    let base = fake.calls(Operation::Decrypt);
    let kms = layer(
        fake.clone(),
        LayerConfig {
            cache_ttl: Duration::from_secs(60),
            ..fast_cfg()
        },
    );
    kms.unwrap(&w, &c).await.unwrap();
    kms.unwrap(&w, &c).await.unwrap();
    assert_eq!(fake.calls(Operation::Decrypt) - base, 1);
    tokio::time::advance(Duration::from_secs(61)).await;
    kms.unwrap(&w, &c).await.unwrap();
    assert_eq!(fake.calls(Operation::Decrypt) - base, 2);
    assert_eq!(
        metric(
            &kms,
            "kmsecrets_dek_cache_evictions_total{reason=\"expired\"}"
        ),
        1.0
    );

    let off = layer(
        fake.clone(),
        LayerConfig {
            cache_ttl: Duration::ZERO,
            ..fast_cfg()
        },
    );
    let before = fake.calls(Operation::Decrypt);
    for _ in 0..3 {
        off.unwrap(&w, &c).await.unwrap();
    }
    assert_eq!(fake.calls(Operation::Decrypt) - before, 3);
    assert_eq!(off.cache_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn lru_capacity_evicts_least_recently_used() {
    let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]));
    let ks = wrapped(&fake, 3).await;
    let kms = layer(
        fake.clone(),
        LayerConfig {
            cache_size: 2,
            ..fast_cfg()
        },
    );
    let calls = || fake.calls(Operation::Decrypt);
    let base = calls();
    kms.unwrap(&ks[0].0, &ks[0].1).await.unwrap(); // A
    kms.unwrap(&ks[1].0, &ks[1].1).await.unwrap(); // B
    kms.unwrap(&ks[0].0, &ks[0].1).await.unwrap(); // A is now most recent
    kms.unwrap(&ks[2].0, &ks[2].1).await.unwrap(); // C evicts B
    assert_eq!(calls() - base, 3);
    kms.unwrap(&ks[0].0, &ks[0].1).await.unwrap(); // A still cached
    assert_eq!(calls() - base, 3);
    kms.unwrap(&ks[1].0, &ks[1].1).await.unwrap(); // B was evicted
    assert_eq!(calls() - base, 4);
    assert_eq!(
        metric(
            &kms,
            "kmsecrets_dek_cache_evictions_total{reason=\"capacity\"}"
        ),
        2.0
    );
    assert_eq!(kms.cache_len(), 2);
}

/// With a cache of 100, a tenant that
/// unwraps 120 data keys evicts its own, not the victim's; the victim's next
/// open is a cache hit. And a tenant alone may still use the whole cache.
#[tokio::test(start_paused = true)]
async fn a_flooding_tenant_evicts_its_own_data_keys_not_others() {
    let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]));
    let ks = wrapped(&fake, 123).await;
    let kms = layer(
        fake.clone(),
        LayerConfig {
            cache_size: 100,
            ..fast_cfg()
        },
    );
    let calls = || fake.calls(Operation::Decrypt);
    let open = async |kms: &Kms, i: usize, tenant: &str| {
        kms.unwrap_any(&[ks[i].0.clone()], &ks[i].1, tenant)
            .await
            .unwrap();
    };
    for v in 0..3 {
        open(&kms, v, "victim").await;
    }
    for a in 3..123 {
        open(&kms, a, "attacker").await;
    }
    assert_eq!(kms.cache_len(), 100);
    let base = calls();
    for v in 0..3 {
        open(&kms, v, "victim").await;
    }
    assert_eq!(calls() - base, 0, "the victim's data keys stayed cached");
    // the attacker's oldest went instead
    open(&kms, 3, "attacker").await;
    assert_eq!(calls() - base, 1);

    // alone, a tenant fills the whole cache
    let alone = layer(
        fake.clone(),
        LayerConfig {
            cache_size: 100,
            ..fast_cfg()
        },
    );
    for a in 0..100 {
        open(&alone, a, "only").await;
    }
    let base = calls();
    for a in 0..100 {
        open(&alone, a, "only").await;
    }
    assert_eq!(calls() - base, 0);
}

#[tokio::test(start_paused = true)]
async fn errors_reach_every_waiter_and_are_not_cached() {
    let fake =
        Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]).with_latency(Duration::from_millis(5)));
    let (w, c) = wrapped(&fake, 1).await.remove(0);
    let base = fake.calls(Operation::Decrypt);
    let kms = layer(fake.clone(), fast_cfg());
    fake.fail_next(1, KmsError::AccessDenied("AccessDeniedException".into()));
    let results = futures::future::join_all((0..50).map(|_| kms.unwrap(&w, &c))).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(KmsError::AccessDenied(_))))
    );
    assert_eq!(
        fake.calls(Operation::Decrypt) - base,
        1,
        "one call, permanent error not retried"
    );
    assert!(
        kms.unwrap(&w, &c).await.is_ok(),
        "the next call tries again"
    );
    assert_eq!(fake.calls(Operation::Decrypt) - base, 2);
}

#[tokio::test(start_paused = true)]
async fn cancelled_caller_does_not_poison_the_flight() {
    let fake =
        Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]).with_latency(Duration::from_millis(50)));
    let (w, c) = wrapped(&fake, 1).await.remove(0);
    let base = fake.calls(Operation::Decrypt);
    let kms = layer(fake.clone(), fast_cfg());
    let first = tokio::time::timeout(Duration::from_millis(10), kms.unwrap(&w, &c)).await;
    assert!(first.is_err(), "the first caller gave up");
    let second = kms.unwrap(&w, &c).await;
    assert!(second.is_ok());
    assert_eq!(
        fake.calls(Operation::Decrypt) - base,
        1,
        "the flight went on and was shared"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_make_exactly_one_call() {
    for (state, reason) in [
        (KeyState::Disabled, "KmsKeyDisabled"),
        (KeyState::PendingDeletion, "KmsKeyDisabled"),
        (KeyState::AccessDenied, "KmsAccessDenied"),
    ] {
        let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]));
        let (w, c) = wrapped(&fake, 1).await.remove(0);
        fake.set_key_state(KEY, state);
        let base = fake.calls(Operation::Decrypt);
        let kms = layer(fake.clone(), fast_cfg());
        let err = kms.unwrap(&w, &c).await.err().expect("expected an error");
        assert_eq!(err.reason().as_str(), reason);
        assert!(!err.is_transient());
        assert_eq!(fake.calls(Operation::Decrypt) - base, 1, "{state:?}");
        assert_eq!(
            metric(&kms, "kmsecrets_kms_retries_total{operation=\"decrypt\"}"),
            0.0
        );
    }
    // wrong context = invalid ciphertext, not retried
    let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]));
    let (w, _) = wrapped(&fake, 1).await.remove(0);
    let base = fake.calls(Operation::Decrypt);
    let kms = layer(fake.clone(), fast_cfg());
    let err = kms
        .unwrap(&w, &ctx(99))
        .await
        .err()
        .expect("expected an error");
    assert!(matches!(err, KmsError::InvalidCiphertext(_)));
    assert_eq!(fake.calls(Operation::Decrypt) - base, 1);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_retry_with_backoff_then_give_up() {
    let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]));
    let (w, c) = wrapped(&fake, 1).await.remove(0);
    let base = fake.calls(Operation::Decrypt);
    let kms = layer(fake.clone(), fast_cfg());
    fake.fail_next(3, KmsError::Unavailable("KMSInternalException".into()));
    let start = tokio::time::Instant::now();
    kms.unwrap(&w, &c).await.unwrap();
    assert_eq!(fake.calls(Operation::Decrypt) - base, 4);
    assert_eq!(
        metric(&kms, "kmsecrets_kms_retries_total{operation=\"decrypt\"}"),
        3.0
    );
    assert_eq!(
        metric(
            &kms,
            "kmsecrets_kms_requests_total{operation=\"decrypt\",result=\"unavailable\"}"
        ),
        3.0
    );
    // base 100 ms: at most 100 + 200 + 400 ms of backoff
    assert!(start.elapsed() <= Duration::from_millis(700));

    let down = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]));
    let (w, c) = wrapped(&down, 1).await.remove(0);
    down.set_unavailable(true);
    let base = down.calls(Operation::Decrypt);
    let kms = layer(
        down.clone(),
        LayerConfig {
            max_attempts: 5,
            ..fast_cfg()
        },
    );
    let err = kms.unwrap(&w, &c).await.err().expect("expected an error");
    assert_eq!(err.reason().as_str(), "KmsUnavailable");
    assert_eq!(down.calls(Operation::Decrypt) - base, 5, "bounded attempts");
}

#[test]
fn backoff_is_exponential_with_full_jitter_and_capped() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let base = Duration::from_millis(100);
    let cap = Duration::from_secs(5);
    let mut prev_max = Duration::ZERO;
    for attempt in 0..10 {
        let ceiling = (base * 2u32.pow(attempt)).min(cap);
        let samples: Vec<Duration> = (0..2000)
            .map(|_| backoff_delay(attempt, base, cap, &mut rng))
            .collect();
        let max = *samples.iter().max().unwrap();
        let min = *samples.iter().min().unwrap();
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!(max <= ceiling, "attempt {attempt}: {max:?} > {ceiling:?}");
        assert!(max >= ceiling.mul_f64(0.95), "full range used");
        assert!(min <= ceiling.mul_f64(0.05), "full jitter reaches ~0");
        assert!(
            mean >= ceiling.mul_f64(0.4) && mean <= ceiling.mul_f64(0.6),
            "uniform"
        );
        assert!(max >= prev_max.mul_f64(0.95), "grows until the cap");
        prev_max = max;
    }
    assert!(prev_max <= cap);
    assert!(
        backoff_delay(200, base, cap, &mut rng) <= cap,
        "no overflow for huge attempts"
    );
}

/// Under a quota the adaptive limiter converges: after warm-up, throttled
/// attempts stay ≤ 2% while throughput stays near the quota.
#[tokio::test(start_paused = true)]
async fn limiter_converges_under_a_throttling_quota() {
    let fake = Arc::new(
        FakeKms::new(Provider::AwsKms, &[KEY])
            .with_latency(Duration::from_millis(5))
            .with_quota(100.0, 10.0),
    );
    let keys = Arc::new(wrapped(&FakeKms::new(Provider::AwsKms, &[KEY]), 3000).await);
    // configured twice as fast as the (unknown to us) quota
    let kms = layer(
        fake.clone(),
        LayerConfig {
            qps: 200.0,
            burst: 20,
            ..LayerConfig::default()
        },
    );
    let start = tokio::time::Instant::now();
    let warm = Arc::new(std::sync::Mutex::new(None));
    let ok = futures::stream::iter(0..3000usize)
        .map(|i| {
            let (kms, keys, fake, warm) = (kms.clone(), keys.clone(), fake.clone(), warm.clone());
            async move {
                let r = kms.unwrap(&keys[i].0, &keys[i].1).await.is_ok();
                if std::env::var("TRACE").is_ok() && i % 100 == 0 {
                    eprintln!(
                        "t={:.2} rate={:.1} calls={} thr={}",
                        start.elapsed().as_secs_f64(),
                        kms.limiter().rate(),
                        fake.total_calls(),
                        fake.throttled()
                    );
                }
                if start.elapsed() >= Duration::from_secs(3) {
                    warm.lock()
                        .unwrap()
                        .get_or_insert((fake.total_calls(), fake.throttled()));
                }
                r
            }
        })
        .buffer_unordered(64)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(ok, 3000, "every unwrap succeeded (throttles were retried)");
    let (calls0, thr0) = warm.lock().unwrap().unwrap();
    let calls = fake.total_calls() - calls0;
    let throttled = fake.throttled() - thr0;
    let ratio = throttled as f64 / calls as f64;
    eprintln!(
        "quota 100/s: {ok} unwraps in {elapsed:.1}s virtual, after warm-up {throttled}/{calls} throttled ({:.2}%), final rate {:.1}/s",
        ratio * 100.0,
        kms.limiter().rate()
    );
    assert!(
        ratio <= 0.02,
        "throttled after warm-up {:.2}% > 2%",
        ratio * 100.0
    );
    // 3000 calls at a 100/s quota need ≥ 29.9 s; stay within 20% of it.
    assert!(elapsed <= 30.0 * 1.2, "too slow: {elapsed:.1}s");
    assert!(
        metric(&kms, "kmsecrets_kms_throttled_total{operation=\"decrypt\"}") as u64
            == fake.throttled(),
        "every throttled attempt is counted"
    );
}

/// The vectors' test-only RSA key as a fake KMS asymmetric key.
fn rsa_fake(latency: Duration) -> (Arc<FakeKms>, kmsecrets::kms::sealing::SealingKey) {
    use rsa::pkcs8::DecodePrivateKey;
    const RSA_KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/rsa";
    let pem = include_str!("vectors/rsa-2048-test-only.pem");
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
    let sealing =
        kmsecrets::kms::sealing::SealingKey::new(RSA_KEY, private.to_public_key()).unwrap();
    let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]).with_latency(latency));
    fake.add_rsa_key(RSA_KEY, private);
    (fake, sealing)
}

fn copies_of(data_keys: Vec<kmsecrets::api::DataKey>) -> Vec<WrappedKey> {
    resource::wrapped_keys(&kmsecrets::api::EncryptedSecretSpec {
        scope: Default::default(),
        encryption_context: Default::default(),
        data_keys,
        encrypted_data: Default::default(),
        template: None,
        rollout_restart_targets: Vec::new(),
        deletion_policy: Default::default(),
    })
    .unwrap()
}

fn sealed_copy(
    s: &kmsecrets::kms::sealing::SealingKey,
    dek: &Dek,
    c: &EncryptionContext,
) -> WrappedKey {
    WrappedKey {
        provider: Provider::AwsKms,
        key_id: s.key_id().to_string(),
        algorithm: Algorithm::RsaesOaepSha256,
        ciphertext: s.wrap(dek, c),
    }
}

#[tokio::test(start_paused = true)]
async fn offline_sealed_copies_are_cached_and_coalesced_and_bound() {
    let (fake, sealing) = rsa_fake(Duration::from_millis(5));
    let kms = layer(fake.clone(), fast_cfg());
    let dek = Dek::generate();
    let w = sealed_copy(&sealing, &dek, &ctx(1));
    // 200 concurrent unwraps of one sealed copy: one asymmetric Decrypt
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (kms, w) = (kms.clone(), w.clone());
            tokio::spawn(async move { kms.unwrap(&w, &ctx(1)).await.map(|d| *d.expose()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(&t.await.unwrap().unwrap(), dek.expose());
    }
    assert_eq!(fake.calls(Operation::Decrypt), 1);
    assert_eq!(metric(&kms, "kmsecrets_dek_cache_coalesced_total"), 199.0);
    // cached afterwards
    kms.unwrap(&w, &ctx(1)).await.unwrap();
    assert_eq!(fake.calls(Operation::Decrypt), 1);

    // the same copy under another context (moved, renamed, re-scoped,
    // transplanted): KMS decrypts it (no context for RSA), the bound hash
    // refuses it, every time (never cached), as DecryptFailed
    for round in 0..2 {
        let err = kms.unwrap(&w, &ctx(2)).await.err().unwrap();
        assert!(matches!(err, KmsError::ContextMismatch(_)), "{err}");
        assert_eq!(
            err.reason(),
            kmsecrets::api::Reason::DecryptFailed,
            "round {round}"
        );
        assert!(
            err.to_string()
                .contains("bound to another namespace/name/scope")
        );
        assert!(!err.to_string().contains(&hex::encode(dek.expose())));
    }
    assert_eq!(fake.calls(Operation::Decrypt), 3);
    // the KMS request itself succeeded: counted as such, not as a failure
    assert_eq!(
        metric(
            &kms,
            "kmsecrets_kms_requests_total{operation=\"decrypt\",result=\"success\"}"
        ),
        3.0
    );
    // a symmetric Decrypt of the RSA copy (algorithm dropped) fails permanently
    let mut stripped = w.clone();
    stripped.algorithm = Algorithm::SymmetricDefault;
    let err = kms.unwrap(&stripped, &ctx(1)).await.err().unwrap();
    assert!(matches!(err, KmsError::KeyUsage(_)), "{err}");
    // a tampered wrap
    let mut bad = w.clone();
    bad.ciphertext[10] ^= 1;
    let err = kms.unwrap(&bad, &ctx(1)).await.err().unwrap();
    assert!(matches!(err, KmsError::InvalidCiphertext(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn mixed_copies_share_one_dek_and_fall_back_across_kinds() {
    let (fake, sealing) = rsa_fake(Duration::ZERO);
    let kms = layer(fake.clone(), fast_cfg());
    let keys = [
        KeyRef::sealing(sealing.clone()),
        KeyRef::new(Provider::AwsKms, KEY),
    ];
    let c = ctx(7);
    // SealingKey first: the DEK from the OS CSPRNG, no GenerateDataKey
    let (dek, copies) = wrap::new_dek(&kms, &keys, &c).await.unwrap();
    assert_eq!(fake.calls(Operation::GenerateDataKey), 0);
    assert_eq!(fake.calls(Operation::Encrypt), 1);
    assert_eq!(copies[0].algorithm, Some(Algorithm::RsaesOaepSha256));
    assert_eq!(copies[1].algorithm, None);
    let spec_keys = copies_of(copies);
    for w in &spec_keys {
        let one = layer(fake.clone(), fast_cfg());
        assert_eq!(one.unwrap(w, &c).await.unwrap().expose(), dek.expose());
    }
    // the asymmetric copy unavailable → the symmetric one serves
    fake.set_key_state(sealing.key_id(), KeyState::Disabled);
    let fresh = layer(fake.clone(), fast_cfg());
    let (got, i) = fresh.unwrap_any(&spec_keys, &c, "").await.unwrap();
    assert_eq!((got.expose(), i), (dek.expose(), 1));
    fake.set_key_state(sealing.key_id(), KeyState::Enabled);

    // --key ARN of an asymmetric key (no SealingKey file): GenerateDataKey
    // is refused as KMS refuses it, GetPublicKey, local wrap
    let arn_only = [KeyRef::new(Provider::AwsKms, sealing.key_id())];
    let (dek2, copies) = wrap::new_dek(&kms, &arn_only, &c).await.unwrap();
    assert_eq!(fake.calls(Operation::GetPublicKey), 1);
    assert_eq!(copies[0].algorithm, Some(Algorithm::RsaesOaepSha256));
    let w = copies_of(copies);
    assert_eq!(
        layer(fake.clone(), fast_cfg())
            .unwrap(&w[0], &c)
            .await
            .unwrap()
            .expose(),
        dek2.expose()
    );
    // rewrap symmetric → asymmetric: unwrap + local wrap (ReEncrypt cannot
    // bind the context), and back
    let sym = &spec_keys[1];
    let to_rsa = wrap::rewrap(&kms, sym, &KeyRef::sealing(sealing.clone()), &c)
        .await
        .unwrap();
    assert_eq!(to_rsa.algorithm, Algorithm::RsaesOaepSha256);
    let back = wrap::rewrap(&kms, &to_rsa, &KeyRef::new(Provider::AwsKms, KEY), &c)
        .await
        .unwrap();
    let fresh = layer(fake.clone(), fast_cfg());
    assert_eq!(
        fresh.unwrap(&back, &c).await.unwrap().expose(),
        dek.expose()
    );
    assert_eq!(
        fresh.unwrap(&to_rsa, &c).await.unwrap().expose(),
        dek.expose()
    );
    // a key that is neither: refused in one line naming what it is
    let err = wrap::fetch_sealing_key(&kms, KEY).await.err().unwrap();
    assert!(err.to_string().contains("symmetric"), "{err}");
}

/// A local key has no remote quota: its unwraps take no rate-limiter permit
/// (200 distinct data keys at --kms-qps 1 take no limiter time), while the
/// same unwraps through a KMS provider are paced by the limiter.
#[tokio::test(start_paused = true)]
async fn local_keys_run_at_full_speed_kms_keys_are_paced() {
    use kmsecrets::kms::local::{LocalKey, LocalProvider};
    let key = LocalKey::generate();
    let id = key.id().to_string();
    let local = Arc::new(LocalProvider::new([key]));
    let slow = LayerConfig {
        qps: 1.0,
        burst: 1,
        ..LayerConfig::default()
    };
    let kms = Kms::new(
        Providers::new(Default::default()).with(local.clone()),
        slow.clone(),
        Arc::new(Metrics::new()),
    );
    let mut copies = Vec::new();
    for i in 0..200 {
        let c = ctx(i);
        let (_, w) = local.generate_data_key(&id, &c).await.unwrap();
        copies.push((w, c));
    }
    let t = tokio::time::Instant::now();
    for (w, c) in &copies {
        kms.unwrap(w, c).await.unwrap();
    }
    assert!(t.elapsed() < Duration::from_millis(10), "{:?}", t.elapsed());
    assert_eq!(
        metric(&kms, "kmsecrets_kms_rate_limit_wait_seconds_count"),
        0.0,
        "no permit taken"
    );

    let fake = Arc::new(FakeKms::new(Provider::AwsKms, &[KEY]));
    let ks = wrapped(&fake, 20).await;
    let paced = layer(fake, slow);
    let t = tokio::time::Instant::now();
    for (w, c) in &ks {
        paced.unwrap(w, c).await.unwrap();
    }
    assert!(t.elapsed() >= Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        metric(&paced, "kmsecrets_kms_rate_limit_wait_seconds_count"),
        20.0
    );
}
