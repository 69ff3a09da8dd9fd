//! Where a tile's rows live, computed in the kernel by address arithmetic (branch-free):
//! the tile's group (canvas or a segment), its length and valid length, and for one row its
//! sequence position and canvas coordinates. Mirrors `codegen/cpu/tokens.rs` and the
//! geometry in `pattern/geometry.rs`.

use inkwell::values::IntValue;

use super::gen::Gen;
use crate::pattern::geometry::Geometry;
use crate::syntax::ast::Order;

/// Facts about one tile (i32 values).
#[derive(Clone, Copy)]
pub struct Tile<'c> {
    pub t: IntValue<'c>,
    /// -1 for the canvas, else the segment's index in the layout.
    pub side: IntValue<'c>,
    pub len: IntValue<'c>,
    pub valid: IntValue<'c>,
}

/// One row of a tile.
#[derive(Clone, Copy)]
pub struct Row<'c> {
    pub pos: IntValue<'c>,
    /// Canvas coordinates (-1 outside the canvas); unused axes are 0.
    pub coords: [IntValue<'c>; 3],
}

pub fn tile<'c>(g: &Gen<'c>, geo: &Geometry, t: IntValue<'c>) -> Tile<'c> {
    let tt = i64::from(geo.tile_tokens);
    // Canvas tile: length is the product of the (maybe ragged) extents.
    let canvas = canvas_extents(g, geo, t);
    let mut len = g.i32(1);
    for e in canvas.extents.iter().take(geo.rank) {
        len = g.mul(len, *e);
    }
    let mut side = g.i32(-1);
    let mut valid = len;
    let mut out_len = len;
    for sg in geo.segments.iter().filter(|s| s.tiles > 0) {
        let first = i64::from(sg.first_tile);
        let inside = in_range(g, t, first, first + i64::from(sg.tiles));
        let j = g.addi(t, -first);
        let start = g.muli(j, tt);
        let left = g.sub(g.i32(i64::from(sg.size)), start);
        let l = g.smin(g.i32(tt), left);
        let v = g.sub(g.i32(i64::from(sg.valid)), start);
        let v = g.smin(g.smax(v, g.i32(0)), l);
        side = g.seli(inside, g.i32(sg.index as i64), side);
        out_len = g.seli(inside, l, out_len);
        valid = g.seli(inside, v, valid);
    }
    Tile {
        t,
        side,
        len: out_len,
        valid,
    }
}

struct CanvasTile<'c> {
    coords: [IntValue<'c>; 3],
    extents: [IntValue<'c>; 3],
    /// Per axis: is this the ragged last tile?
    ragged: [IntValue<'c>; 3],
}

fn canvas_extents<'c>(g: &Gen<'c>, geo: &Geometry, t: IntValue<'c>) -> CanvasTile<'c> {
    let zero = g.i32(0);
    let mut local = g.addi(t, -i64::from(geo.canvas_first_tile));
    // Clamp so that segment tiles compute something harmless.
    local = g.smax(local, zero);
    let mut coords = [zero; 3];
    for a in (0..geo.rank).rev() {
        let n = i64::from(geo.grid[a]);
        coords[a] = g.uremi(local, n);
        local = g.udivi(local, n);
    }
    let mut extents = [g.i32(1); 3];
    let mut ragged = [g.i32t.const_zero(); 3];
    for a in 0..geo.rank {
        let tile = i64::from(geo.tile[a]);
        let last = i64::from(geo.canvas[a]) - (i64::from(geo.grid[a]) - 1) * tile;
        if last == tile {
            extents[a] = g.i32(tile);
            ragged[a] = g.cx.bool_type().const_zero();
        } else {
            let is_last = g.eqi(coords[a], i64::from(geo.grid[a]) - 1);
            extents[a] = g.seli(is_last, g.i32(last), g.i32(tile));
            ragged[a] = is_last;
        }
    }
    CanvasTile {
        coords,
        extents,
        ragged,
    }
}

fn in_range<'c>(g: &Gen<'c>, t: IntValue<'c>, lo: i64, hi: i64) -> IntValue<'c> {
    let a = g.lt(t, g.i32(lo));
    let b = g.lt(t, g.i32(hi));
    g.and(g.not(a), b)
}

/// Position and coordinates of row `r` of tile `t`.
pub fn row<'c>(g: &Gen<'c>, geo: &Geometry, t: IntValue<'c>, r: IntValue<'c>) -> Row<'c> {
    let tt = i64::from(geo.tile_tokens);
    let ct = canvas_extents(g, geo, t);
    // In-tile coordinates, raster inside the tile; divisions by constants on each side of
    // the ragged/whole choice.
    let mut rest = r;
    let mut inner = [g.i32(0); 3];
    for a in (0..geo.rank).rev() {
        let tile = i64::from(geo.tile[a]);
        let last = i64::from(geo.canvas[a]) - (i64::from(geo.grid[a]) - 1) * tile;
        if last == tile {
            inner[a] = g.uremi(rest, tile);
            rest = g.udivi(rest, tile);
        } else {
            let (ir, qr) = (g.uremi(rest, last), g.udivi(rest, last));
            let (iw, qw) = (g.uremi(rest, tile), g.udivi(rest, tile));
            inner[a] = g.seli(ct.ragged[a], ir, iw);
            rest = g.seli(ct.ragged[a], qr, qw);
        }
    }
    let mut x = [g.i32(0); 3];
    for a in 0..geo.rank {
        let origin = g.muli(ct.coords[a], i64::from(geo.tile[a]));
        x[a] = g.add(origin, inner[a]);
    }
    let local_pos = match geo.order {
        Order::Tiled => {
            let mut start = g.i32(0);
            for a in 0..geo.rank {
                let mut slab = g.muli(ct.coords[a], i64::from(geo.tile[a]));
                for e in ct.extents.iter().take(a) {
                    slab = g.mul(slab, *e);
                }
                let after: i64 = (a + 1..geo.rank)
                    .map(|b| i64::from(geo.canvas[b]))
                    .product();
                slab = g.muli(slab, after);
                start = g.add(start, slab);
            }
            g.add(start, r)
        }
        Order::Raster => {
            let mut p = g.i32(0);
            for a in 0..geo.rank {
                p = g.muli(p, i64::from(geo.canvas[a]));
                p = g.add(p, x[a]);
            }
            p
        }
    };
    let mut pos = g.addi(local_pos, geo.canvas_first_pos as i64);
    let mut coords = x;
    for sg in geo.segments.iter().filter(|s| s.tiles > 0) {
        let first = i64::from(sg.first_tile);
        let inside = in_range(g, t, first, first + i64::from(sg.tiles));
        let j = g.addi(t, -first);
        let p = g.add(g.addi(g.muli(j, tt), sg.first_pos as i64), r);
        pos = g.seli(inside, p, pos);
        for c in coords.iter_mut().take(geo.rank) {
            *c = g.seli(inside, g.i32(-1), *c);
        }
    }
    Row { pos, coords }
}
