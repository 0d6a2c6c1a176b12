//! Which wrapping keys a CLI write may trust.
//!
//! A file's `dataKeys` are whatever the last person who could write to the
//! repository put there. Two writes would hand that person the plaintext:
//! `rotate` wrapping a new data key under every copy the file holds (a
//! planted `{keyId: <their key>, ciphertext: <junk>}` then receives the
//! new DEK), and `edit` / `encrypt --merge-into` sealing new values under
//! the file's data key (a swapped-in data key they generated is one they
//! know). So these commands trust only the KMS keys named on their command
//! line (`--key`) and refuse, naming the copy, a file holding a copy under
//! any other KMS key, before any KMS request that creates or wraps key
//! material. `--trust-file-keys` keeps the older behaviour for those who
//! want it.
//!
//! Copies under local keys need no naming: wrapping or unwrapping under one
//! needs its key file, so a planted local copy can neither receive a data
//! key nor supply one (the command fails for want of the file), and holding
//! the file is already the user's say-so.
//!
//! What this cannot stop: someone who may call `Encrypt` under a trusted
//! key can still wrap a data key they know under it; such a file's existing
//! values no longer open (every command refuses it), unless they were all
//! replaced too, which a review of the diff shows.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Args;

use super::{CliResult, msg};
use crate::api::{EncryptedSecret, Provider};
use crate::kms::layer::Kms;
use crate::wrap::KeyRef;

#[derive(Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// Trust every data-key copy the file holds: a copy someone planted in the file then receives the new data key, or chooses the one new values are sealed with
    #[arg(long)]
    pub trust_file_keys: bool,
}

/// The keys a command was told to trust.
pub struct Trusted<'a> {
    /// `--key` of this command.
    pub keys: &'a [KeyRef],
    pub trust_file_keys: bool,
}

impl<'a> Trusted<'a> {
    pub fn new(keys: &'a [KeyRef], t: &TrustArgs) -> Trusted<'a> {
        Trusted {
            keys,
            trust_file_keys: t.trust_file_keys,
        }
    }

    /// Whether a copy's `keyId` is one of the trusted keys. A KMS alias or
    /// bare key id on the command line is resolved to its ARN with
    /// DescribeKey (no key material moves).
    async fn covers(&self, kms: &Kms, provider: Provider, key_id: &str) -> CliResult<bool> {
        for k in self.keys.iter().filter(|k| k.provider == provider) {
            if k.key_id == key_id {
                return Ok(true);
            }
        }
        for k in self.keys.iter().filter(|k| k.provider == provider) {
            if provider == Provider::AwsKms && !k.is_offline() && !k.key_id.starts_with("arn:") {
                let arn = kms.describe_key(provider, &k.key_id).await?.arn;
                if arn == key_id {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Refuse `es` unless every KMS data-key copy is under a trusted key (or
/// the user chose `--trust-file-keys`). `doing` says what the command would do
/// with an untrusted copy, for the message.
pub async fn check_copies(
    kms: &Kms,
    es: &EncryptedSecret,
    trusted: &Trusted<'_>,
    path: &Path,
    doing: &str,
) -> CliResult {
    if trusted.trust_file_keys {
        return Ok(());
    }
    let file = path.display();
    let kms_copies = || {
        es.spec
            .data_keys
            .iter()
            .enumerate()
            .filter(|(_, d)| d.provider != Provider::Local)
    };
    let ids: Vec<String> = kms_copies()
        .map(|(_, d)| d.key_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    if trusted.keys.is_empty() {
        return Err(msg(format!(
            "{file}: which keys do you trust? Name each of its data keys with --key ({}), or pass --trust-file-keys to trust whatever the file holds (a copy someone planted in it would then {doing})",
            ids.join(", ")
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, d) in kms_copies() {
        if !seen.insert((d.provider, d.key_id.as_str())) {
            continue;
        }
        if !trusted.covers(kms, d.provider, &d.key_id).await? {
            return Err(msg(format!(
                "{file}: spec.dataKeys[{i}] is wrapped under {} key {}, which is not a key you named with --key: anyone who can write the file can add a copy under their own key, and this would {doing}. If you trust that key, add --key {}; if not, remove that copy from the file (git log -p shows who added it). --trust-file-keys trusts every copy",
                d.provider.as_str(),
                d.key_id,
                d.key_id
            )));
        }
    }
    Ok(())
}
