//! `--key` and `--local-key`: what a key argument names, and the KMS layer
//! a command runs with (providers, resilience layer, region policy).

use std::path::PathBuf;
use std::sync::Arc;

use super::{CliResult, GlobalArgs, LayerArgs, msg};
use crate::api::Provider;
use crate::kms::aws::AwsOptions;
use crate::kms::layer::{Kms, LayerConfig, Providers};
use crate::kms::local::{LocalKey, LocalProvider};
use crate::metrics::Metrics;
use crate::wrap::KeyRef;

/// A `--key` value: `file:PATH` (local key), `pub:PATH` (a SealingKey
/// file: offline sealing) or a KMS key ARN / alias / id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyArg {
    Kms(String),
    Local(PathBuf),
    Sealing(PathBuf),
}

pub fn parse_key_arg(s: &str) -> Result<KeyArg, String> {
    let s = s.trim();
    if let Some(p) = s.strip_prefix("file:") {
        if p.is_empty() {
            return Err("--key file: needs a path, e.g. --key file:./local.key".into());
        }
        return Ok(KeyArg::Local(PathBuf::from(p)));
    }
    if let Some(p) = s.strip_prefix("pub:") {
        if p.is_empty() {
            return Err(
                "--key pub: needs a SealingKey file, e.g. --key pub:./sealing-key.yaml (write one with `kmsecrets pubkey`)".into(),
            );
        }
        return Ok(KeyArg::Sealing(PathBuf::from(p)));
    }
    if s.is_empty() {
        return Err(
            "--key is empty; pass a KMS key ARN, alias/NAME, key id, file:PATH or pub:PATH".into(),
        );
    }
    if s.starts_with("local:") {
        return Err(format!(
            "{s} is a local key id; pass the key file instead: --key file:PATH"
        ));
    }
    Ok(KeyArg::Kms(s.to_string()))
}

/// Everything needed to talk to KMS for one command.
pub struct KmsSetup {
    pub kms: Kms,
}

/// Build the KMS layer: local keys from `--local-key` plus those named by
/// `--key file:`; AWS is only contacted if an aws-kms key is used.
pub fn build_kms(
    g: &GlobalArgs,
    key_args: &[KeyArg],
    layer: &LayerArgs,
) -> CliResult<(KmsSetup, Vec<KeyRef>)> {
    build_kms_with(g, key_args, layer.config().map_err(msg)?, None)
}

/// [`build_kms`] with a layer configuration and a region policy (the
/// controller's).
pub fn build_kms_with(
    g: &GlobalArgs,
    key_args: &[KeyArg],
    cfg: LayerConfig,
    regions: Option<Arc<crate::kms::regions::RegionPolicy>>,
) -> CliResult<(KmsSetup, Vec<KeyRef>)> {
    let mut local = LocalProvider::default();
    let mut refs = Vec::new();
    for p in &g.local_keys {
        local.add(LocalKey::load(p)?);
    }
    for k in key_args {
        match k {
            KeyArg::Local(p) => {
                let key = LocalKey::load(p)?;
                refs.push(KeyRef::new(Provider::Local, key.id()));
                local.add(key);
            }
            KeyArg::Sealing(p) => refs.push(KeyRef::sealing(
                crate::kms::sealing::SealingKey::load(p).map_err(|e| msg(e.to_string()))?,
            )),
            KeyArg::Kms(id) => refs.push(KeyRef::new(Provider::AwsKms, id.clone())),
        }
    }
    let aws = AwsOptions {
        region: g.region.clone(),
        endpoint: g.kms_endpoint.clone(),
        regions,
        ..Default::default()
    };
    let providers = Providers::new(aws).with(Arc::new(local));
    Ok((
        KmsSetup {
            kms: Kms::new(providers, cfg, Arc::new(Metrics::new())),
        },
        refs,
    ))
}
