//! Binding attacks: a ciphertext moved to another resource, name, namespace,
//! scope or context, or tampered with, must fail with a reason; the DEK cache
//! must not launder a tampered copy.

use serde_json::json;

use crate::support::*;

#[test]
fn binding_attacks_fail_with_a_reason() {
    let t = T::new();
    let key = t.keygen("k.key");
    let good = encrypt_fixture(&key, &["--context", "team=payments"]);
    let orig = yaml(&good);
    assert_eq!(orig["spec"]["scope"], "strict");
    assert_eq!(orig["spec"]["encryptionContext"]["team"], "payments");
    // The untampered file decrypts: every failure below is the tampering.
    let f = t.write("good.yaml", &good);
    assert_eq!(
        decrypt_values(&f, &[&key]),
        strs(&[("username", USERNAME), ("password", PASSWORD)])
    );

    let cases: &[(&str, Tamper, &str)] = &[
        (
            "moved-namespace",
            |v| v["metadata"]["namespace"] = json!("other"),
            DEK_REJECTED,
        ),
        (
            "renamed",
            |v| v["metadata"]["name"] = json!("db-copy"),
            DEK_REJECTED,
        ),
        (
            "scope-strict-to-namespace",
            |v| v["spec"]["scope"] = json!("namespace"),
            DEK_REJECTED,
        ),
        (
            "scope-strict-to-cluster",
            |v| v["spec"]["scope"] = json!("cluster"),
            DEK_REJECTED,
        ),
        (
            "context-value-changed",
            |v| v["spec"]["encryptionContext"]["team"] = json!("billing"),
            DEK_REJECTED,
        ),
        (
            "context-pair-added",
            |v| v["spec"]["encryptionContext"]["env"] = json!("prod"),
            DEK_REJECTED,
        ),
        (
            "context-pair-removed",
            |v| {
                v["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("encryptionContext");
            },
            DEK_REJECTED,
        ),
        (
            "wrapped-dek-bit-flipped",
            |v| {
                let c = v["spec"]["dataKeys"][0]["ciphertext"].as_str().unwrap();
                v["spec"]["dataKeys"][0]["ciphertext"] = json!(flip_bit(c, |n| n / 2, 0x01));
            },
            DEK_REJECTED,
        ),
        (
            "values-swapped",
            |v| {
                let d = &mut v["spec"]["encryptedData"];
                let (a, b) = (d["username"].clone(), d["password"].clone());
                d["username"] = b;
                d["password"] = a;
            },
            VALUE_REJECTED,
        ),
        (
            "value-renamed-key",
            |v| {
                let d = v["spec"]["encryptedData"].as_object_mut().unwrap();
                let c = d.remove("password").unwrap();
                d.insert("passwd".into(), c);
            },
            VALUE_REJECTED,
        ),
        (
            "value-nonce-bit-flipped",
            |v| {
                let c = ct(v, "password").to_string();
                v["spec"]["encryptedData"]["password"] = json!(flip_bit(&c, |_| 0, 0x01));
            },
            VALUE_REJECTED,
        ),
        (
            "value-ciphertext-bit-flipped",
            |v| {
                let c = ct(v, "password").to_string();
                v["spec"]["encryptedData"]["password"] = json!(flip_bit(&c, |_| 12, 0x80));
            },
            VALUE_REJECTED,
        ),
        (
            "value-tag-bit-flipped",
            |v| {
                let c = ct(v, "password").to_string();
                v["spec"]["encryptedData"]["password"] = json!(flip_bit(&c, |n| n - 1, 0x01));
            },
            VALUE_REJECTED,
        ),
    ];
    for (name, tamper, fragment) in cases {
        eprintln!("--- {name}");
        let mut v = orig.clone();
        tamper(&mut v);
        assert_ne!(v, orig, "{name}: tamper did nothing");
        let file = t.write(&format!("{name}.yaml"), to_yaml(&v));
        // Structure is still fine: only the binding is wrong.
        ok(kms(["verify", &file]).run());
        // rotate --rewrap never opens values, so value tampering is out of its reach.
        all_commands_reject(&file, &[&key], fragment, *fragment == DEK_REJECTED);
    }
}

#[test]
fn value_transplanted_from_another_resource_fails() {
    // Same key, same key name, another resource: another DEK and another AAD.
    let t = T::new();
    let key = t.keygen("k.key");
    let a = yaml(&encrypt_fixture(&key, &[]));
    let other = ok(kms([
        "encrypt",
        "--from-literal",
        "password=other",
        "--name",
        "db",
        "-n",
        "payments",
        "--key",
        &format!("file:{key}"),
    ])
    .run());
    let mut b = yaml(&other.stdout());
    b["spec"]["encryptedData"]["password"] = json!(ct(&a, "password"));
    let f = t.write("b.yaml", to_yaml(&b));
    all_commands_reject(&f, &[&key], VALUE_REJECTED, false);
}

#[test]
fn namespace_scope_survives_rename_but_not_namespace_move() {
    let t = T::new();
    let key = t.keygen("k.key");
    let orig = yaml(&encrypt_fixture(&key, &["--scope", "namespace"]));
    assert_eq!(orig["spec"]["scope"], "namespace");

    let mut renamed = orig.clone();
    renamed["metadata"]["name"] = json!("db-renamed");
    let f = t.write("renamed.yaml", to_yaml(&renamed));
    let out = ok(kms(["decrypt", "-f", &f, "--local-key", &key]).run());
    let secret = yaml(&out.stdout());
    assert_eq!(secret["metadata"]["name"], "db-renamed");
    assert_eq!(secret["metadata"]["namespace"], "payments");
    assert_eq!(
        secret_data(&secret),
        strs(&[("username", USERNAME), ("password", PASSWORD)])
    );
    ok(kms(["verify", "--decrypt", &f, "--local-key", &key]).run());

    let mut moved = orig.clone();
    moved["metadata"]["namespace"] = json!("elsewhere");
    let f = t.write("moved.yaml", to_yaml(&moved));
    all_commands_reject(&f, &[&key], DEK_REJECTED, true);

    // Widening namespace → cluster is refused too.
    let mut widened = orig;
    widened["spec"]["scope"] = json!("cluster");
    let f = t.write("widened.yaml", to_yaml(&widened));
    all_commands_reject(&f, &[&key], DEK_REJECTED, true);
}

#[test]
fn cluster_scope_survives_rename_and_namespace_move() {
    let t = T::new();
    let key = t.keygen("k.key");
    let orig = yaml(&encrypt_fixture(&key, &["--scope", "cluster"]));
    assert_eq!(orig["spec"]["scope"], "cluster");
    let mut moved = orig.clone();
    moved["metadata"]["name"] = json!("copy");
    moved["metadata"]["namespace"] = json!("elsewhere");
    let f = t.write("moved.yaml", to_yaml(&moved));
    let out = ok(kms(["decrypt", "-f", &f, "--local-key", &key]).run());
    let secret = yaml(&out.stdout());
    assert_eq!(secret["metadata"]["name"], "copy");
    assert_eq!(secret["metadata"]["namespace"], "elsewhere");
    assert_eq!(
        secret_data(&secret),
        strs(&[("username", USERNAME), ("password", PASSWORD)])
    );
    ok(kms(["verify", "--decrypt", &f, "--local-key", &key]).run());

    // Narrowing cluster → strict changes the binding as well.
    let mut narrowed = orig;
    narrowed["spec"]["scope"] = json!("strict");
    let f = t.write("narrowed.yaml", to_yaml(&narrowed));
    all_commands_reject(&f, &[&key], DEK_REJECTED, true);
}

#[test]
fn cluster_scope_needs_no_namespace() {
    let t = T::new();
    let key = t.keygen("k.key");
    let out = ok(kms([
        "encrypt",
        "--from-literal",
        "a=b",
        "--name",
        "x",
        "--scope",
        "cluster",
        "--key",
        &format!("file:{key}"),
    ])
    .run());
    let f = t.write("es.yaml", out.stdout());
    assert_eq!(decrypt_values(&f, &[&key]), strs(&[("a", "b")]));
}

/// The DEK cache and single-flight of `decrypt` must not launder a tampered
/// copy: a good document followed (or preceded) by a copy whose binding was
/// changed still fails on the copy, whatever the order.
#[test]
fn dek_cache_does_not_bypass_the_binding() {
    let t = T::new();
    let key = t.keygen("k.key");
    let good = encrypt_fixture(&key, &["--context", "team=payments"]);
    let orig = yaml(&good);
    let tampers: [(&str, Tamper); 4] = [
        ("context", |v| {
            v["spec"]["encryptionContext"]["team"] = json!("billing")
        }),
        ("scope", |v| v["spec"]["scope"] = json!("namespace")),
        ("namespace", |v| v["metadata"]["namespace"] = json!("other")),
        ("name", |v| v["metadata"]["name"] = json!("other")),
    ];
    for (what, tamper) in tampers {
        let mut bad = orig.clone();
        tamper(&mut bad);
        let bad = to_yaml(&bad);
        for (stream, doc) in [
            (format!("{good}---\n{bad}"), 2),
            (format!("---\n{bad}{good}"), 1),
        ] {
            let out = kms(["decrypt", "--local-key", &key]).stdin(stream).run();
            eprintln!("{what}: {}", out.stderr.trim_end());
            fails(&out, &format!("document {doc} "));
            fails(&out, DEK_REJECTED);
        }
    }
}
