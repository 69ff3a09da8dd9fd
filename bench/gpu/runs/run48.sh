#!/usr/bin/env bash
# Bundle-side script of bench/RESULTS.md run 48 (one device call): copy it into .gpu/ after
# `ATTNC_VARIANTS="lse=PATH" scripts/gpu_bundle.sh` and copy a grat.attn with `outputs lse;` in
# grat_b_2d to .gpu/examples/grat_lse.attn.
# Session 9, first device call: suite (main), suite of branch pers-lse (grat_b_2d, causal),
# A/B of -poly / -c4 on the persistent overlapped kernel, tuner on a kernel with outputs lse.
cd "$(dirname "$0")"; OUT=${RESULTS_DIR:-results}; mkdir -p "$OUT"
source ./unpack.sh
A=./bin/attnc; L=./bin/attnc_lse
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "== suite (main)"
timeout 250 $A suite --kernels kernels > "$OUT/suite.txt" 2>&1; echo "suite rc $? in ${SECONDS}s: $(tail -1 "$OUT/suite.txt")"
grep -E "FAIL|rows differ" "$OUT/suite.txt" | head; grep -c "poly" "$OUT/suite.txt"
for k in grat_b_2d causal; do
  timeout 110 $L suite --kernels kernels --kernel $k > "$OUT/suite_lse_$k.txt" 2>&1
  echo "pers-lse suite $k rc $? at ${SECONDS}s: $(tail -1 "$OUT/suite_lse_$k.txt")"; grep FAIL "$OUT/suite_lse_$k.txt" | head -5
done
grep -B1 -A1 "lse" "$OUT/suite_lse_grat_b_2d.txt" | grep -A2 "ws-ovl-pers" | head -12
: > "$OUT/ab.txt"
for c in "512 1" "256 1" "512 2"; do
  set -- $c
  for rep in 1 2; do
    for b in 128x128-wgmma-tma-ws-ovl-pers 128x128-wgmma-tma-ws-ovl-pers-c4 128x128-wgmma-tma-ws-ovl-pers-poly 128x128-wgmma-tma-ws-ovl-pers-c4-poly; do
      [ $SECONDS -lt 500 ] || break 3
      sleep 1
      ms=$(timeout 40 $A bench kernels/grat.attn --kernel grat_b_2d --set H=$1 --set W=$1 --set TEXT=0 --set R=$2 --backend cuda --rep-ms 100 --block $b --json 2>&1 | tail -1 | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["ms"])' 2>/dev/null || echo nan)
      echo "$1 r=$2 $b $rep $ms" >> "$OUT/ab.txt"
    done
  done
done
echo "ab done at ${SECONDS}s"
left=$((585 - SECONDS))
if [ $left -gt 30 ]; then
  timeout $left $L bench examples/grat_lse.attn --kernel grat_b_2d --set H=256 --set W=256 --set TEXT=0 --backend cuda --runs 20 --tune > "$OUT/tune_lse.txt" 2>&1
  echo "tune (lse kernel, pers-lse binary) rc $?"; grep -iE "block|drop|disagree|lse|median" "$OUT/tune_lse.txt" | tail -20
fi
echo "== A/B (ms, two rounds)"
python3 - "$OUT/ab.txt" <<'PY'
import sys, collections
t = collections.defaultdict(list)
for line in open(sys.argv[1]):
    s, r, b, rep, ms = line.split()
    t[(s + " " + r, b)].append(float(ms))
for (c, b), ms in t.items():
    base = min(t[(c, "128x128-wgmma-tma-ws-ovl-pers")])
    print(f"{c} | {b[29:] or 'pers'} | {' '.join(f'{x:.3f}' for x in ms)} | {min(ms)/base:.3f}")
PY
