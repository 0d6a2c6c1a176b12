//! Value sources (`--from-file`, `--from-env-file`, `--from-literal`,
//! `--generate`), the template carried from the input manifest, and a bad
//! `--from-literal` that must not echo the secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

use crate::support::*;

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
