//! Kernel IR -> Cranelift IR, one function per kernel, one call per (batch, head, query
//! tile). Every tile or row value of the IR gets a scratch buffer (f32, rows padded to a
//! multiple of 4 so that f32x4 loads are aligned); index values are SSA values. Ops are
//! emitted in topological order; the `kv_loop` walks the schedule's run table.
//!
//! Precision: the CPU backend computes in f32 whatever the kernel's dtype (`convert` is a
//! no-op here), since it is the correctness oracle for the GPU.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use petgraph::stable_graph::NodeIndex;

use super::abi::*;
use super::emit::{Em, F32, F32X4, F64, I64};
use super::expr::{ExprGen, Scope};
use super::tokens::{emit_tile_info, TileInfo};
use crate::ir::{self, ElemFn, Kernel, Op, Type};
use crate::pattern::geometry::Geometry;
use crate::sema::expr::{Expr, InputId, Var};
use crate::sema::program::Group;
use crate::sema::spec::InputSpec;

pub fn round4(n: u32) -> u32 {
    n.div_ceil(4) * 4
}

/// A float buffer in scratch: `rows` rows of `stride` floats (stride a multiple of 4).
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub off: i32,
    pub rows: u32,
    /// Meaningful columns.
    pub cols: u32,
    pub stride: u32,
}

/// Where everything lives in the scratch buffer.
pub struct Plan {
    pub bufs: HashMap<ir::Value, Buf>,
    pub qpos: i32,
    pub qx: [i32; 3],
    pub kpos: i32,
    pub kx: [i32; 3],
    pub bytes: usize,
}

/// Assigns scratch space. Element-wise ops whose operand has no other user work in place;
/// `convert`, loop results and `carry` values share their source's buffer.
pub fn plan(k: &Kernel) -> Plan {
    let mut bufs: HashMap<ir::Value, Buf> = HashMap::new();
    let mut off: usize = 0;
    let mut alloc = |rows: u32, cols: u32| -> Buf {
        let stride = round4(cols);
        let b = Buf {
            off: off as i32,
            rows: round4(rows),
            cols,
            stride,
        };
        off += (round4(rows) as usize) * stride as usize * 4;
        off = off.div_ceil(64) * 64;
        b
    };
    let shape = |t: &Type| match t {
        Type::Tile { rows, cols, .. } => Some((*rows, *cols)),
        Type::Rows { rows, .. } => Some((*rows, 1)),
        _ => None,
    };
    let order = k.topo_order();
    // Loops first: their carried values get buffers that the inits, carries and results share.
    for n in &order {
        if let Op::KvLoop { region, .. } = k.node(*n).op {
            for (i, t) in k.node(*n).results.clone().iter().enumerate() {
                if let Some((r, c)) = shape(t) {
                    let b = alloc(r, c);
                    bufs.insert(ir::value(*n, i as u8), b);
                    for body in k.region_nodes(region) {
                        if k.node(body).op == Op::Carry(i as u32) {
                            bufs.insert(ir::value(body, 0), b);
                        }
                    }
                }
            }
        }
    }
    for n in order {
        let node = k.node(n);
        let in_place = matches!(
            node.op,
            Op::Scale(_) | Op::ScoreMod(_) | Op::Mask(_) | Op::Convert(_)
        );
        for (i, t) in node.results.iter().enumerate() {
            let v = ir::value(n, i as u8);
            if bufs.contains_key(&v) {
                continue;
            }
            let Some((r, c)) = shape(t) else { continue };
            if in_place {
                let src = k.operands(n)[0];
                let single_use =
                    k.users(src.node).len() == 1 && k.node(src.node).results.len() == 1;
                if let (Some(b), true) = (
                    bufs.get(&src).copied(),
                    single_use || matches!(node.op, Op::Convert(_)),
                ) {
                    bufs.insert(v, b);
                    continue;
                }
            }
            let b = alloc(r, c);
            bufs.insert(v, b);
        }
    }
    let tile_q = k.info.tile_q.max(k.info.tile_k);
    let ints = |off: &mut usize| {
        let o = *off as i32;
        *off += round4(tile_q) as usize * 8;
        o
    };
    let next = |o: &mut usize| ints(o);
    let mut o = off;
    let qpos = next(&mut o);
    let qx = [next(&mut o), next(&mut o), next(&mut o)];
    let kpos = next(&mut o);
    let kx = [next(&mut o), next(&mut o), next(&mut o)];
    Plan {
        bufs,
        qpos,
        qx,
        kpos,
        kx,
        bytes: o.div_ceil(64) * 64,
    }
}

/// The state of one function being emitted.
pub struct Lower<'a, 'e, 'd> {
    pub em: Em<'e>,
    pub k: &'a Kernel,
    pub g: &'a Geometry,
    pub plan: &'a Plan,
    pub inputs: &'a [InputSpec],
    pub gen: ExprGen<'d>,
    pub ctx: Value,
    pub scratch: Value,
    /// Index values of the IR (program ids, head, key tile, class).
    pub idx: HashMap<ir::Value, Value>,
    pub qinfo: Option<TileInfo>,
    pub kinfo: Option<TileInfo>,
    /// The class of the current key tile (1 = partial).
    pub class: Option<Value>,
    /// The query head (i64).
    pub head: Value,
    /// The function's (batch, head, query tile) parameters.
    pub program_ids: (Value, Value, Value),
}

impl<'a, 'e, 'd> Lower<'a, 'e, 'd> {
    fn buf(&self, v: ir::Value) -> Buf {
        self.plan.bufs.get(&v).copied().unwrap_or(Buf {
            off: 0,
            rows: 0,
            cols: 0,
            stride: 4,
        })
    }

    fn index(&self, v: ir::Value) -> Value {
        self.idx[&v]
    }

    /// Address of row `r` of a buffer, without the buffer's offset (loads and stores add it).
    fn row(&mut self, b: Buf, r: Value) -> Value {
        self.em.index(self.scratch, r, i64::from(b.stride) * 4)
    }

    pub fn region(&mut self, r: ir::RegionId) {
        for n in self.k.region_nodes(r) {
            self.node(n);
        }
    }

    fn node(&mut self, n: NodeIndex) {
        let k = self.k;
        let node = k.node(n);
        let ops = k.operands(n);
        let out = ir::value(n, 0);
        match &node.op {
            Op::Arg(_) => {}
            Op::ProgramId => {
                let (b, h, qt) = self.program_ids;
                self.idx.insert(ir::value(n, 0), b);
                self.idx.insert(ir::value(n, 1), h);
                self.idx.insert(ir::value(n, 2), qt);
                let (qpos, qx) = (self.plan.qpos, self.plan.qx);
                self.qinfo = Some(emit_tile_info(
                    &mut self.em,
                    self.g,
                    self.scratch,
                    qt,
                    qpos,
                    qx,
                ));
            }
            Op::KvHead => {
                let h = self.index(ops[0]);
                let group = i64::from(k.info.heads / k.info.kv_heads.max(1));
                let kvh = self.em.b.ins().sdiv_imm_s(h, group.max(1));
                self.idx.insert(out, kvh);
            }
            Op::Load(t) => self.load(*t, &ops, out),
            Op::Store => self.store(&ops),
            Op::Const(c) => {
                let b = self.buf(out);
                let v = self.em.splat(*c as f32);
                self.em.for_n(i64::from(b.rows), 1, &mut |em, r| {
                    let base = em.index(self.scratch, r, i64::from(b.stride) * 4);
                    for c4 in (0..b.stride).step_by(4) {
                        em.st(v, base, b.off + c4 as i32 * 4);
                    }
                });
            }
            Op::Dot { transpose_b: true } => {
                self.dot_t(self.buf(ops[0]), self.buf(ops[1]), self.buf(out))
            }
            Op::Dot { transpose_b: false } => {
                self.dot_n(self.buf(ops[0]), self.buf(ops[1]), self.buf(out))
            }
            Op::Scale(c) => {
                let (src, dst) = (self.buf(ops[0]), self.buf(out));
                let s = self.em.splat(*c as f32);
                self.map_tile(src, dst, &mut |em, x| em.b.ins().fmul(x, s));
            }
            Op::Convert(_) => {
                let (src, dst) = (self.buf(ops[0]), self.buf(out));
                if src.off != dst.off {
                    self.map_tile(src, dst, &mut |_, x| x);
                }
            }
            Op::ScoreMod(f) => {
                let (b, h) = (self.index(ops[1]), self.index(ops[2]));
                if let Some(ElemFn::Score(e)) = k.elem_fns.get(f.0 as usize) {
                    self.score_mod(e, self.buf(ops[0]), self.buf(out), b, h);
                }
            }
            Op::Mask(fs) => {
                let h = self.index(ops[1]);
                self.mask(fs, self.buf(ops[0]), self.buf(out), h);
            }
            Op::RowMax => self.row_reduce(self.buf(ops[0]), self.buf(out), true),
            Op::RowSum => self.row_reduce(self.buf(ops[0]), self.buf(out), false),
            Op::SoftmaxUpdate { exp2 } => {
                let outs = [
                    self.buf(ir::value(n, 0)),
                    self.buf(ir::value(n, 1)),
                    self.buf(ir::value(n, 2)),
                ];
                self.softmax_update(
                    self.buf(ops[0]),
                    self.buf(ops[1]),
                    self.buf(ops[2]),
                    outs,
                    *exp2,
                );
            }
            Op::RescaleAdd => self.rescale_add(
                self.buf(ops[0]),
                self.buf(ops[1]),
                self.buf(ops[2]),
                self.buf(out),
            ),
            Op::Normalize => self.normalize(self.buf(ops[0]), self.buf(ops[1]), self.buf(out)),
            Op::LogSumExp { exp2 } => {
                self.log_sum_exp(self.buf(ops[0]), self.buf(ops[1]), self.buf(out), *exp2)
            }
            Op::KvLoop { region, .. } => self.kv_loop(n, *region, &ops),
            Op::KvTile | Op::Carry(_) => {}
            Op::Yield => {
                // Carried values live in the loop's buffers: copy what is not already there.
                let owner = k.regions[node.region.0 as usize].owner;
                if let Some(owner) = owner {
                    for (i, v) in ops.iter().enumerate() {
                        let (src, dst) = (self.buf(*v), self.buf(ir::value(owner, i as u8)));
                        if src.off != dst.off {
                            self.map_tile(src, dst, &mut |_, x| x);
                        }
                    }
                }
            }
        }
    }

    /// `dst = f(src)` element-wise over whole rows (vectors of 4).
    fn map_tile(&mut self, src: Buf, dst: Buf, f: &mut dyn FnMut(&mut Em, Value) -> Value) {
        let scratch = self.scratch;
        self.em.for_n(i64::from(src.rows), 1, &mut |em, r| {
            let s = em.index(scratch, r, i64::from(src.stride) * 4);
            let d = em.index(scratch, r, i64::from(dst.stride) * 4);
            for c in (0..src.stride).step_by(4) {
                let x = em.ld(F32X4, s, src.off + c as i32 * 4);
                let y = f(em, x);
                em.st(y, d, dst.off + c as i32 * 4);
            }
        });
    }

    fn tensor_ptr(&mut self, t: ir::Tensor) -> Value {
        let off = match t {
            ir::Tensor::Q => OFF_Q,
            ir::Tensor::K => OFF_K,
            ir::Tensor::V => OFF_V,
            ir::Tensor::O => OFF_O,
            ir::Tensor::Lse => OFF_LSE,
        };
        self.em.ld(I64, self.ctx, off)
    }

    /// Gathers a tile's rows from a tensor into a buffer; missing rows become zeros.
    fn load(&mut self, t: ir::Tensor, ops: &[ir::Value], out: ir::Value) {
        let k = self.k;
        let (heads, dim) = match k.ty(ops[0]) {
            Some(Type::Tensor { heads, dim, .. }) => (heads, dim),
            _ => return,
        };
        if t == ir::Tensor::K {
            // Row information of the key tile, shared by the K and V loads, mask and score.
            let kt = self.index(ops[3]);
            let (kpos, kx) = (self.plan.kpos, self.plan.kx);
            self.kinfo = Some(emit_tile_info(
                &mut self.em,
                self.g,
                self.scratch,
                kt,
                kpos,
                kx,
            ));
        }
        let info = if t == ir::Tensor::Q {
            self.qinfo
        } else {
            self.kinfo
        };
        let Some(info) = info else { return };
        let (b, head) = (self.index(ops[1]), self.index(ops[2]));
        let dst = self.buf(out);
        let tokens = k.info.tokens as i64;
        let base_ptr = self.tensor_ptr(t);
        // Element offset of (b, head, token 0).
        let bh = {
            let bb = self.em.muli(b, i64::from(heads));
            let bh = self.em.add(bb, head);
            self.em.muli(bh, tokens * i64::from(dim) * 4)
        };
        let tensor = self.em.add(base_ptr, bh);
        let scratch = self.scratch;
        let len = info.len;
        let zero_v = self.em.splat(0.0);
        self.em.for_n(i64::from(dst.rows), 1, &mut |em, r| {
            let d = em.index(scratch, r, i64::from(dst.stride) * 4);
            let exists = em.lt(r, len);
            em.if_else(
                exists,
                &mut |em| {
                    let slot = em.index(scratch, r, 8);
                    let pos = em.ld(I64, slot, info.pos);
                    let src = em.index(tensor, pos, i64::from(dim) * 4);
                    let full = dim / 4 * 4;
                    for c in (0..full).step_by(4) {
                        let x = em.ld_user(F32X4, src, c as i32 * 4);
                        em.st(x, d, dst.off + c as i32 * 4);
                    }
                    for c in full..dst.stride {
                        let x = if c < dim {
                            em.ld_user(F32, src, c as i32 * 4)
                        } else {
                            em.f32(0.0)
                        };
                        em.st(x, d, dst.off + c as i32 * 4);
                    }
                },
                &mut |em| {
                    for c in (0..dst.stride).step_by(4) {
                        em.st(zero_v, d, dst.off + c as i32 * 4);
                    }
                },
            );
        });
    }

    /// Writes the existing rows of a tile (or of rows, into a tensor of dim 1) to the
    /// output argument it names.
    fn store(&mut self, ops: &[ir::Value]) {
        let k = self.k;
        let (heads, dim) = match k.ty(ops[0]) {
            Some(Type::Tensor { heads, dim, .. }) => (heads, dim),
            _ => return,
        };
        let Op::Arg(target) = k.node(ops[0].node).op else {
            return;
        };
        let Some(info) = self.qinfo else { return };
        let (b, head) = (self.index(ops[1]), self.index(ops[2]));
        let src = self.buf(ops[4]);
        let tokens = k.info.tokens as i64;
        let base_ptr = self.tensor_ptr(target);
        let bh = {
            let bb = self.em.muli(b, i64::from(heads));
            let bh = self.em.add(bb, head);
            self.em.muli(bh, tokens * i64::from(dim) * 4)
        };
        let tensor = self.em.add(base_ptr, bh);
        let scratch = self.scratch;
        let zero = self.em.i(0);
        self.em.for_range(zero, info.len, 1, &mut |em, r| {
            let slot = em.index(scratch, r, 8);
            let pos = em.ld(I64, slot, info.pos);
            let dst = em.index(tensor, pos, i64::from(dim) * 4);
            let s = em.index(scratch, r, i64::from(src.stride) * 4);
            let full = dim / 4 * 4;
            for c in (0..full).step_by(4) {
                let x = em.ld(F32X4, s, src.off + c as i32 * 4);
                em.st_user(x, dst, c as i32 * 4);
            }
            for c in full..dim {
                let x = em.ld(F32, s, src.off + c as i32 * 4);
                em.st_user(x, dst, c as i32 * 4);
            }
        });
    }

    /// `c[i][j] = sum_d a[i][d] * b[j][d]`, four columns of `c` at a time.
    fn dot_t(&mut self, a: Buf, b: Buf, c: Buf) {
        let scratch = self.scratch;
        let inner = a.stride.min(b.stride);
        self.em.for_n(i64::from(a.rows), 1, &mut |em, i| {
            let arow = em.index(scratch, i, i64::from(a.stride) * 4);
            let crow = em.index(scratch, i, i64::from(c.stride) * 4);
            em.for_n(i64::from(b.rows), 4, &mut |em, j| {
                let zero = em.splat(0.0);
                let accs: Vec<_> = (0..4).map(|_| em.var(F32X4, zero)).collect();
                let brow: Vec<Value> = (0..4)
                    .map(|u| {
                        let ju = em.addi(j, u);
                        em.index(scratch, ju, i64::from(b.stride) * 4)
                    })
                    .collect();
                em.for_n(i64::from(inner), 4, &mut |em, d| {
                    let d4 = em.muli(d, 4);
                    let ap = em.add(arow, d4);
                    let av = em.ld(F32X4, ap, a.off);
                    for u in 0..4 {
                        let bp = em.add(brow[u], d4);
                        let bv = em.ld(F32X4, bp, b.off);
                        let prod = em.b.ins().fmul(av, bv);
                        let acc = em.get(accs[u]);
                        let s = em.b.ins().fadd(acc, prod);
                        em.set(accs[u], s);
                    }
                });
                for (u, acc) in accs.iter().enumerate() {
                    let v = em.get(*acc);
                    let s = em.hsum(v);
                    let ju = em.addi(j, u as i64);
                    let p = em.index(crow, ju, 4);
                    em.st(s, p, c.off);
                }
            });
        });
    }

    /// `c[i][:] = sum_{j < cols(a)} a[i][j] * b[j][:]`, 8 vectors of `c` held at a time.
    fn dot_n(&mut self, a: Buf, b: Buf, c: Buf) {
        let scratch = self.scratch;
        let kdim = a.cols;
        let vecs = c.stride / 4;
        let mut chunks = vec![];
        let mut start = 0;
        while start < vecs {
            let n = (vecs - start).min(8);
            chunks.push((start, n));
            start += n;
        }
        self.em.for_n(i64::from(a.rows), 1, &mut |em, i| {
            let arow = em.index(scratch, i, i64::from(a.stride) * 4);
            let crow = em.index(scratch, i, i64::from(c.stride) * 4);
            for &(v0, n) in &chunks {
                let zero = em.splat(0.0);
                let accs: Vec<_> = (0..n).map(|_| em.var(F32X4, zero)).collect();
                em.for_n(i64::from(kdim), 1, &mut |em, j| {
                    let ap = em.index(arow, j, 4);
                    let p = em.ld(F32, ap, a.off);
                    let pv = em.b.ins().splat(F32X4, p);
                    let brow = em.index(scratch, j, i64::from(b.stride) * 4);
                    for (u, acc) in accs.iter().enumerate() {
                        let off = b.off + ((v0 as usize + u) * 16) as i32;
                        let bv = em.ld(F32X4, brow, off);
                        let prod = em.b.ins().fmul(pv, bv);
                        let x = em.get(*acc);
                        let s = em.b.ins().fadd(x, prod);
                        em.set(*acc, s);
                    }
                });
                for (u, acc) in accs.iter().enumerate() {
                    let v = em.get(*acc);
                    em.st(v, crow, c.off + ((v0 as usize + u) * 16) as i32);
                }
            }
        });
    }

    /// Row max or row sum over the meaningful columns.
    fn row_reduce(&mut self, src: Buf, dst: Buf, max: bool) {
        let scratch = self.scratch;
        let cols = src.cols;
        self.em.for_n(i64::from(src.rows), 1, &mut |em, i| {
            let row = em.index(scratch, i, i64::from(src.stride) * 4);
            let init = if max {
                em.splat(f32::NEG_INFINITY)
            } else {
                em.splat(0.0)
            };
            let acc = em.var(F32X4, init);
            let full = cols / 4 * 4;
            em.for_n(i64::from(full), 4, &mut |em, j| {
                let p = em.index(row, j, 4);
                let x = em.ld(F32X4, p, src.off);
                let a = em.get(acc);
                let r = if max {
                    em.b.ins().fmax(a, x)
                } else {
                    em.b.ins().fadd(a, x)
                };
                em.set(acc, r);
            });
            let v = em.get(acc);
            let mut s = if max { em.hmax(v) } else { em.hsum(v) };
            for j in full..cols {
                let x = em.ld(F32, row, src.off + j as i32 * 4);
                s = if max {
                    em.b.ins().fmax(s, x)
                } else {
                    em.b.ins().fadd(s, x)
                };
            }
            let d = em.index(scratch, i, i64::from(dst.stride) * 4);
            em.st(s, d, dst.off);
        });
    }

    fn softmax_update(&mut self, s: Buf, m_prev: Buf, rowmax: Buf, outs: [Buf; 3], exp2: bool) {
        let [p, m_new, alpha] = outs;
        let scratch = self.scratch;
        let k = if exp2 {
            1.0f32
        } else {
            std::f32::consts::LOG2_E
        };
        let cols = s.cols;
        self.em.for_n(i64::from(s.rows), 1, &mut |em, i| {
            let rows_at = |em: &mut Em, b: Buf| em.index(scratch, i, i64::from(b.stride) * 4);
            let mp_a = rows_at(em, m_prev);
            let rm_a = rows_at(em, rowmax);
            let mn_a = rows_at(em, m_new);
            let al_a = rows_at(em, alpha);
            let mp = em.ld(F32, mp_a, m_prev.off);
            let rm = em.ld(F32, rm_a, rowmax.off);
            let mn = em.b.ins().fmax(mp, rm);
            em.st(mn, mn_a, m_new.off);
            let srow = em.index(scratch, i, i64::from(s.stride) * 4);
            let prow = em.index(scratch, i, i64::from(p.stride) * 4);
            let ninf = em.f32(f32::NEG_INFINITY);
            let dead = em.fcmp(FloatCC::Equal, mn, ninf);
            em.if_else(
                dead,
                &mut |em| {
                    let one = em.f32(1.0);
                    em.st(one, al_a, alpha.off);
                    let z = em.splat(0.0);
                    for c in (0..p.stride).step_by(4) {
                        em.st(z, prow, p.off + c as i32 * 4);
                    }
                },
                &mut |em| {
                    let kk = em.f32(k);
                    let d = em.b.ins().fsub(mp, mn);
                    let d = em.b.ins().fmul(d, kk);
                    let a = em.exp2_s(d);
                    em.st(a, al_a, alpha.off);
                    let mv = em.b.ins().splat(F32X4, mn);
                    let kv = em.b.ins().splat(F32X4, kk);
                    let full = cols / 4 * 4;
                    em.for_n(i64::from(full), 4, &mut |em, j| {
                        let sp = em.index(srow, j, 4);
                        let x = em.ld(F32X4, sp, s.off);
                        let x = em.b.ins().fsub(x, mv);
                        let x = em.b.ins().fmul(x, kv);
                        let y = em.exp2_v(x);
                        let pp = em.index(prow, j, 4);
                        em.st(y, pp, p.off);
                    });
                    for j in full..cols {
                        let x = em.ld(F32, srow, s.off + j as i32 * 4);
                        let x = em.b.ins().fsub(x, mn);
                        let x = em.b.ins().fmul(x, kk);
                        let y = em.exp2_s(x);
                        em.st(y, prow, p.off + j as i32 * 4);
                    }
                },
            );
        });
    }

    /// `out = a * alpha[row] + b`
    fn rescale_add(&mut self, a: Buf, alpha: Buf, b: Buf, out: Buf) {
        let scratch = self.scratch;
        let rows_only = a.cols == 1;
        self.em.for_n(i64::from(a.rows), 1, &mut |em, i| {
            let al = em.index(scratch, i, i64::from(alpha.stride) * 4);
            let s = em.ld(F32, al, alpha.off);
            let ar = em.index(scratch, i, i64::from(a.stride) * 4);
            let br = em.index(scratch, i, i64::from(b.stride) * 4);
            let or = em.index(scratch, i, i64::from(out.stride) * 4);
            if rows_only {
                let x = em.ld(F32, ar, a.off);
                let y = em.ld(F32, br, b.off);
                let m = em.b.ins().fmul(x, s);
                let r = em.b.ins().fadd(m, y);
                em.st(r, or, out.off);
            } else {
                let sv = em.b.ins().splat(F32X4, s);
                for c in (0..a.stride).step_by(4) {
                    let x = em.ld(F32X4, ar, a.off + c as i32 * 4);
                    let y = em.ld(F32X4, br, b.off + c as i32 * 4);
                    let m = em.b.ins().fmul(x, sv);
                    let r = em.b.ins().fadd(m, y);
                    em.st(r, or, out.off + c as i32 * 4);
                }
            }
        });
    }

    /// `out = acc / l` per row; 0 where `l == 0`.
    fn normalize(&mut self, acc: Buf, l: Buf, out: Buf) {
        let scratch = self.scratch;
        self.em.for_n(i64::from(acc.rows), 1, &mut |em, i| {
            let lp = em.index(scratch, i, i64::from(l.stride) * 4);
            let lv = em.ld(F32, lp, l.off);
            let zero = em.f32(0.0);
            let one = em.f32(1.0);
            let is_zero = em.fcmp(FloatCC::Equal, lv, zero);
            let inv = em.b.ins().fdiv(one, lv);
            let inv = em.b.ins().select(is_zero, zero, inv);
            let iv = em.b.ins().splat(F32X4, inv);
            let ar = em.index(scratch, i, i64::from(acc.stride) * 4);
            let or = em.index(scratch, i, i64::from(out.stride) * 4);
            for c in (0..acc.stride).step_by(4) {
                let x = em.ld(F32X4, ar, acc.off + c as i32 * 4);
                let y = em.b.ins().fmul(x, iv);
                em.st(y, or, out.off + c as i32 * 4);
            }
        });
    }

    /// Each row's log-sum-exp from the final running max `m` and sum `l`, in f64 through
    /// the `log` helper: `(m + log2(l)) * ln 2` when the softmax ran in base 2, else
    /// `m + ln(l)`; -inf where `l == 0` (the row saw no key).
    fn log_sum_exp(&mut self, m: Buf, l: Buf, out: Buf, exp2: bool) {
        let scratch = self.scratch;
        let log = self.gen.libm.log;
        self.em.for_n(i64::from(m.rows), 1, &mut |em, i| {
            let at = |em: &mut Em, b: Buf| em.index(scratch, i, i64::from(b.stride) * 4);
            let (mp, lp, op) = (at(em, m), at(em, l), at(em, out));
            let mv = em.ld(F32, mp, m.off);
            let lv = em.ld(F32, lp, l.off);
            let mv = em.b.ins().fpromote(F64, mv);
            let lw = em.b.ins().fpromote(F64, lv);
            let ln_l = em.call_f64(log, lw);
            let lse = if exp2 {
                let to_log2 = em.f64(std::f64::consts::LOG2_E);
                let ln2 = em.f64(std::f64::consts::LN_2);
                let log2_l = em.b.ins().fmul(ln_l, to_log2);
                let sum = em.b.ins().fadd(mv, log2_l);
                em.b.ins().fmul(sum, ln2)
            } else {
                em.b.ins().fadd(mv, ln_l)
            };
            let lse = em.b.ins().fdemote(F32, lse);
            let zero = em.f32(0.0);
            let empty = em.fcmp(FloatCC::Equal, lv, zero);
            let ninf = em.f32(f32::NEG_INFINITY);
            let r = em.b.ins().select(empty, ninf, lse);
            em.st(r, op, out.off);
        });
    }

    fn kv_loop(&mut self, n: NodeIndex, region: ir::RegionId, ops: &[ir::Value]) {
        // Initial carried values into the loop's buffers.
        for (i, init) in ops.iter().skip(1).enumerate() {
            let (src, dst) = (self.buf(*init), self.buf(ir::value(n, i as u8)));
            if src.off != dst.off {
                self.map_tile(src, dst, &mut |_, x| x);
            }
        }
        let qt = self.index(ops[0]);
        let h = self.head;
        // The head's variant, its CSR row and runs.
        let hv_ptr = self.em.ld(I64, self.ctx, OFF_HEAD_VARIANT);
        let hv_at = self.em.index(hv_ptr, h, 4);
        let variant = self.em.ld_u32(hv_at, 0);
        let rows_tab = self.em.ld(I64, self.ctx, OFF_ROWS);
        let rows_at = self.em.index(rows_tab, variant, 8);
        let rows_ptr = self.em.ld(I64, rows_at, 0);
        let runs_tab = self.em.ld(I64, self.ctx, OFF_RUNS);
        let runs_at = self.em.index(runs_tab, variant, 8);
        let runs_ptr = self.em.ld(I64, runs_at, 0);
        let row_at = self.em.index(rows_ptr, qt, 4);
        let start = self.em.ld_u32(row_at, 0);
        let end = self.em.ld_u32(row_at, 4);
        let runs = self.em.loop_begin(start, end);
        let run = self.em.index(runs_ptr, runs.i, 12);
        let first = self.em.ld_u32(run, 0);
        let len = self.em.ld_u32(run, 4);
        let class = self.em.ld_u32(run, 8);
        let last = self.em.add(first, len);
        let tiles = self.em.loop_begin(first, last);
        if let Some(kv) = self
            .k
            .region_nodes(region)
            .into_iter()
            .find(|b| self.k.node(*b).op == Op::KvTile)
        {
            self.idx.insert(ir::value(kv, 0), tiles.i);
            self.idx.insert(ir::value(kv, 1), class);
        }
        self.class = Some(class);
        self.region(region);
        self.em.loop_end(tiles, 1);
        self.em.loop_end(runs, 1);
    }

    #[allow(clippy::too_many_arguments)]
    fn pair_scope<'s>(
        &self,
        i: Value,
        j: Value,
        b: Value,
        h: Value,
        score: Option<Value>,
        tile: Option<&'s [u32]>,
        extent: &'s [i64],
    ) -> Option<PairScope<'s>>
    where
        'a: 's,
    {
        Some(PairScope {
            scratch: self.scratch,
            q: self.qinfo?,
            k: self.kinfo?,
            i,
            j,
            tile,
            extent,
            rank: self.g.rank,
            b,
            h,
            score,
            inputs: self.inputs,
            ctx: self.ctx,
        })
    }

    fn score_mod(&mut self, e: &Expr, src: Buf, dst: Buf, b: Value, h: Value) {
        let extent: Vec<i64> = (0..self.g.rank)
            .map(|a| i64::from(self.g.canvas[a]))
            .collect();
        let zero = self.em.i(0);
        let rows = self.em.i(i64::from(src.rows));
        let cols = self.em.i(i64::from(src.cols));
        let li = self.em.loop_begin(zero, rows);
        let j0 = self.em.i(0);
        let zero_score = self.em.f64(0.0);
        if let Some(mut scope) = self.pair_scope(li.i, j0, b, h, Some(zero_score), None, &extent) {
            self.gen.hoist(&mut self.em, e, &mut scope);
        }
        let lj = self.em.loop_begin(zero, cols);
        let (i, j) = (li.i, lj.i);
        let srow = self.row(src, i);
        let sp = self.em.index(srow, j, 4);
        let x = self.em.ld(F32, sp, src.off);
        let x = self.em.b.ins().fpromote(F64, x);
        if let Some(mut scope) = self.pair_scope(i, j, b, h, Some(x), None, &extent) {
            let r = self.gen.gen(&mut self.em, e, &mut scope);
            let r = if e.ty == crate::sema::expr::Ty::Int {
                self.em.b.ins().fcvt_from_sint(F64, r)
            } else {
                r
            };
            let r = self.em.b.ins().fdemote(F32, r);
            let drow = self.row(dst, i);
            let dp = self.em.index(drow, j, 4);
            self.em.st(r, dp, dst.off);
        }
        self.em.loop_end(lj, 1);
        self.gen.hoisted.clear();
        self.em.loop_end(li, 1);
    }

    /// On partial key tiles, sets inactive pairs to -inf; full tiles pass through.
    fn mask(&mut self, fs: &[ir::ElemId], src: Buf, dst: Buf, h: Value) {
        if src.off != dst.off {
            self.map_tile(src, dst, &mut |_, x| x);
        }
        let (Some(class), Some(q), Some(k)) = (self.class, self.qinfo, self.kinfo) else {
            return;
        };
        let partial = self.em.eqi(class, 1);
        let done = self.em.if_begin(partial);
        let hv_ptr = self.em.ld(I64, self.ctx, OFF_HEAD_VARIANT);
        let hv_at = self.em.index(hv_ptr, h, 4);
        let variant = self.em.ld_u32(hv_at, 0);
        let grid: Vec<i64> = (0..self.g.rank)
            .map(|a| i64::from(self.g.grid[a]))
            .collect();
        let canvas: Vec<i64> = (0..self.g.rank)
            .map(|a| i64::from(self.g.canvas[a]))
            .collect();
        let tile: Vec<u32> = self.g.tile[..self.g.rank].to_vec();
        for (vi, f) in fs.iter().enumerate() {
            let Some(ElemFn::Mask {
                tiles, tokens, see, ..
            }) = self.k.elem_fns.get(f.0 as usize).cloned()
            else {
                continue;
            };
            let is_v = self.em.eqi(variant, vi as i64);
            let vdone = self.em.if_begin(is_v);
            // Per tile pair: do the `see` rules cover it, is it canvas to canvas?
            let sees = self.sees(&see, q.side, k.side);
            let qc = self.em.eqi(q.side, -1);
            let kc = self.em.eqi(k.side, -1);
            let canvas_pair = self.em.b.ins().band(qc, kc);
            let zero = self.em.i(0);
            let rows = self.em.i(i64::from(dst.rows));
            let cols = self.em.i(i64::from(dst.cols));
            let b0 = self.em.i(0);
            let li = self.em.loop_begin(zero, rows);
            // Per row: everything of the rules that does not read the key.
            let j0 = self.em.i(0);
            if let Some(e) = &tiles {
                if let Some(mut scope) = self.pair_scope(li.i, j0, b0, h, None, Some(&tile), &grid)
                {
                    self.gen.hoist(&mut self.em, e, &mut scope);
                }
            }
            if let Some(e) = &tokens {
                if let Some(mut scope) = self.pair_scope(li.i, j0, b0, h, None, None, &canvas) {
                    self.gen.hoist(&mut self.em, e, &mut scope);
                }
            }
            let lj = self.em.loop_begin(zero, cols);
            let (i, j) = (li.i, lj.i);
            let valid = self.em.lt(j, k.valid);
            let mut rule = self.em.b.ins().iconst(types::I8, 1);
            if let Some(e) = &tiles {
                if let Some(mut scope) = self.pair_scope(i, j, b0, h, None, Some(&tile), &grid) {
                    let v = self.gen.gen(&mut self.em, e, &mut scope);
                    rule = self.em.b.ins().band(rule, v);
                }
            }
            if let Some(e) = &tokens {
                if let Some(mut scope) = self.pair_scope(i, j, b0, h, None, None, &canvas) {
                    let v = self.gen.gen(&mut self.em, e, &mut scope);
                    rule = self.em.b.ins().band(rule, v);
                }
            }
            let canvas_ok = self.em.b.ins().band(canvas_pair, rule);
            let ok = self.em.b.ins().bor(sees, canvas_ok);
            let active = self.em.b.ins().band(valid, ok);
            let drow = self.row(dst, i);
            let dp = self.em.index(drow, j, 4);
            let x = self.em.ld(F32, dp, dst.off);
            let ninf = self.em.f32(f32::NEG_INFINITY);
            let y = self.em.b.ins().select(active, x, ninf);
            self.em.st(y, dp, dst.off);
            self.em.loop_end(lj, 1);
            self.gen.hoisted.clear();
            self.em.loop_end(li, 1);
            self.em.if_end(vdone);
        }
        self.em.if_end(done);
    }

    /// Run-time `see` test for a (query side, key side) pair: -1 canvas, else segment index.
    fn sees(&mut self, rules: &[(Group, Group)], q: Value, k: Value) -> Value {
        let mut acc = self.em.b.ins().iconst(types::I8, 0);
        for (f, t) in rules {
            let m = |em: &mut Em, g: &Group, s: Value| match g {
                Group::All => em.b.ins().iconst(types::I8, 1),
                Group::Canvas => em.eqi(s, -1),
                Group::Segment(i) => em.eqi(s, *i as i64),
            };
            let a = m(&mut self.em, f, q);
            let b = m(&mut self.em, t, k);
            let both = self.em.b.ins().band(a, b);
            acc = self.em.b.ins().bor(acc, both);
        }
        acc
    }
}

/// Variables of the token pair, for mask and score expressions.
pub struct PairScope<'s> {
    pub scratch: Value,
    pub q: TileInfo,
    pub k: TileInfo,
    pub i: Value,
    pub j: Value,
    pub tile: Option<&'s [u32]>,
    pub extent: &'s [i64],
    pub rank: usize,
    pub b: Value,
    pub h: Value,
    pub score: Option<Value>,
    pub inputs: &'s [InputSpec],
    pub ctx: Value,
}

impl Scope for PairScope<'_> {
    fn var(&mut self, em: &mut Em, v: Var) -> Value {
        let coord = |em: &mut Em, info: &TileInfo, r: Value, a: u8, tile: Option<&[u32]>| {
            let slot = em.index(self.scratch, r, 8);
            let x = em.ld(I64, slot, info.coords[a as usize % 3]);
            match tile {
                Some(t) => {
                    em.b.ins()
                        .sdiv_imm_s(x, i64::from(t[a as usize % 3]).max(1))
                }
                None => x,
            }
        };
        match v {
            Var::Q(a) => coord(em, &self.q, self.i, a, self.tile),
            Var::K(a) => coord(em, &self.k, self.j, a, self.tile),
            Var::D(a) => {
                let q = coord(em, &self.q, self.i, a, self.tile);
                let k = coord(em, &self.k, self.j, a, self.tile);
                em.b.ins().isub(k, q)
            }
            Var::N(a) => em.i(self.extent.get(a as usize).copied().unwrap_or(1)),
            Var::QI | Var::KI => {
                let (info, r) = if v == Var::QI {
                    (self.q, self.i)
                } else {
                    (self.k, self.j)
                };
                if self.score.is_some() {
                    // Score modifiers: the sequence position.
                    let slot = em.index(self.scratch, r, 8);
                    return em.ld(I64, slot, info.pos);
                }
                // Masks: the raster index over the canvas, in the rule's units.
                let mut acc = em.i(0);
                for a in 0..self.rank {
                    let x = coord(em, &info, r, a as u8, self.tile);
                    acc = em.muli(acc, self.extent[a]);
                    acc = em.add(acc, x);
                }
                acc
            }
            Var::Score => self.score.unwrap_or_else(|| em.f64(0.0)),
            Var::Batch => self.b,
            Var::Head => self.h,
        }
    }

    fn head(&mut self, _em: &mut Em) -> Value {
        self.h
    }

    fn input(&mut self, em: &mut Em, id: InputId, idx: &[Value]) -> Value {
        let Some(spec) = self.inputs.get(id.0 as usize) else {
            return em.f64(0.0);
        };
        let tab = em.ld(I64, self.ctx, OFF_INPUTS);
        let at = em.addi(tab, i64::from(id.0) * 8);
        let base = em.ld(I64, at, 0);
        // Row-major offset; an index outside its dimension reads 0.
        let mut off = em.i(0);
        let mut ok = em.b.ins().iconst(types::I8, 1);
        for (x, d) in idx.iter().zip(&spec.dims) {
            let dv = em.i(*d as i64);
            let lo = em.b.ins().icmp_imm_s(
                cranelift_codegen::ir::condcodes::IntCC::SignedGreaterThanOrEqual,
                *x,
                0,
            );
            let hi = em.lt(*x, dv);
            let inside = em.b.ins().band(lo, hi);
            ok = em.b.ins().band(ok, inside);
            off = em.muli(off, *d as i64);
            off = em.add(off, *x);
        }
        let zero = em.i(0);
        let off = em.b.ins().select(ok, off, zero);
        let p = em.index(base, off, 4);
        let x = em.ld_user(F32, p, 0);
        let x = em.b.ins().fpromote(F64, x);
        let z = em.f64(0.0);
        em.b.ins().select(ok, x, z)
    }
}
