//! Rule 7's `output compacted`: the keys and values a selection names, gathered into a
//! smaller cache (SnapKV after prefill keeps this cache and decodes over it).

use attnc::select::spec::SelectSpec;

use super::attend::row_tokens;
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
    let cap = s.capacity() as usize;
    let t_n = (cap * s.page as usize).min(c);
    let mut k = vec![0f32; b_n * hkv * t_n * d];
    let mut v = vec![0f32; b_n * hkv * t_n * d];
    let mut lens = vec![0u32; b_n];
    for b in 0..b_n {
        for kvh in 0..hkv {
            let sel = s.heads.list_of_kv_head(kvh);
            let row = &idx.data[(b * idx.shape[1] + sel) * cap..][..cap];
            let src = (b * hkv + kvh) * c * d;
            let dst = (b * hkv + kvh) * t_n * d;
            let toks = row_tokens(s, row, st.lens[b]);
            for (n, j) in toks.iter().enumerate() {
                let j = *j as usize;
                k[dst + n * d..][..d].copy_from_slice(&st.k[src + j * d..][..d]);
                v[dst + n * d..][..d].copy_from_slice(&st.v[src + j * d..][..d]);
            }
            let n = toks.len();
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
