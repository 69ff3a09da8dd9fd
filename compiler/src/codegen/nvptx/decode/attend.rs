//! Rule 8 on the GPU: split-K decode attention over an index list (flash-decoding). A block
//! takes one chunk of `split` units of one list for one KV head and all `G` query heads of
//! that KV head (GQA: the keys are read once). A token is read by `D / 8` lanes, 16 bytes
//! each; a warp holds `32 / (D / 8)` tokens and keeps `tuning.unroll` steps of keys and values in
//! flight. Every lane group keeps an online softmax per query head in base 2 (the queries
//! are pre-scaled by `scale * log2(e)`); the groups merge through shuffles, the warps
//! through shared memory, and the block writes `(max, sum, acc[D])` per query head.
//! For `exact` scores the logits exist already (the logits entry wrote them for every
//! token): the kernel reads them instead of the keys.

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};

use super::{LaneGrid, Shape};
use crate::codegen::nvptx::gen::{Gen, Var};
use crate::select::spec::Source;

pub const WARPS: u32 = 4;
/// Channels per lane.
const VEC: u32 = 8;

/// Shared memory of the cross-warp merge.
pub fn smem_bytes(s: &Shape) -> u32 {
    merge_floats(s) * 4 + s.split * 4
}

fn merge_floats(s: &Shape) -> u32 {
    WARPS * s.g * (s.d + 2)
}

/// Online-softmax state of one lane for one query head.
struct Head<'c> {
    m: Var<'c>,
    l: Var<'c>,
    acc: Vec<Var<'c>>,
}

/// `m == -inf ? 0 : m`: the reference point of the exponentials (an empty state stays 0).
pub(crate) fn anchor<'c>(g: &Gen<'c>, m: FloatValue<'c>) -> FloatValue<'c> {
    let empty = g.fcmp(FloatPredicate::OEQ, m, g.f32(f64::NEG_INFINITY));
    g.self_f(empty, g.f32(0.0), m)
}

pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (q, k, v, idx, lens, part) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    // `exact` scores computed the logits of every token already: `k` is then the logits
    // buffer `[B, Hq, C]` (f32, base 2) and only the values are read.
    let from_logits = s.source == Source::Exact;
    // `lt` lanes share a token, 8 channels each (`gpu_support` admits the head dims where
    // that holds); a warp holds `tpw` tokens.
    let LaneGrid {
        lanes: lt,
        per_lane,
        per_row: tpw,
        tid,
        warp,
        lane,
        sub: grp,
        ch: ch0,
        ..
    } = LaneGrid::new(g, s.d);
    debug_assert_eq!(per_lane, VEC);
    let d = s.d as i64;
    let red = g.shared_array("attend_merge", g.f32t.into(), merge_floats(s));
    let units = g.shared_array("attend_units", g.i32t.into(), s.split);
    let c = g.sreg("ctaid.x");
    let kvh = g.sreg("ctaid.y");
    let b = g.sreg("ctaid.z");
    let sel = if s.per_kv { kvh } else { g.i32(0) };
    let len = g.ld_i32(lens, b);
    let first = g.muli(c, s.split as i64);
    let left = g.sub(g.i32(s.cap as i64), first);
    let nslots = {
        let sp = g.i32(s.split as i64);
        let fewer = g.icmp(IntPredicate::ULT, left, sp);
        g.seli(fewer, left, sp)
    };
    let row = g.add(
        g.muli(g.add(g.muli(b, s.hsel as i64), sel), s.cap as i64),
        first,
    );
    let kv_row = g.muli(
        g.sext64(g.add(g.muli(b, s.hkv as i64), kvh)),
        s.c as i64 * d,
    );
    // The chunk's units, staged in shared memory so that no load waits on another.
    g.for_step(tid, nslots, (WARPS * 32) as i64, &mut |g, t| {
        g.st_i32(units, t, g.ld_i32(idx, g.add(row, t)));
    });
    g.barrier();
    // This lane's channels of the G queries, in base 2.
    let qs: Vec<Vec<FloatValue<'c>>> = (0..s.g)
        .map(|i| {
            let h = g.addi(g.muli(kvh, s.g as i64), i as i64);
            let base = g.add(g.muli(g.add(g.muli(b, s.hq as i64), h), d), ch0);
            (0..VEC)
                .map(|e| {
                    let x = g.ld_f32(q, g.addi(base, e as i64));
                    g.fmul(x, g.f32(s.scale_log2))
                })
                .collect()
        })
        .collect();
    let ninf = g.f32(f64::NEG_INFINITY);
    let heads: Vec<Head<'c>> = (0..s.g)
        .map(|_| Head {
            m: g.var(g.f32t.into(), ninf.into()),
            l: g.var(g.f32t.into(), g.f32(0.0).into()),
            acc: (0..VEC)
                .map(|_| g.var(g.f32t.into(), g.f32(0.0).into()))
                .collect(),
        })
        .collect();
    let unroll = s.tuning.unroll;
    let tokens = s.split * s.p;
    let step = WARPS * tpw * unroll;
    let iters = tokens.div_ceil(step);
    g.for_range(g.i32(0), g.i32(iters as i64), &mut |g, it| {
        // Issue every load of the step first.
        let mut valid = vec![];
        let mut keys = vec![];
        let mut vals = vec![];
        for r in 0..unroll {
            let t = g.addi(g.muli(it, unroll as i64), r as i64);
            let ts = g.add(
                g.muli(g.add(g.muli(t, WARPS as i64), warp), tpw as i64),
                grp,
            );
            let slot = g.udivi(ts, s.p as i64);
            let off = g.uremi(ts, s.p as i64);
            let in_list = g.icmp(IntPredicate::ULT, slot, nslots);
            let si = g.seli(in_list, slot, g.i32(0));
            let u = g.ld_i32(units, si);
            let tok = g.add(g.muli(u, s.p as i64), off);
            let ok_u = g.icmp(IntPredicate::SGE, u, g.i32(0));
            let ok_t = g.icmp(IntPredicate::SLT, tok, len);
            let ok = g.and(in_list, g.and(ok_u, ok_t));
            let tok = g.seli(ok, tok, g.i32(0));
            let at = g.add(kv_row, g.sext64(g.add(g.muli(tok, d), ch0)));
            if from_logits {
                // The step's base-2 logits of the G heads (one broadcast load per head).
                keys.push(
                    (0..s.g)
                        .map(|i| {
                            let h = g.addi(g.muli(kvh, s.g as i64), i as i64);
                            let row = g.add(g.muli(b, s.hq as i64), h);
                            g.ld_f32(k, g.add(g.muli(row, s.c as i64), tok))
                        })
                        .collect(),
                );
            } else {
                keys.push(g.ld_half_vec(k, at, VEC, s.bf16));
            }
            vals.push(g.ld_half_vec(v, at, VEC, s.bf16));
            valid.push(ok);
        }
        for (i, h) in heads.iter().enumerate() {
            let logits: Vec<FloatValue<'c>> = (0..unroll as usize)
                .map(|r| {
                    if from_logits {
                        return g.self_f(valid[r], keys[r][i], ninf);
                    }
                    let mut x = g.f32(0.0);
                    for e in 0..VEC as usize {
                        x = g.fma(qs[i][e], keys[r][e], x);
                    }
                    let x = g.lane_sum(x, lt);
                    g.self_f(valid[r], x, ninf)
                })
                .collect();
            let old = g.getf(h.m);
            let mnew = logits.iter().fold(old, |a, x| g.fmax(a, *x));
            let mu = anchor(g, mnew);
            let corr = g.ex2(g.fsub(old, mu));
            let es: Vec<FloatValue<'c>> = logits.iter().map(|x| g.ex2(g.fsub(*x, mu))).collect();
            let mut l = g.fmul(g.getf(h.l), corr);
            for e in &es {
                l = g.fadd(l, *e);
            }
            g.set(h.l, l);
            for (ch, a) in h.acc.iter().enumerate() {
                let mut x = g.fmul(g.getf(*a), corr);
                for (r, e) in es.iter().enumerate() {
                    x = g.fma(*e, vals[r][ch], x);
                }
                g.set(*a, x);
            }
            g.set(h.m, mnew);
        }
    });
    // Merge the lane groups of a warp.
    let mut o = lt;
    while o < 32 {
        for h in &heads {
            let m = g.getf(h.m);
            let m_o = g.shfl_xor(m, o as i64);
            let l_o = g.shfl_xor(g.getf(h.l), o as i64);
            let acc_o: Vec<FloatValue<'c>> = h
                .acc
                .iter()
                .map(|a| g.shfl_xor(g.getf(*a), o as i64))
                .collect();
            let mn = g.fmax(m, m_o);
            let mu = anchor(g, mn);
            let wa = g.ex2(g.fsub(m, mu));
            let wb = g.ex2(g.fsub(m_o, mu));
            g.set(h.l, g.fma(l_o, wb, g.fmul(g.getf(h.l), wa)));
            for (a, x) in h.acc.iter().zip(acc_o) {
                g.set(*a, g.fma(x, wb, g.fmul(g.getf(*a), wa)));
            }
            g.set(h.m, mn);
        }
        o *= 2;
    }
    // Lane group 0 of each warp publishes its heads.
    let stride = d + 2;
    let group0 = g.icmp(IntPredicate::ULT, lane, g.i32(lt as i64));
    g.if_then(group0, &mut |g| {
        for (i, h) in heads.iter().enumerate() {
            let base = g.muli(g.addi(g.muli(warp, s.g as i64), i as i64), stride);
            for (e, a) in h.acc.iter().enumerate() {
                let at = g.add(g.addi(base, 2 + e as i64), ch0);
                g.st_f32(red, at, g.getf(*a));
            }
            let lane0 = g.eqi(lane, 0);
            g.if_then(lane0, &mut |g| {
                g.st_f32(red, base, g.getf(h.m));
                g.st_f32(red, g.addi(base, 1), g.getf(h.l));
            });
        }
    });
    g.barrier();
    // Merge the warps: thread x handles (head x / D, channel x % D).
    let per = g.i32((s.g * s.d) as i64);
    g.for_step(tid, per, (WARPS * 32) as i64, &mut |g, x| {
        let i = g.udivi(x, d);
        let t = g.uremi(x, d);
        let bases: Vec<IntValue<'c>> = (0..WARPS)
            .map(|w| g.muli(g.addi(i, (w * s.g) as i64), stride))
            .collect();
        let ms: Vec<FloatValue<'c>> = bases.iter().map(|b0| g.ld_f32(red, *b0)).collect();
        let mx = ms.iter().fold(ninf, |a, m| g.fmax(a, *m));
        let mu = anchor(g, mx);
        let mut l = g.f32(0.0);
        let mut acc = g.f32(0.0);
        for (b0, m) in bases.iter().zip(&ms) {
            let w = g.ex2(g.fsub(*m, mu));
            l = g.fma(g.ld_f32(red, g.addi(*b0, 1)), w, l);
            let a = g.ld_f32(red, g.add(g.addi(*b0, 2), t));
            acc = g.fma(a, w, acc);
        }
        let h = g.add(g.muli(kvh, s.g as i64), i);
        let prow = g.add(g.muli(g.add(g.muli(b, s.hq as i64), h), s.chunks as i64), c);
        let pbase = g.muli(prow, stride);
        g.st_f32(part, g.add(g.addi(pbase, 2), t), acc);
        let t0 = g.eqi(t, 0);
        g.if_then(t0, &mut |g| {
            g.st_f32(part, pbase, mx);
            g.st_f32(part, g.addi(pbase, 1), l);
        });
    });
}
