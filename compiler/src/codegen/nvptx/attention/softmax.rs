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
        for row in 0..2 {
            let neg_m = g.fsub(g.f32(0.0), live_max(g, g.getf(f.m[row])));
            for t in &f.s {
                for e in [2 * row, 2 * row + 1] {
                    let p = g.ex2(g.fma(g.getf(t[e]), c, neg_m));
                    g.set(t[e], p);
                }
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
