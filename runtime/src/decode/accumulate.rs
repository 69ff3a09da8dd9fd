//! H2O's state update (rule 1, `accumulated`): after a step's attention, the attention
//! probability of every attended token, reduced over the list's heads, is added to the
//! token's accumulated score. The probabilities follow the fixed order of
//! `attnc::select::softmax` (the logits of `exact`, then the softmax over the list's
//! tokens in list order), so that the GPU's update (`codegen::nvptx::decode::accumulate`)
//! adds the same bits and the selections of later steps stay equal.

use attnc::select::softmax;
use attnc::select::spec::{Reduce, SelectSpec};
use rayon::prelude::*;

use super::attend::row_tokens;
use super::cache::DecodeState;
use super::score::{fold, lane_tree_fma, list_heads, logit_scale};

/// Adds the probabilities of the attention of `q` (`[B, Hq, D]`, rounded to the dtype) over
/// the lists `idx` (`[B, Hsel, K]`) to `st.acc`.
pub fn accumulate(s: &SelectSpec, st: &mut DecodeState, q: &[f32], idx: &[i32]) {
    let hs = s.sel_heads() as usize;
    let cap = s.capacity() as usize;
    let c = s.context as usize;
    #[cfg(target_arch = "x86_64")]
    let fma = std::arch::is_x86_feature_detected!("fma");
    let (k, lens) = (&st.k, &st.lens);
    st.acc
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(list, acc)| {
            let b = list / hs;
            let row = &idx[list * cap..][..cap];
            let toks = row_tokens(s, row, lens[b]);
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU has FMA (checked above), the one feature the function is
                // compiled for.
                let add = unsafe { list_probs_fma(s, k, q, b, list % hs, &toks) };
                add_to(acc, &toks, &add);
                return;
            }
            let add = list_probs(s, k, q, b, list % hs, &toks);
            add_to(acc, &toks, &add);
        });
}

fn add_to(acc: &mut [f32], toks: &[u32], add: &[f32]) {
    for (j, x) in toks.iter().zip(add) {
        acc[*j as usize] += x;
    }
}

/// [`list_probs`] with the FMA instructions (the contract's `fma`s are correctly rounded
/// either way, many times faster in hardware).
///
/// # Safety
/// Only on a CPU with FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn list_probs_fma(
    s: &SelectSpec,
    k: &[f32],
    q: &[f32],
    b: usize,
    sel: usize,
    toks: &[u32],
) -> Vec<f32> {
    list_probs(s, k, q, b, sel, toks)
}

/// The probabilities of list `sel` of sequence `b` over its tokens `toks`, each head's
/// softmax (rule 1's order) reduced over the list's heads in order.
#[inline(always)]
fn list_probs(
    s: &SelectSpec,
    k: &[f32],
    q: &[f32],
    b: usize,
    sel: usize,
    toks: &[u32],
) -> Vec<f32> {
    let heads: Vec<usize> = list_heads(s, sel).collect();
    let mut out = vec![0f32; toks.len()];
    for (i, mut l) in list_logits(s, k, q, b, &heads, toks)
        .into_iter()
        .enumerate()
    {
        softmax::softmax_in_place(&mut l);
        for (x, p) in out.iter_mut().zip(&l) {
            fold(s.heads.op(), x, *p, i == 0);
        }
    }
    if s.heads.op() == Reduce::Mean {
        out.iter_mut().for_each(|x| *x /= heads.len() as f32);
    }
    out
}

/// The base-2 logits (rule 1) of the tokens `toks` for each of `heads`. With the AVX2 path
/// (head dim 128, one KV head for all of them) the keys are gathered once into rows for
/// all heads; the same bits either way ([`list_logits_scalar`]).
#[inline(always)]
fn list_logits(
    s: &SelectSpec,
    k: &[f32],
    q: &[f32],
    b: usize,
    heads: &[usize],
    toks: &[u32],
) -> Vec<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        let g = s.group() as usize;
        if super::score::vector_lanes(s) && heads.iter().all(|h| h / g == heads[0] / g) {
            let (d, c) = (s.head_dim as usize, s.context as usize);
            let base = (b * s.kv_heads as usize + heads[0] / g) * c * d;
            let mut keys = Vec::with_capacity(toks.len() * d);
            for &j in toks {
                keys.extend_from_slice(&k[base + j as usize * d..][..d]);
            }
            let qs: Vec<&[f32]> = heads
                .iter()
                .map(|&h| &q[(b * s.q_heads as usize + h) * d..][..d])
                .collect();
            let mut out = vec![vec![0f32; toks.len()]; heads.len()];
            // SAFETY: the CPU has AVX2 and FMA (`vector_lanes`); `keys` holds `toks.len()`
            // rows of 128, every query 128 values, every output row `toks.len()` (the
            // function asserts them too).
            unsafe { super::lanes_avx::logits(&qs, &keys, toks.len(), logit_scale(s), &mut out) };
            return out;
        }
    }
    list_logits_scalar(s, k, q, b, heads, toks)
}

/// [`list_logits`] by the lane tree of `score::lane_tree_fma`, one dot at a time.
#[inline(always)]
fn list_logits_scalar(
    s: &SelectSpec,
    k: &[f32],
    q: &[f32],
    b: usize,
    heads: &[usize],
    toks: &[u32],
) -> Vec<Vec<f32>> {
    let (d, c, g) = (s.head_dim as usize, s.context as usize, s.group() as usize);
    let scale = logit_scale(s);
    heads
        .iter()
        .map(|&h| {
            let qv = &q[(b * s.q_heads as usize + h) * d..][..d];
            let keys = &k[(b * s.kv_heads as usize + h / g) * c * d..][..c * d];
            toks.iter()
                .map(|&j| {
                    let kv = &keys[j as usize * d..][..d];
                    lane_tree_fma(d, 1, |_, t| (qv[t], kv[t])) * scale
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc::select::spec::Source;

    /// The shipped H2O kernel at a small context.
    fn h2o() -> SelectSpec {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/h2o.attn");
        let src = attnc::driver::Source::load(&path).expect("h2o.attn");
        let (fe, _) = attnc::driver::frontend(&src).expect("frontend");
        let set = attnc::sema::instantiate::Binding::parse("CONTEXT=1000").expect("binding");
        attnc::driver::select_spec(&fe, "h2o_decode", &[set])
            .expect("spec")
            .0
    }

    #[test]
    fn the_vector_logits_are_the_lane_tree_bits() {
        let s = h2o();
        assert_eq!(s.source, Source::Accumulated);
        if !super::super::score::vector_lanes(&s) {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        let (b, hkv, c, d) = (
            s.batch as usize,
            s.kv_heads as usize,
            s.context as usize,
            128usize,
        );
        let k = crate::Tensor::random(&[b * hkv * c * d], 5).data;
        let q = crate::Tensor::random(&[b * s.q_heads as usize * d], 6).data;
        let toks: Vec<u32> = (0..c as u32).filter(|j| j % 3 != 1).collect();
        let g = s.group() as usize;
        let heads: Vec<usize> = (g..2 * g).collect();
        let bits = |v: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
            v.iter()
                .map(|r| r.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert_eq!(
            bits(list_logits(&s, &k, &q, b - 1, &heads, &toks)),
            bits(list_logits_scalar(&s, &k, &q, b - 1, &heads, &toks))
        );
    }
}
