//! Source text -> AST. pest parses with `attn.pest`; one `lower_*` function per grammar
//! rule turns pest pairs into the owned AST. Syntax errors become diagnostics with the
//! rule names spelled for humans ("expected `;`").

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser;

use super::ast::*;
use crate::diagnostic::{Diagnostic, Span};

#[derive(pest_derive::Parser)]
#[grammar = "syntax/attn.pest"]
struct AttnParser;

/// Deepest bracket nesting accepted. Deeper input is rejected before parsing, so neither
/// the parser nor later recursive passes can exhaust the stack.
pub const MAX_NESTING: usize = 32;
/// Most binary operators in one expression (the tree depth of a left-leaning chain).
pub const MAX_OPERATORS: usize = 256;
/// Deepest expression tree accepted; later passes recurse over trees.
pub const MAX_DEPTH: usize = 96;

/// Parses a whole file. Either a tree or at least one error diagnostic.
pub fn parse(source: &str) -> Result<File, Vec<Diagnostic>> {
    if let Some(d) = check_nesting(source) {
        return Err(vec![d]);
    }
    let mut pairs =
        AttnParser::parse(Rule::file, source).map_err(|e| vec![syntax_error(source, e)])?;
    let file = pairs
        .next()
        .ok_or_else(|| vec![Diagnostic::error("E0001", "empty parse")])?;
    let mut lower = Lower {
        diags: vec![],
        nest: 0,
    };
    let file = lower.file(file);
    if lower.diags.is_empty() {
        Ok(file)
    } else {
        Err(lower.diags)
    }
}

fn check_nesting(source: &str) -> Option<Diagnostic> {
    let mut depth = 0usize;
    for (i, c) in source.char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(
                        Diagnostic::error(
                            "E0002",
                            format!("brackets nested more than {MAX_NESTING} deep"),
                        )
                        .with_label(Span::new(i, i + 1), "too deep")
                        .with_hint("split the expression, or name parts of it with `param`"),
                    );
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn rule_name(rule: Rule) -> String {
    let s = match rule {
        Rule::semi => "`;`",
        Rule::comma => "`,`",
        Rule::colon => "`:`",
        Rule::lparen => "`(`",
        Rule::rparen => "`)`",
        Rule::lbrace => "`{`",
        Rule::rbrace => "`}`",
        Rule::lbracket => "`[`",
        Rule::rbracket => "`]`",
        Rule::assign => "`=`",
        Rule::arrow => "`->`",
        Rule::ident => "a name",
        Rule::group_name => "a token group (`all`, `canvas` or a segment)",
        Rule::number => "a number",
        Rule::EOI => "end of file",
        Rule::expr | Rule::unary | Rule::postfix | Rule::paren | Rule::call => "an expression",
        Rule::prefix_op => "`-` or `!`",
        Rule::infix_op => "an operator",
        Rule::kw_param => "`param`",
        Rule::kw_per_head => "`per_head`",
        Rule::kw_layout => "`layout`",
        Rule::kw_canvas => "`canvas`",
        Rule::kw_tile => "`tile`",
        Rule::kw_order => "`order`",
        Rule::kw_tiled => "`tiled`",
        Rule::kw_raster => "`raster`",
        Rule::kw_segment => "`segment`",
        Rule::kw_prefix => "`prefix`",
        Rule::kw_suffix => "`suffix`",
        Rule::kw_valid => "`valid`",
        Rule::kw_pattern => "`pattern`",
        Rule::kw_on => "`on`",
        Rule::kw_tiles => "`tiles`",
        Rule::kw_tokens => "`tokens`",
        Rule::kw_see => "`see`",
        Rule::kw_kernel => "`kernel`",
        Rule::kw_attention => "`attention`",
        Rule::kw_dtype => "`dtype`",
        Rule::kw_score => "`score`",
        Rule::kw_input => "`input`",
        Rule::kw_true => "`true`",
        Rule::kw_false => "`false`",
        Rule::setting_kw => {
            "a setting (`heads`, `kv_heads`, `head_dim`, `value_dim`, `batch`, `scale`)"
        }
        Rule::param_decl => "`param`",
        Rule::layout_decl => "`layout`",
        Rule::pattern_decl => "`pattern`",
        Rule::kernel_decl => "`kernel`",
        Rule::kernel_kind => "a kernel kind (`attention`, `decode`, `select`)",
        Rule::kw_decode => "`decode`",
        Rule::kw_select => "`select`",
        Rule::select_decl => "`select`",
        Rule::kw_source | Rule::source_stmt => "`source`",
        Rule::kw_reduce | Rule::reduce_stmt => "`reduce`",
        Rule::kw_pool | Rule::pool_stmt => "`pool`",
        Rule::kw_granularity | Rule::granularity_stmt => "`granularity`",
        Rule::kw_keep | Rule::keep_stmt => "`keep`",
        Rule::kw_budget | Rule::budget_stmt => "`budget`",
        Rule::kw_output | Rule::output_stmt => "`output`",
        Rule::kw_outputs | Rule::outputs_stmt => "`outputs`",
        Rule::reduce_axis => "`rows` or `heads`",
        Rule::keep_kind | Rule::keep_item => "`sinks` or `recent`",
        Rule::budget_unit => "`tokens` or `ratio`",
        Rule::canvas_stmt => "`canvas`",
        Rule::tile_stmt => "`tile`",
        Rule::order_stmt => "`order`",
        Rule::segment_stmt => "`segment`",
        Rule::tiles_stmt => "`tiles:`",
        Rule::tokens_stmt => "`tokens:`",
        Rule::see_stmt => "`see`",
        Rule::dtype_stmt => "`dtype`",
        Rule::setting_stmt => "a setting",
        Rule::score_stmt => "`score:`",
        Rule::input_stmt => "`input`",
        Rule::override_stmt => "`NAME = value;`",
        Rule::list_lit => "a list `[...]`",
        Rule::per_head_list => "`per_head [...]`",
        Rule::index_suffix => "`[`",
        Rule::valid_clause => "`valid`",
        other => return format!("{other:?}"),
    };
    s.to_string()
}

fn syntax_error(source: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    // Point at the offending token (or the end of the file) rather than at nothing: a
    // word, or one other character.
    let rest = &source[start.min(source.len())..];
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    let tok_len = match rest.chars().next() {
        None => 0,
        Some(c) if word(c) => rest
            .char_indices()
            .find(|(_, c)| !word(*c))
            .map(|(i, _)| i)
            .unwrap_or(rest.len()),
        Some(c) => c.len_utf8(),
    };
    let tok_end = start + tok_len;
    let end = if end > start { end } else { tok_end.max(start) };
    let found = if start >= source.len() {
        "end of file".to_string()
    } else {
        let text: String = source[start..end.min(source.len())]
            .chars()
            .take(20)
            .collect();
        if text.is_empty() {
            "whitespace".to_string()
        } else {
            format!("`{text}`")
        }
    };
    let (message, label) = match &e.variant {
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } => {
            let mut names: Vec<String> = positives.iter().map(|r| rule_name(*r)).collect();
            names.sort();
            names.dedup();
            let expected = match names.len() {
                0 => String::new(),
                1 => names[0].clone(),
                n => format!("{} or {}", names[..n - 1].join(", "), names[n - 1]),
            };
            if !expected.is_empty() {
                (
                    format!("expected {expected}, found {found}"),
                    format!("expected {expected}"),
                )
            } else if !negatives.is_empty() {
                let n: Vec<String> = negatives.iter().map(|r| rule_name(*r)).collect();
                (
                    format!("unexpected {}", n.join(", ")),
                    "unexpected here".to_string(),
                )
            } else {
                (format!("unexpected {found}"), "unexpected here".to_string())
            }
        }
        ErrorVariant::CustomError { message } => (message.clone(), "here".to_string()),
    };
    let mut d = Diagnostic::error("E0001", format!("syntax error: {message}"))
        .with_label(Span::new(start, end), label);
    if message.contains("a name") && found.starts_with('`') {
        let word = found.trim_matches('`');
        if is_reserved(word) {
            d = d.with_hint(format!(
                "`{word}` is a keyword and cannot be used as a name"
            ));
        }
    }
    d
}

fn is_reserved(word: &str) -> bool {
    matches!(
        word,
        "param"
            | "per_head"
            | "layout"
            | "canvas"
            | "tile"
            | "order"
            | "tiled"
            | "raster"
            | "segment"
            | "prefix"
            | "suffix"
            | "valid"
            | "pattern"
            | "on"
            | "tiles"
            | "tokens"
            | "see"
            | "kernel"
            | "attention"
            | "dtype"
            | "input"
            | "true"
            | "false"
    )
}

fn span_of(p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

/// Lowers pest pairs into the AST, collecting the few errors that the grammar cannot
/// express (number overflow, over-long expressions).
struct Lower {
    diags: Vec<Diagnostic>,
    /// How many `expr` rules enclose the one being lowered.
    nest: usize,
}

/// Iterator over a pair's meaningful children: punctuation and keywords are dropped.
fn children(p: Pair<Rule>) -> impl Iterator<Item = Pair<Rule>> {
    p.into_inner().filter(|c| {
        !matches!(
            c.as_rule(),
            Rule::semi
                | Rule::comma
                | Rule::colon
                | Rule::lparen
                | Rule::rparen
                | Rule::lbrace
                | Rule::rbrace
                | Rule::lbracket
                | Rule::rbracket
                | Rule::assign
                | Rule::arrow
                | Rule::kw_param
                | Rule::kw_per_head
                | Rule::kw_layout
                | Rule::kw_canvas
                | Rule::kw_tile
                | Rule::kw_order
                | Rule::kw_segment
                | Rule::kw_valid
                | Rule::kw_pattern
                | Rule::kw_on
                | Rule::kw_tiles
                | Rule::kw_tokens
                | Rule::kw_see
                | Rule::kw_kernel
                | Rule::kw_attention
                | Rule::kw_dtype
                | Rule::kw_score
                | Rule::kw_input
                | Rule::kw_decode
                | Rule::kw_select
                | Rule::kw_source
                | Rule::kw_reduce
                | Rule::kw_pool
                | Rule::kw_granularity
                | Rule::kw_keep
                | Rule::kw_budget
                | Rule::EOI
        )
    })
}

impl Lower {
    fn file(&mut self, p: Pair<Rule>) -> File {
        let mut items = vec![];
        for c in children(p) {
            match c.as_rule() {
                Rule::param_decl => items.push(Item::Param(self.param_decl(c))),
                Rule::layout_decl => items.push(Item::Layout(self.layout_decl(c))),
                Rule::pattern_decl => items.push(Item::Pattern(self.pattern_decl(c))),
                Rule::kernel_decl => items.push(self.kernel_decl(c)),
                Rule::select_decl => items.push(Item::Select(self.select_decl(c))),
                _ => {}
            }
        }
        File { items }
    }

    fn ident(&mut self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: span_of(&p),
        }
    }

    fn param_decl(&mut self, p: Pair<Rule>) -> ParamDecl {
        let span = span_of(&p);
        let binds = children(p).map(|c| self.param_bind(c)).collect();
        ParamDecl { binds, span }
    }

    fn param_bind(&mut self, p: Pair<Rule>) -> ParamBind {
        let span = span_of(&p);
        let mut it = children(p);
        let name = it.next().map(|c| self.ident(c));
        let value = it.next().map(|c| self.param_value(c));
        match (name, value) {
            (Some(name), Some(value)) => ParamBind { name, value, span },
            _ => unreachable_bind(span),
        }
    }

    fn param_value(&mut self, p: Pair<Rule>) -> ParamValue {
        match p.as_rule() {
            Rule::per_head_list => {
                let inner = children(p).next();
                match inner {
                    Some(l) => ParamValue::PerHead(self.list_lit(l)),
                    None => ParamValue::List(ListLit {
                        items: vec![],
                        span: Span::DUMMY,
                    }),
                }
            }
            Rule::list_lit => ParamValue::List(self.list_lit(p)),
            _ => ParamValue::Expr(self.expr(p)),
        }
    }

    fn list_lit(&mut self, p: Pair<Rule>) -> ListLit {
        let span = span_of(&p);
        let items = children(p).map(|c| self.expr(c)).collect();
        ListLit { items, span }
    }

    fn layout_decl(&mut self, p: Pair<Rule>) -> LayoutDecl {
        let span = span_of(&p);
        let mut it = children(p);
        let name = it
            .next()
            .map(|c| self.ident(c))
            .unwrap_or_else(|| dummy_ident(span));
        let stmts = it.map(|c| self.layout_stmt(c)).collect();
        LayoutDecl { name, stmts, span }
    }

    fn layout_stmt(&mut self, p: Pair<Rule>) -> LayoutStmt {
        let span = span_of(&p);
        match p.as_rule() {
            Rule::param_decl => LayoutStmt::Param(self.param_decl(p)),
            Rule::canvas_stmt => LayoutStmt::Canvas {
                dims: self.expr_list_child(p),
                span,
            },
            Rule::tile_stmt => LayoutStmt::Tile {
                dims: self.expr_list_child(p),
                span,
            },
            Rule::order_stmt => {
                let order = if children(p).any(|c| c.as_rule() == Rule::kw_raster) {
                    Order::Raster
                } else {
                    Order::Tiled
                };
                LayoutStmt::Order { order, span }
            }
            _ => LayoutStmt::Segment(self.segment_stmt(p)),
        }
    }

    fn expr_list_child(&mut self, p: Pair<Rule>) -> Vec<Expr> {
        match children(p).find(|c| c.as_rule() == Rule::expr_list) {
            Some(l) => self.expr_list(l),
            None => vec![],
        }
    }

    fn expr_list(&mut self, p: Pair<Rule>) -> Vec<Expr> {
        children(p).map(|c| self.expr(c)).collect()
    }

    fn segment_stmt(&mut self, p: Pair<Rule>) -> SegmentDecl {
        let span = span_of(&p);
        let mut name = dummy_ident(span);
        let mut placement = Placement::Prefix;
        let mut size = None;
        let mut valid = None;
        for c in children(p) {
            match c.as_rule() {
                Rule::ident => name = self.ident(c),
                Rule::kw_prefix => placement = Placement::Prefix,
                Rule::kw_suffix => placement = Placement::Suffix,
                Rule::expr => size = Some(self.expr(c)),
                Rule::valid_clause => valid = children(c).next().map(|e| self.expr(e)),
                _ => {}
            }
        }
        let size = size.unwrap_or(Expr {
            kind: ExprKind::Int(0),
            span,
        });
        SegmentDecl {
            name,
            placement,
            size,
            valid,
            span,
        }
    }

    fn pattern_decl(&mut self, p: Pair<Rule>) -> PatternDecl {
        let span = span_of(&p);
        let mut it = children(p);
        let name = it
            .next()
            .map(|c| self.ident(c))
            .unwrap_or_else(|| dummy_ident(span));
        let layout = it
            .next()
            .map(|c| self.ident(c))
            .unwrap_or_else(|| dummy_ident(span));
        let stmts = it.map(|c| self.pattern_stmt(c)).collect();
        PatternDecl {
            name,
            layout,
            stmts,
            span,
        }
    }

    fn pattern_stmt(&mut self, p: Pair<Rule>) -> PatternStmt {
        let span = span_of(&p);
        match p.as_rule() {
            Rule::param_decl => PatternStmt::Param(self.param_decl(p)),
            Rule::tiles_stmt => PatternStmt::Tiles {
                expr: self.first_expr(p, span),
                span,
            },
            Rule::tokens_stmt => PatternStmt::Tokens {
                expr: self.first_expr(p, span),
                span,
            },
            _ => {
                let mut it = children(p);
                // `group_name` is `canvas` or a name: its text and span are the group's.
                let from = it
                    .next()
                    .map(|c| self.ident(c))
                    .unwrap_or_else(|| dummy_ident(span));
                let to = it
                    .next()
                    .map(|c| self.ident(c))
                    .unwrap_or_else(|| dummy_ident(span));
                PatternStmt::See { from, to, span }
            }
        }
    }

    fn first_expr(&mut self, p: Pair<Rule>, span: Span) -> Expr {
        match children(p).find(|c| c.as_rule() == Rule::expr) {
            Some(e) => self.expr(e),
            None => Expr {
                kind: ExprKind::Bool(true),
                span,
            },
        }
    }

    /// `kernel K = attention(P) {...}` is an attention kernel; `decode(S)` and
    /// `select(S)` are kernels over a `select` declaration.
    fn kernel_decl(&mut self, p: Pair<Rule>) -> Item {
        let span = span_of(&p);
        let mut it = children(p);
        let name = it
            .next()
            .map(|c| self.ident(c))
            .unwrap_or_else(|| dummy_ident(span));
        let kind = it
            .next()
            .and_then(|c| c.into_inner().next())
            .map(|c| c.as_rule());
        let target = it
            .next()
            .map(|c| self.ident(c))
            .unwrap_or_else(|| dummy_ident(span));
        let stmts = it.map(|c| self.kernel_stmt(c)).collect();
        let kind = match kind {
            Some(Rule::kw_decode) => SelectKernelKind::Decode,
            Some(Rule::kw_select) => SelectKernelKind::Select,
            _ => {
                return Item::Kernel(KernelDecl {
                    name,
                    pattern: target,
                    stmts,
                    span,
                })
            }
        };
        Item::SelectKernel(SelectKernelDecl {
            name,
            kind,
            select: target,
            stmts,
            span,
        })
    }

    fn select_decl(&mut self, p: Pair<Rule>) -> SelectDecl {
        let span = span_of(&p);
        let mut it = children(p);
        let name = it
            .next()
            .map(|c| self.ident(c))
            .unwrap_or_else(|| dummy_ident(span));
        let stmts = it.map(|c| self.select_stmt(c)).collect();
        SelectDecl { name, stmts, span }
    }

    fn select_stmt(&mut self, p: Pair<Rule>) -> SelectStmt {
        let span = span_of(&p);
        let rule = p.as_rule();
        if rule == Rule::param_decl {
            return SelectStmt::Param(self.param_decl(p));
        }
        let mut words: Vec<(String, Span)> = vec![];
        let mut exprs: Vec<Expr> = vec![];
        let mut keeps = vec![];
        for c in children(p) {
            match c.as_rule() {
                Rule::expr => exprs.push(self.expr(c)),
                Rule::keep_item => {
                    let mut kit = children(c);
                    let kind = kit.next().map(|k| (k.as_str() == "recent", span_of(&k)));
                    let value = kit.next().map(|e| self.expr(e));
                    if let (Some((recent, kspan)), Some(value)) = (kind, value) {
                        let kind = if recent {
                            KeepKind::Recent
                        } else {
                            KeepKind::Sinks
                        };
                        keeps.push((kind, kspan, value));
                    }
                }
                _ => words.push((c.as_str().to_string(), span_of(&c))),
            }
        }
        // A budget's allocation follows its value.
        let alloc = if rule == Rule::budget_stmt && exprs.len() > 1 {
            exprs.pop()
        } else {
            None
        };
        let value = exprs.pop().unwrap_or(Expr {
            kind: ExprKind::Int(0),
            span,
        });
        let word = words.pop().unwrap_or_default();
        match rule {
            Rule::source_stmt => SelectStmt::Source { value, span },
            Rule::reduce_stmt => SelectStmt::Reduce {
                axis: if word.0 == "rows" {
                    ReduceAxis::Rows
                } else {
                    ReduceAxis::Heads
                },
                axis_span: word.1,
                value,
                span,
            },
            Rule::pool_stmt => SelectStmt::Pool { value, span },
            Rule::granularity_stmt => SelectStmt::Granularity { value, span },
            Rule::keep_stmt => SelectStmt::Keep { items: keeps, span },
            Rule::output_stmt => SelectStmt::Output { value, span },
            _ => SelectStmt::Budget {
                value,
                unit: if word.0 == "ratio" {
                    BudgetUnit::Ratio
                } else {
                    BudgetUnit::Tokens
                },
                unit_span: word.1,
                alloc,
                span,
            },
        }
    }

    fn kernel_stmt(&mut self, p: Pair<Rule>) -> KernelStmt {
        let span = span_of(&p);
        match p.as_rule() {
            Rule::param_decl => KernelStmt::Param(self.param_decl(p)),
            Rule::dtype_stmt => {
                let name = children(p)
                    .next()
                    .map(|c| self.ident(c))
                    .unwrap_or_else(|| dummy_ident(span));
                KernelStmt::Dtype { name, span }
            }
            Rule::setting_stmt => {
                let mut it = children(p);
                let (key, key_span) = match it.next() {
                    Some(k) => (
                        Setting::from_keyword(k.as_str()).unwrap_or(Setting::Heads),
                        span_of(&k),
                    ),
                    None => (Setting::Heads, span),
                };
                let value = it.next().map(|c| self.expr(c)).unwrap_or(Expr {
                    kind: ExprKind::Int(0),
                    span,
                });
                KernelStmt::Setting {
                    key,
                    key_span,
                    value,
                    span,
                }
            }
            Rule::score_stmt => KernelStmt::Score {
                expr: self.first_expr(p, span),
                span,
            },
            Rule::input_stmt => {
                let mut it = children(p);
                let name = it
                    .next()
                    .map(|c| self.ident(c))
                    .unwrap_or_else(|| dummy_ident(span));
                let dtype = it
                    .next()
                    .map(|c| self.ident(c))
                    .unwrap_or_else(|| dummy_ident(span));
                let dims = it.next().map(|c| self.expr_list(c)).unwrap_or_default();
                KernelStmt::Input {
                    name,
                    dtype,
                    dims,
                    span,
                }
            }
            Rule::outputs_stmt => KernelStmt::Outputs {
                names: self.expr_list_child(p),
                span,
            },
            _ => {
                let mut it = children(p);
                let name = it
                    .next()
                    .map(|c| self.ident(c))
                    .unwrap_or_else(|| dummy_ident(span));
                let value = match it.next() {
                    Some(v) => self.param_value(v),
                    None => ParamValue::Expr(Expr {
                        kind: ExprKind::Int(0),
                        span,
                    }),
                };
                KernelStmt::Override(ParamBind { name, value, span })
            }
        }
    }

    // ---- expressions ---------------------------------------------------------------

    fn expr(&mut self, p: Pair<Rule>) -> Expr {
        self.nest += 1;
        let e = self.expr_inner(p);
        self.nest -= 1;
        if self.nest == 0 && depth(&e) > MAX_DEPTH {
            self.diags.push(
                Diagnostic::error(
                    "E0003",
                    format!("expression nested more than {MAX_DEPTH} deep"),
                )
                .with_label(e.span, "too deep")
                .with_hint("split it into named parameters"),
            );
            return Expr {
                kind: ExprKind::Int(0),
                span: e.span,
            };
        }
        e
    }

    fn expr_inner(&mut self, p: Pair<Rule>) -> Expr {
        let span = span_of(&p);
        // expr = unary (infix_op unary)*: precedence climbing over the flat list.
        let mut operands: Vec<Expr> = vec![];
        let mut ops: Vec<(BinOp, Span)> = vec![];
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::unary => operands.push(self.unary(c)),
                Rule::infix_op => {
                    let op = BinOp::from_symbol(c.as_str()).unwrap_or(BinOp::Add);
                    ops.push((op, span_of(&c)));
                }
                _ => {}
            }
        }
        if ops.len() > MAX_OPERATORS {
            self.diags.push(
                Diagnostic::error(
                    "E0003",
                    format!(
                        "expression has {} operators (at most {MAX_OPERATORS})",
                        ops.len()
                    ),
                )
                .with_label(span, "too long")
                .with_hint("split it into named parameters"),
            );
            return Expr {
                kind: ExprKind::Int(0),
                span,
            };
        }
        if operands.len() != ops.len() + 1 {
            return Expr {
                kind: ExprKind::Int(0),
                span,
            };
        }
        let mut operands = operands.into_iter();
        let first = operands.next().unwrap_or(Expr {
            kind: ExprKind::Int(0),
            span,
        });
        let rest: Vec<(BinOp, Expr)> = ops.into_iter().map(|(o, _)| o).zip(operands).collect();
        let mut pos = 0;
        climb(first, &rest, &mut pos, 0)
    }

    fn unary(&mut self, p: Pair<Rule>) -> Expr {
        let mut prefixes: Vec<(UnOp, Span)> = vec![];
        let mut operand = None;
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::prefix_op => {
                    let op = if c.as_str() == "-" {
                        UnOp::Neg
                    } else {
                        UnOp::Not
                    };
                    prefixes.push((op, span_of(&c)));
                }
                Rule::postfix => operand = Some(self.postfix(c)),
                _ => {}
            }
        }
        let mut e = operand.unwrap_or(Expr {
            kind: ExprKind::Int(0),
            span: Span::DUMMY,
        });
        for (op, s) in prefixes.into_iter().rev() {
            // `-5` is the literal -5, which also lets i64::MIN be written.
            e = match (op, &e.kind) {
                (UnOp::Neg, ExprKind::Int(v)) => Expr {
                    kind: ExprKind::Int(v.wrapping_neg()),
                    span: s.to(e.span),
                },
                (UnOp::Neg, ExprKind::Float(v)) => Expr {
                    kind: ExprKind::Float(-v),
                    span: s.to(e.span),
                },
                _ => {
                    let span = s.to(e.span);
                    Expr {
                        kind: ExprKind::Unary(op, Box::new(e)),
                        span,
                    }
                }
            };
        }
        e
    }

    fn postfix(&mut self, p: Pair<Rule>) -> Expr {
        let mut it = p.into_inner();
        let mut e = match it.next() {
            Some(prim) => self.primary(prim),
            None => Expr {
                kind: ExprKind::Int(0),
                span: Span::DUMMY,
            },
        };
        for suffix in it {
            let s = span_of(&suffix);
            let indices = children(suffix)
                .next()
                .map(|l| self.expr_list(l))
                .unwrap_or_default();
            let span = e.span.to(s);
            e = Expr {
                kind: ExprKind::Index {
                    base: Box::new(e),
                    indices,
                },
                span,
            };
        }
        e
    }

    fn primary(&mut self, p: Pair<Rule>) -> Expr {
        let span = span_of(&p);
        match p.as_rule() {
            Rule::number => self.number(p.as_str(), span),
            Rule::kw_true => Expr {
                kind: ExprKind::Bool(true),
                span,
            },
            Rule::kw_false => Expr {
                kind: ExprKind::Bool(false),
                span,
            },
            Rule::ident => Expr {
                kind: ExprKind::Name(p.as_str().to_string()),
                span,
            },
            Rule::paren => match children(p).next() {
                Some(inner) => {
                    let mut e = self.expr(inner);
                    e.span = span;
                    e
                }
                None => Expr {
                    kind: ExprKind::Int(0),
                    span,
                },
            },
            Rule::call => {
                let mut it = children(p);
                let func = it
                    .next()
                    .map(|c| self.ident(c))
                    .unwrap_or_else(|| dummy_ident(span));
                let args = it.map(|a| self.arg(a)).collect();
                Expr {
                    kind: ExprKind::Call { func, args },
                    span,
                }
            }
            _ => Expr {
                kind: ExprKind::Int(0),
                span,
            },
        }
    }

    fn arg(&mut self, p: Pair<Rule>) -> Arg {
        let span = span_of(&p);
        let mut name = None;
        let mut value = Expr {
            kind: ExprKind::Int(0),
            span,
        };
        for c in children(p) {
            match c.as_rule() {
                Rule::ident => name = Some(self.ident(c)),
                Rule::expr => value = self.expr(c),
                _ => {}
            }
        }
        Arg { name, value, span }
    }

    fn number(&mut self, text: &str, span: Span) -> Expr {
        let is_float = text.contains(['.', 'e', 'E']);
        if is_float {
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Expr {
                    kind: ExprKind::Float(v),
                    span,
                },
                _ => {
                    self.diags.push(
                        Diagnostic::error("E0004", "number out of range")
                            .with_label(span, "not a finite float"),
                    );
                    Expr {
                        kind: ExprKind::Float(0.0),
                        span,
                    }
                }
            }
        } else {
            match text.parse::<i64>() {
                Ok(v) => Expr {
                    kind: ExprKind::Int(v),
                    span,
                },
                Err(_) => {
                    self.diags.push(
                        Diagnostic::error("E0004", "integer literal too large")
                            .with_label(span, "does not fit in 64 bits")
                            .with_hint(format!("integers range from {} to {}", i64::MIN, i64::MAX)),
                    );
                    Expr {
                        kind: ExprKind::Int(0),
                        span,
                    }
                }
            }
        }
    }
}

/// Precedence climbing over `first (op operand)*`, left-associative.
fn climb(mut lhs: Expr, rest: &[(BinOp, Expr)], pos: &mut usize, min_prec: u8) -> Expr {
    while *pos < rest.len() && rest[*pos].0.precedence() >= min_prec {
        let (op, ref rhs0) = rest[*pos];
        *pos += 1;
        let mut rhs = rhs0.clone();
        while *pos < rest.len() && rest[*pos].0.precedence() > op.precedence() {
            let next_prec = rest[*pos].0.precedence();
            rhs = climb(rhs, rest, pos, next_prec);
        }
        let span = lhs.span.to(rhs.span);
        lhs = Expr {
            kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
            span,
        };
    }
    lhs
}

/// Tree depth, computed with an explicit stack so that it cannot overflow.
fn depth(e: &Expr) -> usize {
    let mut max = 0;
    let mut stack = vec![(e, 1usize)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        match &e.kind {
            ExprKind::Unary(_, a) => stack.push((a, d + 1)),
            ExprKind::Binary(_, a, b) => {
                stack.push((a, d + 1));
                stack.push((b, d + 1));
            }
            ExprKind::Call { args, .. } => stack.extend(args.iter().map(|a| (&a.value, d + 1))),
            ExprKind::Index { base, indices } => {
                stack.push((base, d + 1));
                stack.extend(indices.iter().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

fn dummy_ident(span: Span) -> Ident {
    Ident {
        name: String::new(),
        span,
    }
}

fn unreachable_bind(span: Span) -> ParamBind {
    ParamBind {
        name: dummy_ident(span),
        value: ParamValue::Expr(Expr {
            kind: ExprKind::Int(0),
            span,
        }),
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr_of(src: &str) -> Expr {
        let f = parse(&format!("pattern p on l {{ tiles: {src}; }}")).expect("parses");
        match &f.items[0] {
            Item::Pattern(p) => match &p.stmts[0] {
                PatternStmt::Tiles { expr, .. } => expr.clone(),
                _ => panic!("not tiles"),
            },
            _ => panic!("not a pattern"),
        }
    }

    fn show(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Int(v) => v.to_string(),
            ExprKind::Name(n) => n.clone(),
            ExprKind::Binary(op, a, b) => format!("({} {} {})", show(a), op.symbol(), show(b)),
            ExprKind::Unary(UnOp::Not, a) => format!("!{}", show(a)),
            ExprKind::Unary(UnOp::Neg, a) => format!("-{}", show(a)),
            ExprKind::Call { func, args } => {
                format!(
                    "{}({})",
                    func.name,
                    args.iter()
                        .map(|a| show(&a.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(
            show(&expr_of("a || b && c == 1 + 2 * 3")),
            "(a || (b && (c == (1 + (2 * 3)))))"
        );
        assert_eq!(show(&expr_of("a - b - c")), "((a - b) - c)");
        assert_eq!(
            show(&expr_of("abs(dh) <= R && !x")),
            "((abs(dh) <= R) && !x)"
        );
        assert_eq!(show(&expr_of("-3 * -x")), "(-3 * -x)");
    }

    #[test]
    fn spans_cover_operands() {
        let e = expr_of("abs(dh) <= R");
        let ExprKind::Binary(_, a, b) = &e.kind else {
            panic!()
        };
        assert!(e.span.contains(a.span) && e.span.contains(b.span));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!(
            "pattern p on l {{ tiles: {}1{}; }}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        let errs = parse(&src).unwrap_err();
        assert_eq!(errs[0].code, "E0002");
    }

    #[test]
    fn missing_semicolon_is_named() {
        let errs = parse("layout l { canvas (H) }").unwrap_err();
        assert!(errs[0].message.contains("`;`"), "{}", errs[0].message);
    }
}
