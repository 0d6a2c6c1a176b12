//! Harness shared by every module: running the binary with a clean
//! environment, the error contract, a scratch directory, YAML helpers and
//! the standard fixture.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_kmsecrets");

/// Plaintexts used by the fixtures; no error message may ever contain them.
pub(crate) const USERNAME: &str = "admin-user";
pub(crate) const PASSWORD: &str = "hunter2-correct-horse";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

pub(crate) struct Out {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }
}

pub(crate) struct Cmd {
    pub(crate) cmd: Command,
    pub(crate) stdin: Option<Vec<u8>>,
}

/// `kmsecrets ARGS...` with a clean environment.
pub(crate) fn kms<I, S>(args: I) -> Cmd
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
    pub(crate) fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }
    pub(crate) fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }
    pub(crate) fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }
    pub(crate) fn run(mut self) -> Out {
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

pub(crate) fn no_panic(out: &Out) {
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !out.stderr.contains(bad),
            "stderr shows a panic: {}",
            out.stderr
        );
    }
}

#[track_caller]
pub(crate) fn ok(out: Out) -> Out {
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
pub(crate) fn fails(out: &Out, fragment: &str) {
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
pub(crate) fn usage_error(out: &Out, fragment: &str) {
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
pub(crate) struct T {
    pub(crate) dir: tempfile::TempDir,
}

impl T {
    pub(crate) fn new() -> T {
        T {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub(crate) fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub(crate) fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_string()
    }
    pub(crate) fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        std::fs::write(self.p(name), bytes).unwrap();
        self.s(name)
    }
    pub(crate) fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.p(name)).unwrap()
    }
    pub(crate) fn read_str(&self, name: &str) -> String {
        String::from_utf8(self.read(name)).unwrap()
    }
    /// `kmsecrets keygen`; returns the key file path.
    pub(crate) fn keygen(&self, name: &str) -> String {
        ok(kms(["keygen", &self.s(name)]).run());
        self.s(name)
    }
}

pub(crate) fn yaml(s: &str) -> Value {
    serde_saphyr::from_str(s).unwrap_or_else(|e| panic!("not YAML ({e}):\n{s}"))
}

pub(crate) fn yaml_docs(s: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(s)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn to_yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap()
}

pub(crate) fn ct<'a>(es: &'a Value, key: &str) -> &'a str {
    es["spec"]["encryptedData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no encryptedData.{key} in {es}"))
}

pub(crate) fn dek(es: &Value) -> &Value {
    &es["spec"]["dataKeys"]
}

/// Decrypt FILE with the given local keys; returns `data` decoded.
pub(crate) fn decrypt_values(file: &str, keys: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut c = kms(["decrypt", "-f", file]);
    for k in keys {
        c = c.arg("--local-key").arg(k);
    }
    let out = ok(c.run());
    let docs = yaml_docs(&out.stdout());
    assert_eq!(docs.len(), 1, "{}", out.stdout());
    secret_data(&docs[0])
}

pub(crate) fn secret_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["apiVersion"], "v1");
    let data = secret["data"].as_object().cloned().unwrap_or_default();
    data.into_iter()
        .map(|(k, v)| (k, B64.decode(v.as_str().unwrap()).unwrap()))
        .collect()
}

pub(crate) fn strs(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// The standard fixture: `db` in `payments` with a username and a password.
pub(crate) fn encrypt_fixture(key: &str, extra: &[&str]) -> String {
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
    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }
}

pub(crate) fn flip_bit(b64: &str, index: impl Fn(usize) -> usize, mask: u8) -> String {
    let mut raw = B64.decode(b64).unwrap();
    let i = index(raw.len());
    raw[i] ^= mask;
    B64.encode(raw)
}

/// Every command that reads FILE must reject it with a one-line error naming
/// `fragment`, and the in-place commands must leave it byte-identical.
#[track_caller]
pub(crate) fn all_commands_reject(file: &str, keys: &[&str], fragment: &str, include_rewrap: bool) {
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

pub(crate) type Tamper = fn(&mut Value);

pub(crate) const DEK_REJECTED: &str = "rejected the ciphertext";
pub(crate) const VALUE_REJECTED: &str = "failed authentication";

/// The YAML with every ciphertext replaced by a placeholder.
pub(crate) fn shape(text: &str) -> String {
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
