//! How faithful a selection is to dense decode, measured in `f64` on the same cache:
//! recall of the exact top-k, attention mass captured, cosine similarity of the output.
//! Also the synthetic caches `attnc bench` measures on (random keys with planted heavy
//! hitters, so that there is something to find).

// Index loops over tokens and channels read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use attnc::select::spec::{HeadReduce, SelectSpec};
use rayon::prelude::*;

use crate::decode::{DecodeState, Indices};
use crate::Tensor;

/// Fidelity of one selection, averaged over (sequence, query head).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fidelity {
    /// Fraction of the exact top-n units (n = units selected; units ranked by their dense
    /// attention mass summed over the heads that share the list) that the selection holds.
    pub recall: f64,
    /// Dense attention probability that falls on the selected tokens.
    pub mass: f64,
    /// Cosine similarity of attention over the selection to dense attention.
    pub cosine: f64,
    pub min_cosine: f64,
    /// Largest relative difference of the kernel's output (if given) to the exact
    /// attention over the same selection.
    pub max_rel_err: f64,
}

/// Compares the selection `idx` (and, if given, the kernel's output `o` `[B, Hq, D]`) with
/// dense decode of query `q` `[B, Hq, 1, D]` over the cache in `st`.
pub fn measure(
    spec: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    idx: &Indices,
    o: Option<&[f32]>,
) -> Fidelity {
    let b_n = spec.batch as usize;
    let hq = spec.q_heads as usize;
    let hkv = spec.kv_heads as usize;
    let g = spec.group() as usize;
    let d = spec.head_dim as usize;
    let c = spec.context as usize;
    let cap = idx.shape[2];
    let page = spec.page as usize;
    // One task per sequence: (recall, mass, cosine, min cosine, max error, lists).
    let per_seq = |b: usize| {
        let (mut recall, mut mass, mut cosine, mut min_cos, mut max_err) =
            (0.0, 0.0, 0.0, 1.0f64, 0.0f64);
        let mut lists = 0usize;
        let len = st.lens[b] as usize;
        let probs = dense_probs(spec, st, q, b);
        for s in 0..idx.shape[1] {
            // The heads that attend through list `s` (a subset's list serves every head).
            let heads: Vec<usize> = match spec.heads {
                HeadReduce::PerKvGroup(_) => (s * g..(s + 1) * g).collect(),
                HeadReduce::Shared(_) | HeadReduce::Subset(..) => (0..hq).collect(),
            };
            let row = &idx.data[(b * idx.shape[1] + s) * cap..][..cap];
            let units = len.div_ceil(page);
            let mut chosen = vec![false; units];
            let mut selected = vec![false; len];
            for &u in row.iter().filter(|&&u| u >= 0) {
                let u = u as usize;
                chosen[u] = true;
                for j in u * page..((u + 1) * page).min(len) {
                    selected[j] = true;
                }
            }
            // Exact top-n units (n = units selected) by dense attention mass, summed over
            // the list's heads; ties to the lower index.
            let n = chosen.iter().filter(|x| **x).count();
            let mass_of = |u: usize| -> f64 {
                (u * page..((u + 1) * page).min(len))
                    .map(|j| heads.iter().map(|&h| probs[h][j]).sum::<f64>())
                    .sum()
            };
            let unit_mass: Vec<f64> = (0..units).map(mass_of).collect();
            let mut order: Vec<usize> = (0..units).collect();
            order.sort_by(|&x, &y| unit_mass[y].total_cmp(&unit_mass[x]).then(x.cmp(&y)));
            let hit = order[..n].iter().filter(|&&u| chosen[u]).count();
            recall += if n == 0 { 1.0 } else { hit as f64 / n as f64 };
            lists += 1;
            for &h in &heads {
                let kvh = h / g;
                let p = &probs[h];
                let m: f64 = (0..len).filter(|&j| selected[j]).map(|j| p[j]).sum();
                mass += m;
                let mut dense = vec![0f64; d];
                let mut sparse = vec![0f64; d];
                for j in 0..len {
                    let vv = &st.v[((b * hkv + kvh) * c + j) * d..][..d];
                    for (t, x) in vv.iter().enumerate() {
                        dense[t] += p[j] * *x as f64;
                        if selected[j] {
                            sparse[t] += p[j] / m.max(f64::MIN_POSITIVE) * *x as f64;
                        }
                    }
                }
                let cos = cos_sim(&dense, &sparse);
                cosine += cos;
                min_cos = min_cos.min(cos);
                if let Some(o) = o {
                    let got = &o[(b * hq + h) * d..][..d];
                    let norm = sparse
                        .iter()
                        .map(|x| x.abs())
                        .fold(0.0, f64::max)
                        .max(1e-30);
                    for (x, y) in got.iter().zip(&sparse) {
                        max_err = max_err.max((*x as f64 - y).abs() / norm);
                    }
                }
            }
        }
        (recall, mass, cosine, min_cos, max_err, lists)
    };
    let (recall, mass, cosine, min_cos, max_err, lists) =
        (0..b_n).into_par_iter().map(per_seq).reduce(
            || (0.0, 0.0, 0.0, 1.0f64, 0.0f64, 0usize),
            |a, b| {
                (
                    a.0 + b.0,
                    a.1 + b.1,
                    a.2 + b.2,
                    a.3.min(b.3),
                    a.4.max(b.4),
                    a.5 + b.5,
                )
            },
        );
    let per_head = (b_n * hq) as f64;
    Fidelity {
        recall: recall / lists.max(1) as f64,
        mass: mass / per_head,
        cosine: cosine / per_head,
        min_cosine: min_cos,
        max_rel_err: max_err,
    }
}

/// Dense attention probabilities of query `q` `[B, Hq, 1, D]` for sequence `b`, per query
/// head, over its cached tokens.
fn dense_probs(spec: &SelectSpec, st: &DecodeState, q: &[f32], b: usize) -> Vec<Vec<f64>> {
    let hq = spec.q_heads as usize;
    let hkv = spec.kv_heads as usize;
    let g = spec.group() as usize;
    let d = spec.head_dim as usize;
    let c = spec.context as usize;
    let len = st.lens[b] as usize;
    (0..hq)
        .into_par_iter()
        .map(|h| {
            let kvh = h / g;
            let qv = &q[(b * hq + h) * d..][..d];
            let logits: Vec<f64> = (0..len)
                .map(|j| {
                    let kv = &st.k[((b * hkv + kvh) * c + j) * d..][..d];
                    spec.scale
                        * qv.iter()
                            .zip(kv)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect()
        })
        .collect()
}

/// Dense attention of `q` summed over the heads of each selection list: `[B, Hsel, C]`
/// (zeros past each sequence's length). The history `attnc bench` gives H2O's state.
pub fn attention_sums(spec: &SelectSpec, st: &DecodeState, q: &[f32]) -> Vec<f32> {
    let hs = spec.sel_heads() as usize;
    let c = spec.context as usize;
    let g = spec.group() as usize;
    let mut out = vec![0f32; spec.batch as usize * hs * c];
    for b in 0..spec.batch as usize {
        for (h, p) in dense_probs(spec, st, q, b).into_iter().enumerate() {
            // The list whose scores head `h` adds to (none: a head outside the subset).
            let s = match spec.heads {
                HeadReduce::PerKvGroup(_) => h / g,
                HeadReduce::Shared(_) => 0,
                HeadReduce::Subset(_, set) if set.heads().contains(&(h as u32)) => 0,
                HeadReduce::Subset(..) => continue,
            };
            for (j, x) in p.into_iter().enumerate() {
                out[(b * hs + s) * c + j] += x as f32;
            }
        }
    }
    out
}

fn cos_sim(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

/// A synthetic cache and query for benchmarks: keys, values and the last query row
/// uniform in [-1, 1), earlier rows the last plus noise; for each (sequence, KV head), `heavy` tokens at pseudo-random positions get
/// their key pushed along the mean query of the KV head's query heads so that their logit
/// rises by 2 to 8. Returns `(k, v, q)` with `q` of `rows` query rows.
pub struct Synthetic {
    pub k: Tensor,
    pub v: Tensor,
    pub q: Tensor,
}

pub fn synthetic(spec: &SelectSpec, rows: usize, heavy: usize, seed: u64) -> Synthetic {
    let b_n = spec.batch as usize;
    let hq = spec.q_heads as usize;
    let hkv = spec.kv_heads as usize;
    let g = spec.group() as usize;
    let d = spec.head_dim as usize;
    let c = spec.context as usize;
    let mut k = Tensor::random(&[b_n, hkv, c, d], seed);
    let v = Tensor::random(&[b_n, hkv, c, d], seed + 1);
    let mut q = Tensor::random(&[b_n, hq, rows, d], seed + 2);
    // Earlier query rows (a SnapKV window) resemble the last one, as in language models:
    // the last row plus half as much noise.
    for bh in 0..b_n * hq {
        let (head, rest) = q.data[bh * rows * d..][..rows * d].split_at_mut((rows - 1) * d);
        for r in 0..rows - 1 {
            for t in 0..d {
                head[r * d + t] = rest[t] + 0.5 * head[r * d + t];
            }
        }
    }
    let mut rng = fastrand::Rng::with_seed(seed + 3);
    for b in 0..b_n {
        for kvh in 0..hkv {
            // The mean query direction of this KV head's heads (last row: the decode query).
            let mut u = vec![0f64; d];
            for h in kvh * g..(kvh + 1) * g {
                let qv = &q.data[((b * hq + h) * rows + rows - 1) * d..][..d];
                for (a, x) in u.iter_mut().zip(qv) {
                    *a += *x as f64;
                }
            }
            let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            u.iter_mut().for_each(|x| *x /= norm);
            // q . u for the heads (the logit change per unit push, before the scale).
            let qu: f64 = (kvh * g..(kvh + 1) * g)
                .map(|h| {
                    let qv = &q.data[((b * hq + h) * rows + rows - 1) * d..][..d];
                    qv.iter().zip(&u).map(|(a, b)| *a as f64 * b).sum::<f64>()
                })
                .sum::<f64>()
                / g as f64;
            for _ in 0..heavy.min(c) {
                let j = rng.usize(..c);
                let bump = 2.0 + 6.0 * rng.f64();
                let push = bump / (spec.scale * qu.max(1e-3));
                let kv = &mut k.data[((b * hkv + kvh) * c + j) * d..][..d];
                for (x, a) in kv.iter_mut().zip(&u) {
                    *x += (push * a) as f32;
                }
            }
        }
    }
    Synthetic { k, v, q }
}
