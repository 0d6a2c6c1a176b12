//! Real `kubectl` (1.32, /usr/bin/kubectl) against the test server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const KUBECTL: &str = "/usr/bin/kubectl";

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
    _dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: &kmsecrets_testserver::TestServer) -> Kubectl {
        assert!(
            Path::new(KUBECTL).exists(),
            "{KUBECTL} is missing: install kubectl 1.32 (e.g. `apt-get install kubectl` from the Kubernetes apt repository) to run these tests"
        );
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl {
            kubeconfig,
            cache: dir.path().join("cache"),
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl, asserts success, returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().await.expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        stdout
    }
}

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

#[tokio::test]
async fn kubectl_crd_apply_get_patch_wait_label_delete() {
    let server = start().await;
    let k = Kubectl::new(&server);

    let out = k
        .ok(&["apply", "-f", &fixture("encryptedsecret-crd.yaml")])
        .await;
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/encryptedsecrets.kmsecrets.dev created"
        ),
        "{out}"
    );
    let out = k.ok(&["get", "crd"]).await;
    assert!(out.contains("encryptedsecrets.kmsecrets.dev"), "{out}");

    // Client-side apply, then re-apply unchanged.
    let sample = fixture("encryptedsecret-sample.yaml");
    let out = k.ok(&["apply", "-f", &sample]).await;
    assert!(
        out.contains("encryptedsecret.kmsecrets.dev/sample created"),
        "{out}"
    );
    let writes = server.counters().total_writes();
    let out = k.ok(&["apply", "-f", &sample]).await;
    assert!(
        out.contains("encryptedsecret.kmsecrets.dev/sample unchanged"),
        "{out}"
    );
    assert_eq!(
        server.counters().total_writes(),
        writes,
        "unchanged apply sends no write"
    );

    // Server-side apply, twice.
    let ssa = fixture("encryptedsecret-ssa.yaml");
    let out = k.ok(&["apply", "--server-side", "-f", &ssa]).await;
    assert!(
        out.contains("encryptedsecret.kmsecrets.dev/sample-ssa serverside-applied"),
        "{out}"
    );
    let rv = server.resource_version();
    k.ok(&["apply", "--server-side", "-f", &ssa]).await;
    assert_eq!(
        server.resource_version(),
        rv,
        "identical server-side apply is a no-op"
    );

    let yaml = k.ok(&["get", "esec", "sample", "-o", "yaml"]).await;
    for want in [
        "kind: EncryptedSecret",
        "name: sample",
        "keyId: alias/kmsecrets",
        "generation: 1",
        "uid: ",
    ] {
        assert!(yaml.contains(want), "missing {want:?} in:\n{yaml}");
    }

    // Printer columns, by short name.
    let table = k.ok(&["get", "esec"]).await;
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "READY", "REASON", "KEY", "AGE"] {
        assert!(header.contains(col), "missing column {col} in:\n{table}");
    }

    // wait --for=jsonpath, satisfied by a status patch made while waiting.
    let mut wait = k
        .command(&[
            "wait",
            "--for=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}=True",
            "esec/sample",
            "--timeout=20s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = k
        .ok(&[
            "patch",
            "esec",
            "sample",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"keyId":"alias/kmsecrets","conditions":[{"type":"Ready","status":"True","reason":"Decrypted"}]}}"#,
        ])
        .await;
    assert!(out.contains("patched"), "{out}");
    let status = wait.wait().await.unwrap();
    assert!(status.success(), "kubectl wait failed");
    let table = k.ok(&["get", "esec", "sample"]).await;
    let row = table.lines().nth(1).unwrap_or_default();
    for cell in ["sample", "True", "Decrypted", "alias/kmsecrets"] {
        assert!(row.contains(cell), "missing {cell} in row: {table}");
    }

    let out = k.ok(&["label", "esec", "sample", "tier=web"]).await;
    assert!(out.contains("labeled"), "{out}");
    let out = k.ok(&["get", "esec", "-l", "tier=web", "-o", "name"]).await;
    assert_eq!(out.trim(), "encryptedsecret.kmsecrets.dev/sample");
    let out = k
        .ok(&["get", "esec", "-l", "tier notin (web)", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "encryptedsecret.kmsecrets.dev/sample-ssa");

    // delete --cascade=orphan keeps the dependent, without its ownerReference.
    let uid = k
        .ok(&[
            "get",
            "esec",
            "sample-ssa",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await;
    let dependent = format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"sample-ssa","namespace":"default","ownerReferences":[{{"apiVersion":"kmsecrets.dev/v1alpha1","kind":"EncryptedSecret","name":"sample-ssa","uid":"{uid}","controller":true}}]}},"stringData":{{"a":"b"}}}}"#
    );
    let dep_file = k._dir.path().join("dependent.json");
    std::fs::write(&dep_file, dependent).unwrap();
    k.ok(&["apply", "-f", dep_file.to_str().unwrap()]).await;
    let out = k
        .ok(&["delete", "esec", "sample-ssa", "--cascade=orphan"])
        .await;
    assert!(out.contains("deleted"), "{out}");
    let refs = k
        .ok(&[
            "get",
            "secret",
            "sample-ssa",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ])
        .await;
    assert!(refs.trim().is_empty(), "ownerReferences left: {refs}");

    // Plain delete waits until the object is gone.
    let out = k.ok(&["delete", "-f", &sample]).await;
    assert!(
        out.contains("encryptedsecret.kmsecrets.dev \"sample\" deleted"),
        "{out}"
    );
    let out = k.ok(&["get", "esec", "-o", "name"]).await;
    assert!(out.trim().is_empty(), "{out}");
    server.shutdown().await;
}

#[tokio::test]
async fn kubectl_secrets_configmaps_namespaces_events() {
    let server = start().await;
    let k = Kubectl::new(&server);

    let out = k
        .ok(&[
            "create",
            "secret",
            "generic",
            "gen",
            "--from-literal=user=admin",
        ])
        .await;
    assert!(out.contains("secret/gen created"), "{out}");
    let v = k
        .ok(&[
            "get",
            "secret",
            "gen",
            "-o",
            "jsonpath={.type} {.data.user}",
        ])
        .await;
    assert_eq!(v, "Opaque YWRtaW4=");

    // stringData is merged into data; re-applying is unchanged.
    let plain = fixture("secret-stringdata.yaml");
    k.ok(&["apply", "-f", &plain]).await;
    let data = k
        .ok(&["get", "secret", "plain", "-o", "jsonpath={.data}"])
        .await;
    assert!(
        data.contains(r#""username":"YWRtaW4=""#) && data.contains(r#""token":"dG9rZW4=""#),
        "{data}"
    );
    let out = k.ok(&["get", "secret", "plain", "-o", "yaml"]).await;
    assert!(!out.contains("\nstringData:"), "{out}");
    let table = k.ok(&["get", "secrets"]).await;
    assert!(
        table.lines().next().unwrap_or_default().contains("TYPE"),
        "{table}"
    );
    assert!(
        table.contains("plain") && table.contains("Opaque"),
        "{table}"
    );

    k.ok(&["create", "configmap", "cm", "--from-literal=a=b"])
        .await;
    k.ok(&["create", "namespace", "scratch"]).await;
    k.ok(&[
        "-n",
        "scratch",
        "create",
        "secret",
        "generic",
        "inner",
        "--from-literal=a=b",
    ])
    .await;
    let out = k.ok(&["delete", "namespace", "scratch"]).await;
    assert!(out.contains("deleted"), "{out}");
    let out = k.ok(&["get", "namespaces", "-o", "name"]).await;
    assert!(!out.contains("scratch"), "{out}");
    assert_eq!(
        server.object_count("", "secrets"),
        2,
        "namespace content deleted"
    );

    k.ok(&["create", "-f", &fixture("event.yaml")]).await;
    let out = k.ok(&["get", "events.events.k8s.io"]).await;
    assert!(
        out.contains("Synced") && out.contains("encryptedsecret/sample"),
        "{out}"
    );
    let out = k.ok(&["get", "events"]).await;
    assert!(
        out.contains("Synced") && out.contains("Secret default/sample written"),
        "{out}"
    );
    let msg = k
        .ok(&[
            "get",
            "events",
            "-o",
            "jsonpath={.items[0].involvedObject.kind}",
        ])
        .await;
    assert_eq!(msg, "EncryptedSecret");
    server.shutdown().await;
}
