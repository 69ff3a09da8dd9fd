//! GPU tests: where a CUDA driver exists, a kernel on the GPU agrees with the CPU backend
//! and bad inputs are errors; elsewhere each test says it was skipped. The full GPU suite
//! (`attnc suite`, every shipped kernel) runs from the device bundle (scripts/gpu_bundle.sh).

use attnc::driver::Source;
use attnc::sema::instantiate::Binding;
use attnc_runtime::cuda::{CudaKernel, Gpu};
use attnc_runtime::{artefact, cache, CpuKernel, Tensor};

fn gpu() -> Option<Gpu> {
    match Gpu::open() {
        Ok(Some(g)) => Some(g),
        Ok(None) => {
            eprintln!("skipped: no CUDA driver on this machine");
            None
        }
        Err(e) => panic!("a CUDA driver is present but unusable: {e}"),
    }
}

fn random(shape: [usize; 4], rng: &mut fastrand::Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect(),
    )
    .expect("tensor")
}

#[test]
fn grat_b_2d_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/grat.attn");
    let src = Source::load(&path).expect("grat.attn");
    let sets: Vec<Binding> = [
        "H=32",
        "W=32",
        "TEXT=64",
        "TEXT_VALID=50",
        "HEADS=4",
        "KV_HEADS=2",
    ]
    .iter()
    .map(|s| Binding::parse(s).unwrap())
    .collect();
    let c = cache::compile(&src, "grat_b_2d", &sets).expect("compiles");
    let gk = CudaKernel::load(&gpu, artefact::build(&c, gpu.arch()).expect("ptx")).expect("loads");
    let cpu = CpuKernel::new(c, false).expect("jit");
    let m = cpu.manifest().clone();
    let mut rng = fastrand::Rng::with_seed(11);
    let (q, k, v) = (
        random(m.q_shape(), &mut rng),
        random(m.k_shape(), &mut rng),
        random(m.v_shape(), &mut rng),
    );
    let mut want = vec![0f32; m.o_shape().iter().product()];
    cpu.run(q.view(), k.view(), v.view(), &[], &mut want)
        .expect("cpu");
    let mut got = vec![0f32; want.len()];
    gk.run(q.view(), k.view(), v.view(), &[], &mut got)
        .expect("gpu");
    let (err, at) = attnc_runtime::suite::max_rel(&got, &want);
    assert!(err < 1e-2, "relative error {err} at {at}");
    // A K tensor with the wrong number of KV heads is an error, not a launch.
    let bad = random([1, 4, m.tokens, m.head_dim], &mut rng);
    let e = gk
        .run(q.view(), bad.view(), v.view(), &[], &mut got)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("k has kv heads (KV_HEADS) = 4; expected 2"),
        "{e}"
    );
}
