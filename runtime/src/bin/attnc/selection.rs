//! `attnc run` and `attnc bench` for selection kernels (`decode(...)`, `select(...)`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use attnc::codegen::nvptx::decode::Tuning;
use attnc::select::spec::{Budget, KernelKind, Pool, SelectSpec, Source};
use attnc_runtime::cuda::Gpu;
use attnc_runtime::decode::gpu::{GpuDecode, GpuState};
use attnc_runtime::decode::{DecodeKernel, Indices};
use attnc_runtime::{fidelity, npy, Error, Tensor};

/// The files of `attnc run` on a selection kernel.
pub struct RunFiles {
    pub q: PathBuf,
    pub k: PathBuf,
    pub v: Option<PathBuf>,
    /// `lens`, `scores` (external source), `acc` (accumulated source).
    pub inputs: Vec<(String, PathBuf)>,
    pub output: PathBuf,
    pub indices: Option<PathBuf>,
    /// `accumulated`: where the state after the step goes.
    pub acc_out: Option<PathBuf>,
}

fn input<'a>(files: &'a RunFiles, name: &str) -> Option<&'a Path> {
    files
        .inputs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.as_path())
}

/// Reads `[B, Hkv, n, D]` and pads the token axis to the cache capacity.
fn read_cache(path: &Path, spec: &SelectSpec, what: &str) -> Result<(Tensor, usize), Error> {
    let t = npy::read(path)?;
    let (b, hkv, c, d) = (
        spec.batch as usize,
        spec.kv_heads as usize,
        spec.context as usize,
        spec.head_dim as usize,
    );
    if t.shape.len() != 4 || t.shape[0] != b || t.shape[1] != hkv || t.shape[3] != d {
        return Err(Error::Shape(format!(
            "{what} `{}` has shape {:?}; `{}` expects [{b}, {hkv}, tokens, {d}] (batch, KV heads, tokens up to CONTEXT = {c}, head dim)",
            path.display(),
            t.shape,
            spec.kernel
        )));
    }
    let n = t.shape[2];
    if n == 0 || n > c {
        return Err(Error::Shape(format!(
            "{what} `{}` holds {n} tokens; `{}` caches 1 to {c} (--set CONTEXT=... to change)",
            path.display(),
            spec.kernel
        )));
    }
    let mut data = vec![0f32; b * hkv * c * d];
    for bh in 0..b * hkv {
        data[bh * c * d..][..n * d].copy_from_slice(&t.data[bh * n * d..][..n * d]);
    }
    Ok((
        Tensor {
            shape: vec![b, hkv, c, d],
            data,
        },
        n,
    ))
}

/// A state-shaped input `[B, Hsel, tokens]`, padded to `[B, Hsel, CONTEXT]`.
fn read_per_token(path: &Path, spec: &SelectSpec, what: &str) -> Result<Vec<f32>, Error> {
    let t = npy::read(path)?;
    let (b, hs, c) = (
        spec.batch as usize,
        spec.sel_heads() as usize,
        spec.context as usize,
    );
    if t.shape.len() != 3 || t.shape[0] != b || t.shape[1] != hs || t.shape[2] > c {
        return Err(Error::Shape(format!(
            "{what} `{}` has shape {:?}; `{}` expects [{b}, {hs}, tokens <= {c}]",
            path.display(),
            t.shape,
            spec.kernel
        )));
    }
    let n = t.shape[2];
    let mut out = vec![0f32; b * hs * c];
    for r in 0..b * hs {
        out[r * c..][..n].copy_from_slice(&t.data[r * n..][..n]);
    }
    Ok(out)
}

/// `attnc run` on a selection kernel: on the CPU, or on `gpu` (decode kernels the CUDA
/// backend covers).
pub fn run(spec: SelectSpec, files: &RunFiles, gpu: Option<&Gpu>) -> Result<String, Error> {
    for (n, _) in &files.inputs {
        if !["lens", "scores", "acc"].contains(&n.as_str()) {
            return Err(Error::Shape(format!(
                "selection kernels take the inputs lens, scores (external source) and acc (accumulated source), not `{n}`"
            )));
        }
    }
    if files.acc_out.is_some()
        && (spec.source != Source::Accumulated || spec.kind != KernelKind::Decode)
    {
        return Err(Error::Shape(format!(
            "`{}` keeps no accumulated state: --acc-out is for decode kernels with source accumulated",
            spec.kernel
        )));
    }
    let (k, n) = read_cache(&files.k, &spec, "--k")?;
    let v = match &files.v {
        Some(p) => read_cache(p, &spec, "--v")?.0,
        None if spec.kind == KernelKind::Select => Tensor::zeros(k.shape.clone()),
        None => return Err(Error::Shape("missing --v FILE.npy".into())),
    };
    let lens: Vec<u32> = match input(files, "lens") {
        Some(p) => {
            let (shape, data) = npy::read_ints(p)?;
            if shape != [spec.batch as usize] {
                return Err(Error::Shape(format!(
                    "lens `{}` has shape {shape:?}; expected [{}]",
                    p.display(),
                    spec.batch
                )));
            }
            let mut out = vec![];
            for l in data {
                if l < 1 || l as usize > n {
                    return Err(Error::Input(format!(
                        "a length of {l} is outside 1..={n} (the tokens in --k)"
                    )));
                }
                out.push(l as u32);
            }
            out
        }
        None => vec![n as u32; spec.batch as usize],
    };
    let kernel = DecodeKernel::new(spec.clone());
    let mut st = kernel.new_state();
    kernel.fill(&mut st, &k.data, &v.data, &lens)?;
    if let Some(p) = input(files, "acc") {
        if spec.source != Source::Accumulated {
            return Err(Error::Shape(format!(
                "`{}` has no accumulated state (source {})",
                spec.kernel,
                attnc::select::spec::source_name(spec.source)
            )));
        }
        st.acc = read_per_token(p, &spec, "acc")?;
    }
    let scores = match input(files, "scores") {
        Some(p) => Some(read_per_token(p, &spec, "scores")?),
        None => None,
    };
    let q = npy::read(&files.q)?;
    let t = Instant::now();
    // On the GPU: the index lists, the output and where and how fast it ran (and H2O's
    // state after the step).
    let mut gpu_acc = None;
    let (idx, gpu_out) = match gpu {
        Some(gpu) => {
            let gk = GpuDecode::load(gpu, spec.clone())?;
            let mut gs = gk.upload(&st)?;
            match (&scores, spec.source == Source::External) {
                (Some(e), _) => gk.set_scores(&mut gs, e)?, // says so if it has no use for them
                (None, true) => {
                    return Err(Error::Shape(format!(
                        "`{}` scores tokens with an external tensor: pass scores [{}, {}, {}]",
                        spec.kernel,
                        spec.batch,
                        spec.sel_heads(),
                        spec.context
                    )))
                }
                (None, false) => {}
            }
            let t = Instant::now();
            let (idx, o) = gk.step(&mut gs, &q.data)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if files.acc_out.is_some() {
                gpu_acc = Some(gk.acc(&gs)?);
            }
            let place = format!("{ms:.2} ms on {}, transfers included", gpu.name());
            (idx, Some((o, place)))
        }
        None => (kernel.select(&st, &q.data, scores.as_deref())?, None),
    };
    let mut msg;
    if spec.kind == KernelKind::Decode {
        let (o, place) = match gpu_out {
            Some(done) => done,
            None => {
                let o = kernel.attend(&mut st, &q.data, &idx)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                (o, format!("{ms:.1} ms on the CPU"))
            }
        };
        let shape = vec![
            spec.batch as usize,
            spec.q_heads as usize,
            1,
            spec.head_dim as usize,
        ];
        npy::write(&files.output, &Tensor { shape, data: o })?;
        msg = format!(
            "{}: output written to {} ({place})",
            spec.kernel,
            files.output.display()
        );
        if let Some(p) = &files.indices {
            npy::write_i32(p, &idx.shape, &idx.data)?;
            msg.push_str(&format!(", indices {:?} to {}", idx.shape, p.display()));
        }
        if let Some(p) = &files.acc_out {
            let shape = vec![
                spec.batch as usize,
                spec.sel_heads() as usize,
                spec.context as usize,
            ];
            let data = gpu_acc.unwrap_or_else(|| std::mem::take(&mut st.acc));
            npy::write(p, &Tensor { shape, data })?;
            msg.push_str(&format!(", the accumulated state to {}", p.display()));
        }
    } else {
        let ms = t.elapsed().as_secs_f64() * 1e3;
        npy::write_i32(&files.output, &idx.shape, &idx.data)?;
        msg = format!(
            "{}: indices {:?} written to {} ({ms:.1} ms on the CPU)",
            spec.kernel,
            idx.shape,
            files.output.display()
        );
    }
    Ok(msg)
}

/// Bytes of one f32 copy of K (or V) at a full cache.
fn cache_bytes(s: &SelectSpec) -> u64 {
    s.batch as u64 * s.kv_heads as u64 * s.context as u64 * s.head_dim as u64 * 4
}

/// Host memory the CPU benchmark needs, in bytes (cache, values, scores).
fn bench_bytes(s: &SelectSpec) -> u64 {
    let scores = s.batch as u64 * s.q_heads as u64 * s.context as u64 * 4 * s.q_rows() as u64;
    3 * cache_bytes(s) + 2 * scores
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

/// `attnc bench` on the CPU: latency of select, attend and the dense yardstick, and the
/// fidelity of the selection on a synthetic cache with planted heavy hitters.
pub fn bench(spec: SelectSpec, runs: usize, json: bool) -> Result<String, Error> {
    // A fixed limit, not the machine's memory: at full size the CPU bench takes minutes.
    let need = bench_bytes(&spec);
    if need > BENCH_LIMIT {
        let fit = (spec.context as u64 * BENCH_LIMIT / need).max(1);
        return Err(Error::Input(format!(
            "benchmarking `{}` on the CPU needs about {} GiB of memory (batch {}, {} KV heads, context {}); try --set CONTEXT={} or a smaller BATCH",
            spec.kernel,
            need >> 30,
            spec.batch,
            spec.kv_heads,
            spec.context,
            fit.next_power_of_two() / 2
        )));
    }
    let rows = spec.q_rows() as usize;
    let heavy = (spec.capacity() as usize * spec.page as usize / 8).max(1);
    let syn = fidelity::synthetic(&spec, rows, heavy, 7);
    let lens = vec![spec.context; spec.batch as usize];
    let kernel = DecodeKernel::new(spec.clone());
    let mut st = kernel.new_state();
    kernel.fill(&mut st, &syn.k.data, &syn.v.data, &lens)?;
    let (b, hq, d) = (
        spec.batch as usize,
        spec.q_heads as usize,
        spec.head_dim as usize,
    );
    // The decode query: the last row of each head.
    let q1: Vec<f32> = (0..b * hq)
        .flat_map(|bh| syn.q.data[(bh * rows + rows - 1) * d..][..d].to_vec())
        .map(|x| attnc_runtime::decode::cache::round(spec.dtype, x))
        .collect();
    let scores = (spec.source == Source::External).then(|| {
        // External scores: random (they measure the pipeline's cost, not a policy).
        Tensor::random(&[b, spec.sel_heads() as usize, spec.context as usize], 11).data
    });
    if spec.source == Source::Accumulated {
        seed_history(&spec, &mut st, &q1);
    }
    let mut t_select = vec![];
    let mut t_attend = vec![];
    let mut idx: Option<Indices> = None;
    let mut o = vec![];
    for i in 0..runs.max(1) + 1 {
        let t = Instant::now();
        let sel = kernel.select(&st, &syn.q.data, scores.as_deref())?;
        let ts = t.elapsed().as_secs_f64() * 1e3;
        let mut ta = 0.0;
        if spec.kind == KernelKind::Decode {
            // Attend without touching the accumulated state of the run being measured.
            let mut scratch_acc = None;
            if spec.source == Source::Accumulated {
                scratch_acc = Some(st.acc.clone());
            }
            let t = Instant::now();
            o = kernel.attend(&mut st, &q1, &sel)?;
            ta = t.elapsed().as_secs_f64() * 1e3;
            if let Some(a) = scratch_acc {
                st.acc = a;
            }
        }
        if i > 0 {
            t_select.push(ts);
            t_attend.push(ta);
        }
        idx = Some(sel);
    }
    let idx = idx.expect("at least one run");
    let dense = DecodeKernel::new(dense_of(&spec));
    let mut dst = dense.new_state();
    dense.fill(&mut dst, &syn.k.data, &syn.v.data, &lens)?;
    let mut t_dense = vec![];
    for i in 0..runs.max(1) + 1 {
        let t = Instant::now();
        let sel = dense.select(&dst, &q1, None)?;
        dense.attend(&mut dst, &q1, &sel)?;
        if i > 0 {
            t_dense.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let f = fidelity::measure(
        &spec,
        &st,
        &q1,
        &idx,
        (spec.kind == KernelKind::Decode).then_some(o.as_slice()),
    );
    let (ms, ma, md) = (median(t_select), median(t_attend), median(t_dense));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if json {
        return Ok(format!(
            "{{\"kernel\":\"{}\",\"backend\":\"cpu\",\"threads\":{threads},\"batch\":{},\"context\":{},\"capacity\":{},\"page\":{},\"select_ms\":{ms:.4},\"attend_ms\":{ma:.4},\"step_ms\":{:.4},\"dense_ms\":{md:.4},\"recall\":{:.4},\"mass\":{:.4},\"cosine\":{:.5},\"min_cosine\":{:.5},\"runs\":{}}}\n",
            spec.kernel, spec.batch, spec.context, spec.capacity(), spec.page, ms + ma,
            f.recall, f.mass, f.cosine, f.min_cosine, runs.max(1)
        ));
    }
    let mut s = format!(
        "{} on the CPU ({threads} threads), batch {}, context {}, {}:\n",
        spec.kernel,
        spec.batch,
        spec.context,
        lists(&spec)
    );
    if spec.kind == KernelKind::Decode {
        s.push_str(&format!(
            "  select {ms:.3} ms, attend {ma:.3} ms, step {:.3} ms; dense decode {md:.3} ms ({:.2}x), medians of {} runs\n",
            ms + ma,
            md / (ms + ma).max(1e-9),
            runs.max(1)
        ));
    } else {
        s.push_str(&format!(
            "  select {ms:.3} ms (a dense decode step takes {md:.3} ms), medians of {} runs\n",
            runs.max(1)
        ));
    }
    s.push_str(&format!(
        "  fidelity vs dense decode on a synthetic cache ({heavy} planted heavy hitters per KV head): recall {:.3} of the exact top-k, attention mass {:.3}, output cosine {:.4} (min {:.4})\n",
        f.recall, f.mass, f.cosine, f.min_cosine
    ));
    if spec.kind == KernelKind::Decode {
        s.push_str(&format!(
            "  the kernel's output vs exact attention over the same selection: max relative error {:.2e}\n",
            f.max_rel_err
        ));
    }
    Ok(s)
}

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
fn differing_lists(a: &Indices, b: &Indices) -> usize {
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
    // The synthetic cache and the CPU state hold two f32 copies of K and V each.
    let need = 4 * cache_bytes(&spec);
    let limit = host_limit();
    if need > limit {
        return Err(Error::Input(format!(
            "benchmarking `{}` needs about {} GiB of host memory to build and check the cache; this machine offers {} GiB",
            spec.kernel,
            need >> 30,
            limit >> 30
        )));
    }
    let gk = GpuDecode::load(gpu, spec.clone())?;
    let dense_spec = dense_of(&spec);
    let gd = GpuDecode::load(gpu, dense_spec.clone())?;
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
    let dense = DecodeKernel::new(dense_spec);
    let mut dst = dense.new_state();
    dense.fill(&mut dst, &st.k, &st.v, &st.lens)?;
    let mut gds = gd.upload(&dst)?;
    drop(dst);
    let dense_ms = gd.time(&mut gds, 10, runs)?;
    drop(gds);
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
    let parts: Vec<String> = each
        .iter()
        .map(|(r, ms)| format!("{} {ms:.4}", format!("{r:?}").to_lowercase()))
        .collect();
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
