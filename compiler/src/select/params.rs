//! The parameters a selection kernel sees, and their values.
//!
//! Scopes, outermost first: the file's scalar parameters, the `select` declaration's, the
//! kernel's own and its settings (`heads 32;` binds `HEADS`). As for attention kernels there
//! is no shadowing, a kernel replaces a visible default with `NAME = value;`, and `--set`
//! replaces any. Values are integers or floats; every failure is a diagnostic.

use std::collections::HashMap;

use crate::diagnostic::{closest, Diagnostic, Span};
use crate::sema::instantiate::Binding;
use crate::sema::spec::Origin;
use crate::syntax::ast::{self, BinOp, ExprKind, ParamValue, UnOp};

/// A parameter's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    pub fn text(self) -> String {
        match self {
            Num::Int(i) => i.to_string(),
            Num::Float(f) => crate::sema::expr::format_float(f),
        }
    }
}

/// Where a definition's value comes from.
#[derive(Clone, Debug)]
enum Value<'a> {
    Expr(&'a ast::Expr),
    Set(Num),
    /// A list or per-head parameter of the file: not usable by a selection kernel.
    List,
    /// The default of a setting the kernel omits (an index into `Params::implicit`).
    Implicit(usize),
}

#[derive(Clone, Debug)]
struct Def<'a> {
    name: String,
    span: Span,
    value: Value<'a>,
    origin: Origin,
}

/// Names that settings bind, with the default written when the kernel omits them.
pub const IMPLICIT: [(&str, &str); 5] = [
    ("HEADS", "1"),
    ("KV_HEADS", "HEADS"),
    ("HEAD_DIM", "128"),
    ("BATCH", "1"),
    ("CONTEXT", "4096"),
];

pub struct Params<'a> {
    defs: Vec<Def<'a>>,
    memo: HashMap<usize, Num>,
    /// Parameters being evaluated (cycle detection).
    stack: Vec<usize>,
    /// Defaults of implicit parameters, parsed once and owned here.
    implicit: Vec<ast::Expr>,
}

const MAX_CHAIN: usize = 64;

impl<'a> Params<'a> {
    /// Collects the scopes of `kernel` over `select`. Declaration errors go to `diags`.
    pub fn new(
        file: &'a ast::File,
        select: &'a ast::SelectDecl,
        kernel: &'a ast::SelectKernelDecl,
        diags: &mut Vec<Diagnostic>,
    ) -> Params<'a> {
        let mut p = Params {
            defs: vec![],
            memo: HashMap::new(),
            stack: vec![],
            implicit: vec![],
        };
        for item in &file.items {
            if let ast::Item::Param(d) = item {
                p.declare(d, diags);
            }
        }
        for s in &select.stmts {
            if let ast::SelectStmt::Param(d) = s {
                p.declare(d, diags);
            }
        }
        for s in &kernel.stmts {
            if let ast::KernelStmt::Param(d) = s {
                p.declare(d, diags);
            }
        }
        for s in &kernel.stmts {
            if let ast::KernelStmt::Setting {
                key,
                key_span,
                value,
                ..
            } = s
            {
                if let Some(name) = key.param_name() {
                    if p.find(name).is_some() {
                        diags.push(
                            Diagnostic::error(
                                "E0103",
                                format!(
                                    "`{}` sets `{name}`, which is already declared",
                                    key.keyword()
                                ),
                            )
                            .with_label(*key_span, "second declaration")
                            .with_hint(format!("remove one of them, or write `{name} = ...;`")),
                        );
                        continue;
                    }
                    p.defs.push(Def {
                        name: name.into(),
                        span: *key_span,
                        value: Value::Expr(value),
                        origin: Origin::Kernel,
                    });
                }
            }
        }
        for (name, default) in IMPLICIT {
            if p.find(name).is_none() {
                let kind = if default.parse::<i64>().is_ok() {
                    ExprKind::Int(default.parse().unwrap_or(1))
                } else {
                    ExprKind::Name(default.into())
                };
                p.implicit.push(ast::Expr {
                    kind,
                    span: kernel.name.span,
                });
                p.defs.push(Def {
                    name: name.into(),
                    span: kernel.name.span,
                    value: Value::Implicit(p.implicit.len() - 1),
                    origin: Origin::Default,
                });
            }
        }
        p
    }

    fn declare(&mut self, d: &'a ast::ParamDecl, diags: &mut Vec<Diagnostic>) {
        for b in &d.binds {
            if let Some(i) = self.find(&b.name.name) {
                diags.push(
                    Diagnostic::error(
                        "E0103",
                        format!("parameter `{}` is already declared", b.name.name),
                    )
                    .with_label(b.name.span, "second declaration")
                    .with_secondary(self.defs[i].span, "first declared here")
                    .with_hint("there is no shadowing: rename one of them"),
                );
                continue;
            }
            let value = match &b.value {
                ParamValue::Expr(e) => Value::Expr(e),
                ParamValue::List(_) | ParamValue::PerHead(_) => Value::List,
            };
            self.defs.push(Def {
                name: b.name.name.clone(),
                span: b.name.span,
                value,
                origin: Origin::Default,
            });
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.defs.iter().position(|d| d.name == name)
    }

    /// Every visible parameter name, in declaration order.
    pub fn names(&self) -> Vec<String> {
        self.defs.iter().map(|d| d.name.clone()).collect()
    }

    /// Applies the kernel's `NAME = value;` overrides, then `--set`.
    pub fn apply(
        &mut self,
        kernel: &'a ast::SelectKernelDecl,
        sets: &[Binding],
        diags: &mut Vec<Diagnostic>,
    ) {
        for s in &kernel.stmts {
            if let ast::KernelStmt::Override(b) = s {
                let Some(i) = self.find(&b.name.name) else {
                    let mut d = Diagnostic::error(
                        "E0114",
                        format!("`{}` is not a parameter of this kernel", b.name.name),
                    )
                    .with_label(b.name.span, "not visible here");
                    if let Some(c) =
                        closest(&b.name.name, self.defs.iter().map(|d| d.name.as_str()))
                    {
                        d = d.with_hint(format!("did you mean `{c}`?"));
                    }
                    diags.push(d);
                    continue;
                };
                match &b.value {
                    ParamValue::Expr(e) => {
                        self.defs[i].value = Value::Expr(e);
                        self.defs[i].origin = Origin::Kernel;
                    }
                    _ => diags.push(
                        Diagnostic::error(
                            "E0115",
                            format!("`{}` takes one number, not a list", b.name.name),
                        )
                        .with_label(b.value.span(), "a list")
                        .with_hint("selection kernels have no per-head or list parameters"),
                    ),
                }
            }
        }
        for set in sets {
            let Some(i) = self.find(&set.name) else {
                let mut d = Diagnostic::error(
                    "E0302",
                    format!(
                        "kernel `{}` has no parameter `{}`",
                        kernel.name.name, set.name
                    ),
                )
                .with_note(format!("its parameters: {}", self.names().join(", ")));
                if let Some(c) = closest(&set.name, self.defs.iter().map(|d| d.name.as_str())) {
                    d = d.with_hint(format!("did you mean `{c}`?"));
                }
                diags.push(d);
                continue;
            };
            let v = set.value.trim();
            let num = v
                .parse::<i64>()
                .map(Num::Int)
                .or_else(|_| v.parse::<f64>().map(Num::Float))
                .ok()
                .filter(|n| n.as_f64().is_finite());
            match num {
                Some(n) => {
                    self.defs[i].value = Value::Set(n);
                    self.defs[i].origin = Origin::CommandLine;
                }
                None => diags.push(Diagnostic::error(
                    "E0303",
                    format!("`--set {}={}`: `{v}` is not a number", set.name, set.value),
                )),
            }
        }
    }

    /// Every parameter with its value and origin (values that fail are left out; their
    /// errors come from the clause that reads them).
    pub fn listing(&mut self) -> Vec<(String, String, Origin)> {
        let mut out = vec![];
        for i in 0..self.defs.len() {
            if matches!(self.defs[i].value, Value::List) {
                continue;
            }
            let mut sink = vec![];
            if let Some(v) = self.eval_def(i, &mut sink) {
                out.push((self.defs[i].name.clone(), v.text(), self.defs[i].origin));
            }
        }
        out
    }

    /// The value of parameter `name` (which must exist).
    pub fn get(&mut self, name: &str, diags: &mut Vec<Diagnostic>) -> Option<Num> {
        let i = self.find(name)?;
        self.eval_def(i, diags)
    }

    fn eval_def(&mut self, i: usize, diags: &mut Vec<Diagnostic>) -> Option<Num> {
        if let Some(v) = self.memo.get(&i) {
            return Some(*v);
        }
        if self.stack.contains(&i) || self.stack.len() > MAX_CHAIN {
            let d = &self.defs[i];
            diags.push(
                Diagnostic::error("E0104", format!("parameter `{}` depends on itself", d.name))
                    .with_label(d.span, "in this cycle")
                    .with_hint("give one parameter of the cycle a number"),
            );
            return None;
        }
        self.stack.push(i);
        let v = match self.defs[i].value.clone() {
            Value::Set(n) => Some(n),
            Value::Expr(e) => self.eval(e, diags),
            Value::Implicit(k) => {
                let e = self.implicit[k].clone();
                self.eval(&e, diags)
            }
            Value::List => {
                let d = &self.defs[i];
                diags.push(
                    Diagnostic::error(
                        "E0203",
                        format!("`{}` is a list; a selection kernel needs a number", d.name),
                    )
                    .with_label(d.span, "declared as a list"),
                );
                None
            }
        };
        self.stack.pop();
        if let Some(v) = v {
            self.memo.insert(i, v);
        }
        v
    }

    /// Evaluates an expression of parameters: numbers, names, `-`, `+ - * / %`.
    pub fn eval(&mut self, e: &ast::Expr, diags: &mut Vec<Diagnostic>) -> Option<Num> {
        match &e.kind {
            ExprKind::Int(i) => Some(Num::Int(*i)),
            ExprKind::Float(f) => Some(Num::Float(*f)),
            ExprKind::Name(n) => match self.find(n) {
                Some(i) => self.eval_def(i, diags),
                None => {
                    let mut d = Diagnostic::error("E0204", format!("unknown name `{n}`"))
                        .with_label(e.span, "not a parameter of this kernel");
                    if let Some(c) = closest(n, self.defs.iter().map(|d| d.name.as_str())) {
                        d = d.with_hint(format!("did you mean `{c}`?"));
                    }
                    diags.push(d);
                    None
                }
            },
            ExprKind::Unary(UnOp::Neg, a) => match self.eval(a, diags)? {
                Num::Int(i) => i.checked_neg().map(Num::Int).or_else(|| {
                    diags.push(overflow(e.span));
                    None
                }),
                Num::Float(f) => Some(Num::Float(-f)),
            },
            ExprKind::Binary(op, a, b) if is_arith(*op) => {
                let x = self.eval(a, diags)?;
                let y = self.eval(b, diags)?;
                arith(*op, x, y, e.span, diags)
            }
            _ => {
                diags.push(
                    Diagnostic::error("E0201", "expected a number")
                        .with_label(e.span, "not a number expression")
                        .with_hint("selection parameters are numbers: use parameters, literals and `+ - * / %`"),
                );
                None
            }
        }
    }
}

fn is_arith(op: BinOp) -> bool {
    matches!(
        op,
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem
    )
}

fn overflow(span: Span) -> Diagnostic {
    Diagnostic::error("E0301", "integer overflow").with_label(span, "overflows 64 bits")
}

fn arith(op: BinOp, x: Num, y: Num, span: Span, diags: &mut Vec<Diagnostic>) -> Option<Num> {
    if let (Num::Int(a), Num::Int(b)) = (x, y) {
        if matches!(op, BinOp::Div | BinOp::Rem) && b == 0 {
            diags.push(
                Diagnostic::error("E0301", "division by zero").with_label(span, "the divisor is 0"),
            );
            return None;
        }
        let r = match op {
            BinOp::Add => a.checked_add(b),
            BinOp::Sub => a.checked_sub(b),
            BinOp::Mul => a.checked_mul(b),
            BinOp::Div => a.checked_div(b),
            _ => a.checked_rem(b),
        };
        return r.map(Num::Int).or_else(|| {
            diags.push(overflow(span));
            None
        });
    }
    let (a, b) = (x.as_f64(), y.as_f64());
    let r = match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        _ => {
            diags.push(
                Diagnostic::error("E0202", "`%` needs integers")
                    .with_label(span, "a float operand"),
            );
            return None;
        }
    };
    if r.is_finite() {
        Some(Num::Float(r))
    } else {
        diags.push(
            Diagnostic::error("E0301", "the result is not a finite number")
                .with_label(span, "division by zero or overflow"),
        );
        None
    }
}
