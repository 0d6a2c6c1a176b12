//! Wall time of the review commands as git and pre-commit run them: one
//! process per call (printed, not asserted).
//!
//! ```sh
//! cargo run --release --example review_timing
//! ```
//!
//! - `textconv` of a 100-value file (git runs it per file per revision in
//!   `git log -p`; goal ≤ 5 ms) and `diff` of two 100-value files;
//! - `guard -R` over a git repository of 1,000 EncryptedSecret files (3
//!   values each) with 10 of them changed since HEAD (the history check
//!   reads those 10 files' history), and the same with `--no-history`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn time(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    (v[n / 2], v[(n * 9) / 10])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

fn main() {
    let bin = support::kmsecrets_bin();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("k.key");
    support::run(&bin, &["keygen", key.to_str().unwrap()]);
    let key_arg = format!("file:{}", key.display());
    let env: String = (0..100)
        .map(|i| format!("KEY_{i}=value-number-{i}\n"))
        .collect();
    std::fs::write(d.join("v.env"), env).unwrap();
    let f100 = d.join("f100.yaml");
    let text = support::run(
        &bin,
        &[
            "encrypt",
            "--from-env-file",
            d.join("v.env").to_str().unwrap(),
            "--name",
            "big",
            "-n",
            "payments",
            "--key",
            &key_arg,
        ],
    );
    std::fs::write(&f100, text).unwrap();
    let f100b = d.join("f100b.yaml");
    std::fs::copy(&f100, &f100b).unwrap();
    support::run(
        &bin,
        &[
            "encrypt",
            "--merge-into",
            f100b.to_str().unwrap(),
            "--from-literal",
            "KEY_7=changed",
            "--local-key",
            key.to_str().unwrap(),
        ],
    );
    let run = |args: &[&str], cwd: &Path| {
        let out = Command::new(&bin)
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(
            out.status.code().is_some_and(|c| c < 2),
            "{args:?}: {out:?}"
        );
    };
    let (tc, tc90) = time(100, || run(&["textconv", f100.to_str().unwrap()], d));
    let (df, df90) = time(100, || {
        run(
            &["diff", f100.to_str().unwrap(), f100b.to_str().unwrap()],
            d,
        )
    });

    // a repository of 1,000 files
    let repo = d.join("repo");
    std::fs::create_dir_all(repo.join("secrets")).unwrap();
    git(&repo, &["init", "-q"]);
    for i in 0..1000 {
        let text = support::run(
            &bin,
            &[
                "encrypt",
                "--from-literal",
                &format!("user=u{i}"),
                "--from-literal",
                &format!("password=p{i}"),
                "--from-literal",
                &format!("url=https://db{i}"),
                "--name",
                &format!("s{i}"),
                "-n",
                &format!("ns{}", i % 100),
                "--key",
                &key_arg,
            ],
        );
        std::fs::write(repo.join(format!("secrets/s{i:04}.yaml")), text).unwrap();
    }
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "v1"]);
    for i in 0..10 {
        let f = repo.join(format!("secrets/s{i:04}.yaml"));
        support::run(
            &bin,
            &[
                "encrypt",
                "--merge-into",
                f.to_str().unwrap(),
                "--from-literal",
                "password=new",
                "--local-key",
                key.to_str().unwrap(),
            ],
        );
    }
    let (g, g90) = time(10, || run(&["guard", "-R", "."], &repo));
    let (gn, gn90) = time(10, || run(&["guard", "-R", "--no-history", "."], &repo));

    println!("| command | median | p90 |");
    println!("|---|---|---|");
    println!("| textconv, 100 values | {} | {} |", ms(tc), ms(tc90));
    println!(
        "| diff, 100 values (1 changed) | {} | {} |",
        ms(df),
        ms(df90)
    );
    println!(
        "| guard -R, 1,000 files, 10 changed since HEAD | {} | {} |",
        ms(g),
        ms(g90)
    );
    println!(
        "| guard -R --no-history, 1,000 files | {} | {} |",
        ms(gn),
        ms(gn90)
    );
}
