//! KMS peers for tests and benchmarks: moto (from the git-ignored test venv,
//! `scripts/ensure-venv.sh`), local-kms (pinned build), and a KMS proxy that
//! injects throttling (the next N requests, or a token-bucket quota of R
//! crypto requests/s like a real KMS account quota) or drops connections.
//! Everything binds 127.0.0.1 and stops on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::repo_root;

/// Path of the venv's python, creating the venv on first use.
pub fn venv_python() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/ensure-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run scripts/ensure-venv.sh (needs bash and python3)");
    assert!(
        out.status.success(),
        "scripts/ensure-venv.sh failed: install python3 with venv/pip and make PyPI reachable, then rerun"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A moto server (real AWS KMS JSON protocol) on a free port.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let py = venv_python();
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&py)
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start moto (python -m moto.server); see scripts/ensure-venv.sh");
            let mut m = Moto { child, port };
            if wait_for_port(port, Duration::from_secs(30)) {
                return m;
            }
            let _ = m.child.kill();
        }
        panic!("moto did not start listening within 30 s (tried 3 ports)");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// local-kms (models key states, real RSA-OAEP) on a free port, state in a
/// temp dir.
pub struct LocalKms {
    pub proc: crate::Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl LocalKms {
    pub fn start() -> LocalKms {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        for _ in 0..3 {
            let port = free_port();
            let proc = crate::Proc::spawn(
                "local-kms",
                &crate::tool("local-kms"),
                &[],
                &[
                    ("PORT", port.to_string()),
                    ("KMS_REGION", "us-east-1".into()),
                    ("KMS_ACCOUNT_ID", "111122223333".into()),
                    ("KMS_DATA_PATH", data.display().to_string()),
                ],
                &dir.path().join("local-kms.log"),
            )
            .expect("start local-kms");
            if wait_for_port(port, Duration::from_secs(30)) {
                return LocalKms {
                    proc,
                    port,
                    _dir: dir,
                };
            }
        }
        panic!("local-kms did not listen within 30 s (tried 3 ports)");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A token bucket of `rate` requests/s holding at most `rate` tokens (one
/// second of quota), as KMS enforces its per-second request quotas.
struct Quota {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Quota {
    /// Refill up to now.
    fn take_none(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        self.last = now;
    }

    fn take(&mut self) -> bool {
        self.take_none();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A shared view of a [`KmsProxy`]'s counters.
#[derive(Clone)]
pub struct ProxyCounters(Arc<ProxyState>);

impl ProxyCounters {
    pub fn injected(&self) -> u64 {
        self.0.injected.load(Ordering::SeqCst)
    }
    pub fn forwarded(&self) -> u64 {
        self.0.forwarded.load(Ordering::SeqCst)
    }
}

/// Counters and knobs shared with the connection threads.
#[derive(Default)]
struct ProxyState {
    throttle_next: AtomicU64,
    down: AtomicBool,
    forwarded: AtomicU64,
    decrypts: AtomicU64,
    injected: AtomicU64,
    refused: AtomicU64,
    /// Shared between proxies made with [`KmsProxy::start_sharing_quota`]
    /// (several clients, one account quota).
    quota: Arc<Mutex<Option<Quota>>>,
    hang: AtomicBool,
    hung_now: AtomicU64,
    hung_max: AtomicU64,
    /// (operation, key id named in the request) of every forwarded request.
    log: Mutex<Vec<(String, String)>>,
}

/// The operation (`TrentService.Encrypt` → `Encrypt`) and the key a KMS
/// request names (`KeyId`, or `DestinationKeyId` for ReEncrypt).
fn request_of(headers: &[String], body: &[u8]) -> (String, String) {
    let op = headers
        .iter()
        .find_map(|h| {
            let (name, value) = h.split_once(':')?;
            name.eq_ignore_ascii_case("x-amz-target")
                .then(|| value.trim().rsplit('.').next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let key = json["DestinationKeyId"]
        .as_str()
        .or(json["KeyId"].as_str())
        .unwrap_or("")
        .to_string();
    (op, key)
}

/// A fault-injecting HTTP proxy in front of a KMS endpoint: answers the next
/// N crypto requests (Decrypt, GenerateDataKey*, ReEncrypt) with ThrottlingException,
/// enforces a requests/s quota on them, or drops connections while "down".
/// One request per connection (responses carry Connection: close).
pub struct KmsProxy {
    pub port: u16,
    st: Arc<ProxyState>,
    stop: Arc<AtomicBool>,
}

impl KmsProxy {
    pub fn start(upstream_port: u16) -> KmsProxy {
        KmsProxy::start_with(upstream_port, ProxyState::default())
    }

    /// A second proxy (own counters) in front of the same upstream whose
    /// requests draw on `other`'s quota: two clients sharing one account
    /// and region quota, each counted on its own.
    pub fn start_sharing_quota(upstream_port: u16, other: &KmsProxy) -> KmsProxy {
        KmsProxy::start_with(
            upstream_port,
            ProxyState {
                quota: other.st.quota.clone(),
                ..Default::default()
            },
        )
    }

    fn start_with(upstream_port: u16, st: ProxyState) -> KmsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = KmsProxy {
            port,
            st: Arc::new(st),
            stop: Arc::default(),
        };
        let (st, stop) = (p.st.clone(), p.stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, upstream_port, &st);
                });
            }
        });
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn throttle_next(&self, n: u64) {
        self.st.throttle_next.store(n, Ordering::SeqCst);
    }
    /// Enforce `rate` crypto requests/s (None: unlimited); excess requests
    /// get ThrottlingException.
    pub fn set_quota(&self, rate: Option<f64>) {
        let mut q = self.st.quota.lock().unwrap_or_else(|p| p.into_inner());
        *q = rate.map(|rate| Quota {
            rate,
            tokens: rate.max(1.0),
            last: Instant::now(),
        });
    }
    /// Change the quota's rate, keeping the tokens it holds (capped at the
    /// new rate): a quota that moves while clients are using it.
    pub fn change_quota(&self, rate: f64) {
        let mut q = self.st.quota.lock().unwrap_or_else(|p| p.into_inner());
        match q.as_mut() {
            Some(q) => {
                q.take_none();
                q.rate = rate;
                q.tokens = q.tokens.min(rate.max(1.0));
            }
            None => {
                *q = Some(Quota {
                    rate,
                    tokens: rate.max(1.0),
                    last: Instant::now(),
                })
            }
        }
    }
    pub fn set_down(&self, down: bool) {
        self.st.down.store(down, Ordering::SeqCst);
    }
    /// While set, requests are read and never answered (a black-holed
    /// endpoint); clearing it closes those connections.
    pub fn set_hang(&self, hang: bool) {
        self.st.hang.store(hang, Ordering::SeqCst);
    }
    /// Requests held unanswered right now, and the most at once.
    pub fn hung(&self) -> (u64, u64) {
        (
            self.st.hung_now.load(Ordering::SeqCst),
            self.st.hung_max.load(Ordering::SeqCst),
        )
    }
    /// Requests passed to the upstream.
    pub fn forwarded(&self) -> u64 {
        self.st.forwarded.load(Ordering::SeqCst)
    }
    /// Decrypt requests passed to the upstream.
    /// (operation, key id) of every request forwarded so far, in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.st
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn decrypts(&self) -> u64 {
        self.st.decrypts.load(Ordering::SeqCst)
    }
    /// ThrottlingExceptions answered (injected or over quota).
    pub fn injected(&self) -> u64 {
        self.st.injected.load(Ordering::SeqCst)
    }
    /// The counters, readable after the proxy is moved or from other tasks.
    pub fn counters(&self) -> ProxyCounters {
        ProxyCounters(self.st.clone())
    }
    /// Requests that arrived while down (each is one KMS attempt).
    pub fn refused(&self) -> u64 {
        self.st.refused.load(Ordering::SeqCst)
    }
}

impl Drop for KmsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.st.hang.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn read_http(stream: &mut BufReader<TcpStream>) -> std::io::Result<(Vec<String>, Vec<u8>)> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        headers.push(line);
    }
    let len = headers
        .iter()
        .find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((headers, body))
}

fn write_http(out: &mut TcpStream, headers: &[String], body: &[u8]) -> std::io::Result<()> {
    let mut text = String::new();
    for h in headers {
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("transfer-encoding:") {
            continue;
        }
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str("Connection: close\r\n\r\n");
    out.write_all(text.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

fn handle(conn: TcpStream, upstream: u16, st: &ProxyState) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let (headers, body) = read_http(&mut reader)?;
    let mut conn = conn;
    if st.hang.load(Ordering::SeqCst) {
        let now = st.hung_now.fetch_add(1, Ordering::SeqCst) + 1;
        st.hung_max.fetch_max(now, Ordering::SeqCst);
        while st.hang.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        st.hung_now.fetch_sub(1, Ordering::SeqCst);
        return Ok(());
    }
    if st.down.load(Ordering::SeqCst) {
        st.refused.fetch_add(1, Ordering::SeqCst);
        return Ok(()); // drop the connection: the client sees a dispatch failure
    }
    let is_crypto = headers.iter().any(|h| {
        let l = h.to_ascii_lowercase();
        l.starts_with("x-amz-target:")
            && (l.contains(".decrypt")
                || l.contains(".generatedatakey")
                || l.contains(".reencrypt"))
    });
    let is_decrypt = headers.iter().any(|h| {
        let l = h.to_ascii_lowercase();
        l.starts_with("x-amz-target:") && l.trim_end().ends_with(".decrypt")
    });
    let over_quota = || {
        st.quota
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .is_some_and(|q| !q.take())
    };
    if is_crypto
        && (st
            .throttle_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
            || over_quota())
    {
        st.injected.fetch_add(1, Ordering::SeqCst);
        let body = br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
        return write_http(
            &mut conn,
            &[
                "HTTP/1.1 400 Bad Request".into(),
                "Content-Type: application/x-amz-json-1.1".into(),
                "x-amzn-ErrorType: ThrottlingException".into(),
                format!("Content-Length: {}", body.len()),
            ],
            body,
        );
    }
    st.forwarded.fetch_add(1, Ordering::SeqCst);
    st.log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request_of(&headers, &body));
    if is_decrypt {
        st.decrypts.fetch_add(1, Ordering::SeqCst);
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut fwd_headers = headers.clone();
    fwd_headers.retain(|h| !h.to_ascii_lowercase().starts_with("content-length:"));
    fwd_headers.push(format!("Content-Length: {}", body.len()));
    write_http(&mut up, &fwd_headers, &body)?;
    let mut up_reader = BufReader::new(up);
    let (resp_headers, resp_body) = read_http(&mut up_reader)?;
    let mut out_headers = resp_headers;
    out_headers.retain(|h| !h.to_ascii_lowercase().starts_with("content-length:"));
    out_headers.push(format!("Content-Length: {}", resp_body.len()));
    write_http(&mut conn, &out_headers, &resp_body)
}
