//! The checked, instantiated selection kernel: every clause of its `select` declaration and
//! every setting bound to a value. The runtime executes it; `--emit spec` prints it. The
//! meaning of each field is the contract in `docs/kv-selection.md`.

use std::fmt::Write;

use crate::sema::program::DType;
use crate::sema::spec::Origin;

/// What a kernel does with its selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// Select, then attend over the selection: one decode step.
    Decode,
    /// Select only (SnapKV after prefill): writes the index list.
    Select,
}

/// Where token scores come from (rule 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// No score: the keep rules (and ties) decide.
    None,
    /// The current query's attention probabilities.
    Exact,
    /// SnapKV: the softmax attention of the last `rows` queries; with `lse`
    /// (`window_lse(W)`) each row's softmax divides by the log-sum-exp the prefill's
    /// attention kernel gave (an input `[B, Hq, rows]`, FlashAttention's `softmax_lse`)
    /// instead of the row's own sum.
    Window { rows: u32, lse: bool },
    /// ZipCache's normalised attention: every token's attention from the last `rows`
    /// queries, summed over those that see it and divided by their count (the causal
    /// count), so that the window's own tokens are scored too.
    Normalized { rows: u32 },
    /// H2O: an accumulated state, updated after each decode step's attention.
    Accumulated,
    /// Quest: the per-page upper bound from per-channel key minima and maxima.
    PageBound,
    /// The query against each page's representative key, the mean of its keys.
    PageMean,
    /// An input score tensor `[B, Hsel, C]`.
    External,
    /// The negative squared L2 norm of each token's key (the query unused): tokens whose
    /// keys have the smallest norms draw the most attention (Devoto et al., 2024).
    KeyNorm,
}

/// Keyformer's update of the accumulated scores (Adnan et al., MLSys 2024): a step adds
/// the softmax of the list's logits perturbed by Gumbel noise at a temperature rising from
/// `tau` to `tau_end` over the first `steps` decode steps, instead of the plain
/// probabilities (`source keyformer(...)`; rule 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gumbel {
    pub tau: f64,
    pub tau_end: f64,
    pub steps: u32,
}

impl Gumbel {
    /// The temperature of a sequence's decode step `t` (0 the first after its cache was
    /// filled): linear from `tau` to `tau_end`, then constant.
    pub fn temperature(&self, t: u32) -> f64 {
        self.tau + (self.tau_end - self.tau) * f64::from(t.min(self.steps)) / f64::from(self.steps)
    }
}

/// Keyformer's noise for sequence `b`, query head `h`, step `t` and token `j`:
/// `-ln(-ln u)` with `u = (x >> 40 + 0.5) / 2^24` and `x` the SplitMix64 finaliser of
/// `b * 0x9E3779B97F4A7C15 ^ h * 0xC2B2AE3D27D4EB4F ^ t * 0x165667B19E3779F9 ^ j *
/// 0xD6E8FEB86659FD93` (wrapping products), in f64 (docs/kv-selection.md, rule 1).
pub fn gumbel_noise(b: u32, h: u32, t: u32, j: u32) -> f64 {
    let mut x = u64::from(b).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(h).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ u64::from(t).wrapping_mul(0x1656_67B1_9E37_79F9)
        ^ u64::from(j).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let u = ((x >> 40) as f64 + 0.5) / (1u64 << 24) as f64;
    -(-u.ln()).ln()
}

/// A reduction over query rows or heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
}

/// Which heads share an index list (rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadReduce {
    /// One list per KV head, reducing the scores of its query heads.
    PerKvGroup(Reduce),
    /// One list for all heads.
    Shared(Reduce),
    /// One list for all heads, scored by the named query heads only (CompressKV's
    /// retrieval heads).
    Subset(Reduce, HeadSet),
}

impl Source {
    /// Scores pages directly (`page_bound`, `page_mean`), not tokens.
    pub fn scores_pages(self) -> bool {
        matches!(self, Source::PageBound | Source::PageMean)
    }
}

impl HeadReduce {
    pub fn op(self) -> Reduce {
        match self {
            HeadReduce::PerKvGroup(r) | HeadReduce::Shared(r) | HeadReduce::Subset(r, _) => r,
        }
    }

    /// One list for every head (`shared` or `subset`).
    pub fn one_list(self) -> bool {
        !matches!(self, HeadReduce::PerKvGroup(_))
    }

    /// The list KV head `kvh` attends through: its own, or the one list.
    pub fn list_of_kv_head(self, kvh: usize) -> usize {
        if self.one_list() {
            0
        } else {
            kvh
        }
    }
}

/// A set of query heads (below `MAX_HEADS`, 1024), as bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HeadSet([u64; 16]);

impl HeadSet {
    /// The most heads a set can name.
    pub const CAPACITY: u32 = 1024;

    /// Adds head `h` (below [`HeadSet::CAPACITY`]); false when it was there already.
    pub fn insert(&mut self, h: u32) -> bool {
        let (w, bit) = ((h / 64) as usize, 1u64 << (h % 64));
        let fresh = self.0[w] & bit == 0;
        self.0[w] |= bit;
        fresh
    }

    /// The heads in ascending order.
    pub fn heads(&self) -> Vec<u32> {
        (0..Self::CAPACITY)
            .filter(|h| self.0[(h / 64) as usize] & (1u64 << (h % 64)) != 0)
            .collect()
    }

    /// The heads as the language writes them: `2, 9, 13`.
    pub fn listing(&self) -> String {
        let heads: Vec<String> = self.heads().iter().map(|h| h.to_string()).collect();
        heads.join(", ")
    }
}

/// A selection's output (rule 8): the index lists, or with them the selected keys and
/// values gathered into a smaller cache (`select` kernels only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Indices,
    Compacted,
}

/// Pooling along the sequence (rule 4); `size` is odd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    None,
    Avg { size: u32 },
    Max { size: u32 },
}

/// The budget (rule 6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// A fixed number of tokens (a multiple of the page size).
    Tokens(u32),
    /// A fraction of each sequence's units, in (0, 1].
    Ratio(f64),
}

#[derive(Clone, Debug)]
pub struct SelectSpec {
    pub kernel: String,
    pub select: String,
    pub kind: KernelKind,
    pub source: Source,
    /// Over the rows of a `window` source.
    pub rows: Reduce,
    pub heads: HeadReduce,
    pub pool: Pool,
    /// What a `select` kernel returns besides its index lists.
    pub output: Output,
    /// Tokens per unit: 1 for token granularity.
    pub page: u32,
    pub budget: Budget,
    /// Ada-KV's adaptive allocation (`adaptive(floor = F)`): the per-KV-head lists of a
    /// sequence share their budgets, each keeping at least `ceil(F * k)` units (rule 6).
    pub adaptive: Option<f64>,
    /// `source keyformer(...)`: an `accumulated` source whose update is perturbed.
    pub gumbel: Option<Gumbel>,
    pub sinks: u32,
    pub recent: u32,
    /// Cache capacity in tokens (`CONTEXT`).
    pub context: u32,
    pub batch: u32,
    pub q_heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub dtype: DType,
    pub scale: f64,
    /// Units per split-K chunk of the attention (rule 8).
    pub split: u32,
    /// Every parameter with its value and where the value came from, for `--emit spec`.
    pub params: Vec<(String, String, Origin)>,
}

impl SelectSpec {
    /// Query heads per KV head.
    pub fn group(&self) -> u32 {
        self.q_heads / self.kv_heads
    }

    /// Selection heads: one index list per KV head, or one shared.
    pub fn sel_heads(&self) -> u32 {
        match self.heads {
            HeadReduce::PerKvGroup(_) => self.kv_heads,
            HeadReduce::Shared(_) | HeadReduce::Subset(..) => 1,
        }
    }

    /// The query heads whose scores make list `sel` (rule 3), in order: the KV group's,
    /// every head, or the named subset.
    pub fn scoring_heads(&self, sel: u32) -> Vec<u32> {
        match self.heads {
            HeadReduce::PerKvGroup(_) => {
                let g = self.group();
                (sel * g..(sel + 1) * g).collect()
            }
            HeadReduce::Shared(_) => (0..self.q_heads).collect(),
            HeadReduce::Subset(_, set) => set.heads(),
        }
    }

    /// Units (tokens or pages) in a full cache.
    pub fn units(&self) -> u32 {
        self.context.div_ceil(self.page)
    }

    /// A list's budget in units at a full cache (`K` of rule 6; with an adaptive
    /// allocation, the lists' mean).
    pub fn budget_units(&self) -> u32 {
        match self.budget {
            Budget::Tokens(n) => n / self.page,
            Budget::Ratio(f) => ((f * self.context as f64 / self.page as f64).ceil() as u32)
                .max(self.max_forced())
                .max(1),
        }
    }

    /// The least units an adaptive allocation leaves a list whose mean budget is `k`
    /// units (its forced units count towards it).
    pub fn floor_units(&self, k: u32) -> u32 {
        self.adaptive
            .map_or(k, |f| ((f * f64::from(k)).ceil() as u32).min(k))
    }

    /// Entries per index list: the budget, or with an adaptive allocation the most one
    /// list can take (every other list at its floor), at most the units of a full cache.
    pub fn capacity(&self) -> u32 {
        let k = self.budget_units();
        if self.adaptive.is_none() {
            return k;
        }
        let h = self.sel_heads();
        // At least k: the floor is at most k.
        (h * k - (h - 1) * self.floor_units(k)).min(self.units())
    }

    /// Query rows per head: the observation window for `window`, else 1.
    pub fn q_rows(&self) -> u32 {
        match self.source {
            Source::Window { rows, .. } | Source::Normalized { rows } => rows,
            _ => 1,
        }
    }

    /// Forced units of a sequence of `len` tokens (rule 6): sinks, recent, partial page.
    pub fn forced_units(&self, len: u32) -> Vec<u32> {
        let p = self.page;
        let n = len.div_ceil(p);
        let mut keep = vec![false; n as usize];
        for t in 0..self.sinks.min(len) {
            keep[(t / p) as usize] = true;
        }
        for t in len.saturating_sub(self.recent)..len {
            keep[(t / p) as usize] = true;
        }
        if len % p != 0 {
            keep[(n - 1) as usize] = true;
        }
        (0..n).filter(|&u| keep[u as usize]).collect()
    }

    /// The most forced units any length up to `CONTEXT` has.
    pub fn max_forced(&self) -> u32 {
        let p = self.page;
        // Sinks cover ceil(S / P) pages; recent tokens span at most ceil(R / P) + 1 pages;
        // a partial last page is one more unless the recent tokens already reach it.
        let sinks = self.sinks.div_ceil(p);
        let recent = if self.recent == 0 {
            0
        } else {
            self.recent.div_ceil(p) + u32::from(p > 1)
        };
        let partial = u32::from(p > 1 && self.recent == 0);
        (sinks + recent + partial).min(self.units())
    }

    /// `--emit spec`: one line per fact, stable for snapshots.
    pub fn print(&self) -> String {
        let mut s = String::new();
        let kind = match self.kind {
            KernelKind::Decode => "decode",
            KernelKind::Select => "select",
        };
        let _ = writeln!(s, "kernel {} = {kind}({})", self.kernel, self.select);
        for (name, value, origin) in &self.params {
            let from = match origin {
                Origin::Default => "",
                Origin::Kernel => "  (kernel)",
                Origin::CommandLine => "  (--set)",
            };
            let _ = writeln!(s, "  param {name} = {value}{from}");
        }
        match self.gumbel {
            Some(g) => {
                let _ = writeln!(
                    s,
                    "  source keyformer(tau = {}, tau_end = {}, steps = {})",
                    g.tau, g.tau_end, g.steps
                );
            }
            None => {
                let _ = writeln!(s, "  source {}", source_name(self.source));
            }
        }
        if let Source::Window { .. } = self.source {
            let _ = writeln!(s, "  reduce rows: {}", reduce_name(self.rows));
        }
        let _ = writeln!(s, "  reduce heads: {}", head_reduce_name(self.heads));
        match self.pool {
            Pool::None => {}
            Pool::Avg { size } => {
                let _ = writeln!(s, "  pool avg({size})");
            }
            Pool::Max { size } => {
                let _ = writeln!(s, "  pool max({size})");
            }
        }
        if self.page == 1 {
            let _ = writeln!(s, "  granularity token");
        } else {
            let _ = writeln!(s, "  granularity page({})", self.page);
        }
        let _ = writeln!(s, "  keep sinks {}, recent {}", self.sinks, self.recent);
        if self.output == Output::Compacted {
            let _ = writeln!(s, "  output compacted");
        }
        let alloc = self
            .adaptive
            .map(|f| format!(" adaptive(floor = {f})"))
            .unwrap_or_default();
        match self.budget {
            Budget::Tokens(n) => {
                let _ = writeln!(s, "  budget {n} tokens{alloc}");
            }
            Budget::Ratio(f) => {
                let _ = writeln!(s, "  budget {f} ratio{alloc}");
            }
        }
        let _ = writeln!(
            s,
            "  capacity {} {} per list, {} list(s) per sequence",
            self.capacity(),
            if self.page == 1 { "tokens" } else { "pages" },
            self.sel_heads()
        );
        let _ = writeln!(
            s,
            "  shapes batch {}, heads {}/{} (q/kv), head_dim {}, context {}, dtype {}, scale {}",
            self.batch,
            self.q_heads,
            self.kv_heads,
            self.head_dim,
            self.context,
            self.dtype.name(),
            crate::sema::expr::format_float(self.scale)
        );
        if self.kind == KernelKind::Decode {
            let _ = writeln!(s, "  attend split {} units", self.split);
        }
        s
    }
}

/// Lanes that share one page's page-bound sum (rule 1's summation order): `D / 8` (8
/// adjacent channels, 16 bytes of bf16, a lane), rounded down to a power of two, 1 to 32.
pub fn score_lanes(head_dim: u32) -> u32 {
    let l = (head_dim / 8).clamp(1, 32);
    1 << (31 - l.leading_zeros())
}

/// A head reduction as the language writes it: `per_kv_group(sum)`, `shared(max)`,
/// `subset(sum, 3, 7)`.
pub fn head_reduce_name(h: HeadReduce) -> String {
    match h {
        HeadReduce::PerKvGroup(r) => format!("per_kv_group({})", reduce_name(r)),
        HeadReduce::Shared(r) => format!("shared({})", reduce_name(r)),
        HeadReduce::Subset(r, set) => format!("subset({}, {})", reduce_name(r), set.listing()),
    }
}

pub fn source_name(s: Source) -> String {
    match s {
        Source::None => "none".into(),
        Source::Exact => "exact".into(),
        Source::Window { rows, lse: false } => format!("window({rows})"),
        Source::Window { rows, lse: true } => format!("window_lse({rows})"),
        Source::Normalized { rows } => format!("normalized({rows})"),
        Source::Accumulated => "accumulated".into(),
        Source::PageBound => "page_bound".into(),
        Source::PageMean => "page_mean".into(),
        Source::External => "external".into(),
        Source::KeyNorm => "key_norm".into(),
    }
}

pub fn reduce_name(r: Reduce) -> &'static str {
    match r {
        Reduce::Sum => "sum",
        Reduce::Mean => "mean",
        Reduce::Max => "max",
    }
}
