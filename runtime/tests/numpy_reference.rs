//! `attnc run` on the CPU against an independent NumPy reference (tests/numpy/), on
//! held-out random cases of grat_b_2d, grat_x_2d, grat_b_3d, grat_x_3d, sta_3d (with a
//! 256-token text suffix) and na_2d, to 1e-4 relative; every second round of them with
//! `outputs lse;`, their log-sum-exps against NumPy's too. Needs a Python with NumPy:
//! `./test.sh` makes one in .tools/venv and names it in ATTNC_PYTHON; without it the
//! test says it was skipped.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn attnc_run_agrees_with_an_independent_numpy_reference() {
    let Ok(python) = std::env::var("ATTNC_PYTHON") else {
        eprintln!("skipped: ATTNC_PYTHON is not set (./test.sh sets it to a Python with NumPy)");
        return;
    };
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/numpy/independent_reference.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([
            "--attnc",
            env!("CARGO_BIN_EXE_attnc"),
            "--seed",
            "20261128",
            "--cases",
            "18",
            "--tolerance",
            "1e-4",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the NumPy comparison failed:\n{stdout}"
    );
    assert!(stdout.contains("18/18 cases within 0.0001"), "{stdout}");
}
