//! `kmsecrets verify`: offline structure check; `--decrypt` proves it opens.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, GlobalArgs, LayerArgs, build_kms, msg, to_encrypted};
use crate::manifest;
use crate::resource;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// EncryptedSecret files (multi-document; - for stdin)
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Also unwrap the data key and authenticate every value (needs KMS / --local-key)
    #[arg(long)]
    pub decrypt: bool,
    #[command(flatten)]
    pub layer: LayerArgs,
}

pub async fn run(g: &GlobalArgs, a: VerifyArgs) -> CliResult {
    let kms = if a.decrypt {
        Some(build_kms(g, &[], &a.layer)?.0.kms)
    } else {
        None
    };
    let mut count = 0;
    for f in &a.files {
        let name = f.display().to_string();
        let source = manifest::source_name(&name);
        let bytes = manifest::read_source(&name)?;
        for doc in manifest::parse_stream(&bytes, &source)? {
            let es = to_encrypted(&doc, &source)?;
            let what = format!("{source}: {}", doc.describe());
            resource::validate(&es).map_err(|e| msg(format!("{what}: {e}")))?;
            if let Some(kms) = &kms {
                let opened = resource::open_resource(kms, &es)
                    .await
                    .map_err(|e| msg(format!("{what}: {e}")))?;
                let rendered = resource::secret_data(&es, &opened.values)
                    .map_err(|e| msg(format!("{what}: {e}")))?
                    .len()
                    - opened.values.len();
                let also = if rendered > 0 {
                    format!(", {rendered} template(s) render")
                } else {
                    String::new()
                };
                super::out(format!(
                    "ok: {what}: {} values decrypt{also} (data key via {})\n",
                    opened.values.len(),
                    opened.key_id
                ))?;
            } else {
                super::out(format!(
                    "ok: {what}: {} values, {} data keys (structure only)\n",
                    es.spec.encrypted_data.len(),
                    es.spec.data_keys.len()
                ))?;
            }
            count += 1;
        }
    }
    eprintln!("verified {count} EncryptedSecret(s)");
    Ok(())
}
