//! Test harness shared by integration tests: the KMS peers (moto from the
//! Python venv, local-kms, a fault-injecting / quota-enforcing KMS proxy;
//! they live in `kmsecrets-envtest` so benchmarks share them) and SDK
//! helpers. Everything binds 127.0.0.1 and stops on drop. Nothing here skips: a missing tool is
//! a failure that says how to get it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod aws;
pub mod cluster;
pub mod faults;

use std::path::PathBuf;

pub use kmsecrets_envtest::peers::{
    KmsProxy, LocalKms, Moto, free_port, venv_python, wait_for_port,
};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub use aws::{aws_test_env, sdk_client, test_credentials};

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
