//! Every shipped kernel's PTX, for sm_80 and sm_90, assembles with ptxas (NVIDIA's wheel,
//! no GPU needed) with zero bytes of spill stores; and a snapshot of one small kernel's
//! LLVM IR. `./test.sh` names ptxas in ATTNC_PTXAS; without it the ptxas test says it was
//! skipped.

use std::process::Command;

use attnc::codegen::nvptx::attention::Tuning;
use attnc::codegen::nvptx::Arch;
use attnc::driver::{self, Source, Stage};
use attnc::sema::instantiate::Binding;
use attnc_tests::{kernel_files, root};

/// A folder for one test's PTX and cubins: removed when the test passes, kept (its path in
/// the failure message) when it fails.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("attnc-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Writes `ptx` to `file`, assembles it with ptxas for `arch` (a cubin beside it) and
/// returns ptxas's verbose log; panics with the log when ptxas fails.
fn assemble(ptxas: &str, arch: Arch, file: &std::path::Path, ptx: &str) -> String {
    std::fs::write(file, ptx).expect("write ptx");
    let out = Command::new(ptxas)
        .arg(format!("-arch={}", arch.name()))
        .arg("-v")
        .arg(file)
        .arg("-o")
        .arg(file.with_extension("cubin"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {ptxas}: {e}"));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{} {}: ptxas failed:\n{log}",
        file.display(),
        arch.name()
    );
    log
}

/// Every entry of a decode module assembled without spills and fits its block on an SM
/// (64K registers: a 1024-thread block may use 64 registers a thread, or the launch fails).
fn assert_entries_fit(
    log: &str,
    entries: &[attnc::codegen::nvptx::decode::DecodeEntry],
    what: &str,
) {
    assert_eq!(
        log.matches("0 bytes spill stores").count(),
        entries.len(),
        "{what}: spills:\n{log}"
    );
    for e in entries {
        let regs = registers_of(log, &e.name);
        assert!(
            regs * e.block <= 65536,
            "{what}: {} uses {regs} registers x {} threads",
            e.name,
            e.block
        );
    }
}

/// The ptxas `./test.sh` names in ATTNC_PTXAS, or `None` after saying the test is skipped.
fn ptxas() -> Option<String> {
    let p = std::env::var("ATTNC_PTXAS").ok();
    if p.is_none() {
        eprintln!("skipped: ATTNC_PTXAS is not set (./test.sh installs ptxas from the nvidia-cuda-nvcc-cu12 wheel)");
    }
    p
}

/// The registers per thread ptxas reports for `entry` in a `-v` log.
fn registers_of(log: &str, entry: &str) -> u32 {
    let from = log
        .find(&format!("entry function '{entry}'"))
        .unwrap_or_else(|| panic!("{entry} is not in the ptxas log:\n{log}"));
    let rest = &log[from..];
    let at = rest.find("Used ").expect("a register count") + 5;
    rest[at..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number of registers")
}

#[test]
fn every_shipped_kernel_assembles_without_spills() {
    let Some(ptxas) = ptxas() else {
        return;
    };
    let scratch = Scratch::new("ptxas");
    let dir = &scratch.0;
    let mut n = 0;
    for path in kernel_files() {
        let src = Source::load(&path).expect("kernel file");
        let (fe, _) = driver::frontend(&src).expect("frontend");
        for k in &fe.program.kernels {
            for arch in [Arch::Sm80, Arch::Sm90] {
                let (ptx, _) = driver::emit_for(&src, Stage::Ptx, Some(&k.name), &[], arch)
                    .unwrap_or_else(|d| panic!("{}: {}", k.name, src.render(&d, false)));
                assert!(
                    ptx.contains(&format!(".target {}", arch.name())),
                    "{}: no .target line",
                    k.name
                );
                assert!(ptx.contains(".version 8.0"), "{}: PTX version", k.name);
                let file = dir.join(format!("{}_{}.ptx", k.name, arch.name()));
                let log = assemble(&ptxas, arch, &file, &ptx);
                assert!(
                    log.contains("0 bytes spill stores"),
                    "{} {}: spills:\n{log}",
                    k.name,
                    arch.name()
                );
                assert!(
                    ptx.contains("mma.sync.aligned.m16n8k16"),
                    "{}: tensor-core mma",
                    k.name
                );
                assert!(
                    ptx.contains("ldmatrix.sync.aligned")
                        && ptx.contains("cp.async.cg.shared.global"),
                    "{}",
                    k.name
                );
                eprintln!(
                    "{} {}: {}",
                    k.name,
                    arch.name(),
                    log.lines().find(|l| l.contains("registers")).unwrap_or("")
                );
                n += 1;
            }
        }
    }
    assert_eq!(n, 18, "9 shipped attention kernels x 2 architectures");
}

#[test]
fn llvm_ir_snapshot_of_a_small_kernel() {
    let src = Source::load(&root().join("kernels/dense.attn")).expect("dense.attn");
    let sets: Vec<Binding> = ["N=64", "TILE=64", "HEADS=1", "HEAD_DIM=64"]
        .iter()
        .map(|s| Binding::parse(s).unwrap())
        .collect();
    let (llvm, _) = driver::emit_for(&src, Stage::Llvm, Some("dense"), &sets, Arch::Sm90)
        .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
    assert!(
        llvm.contains("ptx_kernel"),
        "the entry has calling convention ptx_kernel"
    );
    insta::assert_snapshot!("llvm__dense_n64", llvm);
}

#[test]
fn unsupported_head_dims_are_a_diagnostic() {
    let src = Source::load(&root().join("kernels/dense.attn")).expect("dense.attn");
    let sets = [Binding::parse("HEAD_DIM=96").unwrap()];
    let err = driver::emit_for(&src, Stage::Ptx, Some("dense"), &sets, Arch::Sm90).unwrap_err();
    let text = src.render(&err, false);
    assert!(
        text.contains(
            "error[E0701]: head_dim 96 is not supported by the CUDA backend yet (64 or 128)"
        ),
        "{text}"
    );
}

/// Every block shape the autotuner may pick assembles, and the ones it may pick have no
/// spills (a shape that spills is dropped from the candidates by `tuning_candidates`).
#[test]
fn tuning_candidates_assemble() {
    let Some(ptxas) = ptxas() else {
        return;
    };
    let scratch = Scratch::new("tune");
    let dir = &scratch.0;
    for (file, kernel) in [
        ("grat.attn", "grat_b_2d"),
        ("natten.attn", "na_2d"),
        ("dense.attn", "causal"),
    ] {
        let src = Source::load(&root().join("kernels").join(file)).expect("kernel");
        let (fe, _) = driver::frontend(&src).expect("frontend");
        let k = driver::find_kernel(&fe.program, kernel).expect("kernel");
        let c = driver::compile_kernel(&fe.program, k, &[]).expect("compiles");
        let geo = &c.schedule.geom;
        let shapes = attnc::codegen::nvptx::attention::candidates(&c.ir, geo, true)
            .into_iter()
            .chain(attnc::codegen::nvptx::attention::experimental(
                &c.ir, geo, true,
            ));
        for t in shapes {
            let m = attnc::codegen::nvptx::compile_tuned(
                &c.ir,
                &c.schedule.geom,
                &c.spec.inputs,
                Arch::Sm90,
                t,
            )
            .expect("ptx");
            assert_eq!(m.arch, if t.wgmma { Arch::Sm90a } else { Arch::Sm90 });
            assert_eq!(Tuning::parse(&t.name()), Some(t));
            let file = dir.join(format!("{kernel}_{}.ptx", t.name()));
            let log = assemble(&ptxas, m.arch, &file, &m.ptx);
            eprintln!(
                "{kernel} {}: {}",
                t.name(),
                log.lines()
                    .filter(|l| l.contains("registers") || l.contains("spill"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            // ptxas says so when it has to serialise wgmma (a fence or register it cannot
            // prove): the shape would run, slowly.
            assert!(!log.contains("wgmma"), "{kernel} {}: {log}", t.name());
        }
    }
}

/// Every decode kernel the CUDA backend covers (and every tuning candidate of it)
/// assembles for sm_80 and sm_90 without spills; the entries are the five of the decode
/// module (four without scores), with read-only loads.
#[test]
fn decode_kernels_assemble_without_spills() {
    use attnc::codegen::nvptx::decode::{self, Tuning};
    let Some(ptxas) = ptxas() else {
        return;
    };
    let scratch = Scratch::new("decode-ptxas");
    let dir = &scratch.0;
    let mut covered = vec![];
    for path in kernel_files() {
        let src = Source::load(&path).expect("kernel file");
        let (fe, _) = driver::frontend(&src).expect("frontend");
        for name in driver::kernel_names(&fe) {
            if fe.program.kernel_by_name(&name).is_some() {
                continue; // attention kernels: the test above
            }
            let (spec, _) = driver::select_spec(&fe, &name, &[]).expect("spec");
            if decode::gpu_support(&spec).is_err() {
                continue;
            }
            for arch in [Arch::Sm80, Arch::Sm90] {
                for t in Tuning::candidates_for(&spec) {
                    let m = decode::compile_tuned(&spec, arch, t)
                        .unwrap_or_else(|e| panic!("{name} {}: {e}", t.label()));
                    let has = |r| usize::from(m.entry(r).is_some());
                    // topk, attend, combine and append; score for page bounds and exact
                    // scores; logits for exact scores.
                    let (score, logits) = (has(decode::Role::Score), has(decode::Role::Logits));
                    // The top-k: one entry, or for scored lists of more than 8192 units three
                    // radix passes and an emission (exact scores count the first digit in
                    // their score entry: one pass fewer).
                    let topk = m
                        .entries
                        .iter()
                        .filter(|e| e.role == decode::Role::TopK)
                        .count();
                    let exact = spec.source == attnc::select::spec::Source::Exact;
                    let wide =
                        spec.source != attnc::select::spec::Source::None && spec.units() > 8192;
                    let want = if wide { 4 - usize::from(exact) } else { 1 };
                    assert_eq!(topk, want, "{name}");
                    // H2O's state update after the attention (its logits in an entry of
                    // their own with `split_update`).
                    let update = m
                        .entries
                        .iter()
                        .filter(|e| e.role == decode::Role::Accumulate)
                        .count();
                    let h2o = spec.source == attnc::select::spec::Source::Accumulated;
                    assert_eq!(
                        update,
                        usize::from(h2o) * (1 + usize::from(t.split_update)),
                        "{name} {}",
                        t.label()
                    );
                    // SnapKV (select-only): no attention, combine or append; a pooling
                    // entry when it pools.
                    let window = matches!(spec.source, attnc::select::spec::Source::Window { .. });
                    let pool = has(decode::Role::Pool);
                    assert_eq!(
                        pool,
                        usize::from(window && spec.pool != attnc::select::spec::Pool::None),
                        "{name}"
                    );
                    assert_eq!(
                        m.entries.len(),
                        3 * usize::from(!window) + topk + score + logits + update + pool,
                        "{name}"
                    );
                    assert_eq!(logits, usize::from(exact || window), "{name}");
                    assert!(m.ptx.contains("ld.global.nc"), "{name}: read-only loads");
                    let file = dir.join(format!("{name}_{}.ptx", arch.name()));
                    let log = assemble(&ptxas, arch, &file, &m.ptx);
                    let what = format!("{name} {} {}", arch.name(), t.label());
                    assert_entries_fit(&log, &m.entries, &what);
                }
            }
            covered.push(name);
        }
    }
    covered.sort();
    assert_eq!(
        covered,
        [
            "dense_decode",
            "exact_decode",
            "h2o_decode",
            "quest_decode",
            "snapkv_select",
            "streaming_decode"
        ],
        "the decode kernels the CUDA backend covers"
    );
}

#[test]
fn cpu_only_selection_kernels_say_so() {
    let path = root().join("tests/fixtures/ok/kv_selection_policies.attn");
    let src = Source::load(&path).expect("kv_selection_policies.attn");
    let err = driver::emit_for(&src, Stage::Ptx, Some("snap_select"), &[], Arch::Sm90).unwrap_err();
    let text = src.render(&err, false);
    assert!(
        text.contains("error[E0812]: `snap_select` runs on the CPU only so far: the CUDA backend has no `window` scoring with scores shared across KV heads yet"),
        "{text}"
    );
    assert!(text.contains("run it with --backend cpu"), "{text}");
}

/// Decode shapes the shipped kernels do not have: Quest over more than 8192 pages (the
/// multi-block top-k with its own first pass), exact scores over a context that is not a
/// multiple of the top-k's 32768-unit blocks, and over one block per list; external
/// scores; H2O's update with the max and mean head reductions. Every entry assembles
/// without spills and fits its block.
#[test]
fn decode_variants_assemble_and_fit() {
    use attnc::codegen::nvptx::decode::{self, Role};
    use attnc::select::spec::{HeadReduce, Reduce};
    let Some(ptxas) = ptxas() else {
        return;
    };
    let scratch = Scratch::new("decode-variants");
    let dir = &scratch.0;
    // External scores (a fixture: no shipped kernel takes them): the top-k alone, or the
    // multi-block one with its own first pass.
    let external = "tests/fixtures/ok/kv_selection_policies.attn";
    for (file, kernel, set, topk_entries) in [
        ("kernels/quest.attn", "quest_decode", "CONTEXT=262144", 4),
        ("kernels/exact.attn", "exact_decode", "CONTEXT=100000", 3),
        ("kernels/exact.attn", "exact_decode", "CONTEXT=16384", 3),
        ("kernels/exact.attn", "exact_decode", "CONTEXT=4096", 1),
        (external, "indexer_decode", "CONTEXT=8192", 1),
        (external, "indexer_decode", "CONTEXT=131072", 4),
    ] {
        let spec = attnc_tests::select_spec(file, kernel, &[set]);
        let m =
            decode::compile(&spec, Arch::Sm90).unwrap_or_else(|e| panic!("{kernel} {set}: {e}"));
        let topk = m.entries.iter().filter(|e| e.role == Role::TopK).count();
        assert_eq!(topk, topk_entries, "{kernel} {set}");
        if spec.source == attnc::select::spec::Source::External {
            // No score or logits entry: the top-k reads the scores set from outside.
            let roles: Vec<Role> = m.entries.iter().map(|e| e.role).collect();
            assert!(!roles.contains(&Role::Score) && !roles.contains(&Role::Logits));
        }
        let file = dir.join(format!("{kernel}_{}.ptx", set.replace('=', "_")));
        let log = assemble(&ptxas, Arch::Sm90, &file, &m.ptx);
        assert_entries_fit(&log, &m.entries, &format!("{kernel} {set}"));
    }
    // SnapKV's window scores with the other row and head reductions and pooling choices,
    // in f16, over a context whose lists fit the one-block top-k: every entry assembles
    // and fits.
    use attnc::select::spec::Pool;
    for (set, rows, heads, pool, f16) in [
        (
            "CONTEXT=4096",
            Reduce::Mean,
            Reduce::Max,
            Pool::Max { size: 5 },
            true,
        ),
        (
            "CONTEXT=100000",
            Reduce::Max,
            Reduce::Mean,
            Pool::None,
            false,
        ),
        (
            "CONTEXT=8192",
            Reduce::Sum,
            Reduce::Sum,
            Pool::Avg { size: 3 },
            false,
        ),
        // Other head dims: 8 and 2 lanes a lane group.
        (
            "CONTEXT=8192 D=64",
            Reduce::Sum,
            Reduce::Sum,
            Pool::None,
            false,
        ),
        (
            "CONTEXT=8192 D=16",
            Reduce::Sum,
            Reduce::Sum,
            Pool::None,
            false,
        ),
        // 2^32 logits: computed twice instead of stored.
        (
            "CONTEXT=1048576 BATCH=1 WINDOW=128",
            Reduce::Sum,
            Reduce::Sum,
            Pool::Avg { size: 7 },
            false,
        ),
    ] {
        let sets: Vec<&str> = set.split(' ').filter(|b| !b.starts_with("D=")).collect();
        let mut spec = attnc_tests::select_spec("kernels/snapkv.attn", "snapkv_select", &sets);
        if let Some(d) = set.split(' ').find_map(|b| b.strip_prefix("D=")) {
            spec.head_dim = d.parse().expect("head dim");
        }
        spec.rows = rows;
        spec.heads = HeadReduce::PerKvGroup(heads);
        spec.pool = pool;
        if f16 {
            spec.dtype = attnc::sema::program::DType::F16;
        }
        let m = decode::compile(&spec, Arch::Sm90).unwrap_or_else(|e| panic!("{set}: {e}"));
        let roles: Vec<Role> = m.entries.iter().map(|e| e.role).collect();
        assert_eq!(roles.contains(&Role::Pool), pool != Pool::None, "{set}");
        assert_eq!(m.window_logits == 0, set.contains("WINDOW=128"), "{set}");
        assert!(!roles.contains(&Role::Attend), "{set}");
        let what = format!("snapkv_select {set} {rows:?} {heads:?} {pool:?}");
        let file = dir.join(format!("snapkv_{}.ptx", set.replace(['=', ' '], "_")));
        let log = assemble(&ptxas, Arch::Sm90, &file, &m.ptx);
        assert_entries_fit(&log, &m.entries, &what);
    }
    // H2O's update with the other head reductions (the shipped kernel sums), in one entry
    // and split.
    let h2o = attnc_tests::select_spec("kernels/h2o.attn", "h2o_decode", &[]);
    for op in [Reduce::Max, Reduce::Mean] {
        for split_update in [false, true] {
            let mut spec = h2o.clone();
            spec.heads = HeadReduce::PerKvGroup(op);
            let t = decode::Tuning {
                split_update,
                ..decode::Tuning::default()
            };
            let m = decode::compile_tuned(&spec, Arch::Sm90, t).expect("h2o variant");
            let what = format!("h2o_decode {op:?} {}", t.label());
            let file = dir.join(format!("h2o_{op:?}_{split_update}.ptx"));
            let log = assemble(&ptxas, Arch::Sm90, &file, &m.ptx);
            assert_entries_fit(&log, &m.entries, &what);
        }
    }
}
