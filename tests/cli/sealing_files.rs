//! `--key pub:FILE` with bad SealingKey files: each is one `error: ` line
//! naming the problem, exit ≠ 0, nothing on stdout, and a `--merge-into`
//! target byte-identical afterwards. A good file seals offline (the control
//! case: the harness, not the files, would otherwise be what fails).

use crate::support::*;

const RSA_2048: &str = include_str!("../vectors/rsa-2048-public-test-only.pem");
const RSA_1024: &str = include_str!("../vectors/rsa-1024-public-test-only.pem");
const EC_P256: &str = include_str!("../vectors/ec-p256-public-test-only.pem");
const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/0f1e2d3c-offline";

fn sealing_key(kind: &str, pem: &str) -> String {
    let mut out = format!(
        "apiVersion: kmsecrets.dev/v1alpha1\nkind: {kind}\nkeyId: {ARN}\nalgorithm: RSAES_OAEP_SHA_256\npublicKey: |\n"
    );
    for line in pem.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn seal(t: &T, file: &str) -> Out {
    kms([
        "encrypt",
        "--key",
        &format!("pub:{file}"),
        "--name",
        "app",
        "--namespace",
        "default",
        "--from-literal",
        &format!("password={PASSWORD}"),
    ])
    .env("HOME", t.s(""))
    .run()
}

#[test]
fn bad_sealing_key_files_fail_in_one_line_and_write_nothing() {
    let t = T::new();
    let good = t.write("good.yaml", sealing_key("SealingKey", RSA_2048));
    let sealed = ok(seal(&t, &good)).stdout();
    assert!(sealed.contains("algorithm: RSAES_OAEP_SHA_256"), "{sealed}");
    let target = t.write("target.yaml", &sealed);

    let truncated: String = RSA_2048.chars().take(RSA_2048.len() / 2).collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "not-yaml",
            "apiVersion: [unclosed\n  kind: {\n".into(),
            "SealingKey",
        ),
        ("other-kind", sealing_key("Secret", RSA_2048), "SealingKey"),
        (
            "truncated",
            sealing_key("SealingKey", &truncated),
            "PUBLIC KEY",
        ),
        ("ec", sealing_key("SealingKey", EC_P256), "RSA"),
        ("rsa-1024", sealing_key("SealingKey", RSA_1024), "RSA 1024"),
        ("empty", String::new(), "SealingKey"),
    ];
    for (name, text, fragment) in cases {
        let f = t.write(&format!("{name}.yaml"), &text);
        let out = seal(&t, &f);
        eprintln!("{name}: {}", out.stderr.trim());
        fails(&out, fragment);
        assert!(!out.stderr.contains(PASSWORD), "{name}");
        // adding a value into an existing file with the bad key: untouched
        let out = kms([
            "encrypt",
            "--key",
            &format!("pub:{f}"),
            "--from-literal",
            "extra=1",
            "--merge-into",
            &target,
        ])
        .env("HOME", t.s(""))
        .run();
        fails(&out, "");
        assert_eq!(t.read_str("target.yaml"), sealed, "{name}: target touched");
    }
    // a file that does not exist
    let out = seal(&t, &t.s("missing.yaml"));
    fails(&out, "missing.yaml");
}
