//! Output: multi-document streams, JSON output, `verify` reporting,
//! determinism of the output shape, and large and empty values.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::support::*;

const TWO_SECRETS: &str = "\
apiVersion: v1
kind: Secret
metadata:
  name: first
  namespace: apps
data:
  x: b2xk
  z: ZnJvbS1kYXRh
stringData:
  x: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: second
  namespace: apps
type: kubernetes.io/basic-auth
data:
  username: d29ybGQ=
  password: AAEC/w==
";

#[test]
fn multi_document_stdin_round_trip() {
    let t = T::new();
    let key = t.keygen("k.key");
    let out = ok(kms(["encrypt", "-f", "-", "--key", &format!("file:{key}")])
        .stdin(TWO_SECRETS)
        .run());
    let docs = yaml_docs(&out.stdout());
    assert_eq!(docs.len(), 2);
    for (d, name) in docs.iter().zip(["first", "second"]) {
        assert_eq!(d["kind"], "EncryptedSecret");
        assert_eq!(d["apiVersion"], "kmsecrets.dev/v1alpha1");
        assert_eq!(d["metadata"]["name"], name);
        assert_eq!(d["metadata"]["namespace"], "apps");
    }
    // One DEK per resource.
    assert_ne!(dek(&docs[0]), dek(&docs[1]));
    assert_eq!(
        docs[1]["spec"]["template"]["type"],
        "kubernetes.io/basic-auth"
    );

    let f = t.write("both.yaml", out.stdout());
    let out = ok(kms(["decrypt", "-f", &f, "--local-key", &key]).run());
    let secrets = yaml_docs(&out.stdout());
    assert_eq!(secrets.len(), 2);
    // stringData wins over data (as on the API server) and lands in data, base64.
    assert_eq!(
        secret_data(&secrets[0]),
        strs(&[("x", "hello"), ("z", "from-data")])
    );
    assert!(secrets[0].get("stringData").is_none());
    assert_eq!(secrets[0]["data"]["x"], "aGVsbG8=");
    let second = secret_data(&secrets[1]);
    assert_eq!(second["username"], b"world");
    assert_eq!(
        second["password"],
        vec![0u8, 1, 2, 255],
        "binary values survive"
    );
    assert_eq!(secrets[1]["type"], "kubernetes.io/basic-auth");

    // The same via stdin, and JSON out: a v1 List for several documents.
    let out = ok(kms(["decrypt", "-o", "json", "--local-key", &key])
        .stdin(t.read("both.yaml"))
        .run());
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(secret_data(&list["items"][1]), second);
}

#[test]
fn json_output() {
    let t = T::new();
    let key = t.keygen("k.key");
    let kf = format!("file:{key}");
    // Single document: one object, not a List.
    let out = ok(kms([
        "encrypt",
        "--from-literal",
        "a=1",
        "--name",
        "x",
        "-n",
        "y",
        "--key",
        &kf,
        "-o",
        "json",
    ])
    .run());
    let es: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(es["kind"], "EncryptedSecret");
    let f = t.write("es.json", &out.stdout);
    let out = ok(kms(["decrypt", "-f", &f, "-o", "json", "--local-key", &key]).run());
    let secret: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret_data(&secret), strs(&[("a", "1")]));

    // Several: a List, which decrypt reads back (Lists are flattened).
    let out = ok(kms(["encrypt", "-f", "-", "--key", &kf, "-o", "json"])
        .stdin(TWO_SECRETS)
        .run());
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(list["items"][0]["kind"], "EncryptedSecret");
    let f = t.write("list.json", &out.stdout);
    let out = ok(kms(["decrypt", "-f", &f, "--local-key", &key]).run());
    assert_eq!(yaml_docs(&out.stdout()).len(), 2);
    ok(kms(["verify", "--decrypt", &f, "--local-key", &key]).run());

    // init -o json too.
    let out = ok(kms(["init", "x", "-n", "y", "--key", &kf, "-o", "json"]).run());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["kind"], "EncryptedSecret");
}

#[test]
fn multi_document_refuses_single_document_flags() {
    let t = T::new();
    let key = t.keygen("k.key");
    let kf = format!("file:{key}");
    for extra in [
        ["--name", "x"],
        ["--namespace", "x"],
        ["--from-literal", "a=b"],
        ["--generate", "a=8"],
    ] {
        let out = kms(["encrypt", "-f", "-", "--key", &kf])
            .args(extra)
            .stdin(TWO_SECRETS)
            .run();
        fails(&out, "need a single input document");
    }
}

#[test]
fn verify_reports_every_document() {
    let t = T::new();
    let key = t.keygen("k.key");
    let out = ok(kms(["encrypt", "-f", "-", "--key", &format!("file:{key}")])
        .stdin(TWO_SECRETS)
        .run());
    let f = t.write("both.yaml", out.stdout());
    let g = t.write("one.yaml", encrypt_fixture(&key, &[]));
    let out = ok(kms(["verify", &f, &g]).run());
    assert_eq!(
        out.stdout()
            .lines()
            .filter(|l| l.starts_with("ok: "))
            .count(),
        3,
        "{}",
        out.stdout()
    );
    assert!(out.stdout().contains("structure only"));
    let out = ok(kms(["verify", "--decrypt", &f, &g, "--local-key", &key]).run());
    assert_eq!(
        out.stdout()
            .lines()
            .filter(|l| l.contains("decrypt"))
            .count(),
        3,
        "{}",
        out.stdout()
    );
    assert!(!out.stdout().contains(PASSWORD) && !out.stderr.contains(PASSWORD));
    // Stdin.
    ok(kms(["verify", "-", "--decrypt", "--local-key", &key])
        .stdin(t.read("both.yaml"))
        .run());
}

#[test]
fn output_is_deterministic_in_shape_fresh_in_ciphertext() {
    let t = T::new();
    let key = t.keygen("k.key");
    let a = ok(kms([
        "encrypt",
        "-f",
        "-",
        "--key",
        &format!("file:{key}"),
        "--context",
        "b=2",
        "--context",
        "a=1",
    ])
    .stdin(TWO_SECRETS)
    .run())
    .stdout();
    let b = ok(kms([
        "encrypt",
        "-f",
        "-",
        "--key",
        &format!("file:{key}"),
        "--context",
        "a=1",
        "--context",
        "b=2",
    ])
    .stdin(TWO_SECRETS)
    .run())
    .stdout();
    assert_eq!(
        shape(&a),
        shape(&b),
        "same input must give the same YAML apart from ciphertext"
    );
    assert!(shape(&a).contains("<ciphertext>"));
    let (da, db) = (yaml_docs(&a), yaml_docs(&b));
    for (x, y) in da.iter().zip(&db) {
        assert_ne!(
            dek(x)[0]["ciphertext"],
            dek(y)[0]["ciphertext"],
            "fresh DEK every encrypt"
        );
        for (k, v) in x["spec"]["encryptedData"].as_object().unwrap() {
            assert_ne!(v, &y["spec"]["encryptedData"][k], "fresh nonce/DEK for {k}");
        }
    }
    // Fixed top-level field order.
    let keys: Vec<&str> = a
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('-'))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(&keys[..4], ["apiVersion", "kind", "metadata", "spec"]);
    // JSON shape too.
    let j = || {
        let out = ok(kms([
            "encrypt",
            "--from-literal",
            "p=q",
            "--name",
            "x",
            "-n",
            "y",
            "--key",
            &format!("file:{key}"),
            "-o",
            "json",
        ])
        .run());
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["spec"]["dataKeys"][0]["ciphertext"] = json!("");
        v["spec"]["encryptedData"]["p"] = json!("");
        serde_json::to_string(&v).unwrap()
    };
    assert_eq!(j(), j());
}

#[test]
fn large_and_empty_values_round_trip() {
    let t = T::new();
    let key = t.keygen("k.key");
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let bigf = t.write("big.bin", &big);
    let emptyf = t.write("empty", "");
    let out = ok(kms([
        "encrypt",
        "--from-file",
        &format!("big={bigf}"),
        "--from-file",
        &emptyf,
        "--from-literal",
        "blank=",
        "--name",
        "x",
        "-n",
        "y",
        "--key",
        &format!("file:{key}"),
    ])
    .run());
    let f = t.write("es.yaml", out.stdout());
    let v = decrypt_values(&f, &[&key]);
    assert_eq!(v["big"], big);
    assert_eq!(v["empty"], b"");
    assert_eq!(v["blank"], b"");
    // An empty value is still nonce + tag on the wire.
    let es = yaml(&t.read_str("es.yaml"));
    assert_eq!(B64.decode(ct(&es, "blank")).unwrap().len(), 28);
}

/// Every command that writes to stdout, piped into a reader that closes
/// after a few bytes (`| head -c 16`): exit 0, no panic, no error line.
/// (Before: `failed printing to stdout: Broken pipe`, a backtrace, exit 101.)
#[test]
fn a_reader_that_stops_early_ends_every_output_command_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let t = T::new();
    let key = t.keygen("k.key");
    let big_value = "x".repeat(100_000);
    let lit = format!("big={big_value}");
    let encrypt = |extra: &[&str]| {
        kms([
            "encrypt",
            "--key",
            &format!("file:{key}"),
            "--name",
            "db",
            "-n",
            "app",
            "--from-literal",
            &lit,
        ])
        .args(extra.iter().copied())
    };
    let f = t.write("big.yaml", ok(encrypt(&[]).run()).stdout);
    let stream = t.write(
        "stream.yaml",
        format!("{}---\n{}", t.read_str("big.yaml"), t.read_str("big.yaml")),
    );
    let commands: Vec<(&str, Cmd)> = vec![
        ("encrypt", encrypt(&[])),
        ("encrypt -o json", encrypt(&["-o", "json"])),
        ("decrypt", kms(["decrypt", "-f", &f, "--local-key", &key])),
        (
            "decrypt -o json",
            kms(["decrypt", "-f", &f, "--local-key", &key, "-o", "json"]),
        ),
        (
            "verify --decrypt (two documents)",
            kms(["verify", &stream, "--decrypt", "--local-key", &key]),
        ),
        ("crd", kms(["crd"])),
        ("completion bash", kms(["completion", "bash"])),
    ];
    for (what, mut c) in commands {
        c.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = c.cmd.spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 16];
        let _ = stdout.read(&mut first).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
        for bad in ["panicked", "backtrace", "Broken pipe", "error"] {
            assert!(
                !stderr.contains(bad),
                "{what}: stderr shows {bad:?}: {stderr}"
            );
        }
    }
}
