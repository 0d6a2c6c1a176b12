//! Making and wrapping data keys: a fresh DEK under a list of keys (KMS
//! `GenerateDataKey` + `Encrypt`, or an offline RSA wrap to a SealingKey),
//! an existing DEK under one more key, and moving a wrapped DEK between keys
//! (`ReEncrypt` where KMS can do it without the DEK leaving it).
//!
//! Never: log or return a DEK; wrap under a key the caller did not pass
//! (which keys a CLI write may trust is `cli::trust`'s decision).

use crate::api::{Algorithm, DataKey, Provider};
use crate::envelope::{self, Dek};
use crate::kms::layer::Kms;
use crate::kms::sealing::{SealingKey, SharedSealingKey};
use crate::kms::{EncryptionContext, KmsError, WrappedKey};
use crate::resource::ResourceError;

/// Where to wrap a new DEK: a KMS key id or a local key id; for an
/// asymmetric KMS key, its public key when the caller already has it
/// (`--key pub:PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub provider: Provider,
    pub key_id: String,
    /// RSAES_OAEP_SHA_256: the key is known to be asymmetric (a copy that
    /// is, or a SealingKey file).
    pub algorithm: Algorithm,
    /// The public key, when already known: wrapping needs no KMS call.
    pub sealing: Option<SharedSealingKey>,
}

impl KeyRef {
    pub fn new(provider: Provider, key_id: impl Into<String>) -> KeyRef {
        KeyRef {
            provider,
            key_id: key_id.into(),
            algorithm: Algorithm::SymmetricDefault,
            sealing: None,
        }
    }

    /// A SealingKey file: wraps offline.
    pub fn sealing(key: SealingKey) -> KeyRef {
        KeyRef {
            provider: Provider::AwsKms,
            key_id: key.key_id().to_string(),
            algorithm: Algorithm::RsaesOaepSha256,
            sealing: Some(std::sync::Arc::new(key)),
        }
    }

    /// The key of an existing copy (rotate keeps the key set).
    pub fn of(d: &DataKey) -> KeyRef {
        KeyRef {
            algorithm: d.algorithm(),
            ..KeyRef::new(d.provider, d.key_id.clone())
        }
    }

    /// Wrapping under it needs no KMS access at all.
    pub fn is_offline(&self) -> bool {
        self.sealing.is_some()
    }
}

fn data_key(w: WrappedKey) -> DataKey {
    DataKey {
        provider: w.provider,
        key_id: w.key_id,
        algorithm: w.algorithm.is_asymmetric().then_some(w.algorithm),
        ciphertext: envelope::b64(&w.ciphertext),
    }
}

/// The public key of an asymmetric KMS key (`GetPublicKey`), refused unless
/// it takes an RSAES_OAEP_SHA_256 wrap.
pub async fn fetch_sealing_key(kms: &Kms, key_id: &str) -> Result<SealingKey, ResourceError> {
    let info = kms
        .get_public_key(Provider::AwsKms, key_id)
        .await
        .map_err(|e| match e {
            // what KMS says for a symmetric key
            KmsError::Invalid(m) | KmsError::KeyUsage(m) => KmsError::KeyUsage(format!(
                "{key_id} has no public key: it is a symmetric key ({}); {}",
                m.lines().next().unwrap_or_default(),
                crate::kms::sealing::NEED
            )),
            other => other,
        })?;
    Ok(SealingKey::from_kms(&info)?)
}

fn seal_to(key: &SealingKey, dek: &Dek, ctx: &EncryptionContext) -> WrappedKey {
    WrappedKey {
        provider: Provider::AwsKms,
        key_id: key.key_id().to_string(),
        algorithm: Algorithm::RsaesOaepSha256,
        ciphertext: key.wrap(dek, ctx),
    }
}

/// Whether a failed symmetric call on an aws-kms key may mean the key is
/// asymmetric (KMS says InvalidKeyUsage, or a validation error for the
/// missing algorithm): worth one `GetPublicKey` to find out.
fn maybe_asymmetric(k: &KeyRef, e: &KmsError) -> bool {
    k.provider == Provider::AwsKms && matches!(e, KmsError::KeyUsage(_) | KmsError::Invalid(_))
}

/// The public key of `k` after a symmetric call failed with `e`: the key's
/// own if it is an RSA encryption key, else the original error.
async fn asymmetric_fallback(
    kms: &Kms,
    k: &KeyRef,
    e: KmsError,
) -> Result<SealingKey, ResourceError> {
    if !maybe_asymmetric(k, &e) {
        return Err(e.into());
    }
    match kms.get_public_key(Provider::AwsKms, &k.key_id).await {
        Ok(info) if info.key_spec.starts_with("RSA_") => Ok(SealingKey::from_kms(&info)?),
        _ => Err(e.into()),
    }
}

/// A fresh DEK wrapped under every key. With a symmetric first key:
/// GenerateDataKey, then the same DEK under the rest (Encrypt, or a local
/// RSA wrap for asymmetric keys). With an asymmetric first key: the DEK
/// comes from the OS CSPRNG — so a key list of SealingKey files only needs
/// no KMS access at all.
pub async fn new_dek(
    kms: &Kms,
    keys: &[KeyRef],
    ctx: &EncryptionContext,
) -> Result<(Dek, Vec<DataKey>), ResourceError> {
    let (first, rest) = keys
        .split_first()
        .ok_or_else(|| ResourceError::InvalidSpec("at least one --key is required".into()))?;
    let (dek, w) = if let Some(s) = &first.sealing {
        let dek = Dek::generate();
        let w = seal_to(s, &dek, ctx);
        (dek, w)
    } else if first.algorithm.is_asymmetric() {
        let s = fetch_sealing_key(kms, &first.key_id).await?;
        let dek = Dek::generate();
        let w = seal_to(&s, &dek, ctx);
        (dek, w)
    } else {
        match kms
            .generate_data_key(first.provider, &first.key_id, ctx)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let s = asymmetric_fallback(kms, first, e).await?;
                let dek = Dek::generate();
                let w = seal_to(&s, &dek, ctx);
                (dek, w)
            }
        }
    };
    let mut out = vec![data_key(w)];
    out.extend(wrap_more(kms, &dek, rest, ctx).await?);
    Ok((dek, out))
}

/// Wrap an existing DEK under one more key: a local RSA wrap for an
/// asymmetric key (its public key from the SealingKey file, else from
/// `GetPublicKey`), KMS Encrypt otherwise.
pub async fn wrap_one(
    kms: &Kms,
    dek: &Dek,
    k: &KeyRef,
    ctx: &EncryptionContext,
) -> Result<WrappedKey, ResourceError> {
    if let Some(s) = &k.sealing {
        return Ok(seal_to(s, dek, ctx));
    }
    if k.algorithm.is_asymmetric() {
        return Ok(seal_to(&fetch_sealing_key(kms, &k.key_id).await?, dek, ctx));
    }
    match kms.encrypt(k.provider, &k.key_id, dek.expose(), ctx).await {
        Ok(w) => Ok(w),
        Err(e) => Ok(seal_to(&asymmetric_fallback(kms, k, e).await?, dek, ctx)),
    }
}

/// Wrap an existing DEK under more keys.
pub async fn wrap_more(
    kms: &Kms,
    dek: &Dek,
    keys: &[KeyRef],
    ctx: &EncryptionContext,
) -> Result<Vec<DataKey>, ResourceError> {
    let mut out = Vec::new();
    for k in keys {
        out.push(data_key(wrap_one(kms, dek, k, ctx).await?));
    }
    Ok(out)
}

/// A fresh DEK that never leaves KMS in plaintext (for `init`): generated
/// wrapped under the first key, moved under the others with ReEncrypt when
/// they are KMS keys too.
pub async fn new_dek_without_plaintext(
    kms: &Kms,
    keys: &[KeyRef],
    ctx: &EncryptionContext,
) -> Result<Vec<DataKey>, ResourceError> {
    let (first, rest) = keys
        .split_first()
        .ok_or_else(|| ResourceError::InvalidSpec("at least one --key is required".into()))?;
    if first.is_offline() || first.algorithm.is_asymmetric() {
        // KMS cannot generate a data key under an asymmetric key: the DEK
        // comes from the OS CSPRNG, lives here only while it is wrapped
        // under each key, and is zeroized when dropped.
        return Ok(new_dek(kms, keys, ctx).await?.1);
    }
    let w = kms
        .generate_data_key_without_plaintext(first.provider, &first.key_id, ctx)
        .await?;
    let mut out = Vec::new();
    for k in rest {
        out.push(data_key(rewrap(kms, &w, k, ctx).await?));
    }
    out.insert(0, data_key(w));
    Ok(out)
}

/// Move a wrapped DEK under `dest`: ReEncrypt between symmetric keys of one
/// provider (the DEK stays inside KMS); unwrap + wrap otherwise (across
/// providers, and from or to an asymmetric key, whose copies bind the
/// context inside the wrapped plaintext, which ReEncrypt cannot do).
pub async fn rewrap(
    kms: &Kms,
    src: &WrappedKey,
    dest: &KeyRef,
    ctx: &EncryptionContext,
) -> Result<WrappedKey, ResourceError> {
    let symmetric =
        !src.algorithm.is_asymmetric() && !dest.algorithm.is_asymmetric() && !dest.is_offline();
    if src.provider == dest.provider && symmetric {
        match kms.re_encrypt(src, dest.provider, &dest.key_id, ctx).await {
            Ok(w) => Ok(w),
            Err(e) => {
                let s = asymmetric_fallback(kms, dest, e).await?;
                let dek = kms.unwrap(src, ctx).await?;
                Ok(seal_to(&s, &dek, ctx))
            }
        }
    } else {
        let dek = kms.unwrap(src, ctx).await?;
        wrap_one(kms, &dek, dest, ctx).await
    }
}
