//! The CPU selection executor against the brute-force reference (`decode::reference`):
//! index lists exactly equal, outputs to f32 rounding, on random caches with planted heavy
//! hitters, every score source, head reductions, budgets at and above the context, short
//! and ragged sequences, ties and NaN scores, and the cache operations.

// Index loops over sequences, heads and tokens read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use attnc::select::spec::{
    Budget, HeadReduce, HeadSet, KernelKind, Pool, Reduce, SelectSpec, Source,
};
use attnc::sema::program::DType;
use attnc::sema::spec::Origin;
use attnc_runtime::decode::reference::{reference_attend, reference_select};
use attnc_runtime::decode::{DecodeKernel, DecodeState, Indices};
use attnc_runtime::{fidelity, Tensor};

fn spec(source: Source) -> SelectSpec {
    SelectSpec {
        kernel: "test".into(),
        select: "test".into(),
        kind: match source {
            Source::Window { .. } | Source::Normalized { .. } => KernelKind::Select,
            _ => KernelKind::Decode,
        },
        source,
        rows: Reduce::Sum,
        heads: HeadReduce::PerKvGroup(Reduce::Sum),
        pool: Pool::None,
        output: Default::default(),
        page: if source.scores_pages() { 16 } else { 1 },
        budget: Budget::Tokens(128),
        adaptive: None,
        gumbel: None,
        sinks: 4,
        recent: 16,
        context: 500,
        batch: 3,
        q_heads: 8,
        kv_heads: 2,
        head_dim: 32,
        dtype: DType::Bf16,
        scale: 1.0 / 32f64.sqrt(),
        split: 24,
        params: vec![("X".into(), "1".into(), Origin::Default)],
    }
}

/// A cache with planted heavy hitters; sequence lengths `lens`.
fn setup(s: &SelectSpec, lens: &[u32], seed: u64) -> (DecodeKernel, DecodeState, Vec<f32>) {
    let rows = s.q_rows() as usize;
    let syn = fidelity::synthetic(s, rows, 40, seed);
    let kernel = DecodeKernel::new(s.clone());
    let mut st = kernel.new_state();
    kernel
        .fill(&mut st, &syn.k.data, &syn.v.data, lens)
        .expect("fill");
    (kernel, st, syn.q.data)
}

fn external(s: &SelectSpec, seed: u64) -> Vec<f32> {
    Tensor::random(
        &[s.batch as usize, s.sel_heads() as usize, s.context as usize],
        seed,
    )
    .data
}

/// Selects with the executor and the reference and requires equal lists.
fn same_selection(
    s: &SelectSpec,
    lens: &[u32],
    seed: u64,
) -> (DecodeKernel, DecodeState, Vec<f32>, Indices) {
    let (kernel, st, q) = setup(s, lens, seed);
    let ext = match s.source {
        Source::External => Some(external(s, seed + 9)),
        Source::Window { lse: true, .. } => {
            Some(attnc_runtime::decode::reference::window_lse(s, &st, &q))
        }
        _ => None,
    };
    let got = kernel.select(&st, &q, ext.as_deref()).expect("select");
    let want = reference_select(s, &st, &q, ext.as_deref()).expect("reference");
    assert_eq!(
        got, want,
        "{:?} {:?} {:?} lens {lens:?}",
        s.source, s.heads, s.budget
    );
    (kernel, st, q, got)
}

const LENS: [u32; 3] = [500, 273, 61];

#[test]
fn every_source_and_head_reduction_selects_as_the_reference() {
    let sources = [
        Source::Exact,
        Source::PageBound,
        Source::External,
        Source::Window {
            rows: 8,
            lse: false,
        },
        Source::Window { rows: 8, lse: true },
        Source::Normalized { rows: 8 },
        Source::KeyNorm,
        Source::PageMean,
    ];
    for source in sources {
        for heads in [
            HeadReduce::PerKvGroup(Reduce::Sum),
            HeadReduce::PerKvGroup(Reduce::Mean),
            HeadReduce::PerKvGroup(Reduce::Max),
            HeadReduce::Shared(Reduce::Sum),
            HeadReduce::Shared(Reduce::Max),
            HeadReduce::Subset(Reduce::Sum, heads_set(&[1, 6])),
            HeadReduce::Subset(Reduce::Max, heads_set(&[3])),
        ] {
            let mut s = spec(source);
            s.heads = heads;
            if let Source::Window { rows, .. } = source {
                s.recent = rows;
            }
            let (_, _, _, idx) = same_selection(&s, &LENS, 1);
            assert_eq!(
                idx.shape,
                [3, s.sel_heads() as usize, s.capacity() as usize]
            );
        }
    }
}

/// `window_lse(W)` divides each window row by the log-sum-exp it is given: with the exact
/// ones (what a prefill's attention gives) its scores are `window(W)`'s to f32 rounding;
/// a shifted log-sum-exp scales the row's contribution by `e` to the shift; a missing,
/// misshapen or non-finite one is an error that says so.
#[test]
fn window_lse_divides_by_the_given_log_sum_exps() {
    use attnc_runtime::decode::reference::window_lse;
    use attnc_runtime::decode::score::unit_scores;
    let rows = 8;
    let mut given = spec(Source::Window { rows, lse: true });
    given.recent = rows;
    let mut own = spec(Source::Window { rows, lse: false });
    own.recent = rows;
    let (kernel, st, q) = setup(&given, &LENS, 7);
    let lse = window_lse(&given, &st, &q);
    // The executor's scores from the queries as `select` rounds them (bf16).
    let q: Vec<f32> = q
        .iter()
        .map(|x| attnc_runtime::decode::cache::round(given.dtype, *x))
        .collect();
    let a = unit_scores(&given, &st, &q, Some(&lse));
    let b = unit_scores(&own, &st, &q, None);
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(&b) {
        if y.is_finite() {
            worst = worst.max((x - y).abs() / y.abs().max(1e-30));
        } else {
            assert_eq!(x, y);
        }
    }
    assert!(worst < 1e-5, "largest relative difference {worst}");
    // Every row's log-sum-exp one less: every probability, so every score, e times larger.
    let less: Vec<f32> = lse.iter().map(|x| x - 1.0).collect();
    let c = unit_scores(&given, &st, &q, Some(&less));
    for (x, y) in c.iter().zip(&a) {
        if y.is_finite() && *y > 1e-20 {
            let r = x / y;
            assert!((r - std::f32::consts::E).abs() < 1e-4, "{x} / {y} = {r}");
        }
    }
    let err = kernel.select(&st, &q, None).unwrap_err().to_string();
    assert!(
        err.contains("divides by the log-sum-exps of the prefill's attention: pass lse [3, 8, 8]"),
        "{err}"
    );
    let err = kernel
        .select(&st, &q, Some(&lse[1..]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("lse has 191 values; expected 192"), "{err}");
    let mut nan = lse.clone();
    nan[5] = f32::NAN;
    let err = kernel.select(&st, &q, Some(&nan)).unwrap_err().to_string();
    assert!(err.contains("lse holds NaN at flat index 5"), "{err}");
}

/// ZipCache's normalised attention (`normalized(W)`): before the window a token's score is
/// the window rows' mean probability, bit for bit `window(W)` with `reduce rows: mean`;
/// inside the window it is the sum over the rows that see it divided by their count, so the
/// window's last token has exactly the last row's probability of itself.
#[test]
fn normalized_scores_divide_by_the_rows_that_see_a_token() {
    use attnc_runtime::decode::score::{causal_count, unit_scores};
    let rows = 8;
    let mut norm = spec(Source::Normalized { rows });
    norm.batch = 1;
    let mut win = spec(Source::Window { rows, lse: false });
    win.batch = 1;
    win.rows = Reduce::Mean;
    win.recent = rows;
    let lens = [300];
    let (_, st, q) = setup(&norm, &lens, 5);
    let a = unit_scores(&norm, &st, &q, None);
    let b = unit_scores(&win, &st, &q, None);
    let (len, units) = (300, norm.units() as usize);
    for sel in 0..norm.sel_heads() as usize {
        let (a, b) = (&a[sel * units..][..len], &b[sel * units..][..len]);
        for j in 0..len - rows as usize {
            assert_eq!(a[j].to_bits(), b[j].to_bits(), "list {sel} token {j}");
        }
        // The window's own tokens: scored here, not by `window`.
        for j in len - rows as usize..len {
            assert!(
                a[j].is_finite() && a[j] > 0.0,
                "list {sel} token {j}: {}",
                a[j]
            );
            assert_eq!(b[j], f32::NEG_INFINITY);
        }
    }
    assert_eq!(causal_count(len, 8, 0), 8);
    assert_eq!(causal_count(len, 8, len - 9), 8);
    assert_eq!(causal_count(len, 8, len - 8), 8);
    assert_eq!(causal_count(len, 8, len - 7), 7);
    assert_eq!(causal_count(len, 8, len - 1), 1);
    // One query head a list: the last token's score is the last row's probability of it.
    let mut one = norm.clone();
    (one.q_heads, one.kv_heads) = (2, 2);
    let (_, st, q) = setup(&one, &lens, 6);
    let got = unit_scores(&one, &st, &q, None)[len - 1];
    let d = one.head_dim as usize;
    let last_row = &q[(rows as usize - 1) * d..][..d];
    let logits: Vec<f64> = (0..len)
        .map(|j| {
            let k = &st.k[j * d..][..d];
            one.scale
                * last_row
                    .iter()
                    .zip(k)
                    .map(|(x, y)| f64::from(*x) * f64::from(*y))
                    .sum::<f64>()
        })
        .collect();
    let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|l| (l - top).exp()).sum();
    let want = (logits[len - 1] - top).exp() / sum;
    assert!(
        (f64::from(got) - want).abs() < 1e-5 * want.max(1e-3),
        "{got} against {want}"
    );
}

/// Ada-KV's adaptive budget (`adaptive(floor = F)`): with every source and both budget
/// kinds the executor equals the reference; with planted scores a list whose attention sits
/// on a few tokens keeps just its floor and gives the rest of its budget to the lists whose
/// attention is spread, the lists' total staying the budget's.
#[test]
fn adaptive_budgets_share_among_the_lists() {
    for source in [
        Source::Exact,
        Source::External,
        Source::Window {
            rows: 8,
            lse: false,
        },
        Source::Normalized { rows: 8 },
        Source::KeyNorm,
        Source::PageBound,
    ] {
        for budget in [Budget::Tokens(128), Budget::Ratio(0.3)] {
            let mut s = spec(source);
            s.budget = budget;
            s.adaptive = Some(0.25);
            if let Source::Window { rows, .. } = source {
                s.recent = rows;
            }
            same_selection(&s, &LENS, 3);
        }
    }
    // Four lists of 128 tokens on average, a floor of a quarter (32). List 0's scores are
    // ten spikes over zeros; the others' are all 1 (0.5 on even tokens).
    let mut s = spec(Source::External);
    (s.batch, s.q_heads, s.kv_heads) = (1, 8, 4);
    s.adaptive = Some(0.25);
    assert_eq!(s.capacity(), 4 * 128 - 3 * 32);
    let c = s.context as usize;
    let mut ext = vec![0f32; 4 * c];
    for j in 0..10 {
        ext[40 + 37 * j] = 100.0;
    }
    for l in 1..4 {
        for j in 0..c {
            ext[l * c + j] = if j % 2 == 0 { 0.5 } else { 1.0 };
        }
    }
    let (kernel, st, q) = setup(&s, &[500], 4);
    let got = kernel.select(&st, &q, Some(&ext)).expect("select");
    let want = reference_select(&s, &st, &q, Some(&ext)).expect("reference");
    assert_eq!(got, want);
    let cap = s.capacity() as usize;
    let lists: Vec<Vec<i32>> = (0..4)
        .map(|l| {
            got.data[l * cap..][..cap]
                .iter()
                .copied()
                .filter(|u| *u >= 0)
                .collect()
        })
        .collect();
    let counts: Vec<usize> = lists.iter().map(Vec::len).collect();
    assert_eq!(counts, [32, 160, 160, 160]);
    for j in 0..10 {
        assert!(lists[0].contains(&(40 + 37 * j)), "spike {j}");
    }
    // The sinks and the recent tokens in every list; list 1's shared units are its odd
    // tokens (score 1) before any even one.
    for l in &lists {
        assert!((0..4).chain(484..500).all(|u| l.contains(&u)));
    }
    assert!(lists[1]
        .iter()
        .filter(|u| (4..484).contains(*u))
        .all(|u| u % 2 == 1));
    // Without the allocation every list keeps 128.
    s.adaptive = None;
    let plain = kernel_select(&s, &st, &q, &ext);
    assert!(plain
        .chunks(s.capacity() as usize)
        .all(|l| l.iter().filter(|u| **u >= 0).count() == 128));
}

fn kernel_select(s: &SelectSpec, st: &DecodeState, q: &[f32], ext: &[f32]) -> Vec<i32> {
    DecodeKernel::new(s.clone())
        .select(st, q, Some(ext))
        .expect("select")
        .data
}

fn heads_set(heads: &[u32]) -> HeadSet {
    let mut set = HeadSet::default();
    for h in heads {
        set.insert(*h);
    }
    set
}

/// A subset of every head is `shared`, bit for bit; a subset of one head selects by that
/// head's scores alone, whatever the others' (their queries negated changes nothing).
#[test]
fn head_subsets_score_with_their_heads_only() {
    let all = heads_set(&(0..8).collect::<Vec<u32>>());
    for op in [Reduce::Sum, Reduce::Mean, Reduce::Max] {
        let mut shared = spec(Source::Exact);
        shared.heads = HeadReduce::Shared(op);
        let mut subset = shared.clone();
        subset.heads = HeadReduce::Subset(op, all);
        let (kernel, st, q) = setup(&shared, &LENS, 7);
        let want = kernel.select(&st, &q, None).expect("shared");
        let sub = DecodeKernel::new(subset);
        assert_eq!(sub.select(&st, &q, None).expect("subset"), want, "{op:?}");
    }
    let mut s = spec(Source::Exact);
    s.heads = HeadReduce::Subset(Reduce::Sum, heads_set(&[5]));
    let (kernel, st, q) = setup(&s, &LENS, 8);
    let got = kernel.select(&st, &q, None).expect("select");
    assert_eq!(got, reference_select(&s, &st, &q, None).expect("reference"));
    let d = s.head_dim as usize;
    let mut q2 = q.clone();
    for b in 0..s.batch as usize {
        for h in (0..8).filter(|h| *h != 5) {
            for x in &mut q2[(b * 8 + h) * d..][..d] {
                *x = -*x;
            }
        }
    }
    assert_eq!(kernel.select(&st, &q2, None).expect("select"), got);
}

/// `page_mean` ranks pages by their mean key, `page_bound` by their per-channel extremes:
/// a page of keys along the query wins under both, a page whose one spike along the query
/// sits among keys against it wins only the bound.
#[test]
fn page_means_differ_from_page_bounds_where_they_should() {
    let mut s = spec(Source::PageMean);
    s.batch = 1;
    s.q_heads = 2;
    s.kv_heads = 2;
    let (d, c) = (s.head_dim as usize, s.context as usize);
    let syn = fidelity::synthetic(&s, 1, 0, 11);
    let mut k = syn.k.data.clone();
    let q = syn.q.data.clone();
    for kvh in 0..2 {
        let qv = &q[kvh * d..][..d];
        let norm = qv.iter().map(|x| x * x).sum::<f32>().sqrt();
        let u: Vec<f32> = qv.iter().map(|x| x / norm).collect();
        let mut set = |j: usize, f: f32| {
            for t in 0..d {
                k[(kvh * c + j) * d + t] = f * u[t];
            }
        };
        for j in 160..176 {
            set(j, 30.0); // page 10: along the query
        }
        for j in 320..336 {
            set(j, if j == 320 { 60.0 } else { -10.0 }); // page 20: one spike among opposites
        }
    }
    let lens = [500u32];
    let pages_of = |src: Source| {
        let mut t = s.clone();
        t.source = src;
        let kernel = DecodeKernel::new(t.clone());
        let mut st = kernel.new_state();
        kernel.fill(&mut st, &k, &syn.v.data, &lens).expect("fill");
        let got = kernel.select(&st, &q, None).expect("select");
        assert_eq!(got, reference_select(&t, &st, &q, None).expect("reference"));
        got
    };
    let mean = pages_of(Source::PageMean);
    let bound = pages_of(Source::PageBound);
    let cap = s.capacity() as usize;
    for sel in 0..2 {
        let (m, bd) = (
            &mean.data[sel * cap..][..cap],
            &bound.data[sel * cap..][..cap],
        );
        assert!(m.contains(&10) && bd.contains(&10), "{m:?} {bd:?}");
        assert!(bd.contains(&20), "the bound takes the spike: {bd:?}");
        assert!(!m.contains(&20), "the mean does not: {m:?}");
    }
}

/// `key_norm` keeps the tokens whose keys are smallest, whatever the query: keys shrunk
/// 100-fold are all selected (beside the sinks and the recent window), and a query that
/// favours other tokens changes nothing.
#[test]
fn key_norm_keeps_the_smallest_keys_whatever_the_query() {
    let mut s = spec(Source::KeyNorm);
    s.batch = 1;
    let lens = [500u32];
    let (kernel, mut st, q) = setup(&s, &lens, 5);
    let d = s.head_dim as usize;
    let c = s.context as usize;
    // Tokens 100, 106, ..., 454 of every KV head: 60 tokens, inside the budget
    // left after 4 sinks and 16 recent tokens (128 - 20).
    let small: Vec<usize> = (0..60).map(|i| 100 + 6 * i).collect();
    for kvh in 0..s.kv_heads as usize {
        for &j in &small {
            for x in &mut st.k[(kvh * c + j) * d..][..d] {
                *x = attnc_runtime::decode::cache::round(s.dtype, *x * 0.01);
            }
        }
    }
    let got = kernel.select(&st, &q, None).expect("select");
    let want = reference_select(&s, &st, &q, None).expect("reference");
    assert_eq!(got, want);
    for sel in 0..s.sel_heads() as usize {
        let list = &got.data[sel * s.capacity() as usize..][..s.capacity() as usize];
        for j in &small {
            assert!(
                list.contains(&(*j as i32)),
                "list {sel} lacks token {j}: {list:?}"
            );
        }
    }
    // Another query: the same lists.
    let q2: Vec<f32> = q.iter().map(|x| -x).collect();
    assert_eq!(kernel.select(&st, &q2, None).expect("select"), got);
}

#[test]
fn window_row_reductions_and_pooling_select_as_the_reference() {
    for rows in [Reduce::Sum, Reduce::Mean, Reduce::Max] {
        for pool in [Pool::None, Pool::Avg { size: 5 }, Pool::Max { size: 7 }] {
            let mut s = spec(Source::Window {
                rows: 6,
                lse: false,
            });
            s.rows = rows;
            s.pool = pool;
            s.recent = 6;
            s.sinks = 0;
            same_selection(&s, &LENS, 2);
        }
    }
    // Pooling on a decode source too, and page granularity of token scores.
    let mut s = spec(Source::Exact);
    s.pool = Pool::Avg { size: 3 };
    same_selection(&s, &LENS, 3);
    let mut s = spec(Source::Exact);
    s.page = 8;
    s.budget = Budget::Tokens(96);
    same_selection(&s, &LENS, 4);
}

#[test]
fn planted_heavy_hitters_are_found() {
    // With exact scores and a budget far above the 40 planted tokens, the selection holds
    // almost all the attention mass.
    // No forced tokens: the selection is the exact top-k itself.
    let mut s = spec(Source::Exact);
    s.sinks = 0;
    s.recent = 0;
    let (kernel, mut st, q, idx) = same_selection(&s, &LENS, 5);
    // The measure sees the queries the kernel saw: rounded to bf16.
    let q1: Vec<f32> = q
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect();
    let o = kernel.attend(&mut st, &q1, &idx).expect("attend");
    let f = fidelity::measure(&s, &st, &q1, &idx, Some(&o));
    assert!(f.mass > 0.8, "{f:?}");
    assert!(f.recall > 0.999, "exact scores are the top-k itself: {f:?}");
    assert!(f.cosine > 0.99, "{f:?}");
    assert!(f.max_rel_err < 2e-5, "{f:?}");
}

#[test]
fn budget_at_or_above_the_context_keeps_everything() {
    for source in [Source::None, Source::Exact, Source::PageBound] {
        let mut s = spec(source);
        s.budget = Budget::Tokens(512);
        let (_, _, _, idx) = same_selection(&s, &LENS, 6);
        for b in 0..3 {
            let n = LENS[b].div_ceil(s.page) as usize;
            let row = &idx.data[b * idx.shape[1] * idx.shape[2]..][..idx.shape[2]];
            let want: Vec<i32> = (0..idx.shape[2] as i32)
                .map(|u| if (u as usize) < n { u } else { -1 })
                .collect();
            assert_eq!(row, &want[..], "{source:?} sequence {b}");
        }
    }
}

#[test]
fn none_source_keeps_the_sinks_and_the_recent_window() {
    let mut s = spec(Source::None);
    s.budget = Budget::Tokens(20);
    let (_, _, _, idx) = same_selection(&s, &LENS, 7);
    let row = &idx.data[..20];
    let want: Vec<i32> = (0..4).chain(484..500).collect();
    assert_eq!(row, &want[..]);
}

#[test]
fn short_contexts_ragged_batches_and_ratios() {
    // A context shorter than one page; sequences of 1, 15 and 17 tokens.
    let mut s = spec(Source::PageBound);
    s.sinks = 1;
    s.recent = 1;
    s.budget = Budget::Tokens(32);
    same_selection(&s, &[15, 1, 17], 8);
    // Sinks and recent overlapping at small lengths.
    let s = spec(Source::Exact);
    same_selection(&s, &[10, 20, 130], 9);
    // Ratio budgets: capacity from CONTEXT, each sequence keeps floor(F * n) or the forced.
    for f in [0.05, 0.3, 1.0] {
        let mut s = spec(Source::Exact);
        s.budget = Budget::Ratio(f);
        let (_, _, _, idx) = same_selection(&s, &LENS, 10);
        for b in 0..3 {
            let row = &idx.data[b * idx.shape[1] * idx.shape[2]..][..idx.shape[2]];
            let kept = row.iter().filter(|u| **u >= 0).count();
            let want = ((f * LENS[b] as f64).floor() as usize).max(20.min(LENS[b] as usize));
            assert_eq!(kept, want.min(LENS[b] as usize), "ratio {f}, sequence {b}");
        }
    }
}

#[test]
fn ties_go_to_the_lower_index_and_nan_ranks_last() {
    let mut s = spec(Source::External);
    s.sinks = 0;
    s.recent = 0;
    s.budget = Budget::Tokens(10);
    let (kernel, st, q) = setup(&s, &LENS, 11);
    let c = s.context as usize;
    let mut ext = vec![1.0f32; 3 * 2 * c];
    // Sequence 0, list 0: token 300 best, then ten tokens tied, NaN at 0..5.
    ext[300] = 5.0;
    for j in 0..5 {
        ext[j] = f32::NAN;
    }
    for j in 400..410 {
        ext[j] = 2.0;
    }
    let got = kernel.select(&st, &q, Some(&ext)).expect("select");
    let want = reference_select(&s, &st, &q, Some(&ext)).expect("reference");
    assert_eq!(got, want);
    assert_eq!(
        &got.data[..10],
        &[300, 400, 401, 402, 403, 404, 405, 406, 407, 408]
    );
    // All equal: the first ten tokens past the NaNs.
    assert_eq!(&got.data[10..20], &(0..10).collect::<Vec<i32>>()[..]);
    // Only NaN left to choose from: NaN units by index.
    let nan = vec![f32::NAN; 3 * 2 * c];
    let got = kernel.select(&st, &q, Some(&nan)).expect("select");
    assert_eq!(&got.data[..10], &(0..10).collect::<Vec<i32>>()[..]);
}

#[test]
fn attention_matches_the_reference_across_split_boundaries() {
    for (budget, split) in [(128, 24), (96, 32), (24, 24), (25, 1000)] {
        let mut s = spec(Source::Exact);
        s.budget = Budget::Tokens(budget);
        s.split = split;
        s.recent = 4;
        let (kernel, mut st, q, idx) = same_selection(&s, &LENS, 12);
        let o = kernel.attend(&mut st, &q, &idx).expect("attend");
        let r = reference_attend(&s, &st, &q, &idx).expect("reference");
        let max = r.iter().fold(0f64, |m, x| m.max(x.abs()));
        let err = o
            .iter()
            .zip(&r)
            .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        assert!(
            err / max < 2e-5,
            "budget {budget} split {split}: {}",
            err / max
        );
    }
    // A single selected token: the output is its value.
    let mut s = spec(Source::Exact);
    s.sinks = 1;
    s.recent = 0;
    s.budget = Budget::Tokens(1);
    let (kernel, mut st, q, idx) = same_selection(&s, &LENS, 13);
    let o = kernel.attend(&mut st, &q, &idx).expect("attend");
    let d = s.head_dim as usize;
    assert_eq!(&o[..d], &st.v[..d]);
}

/// The state `st.acc` minus `before` against the update of one step over the lists `idx`
/// computed in f64 (3 sequences, 2 KV heads, bf16 queries): at each listed token, the
/// softmax over the list of `logit(b, h, j, scale * q . k)`, summed over the KV group's
/// heads; within `tol`.
fn check_update(
    s: &SelectSpec,
    st: &DecodeState,
    q: &[f32],
    idx: &Indices,
    before: &[f32],
    tol: f64,
    logit: impl Fn(usize, usize, usize, f64) -> f64,
) {
    let (c, d, g) = (s.context as usize, s.head_dim as usize, s.group() as usize);
    for b in 0..3 {
        for kvh in 0..2 {
            let row = &idx.data[(b * 2 + kvh) * idx.shape[2]..][..idx.shape[2]];
            let mut want = vec![0f64; c];
            for h in kvh * g..(kvh + 1) * g {
                let qv: Vec<f64> = q[(b * 8 + h) * d..][..d]
                    .iter()
                    .map(|x| half::bf16::from_f32(*x).to_f32() as f64)
                    .collect();
                let l: Vec<(usize, f64)> = row
                    .iter()
                    .filter(|u| **u >= 0)
                    .map(|&j| {
                        let k = &st.k[((b * 2 + kvh) * c + j as usize) * d..][..d];
                        let dot: f64 = qv.iter().zip(k).map(|(a, b)| a * *b as f64).sum();
                        (j as usize, logit(b, h, j as usize, dot * s.scale))
                    })
                    .collect();
                let m = l.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = l.iter().map(|x| (x.1 - m).exp()).sum();
                for (j, x) in l {
                    want[j] += (x - m).exp() / z;
                }
            }
            for j in 0..c {
                let at = (b * 2 + kvh) * c + j;
                let got = st.acc[at] as f64 - before[at] as f64;
                assert!(
                    (got - want[j]).abs() < tol,
                    "b {b} kvh {kvh} token {j}: {got} vs {}",
                    want[j]
                );
            }
        }
    }
}

#[test]
fn h2o_accumulates_the_step_probabilities_on_the_selection() {
    let mut s = spec(Source::Accumulated);
    s.heads = HeadReduce::PerKvGroup(Reduce::Sum);
    let (kernel, mut st, q) = setup(&s, &LENS, 14);
    for step in 0..3 {
        // The reference probabilities over the same selection, summed over each group.
        checked_step(&kernel, &mut st, &q, step, 1e-5, |_, _, _, l| l);
    }
}

/// One decode step of an accumulated source: the selection the reference's, then the
/// attention, then the state's update checked against the reference (`check_update`,
/// `logit` as there).
fn checked_step(
    kernel: &DecodeKernel,
    st: &mut DecodeState,
    q: &[f32],
    step: u32,
    tol: f64,
    logit: impl Fn(usize, usize, usize, f64) -> f64,
) {
    let s = kernel.spec();
    let before = st.acc.clone();
    let idx = kernel.select(st, q, None).expect("select");
    assert_eq!(
        idx,
        reference_select(s, st, q, None).unwrap(),
        "step {step}"
    );
    kernel.attend(st, q, &idx).expect("attend");
    check_update(s, st, q, &idx, &before, tol, logit);
}

/// Keyformer's noise as docs/kv-selection.md writes it (rule 1), written again here.
fn keyformer_noise(b: u64, h: u64, t: u64, j: u64) -> f64 {
    let mut x = b.wrapping_mul(0x9E3779B97F4A7C15)
        ^ h.wrapping_mul(0xC2B2AE3D27D4EB4F)
        ^ t.wrapping_mul(0x165667B19E3779F9)
        ^ j.wrapping_mul(0xD6E8FEB86659FD93);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D049BB133111EB);
    x ^= x >> 31;
    let u = ((x >> 40) as f64 + 0.5) / 16777216.0;
    -(-u.ln()).ln()
}

/// Keyformer (`keyformer(tau, tau_end, steps)`): each step adds, at the selected tokens,
/// the softmax of the logits plus Gumbel noise over the temperature of the sequence's step
/// (rising linearly, then constant), summed over the KV group's heads; selections equal
/// the reference's at every step, and a second run repeats the state bit for bit.
#[test]
fn keyformer_accumulates_the_gumbel_softmax_at_the_step_temperature() {
    let mut s = spec(Source::Accumulated);
    s.gumbel = Some(attnc::select::spec::Gumbel {
        tau: 0.5,
        tau_end: 3.0,
        steps: 2,
    });
    let (kernel, mut st, q) = setup(&s, &LENS, 21);
    for step in 0..4u32 {
        assert_eq!(st.steps, [step; 3]);
        let tau = [0.5, 1.75, 3.0, 3.0][step as usize];
        checked_step(&kernel, &mut st, &q, step, 2e-5, |b, h, j, l| {
            (l + keyformer_noise(b as u64, h as u64, u64::from(step), j as u64)) / tau
        });
    }
    // The noise is a function of (sequence, head, step, token): the same run again gives
    // the same state, bit for bit; H2O's plain update gives another.
    let (kernel2, mut again, _) = setup(&s, &LENS, 21);
    let mut plain_spec = s.clone();
    plain_spec.gumbel = None;
    let (plain_kernel, mut plain, _) = setup(&plain_spec, &LENS, 21);
    for _ in 0..4 {
        let idx = kernel2.select(&again, &q, None).unwrap();
        kernel2.attend(&mut again, &q, &idx).unwrap();
        let idx = plain_kernel.select(&plain, &q, None).unwrap();
        plain_kernel.attend(&mut plain, &q, &idx).unwrap();
    }
    assert_eq!(again.acc, st.acc);
    assert_ne!(plain.acc, st.acc);
}

#[test]
fn append_builds_the_same_cache_as_fill() {
    let s = spec(Source::PageBound);
    let (kernel, filled, _) = setup(&s, &[40, 33, 1], 15);
    let mut st = kernel.new_state();
    // Start from one token each, then append the rest of the longest sequence's tokens;
    // shorter ones stop when they reach their length (compared per sequence below).
    let (c, d) = (s.context as usize, s.head_dim as usize);
    let one: Vec<u32> = vec![1; 3];
    kernel
        .fill(&mut st, &filled.k, &filled.v, &one)
        .expect("fill");
    for j in 1..40 {
        let mut kn = vec![0f32; 3 * 2 * d];
        let mut vn = vec![0f32; 3 * 2 * d];
        for b in 0..3 {
            for kvh in 0..2 {
                let src = ((b * 2 + kvh) * c + j) * d;
                kn[(b * 2 + kvh) * d..][..d].copy_from_slice(&filled.k[src..][..d]);
                vn[(b * 2 + kvh) * d..][..d].copy_from_slice(&filled.v[src..][..d]);
            }
        }
        kernel.append(&mut st, &kn, &vn).expect("append");
    }
    // Sequence 0 has 40 tokens both ways: same keys, values and page metadata.
    let mut want = kernel.new_state();
    kernel
        .fill(&mut want, &filled.k, &filled.v, &[40, 40, 40])
        .expect("fill");
    assert_eq!(st.lens, vec![40, 40, 40]);
    assert_eq!(st.kmax, want.kmax);
    assert_eq!(st.kmin, want.kmin);
    assert_eq!(st.k[..40 * d], want.k[..40 * d]);
    // A full cache refuses another token.
    let mut full = kernel.new_state();
    kernel
        .fill(&mut full, &filled.k, &filled.v, &[500, 10, 10])
        .expect("fill");
    let err = kernel
        .append(&mut full, &vec![0.0; 3 * 2 * d], &vec![0.0; 3 * 2 * d])
        .unwrap_err();
    assert!(err.to_string().contains("the cache is full"), "{err}");
}

#[test]
fn wrong_shapes_and_values_are_errors_not_panics() {
    let s = spec(Source::Exact);
    let (kernel, mut st, q) = setup(&s, &LENS, 16);
    let e = kernel.select(&st, &q[1..], None).unwrap_err();
    assert!(e.to_string().contains("expected"), "{e}");
    let e = kernel.select(&st, &q, Some(&[0.0; 4])).unwrap_err();
    assert!(e.to_string().contains("pass no external scores"), "{e}");
    let mut bad = q.clone();
    bad[3] = f32::NAN;
    let e = kernel.select(&st, &bad, None).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let ext = spec(Source::External);
    let (k2, st2, q2) = setup(&ext, &LENS, 17);
    let e = k2.select(&st2, &q2, None).unwrap_err();
    assert!(e.to_string().contains("external"), "{e}");
    // Lengths out of range, indices out of range, a select kernel asked to attend.
    let e = kernel
        .fill(&mut st.clone(), &st.k.clone(), &st.v.clone(), &[0, 1, 1])
        .unwrap_err();
    assert!(e.to_string().contains("outside 1..=500"), "{e}");
    let mut idx = kernel.select(&st, &q, None).unwrap();
    idx.data[0] = 499; // sequence 0 has 500 tokens: fine
    idx.data[idx.shape[1] * idx.shape[2]] = 300; // sequence 1 has 273
    let e = kernel.attend(&mut st, &q, &idx).unwrap_err();
    assert!(e.to_string().contains("outside the cached units"), "{e}");
    let mut idx = kernel.select(&st, &q, None).unwrap();
    let k = idx.shape[2];
    idx.data[k + 1] = idx.data[k + 3];
    let e = kernel.attend(&mut st, &q, &idx).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("unit {} appears twice in list 1", idx.data[k + 3])),
        "{e}"
    );
    let w = spec(Source::Window {
        rows: 8,
        lse: false,
    });
    let (kw, mut sw, qw) = setup(&w, &LENS, 18);
    let idx = kw.select(&sw, &qw, None).unwrap();
    let e = kw
        .attend(&mut sw, &qw[..s.batch as usize * 8 * 32], &idx)
        .unwrap_err();
    assert!(e.to_string().contains("never attends"), "{e}");
    let e = kw
        .select(
            &{
                let mut t = sw.clone();
                t.lens[2] = 5;
                t
            },
            &qw,
            None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("observation window"), "{e}");
}

/// At head dim 128 the exact and window scores of a KV group take the grouped path (each
/// key read once, lanes as vector FMAs); with one KV head, a shared list over the same
/// heads takes the per-head path. Rule 1 fixes the order, so the scores agree bit for bit.
#[test]
fn exact_scores_grouped_path_equals_per_head_path() {
    for source in [
        Source::Exact,
        Source::Window {
            rows: 8,
            lse: false,
        },
    ] {
        grouped_equals_per_head(source);
    }
}

fn grouped_equals_per_head(source: Source) {
    let mut grouped = spec(source);
    grouped.kv_heads = 1;
    grouped.q_heads = 4;
    grouped.head_dim = 128;
    grouped.scale = 1.0 / 128f64.sqrt();
    grouped.context = 3000; // three chunks of the normaliser
    let mut shared = grouped.clone();
    shared.heads = HeadReduce::Shared(Reduce::Sum);
    let lens = [3000, 1999, 700];
    let (_, st, q) = setup(&grouped, &lens, 5);
    let a = attnc_runtime::decode::score::unit_scores(&grouped, &st, &q, None);
    let b = attnc_runtime::decode::score::unit_scores(&shared, &st, &q, None);
    assert_eq!(a.len(), b.len());
    let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "{source:?}: grouped and per-head scores differ");
    // Exact scores are probabilities: each list's sum to the group's 4 heads.
    if source == Source::Exact {
        for (bi, len) in lens.iter().enumerate() {
            let total: f64 = a[bi * 3000..][..*len as usize]
                .iter()
                .map(|x| *x as f64)
                .sum();
            assert!((total - 4.0).abs() < 1e-3, "sequence {bi}: {total}");
        }
    }
}

/// At head dim 128 the page bound runs with AVX2 where the CPU has it (each metadata row
/// transposed once); its bits must be rule 1's lane tree, written out here with
/// `lane_tree_fma`, for sums, means and maxima over the heads.
#[test]
fn page_bounds_follow_the_lane_tree() {
    use attnc_runtime::decode::score::{lane_tree_fma, unit_scores};
    for op in [Reduce::Sum, Reduce::Mean, Reduce::Max] {
        let mut s = spec(Source::PageBound);
        s.head_dim = 128;
        s.scale = 1.0 / 128f64.sqrt();
        s.heads = HeadReduce::PerKvGroup(op);
        let lens = [500, 333, 17];
        let (_, st, q) = setup(&s, &lens, 9);
        let got = unit_scores(&s, &st, &q, None);
        let (d, g, units) = (128usize, s.group() as usize, s.units() as usize);
        for b in 0..s.batch as usize {
            for kvh in 0..s.kv_heads as usize {
                let heads: Vec<usize> = (kvh * g..(kvh + 1) * g).collect();
                for pg in 0..lens[b] as usize / s.page as usize {
                    let at = ((b * s.kv_heads as usize + kvh) * units + pg) * d;
                    let term = |i: usize, t: usize| {
                        let x = q[(b * s.q_heads as usize + heads[i]) * d + t];
                        let m = if x >= 0.0 {
                            st.kmax[at + t]
                        } else {
                            st.kmin[at + t]
                        };
                        (x, m)
                    };
                    let want = match op {
                        Reduce::Sum => lane_tree_fma(d, g, term),
                        Reduce::Mean => lane_tree_fma(d, g, term) / g as f32,
                        Reduce::Max => (0..g)
                            .map(|i| lane_tree_fma(d, 1, |_, t| term(i, t)))
                            .fold(f32::NEG_INFINITY, f32::max),
                    };
                    let x = got[(b * s.kv_heads as usize + kvh) * units + pg];
                    assert_eq!(
                        x.to_bits(),
                        want.to_bits(),
                        "{op:?} b {b} kvh {kvh} page {pg}"
                    );
                }
            }
        }
    }
}

/// `compact`: the listed tokens' keys and values in list order, one length per sequence;
/// a decode step over the lists equals dense attention over the compacted cache (to f32
/// rounding), for tokens and for pages (the partial last page included).
#[test]
fn compacted_caches_hold_the_selection_and_attend_alike() {
    for source in [Source::Exact, Source::PageBound] {
        let s = spec(source);
        let (kernel, mut st, q, idx) = same_selection(&s, &LENS, 12);
        let cc = kernel.compact(&st, &idx).expect("compact");
        let (hkv, c, d, p) = (2usize, 500usize, 32usize, s.page as usize);
        let t_n = cc.k.shape[2];
        assert_eq!(
            cc.k.shape,
            vec![3, hkv, (s.capacity() * s.page) as usize, d]
        );
        for b in 0..3 {
            for kvh in 0..hkv {
                let row = &idx.data[(b * hkv + kvh) * idx.shape[2]..][..idx.shape[2]];
                let toks: Vec<usize> = row
                    .iter()
                    .filter(|u| **u >= 0)
                    .flat_map(|u| {
                        (*u as usize * p..(*u as usize + 1) * p).filter(|j| *j < LENS[b] as usize)
                    })
                    .collect();
                assert_eq!(cc.lens[b] as usize, toks.len(), "{source:?} {b}");
                for (n, j) in toks.iter().enumerate() {
                    let got = &cc.k.data[((b * hkv + kvh) * t_n + n) * d..][..d];
                    assert_eq!(got, &st.k[((b * hkv + kvh) * c + j) * d..][..d]);
                    let got = &cc.v.data[((b * hkv + kvh) * t_n + n) * d..][..d];
                    assert_eq!(got, &st.v[((b * hkv + kvh) * c + j) * d..][..d]);
                }
                let rest = &cc.k.data[((b * hkv + kvh) * t_n + toks.len()) * d..]
                    [..(t_n - toks.len()) * d];
                assert!(rest.iter().all(|x| *x == 0.0), "zeros past the end");
            }
        }
        // Dense attention over the compacted cache (a budget that keeps everything).
        let mut dense = spec(Source::None);
        dense.context = t_n as u32;
        dense.page = 1;
        dense.sinks = 0;
        dense.recent = 0;
        dense.budget = Budget::Tokens(t_n as u32);
        let dk = DecodeKernel::new(dense);
        let mut dst = dk.new_state();
        dk.fill(&mut dst, &cc.k.data, &cc.v.data, &cc.lens)
            .expect("fill");
        let didx = dk.select(&dst, &q, None).expect("select");
        let want = dk.attend(&mut dst, &q, &didx).expect("dense");
        let got = kernel.attend(&mut st, &q, &idx).expect("sparse");
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "{source:?}: {err}");
    }
    // Lists that name different numbers of tokens for one sequence are refused.
    let s = spec(Source::Exact);
    let (kernel, st, _, mut idx) = same_selection(&s, &LENS, 13);
    let cap = idx.shape[2];
    let last = (0..cap)
        .rev()
        .find(|i| idx.data[cap + i] >= 0)
        .expect("an entry");
    idx.data[cap + last] = -1;
    let e = kernel.compact(&st, &idx).unwrap_err();
    assert!(
        e.to_string()
            .contains("a compacted cache has one length per sequence"),
        "{e}"
    );
}
