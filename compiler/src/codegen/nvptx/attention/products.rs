//! The two products on tensor cores: `S = Q K^T` and `acc += P V`, on `mma.sync` or
//! `wgmma` (alone, paired for the overlapped loop, or taking turns for ping-pong).

use super::*;

impl<'a, 'c> Attention<'a, 'c> {
    /// `S = Q K^T` for the chunk in `buf`.
    pub(super) fn qk(&self, buf: IntValue<'c>, f: &mut Frags<'c>) {
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

    /// `S = Q K^T` on wgmma: Q from registers (each warp's A fragments) or, where it stays
    /// in its buffer (`q_smem`), by descriptor; K^T by descriptor
    /// (K-major: keys are the rows of the buffer); k step `kk` starts 32 bytes further into
    /// the swizzled 128-byte rows, or in the second half.
    pub(super) fn qk_product(
        &self,
        buf: IntValue<'c>,
    ) -> (ptx::Wgmma<'static>, Vec<BasicValueEnum<'c>>) {
        let g = self.g;
        let cfg = self.cfg;
        let ksteps = cfg.d / 16;
        let descs = self.k_major_descs(self.k_buf(buf), cfg.shape.bn);
        let w = ptx::Wgmma {
            elem: cfg.elem,
            n: cfg.shape.bn,
            ksteps,
            accumulate: false,
            trans_b: false,
            a_desc: self.q_smem.is_some(),
        };
        let Some(q) = self.q_smem else {
            return (w, self.wgmma_inputs(&self.qfrag, descs.into_iter()));
        };
        // Q by descriptor (the persistent overlapped kernel): this warpgroup's 64 rows of
        // the Q buffer, in K's layout with `bm` rows a half.
        let q = g.add(q, g.muli(g.udivi(self.warp, 4), 64 * 128));
        let args = self
            .k_major_descs(q, cfg.shape.bm)
            .into_iter()
            .chain(descs)
            .map(BasicValueEnum::from)
            .collect();
        (w, args)
    }

    /// The descriptors of a K-major operand at shared offset `base` in `copied_off`'s
    /// layout (`rows` rows a 64-element half, 128-byte swizzle), one a k step of the head
    /// dim: step `kk` starts 32 bytes further into the rows, or in the second half.
    fn k_major_descs(&self, base: IntValue<'c>, rows: u32) -> Vec<IntValue<'c>> {
        let g = self.g;
        (0..self.cfg.d / 16)
            .map(|kk| {
                let off = (kk / 4) * rows * 128 + (kk % 4) * 32;
                self.descriptor(g.addi(base, i64::from(off)), 16)
            })
            .collect()
    }

    pub(super) fn qk_wgmma(&self, buf: IntValue<'c>, f: &mut Frags<'c>) {
        let (w, args) = self.qk_product(buf);
        let d = self.wgmma(&[w], Some(0), args, vec![], self.accumulate());
        self.set_s_into(f, &d);
    }

    /// The predicate word of products that add to their accumulators (`S`'s ignores it).
    pub(super) fn accumulate(&self) -> IntValue<'c> {
        self.g.i32(ptx::WGMMA_ACCUMULATE)
    }

    /// Issues `products` in one `ptx::wgmma_block` (waiting until `pending` groups are left
    /// in flight): `inputs` are the products' A words and descriptors, `tied` the current D
    /// of the accumulating ones; the predicate word `word` goes between them (whether an
    /// accumulating product adds to D or starts it afresh). Returns every D.
    fn wgmma(
        &self,
        products: &[ptx::Wgmma],
        pending: Option<usize>,
        mut inputs: Vec<BasicValueEnum<'c>>,
        tied: Vec<BasicValueEnum<'c>>,
        word: IntValue<'c>,
    ) -> Vec<BasicValueEnum<'c>> {
        let g = self.g;
        inputs.push(word.into());
        inputs.extend(tied);
        ptx::wgmma_block(products, pending).emit(g.cx, &g.b, &inputs)
    }

    /// Ping-pong's `S = Q K^T`: this warpgroup's turn (named barrier `mine`), the product
    /// issued, the other warpgroup's turn given (`other`, when `arrive` is 1: not after
    /// the last chunk, which nobody waits for), then the wait (`S` tied through it).
    pub(super) fn qk_turn(
        &self,
        buf: IntValue<'c>,
        (mine, other, arrive): (IntValue<'c>, IntValue<'c>, IntValue<'c>),
        f: &mut Frags<'c>,
    ) {
        let g = self.g;
        let threads = g.i32(i64::from(self.cfg.compute_threads()));
        ptx::bar_sync().emit(g.cx, &g.b, &[mine.into(), threads.into()]);
        let (w, args) = self.qk_product(buf);
        let d = self.wgmma(&[w], None, args, vec![], self.accumulate());
        ptx::bar_arrive_if().emit(g.cx, &g.b, &[other.into(), threads.into(), arrive.into()]);
        let d = ptx::wgmma_wait(0, d.len()).emit(g.cx, &g.b, &d);
        self.set_s_into(f, &d);
    }

    /// `S` fragments from an asm block's first outputs.
    pub(super) fn set_s_into(&self, f: &mut Frags<'c>, d: &[BasicValueEnum<'c>]) {
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
    pub(super) fn pv_products(
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
                    a_desc: false,
                };
                (
                    w,
                    self.wgmma_inputs(p, descs),
                    (col / 8) as usize..((col + n) / 8) as usize,
                )
            })
            .collect()
    }

    /// `acc += P V` on wgmma (`word`: added to, or started afresh), waited for.
    pub(super) fn pv_wgmma(&self, vbase: IntValue<'c>, word: IntValue<'c>, f: &mut Frags<'c>) {
        for (w, args, tiles) in self.pv_products(vbase, &f.p) {
            let tied = self.acc_values(&f.acc[tiles.clone()]);
            let d = self.wgmma(&[w], Some(0), args, tied, word);
            self.set_acc(&f.acc[tiles], &d);
        }
    }

    /// The overlapped loop's products: `S = Q K^T` of this chunk (K in buffer `k`) and
    /// `acc += P V` of the previous one (V at `v_prev`, P the previous chunk's, `f.p`;
    /// `word` its predicate word) issued in one block that waits for `S` only. `P V` runs on: `acc` comes out of this
    /// block owned by the tensor cores until the wait at the `P V` op (`f.held` keeps the P
    /// words alive until then); the softmax in between touches neither.
    pub(super) fn qk_with_pv(
        &self,
        k: IntValue<'c>,
        v_prev: IntValue<'c>,
        word: IntValue<'c>,
        f: &mut Frags<'c>,
    ) {
        let (qk, mut args) = self.qk_product(k);
        let mut products = vec![qk];
        let mut tied = vec![];
        let pv = self.pv_products(v_prev, &f.p);
        for (w, a, tiles) in &pv {
            products.push(*w);
            args.extend(a.iter().copied());
            tied.extend(self.acc_values(&f.acc[tiles.clone()]));
        }
        let d = self.wgmma(&products, Some(pv.len()), args, tied, word);
        self.set_s_into(f, &d);
        let mut at = (self.cfg.shape.bn / 2) as usize;
        for (w, _, tiles) in &pv {
            let n = (w.n / 2) as usize;
            self.set_acc(&f.acc[tiles.clone()], &d[at..at + n]);
            at += n;
        }
        f.held = f.p.iter().flat_map(|w| w.iter().copied()).collect();
    }

    /// The overlapped loop: waits for the `P V` that `qk_with_pv` left in flight (its P
    /// words held until here, the accumulators tied through the wait).
    pub(super) fn pv_complete(&self, f: &mut Frags<'c>) {
        let g = self.g;
        let held = std::mem::take(&mut f.held);
        let mut args: Vec<BasicValueEnum> = held.iter().map(|x| (*x).into()).collect();
        args.extend(self.acc_values(&f.acc));
        let out = ptx::wgmma_wait(held.len(), f.acc.len() * 4).emit(g.cx, &g.b, &args);
        self.set_acc(&f.acc, &out);
    }

    /// `acc += P V` (the softmax rescaled `acc` when `m` moved).
    pub(super) fn pv(&self, buf: IntValue<'c>, f: &mut Frags<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        let vbase = self.v_buf(buf);
        if cfg.shape.wgmma {
            return self.pv_wgmma(vbase, self.accumulate(), f);
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

    /// The inputs of a wgmma product: the A fragments' words, one descriptor a k step.
    pub(super) fn wgmma_inputs(
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

    pub(super) fn mma(&self, c: &[Var<'c>; 4], a: &[IntValue<'c>; 4], b: [BasicValueEnum<'c>; 2]) {
        let g = self.g;
        let mut args: Vec<BasicValueEnum> = a.iter().map(|x| (*x).into()).collect();
        args.extend(b);
        args.extend(c.iter().map(|v| g.get(*v)));
        let d = ptx::mma_m16n8k16(self.cfg.elem).emit(g.cx, &g.b, &args);
        for (v, x) in c.iter().zip(d) {
            g.set(*v, x);
        }
    }

    /// P (C-fragment layout) packed into A fragments of the `p v` product.
    pub(super) fn pack_p(&self, f: &mut Frags<'c>) {
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

    /// The current values of accumulator tiles, in wgmma's register order.
    pub(super) fn acc_values(&self, tiles: &[[Var<'c>; 4]]) -> Vec<BasicValueEnum<'c>> {
        tiles
            .iter()
            .flat_map(|t| t.iter().map(|v| self.g.get(*v)))
            .collect()
    }

    /// Stores an asm block's outputs back into accumulator tiles (wgmma's register order).
    pub(super) fn set_acc(&self, tiles: &[[Var<'c>; 4]], values: &[BasicValueEnum<'c>]) {
        for (v, x) in tiles.iter().flat_map(|t| t.iter()).zip(values) {
            self.g.set(*v, *x);
        }
    }
}
