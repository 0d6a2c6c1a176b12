//! `kmsecrets pubkey --key ARN|alias`: the SealingKey file of an asymmetric
//! KMS key (`GetPublicKey`; needs only `kms:GetPublicKey`). With it, anyone
//! seals offline (`encrypt --key pub:FILE`); only KMS `Decrypt` unwraps.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, GlobalArgs, KeyArg, LayerArgs, build_kms, msg, out, parse_key_arg};

#[derive(Args, Debug)]
pub struct PubkeyArgs {
    /// The asymmetric KMS key: key ARN, alias/NAME, alias ARN or key id (RSA_2048/3072/4096, key usage ENCRYPT_DECRYPT)
    #[arg(long = "key", value_name = "KEY")]
    pub key: String,
    /// Write the SealingKey file here (atomically) instead of stdout
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub layer: LayerArgs,
}

pub async fn run(g: &GlobalArgs, a: PubkeyArgs) -> CliResult {
    let key = match parse_key_arg(&a.key).map_err(msg)? {
        KeyArg::Kms(id) => id,
        KeyArg::Local(_) => {
            return Err(msg(
                "--key file: is a local symmetric key; pubkey needs an asymmetric KMS key (RSA, ENCRYPT_DECRYPT)",
            ));
        }
        KeyArg::Sealing(_) => {
            return Err(msg(
                "--key pub: is already a SealingKey file; pass the KMS key (ARN or alias) it came from",
            ));
        }
    };
    let (setup, _) = build_kms(g, &[], &a.layer)?;
    let sealing = crate::wrap::fetch_sealing_key(&setup.kms, &key).await?;
    let text = sealing.render();
    match &a.output {
        None => out(text)?,
        Some(path) => {
            crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
                .map_err(|e| msg(format!("cannot write {}: {e}", path.display())))?;
            eprintln!(
                "wrote SealingKey of {} (RSA {}) to {}; it is public: commit or publish it",
                sealing.key_id(),
                sealing.bits(),
                path.display()
            );
        }
    }
    Ok(())
}
