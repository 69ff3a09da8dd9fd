//! What a compiled kernel expects: the runtime checks every call against it and never
//! guesses argument order.

use attnc::driver::Compiled;

use crate::{Error, Tensor, TensorRef};

pub const DIMS_Q: [&str; 4] = [
    "batch (BATCH)",
    "heads (HEADS)",
    "tokens",
    "head_dim (HEAD_DIM)",
];
pub const DIMS_K: [&str; 4] = [
    "batch (BATCH)",
    "kv heads (KV_HEADS)",
    "tokens",
    "head_dim (HEAD_DIM)",
];
pub const DIMS_V: [&str; 4] = [
    "batch (BATCH)",
    "kv heads (KV_HEADS)",
    "tokens",
    "value_dim (VALUE_DIM)",
];

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub kernel: String,
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Sequence length (canvas and segments), in the layout's token order.
    pub tokens: usize,
    pub head_dim: usize,
    pub value_dim: usize,
    /// The element type the kernel is declared with (the CPU computes in f32 regardless).
    pub dtype: String,
    pub scale: f64,
    pub tile_tokens: usize,
    /// Declared inputs of score modifiers: name and shape.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Outputs beside `o` (`[batch, heads, tokens, value_dim]`): name and shape. `lse`
    /// `[batch, heads, tokens]` f32 for a kernel with `outputs lse;`.
    #[serde(default)]
    pub outputs: Vec<(String, Vec<usize>)>,
}

impl Manifest {
    /// Random `q`, `k`, `v` (seeds 1, 2, 3) and zeroed inputs of this manifest's shapes:
    /// what the benchmarks and the autotuner time.
    pub fn random_args(&self) -> (Tensor, Tensor, Tensor, Vec<Tensor>) {
        (
            Tensor::random(&self.q_shape(), 1),
            Tensor::random(&self.k_shape(), 2),
            Tensor::random(&self.v_shape(), 3),
            self.inputs
                .iter()
                .map(|(_, d)| Tensor::zeros(d.clone()))
                .collect(),
        )
    }

    pub fn from_compiled(c: &Compiled) -> Manifest {
        let s = &c.spec;
        Manifest {
            kernel: s.kernel.clone(),
            batch: s.batch as usize,
            heads: s.heads as usize,
            kv_heads: s.kv_heads as usize,
            tokens: c.schedule.geom.total_tokens as usize,
            head_dim: s.head_dim as usize,
            value_dim: s.value_dim as usize,
            dtype: s.dtype.name().to_string(),
            scale: s.scale,
            tile_tokens: c.schedule.geom.tile_tokens as usize,
            inputs: s
                .inputs
                .iter()
                .map(|i| (i.name.clone(), i.dims.iter().map(|d| *d as usize).collect()))
                .collect(),
            outputs: s
                .outputs
                .lse
                .map(|_| {
                    let (b, h) = (s.batch as usize, s.heads as usize);
                    (
                        "lse".to_string(),
                        vec![b, h, c.schedule.geom.total_tokens as usize],
                    )
                })
                .into_iter()
                .collect(),
        }
    }

    /// Checks an lse buffer of `lse` values (none: not passed) against what the kernel
    /// writes (`outputs lse;`, `[batch, heads, tokens]`).
    pub fn check_lse(&self, lse: Option<usize>) -> Result<(), Error> {
        let want = self.lse_shape().map(|s| (s, s.iter().product::<usize>()));
        match (want, lse) {
            (None, None) => Ok(()),
            (Some((shape, n)), None) => Err(Error::Shape(format!(
                "kernel `{}` writes its rows' log-sum-exps (`outputs lse;`): pass a buffer of {n} values {shape:?} (run_with_lse)",
                self.kernel
            ))),
            (None, Some(_)) => Err(Error::Shape(format!(
                "kernel `{}` writes no log-sum-exps: add `outputs lse;` to its body",
                self.kernel
            ))),
            (Some((shape, n)), Some(got)) if got != n => Err(Error::Shape(format!(
                "the lse output holds {got} values; expected {n} = {shape:?}"
            ))),
            (Some(_), Some(_)) => Ok(()),
        }
    }

    /// The shape of the log-sum-exps the kernel writes (`outputs lse;`), if it does.
    pub fn lse_shape(&self) -> Option<&[usize]> {
        self.outputs
            .iter()
            .find(|(n, _)| n == "lse")
            .map(|(_, d)| d.as_slice())
    }

    pub fn q_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.tokens, self.head_dim]
    }

    pub fn k_shape(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.tokens, self.head_dim]
    }

    pub fn v_shape(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.tokens, self.value_dim]
    }

    pub fn o_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.tokens, self.value_dim]
    }

    /// Checks the tensors of a call (shapes named by dimension and parameter, lengths,
    /// finiteness, the inputs' count and shapes).
    pub fn check(
        &self,
        q: TensorRef,
        k: TensorRef,
        v: TensorRef,
        inputs: &[TensorRef],
    ) -> Result<(), Error> {
        q.check("q", &self.q_shape(), &DIMS_Q)?;
        k.check("k", &self.k_shape(), &DIMS_K)?;
        v.check("v", &self.v_shape(), &DIMS_V)?;
        if inputs.len() != self.inputs.len() {
            let names: Vec<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::Shape(format!(
                "kernel `{}` takes {} input tensor(s) ({}), got {}",
                self.kernel,
                self.inputs.len(),
                names.join(", "),
                inputs.len()
            )));
        }
        for (t, (name, dims)) in inputs.iter().zip(&self.inputs) {
            let labels: Vec<String> = (0..dims.len()).map(|i| format!("dim {i}")).collect();
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            t.check(name, dims, &labels)?;
        }
        Ok(())
    }
}
