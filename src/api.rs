//! The `EncryptedSecret` custom resource (`kmsecrets.dev/v1alpha1`) and the
//! generated CRD.
//!
//! Owns the wire shape users commit to git. It never holds plaintext: values
//! here are ciphertext, and the status never carries anything derived from
//! plaintext.
//!
//! Why one long file: the Rust types *are* the CRD (schemars generates
//! `crds/`), so every field's doc, validation limit and CEL rule sits on
//! the type it constrains; splitting them would separate a field from the
//! schema users see for it.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "kmsecrets.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "kmsecrets.dev/v1alpha1";
pub const KIND: &str = "EncryptedSecret";
/// Prefix of every label, annotation and encryption-context key we own.
pub const PREFIX: &str = "kmsecrets.dev/";

/// A key under [`PREFIX`], in any letter case or Unicode look-alike.
///
/// AWS compares encryption-context *keys* case-insensitively where policy
/// reads them: in grant constraints ("the key in each key-value pair is not
/// case sensitive", KMS API reference, `GrantConstraints`) and in IAM
/// condition keys (`kms:EncryptionContext:<key>`; condition key names are
/// not case-sensitive, IAM User Guide, "Condition"). AWS does not say how it
/// folds non-ASCII letters, so this folds as widely as Unicode allows: NFKC
/// (fullwidth `ｋ` → `k`), then full upper- and lowercase mapping (`ſ` → `S`
/// → `s`, the Kelvin sign `K` → `k`, dotless `ı` → `I` → `i`). So
/// `KMSECRETS.DEV/namespace` and `kmſecrets.dev/namespace` are as reserved
/// as `kmsecrets.dev/namespace`: a user key can never pass for one the
/// controller sets from metadata.
pub fn is_reserved_key(k: &str) -> bool {
    use unicode_normalization::UnicodeNormalization;
    if k.is_ascii() {
        return k
            .get(..PREFIX.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(PREFIX));
    }
    let folded: String = k
        .nfkc()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .take(PREFIX.len() * 2)
        .collect();
    folded.starts_with(PREFIX)
}
/// Server-side apply field manager.
pub const FIELD_MANAGER: &str = "kmsecrets";
/// Annotation on a pre-existing Secret that lets the controller take it over.
pub const ADOPT_ANNOTATION: &str = "kmsecrets.dev/adopt";
/// Finalizer used only for `deletionPolicy: Retain`.
pub const FINALIZER: &str = "kmsecrets.dev/retain";
/// Secret data keys follow the Kubernetes rule for Secret/ConfigMap keys.
pub const KEY_NAME_PATTERN: &str = "^[-._a-zA-Z0-9]+$";

/// Spec of an `EncryptedSecret`: one data key wrapped by one or more KMS keys,
/// and the values sealed under it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kmsecrets.dev",
    version = "v1alpha1",
    kind = "EncryptedSecret",
    plural = "encryptedsecrets",
    singular = "encryptedsecret",
    shortname = "esec",
    namespaced,
    status = "EncryptedSecretStatus",
    doc = "A Secret whose values are sealed with a data key wrapped by KMS",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".status.keyId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedSecretSpec {
    /// Where the ciphertext may be used: `strict` binds namespace and name,
    /// `namespace` binds the namespace only, `cluster` binds nothing.
    #[serde(default)]
    pub scope: Scope,
    /// Extra KMS encryption context (e.g. for key-policy conditions). Keys may
    /// not use the reserved `kmsecrets.dev/` prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encryption_context: BTreeMap<String, String>,
    /// Wrapped copies of the same data key (one per KMS key; first usable wins).
    pub data_keys: Vec<DataKey>,
    /// Secret key -> base64(nonce[12] || AES-256-GCM ciphertext || tag[16]).
    #[serde(default)]
    pub encrypted_data: BTreeMap<String, String>,
    /// Applied to the materialised Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SecretTemplate>,
    /// Workloads in the same namespace restarted (like `kubectl rollout
    /// restart`) when a write changes the Secret's content; never on its
    /// creation or a no-op resync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,
    /// `Delete` garbage-collects the Secret with this resource, `Retain` orphans it.
    #[serde(default, skip_serializing_if = "DeletionPolicy::is_default")]
    pub deletion_policy: DeletionPolicy,
}

/// A workload to restart when the Secret's content changes.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub struct RolloutRestartTarget {
    pub kind: WorkloadKind,
    pub name: String,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

impl std::str::FromStr for RolloutRestartTarget {
    type Err = String;
    /// `Deployment/api` (kinds are matched case-insensitively; `deploy`,
    /// `sts` and `ds` as kubectl spells them).
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s.split_once('/').ok_or_else(|| {
            format!("invalid restart target {s:?}: expected KIND/NAME, e.g. Deployment/api")
        })?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => WorkloadKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => WorkloadKind::StatefulSet,
            "daemonset" | "daemonsets" | "ds" => WorkloadKind::DaemonSet,
            other => {
                return Err(format!(
                    "invalid restart target kind {other:?}: expected Deployment, StatefulSet or DaemonSet"
                ));
            }
        };
        if name.is_empty() {
            return Err(format!("invalid restart target {s:?}: the name is empty"));
        }
        Ok(RolloutRestartTarget {
            kind,
            name: name.to_string(),
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Strict,
    Namespace,
    Cluster,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Strict => "strict",
            Scope::Namespace => "namespace",
            Scope::Cluster => "cluster",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(Scope::Strict),
            "namespace" => Ok(Scope::Namespace),
            "cluster" => Ok(Scope::Cluster),
            other => Err(format!(
                "invalid scope {other:?}: expected strict, namespace or cluster"
            )),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Provider {
    #[serde(rename = "aws-kms")]
    AwsKms,
    #[serde(rename = "local")]
    Local,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::AwsKms => "aws-kms",
            Provider::Local => "local",
        }
    }
}

/// How a copy of the data key is wrapped.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Algorithm {
    /// A symmetric KMS key (or a local key): KMS Encrypt/GenerateDataKey
    /// with the encryption context.
    #[default]
    #[serde(rename = "SYMMETRIC_DEFAULT")]
    SymmetricDefault,
    /// An RSA ENCRYPT_DECRYPT KMS key's public half, offline:
    /// RSAES-OAEP-SHA-256 of `DEK || SHA-256(canonical context)`.
    #[serde(rename = "RSAES_OAEP_SHA_256")]
    RsaesOaepSha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SymmetricDefault => "SYMMETRIC_DEFAULT",
            Algorithm::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
        }
    }

    pub fn is_asymmetric(self) -> bool {
        self == Algorithm::RsaesOaepSha256
    }
}

/// One wrapped copy of the resource's data key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataKey {
    pub provider: Provider,
    /// KMS key ARN, or `local:<16 hex digits>` for the local provider.
    pub key_id: String,
    /// Absent = SYMMETRIC_DEFAULT. RSAES_OAEP_SHA_256: the copy was sealed
    /// offline to an RSA KMS key's public key (provider aws-kms only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// base64 of the wrapped data key (KMS CiphertextBlob, or the local format).
    pub ciphertext: String,
}

impl DataKey {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm.unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Secret type; defaults to `Opaque`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Extra Secret keys rendered from the decrypted values: key -> template
    /// (minijinja syntax; the variables are the `encryptedData` keys and
    /// `values`; see docs/templates.md). A key may not also be in
    /// `encryptedData`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

impl DeletionPolicy {
    fn is_default(&self) -> bool {
        *self == DeletionPolicy::Delete
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedSecretStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The wrapped copy that was used to unwrap the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// sha256 over ciphertext + template (never over plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_hash: Option<String>,
    /// The Secret's resourceVersion as we last wrote it; anything else is drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// The content change (the Secret's `kmsecrets.dev/content-changed-at`)
    /// the rolloutRestartTargets were last restarted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout_restart: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Size limits, in the CRD (`maxItems`, `maxProperties`, `maxLength`) and
/// checked by every reader ([`crate::resource::validate`]): they bound the
/// work one resource can cause (one KMS attempt per copy per round) and keep
/// the CEL rules within the real apiserver's cost budget.
pub mod limits {
    /// Copies of the data key (regions, a break-glass key).
    pub const DATA_KEYS: usize = 10;
    /// Values of one Secret.
    pub const VALUES: usize = 256;
    /// User encryption-context pairs (KMS itself allows 64 KiB in all).
    pub const CONTEXT: usize = 16;
    /// Labels, and annotations, of the materialised Secret.
    pub const TEMPLATE_METADATA: usize = 64;
    /// A KMS key id or ARN (KMS: at most 2048).
    pub const KEY_ID_LEN: usize = 2048;
    /// A wrapped data key, base64 (an RSA-4096 wrap is 684 characters).
    pub const WRAPPED_LEN: usize = 4096;
    /// Rendered keys (`template.data`).
    pub const TEMPLATE_DATA: usize = 64;
    /// One template's source.
    pub const TEMPLATE_LEN: usize = 64 * 1024;
    /// Workloads restarted on a content change.
    pub const RESTART_TARGETS: usize = 16;
}

/// The CRD, with the validation the derive cannot express: at least one data
/// key, Secret key-name pattern, and no user context key under our prefix.
/// `kmsecrets crd` prints exactly this; `crds/` is generated from it.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = EncryptedSecret::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        // A resource the controller has not seen yet reads as
        // `status: {observedGeneration: 0}` (defaulted when read, never
        // stored): generation ≥ 1 ≠ 0, so kstatus (Flux, kpt) and the Argo
        // CD health check say InProgress / Progressing instead of Current
        // before the first reconcile.
        if let Some(status) = schema.properties.as_mut().and_then(|p| p.get_mut("status")) {
            status.default = Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::json!({"observedGeneration": 0}),
                ),
            );
        }
        let Some(spec) = schema
            .properties
            .as_mut()
            .and_then(|p| p.get_mut("spec"))
            .and_then(|s| s.properties.as_mut())
        else {
            continue;
        };
        if let Some(keys) = spec.get_mut("dataKeys") {
            keys.min_items = Some(1);
            keys.max_items = Some(limits::DATA_KEYS as i64);
            if let Some(item) = keys.items.as_mut().and_then(|i| match i {
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => Some(s.as_mut()),
                _ => None,
            }) && let Some(props) = item.properties.as_mut()
            {
                for (f, max) in [("keyId", limits::KEY_ID_LEN), ("ciphertext", limits::WRAPPED_LEN)] {
                    if let Some(p) = props.get_mut(f) {
                        p.min_length = Some(1);
                        p.max_length = Some(max as i64);
                    }
                }
            }
        }
        if let Some(data) = spec.get_mut("encryptedData") {
            data.max_properties = Some(limits::VALUES as i64);
            data.x_kubernetes_validations = Some(vec![rule(
                "self.all(k, k.matches('^[-._a-zA-Z0-9]+$'))",
                "encryptedData keys must match ^[-._a-zA-Z0-9]+$",
            )]);
        }
        if let Some(td) = spec
            .get_mut("template")
            .and_then(|t| t.properties.as_mut())
            .and_then(|p| p.get_mut("data"))
        {
            td.max_properties = Some(limits::TEMPLATE_DATA as i64);
            td.x_kubernetes_validations = Some(vec![rule(
                "self.all(k, k.matches('^[-._a-zA-Z0-9]+$'))",
                "template.data keys must match ^[-._a-zA-Z0-9]+$",
            )]);
            if let Some(v) = td
                .additional_properties
                .as_mut()
                .and_then(|a| match a {
                    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
                    _ => None,
                })
            {
                v.max_length = Some(limits::TEMPLATE_LEN as i64);
            }
        }
        if let Some(targets) = spec.get_mut("rolloutRestartTargets") {
            targets.max_items = Some(limits::RESTART_TARGETS as i64);
        }
        if let Some(md) = spec
            .get_mut("template")
            .and_then(|t| t.properties.as_mut())
            .and_then(|p| p.get_mut("metadata"))
            .and_then(|m| m.properties.as_mut())
        {
            for f in ["labels", "annotations"] {
                if let Some(p) = md.get_mut(f) {
                    p.max_properties = Some(limits::TEMPLATE_METADATA as i64);
                }
            }
        }
        if let Some(ctx) = spec.get_mut("encryptionContext") {
            ctx.max_properties = Some(limits::CONTEXT as i64);
            ctx.x_kubernetes_validations = Some(vec![rule(
                "self.all(k, !k.lowerAscii().startsWith('kmsecrets.dev/'))",
                "encryptionContext keys may not use the reserved kmsecrets.dev/ prefix (in any letter case)",
            )]);
        }
    }
    crd
}

fn rule(
    rule: &str,
    message: &str,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule {
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule {
        rule: rule.to_string(),
        message: Some(message.to_string()),
        ..Default::default()
    }
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    let value = serde_json::to_value(crd()).unwrap_or_default();
    let body = serde_saphyr::to_string(&value).unwrap_or_default();
    format!("# Generated by `kmsecrets crd`; do not edit.\n---\n{body}")
}

#[cfg(test)]
mod tests {

    #[test]
    fn reserved_prefix_in_any_case_or_unicode_look_alike() {
        for k in [
            "kmsecrets.dev/namespace",
            "KMSECRETS.DEV/namespace",
            "kmſecrets.dev/namespace",       // U+017F long s
            "\u{212A}msecrets.dev/name",     // Kelvin sign
            "ｋｍｓｅｃｒｅｔｓ．ｄｅｖ／x", // fullwidth
            "KMSECRETS.dev/ſcope",
        ] {
            assert!(is_reserved_key(k), "{k} must be reserved");
        }
        for k in [
            "kmsecrets.devx",
            "team",
            "kmsecrets.de/x",
            "kmſecrets",
            "ĸmsecrets.dev/x",
            "",
        ] {
            assert!(!is_reserved_key(k), "{k} is not reserved");
        }
    }
    use super::*;

    #[test]
    fn crd_has_names_columns_and_validation() {
        let crd = crd();
        assert_eq!(crd.spec.group, "kmsecrets.dev");
        assert_eq!(crd.spec.names.plural, "encryptedsecrets");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["esec".to_string()][..])
        );
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Ready", "Reason", "Key", "Age"]);
        let yaml = crd_yaml();
        assert!(yaml.contains("minItems: 1"), "{yaml}");
        assert!(yaml.contains("k.lowerAscii().startsWith('kmsecrets.dev/')"));
        assert!(yaml.contains("aws-kms"));
    }

    #[test]
    fn spec_defaults_and_round_trip() {
        let spec: EncryptedSecretSpec = serde_json::from_value(serde_json::json!({
            "dataKeys": [{"provider": "local", "keyId": "local:0011223344556677", "ciphertext": "AA=="}],
        }))
        .unwrap();
        assert_eq!(spec.scope, Scope::Strict);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["scope"], "strict");
        assert!(back.get("deletionPolicy").is_none());
    }
}

/// Every `Ready` condition reason. `as_str()` is what conditions, events and
/// the `kmsecrets_reconcile_total{result}` label carry; [`Reason::ALL`] feeds
/// metric pre-registration and the reason table in `docs/troubleshooting.md`
/// (a test keeps the two equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Synced,
    KmsThrottled,
    KmsUnavailable,
    KmsAccessDenied,
    KmsKeyDisabled,
    DecryptFailed,
    InvalidSpec,
    SecretConflict,
    ApplyFailed,
    /// A Kubernetes API request other than the Secret write failed (status,
    /// finalizer, Secret read).
    ApiError,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Synced,
        Reason::KmsThrottled,
        Reason::KmsUnavailable,
        Reason::KmsAccessDenied,
        Reason::KmsKeyDisabled,
        Reason::DecryptFailed,
        Reason::InvalidSpec,
        Reason::SecretConflict,
        Reason::ApplyFailed,
        Reason::ApiError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Synced => "Synced",
            Reason::KmsThrottled => "KmsThrottled",
            Reason::KmsUnavailable => "KmsUnavailable",
            Reason::KmsAccessDenied => "KmsAccessDenied",
            Reason::KmsKeyDisabled => "KmsKeyDisabled",
            Reason::DecryptFailed => "DecryptFailed",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretConflict => "SecretConflict",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::ApiError => "ApiError",
        }
    }

    /// Retried with per-object exponential backoff (otherwise: a slow
    /// periodic retry, and at once when the resource changes).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Reason::KmsThrottled | Reason::KmsUnavailable | Reason::ApplyFailed | Reason::ApiError
        )
    }

    /// One line for the docs' reason table.
    pub fn summary(self) -> &'static str {
        match self {
            Reason::Synced => "the Secret matches the resource",
            Reason::KmsThrottled => "KMS kept throttling past the retries",
            Reason::KmsUnavailable => "KMS unreachable, timing out or failing",
            Reason::KmsAccessDenied => "IAM or key policy denies Decrypt, or no key for the copy",
            Reason::KmsKeyDisabled => "the KMS key is disabled, pending deletion or not found",
            Reason::DecryptFailed => "a value or the data key does not open under this binding",
            Reason::InvalidSpec => "the resource is malformed or not allowed",
            Reason::SecretConflict => "a Secret with that name exists and is not ours",
            Reason::ApplyFailed => "the API server refused or failed the Secret write",
            Reason::ApiError => "another API request failed (Secret read, status, finalizer)",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
