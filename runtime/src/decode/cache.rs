//! The KV cache of a decode kernel: keys and values rounded to the kernel's dtype, the
//! per-sequence lengths, Quest's per-page key minima and maxima, and H2O's accumulated
//! attention. `fill` loads a whole cache; `append` adds one token per sequence.

use attnc::select::spec::{SelectSpec, Source};
use attnc::sema::program::DType;

use crate::Error;

/// Everything a decode step reads besides the query. Layouts (row-major):
/// `k`, `v` `[B, Hkv, C, D]`; `kmax`, `kmin` `[B, Hkv, ceil(C / P), D]` (empty for token
/// granularity); `acc` `[B, Hsel, C]` (empty unless the source is `accumulated`).
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeState {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub lens: Vec<u32>,
    pub kmax: Vec<f32>,
    pub kmin: Vec<f32>,
    pub acc: Vec<f32>,
    /// Decode steps each sequence has taken since its cache was filled (`[B]`; each
    /// attention counts one; Keyformer's temperature schedule reads it).
    pub steps: Vec<u32>,
}

/// `x` rounded to the dtype (bf16 and f16 values are exact in f32).
pub fn round(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::Bf16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::F32 => x,
    }
}

/// Checks a slice's length and that every value is finite.
pub fn check_values(what: &str, data: &[f32], want: usize, shape: &str) -> Result<(), Error> {
    if data.len() != want {
        return Err(Error::Shape(format!(
            "{what} has {} values; expected {want} ({shape})",
            data.len()
        )));
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(Error::Input(format!(
            "{what} holds {} at flat index {i}",
            data[i]
        )));
    }
    Ok(())
}

pub(crate) fn new_state(s: &SelectSpec) -> DecodeState {
    let (b, hkv, c, d) = dims(s);
    let pages = if s.page > 1 { s.units() as usize } else { 0 };
    let acc = if s.source == Source::Accumulated {
        b * s.sel_heads() as usize * c
    } else {
        0
    };
    DecodeState {
        k: vec![0.0; b * hkv * c * d],
        v: vec![0.0; b * hkv * c * d],
        lens: vec![0; b],
        kmax: vec![0.0; b * hkv * pages * d],
        kmin: vec![0.0; b * hkv * pages * d],
        acc: vec![0.0; acc],
        steps: vec![0; b],
    }
}

fn dims(s: &SelectSpec) -> (usize, usize, usize, usize) {
    (
        s.batch as usize,
        s.kv_heads as usize,
        s.context as usize,
        s.head_dim as usize,
    )
}

pub(crate) fn fill(
    s: &SelectSpec,
    st: &mut DecodeState,
    k: &[f32],
    v: &[f32],
    lens: &[u32],
) -> Result<(), Error> {
    let (b, hkv, c, d) = dims(s);
    let shape = format!("[{b}, {hkv}, {c}, {d}]: batch, KV heads, CONTEXT, head dim");
    check_values("k", k, b * hkv * c * d, &shape)?;
    check_values("v", v, b * hkv * c * d, &shape)?;
    if lens.len() != b {
        return Err(Error::Shape(format!(
            "lens has {} values; expected one per sequence ({b})",
            lens.len()
        )));
    }
    if let Some(l) = lens.iter().find(|l| **l < 1 || **l as usize > c) {
        return Err(Error::Input(format!(
            "a cached length of {l} is outside 1..={c} (CONTEXT)"
        )));
    }
    *st = new_state(s);
    for (dst, src) in st.k.iter_mut().zip(k) {
        *dst = round(s.dtype, *src);
    }
    for (dst, src) in st.v.iter_mut().zip(v) {
        *dst = round(s.dtype, *src);
    }
    st.lens = lens.to_vec();
    if s.page > 1 {
        for bi in 0..b {
            for kvh in 0..hkv {
                for j in 0..lens[bi] as usize {
                    update_page(s, st, bi, kvh, j);
                }
            }
        }
    }
    Ok(())
}

/// Folds token `j`'s key into its page's minimum and maximum (the page's first token
/// starts them).
fn update_page(s: &SelectSpec, st: &mut DecodeState, b: usize, kvh: usize, j: usize) {
    let (_, hkv, c, d) = dims(s);
    let p = s.page as usize;
    let pages = s.units() as usize;
    let key = ((b * hkv + kvh) * c + j) * d;
    let meta = ((b * hkv + kvh) * pages + j / p) * d;
    for t in 0..d {
        let x = st.k[key + t];
        if j % p == 0 {
            st.kmax[meta + t] = x;
            st.kmin[meta + t] = x;
        } else {
            st.kmax[meta + t] = st.kmax[meta + t].max(x);
            st.kmin[meta + t] = st.kmin[meta + t].min(x);
        }
    }
}

pub(crate) fn append(
    s: &SelectSpec,
    st: &mut DecodeState,
    k_new: &[f32],
    v_new: &[f32],
) -> Result<(), Error> {
    let (b, hkv, c, d) = dims(s);
    let shape = format!("[{b}, {hkv}, {d}]: batch, KV heads, head dim");
    check_values("k_new", k_new, b * hkv * d, &shape)?;
    check_values("v_new", v_new, b * hkv * d, &shape)?;
    if st.lens.len() != b || st.k.len() != b * hkv * c * d {
        return Err(Error::Shape(
            "the state was made for another kernel (new_state)".into(),
        ));
    }
    if let Some(bi) = st.lens.iter().position(|l| *l as usize >= c) {
        return Err(Error::Input(format!(
            "sequence {bi} already holds CONTEXT = {c} tokens: the cache is full"
        )));
    }
    for bi in 0..b {
        let j = st.lens[bi] as usize;
        for kvh in 0..hkv {
            let dst = ((bi * hkv + kvh) * c + j) * d;
            let src = (bi * hkv + kvh) * d;
            for t in 0..d {
                st.k[dst + t] = round(s.dtype, k_new[src + t]);
                st.v[dst + t] = round(s.dtype, v_new[src + t]);
            }
            if s.page > 1 {
                update_page(s, st, bi, kvh, j);
            }
        }
        st.lens[bi] += 1;
    }
    Ok(())
}
