//! An in-memory, HTTP, Kubernetes-API-compatible server for tests and
//! `kmsecrets dev`.
//!
//! Real `kubectl` and kube-rs clients drive it through a kubeconfig
//! ([`TestServer::kubeconfig_yaml`]). It is a test instrument: fidelity to
//! the apiserver's observable behaviour matters more than speed; see the
//! crate README for every known difference.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let server = kmsecrets_testserver::TestServer::start("127.0.0.1:0").await?;
//! server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! let writes = server.counters().total_writes();
//! server.faults().expire_watches();
//! # let _ = writes;
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod apply;
mod bootstrap;
mod builtins;
mod discovery;
mod error;
mod fields;
mod gc;
mod http;
mod meta;
mod ops;
mod patch;
mod proto;
mod render;
mod resources;
mod selector;
mod server;
mod store;
mod tls;
mod watch;

pub use admin::{Counters, Faults};
pub use server::{CONTEXT_NAME, Options, TestServer, kubeconfig_yaml};
