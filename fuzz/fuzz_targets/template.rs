//! `spec.template.data`, which anyone who may create an EncryptedSecret
//! writes: parsing and rendering never panic, stay within the output bound,
//! never quote a decrypted value in an error, and each render stays within
//! its memory and time bound (peak allocation above what was live before,
//! measured by a counting global allocator; wall time per render).
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kmsecrets::template;
use libfuzzer_sys::fuzz_target;
use peak_alloc::PeakAlloc;
use zeroize::Zeroizing;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

const CANARY: &str = "CANARY-fuzz-3b9d";

/// A render allocates at most a small multiple of the work bound it was
/// checked against, plus copies of its values (all small here).
const MAX_PEAK: usize = 4 * template::MAX_WORK as usize + (1 << 20);
/// A release build renders the largest allowed template in milliseconds.
const MAX_TIME: Duration = Duration::from_secs(1);

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
        ("big".to_string(), Zeroizing::new(vec![b'x'; 64 * 1024])),
    ]
    .into();
    let before = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let started = Instant::now();
    let result = template::render(&templates, &values);
    let took = started.elapsed();
    let peak = ALLOC.peak_usage().saturating_sub(before);
    assert!(peak <= MAX_PEAK, "a render allocated {peak} bytes");
    assert!(took <= MAX_TIME, "a render took {took:?}");
    match result {
        Ok(out) => assert!(out.values().map(|v| v.len()).sum::<usize>() <= template::MAX_OUTPUT),
        Err(e) => {
            assert!(!e.to_string().contains(CANARY), "a value in an error: {e}");
            assert!(!format!("{e:?}").contains(CANARY), "a value in an error: {e:?}");
        }
    }
});
