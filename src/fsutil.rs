//! Atomic file writes: temp file in the same directory, fsync, rename. A
//! failed command never leaves a half-written file behind.

use std::io::Write;
use std::path::Path;

pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    write_impl(path, contents, mode, false)
}

/// Like [`write_atomic`] but fails if `path` exists (even if it appears
/// between our check and the rename).
pub fn write_new_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    write_impl(path, contents, mode, true)
}

fn write_impl(path: &Path, contents: &[u8], mode: u32, no_clobber: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kmsecrets-")
        .tempfile_in(dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    if no_clobber {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    } else {
        tmp.persist(path).map_err(|e| e.error)?;
    }
    Ok(())
}

/// Like [`write_atomic`] but keeps the existing file's permissions. Never
/// writes through a symbolic link: a link in a repository may lead anywhere
/// (`~/.kube/config`), and rewriting "the file" must not rewrite that.
pub fn rewrite_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::other(
            "it is a symbolic link, and kmsecrets never writes through one: run the command on the link's target",
        ));
    }
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic(path, contents, mode)
}
