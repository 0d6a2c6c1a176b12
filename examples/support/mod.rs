//! Helpers shared by the examples that drive the real `kmsecrets` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The release (or debug) `kmsecrets` next to this example, built first;
/// `KMSECRETS_BIN` overrides it (e.g. a build with debug info to profile).
pub fn kmsecrets_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KMSECRETS_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/examples/e2e_numbers → target/<profile>/kmsecrets
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bin", "kmsecrets", "--manifest-path"])
        .arg(&manifest);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build --bin kmsecrets");
    assert!(status.success(), "cargo build --bin kmsecrets failed");
    let bin = profile_dir.join("kmsecrets");
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// The binary the container image ships (Dockerfile: release,
/// `--no-default-features --features jemalloc`), built into target/image;
/// `KMSECRETS_BIN` overrides it.
pub fn image_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KMSECRETS_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/image");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "building the image's kmsecrets (release, --no-default-features --features jemalloc) into {}",
        target.display()
    );
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "--locked",
            "--no-default-features",
        ])
        .args([
            "--features",
            "jemalloc",
            "--bin",
            "kmsecrets",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("run cargo build --bin kmsecrets");
    assert!(
        status.success(),
        "cargo build of the image's kmsecrets failed"
    );
    target.join("release/kmsecrets")
}

pub fn run(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("run kmsecrets");
    assert!(
        out.status.success(),
        "kmsecrets {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub struct Controller {
    pub child: Child,
    pub log: PathBuf,
}

/// Start `cmd` in a process group of its own (see [`Controller`]'s drop).
pub fn own_group(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

/// Stops the whole process group (started with [`own_group`]): a wrapper
/// such as heaptrack runs the controller as its child, which outlived its
/// harness when only the wrapper was killed. SIGTERM first (a profiler
/// writes its data), SIGKILL after 5 s.
impl Drop for Controller {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(std::process::Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn http_addr(&self) -> SocketAddr {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if let Some(addr) = logs
                .lines()
                .filter(|l| l.contains("serving /healthz"))
                .find_map(|l| {
                    let at = l.find("\"addr\":\"")? + 8;
                    let end = l[at..].find('"')? + at;
                    l[at..end].parse().ok()
                })
            {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no HTTP address in the controller log:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }
}

pub fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

/// Sum of the samples of `name` whose labels include every pair of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbls) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| lbls.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

impl Controller {
    /// Peak resident set (VmHWM), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }
}

/// A `/proc/PID/status` field in KiB (0 if unreadable).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, seconds (clock ticks of 1/100 s, as on Linux).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the parenthesised command name; utime, stime = fields 14, 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}
