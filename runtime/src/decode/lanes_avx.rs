//! Rule 1's sums at head dim 128 (16 lanes of 8 channels, `fma` along each lane, then the
//! butterfly) with AVX2: each key or page metadata row is transposed once (two 8x8 blocks)
//! so that a vector holds one channel of 8 lanes, the 16 lane sums run as two chains of
//! vector FMAs, and the butterfly's levels are vector adds of halves. Bit for bit
//! `score::lane_tree_fma`: the exact logits ([`logits`]) and the page bound
//! ([`page_bounds`]).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Channels of a key row this path takes.
pub const D: usize = 128;

/// Whether this CPU has what these functions need: AVX2 and FMA.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `out[i][j] = dot(q_i, k_j) * scale` for the tokens `j < len` of `keys` (`[len, 128]`).
///
/// # Safety
/// Only where [`available`]; `keys` holds `len * 128` floats and every `qt[i]` 128, every
/// `out[i]` at least `len` (checked by asserts).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn logits(qt: &[&[f32]], keys: &[f32], len: usize, scale: f32, out: &mut [Vec<f32>]) {
    assert!(keys.len() >= len * D && qt.iter().all(|q| q.len() == D));
    assert!(out.len() == qt.len() && out.iter().all(|o| o.len() >= len));
    let qv = queries(qt);
    for j in 0..len {
        let k = rows(keys.as_ptr().add(j * D));
        for (q, o) in qv.iter().zip(out.iter_mut()) {
            o[j] = butterfly(lane_sums(q, &k, None)) * scale;
        }
    }
}

/// The page bound of rule 1 for the full pages of one KV head's metadata (`kmax`, `kmin`:
/// `[pages, 128]`, one page per element of `out`) against the queries `qt` of a list: `Some(n)` sums the heads inside each lane, then
/// divides by `n` when `n > 1` (mean); `None` takes each head's butterfly and folds them
/// with `max`.
///
/// # Safety
/// Only where [`available`]; `kmax` and `kmin` hold `out.len()` rows of 128 and every
/// `qt[i]` 128 values (checked by asserts).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn page_bounds(
    qt: &[&[f32]],
    kmax: &[f32],
    kmin: &[f32],
    mean_of: Option<usize>,
    out: &mut [f32],
) {
    let pages = out.len();
    assert!(kmax.len() >= pages * D && kmin.len() >= pages * D);
    assert!(qt.iter().all(|q| q.len() == D));
    let qv = queries(qt);
    let zero = _mm256_setzero_ps();
    // q >= 0 (false for NaN) takes kmax, else kmin.
    let pos: Vec<[__m256; 16]> = qv
        .iter()
        .map(|q| std::array::from_fn(|x| _mm256_cmp_ps(q[x], zero, _CMP_GE_OQ)))
        .collect();
    for (pg, o) in out.iter_mut().enumerate() {
        let hi = rows(kmax.as_ptr().add(pg * D));
        let lo = rows(kmin.as_ptr().add(pg * D));
        let chosen = |i: usize| -> [__m256; 16] {
            std::array::from_fn(|x| _mm256_blendv_ps(lo[x], hi[x], pos[i][x]))
        };
        *o = match mean_of {
            Some(n) => {
                // Heads folded inside each lane: one running pair of sums.
                let mut acc = (zero, zero);
                for (i, q) in qv.iter().enumerate() {
                    acc = lane_sums(q, &chosen(i), Some(acc));
                }
                let v = butterfly(acc);
                if n > 1 {
                    v / n as f32
                } else {
                    v
                }
            }
            None => qv
                .iter()
                .enumerate()
                .map(|(i, q)| butterfly(lane_sums(q, &chosen(i), None)))
                .reduce(f32::max)
                .unwrap_or(f32::NEG_INFINITY),
        };
    }
}

/// Queries as vectors in the layout of [`rows`] (each one transposed like a key row).
#[inline(always)]
unsafe fn queries(qs: &[&[f32]]) -> Vec<[__m256; 16]> {
    qs.iter().map(|q| rows(q.as_ptr())).collect()
}

/// A 128-value row (16 lanes of 8 adjacent channels) as 16 vectors, by two 8x8
/// transposes: `[2c]` holds channel `c` of lanes 0..8, `[2c + 1]` of lanes 8..16.
#[inline(always)]
unsafe fn rows(row: *const f32) -> [__m256; 16] {
    let lo = transpose(std::array::from_fn(|l| _mm256_loadu_ps(row.add(l * 8))));
    let hi = transpose(std::array::from_fn(|l| {
        _mm256_loadu_ps(row.add((l + 8) * 8))
    }));
    std::array::from_fn(|x| if x % 2 == 0 { lo[x / 2] } else { hi[x / 2] })
}

/// The 16 lane sums (lanes 0..8, lanes 8..16) of `fma(q, k, acc)` over the 8 channels in
/// order, from `acc` (zero when `None`).
#[inline(always)]
unsafe fn lane_sums(
    q: &[__m256; 16],
    k: &[__m256; 16],
    acc: Option<(__m256, __m256)>,
) -> (__m256, __m256) {
    let (mut a, mut b) = acc.unwrap_or((_mm256_setzero_ps(), _mm256_setzero_ps()));
    for c in 0..8 {
        a = _mm256_fmadd_ps(q[2 * c], k[2 * c], a);
        b = _mm256_fmadd_ps(q[2 * c + 1], k[2 * c + 1], b);
    }
    (a, b)
}

/// The butterfly over 16 lane sums: lanes l and l + 8, then l + 4, l + 2, l + 1; lane 0's
/// value.
#[inline(always)]
unsafe fn butterfly((a, b): (__m256, __m256)) -> f32 {
    let s8 = _mm256_add_ps(a, b);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

/// The 8x8 transpose: `out[c]` holds element `c` of every `r[i]`, in order of `i`.
#[inline(always)]
unsafe fn transpose(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps(t0, t2, 0x44);
    let u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    let u2 = _mm256_shuffle_ps(t1, t3, 0x44);
    let u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    let u4 = _mm256_shuffle_ps(t4, t6, 0x44);
    let u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    let u6 = _mm256_shuffle_ps(t5, t7, 0x44);
    let u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    [
        _mm256_permute2f128_ps(u0, u4, 0x20),
        _mm256_permute2f128_ps(u1, u5, 0x20),
        _mm256_permute2f128_ps(u2, u6, 0x20),
        _mm256_permute2f128_ps(u3, u7, 0x20),
        _mm256_permute2f128_ps(u0, u4, 0x31),
        _mm256_permute2f128_ps(u1, u5, 0x31),
        _mm256_permute2f128_ps(u2, u6, 0x31),
        _mm256_permute2f128_ps(u3, u7, 0x31),
    ]
}
