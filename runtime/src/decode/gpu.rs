//! A decode step on an NVIDIA GPU: the kernels of `attnc::codegen::nvptx::decode` loaded
//! through the CUDA driver, with the cache, the query and every intermediate in device
//! buffers of fixed size (one set per kernel instance, so that the launch sequence can be
//! captured in a CUDA graph). The host supplies the cache as a [`DecodeState`] (keys,
//! values and page metadata, rounded to the dtype) and the queries; the step launches
//! logits (`exact` only), score (`exact` and Quest), top-k, attend, combine and H2O's
//! state update (`accumulated` only) on one stream. A select-only kernel (`window`
//! scores, SnapKV) has the selection alone: the window rows' statistics (role `Logits`),
//! their scores, the pooling and the top-k.

use std::sync::Arc;

use attnc::codegen::nvptx::decode::{self as codegen, DecodeModule, Role, Tuning};
use attnc::select::spec::{KernelKind, SelectSpec, Source};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::cache::DecodeState;
use super::{DecodeKernel, Indices};
use crate::cuda::{cuda, median_event_ms, to_half, Gpu};
use crate::Error;

/// The kernels of one decode step, in launch order (a module without scores has no
/// `Score` entry, only `exact` and `window` have `Logits`, only a pooled `window` has
/// `Pool`, only `accumulated` has `Accumulate`, and a select-only kernel ends at `TopK`;
/// append is not part of the step).
const STEP: &[Role] = Role::ALL.split_at(7).0;
/// The selection alone.
const SELECT: &[Role] = Role::ALL.split_at(4).0;

/// A decode kernel loaded on a GPU.
pub struct GpuDecode {
    kernel: DecodeKernel,
    pub module: DecodeModule,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: Vec<(Role, CudaFunction)>,
}

/// The device buffers of one kernel instance.
pub struct GpuState {
    /// The step captured as a CUDA graph over these buffers, with the module that captured
    /// it (`step_graphed`); first, so that it is destroyed before the buffers.
    graph: Option<(usize, CudaGraph)>,
    /// The lengths as the host last set them (append checks them before it launches).
    lens_host: Vec<u32>,
    k_new: CudaSlice<u16>,
    v_new: CudaSlice<u16>,
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    kmax: CudaSlice<u16>,
    kmin: CudaSlice<u16>,
    lens: CudaSlice<u32>,
    q: CudaSlice<f32>,
    /// `exact`: base-2 logits `[B, Hq, C]` and chunk stats `[B, Hq, chunks, 2]`;
    /// `accumulated`: the logits of the list entries `[B, Hq, K]` (no stats); `window`:
    /// the token scores before pooling `[B, Hsel, C]` (one value without pooling) and the
    /// window rows' chunk stats `[B, Hq, W, chunks, 2]`.
    logits: CudaSlice<f32>,
    stats: CudaSlice<f32>,
    /// `window`: the window rows' logits `[B, Hq, W, C]` between the statistics and the
    /// score entries (`DecodeModule::window_logits` elements; one when not stored).
    wlog: CudaSlice<f32>,
    /// The units' scores `[B, Hsel, units]` (written by the score entry, or by
    /// `set_scores` for `external`; for `accumulated` the state itself, which the update
    /// after each attention adds to).
    scores: CudaSlice<f32>,
    /// `external`: whether `set_scores` has given the scores the top-k reads.
    scores_set: bool,
    /// The multi-block top-k's histograms and counters (it leaves them cleared).
    work: CudaSlice<u32>,
    idx: CudaSlice<i32>,
    part: CudaSlice<f32>,
    out: CudaSlice<f32>,
}

impl GpuDecode {
    /// Compiles `spec` for the GPU and loads it, with the launch shapes `--tune` recorded
    /// for this GPU if any (else the defaults); says so when the kernel runs on the CPU only.
    pub fn load(gpu: &Gpu, spec: SelectSpec) -> Result<GpuDecode, Error> {
        let t = super::tuned::load(&spec, gpu.arch(), &gpu.name()).unwrap_or_default();
        GpuDecode::load_tuned(gpu, spec, t)
    }

    /// As [`GpuDecode::load`], with a given tuning.
    pub fn load_tuned(gpu: &Gpu, spec: SelectSpec, tuning: Tuning) -> Result<GpuDecode, Error> {
        let module = super::module_cache::compile_tuned(&spec, gpu.arch(), tuning)?;
        let m = gpu
            .ctx
            .load_module(Ptx::from_src(module.ptx.clone()))
            .map_err(|e| Error::Cuda(format!("loading the PTX of `{}`: {e}", spec.kernel)))?;
        let funcs = module
            .entries
            .iter()
            .map(|e| Ok((e.role, m.load_function(&e.name).map_err(cuda)?)))
            .collect::<Result<_, Error>>()?;
        Ok(GpuDecode {
            kernel: DecodeKernel::new(spec),
            module,
            stream: gpu.stream.clone(),
            _module: m,
            funcs,
        })
    }

    pub fn spec(&self) -> &SelectSpec {
        self.kernel.spec()
    }

    /// Uploads a cache built on the host (checked as the CPU executor checks it).
    pub fn upload(&self, st: &DecodeState) -> Result<GpuState, Error> {
        self.kernel.check_state(st)?;
        let s = self.spec();
        if let Some(b) = st.lens.iter().position(|l| *l > s.context) {
            return Err(Error::Input(format!(
                "sequence {b} holds {} tokens, more than CONTEXT = {}",
                st.lens[b], s.context
            )));
        }
        self.kernel.check_window_lens(&st.lens)?;
        let dt = s.dtype.name();
        let up16 = |x: &[f32]| -> Result<CudaSlice<u16>, Error> {
            if x.is_empty() {
                return self.stream.alloc_zeros::<u16>(1).map_err(cuda);
            }
            // `to_half` converts in parallel: a long cache holds billions of values.
            self.stream.clone_htod(&to_half(dt, x)).map_err(cuda)
        };
        let (b, hq, d) = (s.batch as usize, s.q_heads as usize, s.head_dim as usize);
        let lists = b * s.sel_heads() as usize;
        let scores = if s.source == Source::None {
            1
        } else {
            lists * s.units() as usize + codegen::SCORES_PAD
        };
        let exact = s.source == Source::Exact;
        let c = s.context as usize;
        let chunks = c.div_ceil(attnc::select::softmax::CHUNK);
        let rows = s.q_rows() as usize;
        let (logits, stats) = if let Source::Window { .. } = s.source {
            // The token scores before pooling; without pooling the score entry writes the
            // scores themselves.
            let pooled = self.module.entry(Role::Pool).is_some();
            (
                if pooled { lists * c } else { 1 },
                b * hq * rows * chunks * 2,
            )
        } else if exact {
            (b * hq * c, b * hq * chunks * 2)
        } else if s.source == Source::Accumulated {
            (b * hq * s.capacity() as usize, 1)
        } else {
            (1, 1)
        };
        let hkv = s.kv_heads as usize;
        let mut gs = GpuState {
            graph: None,
            lens_host: st.lens.clone(),
            k_new: self.stream.alloc_zeros::<u16>(b * hkv * d).map_err(cuda)?,
            v_new: self.stream.alloc_zeros::<u16>(b * hkv * d).map_err(cuda)?,
            k: up16(&st.k)?,
            // A select-only kernel never reads the values.
            v: if s.kind == KernelKind::Select {
                up16(&[])?
            } else {
                up16(&st.v)?
            },
            kmax: up16(&st.kmax)?,
            kmin: up16(&st.kmin)?,
            lens: self.stream.clone_htod(&st.lens).map_err(cuda)?,
            q: self
                .stream
                .alloc_zeros::<f32>(b * hq * rows * d)
                .map_err(cuda)?,
            logits: self.stream.alloc_zeros::<f32>(logits).map_err(cuda)?,
            stats: self.stream.alloc_zeros::<f32>(stats).map_err(cuda)?,
            wlog: self
                .stream
                .alloc_zeros::<f32>(self.module.window_logits.max(1))
                .map_err(cuda)?,
            scores: self.stream.alloc_zeros::<f32>(scores).map_err(cuda)?,
            scores_set: false,
            work: self
                .stream
                .alloc_zeros::<u32>(self.module.topk_work.max(1))
                .map_err(cuda)?,
            idx: self
                .stream
                .alloc_zeros::<i32>(lists * s.capacity() as usize)
                .map_err(cuda)?,
            part: self
                .stream
                .alloc_zeros::<f32>(self.part_len())
                .map_err(cuda)?,
            out: self.stream.alloc_zeros::<f32>(b * hq * d).map_err(cuda)?,
        };
        if s.source == Source::Accumulated {
            self.set_acc(&mut gs, &st.acc)?;
        }
        Ok(gs)
    }

    /// Elements of the split-K partial results.
    fn part_len(&self) -> usize {
        let s = self.spec();
        s.batch as usize
            * s.q_heads as usize
            * self.module.chunks as usize
            * (s.head_dim as usize + 2)
    }

    /// Takes over a state uploaded for another tuning of the same kernel (the partial
    /// results buffer follows the chunking).
    pub fn adopt(&self, gs: &mut GpuState) -> Result<(), Error> {
        gs.graph = None;
        if gs.part.len() != self.part_len() {
            gs.part = self
                .stream
                .alloc_zeros::<f32>(self.part_len())
                .map_err(cuda)?;
        }
        Ok(())
    }

    /// Sets the query `[B, Hq, rows, D]` (`rows`: the observation window of `window`
    /// scores, else 1), rounded to the dtype as on the CPU.
    pub fn set_query(&self, gs: &mut GpuState, q: &[f32]) -> Result<(), Error> {
        let q = self.kernel.queries(q, self.spec().q_rows() as usize)?;
        self.stream.memcpy_htod(&q, &mut gs.q).map_err(cuda)
    }

    /// `external` scoring: the scores `[B, Hsel, CONTEXT]` the next steps select by (as the
    /// CPU executor's `select(.., Some(scores))`); they stay until set again.
    pub fn set_scores(&self, gs: &mut GpuState, scores: &[f32]) -> Result<(), Error> {
        let s = self.spec();
        if s.source != Source::External {
            return Err(Error::Shape(format!(
                "`{}` computes its own scores: pass no external scores",
                s.kernel
            )));
        }
        let (b, hs, c) = (s.batch as usize, s.sel_heads() as usize, s.context as usize);
        if scores.len() != b * hs * c {
            return Err(Error::Shape(format!(
                "scores have {} values; expected [{b}, {hs}, {c}] = {}",
                scores.len(),
                b * hs * c
            )));
        }
        let mut dst = gs.scores.slice_mut(0..scores.len());
        self.stream.memcpy_htod(scores, &mut dst).map_err(cuda)?;
        gs.scores_set = true;
        Ok(())
    }

    /// `accumulated`: sets H2O's state `[B, Hsel, CONTEXT]` (as the CPU state's `acc`).
    pub fn set_acc(&self, gs: &mut GpuState, acc: &[f32]) -> Result<(), Error> {
        let s = self.spec();
        if s.source != Source::Accumulated {
            return Err(Error::Shape(format!(
                "`{}` keeps no accumulated state",
                s.kernel
            )));
        }
        let n = s.batch as usize * s.sel_heads() as usize * s.context as usize;
        if acc.len() != n {
            return Err(Error::Shape(format!(
                "an accumulated state of {} values; `{}` keeps {n}",
                acc.len(),
                s.kernel
            )));
        }
        let mut dst = gs.scores.slice_mut(0..n);
        self.stream.memcpy_htod(acc, &mut dst).map_err(cuda)
    }

    /// `accumulated`: H2O's state `[B, Hsel, CONTEXT]` after the last step.
    pub fn acc(&self, gs: &GpuState) -> Result<Vec<f32>, Error> {
        let s = self.spec();
        let n = s.batch as usize * s.sel_heads() as usize * s.context as usize;
        let mut all = self.stream.clone_dtoh(&gs.scores).map_err(cuda)?;
        all.truncate(n);
        Ok(all)
    }

    /// Launches one decode step (asynchronously, on the kernel's stream).
    pub fn launch(&self, gs: &mut GpuState) -> Result<(), Error> {
        self.launch_roles(gs, STEP)
    }

    /// The selection alone (rules 1 to 7): the index lists for the query `q` (the decode
    /// query, or a select-only kernel's observation window `[B, Hq, W, D]`).
    pub fn select(&self, gs: &mut GpuState, q: &[f32]) -> Result<Indices, Error> {
        self.set_query(gs, q)?;
        self.launch_roles(gs, SELECT)?;
        self.stream.synchronize().map_err(cuda)?;
        self.indices(gs)
    }

    /// [`GpuDecode::select`] launched as the step's CUDA graph (a select-only kernel's
    /// step is its selection).
    pub fn select_graphed(&self, gs: &mut GpuState, q: &[f32]) -> Result<Indices, Error> {
        self.require(KernelKind::Select, "select_graphed")?;
        self.set_query(gs, q)?;
        self.launch_graph(gs)?;
        self.stream.synchronize().map_err(cuda)?;
        self.indices(gs)
    }

    /// An error unless the kernel is of `kind` (`what` needs one).
    fn require(&self, kind: KernelKind, what: &str) -> Result<(), Error> {
        let name = &self.spec().kernel;
        match (kind, self.spec().kind) {
            (want, have) if want == have => Ok(()),
            (KernelKind::Select, _) => Err(Error::Shape(format!(
                "`{name}` is a decode kernel: {what} is for select-only kernels"
            ))),
            (KernelKind::Decode, _) => Err(Error::Shape(format!(
                "`{name}` is a select kernel: it selects and never attends ({what} is for decode kernels)"
            ))),
        }
    }

    /// The attention alone (rule 8) of `q` over given index lists (checked as the CPU
    /// executor checks them): the output `[B, Hq, D]`. For `accumulated`, also the state
    /// update, as on the CPU.
    pub fn attend(&self, gs: &mut GpuState, q: &[f32], idx: &Indices) -> Result<Vec<f32>, Error> {
        self.require(KernelKind::Decode, "attend")?;
        self.kernel.check_indices(&gs.lens_host, idx)?;
        self.set_query(gs, q)?;
        let mut data = idx.data.clone();
        if self.spec().source == Source::Accumulated {
            // The update takes a list's entries in order with the empty ones last (as the
            // top-k writes them); the CPU skips empty entries wherever they are.
            for row in data.chunks_mut(idx.shape[2].max(1)) {
                let kept: Vec<i32> = row.iter().copied().filter(|u| *u >= 0).collect();
                row.fill(-1);
                row[..kept.len()].copy_from_slice(&kept);
            }
        }
        self.stream.memcpy_htod(&data, &mut gs.idx).map_err(cuda)?;
        // The attention of exact scores reads the logits of `q`: computed first.
        let roles = [Role::Logits, Role::Attend, Role::Combine, Role::Accumulate];
        self.launch_roles(gs, &roles)?;
        self.stream.synchronize().map_err(cuda)?;
        self.output(gs)
    }

    /// Launches the module's entries whose role is in `roles`, in launch order.
    fn launch_roles(&self, gs: &mut GpuState, roles: &[Role]) -> Result<(), Error> {
        if gs.part.len() != self.part_len() {
            return Err(Error::Shape(format!(
                "the state was made for another tuning of `{}` (call adopt first)",
                self.spec().kernel
            )));
        }
        let s = self.spec();
        if s.source == Source::External && roles.contains(&Role::TopK) && !gs.scores_set {
            return Err(Error::Shape(format!(
                "`{}` scores tokens with an external tensor: set scores [{}, {}, {}] first (set_scores)",
                s.kernel,
                s.batch,
                s.sel_heads(),
                s.context
            )));
        }
        let window = matches!(s.source, Source::Window { .. });
        let pooled = self.module.entry(Role::Pool).is_some();
        for ((role, f), e) in self.funcs.iter().zip(&self.module.entries) {
            if !roles.contains(role) {
                continue;
            }
            let cfg = LaunchConfig {
                grid_dim: (e.grid[0], e.grid[1], e.grid[2]),
                block_dim: (e.block, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut l = self.stream.launch_builder(f);
            match role {
                Role::Logits if window => l
                    .arg(&gs.q)
                    .arg(&gs.k)
                    .arg(&gs.lens)
                    .arg(&mut gs.stats)
                    .arg(&mut gs.wlog),
                // The window's token scores: to be pooled into the scores, or the scores.
                Role::Score if window => {
                    let out = if pooled {
                        &mut gs.logits
                    } else {
                        &mut gs.scores
                    };
                    l.arg(&gs.q)
                        .arg(&gs.k)
                        .arg(&gs.lens)
                        .arg(&gs.stats)
                        .arg(&gs.wlog)
                        .arg(out)
                }
                Role::Pool => l.arg(&gs.logits).arg(&gs.lens).arg(&mut gs.scores),
                Role::Logits => l
                    .arg(&gs.q)
                    .arg(&gs.k)
                    .arg(&gs.lens)
                    .arg(&mut gs.logits)
                    .arg(&mut gs.stats),
                Role::Score if self.spec().source == Source::Exact => l
                    .arg(&gs.logits)
                    .arg(&gs.stats)
                    .arg(&gs.lens)
                    .arg(&mut gs.work)
                    .arg(&mut gs.scores),
                Role::Score => l
                    .arg(&gs.q)
                    .arg(&gs.kmax)
                    .arg(&gs.kmin)
                    .arg(&gs.lens)
                    .arg(&mut gs.scores),
                Role::TopK => l
                    .arg(&gs.scores)
                    .arg(&gs.lens)
                    .arg(&mut gs.work)
                    .arg(&mut gs.idx),
                // Exact scores leave the step's logits: the attention reads them
                // instead of the keys (the codegen's table).
                Role::Attend if self.spec().source == Source::Exact => l
                    .arg(&gs.q)
                    .arg(&gs.logits)
                    .arg(&gs.v)
                    .arg(&gs.idx)
                    .arg(&gs.lens)
                    .arg(&mut gs.part),
                Role::Attend => l
                    .arg(&gs.q)
                    .arg(&gs.k)
                    .arg(&gs.v)
                    .arg(&gs.idx)
                    .arg(&gs.lens)
                    .arg(&mut gs.part),
                Role::Combine => l.arg(&gs.part).arg(&mut gs.out),
                // The state is the scores buffer the top-k reads.
                Role::Accumulate => l
                    .arg(&gs.q)
                    .arg(&gs.k)
                    .arg(&gs.idx)
                    .arg(&mut gs.logits)
                    .arg(&mut gs.scores),
                Role::Append => l
                    .arg(&gs.k_new)
                    .arg(&gs.v_new)
                    .arg(&mut gs.k)
                    .arg(&mut gs.v)
                    .arg(&mut gs.kmax)
                    .arg(&mut gs.kmin)
                    .arg(&mut gs.lens),
            };
            // SAFETY: the arguments follow the entry's signature in
            // `attnc::codegen::nvptx::decode` (the table in its module docs), and every
            // buffer was allocated by `upload` with the sizes that table gives for this
            // spec; lengths were checked to lie in 1..=CONTEXT (and below CONTEXT before an
            // append, on the host's mirror of them), so every index the kernels form stays
            // inside its buffer. The grid and block are the entry's own.
            unsafe { l.launch(cfg) }.map_err(cuda)?;
        }
        Ok(())
    }

    /// Appends one token to every sequence on the device: `k_new`, `v_new` `[B, Hkv, D]`
    /// (rounded to the dtype, as the CPU executor's append rounds them), page metadata
    /// included. A full sequence is an error, as on the CPU.
    pub fn append(&self, gs: &mut GpuState, k_new: &[f32], v_new: &[f32]) -> Result<(), Error> {
        self.require(KernelKind::Decode, "append")?;
        let s = self.spec();
        let n = s.batch as usize * s.kv_heads as usize * s.head_dim as usize;
        let shape = format!(
            "[{}, {}, {}]: batch, KV heads, head dim",
            s.batch, s.kv_heads, s.head_dim
        );
        super::cache::check_values("k_new", k_new, n, &shape)?;
        super::cache::check_values("v_new", v_new, n, &shape)?;
        if let Some(b) = gs.lens_host.iter().position(|l| *l >= s.context) {
            return Err(Error::Input(format!(
                "sequence {b} already holds CONTEXT = {} tokens: the cache is full",
                s.context
            )));
        }
        let dt = s.dtype.name();
        self.stream
            .memcpy_htod(&to_half(dt, k_new), &mut gs.k_new)
            .map_err(cuda)?;
        self.stream
            .memcpy_htod(&to_half(dt, v_new), &mut gs.v_new)
            .map_err(cuda)?;
        self.launch_roles(gs, &[Role::Append])?;
        gs.lens_host.iter_mut().for_each(|l| *l += 1);
        Ok(())
    }

    /// The index lists of the last step.
    pub fn indices(&self, gs: &GpuState) -> Result<Indices, Error> {
        let s = self.spec();
        let data = self.stream.clone_dtoh(&gs.idx).map_err(cuda)?;
        Ok(Indices {
            shape: [
                s.batch as usize,
                s.sel_heads() as usize,
                s.capacity() as usize,
            ],
            data,
        })
    }

    /// The output `[B, Hq, D]` of the last step.
    pub fn output(&self, gs: &GpuState) -> Result<Vec<f32>, Error> {
        self.stream.clone_dtoh(&gs.out).map_err(cuda)
    }

    /// One step: query in, index lists and output back (decode kernels; a select-only
    /// kernel's step is [`GpuDecode::select`]).
    pub fn step(&self, gs: &mut GpuState, q: &[f32]) -> Result<(Indices, Vec<f32>), Error> {
        self.require(KernelKind::Decode, "step")?;
        self.step_by(gs, q, GpuDecode::launch)
    }

    /// Sets the query, launches the step with `launch`, waits, reads the results back.
    fn step_by(
        &self,
        gs: &mut GpuState,
        q: &[f32],
        launch: fn(&GpuDecode, &mut GpuState) -> Result<(), Error>,
    ) -> Result<(Indices, Vec<f32>), Error> {
        self.set_query(gs, q)?;
        launch(self, gs)?;
        self.stream.synchronize().map_err(cuda)?;
        Ok((self.indices(gs)?, self.output(gs)?))
    }

    /// One step as [`GpuDecode::step`], launched as a CUDA graph: the step's kernels are
    /// captured once per state (and module), then replayed with one launch, without the
    /// gaps between separately launched kernels. Shapes are fixed, so the graph stays
    /// valid across steps and appends.
    pub fn step_graphed(&self, gs: &mut GpuState, q: &[f32]) -> Result<(Indices, Vec<f32>), Error> {
        self.require(KernelKind::Decode, "step_graphed")?;
        self.step_by(gs, q, GpuDecode::launch_graph)
    }

    /// Launches the step's graph, capturing it first when `gs` has none from this module.
    fn launch_graph(&self, gs: &mut GpuState) -> Result<(), Error> {
        let id = Arc::as_ptr(&self._module) as usize;
        if gs.graph.as_ref().map(|g| g.0) != Some(id) {
            gs.graph = None;
            let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
            self.stream.begin_capture(mode).map_err(cuda)?;
            let launched = self.launch_roles(gs, STEP);
            let graph = self
                .stream
                .end_capture(CUgraphInstantiate_flags(0))
                .map_err(cuda)?;
            launched?;
            let graph = graph.ok_or_else(|| Error::Cuda("the captured step is empty".into()))?;
            graph.upload().map_err(cuda)?;
            gs.graph = Some((id, graph));
        }
        match &gs.graph {
            Some((_, g)) => g.launch().map_err(cuda),
            None => unreachable!("captured just above"),
        }
    }

    /// Median milliseconds of `runs` CUDA-event-timed graph launches of the step.
    pub fn time_graph(&self, gs: &mut GpuState, warmup: usize, runs: usize) -> Result<f64, Error> {
        median_event_ms(&self.stream, warmup, runs, &mut || self.launch_graph(gs))
    }

    /// Median milliseconds of `runs` CUDA-event-timed steps after `warmup`.
    pub fn time(&self, gs: &mut GpuState, warmup: usize, runs: usize) -> Result<f64, Error> {
        median_event_ms(&self.stream, warmup, runs, &mut || self.launch(gs))
    }

    /// Median milliseconds of each kernel of the step alone, in launch order.
    pub fn time_each(
        &self,
        gs: &mut GpuState,
        warmup: usize,
        runs: usize,
    ) -> Result<Vec<(Role, f64)>, Error> {
        STEP.iter()
            .copied()
            .filter(|r| self.module.entry(*r).is_some())
            .map(|r| {
                let ms = median_event_ms(&self.stream, warmup, runs, &mut || {
                    self.launch_roles(gs, &[r])
                })?;
                Ok((r, ms))
            })
            .collect()
    }
}
