//! Binds one kernel's parameters (defaults, kernel overrides, `--set` values) and turns the
//! checked program into a concrete [`Spec`]: sizes checked, per-head rules split into
//! variants, `window(...)` expanded into comparisons, constants folded.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use super::eval::{self, EvalError, NoVars, Value};
use super::expr::*;
use super::program::*;
use super::spec::*;
use crate::diagnostic::{closest, Diagnostic, Span};
use crate::syntax::ast::Setting;

/// Largest extent of one canvas axis, in tokens.
pub const MAX_AXIS: u32 = 1 << 20;
/// Largest sequence (canvas + segments), in tokens: positions fit in i32 on the GPU.
pub const MAX_TOKENS: u64 = (1 << 31) - 1;
pub const MAX_HEADS: u32 = 1024;
pub const MAX_HEAD_DIM: u32 = 1024;
pub const MAX_BATCH: u32 = 1 << 16;

/// A `--set NAME=VALUE` from the command line or the runtime API.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub name: String,
    pub value: String,
}

impl Binding {
    /// Parses `NAME=VALUE`.
    pub fn parse(s: &str) -> Result<Binding, String> {
        let (n, v) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
        let n = n.trim();
        if n.is_empty() {
            return Err(format!("`{s}` has no parameter name"));
        }
        Ok(Binding {
            name: n.to_string(),
            value: v.trim().to_string(),
        })
    }
}

pub fn instantiate(
    prog: &Program,
    kernel: usize,
    sets: &[Binding],
) -> (Option<Spec>, Vec<Diagnostic>) {
    let mut diags = vec![];
    let spec = Inst::new(prog, kernel, &mut diags).and_then(|mut i| i.run(sets));
    (spec, diags)
}

enum Source {
    Decl(ParamValue, Origin),
    Set(BoundValue),
}

struct Inst<'a> {
    prog: &'a Program,
    kernel: usize,
    diags: &'a mut Vec<Diagnostic>,
}

/// Parameter values, evaluated on demand.
struct Params<'a> {
    prog: &'a Program,
    sources: HashMap<ParamId, Source>,
    memo: RefCell<HashMap<ParamId, BoundValue>>,
    busy: RefCell<Vec<ParamId>>,
    depth: Cell<usize>,
}

/// Evaluation failed only because a per-head value was needed without a head.
const NEEDS_HEAD: &str = "\u{0}needs a head";

impl Params<'_> {
    fn value(&self, id: ParamId, span: Span) -> Result<BoundValue, EvalError> {
        if let Some(v) = self.memo.borrow().get(&id) {
            return Ok(v.clone());
        }
        let name = &self.prog.param(id).name;
        if self.busy.borrow().contains(&id) {
            return Err(EvalError {
                span,
                message: format!("parameter `{name}` depends on itself"),
            });
        }
        if self.depth.get() > 64 {
            return Err(EvalError {
                span,
                message: "parameter defaults nest too deeply".into(),
            });
        }
        let Some(src) = self.sources.get(&id) else {
            return Err(EvalError {
                span,
                message: format!("parameter `{name}` is not visible here"),
            });
        };
        self.busy.borrow_mut().push(id);
        self.depth.set(self.depth.get() + 1);
        let at = |head| AtHead { p: self, head };
        let r = match src {
            Source::Set(v) => Ok(v.clone()),
            Source::Decl(pv, _) => match pv {
                // A default that reads a per-head parameter is per-head itself.
                ParamValue::Scalar(e) => match eval::eval(e, &at(None)) {
                    Err(err) if err.message == NEEDS_HEAD => self.heads(span).and_then(|n| {
                        (0..n)
                            .map(|h| eval::eval(e, &at(Some(h))))
                            .collect::<Result<_, _>>()
                            .map(BoundValue::PerHead)
                    }),
                    other => other.map(BoundValue::Scalar),
                },
                ParamValue::List(items, _) => items
                    .iter()
                    .map(|e| eval::eval(e, &at(None)))
                    .collect::<Result<_, _>>()
                    .map(BoundValue::List),
                ParamValue::PerHead(items, _) => items
                    .iter()
                    .map(|e| eval::eval(e, &at(None)))
                    .collect::<Result<_, _>>()
                    .map(BoundValue::PerHead),
            },
        };
        self.depth.set(self.depth.get() - 1);
        self.busy.borrow_mut().pop();
        let v = r.map_err(|mut e| {
            if e.message == NEEDS_HEAD {
                e.message = format!("`{name}` has one value per head and cannot be used here");
            }
            e
        })?;
        self.memo.borrow_mut().insert(id, v.clone());
        Ok(v)
    }

    /// The number of query heads (the `HEADS` parameter).
    fn heads(&self, span: Span) -> Result<usize, EvalError> {
        let id = self
            .sources
            .keys()
            .copied()
            .find(|id| self.prog.param(*id).name == "HEADS");
        match id.map(|id| self.value(id, span)) {
            Some(Ok(BoundValue::Scalar(Value::Int(n)))) if n >= 1 && n <= i64::from(MAX_HEADS) => {
                Ok(n as usize)
            }
            Some(Err(e)) => Err(e),
            _ => Err(EvalError {
                span,
                message: format!("a per-head value needs HEADS between 1 and {MAX_HEADS}"),
            }),
        }
    }

    fn scalar(&self, id: ParamId, span: Span) -> Result<Value, EvalError> {
        match self.value(id, span)? {
            BoundValue::Scalar(v) => Ok(v),
            BoundValue::PerHead(_) => Err(EvalError {
                span,
                message: format!(
                    "`{}` has one value per head and cannot be used here",
                    self.prog.param(id).name
                ),
            }),
            BoundValue::List(_) => Err(EvalError {
                span,
                message: format!("`{}` is a list, not a number", self.prog.param(id).name),
            }),
        }
    }
}

/// Parameter values as seen by one head (or by none, for values shared by all heads).
struct AtHead<'p, 'a> {
    p: &'p Params<'a>,
    head: Option<usize>,
}

impl eval::Env for AtHead<'_, '_> {
    fn var(&self, _: Var, span: Span) -> Result<Value, EvalError> {
        Err(EvalError {
            span,
            message: "a coordinate cannot be used here".into(),
        })
    }
    fn param(&self, id: ParamId, span: Span) -> Result<Value, EvalError> {
        match self.p.value(id, span)? {
            BoundValue::Scalar(v) => Ok(v),
            BoundValue::PerHead(vs) => match self.head {
                Some(h) => vs.get(h).copied().ok_or_else(|| EvalError {
                    span,
                    message: format!(
                        "`{}` has {} per-head values, fewer than the heads",
                        self.p.prog.param(id).name,
                        vs.len()
                    ),
                }),
                None => Err(EvalError {
                    span,
                    message: NEEDS_HEAD.into(),
                }),
            },
            BoundValue::List(_) => Err(EvalError {
                span,
                message: format!("`{}` is a list, not a number", self.p.prog.param(id).name),
            }),
        }
    }
}

impl eval::Env for Params<'_> {
    fn var(&self, _: Var, span: Span) -> Result<Value, EvalError> {
        Err(EvalError {
            span,
            message: "a coordinate cannot be used here".into(),
        })
    }
    fn param(&self, id: ParamId, span: Span) -> Result<Value, EvalError> {
        self.scalar(id, span)
    }
}

fn eval_diag(e: EvalError) -> Diagnostic {
    Diagnostic::error("E0301", e.message.clone()).with_label(e.span, e.message)
}

impl<'a> Inst<'a> {
    fn new(prog: &'a Program, kernel: usize, diags: &'a mut Vec<Diagnostic>) -> Option<Inst<'a>> {
        (kernel < prog.kernels.len()).then_some(Inst {
            prog,
            kernel,
            diags,
        })
    }

    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn run(&mut self, sets: &[Binding]) -> Option<Spec> {
        let prog = self.prog;
        let k = &prog.kernels[self.kernel];
        let pat = &prog.patterns[k.pattern];
        let lay = &prog.layouts[pat.layout];
        if lay.canvas.is_empty() || lay.tile.len() != lay.canvas.len() {
            return None; // reported by resolve
        }

        // 1. Parameter sources: declaration, kernel override, --set.
        let visible = prog.visible_params(self.kernel);
        let mut sources: HashMap<ParamId, Source> = HashMap::new();
        for id in &visible {
            sources.insert(
                *id,
                Source::Decl(prog.param(*id).value.clone(), Origin::Default),
            );
        }
        for (id, v, _) in &k.overrides {
            sources.insert(*id, Source::Decl(v.clone(), Origin::Kernel));
        }
        let mut ok = true;
        for b in sets {
            let Some(id) = visible
                .iter()
                .copied()
                .find(|id| prog.param(*id).name == b.name)
            else {
                let names: Vec<&str> = visible
                    .iter()
                    .map(|id| prog.param(*id).name.as_str())
                    .collect();
                let mut d = Diagnostic::error(
                    "E0302",
                    format!("kernel `{}` has no parameter `{}`", k.name, b.name),
                )
                .with_note(format!("its parameters: {}", names.join(", ")));
                if let Some(c) = closest(&b.name, names.iter().copied()) {
                    d = d.with_hint(format!("did you mean `{c}`?"));
                }
                self.err(d);
                ok = false;
                continue;
            };
            match parse_set_value(&b.value, prog.param(id)) {
                Ok(v) => {
                    sources.insert(id, Source::Set(v));
                }
                Err(msg) => {
                    self.err(Diagnostic::error(
                        "E0303",
                        format!("bad value for `{}`: {msg}", b.name),
                    ));
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        let origins: HashMap<ParamId, Origin> = sources
            .iter()
            .map(|(id, s)| {
                (
                    *id,
                    match s {
                        Source::Set(_) => Origin::CommandLine,
                        Source::Decl(_, o) => *o,
                    },
                )
            })
            .collect();
        let params = Params {
            prog,
            sources,
            memo: RefCell::new(HashMap::new()),
            busy: RefCell::new(vec![]),
            depth: Cell::new(0),
        };

        // 2. Evaluate every visible parameter (reports bad defaults even if unused).
        let mut bound = vec![];
        for id in &visible {
            match params.value(*id, prog.param(*id).span) {
                Ok(v) => bound.push(BoundParam {
                    id: *id,
                    name: prog.param(*id).name.clone(),
                    value: v,
                    origin: origins[id],
                }),
                Err(e) => {
                    self.err(eval_diag(e));
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }

        // 3. Layout.
        let layout = self.layout(lay, &params)?;

        // 4. Settings.
        let setting = |s: Setting| {
            k.settings
                .iter()
                .find(|(x, _, _)| *x == s)
                .map(|(_, id, sp)| (*id, *sp))
        };
        let mut vals: HashMap<Setting, u32> = HashMap::new();
        let mut failed: Vec<Setting> = vec![];
        for s in [
            Setting::Heads,
            Setting::KvHeads,
            Setting::HeadDim,
            Setting::ValueDim,
            Setting::Batch,
        ] {
            let (id, written) = setting(s)?;
            let span = written.unwrap_or(k.span);
            let v = match params.scalar(id, span) {
                Ok(Value::Int(v)) => v,
                Ok(_) => {
                    self.err(
                        Diagnostic::error("E0304", format!("`{}` must be an integer", s.keyword()))
                            .with_label(span, "here"),
                    );
                    return None;
                }
                Err(e) => {
                    self.err(eval_diag(e));
                    return None;
                }
            };
            let max = match s {
                Setting::Heads | Setting::KvHeads => MAX_HEADS,
                Setting::Batch => MAX_BATCH,
                _ => MAX_HEAD_DIM,
            };
            if v < 1 || v > i64::from(max) {
                failed.push(s);
                // An unwritten setting that copies a failed one (KV_HEADS = HEADS,
                // VALUE_DIM = HEAD_DIM) would only repeat that error.
                let copies_failed = (s == Setting::KvHeads && failed.contains(&Setting::Heads))
                    || (s == Setting::ValueDim && failed.contains(&Setting::HeadDim));
                if written.is_none() && copies_failed {
                    ok = false;
                    continue;
                }
                let pname = s.param_name().unwrap_or("");
                self.err(
                    Diagnostic::error(
                        "E0304",
                        format!("`{}` is {v}; it must be between 1 and {max}", s.keyword()),
                    )
                    .with_label(span, format!("{pname} = {v}")),
                );
                ok = false;
                continue;
            }
            vals.insert(s, v as u32);
        }
        if !ok {
            return None;
        }
        let (heads, kv_heads) = (vals[&Setting::Heads], vals[&Setting::KvHeads]);
        if heads % kv_heads != 0 {
            let span = setting(Setting::KvHeads)
                .and_then(|x| x.1)
                .unwrap_or(k.span);
            self.err(
                Diagnostic::error(
                    "E0305",
                    format!("{heads} query heads cannot be shared evenly by {kv_heads} KV heads"),
                )
                .with_label(span, format!("KV_HEADS = {kv_heads}"))
                .with_hint("HEADS must be a multiple of KV_HEADS (GQA groups of equal size)"),
            );
            return None;
        }

        // 5. Per-head lists have one value per head.
        for b in &bound {
            if let BoundValue::PerHead(v) = &b.value {
                if v.len() != heads as usize {
                    let span = match &params.sources[&b.id] {
                        Source::Decl(pv, _) => pv.span(),
                        Source::Set(_) => Span::DUMMY,
                    };
                    let mut d = Diagnostic::error(
                        "E0306",
                        format!(
                            "`{}` has {} per-head values but the kernel has {heads} heads",
                            b.name,
                            v.len()
                        ),
                    )
                    .with_hint(format!("give exactly {heads} values, or change HEADS"));
                    if span != Span::DUMMY {
                        d = d.with_label(span, format!("{} values", v.len()));
                    }
                    self.err(d);
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        let values: HashMap<ParamId, BoundValue> =
            bound.iter().map(|b| (b.id, b.value.clone())).collect();

        // 6. Pattern rules, per head.
        let grid: Vec<i64> = layout.grid().iter().map(|g| i64::from(*g)).collect();
        let canvas: Vec<i64> = layout.canvas.iter().map(|g| i64::from(*g)).collect();
        let tiles = pat
            .tiles
            .as_ref()
            .map(|e| self.concrete(e, &values, &grid, "tiles", heads))
            .transpose();
        let tokens = pat
            .tokens
            .as_ref()
            .map(|e| self.concrete(e, &values, &canvas, "tokens", heads))
            .transpose();
        let (Ok(tiles), Ok(tokens)) = (tiles, tokens) else {
            return None;
        };
        let mut variants: Vec<PatternVariant> = vec![];
        let mut head_variant = vec![];
        for h in 0..heads as usize {
            let t = tiles.as_ref().map(|v| v[h].clone());
            let k = tokens.as_ref().map(|v| v[h].clone());
            match variants.iter().position(|v| v.tiles == t && v.tokens == k) {
                Some(i) => {
                    variants[i].heads.push(h as u32);
                    head_variant.push(i as u32);
                }
                None => {
                    head_variant.push(variants.len() as u32);
                    variants.push(PatternVariant {
                        heads: vec![h as u32],
                        tiles: t,
                        tokens: k,
                    });
                }
            }
        }

        // 7. Scale and score modifier.
        let head_dim = vals[&Setting::HeadDim];
        let scale = match &k.scale {
            None => 1.0 / f64::from(head_dim).sqrt(),
            Some(e) => match subst(e, &values).and_then(|e| eval::eval(&e, &NoVars)) {
                Ok(v) if v.as_f64().is_finite() => v.as_f64(),
                Ok(v) => {
                    self.err(
                        Diagnostic::error(
                            "E0307",
                            format!("the scale is {}, not a finite number", v.as_f64()),
                        )
                        .with_label(e.span, "here"),
                    );
                    return None;
                }
                Err(e) => {
                    self.err(eval_diag(e));
                    return None;
                }
            },
        };
        let score = match &k.score {
            None => None,
            Some(e) => match subst(e, &values).and_then(|e| fold(&e)) {
                Ok(e) => Some(e),
                Err(e) => {
                    self.err(eval_diag(e));
                    return None;
                }
            },
        };

        // 8. Inputs.
        let mut inputs = vec![];
        for i in &k.inputs {
            let mut dims = vec![];
            for d in &i.dims {
                match params.scalar_of(d) {
                    Ok(Value::Int(v)) if v >= 1 && v <= i64::from(u32::MAX) => dims.push(v as u64),
                    Ok(v) => {
                        self.err(
                            Diagnostic::error(
                                "E0308",
                                format!(
                                    "input dimension is {}; it must be at least 1",
                                    format_value(&v)
                                ),
                            )
                            .with_label(d.span, "here"),
                        );
                        return None;
                    }
                    Err(e) => {
                        self.err(eval_diag(e));
                        return None;
                    }
                }
            }
            inputs.push(InputSpec {
                name: i.name.clone(),
                dtype: i.dtype,
                dims,
            });
        }

        Some(Spec {
            kernel: k.name.clone(),
            pattern: pat.name.clone(),
            layout_name: lay.name.clone(),
            params: bound,
            layout,
            variants,
            head_variant,
            rules: pat.see.iter().map(|r| (r.from, r.to)).collect(),
            heads,
            kv_heads,
            head_dim,
            value_dim: vals[&Setting::ValueDim],
            batch: vals[&Setting::Batch],
            dtype: k.dtype,
            scale,
            score,
            inputs,
            outputs: k.outputs,
            kernel_span: k.span,
            pattern_span: pat.span,
        })
    }

    fn layout(&mut self, lay: &LayoutDef, params: &Params) -> Option<Layout> {
        let axes = axis_names(lay.rank());
        let mut canvas = vec![];
        let mut tile = vec![];
        let mut ok = true;
        for (i, d) in lay.canvas.iter().enumerate() {
            match self.size(
                params,
                d,
                1,
                i64::from(MAX_AXIS),
                &format!("canvas axis {}", axes[i]),
            ) {
                Some(v) => canvas.push(v),
                None => ok = false,
            }
        }
        for (i, d) in lay.tile.iter().enumerate() {
            match self.size(
                params,
                d,
                1,
                i64::from(MAX_AXIS),
                &format!("tile size along {}", axes[i]),
            ) {
                Some(v) => tile.push(v),
                None => ok = false,
            }
        }
        let mut segments = vec![];
        for s in &lay.segments {
            let size = self.size(
                params,
                &s.size,
                0,
                MAX_TOKENS as i64,
                &format!("the size of segment `{}`", s.name),
            );
            let Some(size) = size else {
                ok = false;
                continue;
            };
            let valid = match &s.valid {
                None => size,
                Some(v) => match self.size(
                    params,
                    v,
                    0,
                    MAX_TOKENS as i64,
                    &format!("valid length of `{}`", s.name),
                ) {
                    Some(v) if v > size => {
                        self.err(
                            Diagnostic::error(
                                "E0309",
                                format!("segment `{}` has {size} tokens but {v} are valid", s.name),
                            )
                            .with_label(
                                s.valid.as_ref().map(|e| e.span).unwrap_or(s.span),
                                format!("{v} valid"),
                            )
                            .with_secondary(s.size.span, format!("{size} tokens"))
                            .with_hint("the valid length can be at most the segment size"),
                        );
                        ok = false;
                        continue;
                    }
                    Some(v) => v,
                    None => {
                        ok = false;
                        continue;
                    }
                },
            };
            segments.push(Segment {
                name: s.name.clone(),
                placement: s.placement,
                size,
                valid,
            });
        }
        if !ok {
            return None;
        }
        let layout = Layout {
            canvas,
            tile,
            order: lay.order,
            segments,
        };
        if layout.total_tokens() > MAX_TOKENS {
            self.err(
                Diagnostic::error(
                    "E0310",
                    format!(
                        "the sequence has {} tokens; at most {MAX_TOKENS} are supported",
                        layout.total_tokens()
                    ),
                )
                .with_label(lay.canvas_span, "canvas"),
            );
            return None;
        }
        Some(layout)
    }

    fn size(&mut self, params: &Params, e: &Expr, min: i64, max: i64, what: &str) -> Option<u32> {
        match params.scalar_of(e) {
            Ok(Value::Int(v)) if v >= min && v <= max => Some(v as u32),
            Ok(v) => {
                let shown = format_value(&v);
                let rule = if min == 1 { "at least 1" } else { "0 or more" };
                self.err(
                    Diagnostic::error(
                        "E0311",
                        format!("{what} is {shown}; it must be {rule} and at most {max}"),
                    )
                    .with_label(e.span, format!("= {shown}")),
                );
                None
            }
            Err(err) => {
                self.err(eval_diag(err));
                None
            }
        }
    }

    /// A rule per head: parameters substituted, windows expanded, constants folded.
    fn concrete(
        &mut self,
        e: &Expr,
        values: &HashMap<ParamId, BoundValue>,
        extent: &[i64],
        unit: &str,
        heads: u32,
    ) -> Result<Vec<Expr>, ()> {
        let e = subst(e, values).map_err(|x| self.err(eval_diag(x)))?;
        let mut out: Vec<Expr> = vec![];
        for h in 0..heads as usize {
            let spec_h = specialise(&e, h);
            // Identical for every head unless a per-head table is involved: reuse.
            if h > 0 && spec_h == specialise(&e, 0) {
                out.push(out[0].clone());
                continue;
            }
            let head = (heads > 1 && has_head_table(&e)).then_some(h);
            let expanded = expand_windows(&spec_h, extent, unit, head).map_err(|d| self.err(d))?;
            out.push(fold(&expanded).map_err(|x| self.err(eval_diag(x)))?);
        }
        Ok(out)
    }
}

impl Params<'_> {
    fn scalar_of(&self, e: &Expr) -> Result<Value, EvalError> {
        eval::eval(e, self)
    }
}

fn parse_set_value(text: &str, p: &ParamDef) -> Result<BoundValue, String> {
    let one = |s: &str| -> Result<Value, String> {
        let s = s.trim();
        match p.ty {
            Ty::Int => s
                .parse::<i64>()
                .map(Value::Int)
                .map_err(|_| format!("`{s}` is not an integer")),
            Ty::Float => match s.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Value::Float(v)),
                _ => Err(format!("`{s}` is not a finite number")),
            },
            Ty::Bool => match s {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(format!("`{s}` is not true or false")),
            },
        }
    };
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    if text.is_empty() {
        return Err("empty value".into());
    }
    let is_list = text.contains(',');
    match p.value.shape() {
        ParamShape::List => Ok(BoundValue::List(
            text.split(',').map(one).collect::<Result<_, _>>()?,
        )),
        ParamShape::PerHead => Ok(BoundValue::PerHead(
            text.split(',').map(one).collect::<Result<_, _>>()?,
        )),
        ParamShape::Scalar if is_list => Ok(BoundValue::PerHead(
            text.split(',').map(one).collect::<Result<_, _>>()?,
        )),
        ParamShape::Scalar => Ok(BoundValue::Scalar(one(text)?)),
    }
}

fn has_head_table(e: &Expr) -> bool {
    let mut found = false;
    e.walk(&mut |x| found |= matches!(x.kind, Kind::HeadTable(_)));
    found
}

/// Replaces parameters with their values: scalars become literals, per-head lists become
/// head tables, lists become document offsets.
pub fn subst(e: &Expr, values: &HashMap<ParamId, BoundValue>) -> Result<Expr, EvalError> {
    let span = e.span;
    let kind = match &e.kind {
        Kind::Param(id) => match values.get(id) {
            Some(BoundValue::Scalar(v)) => match v {
                Value::Int(i) => Kind::Int(*i),
                Value::Float(f) => Kind::Float(*f),
                Value::Bool(b) => Kind::Bool(*b),
            },
            Some(BoundValue::PerHead(vs)) => {
                Kind::HeadTable(vs.iter().map(|v| v.as_f64()).collect::<Vec<_>>().into())
            }
            _ => {
                return Err(EvalError {
                    span,
                    message: "a list parameter cannot be used as a number".into(),
                })
            }
        },
        Kind::Doc {
            x,
            offsets: DocOffsets::Param(id),
        } => {
            let offs: Arc<[i64]> = match values.get(id) {
                Some(BoundValue::List(vs)) => vs
                    .iter()
                    .map(|v| v.as_int().unwrap_or(0))
                    .collect::<Vec<_>>()
                    .into(),
                _ => {
                    return Err(EvalError {
                        span,
                        message: "document offsets must be a list".into(),
                    })
                }
            };
            if offs.windows(2).any(|w| w[0] > w[1]) {
                return Err(EvalError {
                    span,
                    message: "document offsets must be in increasing order".into(),
                });
            }
            Kind::Doc {
                x: Box::new(subst(x, values)?),
                offsets: DocOffsets::Values(offs),
            }
        }
        _ => return map_children(e, &mut |c| subst(c, values)),
    };
    Ok(Expr {
        kind,
        ty: e.ty,
        span,
    })
}

/// Rebuilds `e` with `f` applied to each direct child.
pub fn map_children<E>(e: &Expr, f: &mut dyn FnMut(&Expr) -> Result<Expr, E>) -> Result<Expr, E> {
    let kind = match &e.kind {
        Kind::Unary(op, a) => Kind::Unary(*op, Box::new(f(a)?)),
        Kind::Binary(op, a, b) => Kind::Binary(*op, Box::new(f(a)?), Box::new(f(b)?)),
        Kind::Call(b, args) => Kind::Call(*b, args.iter().map(&mut *f).collect::<Result<_, _>>()?),
        Kind::Doc { x, offsets } => Kind::Doc {
            x: Box::new(f(x)?),
            offsets: offsets.clone(),
        },
        Kind::Window {
            axis,
            radius,
            stride,
            dilation,
        } => Kind::Window {
            axis: *axis,
            radius: Box::new(f(radius)?),
            stride: Box::new(f(stride)?),
            dilation: Box::new(f(dilation)?),
        },
        Kind::Input { id, indices } => Kind::Input {
            id: *id,
            indices: indices.iter().map(&mut *f).collect::<Result<_, _>>()?,
        },
        other => other.clone(),
    };
    Ok(Expr {
        kind,
        ty: e.ty,
        span: e.span,
    })
}

/// The rule as seen by head `h`: head tables become literals.
pub fn specialise(e: &Expr, h: usize) -> Expr {
    if let Kind::HeadTable(vals) = &e.kind {
        let v = vals.get(h).copied().unwrap_or(0.0);
        let kind = if e.ty == Ty::Int {
            Kind::Int(v as i64)
        } else {
            Kind::Float(v)
        };
        return Expr {
            kind,
            ty: e.ty,
            span: e.span,
        };
    }
    map_children::<()>(e, &mut |c| Ok(specialise(c, h))).unwrap_or_else(|_| e.clone())
}

/// Folds constant sub-expressions. Errors (division by zero, overflow) keep their span.
pub fn fold(e: &Expr) -> Result<Expr, EvalError> {
    let e = map_children(e, &mut fold)?;
    let constant_children = match &e.kind {
        Kind::Unary(_, a) => is_lit(a),
        Kind::Binary(_, a, b) => is_lit(a) && is_lit(b),
        Kind::Call(_, args) => args.iter().all(is_lit),
        Kind::Doc {
            x,
            offsets: DocOffsets::Values(_),
        } => is_lit(x),
        _ => false,
    };
    // Short-circuit folding: `false && x`, `true || x`.
    if let Kind::Binary(op @ (BinOp::And | BinOp::Or), a, b) = &e.kind {
        for (x, other) in [(a, b), (b, a)] {
            if let Kind::Bool(v) = x.kind {
                return Ok(match (op, v) {
                    (BinOp::And, false) | (BinOp::Or, true) => Expr::bool(v, e.span),
                    _ => (**other).clone(),
                });
            }
        }
    }
    if !constant_children {
        return Ok(e);
    }
    let v = eval::eval(&e, &NoVars)?;
    let kind = match v {
        Value::Int(i) => Kind::Int(i),
        Value::Float(f) => Kind::Float(f),
        Value::Bool(b) => Kind::Bool(b),
    };
    Ok(Expr {
        kind,
        ty: e.ty,
        span: e.span,
    })
}

fn is_lit(e: &Expr) -> bool {
    matches!(e.kind, Kind::Int(_) | Kind::Float(_) | Kind::Bool(_))
}

/// Expands `window(axis, R, stride: S, dilation: D)` (all constants by now) into
/// comparisons. `extent[axis]` is the canvas extent in the rule's units.
///
/// Semantics (NATTEN's neighbourhood, generalised like GNA): positions split into `D`
/// interleaved groups by `x % D`; within a group of length `L`, the query at group index
/// `i` has the leader `min((i / S) * S + (S - 1) / 2, L - 1)` and sees the `2R + 1`
/// group positions starting at `clamp(leader - R, 0, L - 2R - 1)`.
/// `unit` names the extent ("tiles" or "tokens"); `head` is set when the rule differs per head.
pub fn expand_windows(
    e: &Expr,
    extent: &[i64],
    unit: &str,
    head: Option<usize>,
) -> Result<Expr, Diagnostic> {
    if let Kind::Window {
        axis,
        radius,
        stride,
        dilation,
    } = &e.kind
    {
        let span = e.span;
        let konst = |x: &Expr, what: &str| -> Result<i64, Diagnostic> {
            match fold(x).map(|f| f.kind) {
                Ok(Kind::Int(v)) => Ok(v),
                Ok(_) => Err(Diagnostic::error(
                    "E0312",
                    format!("{what} must be an integer constant"),
                )
                .with_label(x.span, "here")),
                Err(err) => Err(eval_diag(err)),
            }
        };
        let r = konst(radius, "the window radius")?;
        let s = konst(stride, "the stride")?;
        let d = konst(dilation, "the dilation")?;
        let n = extent.get(*axis as usize).copied().unwrap_or(1);
        if r < 0 {
            return Err(Diagnostic::error(
                "E0313",
                format!("the window radius is {r}; it must be 0 or more"),
            )
            .with_label(radius.span, format!("= {r}")));
        }
        if s < 1 || d < 1 {
            let (what, v, sp) = if s < 1 {
                ("stride", s, stride.span)
            } else {
                ("dilation", d, dilation.span)
            };
            return Err(Diagnostic::error(
                "E0313",
                format!("the {what} is {v}; it must be at least 1"),
            )
            .with_label(sp, format!("= {v}")));
        }
        let smallest_group = n / d;
        let k = r.checked_mul(2).and_then(|x| x.checked_add(1));
        if k.is_none_or(|k| k > smallest_group) {
            let size = k
                .map(|k| k.to_string())
                .unwrap_or_else(|| format!("2 * {r} + 1"));
            let whose = head.map(|h| format!(" for head {h}")).unwrap_or_default();
            let mut diag = Diagnostic::error(
                "E0314",
                format!(
                    "a window of {size} {unit} does not fit the canvas axis{whose}, which is {n} {unit} long{}",
                    if d > 1 { format!(" ({smallest_group} per dilation group)") } else { String::new() }
                ),
            )
            .with_label(span, format!("2 * {r} + 1 > {smallest_group}"))
            .with_hint("lower the radius, or use an unclamped box such as `abs(dh) <= R`, which shrinks at the edges");
            if d > 1 {
                diag = diag.with_note(
                    "with dilation D, each of the D groups of positions must hold the whole window",
                );
            }
            return Err(diag);
        }
        let k = k.unwrap_or(1);
        let i = |v: i64| Expr::int(v, span);
        let q = Expr::var(Var::Q(*axis), span);
        let kx = Expr::var(Var::K(*axis), span);
        let bin = |op, a, b| Expr::binary(op, a, b, span);
        let (qi, ki, group_len, same_group) = if d == 1 {
            (q, kx, i(n), None)
        } else {
            let g = bin(BinOp::Rem, q.clone(), i(d));
            // L = (n - g + d - 1) / d
            let len = bin(BinOp::Div, bin(BinOp::Sub, i(n + d - 1), g.clone()), i(d));
            let same = bin(BinOp::Eq, bin(BinOp::Rem, kx.clone(), i(d)), g);
            (
                bin(BinOp::Div, q, i(d)),
                bin(BinOp::Div, kx, i(d)),
                len,
                Some(same),
            )
        };
        let leader = if s == 1 {
            qi
        } else {
            let block = bin(BinOp::Mul, bin(BinOp::Div, qi, i(s)), i(s));
            let centre = bin(BinOp::Add, block, i((s - 1) / 2));
            Expr::call(
                Builtin::Min,
                vec![centre, bin(BinOp::Sub, group_len.clone(), i(1))],
                span,
            )
        };
        let start = Expr::call(
            Builtin::Clamp,
            vec![
                bin(BinOp::Sub, leader, i(r)),
                i(0),
                bin(BinOp::Sub, group_len, i(k)),
            ],
            span,
        );
        let lo = bin(BinOp::Ge, ki.clone(), start.clone());
        let hi = bin(BinOp::Le, ki, bin(BinOp::Add, start, i(k - 1)));
        let mut out = bin(BinOp::And, lo, hi);
        if let Some(same) = same_group {
            out = bin(BinOp::And, same, out);
        }
        return Ok(out);
    }
    map_children(e, &mut |c| expand_windows(c, extent, unit, head))
}

/// Evaluates every parameter default with the declared values of the others, so that a
/// broken default (`1 / 0`) is reported even where no kernel uses it.
pub fn check_defaults(prog: &Program) -> Vec<Diagnostic> {
    let sources: HashMap<ParamId, Source> = (0..prog.params.len() as u32)
        .map(ParamId)
        .map(|id| {
            (
                id,
                Source::Decl(prog.param(id).value.clone(), Origin::Default),
            )
        })
        .collect();
    let params = Params {
        prog,
        sources,
        memo: RefCell::new(HashMap::new()),
        busy: RefCell::new(vec![]),
        depth: Cell::new(0),
    };
    let mut out = vec![];
    for i in 0..prog.params.len() as u32 {
        let p = prog.param(ParamId(i));
        let items: Vec<&Expr> = match &p.value {
            ParamValue::Scalar(e) => vec![e],
            ParamValue::List(v, _) | ParamValue::PerHead(v, _) => v.iter().collect(),
        };
        for e in items {
            match eval::eval(
                e,
                &AtHead {
                    p: &params,
                    head: None,
                },
            ) {
                Err(err)
                    if err.message != NEEDS_HEAD && !err.message.contains("one value per head") =>
                {
                    out.push(eval_diag(err))
                }
                _ => {}
            }
        }
    }
    out
}
