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
    let mut tuned = String::new();
    let gk = if tune {
        let (t, table) = tune_select(gpu, &spec, &mut gs, &syn.q.data, &idx, runs)?;
        eprint!("{table}");
        tuned = format!(
            "  tuned: {} (of {} candidates)\n",
            t.label(),
            Tuning::candidates_for(&spec).len()
        );
        let best = GpuDecode::load_tuned(gpu, spec.clone(), t)?;
        best.adopt(&mut gs)?;
        best
    } else {
        gk
    };
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
    s.push_str(&tuned);
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

/// Times every tuning candidate of a select-only kernel on the uploaded state `gs`, each
/// checked first to select the lists `base` (the default's); records and returns the
/// fastest, with a table of all.
fn tune_select(
    gpu: &Gpu,
    spec: &SelectSpec,
    gs: &mut GpuState,
    q: &[f32],
    base: &Indices,
    runs: usize,
) -> Result<(Tuning, String), Error> {
    let mut trials: Vec<(Tuning, f64)> = vec![];
    let mut table = String::from("  tuning candidates (select ms):\n");
    for t in Tuning::candidates_for(spec) {
        let cand = GpuDecode::load_tuned(gpu, spec.clone(), t)?;
        cand.adopt(gs)?;
        let idx = cand.select(gs, q)?;
        if &idx != base {
            return Err(Error::Input(format!(
                "tuning {} changes the selection ({} lists differ)",
                t.label(),
                differing_lists(&idx, base)
            )));
        }
        let ms = cand.time(gs, 3, runs)?;
        table.push_str(&format!("    {:<36} {ms:.4}\n", t.label()));
        trials.push((t, ms));
    }
    let best = trials
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|r| r.0)
        .ok_or_else(|| Error::Input("no tuning candidate compiles".into()))?;
    attnc_runtime::decode::tuned::save(spec, gpu.arch(), &gpu.name(), best, &trials);
    Ok((best, table))
}
