//! Offline sealing to an asymmetric KMS key (DESIGN.md "Wire format": the
//! asymmetric wrap and the SealingKey file).
//!
//! Anyone holding the public half of an RSA `ENCRYPT_DECRYPT` KMS key can
//! wrap a data key with no AWS access at all; only KMS `Decrypt` (with
//! `EncryptionAlgorithm=RSAES_OAEP_SHA_256`) can unwrap it. KMS takes no
//! encryption context for asymmetric keys, so the context is bound inside
//! the wrapped plaintext: `DEK[32] || SHA-256(canonical context)[32]`, and the
//! unwrapper compares the hash (constant time) with the context built from
//! the resource's actual metadata.
//!
//! # Guarantees
//! - A wrap is always RSAES-OAEP with SHA-256 as OAEP and MGF1 hash and an
//!   empty label, under an RSA key of 2048, 3072 or 4096 bits.
//! - [`unbind`] accepts exactly 64 bytes whose hash half matches; anything
//!   else is [`KmsError::ContextMismatch`] and yields no key.
//! - Never: log, format or return the DEK; the SealingKey file holds only
//!   public material.

use std::sync::Arc;

use rand::{CryptoRng, RngCore};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{EncryptionContext, KmsError, PublicKeyInfo};
use crate::envelope::{DEK_LEN, Dek, canonical_context};

/// The one asymmetric algorithm of the wire format.
pub const ALGORITHM: &str = "RSAES_OAEP_SHA_256";
pub const KIND: &str = "SealingKey";
pub const API_VERSION: &str = "kmsecrets.dev/v1alpha1";
/// RSA modulus sizes KMS offers for ENCRYPT_DECRYPT keys.
pub const KEY_BITS: [usize; 3] = [2048, 3072, 4096];
/// What a key must be to seal to (the end of every refusal).
pub const NEED: &str = "offline sealing needs an RSA_2048, RSA_3072 or RSA_4096 key with key usage ENCRYPT_DECRYPT and RSAES_OAEP_SHA_256";
/// Length of the wrapped plaintext: DEK || SHA-256(context).
pub const BOUND_LEN: usize = DEK_LEN + 32;

/// A parsed SealingKey: the key ARN the copy is recorded under (what the
/// controller later passes to `Decrypt`) and the RSA public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealingKey {
    key_id: String,
    public_key: RsaPublicKey,
}

/// The file as written (DESIGN.md: one YAML document).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SealingKeyFile {
    api_version: String,
    kind: String,
    key_id: String,
    algorithm: String,
    public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SealingKeyError(String);

fn bad(s: impl Into<String>) -> SealingKeyError {
    SealingKeyError(s.into())
}

/// SHA-256 of the canonical context bytes: what the wrapped plaintext binds.
pub fn context_hash(ctx: &EncryptionContext) -> [u8; 32] {
    Sha256::digest(canonical_context(ctx)).into()
}

/// The plaintext of an asymmetric wrap: `DEK || SHA-256(canonical context)`.
pub fn bound_plaintext(dek: &Dek, ctx: &EncryptionContext) -> Zeroizing<Vec<u8>> {
    let mut pt = Zeroizing::new(Vec::with_capacity(BOUND_LEN));
    pt.extend_from_slice(dek.expose());
    pt.extend_from_slice(&context_hash(ctx));
    pt
}

/// Check what KMS `Decrypt` returned for an asymmetric copy and take the DEK
/// out: exactly 64 bytes, the last 32 equal (constant time) to the hash of
/// the context built from the resource's metadata.
pub fn unbind(plaintext: &[u8], ctx: &EncryptionContext) -> Result<Dek, KmsError> {
    if plaintext.len() != BOUND_LEN {
        return Err(KmsError::ContextMismatch(format!(
            "the unwrapped copy is {} bytes, not {BOUND_LEN} (data key + context hash): it was not sealed by kmsecrets",
            plaintext.len()
        )));
    }
    let (dek, hash) = plaintext.split_at(DEK_LEN);
    if !bool::from(hash.ct_eq(&context_hash(ctx))) {
        return Err(KmsError::ContextMismatch(
            "its context hash differs from this resource's".into(),
        ));
    }
    Dek::from_slice(dek).map_err(|_| KmsError::ContextMismatch("bad data key length".into()))
}

fn check_bits(key: &RsaPublicKey) -> Result<(), SealingKeyError> {
    let bits = key.size() * 8;
    if !KEY_BITS.contains(&bits) {
        return Err(bad(format!(
            "the public key is RSA {bits}; KMS encryption keys are RSA_2048, RSA_3072 or RSA_4096"
        )));
    }
    Ok(())
}

fn check_key_id(key_id: &str) -> Result<(), SealingKeyError> {
    // The copy is unwrapped with Decrypt(KeyId = this), whose region comes
    // from the ARN: an alias or a bare id would not say which key or region.
    let ok = key_id.starts_with("arn:")
        && key_id.split(':').nth(3).is_some_and(|r| !r.is_empty())
        && key_id.contains(":key/");
    if !ok {
        return Err(bad(format!(
            "keyId {key_id:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID); write the file with `kmsecrets pubkey`"
        )));
    }
    Ok(())
}

impl SealingKey {
    pub fn new(key_id: &str, public_key: RsaPublicKey) -> Result<SealingKey, SealingKeyError> {
        check_key_id(key_id)?;
        check_bits(&public_key)?;
        Ok(SealingKey {
            key_id: key_id.to_string(),
            public_key,
        })
    }

    /// From the DER SubjectPublicKeyInfo KMS `GetPublicKey` returns.
    pub fn from_der(key_id: &str, der: &[u8]) -> Result<SealingKey, SealingKeyError> {
        let key = RsaPublicKey::from_public_key_der(der)
            .map_err(|_| bad("the public key is not a DER RSA SubjectPublicKeyInfo"))?;
        SealingKey::new(key_id, key)
    }

    /// What `GetPublicKey` said, refusing every key that cannot take an
    /// RSAES_OAEP_SHA_256 wrap: one line naming what the key is and what is
    /// needed.
    pub fn from_kms(info: &PublicKeyInfo) -> Result<SealingKey, KmsError> {
        let need = NEED;
        let is = format!(
            "{} is a {} key for {}",
            info.key_id,
            if info.key_spec.is_empty() {
                "(unknown spec)"
            } else {
                &info.key_spec
            },
            if info.key_usage.is_empty() {
                "(unknown usage)"
            } else {
                &info.key_usage
            }
        );
        if !info.key_spec.starts_with("RSA_") || info.key_usage != "ENCRYPT_DECRYPT" {
            return Err(KmsError::KeyUsage(format!("{is}; {need}")));
        }
        // KMS lists the algorithms of every ENCRYPT_DECRYPT key; an empty
        // list (local-kms omits it) is judged by spec and usage alone.
        if !info.encryption_algorithms.is_empty()
            && !info.encryption_algorithms.iter().any(|a| a == ALGORITHM)
        {
            return Err(KmsError::KeyUsage(format!(
                "{is} without RSAES_OAEP_SHA_256 (offers [{}]); {need}",
                info.encryption_algorithms.join(", ")
            )));
        }
        SealingKey::from_der(&info.key_id, &info.der)
            .map_err(|e| KmsError::KeyUsage(format!("{}: {e}", info.key_id)))
    }

    /// Parse a SealingKey file (untrusted input: never panics).
    pub fn parse(text: &str) -> Result<SealingKey, SealingKeyError> {
        let f: SealingKeyFile = serde_saphyr::from_str(text).map_err(|e| {
            bad(format!(
                "not a SealingKey document ({})",
                e.to_string().lines().next().unwrap_or_default()
            ))
        })?;
        if f.kind != KIND || f.api_version != API_VERSION {
            return Err(bad(format!(
                "kind {}/{} is not {API_VERSION}/{KIND}",
                f.api_version, f.kind
            )));
        }
        if f.algorithm != ALGORITHM {
            return Err(bad(format!(
                "algorithm {:?} is not supported; SealingKey files use {ALGORITHM}",
                f.algorithm
            )));
        }
        let key = RsaPublicKey::from_public_key_pem(f.public_key.trim())
            .map_err(|_| bad("publicKey is not a PEM \"PUBLIC KEY\" block holding an RSA key"))?;
        SealingKey::new(&f.key_id, key)
    }

    /// Read a SealingKey file (`--key pub:PATH`).
    pub fn load(path: &std::path::Path) -> Result<SealingKey, SealingKeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read SealingKey {}: {e}", path.display())))?;
        SealingKey::parse(&text).map_err(|e| bad(format!("{}: {e}", path.display())))
    }

    /// The file: one YAML document, fields in a fixed order.
    pub fn render(&self) -> String {
        let pem = self
            .public_key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default();
        let mut out = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nkeyId: {}\nalgorithm: {ALGORITHM}\npublicKey: |\n",
            self.key_id
        );
        for line in pem.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn bits(&self) -> usize {
        self.public_key.size() * 8
    }

    /// Wrap `dek` bound to `ctx`, with OAEP's seed from the OS CSPRNG.
    pub fn wrap(&self, dek: &Dek, ctx: &EncryptionContext) -> Vec<u8> {
        self.wrap_with_rng(dek, ctx, &mut rand::rngs::OsRng)
    }

    /// [`SealingKey::wrap`] with a given randomness source (known-answer
    /// tests feed OAEP a fixed seed).
    pub fn wrap_with_rng<R: RngCore + CryptoRng>(
        &self,
        dek: &Dek,
        ctx: &EncryptionContext,
        rng: &mut R,
    ) -> Vec<u8> {
        let pt = bound_plaintext(dek, ctx);
        // 64 bytes always fit: OAEP-SHA-256 under RSA-2048 takes up to 190.
        self.public_key
            .encrypt(rng, Oaep::new::<Sha256>(), &pt)
            .unwrap_or_default()
    }
}

/// Sealing keys are shared between key references.
pub type SharedSealingKey = Arc<SealingKey>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> EncryptionContext {
        [("kmsecrets.dev/scope".to_string(), "cluster".to_string())].into()
    }

    #[test]
    fn unbind_takes_only_64_bytes_with_the_right_hash() {
        let dek = Dek::generate();
        let pt = bound_plaintext(&dek, &ctx());
        assert_eq!(unbind(&pt, &ctx()).unwrap().expose(), dek.expose());
        let mut other = ctx();
        other.insert("team".into(), "x".into());
        assert!(matches!(
            unbind(&pt, &other),
            Err(KmsError::ContextMismatch(_))
        ));
        assert!(matches!(
            unbind(&pt[..32], &ctx()),
            Err(KmsError::ContextMismatch(_))
        ));
        let mut longer = pt.to_vec();
        longer.push(0);
        assert!(matches!(
            unbind(&longer, &ctx()),
            Err(KmsError::ContextMismatch(_))
        ));
    }

    #[test]
    fn key_ids_must_be_arns() {
        for bad_id in ["alias/x", "1234abcd", "arn:aws:kms::1:key/x", ""] {
            assert!(check_key_id(bad_id).is_err(), "{bad_id}");
        }
        check_key_id("arn:aws:kms:eu-west-1:111122223333:key/abc").unwrap();
    }

    #[test]
    fn parse_refuses_other_documents_without_panicking() {
        for text in [
            "",
            "kind: SealingKey",
            "apiVersion: v1\nkind: Secret\nkeyId: a\nalgorithm: RSAES_OAEP_SHA_256\npublicKey: x\n",
            "apiVersion: kmsecrets.dev/v1alpha1\nkind: SealingKey\nkeyId: arn:aws:kms:r:1:key/x\nalgorithm: RSAES_OAEP_SHA_1\npublicKey: x\n",
            "apiVersion: kmsecrets.dev/v1alpha1\nkind: SealingKey\nkeyId: arn:aws:kms:r:1:key/x\nalgorithm: RSAES_OAEP_SHA_256\npublicKey: not pem\n",
            "[1, 2",
        ] {
            assert!(SealingKey::parse(text).is_err(), "{text:?}");
        }
    }
}
