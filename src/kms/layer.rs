//! The resilience layer every KMS call goes through, wiring the pieces each
//! in its own module: [`super::cache`] (TTL + LRU DEK cache),
//! [`super::flight`] (single-flight), [`super::limiter`] (adaptive rate
//! limit), [`crate::backoff`] (full-jitter delays); and metrics for all of
//! it.
//!
//! Why one long file: it is the call path every KMS request takes (cache →
//! flight → limiter → attempt → classify → retry → metrics), and each
//! guarantee below is kept next to the code that keeps it; the parts that
//! stand alone already have their own modules.
//!
//! # Guarantees
//! - A failed unwrap is never cached.
//! - Concurrent misses for one cache key make ONE provider call.
//! - Every provider attempt with a remote quota passes the rate limiter
//!   (a local key has none: it runs at full speed), and every attempt is counted in
//!   `kmsecrets_kms_requests_total`; throttled ones also in
//!   `kmsecrets_kms_throttled_total`.
//! - Permanent errors are never retried.
//!
//! Trade-off of `dek_cache_ttl` (documented at the flag too): a cached DEK
//! keeps working for up to the TTL after its KMS key is disabled or access is
//! revoked.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::aws::{AwsKms, AwsOptions};
pub use super::cache::cache_key;
use super::cache::{CacheKey, DekCache};
use super::flight::{Flights, Joined};
pub use super::limiter::{Permit, RateLimiter};
use super::{
    Algorithm, EncryptionContext, KeyInfo, KmsError, KmsProvider, Operation, Provider,
    PublicKeyInfo, WrappedKey,
};
use crate::envelope::Dek;
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
    /// Upper bound on one [`Kms::unwrap_any`], every copy and retry
    /// included (`None`: only the attempts bound it). The controller sets it
    /// so no resource holds a worker longer (`--unwrap-timeout`).
    pub unwrap_deadline: Option<Duration>,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            qps: 100.0,
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
            unwrap_deadline: None,
        }
    }
}

pub use crate::backoff::backoff_delay;

/// Pre-create the KMS series so dashboards and alerts see zeros, not gaps.
fn preregister(m: &Metrics) {
    for op in Operation::ALL {
        m.kms_throttled.with_label_values(&[op.as_str()]);
        m.kms_retries.with_label_values(&[op.as_str()]);
    }
    let op = Operation::Decrypt.as_str();
    for result in KmsError::METRIC_RESULTS {
        m.kms_requests.with_label_values(&[op, result]);
    }
    m.kms_duration.with_label_values(&[op]);
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
    cache: DekCache,
    flights: Arc<Flights>,
    limiter: RateLimiter,
    metrics: Arc<Metrics>,
}

impl Kms {
    pub fn new(providers: Providers, cfg: LayerConfig, metrics: Arc<Metrics>) -> Kms {
        preregister(&metrics);
        Kms {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(cfg.qps, cfg.burst),
                cache: DekCache::new(cfg.cache_size, cfg.cache_ttl, metrics.clone()),
                flights: Arc::default(),
                providers,
                cfg,
                metrics,
            }),
        }
    }

    /// The configuration this layer runs with.
    pub fn config(&self) -> &LayerConfig {
        &self.inner.cfg
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

    /// Unwrap the first usable copy of a DEK, the index of the copy that
    /// worked alongside.
    ///
    /// Copies the provider refuses up front (a region outside the
    /// controller's allow-list, a missing local key) cost no request. The
    /// rest are tried in rounds: one attempt per copy per round, in order,
    /// with the backoff between rounds — so a transient failure of the first
    /// copy moves on to the next one at once instead of spending all its
    /// retries first (that is what multi-region copies are for), a copy that
    /// fails permanently drops out, and no copy makes more than
    /// `max_attempts` attempts. The whole search is bounded by
    /// `unwrap_deadline`.
    ///
    /// `tenant` is the namespace of the resource the copies belong to ("":
    /// none): the region allow-list and the DEK cache's fair share are
    /// kept per tenant.
    pub async fn unwrap_any(
        &self,
        copies: &[WrappedKey],
        ctx: &EncryptionContext,
        tenant: &str,
    ) -> Result<(Arc<Dek>, usize), KmsError> {
        let search = self.unwrap_rounds(copies, ctx, tenant);
        match self.inner.cfg.unwrap_deadline {
            None => search.await,
            Some(d) => tokio::time::timeout(d, search).await.unwrap_or_else(|_| {
                Err(KmsError::Unavailable(format!(
                    "no copy of the data key could be unwrapped within {} s (--unwrap-timeout)",
                    d.as_secs_f64()
                )))
            }),
        }
    }

    async fn unwrap_rounds(
        &self,
        copies: &[WrappedKey],
        ctx: &EncryptionContext,
        tenant: &str,
    ) -> Result<(Arc<Dek>, usize), KmsError> {
        let mut errors: Vec<Option<KmsError>> = copies.iter().map(|_| None).collect();
        let mut live = Vec::new();
        for (i, w) in copies.iter().enumerate() {
            match self
                .provider(w.provider)
                .await
                .and_then(|p| p.admits(&w.key_id, tenant))
            {
                Ok(()) => live.push(i),
                Err(e) => errors[i] = Some(e),
            }
        }
        let cfg = &self.inner.cfg;
        for round in 0..cfg.max_attempts.max(1) {
            if live.is_empty() {
                break;
            }
            if round > 0 {
                let delay = backoff_delay(
                    round - 1,
                    cfg.backoff_base,
                    cfg.backoff_cap,
                    &mut rand::thread_rng(),
                );
                tokio::time::sleep(delay).await;
            }
            let mut again = Vec::new();
            for &i in &live {
                if round > 0 {
                    self.inner
                        .metrics
                        .kms_retries
                        .with_label_values(&[Operation::Decrypt.as_str()])
                        .inc();
                }
                match self.unwrap_with(&copies[i], ctx, 1, tenant).await {
                    Ok(dek) => return Ok((dek, i)),
                    Err(e) => {
                        if e.is_transient() {
                            again.push(i);
                        }
                        errors[i] = Some(e);
                    }
                }
            }
            live = again;
        }
        // Prefer a transient error (worth retrying), then the first one.
        let mut errors: Vec<KmsError> = errors.into_iter().flatten().collect();
        let pick = errors.iter().position(KmsError::is_transient).unwrap_or(0);
        if errors.is_empty() {
            return Err(KmsError::Invalid("the resource has no dataKeys".into()));
        }
        Err(errors.swap_remove(pick))
    }

    /// The DEK of the first copy already in the cache, and which copy: no
    /// request, no single-flight, no rate-limiter permit. Lets the
    /// controller open a resource whose data key it holds without taking
    /// one of its namespace's KMS slots (a cache hit cannot stall).
    ///
    /// On a miss: the cache key of every copy (what the caller may wait
    /// for; never key material, a digest of the wrapped copy and context).
    pub fn cached_any(
        &self,
        copies: &[WrappedKey],
        ctx: &EncryptionContext,
    ) -> Result<(Arc<Dek>, usize), Vec<CacheKey>> {
        let mut keys = Vec::with_capacity(copies.len());
        for (i, w) in copies.iter().enumerate() {
            let key = cache_key(w, ctx);
            if let Some(dek) = self.cache_get(&key) {
                self.inner.metrics.cache_hits.inc();
                return Ok((dek, i));
            }
            keys.push(key);
        }
        Err(keys)
    }

    /// Unwrap one copy through cache and single-flight.
    pub async fn unwrap(
        &self,
        w: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<Arc<Dek>, KmsError> {
        self.unwrap_with(w, ctx, self.inner.cfg.max_attempts, "")
            .await
    }

    /// [`Kms::unwrap`] with its own attempt budget.
    async fn unwrap_with(
        &self,
        w: &WrappedKey,
        ctx: &EncryptionContext,
        attempts: u32,
        tenant: &str,
    ) -> Result<Arc<Dek>, KmsError> {
        let key = cache_key(w, ctx);
        let m = &self.inner.metrics;
        if let Some(dek) = self.cache_get(&key) {
            m.cache_hits.inc();
            return Ok(dek);
        }
        if !self.inner.cfg.coalesce {
            m.cache_misses.inc();
            let dek = Arc::new(self.fetch(w, ctx, attempts).await?);
            self.cache_put(key, dek.clone(), tenant, &w.key_id);
            return Ok(dek);
        }
        let this = self.clone();
        let (w, ctx, tenant) = (w.clone(), ctx.clone(), tenant.to_string());
        let joined = self.inner.flights.join(
            key,
            || self.cache_get(&key),
            move || async move {
                let call = this.fetch(&w, &ctx, attempts);
                // The flight outlives a cancelled caller (see flight.rs), but
                // never the unwrap deadline: a hung request must not pin
                // the flight, and with it every later caller of this DEK.
                let dek = match this.inner.cfg.unwrap_deadline {
                    None => call.await,
                    Some(d) => tokio::time::timeout(d, call).await.unwrap_or_else(|_| {
                        Err(KmsError::Unavailable(format!(
                            "KMS Decrypt did not answer within {} s (--unwrap-timeout)",
                            d.as_secs_f64()
                        )))
                    }),
                }
                .map(Arc::new)?;
                this.cache_put(key, dek.clone(), &tenant, &w.key_id);
                Ok(dek)
            },
        );
        match joined {
            Joined::Ready(dek) => {
                m.cache_hits.inc();
                Ok(dek)
            }
            Joined::Coalesced(f) => {
                m.cache_coalesced.inc();
                f.await
            }
            Joined::Started(f) => {
                m.cache_misses.inc();
                f.await
            }
        }
    }

    /// One copy through the provider: `Decrypt` with the context for a
    /// symmetric copy; for an offline-sealed one, `Decrypt` with
    /// RSAES_OAEP_SHA_256 and then the bound-context check — after the
    /// request is counted as the success it was, before anything is cached.
    async fn fetch(
        &self,
        w: &WrappedKey,
        ctx: &EncryptionContext,
        attempts: u32,
    ) -> Result<Dek, KmsError> {
        let provider = self.provider(w.provider).await?;
        let limited = provider.has_quota();
        match w.algorithm {
            Algorithm::SymmetricDefault => {
                self.call_with(Operation::Decrypt, limited, attempts, || {
                    provider.decrypt(&w.key_id, &w.ciphertext, ctx)
                })
                .await
            }
            Algorithm::RsaesOaepSha256 => {
                let raw = self
                    .call_with(Operation::Decrypt, limited, attempts, || {
                        provider.decrypt_asymmetric(&w.key_id, &w.ciphertext)
                    })
                    .await?;
                crate::kms::sealing::unbind(&raw, ctx)
            }
        }
    }

    fn cache_get(&self, key: &CacheKey) -> Option<Arc<Dek>> {
        self.inner.cache.get(key)
    }

    fn cache_put(&self, key: CacheKey, dek: Arc<Dek>, tenant: &str, key_id: &str) {
        self.inner.cache.put(key, dek, tenant, key_id);
    }

    /// Evict the cached data keys unwrapped under `key_id` (see
    /// [`DekCache::revoke`]).
    pub fn revoke(&self, key_id: &str) -> usize {
        self.inner.cache.revoke(key_id)
    }

    /// Remove every expired entry (the controller calls this periodically so
    /// the entries gauge and memory reflect reality).
    pub fn purge_expired(&self) {
        self.inner.cache.purge_expired();
    }

    pub fn cache_len(&self) -> usize {
        self.inner.cache.len()
    }

    /// One logical KMS operation: rate limit, attempt, classify, count,
    /// retry transient failures with exponential backoff and full jitter.
    /// `p` is the provider the attempts go to: one without a quota
    /// ([`KmsProvider::has_quota`]) takes no rate-limiter permit.
    pub async fn call<T, F, Fut>(
        &self,
        op: Operation,
        p: &dyn KmsProvider,
        attempt_fn: F,
    ) -> Result<T, KmsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, KmsError>>,
    {
        self.call_with(op, p.has_quota(), self.inner.cfg.max_attempts, attempt_fn)
            .await
    }

    async fn call_with<T, F, Fut>(
        &self,
        op: Operation,
        limited: bool,
        max_attempts: u32,
        mut attempt_fn: F,
    ) -> Result<T, KmsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, KmsError>>,
    {
        let m = &self.inner.metrics;
        let cfg = &self.inner.cfg;
        let mut attempt = 0u32;
        loop {
            let permit = if limited {
                let permit = self.inner.limiter.acquire().await;
                m.rate_limit_wait.observe(permit.waited.as_secs_f64());
                Some(permit)
            } else {
                None
            };
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
                    if limited {
                        self.inner.limiter.on_success();
                    }
                    return Ok(v);
                }
                Err(e) => {
                    m.kms_requests
                        .with_label_values(&[op.as_str(), e.metric_result()])
                        .inc();
                    if let (KmsError::Throttled(_), Some(permit)) = (&e, permit) {
                        m.kms_throttled.with_label_values(&[op.as_str()]).inc();
                        self.inner.limiter.on_throttle(permit);
                    }
                    attempt += 1;
                    if !e.is_transient() || attempt >= max_attempts {
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
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::Encrypt, p.as_ref(), || {
            p.encrypt(key_id, plaintext, ctx)
        })
        .await
    }

    pub async fn generate_data_key(
        &self,
        kind: Provider,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Dek, WrappedKey), KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::GenerateDataKey, p.as_ref(), || {
            p.generate_data_key(key_id, ctx)
        })
        .await
    }

    pub async fn generate_data_key_without_plaintext(
        &self,
        kind: Provider,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let p = self.provider(kind).await?;
        self.call(
            Operation::GenerateDataKeyWithoutPlaintext,
            p.as_ref(),
            || p.generate_data_key_without_plaintext(key_id, ctx),
        )
        .await
    }

    pub async fn re_encrypt(
        &self,
        src: &WrappedKey,
        kind: Provider,
        dest_key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::ReEncrypt, p.as_ref(), || {
            p.re_encrypt(src, dest_key_id, ctx)
        })
        .await
    }

    pub async fn generate_random(
        &self,
        kind: Provider,
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::GenerateRandom, p.as_ref(), || {
            p.generate_random(len)
        })
        .await
    }

    pub async fn get_public_key(
        &self,
        kind: Provider,
        key_id: &str,
    ) -> Result<PublicKeyInfo, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::GetPublicKey, p.as_ref(), || {
            p.get_public_key(key_id)
        })
        .await
    }

    pub async fn describe_key(&self, kind: Provider, key_id: &str) -> Result<KeyInfo, KmsError> {
        let p = self.provider(kind).await?;
        self.call(Operation::DescribeKey, p.as_ref(), || {
            p.describe_key(key_id)
        })
        .await
    }
}
