//! The CUDA code generator: kernel IR -> LLVM IR (inkwell, LLVM 19) -> PTX for sm_80 or
//! sm_90 (sm_90a for the wgmma shapes). The kernel (see `attention/`) is a
//! FlashAttention-2 forward on tensor cores.
//!
//! Kernel parameters, in order: `q, k, v, o` (global, the kernel's dtype,
//! `[batch, heads, tokens, dim]`), `rows` (u32: per head variant the schedule's CSR offsets,
//! `total_tiles + 1` each, into the concatenated runs), `runs` (u32 triples
//! `(start, len, class)`), `head_variant` (u32 per query head), then one f32 pointer per
//! declared input, with `outputs lse;` the log-sum-exps (f32 `[batch, heads, tokens]`),
//! with tensor copies the K, V and Q tensor maps (128 bytes each), and with work lists
//! (`Tuning::work_lists`) the persistent kernel's lists (u32). Grid:
//! `(total_tiles * blocks_per_tile, heads, batch)`; block: `warps * 32` threads; shared
//! memory static up to 48 KiB, dynamic above.

pub mod asm;
pub mod attention;
pub mod decode;
pub mod expr;
pub mod gen;
pub mod tokens;

use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::{AddressSpace, OptimizationLevel};

use self::attention::{Attention, Config, Params};
use self::gen::Gen;
use crate::ir::Kernel;
use crate::pattern::geometry::Geometry;
use crate::sema::spec::InputSpec;

/// GPU architectures the backend emits PTX for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Sm80,
    Sm90,
    /// sm_90 with its architecture-specific instructions (`wgmma`): runs on compute
    /// capability 9.0 only. Chosen by a `wgmma` tuning, never asked for directly.
    Sm90a,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
            Arch::Sm90a => "sm_90a",
        }
    }

    pub fn from_name(s: &str) -> Option<Arch> {
        match s {
            "sm_80" => Some(Arch::Sm80),
            "sm_90" => Some(Arch::Sm90),
            "sm_90a" => Some(Arch::Sm90a),
            _ => None,
        }
    }
}

/// A compiled GPU kernel.
#[derive(Clone, Debug)]
pub struct PtxModule {
    /// The kernel's entry name in the PTX.
    pub entry: String,
    pub arch: Arch,
    pub ptx: String,
    /// The optimised LLVM IR (`--emit llvm`).
    pub llvm: String,
    pub config: Config,
}

/// The PTX entry name for a kernel name (identifiers are already C-like).
pub fn entry_name(kernel: &str) -> String {
    format!("attnc_{kernel}")
}

/// The NVPTX target machine for `arch` (PTX ISA 8.0).
pub(crate) fn target_machine(arch: Arch) -> Result<TargetMachine, String> {
    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target =
        Target::from_triple(&triple).map_err(|e| format!("LLVM has no NVPTX target: {e}"))?;
    target
        .create_target_machine(
            &triple,
            arch.name(),
            "+ptx80",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| "cannot create the NVPTX target machine".to_string())
}

/// An empty module for `tm`.
pub(crate) fn new_module<'c>(cx: &'c Context, tm: &TargetMachine, name: &str) -> Module<'c> {
    let m = cx.create_module(name);
    m.set_triple(&TargetTriple::create("nvptx64-nvidia-cuda"));
    m.set_data_layout(&tm.get_target_data().get_data_layout());
    m
}

/// Verifies, optimises (O3) and emits: the optimised LLVM IR and the PTX.
pub(crate) fn finish(
    m: &Module,
    tm: &TargetMachine,
    name: &str,
) -> Result<(String, String), String> {
    m.verify()
        .map_err(|e| format!("invalid LLVM IR for `{name}`: {}", e.to_string()))?;
    m.run_passes("default<O3>", tm, PassBuilderOptions::create())
        .map_err(|e| format!("LLVM passes: {e}"))?;
    let llvm = m.print_to_string().to_string();
    let buf = tm
        .write_to_memory_buffer(m, FileType::Assembly)
        .map_err(|e| format!("PTX emission: {e}"))?;
    let ptx = String::from_utf8_lossy(buf.as_slice())
        .trim_end_matches('\0')
        .to_string();
    Ok((llvm, ptx))
}

/// Compiles the kernel for `arch` with the default block shape.
pub fn compile(
    k: &Kernel,
    geo: &Geometry,
    inputs: &[InputSpec],
    arch: Arch,
) -> Result<PtxModule, String> {
    compile_tuned(k, geo, inputs, arch, attention::default_tuning(k))
}

/// Compiles the kernel for `arch` with a given block shape. A `wgmma` shape needs sm_90 and
/// is emitted for sm_90a.
pub fn compile_tuned(
    k: &Kernel,
    geo: &Geometry,
    inputs: &[InputSpec],
    arch: Arch,
    tuning: attention::Tuning,
) -> Result<PtxModule, String> {
    let cfg = attention::config_for(k, tuning)?;
    let arch = match (tuning.wgmma, arch) {
        (false, a) => a,
        (true, Arch::Sm90 | Arch::Sm90a) => Arch::Sm90a,
        (true, a) => {
            return Err(format!(
                "block shape {} needs sm_90 (wgmma), not {}",
                tuning.name(),
                a.name()
            ))
        }
    };
    if cfg.shape.tma && !attention::tensor_copies_fit(geo) {
        return Err(format!(
            "block shape {}: tensor copies need the tiled token order",
            tuning.name()
        ));
    }
    let tm = target_machine(arch)?;
    let cx = Context::create();
    let m = new_module(&cx, &tm, &k.info.name);
    let gptr = cx.ptr_type(AddressSpace::from(1u16));
    // q k v o rows runs head_variant, the inputs, the log-sum-exps where the kernel writes
    // them, with tensor copies the tensor maps, and with work lists the work lists.
    let lse = k.writes_lse();
    let work = cfg.shape.work_lists();
    let n_params =
        7 + inputs.len() + usize::from(lse) + usize::from(cfg.shape.tma) + usize::from(work);
    let params: Vec<inkwell::types::BasicMetadataTypeEnum> = vec![gptr.into(); n_params];
    let fn_ty = cx.void_type().fn_type(&params, false);
    let entry = entry_name(&k.info.name);
    let f = m.add_function(&entry, fn_ty, None);
    // PTX kernels need calling convention 71 (ptx_kernel) for IR built in memory.
    f.set_call_conventions(71);
    let entry_bb = cx.append_basic_block(f, "entry");
    let b = cx.create_builder();
    b.position_at_end(entry_bb);
    // Static shared memory up to 48 KiB; above, an `extern __shared__` array sized at launch.
    let smem = if cfg.dynamic_smem {
        let ty = cx.i8_type().array_type(0);
        let g = m.add_global(ty, Some(AddressSpace::from(3u16)), "attnc_dsmem");
        g.set_linkage(Linkage::External);
        g.set_alignment(128);
        g
    } else {
        let ty = cx.i8_type().array_type(cfg.smem_bytes);
        let g = m.add_global(ty, Some(AddressSpace::from(3u16)), "attnc_smem");
        g.set_linkage(Linkage::Internal);
        g.set_initializer(&ty.get_undef());
        g.set_alignment(128);
        g
    };
    let g = Gen {
        cx: &cx,
        m,
        b,
        f,
        i32t: cx.i32_type(),
        i64t: cx.i64_type(),
        i8t: cx.i8_type(),
        f32t: cx.f32_type(),
        entry: entry_bb,
    };
    let p = |i: u32| {
        f.get_nth_param(i)
            .map(|x| x.into_pointer_value())
            .ok_or_else(|| "missing kernel parameter".to_string())
    };
    // The optional parameters after the inputs, in order: each present one takes the next.
    let mut next = 7 + inputs.len() as u32;
    let mut optional = |present: bool| -> Result<Option<_>, String> {
        if !present {
            return Ok(None);
        }
        next += 1;
        p(next - 1).map(Some)
    };
    let params = Params {
        q: p(0)?,
        k: p(1)?,
        v: p(2)?,
        o: p(3)?,
        rows: p(4)?,
        runs: p(5)?,
        head_variant: p(6)?,
        inputs: (0..inputs.len() as u32)
            .map(|i| p(7 + i))
            .collect::<Result<_, _>>()?,
        lse: optional(lse)?,
        tmaps: optional(cfg.shape.tma)?,
        work: optional(work)?,
    };
    if cfg.shape.blocks_per_sm > 0 || cfg.shape.ws {
        // The block size and the blocks an SM must hold: ptxas sizes the registers to fit
        // (warp-specialised: 384 threads, so at most 168 registers each).
        for (key, v) in [
            ("maxntidx", cfg.threads()),
            ("minctasm", cfg.shape.blocks_per_sm.max(1)),
        ] {
            let note = cx.metadata_node(&[
                f.as_global_value().as_pointer_value().into(),
                cx.metadata_string(key).into(),
                cx.i32_type().const_int(u64::from(v), false).into(),
            ]);
            g.m.add_global_metadata("nvvm.annotations", &note)
                .map_err(|e| format!("LLVM: {e}"))?;
        }
    }
    let mut att = Attention::new(&g, k, geo, &cfg, inputs, params, smem.as_pointer_value());
    att.emit()?;
    g.b.build_return(None).map_err(|e| format!("LLVM: {e}"))?;
    let (llvm, ptx) = finish(&g.m, &tm, &k.info.name)?;
    Ok(PtxModule {
        entry,
        arch,
        ptx,
        llvm,
        config: cfg,
    })
}
