//! A SealingKey file, as `encrypt --key pub:PATH` reads it (anyone may hand
//! one over): it parses or errors, and what parses renders to a file that
//! parses to the same key.
#![no_main]

use kmsecrets::kms::sealing::SealingKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(k) = SealingKey::parse(text) {
        let again = SealingKey::parse(&k.render()).expect("a rendered SealingKey parses");
        assert_eq!(again.key_id(), k.key_id());
        assert_eq!(again.bits(), k.bits());
    }
});
