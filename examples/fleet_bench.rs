//! The fleet commands on a repository of 500 EncryptedSecrets, against moto
//! behind a 100 requests/s quota (printed, not asserted).
//!
//! ```sh
//! cargo run --release --example fleet_bench            # 500 files
//! cargo run --release --example fleet_bench -- 2000    # FILES
//! ```
//!
//! The release `kmsecrets` binary runs, as a user would:
//! `rotate --rewrap --key NEW -R repo/` (ReEncrypt per data key), the same
//! again (a no-op: every file already under NEW, each proven to open with
//! one Decrypt), `verify --decrypt -R repo/` and `decrypt -f repo/ -R`; each
//! with the default `--kms-qps 50` ceiling and with `--kms-qps 1000` (the
//! quota is then the limit). Printed: seconds, KMS requests that reached the
//! quota, throttled ones, and time ÷ bound (bound = requests ÷ the lower of
//! quota and ceiling).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/aws.rs"]
mod aws;
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kmsecrets::api::{EncryptedSecret, EncryptedSecretSpec, Provider};
use kmsecrets::kms::aws::AwsOptions;
use kmsecrets::kms::layer::{Kms, LayerConfig, Providers};
use kmsecrets::metrics::Metrics;
use kmsecrets::resource::{self, Plaintext};
use kmsecrets::wrap::{self, KeyRef};
use kmsecrets_envtest::peers::{KmsProxy, Moto};
use zeroize::Zeroizing;

const QUOTA: f64 = 100.0;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let files: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let bin = support::kmsecrets_bin();
    let moto = Moto::start();
    let setup = aws::sdk_client(&moto.url()).await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(
            setup
                .create_key()
                .send()
                .await
                .unwrap()
                .key_metadata
                .unwrap()
                .arn
                .unwrap(),
        );
    }
    let (old, new) = (keys[0].clone(), keys[1].clone());
    // the repository, written straight against moto (no quota)
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let kms = Kms::new(
        Providers::new(AwsOptions {
            region: Some("us-east-1".into()),
            endpoint: Some(moto.url()),
            static_credentials: Some(aws::test_credentials()),
            ..Default::default()
        }),
        LayerConfig {
            qps: 1000.0,
            ..LayerConfig::default()
        },
        Arc::new(Metrics::new()),
    );
    let t = Instant::now();
    futures::stream::iter(0..files)
        .map(|i| {
            let (kms, old, repo) = (kms.clone(), old.clone(), repo.clone());
            async move {
                let mut es = EncryptedSecret::new(
                    &format!("s{i}"),
                    EncryptedSecretSpec {
                        scope: Default::default(),
                        encryption_context: Default::default(),
                        data_keys: Vec::new(),
                        encrypted_data: Default::default(),
                        template: None,
                        rollout_restart_targets: Vec::new(),
                        deletion_policy: Default::default(),
                    },
                );
                es.metadata.namespace = Some(format!("team{}", i % 10));
                let binding = resource::binding_of(&es).unwrap();
                let (dek, data_keys) = wrap::new_dek(
                    &kms,
                    &[KeyRef::new(Provider::AwsKms, old)],
                    &binding.encryption_context(),
                )
                .await
                .unwrap();
                let values: Plaintext = [
                    (
                        "username".to_string(),
                        Zeroizing::new(format!("user{i}").into_bytes()),
                    ),
                    (
                        "password".to_string(),
                        Zeroizing::new(format!("pw-{i}").into_bytes()),
                    ),
                ]
                .into();
                es.spec.encrypted_data = resource::seal(&dek, &binding, &values, None).unwrap();
                es.spec.data_keys = data_keys;
                let path = repo.join(format!("team{}/s{i}.yaml", i % 10));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(
                    &path,
                    kmsecrets::manifest::render(&[es], kmsecrets::manifest::Format::Yaml),
                )
                .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "{files} files in 10 directories written in {:?}",
        t.elapsed()
    );

    let repo_s = repo.display().to_string();
    println!("== {files} EncryptedSecrets (one data key each), moto behind a {QUOTA}/s quota ==");
    println!("| command | --kms-qps | seconds | KMS requests | throttled | time ÷ bound |");
    println!("|---|---|---|---|---|---|");
    for qps in ["50", "1000"] {
        let target = if qps == "50" { &new } else { &old };
        let cmds: Vec<(String, Vec<String>)> = vec![
            (
                format!(
                    "rotate --rewrap -R (to the {} key)",
                    if qps == "50" { "new" } else { "old" }
                ),
                vec![
                    "rotate".into(),
                    "--rewrap".into(),
                    "--key".into(),
                    target.clone(),
                    "-R".into(),
                    repo_s.clone(),
                ],
            ),
            (
                "the same again (no-op)".into(),
                vec![
                    "rotate".into(),
                    "--rewrap".into(),
                    "--key".into(),
                    target.clone(),
                    "-R".into(),
                    repo_s.clone(),
                ],
            ),
            (
                "verify --decrypt -R".into(),
                vec![
                    "verify".into(),
                    "--decrypt".into(),
                    "-R".into(),
                    repo_s.clone(),
                ],
            ),
            (
                "decrypt -f DIR -R".into(),
                vec!["decrypt".into(), "-f".into(), repo_s.clone(), "-R".into()],
            ),
        ];
        for (what, args) in cmds {
            let proxy = KmsProxy::start(moto.port);
            proxy.set_quota(Some(QUOTA));
            let t = Instant::now();
            let out = Command::new(&bin)
                .args(&args)
                .args(["--kms-qps", qps])
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_CONFIG_FILE", "/nonexistent")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
                .env("AWS_ENDPOINT_URL_KMS", proxy.url())
                .output()
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let last = String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
                .to_string();
            eprintln!("{what}: {last}");
            let requests = proxy.forwarded() + proxy.injected();
            let rate = QUOTA.min(qps.parse::<f64>().unwrap());
            let bound = requests.saturating_sub(proxy.injected()) as f64 / rate;
            println!(
                "| {what} | {qps} | {secs:.1} | {requests} | {} | {:.2} |",
                proxy.injected(),
                secs / bound.max(0.001)
            );
        }
    }
}
