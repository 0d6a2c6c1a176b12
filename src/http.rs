//! The HTTP surface: `/healthz` (process alive), `/readyz` (initialised;
//! standby replicas are ready too, so a PodDisruptionBudget never blocks a
//! drain) and `/metrics` (Prometheus text). No secrets are reachable here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::controller::State;

pub struct Http {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn serve(
    addr: SocketAddr,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<Http> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                crate::controller::stopped(&mut shutdown).await;
            })
            .await;
    });
    Ok(Http { local_addr, task })
}

async fn readyz(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
