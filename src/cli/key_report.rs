//! `kmsecrets keys [-R] PATH…`: which KMS keys a repository depends on,
//! what state each is in, and which resources would be lost with them —
//! a CI gate that fails the day someone schedules a key for deletion.
//!
//! One row per key: its region, its state (`DescribeKey`, one call per
//! distinct key however many resources use it), the deletion date of a key
//! pending deletion, how many resources have a copy under it, and how many
//! of those have *every* copy under an unhealthy key (at risk: they cannot
//! be decrypted once the key is gone). Exit 1 when any resource is at risk.
//! `--offline` lists keys and dependents from the files alone, without any
//! request. Local keys are listed but never checked (no KMS holds them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::fleet::{self, Links};
use super::{CliResult, GlobalArgs, LayerArgs, build_kms, msg, to_encrypted};
use crate::api::Provider;
use crate::kms::health::KeyHealth;
use crate::kms::regions::region_of;
use crate::manifest;

#[derive(Args, Debug)]
pub struct KeysArgs {
    /// EncryptedSecret files, or directories of them (.yaml, .yml, .json)
    #[arg(required_unless_present = "filename", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The same as PATH (repeatable), as for decrypt
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filename: Vec<PathBuf>,
    /// Recurse into subdirectories of directory PATHs
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Keys and dependents from the files alone: no KMS request, no state
    #[arg(long)]
    pub offline: bool,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: KeysFormat,
    #[command(flatten)]
    pub layer: LayerArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeysFormat {
    Table,
    Json,
}

type KeyRef = (&'static str, String);

/// One key: the resources with a copy under it, and what KMS says of it
/// (`None`: offline, or a local key).
struct Row {
    dependents: BTreeSet<String>,
    health: Option<KeyHealth>,
}

pub async fn run(g: &GlobalArgs, mut a: KeysArgs) -> CliResult {
    a.paths.append(&mut a.filename);
    let files = fleet::expand(&a.paths, a.recursive, Links::FollowInside)?;
    // resource → its keys; key → its row
    let mut resources: BTreeMap<String, BTreeSet<KeyRef>> = BTreeMap::new();
    let mut keys: BTreeMap<KeyRef, Row> = BTreeMap::new();
    for f in &files {
        let name = f.display().to_string();
        let source = manifest::source_name(&name);
        let bytes = manifest::read_source(&name)?;
        for doc in manifest::parse_stream(&bytes, &source)? {
            if doc.kind() != crate::api::KIND || doc.api_version() != crate::api::API_VERSION {
                continue;
            }
            let es = to_encrypted(&doc, &source)?;
            let what = format!("{source}: {}", doc.describe());
            let mine = resources.entry(what.clone()).or_default();
            for d in &es.spec.data_keys {
                let k: KeyRef = (d.provider.as_str(), d.key_id.clone());
                mine.insert(k.clone());
                keys.entry(k)
                    .or_insert_with(|| Row {
                        dependents: BTreeSet::new(),
                        health: None,
                    })
                    .dependents
                    .insert(what.clone());
            }
        }
    }
    if !a.offline {
        let (setup, _) = build_kms(g, &[], &a.layer)?;
        for ((provider, id), row) in keys.iter_mut() {
            if *provider != Provider::AwsKms.as_str() {
                continue;
            }
            row.health = Some(match setup.kms.describe_key(Provider::AwsKms, id).await {
                Ok(info) => KeyHealth::of(&info),
                Err(e) => KeyHealth::of_error(&e),
            });
        }
    }
    let unhealthy = |k: &KeyRef| {
        keys.get(k)
            .and_then(|r| r.health.as_ref())
            .is_some_and(|h| !h.is_healthy())
    };
    let at_risk: BTreeSet<&String> = resources
        .iter()
        .filter(|(_, ks)| !ks.is_empty() && ks.iter().all(unhealthy))
        .map(|(r, _)| r)
        .collect();
    match a.output {
        KeysFormat::Table => super::out(table(&keys, &at_risk))?,
        KeysFormat::Json => {
            let rows: Vec<serde_json::Value> = keys
                .iter()
                .map(|((provider, id), row)| {
                    json!({
                        "provider": provider,
                        "keyId": id,
                        "region": region_of(id),
                        "state": row.health.as_ref().map(KeyHealth::as_str),
                        "deletionDate": row.health.as_ref().and_then(KeyHealth::deletion_date),
                        "resources": row.dependents,
                        "atRisk": row.dependents.iter().filter(|d| at_risk.contains(d)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            super::out(format!(
                "{}\n",
                serde_json::to_string_pretty(&rows).map_err(|e| msg(e.to_string()))?
            ))?;
        }
    }
    if at_risk.is_empty() {
        return Ok(());
    }
    for r in &at_risk {
        eprintln!("at risk: {r} (every copy of its data key is under an unhealthy key)");
    }
    Err(msg(format!(
        "{} resource{} at risk: re-wrap them under a healthy key now (kmsecrets rotate --rewrap --key NEW FILE), or cancel the key's deletion / enable it",
        at_risk.len(),
        if at_risk.len() == 1 { " is" } else { "s are" }
    )))
}

fn table(keys: &BTreeMap<KeyRef, Row>, at_risk: &BTreeSet<&String>) -> String {
    let mut rows = vec![[
        "KEY".to_string(),
        "REGION".into(),
        "STATE".into(),
        "DELETION".into(),
        "RESOURCES".into(),
        "AT RISK".into(),
    ]];
    for ((provider, id), row) in keys {
        let state = match (&row.health, *provider) {
            (Some(h), _) => h.as_str().to_string(),
            (None, "local") => "local".into(),
            (None, _) => "-".into(),
        };
        rows.push([
            id.clone(),
            region_of(id).unwrap_or("-").to_string(),
            state,
            row.health
                .as_ref()
                .and_then(KeyHealth::deletion_date)
                .unwrap_or("-")
                .to_string(),
            row.dependents.len().to_string(),
            row.dependents
                .iter()
                .filter(|d| at_risk.contains(d))
                .count()
                .to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}
