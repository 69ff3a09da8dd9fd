//! Resolved, typed expressions. Names are bound to coordinates ([`Var`]) or parameters
//! ([`ParamId`]); after instantiation parameters are gone and only constants, coordinates
//! and operations remain. The same type serves masks, score modifiers and parameter
//! defaults; a [`Ctx`] says which variables an expression may use.

use std::fmt;
use std::sync::Arc;

use crate::diagnostic::Span;
pub use crate::syntax::ast::{BinOp, UnOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    Int,
    Float,
    Bool,
}

impl Ty {
    /// With its article: "an integer", "a float", "a boolean".
    pub fn a(self) -> &'static str {
        match self {
            Ty::Int => "an integer",
            Ty::Float => "a float",
            Ty::Bool => "a boolean",
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ty::Int => "integer",
            Ty::Float => "float",
            Ty::Bool => "boolean",
        })
    }
}

/// Where an expression appears; decides which variables exist and their units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ctx {
    /// Parameter defaults, canvas and tile sizes, settings: parameters only.
    Param,
    /// `tiles:` predicates: coordinates in tiles.
    Tiles,
    /// `tokens:` predicates: coordinates in tokens.
    Tokens,
    /// `score:` modifiers: the score, batch, head, token coordinates, sequence positions.
    Score,
}

/// Which side of a token pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Q,
    K,
}

/// A variable: coordinates are per canvas axis (index into the layout's axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Var {
    /// Query coordinate along an axis (tiles or tokens, per context).
    Q(u8),
    /// Key coordinate along an axis.
    K(u8),
    /// `k - q` along an axis.
    D(u8),
    /// Canvas extent along an axis (in tiles or tokens, per context).
    N(u8),
    /// Linear index: canvas raster index in masks, sequence position in score modifiers.
    QI,
    KI,
    Score,
    Batch,
    Head,
}

/// Names of the canvas axes, by rank.
pub fn axis_names(rank: usize) -> &'static [&'static str] {
    match rank {
        1 => &["x"],
        2 => &["h", "w"],
        _ => &["t", "h", "w"],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Builtin {
    Abs,
    Min,
    Max,
    Clamp,
    Tanh,
    Exp,
    Exp2,
    Log,
    Sqrt,
    Float,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Abs => "abs",
            Builtin::Min => "min",
            Builtin::Max => "max",
            Builtin::Clamp => "clamp",
            Builtin::Tanh => "tanh",
            Builtin::Exp => "exp",
            Builtin::Exp2 => "exp2",
            Builtin::Log => "log",
            Builtin::Sqrt => "sqrt",
            Builtin::Float => "float",
        }
    }

    pub fn from_name(s: &str) -> Option<Builtin> {
        Some(match s {
            "abs" => Builtin::Abs,
            "min" => Builtin::Min,
            "max" => Builtin::Max,
            "clamp" => Builtin::Clamp,
            "tanh" => Builtin::Tanh,
            "exp" => Builtin::Exp,
            "exp2" => Builtin::Exp2,
            "log" => Builtin::Log,
            "sqrt" => Builtin::Sqrt,
            "float" => Builtin::Float,
            _ => return None,
        })
    }

    pub fn arity(self) -> usize {
        match self {
            Builtin::Min | Builtin::Max => 2,
            Builtin::Clamp => 3,
            _ => 1,
        }
    }
}

/// Index of a parameter in [`super::program::Program::params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

/// Index of a kernel input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InputId(pub u32);

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: Kind,
    pub ty: Ty,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Var(Var),
    /// A scalar parameter (before instantiation).
    Param(ParamId),
    /// A per-head parameter after instantiation: the value for head `h`.
    HeadTable(Arc<[f64]>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call(Builtin, Vec<Expr>),
    /// `doc(x, OFFSETS)`: the index of the document containing position `x`, given sorted
    /// start offsets; -1 before the first.
    Doc {
        x: Box<Expr>,
        offsets: DocOffsets,
    },
    /// `window(axis, radius, stride:, dilation:)`: a clamped (NATTEN/STA) window along one
    /// axis. Desugared into comparisons when the kernel is instantiated.
    Window {
        axis: u8,
        radius: Box<Expr>,
        stride: Box<Expr>,
        dilation: Box<Expr>,
    },
    /// An element of a kernel input tensor (score modifiers only).
    Input {
        id: InputId,
        indices: Vec<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum DocOffsets {
    Param(ParamId),
    Values(Arc<[i64]>),
}

impl Expr {
    pub fn int(v: i64, span: Span) -> Expr {
        Expr {
            kind: Kind::Int(v),
            ty: Ty::Int,
            span,
        }
    }

    pub fn bool(v: bool, span: Span) -> Expr {
        Expr {
            kind: Kind::Bool(v),
            ty: Ty::Bool,
            span,
        }
    }

    pub fn var(v: Var, span: Span) -> Expr {
        Expr {
            kind: Kind::Var(v),
            ty: if v == Var::Score { Ty::Float } else { Ty::Int },
            span,
        }
    }

    pub fn binary(op: BinOp, a: Expr, b: Expr, span: Span) -> Expr {
        let ty = if op.is_comparison() || op.is_logical() {
            Ty::Bool
        } else if a.ty == Ty::Float || b.ty == Ty::Float {
            Ty::Float
        } else {
            Ty::Int
        };
        Expr {
            kind: Kind::Binary(op, Box::new(a), Box::new(b)),
            ty,
            span,
        }
    }

    pub fn call(b: Builtin, args: Vec<Expr>, span: Span) -> Expr {
        let ty = match b {
            Builtin::Abs | Builtin::Min | Builtin::Max | Builtin::Clamp => {
                if args.iter().any(|a| a.ty == Ty::Float) {
                    Ty::Float
                } else {
                    Ty::Int
                }
            }
            _ => Ty::Float,
        };
        Expr {
            kind: Kind::Call(b, args),
            ty,
            span,
        }
    }

    /// Visits every sub-expression (pre-order).
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match &self.kind {
            Kind::Unary(_, a) => a.walk(f),
            Kind::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            Kind::Call(_, args) => args.iter().for_each(|a| a.walk(f)),
            Kind::Doc { x, .. } => x.walk(f),
            Kind::Window {
                radius,
                stride,
                dilation,
                ..
            } => {
                radius.walk(f);
                stride.walk(f);
                dilation.walk(f);
            }
            Kind::Input { indices, .. } => indices.iter().for_each(|a| a.walk(f)),
            _ => {}
        }
    }

    /// True when the expression mentions any variable (so it is not a constant).
    pub fn has_vars(&self) -> bool {
        let mut any = false;
        self.walk(&mut |e| {
            any |= matches!(
                e.kind,
                Kind::Var(_) | Kind::HeadTable(_) | Kind::Input { .. }
            )
        });
        any
    }
}

/// Prints expressions in source syntax, with minimal parentheses, naming coordinates with
/// the layout's axis names.
pub struct Printer<'a> {
    pub axes: &'a [&'a str],
    pub param_name: &'a dyn Fn(ParamId) -> String,
    pub input_name: &'a dyn Fn(InputId) -> String,
}

impl Printer<'_> {
    pub fn print(&self, e: &Expr) -> String {
        self.go(e, 0)
    }

    fn go(&self, e: &Expr, parent_prec: u8) -> String {
        match &e.kind {
            Kind::Int(v) => v.to_string(),
            Kind::Float(v) => format_float(*v),
            Kind::Bool(b) => b.to_string(),
            Kind::Var(v) => self.var(*v),
            Kind::Param(p) => (self.param_name)(*p),
            Kind::HeadTable(vals) => {
                let v: Vec<String> = vals.iter().map(|x| format_float(*x)).collect();
                format!("[{}][h]", v.join(", "))
            }
            Kind::Unary(UnOp::Neg, a) => format!("-{}", self.go(a, 7)),
            Kind::Unary(UnOp::Not, a) => format!("!{}", self.go(a, 7)),
            Kind::Binary(op, a, b) => {
                let p = op.precedence();
                // Left-associative: the right operand needs parentheses at equal precedence.
                let s = format!("{} {} {}", self.go(a, p), op.symbol(), self.go(b, p + 1));
                if p < parent_prec {
                    format!("({s})")
                } else {
                    s
                }
            }
            Kind::Call(b, args) => {
                let a: Vec<String> = args.iter().map(|x| self.go(x, 0)).collect();
                format!("{}({})", b.name(), a.join(", "))
            }
            Kind::Doc { x, offsets } => {
                let o = match offsets {
                    DocOffsets::Param(p) => (self.param_name)(*p),
                    DocOffsets::Values(v) => {
                        format!(
                            "[{}]",
                            v.iter()
                                .map(|x| x.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                };
                format!("doc({}, {o})", self.go(x, 0))
            }
            Kind::Window {
                axis,
                radius,
                stride,
                dilation,
            } => {
                let name = self.axes.get(*axis as usize).copied().unwrap_or("?");
                format!(
                    "window({name}, {}, stride: {}, dilation: {})",
                    self.go(radius, 0),
                    self.go(stride, 0),
                    self.go(dilation, 0)
                )
            }
            Kind::Input { id, indices } => {
                let i: Vec<String> = indices.iter().map(|x| self.go(x, 0)).collect();
                format!("{}[{}]", (self.input_name)(*id), i.join(", "))
            }
        }
    }

    fn var(&self, v: Var) -> String {
        let axis = |a: u8| self.axes.get(a as usize).copied().unwrap_or("?");
        match v {
            Var::Q(a) => format!("q{}", axis(a)),
            Var::K(a) => format!("k{}", axis(a)),
            Var::D(a) => format!("d{}", axis(a)),
            Var::N(a) => format!("n{}", axis(a)),
            Var::QI => "qi".into(),
            Var::KI => "ki".into(),
            Var::Score => "score".into(),
            Var::Batch => "b".into(),
            Var::Head => "h".into(),
        }
    }
}

/// Floats print with a decimal point so they read back as floats.
pub fn format_float(v: f64) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// A printer for instantiated expressions (no parameters or inputs left to name).
pub fn print_plain(e: &Expr, axes: &[&str]) -> String {
    let pn = |p: ParamId| format!("param#{}", p.0);
    let inn = |i: InputId| format!("input#{}", i.0);
    Printer {
        axes,
        param_name: &pn,
        input_name: &inn,
    }
    .print(e)
}
