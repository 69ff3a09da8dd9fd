//! Per-axis tables. For one canvas axis and one query tile coordinate along it, the key
//! tile coordinates along that axis are grouped into runs with the same *signature*: the
//! multiset of truth vectors of the atoms that read only this axis, over the token pairs
//! of the block (query tile slice x key tile slice). Because such atoms depend on one axis
//! each, the truth of the whole rule over a box of key tiles follows exactly from one
//! signature per axis (see `classify`). Cost: O(grid^2) cheap evaluations per axis, plus
//! token enumeration only on blocks that interval evaluation cannot decide.

use std::collections::HashMap;

use super::formula::{eval_bool, Formula, Point, Unit};
use super::geometry::Geometry;
use super::interval::{decide, Block};
use super::{AnalysisError, Budget};

/// (atom truth bits, number of token pairs with them), sorted by bits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sig(pub Vec<(u64, u64)>);

pub type SigId = u32;

#[derive(Default, Debug)]
pub struct Sigs {
    pub list: Vec<Sig>,
    map: HashMap<Sig, SigId>,
}

impl Sigs {
    pub fn intern(&mut self, s: Sig) -> SigId {
        if let Some(id) = self.map.get(&s) {
            return *id;
        }
        let id = self.list.len() as SigId;
        self.list.push(s.clone());
        self.map.insert(s, id);
        id
    }

    pub fn get(&self, id: SigId) -> &Sig {
        &self.list[id as usize]
    }
}

/// Key tile coordinates `lo..=hi` share a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub lo: u32,
    pub hi: u32,
    pub sig: SigId,
}

#[derive(Debug)]
pub struct AxisTable {
    pub axis: usize,
    /// Global ids of the atoms of this axis; bit `i` of a signature is `atoms[i]`.
    pub atoms: Vec<u32>,
    /// One list of runs per query tile coordinate.
    pub rows: Vec<Vec<Run>>,
}

pub fn build(
    geom: &Geometry,
    f: &Formula,
    axis: usize,
    sigs: &mut Sigs,
    budget: &mut Budget,
) -> Result<AxisTable, AnalysisError> {
    let atoms: Vec<u32> = (0..f.atoms.len() as u32)
        .filter(|i| f.atoms[*i as usize].single_axis() == Some(axis))
        .collect();
    if atoms.len() > 64 {
        return Err(AnalysisError::TooComplex(format!(
            "more than 64 comparisons read axis {axis}"
        )));
    }
    // Tile atoms that are top-level conjuncts: where one is false, the block is empty and
    // its token atoms need no enumeration.
    let top = f.top_conjuncts();
    let gate: Vec<usize> = atoms
        .iter()
        .enumerate()
        .filter(|(_, g)| top.contains(g) && f.atoms[**g as usize].unit == Unit::Tiles)
        .map(|(i, _)| i)
        .collect();
    let grid = geom.grid[axis];
    let (t, n) = (i64::from(geom.tile[axis]), i64::from(geom.canvas[axis]));
    let mut rows = Vec::with_capacity(grid as usize);
    budget
        .spend(u64::from(grid) * u64::from(grid) * (atoms.len() as u64 + 1) * super::EVAL_COST)?;
    for cq in 0..grid {
        let mut row: Vec<Run> = vec![];
        let q_lo = i64::from(cq) * t;
        let q_hi = (q_lo + t).min(n) - 1;
        for ck in 0..grid {
            let k_lo = i64::from(ck) * t;
            let k_hi = (k_lo + t).min(n) - 1;
            let pairs = ((q_hi - q_lo + 1) * (k_hi - k_lo + 1)) as u64;
            let mut tile_pt = Point::default();
            tile_pt.q[axis] = i64::from(cq);
            tile_pt.k[axis] = i64::from(ck);
            tile_pt.n[axis] = i64::from(grid);
            if geom.rank == 1 {
                (tile_pt.qi, tile_pt.ki) = (tile_pt.q[0], tile_pt.k[0]);
            }
            let mut bits = 0u64;
            let mut undecided: Vec<usize> = vec![];
            let mut block = Block::default();
            block.q[axis] = (q_lo, q_hi);
            block.k[axis] = (k_lo, k_hi);
            block.n[axis] = n;
            if geom.rank == 1 {
                (block.qi, block.ki) = (Some(block.q[0]), Some(block.k[0]));
            }
            for (i, g) in atoms.iter().enumerate() {
                let atom = &f.atoms[*g as usize];
                match atom.unit {
                    Unit::Tiles => {
                        if eval_bool(&atom.expr, &tile_pt).map_err(AnalysisError::Eval)? {
                            bits |= 1 << i;
                        }
                    }
                    Unit::Tokens => match decide(&atom.expr, &block) {
                        Some(true) => bits |= 1 << i,
                        Some(false) => {}
                        None => undecided.push(i),
                    },
                }
            }
            let gated = gate.iter().any(|i| bits & (1 << i) == 0);
            let sig = if undecided.is_empty() || gated {
                Sig(vec![(bits, pairs)])
            } else {
                budget.spend(pairs * undecided.len() as u64 * super::EVAL_COST)?;
                let mut hist: Vec<(u64, u64)> = vec![];
                let mut pt = Point::default();
                pt.n[axis] = n;
                for qa in q_lo..=q_hi {
                    for ka in k_lo..=k_hi {
                        pt.q[axis] = qa;
                        pt.k[axis] = ka;
                        (pt.qi, pt.ki) = (qa, ka);
                        let mut b = bits;
                        for i in &undecided {
                            if eval_bool(&f.atoms[atoms[*i] as usize].expr, &pt)
                                .map_err(AnalysisError::Eval)?
                            {
                                b |= 1 << i;
                            }
                        }
                        match hist.iter_mut().find(|(x, _)| *x == b) {
                            Some(e) => e.1 += 1,
                            None => hist.push((b, 1)),
                        }
                    }
                }
                hist.sort_unstable();
                Sig(hist)
            };
            let id = sigs.intern(sig);
            match row.last_mut() {
                Some(r) if r.sig == id && r.hi + 1 == ck => r.hi = ck,
                _ => row.push(Run {
                    lo: ck,
                    hi: ck,
                    sig: id,
                }),
            }
        }
        rows.push(row);
    }
    Ok(AxisTable { axis, atoms, rows })
}
