//! Known-answer tests for the wire format (vectors produced by an independent
//! Python implementation, tests/vectors/generate.py) and drift checks for
//! generated artefacts (the CRD under crds/ and the chart).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use kmsecrets::api::{DataKey, EncryptedSecret, EncryptedSecretSpec, Provider, Scope};
use kmsecrets::envelope::{
    Binding, Dek, canonical_context, open_value, seal_raw_with_nonce, unb64,
};
use kmsecrets::kms::KmsProvider;
use kmsecrets::kms::layer::{Kms, LayerConfig, Providers};
use kmsecrets::kms::local::{LocalKey, LocalProvider};
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/envelope.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test]
async fn known_answer_vectors() {
    let all = vectors();
    let dek = Dek::from_slice(&hex::decode(all["dek_hex"].as_str().unwrap()).unwrap()).unwrap();
    let kek =
        LocalKey::from_bytes(&unb64(all["local_kek_b64"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(kek.id(), all["local_key_id"].as_str().unwrap());
    let local = LocalProvider::new([kek]);
    for v in all["vectors"].as_array().unwrap() {
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        let scope: Scope = s("scope").parse().unwrap();
        let b = Binding::new(
            scope,
            Some(&s("namespace")),
            Some(&s("name")),
            map(&v["encryptionContext"]),
        )
        .unwrap();
        assert_eq!(hex::encode(b.aad(&s("key"))), s("aad_hex"), "AAD {v}");
        assert_eq!(b.encryption_context(), map(&v["context"]), "context {v}");
        assert_eq!(
            hex::encode(canonical_context(&b.encryption_context())),
            s("canonical_context_hex")
        );
        let nonce: [u8; 12] = hex::decode(s("nonce_hex")).unwrap().try_into().unwrap();
        let pt = unb64(&s("plaintext_b64")).unwrap();
        let sealed = seal_raw_with_nonce(&dek, &nonce, &b.aad(&s("key")), &pt);
        assert_eq!(
            kmsecrets::envelope::b64(&sealed),
            s("value_b64"),
            "ciphertext {v}"
        );
        assert_eq!(
            open_value(&dek, &b, &s("key"), &s("value_b64"))
                .unwrap()
                .as_slice(),
            pt.as_slice()
        );
        // the local provider unwraps the independently wrapped DEK
        let wrapped = unb64(&s("local_wrapped_dek_b64")).unwrap();
        let got = local
            .decrypt(
                all["local_key_id"].as_str().unwrap(),
                &wrapped,
                &b.encryption_context(),
            )
            .await
            .unwrap();
        assert_eq!(got.expose(), dek.expose());
    }
}

/// A whole resource assembled from the vectors decrypts through the same
/// path the CLI and controller use.
#[tokio::test]
async fn vector_resource_decrypts_end_to_end() {
    let all = vectors();
    let v = &all["vectors"][0];
    let kek =
        LocalKey::from_bytes(&unb64(all["local_kek_b64"].as_str().unwrap()).unwrap()).unwrap();
    let mut es = EncryptedSecret::new(
        v["name"].as_str().unwrap(),
        EncryptedSecretSpec {
            scope: Scope::Strict,
            encryption_context: BTreeMap::new(),
            data_keys: vec![DataKey {
                provider: Provider::Local,
                key_id: all["local_key_id"].as_str().unwrap().into(),
                ciphertext: v["local_wrapped_dek_b64"].as_str().unwrap().into(),
            }],
            encrypted_data: [(
                v["key"].as_str().unwrap().to_string(),
                v["value_b64"].as_str().unwrap().to_string(),
            )]
            .into(),
            template: None,
            deletion_policy: Default::default(),
        },
    );
    es.metadata.namespace = Some(v["namespace"].as_str().unwrap().into());
    let kms = Kms::new(
        Providers::new(Default::default()).with(std::sync::Arc::new(LocalProvider::new([kek]))),
        LayerConfig::default(),
        Default::default(),
    );
    let opened = kmsecrets::resource::open_resource(&kms, &es).await.unwrap();
    let binding = kmsecrets::resource::binding_of(&es).unwrap();
    let values = kmsecrets::resource::open(&opened.dek, &binding, &es.spec).unwrap();
    assert_eq!(opened.values, values);
    assert_eq!(values["password"].as_slice(), b"hunter2");
}

/// `crds/` and the chart's `crds/` hold exactly what `kmsecrets crd` prints.
/// Regenerate with `KMSECRETS_UPDATE_CRDS=1 cargo test --test format`.
#[test]
fn generated_crds_do_not_drift() {
    let want = kmsecrets::api::crd_yaml();
    for rel in [
        "crds/kmsecrets.dev_encryptedsecrets.yaml",
        "charts/kmsecrets/crds/kmsecrets.dev_encryptedsecrets.yaml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        if std::env::var_os("KMSECRETS_UPDATE_CRDS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "{rel} differs from `kmsecrets crd`; regenerate with KMSECRETS_UPDATE_CRDS=1 cargo test --test format"
        );
    }
}
