//! A checked file: every name resolved, every expression typed. Parameter values are still
//! symbolic; [`super::instantiate`] binds them for one kernel.

use super::expr::{Expr, ParamId, Ty};
use crate::diagnostic::Span;
use crate::syntax::ast::{Order, Placement, Setting};

#[derive(Clone, Debug, Default)]
pub struct Program {
    pub params: Vec<ParamDef>,
    pub layouts: Vec<LayoutDef>,
    pub patterns: Vec<PatternDef>,
    pub kernels: Vec<KernelDef>,
}

/// Where a parameter was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    File,
    Layout(usize),
    Pattern(usize),
    Kernel(usize),
}

#[derive(Clone, Debug)]
pub struct ParamDef {
    pub name: String,
    pub span: Span,
    pub scope: Scope,
    pub value: ParamValue,
    /// Element type (for lists: of the elements).
    pub ty: Ty,
    /// Declared implicitly by a kernel setting (`heads 24;` declares `HEADS`).
    pub implicit: bool,
}

#[derive(Clone, Debug)]
pub enum ParamValue {
    Scalar(Expr),
    List(Vec<Expr>, Span),
    PerHead(Vec<Expr>, Span),
}

impl ParamValue {
    pub fn span(&self) -> Span {
        match self {
            ParamValue::Scalar(e) => e.span,
            ParamValue::List(_, s) | ParamValue::PerHead(_, s) => *s,
        }
    }

    pub fn shape(&self) -> ParamShape {
        match self {
            ParamValue::Scalar(_) => ParamShape::Scalar,
            ParamValue::List(..) => ParamShape::List,
            ParamValue::PerHead(..) => ParamShape::PerHead,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamShape {
    Scalar,
    List,
    PerHead,
}

#[derive(Clone, Debug)]
pub struct LayoutDef {
    pub name: String,
    pub span: Span,
    pub canvas: Vec<Expr>,
    pub canvas_span: Span,
    pub tile: Vec<Expr>,
    pub tile_span: Span,
    pub order: Order,
    pub segments: Vec<SegmentDef>,
}

impl LayoutDef {
    pub fn rank(&self) -> usize {
        self.canvas.len()
    }
}

#[derive(Clone, Debug)]
pub struct SegmentDef {
    pub name: String,
    pub name_span: Span,
    pub placement: Placement,
    pub size: Expr,
    pub valid: Option<Expr>,
    pub span: Span,
}

/// A group of tokens named in a `see` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    All,
    Canvas,
    Segment(usize),
}

#[derive(Clone, Debug)]
pub struct SeeRule {
    pub from: Group,
    pub to: Group,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct PatternDef {
    pub name: String,
    pub span: Span,
    pub layout: usize,
    pub tiles: Option<Expr>,
    pub tokens: Option<Expr>,
    pub see: Vec<SeeRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bf16,
    F16,
    F32,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        Some(match s {
            "bf16" => DType::Bf16,
            "f16" => DType::F16,
            "f32" => DType::F32,
            _ => return None,
        })
    }

    pub fn bytes(self) -> u32 {
        match self {
            DType::Bf16 | DType::F16 => 2,
            DType::F32 => 4,
        }
    }
}

#[derive(Clone, Debug)]
pub struct InputDef {
    pub name: String,
    pub span: Span,
    pub dtype: DType,
    pub dims: Vec<Expr>,
}

/// What an attention kernel writes beside its output `o` (`outputs lse;`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Each query row's log-sum-exp, `[BATCH, HEADS, tokens]` f32; where `lse` was
    /// named, when it was.
    pub lse: Option<Span>,
}

impl Outputs {
    /// The names `outputs` accepts, with what each one is (for diagnostics).
    pub const KNOWN: [(&'static str, &'static str); 1] = [(
        "lse",
        "each query row's log-sum-exp, `[BATCH, HEADS, tokens]` f32",
    )];
}

#[derive(Clone, Debug)]
pub struct KernelDef {
    pub name: String,
    pub span: Span,
    pub pattern: usize,
    pub dtype: DType,
    pub dtype_span: Span,
    /// The parameters the settings bind, and where each setting was written (if it was).
    pub settings: Vec<(Setting, ParamId, Option<Span>)>,
    pub scale: Option<Expr>,
    pub score: Option<Expr>,
    pub inputs: Vec<InputDef>,
    pub outputs: Outputs,
    /// `NAME = value;` statements: they replace a visible parameter's default.
    pub overrides: Vec<(ParamId, ParamValue, Span)>,
}

impl Program {
    pub fn param(&self, id: ParamId) -> &ParamDef {
        &self.params[id.0 as usize]
    }

    pub fn kernel_by_name(&self, name: &str) -> Option<usize> {
        self.kernels.iter().position(|k| k.name == name)
    }

    /// The scopes a kernel sees, innermost first.
    pub fn kernel_scopes(&self, kernel: usize) -> Vec<Scope> {
        let k = &self.kernels[kernel];
        let p = &self.patterns[k.pattern];
        vec![
            Scope::Kernel(kernel),
            Scope::Pattern(k.pattern),
            Scope::Layout(p.layout),
            Scope::File,
        ]
    }

    /// Every parameter a kernel sees, in declaration order.
    pub fn visible_params(&self, kernel: usize) -> Vec<ParamId> {
        let scopes = self.kernel_scopes(kernel);
        (0..self.params.len() as u32)
            .map(ParamId)
            .filter(|id| scopes.contains(&self.param(*id).scope))
            .collect()
    }
}
