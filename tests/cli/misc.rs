//! The small commands: `keygen`, `crd`, `completion`, and running as the
//! `kubectl kmsecrets` plugin.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::support::*;

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
