//! Rules 6 and 7 on the GPU: one block per index list (longer scored lists:
//! `topk_wide.rs`, with the helpers of this file). A sequence with no more units than
//! the capacity keeps them all. Without scores the list is closed-form (the forced prefix
//! and suffix, the lowest free units between). Otherwise every unit gets an
//! order-preserving 32-bit key
//! (forced units the largest key; NaN the smallest; -0 as +0), a four-pass 8-bit radix
//! select finds the key `T` of the `K`-th best unit and how many units equal to `T` it
//! takes, and the block writes, in ascending unit order, every unit above `T` and the
//! lowest-indexed units equal to `T`: exactly the CPU's sort order, ties to the lower index.

use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;

use super::Shape;
use crate::codegen::nvptx::gen::{ok, Gen};
use crate::select::spec::Source;

pub const THREADS: u32 = 1024;
const WARPS: u32 = THREADS / 32;
/// The most units whose keys are staged in shared memory (32 KiB).
pub(super) const STAGE_MAX: u32 = 8192;

pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    // p[2], the work buffer of the multi-block top-k, is not used here.
    let (scores, lens, out) = (p[0], p[1], p[3]);
    let hist = g.shared_array("topk_hist", g.i32t.into(), 256);
    let pick = g.shared_array("topk_pick", g.i32t.into(), 2);
    let totals = g.shared_array("topk_warps", g.i32t.into(), WARPS);
    let tid = g.sreg("tid.x");
    let sel = g.sreg("ctaid.x");
    let b = g.sreg("ctaid.y");
    let row = g.add(g.muli(b, s.hsel as i64), sel);
    let row_in = g.muli(row, s.units as i64);
    let row_out = g.muli(row, s.cap as i64);
    let len = g.ld_i32(lens, b);
    let n = g.udivi(g.addi(len, s.p as i64 - 1), s.p as i64);
    let cap = g.i32(s.cap as i64);
    let fits = g.icmp(IntPredicate::ULE, n, cap);
    g.if_else(
        fits,
        &mut |g| {
            // Everything: 0..n, then -1.
            g.for_step(tid, cap, THREADS as i64, &mut |g, t| {
                let keep = g.icmp(IntPredicate::ULT, t, n);
                let v = g.seli(keep, t, g.i32(-1));
                g.st_i32(out, g.add(row_out, t), v);
            });
        },
        &mut |g| {
            // Rule 6's forced units, once per list: a prefix and a suffix.
            let forced = forced_bounds(g, s, len, n);
            if s.source == Source::None {
                without_scores(g, s, tid, n, forced, out, row_out);
                return;
            }
            // Up to STAGE_MAX units, the keys are computed once into shared memory (all
            // loads of a thread issued together); beyond, every pass recomputes them.
            let staged =
                (s.units <= STAGE_MAX).then(|| g.shared_array("topk_keys", g.i32t.into(), s.units));
            if let Some(sk) = staged {
                let per = s.units.div_ceil(THREADS);
                let us: Vec<IntValue<'c>> = (0..per)
                    .map(|j| g.addi(tid, (j * THREADS) as i64))
                    .collect();
                let keys: Vec<IntValue<'c>> = us
                    .iter()
                    .map(|u| {
                        let inside = g.icmp(IntPredicate::ULT, *u, n);
                        unit_key(g, scores, row_in, forced, g.seli(inside, *u, g.i32(0)))
                    })
                    .collect();
                for (u, k) in us.iter().zip(keys) {
                    let inside = g.icmp(IntPredicate::ULT, *u, n);
                    g.if_then(inside, &mut |g| g.st_i32(sk, *u, k));
                }
                g.barrier();
            }
            let key = |g: &Gen<'c>, u: IntValue<'c>| match staged {
                Some(sk) => g.ld_i32(sk, u),
                None => unit_key(g, scores, row_in, forced, u),
            };
            // Radix select, most significant byte first: `prefix` holds the decided bytes,
            // `rank` the rank (1-based) of the wanted key among the keys with that prefix.
            let prefix = g.var(g.i32t.into(), g.i32(0).into());
            let rank = g.var(g.i32t.into(), cap.into());
            for pass in 0..4u32 {
                let shift = 24 - 8 * pass;
                let high_mask: u64 = if pass == 0 {
                    0
                } else {
                    (0xFFFF_FFFFu64 << (32 - 8 * pass)) & 0xFFFF_FFFF
                };
                let lt256 = g.icmp(IntPredicate::ULT, tid, g.i32(256));
                g.if_then(lt256, &mut |g| g.st_i32(hist, tid, g.i32(0)));
                g.barrier();
                let pre = g.geti(prefix);
                // Warp-aggregated counting: the lanes with the same digit add once (the
                // leading byte of similar scores is one value for most units).
                g.for_step(g.i32(0), n, THREADS as i64, &mut |g, base| {
                    let u = g.add(base, tid);
                    let valid = g.icmp(IntPredicate::ULT, u, n);
                    let k = key(g, g.seli(valid, u, g.i32(0)));
                    let hm = g.i32t.const_int(high_mask, false);
                    let same = g.and(valid, g.icmp(IntPredicate::EQ, g.and(k, hm), pre));
                    count_digit(g, hist, same, digit(g, k, shift, 8), 256);
                });
                g.barrier();
                // The bin holding the wanted rank, from the top: thread t holds bin
                // 255 - t, and a block scan counts the keys in that bin and above.
                let want = g.geti(rank);
                let lt256 = g.icmp(IntPredicate::ULT, tid, g.i32(256));
                let bin = g.sub(g.i32(255), tid);
                let x = g.seli(
                    lt256,
                    g.ld_i32(hist, g.seli(lt256, bin, g.i32(0))),
                    g.i32(0),
                );
                let (before, _) = block_scan(g, totals, tid, x);
                let upto = g.add(before, x);
                let reach = g.icmp(IntPredicate::UGE, upto, want);
                let short = g.icmp(IntPredicate::ULT, before, want);
                g.if_then(g.and(lt256, g.and(reach, short)), &mut |g| {
                    g.st_i32(pick, g.i32(0), bin);
                    g.st_i32(pick, g.i32(1), g.sub(want, before));
                });
                g.barrier();
                let digit = g.ld_i32(pick, g.i32(0));
                let placed = ok(g.b.build_left_shift(digit, g.i32(shift as i64), ""));
                g.set(prefix, g.or(g.geti(prefix), placed));
                g.set(rank, g.ld_i32(pick, g.i32(1)));
            }
            let t = g.geti(prefix);
            let need = g.geti(rank);
            // Emission in unit order: block-wide exclusive scans of "equal to T" (to take
            // the first `need` of them) and of "taken" (the output position).
            let eq_seen = g.var(g.i32t.into(), g.i32(0).into());
            let written = g.var(g.i32t.into(), g.i32(0).into());
            g.for_step(g.i32(0), n, THREADS as i64, &mut |g, base| {
                let u = g.add(base, tid);
                let valid = g.icmp(IntPredicate::ULT, u, n);
                let safe = g.seli(valid, u, g.i32(0));
                let k = key(g, safe);
                let is_eq = g.and(valid, g.icmp(IntPredicate::EQ, k, t));
                let is_gt = g.and(valid, g.icmp(IntPredicate::UGT, k, t));
                let (eq_before, eq_total) = block_scan(g, totals, tid, to_u32(g, is_eq));
                let eq_rank = g.add(g.geti(eq_seen), eq_before);
                let within = g.icmp(IntPredicate::ULT, eq_rank, need);
                let take = g.or(is_gt, g.and(is_eq, within));
                let (pos, taken) = block_scan(g, totals, tid, to_u32(g, take));
                g.if_then(take, &mut |g| {
                    let at = g.add(g.geti(written), pos);
                    g.st_i32(out, g.add(row_out, at), u);
                });
                g.set(eq_seen, g.add(g.geti(eq_seen), eq_total));
                g.set(written, g.add(g.geti(written), taken));
            });
            // The scans take exactly `K` units; pad defensively all the same.
            let from = g.add(g.geti(written), tid);
            g.for_step(from, cap, THREADS as i64, &mut |g, t| {
                g.st_i32(out, g.add(row_out, t), g.i32(-1));
            });
        },
    );
}

/// Adds one to bin `digit` of the shared histogram `hist` for every lane where `same`
/// holds, once per distinct digit in the warp (the lanes with the same digit add
/// together: the leading bits of similar scores are one value for most units). `none` is
/// a digit no lane counts.
pub(super) fn count_digit<'c>(
    g: &Gen<'c>,
    hist: PointerValue<'c>,
    same: IntValue<'c>,
    digit: IntValue<'c>,
    none: i64,
) {
    // Most rounds of a later pass have no lane with the prefix: skip them whole.
    let any = g.icmp(IntPredicate::NE, g.ballot(same), g.i32(0));
    g.if_then(any, &mut |g| {
        let digit = g.seli(same, digit, g.i32(none));
        let peers = g.match_any(digit);
        let below = g.sreg("lanemask.lt");
        let leader = g.eqi(g.and(peers, below), 0);
        g.if_then(g.and(same, leader), &mut |g| {
            let slot = g.gep(g.i32t.into(), hist, digit);
            g.atomic_add_i32(slot, g.popc(peers));
        });
    });
}

/// Rule 6's forced units of a sequence of `len` tokens (`n` units) as `(s, r)`: the sink
/// pages `[0, s)` and the recent pages (with the partial last page) `[r, n)`.
/// `runtime/tests/gpu_topk_forms.rs` checks this form against `SelectSpec::forced_units`.
pub(super) fn forced_bounds<'c>(
    g: &Gen<'c>,
    s: &Shape,
    len: IntValue<'c>,
    n: IntValue<'c>,
) -> (IntValue<'c>, IntValue<'c>) {
    let p = s.p as i64;
    let sinks = umin(g, g.i32(s.sinks as i64), len);
    let s_end = g.udivi(g.addi(sinks, p - 1), p);
    let r_start = if s.recent > 0 {
        let r = g.i32(s.recent as i64);
        let long = g.icmp(IntPredicate::UGT, len, r);
        g.seli(long, g.udivi(g.sub(len, r), p), g.i32(0))
    } else {
        let partial = g.icmp(IntPredicate::NE, g.uremi(len, p), g.i32(0));
        g.seli(partial, g.addi(n, -1), n)
    };
    (s_end, r_start)
}

/// Without scores every free unit ties, so the list is closed-form: with the forced units
/// `[0, s)` and `[r, n)`, the lowest-indexed free units `[s, s + need)` fill the rest: `t`
/// for `t < s + need`, then `r + (t - s - need)`. (Rule 6 keeps at most `K` forced units,
/// so `s < r` here.)
fn without_scores<'c>(
    g: &Gen<'c>,
    s: &Shape,
    tid: IntValue<'c>,
    n: IntValue<'c>,
    (s_end, r_start): (IntValue<'c>, IntValue<'c>),
    out: PointerValue<'c>,
    row_out: IntValue<'c>,
) {
    let forced = g.add(s_end, g.sub(n, r_start));
    let head = g.sub(g.add(s_end, g.i32(s.cap as i64)), forced);
    g.for_step(tid, g.i32(s.cap as i64), THREADS as i64, &mut |g, t| {
        let early = g.icmp(IntPredicate::ULT, t, head);
        let late = g.add(r_start, g.sub(t, head));
        g.st_i32(out, g.add(row_out, t), g.seli(early, t, late));
    });
}

/// `(k >> shift) & (2^bits - 1)`: a radix digit of a key.
pub(super) fn digit<'c>(g: &Gen<'c>, k: IntValue<'c>, shift: u32, bits: u32) -> IntValue<'c> {
    let x = ok(g.b.build_right_shift(k, g.i32(shift as i64), false, ""));
    g.and(x, g.i32((1i64 << bits) - 1))
}

/// The order key of unit `u`: the largest for a forced unit (`(s, r)` from
/// [`forced_bounds`]), else its score's order-preserving bits.
fn unit_key<'c>(
    g: &Gen<'c>,
    scores: PointerValue<'c>,
    row_in: IntValue<'c>,
    (s_end, r_start): (IntValue<'c>, IntValue<'c>),
    u: IntValue<'c>,
) -> IntValue<'c> {
    let x = g.ld_f32(scores, g.add(row_in, u));
    key_of(g, (s_end, r_start), u, x)
}

/// [`unit_key`] of unit `u` whose score `x` is at hand.
pub(super) fn key_of<'c>(
    g: &Gen<'c>,
    (s_end, r_start): (IntValue<'c>, IntValue<'c>),
    u: IntValue<'c>,
    x: inkwell::values::FloatValue<'c>,
) -> IntValue<'c> {
    let forced = g.or(
        g.icmp(IntPredicate::ULT, u, s_end),
        g.icmp(IntPredicate::UGE, u, r_start),
    );
    g.seli(forced, g.i32(-1), float_key(g, x))
}

fn umin<'c>(g: &Gen<'c>, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
    let c = g.icmp(IntPredicate::ULT, a, b);
    g.seli(c, a, b)
}

/// Order-preserving bits of a score: NaN lowest, -0 as +0.
fn float_key<'c>(g: &Gen<'c>, x: inkwell::values::FloatValue<'c>) -> IntValue<'c> {
    let nan = g.fcmp(inkwell::FloatPredicate::UNO, x, x);
    let zero = g.fcmp(inkwell::FloatPredicate::OEQ, x, g.f32(0.0));
    let bits = g.f32_bits(x);
    let bits = g.seli(zero, g.i32(0), bits);
    let neg = g.icmp(IntPredicate::SLT, bits, g.i32(0));
    let key = g.seli(neg, g.not(bits), g.or(bits, g.i32(0x8000_0000u32 as i64)));
    g.seli(nan, g.i32(0), key)
}

/// Block-wide exclusive scan of `x` (u32): (the sum over earlier threads, the block's
/// total). Every thread of the block calls it; shuffles within warps, one shared slot per
/// warp between them.
pub(super) fn block_scan<'c>(
    g: &Gen<'c>,
    totals: PointerValue<'c>,
    tid: IntValue<'c>,
    x: IntValue<'c>,
) -> (IntValue<'c>, IntValue<'c>) {
    let warp = g.udivi(tid, 32);
    let lane = g.uremi(tid, 32);
    let incl = warp_inclusive(g, lane, x);
    let last = g.eqi(lane, 31);
    g.if_then(last, &mut |g| g.st_i32(totals, warp, incl));
    g.barrier();
    // Blocks of fewer than 32 warps: the missing warps count 0.
    let warps = g.udivi(g.sreg("ntid.x"), 32);
    let t = g.seli(
        g.icmp(IntPredicate::ULT, lane, warps),
        g.ld_i32(totals, lane),
        g.i32(0),
    );
    let warps_incl = warp_inclusive(g, lane, t);
    let total = g.shfl_idx_i32(warps_incl, g.i32(31));
    let before_warp = g.shfl_idx_i32(g.sub(warps_incl, t), warp);
    g.barrier();
    (g.add(before_warp, g.sub(incl, x)), total)
}

/// Inclusive prefix sum over the lanes of a warp.
fn warp_inclusive<'c>(g: &Gen<'c>, lane: IntValue<'c>, x: IntValue<'c>) -> IntValue<'c> {
    let mut v = x;
    for off in [1, 2, 4, 8, 16] {
        let y = g.shfl_up_i32(v, off);
        let has = g.icmp(IntPredicate::UGE, lane, g.i32(off));
        v = g.add(v, g.seli(has, y, g.i32(0)));
    }
    v
}

/// A predicate as 0 or 1.
pub(super) fn to_u32<'c>(g: &Gen<'c>, p: IntValue<'c>) -> IntValue<'c> {
    ok(g.b.build_int_z_extend(p, g.i32t, ""))
}
