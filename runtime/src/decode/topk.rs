//! Rules 6 and 7: the forced units, then the best of the rest, as an ascending index list
//! padded with -1. Order: higher score first, ties to the lower index, NaN below every
//! number. `select_nth_unstable_by` keeps it linear in the number of units.

use std::cmp::Ordering;

use attnc::select::spec::{Budget, SelectSpec};

/// Better first: higher score, NaN last, then lower index.
pub fn rank(a: (f32, u32), b: (f32, u32)) -> Ordering {
    match (a.0.is_nan(), b.0.is_nan()) {
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (true, true) => a.1.cmp(&b.1),
        (false, false) => {
            b.0.partial_cmp(&a.0)
                .unwrap_or(Ordering::Equal)
                .then(a.1.cmp(&b.1))
        }
    }
}

/// Units a sequence of `len` tokens keeps (`k[b]` of rule 6).
pub fn kept_units(s: &SelectSpec, len: u32, forced: usize) -> usize {
    let n = len.div_ceil(s.page) as usize;
    let k = match s.budget {
        Budget::Tokens(_) => s.capacity() as usize,
        Budget::Ratio(f) => ((f * n as f64).floor() as usize).max(forced),
    };
    k.min(s.capacity() as usize)
}

/// One index list: `scores` holds a score per unit (at least `ceil(len / P)` of them).
pub fn select_row(s: &SelectSpec, len: u32, scores: &[f32], out: &mut [i32]) {
    out.fill(-1);
    let n = len.div_ceil(s.page) as usize;
    let forced = s.forced_units(len);
    let k = kept_units(s, len, forced.len());
    if n <= k {
        for (u, o) in out.iter_mut().take(n).enumerate() {
            *o = u as i32;
        }
        return;
    }
    let mut is_forced = vec![false; n];
    for &u in &forced {
        is_forced[u as usize] = true;
    }
    let mut rest: Vec<(f32, u32)> = (0..n as u32)
        .filter(|u| !is_forced[*u as usize])
        .map(|u| (scores[u as usize], u))
        .collect();
    let free = k.saturating_sub(forced.len()).min(rest.len());
    if free > 0 && free < rest.len() {
        rest.select_nth_unstable_by(free - 1, |a, b| rank(*a, *b));
    }
    let mut chosen: Vec<u32> = forced;
    chosen.extend(rest[..free].iter().map(|x| x.1));
    chosen.sort_unstable();
    for (o, u) in out.iter_mut().zip(chosen) {
        *o = u as i32;
    }
}
