//! Running kernels on NVIDIA GPUs through the CUDA driver API (cudarc, loaded at run time).
//! Every launch is checked against the kernel's manifest; driver errors come back as
//! `Error::Cuda` with the driver's text. Without a driver, `Gpu::open` says so and callers
//! skip GPU work.

use std::sync::Arc;

use attnc::codegen::nvptx::attention::Tuning;
use attnc::codegen::nvptx::Arch;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::artefact::GpuArtefact;
use crate::{Error, Manifest, TensorRef};

/// A driver error as `Error::Cuda`.
pub(crate) fn cuda(e: impl std::fmt::Display) -> Error {
    Error::Cuda(e.to_string())
}

/// A GPU with a context and a stream.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
}

impl Gpu {
    /// The first GPU, or `Ok(None)` when there is no CUDA driver on this machine.
    pub fn open() -> Result<Option<Gpu>, Error> {
        // SAFETY: only checks whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Ok(None);
        }
        let ctx = CudaContext::new(0).map_err(cuda)?;
        // SAFETY: the runtime runs everything on the one stream below, so no buffer is
        // ever used by two streams and cudarc's cross-stream events are not needed.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own (not the legacy default stream): it can be captured into a
        // CUDA graph (decode steps, `GpuDecode::step_graphed`).
        let stream = ctx.new_stream().map_err(cuda)?;
        Ok(Some(Gpu { ctx, stream }))
    }

    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// The architecture to compile for: sm_90 from compute capability 9.0, else sm_80.
    pub fn arch(&self) -> Arch {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR;
        match self.ctx.attribute(MAJOR) {
            Ok(m) if m >= 9 => Arch::Sm90,
            _ => Arch::Sm80,
        }
    }

    /// Compute capability 9.0 exactly: sm_90a code (`wgmma`) runs here.
    pub fn has_wgmma(&self) -> bool {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR;
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR;
        matches!(
            (self.ctx.attribute(MAJOR), self.ctx.attribute(MINOR)),
            (Ok(9), Ok(0))
        )
    }
}

/// Host f32 -> the kernel's 16-bit element type (bits).
pub fn to_half(dtype: &str, x: &[f32]) -> Vec<u16> {
    use rayon::prelude::*;
    // In parallel: 805 M values (a 512x512 canvas's K) took 4.6 s on one core.
    match dtype {
        "f16" => x
            .par_iter()
            .map(|v| half::f16::from_f32(*v).to_bits())
            .collect(),
        _ => x
            .par_iter()
            .map(|v| half::bf16::from_f32(*v).to_bits())
            .collect(),
    }
}

pub fn from_half(dtype: &str, x: &[u16]) -> Vec<f32> {
    match dtype {
        "f16" => x
            .iter()
            .map(|v| half::f16::from_bits(*v).to_f32())
            .collect(),
        _ => x
            .iter()
            .map(|v| half::bf16::from_bits(*v).to_f32())
            .collect(),
    }
}

/// A kernel loaded on a GPU with its schedule tables.
pub struct CudaKernel {
    pub artefact: GpuArtefact,
    /// The artefact's launch shape, read once.
    shape: Tuning,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    func: CudaFunction,
    rows: CudaSlice<u32>,
    runs: CudaSlice<u32>,
    head_variant: CudaSlice<u32>,
    /// The persistent kernel's blocks (one an SM, at most one a work item) and, for a
    /// shape with work lists, the lists dealt to them (`work_list`).
    persistent: Option<(u32, Option<CudaSlice<u32>>)>,
}

/// Device buffers of one call.
pub struct DeviceArgs {
    pub q: CudaSlice<u16>,
    pub k: CudaSlice<u16>,
    pub v: CudaSlice<u16>,
    pub o: CudaSlice<u16>,
    pub inputs: Vec<CudaSlice<f32>>,
    /// The rows' log-sum-exps (`outputs lse;`, `[batch, heads, tokens]` f32).
    pub lse: Option<CudaSlice<f32>>,
    /// The K, V and Q tensor maps of the last kernel with tensor copies launched on these
    /// buffers, and the rows of a box they were made for.
    tmaps: Option<(u32, CudaSlice<u64>)>,
}

impl CudaKernel {
    pub fn load(gpu: &Gpu, artefact: GpuArtefact) -> Result<CudaKernel, Error> {
        // The GPU code writes `o` and the log-sum-exps only.
        if let Some((name, _)) = artefact.manifest.outputs.iter().find(|(n, _)| n != "lse") {
            return Err(Error::Input(format!(
                "the artefact of `{}` lists the output `{name}`, which the CUDA backend does not write yet; run it with --backend cpu",
                artefact.manifest.kernel
            )));
        }
        let module = gpu
            .ctx
            .load_module(Ptx::from_src(artefact.ptx.clone()))
            .map_err(|e| {
                let path = std::env::temp_dir().join(format!("{}.ptx", artefact.entry));
                let _ = std::fs::write(&path, &artefact.ptx);
                Error::Cuda(format!(
                    "loading the PTX of `{}` failed: {e}; reproduce with: ptxas -arch={} {}",
                    artefact.manifest.kernel,
                    artefact.arch,
                    path.display()
                ))
            })?;
        let func = module.load_function(&artefact.entry).map_err(cuda)?;
        let shape = Tuning::parse(&artefact.shape).ok_or_else(|| {
            Error::Cuda(format!(
                "the artefact of `{}` names an unknown launch shape `{}`",
                artefact.manifest.kernel, artefact.shape
            ))
        })?;
        if artefact.dynamic_smem {
            use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYN;
            func.set_attribute(MAX_DYN, artefact.smem_bytes as i32)
                .map_err(cuda)?;
        }
        // A shape that asks for several blocks an SM asks for their shared memory too
        // (the carveout is a hint: all shared, the rest L1).
        if shape.blocks_per_sm > 1 {
            use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT as CARVEOUT;
            func.set_attribute(CARVEOUT, 100).map_err(cuda)?;
        }
        let s = &gpu.stream;
        let rows = s.clone_htod(&artefact.rows).map_err(cuda)?;
        let runs = s.clone_htod(&artefact.runs).map_err(cuda)?;
        let head_variant = s.clone_htod(&artefact.head_variant).map_err(cuda)?;
        let persistent = if shape.persistent {
            // One block an SM (at most one a work item) walks the work items: in turn
            // (the kernel knows their count) or, with work lists, the list dealt to it.
            use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT as SMS;
            let sms = gpu.stream.context().attribute(SMS).map_err(cuda)?;
            let m = &artefact.manifest;
            let items = artefact.grid_x * m.heads as u32 * m.batch as u32;
            let blocks = items.min(sms.max(1) as u32).max(1);
            let lists = if shape.work_lists() {
                let costs = crate::work_list::item_costs(&artefact, shape.bm)?;
                let lists = crate::work_list::deal(&costs, blocks);
                Some(s.clone_htod(&lists).map_err(cuda)?)
            } else {
                None
            };
            Some((blocks, lists))
        } else {
            None
        };
        Ok(CudaKernel {
            artefact,
            shape,
            stream: gpu.stream.clone(),
            _module: module,
            func,
            rows,
            runs,
            head_variant,
            persistent,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.artefact.manifest
    }

    /// The launch shape it was compiled for.
    pub fn shape(&self) -> Tuning {
        self.shape
    }

    /// Uploads host tensors (checked against the manifest) into device buffers.
    pub fn upload(
        &self,
        q: TensorRef,
        k: TensorRef,
        v: TensorRef,
        inputs: &[TensorRef],
    ) -> Result<DeviceArgs, Error> {
        let m = self.manifest();
        m.check(q, k, v, inputs)?;
        let s = &self.stream;
        let up = |x: &[f32]| s.clone_htod(&to_half(&m.dtype, x)).map_err(cuda);
        let o_len: usize = m.o_shape().iter().product();
        Ok(DeviceArgs {
            q: up(q.data)?,
            k: up(k.data)?,
            v: up(v.data)?,
            o: s.alloc_zeros::<u16>(o_len).map_err(cuda)?,
            inputs: inputs
                .iter()
                .map(|t| s.clone_htod(t.data).map_err(cuda))
                .collect::<Result<_, _>>()?,
            lse: match m.lse_shape() {
                Some(shape) => Some(s.alloc_zeros::<f32>(shape.iter().product()).map_err(cuda)?),
                None => None,
            },
            tmaps: None,
        })
    }

    /// The K, V and Q tensor maps for a kernel with tensor copies of `rows`-row boxes:
    /// each tensor as `[batch * heads * tokens, dim]` 16-bit rows (K and V with the KV
    /// heads), boxes of 64 elements x `rows`, swizzled by 128 bytes (the layout the wgmma
    /// descriptors read; only the persistent overlapped kernel copies Q). Made when the
    /// box changes, kept in `a`.
    fn tensor_maps(&self, a: &mut DeviceArgs, rows: u32) -> Result<(), Error> {
        use cudarc::driver::sys::{
            CUtensorMapDataType_enum as Dt, CUtensorMapFloatOOBfill_enum as Oob,
            CUtensorMapInterleave_enum as Il, CUtensorMapL2promotion_enum as L2,
            CUtensorMapSwizzle_enum as Sw,
        };
        use cudarc::driver::DevicePtr;
        if a.tmaps.as_ref().is_some_and(|(r, _)| *r == rows) {
            return Ok(());
        }
        let m = self.manifest();
        let dtype = if m.dtype == "f16" {
            Dt::CU_TENSOR_MAP_DATA_TYPE_FLOAT16
        } else {
            Dt::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
        };
        let kv_lines = (m.batch * m.kv_heads * m.tokens) as u64;
        let q_lines = (m.batch * m.heads * m.tokens) as u64;
        let mut words = vec![];
        for (buf, dim, lines) in [
            (&a.k, m.head_dim, kv_lines),
            (&a.v, m.value_dim, kv_lines),
            (&a.q, m.head_dim, q_lines),
        ] {
            let (ptr, _sync) = buf.device_ptr(&self.stream);
            let dims = [dim as u64, lines];
            let strides = [dim as u64 * 2];
            let boxes = [64u32, rows];
            let steps = [1u32, 1];
            let mut map = std::mem::MaybeUninit::<cudarc::driver::sys::CUtensorMap>::uninit();
            // SAFETY: every pointer names a live array of the length the call reads (rank
            // 2: two dims, one stride, two box and element extents); `ptr` is the device
            // buffer of `dims[1]` rows of `dims[0]` 16-bit elements (checked against the
            // manifest at upload); the call only writes `map`.
            let r = unsafe {
                cudarc::driver::sys::cuTensorMapEncodeTiled(
                    map.as_mut_ptr(),
                    dtype,
                    2,
                    ptr as *mut std::ffi::c_void,
                    dims.as_ptr(),
                    strides.as_ptr(),
                    boxes.as_ptr(),
                    steps.as_ptr(),
                    Il::CU_TENSOR_MAP_INTERLEAVE_NONE,
                    Sw::CU_TENSOR_MAP_SWIZZLE_128B,
                    L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                    Oob::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
                )
            };
            if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                return Err(Error::Cuda(format!("cuTensorMapEncodeTiled: {r:?}")));
            }
            // SAFETY: a successful call initialised the map.
            words.extend(unsafe { map.assume_init() }.opaque);
        }
        let dev = self.stream.clone_htod(&words).map_err(cuda)?;
        a.tmaps = Some((rows, dev));
        Ok(())
    }

    /// Launches on device buffers (sizes checked against the manifest).
    pub fn launch(&self, a: &mut DeviceArgs) -> Result<(), Error> {
        let m = self.manifest();
        let need = |name: &str, have: usize, shape: [usize; 4]| {
            let want: usize = shape.iter().product();
            if have != want {
                Err(Error::Shape(format!(
                    "device buffer {name} holds {have} elements; expected {want} = {shape:?}"
                )))
            } else {
                Ok(())
            }
        };
        need("q", a.q.len(), m.q_shape())?;
        need("k", a.k.len(), m.k_shape())?;
        need("v", a.v.len(), m.v_shape())?;
        need("o", a.o.len(), m.o_shape())?;
        if a.inputs.len() != m.inputs.len() {
            return Err(Error::Shape(format!(
                "{} input buffers for {} inputs",
                a.inputs.len(),
                m.inputs.len()
            )));
        }
        m.check_lse(a.lse.as_ref().map(|l| l.len()))?;
        if self.shape.tma {
            self.tensor_maps(a, self.shape.bn)?;
        }
        let grid_dim = if let Some((blocks, _)) = &self.persistent {
            (*blocks, 1, 1)
        } else {
            (self.artefact.grid_x, m.heads as u32, m.batch as u32)
        };
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: (self.artefact.block, 1, 1),
            shared_mem_bytes: if self.artefact.dynamic_smem {
                self.artefact.smem_bytes
            } else {
                0
            },
        };
        let mut b = self.stream.launch_builder(&self.func);
        b.arg(&a.q)
            .arg(&a.k)
            .arg(&a.v)
            .arg(&mut a.o)
            .arg(&self.rows)
            .arg(&self.runs)
            .arg(&self.head_variant);
        for i in &a.inputs {
            b.arg(i);
        }
        if let Some(lse) = &mut a.lse {
            b.arg(lse);
        }
        if let (true, Some((_, maps))) = (self.shape.tma, &a.tmaps) {
            b.arg(maps);
        }
        if let Some((_, Some(lists))) = &self.persistent {
            b.arg(lists);
        }
        // SAFETY: the argument list is the kernel's signature (see `codegen::nvptx`): four
        // tensors whose sizes were just checked against the manifest the kernel was compiled
        // for, the schedule tables compiled with it, one pointer per declared input (sizes
        // checked at upload), the log-sum-exps where the kernel writes them (size checked
        // above), for tensor copies the maps of K, V and Q made above, and for work lists
        // the lists dealt for this grid (each item once, every entry below the item
        // count); the grid is the one the kernel expects. The kernel reads and writes only
        // inside these buffers (missing rows are zero-filled, not read; the tensor copies
        // stay in the maps' bounds and zero-fill past them).
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// Fills the output with NaN (every byte 0xff: 0xffff is a NaN in bf16 and in f16), so
    /// that an element the kernel never writes cannot pass for a result. A device memset:
    /// the host copy it replaces was 1.6 GB at 262144 tokens, on every shape tuned.
    pub fn poison(&self, a: &mut DeviceArgs) -> Result<(), Error> {
        self.stream.context().bind_to_thread().map_err(cuda)?;
        self.fill_ff(&mut a.o)?;
        // The log-sum-exps likewise (0xffffffff is a NaN in f32).
        if let Some(lse) = &mut a.lse {
            self.fill_ff(lse)?;
        }
        Ok(())
    }

    /// Sets every byte of a buffer of plain numbers (u16, f32) to 0xff, on the stream.
    fn fill_ff<T>(&self, buf: &mut CudaSlice<T>) -> Result<(), Error> {
        use cudarc::driver::DevicePtrMut;
        let bytes = buf.len() * std::mem::size_of::<T>();
        let (dptr, _record) = buf.device_ptr_mut(&self.stream);
        // SAFETY: `dptr` is the buffer, allocated on this stream and alive while `buf` is
        // borrowed; the memset covers exactly its bytes; the callers' element types (u16,
        // f32) are valid with every pattern of bits.
        unsafe {
            cudarc::driver::result::memset_d8_async(dptr, 0xff, bytes, self.stream.cu_stream())
        }
        .map_err(cuda)
    }

    /// Copies the output back as f32.
    pub fn download(&self, a: &DeviceArgs) -> Result<Vec<f32>, Error> {
        let bits = self.stream.clone_dtoh(&a.o).map_err(cuda)?;
        Ok(from_half(&self.manifest().dtype, &bits))
    }

    /// Copies the log-sum-exps back (`outputs lse;`; none for a kernel without them).
    pub fn download_lse(&self, a: &DeviceArgs) -> Result<Option<Vec<f32>>, Error> {
        a.lse
            .as_ref()
            .map(|l| self.stream.clone_dtoh(l).map_err(cuda))
            .transpose()
    }

    /// A sample of the output, as f32 (after the stream finishes): `segments` runs of
    /// `run` consecutive values, evenly spread (every value when the output is smaller),
    /// so that a large output is not copied back whole to be compared.
    pub fn download_sample(
        &self,
        a: &DeviceArgs,
        (segments, run): (usize, usize),
    ) -> Result<Vec<f32>, Error> {
        let n = a.o.len();
        let (segments, run) = (segments.max(1), run.max(1));
        let bits = if n <= segments * run {
            self.stream.clone_dtoh(&a.o).map_err(cuda)?
        } else {
            let mut out = Vec::with_capacity(segments * run);
            for i in 0..segments {
                let start = i * (n - run) / (segments - 1).max(1);
                let part = self
                    .stream
                    .clone_dtoh(&a.o.slice(start..start + run))
                    .map_err(cuda)?;
                out.extend(part);
            }
            out
        };
        Ok(from_half(&self.manifest().dtype, &bits))
    }

    /// Upload, launch, download: `out` is `[batch, heads, tokens, value_dim]` f32.
    pub fn run(
        &self,
        q: TensorRef,
        k: TensorRef,
        v: TensorRef,
        inputs: &[TensorRef],
        out: &mut [f32],
    ) -> Result<(), Error> {
        self.run_with_lse(q, k, v, inputs, out, None)
    }

    /// `run` for a kernel that also writes its rows' log-sum-exps (`outputs lse;`) into
    /// `lse` (`[batch, heads, tokens]`; given exactly when the kernel writes them).
    pub fn run_with_lse(
        &self,
        q: TensorRef,
        k: TensorRef,
        v: TensorRef,
        inputs: &[TensorRef],
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<(), Error> {
        let want: usize = self.manifest().o_shape().iter().product();
        if out.len() != want {
            return Err(Error::Shape(format!(
                "the output holds {} values; expected {want}",
                out.len()
            )));
        }
        self.manifest().check_lse(lse.as_ref().map(|l| l.len()))?;
        let mut a = self.upload(q, k, v, inputs)?;
        self.poison(&mut a)?;
        self.launch(&mut a)?;
        self.stream.synchronize().map_err(cuda)?;
        out.copy_from_slice(&self.download(&a)?);
        if let (Some(dst), Some(got)) = (lse, self.download_lse(&a)?) {
            dst.copy_from_slice(&got);
        }
        Ok(())
    }

    /// Median milliseconds of `runs` timed launches after `warmup`, with CUDA events.
    pub fn time(&self, a: &mut DeviceArgs, warmup: usize, runs: usize) -> Result<f64, Error> {
        median_event_ms(&self.stream, warmup, runs, &mut || self.launch(a))
    }

    /// Median milliseconds and run count under the peers' protocol (see [`do_bench_ms`]).
    pub fn time_do_bench(&self, a: &mut DeviceArgs, rep_ms: f64) -> Result<(f64, usize), Error> {
        do_bench_ms(&self.stream, rep_ms, &mut || self.launch(a))
    }
}

/// Bytes zeroed before each timed run by [`do_bench_ms`]: triton.testing.do_bench's 256 MB,
/// more than the H200's 50 MB L2, so no run finds the previous run's data there.
const L2_FLUSH_BYTES: usize = 256 << 20;

/// Median milliseconds of `launch` timed as `triton.testing.do_bench` times the peers
/// (bench/gpu/side_by_side.py): five runs estimate one run's time, warm-up runs fill
/// `rep_ms / 4` ms, then as many runs as fill `rep_ms` ms (at least one), each after an
/// L2 flush, each between two CUDA events. Returns the median and the number of timed runs.
/// The same protocol on both sides also means the same length of sustained load, which
/// matters on a GPU whose clock falls under long load (bench/RESULTS.md, "Power, the
/// peers' timing protocol").
pub(crate) fn do_bench_ms(
    stream: &Arc<CudaStream>,
    rep_ms: f64,
    launch: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<(f64, usize), Error> {
    let mut flush = stream.alloc_zeros::<u8>(L2_FLUSH_BYTES).map_err(cuda)?;
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    launch()?;
    stream.synchronize().map_err(cuda)?;
    let start = stream.record_event(flags).map_err(cuda)?;
    for _ in 0..5 {
        stream.memset_zeros(&mut flush).map_err(cuda)?;
        launch()?;
    }
    let end = stream.record_event(flags).map_err(cuda)?;
    end.synchronize().map_err(cuda)?;
    let estimate = f64::from(start.elapsed_ms(&end).map_err(cuda)?) / 5.0;
    let count = |ms: f64| ((ms / estimate.max(1e-6)) as usize).max(1);
    for _ in 0..count(rep_ms / 4.0) {
        launch()?;
    }
    let mut marks = vec![];
    for _ in 0..count(rep_ms) {
        stream.memset_zeros(&mut flush).map_err(cuda)?;
        let s = stream.record_event(flags).map_err(cuda)?;
        launch()?;
        marks.push((s, stream.record_event(flags).map_err(cuda)?));
    }
    stream.synchronize().map_err(cuda)?;
    let mut times = marks
        .iter()
        .map(|(s, e)| s.elapsed_ms(e).map(f64::from).map_err(cuda))
        .collect::<Result<Vec<_>, _>>()?;
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times.len()))
}

/// Median milliseconds of `runs` launches on `stream`, each between two CUDA events, after
/// `warmup` untimed ones.
pub(crate) fn median_event_ms(
    stream: &CudaStream,
    warmup: usize,
    runs: usize,
    launch: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<f64, Error> {
    for _ in 0..warmup {
        launch()?;
    }
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = vec![];
    for _ in 0..runs.max(1) {
        let start = stream.record_event(flags).map_err(cuda)?;
        launch()?;
        let end = stream.record_event(flags).map_err(cuda)?;
        end.synchronize().map_err(cuda)?;
        times.push(f64::from(start.elapsed_ms(&end).map_err(cuda)?));
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
