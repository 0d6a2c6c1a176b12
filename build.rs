//! Links the release `kmsecrets` executable with the controller's executed
//! functions kept together at the front of its code (tools/text-order): the
//! kernel maps an executable's pages 64 KiB around each page fault, so code
//! spread over the whole text makes nearly all of it resident.

use std::path::Path;

fn main() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/text-order/hot.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-env-changed=KMSECRETS_TEXT_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    // ELF linkers (GNU ld, lld, mold) read the script as an addition to their
    // default layout (`INSERT BEFORE .text`).
    let elf = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let off = std::env::var("KMSECRETS_TEXT_ORDER").is_ok_and(|v| v == "0");
    if release && elf && !off && script.exists() {
        println!(
            "cargo:rustc-link-arg-bin=kmsecrets=-Wl,-T,{}",
            script.display()
        );
    }
}
