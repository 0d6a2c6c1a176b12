//! `kmsecrets edit FILE`: decrypt into a private temp file, run $EDITOR,
//! re-encrypt with the same data key (unchanged values keep their exact
//! ciphertext), rewrite FILE atomically.
//!
//! The plaintext temp file lives in a fresh 0700 directory, is 0600, is
//! overwritten with zeros and removed on every exit path.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::encrypt::parse_secret;
use super::{CliResult, GlobalArgs, LayerArgs, build_kms, file_format, msg, read_one_encrypted};
use crate::api::TemplateMetadata;
use crate::manifest;
use crate::resource;

#[derive(Args, Debug)]
pub struct EditArgs {
    /// The EncryptedSecret file, rewritten in place
    pub file: PathBuf,
    #[command(flatten)]
    pub layer: LayerArgs,
}

struct Scratch {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::metadata(&self.path)
            && let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&self.path)
        {
            let _ = f.write_all(&vec![0u8; meta.len() as usize]);
            let _ = f.sync_all();
        }
    }
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

fn run_editor(path: &Path) -> CliResult {
    let ed = editor();
    let mut parts = ed.split_whitespace();
    let prog = parts.next().unwrap_or("vi");
    let status = std::process::Command::new(prog)
        .args(parts)
        .arg(path)
        .status()
        .map_err(|e| msg(format!("cannot start editor {prog:?}: {e}; set EDITOR")))?;
    if !status.success() {
        return Err(msg(format!(
            "editor {prog:?} exited with {status}; nothing changed"
        )));
    }
    Ok(())
}

async fn edit(g: &GlobalArgs, a: EditArgs) -> CliResult {
    let mut es = read_one_encrypted(&a.file)?;
    resource::validate(&es)?;
    let (setup, _) = build_kms(g, &[], &a.layer)?;
    let resource::Opened {
        binding,
        dek,
        values: old,
        ..
    } = resource::open_resource(&setup.kms, &es).await?;

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
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": es.metadata.name, "namespace": es.metadata.namespace, "labels": md.labels, "annotations": md.annotations},
        "type": template.type_.clone().unwrap_or_else(|| "Opaque".into()),
        "stringData": string_data,
        "data": data,
    });
    let text = Zeroizing::new(format!(
        "# Editing {}. Plain text in stringData, base64 in data.\n# Save and quit to re-encrypt; unchanged values keep their ciphertext.\n{}",
        a.file.display(),
        manifest::render(&[doc], manifest::Format::Yaml)
    ));

    let dir = tempfile::Builder::new()
        .prefix("kmsecrets-edit-")
        .tempdir()
        .map_err(|e| msg(format!("cannot create a temp dir: {e}")))?;
    let scratch = Scratch {
        path: dir.path().join("secret.yaml"),
        _dir: dir,
    };
    crate::fsutil::write_atomic(&scratch.path, text.as_bytes(), 0o600)
        .map_err(|e| msg(format!("cannot write temp file: {e}")))?;
    run_editor(&scratch.path)?;
    let edited = Zeroizing::new(
        std::fs::read(&scratch.path)
            .map_err(|e| msg(format!("cannot read the edited file: {e}")))?,
    );
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
    };
    let same_values = old.len() == input.values.len()
        && old.iter().all(|(k, v)| {
            input
                .values
                .get(k)
                .is_some_and(|n| n.as_slice() == v.as_slice())
        });
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
    let out = manifest::render(std::slice::from_ref(&es), file_format(&a.file));
    crate::fsutil::rewrite_atomic(&a.file, out.as_bytes())
        .map_err(|e| msg(format!("cannot write {}: {e}", a.file.display())))?;
    eprintln!(
        "updated {} ({} values)",
        a.file.display(),
        es.spec.encrypted_data.len()
    );
    Ok(())
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
    let file = a.file.clone();
    edit(g, a).await.map_err(|e| super::name_file(&file, e))
}
