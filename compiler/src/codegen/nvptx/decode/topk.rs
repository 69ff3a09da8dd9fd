//! Rules 6 and 7 on the GPU: one block per index list. A sequence with no more units than
//! the capacity keeps them all. Otherwise every unit gets an order-preserving 32-bit key
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

pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (scores, lens, out) = (p[0], p[1], p[2]);
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
            let key = |g: &Gen<'c>, u: IntValue<'c>| unit_key(g, s, scores, row_in, len, n, u);
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
                g.for_step(tid, n, THREADS as i64, &mut |g, u| {
                    let k = key(g, u);
                    let hm = g.i32t.const_int(high_mask, false);
                    let same = g.icmp(IntPredicate::EQ, g.and(k, hm), pre);
                    g.if_then(same, &mut |g| {
                        let digit = shr_byte(g, k, shift);
                        let slot = g.gep(g.i32t.into(), hist, digit);
                        g.atomic_add_i32(slot, g.i32(1));
                    });
                });
                g.barrier();
                let t0 = g.eqi(tid, 0);
                g.if_then(t0, &mut |g| {
                    // The bin holding the wanted rank, from the top.
                    let want = g.geti(rank);
                    let cum = g.var(g.i32t.into(), g.i32(0).into());
                    let d = g.var(g.i32t.into(), g.i32(255).into());
                    g.while_loop(
                        &mut |g| {
                            let h = g.ld_i32(hist, g.geti(d));
                            let reach = g.add(g.geti(cum), h);
                            let short = g.icmp(IntPredicate::ULT, reach, want);
                            let more = g.icmp(IntPredicate::SGT, g.geti(d), g.i32(0));
                            g.and(short, more)
                        },
                        &mut |g| {
                            let h = g.ld_i32(hist, g.geti(d));
                            g.set(cum, g.add(g.geti(cum), h));
                            g.set(d, g.addi(g.geti(d), -1));
                        },
                    );
                    g.st_i32(pick, g.i32(0), g.geti(d));
                    g.st_i32(pick, g.i32(1), g.sub(want, g.geti(cum)));
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
                let (eq_before, eq_total) = block_scan(g, totals, tid, is_eq);
                let eq_rank = g.add(g.geti(eq_seen), eq_before);
                let within = g.icmp(IntPredicate::ULT, eq_rank, need);
                let take = g.or(is_gt, g.and(is_eq, within));
                let (pos, taken) = block_scan(g, totals, tid, take);
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

/// `(k >> shift) & 255`
fn shr_byte<'c>(g: &Gen<'c>, k: IntValue<'c>, shift: u32) -> IntValue<'c> {
    let x = ok(g.b.build_right_shift(k, g.i32(shift as i64), false, ""));
    g.and(x, g.i32(255))
}

/// The order key of unit `u` of a sequence of `len` tokens (`n` units).
fn unit_key<'c>(
    g: &Gen<'c>,
    s: &Shape,
    scores: PointerValue<'c>,
    row_in: IntValue<'c>,
    len: IntValue<'c>,
    n: IntValue<'c>,
    u: IntValue<'c>,
) -> IntValue<'c> {
    let p = s.p as i64;
    // Rule 6: sinks, the recent window, the partial last page.
    let start = g.muli(u, p);
    let sinks = g.icmp(
        IntPredicate::ULT,
        start,
        umin(g, g.i32(s.sinks as i64), len),
    );
    let recent_from = {
        let r = g.i32(s.recent as i64);
        let below = g.icmp(IntPredicate::ULT, len, r);
        g.seli(below, g.i32(0), g.sub(len, r))
    };
    let end = g.addi(start, p);
    let recent = g.and(
        g.cx.bool_type().const_int(u64::from(s.recent > 0), false),
        g.icmp(IntPredicate::UGT, end, recent_from),
    );
    let partial = g.and(
        g.icmp(IntPredicate::NE, g.uremi(len, p), g.i32(0)),
        g.icmp(IntPredicate::EQ, u, g.addi(n, -1)),
    );
    let forced = g.or(g.or(sinks, recent), partial);
    let score_key = match s.source {
        Source::None => g.i32(0x8000_0000u32 as i64),
        _ => {
            let x = g.ld_f32(scores, g.add(row_in, u));
            float_key(g, x)
        }
    };
    g.seli(forced, g.i32(-1), score_key)
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

/// Block-wide exclusive scan of a predicate: (this thread's rank among the true ones,
/// the block's total). Every thread of the block calls it.
fn block_scan<'c>(
    g: &Gen<'c>,
    totals: PointerValue<'c>,
    tid: IntValue<'c>,
    pred: IntValue<'c>,
) -> (IntValue<'c>, IntValue<'c>) {
    let warp = g.udivi(tid, 32);
    let lane = g.uremi(tid, 32);
    let votes = g.ballot(pred);
    let below = g.sreg("lanemask.lt");
    let in_warp = g.popc(g.and(votes, below));
    let lane0 = g.eqi(lane, 0);
    g.if_then(lane0, &mut |g| g.st_i32(totals, warp, g.popc(votes)));
    g.barrier();
    let before = g.var(g.i32t.into(), g.i32(0).into());
    let total = g.var(g.i32t.into(), g.i32(0).into());
    g.for_range(g.i32(0), g.i32(WARPS as i64), &mut |g, w| {
        let c = g.ld_i32(totals, w);
        let earlier = g.icmp(IntPredicate::ULT, w, warp);
        g.set(before, g.add(g.geti(before), g.seli(earlier, c, g.i32(0))));
        g.set(total, g.add(g.geti(total), c));
    });
    g.barrier();
    (g.add(g.geti(before), in_warp), g.geti(total))
}
