//! `spec.template.data`: Secret keys rendered from the decrypted values.
//!
//! # The sandbox
//! A [`minijinja`] environment built from scratch for every render:
//! - no loader and no `include`/`import`/`extends` (the crate is built
//!   without `multi_template`), so no file is ever read; no function reaches
//!   the environment, the clock or the network;
//! - strict undefined: a misspelt variable is an error, never an empty
//!   string silently written into a credential;
//! - no auto-escaping, whatever the key is called (minijinja would otherwise
//!   JSON-escape keys ending in `.json`/`.yaml`);
//! - a fuel limit ([`FUEL`]) so a loop cannot hold a worker, and an output
//!   limit ([`MAX_OUTPUT`], the Secret size limit).
//!
//! # Variables
//! Every decrypted value is a variable of its key's name (`{{ password }}`)
//! and an entry of `values` (`{{ values["tls.crt"] }}` for keys that are not
//! identifiers). A value that is valid UTF-8 is a string; any other value is
//! bytes, which may be passed through filters (`b64encode`) but not written
//! out directly (that is an error naming the template key).
//!
//! # Filters ([`FILTERS`])
//! `b64encode`, `b64decode`, `urlencode` (RFC 3986: everything but
//! `A-Za-z0-9-._~` is percent-encoded, so a password is safe in a URL's
//! user-info or query), `tojson` (a JSON string literal, quotes included),
//! plus minijinja's built-in filters and tests (`default`, `trim`, `lower`,
//! `upper`, `replace`, `join`, …).
//!
//! # Errors never quote a value
//! minijinja's error details may quote the operands of a failed operation
//! (a decrypted value). [`TemplateError`] carries the template key, the line
//! and the error's kind, and a detail only where the detail comes from the
//! template source (syntax, unknown filter) or from this module's fixed
//! messages.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use zeroize::Zeroizing;

/// Instructions one template may execute.
pub const FUEL: u64 = 100_000;

/// Bytes one render may produce (all keys together): the Secret size limit.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// The filters this module adds (documented in `docs/templates.md`).
pub const FILTERS: [&str; 4] = ["b64encode", "b64decode", "urlencode", "tojson"];

/// The fixed messages of this module's filters: safe to show (no value in
/// them), so they survive the redaction of error details.
const MSG_NOT_BASE64: &str = "b64decode: the input is not valid base64";
const MSG_BINARY_OUT: &str =
    "a binary (non-UTF-8) value cannot be written out as text: pipe it through b64encode";
const MSG_NOT_STRING: &str = "the filter needs a string or bytes value";
const SAFE_DETAILS: [&str; 3] = [MSG_NOT_BASE64, MSG_BINARY_OUT, MSG_NOT_STRING];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.template.data[{key}]: {message}")]
pub struct TemplateError {
    /// The template key (a Secret key name, never a value).
    pub key: String,
    pub message: String,
}

impl TemplateError {
    fn new(key: &str, message: impl Into<String>) -> TemplateError {
        TemplateError {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

type Values = BTreeMap<String, Zeroizing<Vec<u8>>>;

fn value_of(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::from(s),
        Err(_) => Value::from_bytes(bytes.to_vec()),
    }
}

fn bytes_arg(v: &Value) -> Result<Vec<u8>, minijinja::Error> {
    match v.kind() {
        ValueKind::String | ValueKind::Bytes => Ok(v.as_bytes().unwrap_or_default().to_vec()),
        _ => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            MSG_NOT_STRING,
        )),
    }
}

fn b64encode(v: Value) -> Result<String, minijinja::Error> {
    Ok(B64.encode(bytes_arg(&v)?))
}

fn b64decode(v: Value) -> Result<Value, minijinja::Error> {
    let raw = bytes_arg(&v)?;
    let text: Vec<u8> = raw
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let decoded = B64
        .decode(&text)
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, MSG_NOT_BASE64))?;
    Ok(value_of(&decoded))
}

/// RFC 3986 percent-encoding of everything but the unreserved set.
pub fn urlencode_bytes(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    for &b in raw {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn urlencode(v: Value) -> Result<String, minijinja::Error> {
    Ok(urlencode_bytes(&bytes_arg(&v)?))
}

/// A JSON string literal of a string (bytes are not text: an error).
fn tojson(v: Value) -> Result<String, minijinja::Error> {
    match v.kind() {
        ValueKind::String => {
            Ok(serde_json::Value::String(v.as_str().unwrap_or_default().into()).to_string())
        }
        ValueKind::Bytes => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            MSG_BINARY_OUT,
        )),
        _ => serde_json::to_string(&v)
            .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, MSG_NOT_STRING)),
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_keep_trailing_newline(true);
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("urlencode", urlencode);
    env.add_filter("tojson", tojson);
    env.set_formatter(|out, state, value| {
        if value.kind() == ValueKind::Bytes {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                MSG_BINARY_OUT,
            ));
        }
        minijinja::escape_formatter(out, state, value)
    });
    env
}

/// The error's text without anything a value could have put in it.
fn describe(key: &str, e: &minijinja::Error) -> TemplateError {
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    let detail = e.detail().unwrap_or("");
    let message = match e.kind() {
        // from the template source, which is clear text in the spec anyway
        ErrorKind::SyntaxError => format!("syntax error{line}: {detail}"),
        ErrorKind::UnknownFilter => format!("unknown filter{line}: {detail}"),
        ErrorKind::UnknownTest => format!("unknown test{line}: {detail}"),
        ErrorKind::UnknownFunction => format!("unknown function{line}: {detail}"),
        ErrorKind::UnknownMethod => format!("unknown method{line}"),
        ErrorKind::UndefinedError => format!(
            "undefined variable or attribute{line} (the variables are the encryptedData keys, and `values`)"
        ),
        ErrorKind::OutOfFuel => {
            format!("the template runs too long{line}: more than {FUEL} instructions")
        }
        ErrorKind::TemplateNotFound => format!("templates cannot include other templates{line}"),
        ErrorKind::MissingArgument | ErrorKind::TooManyArguments => {
            format!("wrong number of arguments{line}")
        }
        _ if SAFE_DETAILS.contains(&detail) => format!("{detail}{line}"),
        kind => format!("{kind}{line}"),
    };
    TemplateError::new(key, message)
}

/// Whether every template parses (no values needed: `kmsecrets verify` and
/// validation run it offline).
pub fn check(templates: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    let env = environment();
    for (key, src) in templates {
        env.template_from_str(src).map_err(|e| describe(key, &e))?;
    }
    Ok(())
}

/// Render every template with `values` as its variables.
pub fn render(
    templates: &BTreeMap<String, String>,
    values: &Values,
) -> Result<Values, TemplateError> {
    if templates.is_empty() {
        return Ok(Values::new());
    }
    let env = environment();
    let mut ctx: BTreeMap<String, Value> = values
        .iter()
        .map(|(k, v)| (k.clone(), value_of(v)))
        .collect();
    let all = Value::from_iter(ctx.iter().map(|(k, v)| (k.clone(), v.clone())));
    ctx.insert("values".into(), all);
    let ctx = Value::from_iter(ctx);
    let mut out = Values::new();
    let mut total = 0usize;
    for (key, src) in templates {
        let tmpl = env.template_from_str(src).map_err(|e| describe(key, &e))?;
        let text = Zeroizing::new(tmpl.render(&ctx).map_err(|e| describe(key, &e))?);
        total += text.len();
        if total > MAX_OUTPUT {
            return Err(TemplateError::new(
                key,
                format!("the rendered values exceed {MAX_OUTPUT} bytes (the Secret size limit)"),
            ));
        }
        out.insert(key.clone(), Zeroizing::new(text.as_bytes().to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(kv: &[(&str, &[u8])]) -> Values {
        kv.iter()
            .map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_vec())))
            .collect()
    }

    fn one(src: &str, values: &Values) -> Result<String, TemplateError> {
        let t: BTreeMap<String, String> = [("out".to_string(), src.to_string())].into();
        render(&t, values).map(|m| String::from_utf8(m["out"].to_vec()).unwrap())
    }

    #[test]
    fn renders_table() {
        let v = vals(&[
            ("username", b"ci-bot"),
            ("password", b"p@ss/w:rd \"x\""),
            ("registry", b"ghcr.io"),
            ("tls.crt", b"CERT"),
            ("blob", &[0xff, 0x00, 0x80]),
            ("encoded", b"aGVsbG8="),
        ]);
        let cases: &[(&str, &str)] = &[
            ("plain {{ username }}", "plain ci-bot"),
            ("{{ values[\"tls.crt\"] }}", "CERT"),
            ("{{ username | b64encode }}", "Y2ktYm90"),
            (
                "{{ (username ~ \":\" ~ password) | b64encode }}",
                "Y2ktYm90OnBAc3MvdzpyZCAieCI=",
            ),
            ("{{ encoded | b64decode }}", "hello"),
            ("{{ blob | b64encode }}", "/wCA"),
            ("{{ password | urlencode }}", "p%40ss%2Fw%3Ard%20%22x%22"),
            ("{{ password | tojson }}", "\"p@ss/w:rd \\\"x\\\"\""),
            ("{{ missing | default(\"d\") }}", "d"),
            ("{{ username | upper }}", "CI-BOT"),
            ("{% if username %}y{% endif %}", "y"),
            ("no variables", "no variables"),
            ("trailing\n", "trailing\n"),
        ];
        for (src, want) in cases {
            assert_eq!(one(src, &v).unwrap(), *want, "template {src:?}");
        }
    }

    #[test]
    fn json_named_keys_are_not_escaped() {
        let v = vals(&[("password", b"a\"b<c>")]);
        let t: BTreeMap<String, String> = [
            (
                "config.json".to_string(),
                "{\"p\": {{ password | tojson }}}".to_string(),
            ),
            ("page.html".to_string(), "{{ password }}".to_string()),
        ]
        .into();
        let out = render(&t, &v).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out["config.json"]).unwrap();
        assert_eq!(json["p"], "a\"b<c>");
        assert_eq!(&out["page.html"][..], b"a\"b<c>");
    }

    #[test]
    fn errors_name_the_key_and_never_quote_a_value() {
        let canary = "CANARY-7f3a91";
        let v = vals(&[
            ("password", canary.as_bytes()),
            ("blob", &[0xfe, 0xff, b'C', b'A']),
        ]);
        let cases: &[(&str, &str)] = &[
            ("{{ password ", "syntax error"),
            ("{% for %}", "syntax error"),
            ("{{ pasword }}", "undefined"),
            ("{{ values[password] }}", "undefined"),
            ("{{ password.x.y }}", "undefined"),
            ("{{ password | nosuch }}", "unknown filter"),
            ("{{ password | b64decode }}", "not valid base64"),
            ("{{ blob }}", "binary"),
            ("{{ blob | tojson }}", "binary"),
            ("{{ password | int }}", "line 1"),
            ("{{ password + 1 }}", "line 1"),
            ("{{ password / 0 }}", "line 1"),
            ("{{ password[99] }}", "undefined"),
            ("{{ password | b64encode(1) }}", "arguments"),
            (
                "{% for i in range(100000) %}{{ password }}{% endfor %}",
                "too long",
            ),
            ("{% include password %}", "line 1"),
            ("{{ 42 | b64encode }}", "string or bytes"),
            ("{{ password | round }}", "line 1"),
            ("{{ password | abs }}", "line 1"),
            ("{{ password[1:2] + 3 }}", "line 1"),
            ("{{ password is nosuchtest }}", "unknown test"),
            ("{{ nosuchfn(password) }}", "unknown function"),
        ];
        for (src, want) in cases {
            let e = one(src, &v).expect_err(src);
            let text = e.to_string();
            assert!(
                text.starts_with("spec.template.data[out]: "),
                "{src}: {text}"
            );
            assert!(text.contains(want), "{src}: {text} (want {want:?})");
            assert!(!text.contains("CANARY"), "{src} leaked a value: {text}");
            assert!(
                !format!("{e:?}").contains("CANARY"),
                "{src} leaked in Debug"
            );
        }
    }

    #[test]
    fn output_is_bounded() {
        let big = vec![b'x'; 600 * 1024];
        let v = vals(&[("big", &big)]);
        let t: BTreeMap<String, String> = [
            ("a".to_string(), "{{ big }}".to_string()),
            ("b".to_string(), "{{ big }}".to_string()),
        ]
        .into();
        let e = render(&t, &v).unwrap_err();
        assert_eq!(e.key, "b");
        assert!(e.message.contains("size limit"), "{e}");
    }

    #[test]
    fn check_finds_syntax_errors_without_values() {
        let ok: BTreeMap<String, String> = [("a".into(), "{{ x | b64encode }}".into())].into();
        assert!(check(&ok).is_ok());
        let bad: BTreeMap<String, String> = [("a".into(), "{{ x ".into())].into();
        let e = check(&bad).unwrap_err();
        assert_eq!(e.key, "a");
    }

    #[test]
    fn urlencode_is_rfc3986() {
        assert_eq!(urlencode_bytes(b"AZaz09-._~"), "AZaz09-._~");
        assert_eq!(urlencode_bytes("é/ +".as_bytes()), "%C3%A9%2F%20%2B");
    }
}
