//! Property-based fuzzing of the parsers that see untrusted input (manifest
//! streams, EncryptedSecret documents, wire values, SealingKey files,
//! templates): arbitrary bytes and
//! mutated valid documents must produce errors, never panics. Runs on stable
//! Rust in the normal suite (cargo-fuzz needs nightly, which we do not ship).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use kmsecrets::api::{EncryptedSecret, Scope};
use kmsecrets::envelope::{Binding, Dek, open_value, seal_value};
use kmsecrets::kms::sealing::SealingKey;
use kmsecrets::manifest::parse_stream;
use kmsecrets::template;
use proptest::prelude::*;
use zeroize::Zeroizing;

/// A valid SealingKey file (the committed fuzz seed).
const SEALING_KEY: &str = include_str!("../fuzz/corpus/sealing_key/valid-0");

const VALID: &str = r#"apiVersion: kmsecrets.dev/v1alpha1
kind: EncryptedSecret
metadata: {name: db, namespace: payments}
spec:
  scope: strict
  encryptionContext: {team: payments}
  dataKeys:
  - {provider: local, keyId: "local:0011223344556677", ciphertext: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7"}
  encryptedData:
    password: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"
  template: {type: Opaque, metadata: {labels: {a: b}}}
"#;

/// Everything the CLI and controller do with an untrusted document, short
/// of calling KMS.
fn exercise(bytes: &[u8]) {
    let Ok(docs) = parse_stream(bytes, "fuzz") else {
        return;
    };
    for d in docs {
        let _ = d.describe();
        if let Ok(es) = serde_json::from_value::<EncryptedSecret>(d.value.clone()) {
            let _ = kmsecrets::resource::validate(&es);
            let _ = kmsecrets::secret::source_hash(&es);
            if let Ok(b) = kmsecrets::resource::binding_of(&es) {
                let _ = kmsecrets::resource::open_values(&Dek::generate(), &b, &es.spec);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,512}") {
        exercise(text.as_bytes());
    }

    #[test]
    fn mutated_valid_documents_never_panic(pos in 0usize..VALID.len(), len in 0usize..16, with in "[ -~\n]{0,16}") {
        let mut s = VALID.as_bytes().to_vec();
        let end = (pos + len).min(s.len());
        s.splice(pos..end, with.bytes());
        exercise(&s);
    }

    #[test]
    fn arbitrary_sealing_key_files_never_panic(text in "\\PC{0,512}") {
        let _ = SealingKey::parse(&text);
    }

    #[test]
    fn mutated_sealing_key_files_never_panic(pos in 0usize..SEALING_KEY.len(), len in 0usize..16, with in "[ -~\n]{0,16}") {
        let mut s = SEALING_KEY.as_bytes().to_vec();
        let end = (pos + len).min(s.len());
        s.splice(pos..end, with.bytes());
        if let Ok(text) = std::str::from_utf8(&s)
            && let Ok(k) = SealingKey::parse(text)
        {
            let again = SealingKey::parse(&k.render()).unwrap();
            prop_assert_eq!(again.key_id(), k.key_id());
        }
    }

    /// Template sources built from template syntax: never a panic, never a
    /// decrypted value in an error.
    #[test]
    fn arbitrary_templates_never_panic_or_quote_a_value(src in "[{}%#a-z0-9 |~\"():.,\\[\\]+*/-]{0,48}") {
        let templates: BTreeMap<String, String> = [("k".to_string(), src.clone())].into();
        let _ = template::check(&templates);
        let values: BTreeMap<String, Zeroizing<Vec<u8>>> = [
            ("password".to_string(), Zeroizing::new(b"CANARY-pt-77".to_vec())),
            ("blob".to_string(), Zeroizing::new(vec![0xff, 0xfe])),
        ]
        .into();
        if let Err(e) = template::render(&templates, &values) {
            prop_assert!(!e.to_string().contains("CANARY"), "{} leaked: {}", src, e);
        }
    }

    #[test]
    fn arbitrary_values_never_open(value in "\\PC{0,128}", key in "[-._a-zA-Z0-9]{1,16}") {
        let b = Binding::new(Scope::Strict, Some("ns"), Some("n"), BTreeMap::new()).unwrap();
        prop_assert!(open_value(&Dek::generate(), &b, &key, &value).is_err());
    }
}

#[test]
fn valid_document_parses() {
    let docs = parse_stream(VALID.as_bytes(), "t").unwrap();
    let es: EncryptedSecret = serde_json::from_value(docs[0].value.clone()).unwrap();
    kmsecrets::resource::validate(&es).unwrap();
    // a sealed value of the right binding opens; the fuzzed ones must not
    let dek = Dek::generate();
    let b = kmsecrets::resource::binding_of(&es).unwrap();
    let v = seal_value(&dek, &b, "password", b"x");
    assert_eq!(
        open_value(&dek, &b, "password", &v).unwrap().as_slice(),
        b"x"
    );
}
