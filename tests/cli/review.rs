//! Reviewing EncryptedSecrets in git without decrypting: the `textconv`
//! diff driver through the real `git`, and `kmsecrets diff` classifying
//! edits, rotation, re-wrapping and widened scope — never a value, never a
//! hash of one, never a KMS call.

use std::process::Command;

use sha2::{Digest, Sha256};

use crate::support::*;

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git is needed (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Nothing derived from a value: not the value, not its SHA-256.
fn no_value_in(text: &str, value: &str) {
    assert!(!text.contains(value), "a value in:\n{text}");
    let h = hex::encode(Sha256::digest(value.as_bytes()));
    assert!(!text.contains(&h[..12]), "a hash of a value in:\n{text}");
}

#[test]
fn git_diff_through_textconv_shows_which_value_changed_and_no_ciphertext() {
    let t = T::new();
    let key = t.keygen("k.key");
    let other = t.keygen("other.key");
    let repo = t.p("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    git(
        &repo,
        &[
            "config",
            "diff.kmsecrets.textconv",
            &format!("{BIN} textconv"),
        ],
    );
    std::fs::write(repo.join(".gitattributes"), "*.yaml diff=kmsecrets\n").unwrap();
    let file = repo.join("db.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, encrypt_fixture(&key, &[])).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "v1"]);
    let v1 = std::fs::read_to_string(&file).unwrap();

    // edit one value: exactly that key changes in `git diff`, no ciphertext
    ok(kms([
        "encrypt",
        "--merge-into",
        f,
        "--from-literal",
        "password=new-pw-77",
        "--local-key",
        &key,
    ])
    .run());
    let d = git(&repo, &["diff"]);
    assert!(
        d.contains("-  value password: ") && d.contains("+  value password: "),
        "{d}"
    );
    assert!(
        !d.contains("-  value username") && !d.contains("+  value username"),
        "{d}"
    );
    let es = yaml(&std::fs::read_to_string(&file).unwrap());
    assert!(
        !d.contains(ct(&es, "password")),
        "ciphertext in the diff:\n{d}"
    );
    no_value_in(&d, "new-pw-77");
    no_value_in(&d, PASSWORD);
    git(&repo, &["commit", "-qam", "v2"]);

    // kmsecrets diff: the same, classified; exit 1 as diff(1)
    t.write("v1.yaml", &v1);
    let out = kms(["diff", &t.s("v1.yaml"), f]).run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stdout().contains("password: changed"),
        "{}",
        out.stdout()
    );
    assert!(!out.stdout().contains("username"), "{}", out.stdout());
    no_value_in(&out.stdout(), "new-pw-77");
    let same = kms(["diff", f, f]).run();
    assert_eq!(same.code, Some(0));
    assert_eq!(same.stdout(), "");

    // rotate: said once; rewrap: re-wrapped only, and the key change is loud
    let before = std::fs::read_to_string(&file).unwrap();
    t.write("before.yaml", &before);
    ok(kms(["rotate", f, "--local-key", &key]).run());
    let out = kms(["diff", &t.s("before.yaml"), f]).run();
    assert!(
        out.stdout()
            .contains("rotated: a new data key, every value re-encrypted (2 values)"),
        "{}",
        out.stdout()
    );
    assert!(
        !out.stdout().contains("password: changed"),
        "{}",
        out.stdout()
    );
    let before = std::fs::read_to_string(&file).unwrap();
    t.write("before.yaml", &before);
    ok(kms([
        "rotate",
        f,
        "--rewrap",
        "--key",
        &format!("file:{other}"),
        "--local-key",
        &key,
    ])
    .run());
    let out = kms(["diff", &t.s("before.yaml"), f]).run();
    let text = out.stdout();
    assert!(text.contains("re-wrapped only"), "{text}");
    assert!(
        text.contains("!! wrapping key added: local")
            && text.contains("!! wrapping key removed: local"),
        "{text}"
    );
    let d = git(&repo, &["diff"]);
    assert!(d.contains("data key local"), "{d}");

    // widened scope and a template reading another value: loud
    let mut es = yaml(&std::fs::read_to_string(&file).unwrap());
    t.write("before.yaml", to_yaml(&es));
    es["spec"]["scope"] = "cluster".into();
    es["spec"]["template"]["data"] = serde_json::json!({"leak": "{{ password }}"});
    t.write("after.yaml", to_yaml(&es));
    let out = kms(["diff", &t.s("before.yaml"), &t.s("after.yaml")]).run();
    let text = out.stdout();
    assert!(
        text.contains("!! scope widened: strict → cluster"),
        "{text}"
    );
    assert!(
        text.contains("!! a template now reads value password"),
        "{text}"
    );
    // a moved resource
    es["metadata"]["namespace"] = "elsewhere".into();
    t.write("moved.yaml", to_yaml(&es));
    let out = kms(["diff", &t.s("before.yaml"), &t.s("moved.yaml")]).run();
    assert!(
        out.stdout()
            .contains("!! namespace/name changed: payments/db → elsewhere/db"),
        "{}",
        out.stdout()
    );

    // no KMS anywhere: a dead endpoint and no credentials change nothing
    let out = kms(["textconv", f])
        .env("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9")
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    no_value_in(&out.stdout(), PASSWORD);
    no_value_in(&out.stdout(), USERNAME);
    // trouble is exit 2
    let out = kms(["diff", &t.s("nope.yaml"), f]).run();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}
