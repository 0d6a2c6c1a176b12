//! `kmsecrets encrypt --merge-into FILE`: add or replace values (and
//! templates, restart targets) in an existing EncryptedSecret, sealed with
//! its data key so unchanged values keep their exact ciphertext.
//!
//! The flags of the first `encrypt` may be repeated (what kubeseal users
//! type): flags that agree with the file are fine, the first that conflicts
//! is named. The data key must come from a copy under a key the user
//! trusts ([`super::trust`]).

use std::collections::BTreeSet;

use super::encrypt::{
    EncryptArgs, SecretInput, check_templates, random_value, restart_targets, user_context,
    warn_if_refused,
};
use super::{CliResult, GlobalArgs, KeyArg, build_kms, msg, read_one_encrypted};
use crate::api::EncryptedSecret;
use crate::manifest;
use crate::resource::{self, Plaintext};

/// How a flag that disagrees with the file is reported.
fn conflict(path: &std::path::Path, flag: String, have: String) -> super::CliError {
    msg(format!(
        "{flag} conflicts with {}, which has {have}; --merge-into keeps the file's binding and keys (use `rotate --rewrap --key ...` to change keys, or encrypt a new resource)",
        path.display()
    ))
}

/// Every flag given must agree with the file: the binding, then the keys.
async fn check_agreement(
    a: &EncryptArgs,
    key_args: &[KeyArg],
    es: &EncryptedSecret,
    kms: &crate::kms::layer::Kms,
    path: &std::path::Path,
) -> CliResult {
    check_binding_flags(a, es, path)?;
    if !key_args.is_empty() {
        check_key_flags(a, key_args, es, kms, path).await?;
    }
    Ok(())
}

/// `--name`, `--namespace`, `--scope`, `--context` against the file.
fn check_binding_flags(a: &EncryptArgs, es: &EncryptedSecret, path: &std::path::Path) -> CliResult {
    for (flag, given, have) in [
        ("--name", &a.name, &es.metadata.name),
        ("--namespace", &a.namespace, &es.metadata.namespace),
    ] {
        if let Some(g) = given
            && Some(g) != have.as_ref()
        {
            return Err(conflict(
                path,
                format!("{flag} {g}"),
                format!("{} {}", &flag[2..], have.as_deref().unwrap_or("(none)")),
            ));
        }
    }
    if let Some(s) = a.scope
        && s != es.spec.scope
    {
        return Err(conflict(
            path,
            format!("--scope {}", s.as_str()),
            format!("scope {}", es.spec.scope.as_str()),
        ));
    }
    if a.context.is_empty() {
        return Ok(());
    }
    let given = user_context(a)?;
    if given == es.spec.encryption_context {
        return Ok(());
    }
    let first = given
        .iter()
        .find(|(k, v)| es.spec.encryption_context.get(*k) != Some(*v))
        .map(|(k, _)| format!("--context {k}=…"))
        .unwrap_or_else(|| "--context".into());
    let keys: Vec<&str> = es
        .spec
        .encryption_context
        .keys()
        .map(String::as_str)
        .collect();
    Err(conflict(
        path,
        first,
        format!("encryptionContext keys [{}]", keys.join(", ")),
    ))
}

/// `--key` flags against the file's copies, compared as ids: a local key
/// file by its key id, a KMS key by the id recorded in the file, else (an
/// alias or a bare key id) through DescribeKey. The sets must be equal.
async fn check_key_flags(
    a: &EncryptArgs,
    key_args: &[KeyArg],
    es: &EncryptedSecret,
    kms: &crate::kms::layer::Kms,
    path: &std::path::Path,
) -> CliResult {
    let have: BTreeSet<&str> = es
        .spec
        .data_keys
        .iter()
        .map(|k| k.key_id.as_str())
        .collect();
    let mut given = BTreeSet::new();
    for (k, raw) in key_args.iter().zip(&a.keys) {
        let id = match k {
            KeyArg::Local(p) => crate::kms::local::LocalKey::load(p)?.id().to_string(),
            KeyArg::Sealing(p) => crate::kms::sealing::SealingKey::load(p)
                .map_err(|e| msg(e.to_string()))?
                .key_id()
                .to_string(),
            KeyArg::Kms(id) if have.contains(id.as_str()) => id.clone(),
            KeyArg::Kms(id) => {
                kms.describe_key(crate::api::Provider::AwsKms, id)
                    .await?
                    .arn
            }
        };
        if !have.contains(id.as_str()) {
            let list: Vec<&str> = have.iter().copied().collect();
            return Err(conflict(
                path,
                format!("--key {raw}"),
                format!("its data key wrapped under [{}]", list.join(", ")),
            ));
        }
        given.insert(id);
    }
    if given.len() != have.len() {
        let missing: Vec<&str> = have
            .iter()
            .copied()
            .filter(|h| !given.contains(*h))
            .collect();
        return Err(conflict(
            path,
            "--key (the list)".into(),
            format!(
                "more copies; missing from the flags: [{}]",
                missing.join(", ")
            ),
        ));
    }
    Ok(())
}

pub(super) async fn merge_into(
    g: &GlobalArgs,
    a: &EncryptArgs,
    key_args: &[KeyArg],
    path: &std::path::Path,
    input: SecretInput,
    generate: &[(String, usize)],
) -> CliResult {
    let mut es = read_one_encrypted(path)?;
    let binding = resource::validate(&es)?;
    let mismatch = |given: &Option<String>, have: &Option<String>| given.is_some() && given != have;
    if mismatch(&input.name, &es.metadata.name)
        || mismatch(&input.namespace, &es.metadata.namespace)
    {
        return Err(msg(format!(
            "the input Secret names another resource than {} ({}/{}); --merge-into only adds values to that same resource",
            path.display(),
            es.metadata.namespace.as_deref().unwrap_or(""),
            es.metadata.name.as_deref().unwrap_or("")
        )));
    }
    // `--key file:PATH` that agrees with the file also unwraps it
    let (setup, _) = build_kms(g, key_args, &a.layer)?;
    let kms = &setup.kms;
    check_agreement(a, key_args, &es, kms, path).await?;
    if key_args.is_empty() {
        // --key that agrees with the file was checked above; without it
        // only the file's local copies (if any) need no naming
        let trusted = super::trust::Trusted::new(&[], &a.trust);
        super::trust::check_copies(
            kms,
            &es,
            &trusted,
            path,
            "choose the data key new values are sealed with",
        )
        .await?;
    }
    let resource::Opened {
        dek, values: old, ..
    } = resource::open_resource(kms, &es)
        .await
        .map_err(|e| super::needs_data_key(&es, e.into()))?;
    let mut values: Plaintext = old.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut given: Vec<String> = Vec::new();
    for (k, v) in input.values {
        given.push(k.clone());
        values.insert(k, v);
    }
    for (k, n) in generate {
        let first = crate::wrap::KeyRef::of(&es.spec.data_keys[0]);
        given.push(k.clone());
        values.insert(k.clone(), random_value(kms, &first, *n).await?);
    }
    es.spec.encrypted_data = resource::seal(
        &dek,
        &binding,
        &values,
        Some((&es.spec.encrypted_data, &old)),
    )?;
    if let Some(t) = &a.type_ {
        es.spec.template.get_or_insert_with(Default::default).type_ = Some(t.clone());
    }
    let new_templates: Vec<String> = input.templates.keys().cloned().collect();
    if !input.templates.is_empty() {
        let t = es.spec.template.get_or_insert_with(Default::default);
        t.data.extend(input.templates);
    }
    let templates = es
        .spec
        .template
        .as_ref()
        .map(|t| t.data.clone())
        .unwrap_or_default();
    check_templates(
        es.metadata.name.as_deref().unwrap_or(""),
        &templates,
        &values,
    )?;
    for target in restart_targets(a)? {
        if !es.spec.rollout_restart_targets.contains(&target) {
            es.spec.rollout_restart_targets.push(target);
        }
    }
    es.spec.rollout_restart_targets.sort();
    warn_if_refused(&es);
    let text = manifest::render(std::slice::from_ref(&es), super::file_format(path));
    crate::fsutil::rewrite_atomic(path, text.as_bytes())
        .map_err(|e| msg(format!("cannot write {}: {e}", path.display())))?;
    eprintln!(
        "updated {}: {} ({})",
        path.display(),
        what_changed(&given, &old, &new_templates),
        super::count(es.spec.encrypted_data.len(), "value")
    );
    Ok(())
}

/// `added a, b; replaced c; templates x` — what a merge changed, by key
/// name (never a value).
fn what_changed(given: &[String], old: &Plaintext, templates: &[String]) -> String {
    let (replaced, added): (Vec<&str>, Vec<&str>) = given
        .iter()
        .map(String::as_str)
        .partition(|k| old.contains_key(*k));
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {}", added.join(", ")));
    }
    if !replaced.is_empty() {
        parts.push(format!("replaced {}", replaced.join(", ")));
    }
    if !templates.is_empty() {
        parts.push(format!("templates {}", templates.join(", ")));
    }
    if parts.is_empty() {
        parts.push("restart targets".into());
    }
    parts.join("; ")
}
