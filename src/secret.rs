//! Building the materialised Secret from an EncryptedSecret and its opened
//! values. Pure: no IO, no KMS.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::ObjectMeta;

use crate::api::EncryptedSecret;
use crate::resource::Plaintext;

/// Label on every Secret the controller materialises (lets it watch only
/// its own Secrets' metadata).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "kmsecrets";

/// On every Secret the controller writes: `status.sourceHash`, for
/// checksum-based tools (a pod-template annotation that changes with it).
pub const SOURCE_HASH_ANNOTATION: &str = "kmsecrets.dev/source-hash";
/// On a Secret with rolloutRestartTargets: when a write last changed its
/// content (absent until the first change after creation). Written in the
/// same apply as the content, so a restart interrupted by a crash is found
/// again (it differs from `status.lastRolloutRestart`).
pub const CONTENT_CHANGED_ANNOTATION: &str = "kmsecrets.dev/content-changed-at";
/// Pod-template annotation set on a restart target (as `kubectl rollout
/// restart` sets `kubectl.kubernetes.io/restartedAt`); its value is the
/// content change it restarts for, so repeating a restart is a no-op.
pub const RESTARTED_AT_ANNOTATION: &str = "kmsecrets.dev/restartedAt";

fn base(es: &EncryptedSecret, values: &Plaintext) -> Secret {
    let t = es.spec.template.clone().unwrap_or_default();
    let md = t.metadata.unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: es.metadata.name.clone(),
            namespace: es.metadata.namespace.clone(),
            labels: (!md.labels.is_empty()).then_some(md.labels),
            annotations: (!md.annotations.is_empty()).then_some(md.annotations),
            ..Default::default()
        },
        type_: Some(t.type_.unwrap_or_else(|| "Opaque".into())),
        immutable: t.immutable,
        data: Some(
            values
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

/// The Secret as `kmsecrets decrypt` prints it (no cluster ownership).
/// `data`: every key, rendered ones included ([`crate::resource::secret_data`]).
pub fn build_plain(es: &EncryptedSecret, data: &Plaintext) -> Secret {
    base(es, data)
}

/// The Secret the controller applies: template labels/annotations, the
/// source-hash annotation, our managed-by label, and a controller
/// ownerReference for garbage collection.
pub fn build_owned(es: &EncryptedSecret, data: &Plaintext, source_hash: &str) -> Secret {
    let mut s = base(es, data);
    s.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SOURCE_HASH_ANNOTATION.into(), source_hash.into());
    s.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    if let Some(oref) = es.controller_owner_ref(&()) {
        s.metadata.owner_references = Some(vec![oref]);
    }
    s
}

/// Secret types the cluster fills with a credential it mints itself: the
/// token controller writes a non-expiring token for the ServiceAccount named
/// in `kubernetes.io/service-account.name`, and a bootstrap token in
/// kube-system authenticates nodes. Materialising one turns "may create an
/// EncryptedSecret" into "may mint credentials", so they are refused unless
/// the operator allows the type (`--allow-secret-type`).
pub const CREDENTIAL_TYPES: [&str; 2] = [
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
];

/// Annotations that point the token controller at a ServiceAccount.
pub const SERVICE_ACCOUNT_ANNOTATION_PREFIX: &str = "kubernetes.io/service-account.";

/// Why the Secret `es` describes may not be materialised, naming the field
/// (type names and annotation keys are fixed strings or keys, never values).
/// `allowed`: types the operator allowed explicitly.
pub fn admit(es: &EncryptedSecret, allowed: &[String]) -> Result<(), String> {
    let t = es.spec.template.as_ref();
    let type_ = t.and_then(|t| t.type_.as_deref()).unwrap_or("Opaque");
    let allowed_type = |ty: &str| allowed.iter().any(|a| a == ty);
    if let Some(ty) = CREDENTIAL_TYPES
        .iter()
        .find(|c| type_.eq_ignore_ascii_case(c))
        && !allowed_type(ty)
    {
        return Err(format!(
            "spec.template.type {ty} is not allowed: the cluster would fill it with a credential it mints; an operator can allow it with --allow-secret-type {ty}"
        ));
    }
    let sa_tokens_allowed = allowed_type(CREDENTIAL_TYPES[0]);
    if let Some(key) = t
        .and_then(|t| t.metadata.as_ref())
        .into_iter()
        .flat_map(|m| m.annotations.keys())
        .find(|k| {
            k.get(..SERVICE_ACCOUNT_ANNOTATION_PREFIX.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(SERVICE_ACCOUNT_ANNOTATION_PREFIX))
        })
        && !sa_tokens_allowed
    {
        return Err(format!(
            "spec.template.metadata.annotations[{key}] is not allowed: it points the token controller at a ServiceAccount; an operator can allow it with --allow-secret-type {}",
            CREDENTIAL_TYPES[0]
        ));
    }
    Ok(())
}

/// `sha256:` over everything that determines the Secret's content: binding
/// (namespace, name, scope, context), wrapped keys, ciphertexts and template.
/// Never over plaintext: a hash of a low-entropy secret would leak it to
/// anyone who can read the status.
pub fn source_hash(es: &EncryptedSecret) -> String {
    use sha2::{Digest, Sha256};
    let material = serde_json::json!({
        "namespace": es.metadata.namespace,
        "name": es.metadata.name,
        "scope": es.spec.scope,
        "encryptionContext": es.spec.encryption_context,
        "dataKeys": es.spec.data_keys,
        "encryptedData": es.spec.encrypted_data,
        "template": es.spec.template,
    });
    let bytes = serde_json::to_vec(&material).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DataKey, EncryptedSecretSpec, Provider};
    use zeroize::Zeroizing;

    fn es() -> EncryptedSecret {
        let mut es = EncryptedSecret::new(
            "db",
            EncryptedSecretSpec {
                scope: Default::default(),
                encryption_context: Default::default(),
                data_keys: vec![DataKey {
                    provider: Provider::Local,
                    key_id: "local:1".into(),
                    algorithm: None,
                    ciphertext: "AA==".into(),
                }],
                encrypted_data: [("a".to_string(), "Y2lwaGVy".to_string())].into(),
                template: Some(crate::api::SecretTemplate {
                    type_: Some("kubernetes.io/basic-auth".into()),
                    immutable: Some(true),
                    metadata: Some(crate::api::TemplateMetadata {
                        labels: [("app".to_string(), "x".to_string())].into(),
                        annotations: Default::default(),
                    }),
                    data: Default::default(),
                }),
                rollout_restart_targets: Default::default(),
                deletion_policy: Default::default(),
            },
        );
        es.metadata.namespace = Some("ns".into());
        es.metadata.uid = Some("uid-1".into());
        es
    }

    #[test]
    fn owned_secret_shape() {
        let values: Plaintext = [("a".to_string(), Zeroizing::new(b"v".to_vec()))].into();
        let s = build_owned(&es(), &values, "sha256:ab");
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[SOURCE_HASH_ANNOTATION],
            "sha256:ab"
        );
        assert_eq!(s.metadata.name.as_deref(), Some("db"));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        assert_eq!(s.immutable, Some(true));
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels["app"], "x");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        let oref = &s.metadata.owner_references.unwrap()[0];
        assert_eq!(oref.uid, "uid-1");
        assert_eq!(oref.controller, Some(true));
        assert_eq!(s.data.unwrap()["a"].0, b"v");
    }

    #[test]
    fn credential_minting_types_and_annotations_are_refused_unless_allowed() {
        let with = |ty: &str, ann: &[(&str, &str)]| {
            let mut e = es();
            let t = e.spec.template.as_mut().unwrap();
            t.type_ = Some(ty.into());
            t.metadata.as_mut().unwrap().annotations = ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            e
        };
        let none: Vec<String> = vec![];
        let sa = "kubernetes.io/service-account-token";
        let err = admit(&with(sa, &[]), &none).unwrap_err();
        assert!(
            err.contains("spec.template.type") && err.contains("--allow-secret-type"),
            "{err}"
        );
        let err = admit(&with("Bootstrap.Kubernetes.io/Token", &[]), &none).unwrap_err();
        assert!(err.contains("bootstrap.kubernetes.io/token"), "{err}");
        let ann = [("kubernetes.io/service-account.name", "deployer")];
        let err = admit(&with("Opaque", &ann), &none).unwrap_err();
        assert!(
            err.contains("annotations[kubernetes.io/service-account.name]"),
            "{err}"
        );
        assert!(!err.contains("deployer"), "never the value: {err}");
        assert!(
            admit(
                &with("Opaque", &[("kubernetes.io/description", "x")]),
                &none
            )
            .is_ok()
        );
        assert!(admit(&with("kubernetes.io/dockerconfigjson", &[]), &none).is_ok());
        let allow = vec![sa.to_string()];
        assert!(admit(&with(sa, &ann), &allow).is_ok());
        assert!(admit(&with("bootstrap.kubernetes.io/token", &[]), &allow).is_err());
    }

    #[test]
    fn source_hash_tracks_ciphertext_and_template_not_policy() {
        let a = es();
        let h = source_hash(&a);
        assert!(h.starts_with("sha256:"));
        let mut b = a.clone();
        b.spec.deletion_policy = crate::api::DeletionPolicy::Retain;
        assert_eq!(source_hash(&b), h);
        let mut c = a.clone();
        c.spec.encrypted_data.insert("a".into(), "b3RoZXI=".into());
        assert_ne!(source_hash(&c), h);
        let mut d = a.clone();
        d.metadata.namespace = Some("other".into());
        assert_ne!(source_hash(&d), h);
        let mut e = a.clone();
        let t = e.spec.template.as_mut().unwrap();
        t.data.insert("url".into(), "{{ a }}".into());
        assert_ne!(source_hash(&e), h, "templates are part of the source");
        let mut f = a.clone();
        f.spec.rollout_restart_targets = vec!["Deployment/api".parse().unwrap()];
        assert_eq!(source_hash(&f), h, "restart targets do not change content");
    }
}
