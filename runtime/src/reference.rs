//! The reference implementation, written plainly in f64: dense attention over every key,
//! with the mask decided token pair by token pair by the pattern's definition
//! (`pattern::brute::Oracle`) and the score modifier evaluated by the interpreter, and each
//! row's log-sum-exp. Slow on purpose: it is the oracle the compiled kernels are tested
//! against.

use attnc::pattern::brute::Oracle;
use attnc::pattern::geometry::TokenRef;
use attnc::sema::eval::{self, Env, EvalError, Value};
use attnc::sema::expr::{InputId, ParamId, Var};
use attnc::sema::spec::Spec;
use attnc::Span;

use crate::{Error, TensorRef};

/// The output `[batch, heads, tokens, value_dim]` in f64. Rows that attend to no key are 0.
pub fn attention(
    spec: &Spec,
    q: TensorRef,
    k: TensorRef,
    v: TensorRef,
    inputs: &[TensorRef],
) -> Result<Vec<f64>, Error> {
    attention_with_lse(spec, q, k, v, inputs).map(|(out, _)| out)
}

/// The output, as [`attention`], and each query row's log-sum-exp `[batch, heads, tokens]`
/// in f64: `ln sum_j exp(s_j)` over the keys `j` the row sees, `s_j` its score after the
/// scale and the score modifier (what `outputs lse;` writes, FlashAttention's
/// `softmax_lse`); -inf for a row that sees no key.
pub fn attention_with_lse(
    spec: &Spec,
    q: TensorRef,
    k: TensorRef,
    v: TensorRef,
    inputs: &[TensorRef],
) -> Result<(Vec<f64>, Vec<f64>), Error> {
    let oracle = Oracle::new(spec).map_err(Error::Compile)?;
    let g = &oracle.geom;
    let n = g.total_tokens as usize;
    let (b_n, h_n, kvh) = (
        spec.batch as usize,
        spec.heads as usize,
        spec.kv_heads as usize,
    );
    let (d, dv) = (spec.head_dim as usize, spec.value_dim as usize);
    let group = h_n / kvh.max(1);
    let expect = |t: &TensorRef, name: &str, shape: [usize; 4]| {
        if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
            Err(Error::Shape(format!(
                "{name} has shape {:?}; expected {shape:?}",
                t.shape
            )))
        } else {
            Ok(())
        }
    };
    expect(&q, "q", [b_n, h_n, n, d])?;
    expect(&k, "k", [b_n, kvh, n, d])?;
    expect(&v, "v", [b_n, kvh, n, dv])?;
    let coords: Vec<Option<[u32; 3]>> = (0..n as u64)
        .map(|p| match g.token_at(p) {
            TokenRef::Canvas { coords } => Some(coords),
            TokenRef::Segment { .. } => None,
        })
        .collect();
    let mut out = vec![0f64; b_n * h_n * n * dv];
    let mut lse = vec![f64::NEG_INFINITY; b_n * h_n * n];
    let mut scores = vec![0f64; n];
    let mut active = vec![false; n];
    // Mask rows are computed once per (head variant, query) and shared by its heads.
    for (variant, pv) in spec.variants.iter().enumerate() {
        for i in 0..n {
            for (j, a) in active.iter_mut().enumerate() {
                *a = oracle
                    .active(variant, i as u64, j as u64)
                    .map_err(eval_error)?;
            }
            for b in 0..b_n {
                for &h in &pv.heads {
                    let h = h as usize;
                    let kh = h / group.max(1);
                    let qrow = &q.data[((b * h_n + h) * n + i) * d..][..d];
                    let mut max = f64::NEG_INFINITY;
                    for j in 0..n {
                        if !active[j] {
                            continue;
                        }
                        let krow = &k.data[((b * kvh + kh) * n + j) * d..][..d];
                        let dot: f64 = qrow
                            .iter()
                            .zip(krow)
                            .map(|(x, y)| f64::from(*x) * f64::from(*y))
                            .sum();
                        let mut s = dot * spec.scale;
                        if let Some(e) = &spec.score {
                            let env = ScoreEnv {
                                score: s,
                                b,
                                h,
                                q: i,
                                k: j,
                                coords: &coords,
                                canvas: &g.canvas,
                                inputs,
                                spec,
                            };
                            s = eval::eval(e, &env).map_err(eval_error)?.as_f64();
                        }
                        scores[j] = s;
                        max = max.max(s);
                    }
                    let o = &mut out[((b * h_n + h) * n + i) * dv..][..dv];
                    if max == f64::NEG_INFINITY {
                        continue; // no key: zeros (as FlexAttention)
                    }
                    let mut sum = 0f64;
                    for j in 0..n {
                        if !active[j] {
                            continue;
                        }
                        let p = (scores[j] - max).exp();
                        sum += p;
                        let vrow = &v.data[((b * kvh + kh) * n + j) * dv..][..dv];
                        for (x, y) in o.iter_mut().zip(vrow) {
                            *x += p * f64::from(*y);
                        }
                    }
                    for x in o.iter_mut() {
                        *x /= sum;
                    }
                    lse[(b * h_n + h) * n + i] = max + sum.ln();
                }
            }
        }
    }
    Ok((out, lse))
}

fn eval_error(e: EvalError) -> Error {
    Error::Input(format!("evaluating the pattern failed: {}", e.message))
}

/// The variables of a score modifier for one (query, key) pair.
struct ScoreEnv<'a> {
    score: f64,
    b: usize,
    h: usize,
    q: usize,
    k: usize,
    coords: &'a [Option<[u32; 3]>],
    canvas: &'a [u32; 3],
    inputs: &'a [TensorRef<'a>],
    spec: &'a Spec,
}

impl Env for ScoreEnv<'_> {
    fn var(&self, v: Var, _: Span) -> Result<Value, EvalError> {
        let c = |pos: usize, a: u8| {
            self.coords[pos]
                .map(|c| i64::from(c[a as usize % 3]))
                .unwrap_or(-1)
        };
        Ok(match v {
            Var::Score => Value::Float(self.score),
            Var::Batch => Value::Int(self.b as i64),
            Var::Head => Value::Int(self.h as i64),
            Var::Q(a) => Value::Int(c(self.q, a)),
            Var::K(a) => Value::Int(c(self.k, a)),
            Var::D(a) => Value::Int(c(self.k, a) - c(self.q, a)),
            Var::N(a) => Value::Int(i64::from(self.canvas[a as usize % 3])),
            Var::QI => Value::Int(self.q as i64),
            Var::KI => Value::Int(self.k as i64),
        })
    }

    fn param(&self, _: ParamId, span: Span) -> Result<Value, EvalError> {
        Err(EvalError {
            span,
            message: "unbound parameter".into(),
        })
    }

    fn head(&self) -> Option<usize> {
        Some(self.h)
    }

    fn input(&self, id: InputId, idx: &[i64], _: Span) -> Result<f64, EvalError> {
        let (Some(t), Some(spec)) = (
            self.inputs.get(id.0 as usize),
            self.spec.inputs.get(id.0 as usize),
        ) else {
            return Ok(0.0);
        };
        let mut off = 0usize;
        for (x, d) in idx.iter().zip(&spec.dims) {
            if *x < 0 || *x as u64 >= *d {
                return Ok(0.0); // out of range reads 0, as in the compiled code
            }
            off = off * *d as usize + *x as usize;
        }
        Ok(t.data.get(off).map(|x| f64::from(*x)).unwrap_or(0.0))
    }
}
