//! The CUDA code generator for decode-step kernels (`kernel K = decode(S)`): one PTX module
//! whose entries score, top-k, attend and combine run rules 1 to 8 of
//! `docs/kv-selection.md` on the GPU (one decode step), and whose append entry adds a
//! token to the cache.
//! Every shape is a constant of the instantiated [`SelectSpec`], so that launches keep fixed
//! shapes (CUDA graphs stay valid) and the kernels index without runtime shape arithmetic.
//!
//! | entry | grid | block | parameters (global pointers) |
//! | --- | --- | --- | --- |
//! | `<k>_logits` (exact only) | `(ceil(C / 1024), Hkv, B)` | 256 | `q`, `k` dtype `[B,Hkv,C,D]`, `lens`, `logits` f32 `[B,Hq,C]`, `stats` f32 `[B,Hq,ceil(C / 1024),2]` |
//! | `<k>_score` (exact) | `(ceil(C / 8192), Hkv, B)` | 256 | `logits`, `stats`, `lens`, `work` (the top-k's first histogram, for lists of more than 8192 units), `scores` |
//! | `<k>_score` (page_bound) | `(ceil(U / pages per block), Hsel, B)` | 128 | `q` f32 `[B,Hq,D]`, `kmax`, `kmin` dtype `[B,Hkv,U,D]`, `lens` u32 `[B]`, `scores` f32 `[B,Hsel,U]` |
//! | `<k>_topk` | `(Hsel, B)` | 1024 | `scores` (`SCORES_PAD` floats longer), `lens`, `work` (unused), `idx` i32 `[B,Hsel,K]` |
//! | `<k>_topk_pass0..2` (exact: 1..2), `_count`, `_emit` (scored lists of more than 8192 units) | `(ceil(U / 32768), Hsel, B)` | 1024 | `scores`, `lens`, `work` u32 (`DecodeModule::topk_work` words, zeroed once), `idx` |
//! | `<k>_attend` | `(chunks, Hkv, B)` | 128 | `q`, `k` (exact: the `logits` instead), `v` dtype `[B,Hkv,C,D]`, `idx`, `lens`, `part` f32 `[B,Hq,chunks,D+2]` |
//! | `<k>_combine` | `(Hq, B)` | `D` | `part`, `out` f32 `[B,Hq,D]` |
//! | `<k>_accumulate_logits` (accumulated, `split_update` only) | `(ceil(K / slice), Hsel, B)` | 512 | as `accumulate`; writes `hl` only |
//! | `<k>_accumulate` (accumulated only) | `(Hsel, B)` | 512 | `q`, `k`, `idx`, `hl` f32 `[B,Hq,K]` (the list's logits), `acc` f32 `[B,Hsel,C]` (the state, which the top-k reads as its scores) |
//! | `<k>_stats` (window, select-only) | `(ceil(C / 1024), Hkv, B)` | 256 | `q` f32 `[B,Hq,W,D]`, `k`, `lens`, `stats` f32 `[B,Hq,W,ceil(C / 1024),2]`, `wlog` f32 `[B,Hq,W,C]` (`DecodeModule::window_logits` elements, or unused) |
//! | `<k>_score` (window) | `(ceil(C / 1024), Hkv, B)` | 256 | `q`, `k`, `lens`, `stats`, `wlog`, `tok` f32 `[B,Hsel,C]` (the scores without pooling) |
//! | `<k>_pool` (window with pooling) | `(ceil(C / 1024), Hsel, B)` | 256 | `tok`, `lens`, `scores` |
//! | `<k>_append` (not in the step) | `(B)` | 256 | `k_new`, `v_new` dtype `[B,Hkv,D]`, `k`, `v`, `kmax`, `kmin`, `lens` (the last five written) |
//!
//! A select-only kernel (`window` scores) has its statistics, score, pooling and top-k
//! entries only.
//!
//! `U` = units of the full cache, `K` = the list capacity, `chunks` = `ceil(K / split)` with
//! the GPU's own chunk size (`gpu_split`). The queries arrive rounded to the dtype (as the
//! CPU executor rounds them). Scores that decide the selection are summed in the lane-tree
//! order the CPU executor uses (rule 1), and the top-k keeps the same units as the CPU's
//! sort order, ties to the lower index.

mod accumulate;
mod append;
mod attend;
mod combine;
mod exact;
mod score;
mod softmax;
mod topk;
mod topk_wide;
mod window;

pub use topk_wide::SCORES_PAD;

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;

use super::gen::Gen;
use super::{finish, new_module, target_machine, Arch};
use crate::select::spec::{Budget, HeadReduce, KernelKind, Pool, Reduce, SelectSpec, Source};
use crate::sema::program::DType;

/// What an entry of a decode module does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `exact`: base-2 logits and per-chunk softmax stats; `window`: the window rows'
    /// per-chunk softmax stats.
    Logits,
    Score,
    /// `window` with pooling: the pooled scores.
    Pool,
    TopK,
    Attend,
    Combine,
    /// `accumulated` only: H2O's state update after the attention.
    Accumulate,
    /// Not part of the step: appends one token per sequence.
    Append,
}

impl Role {
    /// Every role, in launch order (append last).
    pub const ALL: [Role; 8] = [
        Role::Logits,
        Role::Score,
        Role::Pool,
        Role::TopK,
        Role::Attend,
        Role::Combine,
        Role::Accumulate,
        Role::Append,
    ];
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
    /// u32 words of the top-k's work buffer (zeroed once at allocation; 0: none needed).
    pub topk_work: usize,
    /// `window`: f32 elements of the window's logits `[B, Hq, W, C]` stored between the
    /// statistics and the score entries (0: the score entry computes them again).
    pub window_logits: usize,
}

impl DecodeModule {
    pub fn entry(&self, role: Role) -> Option<&DecodeEntry> {
        self.entries.iter().find(|e| e.role == role)
    }
}

/// The launch-shape choices of a decode module; every choice computes the same indices
/// (the score order does not depend on them) and outputs equal up to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Rows of pages a warp of the score kernel takes (a row: `32 / score_lanes(D)` pages).
    pub score_rows: u32,
    /// Token steps of keys and values a warp of the attention keeps in flight (and half
    /// the token rows a warp of the `exact` logits entry loads together).
    pub unroll: u32,
    /// Blocks the attention grid aims at (sets the split-K chunk size).
    pub target_blocks: u32,
    /// `accumulated`: the logits of H2O's update in an entry of their own over slices of
    /// each list (more blocks than lists), before the per-list update; the same bits.
    pub split_update: bool,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            score_rows: 8,
            unroll: 4,
            target_blocks: 1024,
            // Faster in every candidate on the H200 (0.269 -> 0.207 ms a step at the
            // shipped shape, bench/RESULTS.md decode run 8), the same bits.
            split_update: true,
        }
    }
}

impl Tuning {
    /// The candidates `attnc bench --tune` times for `spec`: the page rows of the score
    /// warps only matter to page-bound scores, the split update only to `accumulated`
    /// (elsewhere the default's).
    pub fn candidates_for(spec: &SelectSpec) -> Vec<Tuning> {
        let d = Tuning::default();
        let rows = d.score_rows;
        Tuning::candidates()
            .into_iter()
            .filter(|t| spec.source == Source::PageBound || t.score_rows == rows)
            .filter(|t| spec.source == Source::Accumulated || t.split_update == d.split_update)
            .collect()
    }

    /// Every launch shape there is to try.
    pub fn candidates() -> Vec<Tuning> {
        let mut v = vec![];
        for score_rows in [2, 4, 8] {
            for unroll in [2, 4, 8] {
                for target_blocks in [1024, 2048] {
                    for split_update in [false, true] {
                        v.push(Tuning {
                            score_rows,
                            unroll,
                            target_blocks,
                            split_update,
                        });
                    }
                }
            }
        }
        v
    }

    pub fn label(&self) -> String {
        format!(
            "rows={} unroll={} blocks={}{}",
            self.score_rows,
            self.unroll,
            self.target_blocks,
            if self.split_update {
                ""
            } else {
                " one-entry-update"
            }
        )
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
    pub tuning: Tuning,
    /// Query rows a head scores with (`window`'s observation window; else 1).
    pub w: u32,
    /// How a window's rows fold (`reduce rows`).
    pub rows_op: Reduce,
    pub pool: Pool,
}

impl Shape {
    fn of(s: &SelectSpec, tuning: Tuning) -> Shape {
        let cap = s.capacity();
        let split = gpu_split(s, tuning.target_blocks);
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
            tuning,
            w: s.q_rows(),
            rows_op: s.rows,
            pool: s.pool,
        }
    }

    /// Query heads per index list: the KV group, or every head for a shared list.
    pub fn heads_per_list(&self) -> u32 {
        if self.per_kv {
            self.g
        } else {
            self.hq
        }
    }
}

/// The fewest tokens a block of the attention takes.
const MIN_CHUNK_TOKENS: u64 = 128;

/// Units per split-K chunk on the GPU: chunks of at least 128 tokens, enough of them for
/// about `target` blocks over all (sequence, KV head) pairs (2048 is about five waves of
/// three blocks per SM on a 132-SM GPU). The CPU's chunking, `spec.split`, suits its
/// threads; the results differ only in rounding.
pub(crate) fn gpu_split(s: &SelectSpec, target: u32) -> u32 {
    let tokens = s.capacity() as u64 * s.page as u64;
    let pairs = s.batch as u64 * s.kv_heads as u64;
    let chunk = (tokens * pairs / target.max(1) as u64)
        .max(MIN_CHUNK_TOKENS)
        .next_power_of_two();
    (chunk / s.page as u64).clamp(1, s.capacity().max(1) as u64) as u32
}

/// Where a thread sits when `score_lanes(D)` lanes share a row (a page or a token), each
/// holding `per_lane` adjacent channels (8, one 16-byte load, at every head dim the GPU
/// covers): `per_row` rows per warp. The page bound, the exact logits and the attention
/// all use it.
pub(crate) struct LaneGrid<'c> {
    pub lanes: u32,
    pub per_lane: u32,
    pub per_row: u32,
    pub tid: IntValue<'c>,
    pub warp: IntValue<'c>,
    pub lane: IntValue<'c>,
    /// The row of the warp this lane works on.
    pub sub: IntValue<'c>,
    /// The lane within its row.
    pub ll: IntValue<'c>,
    /// Its first channel.
    pub ch: IntValue<'c>,
}

impl<'c> LaneGrid<'c> {
    pub fn new(g: &Gen<'c>, d: u32) -> LaneGrid<'c> {
        let lanes = crate::select::spec::score_lanes(d);
        let per_lane = d / lanes;
        let tid = g.sreg("tid.x");
        let lane = g.uremi(tid, 32);
        let ll = g.uremi(lane, lanes as i64);
        LaneGrid {
            lanes,
            per_lane,
            per_row: 32 / lanes,
            tid,
            warp: g.udivi(tid, 32),
            lane,
            sub: g.udivi(lane, lanes as i64),
            ll,
            ch: g.muli(ll, per_lane as i64),
        }
    }
}

/// Why `spec` cannot run on the GPU yet, if it cannot: these kernels run on the CPU only.
pub fn gpu_support(s: &SelectSpec) -> Result<(), String> {
    let why = |what: &str| {
        Err(format!(
            "`{}` runs on the CPU only so far: the CUDA backend has no {what} yet (docs/kv-selection.md, \"GPU coverage\")",
            s.kernel
        ))
    };
    if matches!(s.heads, HeadReduce::Subset(..)) {
        return why("lists scored by a subset of the heads (`subset(...)`)");
    }
    if s.adaptive.is_some() {
        return why("adaptive budgets (`adaptive(...)`)");
    }
    if s.gumbel.is_some() {
        return why("Keyformer's update (`keyformer(...)`)");
    }
    let window = matches!(s.source, Source::Window { .. });
    if s.kind != KernelKind::Decode && !window {
        return why(&format!(
            "select-only kernels with `{}` scoring",
            crate::select::spec::source_name(s.source)
        ));
    }
    match s.source {
        Source::None | Source::PageBound => {}
        // The query's logits (`exact`) or the state their probabilities build
        // (`accumulated`, whose update after the attention keeps it where the top-k reads
        // its scores): per KV group, token by token, at most 8 query heads a group.
        Source::Exact | Source::Accumulated => {
            let name = crate::select::spec::source_name(s.source);
            if !matches!(s.heads, HeadReduce::PerKvGroup(_)) {
                return why(&format!(
                    "`{name}` scoring with scores shared across KV heads"
                ));
            }
            if s.pool != Pool::None || s.page != 1 {
                return why(&format!("`{name}` scoring with pooling or pages"));
            }
            if s.group() > 8 {
                return why(&format!(
                    "`{name}` scoring of {} query heads per KV head (8 at most)",
                    s.group()
                ));
            }
        }
        // The observation window's probabilities (SnapKV): per KV group, recomputed
        // rather than stored, the rows' statistics in shared memory.
        Source::Window { rows, lse } => {
            if lse {
                return why("`window_lse` scoring (log-sum-exps given)");
            }
            if !matches!(s.heads, HeadReduce::PerKvGroup(_)) {
                return why("`window` scoring with scores shared across KV heads");
            }
            if s.page != 1 {
                return why("`window` scoring of pages");
            }
            // Two threads share a key's lanes (at least two lanes, at most 8 each).
            if !(16..=128).contains(&s.head_dim) {
                return why(&format!(
                    "`window` scoring at head dim {} (16 to 128)",
                    s.head_dim
                ));
            }
            if s.group() * rows > window::MAX_ROWS {
                return why(&format!(
                    "`window` scoring of {} query rows per KV head ({} at most)",
                    s.group() * rows,
                    window::MAX_ROWS
                ));
            }
        }
        // Key norms, page means and normalised window scores: the CPU executor only so
        // far (a normalised score is select-only, refused above).
        Source::KeyNorm | Source::PageMean | Source::Normalized { .. } => {
            return why(&format!(
                "`{}` scoring",
                crate::select::spec::source_name(s.source)
            ))
        }
        // Scores given per selection head: the top-k reads them where the score entry
        // would have written them.
        Source::External => {
            if s.pool != Pool::None || s.page != 1 {
                return why("`external` scores with pooling or pages");
            }
        }
    }
    if !matches!(s.budget, Budget::Tokens(_)) {
        return why("ratio budgets");
    }
    if s.dtype == DType::F32 {
        return why("f32 caches");
    }
    // The kernels index the cache in 32 bits (the last value at most `2^31 - 1`).
    let values = s.batch as u64 * s.kv_heads as u64 * s.context as u64 * s.head_dim as u64;
    if values > 1 << 31 {
        return why(&format!(
            "caches of more than 2^31 values ({values} here: batch x KV heads x CONTEXT x head dim)"
        ));
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
    let sh = Shape::of(s, Tuning::default());
    if attend::smem_bytes(&sh) > 48 * 1024 {
        return why(&format!(
            "attention over {} query heads per KV head at head dim {d}",
            sh.g
        ));
    }
    Ok(())
}

/// `window` scores: the f32 elements of the window's logits the GPU keeps between the
/// statistics and the score entries (`[B, Hq, W, C]`), or 0 where it computes them twice
/// (more than `2^31`) or has no window.
pub fn window_logits(spec: &SelectSpec) -> usize {
    match spec.source {
        Source::Window { .. } => window::stored_logits(&Shape::of(spec, Tuning::default())),
        _ => 0,
    }
}

/// Compiles the decode step of `spec` for `arch` with the default tuning.
pub fn compile(spec: &SelectSpec, arch: Arch) -> Result<DecodeModule, String> {
    compile_tuned(spec, arch, Tuning::default())
}

/// Compiles the decode step of `spec` for `arch` with `tuning`.
pub fn compile_tuned(
    spec: &SelectSpec,
    arch: Arch,
    tuning: Tuning,
) -> Result<DecodeModule, String> {
    gpu_support(spec)?;
    let sh = Shape::of(spec, tuning);
    if attend::smem_bytes(&sh) > 48 * 1024 {
        return Err(format!(
            "`{}`: tuning {} needs {} bytes of shared memory (48 KiB at most)",
            spec.kernel,
            tuning.label(),
            attend::smem_bytes(&sh)
        ));
    }
    let tm = target_machine(arch)?;
    let cx = Context::create();
    let m = new_module(&cx, &tm, &spec.kernel);
    let name = |role: &str| format!("{}_{role}", super::entry_name(&spec.kernel));
    // (role, body, parameters, grid, block), in launch order.
    let mut plan: Vec<(Role, Body, usize, [u32; 3], u32)> = vec![];
    if sh.source == Source::Exact {
        let block = exact::WARPS * 32;
        let grid = [exact::chunks(&sh), sh.hkv, sh.b];
        plan.push((Role::Logits, Body::Logits, 5, grid, block));
        let grid = [exact::score_blocks(&sh), sh.hkv, sh.b];
        plan.push((Role::Score, Body::ExactScore, 5, grid, block));
    }
    let window = matches!(sh.source, Source::Window { .. });
    if window {
        let grid = [window::chunks(&sh), sh.hkv, sh.b];
        let block = window::WARPS * 32;
        plan.push((Role::Logits, Body::WindowStats, 5, grid, block));
        plan.push((Role::Score, Body::WindowScore, 6, grid, block));
        if sh.pool != Pool::None {
            let grid = [window::chunks(&sh), sh.hsel, sh.b];
            plan.push((Role::Pool, Body::Pool, 3, grid, block));
        }
    }
    if sh.source == Source::PageBound {
        let grid = [
            sh.units.div_ceil(score::pages_per_block(&sh)),
            sh.hsel,
            sh.b,
        ];
        plan.push((Role::Score, Body::Score, 5, grid, score::WARPS * 32));
    }
    let wide = topk_wide::wide(&sh);
    if wide {
        let grid = [topk_wide::blocks(&sh), sh.hsel, sh.b];
        for step in topk_wide::steps(&sh) {
            plan.push((
                Role::TopK,
                Body::TopKWide(step),
                4,
                grid,
                topk_wide::THREADS,
            ));
        }
    } else {
        plan.push((Role::TopK, Body::TopK, 4, [sh.hsel, sh.b, 1], topk::THREADS));
    }
    // A select-only kernel ends with its index lists.
    let decode = spec.kind == KernelKind::Decode;
    if decode {
        plan.push((
            Role::Attend,
            Body::Attend,
            6,
            [sh.chunks, sh.hkv, sh.b],
            attend::WARPS * 32,
        ));
        plan.push((Role::Combine, Body::Combine, 2, [sh.hq, sh.b, 1], sh.d));
    }
    if sh.source == Source::Accumulated {
        let block = accumulate::WARPS * 32;
        if tuning.split_update {
            let grid = [accumulate::slices(&sh), sh.hsel, sh.b];
            plan.push((Role::Accumulate, Body::AccumulateLogits, 5, grid, block));
        }
        let grid = [sh.hsel, sh.b, 1];
        plan.push((Role::Accumulate, Body::Accumulate, 5, grid, block));
    }
    if decode {
        plan.push((Role::Append, Body::Append, 7, [sh.b, 1, 1], append::THREADS));
    }
    let entries: Vec<DecodeEntry> = plan
        .iter()
        .map(|&(role, body, _, grid, block)| DecodeEntry {
            role,
            name: name(&match body {
                Body::TopKWide(step) => step.name(),
                Body::AccumulateLogits => "accumulate_logits".to_string(),
                Body::WindowStats => "stats".to_string(),
                _ => role_name(role).to_string(),
            }),
            grid,
            block,
        })
        .collect();
    let fns: Vec<FunctionValue> = plan
        .iter()
        .zip(&entries)
        .map(|(&(_, body, n, _, block), e)| {
            add_kernel(&cx, &m, &e.name, (n, writes(body, n)), block)
        })
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
    for (i, (&(_, body, _, _, _), f)) in plan.iter().zip(&fns).enumerate() {
        if i > 0 {
            g.f = *f;
            g.entry = cx.append_basic_block(*f, "entry");
        }
        g.b.position_at_end(g.entry);
        let ps: Vec<PointerValue> = f.get_param_iter().map(|p| p.into_pointer_value()).collect();
        match body {
            Body::Logits => exact::emit_logits(&g, &sh, &ps),
            Body::ExactScore => exact::emit_score(&g, &sh, &ps),
            Body::Score => score::emit(&g, &sh, &ps),
            Body::TopK => topk::emit(&g, &sh, &ps),
            Body::TopKWide(step) => topk_wide::emit(&g, &sh, &ps, step),
            Body::Attend => attend::emit(&g, &sh, &ps),
            Body::Combine => combine::emit(&g, &sh, &ps),
            Body::Accumulate => accumulate::emit(&g, &sh, &ps),
            Body::AccumulateLogits => accumulate::emit_logits(&g, &sh, &ps),
            Body::Append => append::emit(&g, &sh, &ps),
            Body::WindowStats => window::emit_stats(&g, &sh, &ps),
            Body::WindowScore => window::emit_score(&g, &sh, &ps),
            Body::Pool => window::emit_pool(&g, &sh, &ps),
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
        topk_work: if wide { topk_wide::work_words(&sh) } else { 0 },
        window_logits: if window {
            window::stored_logits(&sh)
        } else {
            0
        },
    })
}

/// What an entry's code is.
#[derive(Clone, Copy)]
enum Body {
    Logits,
    ExactScore,
    Score,
    TopK,
    /// A step of the multi-block top-k.
    TopKWide(topk_wide::Step),
    Attend,
    Combine,
    Accumulate,
    /// Step 1 of H2O's update in an entry of its own (`Tuning::split_update`).
    AccumulateLogits,
    Append,
    /// `window`: the rows' chunk statistics (role `Logits`), their folded probabilities
    /// (role `Score`), the pooling.
    WindowStats,
    WindowScore,
    Pool,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Logits => "logits",
        Role::Score => "score",
        Role::Pool => "pool",
        Role::TopK => "topk",
        Role::Attend => "attend",
        Role::Combine => "combine",
        Role::Accumulate => "accumulate",
        Role::Append => "append",
    }
}

/// The parameters an entry writes: the last one (its output); the last two for the
/// logits (and stats), the top-k (work buffer and lists), the exact score (the top-k's
/// first histogram and the scores), H2O's update (the list's logits and the state) and
/// the window's statistics (and its stored logits); for append the cache, the page
/// metadata and the lengths.
fn writes(body: Body, n: usize) -> std::ops::Range<usize> {
    match body {
        Body::Append => 2..n,
        // (q, k, idx, hl, acc): the list's logits only.
        Body::AccumulateLogits => n - 2..n - 1,
        Body::Logits
        | Body::ExactScore
        | Body::TopK
        | Body::TopKWide(_)
        | Body::Accumulate
        | Body::WindowStats => n - 2..n,
        _ => n - 1..n,
    }
}

/// A kernel entry with `n` global-pointer parameters, of which it writes `writes`, for
/// blocks of `block` threads. No two parameters overlap: all are `noalias`, and those it
/// only reads are `readonly`, so that their loads take the read-only data path
/// (`ld.global.nc`). The block size is declared (`.maxntid`), so that ptxas keeps to the
/// registers a block of that size may have.
fn add_kernel<'c>(
    cx: &'c Context,
    m: &Module<'c>,
    name: &str,
    (n, writes): (usize, std::ops::Range<usize>),
    block: u32,
) -> FunctionValue<'c> {
    let gptr = cx.ptr_type(AddressSpace::from(1u16));
    let params: Vec<BasicMetadataTypeEnum> = vec![gptr.into(); n];
    let f = m.add_function(name, cx.void_type().fn_type(&params, false), None);
    // PTX kernels need calling convention 71 (ptx_kernel) for IR built in memory.
    f.set_call_conventions(71);
    let attr = |name: &str| cx.create_enum_attribute(Attribute::get_named_enum_kind_id(name), 0);
    for i in 0..n {
        f.add_attribute(AttributeLoc::Param(i as u32), attr("noalias"));
        if !writes.contains(&i) {
            f.add_attribute(AttributeLoc::Param(i as u32), attr("readonly"));
        }
    }
    let note = cx.metadata_node(&[
        f.as_global_value().as_pointer_value().into(),
        cx.metadata_string("maxntidx").into(),
        cx.i32_type().const_int(block as u64, false).into(),
    ]);
    let _ = m.add_global_metadata("nvvm.annotations", &note);
    f
}
