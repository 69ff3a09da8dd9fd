//! The autotuner: compiles a kernel with every candidate shape (`attention::candidates`)
//! that fits, checks each against the default shape's output, times each on the GPU on the
//! kernel's real shapes (random inputs), runs the three fastest again interleaved, and
//! keeps the fastest of those. The choice is cached on disk per (source, parameters,
//! target, compiler version, GPU) next to the compile cache.

use std::io::IsTerminal;
use std::path::PathBuf;

use attnc::codegen::nvptx::attention::{candidates, Tuning};
use attnc::driver::Compiled;
use serde::{Deserialize, Serialize};

use crate::artefact::{self, GpuArtefact};
use crate::cuda::{CudaKernel, Gpu};
use crate::{Error, Tensor};

/// One timed shape (`ms` NaN: its output or log-sum-exps disagreed with the default
/// shape's; not used).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trial {
    /// The shape's name (`Tuning::name`).
    pub block: String,
    pub ms: f64,
}

impl Trial {
    fn new(t: Tuning, ms: f64) -> Trial {
        Trial {
            block: t.name(),
            ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Choice {
    gpu: String,
    best: Trial,
    trials: Vec<Trial>,
}

fn choice_path(key: &str) -> Option<PathBuf> {
    artefact::cache_dir().map(|d| d.join(format!("tune-{key}.json")))
}

/// How many of the fastest shapes run again before the choice.
const FINALISTS: usize = 3;

/// Milliseconds of sustained load each finalist is timed for in each round (the
/// harness's `--rep-ms 100`).
const FINAL_REP_MS: f64 = 100.0;

/// Times every candidate shape; returns the fastest artefact and all trials. `key` (the
/// compile cache key) enables the on-disk choice cache.
/// `inputs`: the Q, K, V and extra input tensors every shape runs on (the caller's, so
/// that a benchmark times the chosen shape on the same data without making it twice: at
/// 262144 tokens each tensor holds 805 M values).
pub fn tune(
    gpu: &Gpu,
    c: &Compiled,
    key: Option<&str>,
    (q, k, v, ins): (&Tensor, &Tensor, &Tensor, &[Tensor]),
) -> Result<(GpuArtefact, Vec<Trial>), Error> {
    let arch = gpu.arch();
    let name = gpu.name();
    if let Some(p) = key.and_then(choice_path) {
        if let Ok(text) = std::fs::read_to_string(&p) {
            if let Ok(ch) = serde_json::from_str::<Choice>(&text) {
                if let (true, Some(t)) = (ch.gpu == name, Tuning::parse(&ch.best.block)) {
                    let a = artefact::build_tuned(c, arch, t)?;
                    return Ok((a, ch.trials));
                }
            }
        }
    }
    let views: Vec<_> = ins.iter().map(Tensor::view).collect();
    let mut passed: Vec<(Trial, GpuArtefact, CudaKernel)> = vec![];
    let mut trials = vec![];
    // The default shape's output is the yardstick: a shape that disagrees with it is never
    // chosen (the tuner must not trade correctness for speed). Inputs are uploaded once and
    // shared by every candidate; outputs are compared on a sample (runs spread over the
    // output), and the log-sum-exps of a kernel with `outputs lse;` whole.
    let mut reference: Option<(Vec<f32>, Option<Vec<f32>>)> = None;
    let mut args: Option<crate::cuda::DeviceArgs> = None;
    let shapes = candidates(&c.ir, &c.schedule.geom, gpu.has_wgmma());
    // Progress on a terminal (tuning a large case takes a while; pipes get the table).
    let progress = std::io::stderr().is_terminal();
    for (i, t) in shapes.iter().copied().enumerate() {
        if progress {
            eprint!(
                "\rtuning: shape {}/{} ({})        ",
                i + 1,
                shapes.len(),
                t.name()
            );
        }
        let a = artefact::build_tuned(c, arch, t)?;
        let kernel = match CudaKernel::load(gpu, a.clone()) {
            Ok(k) => k,
            Err(_) => continue, // a shape this GPU cannot launch (shared memory)
        };
        if args.is_none() {
            args = Some(kernel.upload(q.view(), k.view(), v.view(), &views)?);
        }
        let Some(dev) = args.as_mut() else { continue };
        // A shape that wrote nothing must not pass for the previous shape's output.
        kernel.poison(dev)?;
        kernel.launch(dev)?;
        // 256 runs of 256 values spread over every head and batch entry.
        let out = kernel.download_sample(dev, (256, 256))?;
        let lse = kernel.download_lse(dev)?;
        match &reference {
            None => reference = Some((out, lse)),
            Some((r, r_lse)) => {
                let (err, _) = crate::suite::max_rel(&out, r);
                let lse_err = match (&lse, r_lse) {
                    (Some(x), Some(y)) => crate::suite::lse_error(x, y).0,
                    _ => 0.0,
                };
                // (`lse_error` counts a NaN as infinite.)
                if err.is_nan() || err >= 1e-2 || lse_err >= 1e-2 {
                    trials.push(Trial::new(t, f64::NAN));
                    continue;
                }
            }
        }
        let ms = kernel.time(dev, 3, 10)?;
        let trial = Trial::new(t, ms);
        trials.push(trial.clone());
        passed.push((trial, a, kernel));
    }
    // Shapes within a few per cent of each other swap places between runs (the same
    // kernel's median moves by 5 to 10 % here): the three fastest run again, interleaved,
    // three rounds, and the lowest median of their round medians wins. Each round is timed
    // as the harness times the peers (`time_do_bench`, FINAL_REP_MS of back-to-back runs,
    // the L2 flushed before each): under sustained load the H200 lowers its clock at its
    // power limit, by more for some shapes than for others, so that the shape fastest in
    // a burst of 10 launches is not always the one fastest in a diffusion loop (run 34
    // picked three 64-row blocks an SM at GRAT-B r=1 256x256 in a burst, 3.6 to 7 % behind
    // the persistent overlapped kernel under load in runs 33 and 37).
    if progress {
        eprintln!(
            "\rtuning: {} shapes tried, timing the fastest again                ",
            shapes.len()
        );
    }
    passed.sort_by(|a, b| a.0.ms.total_cmp(&b.0.ms));
    passed.truncate(FINALISTS);
    let mut rounds: Vec<Vec<f64>> = vec![vec![]; passed.len()];
    if let Some(dev) = args.as_mut() {
        for _ in 0..3 {
            for (i, (_, _, kernel)) in passed.iter().enumerate() {
                rounds[i].push(kernel.time_do_bench(dev, FINAL_REP_MS)?.0);
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::INFINITY)
    };
    let winner = (0..passed.len())
        .min_by(|a, b| median(&rounds[*a]).total_cmp(&median(&rounds[*b])))
        .ok_or_else(|| Error::Cuda("no block shape could be launched".into()))?;
    let (best, a, _) = passed.swap_remove(winner);
    if let Some(p) = key.and_then(choice_path) {
        let ch = Choice {
            gpu: name,
            best,
            trials: trials.clone(),
        };
        if let Ok(text) = serde_json::to_string(&ch) {
            let _ = std::fs::create_dir_all(p.parent().unwrap_or(&p));
            let _ = std::fs::write(&p, text);
        }
    }
    Ok((a, trials))
}
