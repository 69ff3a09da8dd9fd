//! Rule 1's dot at head dim 128 (16 lanes of 8 channels, `fma` along each lane, then the
//! butterfly) with AVX2: each key is transposed once (two 8x8 blocks) so that a vector holds
//! one channel of 8 lanes, the 16 lane sums run as two chains of vector FMAs, and the
//! butterfly's levels are vector adds of halves. Bit for bit `score::lane_tree_fma`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Channels of a key row this path takes.
pub const D: usize = 128;

/// `out[i][j] = dot(q_i, k_j) * scale` for the tokens `j < len` of `keys` (`[len, 128]`),
/// with `qt[i]` the query in lane-major order (`qt[i][c * 16 + l] = q_i[l * 8 + c]`).
///
/// # Safety
/// Only on a CPU with AVX2 and FMA (`is_x86_feature_detected!`); `keys` holds `len * 128`
/// floats and every `qt[i]` 128, every `out[i]` at least `len` (checked by asserts).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn logits(qt: &[Vec<f32>], keys: &[f32], len: usize, scale: f32, out: &mut [Vec<f32>]) {
    assert!(keys.len() >= len * D && qt.iter().all(|q| q.len() == D));
    assert!(out.len() == qt.len() && out.iter().all(|o| o.len() >= len));
    // Queries: channel c of lanes 0..8 and of lanes 8..16.
    let qv: Vec<[__m256; 16]> = qt
        .iter()
        .map(|q| {
            std::array::from_fn(|x| _mm256_loadu_ps(q.as_ptr().add((x / 2) * 16 + (x % 2) * 8)))
        })
        .collect();
    for j in 0..len {
        let row = keys.as_ptr().add(j * D);
        let lo = transpose(std::array::from_fn(|l| _mm256_loadu_ps(row.add(l * 8))));
        let hi = transpose(std::array::from_fn(|l| {
            _mm256_loadu_ps(row.add((l + 8) * 8))
        }));
        for (q, o) in qv.iter().zip(out.iter_mut()) {
            let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in 0..8 {
                a = _mm256_fmadd_ps(q[2 * c], lo[c], a);
                b = _mm256_fmadd_ps(q[2 * c + 1], hi[c], b);
            }
            // Butterfly: lanes l and l + 8, then l + 4, l + 2, l + 1.
            let s8 = _mm256_add_ps(a, b);
            let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
            *o.get_unchecked_mut(j) = _mm_cvtss_f32(s1) * scale;
        }
    }
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
