//! The CPU code generator: kernel IR -> Cranelift IR -> machine code in memory (JIT).
//! One function per kernel computes one (batch, head, query tile); the runtime spreads
//! the calls over threads. See `abi.rs` for the calling convention.

pub mod abi;
pub mod emit;
pub mod expr;
pub mod libm;
pub mod lower;
pub mod tokens;

use std::collections::HashMap;

use cranelift_codegen::ir::{AbiParam, InstBuilder, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use self::abi::{Ctx, KernelFn};
use self::emit::{Em, F64, I64};
use self::expr::{Data, ExprGen, Libm};
use crate::ir::{Kernel, RegionId};
use crate::pattern::geometry::Geometry;
use crate::sema::spec::InputSpec;

/// A compiled kernel: machine code plus the data it points at.
pub struct CpuModule {
    module: Option<JITModule>,
    func: KernelFn,
    /// Per-head tables and document offsets the code reads by address.
    _data: Data,
    /// Bytes of scratch memory each concurrent call needs (aligned to `abi::SCRATCH_ALIGN`).
    pub scratch_bytes: usize,
    /// The Cranelift IR, when asked for (`--emit clif`).
    pub clif: Option<String>,
}

impl std::fmt::Debug for CpuModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuModule")
            .field("scratch_bytes", &self.scratch_bytes)
            .finish()
    }
}

impl Drop for CpuModule {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the only pointer into the module's code is `self.func`, which is
            // private and dies with `self`; no call can be running (calls borrow `self`).
            unsafe { m.free_memory() };
        }
    }
}

// SAFETY: the machine code and data are immutable after finalisation; calls share nothing
// but the read-only module (scratch and outputs are per call, see `call`).
unsafe impl Send for CpuModule {}
// SAFETY: as above; `&CpuModule` only reads.
unsafe impl Sync for CpuModule {}

impl CpuModule {
    /// Runs the kernel for one (batch, head, query tile).
    ///
    /// # Safety
    /// `ctx` must point at tensors of exactly the shapes the kernel was compiled for
    /// (`[batch, heads, tokens, dim]` f32, KV tensors with the KV heads), the schedule
    /// tables the kernel was compiled with, one variant index below the variant count per
    /// query head, the declared inputs, and for a kernel with `outputs lse;` an `lse` of
    /// `[batch, heads, tokens]` f32; `batch`, `head` and `query_tile` must be in
    /// range; `scratch` must be `scratch_bytes` writable bytes aligned to
    /// `abi::SCRATCH_ALIGN` and used by no other call at the same time; two concurrent
    /// calls must not write the same output rows (distinct (batch, head, query tile)).
    pub unsafe fn call(&self, ctx: &Ctx, batch: i64, head: i64, query_tile: i64, scratch: *mut u8) {
        // SAFETY: forwarded from the caller's contract above.
        unsafe { (self.func)(ctx as *const Ctx, batch, head, query_tile, scratch) }
    }
}

fn isa() -> Result<std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>, String> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v).map_err(|e| format!("cranelift flag {k}: {e}"))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    let builder = cranelift_native::builder()
        .map_err(|e| format!("this CPU is not supported by Cranelift: {e}"))?;
    builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| format!("cannot configure Cranelift: {e}"))
}

/// Compiles a kernel. `clif`: also keep the Cranelift IR text.
pub fn compile(
    k: &Kernel,
    g: &Geometry,
    inputs: &[InputSpec],
    clif: bool,
) -> Result<CpuModule, String> {
    let isa = isa()?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    for (name, ptr) in libm::symbols() {
        jb.symbol(name, ptr);
    }
    let mut module = JITModule::new(jb);
    let err = |e: cranelift_module::ModuleError| {
        format!("cannot compile `{}` for the CPU: {e}", k.info.name)
    };

    // Helpers the code calls.
    let mut f1 = module.make_signature();
    f1.params.push(AbiParam::new(F64));
    f1.returns.push(AbiParam::new(F64));
    let mut doc_sig = module.make_signature();
    doc_sig
        .params
        .extend([AbiParam::new(I64), AbiParam::new(I64), AbiParam::new(I64)]);
    doc_sig.returns.push(AbiParam::new(I64));
    let mut ids = HashMap::new();
    for name in ["attnc_tanh", "attnc_exp", "attnc_exp2", "attnc_log"] {
        ids.insert(
            name,
            module
                .declare_function(name, Linkage::Import, &f1)
                .map_err(err)?,
        );
    }
    let doc_id = module
        .declare_function("attnc_doc", Linkage::Import, &doc_sig)
        .map_err(err)?;

    let mut sig = module.make_signature();
    for _ in 0..5 {
        sig.params.push(AbiParam::new(I64));
    }
    let fid = module
        .declare_function(&k.info.name, Linkage::Export, &sig)
        .map_err(err)?;
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, fid.as_u32());
    let libm = Libm {
        tanh: module.declare_func_in_func(ids["attnc_tanh"], &mut ctx.func),
        exp: module.declare_func_in_func(ids["attnc_exp"], &mut ctx.func),
        exp2: module.declare_func_in_func(ids["attnc_exp2"], &mut ctx.func),
        log: module.declare_func_in_func(ids["attnc_log"], &mut ctx.func),
        doc: module.declare_func_in_func(doc_id, &mut ctx.func),
    };
    let plan = lower::plan(k);
    let mut data = Data::default();
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let p = b.block_params(entry).to_vec();
        let mut l = lower::Lower {
            em: Em::new(b),
            k,
            g,
            plan: &plan,
            inputs,
            gen: ExprGen {
                libm,
                data: &mut data,
                hoisted: HashMap::new(),
            },
            ctx: p[0],
            scratch: p[4],
            idx: HashMap::new(),
            qinfo: None,
            kinfo: None,
            class: None,
            head: p[2],
            program_ids: (p[1], p[2], p[3]),
        };
        l.region(RegionId(0));
        l.em.b.ins().return_(&[]);
        l.em.b.seal_all_blocks();
        l.em.b.finalize(module.target_config());
    }
    let text = clif.then(|| ctx.func.display().to_string());
    module
        .define_function(fid, &mut ctx)
        .map_err(|e| format!("cannot compile `{}` for the CPU: {e:?}", k.info.name))?;
    module.clear_context(&mut ctx);
    module.finalize_definitions().map_err(err)?;
    let code = module.get_finalized_function(fid);
    // SAFETY: `code` is the finalised function declared with `sig`: five i64 parameters
    // (pointers and indices are 64-bit on the hosts Cranelift supports), no result,
    // the platform's C calling convention; `KernelFn` is exactly that.
    let func: KernelFn = unsafe { std::mem::transmute::<*const u8, KernelFn>(code) };
    Ok(CpuModule {
        module: Some(module),
        func,
        _data: data,
        scratch_bytes: plan.bytes.max(64),
        clif: text,
    })
}
