//! Operations on whole `EncryptedSecret` resources, shared by the CLI and the
//! controller: derive the binding from actual metadata, decode the wrapped
//! keys, unwrap the DEK through the KMS layer, open and seal values.
//! Making and wrapping data keys is [`crate::wrap`]'s.
//!
//! Never: take the binding from anything but `metadata` (a copied resource
//! must not carry its old identity along), or put plaintext in an error.

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::api::{EncryptedSecret, EncryptedSecretSpec, Provider, Reason};
use crate::envelope::{self, Binding, Dek, EnvelopeError};
use crate::kms::cache::CacheKey;
use crate::kms::layer::Kms;
use crate::kms::{KmsError, WrappedKey};
use crate::template;

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
            let algorithm = dk.algorithm();
            if algorithm.is_asymmetric() && dk.provider != Provider::AwsKms {
                return Err(ResourceError::InvalidSpec(format!(
                    "spec.dataKeys[{i}]: algorithm {} needs provider aws-kms (an RSA KMS key), not {}",
                    algorithm.as_str(),
                    dk.provider.as_str()
                )));
            }
            Ok(WrappedKey {
                provider: dk.provider,
                key_id: dk.key_id.clone(),
                algorithm,
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
    if let Some(t) = &es.spec.template {
        for k in t.data.keys() {
            envelope::validate_key_name(k).map_err(|_| {
                ResourceError::InvalidSpec(format!(
                    "spec.template.data[{k}]: not a valid Secret key (must match ^[-._a-zA-Z0-9]+$)"
                ))
            })?;
            if es.spec.encrypted_data.contains_key(k) {
                return Err(ResourceError::InvalidSpec(format!(
                    "spec.template.data[{k}]: the key is also in encryptedData; a Secret key comes from one of them"
                )));
            }
        }
        template::check(&t.data).map_err(|e| ResourceError::InvalidSpec(e.to_string()))?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &es.spec.rollout_restart_targets {
        if t.name.is_empty() {
            return Err(ResourceError::InvalidSpec(
                "rolloutRestartTargets: a target has no name".into(),
            ));
        }
        if !seen.insert(t) {
            return Err(ResourceError::InvalidSpec(format!(
                "rolloutRestartTargets: {}/{} is listed twice",
                t.kind.as_str(),
                t.name
            )));
        }
    }
    Ok(binding)
}

/// Every key of the Secret: the opened values and what `template.data`
/// renders from them. A render error is `InvalidSpec` naming the template
/// key (never a value).
pub fn secret_data(es: &EncryptedSecret, values: &Plaintext) -> Result<Plaintext, ResourceError> {
    let rendered = match &es.spec.template {
        Some(t) if !t.data.is_empty() => template::render(&t.data, values)
            .map_err(|e| ResourceError::InvalidSpec(e.to_string()))?,
        _ => Plaintext::new(),
    };
    with_rendered(values, rendered)
}

/// The opened values and the rendered keys together (a key in both is an
/// error: a Secret key comes from one of them).
pub fn with_rendered(values: &Plaintext, rendered: Plaintext) -> Result<Plaintext, ResourceError> {
    let mut all = values.clone();
    for (k, v) in rendered {
        if all.contains_key(&k) {
            return Err(ResourceError::InvalidSpec(format!(
                "spec.template.data[{k}]: the key is also in encryptedData; a Secret key comes from one of them"
            )));
        }
        all.insert(k, v);
    }
    Ok(all)
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
    let templates = spec.template.as_ref().map(|t| &t.data);
    if let Some(td) = templates {
        if td.len() > limits::TEMPLATE_DATA {
            return Err(over("template.data", td.len(), limits::TEMPLATE_DATA));
        }
        if let Some((k, v)) = td.iter().find(|(_, v)| v.len() > limits::TEMPLATE_LEN) {
            return Err(ResourceError::InvalidSpec(format!(
                "spec.template.data[{k}] is {} bytes long; at most {} are allowed",
                v.len(),
                limits::TEMPLATE_LEN
            )));
        }
    }
    if spec.rollout_restart_targets.len() > limits::RESTART_TARGETS {
        return Err(over(
            "rolloutRestartTargets",
            spec.rollout_restart_targets.len(),
            limits::RESTART_TARGETS,
        ));
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
pub fn open_values(
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
    let tenant = es.metadata.namespace.as_deref().unwrap_or("");
    let (dek, i) = kms
        .unwrap_any(&keys, &binding.encryption_context(), tenant)
        .await?;
    opened(es, binding, &keys, dek, i)
}

/// [`open_resource`] when one of the resource's data-key copies is in the
/// DEK cache, without any KMS request; on a miss the copies' cache keys
/// (the caller then opens it through KMS, or waits for one of them).
/// Structural problems are reported like [`open_resource`] reports them.
pub fn open_resource_cached(
    kms: &Kms,
    es: &EncryptedSecret,
) -> Result<Result<Opened, ResourceError>, Vec<CacheKey>> {
    let binding = match validate(es) {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    let keys = match wrapped_keys(&es.spec) {
        Ok(k) => k,
        Err(e) => return Ok(Err(e)),
    };
    let (dek, i) = kms.cached_any(&keys, &binding.encryption_context())?;
    Ok(opened(es, binding, &keys, dek, i))
}

fn opened(
    es: &EncryptedSecret,
    binding: Binding,
    keys: &[WrappedKey],
    dek: Arc<Dek>,
    i: usize,
) -> Result<Opened, ResourceError> {
    let values = open_values(&dek, &binding, &es.spec)?;
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
