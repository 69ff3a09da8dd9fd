//! The `attnc` binary end to end: exit codes, outputs, files written.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

fn attnc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_attnc"))
}

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attnc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.arg("--color=never").output().expect("attnc runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_kernels() {
    for f in ["grat", "sta", "natten", "dense"] {
        let (code, _, err) = run(attnc()
            .args(["check"])
            .arg(repo(&format!("kernels/{f}.attn"))));
        assert_eq!(code, 0, "{f}: {err}");
        assert!(err.contains("ok:"), "{err}");
    }
}

#[test]
fn check_exits_1_with_a_located_diagnostic() {
    let p = tmp("bad.attn");
    std::fs::write(&p, "layout l { canvas (8, 8); tile (4, 4) }\n").expect("write");
    let (code, _, err) = run(attnc().arg("check").arg(&p));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.attn:1:39"), "{err}");
    assert!(err.contains("expected `;`"), "{err}");
    assert!(err.contains('^'), "{err}");
}

#[test]
fn missing_file_and_bad_arguments_exit_2() {
    let (code, _, err) = run(attnc().args(["check", "/nonexistent/x.attn"]));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    let (code, _, err) = run(attnc().arg("explain").arg(repo("kernels/grat.attn")).args([
        "--kernel",
        "grat_b_2d",
        "--set",
        "oops",
    ]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(attnc().arg("explain").arg(repo("kernels/grat.attn")));
    assert_eq!(code, 2, "several kernels need --kernel: {err}");
    assert!(err.contains("grat_b_2d"), "{err}");
}

#[test]
fn unknown_parameter_on_the_command_line_is_an_error() {
    let (code, _, err) = run(attnc().arg("explain").arg(repo("kernels/grat.attn")).args([
        "--kernel",
        "grat_b_2d",
        "--set",
        "RR=2",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("has no parameter `RR`"), "{err}");
    assert!(err.contains("did you mean `R`?"), "{err}");
}

#[test]
fn explain_reports_the_flexattention_densities() {
    let base = ["--set", "H=128", "--set", "W=128", "--set", "TEXT=0"];
    let (code, out, err) = run(attnc()
        .arg("explain")
        .arg(repo("kernels/grat.attn"))
        .args(["--kernel", "grat_b_2d", "--set", "R=1"])
        .args(base));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("density 0.0618"), "{out}");
    let (_, out, _) = run(attnc()
        .arg("explain")
        .arg(repo("kernels/grat.attn"))
        .args(["--kernel", "grat_x_2d"])
        .args(base));
    assert!(out.contains("density 0.1797"), "{out}");
}

#[test]
fn explain_writes_a_png() {
    let p = tmp("mask.png");
    let (code, out, err) = run(attnc()
        .arg("explain")
        .arg(repo("kernels/natten.attn"))
        .arg("--png")
        .arg(&p));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tile mask written"), "{out}");
    let bytes = std::fs::read(&p).expect("png written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn compile_emits_every_stage_and_writes_files() {
    for stage in ["ast", "spec", "schedule", "ir", "dot"] {
        let (code, out, err) = run(attnc()
            .arg("compile")
            .arg(repo("kernels/dense.attn"))
            .args(["--kernel", "causal", "--emit", stage]));
        assert_eq!(code, 0, "{stage}: {err}");
        assert!(!out.is_empty(), "{stage} printed nothing");
    }
    let p = tmp("ir.txt");
    let (code, _, err) = run(attnc()
        .arg("compile")
        .arg(repo("kernels/dense.attn"))
        .args(["--kernel", "dense", "-o"])
        .arg(&p));
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&p)
        .expect("written")
        .starts_with("kernel dense"));
}

#[test]
fn non_utf8_input_is_a_clear_error() {
    let p = tmp("binary.attn");
    std::fs::write(&p, [0x66u8, 0x6f, 0xff, 0xfe]).expect("write");
    let (code, _, err) = run(attnc().arg("check").arg(&p));
    assert_eq!(code, 2);
    assert!(err.contains("not UTF-8"), "{err}");
}

/// `--q Q --k K [--v V]` on an `attnc run` command.
trait Tensors {
    fn qk(&mut self, q: impl AsRef<OsStr>, k: impl AsRef<OsStr>) -> &mut Self;
    fn qkv(
        &mut self,
        q: impl AsRef<OsStr>,
        k: impl AsRef<OsStr>,
        v: impl AsRef<OsStr>,
    ) -> &mut Self;
}

impl Tensors for Command {
    fn qk(&mut self, q: impl AsRef<OsStr>, k: impl AsRef<OsStr>) -> &mut Self {
        self.arg("--q").arg(q).arg("--k").arg(k)
    }

    fn qkv(
        &mut self,
        q: impl AsRef<OsStr>,
        k: impl AsRef<OsStr>,
        v: impl AsRef<OsStr>,
    ) -> &mut Self {
        self.qk(q, k).arg("--v").arg(v)
    }
}

fn write_npy(name: &str, shape: &[usize], data: Vec<f32>) -> PathBuf {
    let p = tmp(name);
    attnc_runtime::npy::write(
        &p,
        &attnc_runtime::Tensor::new(shape.to_vec(), data).expect("tensor"),
    )
    .expect("npy written");
    p
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

const DENSE: [&str; 8] = [
    "--set",
    "N=96",
    "--set",
    "TILE=32",
    "--set",
    "HEADS=4",
    "--set",
    "HEAD_DIM=16",
];

#[test]
fn run_writes_the_output_and_matches_the_reference() {
    let shape = [1usize, 4, 96, 16];
    let n: usize = shape.iter().product();
    let (q, k, v) = (
        write_npy("q.npy", &shape, random(n, 1)),
        write_npy("k.npy", &shape, random(n, 2)),
        write_npy("v.npy", &shape, random(n, 3)),
    );
    let out = tmp("o.npy");
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(repo("kernels/dense.attn"))
        .args(["--kernel", "causal"])
        .args(DENSE)
        .qkv(&q, &k, &v)
        .arg("-o")
        .arg(&out));
    assert_eq!(code, 0, "{err}");
    let o = attnc_runtime::npy::read(&out).expect("output readable");
    assert_eq!(o.shape, shape.to_vec());
    // Against the reference.
    let src = attnc::driver::Source::load(&repo("kernels/dense.attn")).expect("source");
    let sets: Vec<_> = ["N=96", "TILE=32", "HEADS=4", "HEAD_DIM=16"]
        .iter()
        .map(|s| attnc::sema::instantiate::Binding::parse(s).unwrap())
        .collect();
    let c = attnc_runtime::cache::compile(&src, "causal", &sets).expect("compiles");
    let t = |p: &PathBuf| attnc_runtime::npy::read(p).expect("npy");
    let (qt, kt, vt) = (t(&q), t(&k), t(&v));
    let r = attnc_runtime::reference::attention(&c.spec, qt.view(), kt.view(), vt.view(), &[])
        .expect("reference");
    let max = r.iter().fold(0f64, |m, x| m.max(x.abs()));
    let err = o
        .data
        .iter()
        .zip(&r)
        .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
    assert!(err / max < 1e-5, "relative error {}", err / max);
}

#[test]
fn run_rejects_bad_inputs_with_exit_2() {
    let shape = [1usize, 4, 96, 16];
    let n: usize = shape.iter().product();
    let good = write_npy("good.npy", &shape, random(n, 4));
    let rank3 = write_npy("rank3.npy", &[4, 96, 16], random(n, 5));
    let heads2 = write_npy("heads2.npy", &[1, 2, 96, 16], random(n / 2, 6));
    let mut nan = random(n, 7);
    nan[100] = f32::NAN;
    let nan = write_npy("nan.npy", &shape, nan);
    let out = tmp("bad_out.npy");
    let case = |q: &PathBuf, k: &PathBuf| {
        run(attnc()
            .arg("run")
            .arg(repo("kernels/dense.attn"))
            .args(["--kernel", "dense"])
            .args(DENSE)
            .qkv(q, k, &good)
            .arg("-o")
            .arg(&out))
    };
    let (code, _, err) = case(&tmp("missing.npy"), &good);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read") && err.contains("missing.npy"),
        "{err}"
    );
    let (code, _, err) = case(&rank3, &good);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("q has 3 dimensions"), "{err}");
    let (code, _, err) = case(&good, &heads2);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("k has kv heads (KV_HEADS) = 2; expected 4"),
        "{err}"
    );
    let (code, _, err) = case(&nan, &good);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("q holds NaN at [0, 0, 6, 4]"), "{err}");
    let text = tmp("text.npy");
    std::fs::write(&text, "not a numpy file").expect("write");
    let (code, _, err) = case(&text, &good);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a .npy file"), "{err}");
}

#[test]
fn emit_clif_prints_cranelift_ir() {
    let (code, out, err) = run(attnc()
        .arg("compile")
        .arg(repo("kernels/dense.attn"))
        .args(["--kernel", "dense", "--emit", "clif", "--set", "N=64"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("function "),
        "{}",
        &out[..out.len().min(200)]
    );
    assert!(out.contains("f32x4"), "the kernel uses 4-wide vectors");
}

#[test]
fn check_and_explain_the_selection_kernels() {
    for f in ["streaming", "h2o", "snapkv", "quest", "exact"] {
        let (code, _, err) = run(attnc()
            .args(["check"])
            .arg(repo(&format!("kernels/{f}.attn"))));
        assert_eq!(code, 0, "{f}: {err}");
    }
    let (code, out, err) = run(attnc().arg("explain").arg(repo("kernels/quest.attn")));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("reads at most 4096 of 131072 cached tokens per sequence (3.12%)"),
        "{out}"
    );
    assert!(out.contains("dense decode reads 4.00 GiB"), "{out}");
    assert!(out.contains("  GPU: the CUDA backend runs it"), "{out}");
    let (code, out, err) = run(attnc().arg("explain").arg(repo("kernels/h2o.attn")));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  GPU: the CUDA backend runs it"), "{out}");
    let (code, out, err) = run(attnc().arg("explain").arg(repo("kernels/snapkv.attn")));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  GPU: the CUDA backend runs it"), "{out}");
    // 8 x 32 x 32 x 131072 f32 logits kept between the passes.
    assert!(
        out.contains("  GPU memory: the 32 window rows' logits are kept between two passes: 4.00 GiB of device memory"),
        "{out}"
    );
    // Window scores shared across KV heads have no GPU kernels: explain says so.
    let policies = repo("tests/fixtures/ok/kv_selection_policies.attn");
    let (code, out, err) = run(attnc()
        .arg("explain")
        .arg(&policies)
        .args(["--kernel", "snap_select"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "  GPU: runs on the CPU only so far: the CUDA backend has no `window` scoring with scores shared across KV heads yet"
        ),
        "{out}"
    );
    let (code, _, err) = run(attnc()
        .arg("explain")
        .arg(repo("kernels/quest.attn"))
        .args(["--png", "x.png"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no tile mask"), "{err}");
}

const QUEST_SMALL: [&str; 12] = [
    "--set",
    "CONTEXT=300",
    "--set",
    "BATCH=2",
    "--set",
    "HEADS=4",
    "--set",
    "KV_HEADS=2",
    "--set",
    "HEAD_DIM=16",
    "--set",
    "BUDGET=112",
];

#[test]
fn run_a_decode_kernel_writes_output_and_indices() {
    let (b, hq, hkv, d, n) = (2usize, 4usize, 2usize, 16usize, 250usize);
    let q = write_npy("dq.npy", &[b, hq, 1, d], random(b * hq * d, 4));
    let k = write_npy("dk.npy", &[b, hkv, n, d], random(b * hkv * n * d, 5));
    let v = write_npy("dv.npy", &[b, hkv, n, d], random(b * hkv * n * d, 6));
    let lens = tmp("lens.npy");
    attnc_runtime::npy::write_i32(&lens, &[2], &[250, 37]).expect("lens written");
    let (out, idx) = (tmp("do.npy"), tmp("didx.npy"));
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(repo("kernels/quest.attn"))
        .args(QUEST_SMALL)
        .qkv(&q, &k, &v)
        .arg("--input")
        .arg(format!("lens={}", lens.display()))
        .arg("-o")
        .arg(&out)
        .arg("--indices")
        .arg(&idx));
    assert_eq!(code, 0, "{err}");
    let o = attnc_runtime::npy::read(&out).expect("output");
    assert_eq!(o.shape, vec![b, hq, 1, d]);
    assert!(o.data.iter().all(|x| x.is_finite()));
    let (shape, ids) = attnc_runtime::npy::read_ints(&idx).expect("indices");
    // 112 tokens = 7 pages of 16 per list, one list per KV head.
    assert_eq!(shape, vec![b, hkv, 7]);
    // Sequence 0 (250 tokens, 16 pages): the sink page 0, the pages of the recent 64
    // tokens (11..=15, the last one partial) and the best other page; ascending.
    for s in 0..hkv {
        let row = &ids[s * 7..][..7];
        assert_eq!(row[0], 0, "{row:?}");
        assert!((1..=10).contains(&row[1]), "{row:?}");
        assert_eq!(&row[2..], &[11, 12, 13, 14, 15], "{row:?}");
    }
    // Sequence 1 (37 tokens = 3 pages) fits the budget: every page, then -1.
    for s in 0..hkv {
        assert_eq!(&ids[(hkv + s) * 7..][..7], &[0, 1, 2, -1, -1, -1, -1]);
    }
}

#[test]
fn run_a_selection_kernel_rejects_a_wrong_cache_shape() {
    let q = write_npy("sq.npy", &[2, 4, 1, 16], random(128, 7));
    let k = write_npy("sk.npy", &[2, 4, 50, 16], random(6400, 8));
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(repo("kernels/quest.attn"))
        .args(QUEST_SMALL)
        .qkv(&q, &k, &k)
        .arg("-o")
        .arg(tmp("so.npy")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expects [2, 2, tokens, 16]"), "{err}");
}

#[test]
fn bench_a_decode_kernel_reports_latency_and_fidelity() {
    let (code, out, err) = run(attnc()
        .arg("bench")
        .arg(repo("kernels/quest.attn"))
        .args(QUEST_SMALL)
        .args(["--runs", "2", "--json"]));
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for key in [
        "select_ms",
        "attend_ms",
        "dense_ms",
        "recall",
        "mass",
        "cosine",
    ] {
        assert!(j[key].as_f64().is_some(), "{key} missing: {out}");
    }
    let recall = j["recall"].as_f64().unwrap();
    let cosine = j["cosine"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&recall), "{out}");
    assert!(cosine > 0.5 && cosine <= 1.0 + 1e-9, "{out}");
    // The full-size default would need gigabytes of host memory: a clear error instead.
    let (code, _, err) = run(attnc().arg("bench").arg(repo("kernels/quest.attn")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--set CONTEXT="), "{err}");
}

#[test]
fn gpu_decode_requests_without_a_gpu_or_coverage_are_clear_errors() {
    // A kernel the CUDA backend does not cover (window scores shared across KV heads):
    // E0812 from the compiler, exit 1.
    let policies = repo("tests/fixtures/ok/kv_selection_policies.attn");
    let (code, _, err) = run(attnc().arg("compile").arg(&policies).args([
        "--kernel",
        "snap_select",
        "--emit",
        "ptx",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[E0812]: `snap_select` runs on the CPU only so far: the CUDA backend has no `window` scoring with scores shared across KV heads yet"),
        "{err}"
    );
    // The shipped SnapKV kernel compiles: statistics, scores, pooling and the top-k's
    // four entries (no separate count since the emission looks back), no attention.
    let (code, out, err) = run(attnc()
        .arg("compile")
        .arg(repo("kernels/snapkv.attn"))
        .args(["--kernel", "snapkv_select", "--emit", "ptx"]));
    assert_eq!(code, 0, "{err}");
    for e in ["stats", "score", "pool", "topk_pass0", "topk_emit"] {
        assert!(
            out.contains(&format!(".entry attnc_snapkv_select_{e}(")),
            "{e}"
        );
    }
    assert!(!out.contains("topk_count"), "the emission counts");
    assert!(
        !out.contains("attend"),
        "a select-only kernel never attends"
    );
    // A covered one compiles to PTX with its four entries.
    let (code, out, err) = run(attnc()
        .arg("compile")
        .arg(repo("kernels/quest.attn"))
        .args(["--kernel", "quest_decode", "--emit", "ptx"]));
    assert_eq!(code, 0, "{err}");
    for e in ["score", "topk", "attend", "combine"] {
        assert!(
            out.contains(&format!(".entry attnc_quest_decode_{e}")),
            "{e}"
        );
    }
    // --tune needs the GPU; --backend cuda needs a driver or says it is missing.
    let (code, _, err) = run(attnc()
        .arg("bench")
        .arg(repo("kernels/quest.attn"))
        .args(QUEST_SMALL)
        .arg("--tune"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--tune picks GPU launch shapes; it needs --backend cuda"),
        "{err}"
    );
    let (code, _, err) = run(attnc().arg("bench").arg(&policies).args([
        "--kernel",
        "snap_select",
        "--backend",
        "cuda",
        "--set",
        "CTX=1024",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`snap_select` runs on the CPU only so far"),
        "{err}"
    );
}

/// `--block` names a GPU launch shape: a malformed one, one the backend cannot build, or
/// one on the CPU backend is a usage error (exit 2), never a panic; `compile --block`
/// emits that shape's PTX (wgmma for sm_90a).
#[test]
fn block_shapes_are_checked() {
    let grat = repo("kernels/grat.attn");
    let (code, _, err) =
        run(attnc()
            .arg("bench")
            .arg(&grat)
            .args(["--kernel", "grat_b_2d", "--block", "64by64"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--block 64by64: expected ROWSxKEYS"), "{err}");
    let (code, _, err) =
        run(attnc()
            .arg("bench")
            .arg(&grat)
            .args(["--kernel", "grat_b_2d", "--block", "64x64"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("need --backend cuda"), "{err}");
    let (code, _, err) = run(attnc().arg("compile").arg(&grat).args([
        "--kernel",
        "grat_b_2d",
        "--emit",
        "ptx",
        "--block",
        "96x7",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--block 96x7: block shape 96x7 is not supported"),
        "{err}"
    );
    let (code, ptx, err) = run(attnc().arg("compile").arg(&grat).args([
        "--kernel",
        "grat_b_2d",
        "--emit",
        "ptx",
        "--block",
        "64x64-wgmma-tma",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(ptx.contains(".target sm_90a"), "{ptx}");
    assert_eq!(
        ptx.matches("wgmma.mma_async").count(),
        12,
        "8 k steps of S, 4 of P V"
    );
    assert_eq!(
        ptx.matches("cp.async.bulk.tensor.2d").count(),
        8,
        "prologue and loop"
    );
    // `run --block`: parsed as bench's, CUDA only, attention kernels only (both said
    // before any input is read or a GPU is looked for).
    let quest = repo("kernels/quest.attn");
    let missing = ["--q", "no-q.npy", "--k-file", "no-k.npy", "-o", "out.npy"];
    for (file, kernel, block, backend, want) in [
        (
            &grat,
            "grat_b_2d",
            "64by64",
            "cuda",
            "--block 64by64: expected ROWSxKEYS",
        ),
        (
            &grat,
            "grat_b_2d",
            "64x64",
            "cpu",
            "--block picks a GPU launch shape; it needs --backend cuda",
        ),
        (
            &quest,
            "quest_decode",
            "64x64",
            "cuda",
            "`quest_decode`: --block is for attention kernels",
        ),
    ] {
        let (code, _, err) = run(attnc().arg("run").arg(file).args(missing).args([
            "--kernel",
            kernel,
            "--block",
            block,
            "--backend",
            backend,
        ]));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn rep_ms_timing_is_checked() {
    let grat = repo("kernels/grat.attn");
    let bench = |extra: &[&str]| {
        let mut c = attnc();
        c.arg("bench").arg(&grat).args(["--kernel", "grat_b_2d"]);
        c.args(extra);
        run(&mut c)
    };
    let (code, _, err) = bench(&["--rep-ms", "100"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--rep-ms times attention kernels on the GPU; the CPU backend: use --runs"),
        "{err}"
    );
    let (code, _, err) = bench(&["--rep-ms", "0", "--backend", "cuda"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--rep-ms 0: give a positive number of milliseconds"),
        "{err}"
    );
    let (code, _, err) = bench(&["--rep-ms", "100", "--runs", "5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = run(attnc().arg("bench").arg(repo("kernels/quest.attn")).args([
        "--kernel",
        "quest_decode",
        "--rep-ms",
        "100",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`quest_decode` is a selection kernel: use --runs"),
        "{err}"
    );
}

#[test]
fn h2o_compiles_for_the_gpu_and_shared_state_says_it_runs_on_the_cpu() {
    // The shipped H2O kernel: the step's entries plus the state update.
    let (code, out, err) = run(attnc().arg("compile").arg(repo("kernels/h2o.attn")).args([
        "--kernel",
        "h2o_decode",
        "--emit",
        "ptx",
    ]));
    assert_eq!(code, 0, "{err}");
    for e in ["topk_pass0", "attend", "combine", "accumulate", "append"] {
        assert!(out.contains(&format!(".entry attnc_h2o_decode_{e}")), "{e}");
    }
    // One state shared by every head: the CPU only, with a located E0812.
    let path = tmp("h2o_shared.attn");
    std::fs::write(
        &path,
        "select hh { source accumulated; reduce heads: shared(sum); keep sinks 4, recent 64; budget 512 tokens; }\n\
         kernel h = decode(hh) { heads 8; kv_heads 2; head_dim 64; CONTEXT = 4096; }\n",
    )
    .expect("write");
    let (code, _, err) = run(attnc()
        .arg("compile")
        .arg(&path)
        .args(["--kernel", "h", "--emit", "ptx"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error[E0812]: `h` runs on the CPU only so far: the CUDA backend has no `accumulated` scoring with scores shared across KV heads yet"),
        "{err}"
    );
}

#[test]
fn h2o_state_goes_from_one_run_to_the_next() {
    let (b, hq, hkv, d, n) = (2usize, 4usize, 2usize, 16usize, 200usize);
    let src = tmp("h2o_small.attn");
    std::fs::write(
        &src,
        "select hh { source accumulated; keep sinks 2, recent 8; budget 32 tokens; }\n\
         kernel h = decode(hh) { heads 4; kv_heads 2; head_dim 16; batch 2; CONTEXT = 256; }\n",
    )
    .expect("write");
    let q = write_npy("hq.npy", &[b, hq, 1, d], random(b * hq * d, 41));
    let k = write_npy("hk.npy", &[b, hkv, n, d], random(b * hkv * n * d, 42));
    let v = write_npy("hv.npy", &[b, hkv, n, d], random(b * hkv * n * d, 43));
    let step = |acc_in: Option<&PathBuf>, acc_out: &PathBuf, idx: &PathBuf| {
        let mut c = attnc();
        c.arg("run").arg(&src).args(["--kernel", "h"]);
        c.qkv(&q, &k, &v);
        if let Some(a) = acc_in {
            c.arg("--input").arg(format!("acc={}", a.display()));
        }
        c.arg("-o").arg(tmp("ho.npy")).arg("--indices").arg(idx);
        c.arg("--acc-out").arg(acc_out);
        let (code, _, err) = run(&mut c);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("the accumulated state to"), "{err}");
    };
    let (a1, a2, i1, i2) = (
        tmp("acc1.npy"),
        tmp("acc2.npy"),
        tmp("i1.npy"),
        tmp("i2.npy"),
    );
    step(None, &a1, &i1);
    step(Some(&a1), &a2, &i2);
    let s1 = attnc_runtime::npy::read(&a1).expect("acc1");
    let s2 = attnc_runtime::npy::read(&a2).expect("acc2");
    assert_eq!(s1.shape, vec![b, hkv, 256]);
    // Each step adds, per list, one probability distribution per query head of the group.
    let g = (hq / hkv) as f64;
    for (r, (x1, x2)) in s1.data.chunks(256).zip(s2.data.chunks(256)).enumerate() {
        let sum = |x: &[f32]| x.iter().map(|v| *v as f64).sum::<f64>();
        assert!((sum(x1) - g).abs() < 1e-4, "list {r}: {}", sum(x1));
        assert!((sum(x2) - 2.0 * g).abs() < 1e-4, "list {r}: {}", sum(x2));
        assert!(x1.iter().zip(x2).all(|(a, b)| b >= a), "list {r}");
        assert!(
            x1[n..].iter().all(|v| *v == 0.0),
            "list {r}: no token past the cache"
        );
    }
    // The second step keeps, besides the 2 sinks and 8 recent tokens, the 22 tokens the
    // first step's state ranks highest (ties to the lower index).
    let (_, ids) = attnc_runtime::npy::read_ints(&i2).expect("indices");
    for (r, x1) in s1.data.chunks(256).enumerate() {
        let mut rest: Vec<usize> = (2..n - 8).collect();
        rest.sort_by(|a, c| x1[*c].total_cmp(&x1[*a]).then(a.cmp(c)));
        let mut want: Vec<i64> = (0..2).chain(n - 8..n).map(|j| j as i64).collect();
        want.extend(rest[..22].iter().map(|j| *j as i64));
        want.sort_unstable();
        assert_eq!(&ids[r * 32..][..32], &want[..], "list {r}");
    }
    // A kernel without a state has nothing to write.
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(repo("kernels/quest.attn"))
        .args(QUEST_SMALL)
        .qkv(tmp("dq.npy"), tmp("dk.npy"), tmp("dv.npy"))
        .arg("-o")
        .arg(tmp("x.npy"))
        .arg("--acc-out")
        .arg(tmp("y.npy")));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("keeps no accumulated state: --acc-out"),
        "{err}"
    );
}

/// Keyformer from the command line: the temperature follows `--input steps=FILE.npy`
/// (each sequence's decode steps so far), so the state a step adds changes with it; a
/// kernel without a schedule refuses the input, and a negative count is an error.
#[test]
fn keyformer_steps_come_from_an_input() {
    let (b, hq, hkv, d, n) = (2usize, 4usize, 2usize, 16usize, 200usize);
    let src = tmp("keyformer_small.attn");
    std::fs::write(
        &src,
        "select kf { source keyformer(tau = 0.5, tau_end = 4, steps = 8); keep sinks 2, recent 8; budget 32 tokens; }\n\
         kernel k = decode(kf) { heads 4; kv_heads 2; head_dim 16; batch 2; CONTEXT = 256; }\n",
    )
    .expect("write");
    let q = write_npy("kq.npy", &[b, hq, 1, d], random(b * hq * d, 51));
    let k = write_npy("kk.npy", &[b, hkv, n, d], random(b * hkv * n * d, 52));
    let v = write_npy("kv.npy", &[b, hkv, n, d], random(b * hkv * n * d, 53));
    let step = |steps: Option<&[i32]>, acc_out: &PathBuf| {
        let mut c = attnc();
        c.arg("run").arg(&src).args(["--kernel", "k"]);
        c.qkv(&q, &k, &v);
        if let Some(t) = steps {
            let f = tmp("ksteps.npy");
            attnc_runtime::npy::write_i32(&f, &[t.len()], t).expect("steps");
            c.arg("--input").arg(format!("steps={}", f.display()));
        }
        c.arg("-o").arg(tmp("ko.npy")).arg("--acc-out").arg(acc_out);
        run(&mut c)
    };
    let (a0, a0b, a5) = (tmp("kacc0.npy"), tmp("kacc0b.npy"), tmp("kacc5.npy"));
    for (steps, out) in [
        (None, &a0),
        (Some(&[0, 0][..]), &a0b),
        (Some(&[5, 5][..]), &a5),
    ] {
        let (code, _, err) = step(steps, out);
        assert_eq!(code, 0, "{err}");
    }
    let read = |p: &PathBuf| attnc_runtime::npy::read(p).expect("acc").data;
    // No input is step 0; another step is another temperature.
    assert_eq!(read(&a0), read(&a0b));
    assert_ne!(read(&a0), read(&a5));
    // Each step still adds one distribution per query head of a list.
    for x in read(&a5).chunks(256) {
        let sum: f64 = x.iter().map(|v| *v as f64).sum();
        assert!((sum - (hq / hkv) as f64).abs() < 1e-4, "{sum}");
    }
    let (code, _, err) = step(Some(&[-1, 0]), &tmp("kbad.npy"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("a step count of -1 is not a number of decode steps"),
        "{err}"
    );
    let (code, _, err) = step(Some(&[0, 0, 0]), &tmp("kbad.npy"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("steps `") && err.contains("expected [2]"),
        "{err}"
    );
    // H2O's plain state has no schedule.
    let h2o = tmp("h2o_steps.attn");
    std::fs::write(
        &h2o,
        "select hh { source accumulated; keep sinks 2, recent 8; budget 32 tokens; }\n\
         kernel h = decode(hh) { heads 4; kv_heads 2; head_dim 16; batch 2; CONTEXT = 256; }\n",
    )
    .expect("write");
    let f = tmp("hsteps.npy");
    attnc_runtime::npy::write_i32(&f, &[2], &[1, 1]).expect("steps");
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(&h2o)
        .args(["--kernel", "h"])
        .qkv(&q, &k, &v)
        .arg("--input")
        .arg(format!("steps={}", f.display()))
        .arg("-o")
        .arg(tmp("ho2.npy")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no temperature schedule"), "{err}");
}

/// `output compacted`: `attnc run --compacted DIR` writes the selected keys and values in
/// list order and the lengths; the flag is refused where the kernel says nothing of it.
#[test]
fn run_a_compacting_select_kernel_writes_the_smaller_cache() {
    let (b, hq, hkv, d, n, w) = (2usize, 4usize, 2usize, 16usize, 250usize, 8usize);
    let policies = repo("tests/fixtures/ok/kv_selection_policies.attn");
    let q = write_npy("cq.npy", &[b, hq, w, d], random(b * hq * w * d, 14));
    let kd = random(b * hkv * n * d, 15);
    let vd = random(b * hkv * n * d, 16);
    let k = write_npy("ck.npy", &[b, hkv, n, d], kd.clone());
    let v = write_npy("cv.npy", &[b, hkv, n, d], vd.clone());
    let lens = tmp("clens.npy");
    attnc_runtime::npy::write_i32(&lens, &[2], &[250, 40]).expect("lens written");
    let (idx, dir) = (tmp("cidx.npy"), tmp("compacted"));
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(&policies)
        .args(["--kernel", "snap_compact_select"])
        .qkv(&q, &k, &v)
        .arg("--input")
        .arg(format!("lens={}", lens.display()))
        .arg("-o")
        .arg(&idx)
        .arg("--compacted")
        .arg(&dir));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("the compacted cache [2, 2, 64, 16] (lengths [64, 40])"),
        "{err}"
    );
    let (shape, ids) = attnc_runtime::npy::read_ints(&idx).expect("indices");
    assert_eq!(shape, vec![b, hkv, 64]);
    let ck = attnc_runtime::npy::read(&dir.join("k.npy")).expect("k");
    let cv = attnc_runtime::npy::read(&dir.join("v.npy")).expect("v");
    let (lshape, clens) = attnc_runtime::npy::read_ints(&dir.join("lens.npy")).expect("lens");
    assert_eq!((ck.shape.clone(), lshape), (vec![b, hkv, 64, d], vec![b]));
    assert_eq!(clens, vec![64, 40]);
    // Every kept token's key and value, bf16-rounded as the cache holds them, in order.
    let bf = |x: f32| half::bf16::from_f32(x).to_f32();
    for bi in 0..b {
        for h in 0..hkv {
            let row = &ids[(bi * hkv + h) * 64..][..64];
            for (slot, j) in row.iter().filter(|j| **j >= 0).enumerate() {
                let src = ((bi * hkv + h) * n + *j as usize) * d;
                let dst = ((bi * hkv + h) * 64 + slot) * d;
                for t in 0..d {
                    assert_eq!(ck.data[dst + t], bf(kd[src + t]));
                    assert_eq!(cv.data[dst + t], bf(vd[src + t]));
                }
            }
        }
    }
    // A kernel that outputs index lists refuses the flag, and this one needs it.
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(repo("kernels/snapkv.attn"))
        .args([
            "--set",
            "CONTEXT=300",
            "--set",
            "BATCH=2",
            "--set",
            "HEADS=4",
        ])
        .args([
            "--set",
            "KV_HEADS=2",
            "--set",
            "HEAD_DIM=16",
            "--set",
            "WINDOW=8",
        ])
        .args(["--set", "BUDGET=64"])
        .qk(&q, &k)
        .arg("-o")
        .arg(&idx)
        .arg("--compacted")
        .arg(&dir));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--compacted is for select kernels with `output compacted;`"),
        "{err}"
    );
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(&policies)
        .args(["--kernel", "snap_compact_select"])
        .qkv(&q, &k, &v)
        .arg("-o")
        .arg(&idx));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pass --compacted DIR"), "{err}");
}

/// `window_lse` from the command line: the log-sum-exps come from `--input lse=FILE.npy`
/// (`[batch, query heads, window rows]`) and the index lists are written; a missing or
/// misshapen file is refused, and a kernel of another source refuses the input.
#[test]
fn window_lse_takes_the_log_sum_exps_as_an_input() {
    let (b, hq, hkv, d, n, w) = (2usize, 4usize, 2usize, 16usize, 200usize, 8usize);
    let src = tmp("window_lse.attn");
    std::fs::write(
        &src,
        "select s { source window_lse(8); keep sinks 2, recent 8; budget 32 tokens; }\n\
         kernel k = select(s) { heads 4; kv_heads 2; head_dim 16; batch 2; CONTEXT = 256; }\n\
         select plain { source window(8); keep sinks 2, recent 8; budget 32 tokens; }\n\
         kernel p = select(plain) { heads 4; kv_heads 2; head_dim 16; batch 2; CONTEXT = 256; }\n",
    )
    .expect("write");
    let q = write_npy("lq.npy", &[b, hq, w, d], random(b * hq * w * d, 61));
    let k = write_npy("lk.npy", &[b, hkv, n, d], random(b * hkv * n * d, 62));
    let v = write_npy("lv.npy", &[b, hkv, n, d], random(b * hkv * n * d, 63));
    let lse = |name: &str, shape: &[usize]| {
        let len = shape.iter().product();
        write_npy(
            name,
            shape,
            (0..len).map(|i| 5.0 + (i % 7) as f32 * 0.1).collect(),
        )
    };
    let select = |kernel: &str, lse: Option<&PathBuf>| {
        let mut c = attnc();
        c.arg("run")
            .arg(&src)
            .args(["--kernel", kernel])
            .qkv(&q, &k, &v);
        if let Some(f) = lse {
            c.arg("--input").arg(format!("lse={}", f.display()));
        }
        c.arg("-o").arg(tmp("lidx.npy"));
        run(&mut c)
    };
    let good = lse("lse.npy", &[b, hq, w]);
    let (code, _, err) = select("k", Some(&good));
    assert_eq!(code, 0, "{err}");
    let (shape, ids) = attnc_runtime::npy::read_ints(&tmp("lidx.npy")).expect("indices");
    assert_eq!(shape, vec![b, hkv, 32]);
    assert!(ids.iter().all(|i| (-1..n as i64).contains(i)), "{ids:?}");
    let (code, _, err) = select("k", None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pass lse [2, 4, 8]"), "{err}");
    let (code, _, err) = select("k", Some(&lse("lse_bad.npy", &[b, hq, w - 1])));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("has shape [2, 4, 7]; `k` expects [2, 4, 8]"),
        "{err}"
    );
    let (code, _, err) = select("p", Some(&good));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`p` has no use for lse"), "{err}");
}

/// `attnc run --lse-out`: a kernel with `outputs lse;` writes its rows' log-sum-exps
/// (`[batch, heads, tokens]` f32, as the f64 reference's) beside the output; a kernel
/// without them and a selection kernel refuse the request with the reason. (The CUDA
/// backend's are checked against the CPU's by `attnc suite` on a GPU.)
#[test]
fn run_writes_the_log_sum_exps_with_lse_out() {
    let src = tmp("lse.attn");
    std::fs::write(
        &src,
        "layout sequence { param N = 96; canvas (N); tile (32); }\n\
         pattern lower on sequence { tiles: kx <= qx; tokens: kx <= qx; }\n\
         kernel causal = attention(lower) { heads 4; kv_heads 2; head_dim 16; outputs lse; }\n\
         kernel plain = attention(lower) { heads 4; kv_heads 2; head_dim 16; }\n\
         select s { source exact; budget 32 tokens; }\n\
         kernel d = decode(s) { heads 4; kv_heads 2; head_dim 16; CONTEXT = 96; }\n",
    )
    .expect("write");
    let (qs, kvs) = ([1usize, 4, 96, 16], [1usize, 2, 96, 16]);
    let q = write_npy("lse_q.npy", &qs, random(qs.iter().product(), 71));
    let k = write_npy("lse_k.npy", &kvs, random(kvs.iter().product(), 72));
    let v = write_npy("lse_v.npy", &kvs, random(kvs.iter().product(), 73));
    let (out, lse) = (tmp("lse_o.npy"), tmp("lse_lse.npy"));
    let run_kernel = |kernel: &str, extra: &[&str]| {
        run(attnc()
            .arg("run")
            .arg(&src)
            .args(["--kernel", kernel])
            .qkv(&q, &k, &v)
            .arg("-o")
            .arg(&out)
            .arg("--lse-out")
            .arg(&lse)
            .args(extra))
    };
    let (code, _, err) = run_kernel("causal", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("lse [1, 4, 96] to {}", lse.display())),
        "{err}"
    );
    let got = attnc_runtime::npy::read(&lse).expect("lse readable");
    assert_eq!(got.shape, vec![1, 4, 96]);
    let text = std::fs::read_to_string(&src).expect("source");
    let c =
        attnc_runtime::cache::compile(&attnc::driver::Source::new("lse.attn", text), "causal", &[])
            .expect("compiles");
    let t = |p: &PathBuf| attnc_runtime::npy::read(p).expect("npy");
    let (qt, kt, vt) = (t(&q), t(&k), t(&v));
    let (_, want) =
        attnc_runtime::reference::attention_with_lse(&c.spec, qt.view(), kt.view(), vt.view(), &[])
            .expect("reference");
    for (a, b) in got.data.iter().zip(&want) {
        let e = (f64::from(*a) - b).abs() / b.abs().max(1.0);
        assert!(e < 1e-5, "lse {a}, reference {b}");
    }
    // Without --lse-out the run says the log-sum-exps were not written.
    let (code, _, err) = run(attnc()
        .arg("run")
        .arg(&src)
        .args(["--kernel", "causal"])
        .qkv(&q, &k, &v)
        .arg("-o")
        .arg(&out));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(", lse not written (--lse-out FILE.npy)"),
        "{err}"
    );
    let (code, _, err) = run_kernel("plain", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "error: --lse-out {}: `plain` writes no log-sum-exps; add `outputs lse;` to its body",
            lse.display()
        )),
        "{err}"
    );
    let (code, _, err) = run_kernel("d", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: `d`: --lse-out is for attention kernels with `outputs lse;`"),
        "{err}"
    );
    // explain says the kernel writes them; a kernel without them says nothing of it.
    let explain = |kernel: &str| run(attnc().arg("explain").arg(&src).args(["--kernel", kernel]));
    let (code, out, err) = explain("causal");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("batch 1, bf16; also writes each row's log-sum-exp (outputs lse, f32)"),
        "{out}"
    );
    let (code, out, err) = explain("plain");
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("log-sum-exp"), "{out}");
    // The CPU benchmark times the kernel writing its log-sum-exps.
    let (code, out, err) = run(attnc()
        .arg("bench")
        .arg(&src)
        .args(["--kernel", "causal", "--runs", "1"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("causal on the CPU"), "{out}");
}
