//! `attnc bench --backend cuda` for select-only kernels (`window` scores, SnapKV): the GPU's
//! index lists checked against the CPU executor's, the selection timed with CUDA events
//! (and as one CUDA graph), a dense decode step through the same pipeline beside it, and
//! the fidelity of the selection.

use super::bench_gpu::{check_host_memory, dense_step_ms, differing_lists, kernel_times};
use super::*;

/// `attnc bench --backend cuda` for a select-only kernel.
pub fn bench_select_cuda(
    gpu: &Gpu,
    spec: SelectSpec,
    runs: usize,
    json: bool,
    tune: bool,
) -> Result<String, Error> {
    check_host_memory(&spec)?;
    if tune {
        // Tried on the H200 (bench/RESULTS.md, SnapKV run 5): two blocks an SM for the
        // statistics entry spilled and ran 30 % slower; no other shape is known yet.
        eprintln!("  --tune: a select-only kernel has one launch shape so far (nothing to tune)");
    }
    let gk = GpuDecode::load(gpu, spec.clone())?;
    let (b, hq, d, c) = (
        spec.batch as usize,
        spec.q_heads as usize,
        spec.head_dim as usize,
        spec.context,
    );
    let rows = spec.q_rows() as usize;
    let heavy = (spec.capacity() as usize * spec.page as usize / 8).max(1);
    eprintln!(
        "{}: building a synthetic cache of {c} tokens x {b} sequences and {rows} query rows a head ...",
        spec.kernel
    );
    let syn = fidelity::synthetic(&spec, rows, heavy, 7);
    let kernel = DecodeKernel::new(spec.clone());
    let mut st = kernel.new_state();
    // Ragged lengths (chunks cut anywhere), the last sequence a few tokens longer than the
    // window (one partly scored chunk, a list that keeps everything); then full lengths.
    let w = rows as u32;
    let mut ragged: Vec<u32> = (0..b as u32)
        .map(|i| (c - i * (c / 16) - 3 * i).max(w))
        .collect();
    if b > 1 {
        ragged[b - 1] = (w + 3).min(c);
    }
    let mut checks: Vec<(String, usize)> = vec![];
    let mut check = |what: &str, want: &Indices, got: &Indices| {
        let n = differing_lists(want, got);
        eprintln!(
            "  check ({what}): {n} of {} index lists differ",
            want.shape[0] * want.shape[1]
        );
        checks.push((what.to_string(), n));
    };
    for (what, lens) in [("ragged lengths", ragged), ("full lengths", vec![c; b])] {
        kernel.fill(&mut st, &syn.k.data, &syn.v.data, &lens)?;
        let mut gs = gk.upload(&st)?;
        eprintln!("  selecting on the CPU ({what}) ...");
        let want = kernel.select(&st, &syn.q.data, None)?;
        let got = gk.select(&mut gs, &syn.q.data)?;
        check(what, &want, &got);
    }
    // st holds the full cache: time the selection, each kernel, and the graph.
    let mut gs = gk.upload(&st)?;
    let idx = gk.select(&mut gs, &syn.q.data)?;
    let sel_ms = gk.time(&mut gs, 3, runs)?;
    let each = gk.time_each(&mut gs, 2, runs)?;
    let graphed = gk.select_graphed(&mut gs, &syn.q.data)?;
    check("CUDA graph vs separate launches", &idx, &graphed);
    let graph_ms = gk.time_graph(&mut gs, 3, runs)?;
    drop(gs);
    // The yardstick: a dense decode step over the same cache.
    let dense_ms = dense_step_ms(&GpuDecode::load(gpu, dense_of(&spec))?, &st, runs)?;
    eprintln!("  measuring fidelity against dense decode on the CPU ...");
    // The decode query: the window's last row of each head (as the CPU bench takes it).
    let q1: Vec<f32> = (0..b * hq)
        .flat_map(|bh| syn.q.data[(bh * rows + rows - 1) * d..][..d].to_vec())
        .map(|x| attnc_runtime::decode::cache::round(spec.dtype, x))
        .collect();
    let f = fidelity::measure(&spec, &st, &q1, &idx, None);
    let ok = checks.iter().all(|(_, n)| *n == 0);
    // The work: every window row's dot with every key it sees, twice (statistics, then
    // scores), on CUDA cores.
    let dots = (b * hq * rows) as f64 * c as f64;
    let tflops = 2.0 * 2.0 * dots * d as f64 / (sel_ms * 1e-3) / 1e12;
    let parts = kernel_times(&each);
    if json {
        return Ok(format!(
            "{{\"kernel\":\"{}\",\"backend\":\"cuda\",\"gpu\":\"{}\",\"batch\":{b},\"q_heads\":{hq},\"rows\":{rows},\"context\":{c},\"capacity\":{},\"select_ms\":{sel_ms:.4},\"graph_ms\":{graph_ms:.4},\"dense_ms\":{dense_ms:.4},\"tflops\":{tflops:.2},\"kernels_ms\":\"{}\",\"indices_equal_cpu\":{ok},\"recall\":{:.4},\"mass\":{:.4},\"runs\":{}}}\n",
            spec.kernel,
            gpu.name(),
            spec.capacity(),
            parts.join(", "),
            f.recall,
            f.mass,
            runs.max(1)
        ));
    }
    let mut s = format!(
        "{} on {}, batch {b}, {hq}/{} heads, {rows} window rows, context {c}, {}:\n",
        spec.kernel,
        gpu.name(),
        spec.kv_heads,
        lists(&spec)
    );
    s.push_str(&format!(
        "  select {sel_ms:.4} ms ({tflops:.1} TFLOP/s of window dots, computed twice), {graph_ms:.4} ms as one CUDA graph; a dense decode step takes {dense_ms:.4} ms; medians of {} CUDA-event-timed runs\n",
        runs.max(1)
    ));
    s.push_str(&format!("  kernels alone (ms): {}\n", parts.join(", ")));
    for (what, n) in &checks {
        s.push_str(&format!(
            "  vs the CPU executor ({what}): {n} index lists differ\n"
        ));
    }
    s.push_str(&format!(
        "  fidelity vs dense decode on a synthetic cache ({heavy} planted heavy hitters per KV head): recall {:.3} of the exact top-k, attention mass {:.3}\n",
        f.recall, f.mass
    ));
    if !ok {
        return Err(Error::Input(format!(
            "{s}the GPU selection disagrees with the CPU executor (see above)"
        )));
    }
    Ok(s)
}
