#!/usr/bin/env bash
# Bundle-side script of bench/RESULTS.md run 52 (one device call, about 160 s): the suite's
# GRAT-B cases (text, batch 2 with GQA, lse, more items than SMs; every shape), then the
# persistent kernel with work lists (new binary) against run 49's -lpt (bin/attnc_base:
# each head's tiles longest first, dealt in turn), and against -ws with a text prefix.
cd "$(dirname "$0")"; OUT=${RESULTS_DIR:-results}; mkdir -p "$OUT"
source ./unpack.sh
A=./bin/attnc; B=./bin/attnc_base
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 90 $A suite --kernels kernels --kernel grat_b_2d > "$OUT/suite.txt" 2>&1; echo "suite rc $? at ${SECONDS}s: $(tail -1 "$OUT/suite.txt")"
grep -E "FAIL|rows differ" "$OUT/suite.txt" | head -5; echo "pers-lpt runs ok: $(grep -c '^ok .*pers-lpt' "$OUT/suite.txt")"
: > "$OUT/ab.txt"
P=128x128-wgmma-tma-ws-ovl-pers-lpt-c4
for rep in 1 2; do
  for c in "256 0 $P base" "256 0 $P new" "512 0 $P base" "512 0 $P new" "256 512 128x128-wgmma-tma-ws new" "256 512 $P base" "256 512 $P new"; do
    set -- $c
    [ $SECONDS -lt 190 ] || break 2
    bin=$A; [ $4 = base ] && bin=$B
    sleep 1
    ms=$(timeout 30 $bin bench kernels/grat.attn --kernel grat_b_2d --set H=$1 --set W=$1 --set TEXT=$2 --backend cuda --rep-ms 100 --block $3 --json 2>&1 | tail -1 | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["ms"])' 2>/dev/null || echo nan)
    echo "$1 text=$2 $3 $4 $rep $ms" | tee -a "$OUT/ab.txt"
  done
done
echo "done at ${SECONDS}s"
