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
                algorithm: None,
                ciphertext: v["local_wrapped_dek_b64"].as_str().unwrap().into(),
            }],
            encrypted_data: [(
                v["key"].as_str().unwrap().to_string(),
                v["value_b64"].as_str().unwrap().to_string(),
            )]
            .into(),
            template: None,
            rollout_restart_targets: Vec::new(),
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
    let values = kmsecrets::resource::open_values(&opened.dek, &binding, &es.spec).unwrap();
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

// ---- asymmetric wrap (offline sealing): tests/vectors/generate_rsa.py ----

fn rsa_vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/rsa-oaep.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Hands OAEP the vector's fixed seed: the only randomness of the wrap.
struct FixedSeed(Vec<u8>);

impl rand::RngCore for FixedSeed {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("OAEP draws its seed with fill_bytes")
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!("OAEP draws its seed with fill_bytes")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(
            dest.len() <= self.0.len(),
            "OAEP asked for more than the seed"
        );
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand::CryptoRng for FixedSeed {}

#[test]
fn rsa_oaep_known_answer_vectors() {
    use kmsecrets::kms::sealing::{SealingKey, context_hash, unbind};
    use rsa::pkcs8::DecodePrivateKey;
    let all = rsa_vectors();
    let dek = Dek::from_slice(&hex::decode(all["dek_hex"].as_str().unwrap()).unwrap()).unwrap();
    for key in all["keys"].as_array().unwrap() {
        let key_id = key["key_id"].as_str().unwrap();
        // The SealingKey file: Python's text parses, and ours renders the same bytes.
        let file = key["sealing_key_file"].as_str().unwrap();
        let sealing = SealingKey::parse(file).unwrap();
        assert_eq!(sealing.key_id(), key_id);
        assert_eq!(sealing.bits(), key["bits"].as_u64().unwrap() as usize);
        assert_eq!(sealing.render(), file, "SealingKey file drifted");
        let der = unb64(key["public_key_der_b64"].as_str().unwrap()).unwrap();
        assert_eq!(SealingKey::from_der(key_id, &der).unwrap(), sealing);
        let pem = std::fs::read_to_string(format!(
            "{}/tests/vectors/{}",
            env!("CARGO_MANIFEST_DIR"),
            key["private_key_file"].as_str().unwrap()
        ))
        .unwrap();
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
        for c in key["cases"].as_array().unwrap() {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            let b = Binding::new(
                s("scope").parse().unwrap(),
                Some(&s("namespace")),
                Some(&s("name")),
                map(&c["encryptionContext"]),
            )
            .unwrap();
            let ctx = b.encryption_context();
            assert_eq!(ctx, map(&c["context"]));
            assert_eq!(hex::encode(context_hash(&ctx)), s("context_hash_hex"));
            // Our wrap with the vector's OAEP seed is the vector, byte for byte.
            let seed = hex::decode(s("oaep_seed_hex")).unwrap();
            let ours = sealing.wrap_with_rng(&dek, &ctx, &mut FixedSeed(seed));
            assert_eq!(kmsecrets::envelope::b64(&ours), s("wrapped_b64"), "{c}");
            // What KMS Decrypt(RSAES_OAEP_SHA_256) returns for the vector
            // unbinds to the DEK under its own context only.
            let raw = private
                .decrypt(
                    rsa::Oaep::new::<sha2::Sha256>(),
                    &unb64(&s("wrapped_b64")).unwrap(),
                )
                .unwrap();
            assert_eq!(unbind(&raw, &ctx).unwrap().expose(), dek.expose());
            let mut moved = ctx.clone();
            moved.insert("kmsecrets.dev/scope".into(), "other".into());
            assert!(unbind(&raw, &moved).is_err());
            // A random-seed wrap differs but unwraps the same.
            let fresh = sealing.wrap(&dek, &ctx);
            assert_ne!(fresh, ours);
            let raw = private
                .decrypt(rsa::Oaep::new::<sha2::Sha256>(), &fresh)
                .unwrap();
            assert_eq!(unbind(&raw, &ctx).unwrap().expose(), dek.expose());
        }
    }
}

/// Every `template-example` block of docs/templates.md renders exactly as
/// the page says (the docs cannot drift from the engine).
#[test]
fn docs_template_examples_render() {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/templates.md"),
    )
    .unwrap();
    let mut blocks = Vec::new();
    let mut lines = page.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "```yaml template-example" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n") + "\n");
        }
    }
    assert_eq!(
        blocks.len(),
        3,
        "dockerconfigjson, database URL, config file"
    );
    for b in &blocks {
        let doc: Value = serde_saphyr::from_str(b).unwrap();
        let values: kmsecrets::resource::Plaintext = map(&doc["values"])
            .into_iter()
            .map(|(k, v)| (k, zeroize::Zeroizing::new(v.into_bytes())))
            .collect();
        let templates = map(&doc["templates"]);
        let got = kmsecrets::template::render(&templates, &values).unwrap();
        for (k, want) in map(&doc["expect"]) {
            assert_eq!(
                String::from_utf8(got[&k].to_vec()).unwrap(),
                want,
                "docs/templates.md example {k}"
            );
        }
    }
}
