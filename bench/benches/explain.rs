//! `explain` on the 512x512 canvas (262144 tokens): source to schedule and figures.

use attnc::driver::explain;
use attnc_bench::{compile, CANVAS_512};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("explain_512x512");
    for (kernel, file) in [
        ("grat_b_2d", "kernels/grat.attn"),
        ("grat_x_2d", "kernels/grat.attn"),
        ("na_2d", "kernels/natten.attn"),
    ] {
        g.bench_function(kernel, |b| {
            b.iter(|| {
                let c = compile(file, kernel, CANVAS_512).expect("compiles");
                let f = explain::figures(&c.spec, &c.schedule);
                std::hint::black_box(f.density)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
