//! `kmsecrets dev` as a user runs it: its in-memory API server serves
//! decrypted Secrets, so it answers only over HTTPS and only the bearer
//! token written into its 0600 kubeconfig (kubectl sends no credentials over
//! plain HTTP, hence the TLS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the dev process on drop (also when an assertion fails).
struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kube client from kubeconfig text.
async fn client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// HTTP status of GET `path`.
async fn status(c: &kube::Client, path: &str) -> u16 {
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    match c.request_text(req).await {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn dev_server_requires_the_token_from_its_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsecrets"))
        .args(["dev", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _dev = Dev(child);
    // kept open for the whole test: a closed pipe would fail the dev
    // process's next print
    let mut lines = BufReader::new(stdout).lines();
    let start = Instant::now();
    let mut banner = false;
    for line in lines.by_ref() {
        if line.unwrap().contains("API server https://") {
            banner = true;
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no banner");
    }
    assert!(banner, "the banner names an https API server");
    let kubeconfig = dir.path().join("kubeconfig");
    assert_eq!(mode(&kubeconfig), 0o600, "kubeconfig mode");
    assert_eq!(mode(&dir.path().join("local.key")), 0o600, "local.key mode");
    let kc = std::fs::read_to_string(&kubeconfig).unwrap();
    let token = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("token in kubeconfig")
        .to_string();
    assert!(token.len() >= 32 && !token.contains("dummy"), "{token}");
    assert!(kc.contains("server: https://"), "{kc}");
    assert!(kc.contains("certificate-authority-data:"), "{kc}");

    let good = client(&kc).await;
    let no_token =
        client(&kc.replace(&format!("    token: {token}\n"), "    username: nobody\n")).await;
    let wrong = client(&kc.replace(&token, "not-the-token")).await;
    for path in [
        "/api/v1/namespaces/default/secrets",
        "/apis/kmsecrets.dev/v1alpha1/encryptedsecrets",
        "/_testserver/counters",
    ] {
        assert_eq!(status(&no_token, path).await, 401, "{path} without a token");
        assert_eq!(status(&wrong, path).await, 401, "{path} with a wrong token");
        assert_eq!(status(&good, path).await, 200, "{path} with the token");
    }

    // and the kubeconfig works for kubectl (TLS with the written CA + token)
    let kubectl = Command::new("/usr/bin/kubectl")
        .args(["get", "secrets", "-A"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("/usr/bin/kubectl is needed by this test; install kubectl");
    assert!(
        kubectl.status.success(),
        "{}",
        String::from_utf8_lossy(&kubectl.stderr)
    );
}
