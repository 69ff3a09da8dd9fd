//! The `attnc` binary end to end: exit codes, outputs, files written.

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
