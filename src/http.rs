//! The HTTP surface: `/healthz` (process alive), `/readyz` (initialised;
//! standby replicas are ready too, so a PodDisruptionBudget never blocks a
//! drain) and `/metrics` (Prometheus text). No secrets are reachable here.
//!
//! Knows nothing of the controller: it serves [`Probes`] flags and a
//! [`Metrics`] registry it is handed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Flags the operator sets and the probes read.
#[derive(Debug, Default)]
pub struct Probes {
    /// Initialised (the HTTP server is up and the operator is running).
    pub ready: AtomicBool,
    /// Holding the leader Lease (or running without leader election).
    pub leader: AtomicBool,
}

pub struct Http {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    probes: Arc<Probes>,
    metrics: Arc<Metrics>,
}

/// Listen on `addr` and serve until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    probes: Arc<Probes>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Http> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Shared { probes, metrics });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    });
    Ok(Http { local_addr, task })
}

async fn readyz(AxState(s): AxState<Shared>) -> impl IntoResponse {
    if s.probes.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn render_metrics(AxState(s): AxState<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
