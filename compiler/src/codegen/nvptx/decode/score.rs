//! Rule 1 for `page_bound` (Quest): one warp per page. Lane `l` adds
//! `max(q_t * kmax_t, q_t * kmin_t)` over the channels `t = l, l + 32, ...`, a butterfly over
//! the lanes (16, 8, 4, 2, 1) sums the lanes, and the list's query heads fold in order
//! (sum, max, or sum then divide for mean): bit for bit the CPU executor's order. Pages that
//! are not full score `-inf` (the partial last page is kept by rule 6, not scored).

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;

use super::Shape;
use crate::codegen::nvptx::gen::Gen;
use crate::select::spec::Reduce;

/// Warps (pages) per block.
pub const WARPS: u32 = 4;

pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (q, kmax, kmin, lens, out) = (p[0], p[1], p[2], p[3], p[4]);
    let tid = g.sreg("tid.x");
    let warp = g.udivi(tid, 32);
    let lane = g.uremi(tid, 32);
    let bx = g.sreg("ctaid.x");
    let pg = g.add(g.muli(bx, WARPS as i64), warp);
    let sel = g.sreg("ctaid.y");
    let b = g.sreg("ctaid.z");
    let in_range = g.icmp(IntPredicate::ULT, pg, g.i32(s.units as i64));
    g.if_then(in_range, &mut |g| {
        let len = g.ld_i32(lens, b);
        let full = g.udivi(len, s.p as i64);
        let res = g.var(g.f32t.into(), g.f32(f64::NEG_INFINITY).into());
        let scored = g.icmp(IntPredicate::ULT, pg, full);
        g.if_then(scored, &mut |g| {
            let nh = s.heads_per_list();
            let h0 = if s.per_kv {
                g.muli(sel, s.g as i64)
            } else {
                g.i32(0)
            };
            // The metadata row of a KV head for this page: [B, Hkv, U, D].
            let meta = |g: &Gen<'c>, kvh: IntValue<'c>| {
                let row = g.add(g.muli(b, s.hkv as i64), kvh);
                let row = g.add(g.muli(row, s.units as i64), pg);
                let base = g.muli(row, s.d as i64);
                let per_lane = s.d / 32;
                let mut hi = vec![];
                let mut lo = vec![];
                for j in 0..per_lane {
                    let t = g.add(g.addi(base, 32 * j as i64), lane);
                    let a = g.ld_half_vec(kmax, t, 1, s.bf16)[0];
                    let c = g.ld_half_vec(kmin, t, 1, s.bf16)[0];
                    hi.push(a);
                    lo.push(c);
                }
                (hi, lo)
            };
            // Per KV group the metadata is loaded once; shared lists reload per KV head.
            let shared_meta = s.per_kv.then(|| meta(g, sel));
            let acc = g.var(g.f32t.into(), g.f32(0.0).into());
            g.for_range(g.i32(0), g.i32(nh as i64), &mut |g, i| {
                let h = g.add(h0, i);
                let (hi, lo) = match &shared_meta {
                    Some(m) => m.clone(),
                    None => meta(g, g.udivi(h, s.g as i64)),
                };
                let qbase = g.muli(g.add(g.muli(b, s.hq as i64), h), s.d as i64);
                let mut v: FloatValue<'c> = g.f32(0.0);
                for (j, (a, c)) in hi.iter().zip(&lo).enumerate() {
                    let t = g.add(g.addi(qbase, 32 * j as i64), lane);
                    let qv = g.ld_f32(q, t);
                    let up = g.maxnum(g.fmul(qv, *a), g.fmul(qv, *c));
                    v = g.fadd(v, up);
                }
                for off in [16, 8, 4, 2, 1] {
                    let o = g.shfl_xor(v, off);
                    v = g.fadd(v, o);
                }
                let first = g.eqi(i, 0);
                let old = g.getf(acc);
                let folded = match s.op {
                    Reduce::Sum | Reduce::Mean => g.fadd(old, v),
                    Reduce::Max => g.maxnum(old, v),
                };
                g.set(acc, g.self_f(first, v, folded));
            });
            let mut a = g.getf(acc);
            if s.op == Reduce::Mean {
                a = g.fdiv(a, g.f32(nh as f64));
            }
            g.set(res, a);
        });
        let lane0 = g.eqi(lane, 0);
        g.if_then(lane0, &mut |g| {
            let row = g.add(g.muli(b, s.hsel as i64), sel);
            let at = g.add(g.muli(row, s.units as i64), pg);
            g.st_f32(out, at, g.getf(res));
        });
    });
}
