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

/// A git repository in `dir` with an identity, for the rules and guard tests.
fn repo(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
}

fn short(dir: &std::path::Path, rev: &str) -> String {
    git(dir, &["rev-parse", rev]).trim()[..12].to_string()
}

#[test]
fn history_names_the_commit_a_put_back_value_came_from() {
    let t = T::new();
    let key = t.keygen("k.key");
    let r = t.p("repo");
    repo(&r);
    let file = r.join("db.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, encrypt_fixture(&key, &[])).unwrap();
    git(&r, &["add", "."]);
    git(&r, &["commit", "-qm", "v1"]);
    let v1 = std::fs::read_to_string(&file).unwrap();
    let first = short(&r, "HEAD");
    ok(kms([
        "encrypt",
        "--merge-into",
        f,
        "--from-literal",
        "password=v2-password",
        "--local-key",
        &key,
    ])
    .run());
    git(&r, &["commit", "-qam", "v2"]);
    // nothing reverted yet
    let out = kms(["diff", "--history", f]).run();
    assert_eq!(out.code, Some(0), "{}{}", out.stdout(), out.stderr);
    // someone with write access puts v1's ciphertext back
    std::fs::write(&file, &v1).unwrap();
    git(&r, &["commit", "-qam", "v3: put back"]);
    let out = kms(["diff", "--history", f]).run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let text = out.stdout();
    assert!(
        text.contains(&format!(
            "!! password: reverted to its value of {first} (v1)"
        )),
        "{text}"
    );
    assert!(!text.contains("username"), "{text}");
    no_value_in(&text, PASSWORD);
    // the guard sees it while it is the change being made, not afterwards
    let out = kms(["guard", f]).run();
    assert_eq!(out.code, Some(0), "{}{}", out.stdout(), out.stderr);
    let out = kms(["guard", "--since", "HEAD~1", f]).run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stdout().contains(&format!(
            "db.yaml:1: EncryptedSecret payments/db: value password reverted to its value of {first} (v1)"
        )),
        "{}",
        out.stdout()
    );
    // outside git: trouble, exit 2
    t.write("loose.yaml", &v1);
    let out = kms(["diff", "--history", &t.s("loose.yaml")]).run();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("not in a git work tree"),
        "{}",
        out.stderr
    );
}

#[test]
fn diff_decrypt_says_lengths_and_whether_a_plaintext_changed_never_the_value() {
    let t = T::new();
    let key = t.keygen("k.key");
    let f = t.write("db.yaml", encrypt_fixture(&key, &[]));
    t.write("v1.yaml", t.read("db.yaml"));
    ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--from-literal",
        "password=a-much-longer-password",
        "--from-literal",
        "extra=xyz",
        "--local-key",
        &key,
    ])
    .run());
    let out = kms([
        "diff",
        "--decrypt",
        "--local-key",
        &key,
        &t.s("v1.yaml"),
        &f,
    ])
    .run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let text = out.stdout();
    assert!(
        text.contains(&format!(
            "password: changed (plaintext changed, {} bytes → 22 bytes)",
            PASSWORD.len()
        )),
        "{text}"
    );
    assert!(text.contains("extra: added (3 bytes)"), "{text}");
    // a rotation changes every ciphertext and no plaintext
    t.write("v2.yaml", t.read("db.yaml"));
    ok(kms(["rotate", &f, "--local-key", &key]).run());
    let text = kms([
        "diff",
        "--decrypt",
        "--local-key",
        &key,
        &t.s("v2.yaml"),
        &f,
    ])
    .run()
    .stdout();
    assert!(text.contains("rotated: a new data key"), "{text}");
    assert!(text.contains("plaintext unchanged for 3 values"), "{text}");
    for v in [PASSWORD, USERNAME, "a-much-longer-password", "xyz"] {
        no_value_in(&text, v);
    }
    // --decrypt without the key: trouble (exit 2), no value
    let out = kms(["diff", "--decrypt", &t.s("v2.yaml"), &f]).run();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--decrypt"), "{}", out.stderr);
}

/// `.kmsecrets.yaml` in a repository: rule by path, contradicting flags
/// named on both sides, a rule change moving every file with one command.
#[test]
fn creation_rules_choose_keys_by_path_and_refuse_contradicting_flags() {
    let t = T::new();
    let r = t.p("repo");
    repo(&r);
    std::fs::create_dir_all(r.join("secrets/prod")).unwrap();
    std::fs::create_dir_all(r.join("secrets/dev")).unwrap();
    let run_in = |args: &[&str]| {
        let mut c = kms(args);
        c.cmd.current_dir(&r);
        c.run()
    };
    ok(run_in(&["keygen", "prod.key"]));
    ok(run_in(&["keygen", "dev.key"]));
    ok(run_in(&["keygen", "new.key"]));
    let id = |k: &str| {
        let text = kms(["encrypt", "--from-literal", "a=b", "-n", "x", "--name", "y"])
            .arg("--key")
            .arg(format!("file:{}", r.join(k).display()))
            .run()
            .stdout();
        yaml(&text)["spec"]["dataKeys"][0]["keyId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (prod, dev, new) = (id("prod.key"), id("dev.key"), id("new.key"));
    let rules = |prod_key: &str| {
        format!(
            "rules:\n  - path: secrets/prod/**\n    keys: [file:{prod_key}]\n    context: {{team: payments}}\n    allowedTypes: [Opaque]\n  - path: secrets/dev/*\n    keys: [file:dev.key]\n    scope: namespace\n"
        )
    };
    std::fs::write(r.join(".kmsecrets.yaml"), rules("prod.key")).unwrap();
    std::fs::write(
        r.join("secrets/prod/db.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: db, namespace: payments}}\nstringData: {{password: {PASSWORD}}}\n"
        ),
    )
    .unwrap();

    // -f under secrets/prod: rule 1's key and context, no --key needed
    let es = yaml(&ok(run_in(&["encrypt", "-f", "secrets/prod/db.yaml"])).stdout());
    assert_eq!(es["spec"]["dataKeys"][0]["keyId"], prod.as_str());
    assert_eq!(es["spec"]["encryptionContext"]["team"], "payments");
    assert_eq!(es["spec"]["scope"], "strict");
    // --rules-path for stdin/literals: rule 2 (namespace scope by default)
    let es = yaml(
        &ok(run_in(&[
            "encrypt",
            "--rules-path",
            "secrets/dev/x.yaml",
            "--from-literal",
            "a=b",
            "-n",
            "dev",
            "--name",
            "x",
        ]))
        .stdout(),
    );
    assert_eq!(es["spec"]["dataKeys"][0]["keyId"], dev.as_str());
    assert_eq!(es["spec"]["scope"], "namespace");

    // contradictions name the flag and the rule
    for (extra, flag, rule) in [
        (
            vec!["--key", "file:dev.key"],
            "--key file:dev.key",
            "file:prod.key",
        ),
        (
            vec!["--scope", "cluster"],
            "--scope cluster",
            "at most strict",
        ),
        (
            vec!["--context", "team=ops"],
            "--context team=ops",
            "requires team=payments",
        ),
        (
            vec!["--type", "kubernetes.io/tls"],
            "--type kubernetes.io/tls",
            "allows Opaque",
        ),
    ] {
        let mut args = vec!["encrypt", "-f", "secrets/prod/db.yaml"];
        args.extend(extra);
        let out = run_in(&args);
        fails(&out, flag);
        assert!(out.stderr.contains(rule), "{}", out.stderr);
        assert!(
            out.stderr.contains("rule 1 (secrets/prod/**)"),
            "{}",
            out.stderr
        );
    }
    // a path no rule covers needs --key
    let out = run_in(&[
        "encrypt",
        "--rules-path",
        "other/x.yaml",
        "--from-literal",
        "a=b",
        "-n",
        "x",
        "--name",
        "x",
    ]);
    fails(&out, "matches no rule");

    // files under the rules, committed; guard is clean
    for (path, ns) in [
        ("secrets/prod/a.yaml", "payments"),
        ("secrets/prod/deep/b.yaml", "payments"),
        ("secrets/dev/c.yaml", "dev"),
    ] {
        std::fs::create_dir_all(r.join(path).parent().unwrap()).unwrap();
        let out = ok(run_in(&[
            "encrypt",
            "--rules-path",
            path,
            "--from-literal",
            &format!("password={PASSWORD}"),
            "-n",
            ns,
            "--name",
            "s",
        ]));
        std::fs::write(r.join(path), out.stdout).unwrap();
    }
    std::fs::remove_file(r.join("secrets/prod/db.yaml")).unwrap();
    git(&r, &["add", "."]);
    git(&r, &["commit", "-qm", "secrets"]);
    let out = run_in(&["guard", "-R", "."]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout(), out.stderr);

    // the team migrates prod to a new key: edit the rule, run one command
    std::fs::write(r.join(".kmsecrets.yaml"), rules("new.key")).unwrap();
    let out = run_in(&["guard", "-R", "."]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stdout().lines().count(), 2, "{}", out.stdout());
    let out = ok(run_in(&[
        "rotate",
        "--rewrap",
        "-R",
        "secrets",
        "--local-key",
        "prod.key",
    ]));
    assert!(
        out.stderr.contains("rule 1 (secrets/prod/**)")
            && out.stderr.contains("move to file:new.key"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("1 rewritten") || out.stderr.contains("2 rewritten"),
        "{}",
        out.stderr
    );
    for path in ["secrets/prod/a.yaml", "secrets/prod/deep/b.yaml"] {
        let es = yaml(&std::fs::read_to_string(r.join(path)).unwrap());
        assert_eq!(es["spec"]["dataKeys"][0]["keyId"], new.as_str(), "{path}");
        let got = decrypt_values(
            r.join(path).to_str().unwrap(),
            &[r.join("new.key").to_str().unwrap()],
        );
        assert_eq!(got, strs(&[("password", PASSWORD)]));
    }
    let es = yaml(&std::fs::read_to_string(r.join("secrets/dev/c.yaml")).unwrap());
    assert_eq!(es["spec"]["dataKeys"][0]["keyId"], dev.as_str());
    // git shows re-wrapped only, and the guard is clean again
    git(
        &r,
        &[
            "config",
            "diff.kmsecrets.textconv",
            &format!("{BIN} textconv"),
        ],
    );
    std::fs::write(r.join(".gitattributes"), "*.yaml diff=kmsecrets\n").unwrap();
    let d = git(&r, &["diff", "secrets"]);
    assert!(d.contains(&format!("+  data key local {new}")), "{d}");
    assert!(
        !d.contains("-  value password") && !d.contains("+  value password"),
        "{d}"
    );
    let out = run_in(&["guard", "-R", "."]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout(), out.stderr);
}

/// What a guarded repository refuses, each named `file:document: what`.
#[test]
fn guard_names_every_finding_and_passes_a_clean_repository() {
    let t = T::new();
    let key = t.keygen("k.key");
    let good = encrypt_fixture(&key, &[]);
    let es = yaml(&good);
    let plain_multi = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{a: b}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: db, namespace: payments}}\ntype: Opaque\ndata:\n  password: {}\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, PASSWORD)
    );
    let string_data = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{{\"name\":\"s\"}},\"stringData\":{{\"password\":\"{PASSWORD}\"}}}}"
    );
    let last_applied = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"stringData\":{{\"password\":\"{PASSWORD}\"}}}}'\n"
    );
    let mut broken = es.clone();
    broken["spec"]["encryptedData"]["password"] = "not-base64!".into();
    let mut wide = es.clone();
    wide["spec"]["scope"] = "cluster".into();
    let helm = format!(
        "{{{{- if .Values.on }}}}\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {{{{ .Release.Name }}}}\nstringData:\n  password: {PASSWORD}\n{{{{- end }}}}\n"
    );
    let rules = format!("rules:\n  - path: '**'\n    keys: [file:{key}]\n    scope: strict\n");
    let cases: Vec<(&str, String, usize, &str)> = vec![
        (
            "plain.yaml",
            plain_multi,
            2,
            "plaintext Secret payments/db with 1 value",
        ),
        (
            "plain.json",
            string_data,
            1,
            "plaintext Secret s with 1 value",
        ),
        (
            "applied.yaml",
            last_applied,
            1,
            "last-applied-configuration annotation of Secret db holds a Secret's data",
        ),
        (
            "broken.yaml",
            to_yaml(&broken),
            1,
            "malformed EncryptedSecret",
        ),
        (
            "wide.yaml",
            to_yaml(&wide),
            1,
            "scope cluster is wider than rule 1",
        ),
        ("chart.yaml", helm, 1, "checked by its text"),
    ];
    for (name, text, doc, what) in &cases {
        let r = t.p(&format!("repo-{name}"));
        repo(&r);
        std::fs::write(r.join(".kmsecrets.yaml"), &rules).unwrap();
        std::fs::write(r.join("good.yaml"), &good).unwrap();
        std::fs::create_dir_all(r.join("sub")).unwrap();
        std::fs::write(r.join("sub").join(name), text).unwrap();
        let mut c = kms(["guard", "-R", "."]);
        c.cmd.current_dir(&r);
        let out = c.run();
        no_panic(&out);
        assert_eq!(out.code, Some(1), "{name}: {}{}", out.stdout(), out.stderr);
        let lines: Vec<String> = out.stdout().lines().map(String::from).collect();
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert!(
            lines[0].starts_with(&format!("./sub/{name}:{doc}: ")) && lines[0].contains(what),
            "{name}: {lines:?}"
        );
        no_value_in(&out.stdout(), PASSWORD);
        no_value_in(&out.stderr, PASSWORD);
        assert!(
            out.stderr.contains("guard: 1 finding in 1 file"),
            "{}",
            out.stderr
        );
    }
    // a reverted value, found against the last commit
    let r = t.p("repo-revert");
    repo(&r);
    std::fs::write(r.join("db.yaml"), &good).unwrap();
    git(&r, &["add", "."]);
    git(&r, &["commit", "-qm", "v1"]);
    let first = short(&r, "HEAD");
    ok(kms([
        "encrypt",
        "--merge-into",
        r.join("db.yaml").to_str().unwrap(),
        "--from-literal",
        "password=second",
        "--local-key",
        &key,
    ])
    .run());
    git(&r, &["commit", "-qam", "v2"]);
    std::fs::write(r.join("db.yaml"), &good).unwrap();
    let mut c = kms(["guard", "db.yaml"]);
    c.cmd.current_dir(&r);
    let out = c.run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(
        out.stdout(),
        format!(
            "db.yaml:1: EncryptedSecret payments/db: value password reverted to its value of {first} (v1)\n"
        )
    );
    // a clean repository: rules followed, nothing plain
    let r = t.p("repo-clean");
    repo(&r);
    std::fs::write(r.join(".kmsecrets.yaml"), &rules).unwrap();
    std::fs::write(r.join("db.yaml"), &good).unwrap();
    std::fs::write(
        r.join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
    )
    .unwrap();
    std::fs::write(
        r.join("empty.yaml"),
        "kind: Secret\nmetadata: {name: e}\ndata: {}\n",
    )
    .unwrap();
    let mut c = kms(["guard", "-R", "."]);
    c.cmd.current_dir(&r);
    let out = c.run();
    assert_eq!(out.code, Some(0), "{}{}", out.stdout(), out.stderr);
    assert_eq!(out.stdout(), "");
}

/// The shipped `.pre-commit-hooks.yaml`, run by the real pre-commit (PyPI)
/// from a hooks repository: a commit of a plaintext Secret is blocked, an
/// EncryptedSecret goes through.
#[test]
fn pre_commit_runs_the_shipped_hook_and_blocks_a_plaintext_secret() {
    let python = kmsecrets_envtest::peers::venv_python();
    let t = T::new();
    let key = t.keygen("k.key");
    let home = t.p("home");
    std::fs::create_dir_all(&home).unwrap();
    let hooks = t.p("hooks");
    repo(&hooks);
    std::fs::copy(
        kmsecrets_envtest::repo_root().join(".pre-commit-hooks.yaml"),
        hooks.join(".pre-commit-hooks.yaml"),
    )
    .unwrap();
    git(&hooks, &["add", "."]);
    git(&hooks, &["commit", "-qm", "hooks"]);
    let rev = git(&hooks, &["rev-parse", "HEAD"]).trim().to_string();
    let r = t.p("repo");
    repo(&r);
    std::fs::write(
        r.join(".pre-commit-config.yaml"),
        format!(
            "repos:\n  - repo: {}\n    rev: {rev}\n    hooks:\n      - id: kmsecrets-guard-system\n",
            hooks.display()
        ),
    )
    .unwrap();
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let venv_bin = python.parent().unwrap().to_path_buf();
    let path = format!("{}:{path}", venv_bin.display());
    let run = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .current_dir(&r)
            .env("PATH", &path)
            .env("HOME", &home)
            .env("PRE_COMMIT_HOME", home.join("pre-commit"))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap()
    };
    let out = run(&[python.to_str().unwrap(), "-m", "pre_commit", "install"]);
    assert!(out.status.success(), "pre-commit install: {out:?}");
    git(&r, &["add", ".pre-commit-config.yaml"]);
    let out = run(&["git", "commit", "-qm", "config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(
        r.join("oops.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{password: {PASSWORD}}}\n"
        ),
    )
    .unwrap();
    git(&r, &["add", "oops.yaml"]);
    let out = run(&["git", "commit", "-qm", "oops"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the commit went through:\n{all}");
    assert!(
        all.contains("oops.yaml:1: plaintext Secret db with 1 value"),
        "{all}"
    );
    no_value_in(&all, PASSWORD);
    assert_eq!(git(&r, &["log", "--format=%s"]).trim(), "config");

    // the same Secret, encrypted: committed
    std::fs::write(r.join("oops.yaml"), encrypt_fixture(&key, &[])).unwrap();
    git(&r, &["add", "oops.yaml"]);
    let out = run(&["git", "commit", "-qm", "sealed"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(git(&r, &["log", "-1", "--format=%s"]).trim(), "sealed");
}
