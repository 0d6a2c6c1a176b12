//! A programmable in-process KMS for tests and benchmarks.
//!
//! Real AES-GCM wrapping (a per-key KEK derived from the key id, local wire
//! format), plus what moto cannot model: latency, a per-second quota that
//! throttles like KMS (token bucket), key states (disabled, pending deletion,
//! access denied), an "unreachable" switch, one-shot failure injection, and
//! call counters. Uses tokio time, so tests can run it under paused time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::local::{LocalKey, LocalProvider};
use super::{
    EncryptionContext, KeyInfo, KmsError, KmsProvider, Operation, Provider, PublicKeyInfo,
    WrappedKey,
};
use crate::envelope::Dek;
use crate::sync::LockExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    AccessDenied,
    /// Every call for the key fails as unreachable (a region that is down).
    Unreachable,
    /// Every call for the key waits forever (a black-holed endpoint); the
    /// caller's deadline ends it.
    Hanging,
}

struct Quota {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Quota {
    fn try_take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct State {
    /// key id -> (KEK provider holding one key, its id, state)
    keys: HashMap<String, (String, KeyState)>,
    quota: Option<Quota>,
    fail_next: VecDeque<KmsError>,
    unavailable: bool,
}

pub struct FakeKms {
    provider: Provider,
    latency: Mutex<Duration>,
    kek: LocalProvider,
    state: Mutex<State>,
    /// Asymmetric (RSA ENCRYPT_DECRYPT) keys: key id -> private key.
    rsa: Mutex<HashMap<String, rsa::RsaPrivateKey>>,
    calls: [AtomicU64; Operation::ALL.len()],
    throttled: AtomicU64,
    hanging: AtomicU64,
}

struct HangGuard<'a>(&'a AtomicU64);

impl Drop for HangGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn kek_for(key_id: &str) -> LocalKey {
    let d = Sha256::digest(format!("kmsecrets-fake-kek:{key_id}").as_bytes());
    // SHA-256 output is 32 bytes: always a valid key.
    LocalKey::from_bytes(&d).unwrap_or_else(LocalKey::generate)
}

impl FakeKms {
    /// A fake that answers as `provider` with the given key ids, all enabled.
    pub fn new(provider: Provider, key_ids: &[&str]) -> FakeKms {
        let mut kek = LocalProvider::default();
        let mut keys = HashMap::new();
        for id in key_ids {
            let k = kek_for(id);
            keys.insert(id.to_string(), (k.id().to_string(), KeyState::Enabled));
            kek.add(k);
        }
        FakeKms {
            provider,
            latency: Mutex::new(Duration::ZERO),
            kek,
            state: Mutex::new(State {
                keys,
                ..Default::default()
            }),
            rsa: Mutex::default(),
            calls: Default::default(),
            throttled: AtomicU64::new(0),
            hanging: AtomicU64::new(0),
        }
    }

    pub fn with_latency(self, latency: Duration) -> FakeKms {
        *self.latency.lock_or_recover() = latency;
        self
    }

    /// Throttle like a KMS quota: `rate` requests/s with `burst` headroom.
    pub fn with_quota(self, rate: f64, burst: f64) -> FakeKms {
        self.state().quota = Some(Quota {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        });
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock_or_recover()
    }

    /// Add an asymmetric key (RSA ENCRYPT_DECRYPT, RSAES_OAEP_SHA_256):
    /// `GetPublicKey` and asymmetric `Decrypt` work on it, symmetric
    /// operations fail as KMS fails them (InvalidKeyUsageException).
    pub fn add_rsa_key(&self, key_id: &str, key: rsa::RsaPrivateKey) {
        self.state()
            .keys
            .insert(key_id.to_string(), (String::new(), KeyState::Enabled));
        self.rsa_keys().insert(key_id.to_string(), key);
    }

    fn rsa_keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, rsa::RsaPrivateKey>> {
        self.rsa.lock_or_recover()
    }

    /// Symmetric operations on an asymmetric key fail like KMS.
    fn symmetric_only(&self, key_id: &str) -> Result<(), KmsError> {
        if self.rsa_keys().contains_key(key_id) {
            return Err(KmsError::KeyUsage(format!(
                "KMS refused the key for this operation: InvalidKeyUsageException: {key_id} is an RSA ENCRYPT_DECRYPT key"
            )));
        }
        Ok(())
    }

    pub fn set_key_state(&self, key_id: &str, s: KeyState) {
        if let Some(k) = self.state().keys.get_mut(key_id) {
            k.1 = s;
        }
    }

    /// The next `n` calls fail with `err` (after quota and latency).
    pub fn fail_next(&self, n: usize, err: KmsError) {
        let mut st = self.state();
        for _ in 0..n {
            st.fail_next.push_back(err.clone());
        }
    }

    /// While set, every call fails as unreachable.
    pub fn set_unavailable(&self, down: bool) {
        self.state().unavailable = down;
    }

    pub fn calls(&self, op: Operation) -> u64 {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    /// Calls waiting on a [`KeyState::Hanging`] key right now.
    pub fn hanging_now(&self) -> u64 {
        self.hanging.load(Ordering::SeqCst)
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::SeqCst)
    }

    /// Admission for one call: counts it, applies quota, latency, faults and
    /// key state. Returns the KEK id to use.
    fn check_faults(&self) -> Result<(), KmsError> {
        let mut st = self.state();
        if st.unavailable {
            return Err(KmsError::Unavailable(
                "cannot reach KMS (connection failed)".into(),
            ));
        }
        match st.fail_next.pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn admit(&self, op: Operation, key_id: Option<&str>) -> Result<Option<String>, KmsError> {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
        let latency = *self.latency.lock_or_recover();
        let throttled = {
            let mut st = self.state();
            let now = Instant::now();
            st.quota.as_mut().is_some_and(|q| !q.try_take(now))
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if throttled {
            self.throttled.fetch_add(1, Ordering::SeqCst);
            return Err(KmsError::Throttled(
                "ThrottlingException: Rate exceeded".into(),
            ));
        }
        let Some(key_id) = key_id else {
            return self.check_faults().map(|()| None);
        };
        self.check_faults()?;
        let (kek, state) = self.state().keys.get(key_id).cloned().ok_or_else(|| {
            KmsError::NotFound(format!("NotFoundException: key {key_id} does not exist"))
        })?;
        match state {
            KeyState::Enabled => Ok(Some(kek)),
            KeyState::Unreachable => Err(KmsError::Unavailable(format!(
                "cannot reach KMS for {key_id} (connection failed)"
            ))),
            KeyState::Hanging => {
                self.hanging.fetch_add(1, Ordering::SeqCst);
                let _leave = HangGuard(&self.hanging);
                std::future::pending::<()>().await;
                Ok(None)
            }
            KeyState::Disabled => Err(KmsError::KeyDisabled(format!(
                "DisabledException: {key_id} is disabled"
            ))),
            KeyState::PendingDeletion => Err(KmsError::KeyDisabled(format!(
                "KMSInvalidStateException: {key_id} is pending deletion"
            ))),
            KeyState::AccessDenied => Err(KmsError::AccessDenied(format!(
                "AccessDeniedException: not allowed to use {key_id}"
            ))),
        }
    }

    fn wrapped(&self, key_id: &str, w: WrappedKey) -> WrappedKey {
        WrappedKey {
            provider: self.provider,
            key_id: key_id.to_string(),
            ..w
        }
    }
}

#[async_trait]
impl KmsProvider for FakeKms {
    fn provider(&self) -> Provider {
        self.provider
    }

    async fn decrypt(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Dek, KmsError> {
        let kek = self
            .admit(Operation::Decrypt, Some(key_id))
            .await?
            .unwrap_or_default();
        self.symmetric_only(key_id)?;
        self.kek
            .decrypt(&kek, ciphertext, ctx)
            .await
            .map_err(|_| KmsError::InvalidCiphertext("InvalidCiphertextException".into()))
    }

    async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let kek = self
            .admit(Operation::Encrypt, Some(key_id))
            .await?
            .unwrap_or_default();
        self.symmetric_only(key_id)?;
        Ok(self.wrapped(key_id, self.kek.encrypt(&kek, plaintext, ctx).await?))
    }

    async fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Dek, WrappedKey), KmsError> {
        let kek = self
            .admit(Operation::GenerateDataKey, Some(key_id))
            .await?
            .unwrap_or_default();
        self.symmetric_only(key_id)?;
        let (dek, w) = self.kek.generate_data_key(&kek, ctx).await?;
        Ok((dek, self.wrapped(key_id, w)))
    }

    async fn generate_data_key_without_plaintext(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let kek = self
            .admit(Operation::GenerateDataKeyWithoutPlaintext, Some(key_id))
            .await?
            .unwrap_or_default();
        self.symmetric_only(key_id)?;
        let (_, w) = self.kek.generate_data_key(&kek, ctx).await?;
        Ok(self.wrapped(key_id, w))
    }

    async fn re_encrypt(
        &self,
        src: &WrappedKey,
        dest_key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let dest = self
            .admit(Operation::ReEncrypt, Some(dest_key_id))
            .await?
            .unwrap_or_default();
        self.symmetric_only(dest_key_id)?;
        let src_kek = kek_for(&src.key_id);
        let dek = self
            .kek
            .decrypt(src_kek.id(), &src.ciphertext, ctx)
            .await
            .map_err(|_| KmsError::InvalidCiphertext("InvalidCiphertextException".into()))?;
        Ok(self.wrapped(
            dest_key_id,
            self.kek.encrypt(&dest, dek.expose(), ctx).await?,
        ))
    }

    async fn generate_random(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.admit(Operation::GenerateRandom, None).await?;
        self.kek.generate_random(len).await
    }

    async fn decrypt_asymmetric(
        &self,
        key_id: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.admit(Operation::Decrypt, Some(key_id)).await?;
        let key = self.rsa_keys().get(key_id).cloned().ok_or_else(|| {
            KmsError::KeyUsage(format!(
                "KMS refused the key for this operation: InvalidKeyUsageException: {key_id} is a symmetric key"
            ))
        })?;
        key.decrypt(rsa::Oaep::new::<Sha256>(), ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| KmsError::InvalidCiphertext("InvalidCiphertextException".into()))
    }

    async fn get_public_key(&self, key_id: &str) -> Result<PublicKeyInfo, KmsError> {
        use rsa::pkcs8::EncodePublicKey;
        use rsa::traits::PublicKeyParts;
        self.admit(Operation::GetPublicKey, Some(key_id)).await?;
        let key = self.rsa_keys().get(key_id).cloned().ok_or_else(|| {
            KmsError::KeyUsage(format!(
                "KMS refused the key for this operation: UnsupportedOperationException: {key_id} is a symmetric key"
            ))
        })?;
        let public = key.to_public_key();
        Ok(PublicKeyInfo {
            key_id: key_id.to_string(),
            key_spec: format!("RSA_{}", public.size() * 8),
            key_usage: "ENCRYPT_DECRYPT".into(),
            encryption_algorithms: vec!["RSAES_OAEP_SHA_1".into(), "RSAES_OAEP_SHA_256".into()],
            der: public
                .to_public_key_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|_| KmsError::Other("cannot encode the public key".into()))?,
        })
    }

    async fn describe_key(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        let state = self.state().keys.get(key_id).map(|k| k.1);
        self.calls[Operation::DescribeKey as usize].fetch_add(1, Ordering::SeqCst);
        let state = state.ok_or_else(|| KmsError::NotFound(key_id.to_string()))?;
        match state {
            KeyState::AccessDenied => return Err(KmsError::AccessDenied(key_id.to_string())),
            KeyState::Unreachable => return Err(KmsError::Unavailable(key_id.to_string())),
            _ => {}
        }
        Ok(KeyInfo {
            key_id: key_id.to_string(),
            arn: key_id.to_string(),
            enabled: state == KeyState::Enabled,
            state: format!("{state:?}"),
            deletion_date: (state == KeyState::PendingDeletion)
                .then(|| "2031-01-08T00:00:00Z".to_string()),
        })
    }
}
