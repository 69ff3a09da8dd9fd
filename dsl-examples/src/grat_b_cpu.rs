//! Compiles `grat_b_2d` from the shipped library, runs it on random inputs on the CPU
//! through the runtime API, and prints its error against the f64 reference.
//!
//! `cargo run --release -p attnc-examples --bin grat_b_cpu [-- NAME=VALUE ...]`

use std::time::Instant;

use attnc::driver::Source;
use attnc::sema::instantiate::Binding;
use attnc_runtime::{reference, Runtime, Tensor};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Flux-like layout at a size where the f64 reference is quick: a 32x32 latent canvas,
    // 8x16 tiles, 64 text tokens first (56 of them real), 4 heads sharing 2 KV heads.
    let mut sets = vec![
        "H=32",
        "W=32",
        "TEXT=64",
        "TEXT_VALID=56",
        "HEADS=4",
        "KV_HEADS=2",
        "HEAD_DIM=64",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    sets.extend(std::env::args().skip(1));
    let sets: Vec<Binding> = sets
        .iter()
        .map(|s| Binding::parse(s))
        .collect::<Result<_, _>>()?;

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/grat.attn");
    let src = Source::load(&path)?;
    let rt = Runtime::new();
    let t = Instant::now();
    let kernel = rt.cpu_kernel(&src, "grat_b_2d", &sets)?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let m = kernel.manifest().clone();
    println!(
        "compiled grat_b_2d in {compile_ms:.1} ms: batch {}, heads {}/{}, {} tokens, head_dim {}",
        m.batch, m.heads, m.kv_heads, m.tokens, m.head_dim
    );

    let mut rng = fastrand::Rng::with_seed(2026);
    let mut random = |shape: [usize; 4]| -> Result<Tensor, attnc_runtime::Error> {
        let n = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect(),
        )
    };
    let (q, k, v) = (
        random(m.q_shape())?,
        random(m.k_shape())?,
        random(m.v_shape())?,
    );
    let mut out = vec![0f32; m.o_shape().iter().product()];

    let t = Instant::now();
    kernel.run(q.view(), k.view(), v.view(), &[], &mut out)?;
    let jit_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let r = reference::attention(&kernel.compiled().spec, q.view(), k.view(), v.view(), &[])?;
    let ref_ms = t.elapsed().as_secs_f64() * 1e3;

    let scale = r.iter().fold(0f64, |m, x| m.max(x.abs()));
    let err = out
        .iter()
        .zip(&r)
        .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
    println!("JIT {jit_ms:.2} ms, f64 reference {ref_ms:.1} ms");
    println!(
        "max |jit - reference| = {err:.3e} ({:.3e} relative to max |reference|)",
        err / scale
    );
    if err / scale > 1e-5 {
        return Err(format!("relative error {:.3e} above 1e-5", err / scale).into());
    }
    Ok(())
}
