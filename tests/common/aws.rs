//! AWS SDK helpers for talking to a KMS emulator (moto, local-kms). Also
//! compiled into `examples/scale_real.rs` (`#[path]`), so nothing here may
//! use test-only environment (`CARGO_BIN_EXE_*`).

#![allow(dead_code)]
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
