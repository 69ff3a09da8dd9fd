//! Running a kernel on `.npy` files (what `attnc run` does).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{npy, CpuKernel, Error, Tensor};

/// The tensors of one run, by path.
pub struct NpyArgs {
    pub q: PathBuf,
    pub k: PathBuf,
    pub v: PathBuf,
    /// Score-modifier inputs as `(name, path)`, in any order.
    pub inputs: Vec<(String, PathBuf)>,
}

pub struct RunReport {
    pub shape: Vec<usize>,
    pub millis: f64,
}

/// Reads the tensors, checks them against the kernel's manifest, runs, writes `out`.
pub fn run_npy(kernel: &CpuKernel, args: &NpyArgs, out: &Path) -> Result<RunReport, Error> {
    let m = kernel.manifest();
    let q = npy::read(&args.q)?;
    let k = npy::read(&args.k)?;
    let v = npy::read(&args.v)?;
    let mut inputs: Vec<Tensor> = vec![];
    for (name, _) in &m.inputs {
        let Some((_, p)) = args.inputs.iter().find(|(n, _)| n == name) else {
            return Err(Error::Shape(format!(
                "kernel `{}` needs the input `{name}` (pass --input {name}=FILE.npy)",
                m.kernel
            )));
        };
        inputs.push(npy::read(p)?);
    }
    if let Some((n, _)) = args
        .inputs
        .iter()
        .find(|(n, _)| !m.inputs.iter().any(|(x, _)| x == n))
    {
        let names: Vec<&str> = m.inputs.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::Shape(format!(
            "kernel `{}` has no input `{n}` (its inputs: {})",
            m.kernel,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    let mut o = Tensor::zeros(m.o_shape().to_vec());
    let views: Vec<_> = inputs.iter().map(Tensor::view).collect();
    let t = Instant::now();
    kernel.run(q.view(), k.view(), v.view(), &views, &mut o.data)?;
    let millis = t.elapsed().as_secs_f64() * 1e3;
    npy::write(out, &o)?;
    Ok(RunReport {
        shape: o.shape,
        millis,
    })
}

/// As [`run_npy`], on the GPU (inputs converted to the kernel's 16-bit type).
pub fn run_npy_cuda(
    kernel: &crate::cuda::CudaKernel,
    args: &NpyArgs,
    out: &Path,
) -> Result<RunReport, Error> {
    let m = kernel.manifest().clone();
    let q = npy::read(&args.q)?;
    let k = npy::read(&args.k)?;
    let v = npy::read(&args.v)?;
    let mut inputs: Vec<Tensor> = vec![];
    for (name, _) in &m.inputs {
        let Some((_, p)) = args.inputs.iter().find(|(n, _)| n == name) else {
            return Err(Error::Shape(format!(
                "kernel `{}` needs the input `{name}` (pass --input {name}=FILE.npy)",
                m.kernel
            )));
        };
        inputs.push(npy::read(p)?);
    }
    let mut o = Tensor::zeros(m.o_shape().to_vec());
    let views: Vec<_> = inputs.iter().map(Tensor::view).collect();
    let t = Instant::now();
    kernel.run(q.view(), k.view(), v.view(), &views, &mut o.data)?;
    let millis = t.elapsed().as_secs_f64() * 1e3;
    npy::write(out, &o)?;
    Ok(RunReport {
        shape: o.shape,
        millis,
    })
}
