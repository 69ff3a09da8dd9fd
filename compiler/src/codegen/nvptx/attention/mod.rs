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
//!
//! The sm_90a shapes (`wgmma`, tensor copies, the overlapped and warp-specialised loops)
//! reuse the same walk over the IR; docs/design.md describes them. Files: `shape.rs`
//! (launch shapes, their sizes and checks, the tuner's candidates), `keys.rs` (the walk
//! over a query tile's keys and the K/V copies), `loops.rs` (the key loops and one chunk
//! of the loop body), `persistent_overlap.rs` (the persistent overlapped kernel's roles
//! and its loop over work items), `products.rs` (`Q K^T` and `P V`), `softmax.rs`,
//! `mask.rs`; this file holds the kernel's per-thread state, shared-memory addressing,
//! the Q load and the store.

use inkwell::values::{BasicValueEnum, FloatValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use petgraph::stable_graph::NodeIndex;

use super::asm::ptx;
use super::expr::{self, Scope};
use super::gen::{ok, Gen, Var};
use super::tokens::{self, Row, Tile};
use crate::ir::{ElemFn, Kernel, Op, Tensor, Type};
use crate::pattern::geometry::Geometry;
use crate::sema::expr::{InputId, Var as EVar};
use crate::sema::program::Group;
use crate::sema::spec::InputSpec;

mod keys;
mod loops;
mod mask;
mod persistent_overlap;
mod products;
mod shape;
mod softmax;

pub use shape::*;

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

/// The P words of a chunk whose `P V` goes out with the next chunk's `Q K^T` (the
/// overlapped loops), kept in variables across the loop's back edge.
struct KeptP<'c>(Vec<[Var<'c>; 4]>);

impl<'c> KeptP<'c> {
    /// Keeps the chunk's P words (`f.p`).
    fn keep(&self, g: &Gen<'c>, f: &Frags<'c>) {
        for (vars, words) in self.0.iter().zip(&f.p) {
            for (v, w) in vars.iter().zip(words) {
                g.set(*v, *w);
            }
        }
    }

    /// The kept words back as `f.p`, for their `P V`.
    fn restore(&self, g: &Gen<'c>, f: &mut Frags<'c>) {
        f.p = self.0.iter().map(|w| w.map(|v| g.geti(v))).collect();
    }
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
    /// chunk's `P V` (V at shared offset `v_prev`, `word` its `ptx::wgmma_block`
    /// predicate word: it adds to the accumulators, or starts them afresh), which is
    /// waited for at the `P V` op.
    Steady {
        k: IntValue<'c>,
        v_prev: IntValue<'c>,
        word: IntValue<'c>,
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
    /// The persistent overlapped kernel: the shared offset of the current item's Q
    /// buffer, which `S = Q K^T` reads by descriptor (no fragments).
    q_smem: Option<IntValue<'c>>,
    variant: IntValue<'c>,
    /// The persistent kernel's count of chunks walked, across work items (the stages'
    /// barrier phases follow it); else each key loop counts from 0.
    chunks: Option<Var<'c>>,
    /// The persistent overlapped kernel's computing warpgroups: what a work item leaves
    /// to the next one (its last `P V` and its store).
    carry: Option<persistent_overlap::Carry<'c>>,
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
    /// `outputs lse;`: each query row's log-sum-exp, f32 `[batch, heads, tokens]`.
    pub lse: Option<PointerValue<'c>>,
    /// Tensor copies: the K, V and Q tensor maps (128 bytes each, in that order; only the
    /// persistent overlapped kernel copies Q).
    pub tmaps: Option<PointerValue<'c>>,
    /// The persistent kernel's work lists (`Tuning::work_lists`): u32, `gridDim.x + 1`
    /// offsets, then the work items, each block's from its offset to the next.
    pub work: Option<PointerValue<'c>>,
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
            q_smem: None,
            variant: z,
            chunks: None,
            carry: None,
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
        if !self.cfg.shape.wgmma {
            return self.swz(row, chunk, dim);
        }
        self.copied_off(row, chunk, self.cfg.shape.bn)
    }

    /// Byte offset of (row, 16-byte chunk) in a buffer of `rows` rows that tensor copies of
    /// 64-element boxes filled with the 128-byte swizzle: a `[rows][128 bytes]` region a
    /// half row, the chunk XORed with `row % 8`.
    fn copied_off(&self, row: IntValue<'c>, chunk: IntValue<'c>, rows: u32) -> IntValue<'c> {
        let g = self.g;
        let half = g.udivi(chunk, 8);
        let c = ok(g.b.build_xor(g.uremi(chunk, 8), g.uremi(row, 8), ""));
        g.add(
            g.add(g.muli(half, i64::from(rows * 128)), g.muli(row, 128)),
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
        let cfg = self.cfg;
        if cfg.shape.wgmma {
            // Round the shared base up to 1024 bytes (the swizzle pattern's period).
            let base = ok(g.b.build_ptr_to_int(self.smem, g.i32t, ""));
            let pad = g.and(g.sub(g.i32(0), base), g.i32(1023));
            self.smem = self.sptr(pad);
        }
        self.thread_fields(g.sreg("tid.x"));
        if !cfg.shape.persistent {
            self.begin_item(g.sreg("ctaid.x"), g.sreg("ctaid.y"), g.sreg("ctaid.z"));
        }
        if cfg.shape.tma {
            // One arrival (the issuing thread's) per phase; visible to the tensor copies
            // before load_q's barriers let anyone issue one.
            let first = g.eqi(self.kv_tid, 0);
            let this = &*self;
            g.if_then(first, &mut |g| {
                for b in 0..this.cfg.mbars() {
                    let bar = this.mbar_addr(g.i32(i64::from(b)));
                    let count = this.cfg.mbar_arrivals(b);
                    ptx::mbarrier_init().emit(
                        g.cx,
                        &g.b,
                        &[bar.into(), g.i32(i64::from(count)).into()],
                    );
                }
                ptx::fence_mbarrier_init().emit(g.cx, &g.b, &[]);
            });
        }

        if cfg.shape.persistent {
            return self.emit_persistent();
        }
        self.load_q();
        // Walk the IR: region 0 until the loop, the loop body per chunk, then the rest.
        let mut frags = self.new_frags();
        if !cfg.shape.ws {
            self.walk(&mut frags)?;
            self.store(&frags);
            return Ok(());
        }
        // Warp-specialised: the computing warpgroups read the staged Q into fragments,
        // order those reads before the copies that will land there and arrive at named
        // barrier 3, which the producer waits at before its first copy; from here the
        // roles never meet at a block barrier.
        let all = g.i32(i64::from(cfg.threads()));
        let q_read = g.i32(3);
        self.split_roles(
            &mut |t| {
                t.q_fragments();
                ptx::fence_proxy_async().emit(g.cx, &g.b, &[]);
                let arrive = [q_read.into(), all.into(), g.i32(1).into()];
                ptx::bar_arrive_if().emit(g.cx, &g.b, &arrive);
                t.walk(&mut frags)?;
                t.store(&frags);
                Ok(())
            },
            &mut |t| {
                ptx::bar_sync().emit(g.cx, &g.b, &[q_read.into(), all.into()]);
                t.produce();
            },
        )
    }

    /// The thread's fields from its `tid.x`.
    fn thread_fields(&mut self, raw: IntValue<'c>) {
        let g = self.g;
        self.kv_tid = raw;
        self.tid = raw;
        if self.cfg.shape.ws {
            // Warpgroup 0 produces; the others compute, numbered from 0.
            let producers = g.i32(i64::from(WS_PRODUCER_THREADS));
            self.computing = g.icmp(IntPredicate::UGE, raw, producers);
            self.tid = g.seli(self.computing, g.sub(raw, producers), g.i32(0));
        }
        self.warp = g.udivi(self.tid, 32);
        self.lane = g.uremi(raw, 32);
        self.grp = g.udivi(self.lane, 4);
        self.tig = g.uremi(self.lane, 4);
    }

    /// `thread_fields` from `tid.x` read here (see `ptx::thread_index_here`; the
    /// persistent overlapped kernel's loops over work items).
    fn thread_fields_here(&mut self) {
        let g = self.g;
        let raw = ptx::thread_index_here().emit(g.cx, &g.b, &[])[0];
        self.thread_fields(raw.into_int_value());
    }

    /// The warp-specialised roles, their branches built by hand so that either side may
    /// set the kernel's per-thread fields: the computing warpgroups raise their registers
    /// to `WS_COMPUTE_REGS` and run `compute`, the producer lowers its own to
    /// `WS_PRODUCER_REGS` and runs `produce` (65536 / 384 = 168 a thread at launch, and
    /// 2 x 128 x 232 + 128 x 40 <= 65536). Returns `compute`'s result.
    fn split_roles(
        &mut self,
        compute: &mut dyn FnMut(&mut Self) -> Result<(), String>,
        produce: &mut dyn FnMut(&mut Self),
    ) -> Result<(), String> {
        let g = self.g;
        let (c, p, done) = (
            g.block("compute"),
            g.block("produce"),
            g.block("roles_done"),
        );
        ok(g.b.build_conditional_branch(self.computing, c, p));
        g.b.position_at_end(c);
        ptx::setmaxnreg(true, WS_COMPUTE_REGS).emit(g.cx, &g.b, &[]);
        let computed = compute(self);
        ok(g.b.build_unconditional_branch(done));
        g.b.position_at_end(p);
        ptx::setmaxnreg(false, WS_PRODUCER_REGS).emit(g.cx, &g.b, &[]);
        produce(self);
        ok(g.b.build_unconditional_branch(done));
        g.b.position_at_end(done);
        computed
    }

    /// The work item's fields: query block `bx` (of the tile `bx / blocks_per_tile`, or of
    /// the launch order's tile at that place), `head` and `batch`.
    fn begin_item(&mut self, bx: IntValue<'c>, head: IntValue<'c>, batch: IntValue<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        self.head = head;
        self.batch = batch;
        let group = i64::from(self.k.info.heads / self.k.info.kv_heads.max(1));
        self.kvh = g.udivi(self.head, group.max(1));
        let slot = g.udivi(bx, i64::from(cfg.blocks_per_tile));
        // Ordered shapes: the launch order leads the row table.
        self.qt = if cfg.shape.launch_order() {
            g.ld_i32(self.params.rows, slot)
        } else {
            slot
        };
        let sub = g.uremi(bx, i64::from(cfg.blocks_per_tile));
        self.row0 = g.muli(sub, i64::from(cfg.shape.bm));
        self.qtile = Some(tokens::tile(g, self.geo, self.qt));
        self.variant = g.ld_i32(self.params.head_variant, self.head);
    }

    /// The persistent kernel's work item at place `at` of the block's walk: item `at`
    /// (the blocks take `blockIdx.x, + gridDim.x, ...`), or with work lists the list's
    /// entry `at`. Items are numbered as the other kernels' grid: the query blocks of head
    /// 0 of batch 0, then of head 1, ...
    fn begin_item_at(&mut self, at: IntValue<'c>) {
        let g = self.g;
        let item = match self.params.work {
            Some(work) => {
                let lists = g.addi(g.sreg("nctaid.x"), 1);
                g.ld_i32(work, g.add(lists, at))
            }
            None => at,
        };
        let per_head = i64::from(self.geo.total_tiles * self.cfg.blocks_per_tile);
        let heads = i64::from(self.k.info.heads);
        let bx = g.uremi(item, per_head);
        let rest = g.udivi(item, per_head);
        self.begin_item(bx, g.uremi(rest, heads), g.udivi(rest, heads));
    }

    /// Zeroed accumulators, running maxima at -inf and sums at 0.
    fn new_frags(&self) -> Frags<'c> {
        let g = self.g;
        Frags {
            s: vec![],
            acc: (0..self.cfg.dv / 8)
                .map(|_| [0; 4].map(|_| g.var(g.f32t.into(), g.f32(0.0).into())))
                .collect(),
            m: [0; 2].map(|_| g.var(g.f32t.into(), g.f32(f64::NEG_INFINITY).into())),
            l: [0; 2].map(|_| g.var(g.f32t.into(), g.f32(0.0).into())),
            rowmax: [None; 2],
            scale: None,
            p: vec![],
            held: vec![],
            deferred: None,
        }
    }

    /// Running maxima back at -inf and sums at 0, for a new work item.
    fn restart_rows(&self, f: &Frags<'c>) {
        let g = self.g;
        for r in 0..2 {
            g.set(f.m[r], g.f32(f64::NEG_INFINITY));
            g.set(f.l[r], g.f32(0.0));
        }
    }

    /// The persistent warp-specialised kernel: every role walks the work items
    /// `ctaid.x, + nctaid.x, ...` in the same order, and the stages' barriers count the
    /// chunks across items (`chunks`), so that the producer fills the next item's first
    /// stages while the computing warpgroups store this item's rows and load the next
    /// one's Q into its own buffer. Registers as in `emit`'s warp-specialised kernel.
    fn emit_persistent(&mut self) -> Result<(), String> {
        let g = self.g;
        let cfg = self.cfg;
        let per_head = i64::from(self.geo.total_tiles * cfg.blocks_per_tile);
        // The places of the block's walk: `item` from its first on, below `items`, by
        // `stride`.
        let (first, items, stride) = match self.params.work {
            Some(work) => {
                let b = g.sreg("ctaid.x");
                (g.ld_i32(work, b), g.ld_i32(work, g.addi(b, 1)), g.i32(1))
            }
            None => (
                g.sreg("ctaid.x"),
                g.i32(per_head * i64::from(self.k.info.heads) * i64::from(self.k.info.batch)),
                g.sreg("nctaid.x"),
            ),
        };
        self.chunks = Some(g.var(g.i32t.into(), g.i32(0).into()));
        let item = g.var(g.i32t.into(), first.into());
        // Work items this block has taken (the persistent overlapped kernel's Q buffers
        // follow it).
        let taken = g.var(g.i32t.into(), g.i32(0).into());
        // The barriers' initialisation is visible to every thread before anyone waits.
        g.barrier();
        let more = |g: &Gen<'c>| g.lt(g.geti(item), items);
        if cfg.rings() {
            return self.split_roles(
                &mut |t| {
                    let mut frags = t.new_frags();
                    t.carry = Some(t.new_carry(taken, item, items, stride));
                    let region = t.loop_region()?;
                    t.consume_items(region, &mut frags)
                },
                &mut |t| {
                    g.while_loop(&mut |g| more(g), &mut |g| {
                        let it = g.geti(item);
                        t.thread_fields_here();
                        t.begin_item_at(it);
                        let walk = t.produce_q(taken);
                        t.produce_rings(&walk);
                        g.set(item, g.add(it, stride));
                    });
                },
            );
        }
        self.split_roles(
            &mut |t| {
                let mut frags = t.new_frags();
                let mut walked = Ok(());
                g.while_loop(&mut |g| more(g), &mut |g| {
                    let it = g.geti(item);
                    t.begin_item_at(it);
                    for acc in &frags.acc {
                        for v in acc {
                            g.set(*v, g.f32(0.0));
                        }
                    }
                    t.restart_rows(&frags);
                    t.load_q();
                    t.q_fragments();
                    match t.walk(&mut frags) {
                        Ok(()) => t.store(&frags),
                        Err(e) => walked = Err(e),
                    }
                    g.set(item, g.add(it, stride));
                });
                walked
            },
            &mut |t| {
                g.while_loop(&mut |g| more(g), &mut |g| {
                    let it = g.geti(item);
                    t.begin_item_at(it);
                    t.produce();
                    g.set(item, g.add(it, stride));
                });
            },
        )
    }

    /// A barrier of the threads that load Q: the block's, or in the persistent kernel the
    /// computing warpgroups' (named barrier 4; the producer is elsewhere).
    fn q_barrier(&self) {
        let g = self.g;
        if self.cfg.shape.persistent {
            let threads = g.i32(i64::from(self.cfg.compute_threads()));
            ptx::bar_sync().emit(g.cx, &g.b, &[g.i32(4).into(), threads.into()]);
        } else {
            g.barrier();
        }
    }

    /// Region 0 of the IR: the key loop, then nothing but the store (emitted by the caller).
    fn walk(&self, frags: &mut Frags<'c>) -> Result<(), String> {
        self.kv_loop(self.loop_region()?, frags)
    }

    /// The key loop's region, region 0 checked to hold nothing else the kernel must do
    /// but the store.
    fn loop_region(&self) -> Result<crate::ir::RegionId, String> {
        let order = self.k.topo_order();
        let mut found = None;
        for n in order
            .iter()
            .filter(|n| self.k.node(**n).region == crate::ir::RegionId(0))
        {
            match &self.k.node(*n).op {
                Op::KvLoop { region, .. } if found.is_none() => found = Some(*region),
                Op::Normalize | Op::Convert(_) | Op::Store | Op::LogSumExp { .. } => {}
                Op::Arg(_) | Op::ProgramId | Op::KvHead | Op::Load(Tensor::Q) | Op::Const(_) => {}
                other => {
                    return Err(format!(
                        "the CUDA backend cannot lower `{}` outside the key loop",
                        other.name()
                    ))
                }
            }
        }
        found.ok_or_else(|| "the kernel IR has no key loop".to_string())
    }

    /// Q rows of this block into registers: positions into shared memory, cp.async, then
    /// ldmatrix into A fragments.
    fn load_q(&mut self) {
        let g = self.g;
        let cfg = self.cfg;
        let qtile = self.qtile.expect("q tile set");
        let qinfo = cfg.qinfo();
        let stage = i64::from(cfg.q_stage());
        if cfg.shape.persistent {
            // Every computing thread is past the previous item's reads of the row
            // information and of the staged Q.
            self.q_barrier();
        }
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
        self.q_barrier();
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
                let dst = this.saddr(g.addi(this.swz(row, c, cfg.d), stage));
                ptx::cp_async_16().emit(g.cx, &g.b, &[dst.into(), src.into(), size.into()]);
            });
        }
        ptx::cp_async_commit().emit(g.cx, &g.b, &[]);
        ptx::cp_async_wait(0).emit(g.cx, &g.b, &[]);
        self.q_barrier();
        if !cfg.shape.ws {
            self.q_fragments();
            // The K/V pipeline reuses the memory Q was staged in.
            g.barrier();
        }
    }

    /// This thread's A fragments of the staged Q rows (ldmatrix) and its two rows'
    /// information. Warp-specialised, the computing warpgroups do this after `setmaxnreg`
    /// raised their registers: fragments loaded before it would be live across the
    /// change, which makes ptxas spill them and serialise every `wgmma` (C7512).
    fn q_fragments(&mut self) {
        let g = self.g;
        let (stage, qinfo) = (self.cfg.q_stage(), self.cfg.qinfo());
        self.q_fragments_at(g.i32(i64::from(stage)), g.i32(i64::from(qinfo)));
    }

    /// `q_fragments` from the Q buffer at shared offset `stage` (staged by cp.async in
    /// `swz`'s layout) and the rows' information at `qinfo`.
    fn q_fragments_at(&mut self, stage: IntValue<'c>, qinfo: IntValue<'c>) {
        let g = self.g;
        let cfg = self.cfg;
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
                let addr = self.saddr(g.add(self.swz(row, chunk, cfg.d), stage));
                let r = ptx::ldmatrix_x4(false).emit(g.cx, &g.b, &[addr.into()]);
                [r[0], r[1], r[2], r[3]].map(|x| x.into_int_value())
            })
            .collect();
        self.q_rows_at(qinfo);
    }

    /// This thread's two rows: their tile rows and information (at `qinfo`).
    fn q_rows_at(&mut self, qinfo: IntValue<'c>) {
        let g = self.g;
        for (i, off) in [0i64, 8].iter().enumerate() {
            let brow = g.addi(g.add(g.muli(self.warp, 16), self.grp), *off);
            let tr = g.add(self.row0, brow);
            let base = g.add(g.muli(brow, 16), qinfo);
            let pos = self.ld_shared_i32(base);
            let coords = [0, 1, 2].map(|a| self.ld_shared_i32(g.addi(base, 4 + 4 * a)));
            self.qrows[i] = (tr, Some(Row { pos, coords }));
        }
    }

    /// Normalises and writes this thread's output elements (rows that exist only).
    fn store(&self, f: &Frags<'c>) {
        let g = self.g;
        let l = f.l.map(|v| g.getf(v));
        let sums = self.store_rows(Some(&f.acc), l, self.my_rows(), self.bh());
        self.store_lse(Some(f.m), sums, self.my_rows(), self.bh());
    }

    /// `outputs lse;`: each existing row's log-sum-exp in natural units, written by the
    /// quad's first lane. The softmax runs in base 2 (`m` the running max of the scores
    /// times the folded scale and `log2 e`, `l` the rows' sums of `2^(s - m)`, as
    /// `store_rows` reduced them across the quad), so `lse = (m + log2 l) ln 2`, and -inf
    /// where `l == 0` (the row saw no key; `m` may then be none).
    fn store_lse(
        &self,
        m: Option<[Var<'c>; 2]>,
        l: [FloatValue<'c>; 2],
        rows: [(IntValue<'c>, IntValue<'c>); 2],
        bh: IntValue<'c>,
    ) {
        let Some(base) = self.params.lse else { return };
        let g = self.g;
        let m = m.map_or([g.f32(f64::NEG_INFINITY); 2], |m| m.map(|v| g.getf(v)));
        let tokens_n = self.k.info.tokens as i64;
        let base = self.global_addr(base);
        let first_lane = g.icmp(IntPredicate::EQ, self.tig, g.i32(0));
        for (row, (exists, pos)) in rows.into_iter().enumerate() {
            let l = l[row];
            let seen = g.fcmp(FloatPredicate::ONE, l, g.f32(0.0));
            let log2_l = g.lg2(l);
            let lse = g.fmul(g.fadd(m[row], log2_l), g.f32(std::f64::consts::LN_2));
            let lse = g.self_f(seen, lse, g.f32(f64::NEG_INFINITY));
            g.if_then(g.and(exists, first_lane), &mut |g| {
                let at = g.add(g.muli(g.zext64(bh), tokens_n), g.zext64(pos));
                let addr = g.add(base, g.muli(at, 4));
                let p =
                    ok(g.b.build_int_to_ptr(addr, g.cx.ptr_type(AddressSpace::from(1u16)), ""));
                ok(g.b.build_store(p, lse));
            });
        }
    }

    /// This thread's two query rows: whether each exists in the tile, and its position.
    fn my_rows(&self) -> [(IntValue<'c>, IntValue<'c>); 2] {
        let len = self.qtile.expect("q tile").len;
        self.qrows
            .map(|(tr, info)| (self.g.lt(tr, len), info.expect("q rows read").pos))
    }

    /// The work item's `batch * heads + head`.
    fn bh(&self) -> IntValue<'c> {
        let g = self.g;
        g.add(g.muli(self.batch, i64::from(self.k.info.heads)), self.head)
    }

    /// Normalises accumulators by their rows' thread-partial sums `l` and writes the
    /// elements of this thread's two rows `(exists, position)` that exist into the
    /// output of `bh` (`batch * heads + head`); zeros without accumulators (rows that
    /// see no key). Returns the rows' sums, reduced across the quad.
    fn store_rows(
        &self,
        acc: Option<&[[Var<'c>; 4]]>,
        l: [FloatValue<'c>; 2],
        rows: [(IntValue<'c>, IntValue<'c>); 2],
        bh: IntValue<'c>,
    ) -> [FloatValue<'c>; 2] {
        let g = self.g;
        let cfg = self.cfg;
        let tokens_n = self.k.info.tokens as i64;
        let o_base = self.global_addr(self.params.o);
        let bh_off = g.muli(g.zext64(bh), tokens_n * i64::from(cfg.dv) * 2);
        let mut sums = l;
        for (row, (exists, pos)) in rows.into_iter().enumerate() {
            let l = self.quad_reduce(l[row], false);
            sums[row] = l;
            let zero = g.fcmp(FloatPredicate::OEQ, l, g.f32(0.0));
            let inv = g.self_f(zero, g.f32(0.0), g.fdiv(g.f32(1.0), l));
            let this = self;
            g.if_then(exists, &mut |g| {
                let row_off = g.add(bh_off, g.muli(g.zext64(pos), i64::from(cfg.dv) * 2));
                // This thread's first element of the row; the 8-column tiles follow at
                // constant offsets, which the stores take as immediates (computed apart,
                // each store's address was a register of its own, reused by the next
                // address while the store still read it: run 35).
                let first = g.add(g.add(o_base, row_off), g.muli(g.zext64(this.tig), 4));
                let row_ptr =
                    ok(g.b.build_int_to_ptr(first, g.cx.ptr_type(AddressSpace::from(1u16)), ""));
                for n in 0..(cfg.dv / 8) as usize {
                    let packed = match acc {
                        Some(acc) => {
                            let t = &acc[n];
                            let x = g.fmul(g.getf(t[2 * row]), inv);
                            let y = g.fmul(g.getf(t[2 * row + 1]), inv);
                            ptx::pack2(cfg.elem).emit(g.cx, &g.b, &[x.into(), y.into()])[0]
                                .into_int_value()
                        }
                        None => g.i32(0),
                    };
                    // SAFETY: n * 16 bytes stay inside the row of `dv` 16-bit elements
                    // (n < dv / 8, this thread's column 2 * tig + 8 n < dv).
                    let p = unsafe {
                        ok(g.b.build_in_bounds_gep(
                            g.cx.i8_type(),
                            row_ptr,
                            &[g.i64(n as i64 * 16)],
                            "",
                        ))
                    };
                    ok(g.b.build_store(p, packed));
                }
            });
        }
        sums
    }
}

/// The warp-specialised kernel's producer: warpgroup 0, its threads.
const WS_PRODUCER_THREADS: u32 = 128;

/// Registers a thread of the warp-specialised kernel's computing warpgroups runs with
/// (`setmaxnreg`)...
const WS_COMPUTE_REGS: u32 = 232;

/// ... and of its producer.
const WS_PRODUCER_REGS: u32 = 40;
