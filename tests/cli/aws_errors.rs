//! AWS failures, told apart in one line each (no AWS account needed: every
//! endpoint here is local and fails on purpose): no credentials (fast: no
//! retries), a refused connection (a KMS peer that is down) with its host,
//! a DNS failure, a TLS failure, and no region for a bare key id.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::*;

const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/0000aaaa-bb00-cc00-dd00-eeeeeeeeeeee";

pub(crate) fn encrypt_with(key: &str, extra: &[&str], creds: bool) -> Out {
    encrypt_cmd(key, extra, creds).run()
}

/// `encrypt --key KEY` with AWS settings from nowhere but this command.
pub(crate) fn encrypt_cmd(key: &str, extra: &[&str], creds: bool) -> Cmd {
    let mut c = kms([
        "encrypt",
        "--key",
        key,
        "--from-literal",
        "a=b",
        "--name",
        "x",
        "-n",
        "y",
    ])
    .args(extra.iter().copied())
    .env("AWS_CONFIG_FILE", "/nonexistent")
    .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    // no instance metadata service here: fail at once instead of probing
    .env("AWS_EC2_METADATA_DISABLED", "true");
    if creds {
        c = c
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing");
    }
    c
}

#[test]
fn no_credentials_fails_fast_and_says_so() {
    let t = Instant::now();
    let out = encrypt_with(ARN, &[], false);
    let took = t.elapsed();
    fails(&out, "no AWS credentials found");
    assert!(
        out.stderr.contains("AWS_PROFILE"),
        "says how to fix it: {}",
        out.stderr
    );
    assert!(
        took < Duration::from_secs(3),
        "no retries for missing credentials: {took:?}"
    );
}

#[test]
fn a_down_endpoint_a_dns_failure_and_a_tls_failure_are_told_apart() {
    // a port nothing listens on (a stopped KMS peer)
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = format!("http://127.0.0.1:{port}");
    let out = encrypt_with(
        ARN,
        &["--kms-endpoint", &refused, "--kms-max-attempts", "1"],
        true,
    );
    fails(
        &out,
        &format!("cannot reach KMS at 127.0.0.1:{port}: connection refused"),
    );

    let out = encrypt_with(
        ARN,
        &[
            "--kms-endpoint",
            "https://kms.nonexistent.invalid",
            "--kms-max-attempts",
            "1",
        ],
        true,
    );
    fails(
        &out,
        "cannot reach KMS at kms.nonexistent.invalid: DNS lookup failed",
    );

    // a server that answers TLS with plain HTTP
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let tls = format!("https://127.0.0.1:{tls_port}");
    let out = encrypt_with(
        ARN,
        &["--kms-endpoint", &tls, "--kms-max-attempts", "1"],
        true,
    );
    fails(
        &out,
        &format!("cannot reach KMS at 127.0.0.1:{tls_port}: TLS failure"),
    );

    // a bare key id and no region anywhere
    let out = encrypt_with("0000aaaa-bb00-cc00-dd00-eeeeeeeeeeee", &[], true);
    fails(&out, "no AWS region for key");
}
