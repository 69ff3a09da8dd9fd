//! Rule 8: sparse decode attention over an index list, split-K as in flash-decoding. The
//! list is cut into chunks of `split` units; each chunk yields, per query head, a running
//! maximum, a sum of exponentials and a weighted sum of values; a combine step rescales
//! and adds the chunks. The query heads of a KV head share one pass over its keys.

use attnc::select::spec::SelectSpec;
use rayon::prelude::*;

use super::cache::DecodeState;
use super::score::dot;

/// One chunk's partial result for one query head.
#[derive(Clone, Debug)]
struct Partial {
    max: f32,
    sum: f32,
    acc: Vec<f32>,
}

/// The tokens of a list row, in list order.
pub fn row_tokens(s: &SelectSpec, row: &[i32], len: u32) -> Vec<u32> {
    let p = s.page;
    let mut out = vec![];
    for &u in row.iter().filter(|u| **u >= 0) {
        let lo = u as u32 * p;
        out.extend(lo..((u as u32 + 1) * p).min(len));
    }
    out
}

pub fn attend(s: &SelectSpec, st: &DecodeState, q: &[f32], idx: &[i32]) -> Vec<f32> {
    let b_n = s.batch as usize;
    let hq = s.q_heads as usize;
    let hkv = s.kv_heads as usize;
    let g = s.group() as usize;
    let d = s.head_dim as usize;
    let c = s.context as usize;
    let hs = s.sel_heads() as usize;
    let cap = s.capacity() as usize;
    let scale = s.scale as f32;
    let split = s.split.max(1) as usize;
    // One task per (sequence, KV head): its G heads' outputs.
    let per: Vec<Vec<f32>> = (0..b_n * hkv)
        .into_par_iter()
        .map(|bk| {
            let (b, kvh) = (bk / hkv, bk % hkv);
            let sel = s.heads.list_of_kv_head(kvh);
            let row = &idx[(b * hs + sel) * cap..][..cap];
            let len = st.lens[b];
            let base = (b * hkv + kvh) * c * d;
            let qs: Vec<&[f32]> = (0..g)
                .map(|i| &q[(b * hq + kvh * g + i) * d..][..d])
                .collect();
            // Split-K: each chunk of units, then the combine.
            let partials: Vec<Vec<Partial>> = row
                .chunks(split)
                .map(|chunk| {
                    let toks = row_tokens(s, chunk, len);
                    // Scattered tokens (runs shorter than 16 on average) are gathered once
                    // into contiguous rows, else every head would fetch them again from
                    // memory; runs of pages or a window are read in place.
                    let runs = 1 + toks.windows(2).filter(|w| w[1] != w[0] + 1).count();
                    let gather = runs * 16 > toks.len();
                    let (mut kbuf, mut vbuf) = (vec![], vec![]);
                    if gather {
                        for &j in &toks {
                            kbuf.extend_from_slice(&st.k[base + j as usize * d..][..d]);
                            vbuf.extend_from_slice(&st.v[base + j as usize * d..][..d]);
                        }
                    }
                    let rows = |n: usize, j: u32| -> (&[f32], &[f32]) {
                        if gather {
                            (&kbuf[n * d..][..d], &vbuf[n * d..][..d])
                        } else {
                            let at = base + j as usize * d;
                            (&st.k[at..][..d], &st.v[at..][..d])
                        }
                    };
                    // Two passes over the chunk: the G heads' logits (each key row read
                    // once), then per head one exponential per token against the chunk's
                    // maximum, each value row read once for the G heads.
                    let n = toks.len();
                    let mut lg = vec![0f32; g * n];
                    for (t, &j) in toks.iter().enumerate() {
                        let (kv, _) = rows(t, j);
                        for i in 0..g {
                            let l = scale * dot(qs[i], kv);
                            lg[i * n + t] = l;
                        }
                    }
                    let mut parts: Vec<Partial> = (0..g)
                        .map(|i| {
                            let l = &mut lg[i * n..][..n];
                            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            let mut sum = 0f32;
                            for x in l.iter_mut() {
                                *x = (*x - max).exp();
                                sum += *x;
                            }
                            Partial {
                                max,
                                sum,
                                acc: vec![0.0; d],
                            }
                        })
                        .collect();
                    for (t, &j) in toks.iter().enumerate() {
                        let (_, vv) = rows(t, j);
                        for (i, p) in parts.iter_mut().enumerate() {
                            let e = lg[i * n + t];
                            for (a, v) in p.acc.iter_mut().zip(vv) {
                                *a += e * v;
                            }
                        }
                    }
                    parts
                })
                .collect();
            let mut out = vec![0f32; g * d];
            for i in 0..g {
                let m = partials
                    .iter()
                    .map(|c| c[i].max)
                    .fold(f32::NEG_INFINITY, f32::max);
                if m == f32::NEG_INFINITY {
                    continue; // nothing selected: zeros
                }
                let mut sum = 0f32;
                let o = &mut out[i * d..][..d];
                for c in &partials {
                    let p = &c[i];
                    if p.sum == 0.0 {
                        continue;
                    }
                    let r = (p.max - m).exp();
                    sum += p.sum * r;
                    for t in 0..d {
                        o[t] += p.acc[t] * r;
                    }
                }
                o.iter_mut().for_each(|x| *x /= sum);
            }
            out
        })
        .collect();
    let mut out = vec![0f32; b_n * hq * d];
    for (bk, o) in per.into_iter().enumerate() {
        let (b, kvh) = (bk / hkv, bk % hkv);
        out[(b * hq + kvh * g) * d..][..g * d].copy_from_slice(&o);
    }
    out
}
