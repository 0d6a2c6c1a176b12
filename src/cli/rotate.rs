//! `kmsecrets rotate PATH...`: a new data key with every value re-encrypted,
//! or (`--rewrap --key NEW`) the existing data key moved under other KMS
//! keys, values untouched — for one file or a whole repository.
//!
//! Every file is rewritten atomically (temp file + rename), and only when
//! each of its EncryptedSecrets was processed: a failure leaves that file
//! exactly as it was and the run goes on with the others. Documents of other
//! kinds are kept (counted as skipped). All files share one KMS layer, so a
//! data key shared by many files is unwrapped once (cache, single-flight),
//! and at most `--parallel` files are in flight.

use std::path::{Path, PathBuf};

use clap::Args;
use futures::StreamExt;
use serde_json::Value;

use super::fleet::{self, FileOutcome, Summary};
use super::rules::{self, Lookup, RulesCache};
use super::trust::{self, TrustArgs, Trusted};
use super::{
    CliError, CliResult, GlobalArgs, KeyArg, LayerArgs, build_kms, file_format, msg, parse_key_arg,
    to_encrypted,
};
use crate::api::EncryptedSecret;
use crate::kms::layer::Kms;
use crate::manifest;
use crate::resource::{self, ResourceError};
use crate::wrap::{self, KeyRef};

#[derive(Args, Debug)]
pub struct RotateArgs {
    /// EncryptedSecret files, or directories of them (.yaml, .yml, .json), each rewritten in place
    #[arg(required_unless_present = "filename", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The same as PATH (repeatable), as for decrypt
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filename: Vec<PathBuf>,
    /// Recurse into subdirectories of directory PATHs
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Say what would change; write nothing and make no KMS call that changes anything
    #[arg(long)]
    pub dry_run: bool,
    /// Files processed at once
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Keep the data key and values; re-wrap the data key under --key (ReEncrypt within KMS), or without --key under each file's .kmsecrets.yaml rule keys. Files already under exactly those keys are left unchanged
    #[arg(long)]
    pub rewrap: bool,
    /// The keys to wrap the new data key under, as for encrypt (pub:PATH seals to a SealingKey) (repeatable). Without --rewrap every KMS copy in a file must be under one of them: a file holding a copy under another KMS key is refused, since anyone who can write the file can plant one. Default: the file's keys, when they are all local keys
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// The new copies of `es`'s data key under `refs` (ReEncrypt, or a local
/// wrap for offline keys), trying each existing copy as the source.
async fn rewrap(kms: &Kms, es: &mut EncryptedSecret, refs: &[KeyRef]) -> CliResult {
    let binding = resource::validate(es)?;
    let ctx = binding.encryption_context();
    let copies = resource::wrapped_keys(&es.spec)?;
    let mut new_keys = Vec::new();
    for dest in refs {
        let mut last = None;
        let mut done = None;
        for src in &copies {
            match wrap::rewrap(kms, src, dest, &ctx).await {
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
    Ok(())
}

/// Whether `es`'s copies are already exactly under `refs` (a KMS alias or
/// bare key id is resolved with DescribeKey, once per id thanks to the run's
/// shared answers).
async fn already_under(kms: &Kms, es: &EncryptedSecret, refs: &[KeyRef]) -> CliResult<bool> {
    let have: std::collections::BTreeSet<&str> = es
        .spec
        .data_keys
        .iter()
        .map(|k| k.key_id.as_str())
        .collect();
    if have.len() != refs.len() {
        return Ok(false);
    }
    for r in refs {
        if have.contains(r.key_id.as_str()) {
            continue;
        }
        if r.is_offline()
            || r.provider != crate::api::Provider::AwsKms
            || r.key_id.starts_with("arn:")
        {
            return Ok(false);
        }
        let arn = kms.describe_key(r.provider, &r.key_id).await?.arn;
        if !have.contains(arn.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One EncryptedSecret: rotated or re-wrapped in memory. `false`: nothing
/// to do (a rewrap to the keys it already has).
async fn rotate_one(
    kms: &Kms,
    es: &mut EncryptedSecret,
    trusted: &Trusted<'_>,
    dest: &[KeyRef],
    a: &RotateArgs,
    path: &Path,
) -> CliResult<bool> {
    let refs = dest;
    if !a.rewrap {
        resource::validate(es)?;
        // before any request that creates or wraps key material
        trust::check_copies(kms, es, trusted, path, "receive the new data key").await?;
    }
    let refs: Vec<KeyRef> = if refs.is_empty() {
        es.spec.data_keys.iter().map(KeyRef::of).collect()
    } else {
        refs.to_vec()
    };
    if a.rewrap {
        if already_under(kms, es, &refs).await? {
            // nothing to move, but a broken or moved file must not pass as
            // "unchanged": prove it still opens (one cached Decrypt)
            resource::open_resource(kms, es)
                .await
                .map_err(|e| super::needs_data_key(es, e.into()))?;
            return Ok(false);
        }
        if !a.dry_run {
            rewrap(kms, es, &refs).await?;
        }
        return Ok(true);
    }
    let binding = resource::validate(es)?;
    if a.dry_run {
        return Ok(true);
    }
    let ctx = binding.encryption_context();
    let values = resource::open_resource(kms, es)
        .await
        .map_err(|e| super::needs_data_key(es, e.into()))?
        .values;
    let (dek, data_keys) = wrap::new_dek(kms, &refs, &ctx).await?;
    es.spec.encrypted_data = resource::seal(&dek, &binding, &values, None)?;
    es.spec.data_keys = data_keys;
    Ok(true)
}

/// One file, all or nothing. Returns the outcome and the number of
/// documents of other kinds it holds (`strict`: a file named on its own
/// must hold only EncryptedSecrets).
async fn rotate_file(
    kms: &Kms,
    trusted: &Trusted<'_>,
    dest: &[KeyRef],
    a: &RotateArgs,
    path: &Path,
    strict: bool,
) -> CliResult<(FileOutcome, usize)> {
    let name = path.display().to_string();
    let bytes = manifest::read_source(&name)?;
    let docs = manifest::parse_stream(&bytes, &name)?;
    let mut out: Vec<Value> = Vec::with_capacity(docs.len());
    let (mut resources, mut changed, mut others) = (0usize, 0usize, 0usize);
    let (mut keys, mut values) = (0usize, 0usize);
    for doc in &docs {
        let other = doc.kind() != crate::api::KIND || doc.api_version() != crate::api::API_VERSION;
        if other && !strict {
            others += 1;
            out.push(doc.value.clone());
            continue;
        }
        let mut es = to_encrypted(doc, &name)?;
        resources += 1;
        if rotate_one(kms, &mut es, trusted, dest, a, path)
            .await
            .map_err(|e| super::name_file(path, e))?
        {
            changed += 1;
        }
        keys += es.spec.data_keys.len();
        values += es.spec.encrypted_data.len();
        out.push(serde_json::to_value(&es).map_err(|e| msg(e.to_string()))?);
    }
    if resources == 0 {
        return Ok((FileOutcome::Skipped, others));
    }
    let what = if resources == 1 {
        format!(
            "{}, {}",
            super::count(keys, "data key"),
            super::count(values, "value")
        )
    } else {
        format!("{resources} EncryptedSecrets")
    };
    if changed == 0 {
        return Ok((
            FileOutcome::Unchanged(format!(
                "unchanged {name} (already under exactly those keys; it decrypts)"
            )),
            others,
        ));
    }
    let verb = match (a.rewrap, a.dry_run) {
        (true, false) => "re-wrapped",
        (false, false) => "rotated",
        (true, true) => "would re-wrap",
        (false, true) => "would rotate",
    };
    if !a.dry_run {
        let text = manifest::render(&out, file_format(path));
        crate::fsutil::rewrite_atomic(path, text.as_bytes())
            .map_err(|e| msg(format!("cannot write {name}: {e}")))?;
    }
    Ok((
        FileOutcome::Rewritten(format!("{verb} {name} ({what})")),
        others,
    ))
}

/// Per file, the indices of its rule's keys in the run's key list (the
/// union of the rules' keys), or why it has none. Says on stderr, before
/// any KMS request, which rule's keys each group of files moves to: the
/// keys come from a file in the repository, not the command line.
#[allow(clippy::type_complexity)]
fn rule_plan(files: &[PathBuf]) -> CliResult<(Vec<KeyArg>, Vec<Result<Vec<usize>, String>>)> {
    let mut cache = RulesCache::default();
    let mut union: Vec<KeyArg> = Vec::new();
    let mut plan = Vec::new();
    let mut said = std::collections::BTreeSet::new();
    for f in files {
        match Lookup::find(&mut cache, f)? {
            Lookup::Matched(rules, i) => {
                let rule = &rules.rules[i];
                let ix = rule
                    .keys
                    .iter()
                    .map(|k| match union.iter().position(|u| *u == k.arg) {
                        Some(j) => j,
                        None => {
                            union.push(k.arg.clone());
                            union.len() - 1
                        }
                    })
                    .collect();
                if said.insert(rule.describe()) {
                    eprintln!(
                        "--rewrap without --key: files under {} move to {}",
                        rule.describe(),
                        rule.key_list()
                    );
                }
                plan.push(Ok(ix));
            }
            Lookup::Unmatched(rules) => plan.push(Err(rules::unmatched(f, &rules))),
            Lookup::NoRules => plan.push(Err(format!(
                "--rewrap needs --key NEW (the key(s) to move the data key under), or a {} creation rule for {}",
                rules::FILE_NAME,
                f.display()
            ))),
        }
    }
    Ok((union, plan))
}

pub async fn run(g: &GlobalArgs, mut a: RotateArgs) -> CliResult {
    a.paths.append(&mut a.filename);
    let key_args = a
        .keys
        .iter()
        .map(|k| parse_key_arg(k).map_err(msg))
        .collect::<CliResult<Vec<KeyArg>>>()?;
    let files = fleet::expand(&a.paths, a.recursive, fleet::Links::Skip)?;
    let single = files.len() == 1 && a.paths.len() == 1 && !a.paths[0].is_dir();
    // `--rewrap` without `--key`: every file to its creation rule's keys
    let by_rule = a.rewrap && key_args.is_empty();
    let (key_args, plan) = if by_rule {
        rule_plan(&files)?
    } else {
        (key_args, Vec::new())
    };
    let (setup, refs) = build_kms(g, &key_args, &a.layer)?;
    let dest_of = |i: usize| -> Result<Vec<KeyRef>, String> {
        if !by_rule {
            return Ok(refs.clone());
        }
        plan[i]
            .as_ref()
            .map(|ix| ix.iter().map(|&j| refs[j].clone()).collect())
            .map_err(Clone::clone)
    };
    let trusted = Trusted::new(&refs, &a.trust);
    let kms = &setup.kms;
    if single {
        // one file: its error is the command's error, as for every command
        let dest = dest_of(0).map_err(msg)?;
        let (o, _) = rotate_file(kms, &trusted, &dest, &a, &files[0], true)
            .await
            .map_err(|e| super::name_file(&files[0], e))?;
        match o {
            FileOutcome::Rewritten(line) | FileOutcome::Unchanged(line) => eprintln!("{line}"),
            FileOutcome::Skipped => {
                return Err(msg(format!(
                    "{} holds no EncryptedSecret",
                    files[0].display()
                )));
            }
            FileOutcome::Failed(e) => return Err(msg(e)),
        }
        return Ok(());
    }
    let pb = fleet::progress(files.len(), if a.rewrap { "rewrap" } else { "rotate" });
    let mut summary = Summary::default();
    let mut results = futures::stream::iter(files.iter().enumerate())
        .map(|(i, path)| {
            let (trusted, a) = (&trusted, &a);
            let dest = dest_of(i);
            async move {
                let r = match dest {
                    Ok(dest) => rotate_file(kms, trusted, &dest, a, path, false).await,
                    Err(e) => Err(msg(e)),
                };
                (path, r)
            }
        })
        // in parallel, reported in path order
        .buffered(usize::from(a.parallel));
    while let Some((path, r)) = results.next().await {
        let (o, others) = match r {
            Ok(x) => x,
            Err(CliError::ReaderGone) => return Err(CliError::ReaderGone),
            Err(e) => (FileOutcome::Failed(e.to_string()), 0),
        };
        summary.skipped_docs += others;
        summary.add(&o);
        fleet::report(&pb, path, &o);
    }
    pb.finish_and_clear();
    eprintln!("{}", summary.line(a.dry_run));
    if summary.failed > 0 {
        return Err(msg(format!(
            "{} of {} files failed (left unchanged)",
            summary.failed,
            files.len()
        )));
    }
    Ok(())
}
