//! The brute-force oracle: whether one query token attends to one key token, straight
//! from the definitions (segment rules, padding, the tile rule at tile coordinates and the
//! token rule at token coordinates). Slow on purpose; tests and the reference
//! implementation use it to check the analysis and the kernels.

use super::formula::{eval_bool, Formula, Point, Unit};
use super::geometry::{Geometry, TileRef, TokenRef, MAX_RANK};
use super::schedule::{Rules, Side};
use super::TileClass;
use crate::sema::eval::EvalError;
use crate::sema::spec::Spec;

pub struct Oracle<'a> {
    pub geom: Geometry,
    spec: &'a Spec,
    formulas: Vec<Formula>,
}

impl<'a> Oracle<'a> {
    pub fn new(spec: &'a Spec) -> Result<Oracle<'a>, String> {
        let geom = Geometry::from_spec(spec)?;
        let formulas = spec
            .variants
            .iter()
            .map(|v| Formula::new(v.tiles.as_ref(), v.tokens.as_ref(), geom.rank))
            .collect();
        Ok(Oracle {
            geom,
            spec,
            formulas,
        })
    }

    fn side(&self, t: &TokenRef) -> Side {
        match t {
            TokenRef::Canvas { .. } => Side::Canvas,
            TokenRef::Segment { seg, .. } => Side::Segment(self.geom.segments[*seg].index),
        }
    }

    /// Does query position `q` attend to key position `k` under head variant `variant`?
    pub fn active(&self, variant: usize, q: u64, k: u64) -> Result<bool, EvalError> {
        let g = &self.geom;
        let (qt, kt) = (g.token_at(q), g.token_at(k));
        if let TokenRef::Segment { seg, offset } = kt {
            if offset >= g.segments[seg].valid {
                return Ok(false);
            }
        }
        let rules = Rules {
            rules: &self.spec.rules,
        };
        let (qs, ks) = (self.side(&qt), self.side(&kt));
        if rules.sees(qs, ks) {
            return Ok(true);
        }
        let (TokenRef::Canvas { coords: qc }, TokenRef::Canvas { coords: kc }) = (qt, kt) else {
            return Ok(false);
        };
        let rank = g.rank;
        let mut tile = Point::default();
        let mut tok = Point::default();
        for a in 0..rank {
            tile.q[a] = i64::from(qc[a] / g.tile[a]);
            tile.k[a] = i64::from(kc[a] / g.tile[a]);
            tile.n[a] = i64::from(g.grid[a]);
            tok.q[a] = i64::from(qc[a]);
            tok.k[a] = i64::from(kc[a]);
            tok.n[a] = i64::from(g.canvas[a]);
        }
        let (tile, tok) = (tile.with_linear(rank), tok.with_linear(rank));
        let f = &self.formulas[variant];
        let mut err = None;
        let v = f.eval(&mut |i| {
            let atom = &f.atoms[i as usize];
            let p = if atom.unit == Unit::Tiles {
                &tile
            } else {
                &tok
            };
            eval_bool(&atom.expr, p).unwrap_or_else(|e| {
                err = Some(e);
                false
            })
        });
        match err {
            Some(e) => Err(e),
            None => Ok(v),
        }
    }

    /// Sequence positions of the tokens of tile `t`.
    pub fn tile_positions(&self, t: u32) -> Vec<u64> {
        let g = &self.geom;
        match g.tile_ref(t) {
            TileRef::Segment { seg, index } => {
                let s = &g.segments[seg];
                let start = s.first_pos + u64::from(index * g.tile_tokens);
                (0..u64::from(g.tile_len(t))).map(|i| start + i).collect()
            }
            TileRef::Canvas { coords } => {
                let rank = g.rank;
                let ext: Vec<u32> = (0..rank).map(|a| g.tile_extent(a, coords[a])).collect();
                let n: u32 = ext.iter().product();
                (0..n)
                    .map(|mut l| {
                        let mut c = [0u32; MAX_RANK];
                        for a in (0..rank).rev() {
                            c[a] = coords[a] * g.tile[a] + l % ext[a];
                            l /= ext[a];
                        }
                        g.canvas_pos(&c)
                    })
                    .collect()
            }
        }
    }

    /// Class and active-pair count of a tile pair by enumerating its token pairs. Key
    /// tiles that miss tokens (ragged, padding) are partial when active.
    pub fn tile_pair(
        &self,
        variant: usize,
        q: u32,
        k: u32,
    ) -> Result<(Option<TileClass>, u64), EvalError> {
        let qs = self.tile_positions(q);
        let ks = self.tile_positions(k);
        let mut count = 0u64;
        let mut all = true;
        for &qp in &qs {
            for &kp in &ks {
                if self.active(variant, qp, kp)? {
                    count += 1;
                } else {
                    all = false;
                }
            }
        }
        let complete = ks.len() as u64 == u64::from(self.geom.tile_tokens);
        let class = match count {
            0 => None,
            _ if all && complete => Some(TileClass::Full),
            _ => Some(TileClass::Partial),
        };
        Ok((class, count))
    }
}
