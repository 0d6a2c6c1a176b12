//! Single-flight: concurrent unwraps of the same data key make ONE provider
//! call, which every waiter shares.
//!
//! # Guarantees
//! - The call runs in its own task: a cancelled (dropped) waiter never
//!   cancels or poisons the flight for the others.
//! - A flight removes itself when it finishes, after its `call` returned
//!   (the layer caches a success inside `call`, so a caller arriving after
//!   the removal finds the cache filled).
//! - A failed flight is shared by its waiters, never remembered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::KmsError;
use super::cache::CacheKey;
use crate::envelope::Dek;
use crate::sync::LockExt;

pub type Flight = Shared<BoxFuture<'static, Result<Arc<Dek>, KmsError>>>;

/// How [`Flights::join`] was served.
pub enum Joined {
    /// `recheck` found the value (a flight finished since the caller's
    /// first cache look).
    Ready(Arc<Dek>),
    /// Another caller's flight was in the air.
    Coalesced(Flight),
    /// This caller started the flight.
    Started(Flight),
}

#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<CacheKey, Flight>>,
}

impl Flights {
    /// Join the flight for `key`; with none in the air, run `recheck` under
    /// the lock (a flight may have finished since the caller looked), and
    /// if that finds nothing start `call` in its own task.
    pub fn join<F, Fut>(
        self: &Arc<Self>,
        key: CacheKey,
        recheck: impl FnOnce() -> Option<Arc<Dek>>,
        call: F,
    ) -> Joined
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Dek>, KmsError>> + Send + 'static,
    {
        let mut map = self.map.lock_or_recover();
        if let Some(f) = map.get(&key) {
            return Joined::Coalesced(f.clone());
        }
        if let Some(v) = recheck() {
            return Joined::Ready(v);
        }
        let this = self.clone();
        let fut = call();
        let task = tokio::spawn(async move {
            let res = fut.await;
            this.map.lock_or_recover().remove(&key);
            res
        });
        let f: Flight = async move {
            task.await
                .unwrap_or_else(|_| Err(KmsError::Other("KMS call task failed".into())))
        }
        .boxed()
        .shared();
        map.insert(key, f.clone());
        Joined::Started(f)
    }

    /// Flights in the air.
    pub fn len(&self) -> usize {
        self.map.lock_or_recover().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
