//! The closed forms the GPU top-k (`attnc::codegen::nvptx::decode::topk`) is built on,
//! checked against the CPU executor's selection on every small shape: the forced units of
//! rule 6 are the prefix `[0, s)` and the suffix `[r, n)`, and without scores the list is
//! `0..s + need` then `r..n`. The GPU kernel emits these formulas as IR; this test keeps the
//! formulas honest on machines without a GPU (the device bundle compares the kernel's
//! lists with the CPU's).

use attnc::select::spec::{Budget, HeadReduce, KernelKind, Pool, Reduce, SelectSpec, Source};
use attnc::sema::program::DType;
use attnc::sema::spec::Origin;
use attnc_runtime::decode::topk::select_row;

fn spec(page: u32, sinks: u32, recent: u32, budget_units: u32, context: u32) -> SelectSpec {
    SelectSpec {
        kernel: "forms".into(),
        select: "forms".into(),
        kind: KernelKind::Decode,
        source: Source::None,
        rows: Reduce::Sum,
        heads: HeadReduce::PerKvGroup(Reduce::Sum),
        pool: Pool::None,
        output: Default::default(),
        page,
        budget: Budget::Tokens(budget_units * page),
        adaptive: None,
        gumbel: None,
        sinks,
        recent,
        context,
        batch: 1,
        q_heads: 1,
        kv_heads: 1,
        head_dim: 8,
        dtype: DType::Bf16,
        scale: 1.0,
        split: 4,
        params: vec![("X".into(), "1".into(), Origin::Default)],
    }
}

/// `(s, r)`: the forced prefix ends at `s`, the forced suffix starts at `r` (as the GPU
/// computes them from the sequence length).
fn forced_bounds(s: &SelectSpec, len: u32) -> (u32, u32) {
    let p = s.page;
    let n = len.div_ceil(p);
    let s_end = s.sinks.min(len).div_ceil(p);
    let r_start = if s.recent > 0 {
        if len > s.recent {
            (len - s.recent) / p
        } else {
            0
        }
    } else if len % p != 0 {
        n - 1
    } else {
        n
    };
    (s_end, r_start)
}

#[test]
fn forced_units_are_a_prefix_and_a_suffix() {
    for page in [1u32, 2, 4, 16] {
        for sinks in [0, 1, 3, 4, 17] {
            for recent in [0, 1, 5, 16, 33] {
                let s = spec(page, sinks, recent, 64, 400);
                for len in 1..=400u32 {
                    let n = len.div_ceil(page);
                    let (s_end, r_start) = forced_bounds(&s, len);
                    let want: Vec<u32> = (0..n).filter(|&u| u < s_end || u >= r_start).collect();
                    assert_eq!(
                        s.forced_units(len),
                        want,
                        "page {page}, sinks {sinks}, recent {recent}, len {len}"
                    );
                }
            }
        }
    }
}

#[test]
fn without_scores_the_list_is_closed_form() {
    let mut closed = 0; // lists longer than the capacity: the closed form proper
    for page in [1u32, 4, 16] {
        for (sinks, recent) in [(0u32, 0u32), (4, 0), (0, 7), (4, 60), (17, 33)] {
            let min_units = (sinks.div_ceil(page) + recent.div_ceil(page) + 2).max(1);
            for budget in [min_units, min_units + 3, 40] {
                let s = spec(page, sinks, recent, budget, 600);
                if s.capacity() < s.max_forced() {
                    continue; // the language rejects a budget below the forced units (E08xx)
                }
                let cap = s.capacity() as usize;
                for len in (1..=600u32).step_by(7) {
                    let n = len.div_ceil(page);
                    let mut cpu = vec![0i32; cap];
                    select_row(&s, len, &vec![0.0; n as usize], &mut cpu);
                    let gpu: Vec<i32> = if n as usize <= cap {
                        (0..cap as i32)
                            .map(|t| if t < n as i32 { t } else { -1 })
                            .collect()
                    } else {
                        closed += 1;
                        let (s_end, r_start) = forced_bounds(&s, len);
                        let forced = s_end + (n - r_start);
                        assert!(
                            forced <= cap as u32 && s_end < r_start,
                            "page {page}, sinks {sinks}, recent {recent}, budget {budget}, len {len}: forced {forced} of {n}, cap {cap}, max_forced {}",
                            s.max_forced()
                        );
                        let head = s_end + cap as u32 - forced;
                        (0..cap as u32)
                            .map(|t| if t < head { t } else { r_start + (t - head) } as i32)
                            .collect()
                    };
                    assert_eq!(
                        gpu, cpu,
                        "page {page}, sinks {sinks}, recent {recent}, budget {budget}, len {len}"
                    );
                }
            }
        }
    }
    assert!(closed > 1000, "only {closed} closed-form lists checked");
}
