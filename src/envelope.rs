//! The wire format: AAD and KMS encryption-context construction, and the
//! AES-256-GCM sealing of values under a data key (DEK).
//!
//! # Guarantees
//! - Pure and IO-free (randomness comes from the OS RNG, nothing else).
//! - Key material lives in [`Dek`], which zeroizes on drop and has no `Debug`.
//! - Errors never carry plaintext or key bytes, only key *names*.
//!
//! # Format (DESIGN.md "Wire format")
//! value = base64(nonce[12] || ciphertext || tag[16]);
//! AAD = for each of ["kmsecrets.dev/v1alpha1", scope, namespace, name, key]:
//! u32 BE length || UTF-8 bytes. Namespace is empty for `cluster`, name empty
//! unless `strict`. Length prefixes stop two different tuples from encoding to
//! the same bytes (e.g. ns "a", name "bc" vs ns "ab", name "c").

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::api::Scope;

pub const FORMAT_ID: &str = "kmsecrets.dev/v1alpha1";
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const DEK_LEN: usize = 32;

pub const CTX_SCOPE: &str = "kmsecrets.dev/scope";
pub const CTX_NAMESPACE: &str = "kmsecrets.dev/namespace";
pub const CTX_NAME: &str = "kmsecrets.dev/name";

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("value {key:?} is not valid base64")]
    BadBase64 { key: String },
    #[error("value {key:?} is truncated: {len} bytes, need at least {min} (nonce + tag)")]
    Truncated { key: String, len: usize, min: usize },
    #[error(
        "value {key:?} failed authentication: it was altered, moved to another namespace/name/scope/key, or sealed under another data key"
    )]
    Authentication { key: String },
    #[error("data key must be {DEK_LEN} bytes, got {0}")]
    BadDekLength(usize),
    #[error("encryptionContext key {0:?} uses the reserved prefix kmsecrets.dev/")]
    ReservedContextKey(String),
    #[error("{0} is required for scope {1}")]
    MissingBinding(&'static str, &'static str),
    #[error("invalid key name {0:?}: Secret keys must match ^[-._a-zA-Z0-9]+$")]
    InvalidKeyName(String),
}

/// A 256-bit data key. Zeroized on drop; deliberately no `Debug`/`Display`.
#[derive(Clone)]
pub struct Dek(Zeroizing<[u8; DEK_LEN]>);

impl Dek {
    pub fn generate() -> Dek {
        let mut k = Zeroizing::new([0u8; DEK_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Dek(k)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Dek, EnvelopeError> {
        if bytes.len() != DEK_LEN {
            return Err(EnvelopeError::BadDekLength(bytes.len()));
        }
        let mut k = Zeroizing::new([0u8; DEK_LEN]);
        k.copy_from_slice(bytes);
        Ok(Dek(k))
    }

    pub fn expose(&self) -> &[u8; DEK_LEN] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.as_ref().into())
    }
}

/// What a ciphertext is bound to, taken from the resource's *actual* metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub scope: Scope,
    pub namespace: String,
    pub name: String,
    /// `spec.encryptionContext` (user pairs only).
    pub context: BTreeMap<String, String>,
}

impl Binding {
    pub fn new(
        scope: Scope,
        namespace: Option<&str>,
        name: Option<&str>,
        context: BTreeMap<String, String>,
    ) -> Result<Binding, EnvelopeError> {
        let namespace = namespace.unwrap_or_default().to_string();
        let name = name.unwrap_or_default().to_string();
        if matches!(scope, Scope::Strict | Scope::Namespace) && namespace.is_empty() {
            return Err(EnvelopeError::MissingBinding(
                "metadata.namespace",
                scope.as_str(),
            ));
        }
        if scope == Scope::Strict && name.is_empty() {
            return Err(EnvelopeError::MissingBinding("metadata.name", "strict"));
        }
        for k in context.keys() {
            if crate::api::is_reserved_key(k) {
                return Err(EnvelopeError::ReservedContextKey(k.clone()));
            }
        }
        Ok(Binding {
            scope,
            namespace,
            name,
            context,
        })
    }

    fn bound_namespace(&self) -> &str {
        match self.scope {
            Scope::Strict | Scope::Namespace => &self.namespace,
            Scope::Cluster => "",
        }
    }

    fn bound_name(&self) -> &str {
        match self.scope {
            Scope::Strict => &self.name,
            _ => "",
        }
    }

    /// AES-GCM AAD for the value stored under `key`.
    pub fn aad(&self, key: &str) -> Vec<u8> {
        let fields = [
            FORMAT_ID,
            self.scope.as_str(),
            self.bound_namespace(),
            self.bound_name(),
            key,
        ];
        let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 4).sum());
        for f in fields {
            push_len_prefixed(&mut out, f.as_bytes());
        }
        out
    }

    /// The KMS encryption context for wrapping/unwrapping this resource's DEK.
    pub fn encryption_context(&self) -> BTreeMap<String, String> {
        let mut ctx = self.context.clone();
        ctx.insert(CTX_SCOPE.into(), self.scope.as_str().into());
        if matches!(self.scope, Scope::Strict | Scope::Namespace) {
            ctx.insert(CTX_NAMESPACE.into(), self.namespace.clone());
        }
        if self.scope == Scope::Strict {
            ctx.insert(CTX_NAME.into(), self.name.clone());
        }
        ctx
    }
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Field lengths are bounded by Kubernetes object size (< 4 GiB).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Canonical bytes of an encryption context: pairs sorted bytewise by key
/// (BTreeMap<String> order is bytewise), each `len(k) k len(v) v`.
pub fn canonical_context(ctx: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in ctx {
        push_len_prefixed(&mut out, k.as_bytes());
        push_len_prefixed(&mut out, v.as_bytes());
    }
    out
}

pub fn validate_key_name(key: &str) -> Result<(), EnvelopeError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok && key != "." && key != ".." {
        Ok(())
    } else {
        Err(EnvelopeError::InvalidKeyName(key.to_string()))
    }
}

/// Seal raw bytes: returns nonce || ciphertext || tag.
pub fn seal_raw(key: &Dek, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    seal_raw_with_nonce(key, &nonce, aad, plaintext)
}

/// Deterministic sealing for known-answer tests. Never reuse a nonce with the
/// same key in production: GCM nonce reuse leaks the XOR of plaintexts and the
/// authentication key.
pub fn seal_raw_with_nonce(key: &Dek, nonce: &[u8; NONCE_LEN], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NONCE_LEN + pt.len() + TAG_LEN);
    out.extend_from_slice(nonce);
    // aes-gcm only fails for plaintexts over 64 GiB, which cannot occur here.
    let ct = key
        .cipher()
        .encrypt(Nonce::from_slice(nonce), Payload { msg: pt, aad })
        .unwrap_or_default();
    out.extend_from_slice(&ct);
    out
}

/// Open nonce || ciphertext || tag. `None` on any authentication failure.
pub fn open_raw(key: &Dek, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    key.cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

/// Seal the value of Secret key `key` for `binding`; returns the base64 text.
pub fn seal_value(dek: &Dek, binding: &Binding, key: &str, plaintext: &[u8]) -> String {
    B64.encode(seal_raw(dek, &binding.aad(key), plaintext))
}

/// Open the base64 value of Secret key `key` for `binding`.
pub fn open_value(
    dek: &Dek,
    binding: &Binding,
    key: &str,
    value_b64: &str,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let sealed =
        Zeroizing::new(
            B64.decode(value_b64.trim())
                .map_err(|_| EnvelopeError::BadBase64 {
                    key: key.to_string(),
                })?,
        );
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Truncated {
            key: key.to_string(),
            len: sealed.len(),
            min: NONCE_LEN + TAG_LEN,
        });
    }
    open_raw(dek, &binding.aad(key), &sealed).ok_or_else(|| EnvelopeError::Authentication {
        key: key.to_string(),
    })
}

/// Decrypt every value of a resource; fails on the first bad one.
pub fn open_all(
    dek: &Dek,
    binding: &Binding,
    data: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, EnvelopeError> {
    data.iter()
        .map(|(k, v)| {
            validate_key_name(k)?;
            Ok((k.clone(), open_value(dek, binding, k, v)?))
        })
        .collect()
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn binding(scope: Scope, ns: &str, name: &str) -> Binding {
        Binding::new(scope, Some(ns), Some(name), BTreeMap::new()).unwrap()
    }

    #[test]
    fn aad_exact_bytes() {
        let b = binding(Scope::Strict, "ns", "n");
        let mut want = Vec::new();
        for f in ["kmsecrets.dev/v1alpha1", "strict", "ns", "n", "k"] {
            want.extend_from_slice(&(f.len() as u32).to_be_bytes());
            want.extend_from_slice(f.as_bytes());
        }
        assert_eq!(b.aad("k"), want);
        // cluster scope binds neither namespace nor name
        let c = binding(Scope::Cluster, "ns", "n");
        assert_eq!(&c.aad("k")[26 + 4 + 7..][..8], &[0, 0, 0, 0, 0, 0, 0, 0]);
        // namespace scope binds namespace but not name
        let n = binding(Scope::Namespace, "ns", "n");
        assert_eq!(
            n.aad("k"),
            binding(Scope::Namespace, "ns", "other").aad("k")
        );
        assert_ne!(n.aad("k"), binding(Scope::Namespace, "ns2", "n").aad("k"));
    }

    #[test]
    fn length_prefix_prevents_ambiguity() {
        assert_ne!(
            binding(Scope::Strict, "a", "bc").aad("k"),
            binding(Scope::Strict, "ab", "c").aad("k")
        );
    }

    #[test]
    fn context_by_scope() {
        let mut user = BTreeMap::new();
        user.insert("team".to_string(), "payments".to_string());
        let s = Binding::new(Scope::Strict, Some("ns"), Some("n"), user.clone()).unwrap();
        let ctx = s.encryption_context();
        assert_eq!(ctx.len(), 4);
        assert_eq!(ctx[CTX_NAME], "n");
        let ns = Binding::new(Scope::Namespace, Some("ns"), Some("n"), user.clone()).unwrap();
        assert!(!ns.encryption_context().contains_key(CTX_NAME));
        let cl = Binding::new(Scope::Cluster, None, None, user).unwrap();
        assert_eq!(cl.encryption_context().len(), 2);
        let mut bad = BTreeMap::new();
        bad.insert("kmsecrets.dev/x".to_string(), "y".to_string());
        assert_eq!(
            Binding::new(Scope::Cluster, None, None, bad),
            Err(EnvelopeError::ReservedContextKey("kmsecrets.dev/x".into()))
        );
        for key in [
            "KMSECRETS.DEV/namespace",
            "KmSecrets.dev/x",
            "kmsecrets.DEV/",
        ] {
            let bad: BTreeMap<_, _> = [(key.to_string(), "y".to_string())].into();
            assert_eq!(
                Binding::new(Scope::Cluster, None, None, bad),
                Err(EnvelopeError::ReservedContextKey(key.into())),
                "{key}"
            );
        }
        // near misses stay allowed
        for key in ["kmsecrets.de", "kmsecrets.devx/a", "ünicode-kmsecrets.dev/"] {
            let ok: BTreeMap<_, _> = [(key.to_string(), "y".to_string())].into();
            assert!(
                Binding::new(Scope::Cluster, None, None, ok).is_ok(),
                "{key}"
            );
        }
        assert!(Binding::new(Scope::Strict, Some("ns"), None, BTreeMap::new()).is_err());
    }

    #[test]
    fn canonical_context_sorted_and_prefixed() {
        let mut ctx = BTreeMap::new();
        ctx.insert("b".to_string(), "2".to_string());
        ctx.insert("a".to_string(), "1".to_string());
        assert_eq!(
            canonical_context(&ctx),
            b"\0\0\0\x01a\0\0\0\x011\0\0\0\x01b\0\0\0\x012".to_vec()
        );
    }

    #[test]
    fn key_names() {
        for ok in ["a", "A-b_c.d", "tls.crt", ".dotfile"] {
            validate_key_name(ok).unwrap();
        }
        for bad in ["", "a/b", "a b", "é", ".", "..", "x=y"] {
            assert!(validate_key_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn truncated_and_bad_base64() {
        let dek = Dek::generate();
        let b = binding(Scope::Strict, "ns", "n");
        assert!(matches!(
            open_value(&dek, &b, "k", "!!!"),
            Err(EnvelopeError::BadBase64 { .. })
        ));
        assert!(matches!(
            open_value(&dek, &b, "k", &b64(&[0u8; 27])),
            Err(EnvelopeError::Truncated { len: 27, .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(pt in proptest::collection::vec(any::<u8>(), 0..512),
                      ns in "[a-z]{1,8}", name in "[a-z]{1,8}", key in "[a-z.]{1,8}") {
            let dek = Dek::generate();
            let b = binding(Scope::Strict, &ns, &name);
            let v = seal_value(&dek, &b, &key, &pt);
            let opened = open_value(&dek, &b, &key, &v).unwrap();
            prop_assert_eq!(opened.as_slice(), pt.as_slice());
        }

        #[test]
        fn any_change_fails(pt in proptest::collection::vec(any::<u8>(), 1..64),
                            flip in 0usize..1000, bit in 0u8..8) {
            let dek = Dek::generate();
            let b = binding(Scope::Strict, "ns", "name");
            let v = seal_value(&dek, &b, "key", &pt);
            // a flipped bit anywhere in nonce, ciphertext or tag
            let mut raw = unb64(&v).unwrap();
            let i = flip % raw.len();
            raw[i] ^= 1 << bit;
            prop_assert!(open_value(&dek, &b, "key", &b64(&raw)).is_err());
            // any change of binding
            for other in [
                binding(Scope::Strict, "ns2", "name"),
                binding(Scope::Strict, "ns", "name2"),
                binding(Scope::Namespace, "ns", "name"),
                binding(Scope::Cluster, "ns", "name"),
            ] {
                prop_assert!(open_value(&dek, &other, "key", &v).is_err());
            }
            let mut ctx = BTreeMap::new();
            ctx.insert("team".to_string(), "x".to_string());
            // user context is bound through KMS, not the AAD: the AAD ignores it
            let with_ctx = Binding::new(Scope::Strict, Some("ns"), Some("name"), ctx).unwrap();
            prop_assert_ne!(with_ctx.encryption_context(), b.encryption_context());
            // another key name, another DEK
            prop_assert!(open_value(&dek, &b, "key2", &v).is_err());
            prop_assert!(open_value(&Dek::generate(), &b, "key", &v).is_err());
        }
    }
}
