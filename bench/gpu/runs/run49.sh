#!/usr/bin/env bash
# Bundle-side script of bench/RESULTS.md run 49 (one device call): the suite; the persistent
# overlapped kernel with each head's tiles in the launch order (-lpt) against tile order,
# with and without -c4; then the side by side at r=1 (256x256, 512x512) in what time is left.
cd "$(dirname "$0")"; OUT=${RESULTS_DIR:-results}; mkdir -p "$OUT"
source ./unpack.sh
A=./bin/attnc
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
timeout 250 $A suite --kernels kernels > "$OUT/suite.txt" 2>&1; echo "suite rc $? in ${SECONDS}s: $(tail -1 "$OUT/suite.txt")"
grep -E "FAIL|rows differ" "$OUT/suite.txt" | head; echo "lpt-persistent runs ok: $(grep -c '^ok .*pers-lpt' "$OUT/suite.txt")"
: > "$OUT/ab.txt"
P=128x128-wgmma-tma-ws-ovl-pers
for c in "256 1" "512 1" "512 2"; do
  set -- $c
  for rep in 1 2; do
    for b in $P $P-c4 $P-lpt $P-lpt-c4; do
      [ $SECONDS -lt 420 ] || break 3
      sleep 1
      ms=$(timeout 40 $A bench kernels/grat.attn --kernel grat_b_2d --set H=$1 --set W=$1 --set TEXT=0 --set R=$2 --backend cuda --rep-ms 100 --block $b --json 2>&1 | tail -1 | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["ms"])' 2>/dev/null || echo nan)
      echo "$1 r=$2 $b $rep $ms" >> "$OUT/ab.txt"
    done
  done
done
echo "ab done at ${SECONDS}s"
left=$((590 - SECONDS))
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 100 > "$OUT/clocks_speed.txt" 2>/dev/null &
smi=$!
[ $left -gt 60 ] && PYTHONUNBUFFERED=1 timeout $left python3 side_by_side.py --attnc $A --kernels kernels --parts plain --sides 256,512 --grat b1 > "$OUT/side_by_side.txt" 2>&1
echo "side by side rc $? at ${SECONDS}s"
kill $smi 2>/dev/null
echo "== A/B (ms, two rounds; last column: min over tile order's min)"
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
tail -22 "$OUT/side_by_side.txt"
