//! The KMS provider abstraction: one trait, the bounded error taxonomy that
//! drives retries, conditions and metrics, and the implementations
//! (`aws` — AWS KMS via aws-sdk-kms; `local` — a file-held KEK; `fake` — a
//! programmable provider for tests and benches).
//!
//! Callers never use a provider directly: they go through [`layer::Kms`],
//! which adds the DEK cache, single-flight, rate limiting and retries.
//!
//! Never: log, format or return key material; error messages carry KMS
//! error codes/messages and key ids only.

pub mod aws;
pub mod cache;
#[cfg(feature = "testing")]
pub mod fake;
pub mod flight;
pub mod health;
pub mod layer;
pub mod limiter;
pub mod local;
pub mod regions;
pub mod sealing;

use std::collections::BTreeMap;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::api::Reason;
pub use crate::api::{Algorithm, Provider};
use crate::envelope::Dek;

/// Encryption context as KMS takes it (the key–value pairs bound to every
/// wrap and unwrap; not the reconcile `Context`).
pub type EncryptionContext = BTreeMap<String, String>;

/// KMS Encrypt's plaintext limit.
pub const ENCRYPT_MAX_BYTES: usize = 4096;

/// KMS GenerateRandom accepts 1..=1024 bytes; every provider enforces the same.
pub fn check_random_len(len: usize) -> Result<(), KmsError> {
    if len == 0 || len > 1024 {
        return Err(KmsError::Invalid(format!(
            "random length must be 1..=1024 bytes, got {len}"
        )));
    }
    Ok(())
}

/// A DEK wrapped under one KMS key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub provider: Provider,
    /// As returned by the provider (a full ARN for aws-kms).
    pub key_id: String,
    /// SYMMETRIC_DEFAULT, or RSAES_OAEP_SHA_256 for an offline-sealed copy.
    pub algorithm: Algorithm,
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    /// A symmetric copy.
    pub fn symmetric(provider: Provider, key_id: impl Into<String>, ciphertext: Vec<u8>) -> Self {
        WrappedKey {
            provider,
            key_id: key_id.into(),
            algorithm: Algorithm::SymmetricDefault,
            ciphertext,
        }
    }
}

/// What KMS `GetPublicKey` says about an asymmetric key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// The key ARN.
    pub key_id: String,
    /// e.g. `RSA_3072`, `ECC_NIST_P256`.
    pub key_spec: String,
    /// e.g. `ENCRYPT_DECRYPT`, `SIGN_VERIFY`.
    pub key_usage: String,
    pub encryption_algorithms: Vec<String>,
    /// DER SubjectPublicKeyInfo.
    pub der: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub arn: String,
    pub enabled: bool,
    pub state: String,
    /// When a key in `PendingDeletion` will be deleted (RFC 3339).
    pub deletion_date: Option<String>,
}

/// KMS operations, used as the bounded `operation` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Decrypt,
    Encrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    ReEncrypt,
    GenerateRandom,
    DescribeKey,
    GetPublicKey,
}

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::Decrypt,
        Operation::Encrypt,
        Operation::GenerateDataKey,
        Operation::GenerateDataKeyWithoutPlaintext,
        Operation::ReEncrypt,
        Operation::GenerateRandom,
        Operation::DescribeKey,
        Operation::GetPublicKey,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Decrypt => "decrypt",
            Operation::Encrypt => "encrypt",
            Operation::GenerateDataKey => "generate_data_key",
            Operation::GenerateDataKeyWithoutPlaintext => "generate_data_key_without_plaintext",
            Operation::ReEncrypt => "re_encrypt",
            Operation::GenerateRandom => "generate_random",
            Operation::DescribeKey => "describe_key",
            Operation::GetPublicKey => "get_public_key",
        }
    }
}

/// Every provider failure, classified. Transient ones are retried.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KmsError {
    #[error("KMS throttled the request ({0}); lower --kms-qps or raise the account quota")]
    Throttled(String),
    #[error("KMS is unreachable or failing: {0}")]
    Unavailable(String),
    #[error("KMS denied access ({0}); check the key policy / IAM role and the encryption context")]
    AccessDenied(String),
    #[error(
        "no AWS credentials found ({0}); set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with IRSA / EKS Pod Identity"
    )]
    NoCredentials(String),
    #[error("KMS key is disabled or not usable ({0}); enable the key or re-wrap under another")]
    KeyDisabled(String),
    #[error("KMS key not found ({0})")]
    NotFound(String),
    #[error(
        "KMS rejected the ciphertext ({0}): it was altered, or the encryption context (namespace, name, scope, encryptionContext) differs from when it was encrypted"
    )]
    InvalidCiphertext(String),
    #[error("the ciphertext was wrapped under a different KMS key ({0})")]
    IncorrectKey(String),
    /// An offline-sealed (asymmetric) copy whose bound context hash is not
    /// this resource's: moved, renamed, re-scoped, context changed, or the
    /// copy was taken from another resource.
    #[error(
        "data key is bound to another namespace/name/scope (or encryptionContext): {0}; the copy was sealed for a different resource (moved, renamed, re-scoped, context changed, or copied from another resource)"
    )]
    ContextMismatch(String),
    /// The key exists but cannot do the operation (e.g. GenerateDataKey on an
    /// asymmetric key, offline sealing to a signing key).
    #[error("{0}")]
    KeyUsage(String),
    #[error(
        "KMS Encrypt takes at most {ENCRYPT_MAX_BYTES} bytes (got {0}); larger data needs envelope encryption (a data key from GenerateDataKey), which is what `kmsecrets encrypt` does"
    )]
    TooLarge(usize),
    #[error("no {provider} key available for {key_id}; {hint}")]
    NoKey {
        provider: &'static str,
        key_id: String,
        hint: String,
    },
    #[error("invalid KMS request: {0}")]
    Invalid(String),
    #[error("KMS error: {0}")]
    Other(String),
}

impl KmsError {
    /// Retried with backoff (and, for the controller, requeued with backoff).
    pub fn is_transient(&self) -> bool {
        matches!(self, KmsError::Throttled(_) | KmsError::Unavailable(_))
    }

    /// Every value [`KmsError::metric_result`] can take, plus `success`.
    pub const METRIC_RESULTS: [&str; 7] = [
        "success",
        "throttled",
        "access_denied",
        "key_disabled",
        "invalid_ciphertext",
        "unavailable",
        "error",
    ];

    /// Bounded `result` label of `kmsecrets_kms_requests_total`.
    pub fn metric_result(&self) -> &'static str {
        match self {
            KmsError::Throttled(_) => "throttled",
            KmsError::AccessDenied(_) | KmsError::NoCredentials(_) => "access_denied",
            KmsError::KeyDisabled(_) => "key_disabled",
            KmsError::InvalidCiphertext(_)
            | KmsError::IncorrectKey(_)
            | KmsError::ContextMismatch(_) => "invalid_ciphertext",
            KmsError::Unavailable(_) => "unavailable",
            _ => "error",
        }
    }

    /// Ready-condition reason for the controller.
    pub fn reason(&self) -> Reason {
        match self {
            KmsError::Throttled(_) => Reason::KmsThrottled,
            KmsError::Unavailable(_) | KmsError::Other(_) => Reason::KmsUnavailable,
            KmsError::AccessDenied(_) | KmsError::NoKey { .. } | KmsError::NoCredentials(_) => {
                Reason::KmsAccessDenied
            }
            KmsError::KeyDisabled(_) | KmsError::NotFound(_) => Reason::KmsKeyDisabled,
            KmsError::InvalidCiphertext(_)
            | KmsError::IncorrectKey(_)
            | KmsError::ContextMismatch(_) => Reason::DecryptFailed,
            KmsError::TooLarge(_) | KmsError::Invalid(_) | KmsError::KeyUsage(_) => {
                Reason::InvalidSpec
            }
        }
    }
}

/// A KMS backend. Implementations do ONE attempt per call (no retries, no
/// caching): the layer owns those so that every attempt is observed.
#[async_trait]
pub trait KmsProvider: Send + Sync {
    fn provider(&self) -> Provider;

    /// Whether calls draw on a remote request quota (the layer's rate
    /// limiter guards it). A provider without one (a local key) runs at
    /// full speed: no permit, no throttling.
    fn has_quota(&self) -> bool {
        true
    }

    /// Refuse a key before any request is made (the AWS provider's region
    /// allow-list) for a resource of namespace `tenant` ("": not for a
    /// resource). Every key is admitted by default.
    fn admits(&self, _key_id: &str, _tenant: &str) -> Result<(), KmsError> {
        Ok(())
    }

    /// Unwrap a DEK. `key_id` is the id recorded next to the ciphertext.
    async fn decrypt(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Dek, KmsError>;

    /// Wrap arbitrary bytes (≤ 4096) — used to wrap an existing DEK under an
    /// additional key.
    async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError>;

    /// A fresh DEK, in plaintext and wrapped.
    async fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Dek, WrappedKey), KmsError>;

    /// A fresh DEK, wrapped only: no plaintext key leaves KMS.
    async fn generate_data_key_without_plaintext(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError>;

    /// Move a wrapped DEK under another key of the same provider without
    /// exposing it.
    async fn re_encrypt(
        &self,
        src: &WrappedKey,
        dest_key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError>;

    async fn generate_random(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, KmsError>;

    async fn describe_key(&self, key_id: &str) -> Result<KeyInfo, KmsError>;

    /// Unwrap an offline-sealed copy: `Decrypt` with
    /// `EncryptionAlgorithm=RSAES_OAEP_SHA_256` and no context. Returns the
    /// raw plaintext; the layer checks its bound context
    /// ([`crate::kms::sealing::unbind`]).
    async fn decrypt_asymmetric(
        &self,
        key_id: &str,
        _ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        Err(KmsError::Invalid(format!(
            "{key_id}: {} keys are symmetric; an RSAES_OAEP_SHA_256 copy needs provider aws-kms",
            self.provider().as_str()
        )))
    }

    /// The public half of an asymmetric key (`GetPublicKey`).
    async fn get_public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        Err(KmsError::KeyUsage(format!(
            "{key_id} is a {} key: it has no public key; offline sealing needs an RSA ENCRYPT_DECRYPT KMS key",
            self.provider().as_str()
        )))
    }
}
