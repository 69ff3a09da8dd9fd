//! Rule 1 for `exact` on the GPU, in the order of `select::softmax` (bit for bit the CPU
//! executor's): two entries before the top-k.
//!
//! - **logits**, one block per chunk of `softmax::CHUNK` tokens of a (sequence, KV head):
//!   `L = score_lanes(D)` lane sums share a token (8 adjacent channels, one 16-byte load
//!   each), two a thread (lanes `t` and `t + L/2`, so `L/2` threads a token), each the `G`
//!   query heads' running `fma` sums; the butterfly's first level (offset `L/2`) adds the
//!   two in registers, a reduce-scatter over the threads does the others (the same pairs
//!   as the plain butterfly, so the same bits) and leaves each thread a head's dot for
//!   each of its halves. The base-2 logits go to shared memory, then to `logits`
//!   `[B, Hq, C]`, and one warp per head writes the chunk's `(m_c, z_c)` to `stats`
//!   `[B, Hq, chunks, 2]`.
//! - **score**, one block per 8 chunks of a list: every block folds the row stats of its
//!   list's heads (`m`, `z`: 32 lane sums over the chunks, a butterfly), then turns each
//!   token's logits into probabilities `exp2c(l - m) * (1 / z)` and reduces them over the
//!   heads.

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;

use super::softmax::{chunk_stats, fold_heads, heads_row_stats};
use super::topk_wide::{self, Pass0};
use super::{LaneGrid, Shape};
use crate::codegen::nvptx::gen::Gen;
use crate::select::softmax::{CHUNK, LANES};

/// Warps per block of both entries.
pub const WARPS: u32 = 8;
/// Tokens a thread of the score entry loads together (their G logits each).
const UNROLL: u32 = 8;

/// Token rows a warp of the logits entry loads together: the attention's unroll (so
/// `--tune` tries 2, 4 and 8; each row is two 16-byte loads a thread).
fn logits_rows(s: &Shape) -> u32 {
    s.tuning.unroll
}
const CH: u32 = CHUNK as u32;

/// Chunks of the normaliser a block of the score entry takes. (16 was slower on the H200:
/// 0.088 -> 0.097 ms, bench/RESULTS.md; the prologue that folds the row stats was not
/// what bound it.)
const SPAN: u32 = 8;

/// Blocks of the score entry per list.
pub fn score_blocks(s: &Shape) -> u32 {
    chunks(s).div_ceil(SPAN)
}

/// Chunks of the normaliser per row.
pub fn chunks(s: &Shape) -> u32 {
    s.c.div_ceil(CH)
}

/// Where a thread of a logits entry sits: `L = score_lanes(D)` lane sums a token, two a
/// thread (`halves`; one when `L = 1`), so `tl = L / halves` threads a token and
/// `per_row` tokens a warp row; this thread's token of the row (`sub`), its place among
/// the token's threads (`tt`) and the first channel of each lane sum it holds (`chs`:
/// lanes `tt` and `tt + tl`).
struct Lanes<'c> {
    pub grid: LaneGrid<'c>,
    pub tl: u32,
    pub per_row: u32,
    pub sub: IntValue<'c>,
    pub tt: IntValue<'c>,
    pub chs: Vec<IntValue<'c>>,
}

/// The query a thread holds: `[half][head][channel]`.
type Query<'c> = Vec<Vec<Vec<FloatValue<'c>>>>;

impl<'c> Lanes<'c> {
    pub fn new(g: &Gen<'c>, s: &Shape) -> Lanes<'c> {
        let grid = LaneGrid::new(g, s.d);
        let halves = if grid.lanes >= 2 { 2 } else { 1 };
        let tl = grid.lanes / halves;
        let tt = g.uremi(grid.lane, tl as i64);
        let chs = (0..halves)
            .map(|hf| g.muli(g.addi(tt, (hf * tl) as i64), grid.per_lane as i64))
            .collect();
        Lanes {
            sub: g.udivi(grid.lane, tl as i64),
            per_row: 32 / tl,
            tl,
            tt,
            chs,
            grid,
        }
    }

    /// The list's `G` query heads from head `h0`, this thread's channels.
    pub fn query(
        &self,
        g: &Gen<'c>,
        s: &Shape,
        q: PointerValue<'c>,
        h0: IntValue<'c>,
    ) -> Query<'c> {
        self.chs
            .iter()
            .map(|ch| {
                (0..s.g)
                    .map(|h| {
                        let at = g.add(g.muli(g.addi(h0, h as i64), s.d as i64), *ch);
                        (0..self.grid.per_lane)
                            .map(|e| g.ld_f32(q, g.addi(at, e as i64)))
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    /// This thread's keys of a token whose row starts at element `row` of `k`:
    /// `[half][channel]`.
    pub fn keys(
        &self,
        g: &Gen<'c>,
        s: &Shape,
        k: PointerValue<'c>,
        row: IntValue<'c>,
    ) -> Vec<Vec<FloatValue<'c>>> {
        self.chs
            .iter()
            .map(|ch| g.ld_half_vec(k, g.add(row, *ch), self.grid.per_lane, s.bf16))
            .collect()
    }

    /// A token's `G` base-2 logits (`-inf` unless `valid`) from this thread's `keys`,
    /// summed in the lane tree's order: per kept half, its heads' logits, the first head
    /// and whether this thread writes them (straight-line code: the callers compute
    /// several tokens' before they [`Lanes::store`] any, so that their chains interleave).
    pub fn logits(
        &self,
        g: &Gen<'c>,
        s: &Shape,
        qv: &Query<'c>,
        keys: &[Vec<FloatValue<'c>>],
        valid: IntValue<'c>,
    ) -> Vec<Kept<'c>> {
        // dots[half][head]: each lane sum as the plain lanes compute it.
        let dots: Vec<Vec<FloatValue<'c>>> = qv
            .iter()
            .zip(keys)
            .map(|(qh, kh)| {
                qh.iter()
                    .map(|qc| {
                        qc.iter()
                            .zip(kh)
                            .fold(g.f32(0.0), |acc, (a, x)| g.fma(*a, *x, acc))
                    })
                    .collect()
            })
            .collect();
        let scale = g.f32(s.scale_log2);
        reduce_dots(g, self.tt, self.tl, dots)
            .into_iter()
            .map(|(vals, first_head, writer)| {
                let ls = vals
                    .iter()
                    .map(|v| g.self_f(valid, g.fmul(*v, scale), g.f32(f64::NEG_INFINITY)))
                    .collect();
                (ls, first_head, writer)
            })
            .collect()
    }

    /// Chunk-local token `t`'s logits ([`Lanes::logits`]) into `sh[h * CHUNK + t]`.
    pub fn store(&self, g: &Gen<'c>, sh: PointerValue<'c>, t: IntValue<'c>, kept: &[Kept<'c>]) {
        for (ls, first_head, writer) in kept {
            g.if_then(*writer, &mut |g| {
                for (i, l) in ls.iter().enumerate() {
                    let h = g.addi(*first_head, i as i64);
                    g.st_f32(sh, g.add(g.muli(h, CH as i64), t), *l);
                }
            });
        }
    }
}

/// A token's logits that one thread keeps: the heads' values, the first head, whether
/// this thread writes them.
type Kept<'c> = (Vec<FloatValue<'c>>, IntValue<'c>, IntValue<'c>);

/// Where a block's chunk is: chunk `c` of list (`b`, `kvh`), its first token `start`, the
/// sequence's length `len`, the list's first query head `h0`.
struct Chunk<'c> {
    pub c: IntValue<'c>,
    pub start: IntValue<'c>,
    pub len: IntValue<'c>,
    pub h0: IntValue<'c>,
    /// The list's first key row in `k` (`(b * Hkv + kvh) * C`).
    pub kbase: IntValue<'c>,
}

impl<'c> Chunk<'c> {
    pub fn new(
        g: &Gen<'c>,
        s: &Shape,
        lens: PointerValue<'c>,
        (c, kvh, b): (IntValue<'c>, IntValue<'c>, IntValue<'c>),
    ) -> Chunk<'c> {
        Chunk {
            c,
            start: g.muli(c, CH as i64),
            len: g.ld_i32(lens, b),
            h0: g.add(g.muli(b, s.hq as i64), g.muli(kvh, s.g as i64)),
            kbase: g.muli(g.add(g.muli(b, s.hkv as i64), kvh), s.c as i64),
        }
    }

    /// After a barrier: the chunk's logits from `sh` to `logits`, coalesced, then its
    /// stats (a warp per head) to `stats`.
    pub fn write(
        &self,
        g: &Gen<'c>,
        s: &Shape,
        grid: &LaneGrid<'c>,
        sh: PointerValue<'c>,
        (logits, stats): (PointerValue<'c>, PointerValue<'c>),
    ) {
        let (tid, warp, lane) = (grid.tid, grid.warp, grid.lane);
        let nch = chunks(s);
        let row0 = g.muli(self.h0, s.c as i64);
        g.for_step(
            tid,
            g.i32((s.g * CH) as i64),
            (WARPS * 32) as i64,
            &mut |g, i| {
                let h = g.udivi(i, CH as i64);
                let t = g.uremi(i, CH as i64);
                let j = g.add(self.start, t);
                g.if_then(g.icmp(IntPredicate::ULT, j, self.len), &mut |g| {
                    let at = g.add(g.add(row0, g.muli(h, s.c as i64)), j);
                    g.st_f32(logits, at, g.ld_f32(sh, i));
                });
            },
        );
        g.for_step(warp, g.i32(s.g as i64), WARPS as i64, &mut |g, h| {
            let base = g.muli(h, CH as i64);
            let xs: Vec<FloatValue<'c>> = (0..CH / LANES as u32)
                .map(|i| g.ld_f32(sh, g.add(base, g.addi(lane, (i * LANES as u32) as i64))))
                .collect();
            let (m, z) = chunk_stats(g, &xs);
            g.if_then(g.eqi(lane, 0), &mut |g| {
                let at = g.muli(g.add(g.muli(g.add(self.h0, h), nch as i64), self.c), 2);
                g.st_f32(stats, at, m);
                g.st_f32(stats, g.addi(at, 1), z);
            });
        });
    }
}

/// `logits(q, k, lens, logits, stats)`, the keys loaded into registers. (Bulk copies into
/// a ring of shared-memory stages were slower on the H200: 0.91 ms a step against 0.754,
/// docs/kv-selection-gpu.md.)
pub fn emit_logits<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (q, k, lens, logits, stats) = (p[0], p[1], p[2], p[3], p[4]);
    let ln = Lanes::new(g, s);
    let warp = ln.grid.warp;
    let at = (g.sreg("ctaid.x"), g.sreg("ctaid.y"), g.sreg("ctaid.z"));
    let ck = Chunk::new(g, s, lens, at);
    let (start, len) = (ck.start, ck.len);
    let sh = g.shared_array("exact_logits", g.f32t.into(), s.g * CH);
    let live = g.icmp(IntPredicate::ULT, start, len);
    g.if_then(live, &mut |g| {
        let qv = ln.query(g, s, q, ck.h0);
        let rows = CH / (WARPS * ln.per_row);
        let unroll = logits_rows(s).min(rows);
        g.for_range(g.i32(0), g.i32((rows / unroll) as i64), &mut |g, it| {
            // Local token of row r: ((it * unroll + r) * WARPS + warp) * per_row + sub.
            let locals: Vec<IntValue<'c>> = (0..unroll)
                .map(|r| {
                    let row = g.add(
                        g.muli(g.addi(g.muli(it, unroll as i64), r as i64), WARPS as i64),
                        warp,
                    );
                    g.add(g.muli(row, ln.per_row as i64), ln.sub)
                })
                .collect();
            // keys[row][half][channel]
            let keys: Vec<Vec<Vec<FloatValue<'c>>>> = locals
                .iter()
                .map(|t| {
                    let j = g.add(start, *t);
                    let safe = g.seli(g.icmp(IntPredicate::ULT, j, len), j, start);
                    ln.keys(g, s, k, g.muli(g.add(ck.kbase, safe), s.d as i64))
                })
                .collect();
            let kept: Vec<Vec<Kept<'c>>> = locals
                .iter()
                .zip(&keys)
                .map(|(t, kv)| {
                    let valid = g.icmp(IntPredicate::ULT, g.add(start, *t), len);
                    ln.logits(g, s, &qv, kv, valid)
                })
                .collect();
            for (t, k) in locals.iter().zip(&kept) {
                ln.store(g, sh, *t, k);
            }
        });
        g.barrier();
        ck.write(g, s, &ln.grid, sh, (logits, stats));
    });
}

/// `score(logits, stats, lens, work, scores)` for lists of one KV group, `SPAN` chunks a
/// block; for long lists it also counts the top-k's first digit (`work`, as
/// `topk_wide`).
pub fn emit_score<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (logits, stats, lens, work, scores) = (p[0], p[1], p[2], p[3], p[4]);
    let tid = g.sreg("tid.x");
    let warp = g.udivi(tid, 32);
    let lane = g.uremi(tid, 32);
    let c = g.sreg("ctaid.x");
    let sel = g.sreg("ctaid.y");
    let b = g.sreg("ctaid.z");
    let len = g.ld_i32(lens, b);
    // Long lists: the top-k's first radix pass counts the scores here.
    let pass0 = topk_wide::fused_first_pass(s).then(|| {
        let shape = (score_blocks(s), WARPS * 32);
        Pass0::begin(g, s, lens, work, (c, sel, b), shape)
    });
    let start = g.muli(c, (SPAN * CH) as i64);
    let nch = chunks(s);
    let mz = g.shared_array("exact_mz", g.f32t.into(), 2 * s.g);
    let live = g.icmp(IntPredicate::ULT, start, len);
    g.if_then(live, &mut |g| {
        let h0 = g.add(g.muli(b, s.hq as i64), g.muli(sel, s.g as i64));
        let used = g.udivi(g.addi(len, CH as i64 - 1), CH as i64);
        // Row stats of head h: lane t takes the chunks t, t + 32, ... in order; per head
        // its maximum and the reciprocal of its normaliser (rounded once).
        let row_of = |g: &Gen<'c>, h: IntValue<'c>| (stats, g.muli(g.add(h0, h), nch as i64));
        let ms = heads_row_stats(g, s, (warp, lane, WARPS), mz, &row_of, (nch, used));
        let out_row = g.muli(g.add(g.muli(b, s.hsel as i64), sel), s.units as i64);
        // SPAN chunks per block, UNROLL tokens per thread in flight (their G logits each).
        let threads = (WARPS * 32) as i64;
        let rounds = (SPAN * CH) as i64 / (threads * UNROLL as i64);
        g.for_range(g.i32(0), g.i32(rounds), &mut |g, it| {
            let base = g.add(start, g.add(g.muli(it, threads * UNROLL as i64), tid));
            let toks: Vec<(IntValue<'c>, IntValue<'c>, Vec<FloatValue<'c>>)> = (0..UNROLL)
                .map(|r| {
                    let j = g.addi(base, r as i64 * threads);
                    let valid = g.icmp(IntPredicate::ULT, j, len);
                    let safe = g.seli(valid, j, start);
                    let ls = (0..s.g)
                        .map(|h| {
                            let at = g.add(g.muli(g.addi(h0, h as i64), s.c as i64), safe);
                            g.ld_f32(logits, at)
                        })
                        .collect();
                    (j, valid, ls)
                })
                .collect();
            // Every token's fold first, in straight-line code (the tokens' chains
            // interleave), then the stores and the counts, which branch.
            let accs: Vec<_> = toks
                .into_iter()
                .map(|(j, valid, ls)| {
                    let acc = fold_heads(g, s, ls.into_iter().zip(ms.iter().copied()));
                    (j, valid, acc)
                })
                .collect();
            for (j, valid, acc) in &accs {
                g.if_then(*valid, &mut |g| g.st_f32(scores, g.add(out_row, *j), *acc));
            }
            if let Some(p0) = &pass0 {
                for (j, valid, acc) in &accs {
                    p0.count(g, *j, *valid, *acc);
                }
            }
        });
    });
    if let Some(p0) = &pass0 {
        p0.finish(g, s);
    }
}

/// A token's lane sums, `dots[half][head]` for the one or two lanes (`tt` and `tt + tl`)
/// this thread holds, summed over the token's lanes with the butterfly's pairs: the first
/// level (offset `tl`, between the two halves) in registers, as `reduce_scatter` would
/// split it (an even number of heads: the lower lane keeps the first half of them, the
/// upper the rest; else both keep all, and only the lower one goes on); then
/// `reduce_scatter` over the `tl` threads. Returns, per kept half, its heads' dots, the
/// first head, and whether this thread writes them.
fn reduce_dots<'c>(
    g: &Gen<'c>,
    tt: IntValue<'c>,
    tl: u32,
    dots: Vec<Vec<FloatValue<'c>>>,
) -> Vec<(Vec<FloatValue<'c>>, IntValue<'c>, IntValue<'c>)> {
    let sets: Vec<(Vec<FloatValue<'c>>, i64)> = match dots.as_slice() {
        [one] => vec![(one.clone(), 0)],
        [lo, hi] => {
            let n = lo.len();
            if n >= 2 && n % 2 == 0 {
                let half = n / 2;
                // The lower lane adds its partner's value to its own, the upper likewise:
                // a + b and b + a are the same bits.
                let low = (0..half).map(|i| g.fadd(lo[i], hi[i])).collect();
                let high = (half..n).map(|i| g.fadd(hi[i], lo[i])).collect();
                vec![(low, 0), (high, half as i64)]
            } else {
                vec![((0..n).map(|i| g.fadd(lo[i], hi[i])).collect(), 0)]
            }
        }
        _ => unreachable!("one or two lane sums a thread"),
    };
    sets.into_iter()
        .map(|(vals, base)| {
            let (vals, first, writer) = reduce_scatter(g, tt, tl, vals);
            (vals, g.addi(first, base), writer)
        })
        .collect()
}

/// The heads' lane sums `dots` (one per head) summed over aligned groups of `lanes` lanes
/// with the butterfly's pairs (offsets `lanes/2, ..., 1`), halving the heads a lane keeps
/// while their number is even: a lane ends with `vals` for the heads from `first_head`,
/// equal in every lane of the group that keeps them; `writer` marks one lane per group.
pub(super) fn reduce_scatter<'c>(
    g: &Gen<'c>,
    ll: IntValue<'c>,
    lanes: u32,
    mut vals: Vec<FloatValue<'c>>,
) -> (Vec<FloatValue<'c>>, IntValue<'c>, IntValue<'c>) {
    let mut first = g.i32(0);
    let mut shared_bits = 0i64;
    let mut off = lanes / 2;
    while off >= 1 {
        let n = vals.len();
        if n >= 2 && n % 2 == 0 {
            let upper = g.icmp(IntPredicate::NE, g.and(ll, g.i32(off as i64)), g.i32(0));
            let half = n / 2;
            vals = (0..half)
                .map(|i| {
                    let mine = g.self_f(upper, vals[half + i], vals[i]);
                    let theirs = g.self_f(upper, vals[i], vals[half + i]);
                    g.fadd(mine, g.shfl_xor(theirs, off as i64))
                })
                .collect();
            first = g.add(first, g.seli(upper, g.i32(half as i64), g.i32(0)));
        } else {
            vals = vals
                .iter()
                .map(|v| g.fadd(*v, g.shfl_xor(*v, off as i64)))
                .collect();
            shared_bits |= off as i64;
        }
        off /= 2;
    }
    let writer = g.eqi(g.and(ll, g.i32(shared_bits)), 0);
    (vals, first, writer)
}
