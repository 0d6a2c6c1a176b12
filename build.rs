//! Link arguments of the release `kmsecrets` executable, for a smaller
//! resident set (see tools/text-order/README.md):
//!
//! - the controller's executed functions kept together at the front of its
//!   code (tools/text-order/hot.ld): the kernel maps an executable's pages
//!   64 KiB around each page fault, so code spread over the whole text makes
//!   nearly all of it resident;
//! - relative relocations packed (`-z pack-relative-relocs`, DT_RELR): the
//!   loader reads every relocation entry at start, and the ~32,000 24-byte
//!   entries of a position-independent executable this size were ~750 KiB
//!   of resident file pages; packed they are a few KiB. Needs glibc 2.36 at
//!   run time (the image's distroless/cc-debian12 has 2.36): added only when
//!   the building machine's glibc has it and the build is not a cross build.

use std::path::Path;
use std::process::Command;

fn main() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/text-order/hot.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-env-changed=KMSECRETS_TEXT_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("PROFILE") != "release" || var("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    // ELF linkers (GNU ld, lld, mold) read the script as an addition to their
    // default layout (`INSERT BEFORE .text`).
    if var("KMSECRETS_TEXT_ORDER") != "0" && script.exists() {
        println!(
            "cargo:rustc-link-arg-bin=kmsecrets=-Wl,-T,{}",
            script.display()
        );
    }
    if var("CARGO_CFG_TARGET_ENV") == "gnu" && var("HOST") == var("TARGET") && glibc_has_relr() {
        println!("cargo:rustc-link-arg-bin=kmsecrets=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this machine's glibc loads DT_RELR (2.36 and later).
fn glibc_has_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // "glibc 2.36"
    let mut v = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}
