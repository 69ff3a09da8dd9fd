//! The CUDA code generator for decode-step kernels (`kernel K = decode(S)`): one PTX module
//! with four entries that together run rules 1 to 8 of `docs/kv-selection.md` on the GPU.
//! Every shape is a constant of the instantiated [`SelectSpec`], so that launches keep fixed
//! shapes (CUDA graphs stay valid) and the kernels index without runtime shape arithmetic.
//!
//! | entry | grid | block | parameters (global pointers) |
//! | --- | --- | --- | --- |
//! | `<k>_score` (page_bound only) | `(ceil(U/4), Hsel, B)` | 128 | `q` f32 `[B,Hq,D]`, `kmax`, `kmin` dtype `[B,Hkv,U,D]`, `lens` u32 `[B]`, `scores` f32 `[B,Hsel,U]` |
//! | `<k>_topk` | `(Hsel, B)` | 1024 | `scores`, `lens`, `idx` i32 `[B,Hsel,K]` |
//! | `<k>_attend` | `(chunks, Hkv, B)` | 128 | `q`, `k`, `v` dtype `[B,Hkv,C,D]`, `idx`, `lens`, `part` f32 `[B,Hq,chunks,D+2]` |
//! | `<k>_combine` | `(Hq, B)` | `D` | `part`, `out` f32 `[B,Hq,D]` |
//!
//! `U` = units of the full cache, `K` = the list capacity, `chunks` = `ceil(K / split)`. The
//! queries arrive rounded to the dtype (as the CPU executor rounds them). Scores that decide
//! the selection are summed in the lane-tree order the CPU executor uses (rule 1), and the
//! top-k keeps the same units as the CPU's sort order, ties to the lower index.

mod attend;
mod combine;
mod score;
mod topk;

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{FunctionValue, PointerValue};
use inkwell::AddressSpace;

use super::gen::Gen;
use super::{finish, new_module, target_machine, Arch};
use crate::select::spec::{Budget, HeadReduce, KernelKind, Reduce, SelectSpec, Source};
use crate::sema::program::DType;

/// What an entry of a decode module does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Score,
    TopK,
    Attend,
    Combine,
}

/// One entry with its launch shape.
#[derive(Clone, Debug)]
pub struct DecodeEntry {
    pub role: Role,
    pub name: String,
    pub grid: [u32; 3],
    pub block: u32,
}

/// A compiled decode step.
#[derive(Clone, Debug)]
pub struct DecodeModule {
    pub arch: Arch,
    pub ptx: String,
    pub llvm: String,
    /// In launch order.
    pub entries: Vec<DecodeEntry>,
    /// Split-K chunks per index list.
    pub chunks: u32,
}

impl DecodeModule {
    pub fn entry(&self, role: Role) -> Option<&DecodeEntry> {
        self.entries.iter().find(|e| e.role == role)
    }
}

/// The constants every kernel is built from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub b: u32,
    pub hq: u32,
    pub hkv: u32,
    pub g: u32,
    pub d: u32,
    pub c: u32,
    pub p: u32,
    pub units: u32,
    pub hsel: u32,
    pub cap: u32,
    pub split: u32,
    pub chunks: u32,
    pub sinks: u32,
    pub recent: u32,
    pub bf16: bool,
    /// `scale * log2(e)`: logits in base 2.
    pub scale_log2: f64,
    pub per_kv: bool,
    pub op: Reduce,
    pub source: Source,
}

impl Shape {
    fn of(s: &SelectSpec) -> Shape {
        let cap = s.capacity();
        let split = s.split.max(1);
        Shape {
            b: s.batch,
            hq: s.q_heads,
            hkv: s.kv_heads,
            g: s.group(),
            d: s.head_dim,
            c: s.context,
            p: s.page,
            units: s.units(),
            hsel: s.sel_heads(),
            cap,
            split,
            chunks: cap.div_ceil(split),
            sinks: s.sinks,
            recent: s.recent,
            bf16: s.dtype == DType::Bf16,
            scale_log2: s.scale * std::f64::consts::LOG2_E,
            per_kv: matches!(s.heads, HeadReduce::PerKvGroup(_)),
            op: s.heads.op(),
            source: s.source,
        }
    }

    /// The query heads of list `sel`: `(first, count)` as constants or from `sel`.
    pub fn heads_per_list(&self) -> u32 {
        if self.per_kv {
            self.g
        } else {
            self.hq
        }
    }
}

/// Lanes that share one token in the attention kernel (8 channels, 16 bytes, each).
pub(crate) fn lanes_per_token(d: u32) -> u32 {
    d / 8
}

/// Why `spec` cannot run on the GPU yet, if it cannot: these kernels run on the CPU only.
pub fn gpu_support(s: &SelectSpec) -> Result<(), String> {
    let why = |what: &str| {
        Err(format!(
            "`{}` runs on the CPU only so far: the CUDA backend has no {what} yet (docs/kv-selection.md, \"GPU coverage\")",
            s.kernel
        ))
    };
    if s.kind != KernelKind::Decode {
        return why("select-only kernels");
    }
    match s.source {
        Source::None | Source::PageBound => {}
        other => {
            return why(&format!(
                "`{}` scoring",
                crate::select::spec::source_name(other)
            ))
        }
    }
    if !matches!(s.budget, Budget::Tokens(_)) {
        return why("ratio budgets");
    }
    if s.dtype == DType::F32 {
        return why("f32 caches");
    }
    let d = s.head_dim;
    if !(8..=256).contains(&d) || d % 8 != 0 || !(d / 8).is_power_of_two() {
        return why(&format!(
            "head dim {d} (it takes 8, 16, 32, 64, 128 or 256)"
        ));
    }
    if s.source == Source::PageBound && d % 32 != 0 {
        return why(&format!("page bound over head dim {d} (a multiple of 32)"));
    }
    let sh = Shape::of(s);
    if attend::smem_bytes(&sh) > 48 * 1024 {
        return why(&format!(
            "attention over {} query heads per KV head at head dim {d}",
            sh.g
        ));
    }
    Ok(())
}

/// Compiles the decode step of `spec` for `arch`.
pub fn compile(spec: &SelectSpec, arch: Arch) -> Result<DecodeModule, String> {
    gpu_support(spec)?;
    let sh = Shape::of(spec);
    let tm = target_machine(arch)?;
    let cx = Context::create();
    let m = new_module(&cx, &tm, &spec.kernel);
    let name = |role: &str| format!("{}_{role}", super::entry_name(&spec.kernel));
    // (role, parameters, grid, block), in launch order.
    let mut plan = vec![];
    if sh.source == Source::PageBound {
        let grid = [sh.units.div_ceil(score::WARPS), sh.hsel, sh.b];
        plan.push((Role::Score, 5, grid, score::WARPS * 32));
    }
    plan.push((Role::TopK, 3, [sh.hsel, sh.b, 1], topk::THREADS));
    plan.push((
        Role::Attend,
        6,
        [sh.chunks, sh.hkv, sh.b],
        attend::WARPS * 32,
    ));
    plan.push((Role::Combine, 2, [sh.hq, sh.b, 1], sh.d));
    let entries: Vec<DecodeEntry> = plan
        .iter()
        .map(|&(role, _, grid, block)| DecodeEntry {
            role,
            name: name(role_name(role)),
            grid,
            block,
        })
        .collect();
    let fns: Vec<FunctionValue> = plan
        .iter()
        .zip(&entries)
        .map(|(&(_, n, _, _), e)| add_kernel(&cx, &m, &e.name, n))
        .collect();
    let mut g = Gen {
        cx: &cx,
        m,
        b: cx.create_builder(),
        f: fns[0],
        i32t: cx.i32_type(),
        i64t: cx.i64_type(),
        i8t: cx.i8_type(),
        f32t: cx.f32_type(),
        entry: cx.append_basic_block(fns[0], "entry"),
    };
    for (i, (&(role, _, _, _), f)) in plan.iter().zip(&fns).enumerate() {
        if i > 0 {
            g.f = *f;
            g.entry = cx.append_basic_block(*f, "entry");
        }
        g.b.position_at_end(g.entry);
        let ps: Vec<PointerValue> = f.get_param_iter().map(|p| p.into_pointer_value()).collect();
        match role {
            Role::Score => score::emit(&g, &sh, &ps),
            Role::TopK => topk::emit(&g, &sh, &ps),
            Role::Attend => attend::emit(&g, &sh, &ps),
            Role::Combine => combine::emit(&g, &sh, &ps),
        }
        super::gen::ok(g.b.build_return(None));
    }
    let (llvm, ptx) = finish(&g.m, &tm, &spec.kernel)?;
    Ok(DecodeModule {
        arch,
        ptx,
        llvm,
        entries,
        chunks: sh.chunks,
    })
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Score => "score",
        Role::TopK => "topk",
        Role::Attend => "attend",
        Role::Combine => "combine",
    }
}

/// A kernel entry with `n` global-pointer parameters.
fn add_kernel<'c>(cx: &'c Context, m: &Module<'c>, name: &str, n: usize) -> FunctionValue<'c> {
    let gptr = cx.ptr_type(AddressSpace::from(1u16));
    let params: Vec<BasicMetadataTypeEnum> = vec![gptr.into(); n];
    let f = m.add_function(name, cx.void_type().fn_type(&params, false), None);
    // PTX kernels need calling convention 71 (ptx_kernel) for IR built in memory.
    f.set_call_conventions(71);
    f
}
