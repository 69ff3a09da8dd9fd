//! Where the rows of a tile live: for a tile id known only at run time, emits code that
//! writes each row's sequence position and canvas coordinates into scratch arrays and
//! returns the tile's group (canvas or segment), length and valid length. Address
//! arithmetic over the layout; no position table.

use cranelift_codegen::ir::{InstBuilder, Value};

use super::emit::{Em, I64};
use crate::pattern::geometry::Geometry;
use crate::syntax::ast::Order;

/// Run-time facts about one tile.
#[derive(Clone, Copy)]
pub struct TileInfo {
    /// -1 for the canvas, else the segment's index in the layout.
    pub side: Value,
    /// Rows that exist.
    pub len: Value,
    /// Rows that can be attended to (segment padding excluded): a prefix of the tile.
    pub valid: Value,
    /// Scratch offsets of the i64 arrays: positions and coordinates (-1 outside the canvas).
    pub pos: i32,
    pub coords: [i32; 3],
}

/// Emits the row information of tile `t` into the arrays at `pos` and `coords`.
pub fn emit_tile_info(
    em: &mut Em,
    g: &Geometry,
    scratch: Value,
    t: Value,
    pos: i32,
    coords: [i32; 3],
) -> TileInfo {
    let tt = i64::from(g.tile_tokens);
    let neg1 = em.i(-1);
    let zero = em.i(0);
    let side = em.var(I64, neg1);
    let len = em.var(I64, zero);
    let valid = em.var(I64, zero);
    for sg in &g.segments {
        if sg.tiles == 0 {
            continue;
        }
        let first = i64::from(sg.first_tile);
        let ge = {
            let f = em.i(first);
            let lt = em.lt(t, f);
            em.b.ins().bxor_imm_s(lt, 1)
        };
        let end = em.i(first + i64::from(sg.tiles));
        let lt = em.lt(t, end);
        let inside = em.b.ins().band(ge, lt);
        em.if_then(inside, &mut |em| {
            let j = em.addi(t, -first);
            let start = em.muli(j, tt);
            let base = em.addi(start, sg.first_pos as i64);
            let size = em.i(i64::from(sg.size));
            let left = em.b.ins().isub(size, start);
            let cap = em.i(tt);
            let l = em.b.ins().smin(cap, left);
            let v = {
                let vs = em.i(i64::from(sg.valid));
                let v = em.b.ins().isub(vs, start);
                let z = em.i(0);
                let v = em.b.ins().smax(v, z);
                em.b.ins().smin(v, l)
            };
            let s = em.i(sg.index as i64);
            em.set(side, s);
            em.set(len, l);
            em.set(valid, v);
            em.for_range(zero, l, 1, &mut |em, r| {
                let p = em.add(base, r);
                let slot = em.index(scratch, r, 8);
                em.st(p, slot, pos);
                for c in coords.iter().take(g.rank) {
                    let m = em.i(-1);
                    em.st(m, slot, *c);
                }
            });
        });
    }
    // The canvas.
    let first = i64::from(g.canvas_first_tile);
    let f = em.i(first);
    let below = em.lt(t, f);
    let ge = em.b.ins().bxor_imm_s(below, 1);
    let end = em.i(first + i64::from(g.canvas_tiles));
    let lt = em.lt(t, end);
    let inside = em.b.ins().band(ge, lt);
    em.if_then(inside, &mut |em| {
        let rank = g.rank;
        let mut local = em.addi(t, -first);
        // Grid coordinates, last axis fastest.
        let mut c = vec![zero; rank];
        for a in (0..rank).rev() {
            let n = i64::from(g.grid[a]);
            c[a] = em.b.ins().urem_imm_s(local, n);
            local = em.b.ins().udiv_imm_s(local, n);
        }
        // Extents of the (maybe ragged) tile.
        let mut e = vec![zero; rank];
        let mut origin = vec![zero; rank];
        for a in 0..rank {
            origin[a] = em.muli(c[a], i64::from(g.tile[a]));
            let canvas = em.i(i64::from(g.canvas[a]));
            let left = em.b.ins().isub(canvas, origin[a]);
            let tile = em.i(i64::from(g.tile[a]));
            e[a] = em.b.ins().smin(tile, left);
        }
        let mut l = em.i(1);
        for ea in &e {
            l = em.b.ins().imul(l, *ea);
        }
        // Tiled order: the tile's first token is after every tile before it in raster order.
        let tile_start = if g.order == Order::Tiled {
            let mut start = em.i(0);
            for a in 0..rank {
                let mut slab = origin[a];
                for ea in e.iter().take(a) {
                    slab = em.b.ins().imul(slab, *ea);
                }
                let after: i64 = (a + 1..rank).map(|b| i64::from(g.canvas[b])).product();
                slab = em.muli(slab, after);
                start = em.add(start, slab);
            }
            Some(start)
        } else {
            None
        };
        let s = em.i(-1);
        em.set(side, s);
        em.set(len, l);
        em.set(valid, l);
        em.for_range(zero, l, 1, &mut |em, r| {
            let slot = em.index(scratch, r, 8);
            let mut rest = r;
            let mut x = vec![r; rank];
            for a in (0..rank).rev() {
                let i = em.b.ins().urem(rest, e[a]);
                rest = em.b.ins().udiv(rest, e[a]);
                x[a] = em.add(origin[a], i);
                em.st(x[a], slot, coords[a]);
            }
            let local_pos = match tile_start {
                Some(start) => em.add(start, r),
                None => {
                    let mut p = em.i(0);
                    for a in 0..rank {
                        p = em.muli(p, i64::from(g.canvas[a]));
                        p = em.add(p, x[a]);
                    }
                    p
                }
            };
            let p = em.addi(local_pos, g.canvas_first_pos as i64);
            em.st(p, slot, pos);
        });
    });
    TileInfo {
        side: em.get(side),
        len: em.get(len),
        valid: em.get(valid),
        pos,
        coords,
    }
}
