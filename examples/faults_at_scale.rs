//! Faults during a cold start at scale on the real control plane (printed,
//! not asserted; the 1,000-resource version is a CI test,
//! `faults_during_a_cold_start_at_scale` in tests/real_cluster.rs):
//!
//! ```sh
//! cargo build --release --bin kmsecrets
//! cargo run --release --example faults_at_scale            # 10,000 resources, 1,000 data keys
//! cargo run --release --example faults_at_scale -- 20000   # N (data keys: N / 10)
//! ```
//!
//! A no-fault cold start of N, then the same N with the kube-apiserver
//! SIGKILLed at ~30 % of Secrets present, etcd frozen (SIGSTOP) 10 s at
//! ~60 %, the leader SIGKILLed at ~80 % (see tests/common/faults.rs), each
//! in its own namespace with two fresh replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::cluster::{Backend, Cluster};
use common::faults;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let deks = (n / 10).max(1);
    let c = Cluster::start_on(Backend::Real).await;
    let calm = faults::cold_start(&c, "calm", n, deks, false).await;
    println!("{}", calm.line("no faults"));
    let storm = faults::cold_start(&c, "storm", n, deks, true).await;
    println!("{}", storm.line("faults"));
    println!(
        "\n| N = {n}, {deks} DEKs | converge | KMS Decrypts | leadership terms | Secret writes | deletes | emptied |\n|---|---|---|---|---|---|---|"
    );
    for (label, r) in [
        ("no faults", &calm),
        ("apiserver kill, etcd freeze, leader kill", &storm),
    ] {
        println!(
            "| {label} | {:.1} s | {} | {} | {} | {} | {} |",
            r.converge.as_secs_f64(),
            r.decrypts,
            r.terms,
            r.writes,
            r.deletes,
            r.emptied.len()
        );
    }
    println!(
        "\nfaults hit at (Secrets present, seconds): {:?}; converge ratio {:.2}",
        storm.faults,
        storm.converge.as_secs_f64() / calm.converge.as_secs_f64()
    );
}
