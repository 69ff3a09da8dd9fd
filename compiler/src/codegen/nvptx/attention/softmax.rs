//! The online softmax on fragments: row maxima, the lazily rescaled running max and sum,
//! the exponentials.

use super::*;

impl<'a, 'c> Attention<'a, 'c> {
    pub(super) fn quad_reduce(&self, x: FloatValue<'c>, max: bool) -> FloatValue<'c> {
        let g = self.g;
        let mut x = x;
        for m in [1, 2] {
            let y = g.shfl_xor(x, m);
            x = if max { g.maxnum(x, y) } else { g.fadd(x, y) };
        }
        x
    }

    /// `op` over a row's values: one chain in column order from `init`, or `CHAINS`
    /// chains (`Tuning::chains`).
    fn row_reduce(
        &self,
        init: FloatValue<'c>,
        values: Vec<FloatValue<'c>>,
        op: &dyn Fn(FloatValue<'c>, FloatValue<'c>) -> FloatValue<'c>,
    ) -> FloatValue<'c> {
        if self.cfg.shape.chains {
            interleaved(values, CHAINS, op)
        } else {
            values.into_iter().fold(init, op)
        }
    }

    pub(super) fn row_max(&self, f: &mut Frags<'c>) {
        let g = self.g;
        for row in 0..2 {
            let m = self.row_reduce(
                g.f32(f64::NEG_INFINITY),
                row_values(g, &f.s, row),
                &|a, b| g.maxnum(a, b),
            );
            f.rowmax[row] = Some(self.quad_reduce(m, true));
        }
    }

    /// The online softmax's update, with lazy rescaling (as FlashAttention-4): the running
    /// max `m` (log2 units) moves only when a row of the warp meets a chunk max more than
    /// `RESCALE_SLACK` above it; then every row of the warp takes `m' = max(m, rowmax)` and
    /// its accumulators and sum are multiplied by `alpha = 2^(m - m')`, else nothing is
    /// (64 multiplies a chunk saved). Either way `p = 2^(s c - m)` with `s c - m <=
    /// RESCALE_SLACK`, so `p <= 256`: exact in f32, and as precise in bf16/f16 as any `p`
    /// (the final division by `l` uses the same `m`). A row whose max is still -inf gets
    /// `p = 0` and keeps accumulator and sum at 0. `c` folds the scale (when `Scale` was
    /// deferred) and `log2 e` (natural-exponent kernels) into one multiply-add.
    pub(super) fn softmax(&self, f: &mut Frags<'c>, exp2: bool) {
        let g = self.g;
        let k = if exp2 { 1.0 } else { std::f64::consts::LOG2_E };
        let c = g.f32(f.scale.unwrap_or(1.0) * k);
        let ninf = g.f32(f64::NEG_INFINITY);
        // The chunk's row maxima in log2 units (c > 0: -inf stays -inf).
        let rm = [0, 1].map(|row| f.rowmax[row].map_or(ninf, |x| g.fmul(x, c)));
        let mut need = g.cx.bool_type().const_int(0, false);
        for (row, r) in rm.iter().enumerate() {
            let bound = g.fadd(g.getf(f.m[row]), g.f32(RESCALE_SLACK));
            need = g.or(need, g.fcmp(FloatPredicate::OGT, *r, bound));
        }
        let any = g.icmp(IntPredicate::NE, g.ballot(need), g.i32(0));
        // In the overlapped loop `P V` may still be writing the accumulators: their factors
        // wait in variables until it completes (`rescale_deferred`).
        let factors = self
            .cfg
            .shape
            .overlap
            .then(|| [0; 2].map(|_| g.var(g.f32t.into(), g.f32(1.0).into())));
        let (acc, l, m) = (&f.acc, f.l, f.m);
        g.if_then(any, &mut |g| {
            for (row, r) in rm.iter().enumerate() {
                let m_old = g.getf(m[row]);
                let m_new = g.maxnum(m_old, *r);
                let alpha = g.ex2(g.fsub(m_old, live_max(g, m_new)));
                match factors {
                    Some(fs) => g.set(fs[row], alpha),
                    None => rescale_rows(g, acc, row, alpha),
                }
                g.set(l[row], g.fmul(g.getf(l[row]), alpha));
                g.set(m[row], m_new);
            }
        });
        f.deferred = factors.map(|fs| (any, fs));
        let poly = self.cfg.shape.poly;
        for row in 0..2 {
            let neg_m = g.fsub(g.f32(0.0), live_max(g, g.getf(f.m[row])));
            let elems = f.s.iter().flat_map(|t| [t[2 * row], t[2 * row + 1]]);
            for (j, v) in elems.enumerate() {
                let x = g.fma(g.getf(v), c, neg_m);
                let p = if poly && j % 4 == 3 {
                    poly_ex2(g, x)
                } else {
                    g.ex2(x)
                };
                g.set(v, p);
            }
        }
    }

    /// The overlapped loop: the softmax's rescale of the accumulators, once `P V` is done.
    pub(super) fn rescale_deferred(&self, f: &mut Frags<'c>) {
        let g = self.g;
        if let Some((any, factors)) = f.deferred.take() {
            let acc = &f.acc;
            g.if_then(any, &mut |g| {
                for (row, a) in factors.iter().enumerate() {
                    rescale_rows(g, acc, row, g.getf(*a));
                }
            });
        }
    }

    /// `l += rowsum(p)` (thread-partial sums; reduced across the quad at the end; the
    /// softmax rescaled `l` when `m` moved).
    pub(super) fn update_l(&self, f: &mut Frags<'c>) {
        let g = self.g;
        for row in 0..2 {
            let sum = self.row_reduce(g.f32(0.0), row_values(g, &f.s, row), &|a, b| g.fadd(a, b));
            g.set(f.l[row], g.fadd(g.getf(f.l[row]), sum));
        }
    }
}

/// This thread's values of fragment row `row` (0: g, 1: g + 8), in column order.
fn row_values<'c>(g: &Gen<'c>, s: &[[Var<'c>; 4]], row: usize) -> Vec<FloatValue<'c>> {
    s.iter()
        .flat_map(|t| [t[2 * row], t[2 * row + 1]])
        .map(|v| g.getf(v))
        .collect()
}

/// Independent chains a row's max or sum is split into with `Tuning::chains`: one chain is
/// 32 dependent instructions, each waiting for the last (run 42: the row max took 14 % of
/// the computing warps' samples); four chains of eight and two steps to join them are
/// about a third of that latency.
const CHAINS: usize = 4;

/// `op` over `values` (at least one) as `chains` interleaved chains joined pairwise.
fn interleaved<'c>(
    values: Vec<FloatValue<'c>>,
    chains: usize,
    op: &dyn Fn(FloatValue<'c>, FloatValue<'c>) -> FloatValue<'c>,
) -> FloatValue<'c> {
    let mut acc: Vec<FloatValue<'c>> = values.iter().take(chains).copied().collect();
    for (i, v) in values.iter().enumerate().skip(chains) {
        acc[i % chains] = op(acc[i % chains], *v);
    }
    while acc.len() > 1 {
        acc = acc
            .chunks(2)
            .map(|p| if p.len() == 2 { op(p[0], p[1]) } else { p[0] })
            .collect();
    }
    acc[0]
}

/// `2^f` on `[0, 1)` as `1 + f (C1 + f (C2 + f C3))`, fitted for relative error (at most
/// 8.7e-5, far below bf16's 3.9e-3 that P is rounded to).
const POLY_EX2: [f64; 3] = [0.695_114_5, 0.227_655_4, 0.077_057_49];

/// `2^x` without the MUFU unit (FlashAttention-4's software exponential): `x` split into
/// an integer `j` and a fraction `f` in `[0, 1]`, `2^f` by the cubic, `j` added to the
/// exponent bits. `j` comes from adding `1.5 * 2^23` to `x - 1/2` (round to nearest even:
/// `floor(x)`, or `x - 1` at an odd integer `x`, where `f = 1`), which leaves `j` in the
/// low bits of the sum, so that no conversion runs on the MUFU unit's conversion pipe
/// either. `x` is at most `RESCALE_SLACK` here; below -126 (masked scores are -inf) the
/// result is 0, as `ex2.approx.ftz` flushes what would be denormal.
fn poly_ex2<'c>(g: &Gen<'c>, x_in: FloatValue<'c>) -> FloatValue<'c> {
    let x = g.maxnum(x_in, g.f32(-126.0));
    let shifted = g.fadd(g.fsub(x, g.f32(0.5)), g.f32(ROUNDER));
    let j = g.fsub(shifted, g.f32(ROUNDER));
    let f = g.fsub(x, j);
    let [c1, c2, c3] = POLY_EX2.map(|c| g.f32(c));
    let p = g.fma(g.fma(g.fma(f, c3, c2), f, c1), f, g.f32(1.0));
    let j_bits = g.sub(g.f32_bits(shifted), g.f32_bits(g.f32(ROUNDER)));
    let bits = g.add(
        g.f32_bits(p),
        ok(g.b.build_left_shift(j_bits, g.i32(23), "")),
    );
    let flushed = g.fcmp(FloatPredicate::OLT, x_in, g.f32(-126.0));
    g.self_f(flushed, g.f32(0.0), g.f32_from_bits(bits))
}

/// `1.5 * 2^23`: added to a float of magnitude below 2^22, it rounds it to an integer held
/// in the low bits of the sum's mantissa.
const ROUNDER: f64 = 12_582_912.0;

/// How far (log2 units) a chunk's row max may exceed the running max before the running
/// max moves and the accumulators are rescaled: `p` stays at most `2^8`.
const RESCALE_SLACK: f64 = 8.0;

/// `acc *= alpha` on this thread's elements of fragment row `row` (0: g, 1: g + 8).
fn rescale_rows<'c>(g: &Gen<'c>, acc: &[[Var<'c>; 4]], row: usize, alpha: FloatValue<'c>) {
    for t in acc {
        for e in [2 * row, 2 * row + 1] {
            g.set(t[e], g.fmul(g.getf(t[e]), alpha));
        }
    }
}

/// The max that exponents subtract: 0 for a row whose max is still -inf (all its scores
/// are -inf, so `p = 2^-inf = 0` and `alpha` is 0 as well).
fn live_max<'c>(g: &Gen<'c>, m: FloatValue<'c>) -> FloatValue<'c> {
    let dead = g.fcmp(FloatPredicate::OEQ, m, g.f32(f64::NEG_INFINITY));
    g.self_f(dead, g.f32(0.0), m)
}

#[cfg(test)]
mod tests {
    use super::POLY_EX2;

    /// `poly_ex2`'s arithmetic in f32, step for step.
    fn poly_ex2(x_in: f32) -> f32 {
        let rounder = super::ROUNDER as f32;
        let x = x_in.max(-126.0);
        let shifted = (x - 0.5) + rounder;
        let j = shifted - rounder;
        let f = x - j;
        let [c1, c2, c3] = POLY_EX2.map(|c| c as f32);
        let p = f.mul_add(f.mul_add(f.mul_add(c3, c2), c1), 1.0);
        let j_bits = shifted.to_bits().wrapping_sub(rounder.to_bits());
        if x_in < -126.0 {
            0.0
        } else {
            f32::from_bits(p.to_bits().wrapping_add(j_bits << 23))
        }
    }

    #[test]
    fn the_software_exponential_is_within_bf16_rounding() {
        let mut worst = 0f64;
        for i in 0..=(135 * 1024) {
            let x = -126.0 + f64::from(i) / 1024.0;
            let got = f64::from(poly_ex2(x as f32));
            let want = (x as f32 as f64).exp2();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 1e-4, "worst relative error {worst:e}");
        // Masked scores (-inf) and anything below -126 give 0, as ex2.approx.ftz does.
        for x in [f32::NEG_INFINITY, -126.5, -127.0, -200.0] {
            assert_eq!(poly_ex2(x), 0.0, "{x}");
        }
        assert_eq!(poly_ex2(-126.0), f32::MIN_POSITIVE);
        assert_eq!(poly_ex2(0.0), 1.0);
        assert_eq!(poly_ex2(4.0), 16.0);
    }
}
