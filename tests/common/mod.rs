//! Test harness shared by integration tests: the KMS peers (moto from the
//! Python venv, local-kms, a fault-injecting / quota-enforcing KMS proxy;
//! they live in `kmsecrets-envtest` so benchmarks share them) and SDK
//! helpers. Everything binds 127.0.0.1 and stops on drop. Nothing here skips: a missing tool is
//! a failure that says how to get it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;

use std::path::PathBuf;

pub use kmsecrets_envtest::peers::{
    KmsProxy, LocalKms, Moto, free_port, venv_python, wait_for_port,
};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Environment for the kmsecrets binary / SDK talking to an emulator.
pub fn aws_test_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_SESSION_TOKEN", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/nonexistent".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".into()),
    ]
}

/// A raw SDK client for test setup (CreateKey, CreateAlias, ...).
pub async fn sdk_client(endpoint: &str) -> aws_sdk_kms::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_kms::config::Builder::new()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(test_credentials())
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

pub fn test_credentials() -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new("testing", "testing", None, None, "kmsecrets-tests")
}

/// Creates a symmetric key (and alias) in moto; returns its ARN.
pub async fn create_key(client: &aws_sdk_kms::Client, alias: &str) -> String {
    let key = client.create_key().send().await.expect("CreateKey on moto");
    let md = key.key_metadata.expect("key metadata");
    client
        .create_alias()
        .alias_name(alias)
        .target_key_id(&md.key_id)
        .send()
        .await
        .expect("CreateAlias on moto");
    md.arn.expect("arn")
}
