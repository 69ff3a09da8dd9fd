//! `attnc run` and `attnc bench` for selection kernels (`decode(...)`, `select(...)`):
//! `run.rs` (npy files in, output, lists and state out, on the CPU or the GPU),
//! `bench_cpu.rs` (the CPU executor's latency and fidelity), `bench_gpu.rs` (the GPU
//! checked against the CPU executor, timed, tuned), `bench_gpu_select.rs` (the same for
//! select-only kernels); what they share is here.

mod bench_cpu;
mod bench_gpu;
mod bench_gpu_select;
mod run;

pub use bench_cpu::bench;
pub use bench_gpu::bench_cuda;
pub use run::{run, RunFiles};

use std::path::{Path, PathBuf};
use std::time::Instant;

use attnc::codegen::nvptx::decode::Tuning;
use attnc::select::spec::{Budget, KernelKind, Output, Pool, SelectSpec, Source};
use attnc_runtime::cuda::Gpu;
use attnc_runtime::decode::gpu::{GpuDecode, GpuState};
use attnc_runtime::decode::{DecodeKernel, Indices};
use attnc_runtime::{fidelity, npy, Error, Tensor};

/// Bytes of one f32 copy of K (or V) at a full cache.
fn cache_bytes(s: &SelectSpec) -> u64 {
    s.batch as u64 * s.kv_heads as u64 * s.context as u64 * s.head_dim as u64 * 4
}

/// At most this much host memory for `attnc bench` on the CPU.
const BENCH_LIMIT: u64 = 6 << 30;

/// The same kernel reading every token: the yardstick.
fn dense_of(s: &SelectSpec) -> SelectSpec {
    let mut d = s.clone();
    d.kind = KernelKind::Decode;
    d.source = Source::None;
    d.pool = Pool::None;
    d.page = 1;
    d.sinks = 0;
    d.recent = 0;
    d.budget = Budget::Tokens(s.context);
    d.adaptive = None;
    d.gumbel = None;
    d.split = attnc::select::resolve::SPLIT_TOKENS;
    d
}

/// "8 list(s) of 256 pages of 16": the index lists of a step.
fn lists(spec: &SelectSpec) -> String {
    let unit = if spec.page == 1 {
        "tokens".to_string()
    } else {
        format!("pages of {}", spec.page)
    };
    format!("{} list(s) of {} {unit}", spec.sel_heads(), spec.capacity())
}

/// H2O's state as a history would leave it (both benches start from it): the dense
/// attention of four earlier queries near the decode query `q1`, added to `st.acc`.
fn seed_history(spec: &SelectSpec, st: &mut attnc_runtime::decode::DecodeState, q1: &[f32]) {
    for i in 0..4 {
        let noise = Tensor::random(&[q1.len()], 100 + i);
        let qi: Vec<f32> = q1
            .iter()
            .zip(&noise.data)
            .map(|(a, n)| a + 0.5 * n)
            .collect();
        let sums = fidelity::attention_sums(spec, st, &qi);
        for (a, x) in st.acc.iter_mut().zip(sums) {
            *a += x;
        }
    }
}
