//! `attnc bench --backend cuda` for decode kernels: checked against the CPU executor,
//! timed, tuned.

use super::*;
use attnc::codegen::nvptx::decode::Role;

/// Host memory this machine can give a benchmark: 3/4 of what it has available (Linux), and
/// never less than [`BENCH_LIMIT`] (also the answer where that is unknown).
fn host_limit() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
    });
    match avail {
        Some(kb) => (kb * 1024 / 4 * 3).max(BENCH_LIMIT),
        None => BENCH_LIMIT,
    }
}

/// The benchmark's host memory fits this machine: the synthetic cache and the CPU state
/// hold two f32 copies of K and V each.
pub(super) fn check_host_memory(spec: &SelectSpec) -> Result<(), Error> {
    let need = 4 * cache_bytes(spec);
    let limit = host_limit();
    if need > limit {
        return Err(Error::Input(format!(
            "benchmarking `{}` needs about {} GiB of host memory to build and check the cache; this machine offers {} GiB",
            spec.kernel,
            need >> 30,
            limit >> 30
        )));
    }
    Ok(())
}

/// Median ms of a dense decode step (`gd`, the kernel's [`dense_of`]) over the cache of
/// `st`: the yardstick beside every selection.
pub(super) fn dense_step_ms(
    gd: &GpuDecode,
    st: &attnc_runtime::decode::DecodeState,
    runs: usize,
) -> Result<f64, Error> {
    let dense = DecodeKernel::new(gd.spec().clone());
    let mut dst = dense.new_state();
    dense.fill(&mut dst, &st.k, &st.v, &st.lens)?;
    let mut gds = gd.upload(&dst)?;
    drop(dst);
    gd.time(&mut gds, 10, runs)
}

/// "attend 0.0490, combine 0.0070": each kernel's median ms.
pub(super) fn kernel_times(each: &[(Role, f64)]) -> Vec<String> {
    each.iter()
        .map(|(r, ms)| format!("{} {ms:.4}", format!("{r:?}").to_lowercase()))
        .collect()
}

/// Largest relative error of `got` against `want` over rows of `d` values, each row scaled
/// by its own largest magnitude (the suite's max-norm error, row by row).
fn max_rel_err(got: &[f32], want: &[f32], d: usize) -> f64 {
    got.chunks(d)
        .zip(want.chunks(d))
        .map(|(g, w)| attnc_runtime::suite::max_rel(g, w).0)
        .fold(0f64, f64::max)
}

/// One check of a GPU result against a reference, printed as it is made: `(what, index
/// lists that differ, output max relative error)`.
fn check(
    what: &str,
    (want_idx, want): (&Indices, &[f32]),
    (got_idx, got): (&Indices, &[f32]),
    d: usize,
) -> (String, usize, f64) {
    let lists = differing_lists(want_idx, got_idx);
    let err = max_rel_err(got, want, d);
    eprintln!(
        "  check ({what}): {lists} of {} index lists differ; output max relative error {err:.2e}",
        want_idx.shape[0] * want_idx.shape[1]
    );
    (what.to_string(), lists, err)
}

/// H2O's state on both sides after the same steps: `(what, values that differ, 0)`, as a
/// check line (the update is bit for bit the CPU's, so any difference counts).
fn check_acc(what: &str, want: &[f32], got: &[f32]) -> (String, usize, f64) {
    let n = want
        .iter()
        .zip(got)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    eprintln!(
        "  check ({what}): {n} of {} accumulated values differ",
        want.len()
    );
    (what.to_string(), n, 0.0)
}

/// Lists whose indices differ between two selections.
pub(super) fn differing_lists(a: &Indices, b: &Indices) -> usize {
    let k = a.shape[2].max(1);
    a.data
        .chunks(k)
        .zip(b.data.chunks(k))
        .filter(|(x, y)| x != y)
        .count()
}

/// `attnc bench --backend cuda` for a decode kernel: the GPU checked against the CPU
/// executor (identical index lists, outputs to bf16 tolerance) on ragged lengths (also
/// through the separate select and attend calls), after an append on each side and on full
/// lengths; then the step timed with CUDA events beside dense decode through the same
/// kernels, with the fidelity of the selection.
pub fn bench_cuda(
    gpu: &Gpu,
    spec: SelectSpec,
    runs: usize,
    json: bool,
    tune: bool,
) -> Result<String, Error> {
    if spec.kind == KernelKind::Select {
        return super::bench_gpu_select::bench_select_cuda(gpu, spec, runs, json, tune);
    }
    check_host_memory(&spec)?;
    let gk = GpuDecode::load(gpu, spec.clone())?;
    let gd = GpuDecode::load(gpu, dense_of(&spec))?;
    let (b, hq, d, c) = (
        spec.batch as usize,
        spec.q_heads as usize,
        spec.head_dim as usize,
        spec.context,
    );
    let heavy = (spec.capacity() as usize * spec.page as usize / 8).max(1);
    eprintln!(
        "{}: building a synthetic cache of {} tokens x {b} sequences ...",
        spec.kernel, c
    );
    let syn = fidelity::synthetic(&spec, 1, heavy, 7);
    let q1: Vec<f32> = syn
        .q
        .data
        .iter()
        .map(|x| attnc_runtime::decode::cache::round(spec.dtype, *x))
        .collect();
    let kernel = DecodeKernel::new(spec.clone());
    let mut st = kernel.new_state();
    // `external` scoring: one score tensor for both sides (as the CPU benchmark makes it).
    let external = (spec.source == Source::External)
        .then(|| Tensor::random(&[b, spec.sel_heads() as usize, c as usize], 11).data);
    let upload = |st: &attnc_runtime::decode::DecodeState| -> Result<_, Error> {
        let mut gs = gk.upload(st)?;
        if let Some(e) = &external {
            gk.set_scores(&mut gs, e)?;
        }
        Ok(gs)
    };
    // Correctness on ragged lengths (partial pages, shorter sequences), then on full ones.
    let ragged: Vec<u32> = (0..b as u32)
        .map(|i| (c - i * (c / 16) - 3 * i).max(1))
        .collect();
    // Before an append: one token short of the ragged lengths, the last sequence ending on
    // a page boundary (its appended token starts a page).
    let mut before_append: Vec<u32> = ragged.iter().map(|l| (l - 1).max(1)).collect();
    if let Some(l) = before_append.last_mut() {
        *l = (*l / spec.page * spec.page).max(1);
    }
    let mut checks = vec![];
    // (what, lengths, append first, also check select and attend apart)
    let cases = [
        ("ragged lengths", ragged, false, true),
        ("after an append on each side", before_append, true, false),
        ("full lengths", vec![c; b], false, false),
    ];
    // H2O: three steps a case, each changing the state the next one selects by.
    let accumulated = spec.source == Source::Accumulated;
    let steps = if accumulated { 3 } else { 1 };
    for (what, lens, append, apart) in cases {
        kernel.fill(&mut st, &syn.k.data, &syn.v.data, &lens)?;
        let mut gs = upload(&st)?;
        if append {
            let n = b * spec.kv_heads as usize * d;
            let kn = Tensor::random(&[n], 21).data;
            let vn = Tensor::random(&[n], 22).data;
            kernel.append(&mut st, &kn, &vn)?;
            gk.append(&mut gs, &kn, &vn)?;
        }
        let mut cpu = kernel.step(&mut st, &q1, external.as_deref())?;
        let gpu_step = gk.step(&mut gs, &q1)?;
        let name = |i: usize| match steps {
            1 => what.to_string(),
            _ => format!("{what}, step {}", i + 1),
        };
        checks.push(check(
            &name(0),
            (&cpu.0, &cpu.1),
            (&gpu_step.0, &gpu_step.1),
            d,
        ));
        for i in 1..steps {
            cpu = kernel.step(&mut st, &q1, external.as_deref())?;
            let got = gk.step(&mut gs, &q1)?;
            checks.push(check(&name(i), (&cpu.0, &cpu.1), (&got.0, &got.1), d));
        }
        if accumulated {
            let what = format!("{what}, state after {steps} steps");
            checks.push(check_acc(&what, &st.acc, &gk.acc(&gs)?));
        }
        let (idx_cpu, o_cpu) = cpu;
        if apart && !accumulated {
            // The same step through the separate calls: select, then attend over the
            // CPU's lists.
            let sel = gk.select(&mut gs, &q1)?;
            let att = gk.attend(&mut gs, &q1, &idx_cpu)?;
            checks.push(check(
                "select and attend apart",
                (&idx_cpu, &o_cpu),
                (&sel, &att),
                d,
            ));
        }
        if apart && accumulated {
            // A fourth step through the separate calls (select, then attend, which also
            // updates the state) on both sides, over the CPU's lists.
            let sel_cpu = kernel.select(&st, &q1, None)?;
            let sel = gk.select(&mut gs, &q1)?;
            let att_cpu = kernel.attend(&mut st, &q1, &sel_cpu)?;
            let att = gk.attend(&mut gs, &q1, &sel_cpu)?;
            checks.push(check(
                "select and attend apart",
                (&sel_cpu, &att_cpu),
                (&sel, &att),
                d,
            ));
            checks.push(check_acc(
                "the state after select and attend apart",
                &st.acc,
                &gk.acc(&gs)?,
            ));
        }
    }
    drop(syn);
    // st now holds the full cache: time the step and each kernel. (H2O: from the history
    // the CPU bench starts from too; every step changes the state, so a step meant to
    // reproduce another starts from `acc0`.)
    if accumulated {
        st.acc.iter_mut().for_each(|a| *a = 0.0);
        seed_history(&spec, &mut st, &q1);
    }
    let acc0 = st.acc.clone();
    let restart = |g: &GpuDecode, gs: &mut GpuState| -> Result<(), Error> {
        if accumulated {
            g.set_acc(gs, &acc0)?;
        }
        Ok(())
    };
    let mut gs = upload(&st)?;
    let (idx, o) = gk.step(&mut gs, &q1)?;
    let mut tuned = String::new();
    let gk = if tune {
        let (t, table) = tune_decode(gpu, &spec, &mut gs, &q1, (&idx, &o), runs, &restart)?;
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
    let step = gk.time(&mut gs, 10, runs)?;
    let each = gk.time_each(&mut gs, 5, runs)?;
    // The same step as one CUDA graph launch: the same result, timed apart.
    restart(&gk, &mut gs)?;
    let (idx_s, o_s) = gk.step(&mut gs, &q1)?;
    restart(&gk, &mut gs)?;
    let (idx_g, o_g) = gk.step_graphed(&mut gs, &q1)?;
    checks.push(check(
        "CUDA graph vs separate launches",
        (&idx_s, &o_s),
        (&idx_g, &o_g),
        d,
    ));
    let graph_ms = gk.time_graph(&mut gs, 10, runs)?;
    drop(gs);
    let dense_ms = dense_step_ms(&gd, &st, runs)?;
    eprintln!("  measuring fidelity against dense decode on the CPU ...");
    let f = fidelity::measure(&spec, &st, &q1, &idx, Some(&o));
    let ok = checks.iter().all(|(_, l, e)| *l == 0 && *e < 1e-2);
    let kv_bytes = |tokens: f64| tokens * 2.0 * (b * spec.kv_heads as usize * d * 2) as f64;
    let meta = match spec.source {
        Source::PageBound => {
            2.0 * (b * spec.kv_heads as usize * spec.units() as usize * d * 2) as f64
        }
        // Exact scores read every cached key; external ones their f32 scores.
        Source::Exact => (b * spec.kv_heads as usize * c as usize * d * 2) as f64,
        // External scores and H2O's state: the top-k reads f32 scores of every token.
        Source::External | Source::Accumulated => {
            (b * spec.sel_heads() as usize * c as usize * 4) as f64
        }
        _ => 0.0,
    };
    let read = kv_bytes((spec.capacity() * spec.page).min(c) as f64) + meta;
    let tbps = read / (step * 1e-3) / 1e12;
    let dense_tbps = kv_bytes(c as f64) / (dense_ms * 1e-3) / 1e12;
    let parts = kernel_times(&each);
    if json {
        return Ok(format!(
            "{{\"kernel\":\"{}\",\"backend\":\"cuda\",\"gpu\":\"{}\",\"batch\":{b},\"q_heads\":{hq},\"context\":{c},\"capacity\":{},\"page\":{},\"step_ms\":{step:.4},\"graph_ms\":{graph_ms:.4},\"dense_ms\":{dense_ms:.4},\"step_tbps\":{tbps:.3},\"dense_tbps\":{dense_tbps:.3},\"kernels_ms\":\"{}\",\"indices_equal_cpu\":{},\"max_rel_err_vs_cpu\":{:.3e},\"recall\":{:.4},\"mass\":{:.4},\"cosine\":{:.5},\"min_cosine\":{:.5},\"runs\":{}}}\n",
            spec.kernel,
            gpu.name(),
            spec.capacity(),
            spec.page,
            parts.join(", "),
            checks.iter().all(|x| x.1 == 0),
            checks.iter().map(|x| x.2).fold(0.0, f64::max),
            f.recall,
            f.mass,
            f.cosine,
            f.min_cosine,
            runs.max(1)
        ));
    }
    let mut s = format!(
        "{} on {}, batch {b}, {hq}/{} heads, context {c}, {}:\n",
        spec.kernel,
        gpu.name(),
        spec.kv_heads,
        lists(&spec)
    );
    s.push_str(&format!(
        "  step {step:.4} ms ({tbps:.2} TB/s of cache and metadata read), {graph_ms:.4} ms as one CUDA graph; dense decode through the same pipeline {dense_ms:.4} ms ({dense_tbps:.2} TB/s); {:.1}x; medians of {} CUDA-event-timed runs\n",
        dense_ms / step.max(1e-9),
        runs.max(1)
    ));
    s.push_str(&format!("  kernels alone (ms): {}\n", parts.join(", ")));
    s.push_str(&tuned);
    for (what, lists, err) in &checks {
        s.push_str(&format!(
            "  vs the CPU executor ({what}): {} index lists differ, output max relative error {err:.2e}\n",
            lists
        ));
    }
    s.push_str(&format!(
        "  fidelity vs dense decode on a synthetic cache ({heavy} planted heavy hitters per KV head): recall {:.3} of the exact top-k, attention mass {:.3}, output cosine {:.4} (min {:.4})\n",
        f.recall, f.mass, f.cosine, f.min_cosine
    ));
    if !ok {
        return Err(Error::Input(format!(
            "{s}the GPU step disagrees with the CPU executor (see above)"
        )));
    }
    Ok(s)
}

/// Times every tuning candidate on the uploaded state `gs`, each checked against the
/// default's result `base` (identical indices, outputs equal up to rounding); returns the
/// fastest and a table of all.
fn tune_decode(
    gpu: &Gpu,
    spec: &SelectSpec,
    gs: &mut GpuState,
    q: &[f32],
    base: (&Indices, &[f32]),
    runs: usize,
    restart: &dyn Fn(&GpuDecode, &mut GpuState) -> Result<(), Error>,
) -> Result<(Tuning, String), Error> {
    let mut trials: Vec<(Tuning, f64)> = vec![];
    let mut table = String::from("  tuning candidates (step ms):\n");
    for t in Tuning::candidates_for(spec) {
        let cand = match GpuDecode::load_tuned(gpu, spec.clone(), t) {
            Ok(c) => c,
            Err(e) => {
                table.push_str(&format!("    {:<36} skipped: {e}\n", t.label()));
                continue;
            }
        };
        cand.adopt(gs)?;
        restart(&cand, gs)?;
        let (idx, o) = cand.step(gs, q)?;
        let err = max_rel_err(&o, base.1, spec.head_dim as usize);
        if &idx != base.0 || err > 1e-3 {
            return Err(Error::Input(format!(
                "tuning {} changes the result ({} lists differ, output error {err:.1e})",
                t.label(),
                differing_lists(&idx, base.0)
            )));
        }
        let ms = cand.time(gs, 5, runs)?;
        table.push_str(&format!("    {:<36} {ms:.4}\n", t.label()));
        trials.push((t, ms));
    }
    let best = trials
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|r| r.0)
        .ok_or_else(|| Error::Input("no tuning candidate compiles".into()))?;
    // Later loads of this kernel on this GPU (run, bench) start from the choice.
    attnc_runtime::decode::tuned::save(spec, gpu.arch(), &gpu.name(), best, &trials);
    Ok((best, table))
}
