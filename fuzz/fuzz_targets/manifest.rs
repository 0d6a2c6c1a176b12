//! A manifest stream as `encrypt -f`, `decrypt -f`, `verify` and the
//! controller's reader see it: parse, describe, read as an EncryptedSecret,
//! validate (size limits, binding, wrapped keys, value framing), hash, open.
#![no_main]

use kmsecrets::api::EncryptedSecret;
use kmsecrets::envelope::Dek;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(docs) = kmsecrets::manifest::parse_stream(bytes, "fuzz") else {
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
});
