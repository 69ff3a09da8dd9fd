#!/usr/bin/env bash
# Builds the GPU bundle in .gpu/ (git-ignored): the stripped release `attnc`, the shipped
# kernels, the independent NumPy reference, the peer scripts, a run.sh that runs the whole
# GPU suite on the GPU machine (no Rust there) and prints a table last, and ncu_decode.sh
# (Nsight Compute on the decode kernels), ncu_attention.sh (on the attention kernel at
# two canvas sizes). Then, on the GPU machine:
#   RESULTS_DIR=$OUT .gpu/run.sh [all|check|speed|decode|decode-extra|select|exact|wgmma|power|ab|shapes]
source "$(dirname "$0")/common.sh"
cd "$(repo_root)"
need_cargo
cargo build --release -q -p attnc-runtime --bin attnc
rm -rf .gpu && mkdir -p .gpu/bin
cp "${CARGO_TARGET_DIR:-target}/release/attnc" .gpu/bin/attnc && strip .gpu/bin/attnc
# `run.sh ab` compares the new binary with the one given here (e.g. a copy of the previous
# bundle's bin/attnc) and with any variants (ATTNC_VARIANTS="NAME=PATH ...", each
# bin/attnc_NAME), all xz-compressed so that they stay under the device's 64 MiB carry
# limit (run.sh unpacks every bin/*.xz); with a variant the new binary is compressed too.
pack() {
  cp "$1" ".gpu/$2" && strip ".gpu/$2"
  xz -T0 -6 ".gpu/$2" && mv ".gpu/$2.xz" ".gpu/bin/$2.xz"
}
if [ -n "${ATTNC_BASE:-}" ]; then
  pack "$ATTNC_BASE" attnc_base
fi
for v in ${ATTNC_VARIANTS:-}; do
  name="${v%%=*}"; path="${v#*=}"
  [ -n "$name" ] && [ -f "$path" ] && [ "$name" != base ] || { echo "ATTNC_VARIANTS: '$v' is not NAME=PATH (an existing file, NAME not base)" >&2; exit 2; }
  pack "$path" "attnc_$name"
done
if [ -n "${ATTNC_VARIANTS:-}" ]; then
  xz -T0 -6 .gpu/bin/attnc
fi
cp -r kernels .gpu/kernels
# Selection kernels no shipped file has (external scores): decode mode runs them.
mkdir -p .gpu/examples && cp tests/fixtures/ok/kv_selection_policies.attn .gpu/examples/
cp tests/numpy/independent_reference.py bench/gpu/side_by_side.py bench/gpu/decode_peers.py .gpu/
[ -f ../shared/peers/peer_bench.py ] && cp ../shared/peers/peer_bench.py .gpu/
cp scripts/gpu_run.sh .gpu/run.sh
cp scripts/gpu_unpack.sh .gpu/unpack.sh
cp scripts/gpu_ncu_decode.sh .gpu/ncu_decode.sh
cp scripts/gpu_ncu_attention.sh .gpu/ncu_attention.sh
cp scripts/gpu_ncu_source.sh .gpu/ncu_source.sh
chmod +x .gpu/run.sh .gpu/ncu_decode.sh .gpu/ncu_attention.sh .gpu/ncu_source.sh
du -sh .gpu >&2
