//! The DEK cache: TTL + LRU over unwrapped data keys, keyed by a hash of
//! what was unwrapped.
//!
//! # Guarantees
//! - The key is SHA-256 over (provider, keyId, wrapped ciphertext, canonical
//!   context), length-prefixed; never plaintext. The same ciphertext under
//!   another binding is another entry, so the cache never bypasses the
//!   encryption-context check.
//! - Values are zeroizing DEKs; an evicted entry is dropped (and zeroized)
//!   once its last user lets go.
//! - An entry older than the TTL is never returned.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Context, WrappedKey};
use crate::envelope::{Dek, canonical_context};
use crate::metrics::Metrics;

pub type CacheKey = [u8; 32];

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
    // Symmetric keys hash as before; an asymmetric copy adds its algorithm.
    if w.algorithm.is_asymmetric() {
        h.update(w.algorithm.as_str().as_bytes());
    }
    h.finalize().into()
}

struct Cached {
    dek: Arc<Dek>,
    inserted: Instant,
}

pub struct DekCache {
    ttl: Duration,
    /// `None` = caching off (size 0 or TTL 0).
    lru: Mutex<Option<LruCache<CacheKey, Cached>>>,
    metrics: Arc<Metrics>,
}

impl DekCache {
    pub fn new(size: usize, ttl: Duration, metrics: Arc<Metrics>) -> DekCache {
        let lru = NonZeroUsize::new(size)
            .filter(|_| !ttl.is_zero())
            .map(LruCache::new);
        DekCache {
            ttl,
            lru: Mutex::new(lru),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<LruCache<CacheKey, Cached>>> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Dek>> {
        let mut guard = self.lock();
        let cache = guard.as_mut()?;
        let expired = cache.peek(key).map(|c| c.inserted.elapsed() >= self.ttl)?;
        if expired {
            cache.pop(key);
            self.metrics
                .cache_evictions
                .with_label_values(&["expired"])
                .inc();
            self.metrics.cache_entries.set(cache.len() as i64);
            return None;
        }
        cache.get(key).map(|c| c.dek.clone())
    }

    pub fn put(&self, key: CacheKey, dek: Arc<Dek>) {
        let mut guard = self.lock();
        let Some(cache) = guard.as_mut() else { return };
        let m = &self.metrics;
        // Drop expired entries from the cold end first so capacity evictions
        // only ever hit live entries.
        while let Some((_, c)) = cache.peek_lru() {
            if c.inserted.elapsed() < self.ttl {
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
        let mut guard = self.lock();
        let Some(cache) = guard.as_mut() else { return };
        let dead: Vec<CacheKey> = cache
            .iter()
            .filter(|(_, c)| c.inserted.elapsed() >= self.ttl)
            .map(|(k, _)| *k)
            .collect();
        for k in &dead {
            cache.pop(k);
        }
        self.metrics
            .cache_evictions
            .with_label_values(&["expired"])
            .inc_by(dead.len() as u64);
        self.metrics.cache_entries.set(cache.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.lock().as_ref().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
