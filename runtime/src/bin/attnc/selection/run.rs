//! `attnc run` for selection kernels.

use super::*;

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
    /// `output compacted`: the folder for `k.npy`, `v.npy` and `lens.npy`.
    pub compacted: Option<PathBuf>,
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
    Ok((
        Tensor {
            shape: vec![b, hkv, c, d],
            data: pad_rows(&t.data, b * hkv, (n, c), d),
        },
        n,
    ))
}

/// `rows` rows of `n` items of `item` values each, padded with zeros to `c` items a row.
fn pad_rows(data: &[f32], rows: usize, (n, c): (usize, usize), item: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * c * item];
    for r in 0..rows {
        out[r * c * item..][..n * item].copy_from_slice(&data[r * n * item..][..n * item]);
    }
    out
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
    Ok(pad_rows(&t.data, b * hs, (t.shape[2], c), 1))
}

/// An integer input with one value a sequence (`[batch]`).
fn read_per_sequence(path: &Path, spec: &SelectSpec, what: &str) -> Result<Vec<i64>, Error> {
    let (shape, data) = npy::read_ints(path)?;
    if shape != [spec.batch as usize] {
        return Err(Error::Shape(format!(
            "{what} `{}` has shape {shape:?}; expected [{}]",
            path.display(),
            spec.batch
        )));
    }
    Ok(data)
}

/// `attnc run` on a selection kernel: on the CPU, or on `gpu` (decode kernels the CUDA
/// backend covers).
pub fn run(spec: SelectSpec, files: &RunFiles, gpu: Option<&Gpu>) -> Result<String, Error> {
    for (n, _) in &files.inputs {
        if !["lens", "scores", "acc", "steps", "lse"].contains(&n.as_str()) {
            return Err(Error::Shape(format!(
                "selection kernels take the inputs lens, scores (external source), acc (accumulated source), steps (keyformer) and lse (window_lse), not `{n}`"
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
    let compacted = spec.output == Output::Compacted;
    match (&files.compacted, compacted) {
        (Some(_), false) => {
            return Err(Error::Shape(format!(
                "`{}` outputs index lists: --compacted is for select kernels with `output compacted;`",
                spec.kernel
            )))
        }
        (None, true) => {
            return Err(Error::Shape(format!(
                "`{}` outputs a compacted cache: pass --compacted DIR (k.npy, v.npy and lens.npy go there)",
                spec.kernel
            )))
        }
        _ => {}
    }
    if compacted && files.v.is_none() {
        return Err(Error::Shape(format!(
            "`{}` gathers values too: pass --v FILE.npy",
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
            let mut out = vec![];
            for l in read_per_sequence(p, &spec, "lens")? {
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
    if let Some(p) = input(files, "steps") {
        if spec.gumbel.is_none() || spec.kind != KernelKind::Decode {
            return Err(Error::Shape(format!(
                "`{}` has no temperature schedule: steps is for decode kernels with source keyformer",
                spec.kernel
            )));
        }
        st.steps = read_per_sequence(p, &spec, "steps")?
            .iter()
            .map(|&t| {
                u32::try_from(t).map_err(|_| {
                    Error::Input(format!(
                        "a step count of {t} is not a number of decode steps (0 to {})",
                        u32::MAX
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
    }
    let mut scores = match input(files, "scores") {
        Some(p) => Some(read_per_token(p, &spec, "scores")?),
        None => None,
    };
    // `window_lse`: the window rows' log-sum-exps, where the executor takes its extra
    // tensor.
    if let Some(p) = input(files, "lse") {
        let Source::Window { rows, lse: true } = spec.source else {
            return Err(Error::Shape(format!(
                "`{}` has no use for lse: it is for select kernels with source window_lse(W)",
                spec.kernel
            )));
        };
        let t = npy::read(p)?;
        let want = [spec.batch as usize, spec.q_heads as usize, rows as usize];
        if t.shape != want {
            return Err(Error::Shape(format!(
                "lse `{}` has shape {:?}; `{}` expects {want:?} (batch, query heads, window rows)",
                p.display(),
                t.shape,
                spec.kernel
            )));
        }
        if scores.is_some() {
            return Err(Error::Shape(format!(
                "`{}` takes lse, not scores",
                spec.kernel
            )));
        }
        scores = Some(t.data);
    }
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
            // A select-only kernel's step is its selection (no output).
            let (idx, o) = match spec.kind {
                KernelKind::Select => (gk.select(&mut gs, &q.data)?, vec![]),
                KernelKind::Decode => gk.step(&mut gs, &q.data)?,
            };
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
        let place = match gpu_out {
            Some((_, place)) => place,
            None => format!("{:.1} ms on the CPU", t.elapsed().as_secs_f64() * 1e3),
        };
        npy::write_i32(&files.output, &idx.shape, &idx.data)?;
        msg = format!(
            "{}: indices {:?} written to {} ({place})",
            spec.kernel,
            idx.shape,
            files.output.display()
        );
        if let Some(dir) = &files.compacted {
            // Gathered on the host from the cache as read, for either backend.
            let cc = kernel.compact(&st, &idx)?;
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
            npy::write(&dir.join("k.npy"), &cc.k)?;
            npy::write(&dir.join("v.npy"), &cc.v)?;
            let lens: Vec<i32> = cc.lens.iter().map(|l| *l as i32).collect();
            npy::write_i32(&dir.join("lens.npy"), &[lens.len()], &lens)?;
            msg.push_str(&format!(
                ", the compacted cache {:?} (lengths {:?}) to {}",
                cc.k.shape,
                cc.lens,
                dir.display()
            ));
        }
    }
    Ok(msg)
}
