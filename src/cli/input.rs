//! A Secret manifest read as input (`encrypt -f`, `edit`): values from
//! `data` and `stringData`, templates from `kmsecrets.dev/template.KEY`
//! annotations, metadata. Never echoes a value in an error.

use std::collections::BTreeMap;

use serde_json::Value;
use zeroize::Zeroizing;

use super::{CliResult, msg};
use crate::envelope;
use crate::manifest::Doc;
use crate::resource::Plaintext;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One Secret to encrypt, parsed from a manifest or assembled from flags.
pub struct SecretInput {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub type_: Option<String>,
    pub immutable: Option<bool>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub values: Plaintext,
    /// `template.data`: from `kmsecrets.dev/template.KEY` annotations and
    /// the --template flags.
    pub templates: BTreeMap<String, String>,
}

/// Annotation prefix on an input Secret manifest: `kmsecrets.dev/template.KEY`
/// holds the template of rendered key KEY (moved into `template.data`, never
/// copied to the Secret's annotations).
pub const TEMPLATE_ANNOTATION_PREFIX: &str = "kmsecrets.dev/template.";

fn string_map(v: Option<&Value>, what: &str, doc: &str) -> CliResult<BTreeMap<String, String>> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    if v.is_null() {
        return Ok(BTreeMap::new());
    }
    let obj = v
        .as_object()
        .ok_or_else(|| msg(format!("{doc}: {what} must be a mapping")))?;
    obj.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_string()))
                .ok_or_else(|| {
                    msg(format!(
                        "{doc}: {what}.{k} must be a string (quote it in YAML)"
                    ))
                })
        })
        .collect()
}

/// Parse a Secret document. Never echoes values in errors.
pub fn parse_secret(doc: &Doc, source: &str) -> CliResult<SecretInput> {
    let d = format!("{source}: {}", doc.describe());
    if doc.kind() != "Secret" || doc.api_version() != "v1" {
        return Err(msg(format!(
            "{d} is not a Secret (apiVersion v1, kind Secret expected)"
        )));
    }
    let mut values = Plaintext::new();
    for (k, v) in string_map(doc.value.get("data"), "data", &d)? {
        let bytes = envelope::unb64(&v).ok_or_else(|| {
            msg(format!(
                "{d}: data.{k} is not valid base64 (use stringData for plain text)"
            ))
        })?;
        values.insert(k, Zeroizing::new(bytes));
    }
    // stringData wins over data, as on the API server.
    for (k, v) in string_map(doc.value.get("stringData"), "stringData", &d)? {
        values.insert(k, Zeroizing::new(v.into_bytes()));
    }
    let meta = doc.value.get("metadata");
    let mut annotations = string_map(
        meta.and_then(|m| m.get("annotations")),
        "metadata.annotations",
        &d,
    )?;
    annotations.remove(LAST_APPLIED);
    let mut templates = BTreeMap::new();
    annotations.retain(|k, v| match k.strip_prefix(TEMPLATE_ANNOTATION_PREFIX) {
        Some(key) => {
            templates.insert(key.to_string(), std::mem::take(v));
            false
        }
        None => true,
    });
    Ok(SecretInput {
        templates,
        name: doc.name().map(str::to_string),
        namespace: doc.namespace().map(str::to_string),
        type_: doc
            .value
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_string),
        immutable: doc.value.get("immutable").and_then(Value::as_bool),
        labels: string_map(meta.and_then(|m| m.get("labels")), "metadata.labels", &d)?,
        annotations,
        values,
    })
}
