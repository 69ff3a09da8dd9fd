//! H2O's state update (rule 1, `accumulated`): after a step's attention, the attention
//! probability of every attended token, reduced over the list's heads, is added to the
//! token's accumulated score. The probabilities follow the fixed order of
//! `attnc::select::softmax` (the logits of `exact`, then the softmax over the list's
//! tokens in list order), so that the GPU's update (`codegen::nvptx::decode::accumulate`)
//! adds the same bits and the selections of later steps stay equal.

use attnc::select::softmax;
use attnc::select::spec::{gumbel_noise, Reduce, SelectSpec};
use rayon::prelude::*;

use super::attend::row_tokens;
use super::cache::DecodeState;
use super::score::{fold, key_logits, list_heads};

/// Adds the probabilities of the attention of `q` (`[B, Hq, D]`, rounded to the dtype) over
/// the lists `idx` (`[B, Hsel, K]`) to `st.acc`.
pub fn accumulate(s: &SelectSpec, st: &mut DecodeState, q: &[f32], idx: &[i32]) {
    let hs = s.sel_heads() as usize;
    let cap = s.capacity() as usize;
    let c = s.context as usize;
    #[cfg(target_arch = "x86_64")]
    let fma = std::arch::is_x86_feature_detected!("fma");
    let (k, lens, steps) = (&st.k, &st.lens, &st.steps);
    st.acc
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(list, acc)| {
            let b = list / hs;
            let row = &idx[list * cap..][..cap];
            let toks = row_tokens(s, row, lens[b]);
            let t = steps[b];
            let probs = || {
                #[cfg(target_arch = "x86_64")]
                if fma {
                    // SAFETY: the CPU has FMA (checked above), the one feature the
                    // function is compiled for.
                    return unsafe { list_probs_fma(s, k, q, (b, t), list % hs, &toks) };
                }
                list_probs(s, k, q, (b, t), list % hs, &toks)
            };
            for (j, x) in toks.iter().zip(probs()) {
                acc[*j as usize] += x;
            }
        });
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
    at: (usize, u32),
    sel: usize,
    toks: &[u32],
) -> Vec<f32> {
    list_probs(s, k, q, at, sel, toks)
}

/// The probabilities of list `sel` of sequence `b` at its step `t` (`at = (b, t)`) over its
/// tokens `toks`, each head's softmax (rule 1's order) reduced over the list's heads in
/// order. Keyformer's (`s.gumbel`): each base-2 logit `l` becomes `(l + g log2 e) / tau_t`
/// before the softmax, `g` the head's noise for the token at step `t` rounded to f32 (the
/// product in f64), `tau_t` the schedule's temperature rounded to f32.
#[inline(always)]
fn list_probs(
    s: &SelectSpec,
    k: &[f32],
    q: &[f32],
    (b, t): (usize, u32),
    sel: usize,
    toks: &[u32],
) -> Vec<f32> {
    let heads: Vec<usize> = list_heads(s, sel);
    let mut out = vec![0f32; toks.len()];
    for (i, mut l) in list_logits(s, k, q, b, &heads, toks)
        .into_iter()
        .enumerate()
    {
        if let Some(g) = s.gumbel {
            let tau = g.temperature(t) as f32;
            let h = heads[i] as u32;
            for (x, &j) in l.iter_mut().zip(toks) {
                let noise = (gumbel_noise(b as u32, h, t, j) * std::f64::consts::LOG2_E) as f32;
                *x = (*x + noise) / tau;
            }
        }
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

/// The base-2 logits (rule 1) of the tokens `toks` for each of `heads` (one KV group):
/// the keys gathered into rows once, then [`key_logits`] for all heads.
#[inline(always)]
fn list_logits(
    s: &SelectSpec,
    k: &[f32],
    q: &[f32],
    b: usize,
    heads: &[usize],
    toks: &[u32],
) -> Vec<Vec<f32>> {
    let (d, c, g) = (s.head_dim as usize, s.context as usize, s.group() as usize);
    let base = (b * s.kv_heads as usize + heads[0] / g) * c * d;
    let mut keys = Vec::with_capacity(toks.len() * d);
    for &j in toks {
        keys.extend_from_slice(&k[base + j as usize * d..][..d]);
    }
    let qs: Vec<&[f32]> = heads
        .iter()
        .map(|&h| &q[(b * s.q_heads as usize + h) * d..][..d])
        .collect();
    key_logits(s, &qs, &keys, toks.len())
}
