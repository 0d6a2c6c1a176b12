//! The module map of the README, enforced: every `crate::X` reference in a
//! top-level module points to a lower layer (so there are no import
//! cycles), and the leaves import nothing from the crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

/// Layer of each top-level module; a module may use only lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("api", 0),
    ("backoff", 0),
    ("fsutil", 0),
    ("kubeclient", 0),
    ("manifest", 0),
    ("metrics", 0),
    ("sync", 0),
    ("template", 0),
    ("envelope", 1),
    ("http", 1),
    ("kms", 2),
    ("resource", 3),
    ("secret", 4),
    ("wrap", 4),
    ("controller", 5),
    ("cli", 6),
];

fn rank(m: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::name` references in code (comments skipped).
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + 7..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
            rest = after;
        }
    }
    out
}

#[test]
fn modules_only_use_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut seen = BTreeMap::new();
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let r = rank(&top).unwrap_or_else(|| {
            panic!(
                "src/{} belongs to no layer: add `{top}` to LAYERS and the README map",
                rel.display()
            )
        });
        for dep in crate_refs(&std::fs::read_to_string(f).unwrap()) {
            if dep == top {
                continue;
            }
            *seen.entry(top.clone()).or_insert(0) += 1;
            match rank(&dep) {
                Some(d) if d < r => {}
                _ => bad.push(format!("src/{} uses crate::{dep}", rel.display())),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "upward or sideways imports:\n{}",
        bad.join("\n")
    );
    // the check itself sees the code (a broken scanner would pass anything)
    assert!(seen.get("controller").copied().unwrap_or(0) > 5, "{seen:?}");
    for leaf in ["api", "backoff", "fsutil", "manifest", "metrics"] {
        assert!(
            !seen.contains_key(leaf),
            "leaf {leaf} imports from the crate"
        );
    }
}
