//! Papercuts found by trying the CLI as a new user would, each pinned: the
//! endpoint an error names is the one dialled, whatever set it; every
//! file-taking command takes `-f PATH` and positional paths alike;
//! `controller --check-config` prints the configuration in use; and
//! `--merge-into` / `rotate` say what changed, with plurals right.

use std::net::TcpListener;

use crate::aws_errors::encrypt_cmd;
use crate::support::*;

const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/0000aaaa-bb00-cc00-dd00-eeeeeeeeeeee";

#[test]
fn errors_name_the_endpoint_actually_dialled() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for var in ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"] {
        let out = encrypt_cmd(ARN, &["--kms-max-attempts", "1"], true)
            .env(var, format!("http://127.0.0.1:{port}"))
            .run();
        fails(&out, &format!("cannot reach KMS at 127.0.0.1:{port}"));
        assert!(
            !out.stderr.contains("amazonaws.com"),
            "{var}: {}",
            out.stderr
        );
    }
}

#[test]
fn every_file_taking_command_takes_f_and_positional_paths() {
    let t = T::new();
    let key = t.keygen("k.key");
    std::fs::create_dir_all(t.p("secrets/sub")).unwrap();
    t.write("secrets/sub/db.yaml", encrypt_fixture(&key, &[]));
    let dir = t.s("secrets");
    let file = t.s("secrets/sub/db.yaml");
    // decrypt: positional like verify and rotate
    let out = ok(kms(["decrypt", "-R", &dir, "--local-key", &key]).run());
    assert_eq!(yaml_docs(&out.stdout()).len(), 1, "{}", out.stdout());
    let out = ok(kms(["decrypt", &file, "--local-key", &key]).run());
    assert_eq!(yaml_docs(&out.stdout()).len(), 1);
    // verify and rotate: -f like decrypt
    ok(kms(["verify", "-R", "-f", &dir]).run());
    ok(kms(["verify", "-f", &file, "--decrypt", "--local-key", &key]).run());
    ok(kms(["rotate", "-f", &file, "--local-key", &key]).run());
    ok(kms(["rotate", "-R", "-f", &dir, "--local-key", &key, "--dry-run"]).run());
    // edit: -f like the rest
    ok(kms(["edit", "-f", &file, "--local-key", &key])
        .env("EDITOR", "true")
        .run());
    // one of them is required
    let out = kms(["verify"]).run();
    no_panic(&out);
    assert_ne!(out.code, Some(0));
}

#[test]
fn check_config_prints_the_configuration_in_use() {
    let out = ok(kms([
        "controller",
        "--check-config",
        "--unwrap-timeout",
        "7s",
        "--kms-qps",
        "40",
    ])
    .run());
    let text = out.stdout();
    assert!(
        text.contains("unwrap_deadline: Some(\n        7s"),
        "{text}"
    );
    assert!(text.contains("qps: 40.0"), "{text}");
    assert!(text.contains("api protocol: http2\n"), "{text}");
    let out = ok(kms(["controller", "--check-config", "--api-protocol", "http1"]).run());
    assert!(
        out.stdout().contains("api protocol: http1\n"),
        "{}",
        out.stdout()
    );
}

#[test]
fn merge_and_rotate_say_what_changed_with_plurals_right() {
    let t = T::new();
    let key = t.keygen("k.key");
    let f = t.write("db.yaml", encrypt_fixture(&key, &[]));
    let out = ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--from-literal",
        "extra=1",
        "--local-key",
        &key,
    ])
    .run());
    assert!(
        out.stderr.contains("added extra") && out.stderr.contains("(3 values)"),
        "{}",
        out.stderr
    );
    let out = ok(kms([
        "encrypt",
        "--merge-into",
        &f,
        "--from-literal",
        "extra=2",
        "--from-literal",
        "password=new",
        "--local-key",
        &key,
    ])
    .run());
    assert!(
        out.stderr.contains("replaced extra, password") && out.stderr.contains("(3 values)"),
        "{}",
        out.stderr
    );
    let out = ok(kms(["rotate", &f, "--local-key", &key]).run());
    assert!(
        out.stderr.contains("(1 data key, 3 values)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("1 data keys"), "{}", out.stderr);
}
