//! Host tensors: row-major f32 with a shape.

use crate::Error;

/// An owned tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, Error> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape(format!(
                "shape {shape:?} holds {n} values, not {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Uniform values in [-1, 1) from a xorshift generator: deterministic per seed, for
    /// tests, benchmarks and the autotuner.
    pub fn random(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        let mut x = seed | 1;
        let data = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect();
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }

    pub fn view(&self) -> TensorRef<'_> {
        TensorRef {
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// A borrowed tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

impl<'a> TensorRef<'a> {
    pub fn new(shape: &'a [usize], data: &'a [f32]) -> TensorRef<'a> {
        TensorRef { shape, data }
    }

    /// Checks the shape (naming the tensor and each dimension in the message) and the
    /// length, and that every value is finite.
    pub fn check(&self, name: &str, want: &[usize], dims: &[&str]) -> Result<(), Error> {
        if self.shape.len() != want.len() {
            return Err(Error::Shape(format!(
                "{name} has {} dimensions {:?}; expected {} [{}] = {:?}",
                self.shape.len(),
                self.shape,
                want.len(),
                dims.join(", "),
                want
            )));
        }
        for (i, (have, w)) in self.shape.iter().zip(want).enumerate() {
            if have != w {
                return Err(Error::Shape(format!(
                    "{name} has {} = {have}; expected {w} (shape {:?}, expected [{}] = {:?})",
                    dims.get(i).copied().unwrap_or("?"),
                    self.shape,
                    dims.join(", "),
                    want
                )));
            }
        }
        let n: usize = want.iter().product();
        if self.data.len() != n {
            return Err(Error::Shape(format!(
                "{name} holds {} values; its shape {:?} needs {n}",
                self.data.len(),
                want
            )));
        }
        if let Some(i) = self.data.iter().position(|x| !x.is_finite()) {
            let mut idx = vec![0usize; want.len()];
            let mut r = i;
            for d in (0..want.len()).rev() {
                idx[d] = r % want[d].max(1);
                r /= want[d].max(1);
            }
            return Err(Error::Input(format!(
                "{name} holds {} at {idx:?}; every value must be finite",
                self.data[i]
            )));
        }
        Ok(())
    }
}
