//! A local key file's text, as `--local-key` / `--key file:` read it.
#![no_main]

use kmsecrets::envelope::unb64;
use kmsecrets::kms::local::LocalKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let raw = unb64(text).unwrap_or_default();
    if let Some(k) = LocalKey::from_bytes(&raw) {
        assert!(k.id().starts_with("local:"));
    }
});
