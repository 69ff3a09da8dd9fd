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
    /// tests, benchmarks and the autotuner. Generated in parallel chunks, each starting
    /// from the generator's state jumped ahead to its first value (`Xorshift::jump`), so
    /// the values are those of the one sequential stream: at 262144 tokens x 24 heads x
    /// 128 (805 M values) the sequential loop took 8 s a tensor.
    pub fn random(shape: &[usize], seed: u64) -> Tensor {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        let n: usize = shape.iter().product();
        let jump = Xorshift::jump_matrix(CHUNK as u64);
        let mut starts = Vec::with_capacity(n.div_ceil(CHUNK));
        let mut x = seed | 1;
        for _ in 0..n.div_ceil(CHUNK) {
            starts.push(x);
            x = Xorshift::apply(&jump, x);
        }
        let mut data = vec![0f32; n];
        data.par_chunks_mut(CHUNK)
            .zip(starts.par_iter())
            .for_each(|(out, x0)| {
                let mut g = Xorshift(*x0);
                for v in out {
                    *v = g.next_unit();
                }
            });
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

/// The xorshift64 generator (shifts 13, 7, 17) behind `Tensor::random`.
struct Xorshift(u64);

impl Xorshift {
    fn step(mut x: u64) -> u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }

    /// The next value in [-1, 1): the state's top 24 bits.
    fn next_unit(&mut self) -> f32 {
        self.0 = Xorshift::step(self.0);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// The step is linear over GF(2): as a matrix, column `i` is the image of bit `i`.
    /// Returns the matrix of `k` steps (by squaring).
    fn jump_matrix(mut k: u64) -> [u64; 64] {
        let mut base = [0u64; 64];
        for (i, c) in base.iter_mut().enumerate() {
            *c = Xorshift::step(1u64 << i);
        }
        let mut acc: [u64; 64] = std::array::from_fn(|i| 1u64 << i);
        while k > 0 {
            if k & 1 == 1 {
                acc = Xorshift::compose(&base, &acc);
            }
            base = Xorshift::compose(&base, &base);
            k >>= 1;
        }
        acc
    }

    /// `a` after `b`, column by column.
    fn compose(a: &[u64; 64], b: &[u64; 64]) -> [u64; 64] {
        std::array::from_fn(|i| Xorshift::apply(a, b[i]))
    }

    fn apply(m: &[u64; 64], x: u64) -> u64 {
        (0..64)
            .filter(|i| x >> i & 1 == 1)
            .fold(0, |acc, i| acc ^ m[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel chunks give the sequential stream's values, across chunk boundaries
    /// and for a length that is not a multiple of the chunk.
    #[test]
    fn random_is_the_sequential_stream() {
        let n = (1 << 16) * 3 + 12345;
        for seed in [1u64, 2, 42] {
            let t = Tensor::random(&[n], seed);
            let mut g = Xorshift(seed | 1);
            for (i, v) in t.data.iter().enumerate() {
                assert_eq!(*v, g.next_unit(), "seed {seed}, value {i}");
            }
        }
        assert!(Tensor::random(&[0], 3).data.is_empty());
    }
}
