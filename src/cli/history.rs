//! Rollback detection from a file's git history: a value whose ciphertext
//! equals one an *earlier* commit of the file held, and a later commit
//! replaced, was put back — "reverted to its value of <commit>". An
//! unchanged value keeps byte-identical ciphertext and a changed one gets a
//! fresh nonce, so equal ciphertext means the old value, without any
//! decryption.
//!
//! History is read through the `git` binary, not a library such as `gix`:
//! two plumbing commands (`log --raw`, `cat-file --batch`) are all this
//! needs, the user's own git then honours their repository exactly
//! (worktrees, alternates, partial clones, `safe.directory`), and the CLI
//! stays free of a large dependency tree. Every call passes
//! `--no-textconv --no-ext-diff` (never re-entering a diff driver) and
//! `GIT_OPTIONAL_LOCKS=0` (a pre-commit hook must not fight `git commit`
//! for the index lock).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{CliResult, msg};

/// One commit that changed the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub id: String,
    pub subject: String,
}

impl Commit {
    /// "1a2b3c4d5e6f (subject)"
    pub fn describe(&self) -> String {
        let short = &self.id[..self.id.len().min(12)];
        if self.subject.is_empty() {
            short.to_string()
        } else {
            format!("{short} ({})", self.subject)
        }
    }
}

/// The file as one commit left it (`None`: deleted there).
pub struct Version {
    pub commit: Commit,
    pub content: Option<Vec<u8>>,
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run(mut c: Command, what: &str) -> CliResult<Vec<u8>> {
    let out = c.output().map_err(|e| {
        msg(format!(
            "cannot run git for {what}: {e} (install git, or leave out the history check)"
        ))
    })?;
    if !out.status.success() {
        return Err(msg(format!(
            "git failed for {what}: {}",
            super::first_line(String::from_utf8_lossy(&out.stderr).trim())
        )));
    }
    Ok(out.stdout)
}

fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The work tree holding `file`, or `None` outside one (or without git).
pub fn toplevel(file: &Path) -> Option<PathBuf> {
    let mut c = git(&dir_of(file));
    c.args(["rev-parse", "--show-toplevel"]);
    let out = c.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let top = String::from_utf8(out.stdout).ok()?;
    std::fs::canonicalize(top.trim()).ok()
}

/// Whether `rev` names a commit in the repository of `dir`.
pub fn has_commit(top: &Path, rev: &str) -> bool {
    let mut c = git(top);
    c.args([
        "rev-parse",
        "--verify",
        "--quiet",
        &format!("{rev}^{{commit}}"),
    ]);
    c.stdout(Stdio::null());
    c.status().is_ok_and(|s| s.success())
}

/// Tracked files whose work-tree content differs from `rev` (absolute).
pub fn changed_since(top: &Path, rev: &str) -> CliResult<BTreeSet<PathBuf>> {
    let mut c = git(top);
    c.args([
        "diff",
        "--no-textconv",
        "--no-ext-diff",
        "--no-renames",
        "--name-only",
        "-z",
        rev,
        "--",
    ]);
    let out = run(c, &format!("changes since {rev}"))?;
    Ok(out
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| top.join(String::from_utf8_lossy(p).as_ref()))
        .collect())
}

/// Every version of `file` that commits reachable from `rev` made, oldest
/// first (renames followed).
pub fn versions(file: &Path, rev: &str) -> CliResult<Vec<Version>> {
    let dir = dir_of(file);
    let name = file
        .file_name()
        .ok_or_else(|| msg(format!("{} is not a file", file.display())))?;
    let mut c = git(&dir);
    c.args([
        "log",
        "--no-textconv",
        "--no-ext-diff",
        "--follow",
        "--raw",
        "--no-abbrev",
        "--format=%x00%H%x09%s",
        rev,
        "--",
    ])
    .arg(name);
    let what = format!("the history of {}", file.display());
    let out = run(c, &what)?;
    let text = String::from_utf8_lossy(&out);
    let mut commits: Vec<(Commit, Option<String>)> = Vec::new();
    for chunk in text.split('\0').filter(|c| !c.trim().is_empty()) {
        let mut lines = chunk.lines();
        let head = lines.next().unwrap_or_default();
        let (id, subject) = head.split_once('\t').unwrap_or((head, ""));
        // ":100644 100644 OLD NEW M\tpath" (or R100 with two paths)
        let blob = lines.find(|l| l.starts_with(':')).map(|l| {
            let meta = l.split('\t').next().unwrap_or_default();
            let f: Vec<&str> = meta.split_whitespace().collect();
            let status = f.get(4).copied().unwrap_or_default();
            if status.starts_with('D') {
                None
            } else {
                f.get(3).map(|s| s.to_string())
            }
        });
        if let Some(blob) = blob {
            commits.push((
                Commit {
                    id: id.trim().to_string(),
                    subject: subject.to_string(),
                },
                blob,
            ));
        }
    }
    commits.reverse();
    let blobs: Vec<&str> = commits.iter().filter_map(|(_, b)| b.as_deref()).collect();
    let mut contents = cat_blobs(&dir, &blobs, &what)?.into_iter();
    Ok(commits
        .into_iter()
        .map(|(commit, blob)| Version {
            commit,
            content: blob.and_then(|_| contents.next()),
        })
        .collect())
}

/// The blobs' contents, in order, through one `git cat-file --batch`.
fn cat_blobs(dir: &Path, ids: &[&str], what: &str) -> CliResult<Vec<Vec<u8>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = git(dir);
    c.args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| msg(format!("cannot run git for {what}: {e}")))?;
    let mut input = String::new();
    for id in ids {
        input.push_str(id);
        input.push('\n');
    }
    let mut stdin = child.stdin.take().ok_or_else(|| msg("git: no stdin"))?;
    // from a thread: git answers while we write
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut reader =
        std::io::BufReader::new(child.stdout.take().ok_or_else(|| msg("git: no stdout"))?);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let mut header = String::new();
        reader
            .read_line(&mut header)
            .map_err(|e| msg(format!("git cat-file for {what}: {e}")))?;
        // "<id> blob <size>"
        let size: usize = header
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| msg(format!("git cat-file for {what}: no blob {id}")))?;
        let mut body = vec![0u8; size + 1];
        reader
            .read_exact(&mut body)
            .map_err(|e| msg(format!("git cat-file for {what}: {e}")))?;
        body.pop();
        out.push(body);
    }
    let _ = writer.join();
    let _ = child.wait();
    Ok(out)
}

/// A value's ciphertext, by resource (`namespace/name`) and key.
pub type Values = BTreeMap<(String, String), String>;

/// Where `history` (oldest first; `None`: the value absent there) last
/// held `current` before something else replaced it: the index of the
/// version that introduced that ciphertext. `settled`: versions at the end
/// still holding `current` are the value's present, not a past (whole
/// history); otherwise the last version must differ (a check of what
/// changed since it).
pub fn reverted_to(history: &[Option<&str>], current: &str, settled: bool) -> Option<usize> {
    let mut i = history.len();
    if settled {
        while i > 0 && history[i - 1] == Some(current) {
            i -= 1;
        }
    } else if history.last() == Some(&Some(current)) {
        return None;
    }
    // history[i-1] (if any) differs; an earlier one holding `current` is a revert
    let j = (0..i.saturating_sub(1))
        .rev()
        .find(|&j| history[j] == Some(current))?;
    let mut k = j;
    while k > 0 && history[k - 1] == Some(current) {
        k -= 1;
    }
    Some(k)
}

/// One reverted value.
pub struct Revert {
    pub resource: String,
    pub key: String,
    pub to: Commit,
}

/// The values of `current` that went back to an earlier ciphertext.
/// Versions that do not parse are left out.
pub fn reverts(versions: &[(Commit, Values)], current: &Values, settled: bool) -> Vec<Revert> {
    let mut out = Vec::new();
    for ((resource, key), ct) in current {
        let history: Vec<Option<&str>> = versions
            .iter()
            .map(|(_, v)| v.get(&(resource.clone(), key.clone())).map(String::as_str))
            .collect();
        if let Some(k) = reverted_to(&history, ct, settled) {
            out.push(Revert {
                resource: resource.clone(),
                key: key.clone(),
                to: versions[k].0.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::reverted_to;

    type Case<'a> = (&'a [Option<&'a str>], &'a str, bool, Option<usize>);

    #[test]
    fn a_put_back_ciphertext_is_found_and_dated_to_its_introduction() {
        let (a, b, c) = (Some("A"), Some("B"), Some("C"));
        // (history, current, settled) → introducing version
        let cases: &[Case<'_>] = &[
            (&[a, b, a], "A", true, Some(0)),
            (&[a, a, b, a, a], "A", true, Some(0)),
            (&[c, a, a, b, a], "A", true, Some(1)),
            (&[a, b], "A", false, Some(0)),
            (&[a, None, a], "A", true, Some(0)),
            (&[a, a, a], "A", true, None),
            (&[a, b, c], "C", true, None),
            (&[a, b, a], "A", false, None),
            (&[], "A", true, None),
            (&[b], "A", false, None),
            (&[a], "A", false, None),
        ];
        for (h, cur, settled, want) in cases {
            assert_eq!(
                reverted_to(h, cur, *settled),
                *want,
                "{h:?} {cur} {settled}"
            );
        }
    }
}
