//! The typed syntax tree. Owns its strings; spans are `Copy` byte ranges.

use crate::diagnostic::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Param(ParamDecl),
    Layout(LayoutDecl),
    Pattern(PatternDecl),
    Kernel(KernelDecl),
    /// `select NAME { ... }`: a KV-selection policy.
    Select(SelectDecl),
    /// `kernel K = decode(SEL) { ... }` or `kernel K = select(SEL) { ... }`.
    SelectKernel(SelectKernelDecl),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `param A = 1, B = A;`
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub binds: Vec<ParamBind>,
    pub span: Span,
}

/// `NAME = value`, in a `param` declaration or as a kernel override.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamBind {
    pub name: Ident,
    pub value: ParamValue,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    /// A scalar: an integer, float or boolean expression of other parameters.
    Expr(Expr),
    /// `[a, b, c]`: a list (document offsets, for instance).
    List(ListLit),
    /// `per_head [a, b, c]`: one scalar per query head.
    PerHead(ListLit),
}

impl ParamValue {
    pub fn span(&self) -> Span {
        match self {
            ParamValue::Expr(e) => e.span,
            ParamValue::List(l) | ParamValue::PerHead(l) => l.span,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListLit {
    pub items: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayoutDecl {
    pub name: Ident,
    pub stmts: Vec<LayoutStmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LayoutStmt {
    Param(ParamDecl),
    Canvas { dims: Vec<Expr>, span: Span },
    Tile { dims: Vec<Expr>, span: Span },
    Order { order: Order, span: Span },
    Segment(SegmentDecl),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// Tile-major: tiles in raster order, tokens in raster order inside a tile.
    Tiled,
    /// The model's natural raster order over the whole canvas.
    Raster,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    Prefix,
    Suffix,
}

/// `segment text prefix TEXT valid TEXT_VALID;`
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentDecl {
    pub name: Ident,
    pub placement: Placement,
    pub size: Expr,
    pub valid: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatternDecl {
    pub name: Ident,
    pub layout: Ident,
    pub stmts: Vec<PatternStmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PatternStmt {
    Param(ParamDecl),
    /// `tiles: <bool expr over tile coordinates>;`
    Tiles {
        expr: Expr,
        span: Span,
    },
    /// `tokens: <bool expr over token coordinates>;`
    Tokens {
        expr: Expr,
        span: Span,
    },
    /// `see text -> all;`
    See {
        from: Ident,
        to: Ident,
        span: Span,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct KernelDecl {
    pub name: Ident,
    pub pattern: Ident,
    pub stmts: Vec<KernelStmt>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setting {
    Heads,
    KvHeads,
    HeadDim,
    ValueDim,
    Batch,
    Scale,
}

impl Setting {
    pub fn keyword(self) -> &'static str {
        match self {
            Setting::Heads => "heads",
            Setting::KvHeads => "kv_heads",
            Setting::HeadDim => "head_dim",
            Setting::ValueDim => "value_dim",
            Setting::Batch => "batch",
            Setting::Scale => "scale",
        }
    }

    /// The parameter a setting binds (`heads 24;` is `HEADS = 24`). `scale` binds none.
    pub fn param_name(self) -> Option<&'static str> {
        match self {
            Setting::Heads => Some("HEADS"),
            Setting::KvHeads => Some("KV_HEADS"),
            Setting::HeadDim => Some("HEAD_DIM"),
            Setting::ValueDim => Some("VALUE_DIM"),
            Setting::Batch => Some("BATCH"),
            Setting::Scale => None,
        }
    }

    pub fn from_keyword(s: &str) -> Option<Setting> {
        Some(match s {
            "heads" => Setting::Heads,
            "kv_heads" => Setting::KvHeads,
            "head_dim" => Setting::HeadDim,
            "value_dim" => Setting::ValueDim,
            "batch" => Setting::Batch,
            "scale" => Setting::Scale,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum KernelStmt {
    Param(ParamDecl),
    Dtype {
        name: Ident,
        span: Span,
    },
    Setting {
        key: Setting,
        key_span: Span,
        value: Expr,
        span: Span,
    },
    /// `score: <expr of score, b, h, coordinates>;`
    Score {
        expr: Expr,
        span: Span,
    },
    /// `input TEMP: f32[HEADS, 4096];`
    Input {
        name: Ident,
        dtype: Ident,
        dims: Vec<Expr>,
        span: Span,
    },
    /// `outputs lse;`: outputs beside `o` (names, checked by the resolver).
    Outputs {
        names: Vec<Expr>,
        span: Span,
    },
    /// `R = 2;` overrides a parameter declared by the pattern or layout.
    Override(ParamBind),
}

/// `select quest { source page_bound(page = 16); budget 4096 tokens; }`
#[derive(Clone, Debug, PartialEq)]
pub struct SelectDecl {
    pub name: Ident,
    pub stmts: Vec<SelectStmt>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceAxis {
    Rows,
    Heads,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeepKind {
    Sinks,
    Recent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BudgetUnit {
    Tokens,
    Ratio,
}

/// One clause of a `select` body. Clause values are expressions (`exact`,
/// `page_bound(page = PAGE)`, `per_kv_group(sum)`); the checker reads their shape.
#[derive(Clone, Debug, PartialEq)]
pub enum SelectStmt {
    Param(ParamDecl),
    Source {
        value: Expr,
        span: Span,
    },
    Reduce {
        axis: ReduceAxis,
        axis_span: Span,
        value: Expr,
        span: Span,
    },
    Pool {
        value: Expr,
        span: Span,
    },
    Granularity {
        value: Expr,
        span: Span,
    },
    Keep {
        items: Vec<(KeepKind, Span, Expr)>,
        span: Span,
    },
    /// `budget 4096 tokens;`, or with an allocation across the lists after the unit
    /// (`budget 1024 tokens adaptive(floor = 0.2);`).
    Budget {
        value: Expr,
        unit: BudgetUnit,
        unit_span: Span,
        alloc: Option<Expr>,
        span: Span,
    },
    /// `output indices;` or `output compacted;`.
    Output {
        value: Expr,
        span: Span,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SelectKernelKind {
    Decode,
    Select,
}

/// A kernel over a `select` declaration. Its body has the statements of an attention
/// kernel (settings, `dtype`, parameters, overrides).
#[derive(Clone, Debug, PartialEq)]
pub struct SelectKernelDecl {
    pub name: Ident,
    pub kind: SelectKernelKind,
    pub select: Ident,
    pub stmts: Vec<KernelStmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Name(String),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call { func: Ident, args: Vec<Arg> },
    Index { base: Box<Expr>, indices: Vec<Expr> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }

    /// Binding power: higher binds tighter. All operators associate to the left.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne => 3,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
            BinOp::Add | BinOp::Sub => 5,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 6,
        }
    }

    pub fn from_symbol(s: &str) -> Option<BinOp> {
        Some(match s {
            "||" => BinOp::Or,
            "&&" => BinOp::And,
            "==" => BinOp::Eq,
            "!=" => BinOp::Ne,
            "<" => BinOp::Lt,
            "<=" => BinOp::Le,
            ">" => BinOp::Gt,
            ">=" => BinOp::Ge,
            "+" => BinOp::Add,
            "-" => BinOp::Sub,
            "*" => BinOp::Mul,
            "/" => BinOp::Div,
            "%" => BinOp::Rem,
            _ => return None,
        })
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }

    pub fn is_logical(self) -> bool {
        matches!(self, BinOp::Or | BinOp::And)
    }
}
