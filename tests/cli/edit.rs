//! `edit` and the in-place rewrites shared with `rotate` and `--merge-into`:
//! unowned fields, file mode, JSON files and symlinks survive.

use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::support::*;

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

#[test]
fn rewrites_never_go_through_symlinks() {
    let t = T::new();
    let key = t.keygen("k");
    let real = t.write("real.yaml", encrypt_fixture(&key, &[]));
    let before = t.read_str("real.yaml");
    std::os::unix::fs::symlink(&real, t.p("link.yaml")).unwrap();
    let out = kms([
        "encrypt",
        "--merge-into",
        &t.s("link.yaml"),
        "--from-literal",
        "extra=1",
        "--local-key",
        &key,
    ])
    .run();
    fails(&out, "never writes through");
    assert!(out.stderr.contains("link.yaml"), "{}", out.stderr);
    assert!(
        std::fs::symlink_metadata(t.p("link.yaml"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "link kept"
    );
    assert_eq!(t.read_str("real.yaml"), before, "target untouched");
}

/// `edit` interrupted by each signal while the editor runs: SIGINT and
/// SIGQUIT are ignored (the edit completes), SIGTERM and SIGHUP stop the
/// editor, exit 128 + signal, leave the file unchanged and leave no
/// plaintext anywhere: the scratch directory (0700, memory-backed where
/// possible) is gone and no file under the temp dirs holds the value.
#[test]
fn edit_interrupted_by_each_signal_leaves_no_plaintext() {
    use std::time::{Duration, Instant};
    for (sig, signo, stops) in [
        ("INT", 2, false),
        ("QUIT", 3, false),
        ("TERM", 15, true),
        ("HUP", 1, true),
    ] {
        let t = T::new();
        let key = t.keygen("k.key");
        // a value no other test writes, searched for afterwards
        let canary = format!(
            "canary-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let lit = format!("canary={canary}");
        let f = t.write("es.yaml", encrypt_fixture(&key, &["--from-literal", &lit]));
        let before = t.read("es.yaml");
        let (record, go) = (t.s("record"), t.s("go"));
        // records the scratch path, its directory's mode and its own pid,
        // then waits for the test before editing
        let ed = script(
            &t,
            "ed.sh",
            &format!(
                "echo \"$1\" > '{record}.tmp'\nls -ld \"$(dirname \"$1\")\" >> '{record}.tmp'\necho $$ >> '{record}.tmp'\nmv '{record}.tmp' '{record}'\nwhile [ ! -e '{go}' ]; do sleep 0.05; done\nsed 's/^  password: .*/  password: after-{sig}/' \"$1\" > \"$1.new\"\nmv \"$1.new\" \"$1\""
            ),
        );
        let tmp = t.p("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let mut cmd = kms(["edit", &f, "--local-key", &key]).env("EDITOR", format!("sh {ed}"));
        cmd.cmd
            .env("TMPDIR", &tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.cmd.spawn().unwrap();
        let start = Instant::now();
        while !t.p("record").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{sig}: the editor never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let rec = t.read_str("record");
        let mut lines = rec.lines();
        let scratch = Path::new(lines.next().unwrap()).to_path_buf();
        let dir_mode = lines.next().unwrap();
        let editor_pid = lines.next().unwrap().trim().to_string();
        assert!(
            dir_mode.starts_with("drwx------"),
            "{sig}: scratch dir must be 0700: {dir_mode}"
        );
        let scratch_dir = scratch.parent().unwrap().to_path_buf();
        if Path::new("/dev/shm").is_dir() {
            assert!(
                !scratch_dir.starts_with(&tmp),
                "{sig}: /dev/shm exists, so the scratch must not be on disk: {}",
                scratch_dir.display()
            );
        }
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        if stops {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(128 + signo), "{sig}: {stderr}");
            assert!(
                stderr.contains(&format!("stopped by SIG{sig}")),
                "{sig}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert_eq!(t.read("es.yaml"), before, "{sig}: the file is unchanged");
            // the editor was stopped too
            let start = Instant::now();
            while std::process::Command::new("kill")
                .args(["-0", &editor_pid])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
            {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "{sig}: the editor still runs"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                child.try_wait().unwrap().is_none(),
                "{sig} must not stop kmsecrets while the editor runs"
            );
            std::fs::write(&go, "").unwrap();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{sig}: {stderr}");
            assert_eq!(
                decrypt_values(&f, &[&key]),
                strs(&[
                    ("username", USERNAME),
                    ("password", &format!("after-{sig}")),
                    ("canary", &canary)
                ]),
                "{sig}: the edit completed"
            );
        }
        assert!(
            !scratch_dir.exists(),
            "{sig}: {} left behind",
            scratch_dir.display()
        );
        // no file under either temp location holds a plaintext value
        for root in [tmp.clone(), Path::new("/dev/shm").to_path_buf()] {
            let hits = files_containing(&root, canary.as_bytes());
            assert!(hits.is_empty(), "{sig}: plaintext left in {hits:?}");
        }
    }
}

fn files_containing(root: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return hits;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(ft) if ft.is_dir() => hits.extend(files_containing(&p, needle)),
            Ok(ft)
                if ft.is_file()
                    && std::fs::read(&p)
                        .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) =>
            {
                hits.push(p);
            }
            _ => {}
        }
    }
    hits
}
