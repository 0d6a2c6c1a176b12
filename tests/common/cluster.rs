//! End-to-end harness: one of two API-server backends — the real control
//! plane (etcd + kube-apiserver + kube-controller-manager v1.37.2, from
//! `kmsecrets-envtest`) or the in-process `kmsecrets-testserver` — real
//! `kubectl` against it, the real `kmsecrets` binary as CLI and as controller
//! process (killed on drop), a local KMS key, and polling helpers with
//! deadlines. Scenarios take a [`Backend`] so one list runs on both.
//!
//! Must run inside a multi-thread tokio runtime: the API server's tasks run
//! on the worker threads while the test body (which may block on a child
//! process or a metrics scrape) runs on the `block_on` thread.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kmsecrets::api::EncryptedSecret;
use kmsecrets_envtest::ControlPlane;
use kmsecrets_testserver::{Counters, TestServer};
use kube::Api;
use serde_json::Value;

pub const KUBECTL: &str = "/usr/bin/kubectl";

/// The `kmsecrets` binary cargo built for this test, or, for an example
/// that includes this harness, `KMSECRETS_BIN` or the binary beside it in
/// `target/<profile>/`.
pub fn kmsecrets_bin() -> &'static str {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_kmsecrets") {
        return bin;
    }
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(b) = std::env::var("KMSECRETS_BIN") {
            return b;
        }
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/examples/NAME → target/<profile>/kmsecrets
        let bin = exe
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("kmsecrets"))
            .expect("target dir");
        assert!(
            bin.exists(),
            "{} missing: cargo build --bin kmsecrets (same profile) first, or set KMSECRETS_BIN",
            bin.display()
        );
        bin.display().to_string()
    })
}

/// Fails (never skips) when kubectl is missing.
pub fn require_kubectl() {
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} not found: the end-to-end tests drive the API server with real kubectl. \
         Install it (e.g. `curl -LO https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl && \
         install -m 0755 kubectl /usr/bin/kubectl`) and rerun"
    );
}

pub use kmsecrets_envtest::eventually;

/// Removes ANSI colour escapes (the text log format colours even when
/// stderr is a file).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Which API server a scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The project's in-memory server (`kmsecrets-testserver`).
    Memory,
    /// Real etcd + kube-apiserver + kube-controller-manager.
    Real,
}

pub enum Server {
    Memory(TestServer),
    Real(Box<ControlPlane>),
}

/// How a scenario breaks the controller's watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFault {
    /// In-memory: expire every watch (in-stream 410). Real: SIGTERM and
    /// restart kube-apiserver (streams end; a relist follows).
    Expire,
    /// In-memory: drop every stream. Real: SIGKILL and restart kube-apiserver.
    Drop,
}

/// One test's cluster: API server, kubeconfig, local KMS key, CRD installed.
pub struct Cluster {
    pub backend: Backend,
    pub server: Server,
    kubectl_bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    /// Local key-encryption key (`kmsecrets keygen`).
    pub key: PathBuf,
    pub client: kube::Client,
}

impl Cluster {
    /// Starts the backend and installs the CRD the way a user does:
    /// `kmsecrets crd | kubectl apply -f -`.
    pub async fn start_on(backend: Backend) -> Cluster {
        Cluster::start_with(backend, true).await
    }

    /// Same; installs the CRD only with `install_crd` (Helm tests let the
    /// chart install it).
    pub async fn start_with(backend: Backend, install_crd: bool) -> Cluster {
        // Both backends wait for the pinned tools: the first test of a run
        // builds them (minutes, both cores), and a timing-sensitive scenario
        // must not run beside that build.
        kmsecrets_envtest::tools_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let (server, kubectl_bin) = match backend {
            Backend::Memory => {
                require_kubectl();
                let server = TestServer::start("127.0.0.1:0")
                    .await
                    .expect("start test API server");
                server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
                (Server::Memory(server), PathBuf::from(KUBECTL))
            }
            Backend::Real => {
                let cp = ControlPlane::start()
                    .await
                    .unwrap_or_else(|e| panic!("start the real control plane: {e}"));
                eprintln!("control plane ready in {:?}", cp.start_time);
                std::fs::copy(cp.kubeconfig(), &kubeconfig).expect("kubeconfig");
                (
                    Server::Real(Box::new(cp)),
                    kmsecrets_envtest::tool("kubectl"),
                )
            }
        };
        let key = dir.path().join("local.key");
        check(
            Command::new(kmsecrets_bin())
                .arg("keygen")
                .arg(&key)
                .output()
                .expect("run kmsecrets keygen"),
            "kmsecrets keygen",
        );
        let client = kmsecrets::cli::controller::kube_client(Some(&kubeconfig), Default::default())
            .await
            .expect("kube client");
        let c = Cluster {
            backend,
            server,
            kubectl_bin,
            dir,
            kubeconfig,
            key,
            client,
        };
        if install_crd {
            let crd = c.kmsecrets(&["crd"]);
            c.kubectl_stdin(&["apply", "-f", "-"], &crd).await;
            c.wait_crd().await;
        }
        c
    }

    /// Waits for the CRD to be Established, then refreshes kubectl's
    /// discovery cache (`api-resources` invalidates it; without this a
    /// kubectl run that cached discovery before the CRD existed does not
    /// know `esec` for hours).
    pub async fn wait_crd(&self) {
        if self.backend == Backend::Real {
            self.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd/encryptedsecrets.kmsecrets.dev",
                "--timeout=30s",
            ])
            .await;
        }
        let what = "kubectl discovery lists encryptedsecrets";
        eventually(Duration::from_secs(30), what, async || {
            self.kubectl_raw(&["api-resources", "--api-group=kmsecrets.dev", "-o", "name"])
                .await
                .stdout
                .starts_with(b"encryptedsecrets")
        })
        .await;
    }

    /// How long the default waits allow. Real: 60 s, because after a
    /// kube-apiserver restart kube-runtime's watcher reconnects with its
    /// default backoff (0.8 s doubling to 30 s), where the in-memory
    /// server's expired or dropped watch is re-established at once.
    pub fn patience(&self) -> Duration {
        match self.backend {
            Backend::Memory => Duration::from_secs(20),
            Backend::Real => Duration::from_secs(60),
        }
    }

    /// Replaces the CRD's `spec` schema with "any object" (status
    /// subresource kept), so malformed specs can be stored.
    pub async fn loosen_crd_schema(&self) {
        let mut crd = serde_json::to_value(kmsecrets::api::crd()).expect("CRD json");
        for v in crd["spec"]["versions"].as_array_mut().expect("versions") {
            v["schema"]["openAPIV3Schema"]["properties"]["spec"] =
                serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        }
        self.kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &crd.to_string(),
        )
        .await;
    }

    /// Path of the kubectl this backend uses (real: the pinned v1.37.2 build).
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl_bin
    }

    /// The in-memory server (None on the real backend).
    pub fn memory(&self) -> Option<&TestServer> {
        match &self.server {
            Server::Memory(s) => Some(s),
            Server::Real(_) => None,
        }
    }

    /// The real control plane (None on the in-memory backend).
    pub fn real(&self) -> Option<&ControlPlane> {
        match &self.server {
            Server::Real(cp) => Some(cp),
            Server::Memory(_) => None,
        }
    }

    /// API requests so far by (verb, resource), in the in-memory server's
    /// vocabulary (get, list, watch, create, update, patch, delete). On the
    /// real backend: the apiserver's `apiserver_request_total`, which also
    /// counts kube-controller-manager's and kubectl's requests.
    pub async fn counters(&self) -> Counters {
        match &self.server {
            Server::Memory(s) => s.counters(),
            Server::Real(cp) => {
                let raw = cp.request_counts().await.expect("apiserver /metrics");
                Counters::from_counts(raw.into_iter().map(|((verb, res), n)| {
                    let verb = match verb.as_str() {
                        "POST" => "create",
                        "PUT" => "update",
                        "PATCH" | "APPLY" => "patch",
                        v => return ((v.to_ascii_lowercase(), res), n),
                    };
                    ((verb.to_string(), res), n)
                }))
            }
        }
    }

    /// Breaks every open watch (see [`WatchFault`]).
    pub async fn break_watches(&self, fault: WatchFault) {
        match &self.server {
            Server::Memory(s) => match fault {
                WatchFault::Expire => s.faults().expire_watches(),
                WatchFault::Drop => s.faults().drop_streams(),
            },
            Server::Real(cp) => {
                let took = cp
                    .restart_apiserver(fault == WatchFault::Drop)
                    .await
                    .expect("restart kube-apiserver");
                eprintln!("kube-apiserver restarted ({fault:?}) in {took:?}");
            }
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn kubectl_cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.kubectl_bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl; returns its output whatever the exit status.
    pub async fn kubectl_raw(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args)
            .output()
            .await
            .expect("cannot run kubectl")
    }

    /// Runs kubectl; panics with its stderr unless it succeeds.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        check(
            self.kubectl_raw(args).await,
            &format!("kubectl {}", args.join(" ")),
        )
    }

    pub async fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        let mut cmd = self.kubectl_cmd(args);
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot run kubectl");
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(input.as_bytes())
                .await
                .expect("write stdin");
        }
        check(
            child.wait_with_output().await.expect("kubectl output"),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// `kubectl apply -f -` of a YAML or JSON document.
    pub async fn apply(&self, doc: &str) -> String {
        self.kubectl_stdin(&["apply", "-f", "-"], doc).await
    }

    /// Runs the kmsecrets CLI (local key offered for unwrapping); panics on failure.
    pub fn kmsecrets(&self, args: &[&str]) -> String {
        self.kmsecrets_env(args, &[])
    }

    /// Same, with extra environment (e.g. `aws_test_env()`).
    pub fn kmsecrets_env(&self, args: &[&str], env: &[(&str, String)]) -> String {
        let out = Command::new(kmsecrets_bin())
            .args(args)
            .arg("--local-key")
            .arg(&self.key)
            .current_dir(self.dir.path())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run kmsecrets");
        check(out, &format!("kmsecrets {}", args.join(" ")))
    }

    /// `kmsecrets encrypt --key file:<local key> ARGS` → the document (YAML
    /// unless ARGS say `-o json`).
    pub fn encrypt(&self, args: &[&str]) -> String {
        let key = format!("file:{}", self.key.display());
        let mut all = vec!["encrypt", "--key", &key];
        all.extend_from_slice(args);
        self.kmsecrets(&all)
    }

    /// `encrypt ... -o json`, parsed.
    pub fn encrypt_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.encrypt(&all)).expect("encrypt -o json output")
    }

    /// Starts `kmsecrets controller` against this cluster with the local key.
    pub fn controller(&self, extra: &[&str]) -> Controller {
        self.controller_env(extra, &[])
    }

    pub fn controller_env(&self, extra: &[&str], env: &[(&str, String)]) -> Controller {
        Controller::start(
            &self.kubeconfig,
            &self.key,
            self.dir.path(),
            extra,
            env,
            None,
        )
    }

    /// Starts the controller with its address space limited to `bytes`
    /// (`prlimit --as`): an allocation past it fails, as under a container
    /// memory limit that is smaller than what a runaway would take.
    pub fn controller_limited(&self, extra: &[&str], bytes: u64) -> Controller {
        Controller::start(
            &self.kubeconfig,
            &self.key,
            self.dir.path(),
            extra,
            &[],
            Some(bytes),
        )
    }

    pub async fn secret(&self, ns: &str, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .expect("GET secret")
    }

    pub async fn esec(&self, ns: &str, name: &str) -> Option<EncryptedSecret> {
        Api::<EncryptedSecret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .expect("GET encryptedsecret")
    }

    /// (status, reason) of the Ready condition.
    pub async fn ready(&self, ns: &str, name: &str) -> Option<(String, String)> {
        let es = self.esec(ns, name).await?;
        let c = kmsecrets::controller::status::ready_condition(es.status.as_ref())?;
        Some((c.status.clone(), c.reason.clone()))
    }

    /// Waits for Ready=<status> with <reason> *for the current generation*.
    pub async fn wait_ready(&self, ns: &str, name: &str, status: &str, reason: &str) {
        self.wait_ready_within(ns, name, status, reason, self.patience())
            .await;
    }

    pub async fn wait_ready_within(
        &self,
        ns: &str,
        name: &str,
        status: &str,
        reason: &str,
        timeout: Duration,
    ) {
        let start = Instant::now();
        loop {
            let es = self.esec(ns, name).await;
            let seen = es.as_ref().map(|es| {
                let c = kmsecrets::controller::status::ready_condition(es.status.as_ref());
                (
                    c.map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation)),
                    es.metadata.generation,
                )
            });
            if let Some((Some((s, r, observed)), generation)) = &seen
                && s == status
                && r == reason
                && observed == generation
            {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {ns}/{name} Ready={status} {reason}; \
                 last seen (Ready (status, reason, observedGeneration), generation): {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Secret's data as UTF-8 strings (None if the Secret is absent).
    pub async fn secret_data(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let s = self.secret(ns, name).await?;
        Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
        )
    }

    pub async fn wait_secret_data(&self, ns: &str, name: &str, want: &[(&str, &str)]) {
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let what = format!("Secret {ns}/{name} data == {:?}", want.keys());
        eventually(self.patience(), &what, async || {
            self.secret_data(ns, name).await.as_ref() == Some(&want)
        })
        .await;
    }
}

/// A `kmsecrets controller` child process; SIGKILLed on drop. Its stderr and
/// stdout go to a log file; on a panicking test the log tail is printed.
pub struct Controller {
    child: Child,
    pub log: PathBuf,
    http: Option<SocketAddr>,
}

impl Controller {
    fn start(
        kubeconfig: &Path,
        key: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
        address_space: Option<u64>,
    ) -> Controller {
        let log = tempfile::Builder::new()
            .prefix("controller-")
            .suffix(".log")
            .tempfile_in(dir)
            .expect("log file")
            .into_temp_path()
            .keep()
            .expect("keep log file");
        let file = std::fs::File::create(&log).expect("create log");
        let mut cmd = match address_space {
            None => Command::new(kmsecrets_bin()),
            Some(bytes) => {
                // prlimit execs the program: the child's pid stays the controller's
                let mut c = Command::new("prlimit");
                c.arg(format!("--as={bytes}"))
                    .arg("--")
                    .arg(kmsecrets_bin());
                c
            }
        };
        cmd.arg("controller")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--http-addr", "127.0.0.1:0"])
            // plain /metrics beside the probes (the HTTPS path: real_cluster.rs)
            .arg("--metrics-secure=false")
            .arg("--local-key")
            .arg(key)
            .args(extra)
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAME")
            .env_remove("HOSTNAME")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start kmsecrets controller");
        let mut c = Controller {
            child,
            log,
            http: None,
        };
        c.http = Some(c.wait_http());
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far, without colour escapes.
    pub fn logs(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Reads the HTTP address from the "serving /healthz ..." log line.
    fn wait_http(&mut self) -> SocketAddr {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if let Some(addr) = logs
                .lines()
                .filter(|l| l.contains("serving /healthz"))
                .find_map(|l| {
                    let at = l.find("127.0.0.1:")?;
                    let rest = &l[at..];
                    let end = rest
                        .char_indices()
                        .skip("127.0.0.1:".len())
                        .find(|(_, c)| !c.is_ascii_digit())
                        .map_or(rest.len(), |(i, _)| i);
                    rest[..end].parse().ok()
                })
            {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("controller exited early ({status}):\n{logs}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "controller did not report its HTTP address within 30 s:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET a path on the controller's HTTP port; (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.http.expect("http address");
        let mut s = TcpStream::connect(addr).expect("connect to controller HTTP");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("read response");
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, body.to_string())
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.http_get("/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// Like [`Self::metric`], `None` when the process does not answer (it
    /// exited, or is being killed).
    pub fn try_metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let addr = self.http?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| metric_sum(body, name, labels))
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// SIGKILL (no graceful shutdown) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "---- controller log tail ({}) ----\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// Sum of the samples of metric `name` (exact family sample name) whose label
/// set contains every pair in `labels`. Absent metric → 0.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbls) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| lbls.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
