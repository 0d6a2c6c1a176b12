//! `rotate` and `rotate --rewrap`: fresh ciphertext, moved data key, several
//! wrapping keys.

use crate::support::*;

#[test]
fn rotate_changes_every_ciphertext_but_not_the_plaintext() {
    let t = T::new();
    let key = t.keygen("k.key");
    let f = t.write(
        "es.yaml",
        encrypt_fixture(&key, &["--context", "team=payments"]),
    );
    let before = yaml(&t.read_str("es.yaml"));
    let out = ok(kms(["rotate", &f, "--local-key", &key]).run());
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("rotated"), "{}", out.stderr);
    let after = yaml(&t.read_str("es.yaml"));
    for k in ["username", "password"] {
        assert_ne!(ct(&after, k), ct(&before, k), "rotate must re-encrypt {k}");
    }
    assert_ne!(
        dek(&after)[0]["ciphertext"],
        dek(&before)[0]["ciphertext"],
        "rotate must make a new data key"
    );
    assert_eq!(
        dek(&after)[0]["keyId"],
        dek(&before)[0]["keyId"],
        "rotate without --key keeps the wrapping key"
    );
    assert_eq!(after["metadata"], before["metadata"]);
    assert_eq!(
        after["spec"]["encryptionContext"],
        before["spec"]["encryptionContext"]
    );
    assert_eq!(
        decrypt_values(&f, &[&key]),
        strs(&[("username", USERNAME), ("password", PASSWORD)])
    );
}

#[test]
fn rotate_rewrap_moves_only_the_data_key() {
    let t = T::new();
    let old = t.keygen("old.key");
    let new = t.keygen("new.key");
    let f = t.write("es.yaml", encrypt_fixture(&old, &[]));
    let before = yaml(&t.read_str("es.yaml"));

    // Without the old key offered, the DEK cannot be moved: error, file untouched.
    let snapshot = t.read("es.yaml");
    fails(
        &kms(["rotate", "--rewrap", "--key", &format!("file:{new}"), &f]).run(),
        "no local key available",
    );
    assert_eq!(t.read("es.yaml"), snapshot);

    ok(kms([
        "rotate",
        "--rewrap",
        "--key",
        &format!("file:{new}"),
        &f,
        "--local-key",
        &old,
    ])
    .run());
    let after = yaml(&t.read_str("es.yaml"));
    assert_eq!(
        after["spec"]["encryptedData"], before["spec"]["encryptedData"],
        "rewrap must not touch values"
    );
    assert_ne!(dek(&after), dek(&before));
    assert_eq!(dek(&after).as_array().unwrap().len(), 1);
    assert_ne!(dek(&after)[0]["keyId"], dek(&before)[0]["keyId"]);

    // Only the new key opens it now.
    assert_eq!(
        decrypt_values(&f, &[&new]),
        strs(&[("username", USERNAME), ("password", PASSWORD)])
    );
    fails(
        &kms(["decrypt", "-f", &f, "--local-key", &old]).run(),
        "no local key available",
    );
    ok(kms(["verify", "--decrypt", &f, "--local-key", &new]).run());
}

#[test]
fn rotate_to_two_keys_then_either_opens() {
    let t = T::new();
    let a = t.keygen("a.key");
    let b = t.keygen("b.key");
    let f = t.write("es.yaml", encrypt_fixture(&a, &[]));
    ok(kms([
        "rotate",
        &f,
        "--local-key",
        &a,
        "--key",
        &format!("file:{a}"),
        "--key",
        &format!("file:{b}"),
    ])
    .run());
    let v = yaml(&t.read_str("es.yaml"));
    assert_eq!(dek(&v).as_array().unwrap().len(), 2);
    let want = strs(&[("username", USERNAME), ("password", PASSWORD)]);
    assert_eq!(decrypt_values(&f, &[&a]), want);
    assert_eq!(decrypt_values(&f, &[&b]), want);
}
