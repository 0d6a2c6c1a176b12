//! Offline sealing numbers, printed (not asserted), against local-kms (real
//! RSA-OAEP):
//!
//! ```sh
//! cargo run --release --example sealing_numbers          # 25 runs each
//! cargo run --release --example sealing_numbers -- 100   # RUNS
//! ```
//!
//! 1. `kmsecrets encrypt --key pub:FILE` of a 10-value Secret with the AWS
//!    environment removed (no credentials, no region, no network): wall
//!    time of the whole process, and the same with a symmetric key
//!    (`GenerateDataKey` through local-kms) beside it.
//! 2. Unwrap latency: `kmsecrets decrypt -f` of a file whose only data-key
//!    copy is RSAES_OAEP_SHA_256 versus one whose only copy is symmetric
//!    (each run is a fresh process: one KMS Decrypt, no cache), and the
//!    difference, which is the KMS Decrypt itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/aws.rs"]
mod aws;
mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use kmsecrets_envtest::peers::LocalKms;
use serde_json::{Value, json};

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn with_env(bin: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .args(["--kms-endpoint", url])
        .envs(aws::aws_test_env())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn offline(bin: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Median and p90 of `runs` timings of `f`, in milliseconds.
fn timed(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[runs / 2], ms[(runs * 9 / 10).min(runs - 1)])
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RUNS"))
        .unwrap_or(25);
    let bin = support::kmsecrets_bin();
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::start();
    let url = kms.url();
    let sdk = aws::sdk_client(&url).await;
    let rsa = sdk
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::Rsa3072)
        .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
        .send()
        .await
        .expect("CreateKey RSA_3072 on local-kms")
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let sym = sdk
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let sk = dir.path().join("sealing-key.yaml");
    let sk_s = sk.to_str().unwrap().to_string();
    check(
        with_env(&bin, &url, &["pubkey", "--key", &rsa, "-o", &sk_s]),
        "pubkey",
    );
    let values: Vec<String> = (0..10)
        .map(|i| format!("value{i}=s3cret-value-number-{i}"))
        .collect();
    let mut args: Vec<String> = [
        "encrypt",
        "--name",
        "app",
        "--namespace",
        "default",
        "-o",
        "json",
    ]
    .map(String::from)
    .to_vec();
    for v in &values {
        args.push("--from-literal".into());
        args.push(v.clone());
    }
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let pub_key = format!("pub:{sk_s}");
    let mut offline_args = args.clone();
    offline_args.extend(["--key".to_string(), pub_key.clone()]);
    let offline_args: Vec<&str> = offline_args.iter().map(String::as_str).collect();
    let mut sym_args = args.clone();
    sym_args.extend(["--key".to_string(), sym.clone()]);
    let sym_args: Vec<&str> = sym_args.iter().map(String::as_str).collect();

    let rsa_doc = check(offline(&bin, &home, &offline_args), "offline encrypt");
    let (enc_pub, enc_pub_p90) = timed(runs, || {
        check(offline(&bin, &home, &offline_args), "offline encrypt");
    });
    let (enc_sym, enc_sym_p90) = timed(runs, || {
        check(with_env(&bin, &url, &sym_args), "symmetric encrypt");
    });
    let (version, version_p90) = timed(runs, || {
        check(offline(&bin, &home, &["--version"]), "--version");
    });

    // one file per copy kind
    let sym_doc = check(with_env(&bin, &url, &sym_args), "symmetric encrypt");
    let files: Vec<_> = [("rsa", &rsa_doc), ("symmetric", &sym_doc)]
        .into_iter()
        .map(|(name, doc)| {
            let v: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(v["spec"]["dataKeys"].as_array().unwrap().len(), 1);
            let f = dir.path().join(format!("{name}.json"));
            std::fs::write(&f, json!(v).to_string()).unwrap();
            f
        })
        .collect();
    let mut unwrap = Vec::new();
    for f in &files {
        let f = f.to_str().unwrap().to_string();
        let args = ["decrypt", "-f", f.as_str(), "-o", "json"];
        let out = check(with_env(&bin, &url, &args), "decrypt");
        assert!(out.contains("\"value9\""), "decrypt output");
        unwrap.push(timed(runs, || {
            check(with_env(&bin, &url, &args), "decrypt");
        }));
    }
    println!(
        "== offline sealing, local-kms (real RSA-OAEP, RSA_3072), {runs} runs each, release binary, whole-process wall time =="
    );
    println!("| measurement | median ms | p90 ms |");
    println!("|---|---|---|");
    println!(
        "| `kmsecrets --version` (process start, for reference) | {version:.1} | {version_p90:.1} |"
    );
    println!(
        "| `encrypt --key pub:FILE`, 10 values, no AWS environment | {enc_pub:.1} | {enc_pub_p90:.1} |"
    );
    println!(
        "| `encrypt --key SYMMETRIC-ARN`, 10 values (GenerateDataKey via local-kms) | {enc_sym:.1} | {enc_sym_p90:.1} |"
    );
    println!(
        "| `decrypt -f`, RSA copy only (KMS Decrypt RSAES_OAEP_SHA_256) | {:.1} | {:.1} |",
        unwrap[0].0, unwrap[0].1
    );
    println!(
        "| `decrypt -f`, symmetric copy only (KMS Decrypt) | {:.1} | {:.1} |",
        unwrap[1].0, unwrap[1].1
    );
    println!(
        "RSA unwrap costs {:+.1} ms over a symmetric one per Decrypt (median difference; the cache makes it once per DEK per TTL in the controller)",
        unwrap[0].0 - unwrap[1].0
    );
}
