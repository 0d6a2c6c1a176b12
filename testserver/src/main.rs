//! `kmsecrets-testserver`: serves the in-memory Kubernetes API until
//! SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;

/// In-memory Kubernetes-API-compatible server for kmsecrets tests and demos.
#[derive(Debug, Parser)]
#[command(name = "kmsecrets-testserver", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(
        long,
        default_value = "127.0.0.1:0",
        env = "KMSECRETS_TESTSERVER_LISTEN"
    )]
    listen: String,
    /// Write a kubeconfig pointing at the server to this path once it is ready.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let server = match kmsecrets_testserver::TestServer::start(&cli.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {}: {e}\nhint: pass a free address with --listen 127.0.0.1:0",
                cli.listen
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(path) = &cli.kubeconfig
        && let Err(e) = server.write_kubeconfig(path)
    {
        eprintln!("error: cannot write kubeconfig {}: {e}", path.display());
        return std::process::ExitCode::FAILURE;
    }
    println!("{}", server.url());
    tracing::info!(url = %server.url(), "kmsecrets-testserver ready");
    wait_for_signal().await;
    server.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
