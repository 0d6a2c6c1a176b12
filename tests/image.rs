//! The controller image holds no test machinery: the Dockerfile builds
//! `--no-default-features` (plus its allocator, `--features jemalloc`), and
//! that build has neither `kmsecrets dev` (the
//! in-memory API server) nor the fake KMS. Builds the image's binary (debug,
//! no debuginfo) into its own target dir, `target/image-check`, so the test
//! binaries of this run are never replaced underneath other tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn cargo() -> Command {
    // cargo sets CARGO for the processes it runs
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(ROOT);
    c
}

#[test]
fn dockerfile_builds_without_dev_and_testing() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let build = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build line in the Dockerfile");
    assert!(
        build.contains("--no-default-features") && build.contains("--bin kmsecrets"),
        "the image must build --no-default-features --bin kmsecrets: {build}"
    );
    // the one feature the image turns on is its allocator
    assert!(
        !build.contains("--all-features")
            && build.matches("--features").count() == 1
            && build.contains("--features jemalloc "),
        "{build}"
    );
}

#[test]
fn controller_build_links_neither_the_test_server_nor_the_fake_kms() {
    let tree = cargo()
        .args([
            "tree",
            "--locked",
            "--no-default-features",
            "--features",
            "jemalloc",
            "-p",
            "kmsecrets",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.contains("kube "),
        "cargo tree output looks wrong:\n{tree}"
    );
    assert!(
        tree.contains("tikv-jemallocator "),
        "the image build must link its allocator:\n{tree}"
    );
    for absent in ["kmsecrets-testserver", "kmsecrets-envtest"] {
        assert!(
            !tree.contains(absent),
            "{absent} is in the image build:\n{tree}"
        );
    }

    let target = Path::new(ROOT).join("target/image-check");
    let out = cargo()
        .args([
            "build",
            "--locked",
            "--no-default-features",
            "--features",
            "jemalloc",
            "--bin",
            "kmsecrets",
            "--target-dir",
        ])
        .arg(&target)
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "image build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = target.join("debug/kmsecrets");

    let help = Command::new(&bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("controller"), "{help}");
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("dev ")),
        "`dev` listed in the image build's help:\n{help}"
    );
    let dev = Command::new(&bin).arg("dev").output().unwrap();
    assert_eq!(
        dev.status.code(),
        Some(2),
        "`kmsecrets dev` must be a usage error"
    );
    let err = String::from_utf8_lossy(&dev.stderr);
    assert!(err.contains("unrecognized subcommand 'dev'"), "{err}");

    // and neither crate's code is in the binary: markers that exist only in
    // the test server and the fake KMS
    let bytes = std::fs::read(&bin).unwrap();
    let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(has("kmsecrets.dev/scope"), "marker check is broken");
    for marker in ["kmsecrets-fake-kek", "_testserver"] {
        assert!(!has(marker), "{marker:?} found in the image build");
    }
    // the default build does have them (so the check above can fail)
    let full = std::fs::read(env!("CARGO_BIN_EXE_kmsecrets")).unwrap();
    assert!(
        full.windows(11).any(|w| w == b"_testserver"),
        "the default build should carry the dev server"
    );
}

/// The code order the release executable links with (tools/text-order,
/// passed by build.rs) is a well-formed linker-script fragment: one output
/// section inserted before `.text`, and one input-section pattern per
/// profiled function in the characters the linkers' script lexers take.
/// (The release link itself is exercised by the image build and the
/// benchmarks, not here: a fat-LTO link costs minutes.)
#[test]
fn text_order_script_is_well_formed() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("tools/text-order/hot.ld")).unwrap();
    let body: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("/*"))
        .collect();
    assert_eq!(
        body[..4],
        ["SECTIONS", "{", ".text.kmsecrets.hot : ALIGN(4096)", "{"]
    );
    assert_eq!(body[body.len() - 3..], ["}", "}", "INSERT BEFORE .text;"]);
    let patterns = &body[4..body.len() - 3];
    assert!(patterns.len() > 1000, "{} patterns", patterns.len());
    let safe = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.$*".contains(c))
    };
    for p in patterns {
        let inner = p
            .strip_prefix("*(.text.")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not an input-section pattern: {p}"));
        let (name, unlikely) = inner
            .split_once(" .text.unlikely.")
            .unwrap_or_else(|| panic!("no .text.unlikely. twin: {p}"));
        assert_eq!(name, unlikely, "{p}");
        assert!(safe(name), "characters a linker script cannot hold: {p}");
    }
    // the controller's own entry point is among them
    assert!(
        patterns
            .iter()
            .any(|p| p.contains("9kmsecrets3cli10controller")),
        "no kmsecrets::cli::controller function in the order"
    );
}
