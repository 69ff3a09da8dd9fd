//! Rules 1 to 5 of `docs/kv-selection.md`: a score for every unit (token or page) of every
//! index list. Nothing of size `C x C` exists: the largest buffer holds `C` logits per query
//! row of one KV group (of one head without the vector path), per worker.

use attnc::select::softmax;
use attnc::select::spec::{score_lanes, HeadReduce, Pool, Reduce, SelectSpec, Source};
use rayon::prelude::*;

use super::cache::DecodeState;

/// Unit scores `[B, Hsel, units]`; units past a sequence's end and units that are not
/// scored (the partial last page, a window's own tokens) hold `-inf`.
pub fn unit_scores(s: &SelectSpec, st: &DecodeState, q: &[f32], ext: Option<&[f32]>) -> Vec<f32> {
    let b_n = s.batch as usize;
    let hs = s.sel_heads() as usize;
    let units = s.units() as usize;
    let mut out = vec![f32::NEG_INFINITY; b_n * hs * units];
    #[cfg(target_arch = "x86_64")]
    let fma = std::arch::is_x86_feature_detected!("fma");
    out.par_chunks_mut(units)
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, sel) = (row / hs, row % hs);
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU has FMA (checked above), the one feature the function is
                // compiled for.
                unsafe { row_scores_fma(s, st, q, ext, b, sel, dst) };
                return;
            }
            row_scores(s, st, q, ext, b, sel, dst);
        });
    out
}

/// [`row_scores`] with the FMA instructions: the contract's `fma`s (rules 1 and the
/// softmax of `attnc::select::softmax`) are correctly rounded either way, many times
/// faster in hardware.
///
/// # Safety
/// Only on a CPU with FMA (`is_x86_feature_detected!("fma")`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn row_scores_fma(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    ext: Option<&[f32]>,
    b: usize,
    sel: usize,
    dst: &mut [f32],
) {
    row_scores(s, st, q, ext, b, sel, dst)
}

/// The query heads whose scores make list `sel`.
pub fn list_heads(s: &SelectSpec, sel: usize) -> Vec<usize> {
    s.scoring_heads(sel as u32)
        .into_iter()
        .map(|h| h as usize)
        .collect()
}

/// Folds `x` into `acc` (the `n`-th value) with `op`; `mean` divides at the end.
pub fn fold(op: Reduce, acc: &mut f32, x: f32, first: bool) {
    if first {
        *acc = x;
        return;
    }
    match op {
        Reduce::Sum | Reduce::Mean => *acc += x,
        Reduce::Max => *acc = acc.max(x),
    }
}

#[inline(always)]
fn row_scores(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    ext: Option<&[f32]>,
    b: usize,
    sel: usize,
    dst: &mut [f32],
) {
    let len = st.lens[b] as usize;
    let c = s.context as usize;
    let p = s.page as usize;
    let hs = s.sel_heads() as usize;
    // Token scores over the scored range [0, m), or page scores directly.
    let mut tok = vec![0f32; len];
    let m;
    match s.source {
        Source::None => m = len,
        Source::Accumulated | Source::External => {
            let src = if s.source == Source::Accumulated {
                &st.acc[..]
            } else {
                ext.unwrap_or(&[])
            };
            m = len;
            tok.copy_from_slice(&src[(b * hs + sel) * c..][..len]);
        }
        Source::Exact | Source::Window { .. } | Source::Normalized { .. } => {
            // A window's own tokens are kept, not scored (a normalised window scores them).
            m = match s.source {
                Source::Window { rows, .. } => len - rows as usize,
                _ => len,
            };
            let heads: Vec<usize> = list_heads(s, sel);
            let nh = heads.len();
            let rows = s.q_rows() as usize;
            // A KV group's heads together where the vector path takes them (each key read
            // once for the group), else one head at a time (one head's rows in memory).
            let together = if vector_lanes(s) && matches!(s.heads, HeadReduce::PerKvGroup(_)) {
                nh
            } else {
                1
            };
            let hq = s.q_heads as usize;
            for (n, batch) in heads.chunks(together).enumerate() {
                let mut logits = head_logits(s, st, q, b, batch, len);
                for (k, head_rows) in logits.chunks_mut(rows).enumerate() {
                    // `window_lse`: the head's rows' log-sum-exps, `[B, Hq, rows]`.
                    let lse = match s.source {
                        Source::Window { lse: true, .. } => {
                            ext.map(|e| &e[(b * hq + batch[k]) * rows..][..rows])
                        }
                        _ => None,
                    };
                    let hs = head_scores(s, head_rows, len, m, lse);
                    for j in 0..m {
                        fold(s.heads.op(), &mut tok[j], hs[j], n * together + k == 0);
                    }
                }
            }
            if s.heads.op() == Reduce::Mean {
                tok[..m].iter_mut().for_each(|x| *x /= nh as f32);
            }
            tok.truncate(m);
        }
        Source::PageBound => {
            page_scores(s, st, q, b, sel, &mut dst[..len / p]);
            return;
        }
        Source::PageMean => {
            page_mean_scores(s, st, q, b, sel, &mut dst[..len / p]);
            return;
        }
        Source::KeyNorm => {
            m = len;
            let d = s.head_dim as usize;
            let g = s.group() as usize;
            let heads: Vec<usize> = list_heads(s, sel);
            // Each KV head's norms once, folded for every query head that reads it.
            let mut norms: (usize, Vec<f32>) = (usize::MAX, vec![]);
            for (n, &h) in heads.iter().enumerate() {
                if norms.0 != h / g {
                    let keys = &st.k[(b * s.kv_heads as usize + h / g) * c * d..][..len * d];
                    norms = (h / g, key_norms(d, keys, len));
                }
                for (t, x) in tok.iter_mut().zip(&norms.1) {
                    fold(s.heads.op(), t, *x, n == 0);
                }
            }
            if s.heads.op() == Reduce::Mean {
                tok.iter_mut().for_each(|x| *x /= heads.len() as f32);
            }
        }
    }
    let m = m.min(tok.len());
    let tok = pool(s.pool, &tok[..m]);
    if p == 1 {
        dst[..m].copy_from_slice(&tok);
    } else {
        // Page score: the sum over its tokens; the partial last page is not scored.
        for pg in 0..len / p {
            let lo = pg * p;
            if lo >= m {
                break;
            }
            dst[pg] = tok[lo..((pg + 1) * p).min(m)].iter().sum();
        }
    }
}

/// Rule 1 for `key_norm`: `-|k|^2` of each of the `n` key rows of `keys` (contiguous rows
/// of `d`), the squares summed in the lane tree's order ([`lane_tree_fma`]). Inlined, so
/// that in [`row_scores_fma`] its `mul_add`s are FMA instructions, not calls.
#[inline(always)]
pub fn key_norms(d: usize, keys: &[f32], n: usize) -> Vec<f32> {
    // A plain loop: an iterator adapter's `fold` would be a function of its own, compiled
    // without FMA (a libm call per `mul_add`, 5x slower).
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        let k = &keys[j * d..][..d];
        out.push(-lane_tree_fma(d, 1, |_, t| (k[t], k[t])));
    }
    out
}

/// The factor of a base-2 logit (rule 1, `exact`): `scale * log2(e)` rounded to `f32`.
pub fn logit_scale(s: &SelectSpec) -> f32 {
    (s.scale * std::f64::consts::LOG2_E) as f32
}

/// Rule 1 for `page_bound`: the bound of every full page of list `(b, sel)` into `dst`.
#[inline(always)]
fn page_scores(s: &SelectSpec, st: &DecodeState, q: &[f32], b: usize, sel: usize, dst: &mut [f32]) {
    let d = s.head_dim as usize;
    let hkv = s.kv_heads as usize;
    let g = s.group() as usize;
    let rows = s.q_rows() as usize;
    let units = s.units() as usize;
    let heads: Vec<usize> = list_heads(s, sel);
    let nh = heads.len();
    let qs: Vec<&[f32]> = heads
        .iter()
        .map(|&h| &q[(b * s.q_heads as usize + h) * rows * d..][..d])
        .collect();
    // Per head of the list: where its KV head's page metadata starts.
    let bases: Vec<usize> = heads
        .iter()
        .map(|&h| (b * hkv + h / g) * units * d)
        .collect();
    #[cfg(target_arch = "x86_64")]
    if vector_lanes(s) && bases.iter().all(|x| *x == bases[0]) {
        // One KV head's metadata for the whole list: each page row transposed once.
        let mean_of = match s.heads.op() {
            Reduce::Sum => Some(1),
            Reduce::Mean => Some(nh),
            Reduce::Max => None,
        };
        let meta = bases[0]..bases[0] + dst.len() * d;
        // SAFETY: the CPU has AVX2 and FMA (checked just above); the metadata slices hold
        // `dst.len()` rows of 128 and every query 128 values (the function asserts them).
        unsafe {
            super::lanes_avx::page_bounds(&qs, &st.kmax[meta.clone()], &st.kmin[meta], mean_of, dst)
        };
        return;
    }
    // Per head, its query and this page's metadata rows (one buffer for all pages).
    let mut heads_page: Vec<(&[f32], &[f32], &[f32])> = Vec::with_capacity(nh);
    for (pg, out) in dst.iter_mut().enumerate() {
        heads_page.clear();
        heads_page.extend(qs.iter().zip(&bases).map(|(qv, base)| {
            let at = base + pg * d;
            (*qv, &st.kmax[at..at + d], &st.kmin[at..at + d])
        }));
        // max(q * kmax, q * kmin) is q times kmax or kmin by the sign of q (kmax >= kmin),
        // fused into the lane's running sum.
        let term = |i: usize, t: usize| {
            let (qv, hi, lo) = heads_page[i];
            let x = qv[t];
            // Both loaded, then chosen: a select, not a branch on the sign.
            let (h, l) = (hi[t], lo[t]);
            (x, if x >= 0.0 { h } else { l })
        };
        *out = page_heads(s.heads.op(), d, nh, term);
    }
}

/// A page's score from its `nh` heads' terms `term(head, channel)` (products summed in
/// the lane tree): sums fold the heads inside each lane (one butterfly per page), `mean`
/// then divides, `max` takes each head's own tree.
#[inline(always)]
fn page_heads(op: Reduce, d: usize, nh: usize, term: impl Fn(usize, usize) -> (f32, f32)) -> f32 {
    match op {
        Reduce::Sum => lane_tree_fma(d, nh, term),
        Reduce::Mean => lane_tree_fma(d, nh, term) / nh as f32,
        // A plain loop (an iterator's `reduce` could be compiled apart, without FMA).
        Reduce::Max => {
            let mut best = f32::NEG_INFINITY;
            for i in 0..nh {
                let x = lane_tree_fma(d, 1, |_, t| term(i, t));
                best = if i == 0 { x } else { best.max(x) };
            }
            best
        }
    }
}

/// Rule 1 for `page_mean`: the query against the mean key of every full page of list
/// `(b, sel)` into `dst`. A page's mean is its keys summed in token order, then times
/// `1 / P` (exact: `P` is a power of two); the dot folds the heads as the page bound does.
#[inline(always)]
fn page_mean_scores(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    b: usize,
    sel: usize,
    dst: &mut [f32],
) {
    let d = s.head_dim as usize;
    let (hkv, c, g, p) = (
        s.kv_heads as usize,
        s.context as usize,
        s.group() as usize,
        s.page as usize,
    );
    let rows = s.q_rows() as usize;
    let heads: Vec<usize> = list_heads(s, sel);
    let nh = heads.len();
    let inv = 1.0 / p as f32;
    let qs: Vec<&[f32]> = heads
        .iter()
        .map(|&h| &q[(b * s.q_heads as usize + h) * rows * d..][..d])
        .collect();
    // The list's KV heads (ascending with the heads) and each head's among them: a page's
    // mean once per KV head, not once per query head.
    let mut kvs: Vec<usize> = heads.iter().map(|h| h / g).collect();
    kvs.dedup();
    let slot: Vec<usize> = heads
        .iter()
        .map(|h| kvs.iter().position(|kv| *kv == h / g).unwrap_or(0))
        .collect();
    let mut means = vec![0f32; kvs.len() * d];
    for (pg, out) in dst.iter_mut().enumerate() {
        for (kv, m) in kvs.iter().zip(means.chunks_exact_mut(d)) {
            let keys = &st.k[((b * hkv + kv) * c + pg * p) * d..][..p * d];
            m.copy_from_slice(&keys[..d]);
            for key in keys.chunks_exact(d).skip(1) {
                for (x, k) in m.iter_mut().zip(key) {
                    *x += *k;
                }
            }
            m.iter_mut().for_each(|x| *x *= inv);
        }
        *out = page_heads(s.heads.op(), d, nh, |i, t| {
            (qs[i][t], means[slot[i] * d + t])
        });
    }
}

/// Whether the AVX2 paths of `lanes_avx` run for `s` here: head dim 128 on a CPU with
/// AVX2 and FMA.
fn vector_lanes(s: &SelectSpec) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        s.head_dim as usize == super::lanes_avx::D && super::lanes_avx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = s;
        false
    }
}

/// The base-2 logits of rule 1 of every query row of each of `heads` (row `r` of head `i`
/// at `i * rows + r`) against the keys `[0, len)` (a row uses those it sees: `[0, len -
/// rows + r + 1)`). The heads share a KV head (a KV group, or one head): each key row is
/// read once for all of them ([`key_logits`]).
#[inline(always)]
fn head_logits(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    b: usize,
    heads: &[usize],
    len: usize,
) -> Vec<Vec<f32>> {
    let d = s.head_dim as usize;
    let c = s.context as usize;
    let g = s.group() as usize;
    let rows = s.q_rows() as usize;
    let keys = &st.k[(b * s.kv_heads as usize + heads[0] / g) * c * d..][..len * d];
    let qs: Vec<&[f32]> = heads
        .iter()
        .flat_map(|&h| (0..rows).map(move |r| (h, r)))
        .map(|(h, r)| &q[((b * s.q_heads as usize + h) * rows + r) * d..][..d])
        .collect();
    key_logits(s, &qs, keys, len)
}

/// `out[i][j]`: the base-2 logit of rule 1 of query `qs[i]` against key row `j` of `keys`
/// (`n` rows of the head dim, contiguous). The AVX2 lane sums where [`vector_lanes`]
/// allows, else the lane tree ([`lane_tree_fma`]), one dot at a time: the same bits.
#[inline(always)]
pub(super) fn key_logits(s: &SelectSpec, qs: &[&[f32]], keys: &[f32], n: usize) -> Vec<Vec<f32>> {
    let d = s.head_dim as usize;
    let scale = logit_scale(s);
    let mut out = vec![vec![0f32; n]; qs.len()];
    #[cfg(target_arch = "x86_64")]
    if vector_lanes(s) {
        // SAFETY: the CPU has AVX2 and FMA (`vector_lanes`); `keys` holds `n` rows of 128,
        // every query 128 values and every output row `n` (the function asserts them too).
        unsafe { super::lanes_avx::logits(qs, keys, n, scale, &mut out) };
        return out;
    }
    for (qv, o) in qs.iter().zip(out.iter_mut()) {
        for (j, l) in o.iter_mut().enumerate() {
            let kv = &keys[j * d..][..d];
            *l = lane_tree_fma(d, 1, |_, t| (qv[t], kv[t])) * scale;
        }
    }
    out
}

/// One head's scores over the tokens `[0, m)` from its rows' logits ([`head_logits`]):
/// each row's softmax (rule 1's order, `attnc::select::softmax`) over the keys it sees,
/// or with the rows' log-sum-exps given (`lse`, natural log: `window_lse`)
/// `exp2c(l - lse * log2(e))`, then the rows reduced (a window's rows; the decode query's
/// single row as it is).
#[inline(always)]
fn head_scores(
    s: &SelectSpec,
    rows_logits: &mut [Vec<f32>],
    len: usize,
    m: usize,
    lse: Option<&[f32]>,
) -> Vec<f32> {
    let rows = rows_logits.len();
    let mut out = vec![0f32; m];
    let normalized = matches!(s.source, Source::Normalized { .. });
    for (r, l) in rows_logits.iter_mut().enumerate() {
        // Row r sits at position len - rows + r and sees the keys up to it.
        let seen = len - rows + r + 1;
        let l = &mut l[..seen];
        match lse {
            Some(lse) => {
                // The logits are in base 2 (rule 1): the given log-sum-exp too.
                let z = lse[r] * std::f32::consts::LOG2_E;
                l.iter_mut().for_each(|x| *x = softmax::exp2c(*x - z));
            }
            None => softmax::softmax_in_place(l),
        }
        if normalized {
            // Summed in row order over the rows that see the token (from 0).
            for j in 0..m.min(seen) {
                out[j] += l[j];
            }
            continue;
        }
        for j in 0..m {
            fold(s.rows, &mut out[j], l[j], r == 0);
        }
    }
    if normalized {
        // Divided by the causal count: token j is seen by the rows from j - (len - rows).
        for (j, x) in out.iter_mut().enumerate() {
            *x /= causal_count(len, rows, j) as f32;
        }
    } else if rows > 1 && s.rows == Reduce::Mean {
        out.iter_mut().for_each(|x| *x /= rows as f32);
    }
    out
}

/// How many of the last `rows` queries of a sequence of `len` tokens see token `j`
/// (`normalized`'s divisor): all of them for a token before the window, fewer inside it.
pub fn causal_count(len: usize, rows: usize, j: usize) -> usize {
    rows - (j + 1).saturating_sub(len - rows + 1)
}

/// The sum of the products `a * b`, `(a, b) = f(i, t)`, over `i < n` (heads, in order) and
/// channels `t < d`, in the GPU kernels' order: `L = score_lanes(d)` lane sums (lane `l`
/// fuses, for each `i` in turn, its `ceil(d / L)` adjacent channels from `l * ceil(d / L)`
/// into its running sum with one rounding each, `x = fma(a, b, x)`; on the GPU that is 8
/// channels, one 16-byte load), then a butterfly over the lanes (offsets `L/2, ..., 2, 1`).
/// Scores that decide a selection are summed this way on every backend, so that the
/// backends agree bit for bit and select the same units (docs/kv-selection.md, rule 1).
#[inline(always)]
pub fn lane_tree_fma(d: usize, n: usize, f: impl Fn(usize, usize) -> (f32, f32)) -> f32 {
    let lanes = score_lanes(d as u32) as usize;
    let mut v = [0f32; 32];
    let per = d.div_ceil(lanes);
    // Lane `l` sees (i, c) in lexicographic order; the lanes are independent, so the
    // innermost loop runs across them (no chain of dependent fmas).
    for i in 0..n {
        for c in 0..per {
            for (l, x) in v.iter_mut().take(lanes).enumerate() {
                let t = l * per + c;
                if t < d {
                    let (a, b) = f(i, t);
                    *x = a.mul_add(b, *x);
                }
            }
        }
    }
    let mut off = lanes / 2;
    while off >= 1 {
        let old = v;
        for (l, x) in v.iter_mut().take(lanes).enumerate() {
            *x = old[l] + old[l ^ off];
        }
        off /= 2;
    }
    v[0]
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for t in 0..8 {
            acc[t] += x[t] * y[t];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// Rule 4: same-padded pooling over the scored range.
fn pool(pool: Pool, s: &[f32]) -> Vec<f32> {
    let (size, avg) = match pool {
        Pool::None => return s.to_vec(),
        Pool::Avg { size } => (size as usize, true),
        Pool::Max { size } => (size as usize, false),
    };
    let r = size / 2;
    (0..s.len())
        .map(|j| {
            let window = &s[j.saturating_sub(r)..(j + r + 1).min(s.len())];
            if avg {
                window.iter().sum::<f32>() / size as f32
            } else {
                window.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_logits_are_the_lane_tree_bits() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/h2o.attn");
        let src = attnc::driver::Source::load(&path).expect("h2o.attn");
        let (fe, _) = attnc::driver::frontend(&src).expect("frontend");
        let set = attnc::sema::instantiate::Binding::parse("CONTEXT=1000").expect("binding");
        let s = attnc::driver::select_spec(&fe, "h2o_decode", &[set])
            .expect("spec")
            .0;
        if !vector_lanes(&s) {
            eprintln!("skipped: this CPU has no AVX2 and FMA (head dim 128)");
            return;
        }
        let (d, n) = (s.head_dim as usize, 777);
        let keys = crate::Tensor::random(&[n * d], 5).data;
        let q = crate::Tensor::random(&[4 * d], 6).data;
        let qs: Vec<&[f32]> = q.chunks(d).collect();
        let scale = logit_scale(&s);
        let want: Vec<Vec<u32>> = qs
            .iter()
            .map(|qv| {
                keys.chunks(d)
                    .map(|kv| (lane_tree_fma(d, 1, |_, t| (qv[t], kv[t])) * scale).to_bits())
                    .collect()
            })
            .collect();
        let got: Vec<Vec<u32>> = key_logits(&s, &qs, &keys, n)
            .iter()
            .map(|r| r.iter().map(|x| x.to_bits()).collect())
            .collect();
        assert_eq!(got, want);
    }
}
