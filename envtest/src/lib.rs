//! A real Kubernetes control plane for tests and benchmarks, the way
//! controller-runtime's envtest runs one: `etcd` (`--unsafe-no-fsync`, temp
//! data dir), `kube-apiserver` (TLS on 127.0.0.1, client-certificate admin in
//! `system:masters`, RBAC, service-account issuer and keys) and
//! `kube-controller-manager` (garbage collector, namespace, service-account
//! and token controllers), all on free loopback ports.
//!
//! The binaries are the pinned builds of `scripts/ensure-k8s-tools.sh`
//! (k8s.io/kubernetes v1.37.2, etcd 3.6, helm 4.3, local-kms), built once
//! into a cache outside the repo on first use — never skipped.
//!
//! Every server runs under a small watchdog shell that kills it when our end
//! of its stdin closes, so nothing outlives the test process even when that
//! process is SIGKILLed. Dropping a [`ControlPlane`] stops everything; if the
//! thread is panicking, the tail of every server log is printed first.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub mod peers;

/// What a polled condition returns: `true`, or `Some(value)`, once it holds.
pub trait Polled {
    type Out;
    fn ready(self) -> Option<Self::Out>;
}

impl Polled for bool {
    type Out = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Polled for Option<T> {
    type Out = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// The suites' one way to wait: polls `cond` every 20 ms until it holds
/// (`true` or `Some`), and fails the test naming `what` after `timeout`.
/// No test sleeps to "wait for it".
pub async fn eventually<R: Polled>(
    timeout: Duration,
    what: &str,
    mut cond: impl AsyncFnMut() -> R,
) -> R::Out {
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await.ready() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The Kubernetes version the tools are pinned to.
pub const KUBERNETES_VERSION: &str = "v1.37.2";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("certificates: {0}")]
    Cert(#[from] rcgen::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn setup(msg: impl Into<String>) -> Error {
    Error::Setup(msg.into())
}

/// The repository root (this crate lives in `envtest/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Directory holding the pinned binaries, building them on first use
/// (`scripts/ensure-k8s-tools.sh`; progress on stderr). Panics, saying how to
/// fix it, when they cannot be built: tests that need them never skip.
pub fn tools_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("scripts/ensure-k8s-tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => panic!("cannot run {} (needs bash): {e}", script.display()),
        };
        assert!(
            out.status.success(),
            "{} failed: it builds kube-apiserver, kube-controller-manager, kubectl, etcd, helm and \
             local-kms from the Go module proxy with Go 1.26+ (/usr/local/go/bin/go); fix the error \
             above and rerun",
            script.display()
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Path of one pinned binary (`kubectl`, `helm`, `etcd`, `local-kms`, ...).
pub fn tool(name: &str) -> PathBuf {
    tools_dir().join(name)
}

/// A Go helper of `tools/helpers/` (built once by
/// scripts/ensure-go-helpers.sh, cached outside the repository).
pub fn go_helper(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("scripts/ensure-go-helpers.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} (needs bash): {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: it builds the Go helpers of tools/helpers/ from the Go module proxy with Go 1.26+ \
             (/usr/local/go/bin/go); fix the error above and rerun",
            script.display()
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .join(name)
}

/// A free TCP port on 127.0.0.1 (the OS picks; we release it at once).
fn port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------
// Processes

/// Kills `"$@"` when fd 3 (our pipe) closes or says a signal name; writes
/// the server's pid to $PIDFILE; exits with the server's status.
const WATCHDOG: &str = r#"exec 3<&0 </dev/null
"$@" &
c=$!
echo "$c" >"$PIDFILE"
{ read -r sig <&3; kill -s "${sig:-TERM}" "$c" 2>/dev/null; } &
w=$!
wait "$c"
rc=$?
kill "$w" 2>/dev/null
exit "$rc""#;

/// One server process under the watchdog.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub log: PathBuf,
    pidfile: PathBuf,
}

impl Proc {
    /// Starts `bin args...` with stdout+stderr appended to `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let pidfile = log.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg(name)
            .arg(bin)
            .args(args)
            .env("PIDFILE", &pidfile)
            .stdin(Stdio::piped())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| setup(format!("cannot start {name} ({}): {e}", bin.display())))?;
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            stdin,
            log: log.to_path_buf(),
            pidfile,
        })
    }

    /// The server's own pid (not the watchdog's), once it is known.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (TERM, KILL, ...) and waits up to `timeout` for the
    /// server to exit; then SIGKILLs it.
    pub fn stop_with(&mut self, signal: &str, timeout: Duration) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{signal}");
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        self.stop_with("TERM", Duration::from_secs(15));
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_with("KILL", Duration::from_secs(5));
    }
}

// ---------------------------------------------------------------------------
// Certificates

/// PEM files of the control plane's PKI.
struct Pki {
    ca_cert: String,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    ca_file: PathBuf,
    admin_cert: String,
    admin_key: String,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

fn pki(dir: &Path) -> Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let dn = |cn: &str, org: Option<&str>| {
        let mut d = DistinguishedName::new();
        d.push(DnType::CommonName, cn);
        if let Some(o) = org {
            d.push(DnType::OrganizationName, o);
        }
        d
    };
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn("kmsecrets-envtest-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let serving_key = KeyPair::generate()?;
    let mut sp = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
    ])?;
    sp.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    sp.subject_alt_names
        .push(SanType::IpAddress([10, 0, 0, 1].into()));
    sp.distinguished_name = dn("kube-apiserver", None);
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving = sp.signed_by(&serving_key, &ca)?;

    let admin_key = KeyPair::generate()?;
    let mut ap = CertificateParams::default();
    ap.distinguished_name = dn("kmsecrets-envtest-admin", Some("system:masters"));
    ap.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin = ap.signed_by(&admin_key, &ca)?;

    let sa = KeyPair::generate()?;

    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    Ok(Pki {
        ca_cert: ca.pem(),
        ca_file: write("ca.crt", &ca.pem())?,
        serving_cert: write("apiserver.crt", &serving.pem())?,
        serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
        admin_cert: admin.pem(),
        admin_key: admin_key.serialize_pem(),
        sa_key: write("sa.key", &sa.serialize_pem())?,
        sa_pub: write("sa.pub", &sa.public_key_pem())?,
    })
}

// ---------------------------------------------------------------------------
// The control plane

/// etcd + kube-apiserver + kube-controller-manager on free loopback ports.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    pki: Pki,
    etcd_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    etcd: Mutex<Option<Proc>>,
    apiserver: Mutex<Option<Proc>>,
    kcm: Mutex<Option<Proc>>,
    kubeconfig: PathBuf,
    /// How long `start` took (certificates to ready).
    pub start_time: Duration,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver (waits for `/readyz`) and
    /// kube-controller-manager; writes an admin kubeconfig.
    pub async fn start() -> Result<ControlPlane> {
        let t0 = Instant::now();
        let bin = tools_dir().to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("kmsecrets-envtest-")
            .tempdir()?;
        let pki = pki(dir.path())?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let mut cp = ControlPlane {
            pki,
            etcd_port: port()?,
            etcd_peer_port: port()?,
            apiserver_port: port()?,
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
            kcm: Mutex::new(None),
            kubeconfig,
            start_time: Duration::ZERO,
            dir,
        };
        cp.write_admin_kubeconfig(&cp.kubeconfig.clone())?;
        cp.start_etcd()?;
        cp.start_apiserver().await?;
        cp.start_controller_manager(&bin)?;
        cp.start_time = t0.elapsed();
        Ok(cp)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// Kubeconfig of an admin identity (client certificate, `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// PEM of the cluster CA.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_cert
    }

    fn kubeconfig_text(&self, user: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: {}
    certificate-authority-data: {}
contexts:
- name: envtest
  context: {{cluster: envtest, user: envtest}}
current-context: envtest
users:
- name: envtest
  user:
{user}",
            self.url(),
            STANDARD.encode(&self.pki.ca_cert)
        )
    }

    fn write_admin_kubeconfig(&self, path: &Path) -> Result<()> {
        let user = format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            STANDARD.encode(&self.pki.admin_cert),
            STANDARD.encode(&self.pki.admin_key)
        );
        std::fs::write(path, self.kubeconfig_text(&user))?;
        Ok(())
    }

    /// Writes a kubeconfig that authenticates with a bearer `token` (e.g. a
    /// ServiceAccount's, from TokenRequest).
    pub fn write_token_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let user = format!("    token: {token}\n");
        std::fs::write(path, self.kubeconfig_text(&user))?;
        Ok(())
    }

    /// An admin client.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    // -- etcd ------------------------------------------------------------

    /// Starts (or restarts, keeping its data) etcd and waits until it serves.
    pub fn start_etcd(&self) -> Result<()> {
        let data = self.dir.path().join("etcd-data");
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let args: Vec<String> = [
            "--name=envtest".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=envtest={peer}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ]
        .into();
        // large benchmarks (100,000 resources and their Secrets) outgrow
        // etcd's default 2 GiB backend quota
        let mut args = args;
        if let Ok(q) = std::env::var("KMSECRETS_ETCD_QUOTA_BYTES") {
            args.push(format!("--quota-backend-bytes={q}"));
        }
        let log = self.dir.path().join("etcd.log");
        let mut p = Proc::spawn("etcd", &tool("etcd"), &args, &[], &log)?;
        let start = Instant::now();
        loop {
            if http_get_plain(self.etcd_port, "/health").is_some_and(|b| b.contains("true")) {
                break;
            }
            if !p.is_running() {
                return Err(setup(format!("etcd exited at start:\n{}", p.log_tail(40))));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(setup(format!(
                    "etcd not healthy within 30 s:\n{}",
                    p.log_tail(40)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *lock(&self.etcd) = Some(p);
        Ok(())
    }

    /// Freezes etcd (SIGSTOP): requests hang instead of failing, as with a
    /// stalled disk or a network partition; [`Self::resume_etcd`] thaws it.
    pub fn pause_etcd(&self) {
        if let Some(pid) = self.pid("etcd") {
            let _ = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
        }
    }

    pub fn resume_etcd(&self) {
        if let Some(pid) = self.pid("etcd") {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }

    /// Completed writes to Secrets from the audit log, across restarts:
    /// (verb, namespace, name, HTTP code), in order.
    pub fn secret_writes(&self) -> Vec<(String, String, String, u16)> {
        self.secret_writes_at()
            .into_iter()
            .map(|(v, ns, n, c, _)| (v, ns, n, c))
            .collect()
    }

    /// [`Self::secret_writes`] with each request's receive time (RFC 3339).
    pub fn secret_writes_at(&self) -> Vec<(String, String, String, u16, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["stage"] == "ResponseComplete")
            .map(|e| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&e["verb"]),
                    s(&e["objectRef"]["namespace"]),
                    s(&e["objectRef"]["name"]),
                    e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                    s(&e["requestReceivedTimestamp"]),
                )
            })
            .collect()
    }

    /// Stops etcd (SIGTERM); the apiserver keeps running and fails requests.
    pub fn stop_etcd(&self) {
        let p = lock(&self.etcd).take();
        if let Some(mut p) = p {
            p.stop();
        }
    }

    // -- kube-apiserver ----------------------------------------------------

    fn apiserver_args(&self) -> Vec<String> {
        let d = self.dir.path();
        // every write to a Secret, at Metadata level (no values), survives
        // apiserver restarts: what fault tests count writes and deletes with
        let policy = d.join("audit-policy.yaml");
        let _ = std::fs::write(
            &policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\nrules:\n\
             - level: Metadata\n  resources: [{group: \"\", resources: [secrets]}]\n  verbs: [create, update, patch, delete, deletecollection]\n\
             - level: None\n",
        );
        vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", d.join("audit.log").display()),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            format!("--secure-port={}", self.apiserver_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--cert-dir={}", d.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", self.pki.serving_cert.display()),
            format!("--tls-private-key-file={}", self.pki.serving_key.display()),
            format!("--client-ca-file={}", self.pki.ca_file.display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", self.pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                self.pki.sa_key.display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--profiling=false".into(),
            "--endpoint-reconciler-type=none".into(),
            "--v=0".into(),
        ]
    }

    async fn start_apiserver(&self) -> Result<()> {
        let log = self.dir.path().join("kube-apiserver.log");
        let args = self.apiserver_args();
        let p = Proc::spawn("kube-apiserver", &tool("kube-apiserver"), &args, &[], &log)?;
        *lock(&self.apiserver) = Some(p);
        self.wait_ready(Duration::from_secs(90)).await
    }

    /// Polls `/readyz` until it answers `ok`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let client = self.client().await?;
        let start = Instant::now();
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| setup(e.to_string()))?;
            if let Ok(text) = client.request_text(req).await
                && text.trim() == "ok"
            {
                return Ok(());
            }
            let exited = lock(&self.apiserver)
                .as_mut()
                .and_then(|p| (!p.is_running()).then(|| p.log_tail(60)));
            if let Some(tail) = exited {
                return Err(setup(format!("kube-apiserver exited at start:\n{tail}")));
            }
            if start.elapsed() > timeout {
                return Err(setup(format!(
                    "kube-apiserver not ready within {timeout:?}:\n{}",
                    self.log_tails(40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops kube-apiserver (SIGTERM, or SIGKILL with `hard`) and starts it
    /// again on the same port; waits for `/readyz`. Open watches break.
    pub async fn restart_apiserver(&self, hard: bool) -> Result<Duration> {
        let t0 = Instant::now();
        let old = lock(&self.apiserver).take();
        if let Some(mut p) = old {
            if hard {
                p.stop_with("KILL", Duration::from_secs(5));
            } else {
                p.stop();
            }
        }
        self.start_apiserver().await?;
        Ok(t0.elapsed())
    }

    // -- kube-controller-manager ---------------------------------------------

    fn start_controller_manager(&self, bin: &Path) -> Result<()> {
        let kcm_port = port()?;
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--authentication-kubeconfig={}", self.kubeconfig.display()),
            format!("--authorization-kubeconfig={}", self.kubeconfig.display()),
            "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller".into(),
            format!("--service-account-private-key-file={}", self.pki.sa_key.display()),
            format!("--root-ca-file={}", self.pki.ca_file.display()),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=false".into(),
            format!("--secure-port={kcm_port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--cert-dir={}", self.dir.path().join("kcm-certs").display()),
            "--concurrent-gc-syncs=5".into(),
            "--v=0".into(),
        ];
        let log = self.dir.path().join("kube-controller-manager.log");
        let p = Proc::spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &args,
            &[],
            &log,
        )?;
        *lock(&self.kcm) = Some(p);
        Ok(())
    }

    /// The servers' pids, by name.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs().into_iter().find_map(|m| {
            lock(m)
                .as_ref()
                .filter(|p| p.name == name)
                .and_then(Proc::pid)
        })
    }

    fn procs(&self) -> [&Mutex<Option<Proc>>; 3] {
        [&self.etcd, &self.apiserver, &self.kcm]
    }

    /// Tail of every server log, for a failing test.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for m in self.procs() {
            let guard = lock(m);
            let Some(p) = guard.as_ref() else { continue };
            out.push_str(&format!(
                "---- {} ({}) ----\n{}\n",
                p.name,
                p.log.display(),
                p.log_tail(n)
            ));
        }
        out
    }

    /// The apiserver's `apiserver_request_total`, summed by (verb, resource
    /// with `/subresource`): verbs as the apiserver names them (GET, LIST,
    /// WATCH, POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION).
    pub async fn request_counts(&self) -> Result<Vec<((String, String), u64)>> {
        let client = self.client().await?;
        let req = http::Request::get("/metrics")
            .body(Vec::new())
            .map_err(|e| setup(e.to_string()))?;
        let text = client
            .request_text(req)
            .await
            .map_err(|e| setup(format!("GET /metrics: {e}")))?;
        Ok(parse_request_totals(&text))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(40));
        }
        for m in [&self.kcm, &self.apiserver, &self.etcd] {
            let p = lock(m).take();
            if let Some(mut p) = p {
                p.stop_with("KILL", Duration::from_secs(5));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A kube client for a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| setup(format!("kubeconfig {}: {e}", kubeconfig.display())))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| setup(format!("kubeconfig {}: {e}", kubeconfig.display())))?;
    kube::Client::try_from(config).map_err(|e| setup(format!("kube client: {e}")))
}

/// Sums `apiserver_request_total` samples by (verb, resource[/subresource]).
pub fn parse_request_totals(text: &str) -> Vec<((String, String), u64)> {
    let mut out: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| -> String {
            labels
                .split(',')
                .find_map(|kv| {
                    let (key, v) = kv.split_once('=')?;
                    (key == k).then(|| v.trim_matches('"').to_string())
                })
                .unwrap_or_default()
        };
        let (verb, mut resource, sub) = (label("verb"), label("resource"), label("subresource"));
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry((verb, resource)).or_default() += n;
    }
    out.into_iter().collect()
}

/// A plain-HTTP GET on 127.0.0.1 (etcd health); the body, or None.
fn http_get_plain(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_totals_sum_by_verb_and_resource() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="GET",version="v1"} 3
apiserver_request_total{code="404",component="apiserver",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="GET",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="kmsecrets.dev",resource="encryptedsecrets",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 1
"#;
        let got = parse_request_totals(text);
        assert_eq!(
            got,
            vec![
                (("APPLY".into(), "encryptedsecrets/status".into()), 1),
                (("GET".into(), "secrets".into()), 5),
            ]
        );
    }
}
