//! Rules 6 and 7 on the GPU for long lists (more units than the one-block top-k stages:
//! `exact` scores over 131072 tokens): the same radix select and emission as `topk.rs`,
//! spread over `ceil(U / SEG)` blocks per list so that every SM takes part. Five entries,
//! launched in order, all `(scores, lens, work, idx)`:
//!
//! - `topk_pass0..2`: the digits of the 32-bit key, 12, 12 and 8 bits from the top. Each
//!   block counts the digits of its `SEG` units that carry the decided prefix into a shared
//!   histogram and adds it to the list's histogram in `work`; the last block to arrive (a
//!   counter, after a fence) finds the bin that holds the wanted rank, records the longer
//!   prefix and the rank within it, and clears the histogram and the counter for the next
//!   pass (so the work buffer needs no reset between steps: CUDA graphs stay valid).
//! - `topk_count`: with the threshold key `T` known, each block counts its units above
//!   `T` and equal to it.
//! - `topk_emit`: each block starts at the output position the earlier blocks' counts
//!   give and writes its units in ascending order (block scans), the units above `T` and
//!   the equal ones while their rank among all equal ones is below the number to take.
//!
//! The selected set and its order are exactly the one-block kernel's, hence the CPU's.
//!
//! `work` (u32): per list a histogram of [`BINS`] counts, then per list 4 words (prefix,
//! rank, arrivals, unused), then per list and block 2 words (above, equal).

use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;

use super::topk::{block_scan, count_digit, emit_in_order, forced_bounds, unit_key, Cursor};
use super::Shape;
use crate::codegen::nvptx::gen::{ok, Gen};

pub const THREADS: u32 = 1024;
/// Units per thread, and per block.
const PER: u32 = 8;
pub const SEG: u32 = THREADS * PER;
/// Bins of the widest digit.
pub const BINS: u32 = 4096;
/// (shift, bits) of each pass's digit.
pub const DIGITS: [(u32, u32); 3] = [(20, 12), (8, 12), (0, 8)];

/// Blocks per list.
pub fn blocks(s: &Shape) -> u32 {
    s.units.div_ceil(SEG)
}

/// u32 words of the work buffer.
pub fn work_words(s: &Shape) -> usize {
    let lists = (s.b * s.hsel) as usize;
    lists * (BINS as usize + 4 + 2 * blocks(s) as usize)
}

/// The entry-name suffixes, in launch order.
pub fn entries() -> Vec<String> {
    let mut v: Vec<String> = (0..DIGITS.len()).map(|i| format!("topk_pass{i}")).collect();
    v.push("topk_count".into());
    v.push("topk_emit".into());
    v
}

/// The per-list values every entry starts from.
struct List<'c> {
    tid: IntValue<'c>,
    blk: IntValue<'c>,
    row: IntValue<'c>,
    n: IntValue<'c>,
    forced: (IntValue<'c>, IntValue<'c>),
    row_in: IntValue<'c>,
    state: IntValue<'c>,
}

fn list<'c>(g: &Gen<'c>, s: &Shape, lens: PointerValue<'c>) -> List<'c> {
    let tid = g.sreg("tid.x");
    let blk = g.sreg("ctaid.x");
    let sel = g.sreg("ctaid.y");
    let b = g.sreg("ctaid.z");
    let row = g.add(g.muli(b, s.hsel as i64), sel);
    let len = g.ld_i32(lens, b);
    let n = g.udivi(g.addi(len, s.p as i64 - 1), s.p as i64);
    let forced = forced_bounds(g, s, len, n);
    let lists = (s.b * s.hsel) as i64;
    List {
        tid,
        blk,
        row,
        n,
        forced,
        row_in: g.muli(row, s.units as i64),
        state: g.addi(g.muli(row, 4), lists * BINS as i64),
    }
}

/// The keys of the block's units, all loads issued together: `(unit, valid, key)`.
fn keys<'c>(
    g: &Gen<'c>,
    scores: PointerValue<'c>,
    l: &List<'c>,
) -> Vec<(IntValue<'c>, IntValue<'c>, IntValue<'c>)> {
    let base = g.add(g.muli(l.blk, SEG as i64), l.tid);
    (0..PER)
        .map(|r| {
            let u = g.addi(base, (r * THREADS) as i64);
            let valid = g.icmp(IntPredicate::ULT, u, l.n);
            let k = unit_key(g, scores, l.row_in, l.forced, g.seli(valid, u, g.i32(0)));
            (u, valid, k)
        })
        .collect()
}

/// Emits entry `i` of [`entries`].
pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>], i: usize) {
    let (scores, lens, work, out) = (p[0], p[1], p[2], p[3]);
    let l = list(g, s, lens);
    let cap = g.i32(s.cap as i64);
    let short = g.icmp(IntPredicate::ULE, l.n, cap);
    if i == DIGITS.len() + 1 {
        emit_lists(g, s, &l, scores, work, out, short);
        return;
    }
    // A list that fits keeps everything: only the emission writes it.
    g.if_then(g.not(short), &mut |g| {
        if i < DIGITS.len() {
            pass(g, s, &l, scores, work, i);
        } else {
            count(g, s, &l, scores, work);
        }
    });
}

fn pass<'c>(
    g: &Gen<'c>,
    s: &Shape,
    l: &List<'c>,
    scores: PointerValue<'c>,
    work: PointerValue<'c>,
    i: usize,
) {
    let (shift, bits) = DIGITS[i];
    let bins = 1u32 << bits;
    let decided: u64 = (0xFFFF_FFFFu64 << (shift + bits)) & 0xFFFF_FFFF;
    let hist = g.shared_array(&format!("topk_hist{i}"), g.i32t.into(), bins);
    let totals = g.shared_array(&format!("topk_warps{i}"), g.i32t.into(), THREADS / 32);
    let flag = g.shared_array(&format!("topk_last{i}"), g.i32t.into(), 1);
    let (prefix, want) = if i == 0 {
        (g.i32(0), g.i32(s.cap as i64))
    } else {
        (g.ld_i32(work, l.state), g.ld_i32(work, g.addi(l.state, 1)))
    };
    g.for_step(l.tid, g.i32(bins as i64), THREADS as i64, &mut |g, b| {
        g.st_i32(hist, b, g.i32(0))
    });
    g.barrier();
    let mask = g.i32t.const_int(decided, false);
    for (_, valid, k) in keys(g, scores, l) {
        let same = g.and(valid, g.icmp(IntPredicate::EQ, g.and(k, mask), prefix));
        count_digit(g, hist, same, digit(g, k, shift, bits), bins as i64);
    }
    g.barrier();
    let ghist = g.muli(l.row, BINS as i64);
    g.for_step(l.tid, g.i32(bins as i64), THREADS as i64, &mut |g, b| {
        let c = g.ld_i32(hist, b);
        g.if_then(g.icmp(IntPredicate::NE, c, g.i32(0)), &mut |g| {
            g.atomic_add_i32(g.gep(g.i32t.into(), work, g.add(ghist, b)), c);
        });
    });
    // The last block of the list to arrive picks the bin.
    g.fence_gpu();
    g.barrier();
    g.if_then(g.eqi(l.tid, 0), &mut |g| {
        let arrivals = g.gep(g.i32t.into(), work, g.addi(l.state, 2));
        let before = g.atomic_add_old_i32(arrivals, g.i32(1));
        let last = g.icmp(IntPredicate::EQ, before, g.i32(blocks(s) as i64 - 1));
        g.st_i32(flag, g.i32(0), ok(g.b.build_int_z_extend(last, g.i32t, "")));
    });
    g.barrier();
    let last = g.icmp(IntPredicate::NE, g.ld_i32(flag, g.i32(0)), g.i32(0));
    g.if_then(last, &mut |g| {
        g.fence_gpu();
        // Thread t holds bins from the top: bins - 1 - (t * per + j), j < per, read
        // coherently (atomics) and cleared for the next pass.
        let per = bins.div_ceil(THREADS);
        let held: Vec<(IntValue<'c>, IntValue<'c>)> = (0..per)
            .map(|j| {
                let idx = g.addi(g.muli(l.tid, per as i64), j as i64);
                let inside = g.icmp(IntPredicate::ULT, idx, g.i32(bins as i64));
                let bin = g.sub(g.i32(bins as i64 - 1), g.seli(inside, idx, g.i32(0)));
                let slot = g.gep(g.i32t.into(), work, g.add(ghist, bin));
                let c = g.atomic_add_old_i32(slot, g.i32(0));
                let c = g.seli(inside, c, g.i32(0));
                g.if_then(inside, &mut |g| g.st_i32(work, g.add(ghist, bin), g.i32(0)));
                (bin, c)
            })
            .collect();
        let x = held.iter().fold(g.i32(0), |a, (_, c)| g.add(a, *c));
        let (before, _) = block_scan(g, totals, l.tid, x);
        let mut cum = before;
        for (bin, c) in held {
            let upto = g.add(cum, c);
            let reach = g.icmp(IntPredicate::UGE, upto, want);
            let short = g.icmp(IntPredicate::ULT, cum, want);
            g.if_then(g.and(reach, short), &mut |g| {
                let placed = ok(g.b.build_left_shift(bin, g.i32(shift as i64), ""));
                g.st_i32(work, l.state, g.or(prefix, placed));
                g.st_i32(work, g.addi(l.state, 1), g.sub(want, cum));
            });
            cum = upto;
        }
        g.if_then(g.eqi(l.tid, 0), &mut |g| {
            g.st_i32(work, g.addi(l.state, 2), g.i32(0))
        });
    });
}

/// `(k >> shift) & (2^bits - 1)`
fn digit<'c>(g: &Gen<'c>, k: IntValue<'c>, shift: u32, bits: u32) -> IntValue<'c> {
    let x = ok(g.b.build_right_shift(k, g.i32(shift as i64), false, ""));
    g.and(x, g.i32((1i64 << bits) - 1))
}

/// Where block `blk`'s counts of list `row` live.
fn counts_at<'c>(g: &Gen<'c>, s: &Shape, row: IntValue<'c>, blk: IntValue<'c>) -> IntValue<'c> {
    let lists = (s.b * s.hsel) as i64;
    let base = lists * (BINS as i64 + 4);
    let nb = blocks(s) as i64;
    g.addi(g.muli(g.add(g.muli(row, nb), blk), 2), base)
}

fn count<'c>(
    g: &Gen<'c>,
    s: &Shape,
    l: &List<'c>,
    scores: PointerValue<'c>,
    work: PointerValue<'c>,
) {
    let totals = g.shared_array("topk_count_warps", g.i32t.into(), THREADS / 32);
    let t = g.ld_i32(work, l.state);
    let (mut gt, mut eq) = (g.i32(0), g.i32(0));
    for (_, valid, k) in keys(g, scores, l) {
        let above = g.and(valid, g.icmp(IntPredicate::UGT, k, t));
        let equal = g.and(valid, g.icmp(IntPredicate::EQ, k, t));
        gt = g.add(gt, ok(g.b.build_int_z_extend(above, g.i32t, "")));
        eq = g.add(eq, ok(g.b.build_int_z_extend(equal, g.i32t, "")));
    }
    // Two counts in one scan: above in the high half, equal in the low (each < 2^16).
    let both = g.add(ok(g.b.build_left_shift(gt, g.i32(16), "")), eq);
    let (_, total) = block_scan(g, totals, l.tid, both);
    g.if_then(g.eqi(l.tid, 0), &mut |g| {
        let at = counts_at(g, s, l.row, l.blk);
        let hi = ok(g.b.build_right_shift(total, g.i32(16), false, ""));
        g.st_i32(work, at, hi);
        g.st_i32(work, g.addi(at, 1), g.and(total, g.i32(0xFFFF)));
    });
}

fn emit_lists<'c>(
    g: &Gen<'c>,
    s: &Shape,
    l: &List<'c>,
    scores: PointerValue<'c>,
    work: PointerValue<'c>,
    out: PointerValue<'c>,
    short: IntValue<'c>,
) {
    let totals = g.shared_array("topk_emit_warps", g.i32t.into(), THREADS / 32);
    let row_out = g.muli(l.row, s.cap as i64);
    let nb = blocks(s);
    g.if_else(
        short,
        &mut |g| {
            // Everything: 0..n, then -1, the blocks of the list striding the capacity.
            let from = g.add(g.muli(l.blk, THREADS as i64), l.tid);
            g.for_step(
                from,
                g.i32(s.cap as i64),
                (nb * THREADS) as i64,
                &mut |g, t| {
                    let keep = g.icmp(IntPredicate::ULT, t, l.n);
                    g.st_i32(out, g.add(row_out, t), g.seli(keep, t, g.i32(-1)));
                },
            );
        },
        &mut |g| {
            let t = g.ld_i32(work, l.state);
            let need = g.ld_i32(work, g.addi(l.state, 1));
            // The earlier blocks' units above T, and equal to it.
            let above = g.var(g.i32t.into(), g.i32(0).into());
            let equal = g.var(g.i32t.into(), g.i32(0).into());
            g.for_range(g.i32(0), l.blk, &mut |g, e| {
                let at = counts_at(g, s, l.row, e);
                g.set(above, g.add(g.geti(above), g.ld_i32(work, at)));
                g.set(equal, g.add(g.geti(equal), g.ld_i32(work, g.addi(at, 1))));
            });
            let eq_before = g.geti(equal);
            let taken_eq = g.seli(g.icmp(IntPredicate::ULT, eq_before, need), eq_before, need);
            let cursor = Cursor {
                eq_seen: g.var(g.i32t.into(), eq_before.into()),
                written: g.var(g.i32t.into(), g.add(g.geti(above), taken_eq).into()),
                t,
                need,
                out,
                row_out,
            };
            for (u, valid, k) in keys(g, scores, l) {
                emit_in_order(g, totals, l.tid, &cursor, u, valid, k);
            }
        },
    );
}
