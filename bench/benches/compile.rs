//! Compile latency: source text to callable CPU code, for every shipped kernel at its
//! default sizes (parse, check, instantiate, analyse, lower, passes, Cranelift).

use attnc_runtime::CpuKernel;
use criterion::{criterion_group, criterion_main, Criterion};

const KERNELS: &[(&str, &str)] = &[
    ("kernels/grat.attn", "grat_b_2d"),
    ("kernels/grat.attn", "grat_x_2d"),
    ("kernels/grat.attn", "grat_b_3d"),
    ("kernels/grat.attn", "grat_x_3d"),
    ("kernels/sta.attn", "sta_3d"),
    ("kernels/natten.attn", "na_2d"),
    ("kernels/dense.attn", "dense"),
    ("kernels/dense.attn", "causal"),
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile_to_cpu_code");
    g.sample_size(20);
    for (file, kernel) in KERNELS {
        g.bench_function(*kernel, |b| {
            b.iter(|| {
                let compiled = attnc_bench::compile(file, kernel, &[]).expect("compiles");
                std::hint::black_box(CpuKernel::new(compiled, false).expect("jit"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
