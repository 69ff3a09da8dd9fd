//! Property test: on random kernels (source, head reduction, pooling, page size, sinks,
//! recent, budget) and random ragged caches, the CPU executor's index lists equal the
//! brute-force reference's exactly, and its attention matches the reference's.

use attnc::select::spec::{
    Budget, HeadReduce, HeadSet, KernelKind, Pool, Reduce, SelectSpec, Source,
};
use attnc::sema::program::DType;
use attnc_runtime::decode::reference::{reference_attend, reference_select};
use attnc_runtime::decode::DecodeKernel;
use attnc_runtime::{fidelity, Tensor};
use proptest::prelude::*;

fn reduce(i: u8) -> Reduce {
    [Reduce::Sum, Reduce::Mean, Reduce::Max][i as usize % 3]
}

#[derive(Debug, Clone)]
struct Case {
    spec: SelectSpec,
    lens: Vec<u32>,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (0u8..8, 0u8..8, 0u8..3, 0u8..3, 0u8..4),
        (1u32..300, 0u32..12, 0u32..40, 1u32..4, 0u8..3),
        (0u8..2, 0u8..3, 1u32..6, any::<u64>(), 0u8..2),
        prop::collection::vec(0.0f64..1.0, 3),
    )
        .prop_map(
            |(
                (src, hr, pool, rows, page),
                (context, sinks, recent, batch, g),
                (ratio, hq, w, seed, dt),
                fr,
            )| {
                let source = match src {
                    0 => Source::None,
                    1 => Source::Exact,
                    2 => Source::PageBound,
                    3 => Source::External,
                    4 => Source::KeyNorm,
                    5 => Source::PageMean,
                    6 => Source::Normalized {
                        rows: w.min(context),
                    },
                    _ => Source::Window {
                        rows: w.min(context),
                        lse: false,
                    },
                };
                let page = match (source, page) {
                    (Source::PageBound | Source::PageMean, p) => 2u32 << p,
                    (_, 0 | 1) => 1,
                    (_, p) => 1 << p,
                };
                let kv_heads = 1 + hq as u32 % 2;
                let group = 1u32 << g;
                let recent = match source {
                    Source::Window { rows, .. } => recent.max(rows),
                    _ => recent,
                };
                let pool = if page == 1 {
                    [Pool::None, Pool::Avg { size: 3 }, Pool::Max { size: 5 }][pool as usize]
                } else {
                    Pool::None
                };
                let mut spec = SelectSpec {
                    kernel: "prop".into(),
                    select: "prop".into(),
                    kind: if matches!(source, Source::Window { .. } | Source::Normalized { .. }) {
                        KernelKind::Select
                    } else {
                        KernelKind::Decode
                    },
                    source,
                    rows: reduce(rows),
                    heads: match hr {
                        0..=2 => HeadReduce::PerKvGroup(reduce(hr)),
                        3..=5 => HeadReduce::Shared(reduce(hr)),
                        // The first and the last query head.
                        _ => {
                            let mut set = HeadSet::default();
                            set.insert(0);
                            set.insert(kv_heads * group - 1);
                            HeadReduce::Subset(reduce(hr), set)
                        }
                    },
                    pool,
                    output: Default::default(),
                    page,
                    budget: Budget::Tokens(page),
                    adaptive: None,
                    gumbel: None,
                    sinks,
                    recent,
                    context,
                    batch,
                    q_heads: kv_heads * group,
                    kv_heads,
                    head_dim: 8,
                    dtype: if dt == 0 { DType::Bf16 } else { DType::F16 },
                    scale: 0.5,
                    split: 1 + (seed % 7) as u32,
                    params: vec![],
                };
                // A budget the compiler would accept: at least the forced units.
                let min_units = spec.max_forced().max(1);
                let units = spec.units();
                spec.budget = if ratio == 1 {
                    Budget::Ratio(0.05 + 0.95 * fr[0])
                } else {
                    let extra = (fr[0] * (units + 2) as f64) as u32;
                    Budget::Tokens((min_units + extra) * page)
                };
                // Ada-KV's shared budgets on some cases with several per-KV-head lists.
                if fr[1] < 0.3 && !spec.heads.one_list() && spec.kv_heads > 1 {
                    spec.adaptive = Some(fr[2]);
                }
                let lo = spec.q_rows();
                let lens = (0..batch as usize)
                    .map(|i| lo + ((fr[i % 3] * 997.0) as u32 + i as u32 * 13) % (context - lo + 1))
                    .collect();
                Case { spec, lens, seed }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn executor_equals_reference(c in case()) {
        let s = &c.spec;
        let rows = s.q_rows() as usize;
        let syn = fidelity::synthetic(s, rows, 5, c.seed % 1000);
        let kernel = DecodeKernel::new(s.clone());
        let mut st = kernel.new_state();
        kernel.fill(&mut st, &syn.k.data, &syn.v.data, &c.lens).unwrap();
        let ext = (s.source == Source::External).then(|| {
            // Coarse values so that ties happen.
            Tensor::random(&[s.batch as usize, s.sel_heads() as usize, s.context as usize], c.seed % 977)
                .data
                .into_iter()
                .map(|x| (x * 4.0).round())
                .collect::<Vec<f32>>()
        });
        let got = kernel.select(&st, &syn.q.data, ext.as_deref()).unwrap();
        let want = reference_select(s, &st, &syn.q.data, ext.as_deref()).unwrap();
        prop_assert_eq!(&got, &want, "{:?} lens {:?}", s, c.lens);
        // Every list: ascending, within the sequence, padded with -1 at the end only.
        for (r, row) in got.data.chunks(got.shape[2]).enumerate() {
            let n = c.lens[r / got.shape[1]].div_ceil(s.page) as i32;
            let kept: Vec<i32> = row.iter().copied().take_while(|u| *u >= 0).collect();
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(kept.iter().all(|u| *u < n));
            prop_assert!(row[kept.len()..].iter().all(|u| *u == -1));
        }
        if s.kind == KernelKind::Decode {
            let q1 = &syn.q.data;
            let o = kernel.attend(&mut st, q1, &got).unwrap();
            let r = reference_attend(s, &st, q1, &got).unwrap();
            let max = r.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-6);
            let err = o.iter().zip(&r).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
            prop_assert!(err / max < 5e-5, "relative error {}", err / max);
        }
    }
}
