//! Text form of the kernel IR (`attnc compile --emit ir`).

use std::fmt::Write;

use super::*;
use crate::sema::expr::{print_plain, Ty};

pub fn type_text(t: &Type) -> String {
    match t {
        Type::Tile {
            scope,
            elem,
            rows,
            cols,
        } => format!("{} {}[{rows}x{cols}]", scope.name(), elem.name()),
        Type::Rows { elem, rows } => format!("rows {}[{rows}]", elem.name()),
        Type::Tensor {
            elem,
            heads,
            tokens,
            dim,
        } => format!("global {}[B, {heads}, {tokens}, {dim}]", elem.name()),
        Type::Index => "index".into(),
        Type::Class => "class".into(),
    }
}

fn op_text(k: &Kernel, op: &Op) -> String {
    match op {
        Op::Arg(t) => format!("arg {}", t.name()),
        Op::Load(t) => format!("load {}", t.name()),
        Op::Const(v) => format!("const {v}"),
        Op::Dot { transpose_b } => {
            if *transpose_b {
                "dot_t".into()
            } else {
                "dot".into()
            }
        }
        Op::Scale(c) => format!("scale {c}"),
        Op::Convert(e) => format!("convert {}", e.name()),
        Op::ScoreMod(f) => format!("score_mod e{}", f.0),
        Op::Mask(fs) => {
            let f: Vec<String> = fs.iter().map(|f| format!("e{}", f.0)).collect();
            format!("mask [{}]", f.join(", "))
        }
        Op::SoftmaxUpdate { exp2 } => {
            if *exp2 {
                "softmax_update exp2".into()
            } else {
                "softmax_update exp".into()
            }
        }
        Op::LogSumExp { exp2 } => {
            if *exp2 {
                "log_sum_exp exp2".into()
            } else {
                "log_sum_exp exp".into()
            }
        }
        Op::KvLoop { source, region } => {
            let src = match source {
                KvSource::Closed => {
                    format!("closed form ({} box(es))", k.info.closed_boxes.unwrap_or(0))
                }
                KvSource::Table => format!("table ({} runs)", k.info.table_runs),
            };
            format!("kv_loop {src} region {}", region.0)
        }
        Op::Carry(i) => format!("carry {i}"),
        other => other.name().to_string(),
    }
}

fn val(k: &Kernel, v: &Value) -> String {
    if v.result == 0 && k.node(v.node).results.len() <= 1 {
        format!("%{}", v.node.index())
    } else {
        format!("%{}#{}", v.node.index(), v.result)
    }
}

pub fn elem_fn_text(k: &Kernel, f: &ElemFn) -> String {
    let axes: Vec<&str> = k.info.axes.iter().map(String::as_str).collect();
    let e = |x: &Option<Expr>| {
        x.as_ref()
            .map(|x| print_plain(x, &axes))
            .unwrap_or_else(|| "all".into())
    };
    match f {
        ElemFn::Score(x) => {
            let mut s = print_plain(x, &axes);
            if x.ty == Ty::Int {
                s = format!("float({s})");
            }
            format!("score = {s}")
        }
        ElemFn::Mask {
            heads,
            tiles,
            tokens,
            see,
        } => {
            let see: Vec<String> = see
                .iter()
                .map(|(a, b)| format!("{} -> {}", group(k, *a), group(k, *b)))
                .collect();
            format!(
                "mask heads {}: tiles {}; tokens {}; see {}",
                crate::sema::spec::ranges(heads),
                e(tiles),
                e(tokens),
                if see.is_empty() {
                    "none".into()
                } else {
                    see.join(", ")
                }
            )
        }
    }
}

fn group(k: &Kernel, g: Group) -> String {
    match g {
        Group::All => "all".into(),
        Group::Canvas => "canvas".into(),
        Group::Segment(i) => k
            .info
            .segments
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("segment{i}")),
    }
}

pub fn print(k: &Kernel) -> String {
    let i = &k.info;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "kernel {}: {} q tile {} x kv tile {}, head_dim {}, value_dim {}, heads {}/{}, batch {}, tokens {}",
        i.name, i.elem.name(), i.tile_q, i.tile_k, i.head_dim, i.value_dim, i.heads, i.kv_heads, i.batch, i.tokens
    );
    for (n, f) in k.elem_fns.iter().enumerate() {
        let _ = writeln!(o, "  e{n}: {}", elem_fn_text(k, f));
    }
    region(k, RegionId(0), 1, &mut o);
    o
}

fn region(k: &Kernel, r: RegionId, indent: usize, o: &mut String) {
    let pad = "  ".repeat(indent);
    for n in k.region_nodes(r) {
        let node = k.node(n);
        let ops: Vec<String> = k.operands(n).iter().map(|v| val(k, v)).collect();
        let res: Vec<String> = node.results.iter().map(type_text).collect();
        let lhs = if node.results.is_empty() {
            String::new()
        } else {
            format!("%{} = ", n.index())
        };
        let operands = if ops.is_empty() {
            String::new()
        } else {
            format!(" {}", ops.join(", "))
        };
        let ty = if res.is_empty() {
            String::new()
        } else {
            format!(" : {}", res.join(", "))
        };
        let _ = writeln!(o, "{pad}{lhs}{}{operands}{ty}", op_text(k, &node.op));
        if let Op::KvLoop { region: body, .. } = node.op {
            let _ = writeln!(o, "{pad}{{");
            region(k, body, indent + 1, o);
            let _ = writeln!(o, "{pad}}}");
        }
    }
}
