//! Snapshots of `--emit spec`, `--emit schedule` and `--emit ir` for every shipped kernel,
//! and checks that tie the numbers to their definitions.

use attnc::driver::{self, Source, Stage};
use attnc::sema::instantiate::Binding;
use attnc_tests::{kernel_files, root};

fn kernels() -> Vec<(Source, String)> {
    let mut out = vec![];
    for path in kernel_files() {
        let src = Source::load(&path).expect("kernel file readable");
        let (fe, _) =
            driver::frontend(&src).unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
        for k in &fe.program.kernels {
            out.push((src.clone(), k.name.clone()));
        }
    }
    out
}

#[test]
fn shipped_kernel_names() {
    let names: Vec<String> = kernels().into_iter().map(|(_, k)| k).collect();
    for want in [
        "grat_b_2d",
        "grat_x_2d",
        "grat_b_3d",
        "grat_x_3d",
        "sta_3d",
        "na_2d",
        "dense",
        "causal",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "kernel `{want}` is not shipped (have {names:?})"
        );
    }
}

#[test]
fn spec_snapshots() {
    for (src, k) in kernels() {
        let (text, warnings) = driver::emit(&src, Stage::Spec, Some(&k), &[])
            .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
        assert!(warnings.is_empty(), "{k}: {}", src.render(&warnings, false));
        insta::assert_snapshot!(format!("spec__{k}"), text);
    }
}

#[test]
fn ir_snapshots() {
    for (src, k) in kernels() {
        let (text, _) = driver::emit(&src, Stage::Ir, Some(&k), &[])
            .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
        insta::assert_snapshot!(format!("ir__{k}"), text);
    }
}

/// `outputs lse;` adds to the IR the `lse` argument, a `log_sum_exp` of the key loop's
/// final running max and sum (in base 2 after `fold-log2e`, as the softmax) and its store;
/// the kernels without it keep their IR (`ir_snapshots`), and `--emit spec` names the
/// output.
#[test]
fn ir_snapshot_of_a_kernel_with_log_sum_exps() {
    let text = std::fs::read_to_string(root().join("kernels/dense.attn")).expect("dense.attn");
    let head = "kernel causal = attention(lower_triangle) {";
    assert!(text.contains(head), "dense.attn's causal kernel");
    let src = Source::new(
        "dense.attn",
        text.replace(head, &format!("{head} outputs lse;")),
    );
    let (ir, _) = driver::emit(&src, Stage::Ir, Some("causal"), &[])
        .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
    insta::assert_snapshot!("ir__causal_outputs_lse", ir);
    let (spec, _) = driver::emit(&src, Stage::Spec, Some("causal"), &[])
        .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
    assert!(
        spec.ends_with("output lse: f32[1, 24, 4096] (natural log)\n"),
        "{spec}"
    );
}

#[test]
fn schedule_snapshots() {
    // Whole schedules at the default sizes are long for the video kernels: snapshot the
    // header, the closed forms, the statistics and the first query tiles.
    for (src, k) in kernels() {
        let (fe, _) = driver::frontend(&src).expect("frontend");
        let ki = driver::find_kernel(&fe.program, &k).expect("kernel");
        let c = driver::compile_kernel(&fe.program, ki, &[])
            .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
        let text = attnc::pattern::print::print_schedule(&c.spec, &c.schedule, Some(48));
        insta::assert_snapshot!(format!("schedule__{k}"), text);
    }
}

#[test]
fn graphviz_dump_is_a_digraph() {
    let src = Source::load(&root().join("kernels/grat.attn")).expect("grat.attn");
    let (text, _) = driver::emit(&src, Stage::Dot, Some("grat_b_2d"), &[]).expect("dot");
    assert!(text.starts_with("digraph \"grat_b_2d\" {"), "{text}");
    assert!(
        text.contains("subgraph cluster_r1"),
        "the loop body is a cluster"
    );
    assert!(text.trim_end().ends_with('}'));
}

fn density(kernel: &str, sets: &[&str]) -> f64 {
    let src = Source::load(&root().join("kernels/grat.attn")).expect("grat.attn");
    let (fe, _) = driver::frontend(&src).expect("frontend");
    let sets: Vec<Binding> = sets
        .iter()
        .map(|s| Binding::parse(s).expect("binding"))
        .collect();
    let k = driver::find_kernel(&fe.program, kernel).expect("kernel");
    let c = driver::compile_kernel(&fe.program, k, &sets).expect("compiles");
    c.schedule.density()
}

/// The block counts FlexAttention reports for the same masks (../shared/design/GPU.md and the
/// issue): GRAT-B r=1 and GRAT-X on a 128x128 canvas with 8x16 tiles, and the Flux 64x64
/// canvas with its 512 text tokens.
#[test]
fn grat_densities_match_flexattention_block_counts() {
    let d = density("grat_b_2d", &["H=128", "W=128", "R=1", "TEXT=0"]);
    assert_eq!(format!("{d:.4}"), "0.0618");
    // 16x8 tiles: (3*16-2) * (3*8-2) = 1012 of 128^2 tile pairs.
    assert_eq!(d, 1012.0 / 16384.0);
    let d = density("grat_x_2d", &["H=128", "W=128", "TEXT=0"]);
    assert_eq!(format!("{d:.4}"), "0.1797");
    assert_eq!(d, (128.0 * 23.0) / 16384.0);
    assert_eq!(
        format!(
            "{:.3}",
            density("grat_b_2d", &["R=2", "H=128", "W=128", "TEXT=0"])
        ),
        "0.154"
    );
    assert_eq!(format!("{:.3}", density("grat_b_2d", &[])), "0.380");
    // Flux 64x64 + 512 text: 32 canvas tiles see 11 canvas + 4 text tiles, 4 text tiles see
    // all 36: 624 of 36^2 tile pairs (GPU.md's 48.2% rounds the same block count up).
    assert_eq!(density("grat_x_2d", &[]), 624.0 / 1296.0);
    assert_eq!(
        format!("{:.3}", density("grat_b_2d", &["H=128", "W=128"])),
        "0.118"
    );
    assert_eq!(
        format!("{:.4}", density("grat_b_2d", &["H=512", "W=512", "TEXT=0"])),
        "0.0043"
    );
}

/// The CPU code generator's Cranelift IR for one small kernel (no embedded data pointers,
/// so the text is deterministic).
#[test]
fn clif_snapshot_of_a_small_dense_kernel() {
    let src = Source::load(&root().join("kernels/dense.attn")).expect("dense.attn");
    let sets: Vec<Binding> = ["N=64", "TILE=32", "HEADS=1", "HEAD_DIM=8"]
        .iter()
        .map(|s| Binding::parse(s).unwrap())
        .collect();
    let (text, _) = driver::emit(&src, Stage::Clif, Some("dense"), &sets)
        .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
    assert!(text.starts_with("function "));
    insta::assert_snapshot!("clif__dense_n64", text);
}

/// The selection kernels of the shipped files: (source, kernel name).
fn selection_kernels() -> Vec<(Source, String)> {
    let mut out = vec![];
    for path in kernel_files() {
        let src = Source::load(&path).expect("kernel file readable");
        let (fe, _) =
            driver::frontend(&src).unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
        for k in attnc::select::resolve::kernels(&fe.ast) {
            out.push((src.clone(), k.name.name.clone()));
        }
    }
    out
}

#[test]
fn shipped_selection_kernel_names() {
    let names: Vec<String> = selection_kernels().into_iter().map(|(_, k)| k).collect();
    for want in [
        "streaming_decode",
        "h2o_decode",
        "snapkv_select",
        "quest_decode",
        "dense_decode",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "selection kernel `{want}` is not shipped (have {names:?})"
        );
    }
    let attention: Vec<String> = kernels().into_iter().map(|(_, k)| k).collect();
    assert!(attention.iter().any(|n| n == "streaming_prefill"));
}

#[test]
fn selection_spec_and_plan_snapshots() {
    for (src, k) in selection_kernels() {
        for (stage, name) in [(Stage::Spec, "spec"), (Stage::Plan, "plan")] {
            let (text, warnings) = driver::emit(&src, stage, Some(&k), &[])
                .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
            assert!(warnings.is_empty(), "{k}: {}", src.render(&warnings, false));
            insta::assert_snapshot!(format!("{name}__{k}"), text);
        }
    }
}

/// The plan's byte counts against the arithmetic of docs/kv-selection.md: at B = 8,
/// 8 KV heads, head dim 128, bf16 and 131072 tokens, dense decode reads 4 GiB; Quest at
/// P = 16 reads its metadata (6.25% of K + V, 256 MiB) and 4096 tokens of K and V (128 MiB).
#[test]
fn quest_plan_bytes_follow_the_bandwidth_arithmetic() {
    let src = Source::load(&root().join("kernels/quest.attn")).unwrap();
    let (fe, _) = driver::frontend(&src).unwrap();
    let (spec, _) = driver::select_spec(&fe, "quest_decode", &[]).unwrap();
    let plan = attnc::select::plan::plan(&spec);
    assert_eq!(plan.dense_bytes, 4 << 30);
    let score = &plan.steps[0];
    assert_eq!(score.name, "score");
    // kmax + kmin, plus the queries (8 x 32 x 128 bf16).
    assert_eq!(score.read, (256 << 20) + 8 * 32 * 128 * 2);
    let attend = plan.steps.iter().find(|s| s.name == "attend").unwrap();
    // K and V of 256 pages x 16 tokens, plus the index lists and the queries.
    assert_eq!(
        attend.read,
        (128 << 20) + 8 * 8 * 256 * 4 + 8 * 32 * 128 * 2
    );
    let ratio = plan.dense_bytes as f64 / plan.total_bytes() as f64;
    assert!((9.5..10.7).contains(&ratio), "ratio {ratio}");
    // Changing the page size through --set changes the metadata share.
    let sets = [Binding::parse("PAGE=64").unwrap()];
    let (spec64, _) = driver::select_spec(&fe, "quest_decode", &sets).unwrap();
    let p64 = attnc::select::plan::plan(&spec64);
    assert_eq!(p64.steps[0].read, (64 << 20) + 8 * 32 * 128 * 2);
}

/// language.md §12's per-layer schedule: the PyramidKV budgets fall linearly from
/// 2 BUDGET - TOP in layer 0 to TOP in the last layer, their mean BUDGET to within a token,
/// and a layer past the last is an error naming the budget it would get.
#[test]
fn a_pyramid_budget_schedule_is_a_budget_expression() {
    let src = Source::new(
        "pyramid.attn",
        "select pyramid {
           param BUDGET = 1024, LAYER = 0, LAYERS = 32, TOP = BUDGET / 8;
           source exact;
           keep sinks 4, recent 64;
           budget 2 * BUDGET - TOP - 2 * (BUDGET - TOP) * LAYER / (LAYERS - 1) tokens;
         }
         kernel pyramid_decode = decode(pyramid) { heads 16; kv_heads 4; head_dim 64; CONTEXT = 8192; }",
    );
    let (fe, _) = driver::frontend(&src).unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
    let budget = |layer: i64| {
        let sets = [Binding::parse(&format!("LAYER={layer}")).unwrap()];
        driver::select_spec(&fe, "pyramid_decode", &sets).map(|(s, _)| s.capacity())
    };
    let budgets: Vec<u32> = (0..32).map(|l| budget(l).expect("a budget")).collect();
    assert_eq!((budgets[0], budgets[15], budgets[31]), (1920, 1053, 128));
    assert!(budgets.windows(2).all(|w| w[0] > w[1]), "{budgets:?}");
    let mean = budgets.iter().map(|&b| f64::from(b)).sum::<f64>() / 32.0;
    assert!((mean - 1024.0).abs() < 1.0, "mean {mean}");
    let err = budget(40).unwrap_err();
    let text = src.render(&err, false);
    assert!(
        text.contains("E0808") && text.contains("the budget is -392"),
        "{text}"
    );
}

/// `--tune` tries the score warps' page rows only where there is a page-bound score: 18
/// launch shapes for Quest, 6 for exact scores (the same 6 for every row count otherwise).
#[test]
fn decode_tuning_candidates_follow_the_source() {
    use attnc::codegen::nvptx::decode::Tuning;
    let count = |file: &str, kernel: &str| {
        let src = Source::load(&root().join(file)).unwrap();
        let (fe, _) = driver::frontend(&src).unwrap();
        let (spec, _) = driver::select_spec(&fe, kernel, &[]).unwrap();
        let c = Tuning::candidates_for(&spec);
        assert!(
            c.contains(&Tuning::default()),
            "{kernel}: the default is a candidate"
        );
        c.len()
    };
    assert_eq!(count("kernels/quest.attn", "quest_decode"), 18);
    assert_eq!(count("kernels/exact.attn", "exact_decode"), 6);
    assert_eq!(count("kernels/streaming.attn", "streaming_decode"), 6);
}

/// A shipped attention kernel, compiled with its defaults.
fn compiled(file: &str, kernel: &str) -> driver::Compiled {
    let src = Source::load(&root().join(file)).unwrap();
    let (fe, _) = driver::frontend(&src).unwrap();
    let k = driver::find_kernel(&fe.program, kernel).unwrap();
    driver::compile_kernel(&fe.program, k, &[]).unwrap()
}

/// The attention kernel's launch shapes: names round-trip, wgmma shapes only where asked
/// for, tensor copies only where a key tile's rows are consecutive (tiled token order),
/// and the shapes the CUDA backend cannot build are errors that say why.
#[test]
fn attention_shapes_follow_the_gpu_and_the_token_order() {
    use attnc::codegen::nvptx::attention::{candidates, config_for, gpu_default, Tuning};
    use attnc::codegen::nvptx::{compile_tuned, Arch};
    let shape = |s: &str| Tuning::parse(s).unwrap_or_else(|| panic!("{s}"));
    for (file, kernel, tiled) in [
        ("kernels/grat.attn", "grat_b_2d", true),
        ("kernels/natten.attn", "na_2d", false),
    ] {
        let c = compiled(file, kernel);
        let geo = &c.schedule.geom;
        let all = candidates(&c.ir, geo, true);
        for t in &all {
            assert_eq!(Tuning::parse(&t.name()), Some(*t), "{kernel}");
        }
        assert!(all.iter().any(|t| t.wgmma), "{kernel}");
        assert_eq!(all.iter().any(|t| t.tma), tiled, "{kernel}");
        // Where tensor copies fit, every shape after the default (the yardstick) uses them.
        assert_eq!(all.iter().skip(1).all(|t| t.tma), tiled, "{kernel}");
        assert!(all.iter().any(|t| t.overlap) == tiled, "{kernel}");
        for ws in [
            "128x128-wgmma-tma-ws",
            "128x128-wgmma-tma-ws-ovl",
            "128x128-wgmma-tma-ws-ovl-pers",
            "128x128-wgmma-tma-ws-ovl-pers-c4",
            "128x128-wgmma-tma-ws-ovl-pers-lpt",
            "128x128-wgmma-tma-ws-ovl-pers-lpt-c4",
        ] {
            assert_eq!(all.contains(&shape(ws)), tiled, "{kernel} {ws}");
        }
        assert!(candidates(&c.ir, geo, false).iter().all(|t| !t.wgmma));
        let want = if tiled {
            "64x64-wgmma-tma"
        } else {
            "64x64-wgmma"
        };
        assert_eq!(gpu_default(&c.ir, geo, true), shape(want), "{kernel}");
        assert_eq!(gpu_default(&c.ir, geo, false).name(), "64x32", "{kernel}");
        if !tiled {
            let err =
                compile_tuned(&c.ir, geo, &[], Arch::Sm90, shape("64x64-wgmma-tma")).unwrap_err();
            assert!(err.contains("need the tiled token order"), "{err}");
        }
    }
    let c = compiled("kernels/grat.attn", "grat_b_2d");
    let err = compile_tuned(
        &c.ir,
        &c.schedule.geom,
        &[],
        Arch::Sm80,
        shape("64x64-wgmma"),
    )
    .unwrap_err();
    assert_eq!(
        err,
        "block shape 64x64-wgmma needs sm_90 (wgmma), not sm_80"
    );
    let err = config_for(&c.ir, shape("96x64-wgmma")).unwrap_err();
    assert!(err.contains("64 or 128 rows"), "{err}");
    let err = config_for(&c.ir, shape("64x64-tma")).unwrap_err();
    assert!(err.contains("tensor copies need wgmma"), "{err}");
    // Warp specialisation: 128 rows with tensor copies only; listed as experimental
    // (the suite checks it, the tuner does not try it) where tensor copies fit.
    let ws = shape("128x64-wgmma-tma-ws");
    assert_eq!(ws.name(), "128x64-wgmma-tma-ws");
    assert!(ws.ws && ws.tma && !ws.overlap);
    let pp = shape("128x64-wgmma-tma-ws-pp");
    assert_eq!(pp.name(), "128x64-wgmma-tma-ws-pp");
    assert!(pp.ws && pp.pingpong);
    // The tuner's usual pick with its tiles launched longest first.
    let lpt = shape("64x64-wgmma-tma-lpt-x3");
    assert_eq!(lpt.name(), "64x64-wgmma-tma-lpt-x3");
    assert!(lpt.ordered && lpt.tma && lpt.blocks_per_sm == 3);
    assert_eq!(
        attnc::codegen::nvptx::attention::experimental(&c.ir, &c.schedule.geom, true),
        vec![
            ws,
            pp,
            shape("128x128-wgmma-tma-ws-pp"),
            shape("128x128-wgmma-tma-ws-pers"),
            shape("128x128-wgmma-tma-ws-pp-pers"),
            lpt
        ]
    );
    // The persistent kernel may walk each head's tiles in the launch order.
    let pers_lpt = shape("128x128-wgmma-tma-ws-ovl-pers-lpt-c4");
    assert!(pers_lpt.persistent && pers_lpt.ordered && pers_lpt.chains);
    // The persistent kernel: one block an SM walking the work items, warp-specialised only.
    let pers = shape("128x128-wgmma-tma-ws-pp-pers");
    assert!(pers.persistent && pers.pingpong && pers.ws);
    assert_eq!(pers.name(), "128x128-wgmma-tma-ws-pp-pers");
    let err = config_for(&c.ir, shape("128x128-wgmma-tma-ws-pp-pers-lpt")).unwrap_err();
    assert!(
        err.contains("work lists (-lpt) need the overlapped"),
        "{err}"
    );
    let err = config_for(&c.ir, shape("128x128-wgmma-tma-pers")).unwrap_err();
    assert!(
        err.contains("the persistent kernel is warp-specialised"),
        "{err}"
    );
    // The persistent overlapped kernel: separate K and V rings of two stages, two Q
    // buffers; its Q comes by tensor copies of K's box, so as many keys a chunk as rows.
    let ovl = shape("128x128-wgmma-tma-ws-ovl-pers");
    assert!(ovl.persistent && ovl.overlap && ovl.ws && !ovl.pingpong);
    assert_eq!(ovl.name(), "128x128-wgmma-tma-ws-ovl-pers");
    let ovl_smem = config_for(&c.ir, ovl).unwrap().smem_bytes;
    assert!(
        ovl_smem > 200 * 1024 && ovl_smem <= 227 * 1024,
        "{ovl_smem}"
    );
    let err = config_for(&c.ir, shape("128x64-wgmma-tma-ws-ovl-pers")).unwrap_err();
    assert!(err.contains("as many keys a chunk as rows"), "{err}");
    let names: Vec<&str> = config_for(&c.ir, ovl)
        .unwrap()
        .smem_regions()
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        names,
        [
            "K",
            "V",
            "Q",
            "key information",
            "query rows",
            "carried rows",
            "key walks",
            "mbarriers"
        ]
    );
    let pers_smem = config_for(&c.ir, pers).unwrap().smem_bytes;
    assert!(
        pers_smem > 160 * 1024 && pers_smem <= 227 * 1024,
        "{pers_smem}"
    );
    let err = config_for(&c.ir, shape("128x64-wgmma-tma-pp")).unwrap_err();
    assert!(err.contains("ping-pong needs warp specialisation"), "{err}");
    assert!(
        attnc::codegen::nvptx::attention::experimental(&c.ir, &c.schedule.geom, false).is_empty()
    );
    assert_eq!(config_for(&c.ir, ws).map(|c| c.threads()), Ok(384));
    for bad in ["64x64-wgmma-tma-ws", "128x64-wgmma-ws"] {
        let err = config_for(&c.ir, shape(bad)).unwrap_err();
        assert!(
            err.contains("warp specialisation is 128 rows with tensor copies"),
            "{err}"
        );
    }
    let err = config_for(&c.ir, shape("64x64-wgmma-ovl")).unwrap_err();
    assert!(
        err.contains("the overlapped loop needs tensor copies"),
        "{err}"
    );
    let err = config_for(&c.ir, shape("128x128-wgmma-x3")).unwrap_err();
    assert!(err.contains("do not fit an SM"), "{err}");
    for bad in [
        "",
        "64",
        "64x",
        "x64",
        "64x64-x0",
        "64x64-wgmma-x",
        "64x64-fast",
    ] {
        assert_eq!(Tuning::parse(bad), None, "{bad}");
    }
}

/// Every shape's shared-memory plan (every tuning candidate and experimental shape of three
/// kernels): regions in address order without overlap, inside the size the launch asks
/// for (less the 1024 bytes that align a wgmma kernel's base), mbarriers on 8 bytes, and
/// with wgmma the operand buffers on 1024 bytes (the 128-byte swizzle's period) with
/// stages of whole periods.
#[test]
fn shared_memory_plans_fit_and_do_not_overlap() {
    use attnc::codegen::nvptx::attention::{candidates, config_for, experimental};
    for (file, kernel) in [
        ("kernels/grat.attn", "grat_b_2d"),
        ("kernels/natten.attn", "na_2d"),
        ("kernels/dense.attn", "causal"),
    ] {
        let c = compiled(file, kernel);
        let geo = &c.schedule.geom;
        for t in candidates(&c.ir, geo, true)
            .into_iter()
            .chain(experimental(&c.ir, geo, true))
        {
            let cfg = config_for(&c.ir, t).unwrap();
            let what = format!("{kernel} {}", t.name());
            let regions = cfg.smem_regions();
            for pair in regions.windows(2) {
                assert!(pair[0].2 <= pair[1].1, "{what}: {pair:?} overlap");
            }
            let end = regions.last().map_or(0, |r| r.2);
            let align = if t.wgmma { 1024 } else { 0 };
            assert!(
                end + align <= cfg.smem_bytes,
                "{what}: {end} + {align} > {}",
                cfg.smem_bytes
            );
            for (name, start, stop) in &regions {
                if *name == "mbarriers" {
                    assert_eq!(start % 8, 0, "{what}: {name} at {start}");
                }
                if t.wgmma && matches!(*name, "K" | "V" | "Q") {
                    assert_eq!(start % 1024, 0, "{what}: {name} at {start}");
                    assert_eq!((stop - start) % 1024, 0, "{what}: {name} {start}..{stop}");
                }
            }
        }
    }
}
