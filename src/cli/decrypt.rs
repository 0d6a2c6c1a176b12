//! `kmsecrets decrypt`: EncryptedSecret stream → Secret stream.

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use super::{CliResult, GlobalArgs, LayerArgs, build_kms, msg, to_encrypted};
use crate::manifest::{self, Format};
use crate::resource;

#[derive(Args, Debug)]
pub struct DecryptArgs {
    /// EncryptedSecret manifest(s) (multi-document; - for stdin), or directories of them (.yaml, .yml, .json) (repeatable)
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<String>,
    /// The same as -f (positional, as for verify and rotate); none and no -f: stdin
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
    /// Recurse into subdirectories of directory FILEs
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Copy documents of other kinds through unchanged (manifest renderers, e.g. Argo CD plugins)
    #[arg(long)]
    pub passthrough: bool,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// Documents decrypted at once (the layer's limiter bounds the KMS rate;
/// this bounds memory and keeps the output in input order).
const IN_FLIGHT: usize = 16;

pub async fn run(g: &GlobalArgs, a: DecryptArgs) -> CliResult {
    // the inputs in order: stdin as given, directories expanded
    let mut sources: Vec<String> = Vec::new();
    let mut files = a.files.clone();
    files.extend(a.paths.iter().cloned());
    if files.is_empty() {
        files.push("-".into());
    }
    let mut sweep = files.len() > 1;
    for f in &files {
        if f == "-" {
            sources.push(f.clone());
        } else {
            let p = std::path::PathBuf::from(f);
            sweep |= p.is_dir();
            for x in super::fleet::expand(&[p], a.recursive, super::fleet::Links::FollowInside)? {
                sources.push(x.display().to_string());
            }
        }
    }
    let mut docs = Vec::new();
    for f in &sources {
        let source = manifest::source_name(f);
        let bytes = manifest::read_source(f)?;
        for d in manifest::parse_stream(&bytes, &source)? {
            docs.push((source.clone(), d));
        }
    }
    let mut items = Vec::new();
    let mut skipped = 0usize;
    for (source, doc) in &docs {
        if doc.kind() == crate::api::KIND && doc.api_version() == crate::api::API_VERSION {
            items.push(Some(to_encrypted(doc, source)?));
        } else if a.passthrough {
            items.push(None);
        } else if sweep {
            // a repository sweep: other kinds are skipped and counted
            skipped += 1;
            items.push(None);
        } else {
            return Err(msg(format!(
                "{source}: {} is not an EncryptedSecret; pass --passthrough to copy other kinds through",
                doc.describe()
            )));
        }
    }
    if items.iter().all(Option::is_none) && !a.passthrough {
        return Err(msg(if sources.len() == 1 {
            format!(
                "{} holds no EncryptedSecret",
                manifest::source_name(&sources[0])
            )
        } else {
            format!("the {} files hold no EncryptedSecret", sources.len())
        }));
    }
    let (setup, _) = build_kms(g, &[], &a.layer)?;
    let kms = &setup.kms;
    // Concurrently, so documents sharing a data key make one KMS call
    // (single-flight) — the same layer the controller uses.
    let results: Vec<_> = futures::stream::iter(items.iter())
        .map(|es| async move {
            let Some(es) = es else { return Ok(None) };
            let opened = resource::open_resource(kms, es).await?;
            // rendered exactly as the controller renders them
            let data = resource::secret_data(es, &opened.values)?;
            Ok::<_, resource::ResourceError>(Some(crate::secret::build_plain(es, &data)))
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut out: Vec<Value> = Vec::new();
    for ((source, doc), res) in docs.iter().zip(results) {
        match res {
            Ok(Some(secret)) => {
                out.push(serde_json::to_value::<Secret>(secret).unwrap_or_default())
            }
            Ok(None) if a.passthrough => out.push(doc.value.clone()),
            Ok(None) => {}
            Err(e) => return Err(msg(format!("{source}: {}: {e}", doc.describe()))),
        }
    }
    if skipped > 0 {
        eprintln!("{skipped} documents of other kinds skipped");
    }
    super::write_output(&out, a.output)?;
    Ok(())
}
