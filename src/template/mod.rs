//! `spec.template.data`: Secret keys rendered from the decrypted values.
//!
//! # The sandbox
//! Anyone who may write an EncryptedSecret writes its templates, and the
//! controller renders them for every tenant on one process. So what a
//! template may do is decided *before* it runs, from its syntax tree
//! ([`minijinja::machinery`], pinned to one minijinja release because that
//! API has no semver promise):
//! - **no loops, no `set`, no macros, no calls, no arithmetic** ([`shape`]).
//!   What remains is output, `{% if %}`, `~` concatenation, comparisons,
//!   tests, subscripts and the filters of [`FILTERS`]. Every node of the
//!   tree is evaluated at most once, so a render costs at most the sum of
//!   its nodes' sizes. (A size cap on intermediate values cannot be added
//!   to minijinja's `*` and `~` from outside; a language without loops
//!   makes every intermediate's size computable in advance instead.)
//! - **a size bound computed before rendering** from the tree and the
//!   actual values' lengths ([`Bound`]): every node's largest possible
//!   value, summed over the tree, must stay under [`MAX_WORK`] bytes for the
//!   whole resource, so no render allocates more than a small multiple of
//!   it (the fuzz target and `tests/fuzz_parsers.rs` measure peak
//!   allocation per render). `"x" * 25000000` is refused as arithmetic;
//!   `a ~ a ~ a ~ …` and `replace` chains are refused by the bound.
//! - output written through a writer that stops at [`MAX_OUTPUT`] (the
//!   Secret size limit) *while* rendering;
//! - no loader and no `include`/`import`/`extends` (the crate is built
//!   without `multi_template`), so no file is ever read; nothing reaches
//!   the environment, the clock or the network;
//! - strict undefined: a misspelt variable is an error, never an empty
//!   string silently written into a credential;
//! - no auto-escaping, whatever the key is called (minijinja would otherwise
//!   JSON-escape keys ending in `.json`/`.yaml`);
//! - a fuel limit ([`FUEL`]) as a second guard.
//!
//! The controller also renders off its async runtime, a bounded number at a
//! time, with a deadline (`controller::reconcile`), so a failed or slow
//! render costs that resource only.
//!
//! # Variables
//! Every decrypted value is a variable of its key's name (`{{ password }}`)
//! and an entry of `values` (`{{ values["tls.crt"] }}` for keys that are not
//! identifiers). A value that is valid UTF-8 is a string; any other value is
//! bytes, which may be passed through filters (`b64encode`) but not written
//! out directly (that is an error naming the template key).
//!
//! # Errors never depend on a value
//! minijinja's error details may quote the operands of a failed operation
//! (a decrypted value), and its line numbers say *where* a render failed,
//! which a value can steer (`{% if password[0] == "a" %}{{ nope }}{% endif %}`).
//! So an error raised while rendering carries the template key and the
//! error's kind only. Errors found before any value is read (syntax, a
//! construct that is not allowed, an unknown filter) keep their line: they
//! depend on the template text alone. What remains observable is whether a
//! render fails and which of a few fixed kinds it fails with — see the
//! security model in `docs/security.md`.

use std::collections::BTreeMap;
use std::io;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use minijinja::machinery::Span;
use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use zeroize::Zeroizing;

mod shape;
#[cfg(test)]
mod tests;

use shape::{Shape, Sizes, parse_checked, sum};

/// Instructions one template may execute. Without loops a template runs
/// each instruction once; this is a second guard, sized far above what a
/// 64 KiB template compiles to.
pub const FUEL: u64 = 1_000_000;

/// Bytes one render may produce (all keys together): the Secret size limit.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// Bytes the values of all nodes of all templates of one resource may add
/// up to, computed before rendering ([`Bound`]). 16 × the largest output a
/// Secret can hold: a template that writes each value a few times, encoded,
/// fits with room; `a ~ a ~ a …` over a large value does not. Peak memory
/// of one render stays within a small multiple of this (measured by the
/// allocation-counting tests).
pub const MAX_WORK: u64 = 16 * 1024 * 1024;

/// The filters a template may use: this module's four and the built-ins
/// whose output size follows from their input ([`filter_bound`]).
pub const FILTERS: [&str; 11] = [
    "b64encode",
    "b64decode",
    "urlencode",
    "tojson",
    "default",
    "d",
    "trim",
    "lower",
    "upper",
    "replace",
    "length",
];

/// The tests (`x is defined`) a template may use: each yields a boolean.
pub const TESTS: [&str; 20] = [
    "defined",
    "undefined",
    "none",
    "string",
    "number",
    "boolean",
    "true",
    "false",
    "eq",
    "equalto",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "startingwith",
    "endingwith",
    "in",
    "lower",
    "upper",
];

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

pub(crate) type Values = BTreeMap<String, Zeroizing<Vec<u8>>>;

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

/// A syntax error: it depends on the template text only, so its line stays.
fn syntax_error(key: &str, e: &minijinja::Error) -> TemplateError {
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    let detail = e.detail().unwrap_or("");
    TemplateError::new(key, format!("syntax error{line}: {detail}"))
}

/// An error raised while rendering, without anything a value could have
/// put in it or steered: the kind, never the line or minijinja's detail
/// (except this module's fixed messages).
fn render_error(key: &str, e: &minijinja::Error) -> TemplateError {
    let detail = e.detail().unwrap_or("");
    let message = match e.kind() {
        ErrorKind::UndefinedError => "undefined variable or attribute (the variables are the encryptedData keys, and `values`)".to_string(),
        ErrorKind::OutOfFuel => format!("the template runs too long: more than {FUEL} instructions"),
        ErrorKind::WriteFailure => format!(
            "the rendered values exceed {MAX_OUTPUT} bytes (the Secret size limit)"
        ),
        ErrorKind::MissingArgument | ErrorKind::TooManyArguments => {
            "wrong number of arguments".to_string()
        }
        ErrorKind::UnknownFilter => "unknown filter".to_string(),
        ErrorKind::UnknownTest => "unknown test".to_string(),
        _ if SAFE_DETAILS.contains(&detail) => detail.to_string(),
        kind => kind.to_string(),
    };
    TemplateError::new(key, message)
}

/// Why a template's shape is refused, with its line (from the text alone).
fn refused(key: &str, span: Span, what: &str) -> TemplateError {
    TemplateError::new(
        key,
        format!(
            "{what} (line {}): templates may use output, if/elif/else, ~, comparisons, tests, subscripts and the filters {}",
            span.start_line,
            FILTERS.join(", ")
        ),
    )
}

/// Whether every template parses and has an allowed shape (no values
/// needed: `kmsecrets verify` and validation run it offline).
pub fn check(templates: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    for (key, src) in templates {
        parse_checked(key, src)?;
    }
    Ok(())
}

/// The output of one render, stopped at the size limit while it is written.
struct Capped<'a> {
    out: &'a mut Zeroizing<Vec<u8>>,
    left: usize,
}

impl io::Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.left {
            return Err(io::Error::other("output limit"));
        }
        self.left -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Render every template with `values` as its variables. Refuses, before
/// rendering anything, a template of a shape [`check`] refuses or one whose
/// size bound with these values exceeds [`MAX_WORK`].
pub fn render(
    templates: &BTreeMap<String, String>,
    values: &Values,
) -> Result<Values, TemplateError> {
    if templates.is_empty() {
        return Ok(Values::new());
    }
    let sizes = Sizes::of(values);
    let mut work = 0u64;
    for (key, src) in templates {
        let tree = parse_checked(key, src)?;
        work = sum(work, Shape { key, sizes: &sizes }.stmt(&tree)?.work);
        if work > MAX_WORK {
            return Err(TemplateError::new(
                key,
                format!(
                    "with these values the templates could build more than {} MiB of text while rendering; write each value fewer times",
                    MAX_WORK >> 20
                ),
            ));
        }
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
    let mut left = MAX_OUTPUT;
    for (key, src) in templates {
        let tmpl = env
            .template_from_str(src)
            .map_err(|e| syntax_error(key, &e))?;
        let mut text = Zeroizing::new(Vec::new());
        let mut w = Capped {
            out: &mut text,
            left,
        };
        tmpl.render_captured_to(&ctx, &mut w)
            .map_err(|e| render_error(key, &e))?;
        left = w.left;
        out.insert(key.clone(), text);
    }
    Ok(out)
}
