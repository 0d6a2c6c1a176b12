//! `kmsecrets rotate FILE`: a new data key with every value re-encrypted, or
//! (`--rewrap --key NEW`) the existing data key moved under other KMS keys
//! with ReEncrypt, values untouched.

use std::path::PathBuf;

use clap::Args;

use super::{
    CliResult, GlobalArgs, KeyArg, LayerArgs, build_kms, file_format, msg, parse_key_arg,
    read_one_encrypted,
};
use crate::manifest;
use crate::resource::{self, KeyRef, ResourceError};

#[derive(Args, Debug)]
pub struct RotateArgs {
    /// The EncryptedSecret file, rewritten in place
    pub file: PathBuf,
    /// Keep the data key and values; re-wrap the data key under --key (ReEncrypt within KMS)
    #[arg(long)]
    pub rewrap: bool,
    /// New wrapping keys, as for encrypt (pub:PATH seals to a SealingKey) (repeatable). Default: the file's current keys
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub layer: LayerArgs,
}

async fn rotate(g: &GlobalArgs, a: RotateArgs) -> CliResult {
    let key_args = a
        .keys
        .iter()
        .map(|k| parse_key_arg(k).map_err(msg))
        .collect::<CliResult<Vec<KeyArg>>>()?;
    if a.rewrap && key_args.is_empty() {
        return Err(msg(
            "--rewrap needs --key NEW (the key(s) to move the data key under)",
        ));
    }
    let mut es = read_one_encrypted(&a.file)?;
    let binding = resource::validate(&es)?;
    let ctx = binding.encryption_context();
    let (setup, mut refs) = build_kms(g, &key_args, &a.layer)?;
    let kms = &setup.kms;
    if refs.is_empty() {
        refs = es.spec.data_keys.iter().map(KeyRef::of).collect();
    }
    if a.rewrap {
        let copies = resource::wrapped_keys(&es.spec)?;
        let mut new_keys = Vec::new();
        for dest in &refs {
            let mut last = None;
            let mut done = None;
            for src in &copies {
                match resource::rewrap(kms, src, dest, &ctx).await {
                    Ok(w) => {
                        done = Some(w);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let w = done.ok_or_else(|| {
                last.unwrap_or_else(|| ResourceError::InvalidSpec("no dataKeys".into()))
            })?;
            new_keys.push(crate::api::DataKey {
                provider: w.provider,
                key_id: w.key_id,
                algorithm: w.algorithm.is_asymmetric().then_some(w.algorithm),
                ciphertext: crate::envelope::b64(&w.ciphertext),
            });
        }
        es.spec.data_keys = new_keys;
    } else {
        let values = resource::open_resource(kms, &es)
            .await
            .map_err(|e| super::needs_data_key(&es, e.into()))?
            .values;
        let (dek, data_keys) = resource::new_dek(kms, &refs, &ctx).await?;
        es.spec.encrypted_data = resource::seal(&dek, &binding, &values, None)?;
        es.spec.data_keys = data_keys;
    }
    let text = manifest::render(std::slice::from_ref(&es), file_format(&a.file));
    crate::fsutil::rewrite_atomic(&a.file, text.as_bytes())
        .map_err(|e| msg(format!("cannot write {}: {e}", a.file.display())))?;
    eprintln!(
        "{} {} ({} data keys, {} values)",
        if a.rewrap { "re-wrapped" } else { "rotated" },
        a.file.display(),
        es.spec.data_keys.len(),
        es.spec.encrypted_data.len()
    );
    Ok(())
}

pub async fn run(g: &GlobalArgs, a: RotateArgs) -> CliResult {
    let file = a.file.clone();
    rotate(g, a).await.map_err(|e| super::name_file(&file, e))
}
