//! Rule 1's softmax on the GPU, in the fixed order of `select::softmax` (the CPU
//! executor's bits): the exponential, a chunk's statistics, a row's from its chunks', and
//! the fold of a token's probabilities over a list's heads. `exact`'s score entries and
//! H2O's update share them.

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;

use super::Shape;
use crate::codegen::nvptx::gen::{ok, Gen};
use crate::select::softmax::{EXP2_COEFFS, EXP2_MIN, LANES};
use crate::select::spec::Reduce;

/// `select::softmax::exp2c`: the same IEEE operations.
pub fn exp2c<'c>(g: &Gen<'c>, x: FloatValue<'c>) -> FloatValue<'c> {
    let inside = g.fcmp(inkwell::FloatPredicate::OGE, x, g.f32(EXP2_MIN as f64));
    let n = g.floor(x);
    let f = g.fsub(x, n);
    let mut p = g.f32(EXP2_COEFFS[6] as f64);
    for c in EXP2_COEFFS[..6].iter().rev() {
        p = g.fma(p, f, g.f32(*c as f64));
    }
    // For NaN or x < -126 the integer is garbage but clamped, and the result is dropped.
    let ni = ok(g.b.build_float_to_signed_int(n, g.i32t, ""));
    let e = g.smax(g.smin(g.addi(ni, 127), g.i32(254)), g.i32(1));
    let bits = ok(g.b.build_left_shift(e, g.i32(23), ""));
    let scale = g.f32_from_bits(bits);
    g.self_f(inside, g.fmul(p, scale), g.f32(0.0))
}

/// A chunk's `(m_c, z_c)` in every lane of a warp, from this lane's logits `xs` (the
/// chunk's entries `lane, lane + 32, ...` in order; `-inf` where there is none).
pub fn chunk_stats<'c>(g: &Gen<'c>, xs: &[FloatValue<'c>]) -> (FloatValue<'c>, FloatValue<'c>) {
    let m = g.lane_max(
        xs.iter()
            .fold(g.f32(f64::NEG_INFINITY), |a, x| g.maxnum(a, *x)),
        LANES as u32,
    );
    let z = xs
        .iter()
        .fold(g.f32(0.0), |a, x| g.fadd(a, exp2c(g, g.fsub(*x, m))));
    (m, g.lane_sum(z, LANES as u32))
}

/// Every head's `(m, 1 / z)` (the reciprocal rounded once) in every thread of the block:
/// a warp per head folds its row's chunk statistics ([`row_stats_at`]; `row_of(h)` says
/// where they are) into `smem` (two floats a head), a barrier, then every thread loads
/// them. `(warp, lane, warps)`: this thread's warp and lane and the block's warps.
pub fn heads_row_stats<'c>(
    g: &Gen<'c>,
    s: &Shape,
    (warp, lane, warps): (IntValue<'c>, IntValue<'c>, u32),
    smem: PointerValue<'c>,
    row_of: &dyn Fn(&Gen<'c>, IntValue<'c>) -> (PointerValue<'c>, IntValue<'c>),
    (chunks, used): (u32, IntValue<'c>),
) -> Vec<(FloatValue<'c>, FloatValue<'c>)> {
    stats_of_rows(g, (warp, lane, warps), smem, s.g, row_of, (chunks, used));
    (0..s.g)
        .map(|h| {
            let z = g.ld_f32(smem, g.i32(2 * h as i64 + 1));
            (g.ld_f32(smem, g.i32(2 * h as i64)), g.fdiv(g.f32(1.0), z))
        })
        .collect()
}

/// The `(m, z)` of `rows` rows into `smem` (two floats a row), a warp a row (`row_of(r)`
/// says where row `r`'s chunk statistics are; [`row_stats_at`]), then a barrier.
pub fn stats_of_rows<'c>(
    g: &Gen<'c>,
    (warp, lane, warps): (IntValue<'c>, IntValue<'c>, u32),
    smem: PointerValue<'c>,
    rows: u32,
    row_of: &dyn Fn(&Gen<'c>, IntValue<'c>) -> (PointerValue<'c>, IntValue<'c>),
    (chunks, used): (u32, IntValue<'c>),
) {
    g.for_step(warp, g.i32(rows as i64), warps as i64, &mut |g, h| {
        let (m, z) = row_stats_at(g, lane, row_of(g, h), chunks, used);
        g.if_then(g.eqi(lane, 0), &mut |g| {
            g.st_f32(smem, g.muli(h, 2), m);
            g.st_f32(smem, g.addi(g.muli(h, 2), 1), z);
        });
    });
    g.barrier();
}

/// A row's `(m, z)` in every lane of a warp from its chunks' `(m_c, z_c)`, stored as
/// pairs at `stats[2 (row + c)]` for the chunks `c < used` of at most `chunks`: lane
/// `lane` folds the chunks `lane, lane + 32, ...` in order.
fn row_stats_at<'c>(
    g: &Gen<'c>,
    lane: IntValue<'c>,
    (stats, row): (PointerValue<'c>, IntValue<'c>),
    chunks: u32,
    used: IntValue<'c>,
) -> (FloatValue<'c>, FloatValue<'c>) {
    let per: Vec<(IntValue<'c>, FloatValue<'c>, FloatValue<'c>)> = (0..chunks
        .div_ceil(LANES as u32))
        .map(|i| {
            let c = g.addi(lane, (i * LANES as u32) as i64);
            let valid = g.icmp(IntPredicate::ULT, c, used);
            let at = g.muli(g.add(row, g.seli(valid, c, g.i32(0))), 2);
            let mc = g.self_f(valid, g.ld_f32(stats, at), g.f32(f64::NEG_INFINITY));
            (valid, mc, g.ld_f32(stats, g.addi(at, 1)))
        })
        .collect();
    row_stats(g, &per)
}

/// A row's `(m, z)` in every lane of a warp, from this lane's chunks
/// `(valid, m_c, z_c)` (the row's chunks `lane, lane + 32, ...` in order).
fn row_stats<'c>(
    g: &Gen<'c>,
    chunks: &[(IntValue<'c>, FloatValue<'c>, FloatValue<'c>)],
) -> (FloatValue<'c>, FloatValue<'c>) {
    let m = g.lane_max(
        chunks
            .iter()
            .fold(g.f32(f64::NEG_INFINITY), |a, x| g.maxnum(a, x.1)),
        LANES as u32,
    );
    let z = chunks.iter().fold(g.f32(0.0), |a, (valid, mc, zc)| {
        let next = g.fma(*zc, exp2c(g, g.fsub(*mc, m)), a);
        g.self_f(*valid, next, a)
    });
    (m, g.lane_sum(z, LANES as u32))
}

/// A token's probabilities `exp2c(l - m) * rz` for the list's heads in order (`heads`:
/// its logit and its row's `(m, 1 / z)`), folded with the list's reduction.
pub fn fold_heads<'c>(
    g: &Gen<'c>,
    s: &Shape,
    heads: impl Iterator<Item = (FloatValue<'c>, (FloatValue<'c>, FloatValue<'c>))>,
) -> FloatValue<'c> {
    let mut acc = g.f32(0.0);
    for (h, (l, (m, rz))) in heads.enumerate() {
        let p = g.fmul(exp2c(g, g.fsub(l, m)), rz);
        acc = if h == 0 { p } else { fold(g, s.op, acc, p) };
    }
    if s.op == Reduce::Mean {
        acc = g.fdiv(acc, g.f32(s.g as f64));
    }
    acc
}

/// `a op x` for a reduction after its first value, as the CPU's `score::fold`: `sum` and
/// `mean` add (`mean` divides once at the end, by the caller), `max` is `maxNum`.
pub fn fold<'c>(g: &Gen<'c>, op: Reduce, a: FloatValue<'c>, x: FloatValue<'c>) -> FloatValue<'c> {
    match op {
        Reduce::Max => g.maxnum(a, x),
        Reduce::Sum | Reduce::Mean => g.fadd(a, x),
    }
}
