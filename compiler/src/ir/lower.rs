//! Spec + schedule -> kernel IR: the FlashAttention-2 forward for one (batch, head, query
//! tile): load the query tile, loop over the schedule's key tiles with an online softmax,
//! normalise, store (and, with `outputs lse;`, each row's log-sum-exp).

use super::*;
use crate::pattern::Schedule;
use crate::sema::spec::Spec;

pub fn lower(spec: &Spec, sched: &Schedule) -> Kernel {
    let g = &sched.geom;
    let elem = Elem::from_dtype(spec.dtype);
    let closed_boxes = sched
        .variants
        .iter()
        .map(|v| v.closed.as_ref().map(|c| c.boxes.len()))
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().max().unwrap_or(0));
    let info = KernelInfo {
        name: spec.kernel.clone(),
        elem,
        tile_q: g.tile_tokens,
        tile_k: g.tile_tokens,
        head_dim: spec.head_dim,
        value_dim: spec.value_dim,
        heads: spec.heads,
        kv_heads: spec.kv_heads,
        batch: spec.batch,
        tokens: g.total_tokens,
        scale: spec.scale,
        axes: spec.layout.axes().iter().map(|s| s.to_string()).collect(),
        segments: spec
            .layout
            .segments
            .iter()
            .map(|s| s.name.clone())
            .collect(),
        partial_tiles: sched.variants.iter().map(|v| v.stats.partial_tiles).sum(),
        closed_boxes,
        table_runs: sched.variants.iter().map(|v| v.runs.len()).sum(),
    };
    let (bq, bk, d, dv) = (info.tile_q, info.tile_k, info.head_dim, info.value_dim);
    let mut k = Kernel::new(info);
    let r0 = RegionId(0);
    let f32 = Elem::F32;
    let reg = |elem, rows, cols| Type::Tile {
        scope: Scope::Register,
        elem,
        rows,
        cols,
    };
    let shared = |elem, rows, cols| Type::Tile {
        scope: Scope::Shared,
        elem,
        rows,
        cols,
    };
    let rows = |n| Type::Rows {
        elem: Elem::F32,
        rows: n,
    };
    let tensor = |heads, dim| Type::Tensor {
        elem,
        heads,
        tokens: g.total_tokens,
        dim,
    };

    let q = k.add(Op::Arg(Tensor::Q), vec![tensor(spec.heads, d)], r0, &[]);
    let kt = k.add(Op::Arg(Tensor::K), vec![tensor(spec.kv_heads, d)], r0, &[]);
    let vt = k.add(Op::Arg(Tensor::V), vec![tensor(spec.kv_heads, dv)], r0, &[]);
    let o = k.add(Op::Arg(Tensor::O), vec![tensor(spec.heads, dv)], r0, &[]);
    let lse = spec.outputs.lse.map(|_| {
        let ty = Type::Tensor {
            elem: Elem::F32,
            heads: spec.heads,
            tokens: g.total_tokens,
            dim: 1,
        };
        k.add(Op::Arg(Tensor::Lse), vec![ty], r0, &[])
    });
    let pid = k.add(
        Op::ProgramId,
        vec![Type::Index, Type::Index, Type::Index],
        r0,
        &[],
    );
    let (b, h, qt) = (value(pid, 0), value(pid, 1), value(pid, 2));
    let kvh = k.add(Op::KvHead, vec![Type::Index], r0, &[h]);
    let qtile = k.add(
        Op::Load(Tensor::Q),
        vec![reg(elem, bq, d)],
        r0,
        &[value(q, 0), b, h, qt],
    );
    let m0 = k.add(Op::Const(f64::NEG_INFINITY), vec![rows(bq)], r0, &[]);
    let l0 = k.add(Op::Const(0.0), vec![rows(bq)], r0, &[]);
    let acc0 = k.add(Op::Const(0.0), vec![reg(f32, bq, dv)], r0, &[]);

    // Element functions: the mask of each head variant, the score modifier.
    let mask_fns: Vec<ElemId> = spec
        .variants
        .iter()
        .map(|v| {
            k.elem_fns.push(ElemFn::Mask {
                heads: v.heads.clone(),
                tiles: v.tiles.clone(),
                tokens: v.tokens.clone(),
                see: spec.rules.clone(),
            });
            ElemId(k.elem_fns.len() as u32 - 1)
        })
        .collect();
    let score_fn = spec.score.as_ref().map(|e| {
        k.elem_fns.push(ElemFn::Score(e.clone()));
        ElemId(k.elem_fns.len() as u32 - 1)
    });

    let source = if k.info.closed_boxes.is_some() {
        KvSource::Closed
    } else {
        KvSource::Table
    };
    let body = k.add_region(r0);
    let carried = vec![rows(bq), rows(bq), reg(f32, bq, dv)];
    let lp = k.add(
        Op::KvLoop {
            source,
            region: body,
        },
        carried,
        r0,
        &[qt, value(m0, 0), value(l0, 0), value(acc0, 0)],
    );
    // Loop body.
    let kv = k.add(Op::KvTile, vec![Type::Index, Type::Class], body, &[]);
    let m = k.add(Op::Carry(0), vec![rows(bq)], body, &[]);
    let l = k.add(Op::Carry(1), vec![rows(bq)], body, &[]);
    let acc = k.add(Op::Carry(2), vec![reg(f32, bq, dv)], body, &[]);
    let ktile = k.add(
        Op::Load(Tensor::K),
        vec![shared(elem, bk, d)],
        body,
        &[value(kt, 0), b, value(kvh, 0), value(kv, 0)],
    );
    let vtile = k.add(
        Op::Load(Tensor::V),
        vec![shared(elem, bk, dv)],
        body,
        &[value(vt, 0), b, value(kvh, 0), value(kv, 0)],
    );
    let s = k.add(
        Op::Dot { transpose_b: true },
        vec![reg(f32, bq, bk)],
        body,
        &[value(qtile, 0), value(ktile, 0)],
    );
    let mut s = k.add(
        Op::Scale(spec.scale),
        vec![reg(f32, bq, bk)],
        body,
        &[value(s, 0)],
    );
    if let Some(f) = score_fn {
        s = k.add(
            Op::ScoreMod(f),
            vec![reg(f32, bq, bk)],
            body,
            &[value(s, 0), b, h, qt, value(kv, 0)],
        );
    }
    let s = k.add(
        Op::Mask(mask_fns),
        vec![reg(f32, bq, bk)],
        body,
        &[value(s, 0), h, qt, value(kv, 0), value(kv, 1)],
    );
    let rm = k.add(Op::RowMax, vec![rows(bq)], body, &[value(s, 0)]);
    let su = k.add(
        Op::SoftmaxUpdate { exp2: false },
        vec![reg(f32, bq, bk), rows(bq), rows(bq)],
        body,
        &[value(s, 0), value(m, 0), value(rm, 0)],
    );
    let (p, m1, alpha) = (value(su, 0), value(su, 1), value(su, 2));
    let rs = k.add(Op::RowSum, vec![rows(bq)], body, &[p]);
    let l1 = k.add(
        Op::RescaleAdd,
        vec![rows(bq)],
        body,
        &[value(l, 0), alpha, value(rs, 0)],
    );
    let p16 = k.add(Op::Convert(elem), vec![reg(elem, bq, bk)], body, &[p]);
    let pv = k.add(
        Op::Dot { transpose_b: false },
        vec![reg(f32, bq, dv)],
        body,
        &[value(p16, 0), value(vtile, 0)],
    );
    let acc1 = k.add(
        Op::RescaleAdd,
        vec![reg(f32, bq, dv)],
        body,
        &[value(acc, 0), alpha, value(pv, 0)],
    );
    k.add(Op::Yield, vec![], body, &[m1, value(l1, 0), value(acc1, 0)]);

    // After the loop.
    let out = k.add(
        Op::Normalize,
        vec![reg(f32, bq, dv)],
        r0,
        &[value(lp, 2), value(lp, 1)],
    );
    let out = k.add(
        Op::Convert(elem),
        vec![reg(elem, bq, dv)],
        r0,
        &[value(out, 0)],
    );
    k.add(
        Op::Store,
        vec![],
        r0,
        &[value(o, 0), b, h, qt, value(out, 0)],
    );
    if let Some(lse) = lse {
        let rows_lse = k.add(
            Op::LogSumExp { exp2: false },
            vec![rows(bq)],
            r0,
            &[value(lp, 0), value(lp, 1)],
        );
        k.add(
            Op::Store,
            vec![],
            r0,
            &[value(lse, 0), b, h, qt, value(rows_lse, 0)],
        );
    }
    k
}
