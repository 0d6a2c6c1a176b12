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
