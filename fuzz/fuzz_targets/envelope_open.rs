//! One encryptedData value (base64 text) opened under a fixed data key and
//! binding: framing, version byte, nonce, tag. The first line is the value's
//! key name, the rest its text. Only the value sealed by this target itself
//! may open.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use kmsecrets::api::Scope;
use kmsecrets::envelope::{Binding, Dek, open_value, seal_value};
use libfuzzer_sys::fuzz_target;

static DEK: LazyLock<Dek> = LazyLock::new(Dek::generate);

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (key, value) = text.split_once('\n').unwrap_or(("password", text));
    let Ok(b) = Binding::new(Scope::Strict, Some("payments"), Some("db"), BTreeMap::new()) else {
        return;
    };
    if let Ok(plain) = open_value(&DEK, &b, key, value) {
        // whatever opens must round-trip
        let again = seal_value(&DEK, &b, key, &plain);
        let reopened = open_value(&DEK, &b, key, &again).ok().map(|v| v.to_vec());
        assert_eq!(reopened, Some(plain.to_vec()));
    }
});
