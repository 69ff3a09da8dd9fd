//! Rule 1 for `exact` and `window` scores: the softmax of a row of logits in a fixed order
//! of IEEE operations, so that every backend (the CPU executor here, the CUDA kernels of
//! `codegen::nvptx::decode::exact`) computes the same bits and selects the same tokens.
//! `docs/kv-selection.md` (rule 1, "exact") states it; in short:
//!
//! - a logit is `fmul(dot, scale * log2(e))` (base 2), the dot in the lane-tree order of
//!   the page bound (`score_lanes(D)` lanes of adjacent channels, `fma`, butterfly);
//! - `exp2c`, below, is the only exponential: a floor, a degree-6 polynomial by Horner
//!   with `fma`, an exact scaling by `2^n`; below `2^-126` (and for NaN) it gives 0;
//! - the row is cut into chunks of [`CHUNK`] tokens. Chunk `c` has its maximum `m_c` and
//!   `z_c`, the sum of `exp2c(l - m_c)` over its tokens: [`LANES`] lane sums (lane `t`
//!   adds the tokens `t, t + 32, ...` of the chunk in order), then a butterfly;
//! - the row's maximum `m` is the maximum of the `m_c`, and its normaliser `z` is again
//!   [`LANES`] lane sums (lane `t` takes the chunks `t, t + 32, ...` in order,
//!   `z_t = fma(z_c, exp2c(m_c - m), z_t)`), then a butterfly;
//! - the probability of token `j` is `exp2c(l_j - m) * (1 / z)` (the reciprocal rounded
//!   once per row, then one rounded product per token).
//!
//! Every function is `#[inline(always)]` so that a caller compiled with FMA instructions
//! (`#[target_feature(enable = "fma")]`) gets them here too.

/// Tokens per chunk of the normaliser.
pub const CHUNK: usize = 1024;
/// Lane sums in a chunk and across chunks (a warp on the GPU).
pub const LANES: usize = 32;
/// `2^f` on `[0, 1)`: `c0 + f (c1 + f (c2 + ...))`, relative error below `1e-7`: a
/// least-squares fit (c1 is close to ln 2 but is the fitted value, not the constant).
#[allow(clippy::approx_constant)]
pub const EXP2_COEFFS: [f32; 7] = [
    1.0,
    0.693_147,
    0.240_229_8,
    0.055_483_524,
    0.009_678_473,
    0.001_244_308_2,
    0.000_216_906_09,
];
/// Below this (and for NaN) `exp2c` is 0.
pub const EXP2_MIN: f32 = -126.0;

/// The contract's `2^x`. Branch-free (the result is chosen at the end), so that loops over
/// it vectorise; for NaN and `x < -126` the arithmetic runs on garbage and is dropped.
#[inline(always)]
pub fn exp2c(x: f32) -> f32 {
    let n = x.floor();
    let f = x - n;
    let mut p = EXP2_COEFFS[6];
    for c in EXP2_COEFFS[..6].iter().rev() {
        p = p.mul_add(f, *c);
    }
    // n lies in [-126, 0] where it matters: 2^n is a normal float and the product exact.
    let scale = f32::from_bits((((n as i32) + 127).clamp(1, 254) as u32) << 23);
    let r = p * scale;
    if x >= EXP2_MIN {
        r
    } else {
        0.0
    }
}

/// `butterfly(v)[0]`: lane sums `v` combined with offsets `LANES/2, ..., 1`, as the GPU's
/// `shfl.xor` tree gives every lane.
#[inline(always)]
pub fn butterfly(mut v: [f32; LANES]) -> f32 {
    let mut off = LANES / 2;
    while off >= 1 {
        let old = v;
        for (l, x) in v.iter_mut().enumerate() {
            *x = old[l] + old[l ^ off];
        }
        off /= 2;
    }
    v[0]
}

/// A chunk's maximum and normaliser `(m_c, z_c)` (the chunk is at most [`CHUNK`] logits).
#[inline(always)]
pub fn chunk_stats(l: &[f32]) -> (f32, f32) {
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0f32; LANES];
    // Lane t adds the tokens t, t + 32, ... in order: rows of 32 tokens, one per lane.
    for row in l.chunks(LANES) {
        for (acc, x) in lanes.iter_mut().zip(row) {
            *acc += exp2c(*x - m);
        }
    }
    (m, butterfly(lanes))
}

/// The row's `(m, z)` from its chunks' stats, in chunk order.
#[inline(always)]
pub fn row_stats(chunks: &[(f32, f32)]) -> (f32, f32) {
    let m = chunks.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0f32; LANES];
    for (i, (mc, zc)) in chunks.iter().enumerate() {
        lanes[i % LANES] = zc.mul_add(exp2c(*mc - m), lanes[i % LANES]);
    }
    (m, butterfly(lanes))
}

/// The probabilities of a row of base-2 logits, into `l` in place.
#[inline(always)]
pub fn softmax_in_place(l: &mut [f32]) {
    // A plain loop, not `map(chunk_stats)`: a function passed to an iterator adapter is
    // compiled outside the caller's `target_feature`, and its `fma`s become calls.
    let mut stats: Vec<(f32, f32)> = Vec::with_capacity(l.len().div_ceil(CHUNK));
    for chunk in l.chunks(CHUNK) {
        stats.push(chunk_stats(chunk));
    }
    let (m, z) = row_stats(&stats);
    let rz = 1.0 / z;
    for x in l.iter_mut() {
        *x = exp2c(*x - m) * rz;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2c_is_close_to_exp2_and_exact_at_integers() {
        for i in 0..=126 {
            let x = -(i as f32);
            assert_eq!(exp2c(x), x.exp2(), "2^{x}");
        }
        let mut worst = 0f64;
        let mut x = -40.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp2();
            worst = worst.max(((exp2c(x) as f64) / want - 1.0).abs());
            x += 0.000_731;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp2c(-126.5), 0.0);
        assert_eq!(exp2c(f32::NAN), 0.0);
        assert_eq!(exp2c(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn softmax_sums_to_one_across_chunks() {
        let mut l: Vec<f32> = (0..3000).map(|i| ((i * 37) % 101) as f32 * 0.13).collect();
        let want: Vec<f64> = {
            let m = l.iter().copied().fold(f32::MIN, f32::max) as f64;
            let e: Vec<f64> = l.iter().map(|x| (*x as f64 - m).exp2()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        softmax_in_place(&mut l);
        let total: f64 = l.iter().map(|x| *x as f64).sum();
        assert!((total - 1.0).abs() < 1e-5, "sum {total}");
        for (a, b) in l.iter().zip(&want) {
            assert!((*a as f64 - b).abs() <= 1e-6 * b + 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn trailing_minus_infinity_changes_no_bit() {
        // The GPU's H2O update takes a whole index list as the row, its empty (-1) tail
        // as logits of -inf; the CPU takes the list's tokens only. Same bits, any length.
        for n in [1, 31, 33, 1000, 1024, 1025, 2500, 4095] {
            let l: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1009) as f32 * 0.021 - 9.0)
                .collect();
            let mut short = l.clone();
            softmax_in_place(&mut short);
            let mut padded = l.clone();
            padded.resize(4096, f32::NEG_INFINITY);
            softmax_in_place(&mut padded);
            assert!(padded[n..].iter().all(|x| *x == 0.0), "n {n}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&padded[..n]), bits(&short), "n {n}");
        }
    }

    #[test]
    fn butterfly_is_the_pairwise_tree() {
        let v: [f32; LANES] = std::array::from_fn(|i| (i as f32 + 1.0) * 0.1);
        let mut t = v.to_vec();
        while t.len() > 1 {
            let h = t.len() / 2;
            t = (0..h).map(|i| t[i] + t[i + h]).collect();
        }
        assert_eq!(butterfly(v), t[0]);
    }
}
