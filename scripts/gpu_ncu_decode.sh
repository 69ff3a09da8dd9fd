#!/usr/bin/env bash
# Runs on the GPU machine from the bundle folder (copied there by scripts/gpu_bundle.sh as
# ncu_decode.sh): times one decode kernel, then profiles its kernels once with Nsight
# Compute (speed of light, occupancy, warp states, memory) into $RESULTS_DIR/ncu.txt and
# prints the key lines. Usage: ncu_decode.sh [FILE.attn KERNEL [--set ...]]
cd "$(dirname "$0")"
source ./unpack.sh
OUT="${RESULTS_DIR:-results}"; mkdir -p "$OUT"
FILE="${1:-quest.attn}"; KERNEL="${2:-quest_decode}"; shift 2 2>/dev/null
./bin/attnc bench "kernels/$FILE" --kernel "$KERNEL" "$@" --backend cuda --runs 30 2>&1 | grep -v "^  vs the"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}"
[ -n "$NCU" ] || exit 0
timeout 240 "$NCU" -k regex:"${KERNEL}_(logits|stats|score|pool|attend|topk|combine)" -c 8 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section LaunchStats \
  ./bin/attnc bench "kernels/$FILE" --kernel "$KERNEL" "$@" --backend cuda --runs 1 > "$OUT/ncu.txt" 2>&1
echo "ncu exit $?"
grep -E "attnc_|DRAM Throughput|^ +Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Warp Cycles Per Issued|Compute \(SM\) Throughput" "$OUT/ncu.txt" | head -60
