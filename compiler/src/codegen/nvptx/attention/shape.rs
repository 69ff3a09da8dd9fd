//! Launch shapes (`Tuning`), their sizes and checks (`Config`), and the shapes the
//! autotuner and the GPU suite try.

use super::*;

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
    /// With tensor copies: each warpgroup's softmax between its `P V`'s issue and its wait
    /// (FlashAttention-3's intra-warpgroup pipelining, `kv_loop_overlapped`): `S = Q K^T`
    /// of chunk `n` and `P V` of chunk `n - 1` are issued together, the softmax of chunk
    /// `n` comes before the wait for `P V`. That is the PTX: ptxas moves the wait ahead of
    /// the exponentials, so the softmax runs beside the other warpgroup's products, not its
    /// own `P V` (bench/RESULTS.md, run 42).
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
    /// Warp-specialised and persistent: one block an SM walks the work items (query
    /// block, head, batch) `blockIdx.x, + gridDim.x, ...`; its producer runs on into the
    /// next item's keys while the computing warpgroups store this one's rows and load the
    /// next one's Q (staged in a buffer of its own), so that a block's start and end no
    /// longer leave the SM idle. With `overlap` (`-ws-ovl-pers`,
    /// docs/persistent-overlap.md) the overlapped pipeline runs on across items: an
    /// item's first `Q K^T` is issued with the previous item's last `P V`, the producer
    /// brings the next item's Q by a tensor copy, and K and V have rings of their own.
    pub persistent: bool,
    /// Query tiles launched longest first: block `x` takes the tile at `rows[x / blocks
    /// per tile]` (the runtime puts that order, by descending key tiles, before the row
    /// offsets), so that the grid's last wave holds the shortest tiles (the edges) instead
    /// of whatever the raster order ends with. On a persistent shape: each block walks
    /// the work list the runtime deals it (`work_lists`).
    pub ordered: bool,
    /// A row's max and sum as four interleaved chains joined pairwise instead of one
    /// chain of dependent instructions (`-c4`): run 45, 1.6 and 2.2 % faster (medians) at
    /// GRAT-B r=1 with the persistent overlapped kernel, 3.2 % slower at r=2; so the tuner
    /// tries both.
    pub chains: bool,
}

impl Tuning {
    /// `bm` x `bn` on mma.sync, with none of the sm_90a options (the base the other shapes
    /// are written from: `Tuning { wgmma: true, ..Tuning::plain(64, 64) }`).
    pub fn plain(bm: u32, bn: u32) -> Tuning {
        Tuning {
            bm,
            bn,
            wgmma: false,
            blocks_per_sm: 0,
            tma: false,
            overlap: false,
            ws: false,
            pingpong: false,
            persistent: false,
            ordered: false,
            chains: false,
        }
    }

    /// `64x32`, `128x64-wgmma`, `128x64-wgmma-tma`, or with an occupancy request
    /// `64x64-wgmma-x3`.
    pub fn name(&self) -> String {
        let w = if self.wgmma { "-wgmma" } else { "" };
        let t = if self.tma { "-tma" } else { "" };
        let v = match (self.overlap, self.ws, self.pingpong) {
            (true, true, _) => "-ws-ovl",
            (true, false, _) => "-ovl",
            (false, true, false) => "-ws",
            (false, true, true) => "-ws-pp",
            _ => "",
        };
        let p = if self.persistent { "-pers" } else { "" };
        let l = if self.ordered { "-lpt" } else { "" };
        let c = if self.chains { "-c4" } else { "" };
        let o = match self.blocks_per_sm {
            0 => String::new(),
            n => format!("-x{n}"),
        };
        format!("{}x{}{w}{t}{v}{p}{l}{c}{o}", self.bm, self.bn)
    }

    /// The launch order leads the row table (`-lpt` on a shape whose grid is one block a
    /// work item: the hardware hands the blocks to SMs as they free up, longest first).
    pub fn launch_order(&self) -> bool {
        self.ordered && !self.persistent
    }

    /// The persistent kernel's blocks walk work lists instead of `blockIdx.x, +
    /// gridDim.x, ...` (`-lpt` on a persistent shape): the runtime deals the items, longest
    /// first, each to the block with the least work so far (`runtime::work_list`), and
    /// passes the lists as the kernel's last parameter: `gridDim.x + 1` offsets, then the
    /// items. Dealt in turn, the blocks' shares differ by 4.9 % at GRAT-B r=1 256x256
    /// (edge tiles have fewer key tiles) and by about 70 % with a text prefix (whose rows
    /// see every key), by a model of the schedule.
    pub fn work_lists(&self) -> bool {
        self.ordered && self.persistent
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
        let (s, chains) = strip(s, "-c4");
        let (s, ordered) = strip(s, "-lpt");
        let (s, persistent) = strip(s, "-pers");
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
            persistent,
            ordered,
            chains,
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
    Tuning::plain(bm, bn)
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
    let t = Tuning {
        wgmma: true,
        tma: tensor_copies_fit(geo),
        ..Tuning::plain(64, 64)
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
    if !tma_ok {
        for bm in [64, 128] {
            for bn in [32, 64] {
                push(Tuning::plain(bm.min(tt.div_ceil(16) * 16), bn));
            }
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
                    wgmma: true,
                    blocks_per_sm,
                    tma,
                    overlap,
                    ..Tuning::plain(bm, bn)
                });
            }
        }
        // FlashAttention-3's producer and two consumers on 128x128 (since its fragments
        // are read after `setmaxnreg`, its wgmma are no longer serialised), alone and with
        // each warpgroup's softmax between its `P V`'s issue and wait (the fastest shapes on
        // dense 16384 and GRAT-B r=2 512x512 in bench/RESULTS.md's sixth session), and the
        // overlapped one persistent, its pipeline carried across work items (seventh
        // session, runs 33 and 37: 1.6 to 7 % ahead of three 64-row blocks an SM on
        // GRAT-B r=1, 2.5 to 3.6 % on dense 16384, from 1 % behind to 2.4 % ahead on r=2).
        // The persistent one also with work lists (`-lpt`, `Tuning::work_lists`): taking
        // the items in turn, its blocks' shares of key tiles differ (edge tiles have
        // fewer; text rows see every key), by 4.9 % at GRAT-B r=1 256x256 and about 70 %
        // with a text prefix (a model of the schedule); dealt, by at most one item.
        if tma_ok {
            for (overlap, persistent, chains, ordered) in [
                (false, false, false, false),
                (true, false, false, false),
                (true, true, false, false),
                (true, true, true, false),
                (true, true, false, true),
                (true, true, true, true),
            ] {
                push(Tuning {
                    wgmma: true,
                    tma: true,
                    ws: true,
                    overlap,
                    persistent,
                    chains,
                    ordered,
                    ..Tuning::plain(128, 128)
                });
            }
        }
    }
    out
}

/// Shapes the GPU suite checks but the tuner does not try: the warp-specialised kernel
/// on 128x64 (slower than three 64-row blocks an SM on every case measured,
/// bench/RESULTS.md, runs 15 and 19) and with ping-pong on 128x128, the persistent
/// warp-specialised kernel without the overlap (`-pers`; up to 1.6 % behind its
/// non-persistent form, 1.5 % ahead on GRAT-B r=1 512x512, run 29), and the tuner's
/// usual pick with its tiles launched longest first (`ordered`, run 22: no change).
pub fn experimental(k: &Kernel, geo: &Geometry, wgmma: bool) -> Vec<Tuning> {
    if !wgmma || !tensor_copies_fit(geo) {
        return vec![];
    }
    let ws = Tuning {
        wgmma: true,
        tma: true,
        ws: true,
        ..Tuning::plain(128, 64)
    };
    let pp = Tuning {
        pingpong: true,
        ..ws
    };
    let lpt = Tuning {
        wgmma: true,
        tma: true,
        blocks_per_sm: 3,
        ordered: true,
        ..Tuning::plain(64, 64)
    };
    let ws128 = Tuning { bn: 128, ..ws };
    let pp128 = Tuning { bn: 128, ..pp };
    // (ws128, its overlapped form and that one persistent are tuning candidates.)
    let pers = Tuning {
        persistent: true,
        ..ws128
    };
    let pers_pp = Tuning {
        persistent: true,
        ..pp128
    };
    [ws, pp, pp128, pers, pers_pp, lpt]
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
    pub(super) fn compute_threads(&self) -> u32 {
        self.shape.bm / 16 * 32
    }

    /// The persistent overlapped kernel (`-ws-ovl-pers`): K and V in rings of their own
    /// (FlashAttention-3's two pipelines), two stages each, and two Q buffers
    /// (docs/persistent-overlap.md).
    pub(super) fn rings(&self) -> bool {
        self.shape.ws && self.shape.overlap && self.shape.persistent
    }

    /// Q buffers: two in the persistent overlapped kernel (its producer brings the next
    /// item's rows while the computing warpgroups read this one's), else one.
    pub(super) fn q_buffers(&self) -> u32 {
        if self.rings() {
            2
        } else {
            1
        }
    }

    /// K/V buffers: two, or the warp-specialised ring's stages (as many as 128 KiB hold;
    /// 192 KiB when overlapped, whose computing warpgroups hold two stages at once; two
    /// of K and two of V in separate rings).
    pub(super) fn stages(&self) -> u32 {
        if self.rings() {
            2
        } else if self.shape.ws {
            let budget = if self.shape.overlap { 192 } else { 128 } * 1024;
            (budget / (self.shape.bn * (self.d + self.dv) * 2)).clamp(2, 4)
        } else {
            2
        }
    }

    pub(super) fn kv_bytes(&self) -> u32 {
        self.stages() * self.shape.bn * (self.d + self.dv) * 2
    }

    /// Where the V buffers start (after the K buffers).
    pub(super) fn vbuf(&self) -> u32 {
        self.stages() * self.shape.bn * self.d * 2
    }

    /// Where Q is staged before the computing threads read it into fragments: the start
    /// of the K/V buffers, or a buffer of its own after them in the persistent kernel
    /// (whose producer may be filling any stage meanwhile).
    pub(super) fn q_stage(&self) -> u32 {
        if self.shape.persistent {
            self.kv_bytes()
        } else {
            0
        }
    }

    /// Bytes of one staged Q buffer.
    pub(super) fn q_bytes(&self) -> u32 {
        self.shape.bm * self.d * 2
    }

    /// Where the slots of key information start (16 bytes a key, `bn` keys a slot).
    pub(super) fn kinfo(&self) -> u32 {
        if self.shape.persistent {
            self.kv_bytes() + self.q_buffers() * self.q_bytes()
        } else {
            self.kv_bytes()
        }
    }

    /// Where the query rows' information starts: after a slot of key information a K/V
    /// buffer, three in the overlapped loop.
    pub(super) fn qinfo(&self) -> u32 {
        let slots = if self.shape.overlap && !self.shape.ws {
            3
        } else {
            self.stages()
        };
        self.kinfo() + slots * self.shape.bn * 16
    }

    /// The first mbarrier (tensor copies): one a K/V buffer, or in the overlapped loop one
    /// a K buffer and one a V buffer (K0, K1, V0, V1). The last region of the plan
    /// (`smem_regions`).
    pub(super) fn mbar(&self) -> u32 {
        self.walks() + self.walk_bytes()
    }

    /// The persistent overlapped kernel: where the producer leaves the start of each Q
    /// buffer's item's key walk (its run cursor and the end of its runs, 32 bytes a
    /// buffer), so that the computing warpgroups do not wait for the schedule's tables at
    /// every item.
    pub(super) fn walks(&self) -> u32 {
        self.carried() + self.carried_bytes()
    }

    fn walk_bytes(&self) -> u32 {
        if self.rings() {
            self.q_buffers() * 32
        } else {
            0
        }
    }

    /// The persistent overlapped kernel: where each computing thread keeps what the store
    /// of a work item needs until the next item's first chunk makes it (two slots of 16
    /// bytes a thread, slot `i % 2` for the block's `i`-th item with keys), after the
    /// query rows' information (a slot a Q buffer).
    pub(super) fn carried(&self) -> u32 {
        self.qinfo() + self.q_buffers() * self.shape.bm * 16
    }

    fn carried_bytes(&self) -> u32 {
        if self.rings() {
            2 * self.compute_threads() * 16
        } else {
            0
        }
    }

    /// Warp-specialised: "full" barrier `s` and "empty" barrier `stages + s` a stage; with
    /// separate rings (`rings`) the indices of `Ring`.
    pub(super) fn mbars(&self) -> u32 {
        match (self.shape.tma, self.shape.overlap, self.shape.ws) {
            _ if self.rings() => 12,
            (false, _, _) => 0,
            (true, _, true) => 2 * self.stages(),
            (true, true, false) => 4,
            (true, false, false) => 2,
        }
    }

    /// The shared-memory plan, region by region in address order: `(name, start, end)` in
    /// bytes from the (1024-byte aligned, with wgmma) base; empty regions left out. Q has
    /// a region of its own only in the persistent kernels: the others stage it where the
    /// K buffers go, before the key loop.
    pub fn smem_regions(&self) -> Vec<(&'static str, u32, u32)> {
        let kinfo_end = self.qinfo();
        let regions = [
            ("K", 0, self.vbuf()),
            ("V", self.vbuf(), self.kv_bytes()),
            (
                "Q",
                self.kv_bytes(),
                if self.shape.persistent {
                    self.kinfo()
                } else {
                    self.kv_bytes()
                },
            ),
            ("key information", self.kinfo(), kinfo_end),
            ("query rows", self.qinfo(), self.carried()),
            ("carried rows", self.carried(), self.walks()),
            ("key walks", self.walks(), self.mbar()),
            ("mbarriers", self.mbar(), self.mbar() + 8 * self.mbars()),
        ];
        regions.into_iter().filter(|(_, a, b)| b > a).collect()
    }

    /// Arrivals that complete a phase of mbarrier `b`: the issuing thread's alone without
    /// warp specialisation; else a "full" barrier the producer's threads (each wrote
    /// information the consumers read; V's only the issuing thread's), an "empty" barrier
    /// every computing thread's.
    pub(super) fn mbar_arrivals(&self, b: u32) -> u32 {
        let (producer, consumers) = (super::WS_PRODUCER_THREADS, self.compute_threads());
        if !self.shape.ws {
            1
        } else if self.rings() {
            match Ring::of(b) {
                Ring::KFull | Ring::QFull => producer,
                Ring::VFull => 1,
                Ring::KEmpty | Ring::VEmpty | Ring::QEmpty => consumers,
            }
        } else if b < self.stages() {
            producer
        } else {
            consumers
        }
    }
}

/// The mbarriers of the persistent overlapped kernel (`Config::rings`), two of each (one a
/// stage or Q buffer), in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ring {
    KFull,
    VFull,
    KEmpty,
    VEmpty,
    QFull,
    QEmpty,
}

impl Ring {
    /// Index of the first of the pair.
    pub(super) fn base(self) -> i64 {
        2 * self as i64
    }

    fn of(b: u32) -> Ring {
        [
            Ring::KFull,
            Ring::VFull,
            Ring::KEmpty,
            Ring::VEmpty,
            Ring::QFull,
            Ring::QEmpty,
        ][(b / 2) as usize]
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
        persistent,
        // Any shape may launch its tiles in any order (work lists: below) and reduce its
        // rows in chains.
        ordered,
        chains: _,
    } = t;
    if persistent && !ws {
        return Err(format!(
            "block shape {}: the persistent kernel is warp-specialised (128xN-wgmma-tma-ws-pers)",
            t.name()
        ));
    }
    // Work lists (`-pers-lpt`) are checked on a GPU with the overlapped kernel only.
    if persistent && ordered && !overlap {
        return Err(format!(
            "block shape {}: work lists (-lpt) need the overlapped persistent kernel (128x128-wgmma-tma-ws-ovl-pers-lpt)",
            t.name()
        ));
    }
    // The next item's Q comes by a tensor copy of K's box.
    if persistent && overlap && bn != bm {
        return Err(format!(
            "block shape {}: the persistent overlapped kernel takes as many keys a chunk as rows (128x128-wgmma-tma-ws-ovl-pers)",
            t.name()
        ));
    }
    if pingpong && !ws {
        return Err(format!(
            "block shape {}: ping-pong needs warp specialisation (-ws-pp)",
            t.name()
        ));
    }
    if ws && (!tma || (overlap && pingpong) || bm != 128 || blocks_per_sm > 0) {
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
        warps: bm / 16
            + if ws {
                super::WS_PRODUCER_THREADS / 32
            } else {
                0
            },
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
    let smem_bytes = cfg.mbar() + 8 * cfg.mbars() + if wgmma { 1024 } else { 0 };
    if blocks_per_sm * smem_bytes > 227 * 1024 {
        return Err(format!(
            "block shape {}: {blocks_per_sm} blocks of {smem_bytes} bytes of shared memory do not fit an SM",
            t.name()
        ));
    }
    // The persistent kernel (sm_90a only) opts into sm_90's 227 KiB a block for its Q
    // buffer.
    let max_smem = if persistent || (ws && overlap) {
        227 * 1024
    } else {
        MAX_SMEM
    };
    if smem_bytes > max_smem {
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
