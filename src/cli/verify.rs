//! `kmsecrets verify PATH...`: offline structure check; `--decrypt` proves it
//! opens. Many files and directories (`-R`) at once: every file is checked,
//! failures are listed, and the exit status says whether any failed.

use std::path::{Path, PathBuf};

use clap::Args;

use super::fleet::{self, FileOutcome, Summary};
use super::{CliError, CliResult, GlobalArgs, LayerArgs, build_kms, msg, to_encrypted};
use crate::kms::layer::Kms;
use crate::manifest;
use crate::resource;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// EncryptedSecret files (multi-document; - for stdin), or directories of them (.yaml, .yml, .json)
    #[arg(required_unless_present = "filename", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// The same as PATH (repeatable), as for decrypt
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filename: Vec<PathBuf>,
    /// Recurse into subdirectories of directory PATHs
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Also unwrap the data key and authenticate every value (needs KMS / --local-key)
    #[arg(long)]
    pub decrypt: bool,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// One file: its EncryptedSecrets checked (in a directory sweep, documents
/// of other kinds are skipped and counted; named files must hold only
/// EncryptedSecrets). Returns the report lines, the resources and the
/// skipped documents.
async fn verify_file(
    kms: Option<&Kms>,
    path: &Path,
    skip_others: bool,
) -> CliResult<(Vec<String>, usize, usize)> {
    let name = path.display().to_string();
    let source = manifest::source_name(&name);
    let bytes = manifest::read_source(&name)?;
    let (mut lines, mut count, mut skipped) = (Vec::new(), 0, 0);
    for doc in manifest::parse_stream(&bytes, &source)? {
        if skip_others
            && (doc.kind() != crate::api::KIND || doc.api_version() != crate::api::API_VERSION)
        {
            skipped += 1;
            continue;
        }
        let es = to_encrypted(&doc, &source)?;
        let what = format!("{source}: {}", doc.describe());
        resource::validate(&es).map_err(|e| msg(format!("{what}: {e}")))?;
        if let Some(kms) = kms {
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
            lines.push(format!(
                "ok: {what}: {} values decrypt{also} (data key via {})\n",
                opened.values.len(),
                opened.key_id
            ));
        } else {
            lines.push(format!(
                "ok: {what}: {} values, {} data keys (structure only)\n",
                es.spec.encrypted_data.len(),
                es.spec.data_keys.len()
            ));
        }
        count += 1;
    }
    Ok((lines, count, skipped))
}

pub async fn run(g: &GlobalArgs, mut a: VerifyArgs) -> CliResult {
    a.files.append(&mut a.filename);
    let kms = if a.decrypt {
        Some(build_kms(g, &[], &a.layer)?.0.kms)
    } else {
        None
    };
    let stdin = a.files.iter().any(|f| f.as_os_str() == "-");
    let sweep = !stdin && (a.files.len() > 1 || a.files.iter().any(|f| f.is_dir()));
    if !sweep {
        // the named files, in order; the first failure is the command's error
        let mut count = 0;
        for f in &a.files {
            let (lines, n, _) = verify_file(kms.as_ref(), f, false).await?;
            for l in lines {
                super::out(l)?;
            }
            count += n;
        }
        eprintln!("verified {count} EncryptedSecret(s)");
        return Ok(());
    }
    let files = fleet::expand(&a.files, a.recursive, fleet::Links::FollowInside)?;
    let pb = fleet::progress(files.len(), "verify");
    let mut summary = Summary::default();
    let mut count = 0;
    // sequential in file order (stdout stays deterministic); the layer's
    // cache still makes one KMS call per distinct data key
    for f in &files {
        let o = match verify_file(kms.as_ref(), f, true).await {
            Ok((lines, n, skipped)) => {
                summary.skipped_docs += skipped;
                for l in lines {
                    pb.suspend(|| super::out(l))?;
                }
                count += n;
                if n == 0 {
                    FileOutcome::Skipped
                } else {
                    FileOutcome::Unchanged(String::new())
                }
            }
            Err(CliError::ReaderGone) => return Err(CliError::ReaderGone),
            Err(e) => FileOutcome::Failed(e.to_string()),
        };
        summary.add(&o);
        if !matches!(o, FileOutcome::Unchanged(_)) {
            fleet::report(&pb, f, &o);
        } else {
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let mut line = format!(
        "verified {count} EncryptedSecret(s) in {} files, {} failed",
        files.len() - summary.skipped_files,
        summary.failed
    );
    if summary.skipped_docs > 0 || summary.skipped_files > 0 {
        line.push_str(&format!(
            " ({} document(s) of other kinds skipped; {} file(s) without an EncryptedSecret)",
            summary.skipped_docs, summary.skipped_files
        ));
    }
    eprintln!("{line}");
    if summary.failed > 0 {
        return Err(msg(format!(
            "{} of {} files failed verification",
            summary.failed,
            files.len()
        )));
    }
    Ok(())
}
