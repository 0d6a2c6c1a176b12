//! The `aws-kms` provider: AWS KMS through aws-sdk-kms.
//!
//! - One attempt per call: the SDK's own retries are disabled so the layer's
//!   loop sees (and counts) every throttled attempt.
//! - Region from the key ARN, else configuration (`--region`, AWS_REGION,
//!   profile). A custom endpoint (`--kms-endpoint`, AWS_ENDPOINT_URL[_KMS])
//!   serves VPC endpoints and tests.
//! - Credentials: the standard AWS chain (env, profile, web identity/IRSA,
//!   EKS Pod Identity / container credentials, IMDS).
//! - TLS uses rustls with ring, the same provider kube uses (mixing in
//!   aws-lc makes rustls refuse to pick a process-wide provider).
//!
//! Why one long file: each KMS operation and the classification of every
//! error AWS can return for it (code, dispatch failure, endpoint) belong
//! together — a new operation's error handling is reviewed next to the
//! table it extends. The region allow-list is [`super::regions`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, EncryptionAlgorithmSpec};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use zeroize::Zeroizing;

use super::regions::{RegionPolicy, region_of};
use super::{
    ENCRYPT_MAX_BYTES, EncryptionContext, KeyInfo, KmsError, KmsProvider, Provider, PublicKeyInfo,
    WrappedKey,
};
use crate::envelope::Dek;
use crate::sync::LockExt;

/// Where and how to reach KMS.
#[derive(Clone, Debug, Default)]
pub struct AwsOptions {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// Per-attempt timeout; sized so a slow KMS shows as `KmsUnavailable`
    /// well before a reconcile's own deadline.
    pub attempt_timeout: Option<Duration>,
    /// Fixed credentials instead of the AWS chain (tests, emulators).
    pub static_credentials: Option<aws_credential_types::Credentials>,
    /// The regions requests may go to (the controller's); `None` = any.
    pub regions: Option<Arc<RegionPolicy>>,
}

pub struct AwsKms {
    base: aws_config::SdkConfig,
    opts: AwsOptions,
    clients: Mutex<HashMap<String, Client>>,
}

impl AwsKms {
    /// Loads the AWS configuration (env, profile, credential chain).
    pub async fn new(opts: AwsOptions) -> AwsKms {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(
                        opts.attempt_timeout.unwrap_or(Duration::from_secs(10)),
                    )
                    .build(),
            );
        if let Some(r) = &opts.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &opts.endpoint {
            loader = loader.endpoint_url(e.clone());
        }
        if let Some(c) = &opts.static_credentials {
            loader = loader.credentials_provider(c.clone());
        }
        let base = loader.load().await;
        AwsKms {
            base,
            opts,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn region_for(&self, key_id: &str) -> Result<String, KmsError> {
        self.region_for_tenant(key_id, None)
    }

    /// The region of `key_id`, if the region policy allows it for a
    /// resource of `namespace`.
    fn region_for_tenant(&self, key_id: &str, namespace: Option<&str>) -> Result<String, KmsError> {
        let region = region_of(key_id)
            .map(str::to_string)
            .or_else(|| self.base.region().map(|r| r.to_string()))
            .ok_or_else(|| KmsError::Invalid(format!(
                "no AWS region for key {key_id}: use a key ARN, set AWS_REGION, or pass --region"
            )))?;
        if let Some(policy) = &self.opts.regions {
            let configured = self.base.region().map(|r| r.to_string());
            if !policy.allows(&region, configured.as_deref(), namespace) {
                return Err(KmsError::NoKey {
                    provider: "aws-kms",
                    key_id: key_id.to_string(),
                    hint: format!(
                        "region {region} is not one of the controller's KMS regions; if this copy is legitimate add --kms-region {region} (chart: controller.kmsRegions)"
                    ),
                });
            }
        }
        Ok(region)
    }

    /// Where a call for `key_id` goes, for error messages: the endpoint the
    /// SDK dials, whatever set it (`--kms-endpoint`, `AWS_ENDPOINT_URL_KMS`,
    /// `AWS_ENDPOINT_URL`, a profile's `endpoint_url`), else the regional
    /// AWS endpoint.
    fn attempt<'a>(&self, op: &'static str, key_id: &'a str) -> Attempt<'a> {
        let host = match self.custom_endpoint() {
            Some(e) => e
                .split_once("://")
                .map_or(e.as_str(), |(_, rest)| rest)
                .trim_end_matches('/')
                .to_string(),
            None => match self.region_for(key_id) {
                Ok(r) => format!("kms.{r}.amazonaws.com"),
                Err(_) => "the KMS endpoint".into(),
            },
        };
        Attempt { op, key_id, host }
    }

    /// The endpoint override in force, resolved the way the SDK resolves
    /// it for KMS (service-specific, then global; environment, then
    /// profile).
    fn custom_endpoint(&self) -> Option<String> {
        if let Some(e) = &self.opts.endpoint {
            return Some(e.clone());
        }
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id("KMS")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok()?;
        self.base
            .service_config()
            .and_then(|c| c.load_config(key))
            .or_else(|| self.base.endpoint_url().map(str::to_string))
    }

    fn client_for(&self, key_id: &str) -> Result<Client, KmsError> {
        let region = self.region_for(key_id)?;
        let mut clients = self.clients.lock_or_recover();
        if let Some(c) = clients.get(&region) {
            return Ok(c.clone());
        }
        let mut conf = aws_sdk_kms::config::Builder::from(&self.base)
            .region(aws_config::Region::new(region.clone()));
        if let Some(e) = &self.opts.endpoint {
            conf = conf.endpoint_url(e.clone());
        }
        let client = Client::from_conf(conf.build());
        clients.insert(region, client.clone());
        Ok(client)
    }
}

fn ctx_map(ctx: &EncryptionContext) -> Option<HashMap<String, String>> {
    (!ctx.is_empty()).then(|| ctx.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Map an SDK error to our bounded taxonomy by AWS error code (the SDK does
/// not model ThrottlingException for KMS, so codes are the only reliable key).
pub fn classify<E, R>(err: SdkError<E, R>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    classify_at(err, None)
}

/// Where a request went, for the error message: the operation, the key and
/// the endpoint host.
pub struct Attempt<'a> {
    pub op: &'static str,
    pub key_id: &'a str,
    pub host: String,
}

/// Why a request never got an answer, from the error's source chain.
fn dispatch_cause(err: &(dyn std::error::Error + 'static)) -> Option<KmsError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
        {
            let last = first_line(
                &std::error::Error::source(c).map_or_else(|| c.to_string(), |s| s.to_string()),
            );
            let detail = format!(
                "none in the environment, profile, web identity, container or instance metadata; the last source said: {last}"
            );
            return Some(KmsError::NoCredentials(detail));
        }
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return Some(KmsError::Unavailable("DNS lookup failed".into()));
        }
        if text.contains("certificate")
            || text.contains("tls")
            || text.contains("handshake")
            || text.contains("corrupt message")
        {
            return Some(KmsError::Unavailable(format!(
                "TLS failure: {}",
                first_line(&e.to_string())
            )));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return Some(KmsError::Unavailable("connection refused".into()));
                }
                std::io::ErrorKind::TimedOut => {
                    return Some(KmsError::Unavailable("connection timed out".into()));
                }
                _ => {}
            }
        }
        cur = e.source();
    }
    None
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// [`classify`], with where the request went: AccessDenied names the
/// operation and the key, an unreachable endpoint names its host and the
/// cause (DNS, TLS, refused, timeout), missing credentials are their own,
/// permanent, error.
pub fn classify_at<E, R>(err: SdkError<E, R>, at: Option<&Attempt<'_>>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let host = at.map(|a| format!(" at {}", a.host)).unwrap_or_default();
    match &err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().unwrap_or("Unknown");
            let msg = match e.message() {
                Some(m) if !m.is_empty() => format!("{code}: {m}"),
                _ => code.to_string(),
            };
            match (classify_code(code, msg), at) {
                (KmsError::AccessDenied(m), Some(a)) => {
                    KmsError::AccessDenied(format!("kms:{} on {}: {m}", a.op, a.key_id))
                }
                (other, _) => other,
            }
        }
        SdkError::TimeoutError(_) => KmsError::Unavailable(format!("request{host} timed out")),
        SdkError::DispatchFailure(d) => {
            let cause = std::error::Error::source(&err).and_then(dispatch_cause);
            match cause {
                Some(KmsError::Unavailable(why)) => {
                    KmsError::Unavailable(format!("cannot reach KMS{host}: {why}"))
                }
                Some(other) => other,
                None => KmsError::Unavailable(format!(
                    "cannot reach KMS{host} ({})",
                    if d.is_timeout() {
                        "timeout"
                    } else if d.is_io() {
                        "connection failed"
                    } else {
                        "dispatch failure"
                    }
                )),
            }
        }
        SdkError::ResponseError(_) => KmsError::Unavailable("unreadable response from KMS".into()),
        SdkError::ConstructionFailure(_)
            if let Some(cause) = std::error::Error::source(&err).and_then(dispatch_cause) =>
        {
            cause
        }
        SdkError::ConstructionFailure(_) => KmsError::Invalid(
            "could not build the KMS request (are AWS credentials and a region configured?)".into(),
        ),
        _ => KmsError::Other("unexpected SDK error".into()),
    }
}

pub fn classify_code(code: &str, msg: String) -> KmsError {
    match code {
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => KmsError::Throttled(msg),
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "InvalidClientTokenId" => KmsError::AccessDenied(msg),
        "DisabledException" | "KMSInvalidStateException" => KmsError::KeyDisabled(msg),
        "NotFoundException" => KmsError::NotFound(msg),
        "InvalidCiphertextException" => KmsError::InvalidCiphertext(msg),
        "IncorrectKeyException" => KmsError::IncorrectKey(msg),
        "KeyUnavailableException"
        | "DependencyTimeoutException"
        | "KMSInternalException"
        | "InternalFailure"
        | "InternalFailureException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException" => KmsError::Unavailable(msg),
        "InvalidKeyUsageException" => {
            KmsError::KeyUsage(format!("KMS refused the key for this operation: {msg}"))
        }
        "ValidationException" | "InvalidGrantTokenException" | "UnsupportedOperationException" => {
            KmsError::Invalid(msg)
        }
        _ => KmsError::Other(msg),
    }
}

/// The wrapped DEK of a response; KMS reports the key ARN it used (also when
/// called with an alias), which is what goes into `dataKeys[].keyId`.
fn wrapped(
    key_id: Option<String>,
    asked: &str,
    blob: Option<Blob>,
) -> Result<WrappedKey, KmsError> {
    Ok(WrappedKey::symmetric(
        Provider::AwsKms,
        key_id.unwrap_or_else(|| asked.to_string()),
        take_blob(blob, "ciphertext")?.to_vec(),
    ))
}

fn take_blob(b: Option<Blob>, what: &str) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    b.map(|b| Zeroizing::new(b.into_inner()))
        .ok_or_else(|| KmsError::Other(format!("KMS response has no {what}")))
}

#[async_trait]
impl KmsProvider for AwsKms {
    fn provider(&self) -> Provider {
        Provider::AwsKms
    }

    fn admits(&self, key_id: &str, tenant: &str) -> Result<(), KmsError> {
        let ns = (!tenant.is_empty()).then_some(tenant);
        self.region_for_tenant(key_id, ns).map(|_| ())
    }

    async fn decrypt(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Dek, KmsError> {
        let out = self
            .client_for(key_id)?
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .set_encryption_context(ctx_map(ctx))
            .send()
            .await
            .map_err(|e| classify_at(e, Some(&self.attempt("Decrypt", key_id))))?;
        let pt = take_blob(out.plaintext, "plaintext")?;
        Dek::from_slice(&pt).map_err(|_| {
            KmsError::InvalidCiphertext("unwrapped key is not a 32-byte data key".into())
        })
    }

    async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        if plaintext.len() > ENCRYPT_MAX_BYTES {
            return Err(KmsError::TooLarge(plaintext.len()));
        }
        let out = self
            .client_for(key_id)?
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(ctx_map(ctx))
            .send()
            .await
            .map_err(|e| classify_at(e, Some(&self.attempt("Encrypt", key_id))))?;
        wrapped(out.key_id, key_id, out.ciphertext_blob)
    }

    async fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Dek, WrappedKey), KmsError> {
        let out = self
            .client_for(key_id)?
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(ctx_map(ctx))
            .send()
            .await
            .map_err(|e| classify_at(e, Some(&self.attempt("GenerateDataKey", key_id))))?;
        let pt = take_blob(out.plaintext, "plaintext")?;
        let dek = Dek::from_slice(&pt).map_err(|_| {
            KmsError::Other("GenerateDataKey returned a key of the wrong size".into())
        })?;
        Ok((dek, wrapped(out.key_id, key_id, out.ciphertext_blob)?))
    }

    async fn generate_data_key_without_plaintext(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let out = self
            .client_for(key_id)?
            .generate_data_key_without_plaintext()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(ctx_map(ctx))
            .send()
            .await
            .map_err(|e| {
                classify_at(
                    e,
                    Some(&self.attempt("GenerateDataKeyWithoutPlaintext", key_id)),
                )
            })?;
        wrapped(out.key_id, key_id, out.ciphertext_blob)
    }

    async fn re_encrypt(
        &self,
        src: &WrappedKey,
        dest_key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        // The call goes to the destination key's region; KMS reads the source
        // key from the ciphertext.
        let out = self
            .client_for(dest_key_id)?
            .re_encrypt()
            .ciphertext_blob(Blob::new(src.ciphertext.as_slice()))
            .source_key_id(&src.key_id)
            .destination_key_id(dest_key_id)
            .set_source_encryption_context(ctx_map(ctx))
            .set_destination_encryption_context(ctx_map(ctx))
            .send()
            .await
            .map_err(|e| classify_at(e, Some(&self.attempt("ReEncrypt", dest_key_id))))?;
        wrapped(out.key_id, dest_key_id, out.ciphertext_blob)
    }

    async fn generate_random(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        super::check_random_len(len)?;
        let client = self.client_for("")?;
        let out = client
            .generate_random()
            .number_of_bytes(len as i32)
            .send()
            .await
            .map_err(|e| classify_at(e, Some(&self.attempt("GenerateRandom", ""))))?;
        take_blob(out.plaintext, "random bytes")
    }

    async fn decrypt_asymmetric(
        &self,
        key_id: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let out = self
            .client_for(key_id)?
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
            .send()
            .await
            .map_err(|e| classify_at(e, Some(&self.attempt("Decrypt", key_id))))?;
        take_blob(out.plaintext, "plaintext")
    }

    async fn get_public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        let out = self
            .client_for(key_id)?
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| classify_at(e, Some(&self.attempt("GetPublicKey", key_id))))?;
        Ok(PublicKeyInfo {
            key_id: out.key_id.unwrap_or_else(|| key_id.to_string()),
            key_spec: out
                .key_spec
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            key_usage: out
                .key_usage
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            encryption_algorithms: out
                .encryption_algorithms
                .unwrap_or_default()
                .iter()
                .map(|a| a.as_str().to_string())
                .collect(),
            der: out
                .public_key
                .map(|b| b.into_inner())
                .ok_or_else(|| KmsError::Other("GetPublicKey returned no public key".into()))?,
        })
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        let out = self
            .client_for(key_id)?
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| classify_at(e, Some(&self.attempt("DescribeKey", key_id))))?;
        let md = out
            .key_metadata
            .ok_or_else(|| KmsError::Other("DescribeKey returned no metadata".into()))?;
        Ok(KeyInfo {
            key_id: md.key_id.clone(),
            arn: md.arn.clone().unwrap_or_else(|| md.key_id.clone()),
            enabled: md.enabled,
            state: md
                .key_state
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            deletion_date: md
                .deletion_date
                .and_then(|d| d.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify() {
        let cases = [
            ("ThrottlingException", "throttled", true),
            ("AccessDeniedException", "access_denied", false),
            ("DisabledException", "key_disabled", false),
            ("KMSInvalidStateException", "key_disabled", false),
            ("InvalidCiphertextException", "invalid_ciphertext", false),
            ("IncorrectKeyException", "invalid_ciphertext", false),
            ("KMSInternalException", "unavailable", true),
            ("DependencyTimeoutException", "unavailable", true),
            ("NotFoundException", "error", false),
            ("WeirdException", "error", false),
        ];
        for (code, result, transient) in cases {
            let e = classify_code(code, code.into());
            assert_eq!(e.metric_result(), result, "{code}");
            assert_eq!(e.is_transient(), transient, "{code}");
        }
    }
}
