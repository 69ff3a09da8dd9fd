//! `outputs lse;` on the CPU: every shipped attention kernel with the setting added writes
//! each query row's log-sum-exp as the f64 reference computes it (`-inf` for a row that
//! sees no key) and the same `o` as without it, in both units of the softmax; the buffer
//! is checked; and the end of the design (docs/attention-lse.md): a causal prefill's
//! log-sum-exps fed to `window_lse(W)` select what `window(W)` selects, with the same
//! scores. Outputs are poisoned (NaN) before each run, so an element the kernel never
//! writes fails the comparison.

use attnc::driver::{self, Compiled, Source};
use attnc::ir::Op;
use attnc::select::SelectSpec;
use attnc::sema::instantiate::Binding;
use attnc_runtime::decode::DecodeKernel;
use attnc_runtime::{cache, fidelity, reference, CpuKernel, Tensor};

mod common;

use common::{compare, kernels_dir, random_qkv, TOLERANCE};

/// `text` with `outputs lse;` added to the body of its attention kernel `kernel`.
fn with_lse(text: &str, kernel: &str) -> String {
    attnc_runtime::suite::with_lse(text, kernel)
        .unwrap_or_else(|| panic!("no attention kernel `{kernel}`"))
}

/// A shipped file in token order `order`, kernel `kernel` with `outputs lse;`.
fn shipped_with_lse(file: &str, kernel: &str, order: &str) -> Source {
    let text = common::shipped_text(file, order);
    Source::new(format!("{file} ({order})"), with_lse(&text, kernel))
}

fn compile(src: &Source, kernel: &str, sets: &[&str]) -> Compiled {
    let sets: Vec<Binding> = sets
        .iter()
        .map(|s| Binding::parse(s).expect("binding"))
        .collect();
    cache::compile(src, kernel, &sets).unwrap_or_else(|e| panic!("{}: {e}", src.name))
}

/// Largest error of the log-sum-exps against the reference's, relative to the
/// reference's magnitude counted as at least 1 (a row that sees one key has a log-sum-exp
/// near 0: its score); `-inf` exactly where the reference has it (rows that see no key).
fn lse_error(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}");
    let mut worst = (0f64, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        if *b == f64::NEG_INFINITY {
            assert_eq!(*a, f32::NEG_INFINITY, "{what}: row {i} sees no key");
            continue;
        }
        assert!(a.is_finite(), "{what}: row {i} is {a} (never written?)");
        let e = (f64::from(*a) - b).abs() / b.abs().max(1.0);
        if e > worst.0 {
            worst = (e, i);
        }
    }
    assert!(
        worst.0 < TOLERANCE,
        "{what}: relative error {:.3e} at row {} (jit {}, reference {})",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
    worst.0
}

/// Runs a compiled kernel with `outputs lse;` on random tensors against the reference;
/// returns the log-sum-exps' relative error and the reference's log-sum-exps.
fn run_against_reference(k: &CpuKernel, seed: u64, what: &str) -> (f64, Vec<f64>) {
    let m = k.manifest().clone();
    let lse_shape = m.lse_shape().expect("the manifest lists lse").to_vec();
    assert_eq!(lse_shape, vec![m.batch, m.heads, m.tokens], "{what}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (q, kk, v) = random_qkv(&m, &mut rng);
    let mut out = vec![f32::NAN; m.o_shape().iter().product()];
    let mut lse = vec![f32::NAN; lse_shape.iter().product()];
    k.run_with_lse(q.view(), kk.view(), v.view(), &[], &mut out, Some(&mut lse))
        .expect("runs");
    let (o_ref, lse_ref) =
        reference::attention_with_lse(&k.compiled().spec, q.view(), kk.view(), v.view(), &[])
            .expect("reference");
    compare(&out, &o_ref, what);
    (lse_error(&lse, &lse_ref, what), lse_ref)
}

/// Small shapes of every shipped attention kernel: the first of each kernel in
/// `cpu_vs_reference`'s cases (ragged tiles, padded text, GQA, batch 2, value dims that
/// differ from the head dim), and the streaming prefill.
fn cases() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let mut v: Vec<(&'static str, &'static str, Vec<&'static str>)> = vec![];
    for c in common::cases() {
        if !v.iter().any(|(f, k, _)| (*f, *k) == (c.0, c.1)) {
            v.push(c);
        }
    }
    let streaming = ["N=300", "TILE=32", "SINKS=4", "WINDOW=100", "HEAD_DIM=64"];
    v.push((
        "streaming.attn",
        "streaming_prefill",
        [&streaming[..], &["HEADS=8", "KV_HEADS=2"]].concat(),
    ));
    v
}

/// The attention kernels of every shipped file, as (file, kernel).
fn shipped_attention_kernels() -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(kernels_dir())
        .expect("kernels/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "attn"))
        .collect();
    files.sort();
    let mut out = vec![];
    for path in files {
        let src = Source::load(&path).expect("readable");
        let (fe, _) =
            driver::frontend(&src).unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
        let file = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        for k in &fe.program.kernels {
            out.push((file.clone(), k.name.clone()));
        }
    }
    out
}

#[test]
fn every_shipped_attention_kernel_writes_the_reference_log_sum_exps() {
    let cases = cases();
    for (file, kernel) in shipped_attention_kernels() {
        assert!(
            cases.iter().any(|(f, k, _)| *f == file && *k == kernel),
            "the shipped attention kernel `{kernel}` ({file}) has no case here"
        );
    }
    for (i, (file, kernel, sets)) in cases.into_iter().enumerate() {
        for order in ["tiled", "raster"] {
            let src = shipped_with_lse(file, kernel, order);
            let k = CpuKernel::new(compile(&src, kernel, &sets), false).expect("jit");
            let what = format!("{file} {kernel} {order}");
            let (e, _) = run_against_reference(&k, 2000 + i as u64, &what);
            eprintln!("{what}: log-sum-exps' relative error {e:.2e}");
        }
    }
}

/// Text queries that no rule lets see anything: their log-sum-exps are -inf (their
/// outputs 0), the canvas rows' as the reference's.
#[test]
fn rows_that_see_no_key_have_minus_infinite_log_sum_exps() {
    let text = "layout l { canvas (8, 8); tile (4, 4); segment text prefix 8; }
pattern p on l { tiles: dh == 0 && dw == 0; see canvas -> text; }
kernel k = attention(p) { heads 2; head_dim 16; outputs lse; }
";
    let src = Source::new("empty_rows.attn", text);
    let k = CpuKernel::new(compile(&src, "k", &[]), false).expect("jit");
    let (_, lse_ref) = run_against_reference(&k, 3, "empty rows");
    // 72 tokens a head: the 8 text rows first.
    for h in 0..2 {
        let rows = &lse_ref[h * 72..][..72];
        assert!(
            rows[..8].iter().all(|x| *x == f64::NEG_INFINITY),
            "{rows:?}"
        );
        assert!(rows[8..].iter().all(|x| x.is_finite()), "{rows:?}");
    }
}

/// The same log-sum-exps whichever units the softmax runs in: base 2 after `fold-log2e`
/// (the pipeline's), natural without the passes; with a score modifier the fold inserts
/// its own scale, and the `log_sum_exp` follows the softmax all the same.
#[test]
fn log_sum_exps_in_either_unit_of_the_softmax() {
    let text = "layout seq { param N = 200; canvas (N); tile (32); }
pattern causal on seq { tiles: kx <= qx; tokens: kx <= qx; }
kernel plain = attention(causal) { heads 4; kv_heads 2; head_dim 32; outputs lse; }
kernel capped = attention(causal) {
  heads 4; kv_heads 2; head_dim 32; outputs lse;
  param CAP = 0.5;
  score: CAP * tanh(score / CAP) + 0.01 * float(qi - ki);
}
";
    let src = Source::new("units.attn", text);
    let units = |c: &Compiled| -> Vec<bool> {
        c.ir.graph
            .node_indices()
            .filter_map(|n| match c.ir.node(n).op {
                Op::LogSumExp { exp2 } => Some(exp2),
                _ => None,
            })
            .collect()
    };
    for (i, kernel) in ["plain", "capped"].into_iter().enumerate() {
        let c = compile(&src, kernel, &[]);
        assert_eq!(units(&c), [true], "{kernel}: base 2 after the passes");
        let base2 = CpuKernel::new(c.clone(), false).expect("jit");
        let (e2, _) = run_against_reference(&base2, 40 + i as u64, kernel);
        // The lowered IR before the passes: natural units.
        let mut natural = c;
        natural.ir = attnc::ir::lower::lower(&natural.spec, &natural.schedule);
        attnc::ir::verify::verify(&natural.ir).expect("valid IR");
        assert_eq!(
            units(&natural),
            [false],
            "{kernel}: natural before the passes"
        );
        let natural = CpuKernel::new(natural, false).expect("jit");
        let (e, _) = run_against_reference(&natural, 40 + i as u64, kernel);
        eprintln!("{kernel}: relative error {e2:.2e} in base 2, {e:.2e} in natural units");
    }
}

/// The log-sum-exps' buffer is given exactly when the kernel writes them, of their size;
/// the manifest lists them only then.
#[test]
fn the_log_sum_exps_buffer_is_checked() {
    let text = std::fs::read_to_string(kernels_dir().join("dense.attn")).expect("dense.attn");
    let sets = ["N=64", "TILE=16", "HEADS=4", "KV_HEADS=2", "HEAD_DIM=8"];
    let with = Source::new("dense.attn", with_lse(&text, "dense"));
    let with = CpuKernel::new(compile(&with, "dense", &sets), false).expect("jit");
    let without = Source::new("dense.attn", text);
    let without = CpuKernel::new(compile(&without, "dense", &sets), false).expect("jit");
    assert_eq!(
        with.manifest().outputs,
        vec![("lse".to_string(), vec![1, 4, 64])]
    );
    assert!(without.manifest().outputs.is_empty());
    let m = with.manifest().clone();
    let mut rng = fastrand::Rng::with_seed(5);
    let (q, kk, v) = random_qkv(&m, &mut rng);
    let mut out = vec![0f32; m.o_shape().iter().product()];
    let e = with
        .run(q.view(), kk.view(), v.view(), &[], &mut out)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "shape mismatch: kernel `dense` writes its rows' log-sum-exps (`outputs lse;`): pass a buffer of 256 values [1, 4, 64] (run_with_lse)"
    );
    let mut short = vec![0f32; 255];
    let e = with
        .run_with_lse(
            q.view(),
            kk.view(),
            v.view(),
            &[],
            &mut out,
            Some(&mut short),
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "shape mismatch: the lse output holds 255 values; expected 256 = [1, 4, 64]"
    );
    let mut lse = vec![0f32; 256];
    let e = without
        .run_with_lse(q.view(), kk.view(), v.view(), &[], &mut out, Some(&mut lse))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "shape mismatch: kernel `dense` writes no log-sum-exps: add `outputs lse;` to its body"
    );
}

/// Two selection kernels over one cache: SnapKV's `window(W)` and `window_lse(W)`, which
/// divides each window row by the log-sum-exp it is given.
fn window_selections(w: usize, context: usize) -> (SelectSpec, SelectSpec) {
    let text = format!(
        "select own {{ source window({w}); keep sinks 4, recent {w}; budget 128 tokens; }}
select given {{ source window_lse({w}); keep sinks 4, recent {w}; budget 128 tokens; }}
kernel by_window = select(own) {{ heads 8; kv_heads 2; head_dim 32; batch 3; CONTEXT = {context}; }}
kernel by_lse = select(given) {{ heads 8; kv_heads 2; head_dim 32; batch 3; CONTEXT = {context}; }}
"
    );
    let src = Source::new("snapkv.attn", text);
    let (fe, _) = driver::frontend(&src).unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
    let spec = |name: &str| {
        driver::select_spec(&fe, name, &[])
            .unwrap_or_else(|d| panic!("{}", src.render(&d, false)))
            .0
    };
    (spec("by_window"), spec("by_lse"))
}

/// The design's end to end (docs/attention-lse.md): the shipped causal prefill writes its
/// log-sum-exps; `window_lse(W)` fed with their last W rows selects what `window(W)`
/// selects (on a cache with planted heavy hitters) and scores every token as it does to
/// 1e-5; the rows also agree with the selection reference's own log-sum-exps.
#[test]
fn a_prefills_log_sum_exps_drive_window_lse_as_window_selects() {
    use attnc_runtime::decode::cache::round;
    use attnc_runtime::decode::reference::window_lse;
    use attnc_runtime::decode::score::unit_scores;
    let (w, n) = (16usize, 512usize);
    let (own, given) = window_selections(w, n);
    let text = std::fs::read_to_string(kernels_dir().join("dense.attn")).expect("dense.attn");
    let src = Source::new("dense.attn", with_lse(&text, "causal"));
    let sets = [
        "N=512",
        "TILE=64",
        "HEADS=8",
        "KV_HEADS=2",
        "HEAD_DIM=32",
        "BATCH=3",
    ];
    let prefill = CpuKernel::new(compile(&src, "causal", &sets), false).expect("jit");
    assert_eq!(prefill.compiled().spec.scale, given.scale);
    let m = prefill.manifest().clone();
    // The cache and the window's queries, with heavy hitters along the last query; the
    // earlier queries random. Everything as the bf16 cache holds it, so that the prefill
    // and the selection read the same numbers.
    let syn = fidelity::synthetic(&given, w, 40, 11);
    let bf16 = |x: &[f32]| -> Vec<f32> { x.iter().map(|v| round(given.dtype, *v)).collect() };
    let (k, v, qw) = (bf16(&syn.k.data), bf16(&syn.v.data), bf16(&syn.q.data));
    let mut q = bf16(&Tensor::random(&m.q_shape(), 12).data);
    let d = m.head_dim;
    for bh in 0..m.batch * m.heads {
        q[(bh * n + n - w) * d..][..w * d].copy_from_slice(&qw[bh * w * d..][..w * d]);
    }
    let shape_q = m.q_shape();
    let shape_kv = m.k_shape();
    let mut out = vec![f32::NAN; m.o_shape().iter().product()];
    let mut lse = vec![f32::NAN; m.batch * m.heads * n];
    prefill
        .run_with_lse(
            attnc_runtime::TensorRef::new(&shape_q, &q),
            attnc_runtime::TensorRef::new(&shape_kv, &k),
            attnc_runtime::TensorRef::new(&shape_kv, &v),
            &[],
            &mut out,
            Some(&mut lse),
        )
        .expect("prefill");
    // The window rows' log-sum-exps: the last W of each (sequence, head).
    let lse_w: Vec<f32> = lse
        .chunks(n)
        .flat_map(|rows| rows[n - w..].iter().copied())
        .collect();
    let lens = vec![n as u32; m.batch];
    let (by_lse, by_window) = (
        DecodeKernel::new(given.clone()),
        DecodeKernel::new(own.clone()),
    );
    let mut st = by_lse.new_state();
    by_lse.fill(&mut st, &k, &v, &lens).expect("fill");
    let mut st_own = by_window.new_state();
    by_window.fill(&mut st_own, &k, &v, &lens).expect("fill");
    // The prefill's rows are the selection reference's (f64, rounded to f32).
    let exact = window_lse(&given, &st, &qw);
    let exact: Vec<f64> = exact.iter().map(|x| f64::from(*x)).collect();
    let e = lse_error(&lse_w, &exact, "window rows");
    eprintln!("window rows' log-sum-exps against the selection reference: {e:.2e}");
    let picked = by_lse.select(&st, &qw, Some(&lse_w)).expect("window_lse");
    let want = by_window.select(&st_own, &qw, None).expect("window");
    assert_eq!(picked, want);
    // 128 of 512 tokens a list: a choice, not the whole cache.
    assert_eq!(picked.shape, [3, 2, 128]);
    let a = unit_scores(&given, &st, &qw, Some(&lse_w));
    let b = unit_scores(&own, &st_own, &qw, None);
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(&b) {
        if y.is_finite() {
            worst = worst.max((x - y).abs() / y.abs().max(1e-30));
        } else {
            assert_eq!(x, y);
        }
    }
    assert!(
        worst < 1e-5,
        "largest relative difference of the scores {worst}"
    );
    eprintln!("window_lse's scores against window's: {worst:.2e}");
}
