//! The running server: shared state, the listener, the GC task, shutdown,
//! and the public `TestServer` handle.
//!
//! Owns the lifecycle. Request handling lives in `http`; it never touches
//! object semantics.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::admin::{CounterState, Counters, Faults};
use crate::store::{DEFAULT_LOG_CAPACITY, Store};

pub(crate) struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub faults: Faults,
    pub counters: CounterState,
    pub gc_notify: Notify,
    pub shutdown: watch::Receiver<bool>,
    pub base_url: String,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// PEM of the CA that signed the serving certificate (HTTPS only).
    pub ca_pem: Option<String>,
}

/// Options for [`TestServer::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch events kept for resumption (older versions get 410 Expired).
    pub event_log_capacity: usize,
    /// Require `Authorization: Bearer <token>` on every request (401
    /// otherwise); the written kubeconfig carries it. `None`: no credentials
    /// needed (tests). Implies HTTPS with a throwaway CA (kubectl sends no
    /// credentials over plain HTTP); the kubeconfig trusts that CA.
    pub bearer_token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            event_log_capacity: DEFAULT_LOG_CAPACITY,
            bearer_token: None,
        }
    }
}

/// An in-memory Kubernetes API server serving on a local address.
///
/// Stops when [`TestServer::shutdown`] is awaited or when dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    serve: Option<JoinHandle<()>>,
    gc: Option<JoinHandle<()>>,
}

/// Name used for the kubeconfig cluster, user and context.
pub const CONTEXT_NAME: &str = "kmsecrets-testserver";

impl TestServer {
    /// Binds (e.g. "127.0.0.1:0"), starts serving in the current tokio
    /// runtime, returns when ready.
    pub async fn start(addr: &str) -> std::io::Result<TestServer> {
        Self::start_with(addr, Options::default()).await
    }

    pub async fn start_with(addr: &str, options: Options) -> std::io::Result<TestServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let tls = match &options.bearer_token {
            Some(_) => Some(crate::tls::identity().map_err(std::io::Error::other)?),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (stop, shutdown) = watch::channel(false);
        let store = Arc::new(Mutex::new(Store::new(options.event_log_capacity)));
        crate::bootstrap::seed(&store);
        let shared = Arc::new(Shared {
            faults: Faults::new(store.clone()),
            store,
            counters: CounterState::default(),
            gc_notify: Notify::new(),
            shutdown: shutdown.clone(),
            base_url: format!("{scheme}://{addr}"),
            bearer_token: options.bearer_token.clone(),
            ca_pem: tls.as_ref().map(|t| t.ca_pem.clone()),
        });
        let router = axum::Router::new()
            .fallback(crate::http::handle)
            .with_state(shared.clone());
        let mut graceful = shutdown.clone();
        let serve = tokio::spawn(async move {
            let stop = async move {
                let _ = graceful.wait_for(|v| *v).await;
            };
            let result = match tls {
                None => {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stop)
                        .await
                }
                Some(id) => {
                    let listener = crate::tls::TlsListener {
                        tcp: listener,
                        acceptor: tokio_rustls::TlsAcceptor::from(id.config),
                    };
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stop)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "test server stopped with an error");
            }
        });
        let gc = tokio::spawn(crate::gc::run(shared.clone()));
        Ok(TestServer {
            addr,
            shared,
            stop,
            serve: Some(serve),
            gc: Some(gc),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// A kubeconfig whose cluster, user and context are all named
    /// `kmsecrets-testserver`, pointing at this server over plain HTTP with
    /// a dummy token and the `default` namespace.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_with_token(
            &self.url(),
            self.shared.bearer_token.as_deref().unwrap_or(DUMMY_TOKEN),
            self.shared.ca_pem.as_deref(),
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        // 0600: with a bearer token this file is the credential
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(self.kubeconfig_yaml().as_bytes())?;
        // an existing file keeps its mode on open: set it
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }

    /// Snapshot of request counts by (verb, resource).
    pub fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }

    /// Forgets all request counts.
    pub fn reset_counters(&self) {
        self.shared.counters.reset();
    }

    /// Fault injection, same as the admin endpoints.
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        crate::admin::lock(&self.shared.store).current_rv()
    }

    /// Number of stored objects of a resource (`group`, `plural`), all
    /// namespaces. For tests and load numbers.
    pub fn object_count(&self, group: &str, plural: &str) -> usize {
        let key = crate::resources::StorageKey {
            group: group.into(),
            plural: plural.into(),
        };
        crate::admin::lock(&self.shared.store).count(&key)
    }

    /// Stops serving: open watches end, the listener closes.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(serve) = self.serve.take() {
            // Keep-alive connections of clients that are still around must
            // not keep a test waiting.
            if tokio::time::timeout(Duration::from_secs(2), serve)
                .await
                .is_err()
            {
                tracing::debug!("test server connections did not close in time");
            }
        }
        if let Some(gc) = self.gc.take() {
            gc.abort();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(serve) = self.serve.take() {
            serve.abort();
        }
        if let Some(gc) = self.gc.take() {
            gc.abort();
        }
    }
}

const DUMMY_TOKEN: &str = "kmsecrets-testserver-dummy-token";

pub fn kubeconfig_yaml(server: &str) -> String {
    kubeconfig_with_token(server, DUMMY_TOKEN, None)
}

fn kubeconfig_with_token(server: &str, token: &str, ca_pem: Option<&str>) -> String {
    use base64::Engine;
    let ca = ca_pem
        .map(|pem| {
            format!(
                "\n    certificate-authority-data: {}",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT_NAME}
  cluster:
    server: {server}{ca}
users:
- name: {CONTEXT_NAME}
  user:
    token: {token}
contexts:
- name: {CONTEXT_NAME}
  context:
    cluster: {CONTEXT_NAME}
    user: {CONTEXT_NAME}
    namespace: default
current-context: {CONTEXT_NAME}
preferences: {{}}
"
    )
}
