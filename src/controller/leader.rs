//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager):
//! the controllers run only while this replica leads, stop before
//! leadership is given up, and a replica that lost the lease exits so a
//! fresh start competes again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::State;
use crate::sync::stopped;

#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    pub lease_duration: Duration,
    pub identity: String,
}

/// Wait for the Lease, then run `controllers` (given a stop signal) while
/// leading.
pub(super) async fn run_with_lease<F>(
    state: Arc<State>,
    le: LeaderElection,
    mut shutdown: watch::Receiver<bool>,
    controllers: impl FnOnce(watch::Receiver<bool>) -> F,
) -> Result<(), String>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let secs = le.lease_duration.as_secs().max(2);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(state.client.clone(), &le.name)
        .with_namespace(&le.namespace)
        .with_identity(&le.identity)
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .with_field_manager(format!("kmsecrets-{}", le.identity))
        .build()
        .await
        .map_err(|e| format!("leader election setup failed: {e}"))?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %le.name, namespace = %le.namespace, identity = %le.identity, "waiting for leadership");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return Err("leader election stopped".into()) },
            _ = stopped(&mut shutdown) => { drop(leading); let _ = task.await; return Ok(()); }
        }
    }
    info!("acquired leadership");
    state.probes.leader.store(true, Ordering::SeqCst);
    // Run until shutdown or until leadership is lost; losing it stops our
    // controllers first so two leaders never write at once.
    let (stop_tx, stop_rx) = watch::channel(false);
    let controllers = tokio::spawn(controllers(stop_rx));
    let lost = tokio::select! {
        _ = stopped(&mut shutdown) => false,
        _ = async { while leading.changed().await.is_ok() { if !*leading.borrow() { break; } } } => true,
    };
    let _ = stop_tx.send(true);
    let _ = controllers.await;
    state.probes.leader.store(false, Ordering::SeqCst);
    drop(leading);
    // Bounded: leadership is typically lost because the API server (or its
    // etcd) is unreachable, and then neither the lease manager's last
    // request nor the release returns. Found on a real control plane with
    // etcd stopped: without a bound the replica hung here for good, alive
    // and healthy but never a candidate again.
    match tokio::time::timeout(LEASE_STOP_TIMEOUT, task).await {
        Ok(Ok(Ok(m))) => {
            if tokio::time::timeout(LEASE_STOP_TIMEOUT, m.release())
                .await
                .is_err()
            {
                warn!("lease release timed out");
            }
        }
        Ok(Ok(Err(e))) => error!(error = %e, "lease manager failed"),
        Ok(Err(e)) => error!(error = %e, "lease task panicked"),
        Err(_) => warn!("lease manager did not stop in time"),
    }
    if lost {
        Err("lost leadership; exiting so a fresh start can compete again".into())
    } else {
        Ok(())
    }
}

/// How long stopping the lease manager (and releasing the Lease) may take
/// before the process exits anyway; the Lease then simply expires.
const LEASE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
