//! `attnc bench` for selection kernels on the CPU.

use super::*;

/// Host memory the CPU benchmark needs, in bytes (cache, values, scores).
fn bench_bytes(s: &SelectSpec) -> u64 {
    let scores = s.batch as u64 * s.q_heads as u64 * s.context as u64 * 4 * s.q_rows() as u64;
    3 * cache_bytes(s) + 2 * scores
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    let scores = match spec.source {
        // External scores: random (they measure the pipeline's cost, not a policy).
        Source::External => {
            Some(Tensor::random(&[b, spec.sel_heads() as usize, spec.context as usize], 11).data)
        }
        // The log-sum-exps an exact prefill gives the window rows.
        Source::Window { lse: true, .. } => Some(attnc_runtime::decode::reference::window_lse(
            &spec,
            &st,
            &syn.q.data,
        )),
        _ => None,
    };
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
