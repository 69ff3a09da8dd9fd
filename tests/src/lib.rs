//! Helpers shared by the cross-crate tests.

use std::path::{Path, PathBuf};

use attnc::diagnostic::Diagnostic;
use attnc::syntax::ast::*;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `.attn` files of a folder, sorted.
pub fn attn_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "attn"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The shipped kernel files.
pub fn kernel_files() -> Vec<PathBuf> {
    attn_files(&root().join("kernels"))
}

/// The selection spec of `kernel` in the repository file `file`, with the bindings `sets`
/// (`NAME=VALUE`, as `--set` takes them).
pub fn select_spec(file: &str, kernel: &str, sets: &[&str]) -> attnc::select::spec::SelectSpec {
    let src = attnc::driver::Source::load(&root().join(file)).expect("kernel file");
    let (fe, _) = attnc::driver::frontend(&src).expect("frontend");
    let sets: Vec<attnc::sema::instantiate::Binding> = sets
        .iter()
        .map(|s| attnc::sema::instantiate::Binding::parse(s).expect("binding"))
        .collect();
    attnc::driver::select_spec(&fe, kernel, &sets)
        .unwrap_or_else(|_| panic!("the spec of {kernel}"))
        .0
}

/// Every diagnostic label lies inside the source.
pub fn spans_inside(diags: &[Diagnostic], len: usize) -> Result<(), String> {
    for d in diags {
        for l in &d.labels {
            if l.span.start > l.span.end || l.span.end as usize > len {
                return Err(format!(
                    "{}: span {:?} outside a file of {len} bytes",
                    d.message, l.span
                ));
            }
        }
    }
    Ok(())
}

/// Children's spans lie inside their parents' (the item contains its statements, a
/// statement its expressions, an expression its operands).
pub fn check_ast_spans(f: &File, len: usize) -> Result<(), String> {
    fn expr(e: &Expr, parent: attnc::diagnostic::Span) -> Result<(), String> {
        if !parent.contains(e.span) {
            return Err(format!(
                "expression {:?} at {:?} outside its parent {:?}",
                e.kind, e.span, parent
            ));
        }
        match &e.kind {
            ExprKind::Unary(_, a) => expr(a, e.span),
            ExprKind::Binary(_, a, b) => {
                expr(a, e.span)?;
                expr(b, e.span)
            }
            ExprKind::Call { func, args } => {
                if !e.span.contains(func.span) {
                    return Err("function name outside its call".into());
                }
                args.iter().try_for_each(|a| expr(&a.value, e.span))
            }
            ExprKind::Index { base, indices } => {
                expr(base, e.span)?;
                indices.iter().try_for_each(|i| expr(i, e.span))
            }
            _ => Ok(()),
        }
    }
    fn params(p: &ParamDecl) -> Result<(), String> {
        for b in &p.binds {
            if !p.span.contains(b.span) {
                return Err("param binding outside its declaration".into());
            }
            value(&b.value, b.span)?;
        }
        Ok(())
    }
    fn value(v: &ParamValue, parent: attnc::diagnostic::Span) -> Result<(), String> {
        match v {
            ParamValue::Expr(e) => expr(e, parent),
            ParamValue::List(l) | ParamValue::PerHead(l) => {
                l.items.iter().try_for_each(|e| expr(e, parent))
            }
        }
    }
    let whole = attnc::diagnostic::Span::new(0, len);
    for item in &f.items {
        match item {
            Item::Param(p) => {
                if !whole.contains(p.span) {
                    return Err("item outside the file".into());
                }
                params(p)?
            }
            Item::Layout(l) => {
                for s in &l.stmts {
                    match s {
                        LayoutStmt::Param(p) => params(p)?,
                        LayoutStmt::Canvas { dims, span } | LayoutStmt::Tile { dims, span } => {
                            dims.iter().try_for_each(|d| expr(d, *span))?
                        }
                        LayoutStmt::Segment(s) => {
                            expr(&s.size, s.span)?;
                            if let Some(v) = &s.valid {
                                expr(v, s.span)?;
                            }
                        }
                        LayoutStmt::Order { .. } => {}
                    }
                }
            }
            Item::Pattern(p) => {
                for s in &p.stmts {
                    match s {
                        PatternStmt::Param(d) => params(d)?,
                        PatternStmt::Tiles { expr: e, span }
                        | PatternStmt::Tokens { expr: e, span } => expr(e, *span)?,
                        PatternStmt::See { .. } => {}
                    }
                }
            }
            Item::Kernel(KernelDecl { stmts, .. })
            | Item::SelectKernel(SelectKernelDecl { stmts, .. }) => {
                for s in stmts {
                    match s {
                        KernelStmt::Param(d) => params(d)?,
                        KernelStmt::Setting { value: e, span, .. }
                        | KernelStmt::Score { expr: e, span } => expr(e, *span)?,
                        KernelStmt::Input { dims, span, .. }
                        | KernelStmt::Outputs { names: dims, span } => {
                            dims.iter().try_for_each(|d| expr(d, *span))?
                        }
                        KernelStmt::Override(b) => value(&b.value, b.span)?,
                        KernelStmt::Dtype { .. } => {}
                    }
                }
            }
            Item::Select(d) => {
                for s in &d.stmts {
                    match s {
                        SelectStmt::Param(p) => params(p)?,
                        SelectStmt::Source { value: e, span }
                        | SelectStmt::Reduce { value: e, span, .. }
                        | SelectStmt::Pool { value: e, span }
                        | SelectStmt::Granularity { value: e, span }
                        | SelectStmt::Output { value: e, span }
                        | SelectStmt::Budget { value: e, span, .. } => expr(e, *span)?,
                        SelectStmt::Keep { items, span } => {
                            items.iter().try_for_each(|(_, _, e)| expr(e, *span))?
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
