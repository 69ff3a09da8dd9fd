//! The checked, instantiated kernel: every parameter bound to a value, every expression
//! concrete. This is the input of pattern analysis and lowering, and `--emit spec` prints it.

use std::fmt::Write;

use super::eval::Value;
use super::expr::{axis_names, format_float, Expr, InputId, ParamId, Printer};
use super::program::{DType, Group, Outputs};
use crate::diagnostic::Span;
use crate::syntax::ast::{Order, Placement};

#[derive(Clone, Debug)]
pub struct Spec {
    pub kernel: String,
    pub pattern: String,
    pub layout_name: String,
    pub params: Vec<BoundParam>,
    pub layout: Layout,
    /// Distinct mask rules; heads with equal per-head parameters share one.
    pub variants: Vec<PatternVariant>,
    /// For each query head, its variant.
    pub head_variant: Vec<u32>,
    pub rules: Vec<(Group, Group)>,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub value_dim: u32,
    pub batch: u32,
    pub dtype: DType,
    pub scale: f64,
    /// Score modifier over `score`, `b`, `h`, token coordinates, positions, inputs.
    pub score: Option<Expr>,
    pub inputs: Vec<InputSpec>,
    /// What the kernel writes beside `o` (`outputs lse;`).
    pub outputs: Outputs,
    pub kernel_span: Span,
    pub pattern_span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BoundValue {
    Scalar(Value),
    List(Vec<Value>),
    PerHead(Vec<Value>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    Kernel,
    CommandLine,
}

#[derive(Clone, Debug)]
pub struct BoundParam {
    pub id: ParamId,
    pub name: String,
    pub value: BoundValue,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Canvas extent per axis, in tokens.
    pub canvas: Vec<u32>,
    /// Tile extent per axis, in tokens.
    pub tile: Vec<u32>,
    pub order: Order,
    pub segments: Vec<Segment>,
}

impl Layout {
    pub fn rank(&self) -> usize {
        self.canvas.len()
    }

    pub fn axes(&self) -> &'static [&'static str] {
        axis_names(self.rank())
    }

    /// Tiles per axis (the last tile of an axis may be ragged).
    pub fn grid(&self) -> Vec<u32> {
        self.canvas
            .iter()
            .zip(&self.tile)
            .map(|(c, t)| c.div_ceil(*t))
            .collect()
    }

    pub fn tile_tokens(&self) -> u64 {
        self.tile.iter().map(|t| u64::from(*t)).product()
    }

    pub fn canvas_tokens(&self) -> u64 {
        self.canvas.iter().map(|t| u64::from(*t)).product()
    }

    pub fn total_tokens(&self) -> u64 {
        self.canvas_tokens() + self.segments.iter().map(|s| u64::from(s.size)).sum::<u64>()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub name: String,
    pub placement: Placement,
    pub size: u32,
    /// Tokens at or after `valid` are padding: no query sees them.
    pub valid: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatternVariant {
    pub heads: Vec<u32>,
    /// Over tile coordinates; `None` = every tile pair.
    pub tiles: Option<Expr>,
    /// Over token coordinates; `None` = every token pair.
    pub tokens: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<u64>,
}

impl Spec {
    pub fn group_name(&self, g: Group) -> String {
        match g {
            Group::All => "all".into(),
            Group::Canvas => "canvas".into(),
            Group::Segment(i) => self
                .layout
                .segments
                .get(i)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
        }
    }

    pub fn printer_names(
        &self,
    ) -> (
        impl Fn(ParamId) -> String + '_,
        impl Fn(InputId) -> String + '_,
    ) {
        let pn = move |p: ParamId| {
            self.params
                .iter()
                .find(|b| b.id == p)
                .map(|b| b.name.clone())
                .unwrap_or_else(|| format!("param#{}", p.0))
        };
        let inn = move |i: InputId| {
            self.inputs
                .get(i.0 as usize)
                .map(|x| x.name.clone())
                .unwrap_or_default()
        };
        (pn, inn)
    }

    pub fn print_expr(&self, e: &Expr) -> String {
        let (pn, inn) = self.printer_names();
        Printer {
            axes: self.layout.axes(),
            param_name: &pn,
            input_name: &inn,
        }
        .print(e)
    }

    /// Query heads per KV head.
    pub fn group_size(&self) -> u32 {
        self.heads / self.kv_heads.max(1)
    }
}

pub fn format_value(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format_float(*f),
        Value::Bool(b) => b.to_string(),
    }
}

pub fn format_bound(v: &BoundValue) -> String {
    let list = |vs: &[Value]| vs.iter().map(format_value).collect::<Vec<_>>().join(", ");
    match v {
        BoundValue::Scalar(v) => format_value(v),
        BoundValue::List(vs) => format!("[{}]", list(vs)),
        BoundValue::PerHead(vs) => format!("per_head [{}]", list(vs)),
    }
}

/// The text form printed by `--emit spec`.
pub fn print_spec(s: &Spec) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "kernel {} = attention({}) on layout {}",
        s.kernel, s.pattern, s.layout_name
    );
    let _ = writeln!(o, "params:");
    for p in &s.params {
        let origin = match p.origin {
            Origin::Default => "",
            Origin::Kernel => "  (set by the kernel)",
            Origin::CommandLine => "  (set on the command line)",
        };
        let _ = writeln!(o, "  {} = {}{origin}", p.name, format_bound(&p.value));
    }
    let l = &s.layout;
    let axes = l.axes();
    let dims = |v: &[u32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("x")
    };
    let _ = writeln!(
        o,
        "canvas: {} = {} ({} tokens)",
        axes.join("x"),
        dims(&l.canvas),
        l.canvas_tokens()
    );
    let ragged: Vec<&str> = axes
        .iter()
        .zip(l.canvas.iter().zip(&l.tile))
        .filter(|(_, (c, t))| *c % *t != 0)
        .map(|(a, _)| *a)
        .collect();
    let _ = writeln!(
        o,
        "tile: {} ({} tokens), grid {} tiles{}",
        dims(&l.tile),
        l.tile_tokens(),
        dims(&l.grid()),
        if ragged.is_empty() {
            String::new()
        } else {
            format!(", ragged along {}", ragged.join(", "))
        }
    );
    let _ = writeln!(
        o,
        "order: {}",
        match l.order {
            Order::Tiled => "tiled (tile-major)",
            Order::Raster => "raster",
        }
    );
    for seg in &l.segments {
        let place = match seg.placement {
            Placement::Prefix => "prefix",
            Placement::Suffix => "suffix",
        };
        let _ = writeln!(
            o,
            "segment {}: {place}, {} tokens, {} valid",
            seg.name, seg.size, seg.valid
        );
    }
    let _ = writeln!(o, "sequence: {} tokens", l.total_tokens());
    let _ = writeln!(
        o,
        "heads: {} query / {} kv (group {}), head_dim {}, value_dim {}, batch {}, dtype {}",
        s.heads,
        s.kv_heads,
        s.group_size(),
        s.head_dim,
        s.value_dim,
        s.batch,
        s.dtype.name()
    );
    let _ = writeln!(o, "scale: {}", s.scale);
    for (i, v) in s.variants.iter().enumerate() {
        let heads = if s.variants.len() == 1 {
            "all heads".to_string()
        } else {
            format!("heads {}", ranges(&v.heads))
        };
        let _ = writeln!(o, "mask {i} ({heads}):");
        let _ = writeln!(
            o,
            "  tiles: {}",
            v.tiles
                .as_ref()
                .map(|e| s.print_expr(e))
                .unwrap_or_else(|| "(all)".into())
        );
        let _ = writeln!(
            o,
            "  tokens: {}",
            v.tokens
                .as_ref()
                .map(|e| s.print_expr(e))
                .unwrap_or_else(|| "(all)".into())
        );
    }
    for (f, t) in &s.rules {
        let _ = writeln!(o, "see {} -> {}", s.group_name(*f), s.group_name(*t));
    }
    if let Some(e) = &s.score {
        let _ = writeln!(o, "score: {}", s.print_expr(e));
    }
    for i in &s.inputs {
        let d: Vec<String> = i.dims.iter().map(|x| x.to_string()).collect();
        let _ = writeln!(o, "input {}: {}[{}]", i.name, i.dtype.name(), d.join(", "));
    }
    if s.outputs.lse.is_some() {
        let _ = writeln!(
            o,
            "output lse: f32[{}, {}, {}] (natural log)",
            s.batch,
            s.heads,
            l.total_tokens()
        );
    }
    o
}

/// `0-3, 5, 7-8`
pub fn ranges(v: &[u32]) -> String {
    let mut out: Vec<String> = vec![];
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(", ")
}
