//! AST -> [`Program`]: declares every name, resolves every reference, types every
//! expression. Errors are collected; resolution goes on after an error so that one run
//! reports as much as it can.

use std::collections::HashMap;

use super::expr::*;
use super::program::*;
use crate::diagnostic::{closest, Diagnostic, Span};
use crate::syntax::ast::{self, Setting};

/// Longest chain of parameters whose defaults refer to each other.
const MAX_PARAM_CHAIN: usize = 64;

pub fn resolve(file: &ast::File) -> (Program, Vec<Diagnostic>) {
    let mut r = Resolver::default();
    r.declare(file);
    r.resolve_params();
    r.resolve_bodies(file);
    (r.prog, r.diags)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ParamState {
    Pending,
    InProgress,
    Done,
    Failed,
}

#[derive(Default)]
struct Resolver {
    prog: Program,
    diags: Vec<Diagnostic>,
    /// The AST of each parameter's value, by ParamId.
    param_ast: Vec<Option<ast::ParamValue>>,
    param_state: Vec<ParamState>,
    /// Names of layouts, patterns, kernels -> index.
    layouts: HashMap<String, usize>,
    patterns: HashMap<String, usize>,
    kernels: HashMap<String, usize>,
    /// Layout index of each pattern, pattern index of each kernel (None if unresolved).
    pattern_layout: Vec<Option<usize>>,
    kernel_pattern: Vec<Option<usize>>,
    chain_depth: usize,
    /// Settings written in a kernel for a parameter declared outside it: (kernel, override
    /// slot, value), resolved with the kernel body.
    pending_override_ast: Vec<(usize, usize, ast::ParamValue)>,
}

/// What an expression may refer to.
struct Env {
    ctx: Ctx,
    scopes: Vec<Scope>,
    axes: &'static [&'static str],
    /// (name, rank) of kernel inputs (score modifiers only).
    inputs: Vec<(String, usize)>,
}

impl Resolver {
    // ---- declaration ---------------------------------------------------------------

    fn declare(&mut self, file: &ast::File) {
        for item in &file.items {
            match item {
                ast::Item::Param(p) => self.declare_params(p, Scope::File),
                ast::Item::Layout(l) => {
                    let i = self.prog.layouts.len();
                    self.declare_item_name(&l.name, "layout", i);
                    self.prog.layouts.push(LayoutDef {
                        name: l.name.name.clone(),
                        span: l.name.span,
                        canvas: vec![],
                        canvas_span: l.span,
                        tile: vec![],
                        tile_span: l.span,
                        order: ast::Order::Tiled,
                        segments: vec![],
                    });
                }
                ast::Item::Pattern(p) => {
                    let i = self.prog.patterns.len();
                    self.declare_item_name(&p.name, "pattern", i);
                    self.prog.patterns.push(PatternDef {
                        name: p.name.name.clone(),
                        span: p.name.span,
                        layout: 0,
                        tiles: None,
                        tokens: None,
                        see: vec![],
                    });
                }
                ast::Item::Kernel(k) => {
                    let i = self.prog.kernels.len();
                    self.declare_item_name(&k.name, "kernel", i);
                    self.prog.kernels.push(KernelDef {
                        name: k.name.name.clone(),
                        span: k.name.span,
                        pattern: 0,
                        dtype: DType::Bf16,
                        dtype_span: k.name.span,
                        settings: vec![],
                        scale: None,
                        score: None,
                        inputs: vec![],
                        outputs: Outputs::default(),
                        overrides: vec![],
                    });
                }
                ast::Item::Select(_) | ast::Item::SelectKernel(_) => {}
            }
        }
        // Link patterns to layouts and kernels to patterns, so that scope chains exist
        // before any parameter is declared below file level.
        let mut li = 0;
        let mut pi = 0;
        let mut ki = 0;
        for item in &file.items {
            match item {
                ast::Item::Param(_) => {}
                ast::Item::Layout(l) => {
                    for s in &l.stmts {
                        if let ast::LayoutStmt::Param(p) = s {
                            self.declare_params(p, Scope::Layout(li));
                        }
                    }
                    li += 1;
                }
                ast::Item::Pattern(p) => {
                    let layout = self.lookup_item(&p.layout, "layout");
                    self.pattern_layout.push(layout);
                    if let Some(l) = layout {
                        self.prog.patterns[pi].layout = l;
                    }
                    for s in &p.stmts {
                        if let ast::PatternStmt::Param(d) = s {
                            self.declare_params(d, Scope::Pattern(pi));
                        }
                    }
                    pi += 1;
                }
                ast::Item::Kernel(k) => {
                    let pattern = self.lookup_item(&k.pattern, "pattern");
                    self.kernel_pattern.push(pattern);
                    if let Some(p) = pattern {
                        self.prog.kernels[ki].pattern = p;
                    }
                    for s in &k.stmts {
                        if let ast::KernelStmt::Param(d) = s {
                            self.declare_params(d, Scope::Kernel(ki));
                        }
                    }
                    self.declare_settings(k, ki);
                    ki += 1;
                }
                ast::Item::Select(_) | ast::Item::SelectKernel(_) => {}
            }
        }
    }

    fn declare_item_name(&mut self, name: &ast::Ident, what: &str, index: usize) {
        let table = match what {
            "layout" => &mut self.layouts,
            "pattern" => &mut self.patterns,
            _ => &mut self.kernels,
        };
        if table.contains_key(&name.name) {
            self.diags.push(
                Diagnostic::error("E0101", format!("{what} `{}` is declared twice", name.name))
                    .with_label(name.span, "second declaration")
                    .with_hint(format!("rename one of the {what}s")),
            );
        } else {
            table.insert(name.name.clone(), index);
        }
    }

    fn lookup_item(&mut self, name: &ast::Ident, what: &str) -> Option<usize> {
        let table = match what {
            "layout" => &self.layouts,
            "pattern" => &self.patterns,
            _ => &self.kernels,
        };
        if let Some(i) = table.get(&name.name) {
            return Some(*i);
        }
        let mut d = Diagnostic::error("E0102", format!("unknown {what} `{}`", name.name))
            .with_label(name.span, format!("no {what} has this name"));
        let names: Vec<&str> = table.keys().map(String::as_str).collect();
        if let Some(c) = closest(&name.name, names.iter().copied()) {
            d = d.with_hint(format!("did you mean `{c}`?"));
        } else if names.is_empty() {
            d = d.with_hint(format!("declare one with `{what} {} {{ ... }}`", name.name));
        } else {
            let mut names = names;
            names.sort();
            d = d.with_note(format!("{what}s in this file: {}", names.join(", ")));
        }
        self.diags.push(d);
        None
    }

    fn chain(&self, scope: Scope) -> Vec<Scope> {
        match scope {
            Scope::File => vec![Scope::File],
            Scope::Layout(l) => vec![Scope::Layout(l), Scope::File],
            Scope::Pattern(p) => match self.pattern_layout.get(p).copied().flatten() {
                Some(l) => vec![Scope::Pattern(p), Scope::Layout(l), Scope::File],
                None => vec![Scope::Pattern(p), Scope::File],
            },
            Scope::Kernel(k) => {
                let mut v = vec![Scope::Kernel(k)];
                if let Some(p) = self.kernel_pattern.get(k).copied().flatten() {
                    v.extend(self.chain(Scope::Pattern(p)));
                } else {
                    v.push(Scope::File);
                }
                v
            }
        }
    }

    fn find_param(&self, name: &str, scopes: &[Scope]) -> Option<ParamId> {
        // Innermost scope first.
        for s in scopes {
            if let Some(i) = self
                .prog
                .params
                .iter()
                .position(|p| p.name == name && p.scope == *s)
            {
                return Some(ParamId(i as u32));
            }
        }
        None
    }

    fn scope_name(&self, s: Scope) -> String {
        match s {
            Scope::File => "this file".into(),
            Scope::Layout(i) => format!("layout `{}`", self.prog.layouts[i].name),
            Scope::Pattern(i) => format!("pattern `{}`", self.prog.patterns[i].name),
            Scope::Kernel(i) => format!("kernel `{}`", self.prog.kernels[i].name),
        }
    }

    fn declare_params(&mut self, decl: &ast::ParamDecl, scope: Scope) {
        for b in &decl.binds {
            if is_variable_name(&b.name.name) {
                self.diags.push(
                    Diagnostic::error("E0116", format!("`{}` is the name of a variable and cannot name a parameter", b.name.name))
                        .with_label(b.name.span, "reserved for a coordinate, position, score, batch or head")
                        .with_hint("coordinates are q*, k*, d*, n* per axis, positions qi and ki; pick another name"),
                );
                continue;
            }
            self.declare_param(&b.name, Some(b.value.clone()), scope, false);
        }
    }

    fn declare_param(
        &mut self,
        name: &ast::Ident,
        value: Option<ast::ParamValue>,
        scope: Scope,
        implicit: bool,
    ) -> ParamId {
        if let Some(prev) = self.find_param(&name.name, &self.chain(scope)) {
            let p = self.prog.param(prev);
            let mut d = Diagnostic::error(
                "E0103",
                format!("parameter `{}` is already declared", name.name),
            )
            .with_label(name.span, "declared again here");
            if !p.implicit {
                d = d.with_secondary(
                    p.span,
                    format!("first declared in {}", self.scope_name(p.scope)),
                );
            }
            if matches!(scope, Scope::Kernel(_)) && p.scope != scope {
                d = d.with_hint(format!(
                    "to change its value in this kernel, write `{} = ...;` without `param`",
                    name.name
                ));
            }
            self.diags.push(d);
            return prev;
        }
        let id = ParamId(self.prog.params.len() as u32);
        let placeholder = Expr::int(0, name.span);
        self.prog.params.push(ParamDef {
            name: name.name.clone(),
            span: name.span,
            scope,
            value: ParamValue::Scalar(placeholder),
            ty: Ty::Int,
            implicit,
        });
        self.param_ast.push(value);
        self.param_state.push(ParamState::Pending);
        id
    }

    /// `heads 24;` declares or overrides `HEADS`; unwritten settings get defaults.
    fn declare_settings(&mut self, k: &ast::KernelDecl, ki: usize) {
        let written = |s: Setting| {
            k.stmts.iter().rev().find_map(|st| match st {
                ast::KernelStmt::Setting {
                    key, value, span, ..
                } if *key == s => Some((value.clone(), *span)),
                _ => None,
            })
        };
        for s in [
            Setting::Heads,
            Setting::KvHeads,
            Setting::HeadDim,
            Setting::ValueDim,
            Setting::Batch,
        ] {
            let Some(pname) = s.param_name() else {
                continue;
            };
            let ident = ast::Ident {
                name: pname.to_string(),
                span: k.name.span,
            };
            let visible = self.find_param(pname, &self.chain(Scope::Kernel(ki)));
            let w = written(s);
            let id = match (visible, &w) {
                (Some(id), Some((value, span))) => {
                    // Acts as an override of the visible parameter.
                    self.prog.kernels[ki].overrides.push((
                        id,
                        ParamValue::Scalar(Expr::int(0, *span)),
                        *span,
                    ));
                    let slot = self.prog.kernels[ki].overrides.len() - 1;
                    self.pending_override_ast.push((
                        ki,
                        slot,
                        ast::ParamValue::Expr(value.clone()),
                    ));
                    id
                }
                (Some(id), None) => id,
                (None, Some((value, span))) => {
                    let ident = ast::Ident {
                        name: pname.to_string(),
                        span: *span,
                    };
                    self.declare_param(
                        &ident,
                        Some(ast::ParamValue::Expr(value.clone())),
                        Scope::Kernel(ki),
                        true,
                    )
                }
                (None, None) => {
                    let default = default_setting(s, k.name.span);
                    self.declare_param(
                        &ident,
                        Some(ast::ParamValue::Expr(default)),
                        Scope::Kernel(ki),
                        true,
                    )
                }
            };
            self.prog.kernels[ki]
                .settings
                .push((s, id, w.map(|(_, sp)| sp)));
        }
    }
}

fn default_setting(s: Setting, span: Span) -> ast::Expr {
    let kind = match s {
        Setting::Heads | Setting::Batch => ast::ExprKind::Int(1),
        Setting::KvHeads => ast::ExprKind::Name("HEADS".into()),
        Setting::HeadDim => ast::ExprKind::Int(128),
        Setting::ValueDim => ast::ExprKind::Name("HEAD_DIM".into()),
        Setting::Scale => ast::ExprKind::Int(1),
    };
    ast::Expr { kind, span }
}

// ---- parameters ------------------------------------------------------------------------

impl Resolver {
    fn resolve_params(&mut self) {
        for i in 0..self.prog.params.len() {
            self.resolve_param(ParamId(i as u32));
        }
    }

    /// Resolves one parameter's value (and, recursively, those it refers to). Returns its
    /// element type, or None after an error.
    fn resolve_param(&mut self, id: ParamId) -> Option<Ty> {
        let i = id.0 as usize;
        match self.param_state[i] {
            ParamState::Done => return Some(self.prog.params[i].ty),
            ParamState::Failed => return None,
            ParamState::InProgress => {
                let p = &self.prog.params[i];
                self.diags.push(
                    Diagnostic::error("E0104", format!("parameter `{}` depends on itself", p.name))
                        .with_label(p.span, "its default refers back to it")
                        .with_hint("give one of the parameters in the cycle a plain value"),
                );
                self.param_state[i] = ParamState::Failed;
                return None;
            }
            ParamState::Pending => {}
        }
        if self.chain_depth >= MAX_PARAM_CHAIN {
            let p = &self.prog.params[i];
            self.diags.push(
                Diagnostic::error(
                    "E0104",
                    format!(
                        "parameter `{}` ends a chain of more than {MAX_PARAM_CHAIN} defaults",
                        p.name
                    ),
                )
                .with_label(p.span, "too deep"),
            );
            self.param_state[i] = ParamState::Failed;
            return None;
        }
        self.param_state[i] = ParamState::InProgress;
        self.chain_depth += 1;
        let scope = self.prog.params[i].scope;
        let env = Env {
            ctx: Ctx::Param,
            scopes: self.chain(scope),
            axes: &[],
            inputs: vec![],
        };
        let result = match self.param_ast[i].clone() {
            Some(v) => self.param_value(&v, &env),
            None => None,
        };
        self.chain_depth -= 1;
        match result {
            Some((value, ty)) => {
                self.prog.params[i].value = value;
                self.prog.params[i].ty = ty;
                self.param_state[i] = ParamState::Done;
                Some(ty)
            }
            None => {
                self.param_state[i] = ParamState::Failed;
                None
            }
        }
    }

    fn param_value(&mut self, v: &ast::ParamValue, env: &Env) -> Option<(ParamValue, Ty)> {
        match v {
            ast::ParamValue::Expr(e) => {
                let e = self.expr(e, env)?;
                Some((ParamValue::Scalar(e.clone()), e.ty))
            }
            ast::ParamValue::List(l) | ast::ParamValue::PerHead(l) => {
                if l.items.is_empty() {
                    self.diags.push(
                        Diagnostic::error("E0105", "a list parameter needs at least one value")
                            .with_label(l.span, "empty list"),
                    );
                    return None;
                }
                let mut items = vec![];
                let mut ty = Ty::Int;
                for e in &l.items {
                    let e = self.expr(e, env)?;
                    if e.ty == Ty::Bool {
                        self.diags.push(
                            Diagnostic::error("E0201", "list values must be numbers")
                                .with_label(e.span, "a boolean"),
                        );
                        return None;
                    }
                    if e.ty == Ty::Float {
                        ty = Ty::Float;
                    }
                    items.push(e);
                }
                let value = match v {
                    ast::ParamValue::PerHead(_) => ParamValue::PerHead(items, l.span),
                    _ => ParamValue::List(items, l.span),
                };
                Some((value, ty))
            }
        }
    }

    // ---- bodies ------------------------------------------------------------------------

    fn resolve_bodies(&mut self, file: &ast::File) {
        let (mut li, mut pi, mut ki) = (0, 0, 0);
        for item in &file.items {
            match item {
                ast::Item::Param(_) => {}
                ast::Item::Layout(l) => {
                    self.layout_body(l, li);
                    li += 1;
                }
                ast::Item::Pattern(p) => {
                    self.pattern_body(p, pi);
                    pi += 1;
                }
                ast::Item::Kernel(k) => {
                    self.kernel_body(k, ki);
                    ki += 1;
                }
                // Selection kernels are checked by `select::resolve`.
                ast::Item::Select(_) | ast::Item::SelectKernel(_) => {}
            }
        }
    }

    fn layout_body(&mut self, l: &ast::LayoutDecl, li: usize) {
        let env = Env {
            ctx: Ctx::Param,
            scopes: self.chain(Scope::Layout(li)),
            axes: &[],
            inputs: vec![],
        };
        let mut canvas: Option<Span> = None;
        let mut tile: Option<Span> = None;
        let mut order: Option<Span> = None;
        for s in &l.stmts {
            match s {
                ast::LayoutStmt::Param(_) => {}
                ast::LayoutStmt::Canvas { dims, span } => {
                    if let Some(prev) = canvas {
                        self.duplicate_stmt("canvas", *span, prev);
                        continue;
                    }
                    canvas = Some(*span);
                    if dims.is_empty() || dims.len() > 3 {
                        self.diags.push(
                            Diagnostic::error(
                                "E0106",
                                format!("a canvas has 1, 2 or 3 axes, not {}", dims.len()),
                            )
                            .with_label(*span, "here")
                            .with_hint(
                                "write `canvas (N);`, `canvas (H, W);` or `canvas (T, H, W);`",
                            ),
                        );
                        continue;
                    }
                    let dims = dims
                        .iter()
                        .filter_map(|d| self.expect(d, &env, Ty::Int, "a canvas size"))
                        .collect();
                    self.prog.layouts[li].canvas = dims;
                    self.prog.layouts[li].canvas_span = *span;
                }
                ast::LayoutStmt::Tile { dims, span } => {
                    if let Some(prev) = tile {
                        self.duplicate_stmt("tile", *span, prev);
                        continue;
                    }
                    tile = Some(*span);
                    let dims = dims
                        .iter()
                        .filter_map(|d| self.expect(d, &env, Ty::Int, "a tile size"))
                        .collect();
                    self.prog.layouts[li].tile = dims;
                    self.prog.layouts[li].tile_span = *span;
                }
                ast::LayoutStmt::Order { order: o, span } => {
                    if let Some(prev) = order {
                        self.duplicate_stmt("order", *span, prev);
                        continue;
                    }
                    order = Some(*span);
                    self.prog.layouts[li].order = *o;
                }
                ast::LayoutStmt::Segment(seg) => self.segment(seg, li, &env),
            }
        }
        let layout = &self.prog.layouts[li];
        let name = layout.name.clone();
        match (canvas, tile) {
            (None, _) => self.diags.push(
                Diagnostic::error("E0107", format!("layout `{name}` has no canvas"))
                    .with_label(l.name.span, "declared here")
                    .with_hint("add `canvas (H, W);` with the canvas size in tokens"),
            ),
            (Some(_), None) => self.diags.push(
                Diagnostic::error("E0107", format!("layout `{name}` has no tile"))
                    .with_label(l.name.span, "declared here")
                    .with_hint("add `tile (8, 16);`: one size per canvas axis, in tokens"),
            ),
            (Some(cs), Some(ts)) => {
                let (c, t) = (layout.canvas.len(), layout.tile.len());
                if c != t && c > 0 && t > 0 {
                    let axes = axis_names(c).join(", ");
                    self.diags.push(
                        Diagnostic::error(
                            "E0108",
                            format!("the tile has {t} axes but the canvas has {c}"),
                        )
                        .with_label(ts, format!("{t} tile sizes"))
                        .with_secondary(cs, format!("{c} canvas axes ({axes})"))
                        .with_hint(format!("give one tile size per canvas axis: {axes}")),
                    );
                    self.prog.layouts[li].tile.clear();
                }
            }
        }
    }

    fn duplicate_stmt(&mut self, what: &str, span: Span, prev: Span) {
        self.diags.push(
            Diagnostic::error("E0109", format!("`{what}` is given twice"))
                .with_label(span, "second one")
                .with_secondary(prev, "first one")
                .with_hint(format!("keep one `{what}` statement")),
        );
    }

    fn segment(&mut self, seg: &ast::SegmentDecl, li: usize, env: &Env) {
        let name = &seg.name.name;
        if name == "all" || name == "canvas" {
            self.diags.push(
                Diagnostic::error(
                    "E0110",
                    format!("`{name}` is reserved and cannot name a segment"),
                )
                .with_label(seg.name.span, "reserved")
                .with_hint(
                    "`see` rules use `all` and `canvas` for the whole sequence and the canvas",
                ),
            );
            return;
        }
        if let Some(prev) = self.prog.layouts[li]
            .segments
            .iter()
            .find(|s| &s.name == name)
        {
            let prev = prev.name_span;
            self.diags.push(
                Diagnostic::error("E0110", format!("segment `{name}` is declared twice"))
                    .with_label(seg.name.span, "second declaration")
                    .with_secondary(prev, "first declaration"),
            );
            return;
        }
        let Some(size) = self.expect(&seg.size, env, Ty::Int, "a segment size") else {
            return;
        };
        let valid = match &seg.valid {
            Some(v) => match self.expect(v, env, Ty::Int, "a valid length") {
                Some(v) => Some(v),
                None => return,
            },
            None => None,
        };
        self.prog.layouts[li].segments.push(SegmentDef {
            name: name.clone(),
            name_span: seg.name.span,
            placement: seg.placement,
            size,
            valid,
            span: seg.span,
        });
    }

    fn pattern_body(&mut self, p: &ast::PatternDecl, pi: usize) {
        let Some(li) = self.pattern_layout.get(pi).copied().flatten() else {
            return;
        };
        let rank = self.prog.layouts[li].rank();
        if rank == 0 {
            return; // the layout's own error says why
        }
        let axes = axis_names(rank);
        let scopes = self.chain(Scope::Pattern(pi));
        let mut tiles_span: Option<Span> = None;
        let mut tokens_span: Option<Span> = None;
        for s in &p.stmts {
            match s {
                ast::PatternStmt::Param(_) => {}
                ast::PatternStmt::Tiles { expr, span } => {
                    if let Some(prev) = tiles_span {
                        self.duplicate_stmt("tiles:", *span, prev);
                        continue;
                    }
                    tiles_span = Some(*span);
                    let env = Env {
                        ctx: Ctx::Tiles,
                        scopes: scopes.clone(),
                        axes,
                        inputs: vec![],
                    };
                    self.prog.patterns[pi].tiles =
                        self.expect(expr, &env, Ty::Bool, "a `tiles:` rule");
                }
                ast::PatternStmt::Tokens { expr, span } => {
                    if let Some(prev) = tokens_span {
                        self.duplicate_stmt("tokens:", *span, prev);
                        continue;
                    }
                    tokens_span = Some(*span);
                    let env = Env {
                        ctx: Ctx::Tokens,
                        scopes: scopes.clone(),
                        axes,
                        inputs: vec![],
                    };
                    self.prog.patterns[pi].tokens =
                        self.expect(expr, &env, Ty::Bool, "a `tokens:` rule");
                }
                ast::PatternStmt::See { from, to, span } => {
                    let (Some(f), Some(t)) = (self.group(from, li), self.group(to, li)) else {
                        continue;
                    };
                    self.prog.patterns[pi].see.push(SeeRule {
                        from: f,
                        to: t,
                        span: *span,
                    });
                }
            }
        }
    }

    fn group(&mut self, name: &ast::Ident, li: usize) -> Option<Group> {
        match name.name.as_str() {
            "all" => return Some(Group::All),
            "canvas" => return Some(Group::Canvas),
            _ => {}
        }
        let segs = &self.prog.layouts[li].segments;
        if let Some(i) = segs.iter().position(|s| s.name == name.name) {
            return Some(Group::Segment(i));
        }
        let mut names: Vec<&str> = vec!["all", "canvas"];
        names.extend(segs.iter().map(|s| s.name.as_str()));
        let mut d = Diagnostic::error("E0111", format!("unknown token group `{}`", name.name))
            .with_label(name.span, "not a segment of this layout")
            .with_note(format!("groups here: {}", names.join(", ")));
        if let Some(c) = closest(&name.name, names.iter().copied()) {
            d = d.with_hint(format!("did you mean `{c}`?"));
        }
        self.diags.push(d);
        None
    }

    fn kernel_body(&mut self, k: &ast::KernelDecl, ki: usize) {
        let Some(pi) = self.kernel_pattern.get(ki).copied().flatten() else {
            return;
        };
        let li = self.prog.patterns[pi].layout;
        // A pattern on an unknown layout (E0102) points at layout 0, which may not exist.
        let rank = self.prog.layouts.get(li).map_or(1, LayoutDef::rank);
        let axes = axis_names(rank.max(1));
        let scopes = self.chain(Scope::Kernel(ki));
        let penv = Env {
            ctx: Ctx::Param,
            scopes: scopes.clone(),
            axes: &[],
            inputs: vec![],
        };
        // Settings written for parameters declared outside the kernel.
        for (kk, slot, value) in std::mem::take(&mut self.pending_override_ast) {
            if kk != ki {
                self.pending_override_ast.push((kk, slot, value));
                continue;
            }
            if let Some((v, _)) = self.param_value(&value, &penv) {
                self.prog.kernels[ki].overrides[slot].1 = v;
            }
        }
        let mut dtype_span: Option<Span> = None;
        let mut score_span: Option<Span> = None;
        let mut scale_span: Option<Span> = None;
        let mut outputs_span: Option<Span> = None;
        // Inputs first: score modifiers may index them wherever they are declared.
        for s in &k.stmts {
            if let ast::KernelStmt::Input {
                name,
                dtype,
                dims,
                span,
            } = s
            {
                self.input(name, dtype, dims, *span, ki, &penv);
            }
        }
        let inputs: Vec<(String, usize)> = self.prog.kernels[ki]
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.dims.len()))
            .collect();
        for s in &k.stmts {
            match s {
                ast::KernelStmt::Param(_) | ast::KernelStmt::Input { .. } => {}
                ast::KernelStmt::Dtype { name, span } => {
                    if let Some(prev) = dtype_span {
                        self.duplicate_stmt("dtype", *span, prev);
                        continue;
                    }
                    dtype_span = Some(*span);
                    match DType::from_name(&name.name) {
                        Some(d) => {
                            self.prog.kernels[ki].dtype = d;
                            self.prog.kernels[ki].dtype_span = name.span;
                        }
                        None => {
                            let mut d = Diagnostic::error(
                                "E0112",
                                format!("unknown dtype `{}`", name.name),
                            )
                            .with_label(name.span, "not a supported element type")
                            .with_note("supported: bf16, f16, f32");
                            if let Some(c) = closest(&name.name, ["bf16", "f16", "f32"]) {
                                d = d.with_hint(format!("did you mean `{c}`?"));
                            }
                            self.diags.push(d);
                        }
                    }
                }
                ast::KernelStmt::Setting {
                    key: Setting::Scale,
                    value,
                    span,
                    ..
                } => {
                    if let Some(prev) = scale_span {
                        self.duplicate_stmt("scale", *span, prev);
                        continue;
                    }
                    scale_span = Some(*span);
                    if let Some(e) = self.expr(value, &penv) {
                        if e.ty == Ty::Bool {
                            self.type_mismatch(&e, Ty::Float, "the scale");
                        } else {
                            self.prog.kernels[ki].scale = Some(e);
                        }
                    }
                }
                ast::KernelStmt::Setting {
                    key, value, span, ..
                } => {
                    // Declared (or overridden) in declare_settings; type-check here.
                    let written_last = k.stmts.iter().rev().find_map(|st| match st {
                        ast::KernelStmt::Setting {
                            key: kk, span: sp, ..
                        } if kk == key => Some(*sp),
                        _ => None,
                    });
                    if written_last != Some(*span) {
                        if let Some(last) = written_last {
                            self.duplicate_stmt(key.keyword(), last, *span);
                        }
                        continue;
                    }
                    if let Some(e) = self.expr(value, &penv) {
                        if e.ty != Ty::Int {
                            self.type_mismatch(&e, Ty::Int, &format!("`{}`", key.keyword()));
                        }
                    }
                }
                ast::KernelStmt::Score { expr, span } => {
                    if let Some(prev) = score_span {
                        self.duplicate_stmt("score:", *span, prev);
                        continue;
                    }
                    score_span = Some(*span);
                    let env = Env {
                        ctx: Ctx::Score,
                        scopes: scopes.clone(),
                        axes,
                        inputs: inputs.clone(),
                    };
                    if let Some(e) = self.expr(expr, &env) {
                        if e.ty == Ty::Bool {
                            self.type_mismatch(&e, Ty::Float, "a `score:` modifier");
                        } else {
                            self.prog.kernels[ki].score = Some(e);
                        }
                    }
                }
                ast::KernelStmt::Outputs { names, span } => {
                    if let Some(prev) = outputs_span {
                        self.duplicate_stmt("outputs", *span, prev);
                        continue;
                    }
                    outputs_span = Some(*span);
                    self.kernel_outputs(names, ki);
                }
                ast::KernelStmt::Override(b) => self.kernel_override(b, ki, &scopes, &penv),
            }
        }
    }

    /// `outputs lse;`: what the kernel writes beside `o`. Each name once, and only the
    /// names of [`Outputs::KNOWN`].
    fn kernel_outputs(&mut self, names: &[ast::Expr], ki: usize) {
        for e in names {
            match &e.kind {
                ast::ExprKind::Name(n) if n == "lse" => match self.prog.kernels[ki].outputs.lse {
                    Some(prev) => self.diags.push(
                        Diagnostic::error("E0109", "output `lse` is named twice")
                            .with_label(e.span, "second one")
                            .with_secondary(prev, "first one")
                            .with_hint("name each output once"),
                    ),
                    None => self.prog.kernels[ki].outputs.lse = Some(e.span),
                },
                _ => self.diags.push(unknown_output(e)),
            }
        }
    }

    fn input(
        &mut self,
        name: &ast::Ident,
        dtype: &ast::Ident,
        dims: &[ast::Expr],
        span: Span,
        ki: usize,
        env: &Env,
    ) {
        if self.prog.kernels[ki]
            .inputs
            .iter()
            .any(|i| i.name == name.name)
        {
            self.diags.push(
                Diagnostic::error("E0113", format!("input `{}` is declared twice", name.name))
                    .with_label(name.span, "again"),
            );
            return;
        }
        let Some(dt) = DType::from_name(&dtype.name) else {
            self.diags.push(
                Diagnostic::error("E0112", format!("unknown dtype `{}`", dtype.name))
                    .with_label(dtype.span, "not a supported element type")
                    .with_note("supported: bf16, f16, f32"),
            );
            return;
        };
        if dims.is_empty() || dims.len() > 4 {
            self.diags.push(
                Diagnostic::error(
                    "E0113",
                    format!("an input has 1 to 4 dimensions, not {}", dims.len()),
                )
                .with_label(span, "here"),
            );
            return;
        }
        let dims: Vec<Expr> = dims
            .iter()
            .filter_map(|d| self.expect(d, env, Ty::Int, "an input dimension"))
            .collect();
        self.prog.kernels[ki].inputs.push(InputDef {
            name: name.name.clone(),
            span: name.span,
            dtype: dt,
            dims,
        });
    }

    fn kernel_override(&mut self, b: &ast::ParamBind, ki: usize, scopes: &[Scope], env: &Env) {
        let Some(id) = self.find_param(&b.name.name, scopes) else {
            let visible: Vec<String> = self
                .prog
                .params
                .iter()
                .filter(|p| scopes.contains(&p.scope))
                .map(|p| p.name.clone())
                .collect();
            let mut d = Diagnostic::error("E0114", format!("unknown parameter `{}`", b.name.name))
                .with_label(b.name.span, "no visible parameter has this name");
            if let Some(c) = closest(&b.name.name, visible.iter().map(String::as_str)) {
                d = d.with_hint(format!("did you mean `{c}`?"));
            } else {
                d = d.with_hint(format!(
                    "to declare a new parameter, write `param {} = ...;`",
                    b.name.name
                ));
            }
            self.diags.push(d);
            return;
        };
        let (pscope, pshape, pty) = {
            let p = self.prog.param(id);
            (p.scope, p.value.shape(), p.ty)
        };
        if pscope == Scope::Kernel(ki) && !self.prog.param(id).implicit {
            self.diags.push(
                Diagnostic::error(
                    "E0114",
                    format!(
                        "`{}` is declared in this kernel; change its `param` instead",
                        b.name.name
                    ),
                )
                .with_label(b.name.span, "override of a local parameter"),
            );
            return;
        }
        let Some((value, ty)) = self.param_value(&b.value, env) else {
            return;
        };
        let shape_ok = match (pshape, value.shape()) {
            (a, b) if a == b => true,
            // A scalar may become per-head in one kernel (per-head windows).
            (ParamShape::Scalar, ParamShape::PerHead) => true,
            _ => false,
        };
        let ty_ok = ty == pty || (pty == Ty::Float && ty == Ty::Int);
        if !shape_ok || !ty_ok {
            let describe = |s: ParamShape, t: Ty| match s {
                ParamShape::Scalar => t.a().to_string(),
                ParamShape::List => format!("a list of {t} values"),
                ParamShape::PerHead => format!("a per-head list of {t} values"),
            };
            self.diags.push(
                Diagnostic::error(
                    "E0115",
                    format!("`{}` cannot be overridden with this value", b.name.name),
                )
                .with_label(
                    b.value.span(),
                    format!("this is {}", describe(value.shape(), ty)),
                )
                .with_secondary(
                    self.prog.param(id).span,
                    format!("declared as {}", describe(pshape, pty)),
                ),
            );
            return;
        }
        self.prog.kernels[ki].overrides.push((id, value, b.span));
    }

    // ---- expressions -------------------------------------------------------------------

    fn type_mismatch(&mut self, e: &Expr, want: Ty, what: &str) {
        let mut d = Diagnostic::error(
            "E0201",
            format!("{what} must be {} expression, found {}", want.a(), e.ty.a()),
        )
        .with_label(e.span, format!("this is {}", e.ty.a()));
        if want == Ty::Bool && e.ty == Ty::Int {
            d = d.with_hint("compare it with something, e.g. `abs(dh) <= R`");
        }
        self.diags.push(d);
    }

    /// Resolves and checks the type. Int is accepted where Float is expected.
    fn expect(&mut self, e: &ast::Expr, env: &Env, want: Ty, what: &str) -> Option<Expr> {
        let r = self.expr(e, env)?;
        if r.ty == want || (want == Ty::Float && r.ty == Ty::Int) {
            Some(r)
        } else {
            self.type_mismatch(&r, want, what);
            None
        }
    }

    fn expr(&mut self, e: &ast::Expr, env: &Env) -> Option<Expr> {
        let span = e.span;
        match &e.kind {
            ast::ExprKind::Int(v) => Some(Expr::int(*v, span)),
            ast::ExprKind::Float(v) => Some(Expr {
                kind: Kind::Float(*v),
                ty: Ty::Float,
                span,
            }),
            ast::ExprKind::Bool(b) => Some(Expr::bool(*b, span)),
            ast::ExprKind::Name(n) => self.name(n, span, env),
            ast::ExprKind::Unary(op, a) => {
                let a = self.expr(a, env)?;
                let ok = match op {
                    UnOp::Neg => a.ty != Ty::Bool,
                    UnOp::Not => a.ty == Ty::Bool,
                };
                if !ok {
                    let (sym, want) = if *op == UnOp::Neg {
                        ("-", "a number")
                    } else {
                        ("!", "a boolean")
                    };
                    self.diags.push(
                        Diagnostic::error(
                            "E0202",
                            format!("`{sym}` needs {want}, found {}", a.ty.a()),
                        )
                        .with_label(a.span, format!("this is {}", a.ty.a())),
                    );
                    return None;
                }
                let ty = a.ty;
                Some(Expr {
                    kind: Kind::Unary(*op, Box::new(a)),
                    ty,
                    span,
                })
            }
            ast::ExprKind::Binary(op, a, b) => {
                let a = self.expr(a, env);
                let b = self.expr(b, env);
                let (a, b) = (a?, b?);
                self.binary(*op, a, b, span)
            }
            ast::ExprKind::Call { func, args } => self.call(func, args, span, env),
            ast::ExprKind::Index { base, indices } => self.index(base, indices, span, env),
        }
    }

    fn binary(&mut self, op: BinOp, a: Expr, b: Expr, span: Span) -> Option<Expr> {
        let num = |t: Ty| t != Ty::Bool;
        let ok = if op.is_logical() {
            a.ty == Ty::Bool && b.ty == Ty::Bool
        } else if matches!(op, BinOp::Eq | BinOp::Ne) {
            (a.ty == Ty::Bool) == (b.ty == Ty::Bool)
        } else if op == BinOp::Rem {
            a.ty == Ty::Int && b.ty == Ty::Int
        } else {
            num(a.ty) && num(b.ty)
        };
        if !ok {
            let want = if op.is_logical() {
                "booleans"
            } else if op == BinOp::Rem {
                "integers"
            } else if matches!(op, BinOp::Eq | BinOp::Ne) {
                "two numbers or two booleans"
            } else {
                "numbers"
            };
            let bad = if op.is_logical() {
                if a.ty != Ty::Bool {
                    &a
                } else {
                    &b
                }
            } else if op == BinOp::Rem {
                if a.ty != Ty::Int {
                    &a
                } else {
                    &b
                }
            } else if a.ty == Ty::Bool {
                &a
            } else {
                &b
            };
            let mut d = Diagnostic::error("E0202", format!("`{}` needs {want}", op.symbol()))
                .with_label(bad.span, format!("this is {}", bad.ty.a()));
            if op.is_logical() && bad.ty == Ty::Int {
                d = d.with_hint("compare it with something, e.g. `dh == 0`");
            }
            if op.is_comparison() && a.ty == Ty::Bool {
                d = d.with_hint("comparisons do not chain: write `a < b && b < c`");
            }
            self.diags.push(d);
            return None;
        }
        Some(Expr::binary(op, a, b, span))
    }

    fn name(&mut self, n: &str, span: Span, env: &Env) -> Option<Expr> {
        if let Some(v) = self.var(n, env) {
            return Some(Expr::var(v, span));
        }
        if let Some(id) = self.find_param(n, &env.scopes) {
            let ty = self.resolve_param(id)?;
            let shape = self.prog.param(id).value.shape();
            if shape == ParamShape::List {
                self.diags.push(
                    Diagnostic::error("E0203", format!("`{n}` is a list, not a number"))
                        .with_label(span, "a list parameter")
                        .with_hint(format!("lists are document offsets: use `doc(qx, {n})`")),
                );
                return None;
            }
            return Some(Expr {
                kind: Kind::Param(id),
                ty,
                span,
            });
        }
        self.diags.push(self.unknown_name(n, span, env));
        None
    }

    fn unknown_name(&self, n: &str, span: Span, env: &Env) -> Diagnostic {
        let mut d = Diagnostic::error("E0204", format!("unknown name `{n}`"))
            .with_label(span, "not a parameter or coordinate");
        // A coordinate of another context or axis?
        let coord_like = n.len() >= 2
            && matches!(&n[..1], "q" | "k" | "d" | "n")
            && ["x", "h", "w", "t"].contains(&&n[1..]);
        if coord_like || n == "qi" || n == "ki" {
            return match env.ctx {
                Ctx::Param => d.with_hint("coordinates exist only in `tiles:`, `tokens:` and `score:`; sizes are parameters"),
                _ => d.with_hint(format!(
                    "this canvas has axes {}: coordinates are {}",
                    env.axes.join(", "),
                    env.axes.iter().map(|a| format!("q{a}, k{a}, d{a}, n{a}")).collect::<Vec<_>>().join("; ")
                )),
            };
        }
        if matches!(n, "score" | "b" | "h") && env.ctx != Ctx::Score {
            return d.with_hint(format!("`{n}` exists only in `score:` modifiers"));
        }
        let mut candidates: Vec<String> = self
            .prog
            .params
            .iter()
            .filter(|p| env.scopes.contains(&p.scope))
            .map(|p| p.name.clone())
            .collect();
        if env.ctx != Ctx::Param {
            for a in env.axes {
                for p in ["q", "k", "d", "n"] {
                    candidates.push(format!("{p}{a}"));
                }
            }
        }
        if env.ctx == Ctx::Score {
            candidates.extend(["score", "b", "h", "qi", "ki"].map(String::from));
        }
        if let Some(c) = closest(n, candidates.iter().map(String::as_str)) {
            d = d.with_hint(format!("did you mean `{c}`?"));
        } else {
            d = d.with_hint(format!("declare it with `param {n} = ...;`"));
        }
        d
    }

    fn var(&self, n: &str, env: &Env) -> Option<Var> {
        if env.ctx == Ctx::Param {
            return None;
        }
        match n {
            "qi" => return Some(Var::QI),
            "ki" => return Some(Var::KI),
            _ => {}
        }
        if env.ctx == Ctx::Score {
            match n {
                "score" => return Some(Var::Score),
                "b" => return Some(Var::Batch),
                "h" => return Some(Var::Head),
                _ => {}
            }
        }
        if n.len() < 2 {
            return None;
        }
        let (p, a) = n.split_at(1);
        let axis = env.axes.iter().position(|x| *x == a)? as u8;
        match p {
            "q" => Some(Var::Q(axis)),
            "k" => Some(Var::K(axis)),
            "d" => Some(Var::D(axis)),
            "n" => Some(Var::N(axis)),
            _ => None,
        }
    }

    fn call(
        &mut self,
        func: &ast::Ident,
        args: &[ast::Arg],
        span: Span,
        env: &Env,
    ) -> Option<Expr> {
        match func.name.as_str() {
            "window" => return self.window(func, args, span, env),
            "doc" => return self.doc(func, args, span, env),
            _ => {}
        }
        let Some(b) = Builtin::from_name(&func.name) else {
            let mut names: Vec<&str> = [
                "abs", "min", "max", "clamp", "tanh", "exp", "exp2", "log", "sqrt", "float",
            ]
            .into();
            if matches!(env.ctx, Ctx::Tiles | Ctx::Tokens) {
                names.push("window");
            }
            names.push("doc");
            let mut d = Diagnostic::error("E0205", format!("unknown function `{}`", func.name))
                .with_label(func.span, "not a built-in function")
                .with_note(format!("functions: {}", names.join(", ")));
            if let Some(c) = closest(&func.name, names.iter().copied()) {
                d = d.with_hint(format!("did you mean `{c}`?"));
            }
            self.diags.push(d);
            return None;
        };
        if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
            self.diags.push(
                Diagnostic::error("E0206", format!("`{}` takes no named arguments", func.name))
                    .with_label(named.span, "named argument"),
            );
            return None;
        }
        if args.len() != b.arity() {
            self.diags.push(
                Diagnostic::error(
                    "E0206",
                    format!(
                        "`{}` takes {} argument{}, found {}",
                        b.name(),
                        b.arity(),
                        plural(b.arity()),
                        args.len()
                    ),
                )
                .with_label(span, "wrong number of arguments"),
            );
            return None;
        }
        let mut out = vec![];
        for a in args {
            out.push(self.expr(&a.value, env));
        }
        let out: Vec<Expr> = out.into_iter().collect::<Option<_>>()?;
        if let Some(bad) = out.iter().find(|a| a.ty == Ty::Bool) {
            self.diags.push(
                Diagnostic::error("E0202", format!("`{}` needs numbers", b.name()))
                    .with_label(bad.span, "this is a boolean"),
            );
            return None;
        }
        Some(Expr::call(b, out, span))
    }

    fn window(
        &mut self,
        func: &ast::Ident,
        args: &[ast::Arg],
        span: Span,
        env: &Env,
    ) -> Option<Expr> {
        if !matches!(env.ctx, Ctx::Tiles | Ctx::Tokens) {
            self.diags.push(
                Diagnostic::error(
                    "E0207",
                    "`window` can be used only in `tiles:` and `tokens:` rules",
                )
                .with_label(func.span, "not allowed here"),
            );
            return None;
        }
        let usage = "window(AXIS, RADIUS, stride: S, dilation: D)";
        let positional: Vec<&ast::Arg> = args.iter().filter(|a| a.name.is_none()).collect();
        if positional.len() != 2 {
            self.diags.push(
                Diagnostic::error(
                    "E0206",
                    format!(
                        "`window` takes an axis and a radius, found {} positional argument{}",
                        positional.len(),
                        plural(positional.len())
                    ),
                )
                .with_label(span, "here")
                .with_hint(format!("write `{usage}`; stride and dilation are optional")),
            );
            return None;
        }
        let axis = match &positional[0].value.kind {
            ast::ExprKind::Name(n) if env.axes.contains(&n.as_str()) => {
                env.axes.iter().position(|a| a == n)? as u8
            }
            _ => {
                self.diags.push(
                    Diagnostic::error("E0208", "the first argument of `window` is an axis name")
                        .with_label(positional[0].value.span, "not an axis of this canvas")
                        .with_hint(format!("axes here: {}", env.axes.join(", "))),
                );
                return None;
            }
        };
        let penv = Env {
            ctx: Ctx::Param,
            scopes: env.scopes.clone(),
            axes: &[],
            inputs: vec![],
        };
        let radius =
            self.expect_window_arg(&positional[1].value, &penv, env, "the window radius")?;
        let mut stride = Expr::int(1, span);
        let mut dilation = Expr::int(1, span);
        for a in args {
            let Some(n) = &a.name else { continue };
            match n.name.as_str() {
                "stride" => stride = self.expect_window_arg(&a.value, &penv, env, "the stride")?,
                "dilation" => {
                    dilation = self.expect_window_arg(&a.value, &penv, env, "the dilation")?
                }
                other => {
                    self.diags.push(
                        Diagnostic::error("E0206", format!("`window` has no argument `{other}`"))
                            .with_label(n.span, "unknown argument")
                            .with_hint(format!("write `{usage}`")),
                    );
                    return None;
                }
            }
        }
        Some(Expr {
            kind: Kind::Window {
                axis,
                radius: Box::new(radius),
                stride: Box::new(stride),
                dilation: Box::new(dilation),
            },
            ty: Ty::Bool,
            span,
        })
    }

    /// Window sizes may be per-head parameters but not coordinates.
    fn expect_window_arg(
        &mut self,
        e: &ast::Expr,
        penv: &Env,
        env: &Env,
        what: &str,
    ) -> Option<Expr> {
        let before = self.diags.len();
        let r = self.expr(
            e,
            &Env {
                ctx: env.ctx,
                scopes: penv.scopes.clone(),
                axes: env.axes,
                inputs: vec![],
            },
        )?;
        let mut uses_coords = false;
        r.walk(&mut |x| uses_coords |= matches!(x.kind, Kind::Var(_)));
        if uses_coords {
            self.diags.truncate(before);
            self.diags.push(
                Diagnostic::error("E0209", format!("{what} must not depend on coordinates"))
                    .with_label(r.span, "uses a coordinate")
                    .with_hint("use a parameter or a number"),
            );
            return None;
        }
        if r.ty != Ty::Int {
            self.type_mismatch(&r, Ty::Int, what);
            return None;
        }
        Some(r)
    }

    fn doc(&mut self, func: &ast::Ident, args: &[ast::Arg], span: Span, env: &Env) -> Option<Expr> {
        if args.len() != 2 || args.iter().any(|a| a.name.is_some()) {
            self.diags.push(
                Diagnostic::error(
                    "E0206",
                    "`doc` takes a position and a list of document offsets",
                )
                .with_label(span, "here")
                .with_hint(
                    "write `doc(qx, OFFSETS) == doc(kx, OFFSETS)` with `param OFFSETS = [0, ...];`",
                ),
            );
            return None;
        }
        let _ = func;
        let x = self.expr(&args[0].value, env)?;
        if x.ty != Ty::Int {
            self.type_mismatch(&x, Ty::Int, "a position");
            return None;
        }
        let list = match &args[1].value.kind {
            ast::ExprKind::Name(n) => self.find_param(n, &env.scopes),
            _ => None,
        };
        let Some(id) = list.filter(|id| {
            self.resolve_param(*id) == Some(Ty::Int)
                && self.prog.param(*id).value.shape() == ParamShape::List
        }) else {
            self.diags.push(
                Diagnostic::error(
                    "E0210",
                    "the second argument of `doc` must name a list of integer offsets",
                )
                .with_label(args[1].value.span, "not an integer list parameter")
                .with_hint("declare `param OFFSETS = [0, 100, 250];`"),
            );
            return None;
        };
        Some(Expr {
            kind: Kind::Doc {
                x: Box::new(x),
                offsets: DocOffsets::Param(id),
            },
            ty: Ty::Int,
            span,
        })
    }

    fn index(
        &mut self,
        base: &ast::Expr,
        indices: &[ast::Expr],
        span: Span,
        env: &Env,
    ) -> Option<Expr> {
        let name = match &base.kind {
            ast::ExprKind::Name(n) => Some(n.as_str()),
            _ => None,
        };
        let found = name.and_then(|n| env.inputs.iter().position(|(i, _)| i == n));
        let Some(id) = found else {
            let mut d = Diagnostic::error("E0211", "only kernel inputs can be indexed")
                .with_label(base.span, "not an input tensor");
            if env.ctx != Ctx::Score {
                d = d.with_hint("inputs can be read in `score:` modifiers only");
            } else {
                d = d.with_hint("declare one with `input NAME: f32[HEADS, 4096];`");
            }
            self.diags.push(d);
            return None;
        };
        let rank = env.inputs[id].1;
        if indices.len() != rank {
            self.diags.push(
                Diagnostic::error(
                    "E0211",
                    format!(
                        "input `{}` has {rank} dimension{}, indexed with {}",
                        env.inputs[id].0,
                        plural(rank),
                        indices.len()
                    ),
                )
                .with_label(span, "wrong number of indices"),
            );
            return None;
        }
        let mut out = vec![];
        for i in indices {
            out.push(self.expect(i, env, Ty::Int, "an index")?);
        }
        Some(Expr {
            kind: Kind::Input {
                id: InputId(id as u32),
                indices: out,
            },
            ty: Ty::Float,
            span,
        })
    }
}

/// Names the rules' variables use: a parameter with one of them would be shadowed.
fn is_variable_name(n: &str) -> bool {
    if matches!(n, "qi" | "ki" | "score" | "b" | "h") {
        return true;
    }
    let c: Vec<char> = n.chars().collect();
    c.len() == 2 && "qkdn".contains(c[0]) && "xthw".contains(c[1])
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// E0117: `outputs` names something an attention kernel cannot write.
fn unknown_output(e: &ast::Expr) -> Diagnostic {
    let known: Vec<&str> = Outputs::KNOWN.iter().map(|(n, _)| *n).collect();
    let listed: Vec<String> = Outputs::KNOWN
        .iter()
        .map(|(n, what)| format!("`{n}` ({what})"))
        .collect();
    let (shown, hint) = match &e.kind {
        ast::ExprKind::Name(n) if n == "o" => (
            n.clone(),
            "`o` is always written: `outputs` names what is written beside it".to_string(),
        ),
        ast::ExprKind::Name(n) => (
            n.clone(),
            match closest(n, known.iter().copied()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => "write `outputs lse;`".to_string(),
            },
        ),
        _ => (
            crate::syntax::print::expr(e),
            "write `outputs lse;`".to_string(),
        ),
    };
    Diagnostic::error("E0117", format!("unknown output `{shown}`"))
        .with_label(e.span, "not an output of an attention kernel")
        .with_note(format!(
            "an attention kernel writes `o` and, when asked, {}",
            listed.join(", ")
        ))
        .with_hint(hint)
}
