//! The FlashAttention-2 forward on tensor cores, lowered from the kernel IR.
//!
//! One thread block per (query tile slice of `bm` rows, head, batch); each warp owns 16
//! query rows. Q is loaded once (cp.async, then ldmatrix into registers). The key loop walks
//! the schedule's runs for this query tile and each key tile in chunks of `bn` keys: K and V
//! chunks are brought into double-buffered, XOR-swizzled shared memory with cp.async while
//! the previous chunk is computed; `S = Q K^T` and `O += P V` use
//! `mma.sync.m16n8k16` (bf16/f16 in, f32 accumulate) with ldmatrix fragments; the softmax is
//! the exp2 online softmax (log2(e) already folded into the scale by the `fold-log2e` pass);
//! element masks run only on partial tiles or incomplete chunks. Rows, raster order, text
//! segments and ragged tiles are handled by address arithmetic and predication (cp.async
//! zero-fills missing rows; nothing is read out of bounds).
//!
//! Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 * group + t. A: a0 (row g, cols
//! 2t, 2t+1), a1 (row g+8), a2 (cols +8), a3 (row g+8, cols +8). B: b0 (rows 2t, 2t+1 of k,
//! col g), b1 (rows +8). C: c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8).

use inkwell::values::{BasicValueEnum, FloatValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use petgraph::stable_graph::NodeIndex;

use super::asm::ptx;
use super::expr::{self, Scope};
use super::gen::{ok, Gen, Var};
use super::tokens::{self, Row, Tile};
use crate::ir::{ElemFn, Kernel, Op, Tensor, Type};
use crate::pattern::geometry::Geometry;
use crate::sema::expr::{Expr, InputId, Var as EVar};
use crate::sema::program::Group;
use crate::sema::spec::InputSpec;

/// Launch geometry and sizes, fixed at compile time.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The shape it was made for: query rows per block (16 per warp), keys per chunk, and
    /// the instruction choices (`Tuning`).
    pub shape: Tuning,
    pub warps: u32,
    pub d: u32,
    pub dv: u32,
    /// Blocks per query tile (`ceil(tile_tokens / bm)`).
    pub blocks_per_tile: u32,
    /// Chunks per key tile (`ceil(tile_tokens / bn)`).
    pub chunks: u32,
    /// Every chunk is complete (`bn` divides the tile).
    pub exact: bool,
    pub smem_bytes: u32,
    /// Shared memory above 48 KiB must be dynamic (and opted into by the launcher).
    pub dynamic_smem: bool,
    pub elem: &'static str,
}

/// The shape choices of a kernel: query rows per block, keys per chunk, and the tensor-core
/// instruction (`mma.sync`, or `wgmma` on sm_90a).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuning {
    /// Query rows per block (16 per warp; a warpgroup per 64 with `wgmma`).
    pub bm: u32,
    /// Keys per chunk.
    pub bn: u32,
    /// The products on `wgmma` (sm_90a): K and V in the 128-byte-swizzled layout the
    /// matrix descriptors read.
    pub wgmma: bool,
    /// Blocks an SM must hold at once (`.minnctapersm`; 0: as many as the registers
    /// allow): ptxas keeps the registers to `65536 / (blocks * threads)`.
    pub blocks_per_sm: u32,
    /// K and V brought by the tensor memory accelerator (one thread issues 2-D box copies
    /// that land swizzled, completion on an mbarrier per buffer) instead of every thread's
    /// cp.async. Needs wgmma and a token order in which a key tile's rows are consecutive
    /// (`tensor_copies_fit`).
    pub tma: bool,
    /// With tensor copies: each warpgroup's softmax overlaps its own previous `P V`
    /// (FlashAttention-3's intra-warpgroup pipelining, `kv_loop_overlapped`): `S = Q K^T`
    /// of chunk `n` and `P V` of chunk `n - 1` are issued together, the softmax of chunk
    /// `n` runs while `P V` does.
    pub overlap: bool,
    /// With tensor copies: warp-specialised (FlashAttention-3's producer and consumers):
    /// a producer warpgroup walks the keys, fills their information and issues the tensor
    /// copies into a ring of stages; the `bm / 64` consumer warpgroups wait on each
    /// stage's "full" barrier, compute, and release it on its "empty" barrier
    /// (`kv_loop_ws`, `produce`). No block-wide barrier in the loop.
    pub ws: bool,
    /// Warp-specialised, with FlashAttention-3's ping-pong: the two computing warpgroups
    /// take turns to issue `S = Q K^T` (named barriers 1 and 2), so that one's product
    /// runs while the other is in its softmax.
    pub pingpong: bool,
}

impl Tuning {
    /// `64x32`, `128x64-wgmma`, `128x64-wgmma-tma`, or with an occupancy request
    /// `64x64-wgmma-x3`.
    pub fn name(&self) -> String {
        let w = if self.wgmma { "-wgmma" } else { "" };
        let t = if self.tma { "-tma" } else { "" };
        let v = match (self.overlap, self.ws, self.pingpong) {
            (true, _, _) => "-ovl",
            (false, true, false) => "-ws",
            (false, true, true) => "-ws-pp",
            _ => "",
        };
        let o = match self.blocks_per_sm {
            0 => String::new(),
            n => format!("-x{n}"),
        };
        format!("{}x{}{w}{t}{v}{o}", self.bm, self.bn)
    }

    /// The inverse of `name`.
    pub fn parse<'a>(s: &'a str) -> Option<Tuning> {
        let (s, blocks_per_sm) = match s.rsplit_once("-x") {
            Some((rest, n)) => (rest, n.parse().ok().filter(|n| *n > 0)?),
            None => (s, 0),
        };
        // Suffixes in the reverse of `name`'s order; each present or not.
        let strip = |s: &'a str, suffix: &str| match s.strip_suffix(suffix) {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let (s, overlap) = strip(s, "-ovl");
        let (s, pingpong) = strip(s, "-pp");
        let (s, ws) = strip(s, "-ws");
        let (s, tma) = strip(s, "-tma");
        let (shape, wgmma) = strip(s, "-wgmma");
        let (bm, bn) = shape.split_once('x')?;
        Some(Tuning {
            bm: bm.parse().ok()?,
            bn: bn.parse().ok()?,
            wgmma,
            blocks_per_sm,
            tma,
            overlap,
            ws,
            pingpong,
        })
    }
}

/// Largest shared memory one block may use on sm_80 and sm_90 (with the opt-in).
pub const MAX_SMEM: u32 = 160 * 1024;

/// The default shape: 64 rows (4 warps), 32 keys for head dim 128 (64 for 64), so that
/// shared memory stays static.
pub fn default_tuning(k: &Kernel) -> Tuning {
    let tt = k.info.tile_q;
    let bm = 64.min(tt.div_ceil(16) * 16);
    let bn = if k.info.head_dim > 64 || k.info.value_dim > 64 {
        32
    } else {
        64
    };
    Tuning {
        bm,
        bn,
        wgmma: false,
        blocks_per_sm: 0,
        tma: false,
        overlap: false,
        ws: false,
        pingpong: false,
    }
}

/// Tensor copies bring a chunk's rows as one box: they must be consecutive in memory, which
/// the tiled token order guarantees for every tile (canvas and segments).
pub fn tensor_copies_fit(geo: &Geometry) -> bool {
    geo.order == crate::syntax::ast::Order::Tiled
}

/// The shape to use without tuning on a GPU: with `wgmma` (compute capability 9.0) the
/// 64x64 wgmma shape, with tensor copies where the token order allows them (on the H200,
/// 2026-11-29: the fastest shape on GRAT 128x128 and on GRAT-B r=1 256x256, 8 % behind
/// 128x128 on dense 16384; `--tune` picks per case); else `default_tuning`.
pub fn gpu_default(k: &Kernel, geo: &Geometry, wgmma: bool) -> Tuning {
    let tma = tensor_copies_fit(geo);
    let t = Tuning {
        bm: 64,
        bn: 64,
        wgmma: true,
        blocks_per_sm: 0,
        tma,
        overlap: false,
        ws: false,
        pingpong: false,
    };
    if wgmma && config_for(k, t).is_ok() {
        t
    } else {
        default_tuning(k)
    }
}

/// Every shape worth trying for this kernel (for the autotuner), the default first (the
/// tuner's yardstick for correctness); with `wgmma` (a GPU of compute capability 9.0) the
/// sm_90a shapes, and when the token order keeps a key tile's rows together only those
/// with tensor copies: every other shape was slower than them on every case measured
/// (bench/RESULTS.md, 2026-11-29), and trying them doubled the tuning time.
pub fn candidates(k: &Kernel, geo: &Geometry, wgmma: bool) -> Vec<Tuning> {
    let tt = k.info.tile_q;
    let tma_ok = wgmma && tensor_copies_fit(geo);
    let mut out = vec![default_tuning(k)];
    let mut push = |t: Tuning| {
        if !out.contains(&t) && config_for(k, t).is_ok() {
            out.push(t);
        }
    };
    for bm in [64, 128] {
        for bn in [32, 64] {
            if tma_ok {
                break;
            }
            push(Tuning {
                bm: bm.min(tt.div_ceil(16) * 16),
                bn,
                wgmma: false,
                blocks_per_sm: 0,
                tma: false,
                overlap: false,
                ws: false,
                pingpong: false,
            });
        }
    }
    if wgmma {
        // 64-row blocks also with three to an SM (168 registers; their 67 KiB of shared
        // memory fit three times): one more warpgroup to fill the tensor cores while
        // another is in its softmax. (64x32 three to an SM and 64x128 were slower than
        // these on every case measured, 2026-11-29.)
        for (tma, overlap) in [(false, false), (true, false), (true, true)] {
            for (bm, bn, blocks_per_sm) in [(64, 64, 0), (64, 64, 3), (128, 64, 0), (128, 128, 0)] {
                // Three to an SM leave the overlapped loop too few registers: ptxas
                // serialises its wgmma (C7512).
                if tma != tma_ok || (overlap && blocks_per_sm > 0) {
                    continue;
                }
                push(Tuning {
                    bm,
                    bn,
                    wgmma: true,
                    blocks_per_sm,
                    tma,
                    overlap,
                    ws: false,
                    pingpong: false,
                });
            }
        }
    }
    out
}

/// Shapes the GPU suite checks but the tuner does not try yet (never run on a GPU, or not
/// yet faster anywhere): the warp-specialised kernel.
pub fn experimental(k: &Kernel, geo: &Geometry, wgmma: bool) -> Vec<Tuning> {
    if !wgmma || !tensor_copies_fit(geo) {
        return vec![];
    }
    let ws = Tuning {
        bm: 128,
        bn: 64,
        wgmma: true,
        blocks_per_sm: 0,
        tma: true,
        overlap: false,
        ws: true,
        pingpong: false,
    };
    let pp = Tuning {
        pingpong: true,
        ..ws
    };
    [ws, pp]
        .into_iter()
        .filter(|t| config_for(k, *t).is_ok())
        .collect()
}

impl Config {
    /// Threads a block launches with (a producer warpgroup more with `ws`).
    pub fn threads(&self) -> u32 {
        self.warps * 32
    }

    /// Threads that compute (16 query rows a warp).
    fn compute_threads(&self) -> u32 {
        self.shape.bm / 16 * 32
    }

    /// K/V buffers: two, or the warp-specialised ring's stages (as many as 128 KiB hold).
    fn stages(&self) -> u32 {
        if self.shape.ws {
            (128 * 1024 / (self.shape.bn * (self.d + self.dv) * 2)).clamp(2, 4)
        } else {
            2
        }
    }

    fn kv_bytes(&self) -> u32 {
        self.stages() * self.shape.bn * (self.d + self.dv) * 2
    }

    /// Where the V buffers start (after the K buffers).
    fn vbuf(&self) -> u32 {
        self.stages() * self.shape.bn * self.d * 2
    }

    /// Where the slots of key information start (16 bytes a key, `bn` keys a slot).
    fn kinfo(&self) -> u32 {
        self.kv_bytes()
    }

    /// Where the query rows' information starts: after a slot of key information a K/V
    /// buffer, three in the overlapped loop.
    fn qinfo(&self) -> u32 {
        let slots = if self.shape.overlap { 3 } else { self.stages() };
        self.kinfo() + slots * self.shape.bn * 16
    }

    /// The first mbarrier (tensor copies): one a K/V buffer, or in the overlapped loop one
    /// a K buffer and one a V buffer (K0, K1, V0, V1).
    fn mbar(&self) -> u32 {
        self.qinfo() + self.shape.bm * 16
    }

    /// Warp-specialised: "full" barrier `s` and "empty" barrier `stages + s` a stage.
    fn mbars(&self) -> u32 {
        match (self.shape.tma, self.shape.overlap, self.shape.ws) {
            (false, _, _) => 0,
            (true, true, _) => 4,
            (true, false, true) => 2 * self.stages(),
            (true, false, false) => 2,
        }
    }
}

pub fn config(k: &Kernel) -> Result<Config, String> {
    config_for(k, default_tuning(k))
}

pub fn config_for(k: &Kernel, t: Tuning) -> Result<Config, String> {
    let i = &k.info;
    if !matches!(i.head_dim, 64 | 128) {
        return Err(format!(
            "head_dim {} is not supported by the CUDA backend yet (64 or 128)",
            i.head_dim
        ));
    }
    if i.value_dim % 16 != 0 || i.value_dim > 128 || i.value_dim == 0 {
        return Err(format!(
            "value_dim {} is not supported by the CUDA backend yet (a multiple of 16 up to 128)",
            i.value_dim
        ));
    }
    let elem = match i.elem {
        crate::ir::Elem::Bf16 => "bf16",
        crate::ir::Elem::F16 => "f16",
        crate::ir::Elem::F32 => {
            return Err("dtype f32 is not supported by the CUDA backend (bf16 or f16)".into())
        }
    };
    let tt = i.tile_q;
    let Tuning {
        bm,
        bn,
        wgmma,
        blocks_per_sm,
        tma,
        overlap,
        ws,
        pingpong,
    } = t;
    if pingpong && !ws {
        return Err(format!(
            "block shape {}: ping-pong needs warp specialisation (-ws-pp)",
            t.name()
        ));
    }
    if ws && (!tma || overlap || bm != 128 || blocks_per_sm > 0) {
        return Err(format!(
            "block shape {}: warp specialisation is 128 rows with tensor copies (128xN-wgmma-tma-ws)",
            t.name()
        ));
    }
    if tma && !wgmma {
        return Err(format!(
            "block shape {}: tensor copies need wgmma",
            t.name()
        ));
    }
    if overlap && !tma {
        return Err(format!(
            "block shape {}: the overlapped loop needs tensor copies",
            t.name()
        ));
    }
    if bm % 16 != 0 || bm == 0 || bm > 128 || !matches!(bn, 16 | 32 | 64 | 128) {
        return Err(format!("block shape {bm}x{bn} is not supported"));
    }
    if wgmma && (bm % 64 != 0 || bn < 32 || !matches!(i.value_dim, 64 | 128)) {
        return Err(format!(
            "block shape {} is not supported (64 or 128 rows, 32 to 128 keys, value_dim 64 or 128)",
            t.name()
        ));
    }
    let cfg = Config {
        shape: t,
        warps: bm / 16 + if ws { 4 } else { 0 },
        d: i.head_dim,
        dv: i.value_dim,
        blocks_per_tile: tt.div_ceil(bm),
        chunks: tt.div_ceil(bn),
        exact: tt % bn == 0,
        smem_bytes: 0,
        dynamic_smem: false,
        elem,
    };
    let q_bytes = bm * cfg.d * 2;
    if q_bytes > cfg.kv_bytes() {
        return Err("query tile does not fit the shared memory plan".into());
    }
    // wgmma's swizzled tiles need 1024-byte alignment: the kernel rounds its base up; the
    // tensor copies' two mbarriers follow the query rows' information.
    let smem_bytes = cfg.qinfo() + bm * 16 + 8 * cfg.mbars() + if wgmma { 1024 } else { 0 };
    if blocks_per_sm * smem_bytes > 227 * 1024 {
        return Err(format!(
            "block shape {}: {blocks_per_sm} blocks of {smem_bytes} bytes of shared memory do not fit an SM",
            t.name()
        ));
    }
    if smem_bytes > MAX_SMEM {
        return Err(format!(
            "block shape {bm}x{bn} needs {smem_bytes} bytes of shared memory"
        ));
    }
    Ok(Config {
        smem_bytes,
        dynamic_smem: smem_bytes > 48 * 1024,
        ..cfg
    })
}

/// Values the lowering passes between ops.
struct Frags<'c> {
    /// `S` / `P` fragments: [n-tile][4].
    s: Vec<[Var<'c>; 4]>,
    /// `O` accumulators: [d-tile][4].
    acc: Vec<[Var<'c>; 4]>,
    /// Running max and (thread-partial) sum per row (g, g+8).
    m: [Var<'c>; 2],
    l: [Var<'c>; 2],
    /// Row max of the current chunk, per row (of the scores as `S = Q K^T` left them).
    rowmax: [Option<FloatValue<'c>>; 2],
    /// The chunk's `Scale` when it was folded into the exponent (no score modifier reads
    /// the scaled scores): `S` holds unscaled scores until the softmax.
    scale: Option<f64>,
    /// P packed as A fragments: [k16 chunk][4].
    p: Vec<[IntValue<'c>; 4]>,
    /// The overlapped loop: the P words a `P V` in flight reads (inputs of its wait).
    held: Vec<IntValue<'c>>,
    /// The overlapped loop: the accumulators' rescale, left by the softmax until `P V`
    /// completes (whether the warp rescales, and each row's factor).
    deferred: Option<(IntValue<'c>, [Var<'c>; 2])>,
}

/// How a chunk's products are issued.
#[derive(Clone, Copy)]
enum Step<'c> {
    /// `S = Q K^T` and `acc += P V` from K/V buffer `0`, each waited for.
    Serial(IntValue<'c>),
    /// The overlapped loop's first chunk (K in buffer `0`): `S` waited for, `P V` left to
    /// the next chunk's block.
    First(IntValue<'c>),
    /// The overlapped loop's later chunks: `S` (K in buffer `k`) issued with the previous
    /// chunk's `P V` (V at shared offset `v_prev`), which is waited for at the `P V` op.
    Steady {
        k: IntValue<'c>,
        v_prev: IntValue<'c>,
    },
    /// Ping-pong (K and V in buffer `buf`): wait at named barrier `mine` before issuing
    /// `S = Q K^T`, then arrive at `other` (when `arrive` is 1) before waiting for it;
    /// `P V` as `Serial`.
    Turn {
        buf: IntValue<'c>,
        mine: IntValue<'c>,
        other: IntValue<'c>,
        arrive: IntValue<'c>,
    },
}

/// Which operands a group of tensor copies brings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operands {
    K,
    V,
    KV,
}

/// `Attention::key_walk`'s result.
struct KeyWalk<'c> {
    end: IntValue<'c>,
    cur: Cursor<'c>,
    next: Cursor<'c>,
    /// The query tile has at least one run.
    has: IntValue<'c>,
}

/// Where the current chunk is.
#[derive(Clone, Copy)]
struct Cursor<'c> {
    r: Var<'c>,
    kt: Var<'c>,
    kend: Var<'c>,
    chunk: Var<'c>,
    class: Var<'c>,
}

pub struct Attention<'a, 'c> {
    pub g: &'a Gen<'c>,
    pub k: &'a Kernel,
    pub geo: &'a Geometry,
    pub cfg: &'a Config,
    pub inputs: &'a [InputSpec],
    pub params: Params<'c>,
    pub smem: PointerValue<'c>,
    // Per thread.
    /// The thread among the computing ones (warp-specialised: `tid.x - 128`, 0 in the
    /// producer, which computes nothing).
    tid: IntValue<'c>,
    /// Whether this thread computes (false in the warp-specialised producer).
    computing: IntValue<'c>,
    /// The thread that fills key information and issues K/V copies: `tid.x` (the
    /// producer's threads, warp-specialised; everyone's otherwise).
    kv_tid: IntValue<'c>,
    warp: IntValue<'c>,
    lane: IntValue<'c>,
    grp: IntValue<'c>,
    tig: IntValue<'c>,
    batch: IntValue<'c>,
    head: IntValue<'c>,
    kvh: IntValue<'c>,
    qt: IntValue<'c>,
    row0: IntValue<'c>,
    qtile: Option<Tile<'c>>,
    /// This thread's two query rows: (tile row, row info).
    qrows: [(IntValue<'c>, Option<Row<'c>>); 2],
    qfrag: Vec<[IntValue<'c>; 4]>,
    variant: IntValue<'c>,
}

/// Kernel parameters.
#[derive(Clone)]
pub struct Params<'c> {
    pub q: PointerValue<'c>,
    pub k: PointerValue<'c>,
    pub v: PointerValue<'c>,
    pub o: PointerValue<'c>,
    pub rows: PointerValue<'c>,
    pub runs: PointerValue<'c>,
    pub head_variant: PointerValue<'c>,
    pub inputs: Vec<PointerValue<'c>>,
    /// Tensor copies: the K and V tensor maps (128 bytes each, K first).
    pub tmaps: Option<PointerValue<'c>>,
}

impl<'a, 'c> Attention<'a, 'c> {
    pub fn new(
        g: &'a Gen<'c>,
        k: &'a Kernel,
        geo: &'a Geometry,
        cfg: &'a Config,
        inputs: &'a [InputSpec],
        params: Params<'c>,
        smem: PointerValue<'c>,
    ) -> Attention<'a, 'c> {
        let z = g.i32(0);
        Attention {
            g,
            k,
            geo,
            cfg,
            inputs,
            params,
            smem,
            tid: z,
            computing: g.cx.bool_type().const_int(1, false),
            kv_tid: z,
            warp: z,
            lane: z,
            grp: z,
            tig: z,
            batch: z,
            head: z,
            kvh: z,
            qt: z,
            row0: z,
            qtile: None,
            qrows: [(z, None), (z, None)],
            qfrag: vec![],
            variant: z,
        }
    }

    // ---- addresses ---------------------------------------------------------------------

    /// 32-bit shared address of a byte offset.
    fn saddr(&self, off: IntValue<'c>) -> IntValue<'c> {
        let g = self.g;
        let base = ok(g.b.build_ptr_to_int(self.smem, g.i32t, ""));
        g.add(base, off)
    }

    /// A pointer into shared memory at a byte offset.
    fn sptr(&self, off: IntValue<'c>) -> PointerValue<'c> {
        let g = self.g;
        // SAFETY: offsets stay inside the shared array (the plan in `Config` sizes it).
        unsafe { ok(g.b.build_gep(g.cx.i8_type(), self.smem, &[off], "")) }
    }

    fn st_shared_i32(&self, off: IntValue<'c>, v: IntValue<'c>) {
        ok(self.g.b.build_store(self.sptr(off), v));
    }

    fn ld_shared_i32(&self, off: IntValue<'c>) -> IntValue<'c> {
        ok(self.g.b.build_load(self.g.i32t, self.sptr(off), "")).into_int_value()
    }

    /// Byte offset inside a `[rows][dim]` 16-bit buffer of (row, 16-byte chunk). Rows of a
    /// multiple of 8 chunks are XOR-swizzled (chunk ^ row % 8) so that the 8 rows an
    /// ldmatrix phase reads fall in different banks; other widths are stored plainly.
    fn swz(&self, row: IntValue<'c>, chunk: IntValue<'c>, dim: u32) -> IntValue<'c> {
        let g = self.g;
        let x = if (dim / 8) % 8 == 0 {
            ok(g.b.build_xor(chunk, g.uremi(row, 8), ""))
        } else {
            chunk
        };
        g.add(g.muli(row, i64::from(dim) * 2), g.muli(x, 16))
    }

    /// Byte offset inside a K or V buffer of `bn` rows of (row, 16-byte chunk) in the layout
    /// the products read: `swz` for ldmatrix; for wgmma the canonical 128-byte-swizzled
    /// layout of its matrix descriptors (PTX ISA, "Shared memory matrix layout"): the row
    /// split into 64-element halves, each half a `[bn][128 bytes]` region, the 16-byte chunk
    /// XORed with `row % 8` (Swizzle<3,4,3> on a 1024-byte-aligned base).
    fn kv_off(&self, row: IntValue<'c>, chunk: IntValue<'c>, dim: u32) -> IntValue<'c> {
        let g = self.g;
        if !self.cfg.shape.wgmma {
            return self.swz(row, chunk, dim);
        }
        let half = g.udivi(chunk, 8);
        let c = ok(g.b.build_xor(g.uremi(chunk, 8), g.uremi(row, 8), ""));
        g.add(
            g.add(
                g.muli(half, i64::from(self.cfg.shape.bn * 128)),
                g.muli(row, 128),
            ),
            g.muli(c, 16),
        )
    }

    /// Shared byte offset of K buffer `buf`.
    fn k_buf(&self, buf: IntValue<'c>) -> IntValue<'c> {
        let cfg = self.cfg;
        self.g.muli(buf, i64::from(cfg.shape.bn * cfg.d * 2))
    }

    /// Shared byte offset of V buffer `buf`.
    fn v_buf(&self, buf: IntValue<'c>) -> IntValue<'c> {
        let (g, cfg) = (self.g, self.cfg);
        g.add(
            g.muli(buf, i64::from(cfg.shape.bn * cfg.dv * 2)),
            g.i32(i64::from(cfg.vbuf())),
        )
    }

    /// Shared byte offset of the information of row `row` in key-information slot `slot`.
    fn kinfo_off(&self, slot: IntValue<'c>, row: IntValue<'c>) -> IntValue<'c> {
        let g = self.g;
        g.add(
            g.add(
                g.muli(slot, i64::from(self.cfg.shape.bn * 16)),
                g.muli(row, 16),
            ),
            g.i32(i64::from(self.cfg.kinfo())),
        )
    }

    /// Shared address of mbarrier `buf` (tensor copies): K/V buffer `buf`'s, or in the
    /// overlapped loop K buffer `buf`'s (V buffer `b`'s is `2 + b`).
    fn mbar_addr(&self, buf: IntValue<'c>) -> IntValue<'c> {
        let g = self.g;
        self.saddr(g.add(g.i32(i64::from(self.cfg.mbar())), g.muli(buf, 8)))
    }

    /// The current values of accumulator tiles, in wgmma's register order.
    fn acc_values(&self, tiles: &[[Var<'c>; 4]]) -> Vec<BasicValueEnum<'c>> {
        tiles
            .iter()
            .flat_map(|t| t.iter().map(|v| self.g.get(*v)))
            .collect()
    }

    /// Stores an asm block's outputs back into accumulator tiles (wgmma's register order).
    fn set_acc(&self, tiles: &[[Var<'c>; 4]], values: &[BasicValueEnum<'c>]) {
        for (v, x) in tiles.iter().flat_map(|t| t.iter()).zip(values) {
            self.g.set(*v, *x);
        }
    }

    /// The wgmma matrix descriptor of a 128-byte-swizzled operand at shared byte offset
    /// `off`: start address, leading byte offset `lbo` (MN-major: the distance between
    /// 64-element halves; unused K-major), stride byte offset 1024 (between groups of 8
    /// rows), swizzle mode 1 (128 bytes).
    fn descriptor(&self, off: IntValue<'c>, lbo: u32) -> IntValue<'c> {
        let g = self.g;
        let addr = g.zext64(self.saddr(off));
        let start = ok(g.b.build_and(
            ok(g.b.build_right_shift(addr, g.i64(4), false, "")),
            g.i64(0x3fff),
            "",
        ));
        let fixed = (u64::from(lbo >> 4) << 16) | ((1024u64 >> 4) << 32) | (1u64 << 62);
        ok(g.b.build_or(start, g.i64t.const_int(fixed, false), ""))
    }

    fn global_addr(&self, base: PointerValue<'c>) -> IntValue<'c> {
        ok(self.g.b.build_ptr_to_int(base, self.g.i64t, ""))
    }

    // ---- the kernel --------------------------------------------------------------------

    pub fn emit(&mut self) -> Result<(), String> {
        let g = self.g;
        let cfg = self.cfg.clone();
        if cfg.shape.wgmma {
            // Round the shared base up to 1024 bytes (the swizzle pattern's period).
            let base = ok(g.b.build_ptr_to_int(self.smem, g.i32t, ""));
            let pad = g.and(g.sub(g.i32(0), base), g.i32(1023));
            self.smem = self.sptr(pad);
        }
        let raw = g.sreg("tid.x");
        self.kv_tid = raw;
        self.tid = raw;
        if cfg.shape.ws {
            // Warpgroup 0 produces; the others compute, numbered from 0.
            self.computing = g.icmp(IntPredicate::UGE, raw, g.i32(128));
            self.tid = g.seli(self.computing, g.sub(raw, g.i32(128)), g.i32(0));
        }
        self.warp = g.udivi(self.tid, 32);
        self.lane = g.uremi(raw, 32);
        self.grp = g.udivi(self.lane, 4);
        self.tig = g.uremi(self.lane, 4);
        let bx = g.sreg("ctaid.x");
        self.head = g.sreg("ctaid.y");
        self.batch = g.sreg("ctaid.z");
        let group = i64::from(self.k.info.heads / self.k.info.kv_heads.max(1));
        self.kvh = g.udivi(self.head, group.max(1));
        self.qt = g.udivi(bx, i64::from(cfg.blocks_per_tile));
        let sub = g.uremi(bx, i64::from(cfg.blocks_per_tile));
        self.row0 = g.muli(sub, i64::from(cfg.shape.bm));
        self.qtile = Some(tokens::tile(g, self.geo, self.qt));
        self.variant = g.ld_i32(self.params.head_variant, self.head);
        if cfg.shape.tma {
            // One arrival (the issuing thread's) per phase; visible to the tensor copies
            // before load_q's barriers let anyone issue one.
            let first = g.eqi(raw, 0);
            let this = &*self;
            g.if_then(first, &mut |g| {
                for b in 0..this.cfg.mbars() {
                    let bar = this.mbar_addr(g.i32(i64::from(b)));
                    // Warp-specialised: "full" completes on the producer's 128 arrivals
                    // (and the copies' bytes), "empty" on every computing thread's.
                    let count = match (this.cfg.shape.ws, b < this.cfg.stages()) {
                        (false, _) => 1,
                        (true, true) => 128,
                        (true, false) => this.cfg.compute_threads(),
                    };
                    ptx::mbarrier_init().emit(
                        g.cx,
                        &g.b,
                        &[bar.into(), g.i32(i64::from(count)).into()],
                    );
                }
                ptx::fence_mbarrier_init().emit(g.cx, &g.b, &[]);
            });
        }

        self.load_q();
        // Walk the IR: region 0 until the loop, the loop body per chunk, then the rest.
        let mut frags = Frags {
            s: vec![],
            acc: (0..cfg.dv / 8)
                .map(|_| [0; 4].map(|_| g.var(g.f32t.into(), g.f32(0.0).into())))
                .collect(),
            m: [0; 2].map(|_| g.var(g.f32t.into(), g.f32(f64::NEG_INFINITY).into())),
            l: [0; 2].map(|_| g.var(g.f32t.into(), g.f32(0.0).into())),
            rowmax: [None; 2],
            scale: None,
            p: vec![],
            held: vec![],
            deferred: None,
        };
        if !cfg.shape.ws {
            self.walk(&mut frags)?;
            self.store(&frags);
            return Ok(());
        }
        // Warp-specialised: every thread is past load_q's reads of the staged Q (and its
        // generic writes are ordered before the copies that will land there) before the
        // producer issues a copy; from here the roles never meet at a block barrier.
        ptx::fence_proxy_async().emit(g.cx, &g.b, &[]);
        g.barrier();
        let t = &*self;
        let mut err = None;
        // Registers: 65536 / 384 = 168 a thread at launch; the producer needs few, so it
        // gives them to the two computing warpgroups (2 x 128 x 232 + 128 x 40 <= 65536).
        g.if_else(
            self.computing,
            &mut |g| {
                ptx::setmaxnreg(true, WS_COMPUTE_REGS).emit(g.cx, &g.b, &[]);
                match t.walk(&mut frags) {
                    Ok(()) => t.store(&frags),
                    Err(e) => err = Some(e),
                }
            },
            &mut |g| {
                ptx::setmaxnreg(false, WS_PRODUCER_REGS).emit(g.cx, &g.b, &[]);
                t.produce()
            },
        );
        err.map_or(Ok(()), Err)
    }

    /// Region 0 of the IR: the key loop, then nothing but the store (emitted by the caller).
    fn walk(&self, frags: &mut Frags<'c>) -> Result<(), String> {
        let order = self.k.topo_order();
        for n in order
            .iter()
            .filter(|n| self.k.node(**n).region == crate::ir::RegionId(0))
        {
            match &self.k.node(*n).op {
                Op::KvLoop { region, .. } => self.kv_loop(*region, frags)?,
                Op::Normalize | Op::Convert(_) | Op::Store => {}
                Op::Arg(_) | Op::ProgramId | Op::KvHead | Op::Load(Tensor::Q) | Op::Const(_) => {}
                other => {
                    return Err(format!(
                        "the CUDA backend cannot lower `{}` outside the key loop",
                        other.name()
                    ))
                }
            }
        }
        Ok(())
    }

    /// Q rows of this block into registers: positions into shared memory, cp.async, then
    /// ldmatrix into A fragments.
    fn load_q(&mut self) {
        let g = self.g;
        let cfg = self.cfg.clone();
        let qtile = self.qtile.expect("q tile set");
        let qinfo = cfg.qinfo();
        // Row information: one thread per row.
        let in_block = g.and(
            g.lt(self.tid, g.i32(i64::from(cfg.shape.bm))),
            self.computing,
        );
        let (tid, row0, qt, geo) = (self.tid, self.row0, self.qt, self.geo);
        let this = &*self;
        g.if_then(in_block, &mut |g| {
            let r = g.add(row0, tid);
            let info = tokens::row(g, geo, qt, r);
            let off = g.addi(g.muli(tid, 16), i64::from(qinfo));
            this.st_shared_i32(off, info.pos);
            for a in 0..3 {
                this.st_shared_i32(g.addi(off, 4 + 4 * a as i64), info.coords[a]);
            }
        });
        g.barrier();
        // cp.async the rows (missing rows zero-filled).
        let chunks_per_row = cfg.d / 8;
        let total = cfg.shape.bm * chunks_per_row;
        let q_base = self.global_addr(self.params.q);
        let heads = i64::from(self.k.info.heads);
        let tokens = self.k.info.tokens as i64;
        let bh = g.add(g.muli(g.zext64(self.batch), heads), g.zext64(self.head));
        let bh_off = g.muli(bh, tokens * i64::from(cfg.d) * 2);
        let threads = cfg.compute_threads();
        for it in 0..total.div_ceil(threads) {
            let idx = g.addi(self.tid, i64::from(it * threads));
            let inside = g.and(g.lt(idx, g.i32(i64::from(total))), self.computing);
            let this = &*self;
            g.if_then(inside, &mut |g| {
                let row = g.udivi(idx, i64::from(chunks_per_row));
                let c = g.uremi(idx, i64::from(chunks_per_row));
                let tr = g.add(row0, row);
                let exists = g.lt(tr, qtile.len);
                let pos = this.ld_shared_i32(g.addi(g.muli(row, 16), i64::from(qinfo)));
                let elem = g.add(
                    g.muli(g.zext64(pos), i64::from(cfg.d) * 2),
                    g.muli(g.zext64(c), 16),
                );
                let src = g.add(g.add(q_base, bh_off), elem);
                let src = g.seli(exists, src, q_base);
                let size = g.seli(exists, g.i32(16), g.i32(0));
                let dst = this.saddr(this.swz(row, c, cfg.d));
                ptx::cp_async_16().emit(g.cx, &g.b, &[dst.into(), src.into(), size.into()]);
            });
        }
        ptx::cp_async_commit().emit(g.cx, &g.b, &[]);
        ptx::cp_async_wait(0).emit(g.cx, &g.b, &[]);
        g.barrier();
        // A fragments: rows warp*16 .. +16, 16 columns per ldmatrix.x4.
        let mi = g.udivi(self.lane, 8);
        let row = g.add(
            g.add(g.muli(self.warp, 16), g.uremi(self.lane, 8)),
            g.muli(g.uremi(mi, 2), 8),
        );
        let half = g.udivi(mi, 2);
        self.qfrag = (0..cfg.d / 16)
            .map(|kk| {
                let chunk = g.add(g.i32(i64::from(kk * 2)), half);
                let addr = self.saddr(self.swz(row, chunk, cfg.d));
                let r = ptx::ldmatrix_x4(false).emit(g.cx, &g.b, &[addr.into()]);
                [r[0], r[1], r[2], r[3]].map(|x| x.into_int_value())
            })
            .collect();
        // This thread's two rows.
        for (i, off) in [0i64, 8].iter().enumerate() {
            let brow = g.addi(g.add(g.muli(self.warp, 16), self.grp), *off);
            let tr = g.add(self.row0, brow);
            let base = g.addi(g.muli(brow, 16), i64::from(qinfo));
            let pos = self.ld_shared_i32(base);
            let coords = [0, 1, 2].map(|a| self.ld_shared_i32(g.addi(base, 4 + 4 * a)));
            self.qrows[i] = (tr, Some(Row { pos, coords }));
        }
        // The K/V pipeline reuses the memory Q was staged in.
        g.barrier();
    }

    fn cursor_load_run(&self, c: &Cursor<'c>, r: IntValue<'c>) {
        let g = self.g;
        let base = g.muli(r, 3);
        let start = g.ld_i32(self.params.runs, base);
        let len = g.ld_i32(self.params.runs, g.addi(base, 1));
        let class = g.ld_i32(self.params.runs, g.addi(base, 2));
        g.set(c.kt, start);
        g.set(c.kend, g.add(start, len));
        g.set(c.class, class);
        g.set(c.chunk, g.i32(0));
    }

    /// Moves a cursor to the next chunk (into the next tile, the next run).
    fn advance(&self, c: &Cursor<'c>, end: IntValue<'c>) {
        let g = self.g;
        let ch = g.addi(g.geti(c.chunk), 1);
        g.set(c.chunk, ch);
        let tile_done = g.eqi(ch, i64::from(self.cfg.chunks));
        let this = self;
        g.if_then(tile_done, &mut |g| {
            g.set(c.chunk, g.i32(0));
            let kt = g.addi(g.geti(c.kt), 1);
            g.set(c.kt, kt);
            let run_done = g.icmp(IntPredicate::EQ, kt, g.geti(c.kend));
            g.if_then(run_done, &mut |g| {
                let r = g.addi(g.geti(c.r), 1);
                g.set(c.r, r);
                let more = g.lt(r, end);
                g.if_then(more, &mut |_| this.cursor_load_run(c, r));
            });
        });
    }

    fn new_cursor(&self) -> Cursor<'c> {
        let g = self.g;
        let z = || g.var(g.i32t.into(), g.i32(0).into());
        Cursor {
            r: z(),
            kt: z(),
            kend: z(),
            chunk: z(),
            class: z(),
        }
    }

    fn copy_cursor(&self, from: &Cursor<'c>, to: &Cursor<'c>) {
        let g = self.g;
        for (a, b) in [
            (from.r, to.r),
            (from.kt, to.kt),
            (from.kend, to.kend),
            (from.chunk, to.chunk),
            (from.class, to.class),
        ] {
            g.set(b, g.geti(a));
        }
    }

    /// Row information of a chunk's keys into `kinfo[slot]` (one thread per key).
    fn fill_kinfo(&self, c: &Cursor<'c>, slot: IntValue<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        let tid = self.kv_tid;
        let in_chunk = g.lt(tid, g.i32(i64::from(cfg.shape.bn)));
        let this = self;
        g.if_then(in_chunk, &mut |g| {
            let kt = g.geti(c.kt);
            let r = g.add(g.muli(g.geti(c.chunk), i64::from(cfg.shape.bn)), tid);
            let info = tokens::row(g, this.geo, kt, r);
            let off = this.kinfo_off(slot, tid);
            this.st_shared_i32(off, info.pos);
            for a in 0..3 {
                this.st_shared_i32(g.addi(off, 4 + 4 * a as i64), info.coords[a]);
            }
        });
    }

    /// Waits until the tensor copies into buffer `buf` have landed (the barrier's phase of
    /// `parity` completed).
    fn wait_tma(&self, buf: IntValue<'c>, parity: IntValue<'c>) {
        let g = self.g;
        let bar = self.mbar_addr(buf);
        let ready = g.var(g.i32t.into(), g.i32(0).into());
        g.while_loop(&mut |g| g.eqi(g.geti(ready), 0), &mut |g| {
            let r = ptx::mbarrier_try_wait().emit(g.cx, &g.b, &[bar.into(), parity.into()]);
            g.set(ready, r[0]);
        });
    }

    /// A chunk's K and V by tensor copies (one thread): the chunk's rows are consecutive
    /// in the tensor of `[batch * kv_heads * tokens, dim]` rows, from the position of its
    /// first row; 64-element boxes of `bn` rows land 128-byte-swizzled in the layout of
    /// `kv_off`. Rows past the tile are the next tokens' (masked) or past the tensor's end
    /// (zero-filled); either way finite.
    fn issue_kv_tma(&self, buf: IntValue<'c>, slot: IntValue<'c>) {
        self.tma_copies(Operands::KV, buf, slot, self.mbar_addr(buf));
    }

    /// Tensor copies of K, V or both of the chunk whose key information is in `slot` into
    /// buffer `buf`, completing on the barrier at `bar` (one thread issues them).
    fn tma_copies(
        &self,
        which: Operands,
        buf: IntValue<'c>,
        slot: IntValue<'c>,
        bar: IntValue<'c>,
    ) {
        let g = self.g;
        let cfg = self.cfg;
        let Some(tmaps) = self.params.tmaps else {
            return;
        };
        let mut parts = vec![];
        if which != Operands::V {
            parts.push((0u32, cfg.d, self.k_buf(buf)));
        }
        if which != Operands::K {
            parts.push((1, cfg.dv, self.v_buf(buf)));
        }
        let first = g.eqi(self.kv_tid, 0);
        let this = self;
        g.if_then(first, &mut |g| {
            let pos0 = this.ld_shared_i32(this.kinfo_off(slot, g.i32(0)));
            let kvheads = i64::from(this.k.info.kv_heads);
            let bh = g.add(g.muli(this.batch, kvheads), this.kvh);
            let row = g.add(g.muli(bh, this.k.info.tokens as i64), pos0);
            let bytes: u32 = parts.iter().map(|(_, dim, _)| cfg.shape.bn * dim * 2).sum();
            ptx::mbarrier_arrive_expect_tx().emit(
                g.cx,
                &g.b,
                &[bar.into(), g.i32(i64::from(bytes)).into()],
            );
            let maps = this.global_addr(tmaps);
            for (map, dim, base) in &parts {
                let map = g.add(maps, g.i64(i64::from(map * 128)));
                for half in 0..dim / 64 {
                    let dst = this.saddr(g.addi(*base, i64::from(half * cfg.shape.bn * 128)));
                    let col = g.i32(i64::from(half * 64));
                    ptx::tma_load_2d().emit(
                        g.cx,
                        &g.b,
                        &[dst.into(), map.into(), col.into(), row.into(), bar.into()],
                    );
                }
            }
        });
    }

    /// A chunk's K and V rows into buffer `buf`, their positions from key-information slot
    /// `slot`: by cp.async (rows past the tile zero-filled), or by tensor copies.
    fn issue_kv(&self, c: &Cursor<'c>, buf: IntValue<'c>, slot: IntValue<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        if cfg.shape.tma {
            return self.issue_kv_tma(buf, slot);
        }
        let kt = g.geti(c.kt);
        let tile = tokens::tile(g, self.geo, kt);
        let chunk0 = g.muli(g.geti(c.chunk), i64::from(cfg.shape.bn));
        let kvheads = i64::from(self.k.info.kv_heads);
        let tokens_n = self.k.info.tokens as i64;
        let bh = g.add(g.muli(g.zext64(self.batch), kvheads), g.zext64(self.kvh));
        for (ptr, dim, is_v) in [(self.params.k, cfg.d, false), (self.params.v, cfg.dv, true)] {
            let base = self.global_addr(ptr);
            let bh_off = g.muli(bh, tokens_n * i64::from(dim) * 2);
            let per_row = dim / 8;
            let total = cfg.shape.bn * per_row;
            let buf_off = if is_v {
                self.v_buf(buf)
            } else {
                self.k_buf(buf)
            };
            for it in 0..total.div_ceil(cfg.threads()) {
                let idx = g.addi(self.tid, i64::from(it * cfg.threads()));
                let inside = g.lt(idx, g.i32(i64::from(total)));
                let this = self;
                g.if_then(inside, &mut |g| {
                    let row = g.udivi(idx, i64::from(per_row));
                    let ch = g.uremi(idx, i64::from(per_row));
                    let exists = g.lt(g.add(chunk0, row), tile.len);
                    let pos = this.ld_shared_i32(this.kinfo_off(slot, row));
                    let elem = g.add(
                        g.muli(g.zext64(pos), i64::from(dim) * 2),
                        g.muli(g.zext64(ch), 16),
                    );
                    let src = g.add(g.add(base, bh_off), elem);
                    let src = g.seli(exists, src, base);
                    let size = g.seli(exists, g.i32(16), g.i32(0));
                    let dst = this.saddr(g.add(buf_off, this.kv_off(row, ch, dim)));
                    ptx::cp_async_16().emit(g.cx, &g.b, &[dst.into(), src.into(), size.into()]);
                });
            }
        }
    }

    /// The walk over this query tile's runs of key tiles: the end of its runs in the run
    /// table, the current chunk's cursor (at the first run, when there is one) and one for
    /// the next chunk.
    fn key_walk(&self) -> KeyWalk<'c> {
        let g = self.g;
        let total_tiles = i64::from(self.geo.total_tiles);
        let row_at = g.add(g.muli(self.variant, total_tiles + 1), self.qt);
        let start = g.ld_i32(self.params.rows, row_at);
        let end = g.ld_i32(self.params.rows, g.addi(row_at, 1));
        let cur = self.new_cursor();
        let next = self.new_cursor();
        g.set(cur.r, start);
        let has = g.lt(start, end);
        g.if_then(has, &mut |_| self.cursor_load_run(&cur, start));
        KeyWalk {
            end,
            cur,
            next,
            has,
        }
    }

    fn kv_loop(&self, region: crate::ir::RegionId, f: &mut Frags<'c>) -> Result<(), String> {
        if self.cfg.shape.overlap {
            return self.kv_loop_overlapped(region, f);
        }
        if self.cfg.shape.ws {
            return self.kv_loop_ws(region, f);
        }
        let g = self.g;
        let KeyWalk {
            end,
            cur,
            next,
            has,
        } = self.key_walk();
        let buf = g.var(g.i32t.into(), g.i32(0).into());
        // Chunks computed so far: with tensor copies, chunk i waits for the phase of
        // parity (i / 2) % 2 of its buffer's barrier.
        let done = self
            .cfg
            .shape
            .tma
            .then(|| g.var(g.i32t.into(), g.i32(0).into()));
        self.first_chunk(&cur, has);
        let body: Vec<NodeIndex> = self.k.region_nodes(region);
        let mut err = None;
        {
            let this = self;
            g.while_loop(&mut |g| g.lt(g.geti(cur.r), end), &mut |g| {
                let b = g.geti(buf);
                let nb = g.sub(g.i32(1), b);
                this.copy_cursor(&cur, &next);
                this.advance(&next, end);
                let more = g.lt(g.geti(next.r), end);
                let t = &*this;
                g.if_then(more, &mut |_| t.fill_kinfo(&next, nb));
                // cp.async reads every key's position; a tensor copy only the first, which
                // its issuing thread (0) wrote itself. Everyone's last reads of buffer and
                // slot `nb` were before the previous chunk's closing barrier.
                if !t.cfg.shape.tma {
                    g.barrier();
                }
                g.if_then(more, &mut |_| t.issue_kv(&next, nb, nb));
                if let Some(done) = done {
                    // The chunk's key information was written before the barrier above.
                    let parity = g.and(g.udivi(g.geti(done), 2), g.i32(1));
                    t.wait_tma(b, parity);
                } else {
                    ptx::cp_async_commit().emit(g.cx, &g.b, &[]);
                    ptx::cp_async_wait(1).emit(g.cx, &g.b, &[]);
                    if t.cfg.shape.wgmma {
                        ptx::fence_proxy_async().emit(g.cx, &g.b, &[]);
                    }
                    g.barrier();
                }
                if let Err(e) = this.chunk(&body, &cur, b, Step::Serial(b), f, &mut |_| {}) {
                    err = Some(e);
                }
                g.barrier();
                this.copy_cursor(&next, &cur);
                g.set(buf, nb);
                if let Some(done) = done {
                    g.set(done, g.addi(g.geti(done), 1));
                }
            });
        }
        if !self.cfg.shape.tma {
            ptx::cp_async_wait(0).emit(g.cx, &g.b, &[]);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The prologue of both key loops: the first chunk's key information into slot 0 and
    /// its K and V on their way into buffer 0 (when the query tile has a run, `has`).
    fn first_chunk(&self, cur: &Cursor<'c>, has: IntValue<'c>) {
        let g = self.g;
        if self.cfg.shape.tma {
            // Q was staged where the tensor copies land: order those generic accesses
            // before the async proxy's writes (the barrier below completes the order).
            ptx::fence_proxy_async().emit(g.cx, &g.b, &[]);
        }
        g.if_then(has, &mut |g| {
            self.fill_kinfo(cur, g.i32(0));
            g.barrier();
            self.issue_kv(cur, g.i32(0), g.i32(0));
        });
        if !self.cfg.shape.tma {
            ptx::cp_async_commit().emit(g.cx, &g.b, &[]);
        }
    }

    /// The key loop with each warpgroup's softmax overlapped with its previous `P V`
    /// (tensor copies, `overlap`; FlashAttention-3's intra-warpgroup pipelining). Chunk `n`
    /// uses K buffer `n % 2`, V buffer `n % 2`, key-information slot `n % 3`; K buffer `b`
    /// completes on mbarrier `b`, V buffer `b` on mbarrier `2 + b`, chunk `n`'s copies in the
    /// phase of parity `n / 2 % 2`.
    ///
    /// Chunk 0: `S` waited for, softmax, P kept. Chunk `n > 0`: wait for K(n) and V(n-1);
    /// one block issues `S = Q K^T(n)` and `P(n-1) V(n-1)` and waits for `S`; the softmax of
    /// `n` runs while `P V` does; then the wait for `P V`, after which K(n) and V(n-1) are
    /// read by nobody in this warpgroup: the key information of chunk `n + 2`, the one
    /// barrier a chunk, and one thread issues K(n+2) into K buffer `n % 2` and V(n+1) into
    /// V buffer `(n+1) % 2` (each lands a whole chunk before it is read). The slot filled,
    /// `(n+2) % 3`, was last read by chunk `n - 1`'s softmax, before the previous barrier.
    /// After the loop, the last chunk's `P V`. Three cursors: the chunk being computed
    /// (masking), the next (its V), the one after (its key information and K).
    fn kv_loop_overlapped(
        &self,
        region: crate::ir::RegionId,
        f: &mut Frags<'c>,
    ) -> Result<(), String> {
        let g = self.g;
        let KeyWalk {
            end,
            cur,
            next: mid,
            has,
        } = self.key_walk();
        let ahead = self.new_cursor();
        let body: Vec<NodeIndex> = self.k.region_nodes(region);
        let p_vars: Vec<[Var<'c>; 4]> = (0..self.cfg.shape.bn / 16)
            .map(|_| [0; 4].map(|_| g.var(g.i32t.into(), g.i32(0).into())))
            .collect();
        // Q was staged where the tensor copies land: order those generic accesses before
        // the async proxy's writes (the barrier below completes the order).
        ptx::fence_proxy_async().emit(g.cx, &g.b, &[]);
        let mut err = None;
        let t = self;
        g.if_then(has, &mut |g| {
            t.copy_cursor(&cur, &mid);
            t.advance(&mid, end);
            t.copy_cursor(&mid, &ahead);
            t.advance(&ahead, end);
            let exists = |c: &Cursor<'c>| g.lt(g.geti(c.r), end);
            let second = exists(&mid);
            t.fill_kinfo(&cur, g.i32(0));
            g.if_then(second, &mut |g| t.fill_kinfo(&mid, g.i32(1)));
            g.barrier();
            let (k0, k1, v0) = (g.i32(0), g.i32(1), g.i32(2));
            t.tma_copies(Operands::K, k0, k0, t.mbar_addr(k0));
            t.tma_copies(Operands::V, k0, k0, t.mbar_addr(v0));
            g.if_then(second, &mut |_| {
                t.tma_copies(Operands::K, k1, k1, t.mbar_addr(k1))
            });
            // After chunk n's wait for P V: chunk n+2's key information, the barrier, K(n+2)
            // and V(n+1).
            let prefetch = |t: &Self, n: IntValue<'c>, mid: &Cursor<'c>, ahead: &Cursor<'c>| {
                let (more1, more2) = (exists(mid), exists(ahead));
                let slot2 = g.uremi(g.addi(n, 2), 3);
                let slot1 = g.uremi(g.addi(n, 1), 3);
                g.if_then(more2, &mut |_| t.fill_kinfo(ahead, slot2));
                g.barrier();
                let kb = g.uremi(n, 2);
                let vb = g.uremi(g.addi(n, 1), 2);
                g.if_then(more2, &mut |_| {
                    t.tma_copies(Operands::K, kb, slot2, t.mbar_addr(kb))
                });
                g.if_then(more1, &mut |g| {
                    t.tma_copies(Operands::V, vb, slot1, t.mbar_addr(g.addi(vb, 2)))
                });
            };
            let shift = |t: &Self| {
                t.copy_cursor(&mid, &cur);
                t.copy_cursor(&ahead, &mid);
                t.advance(&ahead, end);
            };
            let keep_p = |f: &Frags<'c>| {
                for (vars, words) in p_vars.iter().zip(&f.p) {
                    for (v, w) in vars.iter().zip(words) {
                        g.set(*v, *w);
                    }
                }
            };
            // Chunk 0.
            t.wait_tma(k0, k0);
            let zero = g.i32(0);
            let r = t.chunk(&body, &cur, zero, Step::First(k0), f, &mut |t| {
                prefetch(t, zero, &mid, &ahead)
            });
            if let Err(e) = r {
                err = Some(e);
            }
            keep_p(f);
            shift(t);
            let n_var = g.var(g.i32t.into(), g.i32(1).into());
            g.while_loop(&mut |_| exists(&cur), &mut |g| {
                let n = g.geti(n_var);
                let kb = g.uremi(n, 2);
                let prev = g.sub(n, g.i32(1));
                let vb = g.uremi(prev, 2);
                t.wait_tma(kb, g.and(g.udivi(n, 2), g.i32(1)));
                t.wait_tma(g.addi(vb, 2), g.and(g.udivi(prev, 2), g.i32(1)));
                f.p = p_vars.iter().map(|w| w.map(|v| g.geti(v))).collect();
                let step = Step::Steady {
                    k: kb,
                    v_prev: t.v_buf(vb),
                };
                let slot = g.uremi(n, 3);
                let r = t.chunk(&body, &cur, slot, step, f, &mut |t| {
                    prefetch(t, n, &mid, &ahead)
                });
                if let Err(e) = r {
                    err = Some(e);
                }
                keep_p(f);
                shift(t);
                g.set(n_var, g.addi(n, 1));
            });
            // The last chunk's P V (V(last) was never waited for).
            let last = g.sub(g.geti(n_var), g.i32(1));
            let vb = g.uremi(last, 2);
            t.wait_tma(g.addi(vb, 2), g.and(g.udivi(last, 2), g.i32(1)));
            f.p = p_vars.iter().map(|w| w.map(|v| g.geti(v))).collect();
            t.pv_wgmma(t.v_buf(vb), f);
        });
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The warp-specialised key loop of the computing warpgroups: chunk `n` is in stage
    /// `n % S` (S = `stages()`); wait for the stage's "full" barrier (phase parity
    /// `n / S % 2`: the producer's key information and the tensor copies have landed),
    /// compute the chunk with both products waited for, and arrive on its "empty" barrier
    /// (every computing thread is past its reads of the stage: K, V and the key
    /// information). The cursor walks the same chunks as the producer's, for the masks.
    fn kv_loop_ws(&self, region: crate::ir::RegionId, f: &mut Frags<'c>) -> Result<(), String> {
        let g = self.g;
        let stages = i64::from(self.cfg.stages());
        let KeyWalk {
            end,
            cur,
            next,
            has,
        } = self.key_walk();
        let body: Vec<NodeIndex> = self.k.region_nodes(region);
        let n_var = g.var(g.i32t.into(), g.i32(0).into());
        // Ping-pong: computing warpgroup `w` issues its `Q K^T` after the barrier `1 + w`
        // and then opens `2 - w` for the other. Warpgroup 1 opens 1 once before the first
        // chunk and not after its last, so that every arrival has its wait.
        let wg = g.udivi(self.warp, 4);
        let (mine, other) = (g.addi(wg, 1), g.sub(g.i32(2), wg));
        let threads = g.i32(i64::from(self.cfg.compute_threads()));
        if self.cfg.shape.pingpong {
            let first_turn = g.and(has, g.eqi(wg, 1));
            let open = g.seli(first_turn, g.i32(1), g.i32(0));
            ptx::bar_arrive_if().emit(g.cx, &g.b, &[g.i32(1).into(), threads.into(), open.into()]);
        }
        let mut err = None;
        g.while_loop(&mut |g| g.lt(g.geti(cur.r), end), &mut |g| {
            let n = g.geti(n_var);
            let stage = g.uremi(n, stages);
            self.wait_tma(stage, g.and(g.udivi(n, stages), g.i32(1)));
            let step = if self.cfg.shape.pingpong {
                self.copy_cursor(&cur, &next);
                self.advance(&next, end);
                let last = g.icmp(IntPredicate::SGE, g.geti(next.r), end);
                let quiet = g.and(last, g.eqi(wg, 1));
                Step::Turn {
                    buf: stage,
                    mine,
                    other,
                    arrive: g.seli(quiet, g.i32(0), g.i32(1)),
                }
            } else {
                Step::Serial(stage)
            };
            if let Err(e) = self.chunk(&body, &cur, stage, step, f, &mut |_| {}) {
                err = Some(e);
            }
            let empty = self.mbar_addr(g.addi(stage, stages));
            ptx::mbarrier_arrive().emit(g.cx, &g.b, &[empty.into()]);
            self.advance(&cur, end);
            g.set(n_var, g.addi(n, 1));
        });
        err.map_or(Ok(()), Err)
    }

    /// The warp-specialised producer (warpgroup 0): walks this block's chunks; for chunk
    /// `n` in stage `s = n % S`, once the computing warpgroups have released the stage's
    /// previous chunk (its "empty" barrier, phase parity `(n / S - 1) % 2`, from chunk
    /// `S` on), its first `bn` threads write the keys' information into slot `s` and
    /// arrive on the "full" barrier (release: the consumers' wait sees the writes); thread
    /// 0 instead arrives expecting the copies' bytes and issues them (it reads only key 0's
    /// position, which it wrote itself).
    fn produce(&self) {
        let g = self.g;
        let cfg = self.cfg;
        let stages = i64::from(cfg.stages());
        let KeyWalk { end, cur, .. } = self.key_walk();
        let n_var = g.var(g.i32t.into(), g.i32(0).into());
        let first = g.eqi(self.kv_tid, 0);
        g.while_loop(&mut |g| g.lt(g.geti(cur.r), end), &mut |g| {
            let n = g.geti(n_var);
            let stage = g.uremi(n, stages);
            let round = g.udivi(n, stages);
            let reused = g.icmp(IntPredicate::UGE, n, g.i32(stages));
            g.if_then(reused, &mut |g| {
                let parity = g.and(g.sub(round, g.i32(1)), g.i32(1));
                self.wait_tma(g.addi(stage, stages), parity);
            });
            self.fill_kinfo(&cur, stage);
            let full = self.mbar_addr(stage);
            g.if_else(
                first,
                &mut |_| self.tma_copies(Operands::KV, stage, stage, full),
                &mut |g| {
                    ptx::mbarrier_arrive().emit(g.cx, &g.b, &[full.into()]);
                },
            );
            self.advance(&cur, end);
            g.set(n_var, g.addi(n, 1));
        });
    }

    /// One chunk: the loop body's ops on fragments. The keys' information is in slot
    /// `slot`; `step` says where K and V are and how the products are issued; `at_pv` runs
    /// where `P V` is (after the overlapped loop's wait).
    fn chunk(
        &self,
        body: &[NodeIndex],
        cur: &Cursor<'c>,
        slot: IntValue<'c>,
        step: Step<'c>,
        f: &mut Frags<'c>,
        at_pv: &mut dyn FnMut(&Self),
    ) -> Result<(), String> {
        let g = self.g;
        let cfg = self.cfg.clone();
        let kt = g.geti(cur.kt);
        let ktile = tokens::tile(g, self.geo, kt);
        let chunk0 = g.muli(g.geti(cur.chunk), i64::from(cfg.shape.bn));
        // Keys of this chunk that can be attended to.
        let kval = g.smin(
            g.smax(g.sub(ktile.valid, chunk0), g.i32(0)),
            g.i32(i64::from(cfg.shape.bn)),
        );
        // The IR masks partial key tiles; a chunk that is not a whole tile (the tile is not a
        // multiple of `bn`) also holds padding keys, masked here when the IR has no mask.
        let has_mask = body
            .iter()
            .any(|n| matches!(self.k.node(*n).op, Op::Mask(_)));
        // A positive scale commutes with the row max and masking (-inf stays -inf), so it
        // can wait for the exponent's multiply-add: one multiply less a score. A score
        // modifier must see scaled scores.
        let fold_scale = !body
            .iter()
            .any(|n| matches!(self.k.node(*n).op, Op::ScoreMod(_)));
        f.scale = None;
        for n in body {
            let node = self.k.node(*n);
            if matches!(node.op, Op::RowMax) && !has_mask && !cfg.exact {
                let ninf = g.f32(f64::NEG_INFINITY);
                self.elementwise(slot, f, &mut |_, s, _, j, _| {
                    g.self_f(g.lt(j, kval), s, ninf)
                });
            }
            match &node.op {
                Op::KvTile | Op::Carry(_) | Op::Load(_) | Op::Yield => {}
                Op::Dot { transpose_b: true } => match step {
                    Step::Serial(buf) | Step::First(buf) => self.qk(buf, f),
                    Step::Steady { k, v_prev } => self.qk_with_pv(k, v_prev, f),
                    Step::Turn {
                        buf,
                        mine,
                        other,
                        arrive,
                    } => self.qk_turn(buf, (mine, other, arrive), f),
                },
                Op::Scale(c) if fold_scale && *c > 0.0 => f.scale = Some(*c),
                Op::Scale(c) => {
                    let c = g.f32(*c);
                    for t in &f.s {
                        for v in t {
                            g.set(*v, g.fmul(g.getf(*v), c));
                        }
                    }
                }
                Op::ScoreMod(id) => {
                    if let Some(ElemFn::Score(e)) = self.k.elem_fns.get(id.0 as usize).cloned() {
                        self.elementwise(slot, f, &mut |this, s, q, _j, k| {
                            let mut sc = PairScope {
                                a: this,
                                q,
                                k,
                                score: Some(s),
                                tile: false,
                            };
                            let v = expr::gen(g, &e, &mut sc);
                            if e.ty == crate::sema::expr::Ty::Int {
                                ok(g.b.build_signed_int_to_float(v.into_int_value(), g.f32t, ""))
                            } else {
                                v.into_float_value()
                            }
                        });
                    }
                }
                Op::Mask(fs) => self.mask(fs, slot, cur, kval, ktile, f),
                Op::RowMax => self.row_max(f),
                Op::SoftmaxUpdate { exp2 } => self.softmax(f, *exp2),
                Op::RowSum => {}
                Op::RescaleAdd => {
                    // Either the running sum (rows) or the accumulator (tile).
                    match node.results.first() {
                        Some(Type::Rows { .. }) => self.update_l(f),
                        _ => match step {
                            Step::Serial(buf) | Step::Turn { buf, .. } => self.pv(buf, f),
                            Step::First(_) => {
                                self.rescale_deferred(f);
                                at_pv(self);
                            }
                            Step::Steady { .. } => {
                                // The previous `P V` completes; its P words were held.
                                let held = std::mem::take(&mut f.held);
                                let mut args: Vec<BasicValueEnum> =
                                    held.iter().map(|x| (*x).into()).collect();
                                args.extend(self.acc_values(&f.acc));
                                let out = ptx::wgmma_wait(held.len(), f.acc.len() * 4)
                                    .emit(g.cx, &g.b, &args);
                                self.set_acc(&f.acc, &out);
                                self.rescale_deferred(f);
                                at_pv(self);
                            }
                        },
                    }
                }
                Op::Convert(_) => self.pack_p(f),
                Op::Dot { transpose_b: false } => {} // fused into the accumulator update
                other => {
                    return Err(format!(
                        "the CUDA backend cannot lower `{}` in the key loop",
                        other.name()
                    ))
                }
            }
        }
        Ok(())
    }

    /// `S = Q K^T` for the chunk in `buf`.
    fn qk(&self, buf: IntValue<'c>, f: &mut Frags<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        if cfg.shape.wgmma {
            return self.qk_wgmma(buf, f);
        }
        f.s = (0..cfg.shape.bn / 8)
            .map(|_| [0; 4].map(|_| g.var(g.f32t.into(), g.f32(0.0).into())))
            .collect();
        let mi = g.udivi(self.lane, 8);
        let kbase = self.k_buf(buf);
        for p in 0..cfg.shape.bn / 16 {
            let key = g.add(
                g.add(g.i32(i64::from(p * 16)), g.uremi(self.lane, 8)),
                g.muli(g.udivi(mi, 2), 8),
            );
            for kk in 0..cfg.d / 16 {
                let chunk = g.add(g.i32(i64::from(kk * 2)), g.uremi(mi, 2));
                let addr = self.saddr(g.add(kbase, self.swz(key, chunk, cfg.d)));
                let b = ptx::ldmatrix_x4(false).emit(g.cx, &g.b, &[addr.into()]);
                for (t, (b0, b1)) in [(2 * p, (b[0], b[1])), (2 * p + 1, (b[2], b[3]))] {
                    self.mma(&f.s[t as usize], &self.qfrag[kk as usize], [b0, b1]);
                }
            }
        }
    }

    /// `S = Q K^T` on wgmma: Q from registers (each warp's A fragments), K^T by descriptor
    /// (K-major: keys are the rows of the buffer); k step `kk` starts 32 bytes further into
    /// the swizzled 128-byte rows, or in the second half.
    fn qk_product(&self, buf: IntValue<'c>) -> (ptx::Wgmma<'static>, Vec<BasicValueEnum<'c>>) {
        let g = self.g;
        let cfg = self.cfg;
        let kbase = self.k_buf(buf);
        let ksteps = cfg.d / 16;
        let descs = (0..ksteps).map(|kk| {
            let off = (kk / 4) * cfg.shape.bn * 128 + (kk % 4) * 32;
            self.descriptor(g.addi(kbase, i64::from(off)), 16)
        });
        let w = ptx::Wgmma {
            elem: cfg.elem,
            n: cfg.shape.bn,
            ksteps,
            accumulate: false,
            trans_b: false,
        };
        (w, self.wgmma_inputs(&self.qfrag, descs))
    }

    fn qk_wgmma(&self, buf: IntValue<'c>, f: &mut Frags<'c>) {
        let g = self.g;
        let (w, mut args) = self.qk_product(buf);
        args.push(g.i32(1).into());
        let d = ptx::wgmma_block(&[w], Some(0)).emit(g.cx, &g.b, &args);
        self.set_s_into(f, &d);
    }

    /// Ping-pong's `S = Q K^T`: this warpgroup's turn (named barrier `mine`), the product
    /// issued, the other warpgroup's turn given (`other`, when `arrive` is 1: not after
    /// the last chunk, which nobody waits for), then the wait (`S` tied through it).
    fn qk_turn(
        &self,
        buf: IntValue<'c>,
        (mine, other, arrive): (IntValue<'c>, IntValue<'c>, IntValue<'c>),
        f: &mut Frags<'c>,
    ) {
        let g = self.g;
        let threads = g.i32(i64::from(self.cfg.compute_threads()));
        ptx::bar_sync().emit(g.cx, &g.b, &[mine.into(), threads.into()]);
        let (w, mut args) = self.qk_product(buf);
        args.push(g.i32(1).into());
        let d = ptx::wgmma_block(&[w], None).emit(g.cx, &g.b, &args);
        ptx::bar_arrive_if().emit(g.cx, &g.b, &[other.into(), threads.into(), arrive.into()]);
        let d = ptx::wgmma_wait(0, d.len()).emit(g.cx, &g.b, &d);
        self.set_s_into(f, &d);
    }

    /// `S` fragments from an asm block's first outputs.
    fn set_s_into(&self, f: &mut Frags<'c>, d: &[BasicValueEnum<'c>]) {
        let g = self.g;
        f.s = d[..(self.cfg.shape.bn / 2) as usize]
            .chunks(4)
            .map(|c| [0, 1, 2, 3].map(|e| g.var(g.f32t.into(), c[e])))
            .collect();
    }

    /// The products of `acc += P V`: P from registers, V by descriptor (MN-major,
    /// transposed: the buffer's rows are keys, k step `t` starts 16 rows further), with
    /// their inputs (without the predicate word) and the accumulator tiles each writes.
    ///
    /// When `bn == d == dv` the product would have the shape of `S = Q K^T` (the same N
    /// and number of k steps), and on the H200 that kernel gives wrong results from the
    /// second chunk on (suite, 2026-11-29: every case with that shape failed; splitting
    /// either product in two made all of them pass, and nothing else did: no extra
    /// barrier, proxy fence, wait or masking change). So the product is then issued as
    /// two halves of N = dv / 2.
    fn pv_products(
        &self,
        vbase: IntValue<'c>,
        p: &[[IntValue<'c>; 4]],
    ) -> Vec<(
        ptx::Wgmma<'static>,
        Vec<BasicValueEnum<'c>>,
        std::ops::Range<usize>,
    )> {
        let g = self.g;
        let cfg = self.cfg;
        let ksteps = cfg.shape.bn / 16;
        let parts = if cfg.shape.bn == cfg.d && cfg.d == cfg.dv {
            2
        } else {
            1
        };
        let n = cfg.dv / parts;
        (0..parts)
            .map(|part| {
                // Columns [col, col + n): in the second 64-wide half, or 2 * col bytes into
                // the 128-byte row (no carry into the swizzled bits).
                let col = part * n;
                let coff = (col / 64) * cfg.shape.bn * 128 + (col % 64) * 2;
                let descs = (0..ksteps).map(|t| {
                    let off = g.addi(vbase, i64::from(t * 16 * 128 + coff));
                    self.descriptor(off, cfg.shape.bn * 128)
                });
                let w = ptx::Wgmma {
                    elem: cfg.elem,
                    n,
                    ksteps,
                    accumulate: true,
                    trans_b: true,
                };
                (
                    w,
                    self.wgmma_inputs(p, descs),
                    (col / 8) as usize..((col + n) / 8) as usize,
                )
            })
            .collect()
    }

    /// `acc += P V` on wgmma, waited for.
    fn pv_wgmma(&self, vbase: IntValue<'c>, f: &mut Frags<'c>) {
        let g = self.g;
        for (w, mut args, tiles) in self.pv_products(vbase, &f.p) {
            args.push(g.i32(1).into());
            args.extend(self.acc_values(&f.acc[tiles.clone()]));
            let d = ptx::wgmma_block(&[w], Some(0)).emit(g.cx, &g.b, &args);
            self.set_acc(&f.acc[tiles], &d);
        }
    }

    /// The overlapped loop's products: `S = Q K^T` of this chunk (K in buffer `k`) and
    /// `acc += P V` of the previous one (V at `v_prev`, P the previous chunk's, `f.p`)
    /// issued in one block that waits for `S` only. `P V` runs on: `acc` comes out of this
    /// block owned by the tensor cores until the wait at the `P V` op (`f.held` keeps the P
    /// words alive until then); the softmax in between touches neither.
    fn qk_with_pv(&self, k: IntValue<'c>, v_prev: IntValue<'c>, f: &mut Frags<'c>) {
        let g = self.g;
        let (qk, mut args) = self.qk_product(k);
        let mut products = vec![qk];
        let mut tied = vec![];
        let pv = self.pv_products(v_prev, &f.p);
        for (w, a, tiles) in &pv {
            products.push(*w);
            args.extend(a.iter().copied());
            tied.extend(self.acc_values(&f.acc[tiles.clone()]));
        }
        args.push(g.i32(1).into());
        args.extend(tied);
        let d = ptx::wgmma_block(&products, Some(pv.len())).emit(g.cx, &g.b, &args);
        self.set_s_into(f, &d);
        let mut at = (self.cfg.shape.bn / 2) as usize;
        for (w, _, tiles) in &pv {
            let n = (w.n / 2) as usize;
            self.set_acc(&f.acc[tiles.clone()], &d[at..at + n]);
            at += n;
        }
        f.held = f.p.iter().flat_map(|w| w.iter().copied()).collect();
    }

    /// The inputs of a wgmma product: the A fragments' words, one descriptor a k step.
    fn wgmma_inputs(
        &self,
        a: &[[IntValue<'c>; 4]],
        descs: impl Iterator<Item = IntValue<'c>>,
    ) -> Vec<BasicValueEnum<'c>> {
        let mut args: Vec<BasicValueEnum> = a
            .iter()
            .flat_map(|w| w.iter().map(|x| (*x).into()))
            .collect();
        args.extend(descs.map(BasicValueEnum::from));
        args
    }

    fn mma(&self, c: &[Var<'c>; 4], a: &[IntValue<'c>; 4], b: [BasicValueEnum<'c>; 2]) {
        let g = self.g;
        let mut args: Vec<BasicValueEnum> = a.iter().map(|x| (*x).into()).collect();
        args.extend(b);
        args.extend(c.iter().map(|v| g.get(*v)));
        let d = ptx::mma_m16n8k16(self.cfg.elem).emit(g.cx, &g.b, &args);
        for (v, x) in c.iter().zip(d) {
            g.set(*v, x);
        }
    }

    /// Applies `f(score, query row, key column in chunk, key info)` to every S element (the
    /// keys' information from slot `slot`).
    fn elementwise(
        &self,
        slot: IntValue<'c>,
        f: &mut Frags<'c>,
        op: &mut dyn FnMut(&Self, FloatValue<'c>, usize, IntValue<'c>, Row<'c>) -> FloatValue<'c>,
    ) {
        let g = self.g;
        for (n, t) in f.s.iter().enumerate() {
            for (e, v) in t.iter().enumerate() {
                let j = g.add(g.i32(n as i64 * 8 + (e % 2) as i64), g.muli(self.tig, 2));
                let k = self.key_row(slot, j);
                let x = op(self, g.getf(*v), e / 2, j, k);
                g.set(*v, x);
            }
        }
    }

    fn key_row(&self, slot: IntValue<'c>, j: IntValue<'c>) -> Row<'c> {
        let g = self.g;
        let base = self.kinfo_off(slot, j);
        Row {
            pos: self.ld_shared_i32(base),
            coords: [0, 1, 2].map(|a| self.ld_shared_i32(g.addi(base, 4 + 4 * a))),
        }
    }

    /// Masks on partial tiles (and incomplete chunks): inactive pairs become -inf.
    fn mask(
        &self,
        fs: &[crate::ir::ElemId],
        slot: IntValue<'c>,
        cur: &Cursor<'c>,
        kval: IntValue<'c>,
        ktile: Tile<'c>,
        f: &mut Frags<'c>,
    ) {
        let g = self.g;
        let partial = g.eqi(g.geti(cur.class), 1);
        let needed = if self.cfg.exact {
            partial
        } else {
            g.cx.bool_type().const_int(1, false)
        };
        let qtile = self.qtile.expect("q tile");
        let ninf = g.f32(f64::NEG_INFINITY);
        let this = self;
        g.if_then(needed, &mut |g| {
            for (vi, id) in fs.iter().enumerate() {
                let Some(ElemFn::Mask {
                    tiles, tokens, see, ..
                }) = this.k.elem_fns.get(id.0 as usize).cloned()
                else {
                    continue;
                };
                let is_v = g.eqi(this.variant, vi as i64);
                g.if_then(is_v, &mut |g| {
                    let sees = sees(g, &see, qtile.side, ktile.side);
                    let canvas_pair = g.and(g.eqi(qtile.side, -1), g.eqi(ktile.side, -1));
                    this.elementwise(slot, f, &mut |a, s, q, j, k| {
                        let valid = g.lt(j, kval);
                        let mut rule = g.cx.bool_type().const_int(1, false);
                        for (e, tile) in [(&tiles, true), (&tokens, false)] {
                            if let Some(e) = e {
                                let mut sc = PairScope {
                                    a,
                                    q,
                                    k,
                                    score: None,
                                    tile,
                                };
                                rule = g.and(rule, expr::gen(g, e, &mut sc).into_int_value());
                            }
                        }
                        let ok_pair = g.or(sees, g.and(canvas_pair, rule));
                        let active = g.and(valid, ok_pair);
                        g.self_f(active, s, ninf)
                    });
                });
            }
        });
    }

    fn quad_reduce(&self, x: FloatValue<'c>, max: bool) -> FloatValue<'c> {
        let g = self.g;
        let mut x = x;
        for m in [1, 2] {
            let y = g.shfl_xor(x, m);
            x = if max { g.maxnum(x, y) } else { g.fadd(x, y) };
        }
        x
    }

    fn row_max(&self, f: &mut Frags<'c>) {
        let g = self.g;
        for row in 0..2 {
            let mut m = g.f32(f64::NEG_INFINITY);
            for t in &f.s {
                for e in [2 * row, 2 * row + 1] {
                    m = g.maxnum(m, g.getf(t[e]));
                }
            }
            f.rowmax[row] = Some(self.quad_reduce(m, true));
        }
    }

    /// The online softmax's update, with lazy rescaling (as FlashAttention-4): the running
    /// max `m` (log2 units) moves only when a row of the warp meets a chunk max more than
    /// `RESCALE_SLACK` above it; then every row of the warp takes `m' = max(m, rowmax)` and
    /// its accumulators and sum are multiplied by `alpha = 2^(m - m')`, else nothing is
    /// (64 multiplies a chunk saved). Either way `p = 2^(s c - m)` with `s c - m <=
    /// RESCALE_SLACK`, so `p <= 256`: exact in f32, and as precise in bf16/f16 as any `p`
    /// (the final division by `l` uses the same `m`). A row whose max is still -inf gets
    /// `p = 0` and keeps accumulator and sum at 0. `c` folds the scale (when `Scale` was
    /// deferred) and `log2 e` (natural-exponent kernels) into one multiply-add.
    fn softmax(&self, f: &mut Frags<'c>, exp2: bool) {
        let g = self.g;
        let k = if exp2 { 1.0 } else { std::f64::consts::LOG2_E };
        let c = g.f32(f.scale.unwrap_or(1.0) * k);
        let ninf = g.f32(f64::NEG_INFINITY);
        // The chunk's row maxima in log2 units (c > 0: -inf stays -inf).
        let rm = [0, 1].map(|row| f.rowmax[row].map_or(ninf, |x| g.fmul(x, c)));
        let mut need = g.cx.bool_type().const_int(0, false);
        for (row, r) in rm.iter().enumerate() {
            let bound = g.fadd(g.getf(f.m[row]), g.f32(RESCALE_SLACK));
            need = g.or(need, g.fcmp(FloatPredicate::OGT, *r, bound));
        }
        let any = g.icmp(IntPredicate::NE, g.ballot(need), g.i32(0));
        // In the overlapped loop `P V` may still be writing the accumulators: their factors
        // wait in variables until it completes (`rescale_deferred`).
        let defer = self.cfg.shape.overlap;
        let factors = [0; 2].map(|_| g.var(g.f32t.into(), g.f32(1.0).into()));
        let (acc, l, m) = (&f.acc, f.l, f.m);
        g.if_then(any, &mut |g| {
            for (row, r) in rm.iter().enumerate() {
                let m_old = g.getf(m[row]);
                let m_new = g.maxnum(m_old, *r);
                let alpha = g.ex2(g.fsub(m_old, live_max(g, m_new)));
                if defer {
                    g.set(factors[row], alpha);
                } else {
                    rescale_rows(g, acc, row, alpha);
                }
                g.set(l[row], g.fmul(g.getf(l[row]), alpha));
                g.set(m[row], m_new);
            }
        });
        f.deferred = defer.then_some((any, factors));
        for row in 0..2 {
            let neg_m = g.fsub(g.f32(0.0), live_max(g, g.getf(f.m[row])));
            for t in &f.s {
                for e in [2 * row, 2 * row + 1] {
                    let p = g.ex2(g.fma(g.getf(t[e]), c, neg_m));
                    g.set(t[e], p);
                }
            }
        }
    }

    /// The overlapped loop: the softmax's rescale of the accumulators, once `P V` is done.
    fn rescale_deferred(&self, f: &mut Frags<'c>) {
        let g = self.g;
        if let Some((any, factors)) = f.deferred.take() {
            let acc = &f.acc;
            g.if_then(any, &mut |g| {
                for (row, a) in factors.iter().enumerate() {
                    rescale_rows(g, acc, row, g.getf(*a));
                }
            });
        }
    }

    /// `l += rowsum(p)` (thread-partial sums; reduced across the quad at the end; the
    /// softmax rescaled `l` when `m` moved).
    fn update_l(&self, f: &mut Frags<'c>) {
        let g = self.g;
        for row in 0..2 {
            let mut sum = g.f32(0.0);
            for t in &f.s {
                for e in [2 * row, 2 * row + 1] {
                    sum = g.fadd(sum, g.getf(t[e]));
                }
            }
            g.set(f.l[row], g.fadd(g.getf(f.l[row]), sum));
        }
    }

    /// P (C-fragment layout) packed into A fragments of the `p v` product.
    fn pack_p(&self, f: &mut Frags<'c>) {
        let g = self.g;
        let pk = |a: Var<'c>, b: Var<'c>| {
            ptx::pack2(self.cfg.elem).emit(g.cx, &g.b, &[g.get(a), g.get(b)])[0].into_int_value()
        };
        f.p = (0..self.cfg.shape.bn / 16)
            .map(|t| {
                let (x, y) = (&f.s[2 * t as usize], &f.s[2 * t as usize + 1]);
                [
                    pk(x[0], x[1]),
                    pk(x[2], x[3]),
                    pk(y[0], y[1]),
                    pk(y[2], y[3]),
                ]
            })
            .collect();
    }

    /// `acc += P V` (the softmax rescaled `acc` when `m` moved).
    fn pv(&self, buf: IntValue<'c>, f: &mut Frags<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        let vbase = self.v_buf(buf);
        if cfg.shape.wgmma {
            return self.pv_wgmma(vbase, f);
        }
        let mi = g.udivi(self.lane, 8);
        for t in 0..cfg.shape.bn / 16 {
            let key = g.add(
                g.add(g.i32(i64::from(t * 16)), g.uremi(self.lane, 8)),
                g.muli(g.uremi(mi, 2), 8),
            );
            for q in 0..cfg.dv / 16 {
                let chunk = g.add(g.i32(i64::from(q * 2)), g.udivi(mi, 2));
                let addr = self.saddr(g.add(vbase, self.swz(key, chunk, cfg.dv)));
                let b = ptx::ldmatrix_x4(true).emit(g.cx, &g.b, &[addr.into()]);
                let a = f.p[t as usize];
                self.mma(&f.acc[(2 * q) as usize], &a, [b[0], b[1]]);
                self.mma(&f.acc[(2 * q + 1) as usize], &a, [b[2], b[3]]);
            }
        }
    }

    /// Normalises and writes this thread's output elements (rows that exist only).
    fn store(&self, f: &Frags<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        let qtile = self.qtile.expect("q tile");
        let heads = i64::from(self.k.info.heads);
        let tokens_n = self.k.info.tokens as i64;
        let o_base = self.global_addr(self.params.o);
        let bh = g.add(g.muli(g.zext64(self.batch), heads), g.zext64(self.head));
        let bh_off = g.muli(bh, tokens_n * i64::from(cfg.dv) * 2);
        for row in 0..2 {
            let l = self.quad_reduce(g.getf(f.l[row]), false);
            let zero = g.fcmp(FloatPredicate::OEQ, l, g.f32(0.0));
            let inv = g.self_f(zero, g.f32(0.0), g.fdiv(g.f32(1.0), l));
            let (tr, info) = self.qrows[row];
            let Some(info) = info else { continue };
            let exists = g.lt(tr, qtile.len);
            let this = self;
            g.if_then(exists, &mut |g| {
                let row_off = g.add(bh_off, g.muli(g.zext64(info.pos), i64::from(cfg.dv) * 2));
                for (n, t) in f.acc.iter().enumerate() {
                    let x = g.fmul(g.getf(t[2 * row]), inv);
                    let y = g.fmul(g.getf(t[2 * row + 1]), inv);
                    let packed = ptx::pack2(cfg.elem).emit(g.cx, &g.b, &[x.into(), y.into()])[0]
                        .into_int_value();
                    let col = g.add(g.i32(n as i64 * 8), g.muli(this.tig, 2));
                    let addr = g.add(g.add(o_base, row_off), g.muli(g.zext64(col), 2));
                    let p =
                        ok(g.b.build_int_to_ptr(addr, g.cx.ptr_type(AddressSpace::from(1u16)), ""));
                    ok(g.b.build_store(p, packed));
                }
            });
        }
    }
}

/// Registers a thread of the warp-specialised kernel's computing and producing
/// warpgroups run with (`setmaxnreg`).
const WS_COMPUTE_REGS: u32 = 232;
const WS_PRODUCER_REGS: u32 = 40;

/// How far (log2 units) a chunk's row max may exceed the running max before the running
/// max moves and the accumulators are rescaled: `p` stays at most `2^8`.
const RESCALE_SLACK: f64 = 8.0;

/// `acc *= alpha` on this thread's elements of fragment row `row` (0: g, 1: g + 8).
fn rescale_rows<'c>(g: &Gen<'c>, acc: &[[Var<'c>; 4]], row: usize, alpha: FloatValue<'c>) {
    for t in acc {
        for e in [2 * row, 2 * row + 1] {
            g.set(t[e], g.fmul(g.getf(t[e]), alpha));
        }
    }
}

/// The max that exponents subtract: 0 for a row whose max is still -inf (all its scores
/// are -inf, so `p = 2^-inf = 0` and `alpha` is 0 as well).
fn live_max<'c>(g: &Gen<'c>, m: FloatValue<'c>) -> FloatValue<'c> {
    let dead = g.fcmp(FloatPredicate::OEQ, m, g.f32(f64::NEG_INFINITY));
    g.self_f(dead, g.f32(0.0), m)
}

/// The `see` test for a tile pair: -1 canvas, else the segment index.
fn sees<'c>(
    g: &Gen<'c>,
    rules: &[(Group, Group)],
    q: IntValue<'c>,
    k: IntValue<'c>,
) -> IntValue<'c> {
    let mut acc = g.cx.bool_type().const_zero();
    for (f, t) in rules {
        let m = |grp: &Group, s: IntValue<'c>| match grp {
            Group::All => g.cx.bool_type().const_int(1, false),
            Group::Canvas => g.eqi(s, -1),
            Group::Segment(i) => g.eqi(s, *i as i64),
        };
        acc = g.or(acc, g.and(m(f, q), m(t, k)));
    }
    acc
}

/// Variables of one (query row, key) pair in the kernel.
struct PairScope<'x, 'a, 'c> {
    a: &'x Attention<'a, 'c>,
    /// Which of the thread's two rows.
    q: usize,
    k: Row<'c>,
    score: Option<FloatValue<'c>>,
    /// Tile units (tiles: rules) instead of tokens.
    tile: bool,
}

impl<'c> Scope<'c> for PairScope<'_, '_, 'c> {
    fn var(&mut self, g: &Gen<'c>, v: EVar) -> BasicValueEnum<'c> {
        let a = self.a;
        let geo = a.geo;
        let q = a.qrows[self.q].1.expect("query row");
        let coord = |r: &Row<'c>, ax: u8| -> IntValue<'c> {
            let x = g.sext64(r.coords[ax as usize % 3]);
            if self.tile {
                ok(g.b.build_int_signed_div(x, g.i64(i64::from(geo.tile[ax as usize % 3])), ""))
            } else {
                x
            }
        };
        let extent = |ax: usize| {
            if self.tile {
                i64::from(geo.grid[ax])
            } else {
                i64::from(geo.canvas[ax])
            }
        };
        match v {
            EVar::Q(ax) => coord(&q, ax).into(),
            EVar::K(ax) => coord(&self.k, ax).into(),
            EVar::D(ax) => g.sub(coord(&self.k, ax), coord(&q, ax)).into(),
            EVar::N(ax) => g.i64(extent(ax as usize % 3)).into(),
            EVar::QI | EVar::KI => {
                let r = if v == EVar::QI { q } else { self.k };
                if self.score.is_some() {
                    return g.sext64(r.pos).into();
                }
                let mut acc = g.i64(0);
                for ax in 0..geo.rank {
                    acc = g.add(g.muli(acc, extent(ax)), coord(&r, ax as u8));
                }
                acc.into()
            }
            EVar::Score => self.score.unwrap_or_else(|| g.f32(0.0)).into(),
            EVar::Batch => g.zext64(a.batch).into(),
            EVar::Head => g.zext64(a.head).into(),
        }
    }

    fn head(&mut self, g: &Gen<'c>) -> IntValue<'c> {
        g.zext64(self.a.head)
    }

    fn input(&mut self, g: &Gen<'c>, id: InputId, idx: &[IntValue<'c>]) -> FloatValue<'c> {
        let a = self.a;
        let (Some(spec), Some(ptr)) = (
            a.inputs.get(id.0 as usize),
            a.params.inputs.get(id.0 as usize),
        ) else {
            return g.f32(0.0);
        };
        let mut off = g.i64(0);
        let mut inside = g.cx.bool_type().const_int(1, false);
        for (x, d) in idx.iter().zip(&spec.dims) {
            let lo = g.icmp(IntPredicate::SGE, *x, g.i64(0));
            let hi = g.lt(*x, g.i64(*d as i64));
            inside = g.and(inside, g.and(lo, hi));
            off = g.add(g.muli(off, *d as i64), *x);
        }
        let off = g.seli(inside, off, g.i64(0));
        // `off` is inside the input: each index was checked against its dimension.
        let x = g.ld_f32(*ptr, off);
        g.self_f(inside, x, g.f32(0.0))
    }
}

#[allow(dead_code)]
fn _unused(_: &Expr) {}
