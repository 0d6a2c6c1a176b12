//! The `kmsecrets-testserver` binary: writes its kubeconfig once ready,
//! serves kubectl, stops on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

#[test]
fn binary_writes_kubeconfig_and_stops_on_sigterm() {
    assert!(
        std::path::Path::new("/usr/bin/kubectl").exists(),
        "/usr/bin/kubectl is missing: install kubectl 1.32 to run this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("nested/kubeconfig");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kmsecrets-testserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "kubeconfig was not written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = std::process::Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"));

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("server did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut url = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut url).unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
}
