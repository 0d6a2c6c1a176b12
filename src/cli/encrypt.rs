//! `kmsecrets encrypt`: Secret manifests or literals → EncryptedSecret.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::Args;
use kube::api::ObjectMeta;
use zeroize::Zeroizing;

pub use super::input::{SecretInput, TEMPLATE_ANNOTATION_PREFIX, parse_secret};
use super::rules::{self, Lookup, Rule, RulesCache};
use super::{CliResult, GlobalArgs, KeyArg, LayerArgs, build_kms, msg, parse_key_arg, split_kv};
use crate::api::{EncryptedSecret, EncryptedSecretSpec, Scope, SecretTemplate, TemplateMetadata};
use crate::envelope::{self, Binding};
use crate::manifest::{self, Format};
use crate::resource::{self, Plaintext};

/// No `Debug`: `--from-literal` values are secrets.
#[derive(Args)]
pub struct EncryptArgs {
    /// Secret manifest(s) to encrypt (multi-document; - for stdin)
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: Option<String>,
    /// The same as -f (positional, as for verify and rotate)
    #[arg(value_name = "FILE", conflicts_with = "file")]
    pub file_arg: Option<String>,
    /// A value: KEY=VALUE (repeatable)
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub from_literal: Vec<String>,
    /// A value from a file: KEY=PATH, or PATH (key = file name) (repeatable)
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    pub from_file: Vec<String>,
    /// Values from an env file (KEY=VALUE lines; # comments)
    #[arg(long = "from-env-file", value_name = "PATH")]
    pub from_env_file: Vec<PathBuf>,
    /// A random value of N bytes from KMS GenerateRandom, printed nowhere: KEY=N (repeatable)
    #[arg(long = "generate", value_name = "KEY=N")]
    pub generate: Vec<String>,
    /// Wrapping key: KMS key ARN, alias/NAME, alias ARN, key id, file:PATH (local key) or pub:PATH (SealingKey file: offline) (repeatable; every copy wraps the same data key)
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    /// Where the ciphertext may be used: strict (namespace+name), namespace, cluster
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<Scope>,
    /// Extra KMS encryption context KEY=VALUE (repeatable; not under kmsecrets.dev/)
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// Name of the EncryptedSecret and its Secret (default: the Secret's)
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace (default: the Secret's)
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Secret type (default: the Secret's, or Opaque)
    #[arg(long = "type", value_name = "TYPE")]
    pub type_: Option<String>,
    /// Add/replace values in this EncryptedSecret FILE in place, reusing its data key (unchanged values keep their ciphertext)
    #[arg(long = "merge-into", value_name = "FILE")]
    pub merge_into: Option<PathBuf>,
    /// Apply the .kmsecrets.yaml creation rule of PATH, where the output will be committed (default: the -f file)
    #[arg(long = "rules-path", value_name = "PATH")]
    pub rules_path: Option<PathBuf>,
    #[command(flatten)]
    pub trust: super::trust::TrustArgs,
    /// A Secret key rendered from the values in the cluster: KEY=TEMPLATE (minijinja; see docs/templates.md) (repeatable)
    #[arg(long = "template", value_name = "KEY=TEMPLATE")]
    pub template: Vec<String>,
    /// Like --template, the template read from a file: KEY=PATH (repeatable)
    #[arg(long = "template-file", value_name = "KEY=PATH")]
    pub template_file: Vec<String>,
    /// Restart this workload when the Secret's content changes: KIND/NAME, KIND one of Deployment, StatefulSet, DaemonSet (repeatable)
    #[arg(long = "rollout-restart", value_name = "KIND/NAME")]
    pub rollout_restart: Vec<crate::api::RolloutRestartTarget>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
    #[command(flatten)]
    pub layer: LayerArgs,
}

fn insert_unique(
    values: &mut Plaintext,
    k: &str,
    v: Zeroizing<Vec<u8>>,
    overriding: bool,
) -> CliResult {
    envelope::validate_key_name(k).map_err(|e| msg(e.to_string()))?;
    if values.insert(k.to_string(), v).is_some() && !overriding {
        return Err(msg(format!("key {k:?} is given more than once")));
    }
    Ok(())
}

/// Values from --from-literal/--from-file/--from-env-file (not --generate).
fn flag_values(a: &EncryptArgs) -> CliResult<Plaintext> {
    let mut values = Plaintext::new();
    for l in &a.from_literal {
        let (k, v) = split_kv(l, "--from-literal")?;
        insert_unique(&mut values, k, Zeroizing::new(v.as_bytes().to_vec()), false)?;
    }
    for f in &a.from_file {
        let (k, path) = match f.split_once('=') {
            Some((k, p)) if !k.is_empty() => (k.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(f);
                let k = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (k, p)
            }
        };
        let bytes = std::fs::read(&path)
            .map_err(|e| msg(format!("--from-file: cannot read {}: {e}", path.display())))?;
        insert_unique(&mut values, &k, Zeroizing::new(bytes), false)?;
    }
    for p in &a.from_env_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(p)
                .map_err(|e| msg(format!("--from-env-file: cannot read {}: {e}", p.display())))?,
        );
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                msg(format!(
                    "--from-env-file {} line {}: expected KEY=VALUE",
                    p.display(),
                    n + 1
                ))
            })?;
            insert_unique(
                &mut values,
                k.trim_end(),
                Zeroizing::new(v.as_bytes().to_vec()),
                false,
            )?;
        }
    }
    Ok(values)
}

fn parse_generate(a: &EncryptArgs) -> CliResult<Vec<(String, usize)>> {
    a.generate
        .iter()
        .map(|g| {
            let (k, n) = split_kv(g, "--generate")?;
            envelope::validate_key_name(k).map_err(|e| msg(e.to_string()))?;
            let n: usize = n
                .parse()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| {
                    msg(format!(
                        "--generate {k}=N: N must be a byte count from 1 to 1024"
                    ))
                })?;
            Ok((k.to_string(), n))
        })
        .collect()
}

pub(super) fn user_context(a: &EncryptArgs) -> CliResult<BTreeMap<String, String>> {
    let mut ctx = BTreeMap::new();
    for c in &a.context {
        let (k, v) = split_kv(c, "--context")?;
        if crate::api::is_reserved_key(k) {
            return Err(msg(format!(
                "--context {k}: keys under kmsecrets.dev/ (in any letter case) are reserved (set from the resource's metadata)"
            )));
        }
        ctx.insert(k.to_string(), v.to_string());
    }
    Ok(ctx)
}

pub async fn run(g: &GlobalArgs, mut a: EncryptArgs) -> CliResult {
    if a.file.is_none() {
        a.file = a.file_arg.take();
    }
    let key_args = a
        .keys
        .iter()
        .map(|k| parse_key_arg(k).map_err(msg))
        .collect::<CliResult<Vec<KeyArg>>>()?;
    let generate = parse_generate(&a)?;
    let mut inputs = gather_inputs(&a, &generate)?;

    if let Some(path) = &a.merge_into {
        let Some(input) = inputs.pop() else {
            return Err(msg("nothing to merge"));
        };
        return super::merge::merge_into(g, &a, &key_args, path, input, &generate)
            .await
            .map_err(|e| super::name_file(path, e));
    }

    let lookup = creation_rule(&mut a)?;
    let rule = lookup.rule();
    let mut key_args = key_args;
    if let Some(rule) = rule {
        apply_rule(rule, &mut a, &mut key_args)?;
    }
    if key_args.is_empty() {
        return Err(msg(
            "no --key given: pass a KMS key (ARN, alias/NAME, key id) or a local key file (--key file:PATH), or add a creation rule to .kmsecrets.yaml",
        ));
    }
    let (setup, refs) = build_kms(g, &key_args, &a.layer)?;
    let mut out = Vec::new();
    for input in inputs {
        let es = encrypt_one(&setup.kms, &refs, &a, &generate, input).await?;
        if let Some(rule) = rule
            && let Some(v) = rule.violations(&es).into_iter().next()
        {
            return Err(msg(format!(
                "{}: {v}",
                es.metadata.name.as_deref().unwrap_or("")
            )));
        }
        out.push(es);
    }
    super::write_output(&out, a.output)?;
    Ok(())
}

/// The creation rule for this run: of `--rules-path`, else of the `-f`
/// file. A rules file that governs the path but has no rule for it is an
/// error without `--key`, a warning with one (guard will report it).
fn creation_rule(a: &mut EncryptArgs) -> CliResult<Lookup> {
    let path = a
        .rules_path
        .clone()
        .or_else(|| a.file.as_deref().filter(|f| *f != "-").map(PathBuf::from));
    let Some(path) = path else {
        return Ok(Lookup::NoRules);
    };
    let lookup = Lookup::find(&mut RulesCache::default(), &path)?;
    if let Lookup::Unmatched(rules) = &lookup {
        let why = rules::unmatched(&path, rules);
        if a.keys.is_empty() {
            return Err(msg(why));
        }
        eprintln!("warning: {why}; `kmsecrets guard` will report the result");
    }
    Ok(lookup)
}

/// Fill keys, scope and context from the rule; a flag that contradicts it
/// is an error naming both.
fn apply_rule(rule: &Rule, a: &mut EncryptArgs, key_args: &mut Vec<KeyArg>) -> CliResult {
    let rule_keys: Vec<KeyArg> = rule.keys.iter().map(|k| k.arg.clone()).collect();
    if key_args.is_empty() {
        *key_args = rule_keys;
    } else {
        // a KMS alias or bare id is compared after encryption, by the ARN
        // KMS returns (the final rule check)
        let comparable = key_args
            .iter()
            .all(|k| !matches!(k, KeyArg::Kms(id) if !id.starts_with("arn:")));
        let ids = |args: &[KeyArg]| -> CliResult<BTreeSet<String>> {
            args.iter()
                .map(|k| {
                    rules::RuleKey {
                        text: String::new(),
                        arg: k.clone(),
                    }
                    .key_id()
                })
                .collect()
        };
        if comparable && ids(key_args)? != ids(&rule_keys)? {
            return Err(msg(format!(
                "--key {} contradicts {}, which wraps with {}; drop --key to use the rule's keys, or change the rule",
                a.keys.join(" --key "),
                rule.describe(),
                rule.key_list()
            )));
        }
    }
    match a.scope {
        Some(s) if rules::scope_rank(s) > rules::scope_rank(rule.scope) => {
            return Err(msg(format!(
                "--scope {} contradicts {}, which allows at most {}",
                s.as_str(),
                rule.describe(),
                rule.scope.as_str()
            )));
        }
        Some(_) => {}
        None => a.scope = Some(rule.scope),
    }
    let given = user_context(a)?;
    for (k, v) in &rule.context {
        match given.get(k) {
            Some(w) if w != v => {
                return Err(msg(format!(
                    "--context {k}={w} contradicts {}, which requires {k}={v}",
                    rule.describe()
                )));
            }
            Some(_) => {}
            None => a.context.push(format!("{k}={v}")),
        }
    }
    if let Some(t) = &a.type_
        && !rule.type_allowed(t)
    {
        return Err(msg(format!(
            "--type {t} contradicts {}, which allows {}",
            rule.describe(),
            rule.allowed_types.join(", ")
        )));
    }
    Ok(())
}

/// The documents to encrypt: those of `-f`, or one assembled from the
/// flags; the value and template flags go into the single document.
fn gather_inputs(a: &EncryptArgs, generate: &[(String, usize)]) -> CliResult<Vec<SecretInput>> {
    let extra = flag_values(a)?;
    let mut inputs: Vec<SecretInput> = Vec::new();
    if let Some(f) = &a.file {
        let source = manifest::source_name(f);
        let bytes = manifest::read_source(f)?;
        for doc in manifest::parse_stream(&bytes, &source)? {
            inputs.push(parse_secret(&doc, &source)?);
        }
    }
    let flag_templates = flag_templates(a)?;
    if inputs.is_empty() {
        // --merge-into may add only templates or restart targets
        let merge_only =
            a.merge_into.is_some() && (!flag_templates.is_empty() || !a.rollout_restart.is_empty());
        if extra.is_empty() && generate.is_empty() && !merge_only {
            return Err(msg(
                "nothing to encrypt: pass -f FILE, --from-literal, --from-file, --from-env-file or --generate",
            ));
        }
        inputs.push(SecretInput {
            name: None,
            namespace: None,
            type_: None,
            immutable: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            values: Plaintext::new(),
            templates: BTreeMap::new(),
        });
    }
    if inputs.len() > 1
        && (a.name.is_some()
            || a.namespace.is_some()
            || !extra.is_empty()
            || !generate.is_empty()
            || !flag_templates.is_empty()
            || a.merge_into.is_some())
    {
        return Err(msg(
            "--name, --namespace, --merge-into, --template and value flags need a single input document",
        ));
    }
    inputs[0].values.extend(extra);
    inputs[0].templates.extend(flag_templates);
    Ok(inputs)
}

/// One input document → one EncryptedSecret under a fresh data key.
async fn encrypt_one(
    kms: &crate::kms::layer::Kms,
    refs: &[crate::wrap::KeyRef],
    a: &EncryptArgs,
    generate: &[(String, usize)],
    mut input: SecretInput,
) -> CliResult<EncryptedSecret> {
    let user_ctx = user_context(a)?;
    let scope = a.scope.unwrap_or_default();
    let name = a
        .name
        .clone()
        .or(input.name.take())
        .ok_or_else(|| msg("no name: pass --name or set metadata.name"))?;
    let namespace = a.namespace.clone().or(input.namespace.take());
    if namespace.is_none() && scope != Scope::Cluster {
        return Err(msg(format!(
            "no namespace for {name}: pass --namespace or set metadata.namespace (scope {} binds it)",
            scope.as_str()
        )));
    }
    let binding = Binding::new(scope, namespace.as_deref(), Some(&name), user_ctx.clone())
        .map_err(|e| msg(e.to_string()))?;
    for (k, n) in generate {
        let bytes = random_value(kms, &refs[0], *n).await?;
        insert_unique(&mut input.values, k, bytes, false)?;
    }
    check_templates(&name, &input.templates, &input.values)?;
    let ctx = binding.encryption_context();
    let (dek, data_keys) = crate::wrap::new_dek(kms, refs, &ctx).await?;
    let encrypted_data = resource::seal(&dek, &binding, &input.values, None)?;
    let template = SecretTemplate {
        type_: Some(
            a.type_
                .clone()
                .or(input.type_)
                .unwrap_or_else(|| "Opaque".into()),
        ),
        immutable: input.immutable,
        metadata: if input.labels.is_empty() && input.annotations.is_empty() {
            None
        } else {
            Some(TemplateMetadata {
                labels: input.labels,
                annotations: input.annotations,
            })
        },
        data: input.templates,
    };
    let mut es = EncryptedSecret::new(
        &name,
        EncryptedSecretSpec {
            scope,
            encryption_context: user_ctx,
            data_keys,
            encrypted_data,
            template: Some(template),
            rollout_restart_targets: restart_targets(a)?,
            deletion_policy: Default::default(),
        },
    );
    es.metadata = ObjectMeta {
        name: Some(name),
        namespace,
        ..Default::default()
    };
    warn_if_refused(&es);
    Ok(es)
}

/// `--template KEY=TEMPLATE` and `--template-file KEY=PATH`.
fn flag_templates(a: &EncryptArgs) -> CliResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut add = |k: &str, v: String, flag: &str| -> CliResult {
        envelope::validate_key_name(k).map_err(|e| msg(format!("{flag} {k}: {e}")))?;
        if out.insert(k.to_string(), v).is_some() {
            return Err(msg(format!("template {k:?} is given more than once")));
        }
        Ok(())
    };
    for t in &a.template {
        let (k, v) = split_kv(t, "--template")?;
        add(k, v.to_string(), "--template")?;
    }
    for t in &a.template_file {
        let (k, p) = split_kv(t, "--template-file")?;
        let text = std::fs::read_to_string(p)
            .map_err(|e| msg(format!("--template-file: cannot read {p}: {e}")))?;
        add(k, text, "--template-file")?;
    }
    Ok(out)
}

pub(super) fn restart_targets(a: &EncryptArgs) -> CliResult<Vec<crate::api::RolloutRestartTarget>> {
    let mut targets = a.rollout_restart.clone();
    targets.sort();
    let before = targets.len();
    targets.dedup();
    if targets.len() != before {
        return Err(msg("a --rollout-restart target is given more than once"));
    }
    Ok(targets)
}

/// Templates are rendered now, with the values at hand, so a mistake is
/// found here rather than as `InvalidSpec` in the cluster.
pub(super) fn check_templates(
    name: &str,
    templates: &BTreeMap<String, String>,
    values: &Plaintext,
) -> CliResult {
    if let Some(k) = templates.keys().find(|k| values.contains_key(*k)) {
        return Err(msg(format!(
            "{name}: {k:?} is both a value and a template; a Secret key comes from one of them"
        )));
    }
    crate::template::render(templates, values).map_err(|e| msg(format!("{name}: {e}")))?;
    Ok(())
}

/// `--generate`: KMS GenerateRandom, except when the first key is a
/// SealingKey file (offline: the OS CSPRNG, no KMS call).
pub(super) async fn random_value(
    kms: &crate::kms::layer::Kms,
    first: &crate::wrap::KeyRef,
    n: usize,
) -> CliResult<Zeroizing<Vec<u8>>> {
    if first.is_offline() {
        use rand::RngCore;
        let mut v = Zeroizing::new(vec![0u8; n]);
        rand::rngs::OsRng.fill_bytes(&mut v);
        return Ok(v);
    }
    Ok(kms.generate_random(first.provider, n).await?)
}

/// The controller refuses Secret types the cluster would fill with a
/// credential; say so now rather than at sync time (still written: an
/// operator may allow the type with --allow-secret-type).
pub(super) fn warn_if_refused(es: &EncryptedSecret) {
    if let Err(why) = crate::secret::admit(es, &[]) {
        eprintln!(
            "warning: {}: {why}",
            es.metadata.name.as_deref().unwrap_or("")
        );
    }
}
