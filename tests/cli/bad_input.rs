//! Bad inputs: unreadable or malformed files and manifests, garbage on
//! stdin, passthrough of other kinds, key problems, bad flags and duplicate
//! keys.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::support::*;

/// Bytes that are not UTF-8 and contain NUL (fixed, so the test is stable).
fn garbage() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let mut v: Vec<u8> = (0..=255u8).collect();
    v.extend((0..512).map(|_| {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (x >> 24) as u8
    }));
    v
}

#[test]
fn bad_files_are_rejected_by_every_command() {
    let t = T::new();
    let key = t.keygen("k.key");
    let good = yaml(&encrypt_fixture(&key, &[]));
    let edit = |f: fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        to_yaml(&v)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> =
        vec![
        (
            "not-yaml",
            b"apiVersion: [unclosed\n  kind: {\n".to_vec(),
            "is not valid YAML",
        ),
        ("empty", Vec::new(), "contains no documents"),
        (
            "only-separators",
            b"---\n---\n".to_vec(),
            "contains no documents",
        ),
        ("scalar", b"just a string\n".to_vec(), "is not a mapping"),
        ("garbage", garbage(), "is not text"),
        (
            "nul-in-text",
            b"apiVersion: v1\0\nkind: Secret\n".to_vec(),
            "is not text",
        ),
        (
            "configmap",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: ns1}\ndata: {a: b}\n"
                .to_vec(),
            "is not an EncryptedSecret",
        ),
        (
            "missing-datakeys",
            edit(|v| {
                v["spec"].as_object_mut().unwrap().remove("dataKeys");
            })
            .into_bytes(),
            "dataKeys",
        ),
        (
            "empty-datakeys",
            edit(|v| v["spec"]["dataKeys"] = json!([])).into_bytes(),
            "dataKeys is empty",
        ),
        (
            "bad-base64-value",
            edit(|v| v["spec"]["encryptedData"]["password"] = json!("!!not*base64!!")).into_bytes(),
            "\"password\" is not valid base64",
        ),
        (
            "bad-base64-wrapped-key",
            edit(|v| v["spec"]["dataKeys"][0]["ciphertext"] = json!("%%%")).into_bytes(),
            "dataKeys[0].ciphertext is not valid base64",
        ),
        (
            "truncated-value",
            edit(|v| v["spec"]["encryptedData"]["password"] = json!(B64.encode([7u8; 27])))
                .into_bytes(),
            "truncated",
        ),
        (
            "unknown-provider",
            edit(|v| v["spec"]["dataKeys"][0]["provider"] = json!("gcp-kms")).into_bytes(),
            "gcp-kms",
        ),
        (
            "invalid-scope",
            edit(|v| v["spec"]["scope"] = json!("global")).into_bytes(),
            "global",
        ),
        (
            "invalid-key-name",
            edit(|v| {
                let c = v["spec"]["encryptedData"]["password"].clone();
                v["spec"]["encryptedData"]["a/b"] = c;
            })
            .into_bytes(),
            "invalid key name \"a/b\"",
        ),
        (
            "missing-name",
            edit(|v| {
                v["metadata"].as_object_mut().unwrap().remove("name");
            })
            .into_bytes(),
            "metadata.name is required",
        ),
        (
            "missing-namespace",
            edit(|v| {
                v["metadata"].as_object_mut().unwrap().remove("namespace");
            })
            .into_bytes(),
            "metadata.namespace is required",
        ),
        (
            "reserved-context-key",
            edit(|v| v["spec"]["encryptionContext"] = json!({"kmsecrets.dev/namespace": "x"}))
                .into_bytes(),
            "reserved prefix",
        ),
        (
            "reserved-context-key-mixed-case",
            edit(|v| v["spec"]["encryptionContext"] = json!({"KmSecrets.Dev/namespace": "x"}))
                .into_bytes(),
            "reserved prefix",
        ),
        (
            // U+017F LATIN SMALL LETTER LONG S folds to "s"
            "reserved-context-key-long-s",
            edit(|v| v["spec"]["encryptionContext"] = json!({"km\u{17f}ecrets.dev/namespace": "x"}))
                .into_bytes(),
            "reserved prefix",
        ),
        (
            "empty-keyid",
            edit(|v| v["spec"]["dataKeys"][0]["keyId"] = json!("")).into_bytes(),
            "keyId is empty",
        ),
    ];
    for (name, bytes, fragment) in cases {
        eprintln!("--- {name}");
        let file = t.write(&format!("{name}.yaml"), &bytes);
        all_commands_reject(&file, &[&key], fragment, false);
        // Structure-only verify catches all of these too (no key needed).
        let out = kms(["verify", &file]).run();
        fails(&out, fragment);
    }
}

#[test]
fn encrypt_rejects_bad_manifests() {
    let t = T::new();
    let key = t.keygen("k.key");
    let kf = format!("file:{key}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-yaml", b"kind: [\n".to_vec(), "is not valid YAML"),
        ("empty", Vec::new(), "contains no documents"),
        ("garbage", garbage(), "is not text"),
        (
            "configmap",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: ns1}\n".to_vec(),
            "is not a Secret",
        ),
        (
            "bad-base64-data",
            b"apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns1}\ndata: {a: '@@@'}\n".to_vec(),
            "data.a is not valid base64",
        ),
        (
            "bad-key-name",
            b"apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns1}\nstringData: {a/b: x}\n".to_vec(),
            "invalid key name \"a/b\"",
        ),
        (
            "non-string-value",
            b"apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns1}\nstringData: {a: [1, 2]}\n".to_vec(),
            "stringData.a must be a string",
        ),
        ("no-name", b"apiVersion: v1\nkind: Secret\nmetadata: {namespace: ns1}\nstringData: {a: x}\n".to_vec(), "no name"),
        ("no-namespace", b"apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: x}\n".to_vec(), "no namespace"),
    ];
    for (name, bytes, fragment) in cases {
        eprintln!("--- {name}");
        let file = t.write(&format!("{name}.yaml"), &bytes);
        fails(&kms(["encrypt", "-f", &file, "--key", &kf]).run(), fragment);
        fails(
            &kms(["encrypt", "-f", "-", "--key", &kf]).stdin(bytes).run(),
            fragment,
        );
    }
    fails(
        &kms(["encrypt", "-f", &t.s("missing.yaml"), "--key", &kf]).run(),
        "cannot read",
    );
}

#[test]
fn decrypt_rejects_garbage_on_stdin() {
    fails(
        &kms(["decrypt"]).stdin(garbage()).run(),
        "stdin is not text",
    );
    fails(
        &kms(["decrypt"]).stdin(Vec::new()).run(),
        "stdin contains no documents",
    );
    fails(
        &kms(["decrypt"]).stdin(&b"{{{"[..]).run(),
        "stdin is not valid YAML",
    );
    fails(
        &kms(["decrypt", "-f", "/nonexistent/dir/es.yaml"]).run(),
        "cannot read /nonexistent/dir/es.yaml",
    );
}

#[test]
fn passthrough_copies_other_kinds_unchanged() {
    let t = T::new();
    let key = t.keygen("k.key");
    let es = encrypt_fixture(&key, &[]);
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: payments\n  labels: {app: web}\ndata:\n  mode: \"0644\"\n  enabled: \"yes\"\n  empty: \"\"\n  text: |\n    line one\n    line two\n";
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: payments}\nspec: {replicas: 3}\n";
    let stream = format!("{cm}---\n{es}---\n{deploy}");
    let f = t.write("stream.yaml", &stream);

    fails(
        &kms(["decrypt", "-f", &f, "--local-key", &key]).run(),
        "document 1 (ConfigMap payments/settings) is not an EncryptedSecret",
    );

    let out = ok(kms(["decrypt", "-f", &f, "--passthrough", "--local-key", &key]).run());
    let docs = yaml_docs(&out.stdout());
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0], yaml(cm), "ConfigMap must come through unchanged");
    assert_eq!(
        secret_data(&docs[1]),
        strs(&[("username", USERNAME), ("password", PASSWORD)])
    );
    assert_eq!(docs[2], yaml(deploy));

    // Only other kinds: nothing to decrypt is fine with --passthrough, an error without.
    let only = t.write("only.yaml", cm);
    let out = ok(kms(["decrypt", "-f", &only, "--passthrough"]).run());
    assert_eq!(yaml_docs(&out.stdout()), vec![yaml(cm)]);
    fails(
        &kms(["decrypt", "-f", &only]).run(),
        "not an EncryptedSecret",
    );
}

#[test]
fn key_problems() {
    let t = T::new();
    let key = t.keygen("k.key");
    let other = t.keygen("other.key");
    let f = t.write("es.yaml", encrypt_fixture(&key, &[]));
    let id = yaml(&t.read_str("es.yaml"))["spec"]["dataKeys"][0]["keyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("local:") && id.len() == 22, "{id}");

    // A different key offered: says which key is needed and which were offered.
    all_commands_reject(
        &f,
        &[&other],
        &format!("no local key available for {id}"),
        false,
    );
    let out = kms(["decrypt", "-f", &f, "--local-key", &other]).run();
    fails(&out, "--local-key");
    // No key offered at all.
    all_commands_reject(&f, &[], &format!("no local key available for {id}"), false);
    // Offering both works (matched by key id, order irrelevant).
    let out = ok(kms([
        "decrypt",
        "-f",
        &f,
        "--local-key",
        &other,
        "--local-key",
        &key,
    ])
    .run());
    assert_eq!(
        secret_data(&yaml(&out.stdout())),
        strs(&[("username", USERNAME), ("password", PASSWORD)])
    );
    // Also via the environment (comma-separated).
    let out = ok(kms(["decrypt", "-f", &f])
        .env("KMSECRETS_LOCAL_KEYS", format!("{other},{key}"))
        .run());
    assert_eq!(secret_data(&yaml(&out.stdout())).len(), 2);

    // A file that is not a key.
    let notkey = t.write("not.key", "bm90IGEga2V5\n");
    fails(
        &kms(["decrypt", "-f", &f, "--local-key", &notkey]).run(),
        "not a 32-byte key",
    );
    fails(
        &kms(["decrypt", "-f", &f, "--local-key", &t.s("absent.key")]).run(),
        "cannot read local key",
    );

    // --key forms.
    let enc = |k: &str| {
        kms([
            "encrypt",
            "--from-literal",
            "a=b",
            "--name",
            "x",
            "-n",
            "y",
            "--key",
            k,
        ])
        .run()
    };
    fails(&enc("local:abc"), "--key file:PATH");
    fails(&enc(&id), "--key file:PATH");
    fails(&enc("file:"), "needs a path");
    fails(
        &enc(&format!("file:{}", t.s("absent.key"))),
        "cannot read local key",
    );
    fails(&enc(&format!("file:{notkey}")), "not a 32-byte key");
    fails(
        &kms(["encrypt", "--from-literal", "a=b", "--name", "x", "-n", "y"]).run(),
        "no --key given",
    );
}

#[test]
fn bad_flags() {
    let t = T::new();
    let key = t.keygen("k.key");
    let kf = format!("file:{key}");
    let base = |extra: &[&str]| {
        kms(["encrypt", "--name", "x", "-n", "y", "--key", &kf])
            .args(extra)
            .run()
    };

    usage_error(
        &base(&["--from-literal", "a=b", "--scope", "bogus"]),
        "invalid value 'bogus' for '--scope",
    );
    fails(
        &base(&["--from-literal", "a/b=c"]),
        "invalid key name \"a/b\"",
    );
    fails(
        &base(&["--from-literal", "noequals"]),
        "--from-literal expects KEY=VALUE",
    );
    fails(
        &base(&["--from-literal", "=v"]),
        "--from-literal expects KEY=VALUE",
    );
    fails(
        &base(&["--from-file", &format!("k={}", t.s("missing.txt"))]),
        "--from-file: cannot read",
    );
    fails(
        &base(&["--from-file", &t.s("missing.txt")]),
        "--from-file: cannot read",
    );
    fails(
        &base(&["--from-env-file", &t.s("missing.env")]),
        "--from-env-file: cannot read",
    );
    let bad_env = t.write("bad.env", "GOOD=1\nthis line has no equals\n");
    fails(
        &base(&["--from-env-file", &bad_env]),
        "line 2: expected KEY=VALUE",
    );
    fails(&base(&["--generate", "k=0"]), "N must be a byte count");
    fails(&base(&["--generate", "k=5000"]), "N must be a byte count");
    fails(&base(&["--generate", "k=abc"]), "N must be a byte count");
    fails(
        &base(&["--from-literal", "a=b", "--context", "kmsecrets.dev/x=y"]),
        "reserved",
    );
    fails(
        &base(&["--from-literal", "a=b", "--context", "KMSECRETS.DEV/x=y"]),
        "reserved",
    );
    fails(
        &base(&[
            "--from-literal",
            "a=b",
            "--context",
            "km\u{17f}ecrets.dev/namespace=y",
        ]),
        "reserved",
    );
    fails(
        &base(&["--from-literal", "a=b", "--context", "novalue"]),
        "--context expects KEY=VALUE",
    );
    fails(
        &kms(["encrypt", "--from-literal", "a=b", "-n", "y", "--key", &kf]).run(),
        "no name",
    );
    fails(
        &kms([
            "encrypt",
            "--from-literal",
            "a=b",
            "--name",
            "x",
            "--key",
            &kf,
        ])
        .run(),
        "no namespace",
    );
    fails(&kms(["encrypt", "--key", &kf]).run(), "nothing to encrypt");
    usage_error(
        &kms(["init", "x", "-n", "y", "--key", &kf, "--scope", "wide"]).run(),
        "invalid value 'wide' for '--scope",
    );
    fails(
        &kms(["init", "x", "--key", &kf]).run(),
        "--namespace is required",
    );
    fails(
        &kms([
            "init",
            "x",
            "-n",
            "y",
            "--key",
            &kf,
            "--context",
            "kmsecrets.dev/a=b",
        ])
        .run(),
        "reserved",
    );
    usage_error(&kms(["decrypt", "-o", "xml"]).run(), "invalid value 'xml'");
    usage_error(&kms(["frobnicate"]).run(), "unrecognized subcommand");
    // Kubernetes key-name rules: not "." or "..", at most 253 characters.
    for bad in [".", "..", "sp ace", "ü"] {
        fails(
            &base(&["--from-literal", &format!("{bad}=v")]),
            "invalid key name",
        );
    }
    let long = "k".repeat(254);
    fails(
        &base(&["--from-literal", &format!("{long}=v")]),
        "invalid key name",
    );
    let longest = "k".repeat(253);
    ok(base(&[
        "--from-literal",
        &format!("{longest}=v"),
        "--from-literal",
        "a-b_c.d=v",
    ]));
}

#[test]
fn duplicate_keys_are_refused() {
    let t = T::new();
    let key = t.keygen("k.key");
    let file = t.write("a", "from-file");
    let env = t.write("dup.env", "a=1\na=2\n");
    let run = |extra: &[&str]| {
        kms([
            "encrypt",
            "--name",
            "x",
            "-n",
            "y",
            "--key",
            &format!("file:{key}"),
        ])
        .args(extra)
        .run()
    };
    fails(
        &run(&["--from-literal", "a=1", "--from-literal", "a=2"]),
        "key \"a\" is given more than once",
    );
    fails(
        &run(&["--from-literal", "a=1", "--from-file", &file]),
        "more than once",
    );
    fails(
        &run(&["--from-literal", "a=1", "--from-file", &format!("a={file}")]),
        "more than once",
    );
    fails(&run(&["--from-env-file", &env]), "more than once");
    fails(
        &run(&["--from-literal", "a=1", "--generate", "a=8"]),
        "more than once",
    );
}
