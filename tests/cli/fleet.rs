//! `rotate`, `rotate --rewrap`, `verify` and `decrypt` over a repository:
//! directories and `-R`, other kinds skipped and counted, `--dry-run`
//! writes nothing, a file that fails is left byte-identical while the
//! others are rewritten, a second rewrap is a no-op, and the summary line.

use std::collections::BTreeMap;

use crate::support::*;

struct Repo {
    t: T,
    key: String,
}

/// repo/{a,b,c}.yaml, repo/sub/deep.yaml (EncryptedSecrets), repo/cm.yaml
/// (a ConfigMap), repo/notes.txt (ignored), repo/two.yaml (two resources).
fn repo() -> Repo {
    let t = T::new();
    let key = t.keygen("k.key");
    let keyarg = format!("file:{key}");
    std::fs::create_dir_all(t.p("repo/sub")).unwrap();
    for (f, name) in [
        ("repo/a.yaml", "a"),
        ("repo/b.yaml", "b"),
        ("repo/c.yaml", "c"),
        ("repo/sub/deep.yaml", "deep"),
    ] {
        let out = ok(kms([
            "encrypt",
            "--key",
            &keyarg,
            "--name",
            name,
            "--namespace",
            "app",
            "--from-literal",
            &format!("k=v-{name}"),
        ])
        .run());
        t.write(f, out.stdout());
    }
    let one = ok(kms([
        "encrypt",
        "--key",
        &keyarg,
        "--name",
        "x",
        "--namespace",
        "app",
        "--from-literal",
        "k=x",
    ])
    .run())
    .stdout();
    let two = ok(kms([
        "encrypt",
        "--key",
        &keyarg,
        "--name",
        "y",
        "--namespace",
        "app",
        "--from-literal",
        "k=y",
    ])
    .run())
    .stdout();
    t.write("repo/two.yaml", format!("{one}---\n{two}"));
    t.write(
        "repo/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n",
    );
    t.write("repo/notes.txt", "not a manifest");
    Repo { t, key }
}

fn snapshot(t: &T) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for f in [
        "repo/a.yaml",
        "repo/b.yaml",
        "repo/c.yaml",
        "repo/sub/deep.yaml",
        "repo/two.yaml",
        "repo/cm.yaml",
        "repo/notes.txt",
    ] {
        out.insert(f.to_string(), t.read(f));
    }
    out
}

#[test]
fn rotate_a_repository_dry_run_then_for_real_with_one_bad_file() {
    let r = repo();
    let t = &r.t;
    let dir = t.s("repo");
    let before = snapshot(t);

    // dry run: says what would change, writes nothing
    let out = ok(kms(["rotate", &dir, "-R", "--dry-run", "--local-key", &r.key]).run());
    assert!(out.stderr.contains("would rotate"), "{}", out.stderr);
    assert!(
        out.stderr.contains("5 would be rewritten, 0 unchanged, 0 failed (1 document(s) of other kinds skipped; 1 file(s) without an EncryptedSecret)"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(t), before, "--dry-run wrote something");

    // without -R the subdirectory is not touched
    let out = ok(kms(["rotate", &dir, "--local-key", &r.key]).run());
    assert!(
        out.stderr.contains("4 rewritten, 0 unchanged, 0 failed"),
        "{}",
        out.stderr
    );
    let after = snapshot(t);
    assert_eq!(after["repo/sub/deep.yaml"], before["repo/sub/deep.yaml"]);
    assert_eq!(
        after["repo/cm.yaml"], before["repo/cm.yaml"],
        "other kinds untouched"
    );
    assert_eq!(after["repo/notes.txt"], before["repo/notes.txt"]);
    for f in ["repo/a.yaml", "repo/b.yaml", "repo/c.yaml", "repo/two.yaml"] {
        assert_ne!(after[f], before[f], "{f} rotated");
    }
    assert_eq!(
        decrypt_values(&t.s("repo/a.yaml"), &[&r.key]),
        strs(&[("k", "v-a")])
    );
    let two = yaml_docs(&t.read_str("repo/two.yaml"));
    assert_eq!(
        two.len(),
        2,
        "both resources of a multi-document file are kept"
    );

    // one file that cannot be processed: it stays byte-identical, the
    // others are rewritten, the exit status says so
    let other = t.keygen("other.key");
    let foreign = ok(kms([
        "encrypt",
        "--key",
        &format!("file:{other}"),
        "--name",
        "f",
        "--namespace",
        "app",
        "--from-literal",
        "k=f",
    ])
    .run())
    .stdout();
    // a multi-document file whose second resource needs a key we do not have
    let mixed = format!("{}---\n{foreign}", t.read_str("repo/a.yaml"));
    t.write("repo/mixed.yaml", &mixed);
    let before = t.read("repo/b.yaml");
    let out = kms(["rotate", &dir, "-R", "--local-key", &r.key]).run();
    no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("failed "), "{}", out.stderr);
    assert!(out.stderr.contains("repo/mixed.yaml"), "{}", out.stderr);
    assert!(
        out.stderr.contains("5 rewritten, 0 unchanged, 1 failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .last()
            .unwrap()
            .starts_with("error: 1 of 7 files failed"),
        "{}",
        out.stderr
    );
    assert_eq!(
        t.read_str("repo/mixed.yaml"),
        mixed,
        "a failed file is never half-rewritten"
    );
    assert_ne!(t.read("repo/b.yaml"), before);
}

#[test]
fn rewrap_a_repository_twice_is_a_no_op_the_second_time() {
    let r = repo();
    let t = &r.t;
    let dir = t.s("repo");
    let new = t.keygen("new.key");
    let newarg = format!("file:{new}");
    let out = ok(kms([
        "rotate",
        "--rewrap",
        "--key",
        &newarg,
        &dir,
        "-R",
        "--local-key",
        &r.key,
    ])
    .run());
    assert!(
        out.stderr.contains("5 rewritten, 0 unchanged, 0 failed"),
        "{}",
        out.stderr
    );
    let once = snapshot(t);
    // values untouched, data key now under the new key only
    let a = yaml(&t.read_str("repo/a.yaml"));
    assert_eq!(a["spec"]["dataKeys"].as_array().unwrap().len(), 1);
    assert_eq!(
        decrypt_values(&t.s("repo/sub/deep.yaml"), &[&new]),
        strs(&[("k", "v-deep")])
    );
    let out = ok(kms([
        "rotate",
        "--rewrap",
        "--key",
        &newarg,
        &dir,
        "-R",
        "--local-key",
        &new,
    ])
    .run());
    assert!(
        out.stderr.contains("0 rewritten, 5 unchanged, 0 failed"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(t), once, "a no-op rewrap writes nothing");
}

#[test]
fn verify_and_decrypt_sweep_a_repository() {
    let r = repo();
    let t = &r.t;
    let dir = t.s("repo");
    let out = ok(kms(["verify", &dir, "-R"]).run());
    assert_eq!(out.stdout().lines().count(), 6, "{}", out.stdout());
    assert!(
        out.stderr
            .contains("verified 6 EncryptedSecret(s) in 5 files, 0 failed"),
        "{}",
        out.stderr
    );
    // decrypt: every Secret of the tree, in path order; other kinds skipped
    let out = ok(kms(["decrypt", "-f", &dir, "-R", "--local-key", &r.key]).run());
    let names: Vec<String> = yaml_docs(&out.stdout())
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c", "deep", "x", "y"]);
    assert!(
        out.stderr.contains("1 documents of other kinds skipped"),
        "{}",
        out.stderr
    );
    // a tampered file fails verification and is named; the rest still run
    let a = t.read_str("repo/b.yaml");
    let es = yaml(&a);
    let ct = ct(&es, "k").to_string();
    t.write("repo/b.yaml", a.replace(&ct, &flip_bit(&ct, |n| n / 2, 1)));
    let out = kms(["verify", &dir, "-R", "--decrypt", "--local-key", &r.key]).run();
    no_panic(&out);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("failed ") && out.stderr.contains("repo/b.yaml"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("repo/b.yaml").count(),
        1,
        "the failed line names the file once: {}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("verified 5 EncryptedSecret(s) in 5 files, 1 failed"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout().lines().count(), 5);
}

/// `-R` never leaves the tree: a link to a
/// file outside is neither rewritten by `rotate` nor printed by `decrypt
/// --passthrough`; it is skipped and named. `rotate` follows no link at all
/// (an in-tree target is rotated as itself) and never writes through one,
/// even when it is named on the command line.
#[test]
fn recursive_walks_never_leave_the_tree() {
    let r = repo();
    let t = &r.t;
    std::fs::create_dir_all(t.p("outside")).unwrap();
    let es_outside = t.read("repo/a.yaml");
    t.write("outside/es.yaml", &es_outside);
    t.write(
        "outside/config.yaml",
        "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user: {token: OUTSIDE-TOKEN-5e1f}\n",
    );
    std::os::unix::fs::symlink(t.p("outside/es.yaml"), t.p("repo/evil.yaml")).unwrap();
    std::os::unix::fs::symlink(t.p("outside/config.yaml"), t.p("repo/sub/kube.yaml")).unwrap();
    std::os::unix::fs::symlink(t.p("repo/c.yaml"), t.p("repo/alias.yaml")).unwrap();
    let c_before = t.read("repo/c.yaml");

    let out = ok(kms(["rotate", "-R", &t.s("repo"), "--local-key", &r.key]).run());
    assert_eq!(
        t.read("outside/es.yaml"),
        es_outside,
        "outside file rewritten"
    );
    assert!(
        out.stderr.contains("skipped 3 symbolic links"),
        "{}",
        out.stderr
    );
    assert_ne!(
        t.read("repo/c.yaml"),
        c_before,
        "in-tree target rotated as itself"
    );
    assert!(
        std::fs::symlink_metadata(t.p("repo/alias.yaml"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let out = ok(kms([
        "decrypt",
        "-f",
        &t.s("repo"),
        "-R",
        "--passthrough",
        "--local-key",
        &r.key,
    ])
    .run());
    assert!(!out.stdout().contains("OUTSIDE-TOKEN"), "{}", out.stdout());
    assert!(
        out.stderr
            .contains("skipped 2 symbolic links (they lead out"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("evil.yaml") && out.stderr.contains("kube.yaml"));

    // named on its own: read through, never written through
    let out = kms(["rotate", &t.s("repo/evil.yaml"), "--local-key", &r.key]).run();
    fails(&out, "never writes through");
    assert_eq!(t.read("outside/es.yaml"), es_outside);
}
