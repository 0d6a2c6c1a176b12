//! The resilience layer every KMS call goes through: DEK cache,
//! single-flight, adaptive client-side rate limiting, retries with
//! exponential backoff and full jitter, and metrics for all of it.
//!
//! # Guarantees
//! - The cache key is SHA-256 over (provider, keyId, wrapped ciphertext,
//!   canonical context), never plaintext; values are zeroizing DEKs.
//! - A failed unwrap is never cached.
//! - Concurrent misses for one cache key make ONE provider call; the call
//!   runs in its own task, so a cancelled caller never poisons the flight.
//! - Every provider attempt passes the rate limiter and is counted in
//!   `kmsecrets_kms_requests_total`; throttled ones also in
//!   `kmsecrets_kms_throttled_total`.
//! - Permanent errors are never retried.
//!
//! Trade-off of `dek_cache_ttl` (documented at the flag too): a cached DEK
//! keeps working for up to the TTL after its KMS key is disabled or access is
//! revoked.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::aws::{AwsKms, AwsOptions};
use super::{Context, KeyInfo, KmsError, KmsProvider, Operation, Provider, WrappedKey};
use crate::envelope::{Dek, canonical_context};
use crate::metrics::Metrics;

/// Tunables of the layer (flags of the same names on the CLI).
#[derive(Clone, Debug)]
pub struct LayerConfig {
    /// Configured ceiling of the client-side rate (requests/s).
    pub qps: f64,
    pub burst: u32,
    /// 0 disables the cache.
    pub cache_ttl: Duration,
    pub cache_size: usize,
    /// Single-flight for concurrent misses (off only for benchmarks).
    pub coalesce: bool,
    /// Attempts per call, first one included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            qps: 50.0,
            burst: 100,
            cache_ttl: Duration::from_secs(3600),
            cache_size: 10_000,
            coalesce: true,
            // 8 attempts with base 100 ms and cap 10 s wait up to ~22 s in the
            // worst case: long enough to ride out a throttling burst, short
            // enough that a reconcile reports KmsThrottled within a minute.
            max_attempts: 8,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
        }
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base·2^n)].
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = base
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(cap);
    Duration::from_secs_f64(rng.gen_range(0.0..=ceiling.as_secs_f64()))
}

type CacheKey = [u8; 32];

pub fn cache_key(w: &WrappedKey, ctx: &Context) -> CacheKey {
    let mut h = Sha256::new();
    for part in [
        w.provider.as_str().as_bytes(),
        w.key_id.as_bytes(),
        &w.ciphertext,
        &canonical_context(ctx),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

struct Cached {
    dek: Arc<Dek>,
    inserted: Instant,
}

type Flight = Shared<BoxFuture<'static, Result<Arc<Dek>, KmsError>>>;

/// Adaptive token bucket shared by all workers.
///
/// Additive-increase / multiplicative-decrease around the rate at which KMS
/// last throttled. Each permit carries the limiter's *epoch* (number of cuts
/// so far); only a throttle of a request admitted in the current epoch cuts
/// the rate again, so a burst of throttles already in flight counts as one
/// signal (TCP's "one decrease per window"). A cut is ×0.9, or ×0.7 when the
/// previous cut was less than a second ago (still far too fast); the
/// accumulated burst is dropped. Afterwards the rate climbs back quickly to
/// 90% of the rate that was throttled, then probes slowly (1%/s) above it.
/// Waiters re-check the bucket when they wake, so a cut slows everyone at
/// once. The aim is to sit just under a quota shared with other KMS users,
/// not to bounce off it.
pub struct RateLimiter {
    max_rate: f64,
    burst: f64,
    st: Mutex<LimState>,
}

struct LimState {
    rate: f64,
    tokens: f64,
    last_refill: Instant,
    last_growth: Instant,
    last_cut: Option<Instant>,
    throttled_at: Option<f64>,
    epoch: u64,
}

/// Proof of admission; hand it back on throttle.
#[derive(Clone, Copy, Debug)]
pub struct Permit {
    epoch: u64,
    pub waited: Duration,
}

const MIN_RATE: f64 = 1.0;

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> RateLimiter {
        let now = Instant::now();
        let qps = qps.max(0.1);
        let burst = f64::from(burst.max(1));
        RateLimiter {
            max_rate: qps,
            burst,
            st: Mutex::new(LimState {
                rate: qps,
                tokens: burst,
                last_refill: now,
                last_growth: now,
                last_cut: None,
                throttled_at: None,
                epoch: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current allowed rate (requests/s).
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// Take a token now, or say how long until one is due.
    fn try_take(&self) -> Result<u64, Duration> {
        let mut st = self.lock();
        let now = Instant::now();
        let dt = now.saturating_duration_since(st.last_refill).as_secs_f64();
        st.last_refill = now;
        st.tokens = (st.tokens + dt * st.rate).min(self.burst);
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            Ok(st.epoch)
        } else {
            Err(Duration::from_secs_f64((1.0 - st.tokens) / st.rate)
                .max(Duration::from_micros(100)))
        }
    }

    pub async fn acquire(&self) -> Permit {
        let start = Instant::now();
        loop {
            match self.try_take() {
                Ok(epoch) => {
                    return Permit {
                        epoch,
                        waited: start.elapsed(),
                    };
                }
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    pub fn on_throttle(&self, permit: Permit) {
        let mut st = self.lock();
        if permit.epoch != st.epoch {
            return; // admitted before the last cut: already accounted for
        }
        let now = Instant::now();
        let recent = st
            .last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        let factor = if recent { 0.7 } else { 0.9 };
        st.throttled_at = Some(st.rate);
        st.rate = (st.rate * factor).max(MIN_RATE);
        st.tokens = st.tokens.min(0.0);
        st.last_cut = Some(now);
        st.last_growth = now;
        st.epoch += 1;
    }

    pub fn on_success(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        let dt = now.saturating_duration_since(st.last_growth).as_secs_f64();
        st.last_growth = now;
        if st.rate >= self.max_rate {
            return;
        }
        let growth = match st.throttled_at {
            // Fast back to 90% of the throttled rate, then probe gently.
            Some(t) if st.rate < 0.9 * t => 0.5 * t,
            Some(t) => (0.01 * t).max(0.5),
            None => 0.1 * self.max_rate,
        };
        st.rate = (st.rate + growth * dt).min(self.max_rate);
    }
}

/// Lazily-built providers: AWS config is only loaded when an aws-kms key is
/// actually used, so local-only workflows never touch AWS.
pub struct Providers {
    fixed: HashMap<Provider, Arc<dyn KmsProvider>>,
    aws_opts: AwsOptions,
    aws: OnceCell<Arc<dyn KmsProvider>>,
}

impl Providers {
    pub fn new(aws_opts: AwsOptions) -> Providers {
        Providers {
            fixed: HashMap::new(),
            aws_opts,
            aws: OnceCell::new(),
        }
    }

    /// Register a provider (local keys, or a fake standing in for either kind).
    pub fn with(mut self, p: Arc<dyn KmsProvider>) -> Providers {
        self.fixed.insert(p.provider(), p);
        self
    }

    pub async fn get(&self, kind: Provider) -> Result<Arc<dyn KmsProvider>, KmsError> {
        if let Some(p) = self.fixed.get(&kind) {
            return Ok(p.clone());
        }
        match kind {
            Provider::AwsKms => Ok(self
                .aws
                .get_or_init(|| async {
                    Arc::new(AwsKms::new(self.aws_opts.clone()).await) as Arc<dyn KmsProvider>
                })
                .await
                .clone()),
            Provider::Local => Err(KmsError::NoKey {
                provider: "local",
                key_id: "(any)".into(),
                hint: "offer the key file with --local-key PATH".into(),
            }),
        }
    }
}

/// The layer. Cheap to clone; clones share cache, flights, limiter, metrics.
#[derive(Clone)]
pub struct Kms {
    inner: Arc<Inner>,
}

struct Inner {
    providers: Providers,
    cfg: LayerConfig,
    cache: Mutex<Option<LruCache<CacheKey, Cached>>>,
    flights: Mutex<HashMap<CacheKey, Flight>>,
    limiter: RateLimiter,
    metrics: Arc<Metrics>,
}

impl Kms {
    pub fn new(providers: Providers, cfg: LayerConfig, metrics: Arc<Metrics>) -> Kms {
        let cache = NonZeroUsize::new(cfg.cache_size)
            .filter(|_| !cfg.cache_ttl.is_zero())
            .map(LruCache::new);
        Kms {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(cfg.qps, cfg.burst),
                providers,
                cfg,
                cache: Mutex::new(cache),
                flights: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    pub async fn provider(&self, kind: Provider) -> Result<Arc<dyn KmsProvider>, KmsError> {
        self.inner.providers.get(kind).await
    }

    /// Unwrap the first usable copy of a DEK. Copies are tried in order; a
    /// failing copy (unreachable region, revoked key, missing local key)
    /// falls through to the next — that is what multi-region copies are for.
    /// Returns the DEK and the index of the copy that worked.
    pub async fn unwrap_any(
        &self,
        copies: &[WrappedKey],
        ctx: &Context,
    ) -> Result<(Arc<Dek>, usize), KmsError> {
        let mut errors = Vec::new();
        for (i, w) in copies.iter().enumerate() {
            match self.unwrap(w, ctx).await {
                Ok(dek) => return Ok((dek, i)),
                Err(e) => errors.push(e),
            }
        }
        // Prefer a transient error (worth retrying), then the first one.
        let pick = errors.iter().position(KmsError::is_transient).unwrap_or(0);
        Err(errors
            .into_iter()
            .nth(pick)
            .unwrap_or_else(|| KmsError::Invalid("the resource has no dataKeys".into())))
    }

    /// Unwrap one copy through cache and single-flight.
    pub async fn unwrap(&self, w: &WrappedKey, ctx: &Context) -> Result<Arc<Dek>, KmsError> {
        let key = cache_key(w, ctx);
        let m = &self.inner.metrics;
        if let Some(dek) = self.cache_get(&key) {
            m.cache_hits.inc();
            return Ok(dek);
        }
        if !self.inner.cfg.coalesce {
            m.cache_misses.inc();
            let provider = self.provider(w.provider).await?;
            let dek = Arc::new(
                self.call(Operation::Decrypt, || {
                    provider.decrypt(&w.key_id, &w.ciphertext, ctx)
                })
                .await?,
            );
            self.cache_put(key, dek.clone());
            return Ok(dek);
        }
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = flights.get(&key) {
                m.cache_coalesced.inc();
                f.clone()
            } else {
                // Re-check under the flights lock: a flight may have finished
                // (cached, then removed itself) since our first look.
                if let Some(dek) = self.cache_get(&key) {
                    m.cache_hits.inc();
                    return Ok(dek);
                }
                m.cache_misses.inc();
                let this = self.clone();
                let (w, ctx) = (w.clone(), ctx.clone());
                let task = tokio::spawn(async move {
                    let res = async {
                        let provider = this.provider(w.provider).await?;
                        this.call(Operation::Decrypt, || {
                            provider.decrypt(&w.key_id, &w.ciphertext, &ctx)
                        })
                        .await
                        .map(Arc::new)
                    }
                    .await;
                    if let Ok(dek) = &res {
                        this.cache_put(key, dek.clone());
                    }
                    this.inner
                        .flights
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    res
                });
                let f: Flight = async move {
                    task.await
                        .unwrap_or_else(|_| Err(KmsError::Other("KMS call task failed".into())))
                }
                .boxed()
                .shared();
                flights.insert(key, f.clone());
                f
            }
        };
        flight.await
    }

    fn cache_get(&self, key: &CacheKey) -> Option<Arc<Dek>> {
        let mut guard = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cache = guard.as_mut()?;
        let ttl = self.inner.cfg.cache_ttl;
        let expired = cache.peek(key).map(|c| c.inserted.elapsed() >= ttl)?;
        if expired {
            cache.pop(key);
            self.inner
                .metrics
                .cache_evictions
                .with_label_values(&["expired"])
                .inc();
            self.inner.metrics.cache_entries.set(cache.len() as i64);
            return None;
        }
        cache.get(key).map(|c| c.dek.clone())
    }

    fn cache_put(&self, key: CacheKey, dek: Arc<Dek>) {
        let mut guard = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cache) = guard.as_mut() else { return };
        let m = &self.inner.metrics;
        let ttl = self.inner.cfg.cache_ttl;
        // Drop expired entries from the cold end first so capacity evictions
        // only ever hit live entries.
        while let Some((_, c)) = cache.peek_lru() {
            if c.inserted.elapsed() < ttl {
                break;
            }
            cache.pop_lru();
            m.cache_evictions.with_label_values(&["expired"]).inc();
        }
        if let Some((old, _)) = cache.push(
            key,
            Cached {
                dek,
                inserted: Instant::now(),
            },
        ) && old != key
        {
            m.cache_evictions.with_label_values(&["capacity"]).inc();
        }
        m.cache_entries.set(cache.len() as i64);
    }

    /// Remove every expired entry (the controller calls this periodically so
    /// the entries gauge and memory reflect reality).
    pub fn purge_expired(&self) {
        let mut guard = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cache) = guard.as_mut() else { return };
        let ttl = self.inner.cfg.cache_ttl;
        let dead: Vec<CacheKey> = cache
            .iter()
            .filter(|(_, c)| c.inserted.elapsed() >= ttl)
            .map(|(k, _)| *k)
            .collect();
        for k in &dead {
            cache.pop(k);
        }
        self.inner
            .metrics
            .cache_evictions
            .with_label_values(&["expired"])
            .inc_by(dead.len() as u64);
        self.inner.metrics.cache_entries.set(cache.len() as i64);
    }

    pub fn cache_len(&self) -> usize {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |c| c.len())
    }

    /// One logical KMS operation: rate limit, attempt, classify, count,
    /// retry transient failures with exponential backoff and full jitter.
    pub async fn call<T, F, Fut>(&self, op: Operation, mut attempt_fn: F) -> Result<T, KmsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, KmsError>>,
    {
        let m = &self.inner.metrics;
        let cfg = &self.inner.cfg;
        let mut attempt = 0u32;
        loop {
            let permit = self.inner.limiter.acquire().await;
            m.rate_limit_wait.observe(permit.waited.as_secs_f64());
            let start = Instant::now();
            let res = attempt_fn().await;
            m.kms_duration
                .with_label_values(&[op.as_str()])
                .observe(start.elapsed().as_secs_f64());
            match res {
                Ok(v) => {
                    m.kms_requests
                        .with_label_values(&[op.as_str(), "success"])
                        .inc();
                    self.inner.limiter.on_success();
                    return Ok(v);
                }
                Err(e) => {
                    m.kms_requests
                        .with_label_values(&[op.as_str(), e.metric_result()])
                        .inc();
                    if matches!(e, KmsError::Throttled(_)) {
                        m.kms_throttled.with_label_values(&[op.as_str()]).inc();
                        self.inner.limiter.on_throttle(permit);
                    }
                    attempt += 1;
                    if !e.is_transient() || attempt >= cfg.max_attempts {
                        return Err(e);
                    }
                    m.kms_retries.with_label_values(&[op.as_str()]).inc();
                    let delay = backoff_delay(
                        attempt - 1,
                        cfg.backoff_base,
                        cfg.backoff_cap,
                        &mut rand::thread_rng(),
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    // ---- the other operations: limiter + retry + metrics, no cache ----

    pub async fn encrypt(
        &self,
        kind: Provider,
        key_id: &str,
        plaintext: &[u8],
        ctx: &Context,
    ) -> Result<WrappedKey, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::Encrypt, || p.encrypt(key_id, plaintext, ctx))
            .await
    }

    pub async fn generate_data_key(
        &self,
        kind: Provider,
        key_id: &str,
        ctx: &Context,
    ) -> Result<(Dek, WrappedKey), KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::GenerateDataKey, || {
            p.generate_data_key(key_id, ctx)
        })
        .await
    }

    pub async fn generate_data_key_without_plaintext(
        &self,
        kind: Provider,
        key_id: &str,
        ctx: &Context,
    ) -> Result<WrappedKey, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::GenerateDataKeyWithoutPlaintext, || {
            p.generate_data_key_without_plaintext(key_id, ctx)
        })
        .await
    }

    pub async fn re_encrypt(
        &self,
        src: &WrappedKey,
        kind: Provider,
        dest_key_id: &str,
        ctx: &Context,
    ) -> Result<WrappedKey, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::ReEncrypt, || p.re_encrypt(src, dest_key_id, ctx))
            .await
    }

    pub async fn generate_random(
        &self,
        kind: Provider,
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::GenerateRandom, || p.generate_random(len))
            .await
    }

    pub async fn describe_key(&self, kind: Provider, key_id: &str) -> Result<KeyInfo, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::DescribeKey, || p.describe_key(key_id))
            .await
    }
}
