//! Lock helpers. A panic while a lock is held (a bug) must not turn every
//! later use of the lock into a second panic: the data behind our locks is
//! caches and counters, always left consistent between statements, so a
//! poisoned lock is recovered and used as it is.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

pub trait LockExt<T> {
    /// The guard, recovering a poisoned lock.
    fn lock_or_recover(&self) -> MutexGuard<'_, T>;
}

impl<T> LockExt<T> for Mutex<T> {
    fn lock_or_recover(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Resolves once a shutdown channel says stop (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
