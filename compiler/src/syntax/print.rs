//! The AST's text form (`attnc compile --emit ast`): one line per declaration or statement,
//! with byte spans, expressions fully parenthesised so that precedence is visible.

use std::fmt::Write;

use super::ast::*;
use crate::diagnostic::Span;

pub fn print_file(f: &File) -> String {
    let mut out = String::new();
    for item in &f.items {
        match item {
            Item::Param(p) => param_decl(&mut out, p, 0),
            Item::Layout(l) => {
                line(&mut out, 0, &format!("layout {}", l.name.name), l.span);
                for s in &l.stmts {
                    match s {
                        LayoutStmt::Param(p) => param_decl(&mut out, p, 1),
                        LayoutStmt::Canvas { dims, span } => {
                            line(&mut out, 1, &format!("canvas ({})", list(dims)), *span)
                        }
                        LayoutStmt::Tile { dims, span } => {
                            line(&mut out, 1, &format!("tile ({})", list(dims)), *span)
                        }
                        LayoutStmt::Order { order, span } => {
                            let o = match order {
                                Order::Tiled => "tiled",
                                Order::Raster => "raster",
                            };
                            line(&mut out, 1, &format!("order {o}"), *span)
                        }
                        LayoutStmt::Segment(s) => {
                            let place = match s.placement {
                                Placement::Prefix => "prefix",
                                Placement::Suffix => "suffix",
                            };
                            let valid = s
                                .valid
                                .as_ref()
                                .map(|v| format!(" valid {}", expr(v)))
                                .unwrap_or_default();
                            line(
                                &mut out,
                                1,
                                &format!(
                                    "segment {} {place} {}{valid}",
                                    s.name.name,
                                    expr(&s.size)
                                ),
                                s.span,
                            )
                        }
                    }
                }
            }
            Item::Pattern(p) => {
                line(
                    &mut out,
                    0,
                    &format!("pattern {} on {}", p.name.name, p.layout.name),
                    p.span,
                );
                for s in &p.stmts {
                    match s {
                        PatternStmt::Param(d) => param_decl(&mut out, d, 1),
                        PatternStmt::Tiles { expr: e, span } => {
                            line(&mut out, 1, &format!("tiles: {}", expr(e)), *span)
                        }
                        PatternStmt::Tokens { expr: e, span } => {
                            line(&mut out, 1, &format!("tokens: {}", expr(e)), *span)
                        }
                        PatternStmt::See { from, to, span } => line(
                            &mut out,
                            1,
                            &format!("see {} -> {}", from.name, to.name),
                            *span,
                        ),
                    }
                }
            }
            Item::Kernel(k) => {
                line(
                    &mut out,
                    0,
                    &format!("kernel {} = attention({})", k.name.name, k.pattern.name),
                    k.span,
                );
                kernel_stmts(&mut out, &k.stmts);
            }
            Item::Select(d) => {
                line(&mut out, 0, &format!("select {}", d.name.name), d.span);
                for st in &d.stmts {
                    select_stmt(&mut out, st);
                }
            }
            Item::SelectKernel(k) => {
                let kind = match k.kind {
                    SelectKernelKind::Decode => "decode",
                    SelectKernelKind::Select => "select",
                };
                line(
                    &mut out,
                    0,
                    &format!("kernel {} = {kind}({})", k.name.name, k.select.name),
                    k.span,
                );
                kernel_stmts(&mut out, &k.stmts);
            }
        }
    }
    out
}

fn kernel_stmts(out: &mut String, stmts: &[KernelStmt]) {
    for s in stmts {
        match s {
            KernelStmt::Param(d) => param_decl(out, d, 1),
            KernelStmt::Dtype { name, span } => {
                line(out, 1, &format!("dtype {}", name.name), *span)
            }
            KernelStmt::Setting {
                key, value, span, ..
            } => line(out, 1, &format!("{} {}", key.keyword(), expr(value)), *span),
            KernelStmt::Score { expr: e, span } => {
                line(out, 1, &format!("score: {}", expr(e)), *span)
            }
            KernelStmt::Input {
                name,
                dtype,
                dims,
                span,
            } => line(
                out,
                1,
                &format!("input {}: {}[{}]", name.name, dtype.name, list(dims)),
                *span,
            ),
            KernelStmt::Outputs { names, span } => {
                line(out, 1, &format!("outputs {}", list(names)), *span)
            }
            KernelStmt::Override(b) => line(
                out,
                1,
                &format!("override {} = {}", b.name.name, value(&b.value)),
                b.span,
            ),
        }
    }
}

fn select_stmt(out: &mut String, st: &SelectStmt) {
    match st {
        SelectStmt::Param(d) => param_decl(out, d, 1),
        SelectStmt::Source { value, span } => {
            line(out, 1, &format!("source {}", expr(value)), *span)
        }
        SelectStmt::Reduce {
            axis, value, span, ..
        } => {
            let axis = match axis {
                ReduceAxis::Rows => "rows",
                ReduceAxis::Heads => "heads",
            };
            line(out, 1, &format!("reduce {axis}: {}", expr(value)), *span)
        }
        SelectStmt::Pool { value, span } => line(out, 1, &format!("pool {}", expr(value)), *span),
        SelectStmt::Output { value, span } => {
            line(out, 1, &format!("output {}", expr(value)), *span)
        }
        SelectStmt::Granularity { value, span } => {
            line(out, 1, &format!("granularity {}", expr(value)), *span)
        }
        SelectStmt::Keep { items, span } => {
            let items: Vec<String> = items
                .iter()
                .map(|(k, _, e)| {
                    let k = match k {
                        KeepKind::Sinks => "sinks",
                        KeepKind::Recent => "recent",
                    };
                    format!("{k} {}", expr(e))
                })
                .collect();
            line(out, 1, &format!("keep {}", items.join(", ")), *span)
        }
        SelectStmt::Budget {
            value,
            unit,
            alloc,
            span,
            ..
        } => {
            let unit = match unit {
                BudgetUnit::Tokens => "tokens",
                BudgetUnit::Ratio => "ratio",
            };
            let alloc = alloc
                .as_ref()
                .map(|a| format!(" {}", expr(a)))
                .unwrap_or_default();
            line(
                out,
                1,
                &format!("budget {} {unit}{alloc}", expr(value)),
                *span,
            )
        }
    }
}

fn line(out: &mut String, indent: usize, text: &str, span: Span) {
    let _ = writeln!(
        out,
        "{}{text}  @{}..{}",
        "  ".repeat(indent),
        span.start,
        span.end
    );
}

fn param_decl(out: &mut String, p: &ParamDecl, indent: usize) {
    for b in &p.binds {
        line(
            out,
            indent,
            &format!("param {} = {}", b.name.name, value(&b.value)),
            b.span,
        );
    }
}

fn value(v: &ParamValue) -> String {
    match v {
        ParamValue::Expr(e) => expr(e),
        ParamValue::List(l) => format!("[{}]", list(&l.items)),
        ParamValue::PerHead(l) => format!("per_head [{}]", list(&l.items)),
    }
}

fn list(items: &[Expr]) -> String {
    items.iter().map(expr).collect::<Vec<_>>().join(", ")
}

/// An expression in source syntax with every operation parenthesised.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => format!("{v:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Unary(UnOp::Neg, a) => format!("(-{})", expr(a)),
        ExprKind::Unary(UnOp::Not, a) => format!("(!{})", expr(a)),
        ExprKind::Binary(op, a, b) => format!("({} {} {})", expr(a), op.symbol(), expr(b)),
        ExprKind::Call { func, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}: {}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("{}({})", func.name, args.join(", "))
        }
        ExprKind::Index { base, indices } => format!("{}[{}]", expr(base), list(indices)),
    }
}
