//! Reviewing EncryptedSecrets in git without decrypting anything:
//! `kmsecrets textconv FILE` prints a canonical redacted view (a git diff
//! driver: `*.yaml diff=kmsecrets`), and `kmsecrets diff OLD NEW` says what
//! changed — value added / removed / changed, re-wrapped only, rotated — and
//! flags the security-relevant changes loudly (scope widened, binding
//! changed, context removed, a wrapping key added or removed, a template
//! that now reads another value).
//!
//! Nothing here makes a KMS call or sees plaintext: an unchanged value
//! keeps byte-identical ciphertext (`edit`, `--merge-into`), so ciphertext
//! alone says what changed. Fingerprints are SHA-256 of the *ciphertext*
//! (never of plaintext, which a hash of a short password would leak).

use std::collections::{BTreeMap, BTreeSet};

use std::path::PathBuf;

use clap::Args;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::history;
use super::rules::scope_rank;
use super::{CliError, CliResult, GlobalArgs, LayerArgs, msg, to_encrypted};
use crate::api::EncryptedSecret;
use crate::manifest;
use crate::resource::Plaintext;

#[derive(Args, Debug)]
pub struct TextconvArgs {
    /// An EncryptedSecret manifest (multi-document; - for stdin); git passes the path here
    #[arg(required_unless_present = "filename", conflicts_with = "filename")]
    pub file: Option<String>,
    /// The same as FILE
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: Option<String>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The old manifest (- for stdin)
    #[arg(required_unless_present = "history")]
    pub old: Option<String>,
    /// The new manifest (- for stdin)
    #[arg(required_unless_present = "history")]
    pub new: Option<String>,
    /// Instead of OLD NEW: report the values of FILE (as in the work tree) put back to a ciphertext an earlier commit held and a later one replaced (reads git history; no KMS call)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["old", "new", "decrypt"])]
    pub history: Option<PathBuf>,
    /// Also say, per changed value, its old and new length and whether the plaintext really changed (needs kms:Decrypt / --local-key; never prints a value)
    #[arg(long)]
    pub decrypt: bool,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// A fingerprint of ciphertext (12 hex digits of SHA-256).
fn fp(ciphertext: &str) -> String {
    let h = Sha256::digest(ciphertext.as_bytes());
    hex::encode(&h[..6])
}

fn resources(path: &str) -> CliResult<BTreeMap<String, EncryptedSecret>> {
    let source = manifest::source_name(path);
    let bytes = manifest::read_source(path)?;
    resources_from(&bytes, &source)
}

/// The EncryptedSecrets of a manifest stream, by `namespace/name`
/// (documents of other kinds left out).
pub fn resources_from(bytes: &[u8], source: &str) -> CliResult<BTreeMap<String, EncryptedSecret>> {
    let mut out = BTreeMap::new();
    for doc in manifest::parse_stream(bytes, source)? {
        if doc.kind() != crate::api::KIND || doc.api_version() != crate::api::API_VERSION {
            continue;
        }
        let es = to_encrypted(&doc, source)?;
        let id = format!(
            "{}/{}",
            es.metadata.namespace.as_deref().unwrap_or("-"),
            es.metadata.name.as_deref().unwrap_or("-")
        );
        out.insert(id, es);
    }
    Ok(out)
}

/// The canonical redacted view of one resource: one line per fact.
pub fn redacted(id: &str, es: &EncryptedSecret) -> String {
    let s = &es.spec;
    let mut out = format!("EncryptedSecret {id}\n  scope: {}\n", s.scope.as_str());
    for (k, v) in &s.encryption_context {
        out.push_str(&format!("  context {k}: {v}\n"));
    }
    for d in &s.data_keys {
        out.push_str(&format!(
            "  data key {} {}: wrapped {}\n",
            d.provider.as_str(),
            d.key_id,
            fp(&d.ciphertext)
        ));
    }
    for (k, v) in &s.encrypted_data {
        out.push_str(&format!("  value {k}: {}\n", fp(v)));
    }
    if let Some(t) = &s.template {
        if let Some(ty) = &t.type_ {
            out.push_str(&format!("  type: {ty}\n"));
        }
        for (k, v) in &t.data {
            out.push_str(&format!("  template {k}: {}\n", v.escape_debug()));
        }
    }
    for r in &s.rollout_restart_targets {
        out.push_str(&format!("  restart: {}/{}\n", r.kind.as_str(), r.name));
    }
    out
}

pub fn textconv(a: TextconvArgs) -> CliResult {
    let file = a
        .file
        .or(a.filename)
        .ok_or_else(|| msg("textconv needs FILE"))?;
    let mut out = String::new();
    for (id, es) in resources(&file)? {
        out.push_str(&redacted(&id, &es));
    }
    super::out(out)
}

/// Every value's ciphertext, by resource and key (for history checks).
pub fn values_of(resources: &BTreeMap<String, EncryptedSecret>) -> history::Values {
    let mut out = history::Values::new();
    for (id, es) in resources {
        for (k, v) in &es.spec.encrypted_data {
            out.insert((id.clone(), k.clone()), v.clone());
        }
    }
    out
}

/// The plaintexts of both sides, for `--decrypt`.
type Opened<'a> = Option<(&'a Plaintext, &'a Plaintext)>;

/// "12 bytes"
fn len_of(p: &Plaintext, k: &str) -> String {
    p.get(k)
        .map(|v| super::count(v.len(), "byte"))
        .unwrap_or_else(|| "?".into())
}

/// `--decrypt`'s note on one value present on both sides.
fn plain_change(plain: Opened<'_>, k: &str) -> Option<(bool, String)> {
    let (o, n) = plain?;
    let (a, b) = (o.get(k)?, n.get(k)?);
    let same = a.len() == b.len() && bool::from(a.as_slice().ct_eq(b.as_slice()));
    Some(if same {
        (false, format!("plaintext unchanged, {}", len_of(o, k)))
    } else {
        (
            true,
            format!("plaintext changed, {} → {}", len_of(o, k), len_of(n, k)),
        )
    })
}

/// The value names a template text mentions (identifiers and
/// `values["…"]` subscripts), to notice a template that starts reading
/// another value.
fn reads(templates: &BTreeMap<String, String>, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for t in templates.values() {
        for n in names {
            if t.contains(&format!("\"{n}\""))
                || t.contains(&format!("'{n}'"))
                || t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|w| w == n)
            {
                out.insert(n.clone());
            }
        }
    }
    out
}

/// What changed in one resource: (loud security findings, other lines).
fn compare(
    old: &EncryptedSecret,
    new: &EncryptedSecret,
    plain: Opened<'_>,
) -> (Vec<String>, Vec<String>) {
    let (o, n) = (&old.spec, &new.spec);
    let mut loud = Vec::new();
    let mut lines = Vec::new();
    if scope_rank(n.scope) > scope_rank(o.scope) {
        loud.push(format!(
            "scope widened: {} → {}",
            o.scope.as_str(),
            n.scope.as_str()
        ));
    } else if n.scope != o.scope {
        lines.push(format!(
            "scope narrowed: {} → {}",
            o.scope.as_str(),
            n.scope.as_str()
        ));
    }
    for (k, v) in &o.encryption_context {
        match n.encryption_context.get(k) {
            None => loud.push(format!("context removed: {k}")),
            Some(w) if w != v => loud.push(format!("context changed: {k}")),
            _ => {}
        }
    }
    for k in n.encryption_context.keys() {
        if !o.encryption_context.contains_key(k) {
            lines.push(format!("context added: {k}"));
        }
    }
    let keys = |s: &crate::api::EncryptedSecretSpec| -> BTreeSet<String> {
        s.data_keys
            .iter()
            .map(|d| format!("{} {}", d.provider.as_str(), d.key_id))
            .collect()
    };
    let (ok, nk) = (keys(o), keys(n));
    for k in nk.difference(&ok) {
        loud.push(format!("wrapping key added: {k}"));
    }
    for k in ok.difference(&nk) {
        loud.push(format!("wrapping key removed: {k}"));
    }
    let wrapped = |s: &crate::api::EncryptedSecretSpec| -> BTreeSet<String> {
        s.data_keys.iter().map(|d| d.ciphertext.clone()).collect()
    };
    let copies_changed = wrapped(o) != wrapped(n);
    let (ov, nv) = (&o.encrypted_data, &n.encrypted_data);
    let common: Vec<&String> = ov.keys().filter(|k| nv.contains_key(*k)).collect();
    let changed: Vec<&String> = common
        .iter()
        .copied()
        .filter(|k| ov[*k] != nv[*k])
        .collect();
    let rotated = copies_changed && !common.is_empty() && changed.len() == common.len();
    if rotated {
        lines.push(format!(
            "rotated: a new data key, every value re-encrypted ({})",
            super::count(nv.len(), "value")
        ));
        if plain.is_some() {
            let mut same = 0;
            for k in &changed {
                match plain_change(plain, k) {
                    Some((true, note)) => lines.push(format!("{k}: {note}")),
                    Some((false, _)) => same += 1,
                    None => {}
                }
            }
            if same > 0 {
                lines.push(format!(
                    "plaintext unchanged for {}",
                    super::count(same, "value")
                ));
            }
        }
    } else {
        if copies_changed && changed.is_empty() {
            lines.push(
                "re-wrapped only: the same data key under changed copies; values untouched".into(),
            );
        } else if copies_changed {
            lines.push("data key copies changed".into());
        }
        for k in &changed {
            match plain_change(plain, k) {
                Some((_, note)) => lines.push(format!("{k}: changed ({note})")),
                None => lines.push(format!("{k}: changed")),
            }
        }
    }
    for k in nv.keys().filter(|k| !ov.contains_key(*k)) {
        match plain {
            Some((_, n)) => lines.push(format!("{k}: added ({})", len_of(n, k))),
            None => lines.push(format!("{k}: added")),
        }
    }
    for k in ov.keys().filter(|k| !nv.contains_key(*k)) {
        match plain {
            Some((o, _)) => lines.push(format!("{k}: removed ({})", len_of(o, k))),
            None => lines.push(format!("{k}: removed")),
        }
    }
    let names: BTreeSet<String> = ov.keys().chain(nv.keys()).cloned().collect();
    let empty = BTreeMap::new();
    let tmpl = |s: &crate::api::EncryptedSecretSpec| {
        s.template
            .as_ref()
            .map(|t| t.data.clone())
            .unwrap_or_else(|| empty.clone())
    };
    let (ot, nt) = (tmpl(o), tmpl(n));
    let (or, nr) = (reads(&ot, &names), reads(&nt, &names));
    for k in nr.difference(&or) {
        loud.push(format!("a template now reads value {k}"));
    }
    for (k, t) in &nt {
        match ot.get(k) {
            None => lines.push(format!("template {k}: added")),
            Some(u) if u != t => lines.push(format!("template {k}: changed")),
            _ => {}
        }
    }
    for k in ot.keys().filter(|k| !nt.contains_key(*k)) {
        lines.push(format!("template {k}: removed"));
    }
    if o.rollout_restart_targets != n.rollout_restart_targets {
        lines.push("rollout restart targets changed".into());
    }
    (loud, lines)
}

/// Open a resource for `--decrypt` (both sides go through one layer: a
/// data key shared by OLD and NEW is unwrapped once).
async fn open(
    kms: &crate::kms::layer::Kms,
    id: &str,
    es: &EncryptedSecret,
) -> CliResult<Plaintext> {
    crate::resource::open_resource(kms, es)
        .await
        .map(|o| o.values)
        .map_err(|e| msg(format!("--decrypt: {id}: {e}")))
}

/// Exit status as diff(1): 0 same, 1 different (as [`CliError::Differ`]),
/// other errors 2.
pub async fn diff(g: &GlobalArgs, a: DiffArgs) -> CliResult {
    if let Some(file) = &a.history {
        return history_report(file);
    }
    let (Some(old_path), Some(new_path)) = (&a.old, &a.new) else {
        return Err(msg("diff needs OLD and NEW, or --history FILE"));
    };
    let (mut old, mut new) = (resources(old_path)?, resources(new_path)?);
    let kms = if a.decrypt {
        Some(super::build_kms(g, &[], &a.layer)?.0.kms)
    } else {
        None
    };
    let mut out = String::new();
    let mut differ = false;
    // one resource on each side under another namespace/name: a move
    if old.len() == 1
        && new.len() == 1
        && old.keys().ne(new.keys())
        && let (Some((oid, o)), Some((nid, n))) = (old.pop_first(), new.pop_first())
    {
        let plain = match &kms {
            Some(kms) => Some((open(kms, &oid, &o).await?, open(kms, &nid, &n).await?)),
            None => None,
        };
        let (loud, lines) = compare(&o, &n, plain.as_ref().map(|(a, b)| (a, b)));
        out.push_str(&format!(
            "EncryptedSecret {nid}:\n  !! namespace/name changed: {oid} → {nid}\n"
        ));
        for l in loud {
            out.push_str(&format!("  !! {l}\n"));
        }
        for l in lines {
            out.push_str(&format!("  {l}\n"));
        }
        super::out(out)?;
        return Err(CliError::Differ);
    }
    let ids: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for id in ids {
        match (old.get(id), new.get(id)) {
            (Some(_), None) => {
                differ = true;
                out.push_str(&format!("EncryptedSecret {id}: removed\n"));
            }
            (None, Some(_)) => {
                differ = true;
                out.push_str(&format!("EncryptedSecret {id}: added\n"));
            }
            (Some(o), Some(n)) => {
                let (loud, lines) = compare(o, n, None);
                if loud.is_empty() && lines.is_empty() {
                    continue;
                }
                let (loud, lines) = match &kms {
                    Some(kms) => {
                        let plain = (open(kms, id, o).await?, open(kms, id, n).await?);
                        compare(o, n, Some((&plain.0, &plain.1)))
                    }
                    None => (loud, lines),
                };
                differ = true;
                out.push_str(&format!("EncryptedSecret {id}:\n"));
                for l in loud {
                    out.push_str(&format!("  !! {l}\n"));
                }
                for l in lines {
                    out.push_str(&format!("  {l}\n"));
                }
            }
            (None, None) => {}
        }
    }
    super::out(out)?;
    if differ {
        return Err(CliError::Differ);
    }
    Ok(())
}

/// The parsed versions of a file's history (unparseable ones left out).
pub fn parsed_history(
    file: &std::path::Path,
    rev: &str,
) -> CliResult<Vec<(history::Commit, history::Values)>> {
    let mut out = Vec::new();
    for v in history::versions(file, rev)? {
        let values = match &v.content {
            Some(bytes) => match resources_from(bytes, &file.display().to_string()) {
                Ok(r) => values_of(&r),
                Err(_) => continue,
            },
            None => history::Values::new(),
        };
        out.push((v.commit, values));
    }
    Ok(out)
}

/// `diff --history FILE`: exit 1 when a value was reverted.
fn history_report(file: &std::path::Path) -> CliResult {
    if history::toplevel(file).is_none() {
        return Err(msg(format!(
            "--history: {} is not in a git work tree (or git is not installed)",
            file.display()
        )));
    }
    let current = values_of(&resources(&file.display().to_string())?);
    let versions = parsed_history(file, "HEAD")?;
    let reverts = history::reverts(&versions, &current, true);
    let mut out = String::new();
    let mut last = None;
    for r in &reverts {
        if last != Some(&r.resource) {
            out.push_str(&format!("EncryptedSecret {}:\n", r.resource));
            last = Some(&r.resource);
        }
        out.push_str(&format!(
            "  !! {}: reverted to its value of {}\n",
            r.key,
            r.to.describe()
        ));
    }
    super::out(out)?;
    if reverts.is_empty() {
        Ok(())
    } else {
        Err(CliError::Differ)
    }
}
