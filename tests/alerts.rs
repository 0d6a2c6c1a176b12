//! The alert rules, checked and unit-tested by Prometheus's own `promtool`
//! (Debian package `prometheus`): `promtool check rules` on the rules file
//! the chart and `monitoring/` ship, and `promtool test rules` on
//! `monitoring/alerts.test.yaml` (the KMS key alerts fire for a key pending
//! deletion or disabled with dependents, and not without). The harness
//! installs promtool with apt when it is missing and it may (root); it never
//! skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool() -> PathBuf {
    let found = |p: &Path| p.is_file().then(|| p.to_path_buf());
    if let Some(p) = found(Path::new("/usr/bin/promtool")) {
        return p;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "prometheus",
    ]) || (apt(&["update", "-qq"])
        && apt(&[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "prometheus",
        ]));
    assert!(
        installed,
        "promtool is missing and could not be installed: `apt-get install prometheus` (Debian) provides it"
    );
    found(Path::new("/usr/bin/promtool")).expect("promtool after installing prometheus")
}

fn run(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let out = run(&["check", "rules", "charts/kmsecrets/files/alerts.rules.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run(&["test", "rules", "monitoring/alerts.test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // the copy in monitoring/ is the same file
    assert_eq!(
        std::fs::read(root().join("monitoring/alerts.rules.yaml")).unwrap(),
        std::fs::read(root().join("charts/kmsecrets/files/alerts.rules.yaml")).unwrap()
    );
}
