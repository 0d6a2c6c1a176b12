//! `kmsecrets init NAME`: an empty EncryptedSecret whose data key comes from
//! GenerateDataKeyWithoutPlaintext — no plaintext key leaves KMS.

use std::collections::BTreeMap;

use clap::Args;
use kube::api::ObjectMeta;

use super::{CliResult, GlobalArgs, KeyArg, LayerArgs, build_kms, msg, parse_key_arg, split_kv};
use crate::api::{EncryptedSecret, EncryptedSecretSpec, Scope, SecretTemplate};
use crate::envelope::Binding;
use crate::manifest::Format;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Name of the EncryptedSecret
    pub name: String,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Wrapping key (repeatable), as for encrypt
    #[arg(long = "key", value_name = "KEY", required = true)]
    pub keys: Vec<String>,
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<Scope>,
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    #[arg(long = "type", value_name = "TYPE", default_value = "Opaque")]
    pub type_: String,
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
    #[command(flatten)]
    pub layer: LayerArgs,
}

pub async fn run(g: &GlobalArgs, a: InitArgs) -> CliResult {
    let key_args = a
        .keys
        .iter()
        .map(|k| parse_key_arg(k).map_err(msg))
        .collect::<CliResult<Vec<KeyArg>>>()?;
    let scope = a.scope.unwrap_or_default();
    let mut ctx = BTreeMap::new();
    for c in &a.context {
        let (k, v) = split_kv(c, "--context")?;
        ctx.insert(k.to_string(), v.to_string());
    }
    if a.namespace.is_none() && scope != Scope::Cluster {
        return Err(msg(format!(
            "--namespace is required for scope {}",
            scope.as_str()
        )));
    }
    let binding = Binding::new(scope, a.namespace.as_deref(), Some(&a.name), ctx.clone())
        .map_err(|e| msg(e.to_string()))?;
    let (setup, refs) = build_kms(g, &key_args, &a.layer)?;
    let data_keys =
        crate::wrap::new_dek_without_plaintext(&setup.kms, &refs, &binding.encryption_context())
            .await?;
    let mut es = EncryptedSecret::new(
        &a.name,
        EncryptedSecretSpec {
            scope,
            encryption_context: ctx,
            data_keys,
            encrypted_data: BTreeMap::new(),
            template: Some(SecretTemplate {
                type_: Some(a.type_),
                ..Default::default()
            }),
            rollout_restart_targets: Vec::new(),
            deletion_policy: Default::default(),
        },
    );
    es.metadata = ObjectMeta {
        name: Some(a.name),
        namespace: a.namespace,
        ..Default::default()
    };
    super::write_output(&[es], a.output)?;
    Ok(())
}
