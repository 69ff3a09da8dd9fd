#!/usr/bin/env bash
# Runs the whole test suite. Snapshot changes fail the run (review them with
# `cargo insta review`, never accept them blindly).
source "$(dirname "$0")/scripts/common.sh"
cd "$(repo_root)"
need_cargo
export INSTA_UPDATE="${INSTA_UPDATE:-no}"
cargo test --workspace -q "$@"
