//! Load numbers: 10,000 Secrets + 10,000 EncryptedSecrets created through
//! kube-rs, list timings, 20 concurrent watchers, process RSS.
//!
//! `cargo run --release -p kmsecrets-testserver --example load [-- N WATCHERS]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let watchers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let r = common::load::run(n, watchers).await;
    println!("objects per kind:          {}", r.objects_per_kind);
    println!("create all (2 x N, 32 concurrent): {:?}", r.load_time);
    println!(
        "list Secrets (raw body, no decode):         {:?}",
        r.list_secrets_raw
    );
    println!(
        "list EncryptedSecrets (raw body, no decode): {:?}",
        r.list_esecs_raw
    );
    println!("list Secrets:              {:?}", r.list_secrets);
    println!("list EncryptedSecrets:     {:?}", r.list_esecs);
    println!("list Secrets (metadata):   {:?}", r.list_secrets_metadata);
    println!("list Secrets shard=3:      {:?}", r.list_label_selected);
    println!(
        "watch fan-out to {} watchers: {:?}",
        r.watchers, r.watch_fanout
    );
    println!(
        "RSS before: {} MiB, after loading: {} MiB, at the end: {} MiB (server and client in one process)",
        r.rss_before_kib / 1024,
        r.rss_loaded_kib / 1024,
        r.rss_after_kib / 1024
    );
}
