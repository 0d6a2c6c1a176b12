//! The sandbox's first line: a template's shape and cost, decided from
//! its syntax tree before anything renders. [`Shape`] refuses every
//! construct outside the allowed set (loops, `set`, calls, arithmetic, …)
//! and computes a [`Bound`] — the largest value each node can produce and
//! what evaluating it can allocate — from the actual values' lengths.
//! Each node is evaluated at most once (there are no loops), so the sum of
//! the nodes' sizes bounds a render's work.

use std::collections::BTreeMap;

use minijinja::machinery::{Span, WhitespaceConfig, ast, parse};
use minijinja::syntax::SyntaxConfig;

use super::{FILTERS, TESTS, TemplateError, Values, refused, syntax_error};

/// The lengths the size bound is computed from: each value's length as
/// minijinja displays it (a string as itself, bytes escaped).
pub(super) struct Sizes {
    of: BTreeMap<String, u64>,
    /// `values` displayed whole (a map literal with every value escaped).
    all: u64,
    largest: u64,
}

impl Sizes {
    /// No values: only the shape is checked.
    pub(super) fn none() -> Sizes {
        Sizes {
            of: BTreeMap::new(),
            all: 0,
            largest: 0,
        }
    }

    pub(super) fn of(values: &Values) -> Sizes {
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
pub(super) struct Bound {
    pub(super) size: u64,
    pub(super) work: u64,
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

pub(super) fn sum(a: u64, b: u64) -> u64 {
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
pub(super) struct Shape<'a> {
    pub(super) key: &'a str,
    pub(super) sizes: &'a Sizes,
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

    pub(super) fn stmt(&self, s: &ast::Stmt<'_>) -> Result<Bound, TemplateError> {
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
pub(super) fn parse_checked<'s>(key: &str, src: &'s str) -> Result<ast::Stmt<'s>, TemplateError> {
    let ws = WhitespaceConfig {
        keep_trailing_newline: true,
        ..WhitespaceConfig::default()
    };
    let tree = parse(src, "template", SyntaxConfig, ws).map_err(|e| syntax_error(key, &e))?;
    let sizes = Sizes::none();
    Shape { key, sizes: &sizes }.stmt(&tree)?;
    Ok(tree)
}
