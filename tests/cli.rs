//! Integration tests of the `kmsecrets` binary with the `local` provider (no
//! AWS, no network): binding attacks, bad inputs, in-place rewrites (`edit`,
//! `rotate`, `--merge-into`), multi-document streams, value sources, output
//! determinism and the small commands.
//!
//! Every error case checks the CLI contract of DESIGN.md "CLI": exit code
//! ≠ 0, stderr exactly one line starting with `error: `, no panic, nothing on
//! stdout, no plaintext in the message, and a FILE rewritten in place is
//! byte-identical after a failure (nothing half-written).
//!
//! Each command runs with an empty environment (plus PATH) so the developer's
//! `KMSECRETS_*`, `AWS_*`, `VISUAL` and `EDITOR` cannot change the outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kmsecrets");

/// Plaintexts used by the fixtures; no error message may ever contain them.
const USERNAME: &str = "admin-user";
const PASSWORD: &str = "hunter2-correct-horse";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

struct Out {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn stdout(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }
}

struct Cmd {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

/// `kmsecrets ARGS...` with a clean environment.
fn kms<I, S>(args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.env_clear();
    if let Some(p) = std::env::var_os("PATH") {
        cmd.env("PATH", p);
    }
    cmd.args(args);
    Cmd { cmd, stdin: None }
}

impl Cmd {
    fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }
    fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }
    fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }
    fn run(mut self) -> Out {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = self.cmd.spawn().expect("spawn kmsecrets");
        if let Some(input) = self.stdin.take() {
            let mut w = child.stdin.take().expect("stdin");
            // Write from a thread: a large input must not deadlock against a full stdout pipe.
            std::thread::spawn(move || {
                let _ = w.write_all(&input);
            });
        }
        let o = child.wait_with_output().expect("wait kmsecrets");
        Out {
            code: o.status.code(),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn no_panic(out: &Out) {
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !out.stderr.contains(bad),
            "stderr shows a panic: {}",
            out.stderr
        );
    }
}

#[track_caller]
fn ok(out: Out) -> Out {
    no_panic(&out);
    assert_eq!(
        out.code,
        Some(0),
        "expected success; stderr: {}",
        out.stderr
    );
    out
}

/// The error contract: exit ≠ 0, one `error: ` line naming the problem, no
/// stdout, no panic, no plaintext.
#[track_caller]
fn fails(out: &Out, fragment: &str) {
    no_panic(out);
    assert!(
        out.code.is_some(),
        "killed by a signal; stderr: {}",
        out.stderr
    );
    assert_ne!(
        out.code,
        Some(0),
        "expected failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "stdout must be empty on error, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stderr.ends_with('\n'),
        "stderr must end with a newline: {:?}",
        out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stderr must be exactly one line: {:?}",
        out.stderr
    );
    assert!(
        lines[0].starts_with("error: "),
        "stderr must start with `error: `: {:?}",
        out.stderr
    );
    assert!(
        lines[0].len() > "error: ".len() + 10,
        "error says nothing: {:?}",
        out.stderr
    );
    assert!(
        lines[0].contains(fragment),
        "error should mention {fragment:?}: {:?}",
        out.stderr
    );
    for secret in [USERNAME, PASSWORD] {
        assert!(
            !out.stderr.contains(secret),
            "error leaks plaintext: {}",
            out.stderr
        );
    }
}

/// A clap usage error (bad flag value): exit 2 and clap's own layout, whose
/// first line is `error: ...` followed by a blank line and a `--help` hint.
#[track_caller]
fn usage_error(out: &Out, fragment: &str) {
    no_panic(out);
    assert_eq!(
        out.code,
        Some(2),
        "usage errors exit 2; stderr: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with("error: ") && first.contains(fragment),
        "{:?}",
        out.stderr
    );
}

/// A scratch directory with key files and manifests.
struct T {
    dir: tempfile::TempDir,
}

impl T {
    fn new() -> T {
        T {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_string()
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        std::fs::write(self.p(name), bytes).unwrap();
        self.s(name)
    }
    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.p(name)).unwrap()
    }
    fn read_str(&self, name: &str) -> String {
        String::from_utf8(self.read(name)).unwrap()
    }
    /// `kmsecrets keygen`; returns the key file path.
    fn keygen(&self, name: &str) -> String {
        ok(kms(["keygen", &self.s(name)]).run());
        self.s(name)
    }
}

fn yaml(s: &str) -> Value {
    serde_saphyr::from_str(s).unwrap_or_else(|e| panic!("not YAML ({e}):\n{s}"))
}

fn yaml_docs(s: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(s)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn to_yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap()
}

fn ct<'a>(es: &'a Value, key: &str) -> &'a str {
    es["spec"]["encryptedData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no encryptedData.{key} in {es}"))
}

fn dek(es: &Value) -> &Value {
    &es["spec"]["dataKeys"]
}

/// Decrypt FILE with the given local keys; returns `data` decoded.
fn decrypt_values(file: &str, keys: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut c = kms(["decrypt", "-f", file]);
    for k in keys {
        c = c.arg("--local-key").arg(k);
    }
    let out = ok(c.run());
    let docs = yaml_docs(&out.stdout());
    assert_eq!(docs.len(), 1, "{}", out.stdout());
    secret_data(&docs[0])
}

fn secret_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["apiVersion"], "v1");
    let data = secret["data"].as_object().cloned().unwrap_or_default();
    data.into_iter()
        .map(|(k, v)| (k, B64.decode(v.as_str().unwrap()).unwrap()))
        .collect()
}

fn strs(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// The standard fixture: `db` in `payments` with a username and a password.
fn encrypt_fixture(key: &str, extra: &[&str]) -> String {
    let out = ok(kms([
        "encrypt",
        "--from-literal",
        &format!("username={USERNAME}"),
        "--from-literal",
        &format!("password={PASSWORD}"),
        "--name",
        "db",
        "-n",
        "payments",
        "--key",
        &format!("file:{key}"),
    ])
    .args(extra)
    .run());
    out.stdout()
}

impl Cmd {
    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }
}

fn flip_bit(b64: &str, index: impl Fn(usize) -> usize, mask: u8) -> String {
    let mut raw = B64.decode(b64).unwrap();
    let i = index(raw.len());
    raw[i] ^= mask;
    B64.encode(raw)
}

/// Every command that reads FILE must reject it with a one-line error naming
/// `fragment`, and the in-place commands must leave it byte-identical.
#[track_caller]
fn all_commands_reject(file: &str, keys: &[&str], fragment: &str, include_rewrap: bool) {
    let before = std::fs::read(file).unwrap();
    let with_keys = |mut c: Cmd| {
        for k in keys {
            c = c.arg("--local-key").arg(k);
        }
        c
    };
    let mut runs: Vec<(&str, Cmd)> = vec![
        ("decrypt -f", with_keys(kms(["decrypt", "-f", file]))),
        (
            "decrypt stdin",
            with_keys(kms(["decrypt"])).stdin(before.clone()),
        ),
        (
            "verify --decrypt",
            with_keys(kms(["verify", "--decrypt", file])),
        ),
        ("rotate", with_keys(kms(["rotate", file]))),
        ("edit", with_keys(kms(["edit", file])).env("EDITOR", "true")),
        (
            "merge-into",
            with_keys(kms([
                "encrypt",
                "--from-literal",
                "extra=x",
                "--merge-into",
                file,
            ])),
        ),
    ];
    if include_rewrap {
        let k = keys.first().copied().unwrap_or("/nonexistent");
        runs.push((
            "rotate --rewrap",
            with_keys(kms([
                "rotate",
                "--rewrap",
                "--key",
                &format!("file:{k}"),
                file,
            ])),
        ));
    }
    for (what, c) in runs {
        let out = c.run();
        eprintln!("{what}: {}", out.stderr.trim_end());
        fails(&out, fragment);
        assert_eq!(
            std::fs::read(file).unwrap(),
            before,
            "{what} changed {file} although it failed"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. Binding attacks
// ---------------------------------------------------------------------------

type Tamper = fn(&mut Value);

const DEK_REJECTED: &str = "rejected the ciphertext";
const VALUE_REJECTED: &str = "failed authentication";

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

// ---------------------------------------------------------------------------
// 2. Bad inputs
// ---------------------------------------------------------------------------

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
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
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

// ---------------------------------------------------------------------------
// 3. In-place rewrites: --merge-into, edit, rotate
// ---------------------------------------------------------------------------

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

    // Flags that would change the binding are refused, file untouched.
    let snapshot = t.read("es.yaml");
    for extra in [
        vec!["--key", "file:/x"],
        vec!["--scope", "cluster"],
        vec!["--name", "other"],
        vec!["--namespace", "other"],
        vec!["--context", "a=b"],
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
        fails(&out, "--merge-into reuses the file's data key");
        assert_eq!(t.read("es.yaml"), snapshot);
    }
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

fn script(t: &T, name: &str, body: &str) -> String {
    t.write(name, format!("#!/bin/sh\nset -e\n{body}\n"))
}

#[test]
fn edit_changes_only_the_touched_value() {
    let t = T::new();
    let key = t.keygen("k.key");
    let f = t.write("es.yaml", encrypt_fixture(&key, &[]));
    let before = yaml(&t.read_str("es.yaml"));
    let record = t.s("scratch-path");
    // Portable sed (no -i); also records where the plaintext scratch file was and its mode.
    let ed = script(
        &t,
        "ed.sh",
        &format!(
            "echo \"$1\" > '{record}'\nls -l \"$1\" >> '{record}'\nsed 's/^  password: .*/  password: edited-pw/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\""
        ),
    );
    let out = ok(kms(["edit", &f, "--local-key", &key])
        .env("EDITOR", format!("sh {ed}"))
        .run());
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("updated"), "{}", out.stderr);
    let after = yaml(&t.read_str("es.yaml"));
    assert_eq!(ct(&after, "username"), ct(&before, "username"));
    assert_ne!(ct(&after, "password"), ct(&before, "password"));
    assert_eq!(dek(&after), dek(&before), "edit reuses the data key");
    assert_eq!(
        decrypt_values(&f, &[&key]),
        strs(&[("username", USERNAME), ("password", "edited-pw")])
    );

    // The plaintext scratch file was private and is gone.
    let rec = t.read_str("scratch-path");
    let mut lines = rec.lines();
    let scratch = lines.next().unwrap();
    assert!(
        lines.next().unwrap().starts_with("-rw-------"),
        "scratch file must be 0600: {rec}"
    );
    assert!(
        !Path::new(scratch).exists(),
        "scratch file {scratch} left behind"
    );

    // Add and remove values through the editor (awk: portable).
    let ed = script(
        &t,
        "add.sh",
        "awk '/^  username: /{next} {print} /^stringData:/{print \"  api-key: k-123\"}' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"",
    );
    ok(kms(["edit", &f, "--local-key", &key])
        .env("EDITOR", format!("sh {ed}"))
        .run());
    let after2 = yaml(&t.read_str("es.yaml"));
    assert_eq!(ct(&after2, "password"), ct(&after, "password"));
    assert!(after2["spec"]["encryptedData"].get("username").is_none());
    assert_eq!(
        decrypt_values(&f, &[&key]),
        strs(&[("api-key", "k-123"), ("password", "edited-pw")])
    );

    // VISUAL wins over EDITOR.
    let snapshot = t.read("es.yaml");
    let out = ok(kms(["edit", &f, "--local-key", &key])
        .env("VISUAL", "true")
        .env("EDITOR", "false")
        .run());
    assert!(out.stderr.contains("no changes"), "{}", out.stderr);
    assert_eq!(t.read("es.yaml"), snapshot);
}

#[test]
fn edit_without_changes_or_failing_editor_leaves_file_untouched() {
    let t = T::new();
    let key = t.keygen("k.key");
    let f = t.write("es.yaml", encrypt_fixture(&key, &[]));
    let snapshot = t.read("es.yaml");
    let edit = |editor: String| {
        kms(["edit", &f, "--local-key", &key])
            .env("EDITOR", editor)
            .run()
    };

    let out = ok(edit("true".into()));
    assert_eq!(out.stderr.trim(), "no changes");
    assert!(out.stdout.is_empty());
    assert_eq!(t.read("es.yaml"), snapshot);

    fails(&edit("false".into()), "exited with");
    assert_eq!(t.read("es.yaml"), snapshot);

    // Changed the value, then exited non-zero: still nothing written.
    let ed = script(
        &t,
        "fail.sh",
        &format!(
            "echo \"$1\" > '{}'\nsed 's/^  password: .*/  password: x/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"\nexit 3",
            t.s("scratch-path")
        ),
    );
    fails(&edit(format!("sh {ed}")), "exited with");
    assert_eq!(t.read("es.yaml"), snapshot);
    // The plaintext scratch file is removed on the error path too.
    let scratch = t.read_str("scratch-path");
    assert!(
        !Path::new(scratch.trim_end()).exists(),
        "scratch file {scratch} left behind"
    );

    fails(&edit(t.s("no-such-editor")), "cannot start editor");
    assert_eq!(t.read("es.yaml"), snapshot);

    let cases = [
        (
            "rename.sh",
            "sed 's/^  name: db$/  name: other/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"",
            "cannot be edited",
        ),
        (
            "move.sh",
            "sed 's/^  namespace: payments$/  namespace: other/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"",
            "cannot be edited",
        ),
        (
            "broken.sh",
            "printf 'stringData: [oops\\n' > \"$1\"",
            "not valid YAML",
        ),
        ("emptied.sh", ": > \"$1\"", "no documents"),
        (
            "badkey.sh",
            "sed 's/^  password: /  pass\\/word: /' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"",
            "invalid key name",
        ),
        (
            "kind.sh",
            "sed 's/^kind: Secret$/kind: ConfigMap/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"",
            "not a Secret",
        ),
    ];
    for (name, body, fragment) in cases {
        eprintln!("--- {name}");
        let ed = script(&t, name, body);
        fails(&edit(format!("sh {ed}")), fragment);
        assert_eq!(t.read("es.yaml"), snapshot, "{name} changed the file");
    }
}

#[test]
fn edit_keeps_binary_values_and_updates_the_template() {
    let t = T::new();
    let key = t.keygen("k.key");
    let bin = t.write("blob", [0u8, 255, 254, 10]);
    let out = ok(kms([
        "encrypt",
        "--from-file",
        &format!("blob={bin}"),
        "--from-literal",
        "text=plain",
        "--name",
        "b",
        "-n",
        "ns1",
        "--key",
        &format!("file:{key}"),
    ])
    .run());
    let f = t.write("es.yaml", out.stdout());
    let before = yaml(&t.read_str("es.yaml"));
    // Non-UTF-8 values are offered base64 in `data`; add a label, leave values alone.
    let ed = script(
        &t,
        "label.sh",
        "grep -q '^  blob: AP/+Cg==$' \"$1\"\nsed 's/^  labels: {}$/  labels: {team: core}/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"",
    );
    ok(kms(["edit", &f, "--local-key", &key])
        .env("EDITOR", format!("sh {ed}"))
        .run());
    let after = yaml(&t.read_str("es.yaml"));
    assert_eq!(
        after["spec"]["encryptedData"], before["spec"]["encryptedData"],
        "template-only edit keeps every ciphertext"
    );
    assert_eq!(
        after["spec"]["template"]["metadata"]["labels"],
        json!({"team": "core"})
    );
    let v = decrypt_values(&f, &[&key]);
    assert_eq!(v["blob"], vec![0u8, 255, 254, 10]);
    assert_eq!(v["text"], b"plain");
}

/// Fields the rewrite does not own survive `rotate`, `rotate --rewrap`,
/// `--merge-into` and `edit`: labels/annotations of the EncryptedSecret
/// itself, deletionPolicy, template.immutable, the user context, status,
/// and the file's permissions.
#[test]
fn in_place_rewrites_preserve_unowned_fields_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    let t = T::new();
    let key = t.keygen("k.key");
    let key2 = t.keygen("k2.key");
    let mut v = yaml(&encrypt_fixture(&key, &["--context", "team=payments"]));
    v["metadata"]["labels"] = json!({"app": "db"});
    v["metadata"]["annotations"] = json!({"argocd.argoproj.io/sync-wave": "1"});
    v["spec"]["deletionPolicy"] = json!("Retain");
    v["spec"]["template"]["immutable"] = json!(true);
    v["spec"]["template"]["metadata"] = json!({"labels": {"l": "v"}});
    v["status"] = json!({"secretName": "db"});
    let f = t.write("es.yaml", to_yaml(&v));
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    let ed = script(
        &t,
        "ed.sh",
        "sed 's/^  password: .*/  password: changed/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\"",
    );
    let steps: Vec<(&str, Cmd)> = vec![
        ("rotate", kms(["rotate", &f, "--local-key", &key])),
        (
            "merge-into",
            kms([
                "encrypt",
                "--merge-into",
                &f,
                "--local-key",
                &key,
                "--from-literal",
                "extra=1",
            ]),
        ),
        (
            "edit",
            kms(["edit", &f, "--local-key", &key]).env("EDITOR", format!("sh {ed}")),
        ),
        (
            "rewrap",
            kms([
                "rotate",
                "--rewrap",
                "--key",
                &format!("file:{key2}"),
                &f,
                "--local-key",
                &key,
            ]),
        ),
    ];
    for (what, c) in steps {
        ok(c.run());
        let now = yaml(&t.read_str("es.yaml"));
        for ptr in [
            "/metadata/labels",
            "/metadata/annotations",
            "/metadata/name",
            "/metadata/namespace",
            "/spec/deletionPolicy",
            "/spec/scope",
            "/spec/encryptionContext",
            "/spec/template",
            "/status",
        ] {
            assert_eq!(now.pointer(ptr), v.pointer(ptr), "{what} changed {ptr}");
        }
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{what} changed the file mode");
    }
    assert_eq!(
        decrypt_values(&f, &[&key2]),
        strs(&[
            ("username", USERNAME),
            ("password", "changed"),
            ("extra", "1")
        ])
    );
}

/// BUG (src/cli/edit.rs, `run`: the `new_template`/`same_values` check):
/// `spec.template` is optional, but when it is absent `edit` offers
/// `type: Opaque` in the scratch Secret and then treats the unchanged
/// document as a change, so an editor that changes nothing rewrites FILE
/// (adding `template: {type: Opaque}`) and prints "updated" instead of
/// "no changes".
#[test]
fn edit_without_changes_on_a_file_without_template_is_a_no_op() {
    let t = T::new();
    let key = t.keygen("k.key");
    let mut v = yaml(&encrypt_fixture(&key, &[]));
    v["spec"].as_object_mut().unwrap().remove("template");
    let f = t.write("es.yaml", to_yaml(&v));
    let snapshot = t.read("es.yaml");
    let out = ok(kms(["edit", &f, "--local-key", &key])
        .env("EDITOR", "true")
        .run());
    assert_eq!(out.stderr.trim(), "no changes");
    assert_eq!(
        t.read("es.yaml"),
        snapshot,
        "edit with no changes must leave the file byte-identical"
    );
}

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

#[test]
fn in_place_rewrites_keep_json_files_json() {
    let t = T::new();
    let key = t.keygen("k.key");
    let out = ok(kms([
        "encrypt",
        "--from-literal",
        "a=1",
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
    let f = t.write("es.json", out.stdout());
    ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--local-key",
        &key,
        "--from-literal",
        "b=2",
    ])
    .run());
    ok(kms(["rotate", &f, "--local-key", &key]).run());
    let v: Value = serde_json::from_slice(&t.read("es.json")).expect("still JSON");
    assert_eq!(v["kind"], "EncryptedSecret");
    assert_eq!(decrypt_values(&f, &[&key]), strs(&[("a", "1"), ("b", "2")]));
}

// ---------------------------------------------------------------------------
// 4. Multi-document streams and JSON
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 5. Value sources, templates, init
// ---------------------------------------------------------------------------

#[test]
fn value_sources() {
    let t = T::new();
    let key = t.keygen("k.key");
    let bin = t.write("blob.bin", [0u8, 159, 146, 150, 255, b'\n']);
    let crt = t.write(
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let env = t.write(
        "app.env",
        "# database settings\n\nDB_HOST=db.internal\n   # indented comment\nDB_URL=postgres://u@h/db?sslmode=require&x=y\n  PORT=5432\nEMPTY=\n",
    );
    let out = ok(kms([
        "encrypt",
        "--from-file",
        &format!("blob={bin}"),
        "--from-file",
        &crt,
        "--from-env-file",
        &env,
        "--from-literal",
        "literal=with = signs",
        "--name",
        "app",
        "-n",
        "web",
        "--key",
        &format!("file:{key}"),
    ])
    .run());
    let f = t.write("es.yaml", out.stdout());
    let got = decrypt_values(&f, &[&key]);
    let mut want = strs(&[
        (
            "tls.crt",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        ),
        ("DB_HOST", "db.internal"),
        ("DB_URL", "postgres://u@h/db?sslmode=require&x=y"),
        ("PORT", "5432"),
        ("EMPTY", ""),
        ("literal", "with = signs"),
    ]);
    want.insert("blob".into(), vec![0u8, 159, 146, 150, 255, b'\n']);
    assert_eq!(got, want);
}

#[test]
fn generate_makes_random_values_printed_nowhere() {
    let t = T::new();
    let key = t.keygen("k.key");
    let out = ok(kms([
        "encrypt",
        "--generate",
        "token=32",
        "--generate",
        "salt=16",
        "--from-literal",
        "user=u",
        "--name",
        "gen",
        "-n",
        "ns1",
        "--key",
        &format!("file:{key}"),
    ])
    .run());
    let f = t.write("es.yaml", out.stdout());
    let v = decrypt_values(&f, &[&key]);
    assert_eq!(v["token"].len(), 32);
    assert_eq!(v["salt"].len(), 16);
    assert_ne!(
        v["token"][..16],
        v["salt"][..],
        "two generated values must differ"
    );
    let printed = format!("{}{}", out.stdout(), out.stderr);
    for (k, bytes) in [("token", &v["token"]), ("salt", &v["salt"])] {
        assert!(
            !printed.contains(&B64.encode(bytes)),
            "{k} printed in base64"
        );
        assert!(!printed.contains(&hex::encode(bytes)), "{k} printed in hex");
        assert!(
            !printed.contains(&B64.encode(&bytes[..12])[..16]),
            "{k} printed in part"
        );
    }
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

#[test]
fn template_is_carried_and_server_metadata_stripped() {
    let t = T::new();
    let key = t.keygen("k.key");
    let manifest = r#"
apiVersion: v1
kind: Secret
metadata:
  name: tls-cert
  namespace: web
  uid: 8f1d3c2a-0d5e-4a5b-9c7e-123456789abc
  resourceVersion: "48213"
  generation: 4
  creationTimestamp: "2024-01-02T03:04:05Z"
  selfLink: /api/v1/namespaces/web/secrets/tls-cert
  ownerReferences:
  - apiVersion: cert-manager.io/v1
    kind: Certificate
    name: tls-cert
    uid: 11111111-2222-3333-4444-555555555555
    controller: true
  managedFields:
  - manager: kubectl-client-side-apply
    operation: Update
    apiVersion: v1
  finalizers: [example.com/keep]
  labels:
    app: web
    tier: frontend
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"apiVersion":"v1","kind":"Secret","stringData":{"tls.key":"LEAKED-PLAINTEXT"}}'
    team: web-platform
type: kubernetes.io/tls
immutable: true
stringData:
  tls.crt: CERT
  tls.key: KEY
"#;
    let out = ok(kms(["encrypt", "-f", "-", "--key", &format!("file:{key}")])
        .stdin(manifest)
        .run());
    let text = out.stdout();
    // Ciphertext is masked: random base64 may contain any short string.
    let visible = shape(&text);
    for banned in [
        "uid",
        "8f1d3c2a",
        "resourceVersion",
        "48213",
        "generation",
        "creationTimestamp",
        "selfLink",
        "ownerReferences",
        "managedFields",
        "finalizers",
        "last-applied-configuration",
        "LEAKED-PLAINTEXT",
        "CERT",
        "KEY",
    ] {
        assert!(
            !visible.contains(banned),
            "{banned:?} must not be in the output:\n{text}"
        );
    }
    let es = yaml(&text);
    assert_eq!(
        es["metadata"],
        json!({"name": "tls-cert", "namespace": "web"})
    );
    let tpl = &es["spec"]["template"];
    assert_eq!(tpl["type"], "kubernetes.io/tls");
    assert_eq!(tpl["immutable"], true);
    assert_eq!(
        tpl["metadata"]["labels"],
        json!({"app": "web", "tier": "frontend"})
    );
    assert_eq!(
        tpl["metadata"]["annotations"],
        json!({"team": "web-platform"})
    );

    let f = t.write("es.yaml", &text);
    let out = ok(kms(["decrypt", "-f", &f, "--local-key", &key]).run());
    let secret = yaml(&out.stdout());
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["immutable"], true);
    assert_eq!(secret["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(secret["metadata"]["annotations"]["team"], "web-platform");
    assert_eq!(
        secret_data(&secret),
        strs(&[("tls.crt", "CERT"), ("tls.key", "KEY")])
    );

    // --type, --name and --namespace override the manifest.
    let out = ok(kms([
        "encrypt",
        "-f",
        "-",
        "--key",
        &format!("file:{key}"),
        "--type",
        "Opaque",
        "--name",
        "renamed",
        "-n",
        "other",
    ])
    .stdin(manifest)
    .run());
    let es = yaml(&out.stdout());
    assert_eq!(
        es["metadata"],
        json!({"name": "renamed", "namespace": "other"})
    );
    assert_eq!(es["spec"]["template"]["type"], "Opaque");
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

// ---------------------------------------------------------------------------
// 6. Deterministic output
// ---------------------------------------------------------------------------

/// The YAML with every ciphertext replaced by a placeholder.
fn shape(text: &str) -> String {
    let mut in_data = false;
    text.lines()
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            if l.trim_start().starts_with("encryptedData:") {
                in_data = true;
                return l.to_string();
            }
            if in_data && indent <= 2 {
                in_data = false;
            }
            if (in_data && indent == 4) || l.trim_start().starts_with("ciphertext:") {
                let (k, _) = l.split_once(": ").unwrap();
                return format!("{k}: <ciphertext>");
            }
            l.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
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

// ---------------------------------------------------------------------------
// 7. keygen, crd, completion, kubectl plugin
// ---------------------------------------------------------------------------

#[test]
fn keygen_writes_0600_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let t = T::new();
    let path = t.s("local.key");
    let out = ok(kms(["keygen", &path]).run());
    let id = out.stdout();
    let id = id.trim_end();
    assert!(
        id.starts_with("local:")
            && id.len() == 22
            && id[6..].chars().all(|c| c.is_ascii_hexdigit()),
        "stdout should be the key id: {id:?}"
    );
    assert!(out.stderr.contains("0600"), "{}", out.stderr);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = t.read_str("local.key");
    assert_eq!(text.lines().count(), 1);
    assert_eq!(B64.decode(text.trim_end()).unwrap().len(), 32);
    assert!(
        !out.stderr.contains(text.trim_end()) && !id.contains(text.trim_end()),
        "key printed"
    );

    let before = t.read("local.key");
    fails(&kms(["keygen", &path]).run(), "already exists");
    assert_eq!(t.read("local.key"), before);
    fails(
        &kms(["keygen", &t.s("no/such/dir/k")]).run(),
        "cannot write local key",
    );

    // The key id encrypt records is the one keygen printed.
    let out = ok(kms([
        "encrypt",
        "--from-literal",
        "a=b",
        "--name",
        "x",
        "-n",
        "y",
        "--key",
        &format!("file:{path}"),
    ])
    .run());
    assert_eq!(yaml(&out.stdout())["spec"]["dataKeys"][0]["keyId"], id);
}

#[test]
fn crd_matches_the_checked_in_file() {
    let out = ok(kms(["crd"]).run());
    let want = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/kmsecrets.dev_encryptedsecrets.yaml"),
    )
    .unwrap();
    assert!(
        out.stdout() == want,
        "`kmsecrets crd` differs from crds/kmsecrets.dev_encryptedsecrets.yaml; regenerate with `kmsecrets crd > crds/kmsecrets.dev_encryptedsecrets.yaml`"
    );
    let crd = yaml(&out.stdout());
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], "encryptedsecrets.kmsecrets.dev");
}

#[test]
fn completions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(kms(["completion", shell]).run());
        assert!(out.stdout.len() > 100, "{shell} completion is empty");
        assert!(out.stdout().contains("kmsecrets"), "{shell}");
        assert!(out.stdout().contains("encrypt"), "{shell}");
    }
    usage_error(&kms(["completion", "tcsh"]).run(), "invalid value 'tcsh'");
}

#[test]
fn kubectl_plugin_name() {
    let t = T::new();
    let link = t.p("kubectl-kmsecrets");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = ok(Cmd {
        cmd: Command::new(&link),
        stdin: None,
    }
    .arg("--help")
    .run());
    assert!(
        out.stdout()
            .contains("Usage: kubectl kmsecrets [OPTIONS] <COMMAND>"),
        "{}",
        out.stdout()
    );
    assert!(!out.stdout().contains("Usage: kmsecrets"));
    let out = ok(Cmd {
        cmd: Command::new(&link),
        stdin: None,
    }
    .args(["encrypt", "--help"])
    .run());
    assert!(
        out.stdout().contains("Usage: kubectl kmsecrets encrypt"),
        "{}",
        out.stdout()
    );
    // kubectl runs plugins found on PATH by bare name.
    let mut cmd = Command::new("kubectl-kmsecrets");
    cmd.env_clear().env("PATH", t.dir.path());
    let out = ok(Cmd { cmd, stdin: None }.arg("--version").run());
    assert!(out.stdout().starts_with("kmsecrets "), "{}", out.stdout());
    // And it works, not just prints help.
    let key = t.keygen("k.key");
    let out = ok(Cmd {
        cmd: Command::new(&link),
        stdin: None,
    }
    .args([
        "encrypt",
        "--from-literal",
        "a=b",
        "--name",
        "x",
        "-n",
        "y",
        "--key",
        &format!("file:{key}"),
    ])
    .run());
    assert_eq!(yaml(&out.stdout())["kind"], "EncryptedSecret");
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

mod properties {
    use super::*;
    use proptest::prelude::*;

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
}

#[test]
fn from_literal_error_does_not_echo_the_secret() {
    let t = T::new();
    let key = t.keygen("k");
    let out = kms([
        "encrypt",
        "--name",
        "x",
        "-n",
        "y",
        "--key",
        &format!("file:{key}"),
        "--from-literal",
        "hunter2-no-equals",
    ])
    .run();
    fails(&out, "KEY=VALUE");
    assert!(
        !out.stderr.clone().contains("hunter2"),
        "{:?}",
        out.stderr.clone()
    );
}

#[test]
fn rewrites_go_through_symlinks() {
    let t = T::new();
    let key = t.keygen("k");
    let real = t.write("real.yaml", encrypt_fixture(&key, &[]));
    std::os::unix::fs::symlink(&real, t.p("link.yaml")).unwrap();
    ok(kms([
        "encrypt",
        "--merge-into",
        &t.s("link.yaml"),
        "--from-literal",
        "extra=1",
        "--local-key",
        &key,
    ])
    .run());
    assert!(
        std::fs::symlink_metadata(t.p("link.yaml"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "link kept"
    );
    assert!(
        t.read_str("real.yaml").contains("extra:"),
        "target rewritten"
    );
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
