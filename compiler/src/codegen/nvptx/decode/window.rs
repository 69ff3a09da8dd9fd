//! `window` scores (SnapKV, a select-only kernel) on the GPU, in the order of the CPU
//! executor's `decode::score` (rule 1 per query row of the observation window, then the
//! rows and the heads folded, then the pooling), so that the index lists are the CPU's.
//! A list `(b, kvh)` has `R = G x W` query rows (its `G` heads, `W` rows each, row `r` of
//! a head at position `len - W + r` and seeing the keys `[0, len - W + r]`); its scored
//! tokens are `[0, m)`, `m = len - W` (the window's own tokens are kept as recent).
//!
//! - **stats** (role `Logits`), one block per chunk of `softmax::CHUNK` keys of a list:
//!   every row's logits of the chunk's keys, [`ROWS`] rows at a time through shared memory,
//!   in register tiles (see [`emit_stats`]: the lane tree's bits), then every row's chunk
//!   statistics `(m_c, z_c)` into `stats` `[B, Hq, W, chunks, 2]`, and the logits into
//!   `wlog` `[B, Hq, W, C]` when they fit 32-bit indices ([`stored_logits`]: 4.3 GB at the
//!   shipped shape). Keys past a row's end are `-inf`; a chunk wholly past it gets
//!   `(-inf, 0)`, which the row's fold passes over unchanged (so every row folds the
//!   chunks of the whole sequence, as if it had its own fewer).
//! - **score**, the same grid: the rows' `(m, 1 / z)` folded from the chunk statistics,
//!   the logits (stored, or computed again a key a thread by [`logit`]), and per scored
//!   token `exp2c(l - m) * (1 / z)` folded over the rows of each head in order (`reduce
//!   rows`), then over the heads in order (`reduce heads`), into `tok` `[B, Hsel, C]` (or
//!   straight into the scores without pooling).
//! - **pool** (with `pool avg(K)` or `max(K)`), one block per chunk of a list: token `j`
//!   takes `tok[max(0, j - K/2) .. min(m, j + K/2 + 1)]`, summed from the left and divided
//!   by `K`, or its maximum, into the scores the top-k reads.
//!
//! Figures and what was tried: docs/kv-selection-gpu.md.

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;

use super::exact::reduce_scatter;
use super::softmax::{chunk_stats, exp2c, fold, stats_of_rows};
use super::Shape;
use crate::codegen::nvptx::gen::Gen;
use crate::select::softmax::{CHUNK, LANES};
use crate::select::spec::{score_lanes, Pool, Reduce};

/// Warps per block of every entry.
pub const WARPS: u32 = 8;
const THREADS: u32 = WARPS * 32;
/// Query rows a block holds at once (and their logits of the chunk: `ROWS x CHUNK` f32).
pub const ROWS: u32 = 8;
const CH: u32 = CHUNK as u32;
/// Keys of a chunk a thread takes.
const KEYS: u32 = CH / THREADS;
/// The most query rows a list may have (`G x W`; their `(m, 1 / z)` in shared memory).
pub const MAX_ROWS: u32 = 1024;

/// Chunks of the normaliser per row.
pub fn chunks(s: &Shape) -> u32 {
    s.c.div_ceil(CH)
}

/// Where a block is: its list's first query row, its keys and its sequence's length.
struct Block<'c> {
    tid: IntValue<'c>,
    warp: IntValue<'c>,
    lane: IntValue<'c>,
    c: IntValue<'c>,
    b: IntValue<'c>,
    sel: IntValue<'c>,
    len: IntValue<'c>,
    /// The first of the list's `G x W` query rows in `[B, Hq, W]` (row `h * W + r`).
    row0: IntValue<'c>,
    /// The first key of the list in `[B, Hkv, C]`.
    kbase: IntValue<'c>,
    start: IntValue<'c>,
}

impl<'c> Block<'c> {
    fn new(g: &Gen<'c>, s: &Shape, lens: PointerValue<'c>) -> Block<'c> {
        let tid = g.sreg("tid.x");
        let (c, sel, b) = (g.sreg("ctaid.x"), g.sreg("ctaid.y"), g.sreg("ctaid.z"));
        let row0 = g.muli(
            g.add(g.muli(b, s.hq as i64), g.muli(sel, s.g as i64)),
            s.w as i64,
        );
        Block {
            tid,
            warp: g.udivi(tid, 32),
            lane: g.uremi(tid, 32),
            c,
            b,
            sel,
            len: g.ld_i32(lens, b),
            row0,
            kbase: g.muli(g.add(g.muli(b, s.hkv as i64), sel), s.c as i64),
            start: g.muli(c, CH as i64),
        }
    }

    /// The scored tokens `m = len - W` (the host checks `len >= W`).
    fn scored(&self, g: &Gen<'c>, s: &Shape) -> IntValue<'c> {
        g.addi(self.len, -(s.w as i64))
    }

    /// Thread `tid`'s token `i` of the chunk.
    fn token(&self, g: &Gen<'c>, i: IntValue<'c>) -> IntValue<'c> {
        g.add(self.start, g.add(self.tid, g.muli(i, THREADS as i64)))
    }

    /// Key `j` (clamped to the chunk's first where it is not `valid`) as f32.
    fn load_key(
        &self,
        g: &Gen<'c>,
        s: &Shape,
        k: PointerValue<'c>,
        j: IntValue<'c>,
        valid: IntValue<'c>,
    ) -> Vec<FloatValue<'c>> {
        let safe = g.seli(valid, j, self.start);
        let row = g.muli(g.add(self.kbase, safe), s.d as i64);
        let per = s.d / score_lanes(s.d);
        (0..s.d / per)
            .flat_map(|l| g.ld_half_vec(k, g.addi(row, (l * per) as i64), per, s.bf16))
            .collect()
    }

    /// The block's rows `[group * ROWS, +ROWS)` of the list's queries into `qsh` (row `r`
    /// at `r * D`; zeros past the list's rows), between barriers.
    fn load_rows(
        &self,
        g: &Gen<'c>,
        s: &Shape,
        (q, qsh): (PointerValue<'c>, PointerValue<'c>),
        group: IntValue<'c>,
    ) {
        let rows = (s.g * s.w) as i64;
        g.barrier();
        g.for_step(
            self.tid,
            g.i32((ROWS * s.d) as i64),
            THREADS as i64,
            &mut |g, i| {
                let (r, ch) = (g.udivi(i, s.d as i64), g.uremi(i, s.d as i64));
                let row = g.add(g.muli(group, ROWS as i64), r);
                let inside = g.icmp(IntPredicate::ULT, row, g.i32(rows));
                let at = g.add(
                    g.muli(g.add(self.row0, g.seli(inside, row, g.i32(0))), s.d as i64),
                    ch,
                );
                let x = g.self_f(inside, g.ld_f32(q, at), g.f32(0.0));
                g.st_f32(qsh, i, x);
            },
        );
        g.barrier();
    }
}

/// The base-2 logit of the query row at `qsh[at..at + D]` against `key`: `score_lanes(D)`
/// lane sums of adjacent channels (`fma` in channel order from 0), the butterfly's pairs
/// (offsets `L/2, ..., 1`, lane 0's side), times `scale * log2(e)`: `exact`'s bits.
fn logit<'c>(
    g: &Gen<'c>,
    s: &Shape,
    qsh: PointerValue<'c>,
    at: IntValue<'c>,
    key: &[FloatValue<'c>],
) -> FloatValue<'c> {
    let lanes = score_lanes(s.d) as usize;
    let per = s.d as usize / lanes;
    let mut v: Vec<FloatValue<'c>> = (0..lanes)
        .map(|l| {
            (0..per).fold(g.f32(0.0), |acc, c| {
                let t = l * per + c;
                g.fma(g.ld_f32(qsh, g.addi(at, t as i64)), key[t], acc)
            })
        })
        .collect();
    let mut off = lanes / 2;
    while off >= 1 {
        v = (0..off).map(|l| g.fadd(v[l], v[l + off])).collect();
        off /= 2;
    }
    g.fmul(v[0], g.f32(s.scale_log2))
}

/// Groups of [`ROWS`] rows a list has.
fn groups(s: &Shape) -> u32 {
    (s.g * s.w).div_ceil(ROWS)
}

/// Elements of the stored logits `[B, Hq, W, C]` when they are stored (at most `2^31`,
/// 8 GiB: the kernels index in 32 bits), else 0 (the score entry computes them again).
pub fn stored_logits(s: &Shape) -> usize {
    let n = s.b as u64 * s.hq as u64 * s.w as u64 * s.c as u64;
    if n <= 1 << 31 {
        n as usize
    } else {
        0
    }
}

/// Query rows and keys of a thread's tile in the statistics entry.
const TILE_ROWS: u32 = 4;
const TILE_KEYS: u32 = 4;

/// `stats(q, k, lens, stats, wlog)`: `wlog` `[B, Hq, W, C]` gets every logit of the
/// sequence's keys when [`stored_logits`] says so.
///
/// Register tiles, as `exact`'s logits entry: `L = score_lanes(D)` threads form a lane
/// group, thread `l` holding lane `l`'s 8 channels; a group takes the chunk's keys
/// [`TILE_KEYS`] at a time and, for each, the block's rows [`TILE_ROWS`] at a time: each
/// thread keeps the `TILE_ROWS x TILE_KEYS` lane sums of its lane (`fma` in channel order
/// from 0), then `reduce_scatter` adds them across the group with the butterfly's pairs
/// (the lane tree's bits), leaving each thread some of the tile's dots. Fewer live values
/// a thread than a whole key a thread (which ran at one block of 8 warps an SM and stalled
/// on its loads: 20.3 ms at the shipped shape).
pub fn emit_stats<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (q, k, lens, stats, wlog) = (p[0], p[1], p[2], p[3], p[4]);
    let store = stored_logits(s) > 0;
    let blk = Block::new(g, s, lens);
    let qsh = g.shared_array("window_stats_q", g.f32t.into(), ROWS * s.d);
    let lsh = g.shared_array("window_stats_logits", g.f32t.into(), ROWS * CH);
    let rows = s.g * s.w;
    let nch = chunks(s);
    let lanes = score_lanes(s.d);
    let per = s.d / lanes;
    let ll = g.uremi(blk.tid, lanes as i64);
    let grp = g.udivi(blk.tid, lanes as i64);
    // Keys of the chunk a lane group takes.
    let span = CH / (THREADS / lanes);
    g.if_then(g.icmp(IntPredicate::ULT, blk.start, blk.len), &mut |g| {
        g.for_range(g.i32(0), g.i32(groups(s) as i64), &mut |g, group| {
            blk.load_rows(g, s, (q, qsh), group);
            let tiles = g.i32((span / TILE_KEYS) as i64);
            g.for_range(g.i32(0), tiles, &mut |g, kt| {
                let t0 = g.add(g.muli(grp, span as i64), g.muli(kt, TILE_KEYS as i64));
                // This lane's channels of the tile's keys.
                let keys: Vec<Vec<FloatValue<'c>>> = (0..TILE_KEYS)
                    .map(|e| {
                        let j = g.add(blk.start, g.addi(t0, e as i64));
                        let valid = g.icmp(IntPredicate::ULT, j, blk.len);
                        let safe = g.seli(valid, j, blk.start);
                        let row = g.muli(g.add(blk.kbase, safe), s.d as i64);
                        g.ld_half_vec(k, g.add(row, g.muli(ll, per as i64)), per, s.bf16)
                    })
                    .collect();
                for sub in 0..ROWS / TILE_ROWS {
                    // Volatile: LLVM would hoist the rows' loads out of the tile loop
                    // (every row in registers at once).
                    let qs: Vec<Vec<FloatValue<'c>>> = (0..TILE_ROWS)
                        .map(|rr| {
                            let r = sub * TILE_ROWS + rr;
                            let at = g.add(g.i32((r * s.d) as i64), g.muli(ll, per as i64));
                            (0..per / 4)
                                .flat_map(|c| g.ld_f32x4_volatile(qsh, g.addi(at, 4 * c as i64)))
                                .collect()
                        })
                        .collect();
                    // The lane sums in (row, key) order.
                    let sums: Vec<FloatValue<'c>> = qs
                        .iter()
                        .flat_map(|qr| {
                            keys.iter().map(move |kv| {
                                (0..per as usize)
                                    .fold(g.f32(0.0), |acc, c| g.fma(qr[c], kv[c], acc))
                            })
                        })
                        .collect();
                    let (dots, first, writer) = reduce_scatter(g, ll, lanes, sums);
                    g.if_then(writer, &mut |g| {
                        for (i, dot) in dots.iter().enumerate() {
                            let idx = g.addi(first, i as i64);
                            let r =
                                g.addi(g.udivi(idx, TILE_KEYS as i64), (sub * TILE_ROWS) as i64);
                            let t = g.add(t0, g.uremi(idx, TILE_KEYS as i64));
                            let j = g.add(blk.start, t);
                            // Row `w` of its head sees the keys up to `len - W + w`.
                            let row = g.add(g.muli(group, ROWS as i64), r);
                            let w = g.uremi(row, s.w as i64);
                            let end = g.add(g.addi(blk.len, 1 - s.w as i64), w);
                            let seen = g.icmp(IntPredicate::ULT, j, end);
                            let l = g.fmul(*dot, g.f32(s.scale_log2));
                            let l = g.self_f(seen, l, g.f32(f64::NEG_INFINITY));
                            g.st_f32(lsh, g.add(g.muli(r, CH as i64), t), l);
                            if store {
                                let inside = g.icmp(IntPredicate::ULT, row, g.i32(rows as i64));
                                let keep = g.and(inside, g.icmp(IntPredicate::ULT, j, blk.len));
                                g.if_then(keep, &mut |g| {
                                    let at = g.add(g.muli(g.add(blk.row0, row), s.c as i64), j);
                                    g.st_f32(wlog, at, l);
                                });
                            }
                        }
                    });
                }
            });
            g.barrier();
            // A warp per row: the chunk's statistics (lane `t` adds keys `t, t + 32, ...`).
            g.for_step(blk.warp, g.i32(ROWS as i64), WARPS as i64, &mut |g, r| {
                let row = g.add(g.muli(group, ROWS as i64), r);
                g.if_then(
                    g.icmp(IntPredicate::ULT, row, g.i32(rows as i64)),
                    &mut |g| {
                        let base = g.add(g.muli(r, CH as i64), blk.lane);
                        let xs: Vec<FloatValue<'c>> = (0..CH / LANES as u32)
                            .map(|i| g.ld_f32(lsh, g.addi(base, (i * LANES as u32) as i64)))
                            .collect();
                        let (m, z) = chunk_stats(g, &xs);
                        g.if_then(g.eqi(blk.lane, 0), &mut |g| {
                            let at = g.add(g.muli(g.add(blk.row0, row), nch as i64), blk.c);
                            g.st_f32(stats, g.muli(at, 2), m);
                            g.st_f32(stats, g.addi(g.muli(at, 2), 1), z);
                        });
                    },
                );
            });
        });
    });
}

/// `score(q, k, lens, stats, wlog, out)`: `out` is `tok`, or the scores without pooling;
/// the logits come from `wlog` where the statistics entry stored them, else they are
/// computed again.
pub fn emit_score<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (q, k, lens, stats, wlog, out) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    let store = stored_logits(s) > 0;
    let blk = Block::new(g, s, lens);
    let qsh = g.shared_array("window_score_q", g.f32t.into(), ROWS * s.d);
    let rs = g.shared_array("window_score_rows", g.f32t.into(), 2 * s.g * s.w);
    let rows = s.g * s.w;
    let nch = chunks(s);
    let m_tok = blk.scored(g, s);
    g.if_then(g.icmp(IntPredicate::ULT, blk.start, m_tok), &mut |g| {
        // Every row's (m, z) (a warp a row), then its 1 / z rounded once.
        let used = g.udivi(g.addi(blk.len, CH as i64 - 1), CH as i64);
        let row_of = |g: &Gen<'c>, r: IntValue<'c>| (stats, g.muli(g.add(blk.row0, r), nch as i64));
        stats_of_rows(
            g,
            (blk.warp, blk.lane, WARPS),
            rs,
            rows,
            &row_of,
            (nch, used),
        );
        g.for_step(blk.tid, g.i32(rows as i64), THREADS as i64, &mut |g, r| {
            let at = g.addi(g.muli(r, 2), 1);
            g.st_f32(rs, at, g.fdiv(g.f32(1.0), g.ld_f32(rs, at)));
        });
        // Every reciprocal in place before any thread reads them (without it, stored
        // logits raced: some threads read z, not 1 / z).
        g.barrier();
        // A key of the thread at a time (kept in registers over the row groups): the
        // fold over the current head's rows, and over the heads.
        let list = g.muli(g.add(g.muli(blk.b, s.hsel as i64), blk.sel), s.units as i64);
        let zero = g.f32(0.0).into();
        let (head_acc, tok_acc) = (g.var(g.f32t.into(), zero), g.var(g.f32t.into(), zero));
        g.for_range(g.i32(0), g.i32(KEYS as i64), &mut |g, i| {
            let j = blk.token(g, i);
            let scored = g.icmp(IntPredicate::ULT, j, m_tok);
            let key = if store {
                vec![]
            } else {
                blk.load_key(g, s, k, j, scored)
            };
            let safe = g.seli(scored, j, blk.start);
            g.for_range(g.i32(0), g.i32(groups(s) as i64), &mut |g, group| {
                if !store {
                    blk.load_rows(g, s, (q, qsh), group);
                }
                let (mut ha, mut ta) = (g.getf(head_acc), g.getf(tok_acc));
                // The group's logits first (stored: all loads in flight together).
                let ls: Vec<(IntValue<'c>, FloatValue<'c>)> = (0..ROWS)
                    .map(|r| {
                        let row = g.addi(g.muli(group, ROWS as i64), r as i64);
                        let inside = g.icmp(IntPredicate::ULT, row, g.i32(rows as i64));
                        let l = if store {
                            let row = g.seli(inside, row, g.i32(0));
                            g.ld_f32(wlog, g.add(g.muli(g.add(blk.row0, row), s.c as i64), safe))
                        } else {
                            logit(g, s, qsh, g.i32((r * s.d) as i64), &key)
                        };
                        (row, l)
                    })
                    .collect();
                for (row, l) in ls {
                    let inside = g.icmp(IntPredicate::ULT, row, g.i32(rows as i64));
                    let at = g.muli(g.seli(inside, row, g.i32(0)), 2);
                    let (m, rz) = (g.ld_f32(rs, at), g.ld_f32(rs, g.addi(at, 1)));
                    let p = g.fmul(exp2c(g, g.fsub(l, m)), rz);
                    let w = g.uremi(row, s.w as i64);
                    let h = g.udivi(row, s.w as i64);
                    // The rows of a head in order (the first assigns), then the head into
                    // the heads' fold once its last row is in.
                    let next = g.self_f(g.eqi(w, 0), p, fold(g, s.rows_op, ha, p));
                    let mut hv = next;
                    if s.rows_op == Reduce::Mean && s.w > 1 {
                        hv = g.fdiv(hv, g.f32(s.w as f64));
                    }
                    let tok = g.self_f(g.eqi(h, 0), hv, fold(g, s.op, ta, hv));
                    let last = g.and(inside, g.eqi(w, s.w as i64 - 1));
                    ha = g.self_f(inside, next, ha);
                    ta = g.self_f(last, tok, ta);
                }
                g.set(head_acc, ha);
                g.set(tok_acc, ta);
            });
            let mut x = g.getf(tok_acc);
            if s.op == Reduce::Mean {
                x = g.fdiv(x, g.f32(s.g as f64));
            }
            g.if_then(scored, &mut |g| g.st_f32(out, g.add(list, j), x));
        });
    });
}

/// `pool(tok, lens, scores)`: rule 4's same-padded pooling over the scored tokens.
pub fn emit_pool<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (tok, lens, scores) = (p[0], p[1], p[2]);
    let (size, avg) = match s.pool {
        Pool::Avg { size } => (size, true),
        Pool::Max { size } => (size, false),
        Pool::None => unreachable!("no pool entry without pooling"),
    };
    let blk = Block::new(g, s, lens);
    let m_tok = blk.scored(g, s);
    let list = g.muli(g.add(g.muli(blk.b, s.hsel as i64), blk.sel), s.units as i64);
    let r = (size / 2) as i64;
    for i in 0..KEYS {
        let j = blk.token(g, g.i32(i as i64));
        g.if_then(g.icmp(IntPredicate::ULT, j, m_tok), &mut |g| {
            // From the left: -0 + x is x, as the CPU's `sum` starts.
            let mut acc = g.f32(if avg { -0.0 } else { f64::NEG_INFINITY });
            for d in 0..=2 * r {
                let at = g.addi(j, d - r);
                let inside = g.and(
                    g.icmp(IntPredicate::SGE, at, g.i32(0)),
                    g.icmp(IntPredicate::SLT, at, m_tok),
                );
                let x = g.ld_f32(tok, g.add(list, g.seli(inside, at, j)));
                let next = if avg {
                    g.fadd(acc, x)
                } else {
                    g.maxnum(acc, x)
                };
                acc = g.self_f(inside, next, acc);
            }
            if avg {
                acc = g.fdiv(acc, g.f32(size as f64));
            }
            g.st_f32(scores, g.add(list, j), acc);
        });
    }
}
