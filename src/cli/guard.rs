//! `kmsecrets guard [-R] PATH…`: the check a pre-commit hook and CI run
//! before secrets reach a repository. One line per finding on stdout,
//! `FILE:DOCUMENT: what`, and exit 1 when there is any:
//!
//! - a plaintext `Secret` (`data` or `stringData` with a non-empty value)
//!   anywhere in a YAML or JSON document — top level, inside a `List`, or
//!   embedded in another object (a template's `objects`, a Helm-free
//!   bundle); values that are all template placeholders (`{{ … }}`,
//!   `${…}`) are not secrets yet;
//! - a `kubectl.kubernetes.io/last-applied-configuration` annotation
//!   holding such a Secret;
//! - an EncryptedSecret that is malformed, or breaks its `.kmsecrets.yaml`
//!   rule (wrong keys, wider scope, missing context, a type not allowed, no
//!   rule for its path);
//! - in a git work tree, a value put back to a ciphertext an earlier commit
//!   held and a later one replaced, when the change since `--since`
//!   (default `HEAD`) did it.
//!
//! A file that is not valid YAML (a Helm template) is checked by its text:
//! a document with a top-level `kind: Secret` and a non-empty top-level
//! `data:`/`stringData:`. Findings never quote a value, only counts.
//! Nothing here calls KMS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use super::history;
use super::review::{parsed_history, resources_from, values_of};
use super::rules::{self, Lookup, RulesCache};
use super::{CliError, CliResult, fleet, msg};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Args, Debug)]
pub struct GuardArgs {
    /// Files (any YAML or JSON), or directories of .yaml, .yml and .json files
    #[arg(required_unless_present = "filename", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The same as PATH (repeatable)
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filename: Vec<PathBuf>,
    /// Recurse into subdirectories of directory PATHs
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Report values reverted by the changes since REV (CI: the branch merged into, e.g. origin/main)
    #[arg(long, value_name = "REV", default_value = "HEAD")]
    pub since: String,
    /// Do not read git history (no reverted-value check)
    #[arg(long)]
    pub no_history: bool,
}

/// Placeholders of templating tools: not a secret yet.
fn placeholder(s: &str) -> bool {
    let t = s.trim();
    (t.starts_with("{{") && t.ends_with("}}")) || (t.starts_with("${") && t.ends_with('}'))
}

/// How many non-empty, non-placeholder values a Secret's `data` and
/// `stringData` hold.
fn secret_values(obj: &serde_json::Map<String, Value>) -> usize {
    let mut n = 0;
    for field in ["data", "stringData"] {
        if let Some(Value::Object(m)) = obj.get(field) {
            n += m
                .values()
                .filter(|v| match v {
                    Value::Null => false,
                    Value::String(s) => !s.is_empty() && !placeholder(s),
                    _ => true,
                })
                .count();
        }
    }
    n
}

fn describe(obj: &serde_json::Map<String, Value>) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(no name)");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Plaintext Secrets in `v`, at any depth, and in last-applied annotations.
pub fn scan(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(obj) => {
            if obj.get("kind").and_then(Value::as_str) == Some("Secret") {
                let n = secret_values(obj);
                if n > 0 {
                    out.push(format!(
                        "plaintext {} with {} (commit an EncryptedSecret instead: kmsecrets encrypt)",
                        describe(obj),
                        super::count(n, "value")
                    ));
                }
            }
            if let Some(Value::String(la)) = obj
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .and_then(|a| a.get(LAST_APPLIED))
            {
                let mut inner = Vec::new();
                if let Ok(applied) = serde_json::from_str::<Value>(la) {
                    scan(&applied, &mut inner);
                }
                if !inner.is_empty() {
                    out.push(format!(
                        "{LAST_APPLIED} annotation of {} holds a Secret's data",
                        describe(obj)
                    ));
                }
            }
            for (k, child) in obj {
                if k != "metadata" {
                    scan(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| scan(i, out)),
        _ => {}
    }
}

/// A file that is not YAML: its documents by text (see the module docs).
fn scan_text(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut docs: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        if line.starts_with("---") {
            docs.push(Vec::new());
        } else if let Some(d) = docs.last_mut() {
            d.push(line);
        }
    }
    let mut index = 0;
    for d in docs {
        if d.iter()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        index += 1;
        let secret = d.iter().any(|l| {
            l.strip_prefix("kind:")
                .is_some_and(|k| k.trim().trim_matches(|c| c == '"' || c == '\'') == "Secret")
        });
        if !secret {
            continue;
        }
        let mut values = 0;
        let mut inside = false;
        for l in &d {
            if let Some(rest) = l
                .strip_prefix("data:")
                .or_else(|| l.strip_prefix("stringData:"))
            {
                let rest = rest.trim();
                inside = rest.is_empty();
                if rest.starts_with('{') && rest != "{}" {
                    values += 1;
                }
                continue;
            }
            if !l.starts_with([' ', '\t']) && !l.trim().is_empty() {
                inside = false;
                continue;
            }
            if inside
                && let Some((_, v)) = l.trim().split_once(':')
                && !l.trim_start().starts_with('#')
            {
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                if !v.is_empty() && !placeholder(v) {
                    values += 1;
                }
            }
        }
        if values > 0 {
            out.push((
                index,
                format!(
                    "plaintext Secret with data (the file is not valid YAML, so it was checked by its text; {})",
                    super::count(values, "value")
                ),
            ));
        }
    }
    out
}

/// One finding.
struct Finding {
    file: PathBuf,
    doc: usize,
    what: String,
}

/// An EncryptedSecret file, kept for the history check.
struct Sealed {
    file: PathBuf,
    bytes: Vec<u8>,
    /// document index by `namespace/name`
    docs: BTreeMap<String, usize>,
}

fn check_file(path: &Path, rules: &mut RulesCache, found: &mut Vec<Finding>) -> Option<Sealed> {
    let mut add = |doc: usize, what: String| {
        found.push(Finding {
            file: path.to_path_buf(),
            doc,
            what,
        })
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            add(0, format!("cannot read: {e}"));
            return None;
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return None; // not text: not a manifest
    };
    let values: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(v) => v,
        Err(_) => {
            for (doc, what) in scan_text(text) {
                add(doc, what);
            }
            return None;
        }
    };
    let mut sealed = Sealed {
        file: path.to_path_buf(),
        bytes: Vec::new(),
        docs: BTreeMap::new(),
    };
    let mut index = 0;
    for v in values.iter().filter(|v| !v.is_null()) {
        index += 1;
        let mut plain = Vec::new();
        scan(v, &mut plain);
        for w in plain {
            add(index, w);
        }
        let is_es = v.get("kind").and_then(Value::as_str) == Some(crate::api::KIND)
            && v.get("apiVersion").and_then(Value::as_str) == Some(crate::api::API_VERSION);
        if !is_es {
            continue;
        }
        let doc = crate::manifest::Doc {
            index,
            value: v.clone(),
        };
        let es = match super::to_encrypted(&doc, &path.display().to_string()) {
            Ok(es) => es,
            Err(e) => {
                add(index, format!("malformed EncryptedSecret: {e}"));
                continue;
            }
        };
        let id = format!(
            "{}/{}",
            es.metadata.namespace.as_deref().unwrap_or("-"),
            es.metadata.name.as_deref().unwrap_or("-")
        );
        if let Err(e) = crate::resource::validate(&es) {
            add(index, format!("malformed EncryptedSecret {id}: {e}"));
            continue;
        }
        match Lookup::find(rules, path) {
            Ok(Lookup::Matched(r, i)) => {
                for v in r.rules[i].violations(&es) {
                    add(index, format!("EncryptedSecret {id}: {v}"));
                }
            }
            Ok(Lookup::Unmatched(r)) => add(
                index,
                format!(
                    "EncryptedSecret {id}: the path matches no rule of {}",
                    r.file.display()
                ),
            ),
            Ok(Lookup::NoRules) => {}
            Err(e) => add(index, e.to_string()),
        }
        sealed.docs.insert(id, index);
    }
    if sealed.docs.is_empty() {
        return None;
    }
    sealed.bytes = bytes;
    Some(sealed)
}

/// Reverted values among `sealed`, one repository at a time.
fn check_history(sealed: &[Sealed], since: &str, found: &mut Vec<Finding>) -> CliResult {
    let mut by_top: BTreeMap<PathBuf, Vec<&Sealed>> = BTreeMap::new();
    let mut outside = 0;
    // one `git rev-parse` per directory, not per file
    let mut tops: BTreeMap<PathBuf, Option<PathBuf>> = BTreeMap::new();
    for s in sealed {
        let dir = s.file.parent().map(Path::to_path_buf).unwrap_or_default();
        let top = tops
            .entry(dir)
            .or_insert_with(|| history::toplevel(&s.file))
            .clone();
        match top {
            Some(top) => by_top.entry(top).or_default().push(s),
            None => outside += 1,
        }
    }
    if outside > 0 {
        eprintln!(
            "note: {} outside a git work tree (or without git): reverted values not checked there",
            super::count(outside, "file")
        );
    }
    for (top, files) in by_top {
        if !history::has_commit(&top, since) {
            eprintln!(
                "note: {} has no commit {since}: reverted values not checked there",
                top.display()
            );
            continue;
        }
        let changed = history::changed_since(&top, since)?;
        for s in files {
            let abs = std::fs::canonicalize(&s.file).unwrap_or_else(|_| s.file.clone());
            if !changed.contains(&abs) {
                continue;
            }
            let current = match resources_from(&s.bytes, &s.file.display().to_string()) {
                Ok(r) => values_of(&r),
                Err(_) => continue,
            };
            let versions = parsed_history(&s.file, since)?;
            for r in history::reverts(&versions, &current, false) {
                found.push(Finding {
                    file: s.file.clone(),
                    doc: s.docs.get(&r.resource).copied().unwrap_or(0),
                    what: format!(
                        "EncryptedSecret {}: value {} reverted to its value of {}",
                        r.resource,
                        r.key,
                        r.to.describe()
                    ),
                });
            }
        }
    }
    Ok(())
}

pub fn run(mut a: GuardArgs) -> CliResult {
    a.paths.append(&mut a.filename);
    if a.paths.iter().any(|p| p.as_os_str() == "-") {
        return Err(msg(
            "guard reads files (it names them in findings and reads their history); stdin is not supported",
        ));
    }
    let files = fleet::expand(&a.paths, a.recursive, fleet::Links::FollowInside)?;
    let mut rules = RulesCache::default();
    let mut found = Vec::new();
    let mut sealed = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == rules::FILE_NAME) {
            // the rules file itself: loading it is the check
            if let Err(e) = rules::Rules::load(f) {
                found.push(Finding {
                    file: f.clone(),
                    doc: 1,
                    what: e.to_string(),
                });
            }
            continue;
        }
        if let Some(s) = check_file(f, &mut rules, &mut found) {
            sealed.push(s);
        }
    }
    if !a.no_history && !sealed.is_empty() {
        check_history(&sealed, &a.since, &mut found)?;
    }
    found.sort_by(|x, y| (&x.file, x.doc).cmp(&(&y.file, y.doc)));
    let mut text = String::new();
    for f in &found {
        text.push_str(&format!("{}:{}: {}\n", f.file.display(), f.doc, f.what));
    }
    super::out(text)?;
    if found.is_empty() {
        return Ok(());
    }
    eprintln!(
        "guard: {} in {} ({} checked)",
        super::count(found.len(), "finding"),
        super::count(
            found
                .iter()
                .map(|f| &f.file)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            "file"
        ),
        super::count(files.len(), "file")
    );
    Err(CliError::Differ)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(yaml: &str) -> Vec<String> {
        let mut out = Vec::new();
        for v in serde_saphyr::from_multiple::<Value>(yaml).unwrap() {
            scan(&v, &mut out);
        }
        out
    }

    #[test]
    fn plaintext_secrets_are_found_anywhere_and_never_quoted() {
        let cases = [
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\ndata: {p: aHVudGVy}\n",
                1,
            ),
            (
                "kind: Secret\nmetadata: {name: a}\nstringData: {p: hunter2}\n",
                1,
            ),
            (
                "kind: List\nitems:\n- kind: Secret\n  metadata: {name: a}\n  data: {p: eA==}\n",
                1,
            ),
            (
                "kind: Template\nobjects:\n- kind: Secret\n  stringData: {p: x}\n",
                1,
            ),
            ("kind: Secret\nmetadata: {name: a}\ndata: {}\n", 0),
            (
                "kind: Secret\nmetadata: {name: a}\nstringData: {p: ''}\n",
                0,
            ),
            (
                "kind: Secret\nstringData: {p: '{{ .Values.p }}', q: '${Q}'}\n",
                0,
            ),
            ("kind: ConfigMap\ndata: {p: x}\n", 0),
            (
                "kind: Deployment\nmetadata:\n  name: d\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{\"kind\":\"Secret\",\"data\":{\"p\":\"eA==\"}}'\n",
                1,
            ),
        ];
        for (yaml, n) in cases {
            let f = findings(yaml);
            assert_eq!(f.len(), n, "{yaml}: {f:?}");
            for line in f {
                for v in ["aHVudGVy", "hunter2", "eA=="] {
                    assert!(!line.contains(v), "{line}");
                }
            }
        }
    }

    #[test]
    fn templates_that_are_not_yaml_are_checked_by_text() {
        let helm = "{{- if .Values.x }}\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  password: aHVudGVy\n  user: {{ .Values.user | b64enc }}\n{{- end }}\n---\nkind: Secret\nstringData:\n  a: \"{{ .Values.a }}\"\n";
        let f = scan_text(helm);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, 1);
        assert!(f[0].1.contains("1 value"), "{f:?}");
        assert!(!f[0].1.contains("aHVudGVy"));
    }
}
