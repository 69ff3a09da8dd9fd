//! Canvas-to-canvas classification for one query tile. The per-axis runs of the query
//! tile's coordinates cut the key-tile grid into boxes; each box has one signature per axis
//! and so one class (full / partial / empty) and one active-pair count per key tile,
//! computed exactly from the signatures and memoised. Joint atoms (reading several axes)
//! are decided per key tile: tile atoms at tile coordinates, token atoms by enumerating the
//! token pairs of the tile pair.

use std::collections::HashMap;

use super::axis::{AxisTable, SigId, Sigs};
use super::formula::{eval_bool, Formula, Point, Unit};
use super::geometry::{Geometry, MAX_RANK};
use super::{AnalysisError, Budget, TileClass};

/// A box of key tiles (inclusive grid ranges) with one class and per-tile pair count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvBox {
    pub lo: [u32; MAX_RANK],
    pub hi: [u32; MAX_RANK],
    pub class: TileClass,
    /// Active token pairs in each key tile of the box.
    pub pairs_per_tile: u64,
}

#[derive(Clone, Copy, Debug)]
struct BoxEval {
    /// Some token pair of the block is active / inactive / undecided (joint atoms).
    any: bool,
    all: bool,
    undecided: bool,
    count: u64,
}

pub struct Classifier<'a> {
    geom: &'a Geometry,
    f: &'a Formula,
    tables: Vec<AxisTable>,
    sigs: Sigs,
    /// Atom -> (axis, bit) for single-axis atoms.
    place: Vec<Option<(usize, u32)>>,
    /// Values of atoms that read no axis.
    constants: Vec<Option<bool>>,
    joint_tiles: Vec<u32>,
    joint_tokens: Vec<u32>,
    memo: HashMap<[SigId; MAX_RANK], BoxEval>,
}

impl<'a> Classifier<'a> {
    pub fn new(
        geom: &'a Geometry,
        f: &'a Formula,
        budget: &mut Budget,
    ) -> Result<Classifier<'a>, AnalysisError> {
        let mut sigs = Sigs::default();
        let mut tables = vec![];
        for a in 0..geom.rank {
            tables.push(super::axis::build(geom, f, a, &mut sigs, budget)?);
        }
        let mut place = vec![None; f.atoms.len()];
        for t in &tables {
            for (bit, g) in t.atoms.iter().enumerate() {
                place[*g as usize] = Some((t.axis, bit as u32));
            }
        }
        let mut constants = vec![None; f.atoms.len()];
        let mut joint_tiles = vec![];
        let mut joint_tokens = vec![];
        for (i, a) in f.atoms.iter().enumerate() {
            if a.axes == 0 {
                constants[i] =
                    Some(eval_bool(&a.expr, &Point::default()).map_err(AnalysisError::Eval)?);
            } else if a.single_axis().is_none() {
                match a.unit {
                    Unit::Tiles => joint_tiles.push(i as u32),
                    Unit::Tokens => joint_tokens.push(i as u32),
                }
            }
        }
        Ok(Classifier {
            geom,
            f,
            tables,
            sigs,
            place,
            constants,
            joint_tiles,
            joint_tokens,
            memo: HashMap::new(),
        })
    }

    /// True when no atom reads several axes (the whole analysis is per axis).
    pub fn separable(&self) -> bool {
        self.joint_tiles.is_empty() && self.joint_tokens.is_empty()
    }

    /// The boxes of active key tiles for the canvas query tile at `qc`.
    pub fn row(
        &mut self,
        qc: &[u32; MAX_RANK],
        budget: &mut Budget,
    ) -> Result<Vec<KvBox>, AnalysisError> {
        let rank = self.geom.rank;
        let runs: Vec<Vec<super::axis::Run>> = (0..rank)
            .map(|a| self.tables[a].rows[qc[a] as usize].clone())
            .collect();
        let mut out = vec![];
        let mut idx = [0usize; MAX_RANK];
        loop {
            let mut key = [0 as SigId; MAX_RANK];
            let mut lo = [0u32; MAX_RANK];
            let mut hi = [0u32; MAX_RANK];
            for a in 0..rank {
                let r = runs[a][idx[a]];
                key[a] = r.sig;
                lo[a] = r.lo;
                hi[a] = r.hi;
            }
            let ev = match self.memo.get(&key) {
                Some(e) => *e,
                None => {
                    let e = self.eval_box(&key, None);
                    self.memo.insert(key, e);
                    e
                }
            };
            if ev.undecided {
                self.split_box(qc, &lo, &hi, &key, &mut out, budget)?;
            } else if ev.any {
                out.push(KvBox {
                    lo,
                    hi,
                    class: self.class(ev.all, &lo, &hi),
                    pairs_per_tile: ev.count,
                });
            }
            // Next combination (odometer over the runs of each axis).
            let mut a = rank;
            loop {
                if a == 0 {
                    return Ok(out);
                }
                a -= 1;
                idx[a] += 1;
                if idx[a] < runs[a].len() {
                    break;
                }
                idx[a] = 0;
            }
        }
    }

    /// Full only when every pair is active and no key token is missing (ragged tiles need
    /// masking of the absent keys).
    fn class(&self, all: bool, lo: &[u32; MAX_RANK], _hi: &[u32; MAX_RANK]) -> TileClass {
        // Runs never mix ragged and whole tiles (their pair counts differ), so `lo` tells.
        if all && !self.geom.canvas_tile_ragged(lo) {
            TileClass::Full
        } else {
            TileClass::Partial
        }
    }

    /// Evaluates the rule over the product of the per-axis signatures. `joint` gives the
    /// values of joint tile atoms for one key tile, if known.
    fn eval_box(&self, key: &[SigId; MAX_RANK], joint: Option<&HashMap<u32, bool>>) -> BoxEval {
        let rank = self.geom.rank;
        let sigs: Vec<&Vec<(u64, u64)>> = (0..rank).map(|a| &self.sigs.get(key[a]).0).collect();
        let mut ev = BoxEval {
            any: false,
            all: true,
            undecided: false,
            count: 0,
        };
        let mut idx = [0usize; MAX_RANK];
        loop {
            let mut bits = [0u64; MAX_RANK];
            let mut count = 1u64;
            for a in 0..rank {
                let (b, c) = sigs[a][idx[a]];
                bits[a] = b;
                count = count.saturating_mul(c);
            }
            let v = self.f.eval3(&mut |i| {
                if let Some(c) = self.constants[i as usize] {
                    return Some(c);
                }
                if let Some((a, bit)) = self.place[i as usize] {
                    return Some(bits[a] & (1 << bit) != 0);
                }
                joint.and_then(|j| j.get(&i).copied())
            });
            match v {
                Some(true) => {
                    ev.any = true;
                    ev.count += count;
                }
                Some(false) => ev.all = false,
                None => ev.undecided = true,
            }
            let mut a = rank;
            loop {
                if a == 0 {
                    return ev;
                }
                a -= 1;
                idx[a] += 1;
                if idx[a] < sigs[a].len() {
                    break;
                }
                idx[a] = 0;
            }
        }
    }

    /// Decides a box tile by tile (joint atoms).
    fn split_box(
        &mut self,
        qc: &[u32; MAX_RANK],
        lo: &[u32; MAX_RANK],
        hi: &[u32; MAX_RANK],
        key: &[SigId; MAX_RANK],
        out: &mut Vec<KvBox>,
        budget: &mut Budget,
    ) -> Result<(), AnalysisError> {
        let rank = self.geom.rank;
        let g = self.geom;
        // Charge the whole box up front (tiles times the cost of deciding one), so that a
        // rule mixing axes on a huge grid fails at once instead of after a long while.
        let volume: u64 = (0..rank).map(|a| u64::from(hi[a] - lo[a] + 1)).product();
        budget.spend(volume.saturating_mul(64 + 16 * self.f.atoms.len() as u64))?;
        let mut kc = *lo;
        loop {
            let mut tp = Point::default();
            for a in 0..rank {
                tp.q[a] = i64::from(qc[a]);
                tp.k[a] = i64::from(kc[a]);
                tp.n[a] = i64::from(g.grid[a]);
            }
            let tp = tp.with_linear(rank);
            let mut joint = HashMap::new();
            for i in &self.joint_tiles {
                joint.insert(
                    *i,
                    eval_bool(&self.f.atoms[*i as usize].expr, &tp).map_err(AnalysisError::Eval)?,
                );
            }
            let ev = self.eval_box(key, Some(&joint));
            let (any, all, count) = if ev.undecided {
                self.enumerate_pair(qc, &kc, budget)?
            } else {
                (ev.any, ev.all, ev.count)
            };
            if any {
                out.push(KvBox {
                    lo: kc,
                    hi: kc,
                    class: self.class(all, &kc, &kc),
                    pairs_per_tile: count,
                });
            }
            // Next key tile in the box.
            let mut a = rank;
            loop {
                if a == 0 {
                    return Ok(());
                }
                a -= 1;
                kc[a] += 1;
                if kc[a] <= hi[a] {
                    break;
                }
                kc[a] = lo[a];
            }
        }
    }

    /// Brute force over the token pairs of one tile pair.
    fn enumerate_pair(
        &self,
        qc: &[u32; MAX_RANK],
        kc: &[u32; MAX_RANK],
        budget: &mut Budget,
    ) -> Result<(bool, bool, u64), AnalysisError> {
        let g = self.geom;
        let rank = g.rank;
        let qn: u64 = (0..rank)
            .map(|a| u64::from(g.tile_extent(a, qc[a])))
            .product();
        let kn: u64 = (0..rank)
            .map(|a| u64::from(g.tile_extent(a, kc[a])))
            .product();
        budget.spend(qn * kn * self.f.atoms.len() as u64 * super::EVAL_COST)?;
        let mut tp = Point::default();
        for a in 0..rank {
            tp.q[a] = i64::from(qc[a]);
            tp.k[a] = i64::from(kc[a]);
            tp.n[a] = i64::from(g.grid[a]);
        }
        let tp = tp.with_linear(rank);
        let tile_vals: Vec<Option<bool>> = self
            .f
            .atoms
            .iter()
            .map(|a| {
                if a.unit == Unit::Tiles {
                    eval_bool(&a.expr, &tp).ok()
                } else {
                    None
                }
            })
            .collect();
        let (mut any, mut all, mut count) = (false, true, 0u64);
        let mut pt = Point::default();
        for a in 0..rank {
            pt.n[a] = i64::from(g.canvas[a]);
        }
        for qi in 0..qn {
            for ki in 0..kn {
                let (mut ql, mut kl) = (qi, ki);
                for a in (0..rank).rev() {
                    let (qe, ke) = (
                        u64::from(g.tile_extent(a, qc[a])),
                        u64::from(g.tile_extent(a, kc[a])),
                    );
                    pt.q[a] = i64::from(qc[a] * g.tile[a]) + (ql % qe) as i64;
                    pt.k[a] = i64::from(kc[a] * g.tile[a]) + (kl % ke) as i64;
                    ql /= qe;
                    kl /= ke;
                }
                let p = pt.with_linear(rank);
                let mut err = None;
                let v = self.f.eval(&mut |i| {
                    let atom = &self.f.atoms[i as usize];
                    match atom.unit {
                        Unit::Tiles => tile_vals[i as usize].unwrap_or(false),
                        Unit::Tokens => eval_bool(&atom.expr, &p).unwrap_or_else(|e| {
                            err = Some(e);
                            false
                        }),
                    }
                });
                if let Some(e) = err {
                    return Err(AnalysisError::Eval(e));
                }
                if v {
                    any = true;
                    count += 1;
                } else {
                    all = false;
                }
            }
        }
        Ok((any, all, count))
    }
}
