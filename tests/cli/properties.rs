//! Property tests: any value round-trips and any bit flip of a stored value
//! is caught.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;
use serde_json::json;

use crate::support::*;

proptest! {
    // Each case runs the binary three times; a few dozen cases are enough
    // on top of the envelope module's own property tests.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any bytes round-trip, and flipping any single bit of the stored
    /// value makes decrypt fail (never return altered plaintext).
    #[test]
    fn any_value_round_trips_and_any_bit_flip_is_caught(
        value in proptest::collection::vec(any::<u8>(), 0..300),
        bit in any::<proptest::sample::Index>(),
    ) {
        let t = T::new();
        let key = t.keygen("k.key");
        let vf = t.write("value", &value);
        let out = ok(kms(["encrypt", "--from-file", &format!("v={vf}"), "--name", "x", "-n", "y", "--key", &format!("file:{key}")]).run());
        let f = t.write("es.yaml", out.stdout());
        prop_assert_eq!(&decrypt_values(&f, &[&key])["v"], &value);

        let mut es = yaml(&out.stdout());
        let raw = B64.decode(ct(&es, "v")).unwrap();
        let i = bit.index(raw.len() * 8);
        let mut flipped = raw.clone();
        flipped[i / 8] ^= 1 << (i % 8);
        es["spec"]["encryptedData"]["v"] = json!(B64.encode(&flipped));
        let g = t.write("bad.yaml", to_yaml(&es));
        fails(&kms(["decrypt", "-f", &g, "--local-key", &key]).run(), VALUE_REJECTED);
    }
}
