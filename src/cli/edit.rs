//! `kmsecrets edit FILE`: decrypt into a private temp file, run $EDITOR,
//! re-encrypt with the same data key (unchanged values keep their exact
//! ciphertext), rewrite FILE atomically.
//!
//! The plaintext temp file lives in a fresh 0700 directory on a
//! memory-backed filesystem where one exists, is 0600, and is overwritten
//! with zeros and removed on every exit path: errors, the editor failing,
//! and SIGTERM/SIGHUP (which also stop the editor). SIGINT and SIGQUIT are
//! ignored while the editor runs, so Ctrl-C in the editor loses nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::encrypt::parse_secret;
use super::{
    CliError, CliResult, GlobalArgs, LayerArgs, build_kms, file_format, msg, read_one_encrypted,
};
use crate::api::TemplateMetadata;
use crate::manifest;
use crate::resource;

#[derive(Args, Debug)]
pub struct EditArgs {
    /// The EncryptedSecret file, rewritten in place
    #[arg(required_unless_present = "filename", conflicts_with = "filename")]
    pub file: Option<PathBuf>,
    /// The same as FILE, as for decrypt
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: Option<PathBuf>,
    /// A key you trust to hold the file's data key (repeatable): every KMS copy in the file must be under one of these, so new values are never sealed under a data key someone swapped in
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub trust: super::trust::TrustArgs,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// The plaintext's scratch directory: 0700, on a memory-backed filesystem
/// where one exists ([`scratch_parent`]). On drop every regular file in it
/// (the Secret and whatever the editor left: swap or backup files) is
/// overwritten with zeros, then the directory is removed.
struct Scratch {
    path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    fn new() -> CliResult<Scratch> {
        use std::os::unix::fs::PermissionsExt;
        let (parent, memory) = scratch_parent();
        if !memory {
            eprintln!(
                "warning: no memory-backed temp filesystem found; the plaintext scratch file is on disk under {} while the editor runs",
                parent.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("kmsecrets-edit-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&parent)
            .map_err(|e| {
                msg(format!(
                    "cannot create a temp dir in {}: {e}",
                    parent.display()
                ))
            })?;
        Ok(Scratch {
            path: dir.path().join("secret.yaml"),
            dir: Some(dir),
        })
    }

    /// Wipe and remove now (drop does the same).
    fn remove(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(meta) = std::fs::symlink_metadata(&path)
                    && meta.is_file()
                    && let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path)
                {
                    let _ = f.write_all(&vec![0u8; meta.len() as usize]);
                    let _ = f.sync_all();
                }
            }
        }
        let _ = dir.close();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Where the scratch directory goes: `$XDG_RUNTIME_DIR` (per-user tmpfs on
/// systemd hosts), then `/dev/shm`, when memory-backed and writable; else
/// the temp dir (`$TMPDIR`), reported as on disk unless it is a tmpfs too.
fn scratch_parent() -> (PathBuf, bool) {
    let candidates = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/dev/shm")]);
    for c in candidates {
        if memory_backed(&c) && writable(&c) {
            return (c, true);
        }
    }
    let tmp = std::env::temp_dir();
    let memory = memory_backed(&tmp);
    (tmp, memory)
}

#[cfg(target_os = "linux")]
fn memory_backed(p: &Path) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::statfs(p).is_ok_and(|s| {
        #[allow(clippy::unnecessary_cast, clippy::cast_sign_loss)]
        let t = s.f_type as u64;
        t == TMPFS_MAGIC || t == RAMFS_MAGIC
    })
}

#[cfg(not(target_os = "linux"))]
fn memory_backed(_: &Path) -> bool {
    false
}

fn writable(p: &Path) -> bool {
    rustix::fs::access(
        p,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .is_ok()
}

fn editor() -> String {
    std::env::var("VISUAL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".into())
}

const SIGHUP: (i32, &str) = (1, "SIGHUP");
const SIGTERM: (i32, &str) = (15, "SIGTERM");

/// The signals `edit` handles while plaintext is on disk. SIGINT and SIGQUIT
/// are ignored (as git does): Ctrl-C reaches the editor, which handles it,
/// and kmsecrets keeps waiting for it. SIGTERM and SIGHUP stop the editor,
/// remove the plaintext and exit 128 + signal. (A handled signal is reset
/// to its default in the editor at exec.)
struct Signals {
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> CliResult<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let s = |k: SignalKind| {
            signal(k).map_err(|e| msg(format!("cannot install signal handlers: {e}")))
        };
        Ok(Signals {
            int: s(SignalKind::interrupt())?,
            quit: s(SignalKind::quit())?,
            term: s(SignalKind::terminate())?,
            hup: s(SignalKind::hangup())?,
        })
    }

    /// The next stopping signal (SIGTERM or SIGHUP); SIGINT and SIGQUIT are
    /// swallowed meanwhile.
    async fn stopping(&mut self) -> (i32, &'static str) {
        loop {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.quit.recv() => {}
                _ = self.term.recv() => return SIGTERM,
                _ = self.hup.recv() => return SIGHUP,
            }
        }
    }

    /// A stopping signal that arrived while no one was waiting for it.
    fn pending(&mut self) -> Option<(i32, &'static str)> {
        use futures::FutureExt;
        self.stopping().now_or_never()
    }
}

fn signalled(file: &Path, signal: (i32, &'static str)) -> CliError {
    CliError::Signalled(
        signal.0,
        format!(
            "stopped by {}: the decrypted scratch copy was removed and {} is unchanged",
            signal.1,
            file.display()
        ),
    )
}

async fn run_editor(path: &Path, file: &Path, signals: &mut Signals) -> CliResult {
    let ed = editor();
    let mut parts = ed.split_whitespace();
    let prog = parts.next().unwrap_or("vi");
    let mut child = tokio::process::Command::new(prog)
        .args(parts)
        .arg(path)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| msg(format!("cannot start editor {prog:?}: {e}; set EDITOR")))?;
    let status = tokio::select! {
        status = child.wait() => status.map_err(|e| msg(format!("editor {prog:?}: {e}")))?,
        sig = signals.stopping() => {
            stop_editor(&mut child, sig).await;
            return Err(signalled(file, sig));
        }
    };
    if !status.success() {
        return Err(msg(format!(
            "editor {prog:?} exited with {status}; nothing changed"
        )));
    }
    Ok(())
}

/// Pass the signal on to the editor (it may clean up its own files), give
/// it 2 s, then kill it.
async fn stop_editor(child: &mut tokio::process::Child, sig: (i32, &'static str)) {
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let signal = if sig == SIGHUP {
            rustix::process::Signal::HUP
        } else {
            rustix::process::Signal::TERM
        };
        let _ = rustix::process::kill_process(pid, signal);
    }
    if tokio::time::timeout(std::time::Duration::from_secs(2), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn edit(g: &GlobalArgs, a: EditArgs, file: PathBuf) -> CliResult {
    let mut es = read_one_encrypted(&file)?;
    resource::validate(&es)?;
    let key_args = a
        .keys
        .iter()
        .map(|k| super::parse_key_arg(k).map_err(msg))
        .collect::<CliResult<Vec<super::KeyArg>>>()?;
    let (setup, refs) = build_kms(g, &key_args, &a.layer)?;
    let trusted = super::trust::Trusted::new(&refs, &a.trust);
    super::trust::check_copies(
        &setup.kms,
        &es,
        &trusted,
        &file,
        "choose the data key new values are sealed with",
    )
    .await?;
    let resource::Opened {
        binding,
        dek,
        values: old,
        ..
    } = resource::open_resource(&setup.kms, &es)
        .await
        .map_err(|e| super::needs_data_key(&es, e.into()))?;

    let template = es.spec.template.clone().unwrap_or_default();
    let mut string_data = Map::new();
    let mut data = Map::new();
    for (k, v) in &old {
        match std::str::from_utf8(v) {
            Ok(s) => string_data.insert(k.clone(), Value::String(s.to_string())),
            Err(_) => data.insert(k.clone(), Value::String(crate::envelope::b64(v))),
        };
    }
    let md = template.metadata.clone().unwrap_or_default();
    // templates travel as the annotations `encrypt -f` reads them from
    let mut annotations = md.annotations.clone();
    for (k, t) in &template.data {
        annotations.insert(
            format!("{}{k}", super::encrypt::TEMPLATE_ANNOTATION_PREFIX),
            t.clone(),
        );
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": es.metadata.name, "namespace": es.metadata.namespace, "labels": md.labels, "annotations": annotations},
        "type": template.type_.clone().unwrap_or_else(|| "Opaque".into()),
        "stringData": string_data,
        "data": data,
    });
    let text = Zeroizing::new(format!(
        "# Editing {}. Plain text in stringData, base64 in data.\n# Save and quit to re-encrypt; unchanged values keep their ciphertext.\n{}",
        file.display(),
        manifest::render(&[doc], manifest::Format::Yaml)
    ));

    // From here until the scratch copy is gone, SIGTERM and SIGHUP remove it
    // before exiting; SIGINT and SIGQUIT are ignored.
    let mut signals = Signals::install()?;
    let mut scratch = Scratch::new()?;
    crate::fsutil::write_atomic(&scratch.path, text.as_bytes(), 0o600)
        .map_err(|e| msg(format!("cannot write temp file: {e}")))?;
    run_editor(&scratch.path, &file, &mut signals).await?;
    let edited = Zeroizing::new(
        std::fs::read(&scratch.path)
            .map_err(|e| msg(format!("cannot read the edited file: {e}")))?,
    );
    scratch.remove();
    if let Some(sig) = signals.pending() {
        return Err(signalled(&file, sig));
    }
    let docs = manifest::parse_stream(&edited, "the edited Secret")?;
    let [doc] = docs.as_slice() else {
        return Err(msg(
            "the edited file must hold exactly one Secret; nothing changed",
        ));
    };
    let input = parse_secret(doc, "the edited Secret")?;
    if input.name != es.metadata.name || input.namespace != es.metadata.namespace {
        return Err(msg(
            "name and namespace are bound into the ciphertext and cannot be edited; nothing changed (encrypt a new resource instead)",
        ));
    }
    let new_template = crate::api::SecretTemplate {
        type_: input.type_.clone().or(template.type_.clone()),
        immutable: template.immutable,
        metadata: (!input.labels.is_empty() || !input.annotations.is_empty()).then(|| {
            TemplateMetadata {
                labels: input.labels.clone(),
                annotations: input.annotations.clone(),
            }
        }),
        data: input.templates.clone(),
    };
    if new_template.data != template.data || !same_values_of(&old, &input.values) {
        // what the cluster will render, checked now with the values at hand
        if let Some(k) = new_template
            .data
            .keys()
            .find(|k| input.values.contains_key(*k))
        {
            return Err(msg(format!(
                "{k:?} is both a value and a template; a Secret key comes from one of them; nothing changed"
            )));
        }
        crate::template::render(&new_template.data, &input.values)
            .map_err(|e| msg(format!("{e}; nothing changed")))?;
    }
    let same_values = same_values_of(&old, &input.values);
    if same_values && normalized(&new_template) == normalized(&template) {
        eprintln!("no changes");
        return Ok(());
    }
    es.spec.encrypted_data = resource::seal(
        &dek,
        &binding,
        &input.values,
        Some((&es.spec.encrypted_data, &old)),
    )?;
    es.spec.template = Some(new_template);
    let out = manifest::render(std::slice::from_ref(&es), file_format(&file));
    crate::fsutil::rewrite_atomic(&file, out.as_bytes())
        .map_err(|e| msg(format!("cannot write {}: {e}", file.display())))?;
    eprintln!(
        "updated {} ({} values)",
        file.display(),
        es.spec.encrypted_data.len()
    );
    Ok(())
}

fn same_values_of(old: &resource::Plaintext, new: &resource::Plaintext) -> bool {
    old.len() == new.len()
        && old
            .iter()
            .all(|(k, v)| new.get(k).is_some_and(|n| n.as_slice() == v.as_slice()))
}

/// Templates compared as the Secret would come out (absent type = Opaque,
/// empty metadata = none), so opening and saving changes nothing.
fn normalized(t: &crate::api::SecretTemplate) -> crate::api::SecretTemplate {
    let mut t = t.clone();
    t.type_.get_or_insert_with(|| "Opaque".into());
    if t.metadata
        .as_ref()
        .is_some_and(|m| m.labels.is_empty() && m.annotations.is_empty())
    {
        t.metadata = None;
    }
    t
}

pub async fn run(g: &GlobalArgs, a: EditArgs) -> CliResult {
    let Some(file) = a.file.clone().or(a.filename.clone()) else {
        return Err(msg("edit needs the file: kmsecrets edit FILE"));
    };
    edit(g, a, file.clone())
        .await
        .map_err(|e| super::name_file(&file, e))
}
