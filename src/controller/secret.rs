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
pub fn build_plain(es: &EncryptedSecret, values: &Plaintext) -> Secret {
    base(es, values)
}

/// The Secret the controller applies: template labels/annotations, our
/// managed-by label, and a controller ownerReference for garbage collection.
pub fn build_owned(es: &EncryptedSecret, values: &Plaintext) -> Secret {
    let mut s = base(es, values);
    s.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    if let Some(oref) = es.controller_owner_ref(&()) {
        s.metadata.owner_references = Some(vec![oref]);
    }
    s
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
                }),
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
        let s = build_owned(&es(), &values);
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
    }
}
