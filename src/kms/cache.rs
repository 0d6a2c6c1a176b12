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
//! - Fair under pressure: every entry belongs to the tenant (namespace)
//!   whose unwrap put it there, and when the cache is full the entry
//!   evicted is the least recently used one *of the tenant holding the
//!   most entries*. A namespace alone may use the whole cache; under
//!   contention each keeps at least min(its demand, size ÷ active
//!   namespaces). A tenant that floods the cache with data keys evicts its
//!   own, never another's: another tenant's entry is evicted only once no
//!   tenant holds more entries than that tenant does.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{EncryptionContext, WrappedKey};
use crate::envelope::{Dek, canonical_context};
use crate::metrics::Metrics;
use crate::sync::LockExt;

pub type CacheKey = [u8; 32];

pub fn cache_key(w: &WrappedKey, ctx: &EncryptionContext) -> CacheKey {
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
    tenant: Arc<str>,
    /// The key id of the copy that was unwrapped (revocation evicts by it).
    key_id: Arc<str>,
}

/// The LRU and how many entries each tenant holds in it.
struct Entries {
    lru: LruCache<CacheKey, Cached>,
    held: HashMap<Arc<str>, usize>,
}

impl Entries {
    fn forget(&mut self, c: &Cached) {
        if let Some(n) = self.held.get_mut(&c.tenant) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&c.tenant);
            }
        }
    }

    fn pop(&mut self, key: &CacheKey) {
        if let Some(c) = self.lru.pop(key) {
            self.forget(&c);
        }
    }

    fn pop_lru(&mut self) {
        if let Some((_, c)) = self.lru.pop_lru() {
            self.forget(&c);
        }
    }

    /// Evict one entry to make room for one of `tenant`: the least recently
    /// used entry of the tenant that holds the most (ties go to the tenant
    /// inserting, then to the least recently used entry overall).
    fn evict_for(&mut self, tenant: &str) {
        let mine = self.held.get(tenant).copied().unwrap_or(0);
        let (top, most) = self
            .held
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(t, n)| (t.clone(), *n))
            .unwrap_or_else(|| (Arc::from(""), 0));
        let victim: Arc<str> = if mine + 1 >= most {
            Arc::from(tenant)
        } else {
            top
        };
        let key = self
            .lru
            .iter()
            .rev()
            .find(|(_, c)| *c.tenant == *victim)
            .map(|(k, _)| *k);
        match key {
            Some(k) => self.pop(&k),
            None => self.pop_lru(),
        }
    }
}

pub struct DekCache {
    ttl: Duration,
    /// `None` = caching off (size 0 or TTL 0).
    entries: Mutex<Option<Entries>>,
    metrics: Arc<Metrics>,
}

impl DekCache {
    pub fn new(size: usize, ttl: Duration, metrics: Arc<Metrics>) -> DekCache {
        let entries = NonZeroUsize::new(size)
            .filter(|_| !ttl.is_zero())
            .map(|n| Entries {
                lru: LruCache::new(n),
                held: HashMap::new(),
            });
        DekCache {
            ttl,
            entries: Mutex::new(entries),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Entries>> {
        self.entries.lock_or_recover()
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Dek>> {
        let mut guard = self.lock();
        let cache = guard.as_mut()?;
        let expired = cache
            .lru
            .peek(key)
            .map(|c| c.inserted.elapsed() >= self.ttl)?;
        if expired {
            cache.pop(key);
            self.metrics
                .cache_evictions
                .with_label_values(&["expired"])
                .inc();
            self.metrics.cache_entries.set(cache.lru.len() as i64);
            return None;
        }
        cache.lru.get(key).map(|c| c.dek.clone())
    }

    /// Cache `dek`, unwrapped under `key_id`, for `tenant` (the namespace
    /// whose unwrap fetched it).
    pub fn put(&self, key: CacheKey, dek: Arc<Dek>, tenant: &str, key_id: &str) {
        let mut guard = self.lock();
        let Some(cache) = guard.as_mut() else { return };
        let m = &self.metrics;
        // Drop expired entries from the cold end first so capacity evictions
        // only ever hit live entries.
        while let Some((_, c)) = cache.lru.peek_lru() {
            if c.inserted.elapsed() < self.ttl {
                break;
            }
            cache.pop_lru();
            m.cache_evictions.with_label_values(&["expired"]).inc();
        }
        // a refresh of an existing entry replaces it where it is
        cache.pop(&key);
        if cache.lru.len() >= cache.lru.cap().get() {
            cache.evict_for(tenant);
            m.cache_evictions.with_label_values(&["capacity"]).inc();
        }
        let tenant: Arc<str> = Arc::from(tenant);
        *cache.held.entry(tenant.clone()).or_insert(0) += 1;
        cache.lru.push(
            key,
            Cached {
                dek,
                inserted: Instant::now(),
                tenant,
                key_id: Arc::from(key_id),
            },
        );
        m.cache_entries.set(cache.lru.len() as i64);
    }

    /// Remove every expired entry (the controller calls this periodically so
    /// the entries gauge and memory reflect reality).
    pub fn purge_expired(&self) {
        let mut guard = self.lock();
        let Some(cache) = guard.as_mut() else { return };
        let dead: Vec<CacheKey> = cache
            .lru
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
        self.metrics.cache_entries.set(cache.lru.len() as i64);
    }

    /// Evict every data key unwrapped under `key_id` (a key found
    /// disabled, pending deletion or gone): from now on those data keys
    /// need a Decrypt, which the key refuses. Returns how many.
    pub fn revoke(&self, key_id: &str) -> usize {
        let mut guard = self.lock();
        let Some(cache) = guard.as_mut() else {
            return 0;
        };
        let dead: Vec<CacheKey> = cache
            .lru
            .iter()
            .filter(|(_, c)| &*c.key_id == key_id)
            .map(|(k, _)| *k)
            .collect();
        for k in &dead {
            cache.pop(k);
        }
        self.metrics
            .cache_evictions
            .with_label_values(&["revoked"])
            .inc_by(dead.len() as u64);
        self.metrics.cache_entries.set(cache.lru.len() as i64);
        dead.len()
    }

    pub fn len(&self) -> usize {
        self.lock().as_ref().map_or(0, |c| c.lru.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
