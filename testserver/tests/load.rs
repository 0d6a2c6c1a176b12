//! A scaled-down load run with generous bounds (the full 10,000-object run
//! with printed numbers is `cargo run -p kmsecrets-testserver --example load`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_watch_fanout_stay_fast() {
    let r = common::load::run(2_000, 20).await;
    println!("{r:#?}");
    // Generous: a debug build on a loaded 2-core CI machine.
    assert!(r.list_secrets < Duration::from_secs(5), "{r:?}");
    assert!(r.list_esecs < Duration::from_secs(5), "{r:?}");
    assert!(r.watch_fanout < Duration::from_secs(5), "{r:?}");
}
