//! Operations on whole `EncryptedSecret` resources, shared by the CLI and the
//! controller: derive the binding from actual metadata, decode the wrapped
//! keys, unwrap the DEK through the KMS layer, open and seal values.
//!
//! Never: take the binding from anything but `metadata` (a copied resource
//! must not carry its old identity along), or put plaintext in an error.

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::api::{DataKey, EncryptedSecret, EncryptedSecretSpec, Provider, Reason};
use crate::envelope::{self, Binding, Dek, EnvelopeError};
use crate::kms::layer::Kms;
use crate::kms::{Context, KmsError, WrappedKey};

pub type Plaintext = BTreeMap<String, Zeroizing<Vec<u8>>>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ResourceError {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("{0}")]
    Kms(#[from] KmsError),
    #[error("decryption failed: {0}")]
    Decrypt(EnvelopeError),
}

impl From<EnvelopeError> for ResourceError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Authentication { .. }
            | EnvelopeError::Truncated { .. }
            | EnvelopeError::BadBase64 { .. } => ResourceError::Decrypt(e),
            other => ResourceError::InvalidSpec(other.to_string()),
        }
    }
}

impl ResourceError {
    /// The `Ready` condition reason (bounded).
    pub fn reason(&self) -> Reason {
        match self {
            ResourceError::InvalidSpec(_) => Reason::InvalidSpec,
            ResourceError::Kms(k) => k.reason(),
            ResourceError::Decrypt(_) => Reason::DecryptFailed,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ResourceError::Kms(k) if k.is_transient())
    }
}

/// The binding of a resource, from its actual metadata.
pub fn binding_of(es: &EncryptedSecret) -> Result<Binding, ResourceError> {
    Ok(Binding::new(
        es.spec.scope,
        es.metadata.namespace.as_deref(),
        es.metadata.name.as_deref(),
        es.spec.encryption_context.clone(),
    )?)
}

/// Decode `spec.dataKeys`.
pub fn wrapped_keys(spec: &EncryptedSecretSpec) -> Result<Vec<WrappedKey>, ResourceError> {
    if spec.data_keys.is_empty() {
        return Err(ResourceError::InvalidSpec(
            "spec.dataKeys is empty: at least one wrapped data key is required".into(),
        ));
    }
    spec.data_keys
        .iter()
        .enumerate()
        .map(|(i, dk)| {
            if dk.key_id.trim().is_empty() {
                return Err(ResourceError::InvalidSpec(format!(
                    "spec.dataKeys[{i}].keyId is empty"
                )));
            }
            let ciphertext = envelope::unb64(&dk.ciphertext)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    ResourceError::InvalidSpec(format!(
                        "spec.dataKeys[{i}].ciphertext is not valid base64"
                    ))
                })?;
            Ok(WrappedKey {
                provider: dk.provider,
                key_id: dk.key_id.clone(),
                ciphertext,
            })
        })
        .collect()
}

/// Structural checks that need no key: everything `verify` promises.
pub fn validate(es: &EncryptedSecret) -> Result<Binding, ResourceError> {
    let binding = binding_of(es)?;
    check_limits(&es.spec)?;
    wrapped_keys(&es.spec)?;
    for (k, v) in &es.spec.encrypted_data {
        envelope::validate_key_name(k)?;
        let raw = envelope::unb64(v).ok_or(EnvelopeError::BadBase64 { key: k.clone() })?;
        let min = envelope::NONCE_LEN + envelope::TAG_LEN;
        if raw.len() < min {
            return Err(EnvelopeError::Truncated {
                key: k.clone(),
                len: raw.len(),
                min,
            }
            .into());
        }
    }
    Ok(binding)
}

/// The size limits the CRD also enforces (an older CRD, a server that
/// does not enforce it, or a file the CLI reads): bounded work per resource.
fn check_limits(spec: &EncryptedSecretSpec) -> Result<(), ResourceError> {
    use crate::api::limits;
    let over = |what: &str, n: usize, max: usize| {
        ResourceError::InvalidSpec(format!("{what} has {n} entries; at most {max} are allowed"))
    };
    if spec.data_keys.len() > limits::DATA_KEYS {
        return Err(over("dataKeys", spec.data_keys.len(), limits::DATA_KEYS));
    }
    if spec.encrypted_data.len() > limits::VALUES {
        return Err(over(
            "encryptedData",
            spec.encrypted_data.len(),
            limits::VALUES,
        ));
    }
    if spec.encryption_context.len() > limits::CONTEXT {
        return Err(over(
            "encryptionContext",
            spec.encryption_context.len(),
            limits::CONTEXT,
        ));
    }
    if let Some(md) = spec.template.as_ref().and_then(|t| t.metadata.as_ref()) {
        for (what, n) in [
            ("template.metadata.labels", md.labels.len()),
            ("template.metadata.annotations", md.annotations.len()),
        ] {
            if n > limits::TEMPLATE_METADATA {
                return Err(over(what, n, limits::TEMPLATE_METADATA));
            }
        }
    }
    if spec
        .data_keys
        .iter()
        .any(|k| k.ciphertext.len() > limits::WRAPPED_LEN)
    {
        return Err(ResourceError::InvalidSpec(format!(
            "a dataKeys ciphertext is longer than {} characters",
            limits::WRAPPED_LEN
        )));
    }
    if let Some(k) = spec
        .data_keys
        .iter()
        .find(|k| k.key_id.len() > limits::KEY_ID_LEN)
    {
        return Err(ResourceError::InvalidSpec(format!(
            "a dataKeys keyId is {} characters long; at most {} are allowed",
            k.key_id.len(),
            limits::KEY_ID_LEN
        )));
    }
    Ok(())
}

/// Open every value.
pub fn open(
    dek: &Dek,
    binding: &Binding,
    spec: &EncryptedSecretSpec,
) -> Result<Plaintext, ResourceError> {
    Ok(envelope::open_all(dek, binding, &spec.encrypted_data)?)
}

/// A resource opened: its binding, the DEK, which copy unwrapped it, and
/// every value in plaintext (zeroized on drop).
pub struct Opened {
    pub binding: Binding,
    pub dek: Arc<Dek>,
    /// Key id of the `dataKeys` copy that unwrapped the DEK.
    pub key_id: String,
    pub values: Plaintext,
}

/// Validate → unwrap → open: the one way every caller (controller, `decrypt`,
/// `verify --decrypt`, `edit`, `rotate`, `encrypt --merge-into`) reads a
/// resource. Structural problems are reported before any KMS call.
pub async fn open_resource(kms: &Kms, es: &EncryptedSecret) -> Result<Opened, ResourceError> {
    let binding = validate(es)?;
    let keys = wrapped_keys(&es.spec)?;
    let (dek, i) = kms.unwrap_any(&keys, &binding.encryption_context()).await?;
    let values = open(&dek, &binding, &es.spec)?;
    Ok(Opened {
        binding,
        dek,
        key_id: keys[i].key_id.clone(),
        values,
    })
}

/// Seal `values`, reusing the existing ciphertext of every value whose
/// plaintext is unchanged (same DEK) so git diffs stay minimal.
pub fn seal(
    dek: &Dek,
    binding: &Binding,
    values: &Plaintext,
    previous: Option<(&BTreeMap<String, String>, &Plaintext)>,
) -> Result<BTreeMap<String, String>, ResourceError> {
    let mut out = BTreeMap::new();
    for (k, v) in values {
        envelope::validate_key_name(k)?;
        let reuse = previous.and_then(|(enc, plain)| match (enc.get(k), plain.get(k)) {
            (Some(c), Some(p)) if p.as_slice() == v.as_slice() => Some(c.clone()),
            _ => None,
        });
        out.insert(
            k.clone(),
            reuse.unwrap_or_else(|| envelope::seal_value(dek, binding, k, v)),
        );
    }
    Ok(out)
}

/// Where to wrap a new DEK: a KMS key id or a local key id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub provider: Provider,
    pub key_id: String,
}

fn data_key(w: WrappedKey) -> DataKey {
    DataKey {
        provider: w.provider,
        key_id: w.key_id,
        ciphertext: envelope::b64(&w.ciphertext),
    }
}

/// A fresh DEK wrapped under every key: GenerateDataKey with the first,
/// Encrypt of the same DEK with the rest.
pub async fn new_dek(
    kms: &Kms,
    keys: &[KeyRef],
    ctx: &Context,
) -> Result<(Dek, Vec<DataKey>), ResourceError> {
    let (first, rest) = keys
        .split_first()
        .ok_or_else(|| ResourceError::InvalidSpec("at least one --key is required".into()))?;
    let (dek, w) = kms
        .generate_data_key(first.provider, &first.key_id, ctx)
        .await?;
    let mut out = vec![data_key(w)];
    out.extend(wrap_more(kms, &dek, rest, ctx).await?);
    Ok((dek, out))
}

/// Wrap an existing DEK under more keys.
pub async fn wrap_more(
    kms: &Kms,
    dek: &Dek,
    keys: &[KeyRef],
    ctx: &Context,
) -> Result<Vec<DataKey>, ResourceError> {
    let mut out = Vec::new();
    for k in keys {
        out.push(data_key(
            kms.encrypt(k.provider, &k.key_id, dek.expose(), ctx)
                .await?,
        ));
    }
    Ok(out)
}

/// A fresh DEK that never leaves KMS in plaintext (for `init`): generated
/// wrapped under the first key, moved under the others with ReEncrypt when
/// they are KMS keys too.
pub async fn new_dek_without_plaintext(
    kms: &Kms,
    keys: &[KeyRef],
    ctx: &Context,
) -> Result<Vec<DataKey>, ResourceError> {
    let (first, rest) = keys
        .split_first()
        .ok_or_else(|| ResourceError::InvalidSpec("at least one --key is required".into()))?;
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

/// Move a wrapped DEK under `dest`: ReEncrypt within one provider (the DEK
/// stays inside KMS), unwrap + Encrypt across providers.
pub async fn rewrap(
    kms: &Kms,
    src: &WrappedKey,
    dest: &KeyRef,
    ctx: &Context,
) -> Result<WrappedKey, ResourceError> {
    if src.provider == dest.provider {
        Ok(kms
            .re_encrypt(src, dest.provider, &dest.key_id, ctx)
            .await?)
    } else {
        let dek = kms.unwrap(src, ctx).await?;
        Ok(kms
            .encrypt(dest.provider, &dest.key_id, dek.expose(), ctx)
            .await?)
    }
}
