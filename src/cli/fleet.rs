//! Many files at once (`rotate`, `verify`, `decrypt` over a repository):
//! path expansion, a progress bar on a terminal, per-file outcomes and the
//! summary line.
//!
//! A directory stands for its `.yaml`, `.yml` and `.json` files (sorted);
//! with `-R` also those of its subdirectories (hidden ones, such as `.git`,
//! skipped). A path given by name is always taken, whatever its extension.
//!
//! A walk never leaves the directory it was given: a symbolic link to a file
//! is followed only when its target lies inside that directory (for
//! reading: `verify`, `decrypt`), never for a command that rewrites files
//! (`rotate`: the in-tree target is visited as itself), and never to a
//! directory. A link that is not followed is counted and named on stderr.
//! (A repository can hold a link to `~/.kube/config`; `decrypt -R
//! --passthrough` must not print it, and `rotate -R` must not rewrite it.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{CliResult, msg};

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

fn manifest_like(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// How a walk treats symbolic links to files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Follow those whose target is inside the walked directory.
    FollowInside,
    /// Follow none (commands that write: a link is never written through).
    Skip,
}

struct Walk<'a> {
    root: &'a Path,
    recursive: bool,
    links: Links,
    out: &'a mut BTreeSet<PathBuf>,
    skipped: &'a mut Vec<PathBuf>,
}

fn walk(dir: &Path, w: &mut Walk<'_>) -> CliResult {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| msg(format!("cannot read directory {}: {e}", dir.display())))?;
    let mut subdirs = Vec::new();
    for e in entries {
        let e = e.map_err(|e| msg(format!("cannot read directory {}: {e}", dir.display())))?;
        let p = e.path();
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        let ft = e
            .file_type()
            .map_err(|err| msg(format!("cannot stat {}: {err}", p.display())))?;
        if ft.is_dir() {
            if w.recursive && !hidden {
                subdirs.push(p);
            }
        } else if ft.is_file() && manifest_like(&p) {
            w.out.insert(p);
        } else if ft.is_symlink() && p.is_file() && manifest_like(&p) {
            let inside = std::fs::canonicalize(&p).is_ok_and(|t| t.starts_with(w.root));
            if inside && w.links == Links::FollowInside {
                w.out.insert(p);
            } else {
                w.skipped.push(p);
            }
        }
    }
    for d in subdirs {
        walk(&d, w)?;
    }
    Ok(())
}

/// The files `paths` name (see the module docs), sorted and without
/// duplicates. An empty directory is an error naming it; a missing file is
/// kept (reading it fails with the usual message).
pub fn expand(paths: &[PathBuf], recursive: bool, links: Links) -> CliResult<Vec<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut skipped = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = out.len();
            let root = std::fs::canonicalize(p)
                .map_err(|e| msg(format!("cannot read directory {}: {e}", p.display())))?;
            walk(
                p,
                &mut Walk {
                    root: &root,
                    recursive,
                    links,
                    out: &mut out,
                    skipped: &mut skipped,
                },
            )?;
            if out.len() == before {
                return Err(msg(format!(
                    "{} holds no .yaml, .yml or .json files{}",
                    p.display(),
                    if recursive { "" } else { " (-R to recurse)" }
                )));
            }
        } else {
            // a missing file fails where it is read, with the usual message
            out.insert(p.clone());
        }
    }
    if !skipped.is_empty() {
        let why = match links {
            Links::FollowInside => "they lead out of the directory given",
            Links::Skip => "files are never rewritten through a link",
        };
        let names: Vec<String> = skipped.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "skipped {} symbolic link{} ({why}): {}",
            skipped.len(),
            if skipped.len() == 1 { "" } else { "s" },
            names.join(", ")
        );
    }
    Ok(out.into_iter().collect())
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Rewritten (or, with --dry-run, would be): the line to print.
    Rewritten(String),
    /// The line to print.
    Unchanged(String),
    Failed(String),
    /// Nothing in it to process (only other kinds).
    Skipped,
}

/// Counts for the summary line.
#[derive(Debug, Default)]
pub struct Summary {
    pub rewritten: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub skipped_files: usize,
    pub skipped_docs: usize,
}

impl Summary {
    pub fn add(&mut self, o: &FileOutcome) {
        match o {
            FileOutcome::Rewritten(_) => self.rewritten += 1,
            FileOutcome::Unchanged(_) => self.unchanged += 1,
            FileOutcome::Failed(_) => self.failed += 1,
            FileOutcome::Skipped => self.skipped_files += 1,
        }
    }

    /// `N rewritten, M unchanged, K failed` (+ what was skipped).
    pub fn line(&self, dry_run: bool) -> String {
        let verb = if dry_run {
            "would be rewritten"
        } else {
            "rewritten"
        };
        let mut s = format!(
            "{} {verb}, {} unchanged, {} failed",
            self.rewritten, self.unchanged, self.failed
        );
        if self.skipped_docs > 0 || self.skipped_files > 0 {
            s.push_str(&format!(
                " ({} document(s) of other kinds skipped; {} file(s) without an EncryptedSecret)",
                self.skipped_docs, self.skipped_files
            ));
        }
        s
    }
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (CI
/// logs, pipes), so output stays line-oriented and quiet.
pub fn progress(len: usize, what: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let pb = if std::io::stderr().is_terminal() && len > 1 {
        ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {wide_msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}

/// Print one file's outcome above the progress bar.
pub fn report(pb: &ProgressBar, path: &Path, o: &FileOutcome) {
    let line = match o {
        FileOutcome::Rewritten(line) | FileOutcome::Unchanged(line) => line.clone(),
        FileOutcome::Failed(e) => {
            let shown = path.display().to_string();
            let e = e.strip_prefix(&format!("{shown}: ")).unwrap_or(e);
            format!("failed {shown}: {e}")
        }
        FileOutcome::Skipped => format!("skipped {}: no EncryptedSecret in it", path.display()),
    };
    pb.suspend(|| eprintln!("{line}"));
    pb.inc(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_directories_by_extension_and_recurses_only_with_r() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for f in [
            "a.yaml",
            "b.YML",
            "c.json",
            "notes.txt",
            "sub/d.yaml",
            ".git/e.yaml",
        ] {
            let path = p.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "x").unwrap();
        }
        let names = |v: Vec<PathBuf>| {
            v.iter()
                .map(|x| x.strip_prefix(p).unwrap().display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(expand(&[p.to_path_buf()], false, Links::FollowInside).unwrap()),
            ["a.yaml", "b.YML", "c.json"]
        );
        assert_eq!(
            names(expand(&[p.to_path_buf()], true, Links::FollowInside).unwrap()),
            ["a.yaml", "b.YML", "c.json", "sub/d.yaml"]
        );
        // a file named explicitly is taken whatever its extension; duplicates collapse
        let both = expand(
            &[p.join("notes.txt"), p.join("a.yaml"), p.join("a.yaml")],
            false,
            Links::FollowInside,
        )
        .unwrap();
        assert_eq!(names(both), ["a.yaml", "notes.txt"]);
        assert_eq!(
            names(expand(&[p.join("missing.yaml")], false, Links::FollowInside).unwrap()),
            ["missing.yaml"]
        );
        std::fs::create_dir(p.join("empty")).unwrap();
        let e = expand(&[p.join("empty")], false, Links::FollowInside).unwrap_err();
        assert!(e.to_string().contains("-R to recurse"), "{e}");
    }

    #[test]
    fn summary_line() {
        let mut s = Summary::default();
        for o in [
            FileOutcome::Rewritten("rotated".into()),
            FileOutcome::Rewritten("rotated".into()),
            FileOutcome::Unchanged(String::new()),
            FileOutcome::Failed("x".into()),
        ] {
            s.add(&o);
        }
        assert_eq!(s.line(false), "2 rewritten, 1 unchanged, 1 failed");
        s.skipped_docs = 3;
        assert!(
            s.line(true)
                .starts_with("2 would be rewritten, 1 unchanged, 1 failed (3 document(s)")
        );
    }
}
