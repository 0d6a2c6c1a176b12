//! Envelope throughput: AES-256-GCM seal/open of values in MB/s, and the
//! end-to-end wall time of `kmsecrets encrypt` for a Secret with 1 MiB of
//! values (local provider), as users run it.
//!
//! `cargo bench --bench envelope`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use kmsecrets::api::Scope;
use kmsecrets::envelope::{Binding, Dek, open_value, seal_value};

fn main() {
    let dek = Dek::generate();
    let b = Binding::new(Scope::Strict, Some("ns"), Some("name"), BTreeMap::new()).unwrap();
    for size in [64usize, 4 << 10, 64 << 10, 1 << 20] {
        let pt = vec![0x5au8; size];
        let iters = ((256usize << 20) / size).clamp(20, 200_000);
        let t = Instant::now();
        let mut last = String::new();
        for _ in 0..iters {
            last = seal_value(&dek, &b, "k", &pt);
        }
        let seal = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..iters {
            let _ = open_value(&dek, &b, "k", &last).unwrap();
        }
        let open = t.elapsed().as_secs_f64();
        let mb = (size * iters) as f64 / 1e6;
        println!(
            "value {:>8} B: seal {:>8.1} MB/s  open {:>8.1} MB/s  (incl. base64; {iters} iterations)",
            size,
            mb / seal,
            mb / open
        );
    }

    // CLI wall time: 1 MiB of values (16 × 64 KiB) with the local provider.
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/kmsecrets");
    if !bin.exists() {
        println!(
            "\n(build the release binary with `cargo build --release` to time `kmsecrets encrypt`)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::process::Command::new(&bin)
        .arg("keygen")
        .arg(&key)
        .output()
        .unwrap();
    let mut args = vec![
        "encrypt".to_string(),
        "--key".into(),
        format!("file:{}", key.display()),
        "--name".into(),
        "big".into(),
        "-n".into(),
        "ns".into(),
    ];
    for i in 0..16 {
        let p = dir.path().join(format!("v{i}"));
        std::fs::write(&p, vec![b'x'; 64 << 10]).unwrap();
        args.push("--from-file".into());
        args.push(format!("v{i}={}", p.display()));
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let out = std::process::Command::new(&bin)
            .args(&args)
            .output()
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "\n`kmsecrets encrypt` 1 MiB of values (local key, release): median {:.1} ms, min {:.1} ms, max {:.1} ms over 20 runs",
        times[10], times[0], times[19]
    );
}
