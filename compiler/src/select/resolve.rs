//! Checking `select` declarations and the kernels over them, and instantiating one kernel
//! into a [`SelectSpec`]. Each clause is read from its expression (`exact`,
//! `page_bound(page = PAGE)`, `per_kv_group(sum)`), its numbers evaluated with the kernel's
//! parameters, and every impossible setting reported where it was written.

use super::params::{Num, Params};
use super::spec::{
    Budget, Gumbel, HeadReduce, HeadSet, KernelKind, Output, Pool, Reduce, SelectSpec, Source,
};
use crate::diagnostic::{closest, has_errors, Diagnostic, Span};
use crate::sema::instantiate::{Binding, MAX_BATCH, MAX_HEADS, MAX_HEAD_DIM};
use crate::sema::program::DType;
use crate::syntax::ast::{
    self, BudgetUnit, ExprKind, KeepKind, KernelStmt, ReduceAxis, SelectKernelKind, SelectStmt,
    Setting,
};

/// Largest cache capacity, in tokens (index lists are `i32`).
pub const MAX_CONTEXT: i64 = 1 << 26;
/// Largest page size.
pub const MAX_PAGE: i64 = 1 << 16;
/// Largest pooling kernel.
pub const MAX_POOL: i64 = 255;
/// Tokens per split-K chunk of the decode attention.
pub const SPLIT_TOKENS: u32 = 512;

const SOURCES: [&str; 11] = [
    "none",
    "exact",
    "window",
    "window_lse",
    "normalized",
    "accumulated",
    "keyformer",
    "page_bound",
    "page_mean",
    "external",
    "key_norm",
];

pub fn selects(file: &ast::File) -> impl Iterator<Item = &ast::SelectDecl> {
    file.items.iter().filter_map(|i| match i {
        ast::Item::Select(s) => Some(s),
        _ => None,
    })
}

pub fn kernels(file: &ast::File) -> impl Iterator<Item = &ast::SelectKernelDecl> {
    file.items.iter().filter_map(|i| match i {
        ast::Item::SelectKernel(k) => Some(k),
        _ => None,
    })
}

pub fn find_kernel<'a>(file: &'a ast::File, name: &str) -> Option<&'a ast::SelectKernelDecl> {
    kernels(file).find(|k| k.name.name == name)
}

/// Names: selections and selection kernels declared once, no selection kernel named as an
/// attention kernel, every `decode(S)` / `select(S)` naming a selection.
pub fn check_names(file: &ast::File) -> Vec<Diagnostic> {
    let mut diags = vec![];
    let mut seen: Vec<&str> = vec![];
    for s in selects(file) {
        if seen.contains(&s.name.name.as_str()) {
            diags.push(twice("select", &s.name));
        }
        seen.push(&s.name.name);
    }
    let mut names: Vec<&str> = file
        .items
        .iter()
        .filter_map(|i| match i {
            ast::Item::Kernel(k) => Some(k.name.name.as_str()),
            _ => None,
        })
        .collect();
    for k in kernels(file) {
        if names.contains(&k.name.name.as_str()) {
            diags.push(twice("kernel", &k.name));
        }
        names.push(&k.name.name);
        if !seen.contains(&k.select.name.as_str()) {
            let mut d = Diagnostic::error("E0102", format!("unknown select `{}`", k.select.name))
                .with_label(k.select.span, "no select declaration has this name");
            let is_pattern = file
                .items
                .iter()
                .any(|i| matches!(i, ast::Item::Pattern(p) if p.name.name == k.select.name));
            if is_pattern {
                d = d.with_hint(format!(
                    "`{}` is a pattern: use `kernel {} = attention({})`",
                    k.select.name, k.name.name, k.select.name
                ));
            } else if let Some(c) = closest(&k.select.name, seen.iter().copied()) {
                d = d.with_hint(format!("did you mean `{c}`?"));
            } else {
                d = d.with_hint(format!(
                    "declare it: `select {} {{ source exact; budget 4096 tokens; }}`",
                    k.select.name
                ));
            }
            diags.push(d);
        }
    }
    diags
}

fn twice(what: &str, name: &ast::Ident) -> Diagnostic {
    Diagnostic::error("E0101", format!("{what} `{}` is declared twice", name.name))
        .with_label(name.span, "second declaration")
        .with_hint(format!("rename one of the {what}s"))
}

/// The parameter names a selection kernel sees (for `--set` checks).
pub fn visible_params(file: &ast::File, kernel: &ast::SelectKernelDecl) -> Vec<String> {
    match selects(file).find(|s| s.name.name == kernel.select.name) {
        Some(sel) => Params::new(file, sel, kernel, &mut vec![]).names(),
        None => vec![],
    }
}

/// Checks and instantiates one selection kernel with `sets` applied.
pub fn instantiate(
    file: &ast::File,
    kernel: &ast::SelectKernelDecl,
    sets: &[Binding],
) -> Result<(SelectSpec, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut diags = vec![];
    let Some(sel) = selects(file).find(|s| s.name.name == kernel.select.name) else {
        return Err(check_names(file));
    };
    let mut params = Params::new(file, sel, kernel, &mut diags);
    params.apply(kernel, sets, &mut diags);
    let spec = Inst {
        params,
        diags: &mut diags,
        gumbel: None,
    }
    .run(sel, kernel);
    match spec {
        Some(s) if !has_errors(&diags) => Ok((s, diags)),
        _ => Err(diags),
    }
}

/// The clauses of one `select`, each at most once.
#[derive(Default)]
struct Clauses<'a> {
    source: Option<(&'a ast::Expr, Span)>,
    rows: Option<(&'a ast::Expr, Span)>,
    heads: Option<(&'a ast::Expr, Span)>,
    pool: Option<(&'a ast::Expr, Span)>,
    granularity: Option<(&'a ast::Expr, Span)>,
    keep: Vec<(KeepKind, Span, &'a ast::Expr)>,
    keep_span: Option<Span>,
    budget: Option<(&'a ast::Expr, BudgetUnit, Option<&'a ast::Expr>, Span)>,
    output: Option<(&'a ast::Expr, Span)>,
}

struct Inst<'a, 'd> {
    params: Params<'a>,
    diags: &'d mut Vec<Diagnostic>,
    /// Set by a `keyformer` source.
    gumbel: Option<Gumbel>,
}

impl<'a> Inst<'a, '_> {
    fn err(&mut self, code: &'static str, msg: impl Into<String>, span: Span, label: &str) {
        self.diags
            .push(Diagnostic::error(code, msg).with_label(span, label));
    }

    fn err_hint(
        &mut self,
        code: &'static str,
        msg: impl Into<String>,
        span: Span,
        label: &str,
        hint: impl Into<String>,
    ) {
        self.diags.push(
            Diagnostic::error(code, msg)
                .with_label(span, label)
                .with_hint(hint),
        );
    }

    fn clauses(&mut self, sel: &'a ast::SelectDecl) -> Clauses<'a> {
        let mut c = Clauses::default();
        for s in &sel.stmts {
            let (slot, e, span, what) = match s {
                SelectStmt::Param(_) => continue,
                SelectStmt::Source { value, span } => (&mut c.source, value, *span, "source"),
                SelectStmt::Reduce {
                    axis: ReduceAxis::Rows,
                    value,
                    span,
                    ..
                } => (&mut c.rows, value, *span, "reduce rows"),
                SelectStmt::Reduce { value, span, .. } => {
                    (&mut c.heads, value, *span, "reduce heads")
                }
                SelectStmt::Pool { value, span } => (&mut c.pool, value, *span, "pool"),
                SelectStmt::Output { value, span } => (&mut c.output, value, *span, "output"),
                SelectStmt::Granularity { value, span } => {
                    (&mut c.granularity, value, *span, "granularity")
                }
                SelectStmt::Keep { items, span } => {
                    for it in items {
                        if c.keep.iter().any(|k| k.0 == it.0) {
                            self.err("E0109", "`keep` names this twice", it.1, "second time");
                        } else {
                            c.keep.push((it.0, it.1, &it.2));
                        }
                    }
                    c.keep_span = Some(c.keep_span.map_or(*span, |s| s.to(*span)));
                    continue;
                }
                SelectStmt::Budget {
                    value,
                    unit,
                    alloc,
                    span,
                    ..
                } => {
                    if c.budget.is_some() {
                        self.err("E0109", "`budget` appears twice", *span, "second `budget`");
                    } else {
                        c.budget = Some((value, *unit, alloc.as_ref(), *span));
                    }
                    continue;
                }
            };
            if slot.is_some() {
                self.diags.push(
                    Diagnostic::error("E0109", format!("`{what}` appears twice"))
                        .with_label(span, format!("second `{what}`")),
                );
            } else {
                *slot = Some((e, span));
            }
        }
        c
    }

    /// An integer parameter expression in `lo..=hi`.
    fn int(
        &mut self,
        e: &ast::Expr,
        what: &str,
        lo: i64,
        hi: i64,
        code: &'static str,
    ) -> Option<u32> {
        match self.params.eval(e, self.diags)? {
            Num::Int(v) if (lo..=hi).contains(&v) => Some(v as u32),
            Num::Int(v) => {
                self.err_hint(
                    code,
                    format!("{what} is {v}, outside {lo}..={hi}"),
                    e.span,
                    &format!("= {v}"),
                    format!("use a value from {lo} to {hi}"),
                );
                None
            }
            Num::Float(f) => {
                self.err(
                    "E0201",
                    format!("{what} must be an integer, not {}", Num::Float(f).text()),
                    e.span,
                    "a float",
                );
                None
            }
        }
    }

    fn setting(&mut self, name: &str, lo: i64, hi: i64, span: Span) -> Option<u32> {
        match self.params.get(name, self.diags)? {
            Num::Int(v) if (lo..=hi).contains(&v) => Some(v as u32),
            v => {
                self.err_hint(
                    "E0304",
                    format!("`{name}` is {}, outside {lo}..={hi}", v.text()),
                    span,
                    "in this kernel",
                    format!("use an integer from {lo} to {hi}"),
                );
                None
            }
        }
    }

    fn run(mut self, sel: &'a ast::SelectDecl, k: &'a ast::SelectKernelDecl) -> Option<SelectSpec> {
        let c = self.clauses(sel);
        let kind = match k.kind {
            SelectKernelKind::Decode => KernelKind::Decode,
            SelectKernelKind::Select => KernelKind::Select,
        };
        let (dtype, scale_expr) = self.kernel_body(k);

        let span = k.name.span;
        let q_heads = self.setting("HEADS", 1, MAX_HEADS as i64, span);
        let kv_heads = self.setting("KV_HEADS", 1, MAX_HEADS as i64, span);
        let head_dim = self.setting("HEAD_DIM", 1, MAX_HEAD_DIM as i64, span);
        let batch = self.setting("BATCH", 1, MAX_BATCH as i64, span);
        let context = self.setting("CONTEXT", 1, MAX_CONTEXT, span);
        if let (Some(h), Some(kv)) = (q_heads, kv_heads) {
            if h % kv != 0 {
                self.err_hint(
                    "E0305",
                    format!("{h} query heads are not a multiple of {kv} KV heads"),
                    span,
                    "in this kernel",
                    "make `heads` a multiple of `kv_heads`",
                );
            }
        }
        let scale = match scale_expr {
            Some(e) => match self.params.eval(e, self.diags) {
                Some(v) if v.as_f64().is_finite() && v.as_f64() > 0.0 => Some(v.as_f64()),
                Some(v) => {
                    self.err(
                        "E0307",
                        format!("the scale {} is not a positive finite number", v.text()),
                        e.span,
                        "here",
                    );
                    None
                }
                None => None,
            },
            None => head_dim.map(|d| 1.0 / (d as f64).sqrt()),
        };
        let context_i = context.map_or(MAX_CONTEXT, i64::from);

        let Some((src_expr, src_span)) = c.source else {
            self.err_hint(
                "E0803",
                format!("select `{}` has no `source`", sel.name.name),
                sel.name.span,
                "needs a score source",
                "add `source exact;` (or none, window(W), normalized(W), accumulated, keyformer(steps = N), page_bound(page = P), page_mean(page = P), external, key_norm)",
            );
            return None;
        };
        let (source, bound_page) = self.source(src_expr, context_i)?;
        let mut page = bound_page.unwrap_or(1);
        if let Some((g, gspan)) = c.granularity {
            if let Some(p) = self.granularity(g) {
                if bound_page.is_some_and(|b| b != p) {
                    self.err(
                        "E0804",
                        format!(
                            "granularity page({p}) contradicts `{}(page = {page})`",
                            crate::select::spec::source_name(source)
                        ),
                        gspan,
                        "a different page size",
                    );
                }
                page = p;
            }
        }
        if bound_page.is_some() && page == 1 && c.granularity.is_some() {
            self.err(
                "E0804",
                format!(
                    "`{}` scores pages: its granularity cannot be `token`",
                    crate::select::spec::source_name(source)
                ),
                src_span,
                "scores pages",
            );
        }
        let rows = match c.rows {
            Some((e, span)) => {
                if let Source::Normalized { .. } = source {
                    self.err_hint(
                        "E0804",
                        "`reduce rows` does not apply to a `normalized` source",
                        span,
                        "its rows are averaged over those that see each token",
                        "remove it, or use `source window(W);` to reduce the rows yourself",
                    );
                } else if !matches!(source, Source::Window { .. }) {
                    self.err_hint(
                        "E0804",
                        "`reduce rows` needs a `window` source",
                        span,
                        "only a window has several query rows",
                        "remove it, or use `source window(W);`",
                    );
                }
                self.reduce_op(e)?
            }
            None => Reduce::Sum,
        };
        let heads = match c.heads {
            // Without a valid HEADS (already reported) subsets are checked against the
            // most heads there can be, so that their other errors still show.
            Some((e, _)) => self.head_reduce(e, q_heads.unwrap_or(MAX_HEADS))?,
            None => HeadReduce::PerKvGroup(Reduce::Sum),
        };
        let pool = match c.pool {
            Some((e, span)) => {
                if page > 1 {
                    self.err(
                        "E0804",
                        "`pool` works on token scores, not on pages",
                        span,
                        "with page granularity",
                    );
                }
                self.pool(e)?
            }
            None => Pool::None,
        };
        let output = match c.output {
            Some((e, span)) => {
                let out = match call_parts(e) {
                    ("indices", []) => Output::Indices,
                    ("compacted", []) => Output::Compacted,
                    (other, _) => {
                        self.err_hint(
                            "E0801",
                            format!("unknown output `{}`", shown(e, other)),
                            e.span,
                            "not an output",
                            "use `indices` (the index lists) or `compacted` (with them the selected keys and values, gathered)",
                        );
                        return None;
                    }
                };
                if out == Output::Compacted && kind == KernelKind::Decode {
                    self.err_hint(
                        "E0804",
                        "`output compacted` belongs to `select` kernels",
                        span,
                        "in a decode kernel",
                        "a decode step attends over its lists; compact a cache with a `select(...)` kernel",
                    );
                }
                out
            }
            None => Output::Indices,
        };
        match (source, kind) {
            (Source::Window { .. } | Source::Normalized { .. }, KernelKind::Decode) => self.err_hint(
                "E0804",
                format!(
                    "a `{}` source scores the prompt's last queries: it belongs to a `select` kernel",
                    match source {
                        Source::Window { lse: true, .. } => "window_lse",
                        Source::Window { .. } => "window",
                        _ => "normalized",
                    }
                ),
                k.span,
                "a decode kernel has one query row",
                format!("write `kernel {} = select({})`", k.name.name, sel.name.name),
            ),
            (Source::Accumulated, KernelKind::Select) => self.err_hint(
                "E0804",
                format!(
                    "{} source is updated by decode steps: it needs a `decode` kernel",
                    if self.gumbel.is_some() {
                        "a `keyformer`"
                    } else {
                        "an `accumulated`"
                    }
                ),
                k.span,
                "a select kernel never attends",
                format!("write `kernel {} = decode({})`", k.name.name, sel.name.name),
            ),
            _ => {}
        }

        let mut sinks = 0;
        let mut recent = 0;
        for (kk, _, e) in c.keep.clone() {
            let what = match kk {
                KeepKind::Sinks => "sinks",
                KeepKind::Recent => "recent",
            };
            // Above CONTEXT keeps everything, which is harmless (and what a budget of the
            // whole cache does): only negative counts are wrong.
            let v = self.int(e, &format!("`keep {what}`"), 0, MAX_CONTEXT, "E0802")?;
            match kk {
                KeepKind::Sinks => sinks = v,
                KeepKind::Recent => recent = v,
            }
        }
        if let Source::Window { rows: w, .. } = source {
            if recent < w {
                self.err_hint(
                    "E0807",
                    format!("the observation window of {w} queries is always kept, but `recent` is {recent}"),
                    c.keep_span.unwrap_or(src_span),
                    "too few recent tokens",
                    format!("keep recent {w} (or more)"),
                );
            }
        }

        let Some((b_expr, unit, alloc, b_span)) = c.budget else {
            self.err_hint(
                "E0803",
                format!("select `{}` has no `budget`", sel.name.name),
                sel.name.span,
                "needs a budget",
                "add `budget 4096 tokens;` or `budget 0.1 ratio;`",
            );
            return None;
        };
        let budget = match unit {
            BudgetUnit::Tokens => {
                let n = self.int(b_expr, "the budget", 1, i32::MAX as i64, "E0808")?;
                if n % page != 0 {
                    self.err_hint(
                        "E0808",
                        format!(
                            "a budget of {n} tokens is not a whole number of {page}-token pages"
                        ),
                        b_expr.span,
                        "not a multiple of the page size",
                        format!("use {} or {}", n / page * page, (n / page + 1) * page),
                    );
                }
                Budget::Tokens(n)
            }
            BudgetUnit::Ratio => {
                let f = self.params.eval(b_expr, self.diags)?.as_f64();
                if !(f > 0.0 && f <= 1.0) {
                    self.err_hint(
                        "E0808",
                        format!("a budget ratio of {f} is outside (0, 1]"),
                        b_expr.span,
                        "not a fraction",
                        "use a fraction such as 0.1",
                    );
                    return None;
                }
                Budget::Ratio(f)
            }
        };
        let adaptive = match alloc {
            Some(e) => Some(self.allocation(e, heads, output, kv_heads)?),
            None => None,
        };

        let spec = SelectSpec {
            kernel: k.name.name.clone(),
            select: sel.name.name.clone(),
            kind,
            source,
            rows,
            heads,
            pool,
            output,
            page,
            budget,
            adaptive,
            gumbel: self.gumbel,
            sinks,
            recent,
            context: context?,
            batch: batch?,
            q_heads: q_heads?,
            kv_heads: kv_heads?,
            head_dim: head_dim?,
            dtype,
            scale: scale?,
            split: (SPLIT_TOKENS / page).max(1),
            params: self.params.listing(),
        };
        self.check_budget(&spec, b_span);
        Some(spec)
    }

    /// Settings other than numbers: dtype, scale; statements a selection kernel cannot have.
    fn kernel_body(&mut self, k: &'a ast::SelectKernelDecl) -> (DType, Option<&'a ast::Expr>) {
        let mut dtype: Option<(DType, Span)> = None;
        let mut scale = None;
        let mut seen: Vec<Setting> = vec![];
        for s in &k.stmts {
            match s {
                KernelStmt::Dtype { name, span } => {
                    if dtype.is_some() {
                        self.err("E0109", "`dtype` appears twice", *span, "second `dtype`");
                    }
                    match DType::from_name(&name.name) {
                        Some(d) => dtype = Some((d, *span)),
                        None => self.err_hint(
                            "E0112",
                            format!("unknown dtype `{}`", name.name),
                            name.span,
                            "not a dtype",
                            "use `bf16`, `f16` or `f32`",
                        ),
                    }
                }
                KernelStmt::Setting {
                    key,
                    key_span,
                    value,
                    ..
                } => {
                    if seen.contains(key) {
                        self.err(
                            "E0109",
                            format!("`{}` appears twice", key.keyword()),
                            *key_span,
                            "second time",
                        );
                    }
                    seen.push(*key);
                    match key {
                        Setting::Scale => scale = Some(value),
                        Setting::ValueDim => self.err_hint(
                            "E0811",
                            "a selection kernel has no `value_dim`: values have the head dim",
                            *key_span,
                            "not a setting here",
                            "remove it",
                        ),
                        _ => {}
                    }
                }
                KernelStmt::Score { span, .. } => self.err_hint(
                    "E0811",
                    "a selection kernel has no score modifier",
                    *span,
                    "only attention kernels take `score:`",
                    "remove it, or score tokens with `source external;` and an input",
                ),
                KernelStmt::Input { span, .. } => self.err_hint(
                    "E0811",
                    "a selection kernel declares no inputs",
                    *span,
                    "only attention kernels take `input`",
                    "use `source external;` for a score tensor",
                ),
                KernelStmt::Outputs { span, .. } => self.err_hint(
                    "E0811",
                    "a selection kernel has no `outputs`",
                    *span,
                    "only attention kernels take `outputs`",
                    "remove it: a selection's outputs are its `select`'s `output` clause (`indices` or `compacted`)",
                ),
                KernelStmt::Param(_) | KernelStmt::Override(_) => {}
            }
        }
        (dtype.map_or(DType::Bf16, |d| d.0), scale)
    }

    /// `none`, `exact`, `window(W)`, `accumulated`, `page_bound(page = P)`,
    /// `page_mean(page = P)`, `external`, `key_norm`. Returns the source and, for the page
    /// sources, its page size.
    fn source(&mut self, e: &'a ast::Expr, context: i64) -> Option<(Source, Option<u32>)> {
        let (name, args) = call_parts(e);
        if name == "keyformer" {
            self.gumbel = Some(self.keyformer(e, args)?);
            return Some((Source::Accumulated, None));
        }
        let arity = match name {
            "window" | "window_lse" | "normalized" | "page_bound" | "page_mean" => 1,
            _ => 0,
        };
        if SOURCES.contains(&name) && args.len() != arity {
            let usage = match name {
                "window" => "window(W)",
                "window_lse" => "window_lse(W)",
                "normalized" => "normalized(W)",
                "page_bound" => "page_bound(page = P)",
                "page_mean" => "page_mean(page = P)",
                n => n,
            };
            self.err_hint(
                "E0206",
                format!("`{name}` takes {arity} argument(s)"),
                e.span,
                "wrong arguments",
                format!("write `{usage}`"),
            );
            return None;
        }
        let src = match name {
            "none" => Source::None,
            "exact" => Source::Exact,
            "accumulated" => Source::Accumulated,
            "external" => Source::External,
            "key_norm" => Source::KeyNorm,
            "window" | "window_lse" | "normalized" => {
                let a = &args[0];
                if let Some(n) = &a.name {
                    self.err(
                        "E0206",
                        format!("`{name}` has no argument `{}`", n.name),
                        n.span,
                        "write the row count alone",
                    );
                    return None;
                }
                let w = self.int(&a.value, "the observation window", 1, context, "E0802")?;
                if name != "normalized" {
                    Source::Window {
                        rows: w,
                        lse: name == "window_lse",
                    }
                } else {
                    Source::Normalized { rows: w }
                }
            }
            "page_bound" | "page_mean" => {
                let a = &args[0];
                if let Some(n) = a.name.as_ref().filter(|n| n.name != "page") {
                    self.err(
                        "E0206",
                        format!("`{name}` has no argument `{}`", n.name),
                        n.span,
                        "only `page`",
                    );
                    return None;
                }
                let p = self.page_size(&a.value)?;
                let src = if name == "page_bound" {
                    Source::PageBound
                } else {
                    Source::PageMean
                };
                return Some((src, Some(p)));
            }
            other => {
                let mut d = Diagnostic::error(
                    "E0801",
                    format!("unknown score source `{}`", shown(e, other)),
                )
                .with_label(e.span, "not a source")
                .with_note(format!("sources: {}", SOURCES.join(", ")));
                if let Some(c) = closest(other, SOURCES) {
                    d = d.with_hint(format!("did you mean `{c}`?"));
                }
                self.diags.push(d);
                return None;
            }
        };
        Some((src, None))
    }

    /// `keyformer(tau = T0, tau_end = T1, steps = N)` (`tau` 1 and `tau_end` 2 unless
    /// given): an `accumulated` source whose update is Keyformer's Gumbel softmax.
    fn keyformer(&mut self, e: &ast::Expr, args: &[ast::Arg]) -> Option<Gumbel> {
        let (mut tau, mut tau_end, mut steps) = (1.0, 2.0, None);
        for a in args {
            let Some(n) = &a.name else {
                self.err_hint(
                    "E0206",
                    "`keyformer` takes named arguments",
                    a.value.span,
                    "not named",
                    "write `keyformer(tau = 1, tau_end = 2, steps = 256)`",
                );
                return None;
            };
            match n.name.as_str() {
                "tau" | "tau_end" => {
                    let v = self.params.eval(&a.value, self.diags)?.as_f64();
                    if !(v.is_finite() && v > 0.0) {
                        self.err_hint(
                            "E0802",
                            format!("a temperature of {v} is not positive"),
                            a.value.span,
                            "not positive",
                            "use a temperature such as 1 or 2",
                        );
                        return None;
                    }
                    if n.name == "tau" {
                        tau = v;
                    } else {
                        tau_end = v;
                    }
                }
                "steps" => {
                    let v = self.int(
                        &a.value,
                        "the temperature schedule's steps",
                        1,
                        i64::from(i32::MAX),
                        "E0802",
                    )?;
                    steps = Some(v);
                }
                other => {
                    self.err_hint(
                        "E0206",
                        format!("`keyformer` has no argument `{other}`"),
                        n.span,
                        "unknown argument",
                        "its arguments: `tau`, `tau_end`, `steps`",
                    );
                    return None;
                }
            }
        }
        let Some(steps) = steps else {
            self.err_hint(
                "E0206",
                "`keyformer` needs `steps`, the decode steps over which the temperature rises",
                e.span,
                "no `steps`",
                "write `keyformer(steps = 256)` (tau 1 to tau_end 2 unless given)",
            );
            return None;
        };
        Some(Gumbel {
            tau,
            tau_end,
            steps,
        })
    }

    fn page_size(&mut self, e: &ast::Expr) -> Option<u32> {
        let p = self.int(e, "the page size", 1, MAX_PAGE, "E0805")?;
        if !p.is_power_of_two() {
            self.err_hint(
                "E0805",
                format!("the page size {p} is not a power of two"),
                e.span,
                "not a power of two",
                format!(
                    "use {} or {}",
                    p.next_power_of_two() / 2,
                    p.next_power_of_two()
                ),
            );
            return None;
        }
        Some(p)
    }

    fn granularity(&mut self, e: &'a ast::Expr) -> Option<u32> {
        match call_parts(e) {
            ("token", []) => Some(1),
            ("page", [a]) if a.name.is_none() => self.page_size(&a.value),
            (other, _) => {
                self.err_hint(
                    "E0801",
                    format!("unknown granularity `{}`", shown(e, other)),
                    e.span,
                    "not a granularity",
                    "use `token` or `page(P)`",
                );
                None
            }
        }
    }

    fn reduce_op(&mut self, e: &ast::Expr) -> Option<Reduce> {
        match call_parts(e) {
            ("sum", []) => Some(Reduce::Sum),
            ("mean", []) => Some(Reduce::Mean),
            ("max", []) => Some(Reduce::Max),
            (other, _) => {
                self.err_hint(
                    "E0801",
                    format!("unknown reduction `{}`", shown(e, other)),
                    e.span,
                    "not a reduction",
                    "use `sum`, `mean` or `max`",
                );
                None
            }
        }
    }

    /// `per_kv_group(op)`, `shared(op)`, or `subset(op, h, ...)` of the kernel's `heads`
    /// query heads.
    fn head_reduce(&mut self, e: &ast::Expr, heads: u32) -> Option<HeadReduce> {
        let (name, args) = call_parts(e);
        if name == "subset" {
            return self.head_subset(e, args, heads);
        }
        let op = match args {
            [] => Reduce::Sum,
            [a] if a.name.is_none() => self.reduce_op(&a.value)?,
            _ => {
                self.err(
                    "E0206",
                    format!("`{name}` takes one reduction"),
                    e.span,
                    "wrong arguments",
                );
                return None;
            }
        };
        match name {
            "per_kv_group" => Some(HeadReduce::PerKvGroup(op)),
            "shared" => Some(HeadReduce::Shared(op)),
            other => {
                self.err_hint(
                    "E0801",
                    format!("unknown head reduction `{}`", shown(e, other)),
                    e.span,
                    "not a head reduction",
                    "use `per_kv_group(sum|mean|max)` (one list per KV head), `shared(sum|mean|max)` (one list for all heads) or `subset(sum|mean|max, h, ...)` (one list for all heads, scored by heads h, ...)",
                );
                None
            }
        }
    }

    /// `subset(op, h, ...)`: one list for all heads, scored by the distinct query heads
    /// `h, ...` (each below `heads`).
    fn head_subset(&mut self, e: &ast::Expr, args: &[ast::Arg], heads: u32) -> Option<HeadReduce> {
        let (first, rest) = match args {
            [first, rest @ ..] if !rest.is_empty() && args.iter().all(|a| a.name.is_none()) => {
                (first, rest)
            }
            _ => {
                self.err_hint(
                    "E0206",
                    "`subset` takes a reduction and at least one head",
                    e.span,
                    "wrong arguments",
                    "write `subset(sum, 3, 7, 12)`: the query heads whose scores make the list",
                );
                return None;
            }
        };
        let op = self.reduce_op(&first.value)?;
        let mut set = HeadSet::default();
        for a in rest {
            let h = self.int(&a.value, "the query head", 0, heads as i64 - 1, "E0802")?;
            if !set.insert(h) {
                self.err(
                    "E0802",
                    format!("head {h} is named twice in `subset`"),
                    a.value.span,
                    "named before",
                );
                return None;
            }
        }
        Some(HeadReduce::Subset(op, set))
    }

    fn pool(&mut self, e: &ast::Expr) -> Option<Pool> {
        let (name, args) = call_parts(e);
        let size = match args {
            [a] if a.name.is_none() => &a.value,
            _ => {
                self.err_hint(
                    "E0801",
                    format!("unknown pooling `{}`", ast_text(e)),
                    e.span,
                    "not a pooling",
                    "use `avg(K)` or `max(K)` with an odd K",
                );
                return None;
            }
        };
        let k = self.int(size, "the pooling size", 1, MAX_POOL, "E0806")?;
        if k % 2 == 0 {
            self.err_hint(
                "E0806",
                format!("the pooling size {k} is even: same padding needs an odd size"),
                size.span,
                "even",
                format!("use {} or {}", k - 1, k + 1),
            );
            return None;
        }
        match name {
            "avg" => Some(Pool::Avg { size: k }),
            "max" => Some(Pool::Max { size: k }),
            other => {
                self.err_hint(
                    "E0801",
                    format!("unknown pooling `{}`", shown(e, other)),
                    e.span,
                    "not a pooling",
                    "use `avg(K)` or `max(K)`",
                );
                None
            }
        }
    }

    /// The budget must hold the forced units of every length up to `CONTEXT`.
    /// `adaptive(floor = F)` after a budget (Ada-KV): the per-KV-head lists of a sequence
    /// share their budgets, each keeping at least the fraction `F` of its own. Returns `F`.
    fn allocation(
        &mut self,
        e: &ast::Expr,
        heads: HeadReduce,
        output: Output,
        kv_heads: Option<u32>,
    ) -> Option<f64> {
        let floor = match call_parts(e) {
            ("adaptive", [a]) if a.name.as_ref().is_none_or(|n| n.name == "floor") => {
                let f = self.params.eval(&a.value, self.diags)?.as_f64();
                if !(0.0..=1.0).contains(&f) {
                    self.err_hint(
                        "E0808",
                        format!("an adaptive budget's floor of {f} is outside [0, 1]"),
                        a.value.span,
                        "not a fraction",
                        "use a fraction of each list's budget, such as 0.2",
                    );
                    return None;
                }
                f
            }
            ("adaptive", _) => {
                self.err_hint(
                    "E0206",
                    "`adaptive` takes one argument, the floor",
                    e.span,
                    "wrong arguments",
                    "write `adaptive(floor = 0.2)`: each list keeps at least 0.2 of its budget",
                );
                return None;
            }
            (name, _) => {
                self.err_hint(
                    "E0801",
                    format!("unknown budget allocation `{}`", shown(e, name)),
                    e.span,
                    "not an allocation",
                    "write `adaptive(floor = F)`: the KV heads' lists share their budgets, each keeping at least the fraction F of its own (Ada-KV)",
                );
                return None;
            }
        };
        if heads.one_list() || kv_heads == Some(1) {
            self.err_hint(
                "E0808",
                "an adaptive budget is shared among the KV heads' lists, and this selection has one list",
                e.span,
                "nothing to share",
                "use `reduce heads: per_kv_group(...)` with several KV heads, or remove `adaptive`",
            );
            return None;
        }
        if output == Output::Compacted {
            self.err_hint(
                "E0804",
                "`output compacted` keeps one length a sequence, and an adaptive budget gives each KV head its own",
                e.span,
                "lists of different lengths",
                "remove `adaptive`, or output the index lists",
            );
            return None;
        }
        Some(floor)
    }

    fn check_budget(&mut self, s: &SelectSpec, span: Span) {
        let forced = s.max_forced();
        let unit = if s.page == 1 {
            "tokens".to_string()
        } else {
            format!("pages of {}", s.page)
        };
        if let Budget::Tokens(n) = s.budget {
            let cap = n / s.page;
            if cap < forced {
                self.diags.push(
                    Diagnostic::error(
                        "E0809",
                        if s.page == 1 {
                            format!("a budget of {n} tokens is below the {forced} tokens that are always kept")
                        } else {
                            format!("a budget of {n} tokens ({cap} {unit}) is below the {forced} {unit} that are always kept")
                        },
                    )
                    .with_label(span, "too small")
                    .with_note(format!(
                        "sinks {} and recent {} tokens{} need up to {forced} {unit}",
                        s.sinks,
                        s.recent,
                        if s.page > 1 { ", plus the partial last page," } else { "" }
                    ))
                    .with_hint(format!("raise the budget to at least {} tokens, or keep fewer tokens", forced * s.page)),
                );
            } else if s.source == Source::None && cap > forced && cap < s.units() {
                self.diags.push(
                    Diagnostic::warning(
                        "W0801",
                        format!("source `none` has no scores: the {} {unit} beyond the kept ones go to the earliest tokens", cap - forced),
                    )
                    .with_label(span, "more than the kept tokens")
                    .with_hint(format!("use budget {} tokens (sinks + recent), or a score source", forced * s.page)),
                );
            }
        }
    }
}

/// A clause value's name and arguments: `exact` -> ("exact", []), `f(a, b)` -> ("f", [a, b]).
fn call_parts(e: &ast::Expr) -> (&str, &[ast::Arg]) {
    match &e.kind {
        ExprKind::Name(n) => (n.as_str(), &[]),
        ExprKind::Call { func, args } => (func.name.as_str(), args.as_slice()),
        _ => ("", &[]),
    }
}

/// A clause value as written, for messages: its name, or the whole expression.
fn shown(e: &ast::Expr, name: &str) -> String {
    if name.is_empty() {
        ast_text(e)
    } else {
        name.to_string()
    }
}

fn ast_text(e: &ast::Expr) -> String {
    crate::syntax::print::expr(e)
}
