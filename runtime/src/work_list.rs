//! The persistent kernel's work lists (`Tuning::work_lists`, the `-pers-lpt` shapes): its
//! work items (query block, head, batch) dealt to the blocks by the longest-processing-
//! time-first rule, each item to the block with the least work so far, so that the
//! blocks finish together. Taken in turn instead (`blockIdx.x, + gridDim.x, ...`), the
//! blocks' shares differ with the items' lengths: by 4.9 % at GRAT-B r=1 256x256, whose
//! edge tiles have fewer key tiles, and by 70 % with a text prefix, whose rows see every
//! key (bench/RESULTS.md, ninth session).
//!
//! The lists as the kernel reads them (its last parameter): `blocks + 1` offsets, then the
//! items, block `b`'s from `offsets[b]` to `offsets[b + 1]`, each block's in ascending
//! order (so that the blocks walk the heads and tiles together, and neighbouring tiles'
//! keys are read from L2 by all of them at about the same time).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::artefact::GpuArtefact;
use crate::Error;

/// A work item's cost beside its key tiles: its start and its store, about one key
/// tile's work (the model of bench/RESULTS.md run 49).
const ITEM_COST: u64 = 1;

/// Each work item's cost for the artefact's schedule: its query tile's key tiles (in its
/// head's variant) plus `ITEM_COST`. Items are numbered as the kernel numbers them: the
/// query blocks of head 0 of batch 0, then of head 1, ...
pub fn item_costs(a: &GpuArtefact, bm: u32) -> Result<Vec<u64>, Error> {
    let m = &a.manifest;
    let blocks_per_tile = (m.tile_tokens as u32).div_ceil(bm.max(1)).max(1);
    let per_head = a.grid_x as usize;
    let tiles = per_head / blocks_per_tile as usize;
    let bad = || {
        Error::Cuda(format!(
            "the artefact of `{}`: its row table does not fit its grid",
            m.kernel
        ))
    };
    if tiles == 0 || a.rows.len() % (tiles + 1) != 0 {
        return Err(bad());
    }
    let variants = a.rows.len() / (tiles + 1);
    // Key tiles of each (variant, query tile).
    let mut keys = Vec::with_capacity(variants * tiles);
    for v in 0..variants {
        let offsets = &a.rows[v * (tiles + 1)..(v + 1) * (tiles + 1)];
        for t in 0..tiles {
            let (lo, hi) = (offsets[t] as usize, offsets[t + 1] as usize);
            let runs = a.runs.get(3 * lo..3 * hi).ok_or_else(bad)?;
            keys.push(runs.chunks(3).map(|r| u64::from(r[1])).sum::<u64>());
        }
    }
    let mut costs = Vec::with_capacity(per_head * m.heads * m.batch);
    for _batch in 0..m.batch {
        for head in 0..m.heads {
            let v = a.head_variant.get(head).copied().unwrap_or(0) as usize;
            if v >= variants {
                return Err(bad());
            }
            for bx in 0..per_head {
                let t = bx / blocks_per_tile as usize;
                costs.push(keys[v * tiles + t] + ITEM_COST);
            }
        }
    }
    Ok(costs)
}

/// Deals items of these costs to `blocks` blocks (at least one): longest first, ties by
/// item number, each to the block with the least work so far (ties to the lowest block).
/// Returns the lists in the kernel's layout (see the module's comment).
pub fn deal(costs: &[u64], blocks: u32) -> Vec<u32> {
    let blocks = blocks.max(1) as usize;
    let mut order: Vec<u32> = (0..costs.len() as u32).collect();
    order.sort_by_key(|&i| (Reverse(costs[i as usize]), i));
    let mut load: BinaryHeap<Reverse<(u64, usize)>> =
        (0..blocks).map(|b| Reverse((0, b))).collect();
    let mut lists = vec![vec![]; blocks];
    for i in order {
        let Reverse((work, b)) = load.pop().expect("at least one block");
        lists[b].push(i);
        load.push(Reverse((work + costs[i as usize], b)));
    }
    let mut out = Vec::with_capacity(blocks + 1 + costs.len());
    let mut at = 0u32;
    out.push(at);
    for l in &lists {
        at += l.len() as u32;
        out.push(at);
    }
    for mut l in lists {
        l.sort_unstable();
        out.extend(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lists hold every item once, and the busiest block has at most one item's cost
    /// more than the least busy one (the rule's bound).
    fn check(costs: &[u64], blocks: u32) -> Vec<u64> {
        let lists = deal(costs, blocks);
        let b = blocks as usize;
        assert_eq!(lists.len(), b + 1 + costs.len());
        let mut seen: Vec<u32> = lists[b + 1..].to_vec();
        seen.sort_unstable();
        assert_eq!(seen, (0..costs.len() as u32).collect::<Vec<_>>());
        let loads: Vec<u64> = (0..b)
            .map(|k| {
                let (lo, hi) = (lists[k] as usize, lists[k + 1] as usize);
                let items = &lists[b + 1 + lo..b + 1 + hi];
                assert!(items.windows(2).all(|w| w[0] < w[1]), "ascending");
                items.iter().map(|&i| costs[i as usize]).sum()
            })
            .collect();
        let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(hi - lo <= *costs.iter().max().unwrap(), "{loads:?}");
        loads
    }

    #[test]
    fn dealing_balances_uneven_items() {
        // GRAT-B r=1 on 32 x 16 tiles (4 to 9 key tiles), 24 heads, 132 blocks: the
        // busiest block within 1 % of the mean (in turn: 4.9 % above it).
        let mut tile = vec![];
        for r in 0..32i32 {
            for c in 0..16i32 {
                let n = |x: i32, n: i32| (x - 1..=x + 1).filter(|y| (0..n).contains(y)).count();
                tile.push((n(r, 32) * n(c, 16)) as u64 + ITEM_COST);
            }
        }
        let costs: Vec<u64> = (0..24).flat_map(|_| tile.clone()).collect();
        let loads = check(&costs, 132);
        let mean = costs.iter().sum::<u64>() as f64 / 132.0;
        let max = *loads.iter().max().unwrap() as f64;
        assert!(max / mean < 1.01, "{max} against {mean}");
        // A few very long items (text rows that see every key) among short ones.
        let mut costs = vec![2053u64; 96];
        costs.extend(std::iter::repeat_n(14, 49152));
        check(&costs, 132);
        // Fewer items than blocks, one block, no items.
        check(&[5, 1, 3], 8);
        check(&[5, 1, 3], 1);
        assert_eq!(deal(&[], 3), vec![0, 0, 0, 0]);
    }

    /// The costs of a real schedule: GRAT-B r=1 on 64x64 (8 x 4 tiles) with 512 text
    /// tokens (4 tiles whose rows see every key tile), 24 heads, a persistent shape with
    /// work lists (whose row table carries no launch order).
    #[test]
    fn item_costs_follow_the_schedule() {
        use attnc::codegen::nvptx::{attention::Tuning, Arch};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/grat.attn");
        let src = attnc::driver::Source::load(&path).expect("grat.attn");
        let c = crate::cache::compile(&src, "grat_b_2d", &[]).expect("compiles");
        let t = Tuning::parse("128x128-wgmma-tma-ws-ovl-pers-lpt").expect("shape");
        assert!(t.work_lists() && !t.launch_order());
        let a = crate::artefact::build_tuned_in(None, &c, Arch::Sm90, t).expect("artefact");
        let plain = Tuning {
            ordered: false,
            ..t
        };
        let p = crate::artefact::build_tuned_in(None, &c, Arch::Sm90, plain).expect("plain");
        assert_eq!(a.rows, p.rows);
        let costs = item_costs(&a, t.bm).expect("costs");
        let tiles = c.schedule.geom.total_tiles as usize;
        assert_eq!(tiles, 36);
        assert_eq!(costs.len(), tiles * 24);
        // Text tiles first: every key tile; a corner image tile: 4 text tiles + 2 x 2.
        assert_eq!(costs[0], tiles as u64 + ITEM_COST);
        assert_eq!(costs[4], 4 + 4 + ITEM_COST);
        // Every head alike (one variant).
        assert!(costs.chunks(tiles).all(|h| h == &costs[..tiles]));
        let want: u64 = c.schedule.variants[0]
            .runs
            .iter()
            .map(|r| u64::from(r.len))
            .sum();
        let got: u64 = costs[..tiles].iter().map(|x| x - ITEM_COST).sum();
        assert_eq!(got, want);
    }

    #[test]
    fn the_same_costs_give_the_same_lists() {
        let costs: Vec<u64> = (0..1000).map(|i| (i * 7919 % 13) as u64).collect();
        assert_eq!(deal(&costs, 132), deal(&costs, 132));
    }
}
