//! Rule 1 for `page_bound` (Quest): `score_lanes(D)` lanes share a page and a warp takes
//! `tuning.score_rows` rows of `32 / lanes` pages, their metadata loaded together. Lane `l`
//! fuses `max(q_t * kmax_t, q_t * kmin_t) = q_t * (q_t >= 0 ? kmax_t : kmin_t)` over its 8
//! adjacent channels (one 16-byte load per array) into its running sum (`fma`). For sum and
//! mean the sum runs on over the list's heads in order and one butterfly over the page's
//! lanes ends the page (mean then divides); for max every head gets a butterfly and the
//! heads fold with max: bit for bit the CPU executor's order (`lane_tree_fma` there). Pages
//! that are not full score `-inf` (the partial last page is kept by rule 6, not scored).

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};

use super::{LaneGrid, Shape};
use crate::codegen::nvptx::gen::Gen;
use crate::select::spec::{score_lanes, Reduce};

/// Warps per block.
pub const WARPS: u32 = 4;

/// Pages a block scores: `WARPS` warps of `score_rows` rows of `32 / score_lanes(D)`.
pub fn pages_per_block(s: &Shape) -> u32 {
    WARPS * s.tuning.score_rows * (32 / score_lanes(s.d))
}

pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (q, kmax, kmin, lens, out) = (p[0], p[1], p[2], p[3], p[4]);
    // `lanes` lanes share a page, 8 channels (16 bytes) each; a warp row holds 32 / lanes
    // pages, and a warp takes `rows` rows, all loads issued before the first use.
    let LaneGrid {
        lanes,
        per_lane,
        per_row,
        warp,
        sub,
        ll,
        ch,
        ..
    } = LaneGrid::new(g, s.d);
    let rows = s.tuning.score_rows;
    let bx = g.sreg("ctaid.x");
    let first = g.add(
        g.muli(bx, pages_per_block(s) as i64),
        g.muli(warp, (per_row * rows) as i64),
    );
    let sel = g.sreg("ctaid.y");
    let b = g.sreg("ctaid.z");
    let len = g.ld_i32(lens, b);
    let full = g.udivi(len, s.p as i64);
    let units = g.i32(s.units as i64);
    let pages: Vec<IntValue<'c>> = (0..rows)
        .map(|r| g.add(g.addi(first, (r * per_row) as i64), sub))
        .collect();
    // A page past the cache reads page 0 and writes nothing; past `full` it scores -inf.
    let safe: Vec<IntValue<'c>> = pages
        .iter()
        .map(|pg| {
            let inside = g.icmp(IntPredicate::ULT, *pg, units);
            g.seli(inside, *pg, g.i32(0))
        })
        .collect();
    // The lane's channels of the pages' metadata for KV head `kvh`: [B, Hkv, U, D].
    let meta =
        |g: &Gen<'c>, kvh: IntValue<'c>| -> Vec<(Vec<FloatValue<'c>>, Vec<FloatValue<'c>>)> {
            let row = g.add(g.muli(b, s.hkv as i64), kvh);
            safe.iter()
                .map(|pg| {
                    let at = g.add(
                        g.muli(g.add(g.muli(row, s.units as i64), *pg), s.d as i64),
                        ch,
                    );
                    (
                        g.ld_half_vec(kmax, at, per_lane, s.bf16),
                        g.ld_half_vec(kmin, at, per_lane, s.bf16),
                    )
                })
                .collect()
        };
    let nh = s.heads_per_list();
    let summed = s.op != Reduce::Max;
    let h0 = if s.per_kv {
        g.muli(sel, s.g as i64)
    } else {
        g.i32(0)
    };
    // Per KV group the metadata is loaded once; shared lists load it per KV head.
    let group_meta = s.per_kv.then(|| meta(g, sel));
    let accs: Vec<_> = (0..rows)
        .map(|_| g.var(g.f32t.into(), g.f32(0.0).into()))
        .collect();
    g.for_range(g.i32(0), g.i32(nh as i64), &mut |g, i| {
        let h = g.add(h0, i);
        let m = match &group_meta {
            Some(m) => m.clone(),
            None => meta(g, g.udivi(h, s.g as i64)),
        };
        let qbase = g.add(g.muli(g.add(g.muli(b, s.hq as i64), h), s.d as i64), ch);
        let qv: Vec<FloatValue<'c>> = (0..per_lane)
            .map(|e| g.ld_f32(q, g.addi(qbase, e as i64)))
            .collect();
        let first = g.eqi(i, 0);
        let pos: Vec<IntValue<'c>> = qv
            .iter()
            .map(|x| g.fcmp(FloatPredicate::OGE, *x, g.f32(0.0)))
            .collect();
        for ((hi, lo), acc) in m.iter().zip(&accs) {
            // Sums run on in the lane across heads; max takes each head's total.
            let mut v: FloatValue<'c> = if summed { g.getf(*acc) } else { g.f32(0.0) };
            for (e, x) in qv.iter().enumerate() {
                // max(q * kmax, q * kmin) = q * (q >= 0 ? kmax : kmin), fused.
                let m = g.self_f(pos[e], hi[e], lo[e]);
                v = g.fma(*x, m, v);
            }
            if summed {
                g.set(*acc, v);
            } else {
                let v = g.lane_sum(v, lanes);
                let folded = g.maxnum(g.getf(*acc), v);
                g.set(*acc, g.self_f(first, v, folded));
            }
        }
    });
    if summed {
        for acc in &accs {
            let mut v = g.lane_sum(g.getf(*acc), lanes);
            if s.op == Reduce::Mean {
                v = g.fdiv(v, g.f32(nh as f64));
            }
            g.set(*acc, v);
        }
    }
    let lead = g.eqi(ll, 0);
    g.if_then(lead, &mut |g| {
        let row = g.add(g.muli(b, s.hsel as i64), sel);
        for (pg, acc) in pages.iter().zip(&accs) {
            let inside = g.icmp(IntPredicate::ULT, *pg, units);
            g.if_then(inside, &mut |g| {
                let a = g.getf(*acc);
                let scored = g.icmp(IntPredicate::ULT, *pg, full);
                let v = g.self_f(scored, a, g.f32(f64::NEG_INFINITY));
                g.st_f32(out, g.add(g.muli(row, s.units as i64), *pg), v);
            });
        }
    });
}
