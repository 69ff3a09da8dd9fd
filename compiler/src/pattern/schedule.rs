//! The schedule: for every query tile, its key tiles as runs of consecutive tile ids, each
//! full (no mask needed) or partial (mask needed), plus the closed form when there is one.
//! Stored as CSR (`rows[t]..rows[t + 1]` index `runs`): a few runs per query tile, never a
//! tokens x tokens or tiles x tiles matrix.

use super::classify::{Classifier, KvBox};
use super::closed::{self, ClosedForm};
use super::formula::Formula;
use super::geometry::{Geometry, TileRef, MAX_RANK};
use super::{AnalysisError, Budget, TileClass};
use crate::sema::program::Group;
use crate::sema::spec::{PatternVariant, Spec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvRun {
    pub start: u32,
    pub len: u32,
    pub class: TileClass,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Query-key token pairs that are attended (exact).
    pub active_pairs: u64,
    pub full_tiles: u64,
    pub partial_tiles: u64,
    pub min_kv_tiles: u32,
    pub max_kv_tiles: u32,
    /// Query tiles that see no key tile at all.
    pub empty_rows: u32,
}

#[derive(Clone, Debug)]
pub struct VariantSchedule {
    pub heads: Vec<u32>,
    pub rows: Vec<u32>,
    pub runs: Vec<KvRun>,
    /// Canvas-to-canvas key tiles in closed form (when the rule has one and no token rule).
    pub closed: Option<ClosedForm>,
    pub stats: Stats,
}

impl VariantSchedule {
    pub fn row(&self, q: u32) -> &[KvRun] {
        let (a, b) = (
            self.rows[q as usize] as usize,
            self.rows[q as usize + 1] as usize,
        );
        &self.runs[a..b]
    }

    pub fn kv_tiles(&self, q: u32) -> u32 {
        self.row(q).iter().map(|r| r.len).sum()
    }

    /// The class of one tile pair, or None when it is empty.
    pub fn class_of(&self, q: u32, k: u32) -> Option<TileClass> {
        self.row(q)
            .iter()
            .find(|r| k >= r.start && k < r.start + r.len)
            .map(|r| r.class)
    }
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub geom: Geometry,
    pub variants: Vec<VariantSchedule>,
    /// Query head -> variant.
    pub head_variant: Vec<u32>,
}

impl Schedule {
    /// Active pairs over all heads / all pairs over all heads.
    pub fn density(&self) -> f64 {
        let total = (self.geom.total_tokens as f64).powi(2);
        let heads = self.head_variant.len().max(1) as f64;
        let active: f64 = self
            .variants
            .iter()
            .map(|v| v.stats.active_pairs as f64 * v.heads.len() as f64)
            .sum();
        active / (total * heads)
    }

    /// Tile pairs the kernel visits, summed over heads.
    pub fn active_tile_pairs(&self) -> u64 {
        self.variants
            .iter()
            .map(|v| (v.stats.full_tiles + v.stats.partial_tiles) * v.heads.len() as u64)
            .sum()
    }

    pub fn variant_of_head(&self, h: u32) -> &VariantSchedule {
        &self.variants[self.head_variant.get(h as usize).copied().unwrap_or(0) as usize]
    }
}

/// Which token groups a query group sees by the `see` rules.
pub struct Rules<'a> {
    pub rules: &'a [(Group, Group)],
}

/// A group a token belongs to: the canvas or a segment (index in the layout's list).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    Canvas,
    Segment(usize),
}

impl Rules<'_> {
    pub fn sees(&self, q: Side, k: Side) -> bool {
        let m = |g: Group, s: Side| match (g, s) {
            (Group::All, _) => true,
            (Group::Canvas, Side::Canvas) => true,
            (Group::Segment(i), Side::Segment(j)) => i == j,
            _ => false,
        };
        self.rules.iter().any(|(f, t)| m(*f, q) && m(*t, k))
    }
}

pub fn build(
    spec: &Spec,
    geom: &Geometry,
    budget: &mut Budget,
) -> Result<Schedule, (usize, AnalysisError)> {
    let mut variants = vec![];
    for (i, v) in spec.variants.iter().enumerate() {
        variants.push(build_variant(spec, geom, v, budget).map_err(|e| (i, e))?);
    }
    Ok(Schedule {
        geom: geom.clone(),
        variants,
        head_variant: spec.head_variant.clone(),
    })
}

fn build_variant(
    spec: &Spec,
    geom: &Geometry,
    v: &PatternVariant,
    budget: &mut Budget,
) -> Result<VariantSchedule, AnalysisError> {
    let rules = Rules { rules: &spec.rules };
    let formula = Formula::new(v.tiles.as_ref(), v.tokens.as_ref(), geom.rank);
    let dense_canvas = rules.sees(Side::Canvas, Side::Canvas);
    let mut classifier = if dense_canvas {
        None
    } else {
        Some(Classifier::new(geom, &formula, budget)?)
    };
    let closed = match (&v.tiles, &v.tokens, dense_canvas) {
        (Some(t), None, false) => closed::derive(t, geom.rank),
        (None, None, _) | (_, _, true) => Some(ClosedForm {
            boxes: vec![Default::default()],
        }),
        _ => None,
    };
    let mut rows = Vec::with_capacity(geom.total_tiles as usize + 1);
    let mut runs: Vec<KvRun> = vec![];
    let mut stats = Stats {
        min_kv_tiles: u32::MAX,
        ..Stats::default()
    };
    rows.push(0u32);
    let mut pieces: Vec<(KvRun, u64)> = vec![];
    for q in 0..geom.total_tiles {
        budget.spend(1)?;
        pieces.clear();
        let qlen = u64::from(geom.tile_len(q));
        let qside = match geom.tile_ref(q) {
            TileRef::Canvas { coords } => {
                let boxes = match &mut classifier {
                    Some(c) => c.row(&coords, budget)?,
                    None => dense_boxes(geom, qlen),
                };
                boxes_to_runs(geom, &boxes, &mut pieces);
                Side::Canvas
            }
            TileRef::Segment { seg, .. } => {
                let s = Side::Segment(geom.segments[seg].index);
                if rules.sees(s, Side::Canvas) {
                    boxes_to_runs(geom, &dense_boxes(geom, qlen), &mut pieces);
                }
                s
            }
        };
        for sg in &geom.segments {
            if !rules.sees(qside, Side::Segment(sg.index)) {
                continue;
            }
            // Every key tile of the segment is visited for every query tile that sees it:
            // a huge segment must run out of budget, not of time.
            budget.spend(u64::from(sg.tiles))?;
            for j in 0..sg.tiles {
                let k = sg.first_tile + j;
                let valid = geom.tile_valid_len(k);
                if valid == 0 {
                    continue;
                }
                let class = if valid == geom.tile_tokens {
                    TileClass::Full
                } else {
                    TileClass::Partial
                };
                pieces.push((
                    KvRun {
                        start: k,
                        len: 1,
                        class,
                    },
                    qlen * u64::from(valid),
                ));
            }
        }
        pieces.sort_by_key(|(r, _)| r.start);
        let row_start = runs.len();
        let mut tiles_in_row = 0u32;
        for (r, pairs) in &pieces {
            stats.active_pairs += pairs;
            tiles_in_row += r.len;
            match r.class {
                TileClass::Full => stats.full_tiles += u64::from(r.len),
                TileClass::Partial => stats.partial_tiles += u64::from(r.len),
            }
            let in_row = runs.len() > row_start;
            match runs.last_mut() {
                Some(last)
                    if in_row && last.class == r.class && last.start + last.len == r.start =>
                {
                    last.len += r.len
                }
                _ => runs.push(*r),
            }
        }
        stats.min_kv_tiles = stats.min_kv_tiles.min(tiles_in_row);
        stats.max_kv_tiles = stats.max_kv_tiles.max(tiles_in_row);
        if tiles_in_row == 0 {
            stats.empty_rows += 1;
        }
        rows.push(runs.len() as u32);
    }
    if geom.total_tiles == 0 {
        stats.min_kv_tiles = 0;
    }
    Ok(VariantSchedule {
        heads: v.heads.clone(),
        rows,
        runs,
        closed,
        stats,
    })
}

/// Every canvas key tile, split so that ragged tiles (partial) form their own boxes.
fn dense_boxes(geom: &Geometry, qlen: u64) -> Vec<KvBox> {
    let rank = geom.rank;
    let mut out = vec![];
    // Per axis: the whole-tile range and the ragged last tile, if any.
    let parts: Vec<Vec<(u32, u32)>> = (0..rank)
        .map(|a| {
            let g = geom.grid[a];
            if geom.canvas[a] % geom.tile[a] == 0 {
                vec![(0, g - 1)]
            } else if g == 1 {
                vec![(0, 0)]
            } else {
                vec![(0, g - 2), (g - 1, g - 1)]
            }
        })
        .collect();
    let mut idx = [0usize; MAX_RANK];
    loop {
        let mut lo = [0u32; MAX_RANK];
        let mut hi = [0u32; MAX_RANK];
        for a in 0..rank {
            (lo[a], hi[a]) = parts[a][idx[a]];
        }
        let klen: u64 = (0..rank)
            .map(|a| u64::from(geom.tile_extent(a, lo[a])))
            .product();
        let class = if geom.canvas_tile_ragged(&lo) {
            TileClass::Partial
        } else {
            TileClass::Full
        };
        out.push(KvBox {
            lo,
            hi,
            class,
            pairs_per_tile: qlen * klen,
        });
        let mut a = rank;
        loop {
            if a == 0 {
                return out;
            }
            a -= 1;
            idx[a] += 1;
            if idx[a] < parts[a].len() {
                break;
            }
            idx[a] = 0;
        }
    }
}

/// Boxes of canvas tiles -> runs of consecutive tile ids (rows along the last axis).
fn boxes_to_runs(geom: &Geometry, boxes: &[KvBox], out: &mut Vec<(KvRun, u64)>) {
    let rank = geom.rank;
    let last = rank - 1;
    for b in boxes {
        let len = b.hi[last] - b.lo[last] + 1;
        let mut c = b.lo;
        'rows: loop {
            let start = geom.canvas_tile_id(&c);
            out.push((
                KvRun {
                    start,
                    len,
                    class: b.class,
                },
                b.pairs_per_tile * u64::from(len),
            ));
            // Odometer over the axes before the last.
            let mut a = last;
            loop {
                if a == 0 {
                    break 'rows;
                }
                a -= 1;
                c[a] += 1;
                if c[a] <= b.hi[a] {
                    break;
                }
                c[a] = b.lo[a];
            }
        }
    }
}
