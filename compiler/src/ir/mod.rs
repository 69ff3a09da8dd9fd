//! Stage 4: the kernel IR, backend-neutral, held in a petgraph `StableDiGraph` (indices
//! survive node removal). Nodes are operations with typed results; edges carry values from
//! a result of one node to an operand slot of another. Memory scope (global, shared,
//! register) is part of every tile type. The loop over the key tiles of the schedule is a
//! node that owns a region (MLIR `scf.for` style): its body nodes live in that region,
//! loop-carried values enter through `carry` nodes and leave through one `yield`.

pub mod dot;
pub mod lower;
pub mod print;
pub mod verify;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::sema::expr::Expr;
use crate::sema::program::{DType, Group};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Shared,
    Register,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Shared => "shared",
            Scope::Register => "reg",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    Bf16,
    F16,
    F32,
}

impl Elem {
    pub fn name(self) -> &'static str {
        match self {
            Elem::Bf16 => "bf16",
            Elem::F16 => "f16",
            Elem::F32 => "f32",
        }
    }

    pub fn from_dtype(d: DType) -> Elem {
        match d {
            DType::Bf16 => Elem::Bf16,
            DType::F16 => Elem::F16,
            DType::F32 => Elem::F32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// A `rows x cols` tile in a memory scope.
    Tile {
        scope: Scope,
        elem: Elem,
        rows: u32,
        cols: u32,
    },
    /// One value per tile row, in registers (running max, running sum).
    Rows { elem: Elem, rows: u32 },
    /// A `[batch, heads, tokens, dim]` tensor in global memory.
    Tensor {
        elem: Elem,
        heads: u32,
        tokens: u64,
        dim: u32,
    },
    /// A tile id, head or batch index.
    Index,
    /// Full or partial (whether a key tile needs its mask).
    Class,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tensor {
    Q,
    K,
    V,
    O,
    /// Each query row's log-sum-exp (`outputs lse;`): `[batch, heads, tokens, 1]` f32.
    Lse,
}

impl Tensor {
    pub fn name(self) -> &'static str {
        match self {
            Tensor::Q => "q",
            Tensor::K => "k",
            Tensor::V => "v",
            Tensor::O => "o",
            Tensor::Lse => "lse",
        }
    }
}

/// Index of a region; 0 is the kernel body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u32);

/// Index of an element function in [`Kernel::elem_fns`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ElemId(pub u32);

/// Where the key tiles of a query tile come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvSource {
    /// Bounds computed from the query tile's coordinates (the schedule's closed form), plus
    /// the segment tiles of the `see` rules.
    Closed,
    /// A compact run table passed to the kernel.
    Table,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A kernel argument.
    Arg(Tensor),
    /// This program's (batch, head, query tile).
    ProgramId,
    /// The KV head that serves a query head (GQA): `head / (heads / kv_heads)`.
    KvHead,
    /// Loads the tile of a tensor at (batch, head, tile) into a scope. Rows past the
    /// sequence or the tile's valid length are zero-filled, never read.
    Load(Tensor),
    /// Stores a register tile into an output at (batch, head, tile); only existing rows.
    /// Rows (one value each) go into a tensor of dim 1 (the log-sum-exps).
    Store,
    /// A constant tile or row vector.
    Const(f64),
    /// `a x b^T` (`transpose_b`) or `a x b`, accumulated in f32.
    Dot { transpose_b: bool },
    /// Multiplies every element by a constant.
    Scale(f64),
    /// Converts a register tile to another element type.
    Convert(Elem),
    /// Applies the kernel's score modifier element-wise: operands (scores, batch, head,
    /// query tile, key tile).
    ScoreMod(ElemId),
    /// Sets masked elements to -inf on partial key tiles (full tiles pass through).
    /// Operands: (scores, head, query tile, key tile, class). One element function per
    /// head variant, picked by head.
    Mask(Vec<ElemId>),
    /// Maximum of each row.
    RowMax,
    /// Sum of each row.
    RowSum,
    /// The online softmax step. Operands (scores, previous max, tile row max); results
    /// (p = exp(scores - new max), new max, alpha = exp(previous max - new max)). A row
    /// whose new max is -inf gets p = 0 and alpha = 1. `exp2`: scores are already scaled
    /// by log2(e), so exp2 replaces exp.
    SoftmaxUpdate { exp2: bool },
    /// `a * alpha + b`, with alpha per row: rescales the running sum or accumulator.
    RescaleAdd,
    /// `acc / l` per row; rows with `l == 0` (no key seen) become 0.
    Normalize,
    /// Each row's log-sum-exp in natural log, from the loop's final running max and sum:
    /// operands (m, l). `exp2` (the softmax runs in base 2 after `fold-log2e`: `m` is a
    /// maximum of scores times log2(e), `l` a sum of `2^(s - m)`): `(m + log2(l)) * ln 2`;
    /// otherwise `m + ln(l)`. Rows with `l == 0` (no key seen) get -inf.
    LogSumExp { exp2: bool },
    /// Loop over the key tiles of the query tile (operand 0), carrying the other operands.
    /// Results are the carried values after the last iteration.
    KvLoop { source: KvSource, region: RegionId },
    /// In a loop body: the current key tile and its class.
    KvTile,
    /// In a loop body: the value of carried slot `i` at the start of the iteration.
    Carry(u32),
    /// Ends a loop body: the carried values for the next iteration.
    Yield,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Arg(_) => "arg",
            Op::ProgramId => "program_id",
            Op::KvHead => "kv_head",
            Op::Load(_) => "load",
            Op::Store => "store",
            Op::Const(_) => "const",
            Op::Dot { .. } => "dot",
            Op::Scale(_) => "scale",
            Op::Convert(_) => "convert",
            Op::ScoreMod(_) => "score_mod",
            Op::Mask(_) => "mask",
            Op::RowMax => "row_max",
            Op::RowSum => "row_sum",
            Op::SoftmaxUpdate { .. } => "softmax_update",
            Op::RescaleAdd => "rescale_add",
            Op::Normalize => "normalize",
            Op::LogSumExp { .. } => "log_sum_exp",
            Op::KvLoop { .. } => "kv_loop",
            Op::KvTile => "kv_tile",
            Op::Carry(_) => "carry",
            Op::Yield => "yield",
        }
    }

    /// Nodes that must stay even when nothing uses their results.
    pub fn has_effect(&self) -> bool {
        matches!(self, Op::Store | Op::Yield)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub results: Vec<Type>,
    pub region: RegionId,
}

/// A value flows from result `result` of the source to operand slot `operand` of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub result: u8,
    pub operand: u8,
}

/// A value: a node and one of its results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value {
    pub node: NodeIndex,
    pub result: u8,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub parent: Option<RegionId>,
    /// The node that owns the region (a loop), if any.
    pub owner: Option<NodeIndex>,
}

/// An element-wise function the backends evaluate per (query token, key token).
#[derive(Clone, Debug, PartialEq)]
pub enum ElemFn {
    /// The score modifier over `score, b, h`, token coordinates and positions.
    Score(Expr),
    /// Whether a pair is attended: keys past a segment's valid length never are; the `see`
    /// rules decide pairs that involve a segment; canvas pairs follow the tile rule (at
    /// tile coordinates) and the token rule (at token coordinates).
    Mask {
        heads: Vec<u32>,
        tiles: Option<Expr>,
        tokens: Option<Expr>,
        see: Vec<(Group, Group)>,
    },
}

/// Sizes and settings the code generators need.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelInfo {
    pub name: String,
    pub elem: Elem,
    pub tile_q: u32,
    pub tile_k: u32,
    pub head_dim: u32,
    pub value_dim: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub batch: u32,
    pub tokens: u64,
    pub scale: f64,
    /// Axis names of the canvas and segment names, for printing element functions.
    pub axes: Vec<String>,
    pub segments: Vec<String>,
    /// Partial key tiles in the schedule, over all head variants.
    pub partial_tiles: u64,
    pub closed_boxes: Option<usize>,
    pub table_runs: usize,
}

#[derive(Clone, Debug)]
pub struct Kernel {
    pub info: KernelInfo,
    pub graph: StableDiGraph<Node, Edge>,
    pub regions: Vec<Region>,
    pub elem_fns: Vec<ElemFn>,
}

impl Kernel {
    pub fn new(info: KernelInfo) -> Kernel {
        Kernel {
            info,
            graph: StableDiGraph::new(),
            regions: vec![Region {
                parent: None,
                owner: None,
            }],
            elem_fns: vec![],
        }
    }

    pub fn add_region(&mut self, parent: RegionId) -> RegionId {
        self.regions.push(Region {
            parent: Some(parent),
            owner: None,
        });
        RegionId(self.regions.len() as u32 - 1)
    }

    /// Adds a node with its operands (in slot order).
    pub fn add(
        &mut self,
        op: Op,
        results: Vec<Type>,
        region: RegionId,
        operands: &[Value],
    ) -> NodeIndex {
        if let Op::KvLoop { region: r, .. } = op {
            let n = self.graph.add_node(Node {
                op,
                results,
                region,
            });
            if let Some(reg) = self.regions.get_mut(r.0 as usize) {
                reg.owner = Some(n);
            }
            self.connect(n, operands);
            return n;
        }
        let n = self.graph.add_node(Node {
            op,
            results,
            region,
        });
        self.connect(n, operands);
        n
    }

    fn connect(&mut self, n: NodeIndex, operands: &[Value]) {
        for (i, v) in operands.iter().enumerate() {
            self.graph.add_edge(
                v.node,
                n,
                Edge {
                    result: v.result,
                    operand: i as u8,
                },
            );
        }
    }

    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.graph[n]
    }

    /// Operands of a node, in slot order.
    pub fn operands(&self, n: NodeIndex) -> Vec<Value> {
        let mut v: Vec<(u8, Value)> = self
            .graph
            .edges_directed(n, Direction::Incoming)
            .map(|e| {
                (
                    e.weight().operand,
                    Value {
                        node: e.source(),
                        result: e.weight().result,
                    },
                )
            })
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, v)| v).collect()
    }

    /// Nodes using any result of `n`.
    pub fn users(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut v: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(n, Direction::Outgoing)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn ty(&self, v: Value) -> Option<Type> {
        self.graph
            .node_weight(v.node)
            .and_then(|n| n.results.get(v.result as usize).copied())
    }

    /// Nodes of a region in a topological order that prefers lower indices (so that the
    /// builder's order is kept and nodes added by passes appear where they are needed).
    pub fn region_nodes(&self, r: RegionId) -> Vec<NodeIndex> {
        self.topo_order()
            .into_iter()
            .filter(|n| self.graph[*n].region == r)
            .collect()
    }

    /// Kahn's algorithm with a min-heap on node index: deterministic.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, HashMap};
        let mut indeg: HashMap<NodeIndex, usize> = HashMap::new();
        for n in self.graph.node_indices() {
            indeg.insert(
                n,
                self.graph
                    .neighbors_directed(n, Direction::Incoming)
                    .count(),
            );
        }
        let mut heap: BinaryHeap<Reverse<NodeIndex>> = indeg
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| Reverse(*n))
            .collect();
        let mut out = Vec::with_capacity(indeg.len());
        while let Some(Reverse(n)) = heap.pop() {
            out.push(n);
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let d = indeg.entry(e.target()).or_insert(1);
                *d -= 1;
                if *d == 0 {
                    heap.push(Reverse(e.target()));
                }
            }
        }
        out
    }

    /// Replaces every use of `old` by `new`.
    pub fn replace_uses(&mut self, old: Value, new: Value) {
        let uses: Vec<_> = self
            .graph
            .edges_directed(old.node, Direction::Outgoing)
            .filter(|e| e.weight().result == old.result)
            .map(|e| (e.id(), e.target(), e.weight().operand))
            .collect();
        for (id, target, operand) in uses {
            self.graph.remove_edge(id);
            self.graph.add_edge(
                new.node,
                target,
                Edge {
                    result: new.result,
                    operand,
                },
            );
        }
    }

    /// For a result of a `kv_loop`, the op that gives it: the producer of the matching
    /// operand of the body's yield (the last iteration's value).
    pub fn yielded_by(&self, v: Value) -> Option<&Op> {
        let Op::KvLoop { region, .. } = self.graph.node_weight(v.node)?.op else {
            return None;
        };
        let y = self
            .region_nodes(region)
            .into_iter()
            .find(|n| self.node(*n).op == Op::Yield)?;
        let src = self.operands(y).get(v.result as usize).copied()?;
        Some(&self.node(src.node).op)
    }

    /// Whether the kernel writes its rows' log-sum-exps (`outputs lse;`): an `lse` argument.
    pub fn writes_lse(&self) -> bool {
        self.graph
            .node_weights()
            .any(|n| n.op == Op::Arg(Tensor::Lse))
    }

    /// Is region `inner` equal to or nested in `outer`?
    pub fn region_within(&self, inner: RegionId, outer: RegionId) -> bool {
        let mut r = Some(inner);
        while let Some(x) = r {
            if x == outer {
                return true;
            }
            r = self.regions.get(x.0 as usize).and_then(|reg| reg.parent);
        }
        false
    }
}

pub fn value(node: NodeIndex, result: u8) -> Value {
    Value { node, result }
}
