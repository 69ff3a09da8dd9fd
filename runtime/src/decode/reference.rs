//! The brute-force reference for selection and sparse decode, written apart from the
//! executor on purpose: scores in `f64`, the keep rules from first principles, selection
//! by sorting every unit, attention by a plain two-pass softmax. Tests hold the executor
//! to it (indices exactly, outputs to `f32` rounding).

use std::cmp::Ordering;

use attnc::select::spec::{Budget, HeadReduce, Pool, Reduce, SelectSpec, Source};

use super::{DecodeState, Indices};
use crate::Error;

fn reduce(op: Reduce, xs: &[f64]) -> f64 {
    match op {
        Reduce::Sum => xs.iter().sum(),
        Reduce::Mean => xs.iter().sum::<f64>() / xs.len() as f64,
        Reduce::Max => xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    }
}

fn heads_of(s: &SelectSpec, sel: usize) -> Vec<usize> {
    match s.heads {
        HeadReduce::PerKvGroup(_) => {
            let g = s.group() as usize;
            (sel * g..(sel + 1) * g).collect()
        }
        HeadReduce::Shared(_) => (0..s.q_heads as usize).collect(),
        // Written apart from `SelectSpec::scoring_heads` on purpose: the named heads.
        HeadReduce::Subset(_, set) => set.heads().into_iter().map(|h| h as usize).collect(),
    }
}

fn key(s: &SelectSpec, st: &DecodeState, b: usize, kvh: usize, j: usize) -> Vec<f64> {
    let (hkv, c, d) = (s.kv_heads as usize, s.context as usize, s.head_dim as usize);
    st.k[((b * hkv + kvh) * c + j) * d..][..d]
        .iter()
        .map(|x| *x as f64)
        .collect()
}

fn query(s: &SelectSpec, q: &[f32], b: usize, h: usize, row: usize) -> Vec<f64> {
    let (hq, d, rows) = (s.q_heads as usize, s.head_dim as usize, s.q_rows() as usize);
    q[((b * hq + h) * rows + row) * d..][..d]
        .iter()
        .map(|x| super::cache::round(s.dtype, *x) as f64)
        .collect()
}

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = l.iter().map(|x| (x - m).exp()).sum();
    l.iter().map(|x| (x - m).exp() / z).collect()
}

/// Token scores of list `(b, sel)` for `j < len` (`None` where not scored).
fn token_scores(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    ext: Option<&[f32]>,
    b: usize,
    sel: usize,
) -> Vec<Option<f64>> {
    let len = st.lens[b] as usize;
    let c = s.context as usize;
    let hs = s.sel_heads() as usize;
    let g = s.group() as usize;
    let dotp = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    match s.source {
        Source::None => vec![Some(0.0); len],
        Source::Accumulated => (0..len)
            .map(|j| Some(st.acc[(b * hs + sel) * c + j] as f64))
            .collect(),
        Source::External => (0..len)
            .map(|j| Some(ext.map_or(0.0, |e| e[(b * hs + sel) * c + j] as f64)))
            .collect(),
        Source::Exact | Source::Window { .. } | Source::Normalized { .. } => {
            let rows = s.q_rows() as usize;
            let scored = if matches!(s.source, Source::Window { .. }) {
                len - rows
            } else {
                len
            };
            let normalized = matches!(s.source, Source::Normalized { .. });
            let per_head: Vec<Vec<f64>> = heads_of(s, sel)
                .into_iter()
                .map(|h| {
                    let rows_p: Vec<Vec<f64>> = (0..rows)
                        .map(|i| {
                            let qv = query(s, q, b, h, i);
                            let seen = len - rows + i + 1;
                            let l: Vec<f64> = (0..seen)
                                .map(|j| s.scale * dotp(&qv, &key(s, st, b, h / g, j)))
                                .collect();
                            match (s.source, ext) {
                                // The row's log-sum-exp given (natural log).
                                (Source::Window { lse: true, .. }, Some(e)) => {
                                    let hq = s.q_heads as usize;
                                    let lse = e[(b * hq + h) * rows + i] as f64;
                                    l.iter().map(|x| (x - lse).exp()).collect()
                                }
                                _ => softmax(&l),
                            }
                        })
                        .collect();
                    (0..scored)
                        .map(|j| {
                            // The rows that see token j (a row's probabilities end at the
                            // last key it sees).
                            let seen: Vec<f64> =
                                rows_p.iter().filter_map(|r| r.get(j).copied()).collect();
                            if normalized {
                                seen.iter().sum::<f64>() / seen.len() as f64
                            } else {
                                reduce(s.rows, &seen)
                            }
                        })
                        .collect()
                })
                .collect();
            (0..len)
                .map(|j| {
                    (j < scored).then(|| {
                        reduce(
                            s.heads.op(),
                            &per_head.iter().map(|p| p[j]).collect::<Vec<_>>(),
                        )
                    })
                })
                .collect()
        }
        Source::KeyNorm => (0..len)
            .map(|j| {
                let per: Vec<f64> = heads_of(s, sel)
                    .into_iter()
                    .map(|h| -key(s, st, b, h / g, j).iter().map(|x| x * x).sum::<f64>())
                    .collect();
                Some(reduce(s.heads.op(), &per))
            })
            .collect(),
        Source::PageBound | Source::PageMean => unreachable!("page scores are computed per page"),
    }
}

/// Unit scores of list `(b, sel)` (`None` where not scored).
fn unit_scores(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    ext: Option<&[f32]>,
    b: usize,
    sel: usize,
) -> Vec<Option<f64>> {
    let len = st.lens[b] as usize;
    let p = s.page as usize;
    let n = len.div_ceil(p);
    if s.source.scores_pages() {
        let g = s.group() as usize;
        // Head `h`'s score of page `pg` from its query.
        let head_page = |h: usize, pg: usize, qv: &[f64]| -> f64 {
            let keys: Vec<Vec<f64>> = (pg * p..(pg + 1) * p)
                .map(|j| key(s, st, b, h / g, j))
                .collect();
            (0..qv.len())
                .map(|t| {
                    let col = keys.iter().map(|k| k[t]);
                    if s.source == Source::PageBound {
                        let hi = col.clone().fold(f64::NEG_INFINITY, f64::max);
                        let lo = col.fold(f64::INFINITY, f64::min);
                        (qv[t] * hi).max(qv[t] * lo)
                    } else {
                        qv[t] * col.map(|x| x / p as f64).sum::<f64>()
                    }
                })
                .sum()
        };
        return (0..n)
            .map(|pg| {
                if (pg + 1) * p > len {
                    return None;
                }
                let per: Vec<f64> = heads_of(s, sel)
                    .into_iter()
                    .map(|h| head_page(h, pg, &query(s, q, b, h, 0)))
                    .collect();
                Some(reduce(s.heads.op(), &per))
            })
            .collect();
    }
    let tok = token_scores(s, st, q, ext, b, sel);
    let m = tok.iter().take_while(|x| x.is_some()).count();
    let pooled: Vec<Option<f64>> = (0..len)
        .map(|j| {
            if j >= m {
                return None;
            }
            let (size, avg) = match s.pool {
                Pool::None => return tok[j],
                Pool::Avg { size } => (size as i64, true),
                Pool::Max { size } => (size as i64, false),
            };
            let r = size / 2;
            let vals: Vec<f64> = (j as i64 - r..=j as i64 + r)
                .filter(|t| *t >= 0 && (*t as usize) < m)
                .map(|t| tok[t as usize].unwrap_or(0.0))
                .collect();
            Some(if avg {
                vals.iter().sum::<f64>() / size as f64
            } else {
                vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            })
        })
        .collect();
    if p == 1 {
        return pooled;
    }
    (0..n)
        .map(|pg| {
            if (pg + 1) * p > len || pg * p >= m {
                return None;
            }
            Some(
                (pg * p..((pg + 1) * p).min(m))
                    .map(|j| pooled[j].unwrap_or(0.0))
                    .sum(),
            )
        })
        .collect()
}

/// Selection by sorting every unit.
pub fn reference_select(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    external: Option<&[f32]>,
) -> Result<Indices, Error> {
    let (bn, hs, cap) = (
        s.batch as usize,
        s.sel_heads() as usize,
        s.capacity() as usize,
    );
    let mut data = vec![-1i32; bn * hs * cap];
    for b in 0..bn {
        let len = st.lens[b] as usize;
        let p = s.page as usize;
        let n = len.div_ceil(p);
        // Forced: a unit holding a sink or recent token, or the partial last page.
        let forced: Vec<bool> = (0..n)
            .map(|u| {
                let (lo, hi) = (u * p, ((u + 1) * p).min(len));
                (lo..hi).any(|t| t < s.sinks as usize || t + s.recent as usize >= len)
                    || hi - lo < p
            })
            .collect();
        let nf = forced.iter().filter(|f| **f).count();
        // A list's budget (with an adaptive allocation, the lists' mean).
        let per_list = s.budget_units() as usize;
        let k = match s.budget {
            Budget::Tokens(t) => (t as usize / p).min(per_list),
            Budget::Ratio(f) => (((f * n as f64).floor() as usize).max(nf)).min(per_list),
        };
        if n <= k {
            for sel in 0..hs {
                let row = &mut data[(b * hs + sel) * cap..][..cap];
                for u in 0..n {
                    row[u] = u as i32;
                }
            }
            continue;
        }
        // Better first: higher score, NaN last; then the lower unit, then the lower list.
        let better =
            |a: (f64, usize, usize), c: (f64, usize, usize)| match (a.0.is_nan(), c.0.is_nan()) {
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => {
                    c.0.partial_cmp(&a.0)
                        .unwrap_or(Ordering::Equal)
                        .then(a.1.cmp(&c.1))
                        .then(a.2.cmp(&c.2))
                }
            };
        // Each list's non-forced units, best first.
        let orders: Vec<Vec<(f64, usize, usize)>> = (0..hs)
            .map(|sel| {
                let scores = unit_scores(s, st, q, external, b, sel);
                let mut order: Vec<(f64, usize, usize)> = (0..n)
                    .filter(|u| !forced[*u])
                    .map(|u| (scores[u].unwrap_or(f64::NEG_INFINITY), u, sel))
                    .collect();
                order.sort_by(|x, y| better(*x, *y));
                order
            })
            .collect();
        let mut chosen: Vec<Vec<usize>> = vec![(0..n).filter(|u| forced[*u]).collect(); hs];
        match s.adaptive {
            None => {
                for (c, order) in chosen.iter_mut().zip(&orders) {
                    c.extend(order.iter().take(k - nf).map(|x| x.1));
                }
            }
            Some(f) => {
                // Ada-KV: each list its floor, then the best of everything left for the
                // rest of the lists' total.
                let floor = ((f * k as f64).ceil() as usize).min(k).max(nf);
                let mut left = vec![];
                for (c, order) in chosen.iter_mut().zip(&orders) {
                    c.extend(order.iter().take(floor - nf).map(|x| x.1));
                    left.extend(order.iter().skip(floor - nf).copied());
                }
                left.sort_by(|x, y| better(*x, *y));
                for x in left.into_iter().take(hs * k.saturating_sub(floor)) {
                    chosen[x.2].push(x.1);
                }
            }
        }
        for (sel, mut c) in chosen.into_iter().enumerate() {
            c.sort();
            let row = &mut data[(b * hs + sel) * cap..][..cap];
            for (o, u) in row.iter_mut().zip(c) {
                *o = u as i32;
            }
        }
    }
    Ok(Indices {
        shape: [bn, hs, cap],
        data,
    })
}

/// Attention over the selection in `f64` with a two-pass softmax: `[B, Hq, D]`.
pub fn reference_attend(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    idx: &Indices,
) -> Result<Vec<f64>, Error> {
    let (bn, hq, hkv, d, c) = (
        s.batch as usize,
        s.q_heads as usize,
        s.kv_heads as usize,
        s.head_dim as usize,
        s.context as usize,
    );
    let g = s.group() as usize;
    let (hs, cap) = (idx.shape[1], idx.shape[2]);
    let mut out = vec![0f64; bn * hq * d];
    for b in 0..bn {
        let len = st.lens[b] as usize;
        for h in 0..hq {
            let sel = if hs == 1 { 0 } else { h / g };
            let kvh = h / g;
            let toks: Vec<usize> = idx.data[(b * hs + sel) * cap..][..cap]
                .iter()
                .filter(|u| **u >= 0)
                .flat_map(|u| {
                    (*u as usize * s.page as usize..((*u as usize + 1) * s.page as usize).min(len))
                        .collect::<Vec<_>>()
                })
                .collect();
            if toks.is_empty() {
                continue;
            }
            let qv = query(s, q, b, h, 0);
            let l: Vec<f64> = toks
                .iter()
                .map(|&j| {
                    s.scale
                        * qv.iter()
                            .zip(key(s, st, b, kvh, j))
                            .map(|(x, y)| x * y)
                            .sum::<f64>()
                })
                .collect();
            let p = softmax(&l);
            for (pj, &j) in p.iter().zip(&toks) {
                let vv = &st.v[((b * hkv + kvh) * c + j) * d..][..d];
                for t in 0..d {
                    out[(b * hq + h) * d + t] += pj * vv[t] as f64;
                }
            }
        }
    }
    Ok(out)
}

/// The log-sum-exps a prefill's attention gives the window rows of a `window_lse(W)`
/// selection (what FlashAttention returns as `softmax_lse`): for each sequence, query head
/// and row `i` of the last `W` queries `q` `[B, Hq, W, D]`, `ln sum_j exp(scale q . k_j)`
/// over the keys `j` up to the row's position, in `f64` (queries and keys as the cache's
/// dtype holds them), rounded to `f32`. `[B, Hq, W]`.
pub fn window_lse(s: &SelectSpec, st: &DecodeState, q: &[f32]) -> Vec<f32> {
    let (b_n, hq, rows) = (s.batch as usize, s.q_heads as usize, s.q_rows() as usize);
    let g = s.group() as usize;
    let mut out = Vec::with_capacity(b_n * hq * rows);
    for b in 0..b_n {
        let len = st.lens[b] as usize;
        for h in 0..hq {
            for i in 0..rows {
                let qv = query(s, q, b, h, i);
                let seen = len - rows + i + 1;
                let l: Vec<f64> = (0..seen)
                    .map(|j| {
                        let kv = key(s, st, b, h / g, j);
                        s.scale * qv.iter().zip(&kv).map(|(x, y)| x * y).sum::<f64>()
                    })
                    .collect();
                let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = l.iter().map(|x| (x - m).exp()).sum();
                out.push((m + z.ln()) as f32);
            }
        }
    }
    out
}
