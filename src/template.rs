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
use minijinja::machinery::{Span, WhitespaceConfig, ast, parse};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use zeroize::Zeroizing;

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

/// The lengths the size bound is computed from: each value's length as
/// minijinja displays it (a string as itself, bytes escaped).
struct Sizes {
    of: BTreeMap<String, u64>,
    /// `values` displayed whole (a map literal with every value escaped).
    all: u64,
    largest: u64,
}

impl Sizes {
    /// No values: only the shape is checked.
    fn none() -> Sizes {
        Sizes {
            of: BTreeMap::new(),
            all: 0,
            largest: 0,
        }
    }

    fn of(values: &Values) -> Sizes {
        let of: BTreeMap<String, u64> = values
            .iter()
            .map(|(k, v)| {
                let n = v.len() as u64;
                let shown = if std::str::from_utf8(v).is_ok() {
                    n
                } else {
                    4 * n + 3 // b'\xNN…'
                };
                (k.clone(), shown)
            })
            .collect();
        let all = of
            .iter()
            .map(|(k, n)| repr(*n) + repr(k.len() as u64))
            .fold(2u64, u64::saturating_add);
        let largest = of.values().copied().max().unwrap_or(0);
        Sizes { of, all, largest }
    }

    fn var(&self, name: &str) -> u64 {
        match name {
            "values" => self.all,
            // an unknown name is undefined (an error, or a test operand) or a
            // built-in global (a function object, shown by name)
            _ => self.of.get(name).copied().unwrap_or(64),
        }
    }
}

/// A string shown inside a map or list: quoted, every char at worst a
/// `\u{XXXXXX}` escape.
fn repr(n: u64) -> u64 {
    n.saturating_mul(10).saturating_add(4)
}

/// What a node can cost: the largest value it can produce, and the sum of
/// that over it and every node below it (what evaluating it can allocate).
#[derive(Clone, Copy, Default)]
struct Bound {
    size: u64,
    work: u64,
}

impl Bound {
    fn leaf(size: u64) -> Bound {
        Bound { size, work: size }
    }

    /// A node of `size` over children that cost `below`.
    fn over(size: u64, below: u64) -> Bound {
        Bound {
            size,
            work: below.saturating_add(size),
        }
    }
}

fn sum(a: u64, b: u64) -> u64 {
    a.saturating_add(b)
}

/// The largest output of filter `name` on an input of `n` bytes with
/// arguments of sizes `args` (see [`FILTERS`]).
fn filter_bound(name: &str, n: u64, args: &[u64]) -> u64 {
    let arg = |i: usize| args.get(i).copied().unwrap_or(0);
    match name {
        "b64encode" => n.div_ceil(3).saturating_mul(4),
        "b64decode" | "trim" => n,
        "urlencode" => n.saturating_mul(3),
        // JSON escapes (\uXXXX) of a string, or of a map's repr
        "tojson" => n.saturating_mul(10).saturating_add(16),
        "default" | "d" => n.max(arg(0)),
        // Unicode case mappings grow a char by at most 3×
        "lower" | "upper" => n.saturating_mul(3),
        // `replace("", new)` inserts `new` between every char
        "replace" => n.saturating_add(n.saturating_add(1).saturating_mul(arg(1))),
        _ => 20, // length
    }
}

/// Walks one template's tree: refuses what [`shape`] does not allow and
/// bounds what the rest can cost with `sizes`.
struct Shape<'a> {
    key: &'a str,
    sizes: &'a Sizes,
}

impl Shape<'_> {
    fn stmts(&self, body: &[ast::Stmt<'_>]) -> Result<Bound, TemplateError> {
        let mut total = Bound::default();
        for s in body {
            let b = self.stmt(s)?;
            total = Bound {
                size: sum(total.size, b.size),
                work: sum(total.work, b.work),
            };
        }
        Ok(total)
    }

    fn stmt(&self, s: &ast::Stmt<'_>) -> Result<Bound, TemplateError> {
        use ast::Stmt;
        let no = |span, what: &str| Err(refused(self.key, span, what));
        match s {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitRaw(r) => Ok(Bound::leaf(r.raw.len() as u64)),
            Stmt::EmitExpr(e) => {
                let b = self.expr(&e.expr)?;
                Ok(Bound::over(b.size, b.work))
            }
            Stmt::IfCond(c) => {
                let test = self.expr(&c.expr)?;
                let yes = self.stmts(&c.true_body)?;
                let no = self.stmts(&c.false_body)?;
                Ok(Bound {
                    size: yes.size.max(no.size),
                    work: sum(test.work, sum(yes.work, no.work)),
                })
            }
            Stmt::ForLoop(l) => no(l.span(), "loops are not allowed"),
            Stmt::Set(x) => no(x.span(), "set is not allowed"),
            Stmt::SetBlock(x) => no(x.span(), "set is not allowed"),
            Stmt::WithBlock(x) => no(x.span(), "with is not allowed"),
            Stmt::FilterBlock(x) => no(x.span(), "filter blocks are not allowed"),
            Stmt::AutoEscape(x) => no(x.span(), "autoescape is not allowed"),
            Stmt::Do(x) => no(x.span(), "do is not allowed"),
        }
    }

    fn args(&self, args: &[ast::CallArg<'_>], at: Span) -> Result<Vec<Bound>, TemplateError> {
        args.iter()
            .map(|a| match a {
                ast::CallArg::Pos(e) | ast::CallArg::Kwarg(_, e) => self.expr(e),
                ast::CallArg::PosSplat(_) | ast::CallArg::KwargSplat(_) => {
                    Err(refused(self.key, at, "argument splats are not allowed"))
                }
            })
            .collect()
    }

    fn expr(&self, e: &ast::Expr<'_>) -> Result<Bound, TemplateError> {
        use ast::{BinOpKind as B, Expr};
        let work = |bs: &[Bound]| bs.iter().fold(0u64, |w, b| sum(w, b.work));
        Ok(match e {
            Expr::Var(v) => Bound::leaf(self.sizes.var(v.id)),
            Expr::Const(c) => Bound::leaf(c.value.as_str().map_or(32, |s| s.len() as u64)),
            Expr::GetAttr(g) => {
                let inner = self.expr(&g.expr)?;
                let size = match &g.expr {
                    Expr::Var(v) if v.id == "values" => self.sizes.var(g.name),
                    _ => inner.size,
                };
                Bound::over(size, inner.work)
            }
            Expr::GetItem(g) => {
                let inner = self.expr(&g.expr)?;
                let sub = self.expr(&g.subscript_expr)?;
                let size = match (&g.expr, &g.subscript_expr) {
                    (Expr::Var(v), Expr::Const(c)) if v.id == "values" => {
                        c.value.as_str().map_or(0, |k| self.sizes.var(k))
                    }
                    (Expr::Var(v), _) if v.id == "values" => self.sizes.largest,
                    _ => inner.size,
                };
                Bound::over(size, sum(inner.work, sub.work))
            }
            Expr::Slice(s) => {
                let inner = self.expr(&s.expr)?;
                let mut w = inner.work;
                for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    w = sum(w, self.expr(x)?.work);
                }
                Bound::over(inner.size, w)
            }
            Expr::UnaryOp(u) => match u.op {
                ast::UnaryOpKind::Not => {
                    let inner = self.expr(&u.expr)?;
                    Bound::over(8, inner.work)
                }
                ast::UnaryOpKind::Neg => {
                    return Err(refused(self.key, u.span(), "arithmetic is not allowed"));
                }
            },
            Expr::BinOp(b) => {
                let (l, r) = (self.expr(&b.left)?, self.expr(&b.right)?);
                let below = sum(l.work, r.work);
                match b.op {
                    B::Concat => Bound::over(sum(l.size, r.size), below),
                    B::ScAnd | B::ScOr => Bound::over(l.size.max(r.size), below),
                    B::Eq | B::Ne | B::Lt | B::Lte | B::Gt | B::Gte | B::In => {
                        Bound::over(8, below)
                    }
                    B::Add | B::Sub | B::Mul | B::Div | B::FloorDiv | B::Rem | B::Pow => {
                        return Err(refused(
                            self.key,
                            b.span(),
                            "arithmetic is not allowed (use ~ to join strings)",
                        ));
                    }
                }
            }
            Expr::Compare(c) => {
                let mut w = self.expr(&c.expr)?.work;
                for op in &c.ops {
                    w = sum(w, self.expr(&op.expr)?.work);
                }
                Bound::over(8, w)
            }
            Expr::IfExpr(i) => {
                let t = self.expr(&i.test_expr)?;
                let y = self.expr(&i.true_expr)?;
                let n = match &i.false_expr {
                    Some(f) => self.expr(f)?,
                    None => Bound::default(),
                };
                Bound::over(y.size.max(n.size), work(&[t, y, n]))
            }
            Expr::Filter(f) => {
                if !FILTERS.contains(&f.name) {
                    return Err(TemplateError::new(
                        self.key,
                        format!(
                            "unknown filter (line {}): {}; the filters are {}",
                            f.span().start_line,
                            f.name,
                            FILTERS.join(", ")
                        ),
                    ));
                }
                let input = match &f.expr {
                    Some(x) => self.expr(x)?,
                    None => Bound::default(),
                };
                let args = self.args(&f.args, f.span())?;
                let sizes: Vec<u64> = args.iter().map(|a| a.size).collect();
                let size = filter_bound(f.name, input.size, &sizes);
                // the filter copies its input once more (bytes_arg, to_string)
                Bound::over(sum(size, input.size), sum(input.work, work(&args)))
            }
            Expr::Test(t) => {
                if !TESTS.contains(&t.name) {
                    return Err(TemplateError::new(
                        self.key,
                        format!(
                            "unknown test (line {}): {}; the tests are {}",
                            t.span().start_line,
                            t.name,
                            TESTS.join(", ")
                        ),
                    ));
                }
                let inner = self.expr(&t.expr)?;
                let args = self.args(&t.args, t.span())?;
                Bound::over(8, sum(inner.work, work(&args)))
            }
            Expr::List(l) => {
                let items: Vec<Bound> = l
                    .items
                    .iter()
                    .map(|x| self.expr(x))
                    .collect::<Result<_, _>>()?;
                let shown = items.iter().fold(2u64, |s, b| sum(s, repr(b.size)));
                Bound::over(shown, work(&items))
            }
            Expr::Call(c) => {
                return Err(refused(
                    self.key,
                    c.span(),
                    "function and method calls are not allowed",
                ));
            }
            Expr::Map(m) => {
                return Err(refused(self.key, m.span(), "map literals are not allowed"));
            }
        })
    }
}

/// Parse and check the shape of one template, without values.
fn parse_checked<'s>(key: &str, src: &'s str) -> Result<ast::Stmt<'s>, TemplateError> {
    let ws = WhitespaceConfig {
        keep_trailing_newline: true,
        ..WhitespaceConfig::default()
    };
    let tree = parse(src, "template", SyntaxConfig, ws).map_err(|e| syntax_error(key, &e))?;
    let sizes = Sizes::none();
    Shape { key, sizes: &sizes }.stmt(&tree)?;
    Ok(tree)
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
            ("{{ password | int }}", "unknown filter (line 1)"),
            ("{{ password + 1 }}", "arithmetic is not allowed"),
            ("{{ password / 0 }}", "arithmetic is not allowed"),
            ("{{ password[99] }}", "undefined"),
            ("{{ password | b64encode(1) }}", "arguments"),
            (
                "{% for i in range(100000) %}{{ password }}{% endfor %}",
                "loops are not allowed (line 1)",
            ),
            ("{% include password %}", "syntax error"),
            ("{{ 42 | b64encode }}", "string or bytes"),
            ("{{ password | round }}", "unknown filter"),
            ("{{ password[1:2] ~ password.x }}", "undefined"),
            ("{{ password is nosuchtest }}", "unknown test (line 1)"),
            ("{{ nosuchfn(password) }}", "calls are not allowed (line 1)"),
            ("{{ password.upper() }}", "calls are not allowed"),
            ("{% set x = password %}{{ x }}", "set is not allowed"),
            ("{{ {'a': password} }}", "map literals are not allowed"),
            ("{{ -password }}", "arithmetic"),
            (
                "{% filter upper %}{{ password }}{% endfilter %}",
                "filter blocks",
            ),
            (
                "{% with x = password %}{{ x }}{% endwith %}",
                "with is not allowed",
            ),
            ("{{ password | b64decode }}", "not valid base64"),
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

    /// The review's bombs: refused before anything is built, in time that
    /// does not depend on what they would have built.
    #[test]
    fn bombs_are_refused_before_rendering() {
        let v = vals(&[("user", b"admin"), ("big", &[b'x'; 200 * 1024])]);
        let chain = format!("{{{{ big{} }}}}", " ~ big".repeat(200));
        let replaces = format!("{{{{ user{} }}}}", " | replace('', user)".repeat(40));
        let b64s = format!("{{{{ big{} }}}}", " | b64encode".repeat(60));
        let cases: Vec<(String, &str)> = vec![
            (
                "{% for i in range(600) %}{% set x = (user ~ (i % 10)) * 25000000 %}{% endfor %}{{ nope }}".into(),
                "loops are not allowed",
            ),
            ("{{ user * 25000000 }}".into(), "arithmetic is not allowed"),
            ("{{ 'x' * 250000000 }}".into(), "arithmetic is not allowed"),
            (chain, "could build more than 16 MiB"),
            (replaces, "could build more than 16 MiB"),
            (b64s, "could build more than 16 MiB"),
        ];
        for (src, want) in &cases {
            let started = std::time::Instant::now();
            let e = one(src, &v).expect_err(src);
            assert!(
                e.message.contains(want),
                "{}: {e}",
                &src[..40.min(src.len())]
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "{e}");
        }
        // a shape check needs no values: verify refuses loops and arithmetic offline
        let t: BTreeMap<String, String> = [("k".into(), cases[0].0.clone())].into();
        assert!(check(&t).unwrap_err().message.contains("loops"));
    }

    /// `(line N)` of an error raised while rendering would say which branch
    /// a value took: every first letter must give the same error.
    #[test]
    fn render_errors_do_not_say_where_a_value_steered_them() {
        let src: String = ('a'..='z')
            .map(|c| format!("{{% if password[0] == \"{c}\" %}}{{{{ nope }}}}{{% endif %}}\n"))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for c in 'a'..='z' {
            let pw = format!("{c}secret");
            let e = one(&src, &vals(&[("password", pw.as_bytes())])).unwrap_err();
            assert!(!e.message.contains("line"), "{e}");
            seen.insert(e.to_string());
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        // the same for a value-dependent invalid operation and for output size
        for (src, big) in [
            (
                "{% if password[0] == 'q' %}\n\n{{ password | b64decode }}{% endif %}",
                10,
            ),
            (
                "{% if password[0] == 'q' %}\n\n{{ password }}{{ password }}{% endif %}",
                600 * 1024,
            ),
        ] {
            let pw = format!("q{}", "x".repeat(big));
            let e = one(src, &vals(&[("password", pw.as_bytes())])).unwrap_err();
            assert!(!e.message.contains("line"), "{e}");
        }
    }

    /// The bound is an upper bound: what renders never exceeds it, and a
    /// realistic template over large values stays far under MAX_WORK.
    #[test]
    fn realistic_templates_fit_the_bound() {
        let cert = "C".repeat(300 * 1024);
        let v = vals(&[
            ("tls.crt", cert.as_bytes()),
            ("password", b"pw"),
            ("username", b"u"),
        ]);
        let t: BTreeMap<String, String> = [
            (
                "bundle".to_string(),
                "{{ values[\"tls.crt\"] }}\n{{ values[\"tls.crt\"] | b64encode }}".to_string(),
            ),
            (
                "auth".to_string(),
                "{{ (username ~ \":\" ~ password) | b64encode }}".to_string(),
            ),
        ]
        .into();
        let out = render(&t, &v).unwrap();
        assert_eq!(out["auth"].as_slice(), b"dTpwdw==");
        assert!(out["bundle"].len() > 700 * 1024);
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
