//! Masks and score modifiers on fragments: the IR's element functions per (query row,
//! key) pair.

use super::*;

impl<'a, 'c> Attention<'a, 'c> {
    /// Applies `f(score, query row, key column in chunk, key info)` to every S element (the
    /// keys' information from slot `slot`).
    pub(super) fn elementwise(
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

    pub(super) fn key_row(&self, slot: IntValue<'c>, j: IntValue<'c>) -> Row<'c> {
        let g = self.g;
        let base = self.kinfo_off(slot, j);
        Row {
            pos: self.ld_shared_i32(base),
            coords: [0, 1, 2].map(|a| self.ld_shared_i32(g.addi(base, 4 + 4 * a))),
        }
    }

    /// Masks on partial tiles (and incomplete chunks): inactive pairs become -inf.
    pub(super) fn mask(
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
}

/// The `see` test for a tile pair: -1 canvas, else the segment index.
pub(super) fn sees<'c>(
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
pub(super) struct PairScope<'x, 'a, 'c> {
    pub(super) a: &'x Attention<'a, 'c>,
    /// Which of the thread's two rows.
    pub(super) q: usize,
    pub(super) k: Row<'c>,
    pub(super) score: Option<FloatValue<'c>>,
    /// Tile units (tiles: rules) instead of tokens.
    pub(super) tile: bool,
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
