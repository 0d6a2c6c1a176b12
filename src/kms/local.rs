//! The `local` provider: a 256-bit key-encryption key (KEK) held in a file.
//!
//! Wrapped DEK = nonce[12] || AES-256-GCM(KEK, DEK, aad = canonical context)
//! || tag[16]; key id = `local:` + first 16 hex digits of SHA-256(KEK). The
//! context as AAD gives the same binding KMS gives: a wrapped DEK moved to
//! another namespace/name/scope/context does not unwrap.
//!
//! Key file: the KEK in standard base64 on one line, mode 0600.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{
    ENCRYPT_MAX_BYTES, EncryptionContext, KeyInfo, KmsError, KmsProvider, Provider, WrappedKey,
};
use crate::envelope::{self, Dek, canonical_context};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read local key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "local key {path} is not a 32-byte key in base64 on one line (create one with `kmsecrets keygen PATH`)"
    )]
    Format { path: String },
    #[error("cannot write local key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a key (delete it first if you mean it)")]
    Exists { path: String },
}

/// One KEK. No `Debug`: it would print the key.
pub struct LocalKey {
    id: String,
    kek: Dek,
}

impl LocalKey {
    pub fn from_bytes(bytes: &[u8]) -> Option<LocalKey> {
        Some(LocalKey::from_dek(Dek::from_slice(bytes).ok()?))
    }

    fn from_dek(kek: Dek) -> LocalKey {
        let digest = Sha256::digest(kek.expose());
        let id = format!("local:{}", &hex::encode(digest)[..16]);
        LocalKey { id, kek }
    }

    pub fn generate() -> LocalKey {
        LocalKey::from_dek(Dek::generate())
    }

    pub fn load(path: &Path) -> Result<LocalKey, KeyFileError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        let bytes = Zeroizing::new(envelope::unb64(&text).unwrap_or_default());
        LocalKey::from_bytes(&bytes).ok_or_else(|| KeyFileError::Format {
            path: path.display().to_string(),
        })
    }

    /// Write a new key file atomically with mode 0600; never overwrites.
    pub fn write_new(path: &Path) -> Result<LocalKey, KeyFileError> {
        let err = |source| KeyFileError::Write {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            return Err(KeyFileError::Exists {
                path: path.display().to_string(),
            });
        }
        let key = LocalKey::generate();
        let text = Zeroizing::new(format!("{}\n", envelope::b64(key.kek.expose())));
        crate::fsutil::write_new_atomic(path, text.as_bytes(), 0o600).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists {
                    path: path.display().to_string(),
                }
            } else {
                err(e)
            }
        })?;
        Ok(key)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, plaintext: &[u8], ctx: &EncryptionContext) -> Vec<u8> {
        envelope::seal_raw(&self.kek, &canonical_context(ctx), plaintext)
    }

    fn unwrap(&self, sealed: &[u8], ctx: &EncryptionContext) -> Option<Zeroizing<Vec<u8>>> {
        envelope::open_raw(&self.kek, &canonical_context(ctx), sealed)
    }
}

/// Holds every local key offered (`--local-key`, repeatable), by id.
#[derive(Default)]
pub struct LocalProvider {
    keys: HashMap<String, LocalKey>,
}

impl LocalProvider {
    pub fn new(keys: impl IntoIterator<Item = LocalKey>) -> LocalProvider {
        LocalProvider {
            keys: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
        }
    }

    pub fn add(&mut self, key: LocalKey) {
        self.keys.insert(key.id.clone(), key);
    }

    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<_> = self.keys.keys().cloned().collect();
        v.sort();
        v
    }

    fn key(&self, key_id: &str) -> Result<&LocalKey, KmsError> {
        self.keys.get(key_id).ok_or_else(|| KmsError::NoKey {
            provider: "local",
            key_id: key_id.to_string(),
            hint: if self.keys.is_empty() {
                "offer the key file with --local-key PATH".to_string()
            } else {
                format!(
                    "offered keys are {}; pass the right one with --local-key PATH",
                    self.ids().join(", ")
                )
            },
        })
    }
}

#[async_trait]
impl KmsProvider for LocalProvider {
    fn provider(&self) -> Provider {
        Provider::Local
    }

    /// An in-process AES key: no remote quota to protect.
    fn has_quota(&self) -> bool {
        false
    }

    async fn decrypt(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Dek, KmsError> {
        let key = self.key(key_id)?;
        let pt = key
            .unwrap(ciphertext, ctx)
            .ok_or_else(|| KmsError::InvalidCiphertext(format!("local key {key_id}")))?;
        Dek::from_slice(&pt)
            .map_err(|_| KmsError::InvalidCiphertext(format!("local key {key_id}: not a data key")))
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
        let key = self.key(key_id)?;
        Ok(WrappedKey::symmetric(
            Provider::Local,
            key.id.clone(),
            key.wrap(plaintext, ctx),
        ))
    }

    async fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Dek, WrappedKey), KmsError> {
        let dek = Dek::generate();
        let wrapped = self.encrypt(key_id, dek.expose(), ctx).await?;
        Ok((dek, wrapped))
    }

    async fn generate_data_key_without_plaintext(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        Ok(self.generate_data_key(key_id, ctx).await?.1)
    }

    async fn re_encrypt(
        &self,
        src: &WrappedKey,
        dest_key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let dek = self.decrypt(&src.key_id, &src.ciphertext, ctx).await?;
        self.encrypt(dest_key_id, dek.expose(), ctx).await
    }

    async fn generate_random(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        super::check_random_len(len)?;
        let mut out = Zeroizing::new(vec![0u8; len]);
        rand::rngs::OsRng.fill_bytes(&mut out);
        Ok(out)
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        let key = self.key(key_id)?;
        Ok(KeyInfo {
            key_id: key.id.clone(),
            arn: key.id.clone(),
            enabled: true,
            state: "Enabled".into(),
            deletion_date: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn wrap_unwrap_and_context_binding() {
        let key = LocalKey::from_bytes(&[7u8; 32]).unwrap();
        let id = key.id().to_string();
        assert_eq!(id.len(), "local:".len() + 16);
        let p = LocalProvider::new([key]);
        let c = ctx(&[("kmsecrets.dev/scope", "cluster")]);
        let (dek, w) = p.generate_data_key(&id, &c).await.unwrap();
        assert_eq!(w.ciphertext.len(), 12 + 32 + 16);
        let back = p.decrypt(&id, &w.ciphertext, &c).await.unwrap();
        assert_eq!(back.expose(), dek.expose());
        let other = ctx(&[("kmsecrets.dev/scope", "strict")]);
        assert!(matches!(
            p.decrypt(&id, &w.ciphertext, &other).await,
            Err(KmsError::InvalidCiphertext(_))
        ));
        assert!(matches!(
            p.decrypt("local:ffffffffffffffff", &w.ciphertext, &c).await,
            Err(KmsError::NoKey { .. })
        ));
        assert!(matches!(
            p.encrypt(&id, &[0u8; 4097], &c).await,
            Err(KmsError::TooLarge(4097))
        ));
    }

    #[test]
    fn key_file_round_trip_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k = LocalKey::write_new(&path).unwrap();
        let back = LocalKey::load(&path).unwrap();
        assert_eq!(k.id(), back.id());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            LocalKey::write_new(&path),
            Err(KeyFileError::Exists { .. })
        ));
        std::fs::write(&path, "bm90IGEga2V5\n").unwrap();
        assert!(matches!(
            LocalKey::load(&path),
            Err(KeyFileError::Format { .. })
        ));
    }
}
