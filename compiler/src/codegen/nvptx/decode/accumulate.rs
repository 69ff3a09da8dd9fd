//! H2O's state update on the GPU (`accumulated`, rule 1), after the step's attention: one
//! block of [`WARPS`] warps per index list, in the order of `select::softmax` over the
//! list (bit for bit the CPU executor's `decode::accumulate`):
//!
//! 1. the base-2 logit of every list entry for each of the list's `G` heads, its dot as
//!    `exact`'s (`score_lanes(D)` lanes of 8 adjacent channels, `fma` in channel order,
//!    the butterfly), into `hl` `[B, Hq, K]`; empty entries (-1, only at the end of a list
//!    the top-k wrote) get `-inf`, which leaves every bit of the softmax of the others as
//!    it was;
//! 2. per head and chunk of 1024 entries `(m_c, z_c)` (a warp each: lane `t` adds the
//!    entries `t, t + 32, ...`, then the butterfly);
//! 3. per head the row's `(m, z)` (lane `t` folds the chunks `t, t + 32, ...`);
//! 4. per entry `exp2c(l - m) * (1 / z)` folded over the heads in order (`mean` divides
//!    once), added to `acc[b, list, j]`.
//!
//! With `Tuning::split_update`, step 1 runs in an entry of its own (`accumulate_logits`,
//! slices of each list over more blocks) and the per-list entry starts at step 2; each
//! logit is computed the same way, so the bits do not change.
//!
//! The top-k reads the scores where this writes them: for `accumulated` the runtime's
//! `scores` buffer is the state.

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;

use super::softmax::{chunk_stats, fold_heads, heads_row_stats};
use super::{LaneGrid, Shape};
use crate::codegen::nvptx::gen::Gen;
use crate::select::softmax::{CHUNK, LANES};

/// Warps per block (of both entries).
pub const WARPS: u32 = 16;
/// List entries a row of lanes loads together.
const UNROLL: u32 = 4;
const CH: u32 = CHUNK as u32;

/// Where a block's list is: its index `b * Hsel + sel`, its first query head and its KV
/// head, for `ctaid` = `(sel, b)`.
struct List<'c> {
    list: IntValue<'c>,
    h0: IntValue<'c>,
    kvh: IntValue<'c>,
    b: IntValue<'c>,
}

impl<'c> List<'c> {
    fn of(g: &Gen<'c>, s: &Shape, sel: IntValue<'c>, b: IntValue<'c>) -> List<'c> {
        List {
            list: g.add(g.muli(b, s.hsel as i64), sel),
            h0: g.add(g.muli(b, s.hq as i64), g.muli(sel, s.g as i64)),
            kvh: sel,
            b,
        }
    }

    /// The list's entry `t` in `idx`.
    fn entry(&self, g: &Gen<'c>, s: &Shape, t: IntValue<'c>) -> IntValue<'c> {
        g.add(g.muli(self.list, s.cap as i64), t)
    }

    /// Head `h`'s logit of entry `t` in `hl` `[B, Hq, K]`.
    fn hl_at(&self, g: &Gen<'c>, s: &Shape, h: IntValue<'c>, t: IntValue<'c>) -> IntValue<'c> {
        g.add(g.muli(g.add(self.h0, h), s.cap as i64), t)
    }
}

/// List entries a block of the separate logits entry takes (`Tuning::split_update`): a
/// whole number of the rounds step 1 walks, at least 512.
fn slice(s: &Shape) -> u32 {
    let step = round_entries(s);
    step * 512u32.div_ceil(step)
}

/// List entries step 1 covers in one round of its loop.
fn round_entries(s: &Shape) -> u32 {
    let lanes = crate::select::spec::score_lanes(s.d);
    WARPS * (32 / lanes) * UNROLL
}

/// Blocks of the separate logits entry per list.
pub fn slices(s: &Shape) -> u32 {
    s.cap.div_ceil(slice(s))
}

/// `accumulate_logits(q, k, idx, hl, acc)`, grid `(slices, Hsel, B)` (with
/// `Tuning::split_update`): step 1 over a slice of each list, in more blocks than lists.
pub fn emit_logits<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let l = List::of(g, s, g.sreg("ctaid.y"), g.sreg("ctaid.z"));
    let first = g.muli(g.sreg("ctaid.x"), slice(s) as i64);
    list_logits(g, s, p, &l, first, (slice(s) / round_entries(s)) as i64);
}

/// `accumulate(q, k, idx, hl, acc)`, grid `(Hsel, B)`: steps 1 (unless the separate
/// entry did it) to 4.
pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (idx, hl, acc) = (p[2], p[3], p[4]);
    let LaneGrid {
        tid, warp, lane, ..
    } = LaneGrid::new(g, s.d);
    let l = List::of(g, s, g.sreg("ctaid.x"), g.sreg("ctaid.y"));
    let cap = s.cap as i64;
    if !s.tuning.split_update {
        let rounds = s.cap.div_ceil(round_entries(s)) as i64;
        list_logits(g, s, p, &l, g.i32(0), rounds);
        g.barrier();
    }

    // 2. Chunk stats, a warp per (head, chunk).
    let nch = s.cap.div_ceil(CH);
    let mz = g.shared_array("acc_chunk_mz", g.f32t.into(), 2 * s.g * nch);
    g.for_step(
        warp,
        g.i32((s.g * nch) as i64),
        WARPS as i64,
        &mut |g, pair| {
            let h = g.udivi(pair, nch as i64);
            let c = g.uremi(pair, nch as i64);
            let xs: Vec<FloatValue<'c>> = (0..CH / LANES as u32)
                .map(|i| {
                    let t = g.add(
                        g.muli(c, CH as i64),
                        g.addi(lane, (i * LANES as u32) as i64),
                    );
                    let inside = g.icmp(IntPredicate::ULT, t, g.i32(cap));
                    let x = g.ld_f32(hl, l.hl_at(g, s, h, g.seli(inside, t, g.i32(0))));
                    g.self_f(inside, x, g.f32(f64::NEG_INFINITY))
                })
                .collect();
            let (m, z) = chunk_stats(g, &xs);
            g.if_then(g.eqi(lane, 0), &mut |g| {
                let at = g.muli(pair, 2);
                g.st_f32(mz, at, m);
                g.st_f32(mz, g.addi(at, 1), z);
            });
        },
    );
    g.barrier();

    // 3. Row stats, a warp per head: lane t folds the chunks t, t + 32, ... in order.
    let rs = g.shared_array("acc_row_mz", g.f32t.into(), 2 * s.g);
    let row_of = |g: &Gen<'c>, h: IntValue<'c>| (mz, g.muli(h, nch as i64));
    let ms = heads_row_stats(
        g,
        s,
        (warp, lane, WARPS),
        rs,
        &row_of,
        (nch, g.i32(nch as i64)),
    );

    // 4. Probabilities folded over the heads, added to the state.
    let state = g.muli(l.list, s.c as i64);
    g.for_step(tid, g.i32(cap), (WARPS * 32) as i64, &mut |g, t| {
        let j = g.ld_i32(idx, l.entry(g, s, t));
        g.if_then(g.icmp(IntPredicate::SGE, j, g.i32(0)), &mut |g| {
            let ls = (0..s.g).map(|h| g.ld_f32(hl, l.hl_at(g, s, g.i32(h as i64), t)));
            let x = fold_heads(g, s, ls.zip(ms.iter().copied()));
            let at = g.add(state, j);
            g.st_f32(acc, at, g.fadd(g.ld_f32(acc, at), x));
        });
    });
}

/// Step 1 for the entries `first + i` of list `l`, `i` below `rounds` rounds of
/// [`round_entries`]: the logit of each entry for each of the list's heads into `hl`.
fn list_logits<'c>(
    g: &Gen<'c>,
    s: &Shape,
    p: &[PointerValue<'c>],
    l: &List<'c>,
    first: IntValue<'c>,
    rounds: i64,
) {
    let (q, k, idx, hl) = (p[0], p[1], p[2], p[3]);
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
    let cap = s.cap as i64;
    // qv[head][channel] of this lane's channels.
    let qv: Vec<Vec<FloatValue<'c>>> = (0..s.g)
        .map(|h| {
            let at = g.add(g.muli(g.addi(l.h0, h as i64), s.d as i64), ch);
            (0..per_lane)
                .map(|e| g.ld_f32(q, g.addi(at, e as i64)))
                .collect()
        })
        .collect();
    let kbase = g.muli(g.add(g.muli(l.b, s.hkv as i64), l.kvh), s.c as i64);
    let scale = g.f32(s.scale_log2);
    g.for_range(g.i32(0), g.i32(rounds), &mut |g, it| {
        // Entry of row r: first + (it * UNROLL + r) * WARPS * per_row + warp * per_row + sub.
        let rows: Vec<(IntValue<'c>, IntValue<'c>, Vec<FloatValue<'c>>)> = (0..UNROLL)
            .map(|r| {
                let row = g.muli(
                    g.addi(g.muli(it, UNROLL as i64), r as i64),
                    (WARPS * per_row) as i64,
                );
                let t = g.add(g.add(first, row), g.add(g.muli(warp, per_row as i64), sub));
                let inside = g.icmp(IntPredicate::ULT, t, g.i32(cap));
                let j = g.ld_i32(idx, l.entry(g, s, g.seli(inside, t, g.i32(0))));
                let valid = g.and(inside, g.icmp(IntPredicate::SGE, j, g.i32(0)));
                let safe = g.seli(valid, j, g.i32(0));
                let at = g.add(g.muli(g.add(kbase, safe), s.d as i64), ch);
                (t, valid, g.ld_half_vec(k, at, per_lane, s.bf16))
            })
            .collect();
        for (t, valid, kv) in rows {
            let inside = g.icmp(IntPredicate::ULT, t, g.i32(cap));
            for (h, qh) in qv.iter().enumerate() {
                let lane_sum = qh
                    .iter()
                    .zip(&kv)
                    .fold(g.f32(0.0), |a, (x, y)| g.fma(*x, *y, a));
                let dot = g.lane_sum(lane_sum, lanes);
                let lg = g.self_f(valid, g.fmul(dot, scale), g.f32(f64::NEG_INFINITY));
                let write = g.and(inside, g.eqi(ll, 0));
                g.if_then(write, &mut |g| {
                    g.st_f32(hl, l.hl_at(g, s, g.i32(h as i64), t), lg)
                });
            }
        }
    });
}
