//! `spec.template.data`, which anyone who may create an EncryptedSecret
//! writes: parsing and rendering never panic, stay within the output bound,
//! and an error never quotes a decrypted value.
#![no_main]

use std::collections::BTreeMap;

use kmsecrets::template;
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

const CANARY: &str = "CANARY-fuzz-3b9d";

fuzz_target!(|bytes: &[u8]| {
    let Ok(src) = std::str::from_utf8(bytes) else {
        return;
    };
    if src.contains("CANARY") {
        return; // the source itself may be quoted (syntax errors)
    }
    let templates: BTreeMap<String, String> = [("k".to_string(), src.to_string())].into();
    let _ = template::check(&templates);
    let values: BTreeMap<String, Zeroizing<Vec<u8>>> = [
        ("password".to_string(), Zeroizing::new(CANARY.as_bytes().to_vec())),
        ("blob".to_string(), Zeroizing::new(vec![0xff, 0xfe, b'C'])),
        ("encoded".to_string(), Zeroizing::new(b"Q0FOQVJZLWZ1enotM2I5ZA==".to_vec())),
    ]
    .into();
    match template::render(&templates, &values) {
        Ok(out) => assert!(out.values().map(|v| v.len()).sum::<usize>() <= template::MAX_OUTPUT),
        Err(e) => {
            assert!(!e.to_string().contains(CANARY), "a value in an error: {e}");
            assert!(!format!("{e:?}").contains(CANARY), "a value in an error: {e:?}");
        }
    }
});
