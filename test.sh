#!/usr/bin/env bash
# Runs the whole test suite. Snapshot changes fail the run (review them with
# `cargo insta review`, never accept them blindly).
source "$(dirname "$0")/scripts/common.sh"
cd "$(repo_root)"
need_cargo
ensure_build_deps
export INSTA_UPDATE="${INSTA_UPDATE:-no}"
# The independent NumPy reference runs `attnc run` against NumPy (tests/numpy/).
ATTNC_PYTHON="$(numpy_python)"
export ATTNC_PYTHON
# Every shipped kernel's PTX must assemble (tests/ptxas.rs).
ATTNC_PTXAS="$(ptxas_path)"
export ATTNC_PTXAS
cargo test --workspace -q "$@"
