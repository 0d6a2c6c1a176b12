//! Label and field selectors.
//!
//! Owns parsing `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `key`,
//! `!key`) and `fieldSelector` (`=`, `==`, `!=` on any dotted path, e.g.
//! `metadata.name`), and matching them against objects.

use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::meta;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    path: String,
    value: String,
    negate: bool,
}

/// A parsed `labelSelector` + `fieldSelector` pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_set(s: &str) -> ApiResult<Vec<String>> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| ApiError::BadRequest(format!("unable to parse requirement: {s}")))?;
    Ok(inner
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect())
}

fn parse_label(req: &str) -> ApiResult<LabelReq> {
    if let Some(k) = req.strip_prefix('!') {
        return Ok(LabelReq::NotExists(k.trim().into()));
    }
    if let Some((k, v)) = req.split_once("!=") {
        return Ok(LabelReq::NotEq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = req.split_once("==") {
        return Ok(LabelReq::Eq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = req.split_once('=') {
        return Ok(LabelReq::Eq(k.trim().into(), v.trim().into()));
    }
    let words: Vec<&str> = req.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim();
        if let Some(set) = rest.strip_prefix("notin") {
            return Ok(LabelReq::NotIn(key.to_string(), parse_set(set)?));
        }
        if let Some(set) = rest.strip_prefix("in") {
            return Ok(LabelReq::In(key.to_string(), parse_set(set)?));
        }
        return Err(ApiError::BadRequest(format!(
            "unable to parse requirement: {req}"
        )));
    }
    Ok(LabelReq::Exists(req.trim().into()))
}

fn parse_field(req: &str) -> ApiResult<FieldReq> {
    let (path, value, negate) = if let Some((k, v)) = req.split_once("!=") {
        (k, v, true)
    } else if let Some((k, v)) = req.split_once("==") {
        (k, v, false)
    } else if let Some((k, v)) = req.split_once('=') {
        (k, v, false)
    } else {
        return Err(ApiError::BadRequest(format!(
            "invalid field selector: {req}"
        )));
    };
    Ok(FieldReq {
        path: path.trim().into(),
        value: value.trim().into(),
        negate,
    })
}

impl Selector {
    pub fn parse(label: Option<&str>, field: Option<&str>) -> ApiResult<Selector> {
        let labels = label
            .map(|s| split_top(s).iter().map(|r| parse_label(r)).collect())
            .transpose()?
            .unwrap_or_default();
        let fields = field
            .map(|s| split_top(s).iter().map(|r| parse_field(r)).collect())
            .transpose()?
            .unwrap_or_default();
        Ok(Selector { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = meta::labels(obj);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|f| {
                let mut cur = Some(obj);
                for part in f.path.split('.') {
                    cur = cur.and_then(|c| c.get(part));
                }
                let actual = match cur {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                (actual == f.value) != f.negate
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"name": "a", "namespace": "n", "labels": {"app": "x", "tier": "web"}}});
        for (sel, want) in [
            ("app=x", true),
            ("app==x", true),
            ("app!=x", false),
            ("app in (x, y)", true),
            ("app notin (x,y)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing notin (a)", true),
            ("app=x,tier in (web),!missing", true),
            ("app=x,tier=db", false),
        ] {
            let s = Selector::parse(Some(sel), None).expect(sel);
            assert_eq!(s.matches(&o), want, "{sel}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "a", "namespace": "n"}, "type": "Opaque"});
        for (sel, want) in [
            ("metadata.name=a", true),
            ("metadata.name!=a", false),
            ("metadata.namespace==n,metadata.name=a", true),
            ("type=Opaque", true),
            ("metadata.name=b", false),
        ] {
            let s = Selector::parse(None, Some(sel)).expect(sel);
            assert_eq!(s.matches(&o), want, "{sel}");
        }
    }
}
