#!/usr/bin/env bash
# Runs on the GPU machine from the bundle folder (copied there by scripts/gpu_bundle.sh as
# ncu_attention.sh): profiles one attention kernel at one launch shape on two canvas sizes
# with Nsight Compute, to find why GRAT-B runs at fewer TFLOP/s on 512x512 than on
# 256x256 with the sm_90a kernel (bench/RESULTS.md, "The softmax diet ..."; the mma.sync
# kernel does not drop). Writes $RESULTS_DIR/ncu_attention_SIDE.txt and prints the key
# lines. Usage: ncu_attention.sh [SHAPE [KERNEL [SIDES...]]]
cd "$(dirname "$0")"
source ./unpack.sh
OUT="${RESULTS_DIR:-results}"; mkdir -p "$OUT"
SHAPE="${1:-64x64-wgmma-tma-x3}"; KERNEL="${2:-grat_b_2d}"; shift 2 2>/dev/null
SIDES="${*:-256 512}"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}"
for side in $SIDES; do
  sets="--set H=$side --set W=$side --set TEXT=0"
  ./bin/attnc bench kernels/grat.attn --kernel "$KERNEL" $sets --backend cuda --runs 20 --block "$SHAPE" 2>&1 | tail -1
  [ -n "$NCU" ] || continue
  # One launch profiled (the bench's warm-up launches come first: skip them).
  timeout 240 "$NCU" -k regex:"attnc_${KERNEL}" -s 3 -c 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section LaunchStats --section ComputeWorkloadAnalysis \
    ./bin/attnc bench kernels/grat.attn --kernel "$KERNEL" $sets --backend cuda --runs 1 --block "$SHAPE" \
    > "$OUT/ncu_attention_$side.txt" 2>&1
  echo "== $side: ncu exit $?"
  grep -E "DRAM Throughput|L2 Hit Rate|L1/TEX Hit Rate|^ +Duration|Achieved Occupancy|Warp Cycles Per Issued|Compute \(SM\) Throughput|Memory Throughput|SM Frequency|Issue Slots Busy|Executed Ipc" "$OUT/ncu_attention_$side.txt" | head -20
done
