//! `encrypt --merge-into`: unchanged values keep their ciphertext, `init`
//! then merge, and a manifest for another resource is refused.

use serde_json::json;

use crate::support::*;

#[test]
fn merge_into_keeps_unchanged_ciphertext() {
    let t = T::new();
    let key = t.keygen("k.key");
    let f = t.write("es.yaml", encrypt_fixture(&key, &[]));
    let before = yaml(&t.read_str("es.yaml"));

    let out = ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--local-key",
        &key,
        "--from-literal",
        "password=rotated-pw",
        "--from-literal",
        "host=db.internal",
    ])
    .run());
    assert!(
        out.stdout.is_empty(),
        "--merge-into writes the file, not stdout"
    );
    let after = yaml(&t.read_str("es.yaml"));
    assert_eq!(
        ct(&after, "username"),
        ct(&before, "username"),
        "untouched value must keep its ciphertext"
    );
    assert_ne!(ct(&after, "password"), ct(&before, "password"));
    assert!(after["spec"]["encryptedData"]["host"].is_string());
    assert_eq!(
        dek(&after),
        dek(&before),
        "--merge-into reuses the data key"
    );
    assert_eq!(after["metadata"], before["metadata"]);
    assert_eq!(after["spec"]["scope"], before["spec"]["scope"]);
    assert_eq!(
        decrypt_values(&f, &[&key]),
        strs(&[
            ("username", USERNAME),
            ("password", "rotated-pw"),
            ("host", "db.internal")
        ])
    );

    // Re-giving a value with the same plaintext changes nothing.
    let snapshot = t.read("es.yaml");
    ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--local-key",
        &key,
        "--from-literal",
        "host=db.internal",
    ])
    .run());
    assert_eq!(t.read("es.yaml"), snapshot);

    // --generate into an existing file.
    ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--local-key",
        &key,
        "--generate",
        "token=24",
    ])
    .run());
    let v = decrypt_values(&f, &[&key]);
    assert_eq!(v["token"].len(), 24);
    assert_eq!(v["host"], b"db.internal");

    // Flags that conflict with the file are refused, each by name, file
    // untouched.
    let snapshot = t.read("es.yaml");
    let other = t.keygen("other.key");
    let other_key = format!("file:{other}");
    let own_key = format!("file:{key}");
    for (extra, named) in [
        (
            vec!["--key", &other_key],
            format!("--key {other_key} conflicts with"),
        ),
        (
            vec!["--key", &own_key, "--key", &other_key],
            format!("--key {other_key} conflicts with"),
        ),
        (
            vec!["--scope", "cluster"],
            "--scope cluster conflicts with".to_string(),
        ),
        (
            vec!["--name", "other"],
            "--name other conflicts with".to_string(),
        ),
        (
            vec!["--namespace", "other"],
            "--namespace other conflicts with".to_string(),
        ),
        (
            vec!["--context", "a=b"],
            "--context a=… conflicts with".to_string(),
        ),
    ] {
        let out = kms([
            "encrypt",
            "--merge-into",
            &f,
            "--local-key",
            &key,
            "--from-literal",
            "a=b",
        ])
        .args(&extra)
        .run();
        fails(&out, &named);
        assert!(
            !out.stderr.contains("a=b"),
            "never quotes a context value: {}",
            out.stderr
        );
        assert_eq!(t.read("es.yaml"), snapshot);
    }
    // The first command line plus --merge-into (what kubeseal users type):
    // every flag agrees with the file, so it merges; --key file: unwraps.
    ok(kms([
        "encrypt",
        "--key",
        &own_key,
        "--name",
        "db",
        "--namespace",
        "payments",
        "--scope",
        "strict",
        "--from-literal",
        "extra=x",
        "--merge-into",
        &f,
    ])
    .run());
    assert_eq!(decrypt_values(&f, &[&key])["extra"], b"x");
    let snapshot = t.read("es.yaml");
    // A bad new value name: nothing written.
    fails(
        &kms([
            "encrypt",
            "--merge-into",
            &f,
            "--local-key",
            &key,
            "--from-literal",
            "a/b=x",
        ])
        .run(),
        "invalid key name",
    );
    assert_eq!(t.read("es.yaml"), snapshot);
    // A file with two documents is refused.
    let two = t.write(
        "two.yaml",
        format!("{}{}", t.read_str("es.yaml"), t.read_str("es.yaml")),
    );
    let two_before = t.read("two.yaml");
    fails(
        &kms([
            "encrypt",
            "--merge-into",
            &two,
            "--local-key",
            &key,
            "--from-literal",
            "a=b",
        ])
        .run(),
        "holds 2 documents",
    );
    assert_eq!(t.read("two.yaml"), two_before);
}

#[test]
fn init_then_merge_into_then_decrypt() {
    let t = T::new();
    let key = t.keygen("k.key");
    let out = ok(kms([
        "init",
        "db",
        "-n",
        "payments",
        "--key",
        &format!("file:{key}"),
    ])
    .run());
    let es = yaml(&out.stdout());
    assert_eq!(es["kind"], "EncryptedSecret");
    assert_eq!(
        es["metadata"],
        json!({"name": "db", "namespace": "payments"})
    );
    assert_eq!(es["spec"]["scope"], "strict");
    assert_eq!(es["spec"]["dataKeys"][0]["provider"], "local");
    assert_eq!(
        es["spec"]["encryptedData"]
            .as_object()
            .map_or(0, |m| m.len()),
        0,
        "init holds no values"
    );
    let f = t.write("db.yaml", out.stdout());
    ok(kms(["verify", "--decrypt", &f, "--local-key", &key]).run());

    ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--local-key",
        &key,
        "--from-literal",
        format!("password={PASSWORD}").as_str(),
    ])
    .run());
    let after = yaml(&t.read_str("db.yaml"));
    assert_eq!(dek(&after), dek(&es), "merge keeps the data key from init");
    assert_eq!(decrypt_values(&f, &[&key]), strs(&[("password", PASSWORD)]));
}

#[test]
fn merge_into_refuses_a_manifest_for_another_resource() {
    let t = T::new();
    let key = t.keygen("k");
    let file = t.write("es.yaml", encrypt_fixture(&key, &[]));
    let before = t.read("es.yaml");
    let other = t.write(
        "other.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: other, namespace: elsewhere}\nstringData: {a: b}\n",
    );
    let out = kms([
        "encrypt",
        "-f",
        &other,
        "--merge-into",
        &file,
        "--local-key",
        &key,
    ])
    .run();
    fails(&out, "another resource");
    assert_eq!(t.read("es.yaml"), before, "file untouched");
}
