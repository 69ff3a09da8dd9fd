//! The JIT kernel against the plain f32 Rust loop over the same pairs (both on all cores)
//! and the f64 reference (one core), on grat_b_2d (32x32 canvas, 64 text tokens, 4 heads)
//! and na_2d (64x64, token-level 13x13 window, 8x16 and 4x8 tiles).

use attnc_bench::{compile, plain};
use attnc_runtime::{reference, CpuKernel, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};

fn random(shape: [usize; 4], rng: &mut fastrand::Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect(),
    )
    .expect("tensor")
}

fn bench(c: &mut Criterion) {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "kernels/grat.attn",
            "grat_b_2d",
            &["H=32", "W=32", "TEXT=64", "HEADS=4", "HEAD_DIM=64"],
        ),
        (
            "kernels/natten.attn",
            "na_2d",
            &["H=64", "W=64", "R=6", "HEADS=4", "HEAD_DIM=64"],
        ),
        (
            "kernels/natten.attn",
            "na_2d_tile4x8",
            &[
                "H=64",
                "W=64",
                "R=6",
                "TILE_H=4",
                "TILE_W=8",
                "HEADS=4",
                "HEAD_DIM=64",
            ],
        ),
    ];
    for (file, kernel, sets) in cases {
        let compiled =
            compile(file, kernel.split("_tile").next().unwrap_or(kernel), sets).expect("compiles");
        let jit = CpuKernel::new(compiled.clone(), false).expect("jit");
        let m = jit.manifest().clone();
        let mut rng = fastrand::Rng::with_seed(9);
        let (q, k, v) = (
            random(m.q_shape(), &mut rng),
            random(m.k_shape(), &mut rng),
            random(m.v_shape(), &mut rng),
        );
        let mut out = vec![0f32; m.o_shape().iter().product()];
        let pairs = plain::pairs(&compiled);
        let mut g = c.benchmark_group(format!("cpu_{kernel}"));
        g.sample_size(10);
        g.bench_function("jit", |b| {
            b.iter(|| {
                jit.run(q.view(), k.view(), v.view(), &[], &mut out)
                    .expect("runs")
            })
        });
        g.bench_function("plain_f32_loop", |b| {
            b.iter(|| plain::attention(&compiled, &pairs, &q.data, &k.data, &v.data, &mut out))
        });
        g.bench_function("f64_reference", |b| {
            b.iter(|| {
                reference::attention(&compiled.spec, q.view(), k.view(), v.view(), &[])
                    .expect("reference")
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
