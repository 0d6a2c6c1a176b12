//! Install paths: the Python checks of the chart, deploy/ and monitoring
//! (real Helm library, kubectl kustomize, Kubernetes schemas) run with the
//! real binary and the real controller's /metrics; then the chart's CRD and
//! rendered controller args are used end to end against the test server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, repo_root, venv_python, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_kmsecrets");

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn kubectl(kubeconfig: &std::path::Path) -> Command {
    assert!(
        std::path::Path::new("/usr/bin/kubectl").exists(),
        "kubectl 1.32 is expected at /usr/bin/kubectl (apt-get install kubectl)"
    );
    let mut c = Command::new("/usr/bin/kubectl");
    c.env("KUBECONFIG", kubeconfig);
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Controller args exactly as the chart renders them with default values.
fn rendered_chart_args(py: &std::path::Path) -> Vec<String> {
    let script = "import sys, json; sys.path.insert(0, 'tests/install'); import check_install as c, helm_python as h; \
                  objs = c.helm_render(h, {}, 'default'); dep = [o for o in objs if o['kind'] == 'Deployment'][0]; \
                  print(json.dumps(c.controller_args(dep)))";
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rendering the chart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_and_manifests_pass_install_checks_and_drive_the_controller() {
    let py = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let server = kmsecrets_testserver::TestServer::start("127.0.0.1:0")
        .await
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();

    // The chart's CRD, applied with kubectl (default client-side validation).
    ok(kubectl(&kubeconfig)
        .args(["apply", "-f", "charts/kmsecrets/crds/"])
        .current_dir(repo_root()));
    ok(kubectl(&kubeconfig).args(["create", "namespace", "kmsecrets-system"]));

    // The controller with the chart's rendered args (+ local wiring).
    let key = dir.path().join("local.key");
    ok(Command::new(BIN).arg("keygen").arg(&key));
    let mut args = rendered_chart_args(&py);
    assert_eq!(args[0], "controller");
    // the in-memory API server has no TokenReview: /metrics in plain HTTP
    // here (the HTTPS path is proven on the real apiserver, real_cluster.rs)
    assert!(
        args.iter().any(|a| a.starts_with("--metrics-addr=")),
        "the chart serves /metrics over HTTPS by default: {args:?}"
    );
    args.retain(|a| !a.starts_with("--metrics-"));
    args.push("--metrics-secure=false".into());
    let port = free_port();
    args.extend([
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--http-addr=127.0.0.1:{port}"),
        format!("--local-key={}", key.display()),
    ]);
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    let _controller = Proc(
        Command::new(BIN)
            .args(&args)
            .env("POD_NAMESPACE", "kmsecrets-system")
            .env("POD_NAME", "install-test")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "controller /metrics did not come up"
    );
    assert!(http_get(port, "/healthz").starts_with("ok"));
    assert!(http_get(port, "/readyz").starts_with("ok"));

    // An EncryptedSecret applied with kubectl materialises a Secret.
    let es = ok(Command::new(BIN).args([
        "encrypt",
        "--key",
        &format!("file:{}", key.display()),
        "--name",
        "web",
        "-n",
        "default",
        "--from-literal",
        "token=abc123",
    ]));
    std::fs::write(dir.path().join("es.yaml"), es).unwrap();
    ok(kubectl(&kubeconfig)
        .args(["apply", "-f"])
        .arg(dir.path().join("es.yaml")));
    let start = Instant::now();
    loop {
        let out = kubectl(&kubeconfig)
            .args([
                "get",
                "secret",
                "web",
                "-n",
                "default",
                "-o",
                "jsonpath={.data.token}",
            ])
            .output()
            .unwrap();
        if out.status.success() && out.stdout == b"YWJjMTIz" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Secret did not materialise; controller log:\n{}",
            std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The real controller's /metrics feeds the dashboard/alerts check.
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains("kmsecrets_build_info"), "{metrics}");
    let metrics_file = dir.path().join("metrics.txt");
    std::fs::write(&metrics_file, &metrics).unwrap();

    let out = Command::new(&py)
        .arg("tests/install/check_install.py")
        .arg("--kmsecrets-bin")
        .arg(BIN)
        .arg("--metrics-file")
        .arg(&metrics_file)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "install checks failed (see above)");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("install checks:") && last.ends_with(" 0 failed"),
        "{last}"
    );
    assert!(!text.contains("not run:"), "every check must run: {text}");
    server.shutdown().await;
}
