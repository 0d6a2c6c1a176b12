//! The HTTP surface: `/healthz` (process alive) and `/readyz` (initialised;
//! standby replicas are ready too, so a PodDisruptionBudget never blocks a
//! drain) in plain HTTP for the kubelet, and `/metrics` (Prometheus text)
//! over HTTPS behind TokenReview + SubjectAccessReview ([`auth`], [`tls`]) —
//! or, with `--metrics-secure=false` for local use, in plain HTTP beside
//! the probes. No secrets are reachable here.
//!
//! Knows nothing of the controller: it serves [`Probes`] flags and a
//! [`Metrics`] registry it is handed.

pub mod auth;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use auth::{Authorizer, Decision};

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

/// The secure metrics endpoint's settings.
#[derive(Clone, Debug)]
pub struct SecureMetrics {
    pub addr: SocketAddr,
    /// tls.crt + tls.key; `None`: self-signed at start.
    pub cert_dir: Option<PathBuf>,
    /// How long an allowed decision is cached (refusals: a tenth).
    pub auth_cache_ttl: Duration,
}

/// Listen on `addr` and serve the probes (and `/metrics` in plain HTTP
/// when `plain_metrics`) until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    probes: Arc<Probes>,
    metrics: Arc<Metrics>,
    plain_metrics: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Http> {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if plain_metrics {
        app = app.route("/metrics", get(render_metrics));
    }
    let app = app.with_state(Shared { probes, metrics });
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

#[derive(Clone)]
struct SecureShared {
    metrics: Arc<Metrics>,
    auth: Arc<Authorizer>,
}

/// At most this many metrics connections at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 64;

/// Serve `/metrics` over HTTPS on `cfg.addr`, every request authenticated
/// and authorized by `auth`, until `shutdown` resolves.
pub async fn serve_metrics(
    cfg: &SecureMetrics,
    metrics: Arc<Metrics>,
    auth: Arc<Authorizer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Http, String> {
    let mut names = vec!["localhost".to_string(), "kmsecrets-metrics".to_string()];
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.is_empty()
    {
        names.push(h);
    }
    let resolver = Arc::new(tls::Resolver::new(cfg.cert_dir.clone(), names)?);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver)?));
    let app = Router::new()
        .route("/metrics", get(secure_metrics))
        .with_state(SecureShared { metrics, auth });
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.addr))?;
    let local_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                r = listener.accept() => {
                    let Ok((tcp, _)) = r else { continue };
                    if conns.len() >= MAX_CONNECTIONS {
                        continue; // dropped: the scraper retries
                    }
                    let (acceptor, app) = (acceptor.clone(), app.clone());
                    conns.spawn(async move {
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                        else {
                            return;
                        };
                        let svc = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            }
        }
        conns.abort_all();
    });
    Ok(Http { local_addr, task })
}

async fn secure_metrics(AxState(s): AxState<SecureShared>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match s.auth.check(authorization).await {
        Ok(Decision::Allowed) => render_metrics(AxState(Shared {
            probes: Arc::default(),
            metrics: s.metrics,
        }))
        .await
        .into_response(),
        Ok(Decision::Unauthenticated) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "Unauthorized\n",
        )
            .into_response(),
        Ok(Decision::Forbidden) => (StatusCode::FORBIDDEN, "Forbidden\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot review a /metrics request with the API server");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error: authorization failed\n",
            )
                .into_response()
        }
    }
}
