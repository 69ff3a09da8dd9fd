//! The JIT against the f64 reference on every shipped kernel, with the shapes that break
//! kernels: canvases the tile does not divide, text prefixes and suffixes with padding,
//! raster and tiled order, GQA (4 query heads per KV head), head dims 64 and 128, a value
//! dim that differs from the head dim, batch 2, and a score modifier. Outputs are poisoned
//! (NaN) before each run, so an element the kernel never writes fails the comparison.

use attnc::driver::Source;
use attnc::sema::instantiate::Binding;
use attnc_runtime::{cache, reference, CpuKernel, Tensor};

mod common;

use common::{cases, compare, random, random_qkv};

fn kernel_source(file: &str, order: &str) -> Source {
    Source::new(
        format!("{file} ({order})"),
        common::shipped_text(file, order),
    )
}

/// Runs one case; returns the max-norm relative error of the JIT against the reference.
fn run_case(src: &Source, kernel: &str, sets: &[&str], seed: u64) -> f64 {
    let sets: Vec<Binding> = sets
        .iter()
        .map(|s| Binding::parse(s).expect("binding"))
        .collect();
    let compiled =
        cache::compile(src, kernel, &sets).unwrap_or_else(|e| panic!("{}: {e}", src.name));
    let k = CpuKernel::new(compiled, false).unwrap_or_else(|e| panic!("{}: {e}", src.name));
    let m = k.manifest().clone();
    let mut rng = fastrand::Rng::with_seed(seed);
    let (q, kk, v) = random_qkv(&m, &mut rng);
    let mut out = vec![f32::NAN; m.o_shape().iter().product()];
    k.run(q.view(), kk.view(), v.view(), &[], &mut out)
        .expect("runs");
    let r = reference::attention(&k.compiled().spec, q.view(), kk.view(), v.view(), &[])
        .expect("reference");
    compare(&out, &r, &format!("{} {kernel} {sets:?}", src.name))
}

#[test]
fn every_shipped_kernel_matches_the_reference_in_tiled_and_raster_order() {
    let mut n = 0;
    for (i, (file, kernel, sets)) in cases().into_iter().enumerate() {
        for order in ["tiled", "raster"] {
            let src = kernel_source(file, order);
            let e = run_case(&src, kernel, &sets, 1000 + i as u64);
            eprintln!("{file} {kernel} {order}: relative error {e:.2e}");
            n += 1;
        }
    }
    assert!(n >= 20);
}

#[test]
fn score_modifiers_per_head_tables_and_inputs() {
    let text = "layout l {
  param H = 12, W = 10, TEXT = 20;
  canvas (H, W);
  tile (4, 4);
  order raster;
  segment text suffix TEXT valid 14;
}
pattern p on l {
  param R = 1;
  tiles: abs(dh) <= R && abs(dw) <= R;
  tokens: qh + qw >= kh - 3 || dw == 0;
  see text -> all;
  see all -> text;
}
kernel soft_cap = attention(p) {
  heads 4; kv_heads 1; head_dim 32; value_dim 24;
  param CAP = 2.0, SLOPE = per_head [0.5, 0.25, 0.125, 0.0625];
  input TEMP: f32[HEADS, 140];
  score: CAP * tanh(score / CAP) * TEMP[h, qi] - SLOPE * float(abs(qi - ki)) + float(kh) * 0.01;
}
";
    let src = Source::new("score.attn", text);
    let compiled = cache::compile(&src, "soft_cap", &[]).unwrap_or_else(|e| panic!("{e}"));
    let k = CpuKernel::new(compiled, false).expect("compiles");
    let m = k.manifest().clone();
    let mut rng = fastrand::Rng::with_seed(7);
    let (q, kk, v) = random_qkv(&m, &mut rng);
    let temp =
        Tensor::new(vec![4, 140], (0..560).map(|_| 0.5 + rng.f32()).collect()).expect("temp");
    let mut out = vec![f32::NAN; m.o_shape().iter().product()];
    k.run(q.view(), kk.view(), v.view(), &[temp.view()], &mut out)
        .expect("runs");
    let r = reference::attention(
        &k.compiled().spec,
        q.view(),
        kk.view(),
        v.view(),
        &[temp.view()],
    )
    .expect("reference");
    let e = compare(&out, &r, "score modifier");
    eprintln!("score modifier: relative error {e:.2e}");
}

#[test]
fn rows_that_see_nothing_are_zero_not_nan() {
    // Text queries see nothing (no rule for them): their rows must be exactly 0.
    let text = "layout l { canvas (8, 8); tile (4, 4); segment text prefix 8; }
pattern p on l { tiles: dh == 0 && dw == 0; see canvas -> text; }
kernel k = attention(p) { heads 1; head_dim 16; }
";
    let src = Source::new("empty_rows.attn", text);
    let k = CpuKernel::new(cache::compile(&src, "k", &[]).expect("compiles"), false).expect("jit");
    let m = k.manifest().clone();
    let mut rng = fastrand::Rng::with_seed(3);
    let (q, kk, v) = random_qkv(&m, &mut rng);
    let mut out = vec![f32::NAN; m.o_shape().iter().product()];
    k.run(q.view(), kk.view(), v.view(), &[], &mut out)
        .expect("runs");
    assert!(
        out[..8 * 16].iter().all(|x| *x == 0.0),
        "text rows must be zeros"
    );
    let r = reference::attention(&k.compiled().spec, q.view(), kk.view(), v.view(), &[])
        .expect("reference");
    compare(&out, &r, "empty rows");
}

#[test]
fn wrong_shapes_and_nan_are_errors() {
    let src = kernel_source("dense.attn", "tiled");
    let sets = [
        Binding::parse("N=64").unwrap(),
        Binding::parse("TILE=16").unwrap(),
        Binding::parse("HEADS=4").unwrap(),
        Binding::parse("KV_HEADS=2").unwrap(),
        Binding::parse("HEAD_DIM=8").unwrap(),
    ];
    let k = CpuKernel::new(
        cache::compile(&src, "dense", &sets).expect("compiles"),
        false,
    )
    .expect("jit");
    let m = k.manifest().clone();
    let mut rng = fastrand::Rng::with_seed(5);
    let (q, kk, v) = random_qkv(&m, &mut rng);
    let mut out = vec![0f32; m.o_shape().iter().product()];
    // K with the query head count instead of the KV head count.
    let bad_k = random(&[1, 4, 64, 8], &mut rng);
    let e = k
        .run(q.view(), bad_k.view(), v.view(), &[], &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("k has kv heads (KV_HEADS) = 4; expected 2"),
        "{e}"
    );
    // Wrong rank.
    let flat = Tensor::new(vec![64 * 4 * 8], q.data.clone()).unwrap();
    let e = k
        .run(flat.view(), kk.view(), v.view(), &[], &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("q has 1 dimensions"), "{e}");
    // NaN in V.
    let mut nan_v = v.clone();
    nan_v.data[77] = f32::NAN;
    let e = k
        .run(q.view(), kk.view(), nan_v.view(), &[], &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("v holds NaN at [0, 0, 9, 5]"), "{e}");
    // Output of the wrong size.
    let mut short = vec![0f32; 10];
    let e = k
        .run(q.view(), kk.view(), v.view(), &[], &mut short)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the output holds 10 values"), "{e}");
    // An input the kernel does not take.
    let e = k
        .run(q.view(), kk.view(), v.view(), &[q.view()], &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("takes 0 input tensor(s)"), "{e}");
}
