//! Running a kernel on `.npy` files (what `attnc run` does).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{manifest::Manifest, npy, CpuKernel, Error, Tensor};

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
    /// The shape of the log-sum-exps written (`outputs lse;` and a path for them).
    pub lse_shape: Option<Vec<usize>>,
}

/// The tensors read from the files of one run, inputs in the manifest's order.
struct Loaded {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    inputs: Vec<Tensor>,
}

/// Reads the files and matches the named inputs to the kernel's (shapes are checked by
/// the kernel's `run`).
fn load(m: &Manifest, args: &NpyArgs) -> Result<Loaded, Error> {
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
    let mut inputs = vec![];
    for (name, _) in &m.inputs {
        let Some((_, p)) = args.inputs.iter().find(|(n, _)| n == name) else {
            return Err(Error::Shape(format!(
                "kernel `{}` needs the input `{name}` (pass --input {name}=FILE.npy)",
                m.kernel
            )));
        };
        inputs.push(npy::read(p)?);
    }
    Ok(Loaded {
        q: npy::read(&args.q)?,
        k: npy::read(&args.k)?,
        v: npy::read(&args.v)?,
        inputs,
    })
}

/// Runs `launch` on the loaded tensors, timing it, and writes the output to `out`.
fn run_with(
    m: &Manifest,
    args: &NpyArgs,
    out: &Path,
    launch: impl FnOnce(&Loaded, &mut [f32]) -> Result<(), Error>,
) -> Result<RunReport, Error> {
    let t = load(m, args)?;
    let mut o = Tensor::zeros(m.o_shape().to_vec());
    let start = Instant::now();
    launch(&t, &mut o.data)?;
    let millis = start.elapsed().as_secs_f64() * 1e3;
    npy::write(out, &o)?;
    Ok(RunReport {
        shape: o.shape,
        millis,
        lse_shape: None,
    })
}

/// Reads the tensors, checks them against the kernel's manifest, runs, writes `out`, and
/// for a kernel with `outputs lse;` its rows' log-sum-exps (`[batch, heads, tokens]` f32)
/// to `lse_out` when given (a path for a kernel without them is an error, before anything
/// is read).
pub fn run_npy(
    kernel: &CpuKernel,
    args: &NpyArgs,
    out: &Path,
    lse_out: Option<&Path>,
) -> Result<RunReport, Error> {
    run_writing_lse(kernel.manifest(), args, out, lse_out, |t, o, lse| {
        let views: Vec<_> = t.inputs.iter().map(Tensor::view).collect();
        kernel.run_with_lse(t.q.view(), t.k.view(), t.v.view(), &views, o, lse)
    })
}

/// As [`run_npy`], on the GPU (inputs converted to the kernel's 16-bit type).
pub fn run_npy_cuda(
    kernel: &crate::cuda::CudaKernel,
    args: &NpyArgs,
    out: &Path,
    lse_out: Option<&Path>,
) -> Result<RunReport, Error> {
    run_writing_lse(kernel.manifest(), args, out, lse_out, |t, o, lse| {
        let views: Vec<_> = t.inputs.iter().map(Tensor::view).collect();
        kernel.run_with_lse(t.q.view(), t.k.view(), t.v.view(), &views, o, lse)
    })
}

/// `run_with`, the log-sum-exps computed where the kernel writes them (`outputs lse;`)
/// and written to `lse_out` when given (refused for a kernel without them).
fn run_writing_lse(
    m: &Manifest,
    args: &NpyArgs,
    out: &Path,
    lse_out: Option<&Path>,
    launch: impl FnOnce(&Loaded, &mut [f32], Option<&mut [f32]>) -> Result<(), Error>,
) -> Result<RunReport, Error> {
    let mut lse = match (m.lse_shape(), lse_out) {
        (None, Some(p)) => {
            return Err(Error::Shape(format!(
                "kernel `{}` writes no log-sum-exps for `{}`: add `outputs lse;` to its body",
                m.kernel,
                p.display()
            )))
        }
        (Some(shape), _) => Some(Tensor::zeros(shape.to_vec())),
        (None, None) => None,
    };
    let mut r = run_with(m, args, out, |t, o| {
        launch(t, o, lse.as_mut().map(|l| l.data.as_mut_slice()))
    })?;
    if let (Some(p), Some(l)) = (lse_out, &lse) {
        npy::write(p, l)?;
        r.lse_shape = Some(l.shape.clone());
    }
    Ok(r)
}
