//! `kmsecrets decrypt`: EncryptedSecret stream → Secret stream.

use clap::Args;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use super::{CliResult, GlobalArgs, LayerArgs, build_kms, msg, to_encrypted};
use crate::manifest::{self, Format};
use crate::resource;

#[derive(Args, Debug)]
pub struct DecryptArgs {
    /// EncryptedSecret manifest(s) (multi-document; - for stdin)
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    pub file: String,
    /// Copy documents of other kinds through unchanged (manifest renderers, e.g. Argo CD plugins)
    #[arg(long)]
    pub passthrough: bool,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
    #[command(flatten)]
    pub layer: LayerArgs,
}

pub async fn run(g: &GlobalArgs, a: DecryptArgs) -> CliResult {
    let source = manifest::source_name(&a.file);
    let bytes = manifest::read_source(&a.file)?;
    let docs = manifest::parse_stream(&bytes, &source)?;
    let mut items = Vec::new();
    for doc in &docs {
        if doc.kind() == crate::api::KIND && doc.api_version() == crate::api::API_VERSION {
            items.push(Some(to_encrypted(doc, &source)?));
        } else if a.passthrough {
            items.push(None);
        } else {
            return Err(msg(format!(
                "{source}: {} is not an EncryptedSecret; pass --passthrough to copy other kinds through",
                doc.describe()
            )));
        }
    }
    if items.iter().all(Option::is_none) && !a.passthrough {
        return Err(msg(format!("{source} holds no EncryptedSecret")));
    }
    let (setup, _) = build_kms(g, &[], &a.layer)?;
    let kms = &setup.kms;
    // Concurrently, so documents sharing a data key make one KMS call
    // (single-flight) — the same layer the controller uses.
    let results = join_all(items.iter().map(|es| async move {
        let Some(es) = es else { return Ok(None) };
        let opened = resource::open_resource(kms, es).await?;
        // rendered exactly as the controller renders them
        let data = resource::secret_data(es, &opened.values)?;
        Ok::<_, resource::ResourceError>(Some(crate::controller::secret::build_plain(es, &data)))
    }))
    .await;
    let mut out: Vec<Value> = Vec::new();
    for ((doc, res), _) in docs.iter().zip(results).zip(items.iter()) {
        match res {
            Ok(Some(secret)) => {
                out.push(serde_json::to_value::<Secret>(secret).unwrap_or_default())
            }
            Ok(None) => out.push(doc.value.clone()),
            Err(e) => return Err(msg(format!("{source}: {}: {e}", doc.describe()))),
        }
    }
    super::write_output(&out, a.output)?;
    Ok(())
}
