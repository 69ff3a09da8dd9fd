//! KV selection and sparse decode attention on the CPU, from a [`SelectSpec`]: the
//! executor of the contract in `docs/kv-selection.md`. A decode step is `select` (score,
//! reduce, pool, keep, top-k, emit) then `attend` (split-K over the index list); `append`
//! grows the cache and its page metadata. Every call checks its shapes and values.

// Numeric loops index several arrays by one position at once (keys, values, metadata):
// index loops read better there than zipped iterators.
#![allow(clippy::needless_range_loop)]

mod accumulate;
pub mod attend;
pub mod cache;
pub mod compact;
pub mod gpu;
mod lanes_avx;
pub mod module_cache;
pub mod reference;
pub mod score;
pub mod topk;
pub mod tuned;

use attnc::select::spec::{KernelKind, SelectSpec, Source};

pub use cache::DecodeState;
pub use compact::Compacted;

use crate::Error;

/// Index lists `[B, Hsel, K]`: ascending unit indices, padded with -1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indices {
    pub shape: [usize; 3],
    pub data: Vec<i32>,
}

/// A unit that a list names twice, if any (-1 entries aside). Lists from the top-k are
/// ascending: checked in one pass; others are sorted first.
fn repeated(row: &[i32]) -> Option<i32> {
    let kept = || row.iter().copied().filter(|u| *u >= 0);
    if kept().zip(kept().skip(1)).all(|(a, b)| a < b) {
        return None;
    }
    let mut v: Vec<i32> = kept().collect();
    v.sort_unstable();
    v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// A selection kernel ready to run on the CPU.
#[derive(Clone, Debug)]
pub struct DecodeKernel {
    spec: SelectSpec,
}

impl DecodeKernel {
    pub fn new(spec: SelectSpec) -> DecodeKernel {
        DecodeKernel { spec }
    }

    pub fn spec(&self) -> &SelectSpec {
        &self.spec
    }

    /// An empty cache (every length 0).
    pub fn new_state(&self) -> DecodeState {
        cache::new_state(&self.spec)
    }

    /// Loads a whole cache: `k`, `v` `[B, Hkv, CONTEXT, D]` (entries past `lens[b]` are
    /// ignored), `lens` `[B]` in `1..=CONTEXT`. Resets the accumulated state.
    pub fn fill(
        &self,
        st: &mut DecodeState,
        k: &[f32],
        v: &[f32],
        lens: &[u32],
    ) -> Result<(), Error> {
        cache::fill(&self.spec, st, k, v, lens)
    }

    /// Appends one token to every sequence: `k_new`, `v_new` `[B, Hkv, D]`.
    pub fn append(&self, st: &mut DecodeState, k_new: &[f32], v_new: &[f32]) -> Result<(), Error> {
        cache::append(&self.spec, st, k_new, v_new)
    }

    fn check_state(&self, st: &DecodeState) -> Result<(), Error> {
        let s = &self.spec;
        let fresh = cache::new_state(s);
        if st.k.len() != fresh.k.len()
            || st.lens.len() != fresh.lens.len()
            || st.kmax.len() != fresh.kmax.len()
            || st.acc.len() != fresh.acc.len()
            || st.steps.len() != fresh.steps.len()
        {
            return Err(Error::Shape(format!(
                "the state does not belong to `{}` (make it with new_state)",
                s.kernel
            )));
        }
        if let Some(b) = st.lens.iter().position(|l| *l == 0) {
            return Err(Error::Input(format!("sequence {b} has an empty cache")));
        }
        Ok(())
    }

    /// The queries rounded to the dtype, after checking `[B, Hq, rows, D]`.
    fn queries(&self, q: &[f32], rows: usize) -> Result<Vec<f32>, Error> {
        let s = &self.spec;
        let (b, hq, d) = (s.batch as usize, s.q_heads as usize, s.head_dim as usize);
        cache::check_values(
            "q",
            q,
            b * hq * rows * d,
            &format!("[{b}, {hq}, {rows}, {d}]: batch, query heads, query rows, head dim"),
        )?;
        Ok(q.iter().map(|x| cache::round(s.dtype, *x)).collect())
    }

    /// Rules 1 to 7: the index lists for the query `q` `[B, Hq, rows, D]` (`rows` is the
    /// observation window for `window`, else 1). `external` is required by, and only by,
    /// `source external` (the scores, `[B, Hsel, CONTEXT]`) and `source window_lse(W)`
    /// (each window row's log-sum-exp from the prefill's attention, natural log,
    /// `[B, Hq, W]`).
    pub fn select(
        &self,
        st: &DecodeState,
        q: &[f32],
        external: Option<&[f32]>,
    ) -> Result<Indices, Error> {
        let s = &self.spec;
        self.check_state(st)?;
        self.check_window_lens(&st.lens)?;
        let rows = s.q_rows() as usize;
        let q = self.queries(q, rows)?;
        let hs = s.sel_heads() as usize;
        let c = s.context as usize;
        match (s.source, external) {
            (Source::External, None) => {
                return Err(Error::Shape(format!(
                    "`{}` scores tokens with an external tensor: pass scores [{}, {hs}, {c}]",
                    s.kernel, s.batch
                )))
            }
            (Source::External, Some(e)) => {
                if e.len() != s.batch as usize * hs * c {
                    return Err(Error::Shape(format!(
                        "scores have {} values; expected [{}, {hs}, {c}] = {}",
                        e.len(),
                        s.batch,
                        s.batch as usize * hs * c
                    )));
                }
            }
            (Source::Window { lse: true, .. }, lse) => {
                let want = [s.batch as usize, s.q_heads as usize, rows];
                let shape = format!(
                    "[{}, {}, {rows}]: batch, query heads, window rows",
                    want[0], want[1]
                );
                let Some(lse) = lse else {
                    return Err(Error::Shape(format!(
                        "`{}` divides by the log-sum-exps of the prefill's attention: pass lse {shape}",
                        s.kernel
                    )));
                };
                cache::check_values("lse", lse, want.iter().product(), &shape)?;
            }
            (_, Some(_)) => {
                return Err(Error::Shape(format!(
                    "`{}` computes its own scores: pass no external scores",
                    s.kernel
                )))
            }
            (_, None) => {}
        }
        let scores = score::unit_scores(s, st, &q, external);
        let units = s.units() as usize;
        let cap = s.capacity() as usize;
        let mut data = vec![-1i32; s.batch as usize * hs * cap];
        if s.adaptive.is_some() {
            // The lists of a sequence share their budgets.
            for (b, seq) in data.chunks_mut(hs * cap).enumerate() {
                let sc: Vec<&[f32]> = (0..hs)
                    .map(|l| &scores[(b * hs + l) * units..][..units])
                    .collect();
                let mut outs: Vec<&mut [i32]> = seq.chunks_mut(cap).collect();
                topk::select_shared(s, st.lens[b], &sc, &mut outs);
            }
        } else {
            for (r, out) in data.chunks_mut(cap).enumerate() {
                let b = r / hs;
                topk::select_row(s, st.lens[b], &scores[r * units..][..units], out);
            }
        }
        Ok(Indices {
            shape: [s.batch as usize, hs, cap],
            data,
        })
    }

    /// Rule 8: attention of `q` `[B, Hq, 1, D]` over the lists in `idx`; the output is
    /// `[B, Hq, D]`. For `source accumulated`, adds the step's probabilities to the state.
    pub fn attend(
        &self,
        st: &mut DecodeState,
        q: &[f32],
        idx: &Indices,
    ) -> Result<Vec<f32>, Error> {
        let s = &self.spec;
        if s.kind == KernelKind::Select {
            return Err(Error::Shape(format!(
                "`{}` is a select kernel: it selects and never attends",
                s.kernel
            )));
        }
        self.check_state(st)?;
        self.check_indices(&st.lens, idx)?;
        let q = self.queries(q, 1)?;
        let out = attend::attend(s, st, &q, &idx.data);
        if s.source == Source::Accumulated {
            accumulate::accumulate(s, st, &q, &idx.data);
        }
        // The step is over: each sequence has taken one more (Keyformer's schedule).
        for t in st.steps.iter_mut() {
            *t += 1;
        }
        Ok(out)
    }

    /// Rule 7's `output compacted`: the keys and values the lists `idx` name, gathered in
    /// list order into a cache of `capacity x page` tokens per sequence and KV head, with
    /// each sequence's length in it ([`compact::compact`]). Any selection kernel's lists
    /// can be compacted; `output compacted` is what makes `attnc run` write the cache.
    pub fn compact(&self, st: &DecodeState, idx: &Indices) -> Result<Compacted, Error> {
        self.check_state(st)?;
        self.check_indices(&st.lens, idx)?;
        compact::compact(&self.spec, st, idx)
    }

    /// Every sequence at least as long as the observation window (`window` scores; one
    /// query row otherwise).
    pub(crate) fn check_window_lens(&self, lens: &[u32]) -> Result<(), Error> {
        let rows = self.spec.q_rows();
        match lens.iter().position(|l| *l < rows) {
            Some(b) => Err(Error::Input(format!(
                "sequence {b} holds {} tokens, fewer than the observation window of {rows}",
                lens[b]
            ))),
            None => Ok(()),
        }
    }

    /// Index lists fit for attention over sequences of `lens` tokens: shape
    /// `[B, Hsel, K]`, every entry -1 or a cached unit.
    pub(crate) fn check_indices(&self, lens: &[u32], idx: &Indices) -> Result<(), Error> {
        let s = &self.spec;
        let want = [
            s.batch as usize,
            s.sel_heads() as usize,
            s.capacity() as usize,
        ];
        if idx.shape != want || idx.data.len() != want.iter().product::<usize>() {
            return Err(Error::Shape(format!(
                "index lists of shape {:?}; `{}` expects {want:?}",
                idx.shape, s.kernel
            )));
        }
        let units = lens
            .iter()
            .map(|l| l.div_ceil(s.page) as i32)
            .collect::<Vec<_>>();
        for (r, row) in idx.data.chunks(want[2]).enumerate() {
            if let Some(u) = row.iter().find(|u| **u < -1 || **u >= units[r / want[1]]) {
                return Err(Error::Input(format!(
                    "index {u} in list {r} is outside the cached units 0..{}",
                    units[r / want[1]]
                )));
            }
        }
        for (r, row) in idx.data.chunks(want[2]).enumerate() {
            if let Some(u) = repeated(row) {
                return Err(Error::Input(format!(
                    "unit {u} appears twice in list {r}: a list names each unit once"
                )));
            }
        }
        Ok(())
    }

    /// One decode step: select, then attend.
    pub fn step(
        &self,
        st: &mut DecodeState,
        q: &[f32],
        external: Option<&[f32]>,
    ) -> Result<(Indices, Vec<f32>), Error> {
        let idx = self.select(st, q, external)?;
        let o = self.attend(st, q, &idx)?;
        Ok((idx, o))
    }
}
