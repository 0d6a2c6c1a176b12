//! Test harness shared by integration tests: the Python venv (moto), a moto
//! KMS server on a free port, and a fault-injecting KMS proxy. Everything
//! binds 127.0.0.1 and stops on drop. Nothing here skips: a missing tool is
//! a failure that says how to get it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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

/// Environment for the kmsecrets binary / SDK talking to an emulator.
pub fn aws_test_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_SESSION_TOKEN", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/nonexistent".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".into()),
    ]
}

/// A raw SDK client for test setup (CreateKey, CreateAlias, ...).
pub async fn sdk_client(endpoint: &str) -> aws_sdk_kms::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_kms::config::Builder::new()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(test_credentials())
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

pub fn test_credentials() -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new("testing", "testing", None, None, "kmsecrets-tests")
}

/// Creates a symmetric key (and alias) in moto; returns its ARN.
pub async fn create_key(client: &aws_sdk_kms::Client, alias: &str) -> String {
    let key = client.create_key().send().await.expect("CreateKey on moto");
    let md = key.key_metadata.expect("key metadata");
    client
        .create_alias()
        .alias_name(alias)
        .target_key_id(&md.key_id)
        .send()
        .await
        .expect("CreateAlias on moto");
    md.arn.expect("arn")
}

/// A fault-injecting HTTP proxy in front of a KMS endpoint: answers the next
/// N matching requests with ThrottlingException, or drops connections while
/// "down". One request per connection (responses carry Connection: close).
pub struct KmsProxy {
    pub port: u16,
    throttle_next: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl KmsProxy {
    pub fn start(upstream_port: u16) -> KmsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = KmsProxy {
            port,
            throttle_next: Arc::default(),
            down: Arc::default(),
            forwarded: Arc::default(),
            injected: Arc::default(),
            refused: Arc::default(),
            stop: Arc::default(),
        };
        let (throttle, down, fwd, inj, refused, stop) = (
            p.throttle_next.clone(),
            p.down.clone(),
            p.forwarded.clone(),
            p.injected.clone(),
            p.refused.clone(),
            p.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (throttle, down, fwd, inj, refused) = (
                    throttle.clone(),
                    down.clone(),
                    fwd.clone(),
                    inj.clone(),
                    refused.clone(),
                );
                std::thread::spawn(move || {
                    let _ = handle(conn, upstream_port, &throttle, &down, &fwd, &inj, &refused);
                });
            }
        });
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn throttle_next(&self, n: u64) {
        self.throttle_next.store(n, Ordering::SeqCst);
    }
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }
    /// Requests that arrived while down (each is one KMS attempt).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for KmsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
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

fn handle(
    conn: TcpStream,
    upstream: u16,
    throttle: &AtomicU64,
    down: &AtomicBool,
    fwd: &AtomicU64,
    inj: &AtomicU64,
    refused: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let (headers, body) = read_http(&mut reader)?;
    let mut conn = conn;
    if down.load(Ordering::SeqCst) {
        refused.fetch_add(1, Ordering::SeqCst);
        return Ok(()); // drop the connection: the client sees a dispatch failure
    }
    let is_crypto = headers.iter().any(|h| {
        let l = h.to_ascii_lowercase();
        l.starts_with("x-amz-target:") && (l.contains(".decrypt") || l.contains(".generatedatakey"))
    });
    if is_crypto
        && throttle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        inj.fetch_add(1, Ordering::SeqCst);
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
    fwd.fetch_add(1, Ordering::SeqCst);
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
