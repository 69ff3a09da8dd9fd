//! The GPU test suite (`attnc suite`): every shipped kernel on the GPU against the CPU
//! backend, with the shape variety of the CPU tests (ragged edges, text prefix and suffix,
//! raster and tiled order, GQA, head dims 64 and 128, bf16 and f16), outputs poisoned
//! before each run. Prints one line per case and a summary; exit status 1 on a failure.

use std::path::Path;
use std::time::Instant;

use attnc::codegen::nvptx::attention::{candidates, default_tuning, experimental, Tuning};
use attnc::driver::Source;
use attnc::sema::instantiate::Binding;

use crate::cuda::{CudaKernel, Gpu};
use crate::{artefact, cache, CpuKernel, Error, Manifest, Tensor};

/// One case: kernel file, kernel, `--set` bindings, token order.
#[derive(Clone)]
pub struct Case {
    pub file: &'static str,
    pub kernel: &'static str,
    pub sets: Vec<String>,
    pub order: &'static str,
    /// The kernel with `outputs lse;` added: its rows' log-sum-exps compared as well.
    pub lse: bool,
}

fn case(file: &'static str, kernel: &'static str, sets: &[&str], order: &'static str) -> Case {
    Case {
        file,
        kernel,
        sets: sets.iter().map(|s| s.to_string()).collect(),
        order,
        lse: false,
    }
}

/// The cases of the suite; `small` keeps one small case per kernel (for compute-sanitizer).
pub fn cases(small: bool) -> Vec<Case> {
    let mut v = vec![];
    let gqa = ["HEADS=8", "KV_HEADS=2"];
    for order in ["tiled", "raster"] {
        for k in ["grat_b_2d", "grat_x_2d"] {
            v.push(case(
                "grat.attn",
                k,
                &[
                    &[
                        "H=18",
                        "W=20",
                        "TILE_H=4",
                        "TILE_W=8",
                        "TEXT=40",
                        "TEXT_VALID=29",
                        "HEAD_DIM=64",
                        "VALUE_DIM=48",
                        "BATCH=2",
                    ][..],
                    &gqa,
                ]
                .concat(),
                order,
            ));
            v.push(case(
                "grat.attn",
                k,
                &[
                    "H=64",
                    "W=64",
                    "TEXT=512",
                    "TEXT_VALID=300",
                    "HEADS=4",
                    "HEAD_DIM=128",
                ],
                order,
            ));
        }
        for k in ["grat_b_3d", "grat_x_3d"] {
            v.push(case(
                "grat.attn",
                k,
                &[
                    &[
                        "T=5",
                        "H=6",
                        "W=9",
                        "TILE_T=2",
                        "TILE_H=4",
                        "TILE_W=4",
                        "TEXT=24",
                        "TEXT_VALID=13",
                        "HEAD_DIM=64",
                        "VALUE_DIM=80",
                    ][..],
                    &gqa,
                ]
                .concat(),
                order,
            ));
            v.push(case(
                "grat.attn",
                k,
                &[
                    "T=8",
                    "H=16",
                    "W=16",
                    "TEXT=256",
                    "TEXT_VALID=200",
                    "HEADS=2",
                    "HEAD_DIM=128",
                ],
                order,
            ));
        }
        v.push(case(
            "sta.attn",
            "sta_3d",
            &[
                &[
                    "T=7",
                    "H=9",
                    "W=10",
                    "TILE_T=3",
                    "TILE_H=3",
                    "TILE_W=4",
                    "TEXT=30",
                    "TEXT_VALID=25",
                    "HEAD_DIM=64",
                    "VALUE_DIM=32",
                ][..],
                &gqa,
            ]
            .concat(),
            order,
        ));
        v.push(case(
            "sta.attn",
            "sta_3d",
            &[
                "T=18",
                "H=24",
                "W=24",
                "TEXT=256",
                "HEADS=2",
                "HEAD_DIM=128",
            ],
            order,
        ));
        v.push(case(
            "natten.attn",
            "na_2d",
            &[
                &[
                    "H=20",
                    "W=22",
                    "TILE_H=4",
                    "TILE_W=8",
                    "R=3",
                    "TEXT=16",
                    "TEXT_VALID=10",
                    "HEAD_DIM=64",
                    "VALUE_DIM=96",
                ][..],
                &gqa,
            ]
            .concat(),
            order,
        ));
        v.push(case(
            "natten.attn",
            "na_2d",
            &["H=48", "W=40", "R=6", "HEADS=2", "HEAD_DIM=128"],
            order,
        ));
        v.push(case(
            "dense.attn",
            "dense",
            &[
                &["N=300", "TILE=64", "HEAD_DIM=64", "VALUE_DIM=64", "BATCH=2"][..],
                &gqa,
            ]
            .concat(),
            order,
        ));
        v.push(case(
            "dense.attn",
            "causal",
            &[&["N=1000", "TILE=128", "HEAD_DIM=128"][..], &gqa].concat(),
            order,
        ));
    }
    // Tiles smaller than a key chunk (whole tiles, so the IR has no mask) and 1-token tiles.
    v.push(case(
        "grat.attn",
        "grat_x_2d",
        &[
            "H=4",
            "W=6",
            "TILE_H=2",
            "TILE_W=2",
            "TEXT=0",
            "HEADS=2",
            "HEAD_DIM=64",
        ],
        "tiled",
    ));
    v.push(case(
        "sta.attn",
        "sta_3d",
        &[
            "T=3",
            "H=4",
            "W=3",
            "TILE_T=1",
            "TILE_H=1",
            "TILE_W=1",
            "TEXT=256",
            "TEXT_VALID=228",
            "HEADS=2",
            "HEAD_DIM=64",
        ],
        "tiled",
    ));
    v.push(case(
        "sta.attn",
        "sta_3d",
        &[
            "T=3",
            "H=4",
            "W=3",
            "TILE_T=1",
            "TILE_H=1",
            "TILE_W=1",
            "TEXT=0",
            "HEADS=2",
            "HEAD_DIM=64",
        ],
        "tiled",
    ));
    // More work items than a GPU has SMs, several a block: the persistent kernels carry
    // their pipelines from one item to the next (1024 items of GRAT-B r=1; items of the
    // same head in a row along a block's walk, every 132nd).
    v.push(case(
        "grat.attn",
        "grat_b_2d",
        &["H=256", "W=256", "TEXT=0", "HEADS=2", "HEAD_DIM=128"],
        "tiled",
    ));
    // f16 as well as bf16.
    v.push(case(
        "grat.attn",
        "grat_b_2d",
        &[
            "H=32",
            "W=32",
            "TEXT=64",
            "HEADS=2",
            "HEAD_DIM=128",
            "DTYPE=f16",
        ],
        "tiled",
    ));
    v.push(case(
        "dense.attn",
        "causal",
        &["N=384", "TILE=64", "HEADS=2", "HEAD_DIM=64", "DTYPE=f16"],
        "tiled",
    ));
    // The rows' log-sum-exps (`outputs lse;`): dense causal in both orders, GRAT-B with a
    // text prefix, with batch 2 and GQA, and the case of several work items a block (where
    // the persistent kernels carry a finished item's running maxima to its store).
    let has = |c: &Case, set: &str| c.sets.iter().any(|s| s == set);
    let lse: Vec<Case> = v
        .iter()
        .filter(|c| {
            (c.kernel == "causal" && has(c, "N=1000"))
                || (c.kernel == "grat_b_2d"
                    && c.order == "tiled"
                    && (has(c, "TEXT=512") || has(c, "H=256") || has(c, "BATCH=2")))
        })
        .map(|c| Case {
            lse: true,
            ..c.clone()
        })
        .collect();
    v.extend(lse);
    if small {
        let mut seen = vec![];
        v.retain(|c| {
            let first = !seen.contains(&c.kernel) && !c.sets.iter().any(|s| s.starts_with("DTYPE"));
            if first {
                seen.push(c.kernel);
            }
            first
        });
    }
    v
}

fn source(dir: &Path, c: &Case) -> Result<Source, Error> {
    let path = dir.join(c.file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Io(format!("cannot read `{}`: {e}", path.display())))?;
    let mut text = text
        .replace("order tiled;", &format!("order {};", c.order))
        .replace("order raster;", &format!("order {};", c.order));
    if let Some(d) = c.sets.iter().find_map(|s| s.strip_prefix("DTYPE=")) {
        text = text.replace("dtype bf16;", &format!("dtype {d};"));
    }
    if c.lse {
        text = with_lse(&text, c.kernel).ok_or_else(|| {
            Error::Input(format!("{}: no attention kernel `{}`", c.file, c.kernel))
        })?;
    }
    Ok(Source::new(format!("{} ({})", c.file, c.order), text))
}

/// `text` with `outputs lse;` added to the body of its attention kernel `kernel` (none:
/// the text has no such kernel).
pub fn with_lse(text: &str, kernel: &str) -> Option<String> {
    let at = text.find(&format!("kernel {kernel} = attention("))?;
    let brace = at + text[at..].find('{')?;
    Some(format!(
        "{} outputs lse;{}",
        &text[..=brace],
        &text[brace + 1..]
    ))
}

/// Runs the suite (the cases of `only`, when given). Returns the number of failures.
pub fn run(kernels_dir: &Path, small: bool, only: Option<&str>) -> Result<usize, Error> {
    let Some(gpu) = Gpu::open()? else {
        println!("skipped: no CUDA driver on this machine");
        return Ok(0);
    };
    let arch = gpu.arch();
    println!("GPU: {} ({})", gpu.name(), arch.name());
    let mut failures = 0;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let all: Vec<Case> = cases(small)
        .into_iter()
        .filter(|c| only.is_none_or(|k| c.kernel == k))
        .collect();
    let n = all.len();
    for c in all {
        match run_case(&gpu, arch, kernels_dir, &c, &mut rng) {
            Ok(true) => {}
            Ok(false) => failures += 1,
            Err(e) => {
                failures += 1;
                println!(
                    "FAIL {:10} {:6}: {e}  {}",
                    c.kernel,
                    c.order,
                    c.sets.join(" ")
                );
            }
        }
    }
    println!(
        "{}/{n} GPU cases agree with the CPU backend (bf16 < 1e-2, f16 < 5e-3 relative)",
        n - failures
    );
    Ok(failures)
}

/// One case; Ok(pass).
fn run_case(
    gpu: &Gpu,
    arch: attnc::codegen::nvptx::Arch,
    kernels_dir: &Path,
    c: &Case,
    rng: &mut u64,
) -> Result<bool, Error> {
    let src = source(kernels_dir, c)?;
    let sets: Vec<Binding> = c
        .sets
        .iter()
        .filter(|s| !s.starts_with("DTYPE"))
        .map(|s| Binding::parse(s).map_err(Error::Compile))
        .collect::<Result<_, _>>()?;
    let compiled = cache::compile(&src, c.kernel, &sets)?;
    let dtype = compiled.spec.dtype.name();
    let tol = if dtype == "f16" { 5e-3 } else { 1e-2 };
    // The default shape, and on a GPU that runs sm_90a every wgmma shape the tuner may pick.
    // Also the shapes not tuned yet (`experimental`), so that they are checked first.
    let geo = &compiled.schedule.geom;
    let shapes: Vec<Tuning> = std::iter::once(default_tuning(&compiled.ir))
        .chain(
            candidates(&compiled.ir, geo, gpu.has_wgmma())
                .into_iter()
                .filter(|t| t.wgmma),
        )
        .chain(experimental(&compiled.ir, geo, gpu.has_wgmma()))
        .collect();
    let mut built = vec![];
    for t in shapes {
        let start = Instant::now();
        let art = artefact::build_tuned(&compiled, arch, t)?;
        built.push((t, art, start.elapsed().as_secs_f64() * 1e3));
    }
    let cpu = CpuKernel::new(compiled, false)?;
    let m = cpu.manifest().clone();
    *rng += 3;
    let (q, k, v) = (
        Tensor::random(&m.q_shape(), *rng),
        Tensor::random(&m.k_shape(), *rng + 1),
        Tensor::random(&m.v_shape(), *rng + 2),
    );
    let mut want = vec![f32::NAN; m.o_shape().iter().product()];
    let lse_len = m.lse_shape().map(|s| s.iter().product::<usize>());
    let mut want_lse = lse_len.map(|n| vec![f32::NAN; n]);
    cpu.run_with_lse(
        q.view(),
        k.view(),
        v.view(),
        &[],
        &mut want,
        want_lse.as_deref_mut(),
    )?;
    let mut all = true;
    for (t, art, compile_ms) in built {
        let gk = CudaKernel::load(gpu, art)?;
        let mut got = vec![f32::NAN; want.len()];
        let mut got_lse = lse_len.map(|n| vec![f32::NAN; n]);
        gk.run_with_lse(
            q.view(),
            k.view(),
            v.view(),
            &[],
            &mut got,
            got_lse.as_deref_mut(),
        )?;
        let (err, at) = max_rel(&got, &want);
        let lse_err = match (&got_lse, &want_lse) {
            (Some(g), Some(w)) => Some(lse_error(g, w)),
            _ => None,
        };
        let pass = err < tol && lse_err.is_none_or(|(e, _)| e < tol);
        println!(
            "{} {:10} {:6} {dtype} tokens {:6}  rel err {err:.2e} (max at {at}: gpu {} cpu {})  block {}  compile {compile_ms:.0} ms  {}",
            if pass { "ok  " } else { "FAIL" },
            c.kernel,
            c.order,
            m.tokens,
            got.get(at).copied().unwrap_or(f32::NAN),
            want.get(at).copied().unwrap_or(f32::NAN),
            t.name(),
            c.sets.join(" ")
        );
        if let Some((e, at)) = lse_err {
            let value = |x: &Option<Vec<f32>>| x.as_ref().map_or(f32::NAN, |x| x[at]);
            println!(
                "     lse: error {e:.2e} (max at {at}: gpu {} cpu {})",
                value(&got_lse),
                value(&want_lse)
            );
        }
        if !pass {
            report_rows(&m, &got, &want, tol);
        }
        all &= pass;
    }
    Ok(all)
}

/// Which rows are wrong: (batch, head, token) of the first few, and how many.
fn report_rows(m: &Manifest, got: &[f32], want: &[f32], tol: f64) {
    let dv = m.value_dim;
    let scale = want.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-30);
    let bad: Vec<usize> = (0..want.len() / dv)
        .filter(|r| {
            (0..dv).any(|d| {
                let e = (got[r * dv + d] - want[r * dv + d]).abs() / scale;
                e.is_nan() || e >= tol as f32
            })
        })
        .collect();
    let show: Vec<String> = bad
        .iter()
        .take(12)
        .map(|r| {
            format!(
                "(b{} h{} t{})",
                r / (m.tokens * m.heads),
                (r / m.tokens) % m.heads,
                r % m.tokens
            )
        })
        .collect();
    println!(
        "     {} of {} rows differ: {}",
        bad.len(),
        want.len() / dv,
        show.join(" ")
    );
}

/// The log-sum-exps' largest error `|got - want| / max(|want|, 1)` and where: -inf
/// (a row that saw no key) must be -inf on both sides; NaN (a row never written) counts as
/// infinite.
pub fn lse_error(got: &[f32], want: &[f32]) -> (f64, usize) {
    let mut worst = (0f64, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let e = match (a.is_finite(), b.is_finite()) {
            (true, true) => f64::from((a - b).abs()) / f64::from(b.abs()).max(1.0),
            (false, false) if a == b => 0.0,
            _ => f64::INFINITY,
        };
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

/// Max-norm relative error and where it is largest; NaN counts as infinite.
pub fn max_rel(got: &[f32], want: &[f32]) -> (f64, usize) {
    let scale = want
        .iter()
        .fold(0f64, |m, x| m.max(f64::from(x.abs())))
        .max(1e-30);
    let mut worst = (0f64, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let e = if a.is_finite() {
            f64::from((a - b).abs()) / scale
        } else {
            f64::INFINITY
        };
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suite's cases with `outputs lse;`: which they are, and that their sources
    /// compile to kernels that write the log-sum-exps (the GPU run compares them).
    #[test]
    fn log_sum_exp_cases_write_them() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
        let lse: Vec<Case> = cases(false).into_iter().filter(|c| c.lse).collect();
        let names: Vec<(&str, &str)> = lse.iter().map(|c| (c.kernel, c.order)).collect();
        assert_eq!(
            names,
            [
                ("grat_b_2d", "tiled"),
                ("grat_b_2d", "tiled"),
                ("causal", "tiled"),
                ("causal", "raster"),
                ("grat_b_2d", "tiled"),
            ]
        );
        assert!(lse.iter().any(|c| c.sets.iter().any(|s| s == "BATCH=2")));
        for c in &lse {
            let src = source(&dir, c).expect("source");
            let sets: Vec<Binding> = c
                .sets
                .iter()
                .map(|s| Binding::parse(s).expect("binding"))
                .collect();
            let compiled = cache::compile(&src, c.kernel, &sets).expect("compiles");
            assert!(compiled.spec.outputs.lse.is_some(), "{}", c.kernel);
        }
        // The small cases compute-sanitizer runs keep none of them.
        assert!(cases(true).iter().all(|c| !c.lse));
    }
}
