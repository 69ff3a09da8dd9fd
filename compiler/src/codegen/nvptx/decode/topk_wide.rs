//! Rules 6 and 7 on the GPU for long lists (more units than the one-block top-k stages:
//! `exact` scores over 131072 tokens): the same radix select and emission as `topk.rs`,
//! spread over `ceil(U / SEG)` blocks per list so that every SM takes part. Entries,
//! launched in order, all `(scores, lens, work, idx)`:
//!
//! - `topk_pass0..2`: the digits of the 32-bit key, 12, 12 and 8 bits from the top. Each
//!   block counts the digits of its units that carry the decided prefix into a shared
//!   histogram and adds it to the list's histogram in `work`; the last block to arrive (a
//!   counter, after a fence) finds the bin that holds the wanted rank, records the longer
//!   prefix and the rank within it, and clears the histogram and the counter for the next
//!   pass (so the work buffer needs no reset between steps: CUDA graphs stay valid); the
//!   last pass also advances the list's step number.
//!   For `exact` scores the score entry counts the first digit as it computes the scores
//!   ([`Pass0`]), and `topk_pass0` does not exist.
//! - `topk_emit`: warp ballots turn the keys into masks of units above `T` and equal to it,
//!   one 32-bit word per 32 adjacent units; each block publishes its counts of both under
//!   the step number and adds up the earlier blocks' as they appear (a decoupled look-back:
//!   [`look_back`]; a separate counting entry cost a launch); each thread takes a word,
//!   and from those counts and two block scans (equal units before it, taken units before
//!   it) it knows where its units go and writes those above `T` and the equal ones whose
//!   rank among all equal ones is below the number to take, in ascending order.
//!
//! The selected set and its order are exactly the one-block kernel's, hence the CPU's.
//!
//! `work` (u32): per list a histogram of [`BINS`] counts, then per list 4 words (prefix,
//! rank, arrivals, step number), then per list and block 2 words (above and equal packed,
//! the step number they belong to).

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;

use super::topk::{block_scan, count_digit, digit, forced_bounds, key_of};
use super::Shape;
use crate::codegen::nvptx::gen::{ok, Gen};
use crate::select::spec::Source;

pub const THREADS: u32 = 1024;
/// Units per thread, and per block.
const PER: u32 = 32;
pub const SEG: u32 = THREADS * PER;
/// Floats the scores buffer holds past its `[B, Hsel, U]` units, so that the last block
/// of the last list loads inside it.
pub const SCORES_PAD: usize = SEG as usize;
/// Bins of the widest digit.
pub const BINS: u32 = 4096;
/// (shift, bits) of each pass's digit.
pub const DIGITS: [(u32, u32); 3] = [(20, 12), (8, 12), (0, 8)];

/// Blocks per list.
pub fn blocks(s: &Shape) -> u32 {
    s.units.div_ceil(SEG)
}

/// Whether the lists are long enough for this top-k (else the one-block `topk.rs`).
pub fn wide(s: &Shape) -> bool {
    s.source != Source::None && s.units > super::topk::STAGE_MAX
}

/// Whether the score entry counts the first digit (exact scores of long lists).
pub fn fused_first_pass(s: &Shape) -> bool {
    wide(s) && s.source == Source::Exact
}

/// u32 words of the work buffer.
pub fn work_words(s: &Shape) -> usize {
    let lists = (s.b * s.hsel) as usize;
    lists * (BINS as usize + 4 + 2 * blocks(s) as usize)
}

/// What each entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Pass(usize),
    Emit,
}

impl Step {
    /// The entry's name suffix.
    pub fn name(self) -> String {
        match self {
            Step::Pass(i) => format!("topk_pass{i}"),
            Step::Emit => "topk_emit".into(),
        }
    }
}

/// The entries in launch order.
pub fn steps(s: &Shape) -> Vec<Step> {
    let first = usize::from(fused_first_pass(s));
    let mut v: Vec<Step> = (first..DIGITS.len()).map(Step::Pass).collect();
    v.push(Step::Emit);
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
    /// The list keeps every unit (no selection to make).
    short: IntValue<'c>,
}

impl<'c> List<'c> {
    /// List `sel` of sequence `b`, as block `blk` of it sees it.
    fn new(
        g: &Gen<'c>,
        s: &Shape,
        lens: PointerValue<'c>,
        (blk, sel, b): (IntValue<'c>, IntValue<'c>, IntValue<'c>),
    ) -> List<'c> {
        let tid = g.sreg("tid.x");
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
            short: g.icmp(IntPredicate::ULE, n, g.i32(s.cap as i64)),
        }
    }
}

/// The keys of the block's units `blk * SEG + r * THREADS + tid`, `r < PER` (coalesced),
/// all loads issued together from one base address (those past the list's units stay
/// inside the buffer: [`SCORES_PAD`]): `(valid, key)`.
fn keys<'c>(
    g: &Gen<'c>,
    scores: PointerValue<'c>,
    l: &List<'c>,
) -> Vec<(IntValue<'c>, IntValue<'c>)> {
    let first = g.add(g.muli(l.blk, SEG as i64), l.tid);
    let base = g.gep(g.f32t.into(), scores, g.add(l.row_in, first));
    let xs: Vec<FloatValue<'c>> = (0..PER)
        .map(|r| g.ld_f32(base, g.i32((r * THREADS) as i64)))
        .collect();
    xs.into_iter()
        .enumerate()
        .map(|(r, x)| {
            let u = g.addi(first, (r as u32 * THREADS) as i64);
            let valid = g.icmp(IntPredicate::ULT, u, l.n);
            (valid, key_of(g, l.forced, u, x))
        })
        .collect()
}

/// Emits entry `step`.
pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>], step: Step) {
    let (scores, lens, work, out) = (p[0], p[1], p[2], p[3]);
    let ids = (g.sreg("ctaid.x"), g.sreg("ctaid.y"), g.sreg("ctaid.z"));
    let l = List::new(g, s, lens, ids);
    if let Step::Emit = step {
        emit_lists(g, s, &l, scores, work, out);
        return;
    }
    let Step::Pass(i) = step else { return };
    // A list that fits keeps everything: only the emission writes it.
    g.if_then(g.not(l.short), &mut |g| {
        let h = Hist::new(g, i, THREADS);
        let (prefix, _) = h.decided(g, s, &l, work);
        let mask = g.i32t.const_int(h.mask(), false);
        for (valid, k) in keys(g, scores, &l) {
            let same = g.and(valid, g.icmp(IntPredicate::EQ, g.and(k, mask), prefix));
            h.count(g, same, k);
        }
        h.finish(g, s, &l, work, blocks(s));
    });
}

/// The first pass fused into a producer of scores (the exact score entry): the producer
/// calls [`Pass0::count`] on every unit it scores, then [`Pass0::finish`] in every block.
pub struct Pass0<'c> {
    hist: Hist<'c>,
    list: List<'c>,
    work: PointerValue<'c>,
    blocks: u32,
}

impl<'c> Pass0<'c> {
    /// Every thread of every block of the producer calls this first (block-uniform code);
    /// the producer has `blocks` blocks per list of `threads` threads.
    pub fn begin(
        g: &Gen<'c>,
        s: &Shape,
        lens: PointerValue<'c>,
        work: PointerValue<'c>,
        ids: (IntValue<'c>, IntValue<'c>, IntValue<'c>),
        (blocks, threads): (u32, u32),
    ) -> Pass0<'c> {
        let list = List::new(g, s, lens, ids);
        let hist = Hist::new(g, 0, threads);
        Pass0 {
            hist,
            list,
            work,
            blocks,
        }
    }

    /// Counts unit `u` with score `x` where `valid` (warp-uniform call).
    pub fn count(&self, g: &Gen<'c>, u: IntValue<'c>, valid: IntValue<'c>, x: FloatValue<'c>) {
        let k = key_of(g, self.list.forced, u, x);
        let same = g.and(valid, g.not(self.list.short));
        self.hist.count(g, same, k);
    }

    /// Every thread of every block calls this last.
    pub fn finish(&self, g: &Gen<'c>, s: &Shape) {
        g.if_then(g.not(self.list.short), &mut |g| {
            self.hist.finish(g, s, &self.list, self.work, self.blocks)
        });
    }
}

/// A pass's shared histogram (zeroed when made: every thread of the block makes it).
struct Hist<'c> {
    i: usize,
    hist: PointerValue<'c>,
    /// Threads of the block.
    threads: u32,
}

impl<'c> Hist<'c> {
    fn new(g: &Gen<'c>, i: usize, threads: u32) -> Hist<'c> {
        let bins = 1u32 << DIGITS[i].1;
        let hist = g.shared_array(&format!("topk_hist{i}"), g.i32t.into(), bins);
        let tid = g.sreg("tid.x");
        g.for_step(tid, g.i32(bins as i64), threads as i64, &mut |g, b| {
            g.st_i32(hist, b, g.i32(0))
        });
        g.barrier();
        Hist { i, hist, threads }
    }

    fn bins(&self) -> u32 {
        1 << DIGITS[self.i].1
    }

    /// The bits decided before this pass.
    fn mask(&self) -> u64 {
        let (shift, bits) = DIGITS[self.i];
        (0xFFFF_FFFFu64 << (shift + bits)) & 0xFFFF_FFFF
    }

    /// The decided prefix and the wanted rank among the keys carrying it.
    fn decided(
        &self,
        g: &Gen<'c>,
        s: &Shape,
        l: &List<'c>,
        work: PointerValue<'c>,
    ) -> (IntValue<'c>, IntValue<'c>) {
        if self.i == 0 {
            (g.i32(0), g.i32(s.cap as i64))
        } else {
            (g.ld_i32(work, l.state), g.ld_i32(work, g.addi(l.state, 1)))
        }
    }

    fn count(&self, g: &Gen<'c>, same: IntValue<'c>, k: IntValue<'c>) {
        let (shift, bits) = DIGITS[self.i];
        count_digit(
            g,
            self.hist,
            same,
            digit(g, k, shift, bits),
            self.bins() as i64,
        );
    }

    /// Adds the block's histogram to the list's; the last of the list's `blocks` blocks to
    /// arrive picks the bin (block-uniform code).
    fn finish(&self, g: &Gen<'c>, s: &Shape, l: &List<'c>, work: PointerValue<'c>, blocks: u32) {
        let (shift, _) = DIGITS[self.i];
        let bins = self.bins();
        let totals = g.shared_array(&format!("topk_warps{}", self.i), g.i32t.into(), 32);
        let flag = g.shared_array(&format!("topk_last{}", self.i), g.i32t.into(), 1);
        let (prefix, want) = self.decided(g, s, l, work);
        g.barrier();
        let ghist = g.muli(l.row, BINS as i64);
        g.for_step(
            l.tid,
            g.i32(bins as i64),
            self.threads as i64,
            &mut |g, b| {
                let c = g.ld_i32(self.hist, b);
                g.if_then(g.icmp(IntPredicate::NE, c, g.i32(0)), &mut |g| {
                    g.atomic_add_i32(g.gep(g.i32t.into(), work, g.add(ghist, b)), c);
                });
            },
        );
        g.fence_gpu();
        g.barrier();
        g.if_then(g.eqi(l.tid, 0), &mut |g| {
            let arrivals = g.gep(g.i32t.into(), work, g.addi(l.state, 2));
            let before = g.atomic_add_i32(arrivals, g.i32(1));
            let last = g.icmp(IntPredicate::EQ, before, g.i32(blocks as i64 - 1));
            g.st_i32(flag, g.i32(0), ok(g.b.build_int_z_extend(last, g.i32t, "")));
        });
        g.barrier();
        let last = g.icmp(IntPredicate::NE, g.ld_i32(flag, g.i32(0)), g.i32(0));
        g.if_then(last, &mut |g| {
            g.fence_gpu();
            // Thread t holds `per` bins from the top (all loads issued together, past the
            // L1), and clears them for the next pass.
            let per = bins.div_ceil(self.threads);
            let slots: Vec<(IntValue<'c>, IntValue<'c>)> = (0..per)
                .map(|j| {
                    let idx = g.addi(g.muli(l.tid, per as i64), j as i64);
                    let inside = g.icmp(IntPredicate::ULT, idx, g.i32(bins as i64));
                    let bin = g.sub(g.i32(bins as i64 - 1), g.seli(inside, idx, g.i32(0)));
                    (inside, bin)
                })
                .collect();
            let counts: Vec<IntValue<'c>> = slots
                .iter()
                .map(|(inside, bin)| {
                    let c = g.ld_i32_volatile(work, g.add(ghist, *bin));
                    g.seli(*inside, c, g.i32(0))
                })
                .collect();
            for (inside, bin) in &slots {
                g.if_then(*inside, &mut |g| {
                    g.st_i32(work, g.add(ghist, *bin), g.i32(0))
                });
            }
            let held: Vec<(IntValue<'c>, IntValue<'c>)> =
                slots.iter().map(|x| x.1).zip(counts).collect();
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
            let final_pass = self.i + 1 == DIGITS.len();
            g.if_then(g.eqi(l.tid, 0), &mut |g| {
                g.st_i32(work, g.addi(l.state, 2), g.i32(0));
                if final_pass {
                    // A new step's threshold: the emission's blocks publish their counts
                    // under this number.
                    let epoch = g.addi(l.state, 3);
                    g.st_i32(work, epoch, g.addi(g.ld_i32(work, epoch), 1));
                }
            });
        });
    }
}

/// Block `l.blk`'s counts (`total`: above T in the high half, equal in the low) published
/// for the later blocks of its list, then the earlier blocks' summed: `(above, equal)` in
/// every thread. A block's counts are `(packed, epoch)` at [`counts_at`]: it stores them,
/// fences, then stores the step's `epoch` (which the last radix pass advanced), and a
/// reader waits for that number before it reads them, so nothing needs clearing between
/// steps.
fn look_back<'c>(
    g: &Gen<'c>,
    s: &Shape,
    l: &List<'c>,
    work: PointerValue<'c>,
    (epoch, total): (IntValue<'c>, IntValue<'c>),
) -> (IntValue<'c>, IntValue<'c>) {
    let nb = blocks(s);
    let prev = g.shared_array("topk_emit_before", g.i32t.into(), nb);
    g.if_then(g.eqi(l.tid, 0), &mut |g| {
        let mine = counts_at(g, s, l.row, l.blk);
        g.st_i32(work, mine, total);
        g.fence_gpu();
        g.st_i32(work, g.addi(mine, 1), epoch);
    });
    // Thread `e < blk` waits for block `e`'s counts of this step.
    g.if_then(g.lt(l.tid, l.blk), &mut |g| {
        let at = counts_at(g, s, l.row, l.tid);
        g.while_loop(
            &mut |g| {
                let seen = g.ld_i32_volatile(work, g.addi(at, 1));
                g.icmp(IntPredicate::NE, seen, epoch)
            },
            &mut |g| g.nanosleep(32),
        );
        g.fence_gpu();
        g.st_i32(prev, l.tid, g.ld_i32_volatile(work, at));
    });
    g.barrier();
    (0..nb).fold((g.i32(0), g.i32(0)), |(above, equal), e| {
        let before = g.lt(g.i32(e as i64), l.blk);
        let c = g.seli(before, g.ld_i32(prev, g.i32(e as i64)), g.i32(0));
        let hi = ok(g.b.build_right_shift(c, g.i32(16), false, ""));
        (g.add(above, hi), g.add(equal, g.and(c, g.i32(0xFFFF))))
    })
}

/// Where block `blk`'s counts of list `row` live.
fn counts_at<'c>(g: &Gen<'c>, s: &Shape, row: IntValue<'c>, blk: IntValue<'c>) -> IntValue<'c> {
    let lists = (s.b * s.hsel) as i64;
    let base = lists * (BINS as i64 + 4);
    let nb = blocks(s) as i64;
    g.addi(g.muli(g.add(g.muli(row, nb), blk), 2), base)
}

fn emit_lists<'c>(
    g: &Gen<'c>,
    s: &Shape,
    l: &List<'c>,
    scores: PointerValue<'c>,
    work: PointerValue<'c>,
    out: PointerValue<'c>,
) {
    let totals = g.shared_array("topk_emit_warps", g.i32t.into(), 32);
    let row_out = g.muli(l.row, s.cap as i64);
    let nb = blocks(s);
    g.if_else(
        l.short,
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
            let epoch = g.ld_i32(work, g.addi(l.state, 3));
            // This thread's PER adjacent units as bit masks of "above" and "equal": the
            // keys are read coalesced (unit r * THREADS + tid of the block), a warp's
            // ballot is the mask of 32 adjacent units, and thread t takes word t.
            let gt_words = g.shared_array("topk_emit_gt", g.i32t.into(), THREADS);
            let eq_words = g.shared_array("topk_emit_eq", g.i32t.into(), THREADS);
            let warp = g.udivi(l.tid, 32);
            let lane0 = g.eqi(g.uremi(l.tid, 32), 0);
            for (r, (valid, k)) in keys(g, scores, l).into_iter().enumerate() {
                let above = g.ballot(g.and(valid, g.icmp(IntPredicate::UGT, k, t)));
                let equal = g.ballot(g.and(valid, g.icmp(IntPredicate::EQ, k, t)));
                let word = g.addi(warp, (r as u32 * THREADS / 32) as i64);
                g.if_then(lane0, &mut |g| {
                    g.st_i32(gt_words, word, above);
                    g.st_i32(eq_words, word, equal);
                });
            }
            g.barrier();
            let first = g.add(g.muli(l.blk, SEG as i64), g.muli(l.tid, PER as i64));
            let gt_bits = g.ld_i32(gt_words, l.tid);
            let eq_bits = g.ld_i32(eq_words, l.tid);
            // This block's units above T and equal to it, in one scan (above in the high
            // half, equal in the low: each at most SEG).
            let mine_eq = g.popc(eq_bits);
            let both = g.add(
                ok(g.b.build_left_shift(g.popc(gt_bits), g.i32(16), "")),
                mine_eq,
            );
            let (both_before, total) = block_scan(g, totals, l.tid, both);
            let eq_before = g.and(both_before, g.i32(0xFFFF));
            // Decoupled look-back: publish this block's counts under the step's number,
            // then add the earlier blocks' as they appear (they started first).
            let (above, equal) = look_back(g, s, l, work, (epoch, total));
            let eq_start = g.add(equal, eq_before);
            // Of this thread's equal units, the first `need - eq_start` (clamped) are taken.
            let room = g.seli(
                g.icmp(IntPredicate::ULT, eq_start, need),
                g.sub(need, eq_start),
                g.i32(0),
            );
            let take_eq = g.seli(g.icmp(IntPredicate::ULT, room, mine_eq), room, mine_eq);
            let (pos_before, _) = block_scan(g, totals, l.tid, g.add(g.popc(gt_bits), take_eq));
            let taken_eq_before = g.seli(g.icmp(IntPredicate::ULT, equal, need), equal, need);
            let pos = g.var(
                g.i32t.into(),
                g.add(g.add(above, taken_eq_before), pos_before).into(),
            );
            // The taken units: every one above T, and the first `take_eq` equal ones;
            // written in unit order, one iteration per taken unit.
            let take = g.var(g.i32t.into(), gt_bits.into());
            let eqs = g.var(g.i32t.into(), eq_bits.into());
            g.for_range(g.i32(0), take_eq, &mut |g, _| {
                let m = g.geti(eqs);
                let lowest = g.and(m, g.sub(g.i32(0), m));
                g.set(take, g.or(g.geti(take), lowest));
                g.set(eqs, g.sub(m, lowest));
            });
            g.while_loop(
                &mut |g| g.icmp(IntPredicate::NE, g.geti(take), g.i32(0)),
                &mut |g| {
                    let m = g.geti(take);
                    g.st_i32(out, g.add(row_out, g.geti(pos)), g.add(first, g.ctz(m)));
                    g.set(pos, g.addi(g.geti(pos), 1));
                    g.set(take, g.and(m, g.addi(m, -1)));
                },
            );
        },
    );
}
