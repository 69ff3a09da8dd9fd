//! Rule 8's `output compacted`: the keys and values a selection names, gathered into a
//! smaller cache (SnapKV after prefill keeps this cache and decodes over it).

use attnc::select::spec::SelectSpec;

use super::{DecodeState, Indices};
use crate::{Error, Tensor};

/// A compacted cache: `k`, `v` `[B, Hkv, T, D]` with `T = capacity x page` tokens (zeros
/// past each sequence's length), and the lengths `[B]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Compacted {
    pub k: Tensor,
    pub v: Tensor,
    pub lens: Vec<u32>,
}

/// Gathers the tokens of the (checked) lists `idx` in list order: for each sequence and
/// KV head, the units of its list (its own with `per_kv_group`, the one list otherwise),
/// each unit's tokens up to the sequence's end. Every list of a sequence names the same
/// number of tokens (the keep rules and the budget do not depend on the head); lists that
/// do not (made by hand) are an error, as the lengths are per sequence.
pub fn compact(s: &SelectSpec, st: &DecodeState, idx: &Indices) -> Result<Compacted, Error> {
    let (b_n, hkv, c, d) = (
        s.batch as usize,
        s.kv_heads as usize,
        s.context as usize,
        s.head_dim as usize,
    );
    let (p, cap) = (s.page as usize, s.capacity() as usize);
    let t_n = (cap * p).min(c);
    let mut k = vec![0f32; b_n * hkv * t_n * d];
    let mut v = vec![0f32; b_n * hkv * t_n * d];
    let mut lens = vec![0u32; b_n];
    for b in 0..b_n {
        let len = st.lens[b] as usize;
        for kvh in 0..hkv {
            let sel = if s.heads.one_list() { 0 } else { kvh };
            let row = &idx.data[(b * idx.shape[1] + sel) * cap..][..cap];
            let src = (b * hkv + kvh) * c * d;
            let dst = (b * hkv + kvh) * t_n * d;
            let mut n = 0usize;
            for &u in row.iter().filter(|u| **u >= 0) {
                for j in u as usize * p..((u as usize + 1) * p).min(len) {
                    k[dst + n * d..][..d].copy_from_slice(&st.k[src + j * d..][..d]);
                    v[dst + n * d..][..d].copy_from_slice(&st.v[src + j * d..][..d]);
                    n += 1;
                }
            }
            if kvh == 0 {
                lens[b] = n as u32;
            } else if lens[b] as usize != n {
                return Err(Error::Input(format!(
                    "the lists of sequence {b} name {} and {n} tokens: a compacted cache has one length per sequence",
                    lens[b]
                )));
            }
        }
    }
    let shape = vec![b_n, hkv, t_n, d];
    Ok(Compacted {
        k: Tensor {
            shape: shape.clone(),
            data: k,
        },
        v: Tensor { shape, data: v },
        lens,
    })
}
