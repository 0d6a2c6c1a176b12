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

use clap::Args;
use sha2::{Digest, Sha256};

use super::{CliError, CliResult, to_encrypted};
use crate::api::{EncryptedSecret, Scope};
use crate::manifest;

#[derive(Args, Debug)]
pub struct TextconvArgs {
    /// An EncryptedSecret manifest (multi-document; - for stdin)
    pub file: String,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The old manifest (- for stdin)
    pub old: String,
    /// The new manifest (- for stdin)
    pub new: String,
}

/// A fingerprint of ciphertext (12 hex digits of SHA-256).
fn fp(ciphertext: &str) -> String {
    let h = Sha256::digest(ciphertext.as_bytes());
    hex::encode(&h[..6])
}

fn resources(path: &str) -> CliResult<BTreeMap<String, EncryptedSecret>> {
    let source = manifest::source_name(path);
    let bytes = manifest::read_source(path)?;
    let mut out = BTreeMap::new();
    for doc in manifest::parse_stream(&bytes, &source)? {
        if doc.kind() != crate::api::KIND || doc.api_version() != crate::api::API_VERSION {
            continue;
        }
        let es = to_encrypted(&doc, &source)?;
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
    let mut out = String::new();
    for (id, es) in resources(&a.file)? {
        out.push_str(&redacted(&id, &es));
    }
    super::out(out)
}

fn scope_rank(s: Scope) -> u8 {
    match s {
        Scope::Strict => 0,
        Scope::Namespace => 1,
        Scope::Cluster => 2,
    }
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
fn compare(old: &EncryptedSecret, new: &EncryptedSecret) -> (Vec<String>, Vec<String>) {
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
    } else {
        if copies_changed && changed.is_empty() {
            lines.push(
                "re-wrapped only: the same data key under changed copies; values untouched".into(),
            );
        } else if copies_changed {
            lines.push("data key copies changed".into());
        }
        for k in &changed {
            lines.push(format!("{k}: changed"));
        }
    }
    for k in nv.keys().filter(|k| !ov.contains_key(*k)) {
        lines.push(format!("{k}: added"));
    }
    for k in ov.keys().filter(|k| !nv.contains_key(*k)) {
        lines.push(format!("{k}: removed"));
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

/// Exit status as diff(1): 0 same, 1 different (as [`CliError::Differ`]),
/// other errors 2.
pub fn diff(a: DiffArgs) -> CliResult {
    let (mut old, mut new) = (resources(&a.old)?, resources(&a.new)?);
    let mut out = String::new();
    let mut differ = false;
    // one resource on each side under another namespace/name: a move
    if old.len() == 1
        && new.len() == 1
        && old.keys().ne(new.keys())
        && let (Some((oid, o)), Some((nid, n))) = (old.pop_first(), new.pop_first())
    {
        let (loud, lines) = compare(&o, &n);
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
                let (loud, lines) = compare(o, n);
                if loud.is_empty() && lines.is_empty() {
                    continue;
                }
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
