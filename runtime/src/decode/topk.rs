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
        Budget::Tokens(_) => s.budget_units() as usize,
        Budget::Ratio(f) => ((f * n as f64).floor() as usize).max(forced),
    };
    k.min(s.budget_units() as usize)
}

/// The lists of one sequence under an adaptive allocation (Ada-KV, rule 6): list `l`'s
/// scores in `scores[l]`, its entries in `outs[l]`. Each list keeps its forced units and
/// its best units up to its floor (`max(ceil(F * k), forced)`); the rest of the lists'
/// total (`lists * k`) goes to the best of all lists' remaining units: higher score first,
/// NaN below every number, then the lower unit, then the lower list.
pub fn select_shared(s: &SelectSpec, len: u32, scores: &[&[f32]], outs: &mut [&mut [i32]]) {
    let n = len.div_ceil(s.page) as usize;
    let forced = s.forced_units(len);
    let k = kept_units(s, len, forced.len());
    for o in outs.iter_mut() {
        o.fill(-1);
    }
    if n <= k {
        for o in outs.iter_mut() {
            for (u, x) in o.iter_mut().take(n).enumerate() {
                *x = u as i32;
            }
        }
        return;
    }
    let floor = (s.floor_units(k as u32) as usize).max(forced.len());
    let mut is_forced = vec![false; n];
    for &u in &forced {
        is_forced[u as usize] = true;
    }
    let mut chosen: Vec<Vec<u32>> = vec![forced.clone(); outs.len()];
    let mut left: Vec<(f32, u32, u32)> = vec![];
    for (l, sc) in scores.iter().enumerate() {
        let mut rest: Vec<(f32, u32)> = (0..n as u32)
            .filter(|u| !is_forced[*u as usize])
            .map(|u| (sc[u as usize], u))
            .collect();
        let own = floor - forced.len();
        if own > 0 && own < rest.len() {
            rest.select_nth_unstable_by(own - 1, |a, b| rank(*a, *b));
        }
        chosen[l].extend(rest[..own].iter().map(|x| x.1));
        left.extend(rest[own..].iter().map(|&(x, u)| (x, u, l as u32)));
    }
    let shared = (outs.len() * k.saturating_sub(floor)).min(left.len());
    let better =
        |a: &(f32, u32, u32), b: &(f32, u32, u32)| rank((a.0, a.1), (b.0, b.1)).then(a.2.cmp(&b.2));
    if shared > 0 && shared < left.len() {
        left.select_nth_unstable_by(shared - 1, better);
    }
    for &(_, u, l) in &left[..shared] {
        chosen[l as usize].push(u);
    }
    for (o, mut c) in outs.iter_mut().zip(chosen) {
        c.sort_unstable();
        for (x, u) in o.iter_mut().zip(c) {
            *x = u as i32;
        }
    }
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
