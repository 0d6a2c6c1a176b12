//! `kmsecrets controller`: run the operator. Every flag has an env var.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use super::{CliResult, GlobalArgs, LayerArgs, build_kms_with, msg, parse_duration};
use crate::controller::{Config, LeaderElection, State};
use crate::kms::regions::RegionPolicy;

#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Watch only this namespace (repeatable; default: all namespaces)
    #[arg(
        long = "namespace",
        value_name = "NS",
        env = "KMSECRETS_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Only reconcile EncryptedSecrets matching this label selector
    #[arg(long, value_name = "SELECTOR", env = "KMSECRETS_LABEL_SELECTOR")]
    pub label_selector: Option<String>,
    /// Allow a Secret type the cluster fills with a credential it mints
    /// (kubernetes.io/service-account-token, bootstrap.kubernetes.io/token);
    /// refused by default: creating an EncryptedSecret must not mean minting
    /// tokens (repeatable)
    #[arg(
        long = "allow-secret-type",
        value_name = "TYPE",
        env = "KMSECRETS_ALLOW_SECRET_TYPES",
        value_delimiter = ','
    )]
    pub allow_secret_types: Vec<String>,
    /// An AWS region KMS requests may go to, besides the configured one
    /// (--region / AWS_REGION) and those learned from resources that synced
    /// (repeatable; list DR regions here). A copy in any other region is
    /// skipped without a request: a resource cannot make the controller
    /// call arbitrary regions
    #[arg(
        long = "kms-region",
        value_name = "REGION",
        env = "KMSECRETS_KMS_REGIONS",
        value_delimiter = ','
    )]
    pub kms_regions: Vec<String>,
    /// Workers one namespace's resources may hold in the KMS stage at once
    /// (default: half of --concurrency); its failing resources get half of
    /// that. Others are parked until one of its slots frees, so one
    /// tenant cannot stall the rest. Single-tenant clusters may set it to --concurrency
    #[arg(long, value_name = "N", env = "KMSECRETS_MAX_WORKERS_PER_NAMESPACE",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_workers_per_namespace: Option<u16>,
    /// Upper bound on unwrapping one resource's data key, every copy and
    /// retry included; a resource never holds a worker longer
    #[arg(long, default_value = "20s", value_parser = parse_duration, env = "KMSECRETS_UNWRAP_TIMEOUT", value_name = "DURATION")]
    pub unwrap_timeout: Duration,
    /// After SIGTERM, how long in-flight reconciles may finish before the
    /// process exits anyway; keep it below the pod's
    /// terminationGracePeriodSeconds (chart default 30s)
    #[arg(long, default_value = "25s", value_parser = parse_duration, env = "KMSECRETS_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Duration,
    /// How often every KMS key the resources depend on is described (DescribeKey, one call per key): a key disabled or scheduled for deletion shows as KeysHealthy=False, and data keys cached under it stop working, within this interval. 0 turns the checks off
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "KMSECRETS_KEY_CHECK_INTERVAL", value_name = "DURATION")]
    pub key_check_interval: Duration,
    /// KMS keys whose health is tracked at most (metrics carry one series set per key)
    #[arg(long, default_value_t = 1000, env = "KMSECRETS_MAX_TRACKED_KEYS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_tracked_keys: u32,
    /// How the controller talks to the API server: http2 multiplexes every request and watch over one connection (pinged every 30s, replaced when a ping goes unanswered for 15s), as client-go does; http1 opens a connection per request in flight. A kubeconfig proxy-url always uses http1
    #[arg(
        long,
        value_enum,
        default_value = "http2",
        env = "KMSECRETS_API_PROTOCOL",
        value_name = "PROTOCOL"
    )]
    pub api_protocol: crate::kubeclient::Protocol,
    /// Reconciles running in parallel (they mostly wait on KMS and the API server; see docs/tuning.md)
    #[arg(long, default_value_t = 32, env = "KMSECRETS_CONCURRENCY", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Threads running the controller (1: a single-threaded runtime, no
    /// cross-thread wake-ups; the work is waiting on KMS and the API server,
    /// so more threads mostly add CPU; see docs/tuning.md)
    #[arg(long, default_value_t = 1, env = "KMSECRETS_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Periodic re-check of every resource (cheap when nothing changed: no KMS call, no write)
    #[arg(long, default_value = "10m", value_parser = parse_duration, env = "KMSECRETS_RESYNC_INTERVAL", value_name = "DURATION")]
    pub resync_interval: Duration,
    /// Retry interval for permanent errors such as AccessDenied (IAM may be fixed later)
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "KMSECRETS_PERMANENT_ERROR_RETRY", value_name = "DURATION")]
    pub permanent_error_retry: Duration,
    /// Elect a leader through a coordination.k8s.io Lease (required for replicas > 1)
    #[arg(long, env = "KMSECRETS_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else kmsecrets-system)
    #[arg(long, value_name = "NS", env = "KMSECRETS_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease
    #[arg(
        long,
        default_value = "kmsecrets-controller",
        value_name = "NAME",
        env = "KMSECRETS_LEADER_ELECTION_NAME"
    )]
    pub leader_election_name: String,
    /// How long a leader's Lease is valid without renewal (failover time)
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION", env = "KMSECRETS_LEADER_ELECTION_LEASE_DURATION")]
    pub leader_election_lease_duration: Duration,
    /// Address for /healthz and /readyz in plain HTTP, and /metrics too with --metrics-secure=false ("" disables)
    #[arg(
        long,
        default_value = "0.0.0.0:8080",
        env = "KMSECRETS_HTTP_ADDR",
        value_name = "ADDR"
    )]
    pub http_addr: String,
    /// Address for /metrics over HTTPS, each request authenticated (TokenReview) and authorized (SubjectAccessReview: get on /metrics) ("" disables)
    #[arg(
        long,
        default_value = "0.0.0.0:8443",
        env = "KMSECRETS_METRICS_ADDR",
        value_name = "ADDR"
    )]
    pub metrics_addr: String,
    /// Serve /metrics over HTTPS with authentication and authorization (false: plain HTTP on --http-addr, for local use)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "KMSECRETS_METRICS_SECURE", value_name = "BOOL")]
    pub metrics_secure: bool,
    /// Directory with the metrics serving certificate, tls.crt and tls.key (re-read when they change); default: self-signed at start
    #[arg(long, env = "KMSECRETS_METRICS_CERT_DIR", value_name = "DIR")]
    pub metrics_cert_dir: Option<PathBuf>,
    /// How long an allowed /metrics review is cached (refusals: a tenth; 0 reviews every request)
    #[arg(long, default_value = "1m", value_parser = parse_duration, env = "KMSECRETS_METRICS_AUTH_CACHE_TTL", value_name = "DURATION")]
    pub metrics_auth_cache_ttl: Duration,
    /// Log format
    #[arg(long, value_enum, default_value = "text", env = "KMSECRETS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level / filter (tracing EnvFilter syntax, e.g. info,kmsecrets=debug)
    #[arg(
        long,
        default_value = "info",
        env = "KMSECRETS_LOG_LEVEL",
        value_name = "LEVEL"
    )]
    pub log_level: String,
    /// Kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, or in-cluster)
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Validate all flags, print the effective configuration and exit
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub layer: LayerArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(format: LogFormat, level: &str) -> CliResult {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| msg(format!("invalid --log-level {level:?}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: files and log collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let res = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Already initialised (tests, dev): keep the first subscriber.
    let _ = res;
    Ok(())
}

pub fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("kmsecrets-{}", hex::encode(rand::random::<[u8; 4]>())))
}

/// Parse and validate everything; no network access.
pub fn config_from(a: &ControllerArgs) -> CliResult<Config> {
    a.layer.config().map_err(msg)?;
    tracing_subscriber::EnvFilter::try_new(&a.log_level)
        .map_err(|e| msg(format!("invalid --log-level: {e}")))?;
    if let Some(sel) = &a.label_selector
        && sel.split(',').any(|part| part.trim().is_empty())
    {
        return Err(msg(format!(
            "invalid --label-selector {sel:?}: empty requirement"
        )));
    }
    for ns in &a.namespaces {
        if ns.is_empty()
            || !ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(msg(format!("invalid --namespace {ns:?}")));
        }
    }
    for r in &a.kms_regions {
        if !crate::kms::regions::region_shaped(r) {
            return Err(msg(format!(
                "invalid --kms-region {r:?}: expected a region name such as eu-west-1"
            )));
        }
    }
    if a.unwrap_timeout < Duration::from_secs(1) {
        return Err(msg("--unwrap-timeout must be at least 1s"));
    }
    if a.shutdown_timeout < Duration::from_secs(1) {
        return Err(msg("--shutdown-timeout must be at least 1s"));
    }
    if a.resync_interval < Duration::from_secs(1) {
        return Err(msg("--resync-interval must be at least 1s"));
    }
    let http_addr = if a.http_addr.is_empty() {
        None
    } else {
        Some(
            a.http_addr
                .parse::<SocketAddr>()
                .map_err(|e| msg(format!("invalid --http-addr {:?}: {e}", a.http_addr)))?,
        )
    };
    let secure_metrics = if !a.metrics_secure || a.metrics_addr.is_empty() {
        None
    } else {
        Some(crate::http::SecureMetrics {
            addr: a
                .metrics_addr
                .parse::<SocketAddr>()
                .map_err(|e| msg(format!("invalid --metrics-addr {:?}: {e}", a.metrics_addr)))?,
            cert_dir: a.metrics_cert_dir.clone(),
            auth_cache_ttl: a.metrics_auth_cache_ttl,
        })
    };
    let leader_election = a.leader_elect.then(|| LeaderElection {
        namespace: a
            .leader_election_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "kmsecrets-system".into()),
        name: a.leader_election_name.clone(),
        lease_duration: a.leader_election_lease_duration,
        identity: identity(),
    });
    if leader_election
        .as_ref()
        .is_some_and(|l| l.lease_duration < Duration::from_secs(2))
    {
        return Err(msg("--leader-election-lease-duration must be at least 2s"));
    }
    Ok(Config {
        namespaces: a.namespaces.clone(),
        label_selector: a.label_selector.clone(),
        concurrency: a.concurrency,
        resync_interval: a.resync_interval,
        slow_retry: a.permanent_error_retry,
        leader_election,
        http_addr,
        secure_metrics,
        allowed_secret_types: a.allow_secret_types.clone(),
        regions: Some(Arc::new(RegionPolicy::new(a.kms_regions.iter().cloned()))),
        shutdown_timeout: a.shutdown_timeout,
        max_workers_per_namespace: a.max_workers_per_namespace.map(usize::from),
        key_check_interval: a.key_check_interval,
        max_tracked_keys: a.max_tracked_keys as usize,
    })
}

pub async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
    protocol: crate::kubeclient::Protocol,
) -> CliResult<kube::Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| msg(format!("cannot read kubeconfig {}: {e}", p.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| msg(format!("invalid kubeconfig {}: {e}", p.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            msg(format!(
                "no Kubernetes configuration found ({e}); set KUBECONFIG or run in a cluster"
            ))
        })?,
    };
    crate::kubeclient::build(config, protocol)
        .map_err(|e| msg(format!("cannot build the Kubernetes client: {e}")))
}

/// Resolves when SIGTERM or SIGINT arrives.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown signal received; stopping");
        let _ = tx.send(true);
    });
    rx
}

pub async fn run(g: &GlobalArgs, a: ControllerArgs) -> CliResult {
    let cfg = config_from(&a)?;
    let mut layer = a.layer.config().map_err(msg)?;
    layer.unwrap_deadline = Some(a.unwrap_timeout);
    let (setup, _) = build_kms_with(g, &[], layer, cfg.regions.clone())?;
    if a.check_config {
        // what the controller would run with, not the flags re-parsed
        super::out(format!(
            "config ok: {cfg:#?}\nkms: {:#?}\nworker threads: {}\napi protocol: {}\n",
            setup.kms.config(),
            a.worker_threads,
            a.api_protocol.name()
        ))?;
        return Ok(());
    }
    init_logging(a.log_format, &a.log_level)?;
    let client = kube_client(a.kubeconfig.as_deref(), a.api_protocol).await?;
    let identity = cfg
        .leader_election
        .as_ref()
        .map_or_else(identity, |l| l.identity.clone());
    let state = Arc::new(State::new(client, setup.kms, cfg, &identity));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %identity, worker_threads = a.worker_threads, "kmsecrets controller starting");
    let shutdown = shutdown_signal();
    let mut fired = shutdown.clone();
    let grace = state.cfg.shutdown_timeout;
    tokio::select! {
        r = crate::controller::run(state, shutdown) => r.map_err(msg),
        () = async {
            if fired.wait_for(|stop| *stop).await.is_err() {
                futures::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(timeout = ?grace, "in-flight reconciles did not finish within --shutdown-timeout; exiting anyway");
            Ok(())
        }
    }
}
