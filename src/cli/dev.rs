//! `kmsecrets dev`: the whole product on a laptop. Starts the in-memory
//! Kubernetes-API-compatible test server, registers the CRD, creates a local
//! KMS key, runs the controller against it, and prints what to run next.
//! Nothing here is used by `kmsecrets controller`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

use super::controller::{LogFormat, init_logging, kube_client, shutdown_signal};
use super::{CliResult, GlobalArgs, LayerArgs, build_kms, msg};
use crate::controller::{Config, State};
use crate::kms::local::LocalKey;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where to write kubeconfig and local.key
    #[arg(long, default_value = ".kmsecrets-dev", value_name = "DIR")]
    pub dir: PathBuf,
    /// API server listen address
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    /// Controller /metrics, /healthz, /readyz address
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub http_addr: String,
    /// Resync interval of the controller
    #[arg(long, default_value = "10m", value_parser = super::parse_duration, value_name = "DURATION")]
    pub resync_interval: Duration,
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
}

pub async fn run(g: &GlobalArgs, a: DevArgs) -> CliResult {
    init_logging(LogFormat::Text, &a.log_level)?;
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| msg(format!("cannot create {}: {e}", a.dir.display())))?;
    let dir = a
        .dir
        .canonicalize()
        .map_err(|e| msg(format!("{}: {e}", a.dir.display())))?;
    let key_path = dir.join("local.key");
    let key = if key_path.exists() {
        LocalKey::load(&key_path)?
    } else {
        LocalKey::write_new(&key_path)?
    };
    let key_id = key.id().to_string();

    // A random bearer token: the in-memory server serves decrypted Secrets,
    // so it must not answer every local user.
    let token = {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    };
    let options = kmsecrets_testserver::Options {
        bearer_token: Some(token),
        ..Default::default()
    };
    let server = kmsecrets_testserver::TestServer::start_with(&a.listen, options)
        .await
        .map_err(|e| msg(format!("cannot start the API server on {}: {e}", a.listen)))?;
    let kubeconfig = dir.join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .map_err(|e| msg(format!("cannot write {}: {e}", kubeconfig.display())))?;
    let client = kube_client(Some(&kubeconfig), Default::default()).await?;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crate::api::crd())
        .await
        .map_err(|e| msg(format!("cannot register the CRD: {e}")))?;

    let mut globals = g.clone();
    globals.local_keys.push(key_path.clone());
    let (setup, _) = build_kms(&globals, &[], &LayerArgs::default())?;
    let cfg = Config {
        namespaces: vec![],
        label_selector: None,
        concurrency: 8,
        allowed_secret_types: Vec::new(),
        regions: None,
        max_workers_per_namespace: None,
        shutdown_timeout: Duration::from_secs(25),
        key_check_interval: Duration::from_secs(300),
        max_tracked_keys: 1000,
        resync_interval: a.resync_interval,
        slow_retry: Duration::from_secs(60),
        leader_election: None,
        // a laptop: /metrics in plain HTTP beside the probes
        secure_metrics: None,
        http_addr: Some(
            a.http_addr
                .parse()
                .map_err(|e| msg(format!("invalid --http-addr: {e}")))?,
        ),
    };
    let state = Arc::new(State::new(client, setup.kms, cfg, "kmsecrets-dev"));
    let shutdown = shutdown_signal();
    let run = tokio::spawn(crate::controller::run(state.clone(), shutdown.clone()));

    let kc = kubeconfig.display();
    let k = key_path.display();
    super::out(format!(
        "kmsecrets dev is running: API server {url}, local KMS key {key_id}\n\
         wrote {kc} and {k}\n\n\
         Next, in another terminal:\n\n  \
         export KUBECONFIG={kc}\n  \
         kmsecrets encrypt --key file:{k} --name demo -n default --from-literal password=s3cr3t > demo.yaml\n  \
         kubectl apply -f demo.yaml && kubectl get esec demo && kubectl get secret demo -o yaml\n\n\
         Ctrl-C stops everything (state is in memory only).\n",
        url = server.url()
    ))?;
    match run.await {
        Ok(res) => res.map_err(msg)?,
        Err(e) => return Err(msg(format!("controller task failed: {e}"))),
    }
    server.shutdown().await;
    Ok(())
}
