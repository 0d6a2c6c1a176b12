//! YAML/JSON manifest streams: reading multi-document input (files or
//! stdin), naming documents in errors, and deterministic output.
//!
//! Never: echo document contents in errors (they may hold plaintext).

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {source_name}: {err}")]
    Read {
        source_name: String,
        err: std::io::Error,
    },
    #[error("{0} is not text (binary data or invalid UTF-8); expected YAML or JSON manifests")]
    NotText(String),
    #[error("{source_name} is not valid YAML: {msg}")]
    Yaml { source_name: String, msg: String },
    #[error("{0} contains no documents")]
    Empty(String),
    #[error("{source_name}: document {index} is not a mapping with apiVersion/kind/metadata")]
    NotMapping { source_name: String, index: usize },
}

/// One document of a stream, with its 1-based position for messages.
#[derive(Debug, Clone)]
pub struct Doc {
    pub index: usize,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn name(&self) -> Option<&str> {
        self.value.pointer("/metadata/name").and_then(Value::as_str)
    }
    pub fn namespace(&self) -> Option<&str> {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }
    /// "document 2 (Secret payments/db)" — for error messages.
    pub fn describe(&self) -> String {
        let kind = if self.kind().is_empty() {
            "no kind"
        } else {
            self.kind()
        };
        match (self.namespace(), self.name()) {
            (Some(ns), Some(n)) => format!("document {} ({kind} {ns}/{n})", self.index),
            (None, Some(n)) => format!("document {} ({kind} {n})", self.index),
            _ => format!("document {} ({kind}, no name)", self.index),
        }
    }
}

/// Read a path, or stdin for "-".
pub fn read_source(path: &str) -> Result<Vec<u8>, ManifestError> {
    let name = source_name(path);
    if path == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|err| {
            ManifestError::Read {
                source_name: name,
                err,
            }
        })?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|err| ManifestError::Read {
            source_name: name,
            err,
        })
    }
}

pub fn source_name(path: &str) -> String {
    if path == "-" {
        "stdin".into()
    } else {
        path.to_string()
    }
}

/// Parse a multi-document YAML (or JSON) stream. Empty documents are
/// skipped; `kind: List` is flattened into its items.
pub fn parse_stream(bytes: &[u8], source_name: &str) -> Result<Vec<Doc>, ManifestError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ManifestError::NotText(source_name.into()))?;
    if text.contains('\0') {
        return Err(ManifestError::NotText(source_name.into()));
    }
    let values: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml {
            source_name: source_name.into(),
            // saphyr's message names line/column; keep its first line only (it
            // may quote the offending text on later lines).
            msg: e
                .to_string()
                .lines()
                .next()
                .unwrap_or("parse error")
                .to_string(),
        })?;
    let mut docs = Vec::new();
    let mut index = 0;
    for v in values {
        if v.is_null() {
            continue;
        }
        index += 1;
        if !v.is_object() {
            return Err(ManifestError::NotMapping {
                source_name: source_name.into(),
                index,
            });
        }
        if v.get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"))
            && let Some(items) = v.get("items").and_then(Value::as_array)
        {
            for item in items {
                docs.push(Doc {
                    index,
                    value: item.clone(),
                });
            }
            continue;
        }
        docs.push(Doc { index, value: v });
    }
    if docs.is_empty() {
        return Err(ManifestError::Empty(source_name.into()));
    }
    Ok(docs)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Render documents: YAML separated by `---`, or JSON (one object, or a
/// `v1 List` for several). Field order follows the types, so output is
/// deterministic.
pub fn render<T: Serialize>(docs: &[T], format: Format) -> String {
    match format {
        Format::Yaml => {
            let mut out = String::new();
            for d in docs {
                out.push_str("---\n");
                out.push_str(&serde_saphyr::to_string(d).unwrap_or_default());
            }
            out
        }
        Format::Json => {
            let v = if docs.len() == 1 {
                serde_json::to_value(&docs[0]).unwrap_or_default()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs})
            };
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams() {
        let docs = parse_stream(
            b"---\nkind: A\nmetadata: {name: x}\n---\n---\nkind: B\n",
            "t",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].index, 2);
        assert_eq!(docs[0].describe(), "document 1 (A x)");
        assert!(matches!(
            parse_stream(b"", "t"),
            Err(ManifestError::Empty(_))
        ));
        assert!(matches!(
            parse_stream(b"\xff\xfe\x00", "t"),
            Err(ManifestError::NotText(_))
        ));
        assert!(matches!(
            parse_stream(b"just a string", "t"),
            Err(ManifestError::NotMapping { .. })
        ));
        assert!(matches!(
            parse_stream(b"a: [unclosed", "t"),
            Err(ManifestError::Yaml { .. })
        ));
        let list = parse_stream(
            b"{\"kind\":\"List\",\"items\":[{\"kind\":\"A\"},{\"kind\":\"B\"}]}",
            "t",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
    }
}
