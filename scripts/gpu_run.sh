#!/usr/bin/env bash
# Runs on the GPU machine from the bundle folder (see scripts/gpu_bundle.sh). Writes logs to
# $RESULTS_DIR (default ./results) and prints a summary table last.
# Usage: run.sh [all|check|speed [side_by_side.py args]|decode|decode-extra|select|exact|wgmma|power|ab|shapes]: check = correctness (suite, NumPy,
# ptxas/SASS, sanitizer); speed = the side-by-side table against the peers
# (bench/gpu/side_by_side.py); decode = the decode kernels against the CPU executor, timed,
# beside the decode peers (bench/gpu/decode_peers.py); decode-extra = decode shapes no
# shipped kernel has and compute-sanitizer on small ones; select = the select-only SnapKV
# kernel checked against the CPU executor, sanitized and timed; wgmma = the sm_90a kernel's SASS,
# a few shapes timed, the suite with every shape, the tuner's table; power = joules a run
# of each launch shape under sustained load; ab = a kernel change against bin/attnc_base
# (the suite, then GRAT-B cases alternating the base, the variants and the new binary;
# AB_CASES "side R shape [text];...", AB_SUITE new/all/none, AB_BUDGET_S);
# shapes = launch shapes
# side by side (SHAPES), with the suite and the sanitizers; exact = exact_decode alone, every tuning
# candidate (ptxas; sanitizer memcheck and synccheck on a small case; a ragged shape and the
# shipped one, tuned; about 3 minutes).
set -u
cd "$(dirname "$0")"
OUT="${RESULTS_DIR:-results}"
mkdir -p "$OUT"
A=./bin/attnc
MODE="${1:-all}"
source ./unpack.sh
log() { echo "== $*"; }
# ptxas's registers and spills of a decode kernel's entries, one line: decode_ptxas FILE KERNEL.
decode_ptxas() {
  mkdir -p ptx
  $A compile "kernels/$1" --kernel "$2" --emit ptx > "ptx/$2.ptx" && ptxas -arch=sm_90 -v "ptx/$2.ptx" -o "ptx/$2.cubin" 2>&1 | grep -E "entry|registers|spill" | tr '\n' ' ' | sed "s/^/$2: /"
  echo
}
gpu_info() {
  log "GPU"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
}

if [ "$MODE" = "speed" ]; then
  gpu_info
  log "side by side with the peers"
  # Extra arguments go to side_by_side.py (e.g. `--parts plain`: one call must stay under
  # the device's 10 minutes).
  # SM clock, power and the clock-limit reasons every 100 ms (bench/RESULTS.md, "Power,
  # the peers' timing protocol").
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 100 > "$OUT/clocks_speed.txt" 2>/dev/null &
  smi=$!
  PYTHONUNBUFFERED=1 python3 side_by_side.py --attnc $A --kernels kernels "${@:2}" 2>&1 | tee "$OUT/side_by_side.txt"
  rc=${PIPESTATUS[0]}
  kill $smi 2>/dev/null
  exit "$rc"
fi

if [ "$MODE" = "wgmma" ]; then
  # The sm_90a kernel: SASS, correctness against the CPU (the suite runs every wgmma shape
  # on a GPU of compute capability 9.0), and the tuner's table of every shape's time.
  gpu_info
  log "SASS of the wgmma shapes"
  mkdir -p ptx
  : > "$OUT/wgmma_sass.txt"
  for b in 64x64-wgmma-tma 64x64-wgmma-tma-ovl 128x64-wgmma-tma-ws 128x64-wgmma-tma-ws-pp 128x128-wgmma-tma-ws 128x128-wgmma-tma-ws-ovl 128x128-wgmma-tma-ws-ovl-pers; do
    $A compile kernels/grat.attn --kernel grat_b_2d --emit ptx --block $b > ptx/grat_$b.ptx
    ptxas -arch=sm_90a -v ptx/grat_$b.ptx -o ptx/grat_$b.cubin 2>&1 | grep -E "registers|spill|wgmma" | tr '\n' ' ' >> "$OUT/wgmma_sass.txt"
    echo " $b HGMMA=$(cuobjdump -sass ptx/grat_$b.cubin | grep -c HGMMA) HMMA=$(cuobjdump -sass ptx/grat_$b.cubin | grep -c ' HMMA')" >> "$OUT/wgmma_sass.txt"
  done
  cat "$OUT/wgmma_sass.txt"
  log "launch shapes side by side, GRAT-B 128x128"
  for b in 64x64-wgmma-tma 64x64-wgmma-tma-x3 64x64-wgmma-tma-lpt-x3 128x64-wgmma-tma 128x64-wgmma-tma-ws 128x64-wgmma-tma-ws-pp 128x128-wgmma-tma-ws 128x128-wgmma-tma-ws-ovl; do
    timeout 60 $A bench kernels/grat.attn --kernel grat_b_2d --set H=128 --set W=128 --set TEXT=0 --backend cuda --runs 20 --block $b 2>&1 | tee -a "$OUT/wgmma_bench.txt"
  done
  log "suite: every shipped kernel, default and wgmma shapes, against the CPU backend"
  timeout 300 $A suite --kernels kernels > "$OUT/suite.txt" 2>&1
  suite_rc=$?
  grep -E "FAIL|agree|rows differ" "$OUT/suite.txt" | head -40
  log "tuner: every shape timed"
  # SM clock and power every 100 ms while the tuner runs (is a slow final run throttled?).
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader -lms 100 > "$OUT/clocks.txt" 2>/dev/null &
  smi=$!
  for c in "grat.attn grat_b_2d H=128 W=128 TEXT=0" "grat.attn grat_x_2d H=128 W=128 TEXT=0" "grat.attn grat_b_2d H=256 W=256 TEXT=0" "dense.attn dense N=16384"; do
    set -- $c
    file=$1; k=$2; shift 2
    sets=""; for s in "$@"; do sets="$sets --set $s"; done
    echo "-- $k $*" | tee -a "$OUT/wgmma_tune.txt"
    timeout 120 $A bench kernels/$file --kernel $k $sets --backend cuda --runs 20 --tune 2>&1 | tee -a "$OUT/wgmma_tune.txt"
  done
  kill $smi 2>/dev/null
  echo
  echo "== summary"
  echo "SM clock (MHz) min/median/max while tuning: $(cut -d, -f2 "$OUT/clocks.txt" | tr -dc '0-9\n' | sort -n | awk '{a[NR]=$1} END {if (NR) print a[1], a[int((NR+1)/2)], a[NR]}')"
  cat "$OUT/wgmma_sass.txt"
  grep -E "on .*median" "$OUT/wgmma_bench.txt"
  echo "suite exit $suite_rc: $(tail -1 "$OUT/suite.txt"); wgmma lines ok: $(grep -c '^ok .*wgmma' "$OUT/suite.txt"), failed: $(grep -c '^FAIL .*wgmma' "$OUT/suite.txt")"
  grep -E "^--|block|median" "$OUT/wgmma_tune.txt"
  exit 0
fi

if [ "$MODE" = "ab" ]; then
  # A change to the attention kernel against the binary before it (bin/attnc_base.xz, put in
  # the bundle by `ATTNC_BASE=path scripts/gpu_bundle.sh`): the suite on the new binary
  # (every shipped kernel, every shape, against the CPU backend), then each case timed by
  # do_bench's protocol (`--rep-ms 100`), base and new alternating twice after a 1 s rest,
  # so that drift of the clock under the power limit falls on both alike.
  gpu_info
  B=./bin/attnc_base
  [ -x $B ] || { echo "no bin/attnc_base.xz in the bundle (ATTNC_BASE=path scripts/gpu_bundle.sh)"; exit 2; }
  # The base, the variants (bin/attnc_NAME from ATTNC_VARIANTS) and the new binary, in
  # that order each round.
  bins="$B"
  for v in bin/attnc_*; do
    case "$v" in *.xz|bin/attnc_base) ;; *) [ -x "$v" ] && bins="$bins ./$v" ;; esac
  done
  bins="$bins $A"
  # AB_SUITE: which binaries the suite checks first: `new` (default), `all` (the variants
  # too: changes not yet run on a GPU) or `none`.
  suite_rc=-
  case "${AB_SUITE:-new}" in
    new) suite_bins="$A" ;;
    all) suite_bins="${bins#"$B "}" ;;
    none) suite_bins="" ;;
    *) echo "AB_SUITE: '${AB_SUITE}' is not new, all or none"; exit 2 ;;
  esac
  : > "$OUT/suite.txt"
  for bin in $suite_bins; do
    log "suite ($(basename $bin)) against the CPU backend"
    timeout 300 $bin suite --kernels kernels > "$OUT/suite_$(basename $bin).txt" 2>&1
    rc=$?
    grep -E "FAIL|rows differ" "$OUT/suite_$(basename $bin).txt" | head -20
    echo "$(basename $bin): exit $rc: $(tail -1 "$OUT/suite_$(basename $bin).txt")" | tee -a "$OUT/suite.txt"
    [ "$bin" = "$A" ] && suite_rc=$rc
  done
  : > "$OUT/ab.txt"
  # Cases: canvas side, R, shape and optionally the text tokens (default 0); AB_CASES
  # separates them by ';' (e.g. AB_CASES="512 1 128x128-wgmma-tma-ws-ovl-pers;256 1
  # 128x128-wgmma-tma-ws-ovl-pers-lpt-c4 512"). No case starts after AB_BUDGET_S seconds
  # (default 540: one call may not run over 10 minutes).
  IFS=';' read -r -a cases <<< "${AB_CASES:-256 1 64x64-wgmma-tma-x3;256 2 64x64-wgmma-tma-x3;256 3 64x64-wgmma-tma-x3;256 1 128x128-wgmma-tma;512 1 64x64-wgmma-tma-x3;512 2 64x64-wgmma-tma}"
  for c in "${cases[@]}"; do
    set -- $c
    [ $# -eq 3 ] || [ $# -eq 4 ] || { echo "AB_CASES: '$c' is not 'side R shape [text]'"; continue; }
    text=${4:-0}
    label="$1 r=$2"
    [ "$text" = 0 ] || label="$label text=$text"
    for rep in 1 2; do
      for bin in $bins; do
        [ $SECONDS -lt "${AB_BUDGET_S:-540}" ] || { echo "AB_BUDGET_S reached: stopping"; break 3; }
        sleep 1
        ms=$(timeout 120 $bin bench kernels/grat.attn --kernel grat_b_2d --set H=$1 --set W=$1 --set TEXT=$text --set R=$2 --backend cuda --rep-ms 100 --block $3 --json 2>&1 | tail -1 | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["ms"])' 2>/dev/null || echo nan)
        echo "$label $3 $(basename $bin) $rep $ms" | tee -a "$OUT/ab.txt"
      done
    done
  done
  echo
  echo "== summary: suite (new binary) exit $suite_rc"
  cat "$OUT/suite.txt"
  echo "case | binary | ms (two runs) | min / base's min"
  python3 - "$OUT/ab.txt" <<'PY'
import sys, collections
t = collections.defaultdict(list)
for line in open(sys.argv[1]):
    *case, binary, rep, ms = line.split()
    t[(" ".join(case), binary)].append(float(ms))
for case in dict.fromkeys(c for c, _ in t):
    b = t[(case, "attnc_base")]
    for (c, binary), ms in t.items():
        if c == case:
            print(f"{case} | {binary} | {' '.join(f'{x:.3f}' for x in ms)} | {min(ms) / min(b):.3f}")
PY
  exit 0
fi

if [ "$MODE" = "shapes" ]; then
  # Launch shapes side by side (sixth session): a smoke run of each, the suite (every
  # shipped kernel, every tuning and experimental shape, against the CPU backend),
  # compute-sanitizer (memcheck, synccheck, racecheck) on the first shape, then GRAT-B r=1
  # 256x256 and 512x512, r=2 512x512 and dense 16384 timed by do_bench's protocol
  # (`--rep-ms 100`), the shapes alternating twice after a 1 s rest. SHAPES overrides the
  # shapes (the first is the yardstick of the last column).
  gpu_info
  shapes="${SHAPES:-64x64-wgmma-tma-x3 128x128-wgmma-tma-ws 128x128-wgmma-tma-ws-ovl}"
  for b in $shapes; do
    timeout 30 $A bench kernels/grat.attn --kernel grat_b_2d --set H=128 --set W=128 --backend cuda --runs 3 --block $b 2>&1 | tail -1
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "smoke run of $b failed ($rc): stopping"; exit 1; }
  done
  log "suite against the CPU backend"
  timeout 300 $A suite --kernels kernels > "$OUT/suite.txt" 2>&1
  suite_rc=$?
  grep FAIL "$OUT/suite.txt" | head
  first=${shapes%% *}
  for tool in memcheck synccheck racecheck; do
    timeout 200 compute-sanitizer --tool $tool --error-exitcode 3 $A bench kernels/grat.attn --kernel grat_b_2d --set H=64 --set W=64 --backend cuda --runs 1 --block $first > "$OUT/sanitizer_$tool.txt" 2>&1
    echo "compute-sanitizer $tool on $first: exit $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.txt" | head -1)"
  done
  : > "$OUT/shapes.txt"
  for rep in 1 2; do
    for b in $shapes; do
      for c in "B1-256 grat.attn grat_b_2d H=256 W=256 TEXT=0" "B1-512 grat.attn grat_b_2d H=512 W=512 TEXT=0" "B2-512 grat.attn grat_b_2d H=512 W=512 TEXT=0 R=2" "dense-16384 dense.attn dense N=16384"; do
        set -- $c
        name=$1; file=$2; k=$3; shift 3
        sets=""; for x in "$@"; do sets="$sets --set $x"; done
        sleep 1
        ms=$(timeout 120 $A bench kernels/$file --kernel $k $sets --backend cuda --rep-ms 100 --block $b --json 2>&1 | tail -1 | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["ms"])' 2>/dev/null || echo nan)
        echo "$name $b $ms" | tee -a "$OUT/shapes.txt"
      done
    done
  done
  echo
  echo "== summary: suite (new binary) exit $suite_rc"
  cat "$OUT/suite.txt"
  python3 - "$OUT/shapes.txt" "$first" <<'PY'
import collections, sys
t = collections.defaultdict(list)
for line in open(sys.argv[1]):
    case, shape, ms = line.split()
    t[case, shape].append(float(ms))
for case in dict.fromkeys(c for c, _ in t):
    base = min(t[case, sys.argv[2]])
    print(case, " | ".join(f"{s} {' '.join(f'{x:.3f}' for x in v)} ({min(v) / base:.3f})" for (c, s), v in t.items() if c == case))
PY
  exit 0
fi

if [ "$MODE" = "power" ]; then
  # Energy per product of each launch shape (issue 5: under the 700 W limit the shape that
  # spends the fewest joules a product wins): GRAT-B r=1 on 512x512, 2 s of back-to-back
  # runs a shape (`--rep-ms 2000`), board power and SM clock sampled every 50 ms meanwhile.
  gpu_info
  : > "$OUT/power.txt"
  sets="--set H=512 --set W=512 --set TEXT=0"
  for b in ${POWER_SHAPES:-64x64-wgmma-tma-x3 64x64-wgmma-tma 128x128-wgmma-tma 128x64-wgmma-tma 128x64-wgmma-tma-ws-pp}; do
    sleep 2
    nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 50 > "$OUT/power_$b.csv" 2>/dev/null &
    smi=$!
    line=$(timeout 120 $A bench kernels/grat.attn --kernel grat_b_2d $sets --backend cuda --rep-ms 2000 --block $b --json 2>&1 | tail -1)
    kill $smi 2>/dev/null
    # Samples while the kernel ran (power above 200 W): mean power and clock.
    stats=$(awk -F', ' '$2 > 200 {p += $2; c += $1; n++} END {if (n) printf "%.0f %.0f %d", p / n, c / n, n; else print "0 0 0"}' "$OUT/power_$b.csv")
    set -- $stats
    ms=$(echo "$line" | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["ms"])' 2>/dev/null || echo nan)
    echo "$b ms=$ms watts=$1 mhz=$2 samples=$3 joules_per_run=$(python3 -c "print(round($1 * $ms / 1000, 3))" 2>/dev/null)" | tee -a "$OUT/power.txt"
  done
  echo
  echo "== summary (GRAT-B r=1 512x512, 2 s a shape)"
  cat "$OUT/power.txt"
  exit 0
fi

if [ "$MODE" = "decode" ]; then
  # The shipped decode kernels against the CPU executor and beside the peers (about 6
  # minutes); `decode-extra` has the shapes no shipped kernel takes and the sanitizer.
  gpu_info
  log "ptxas (registers, spills) of the decode kernels"
  : > "$OUT/decode_sass.txt"
  for c in "quest.attn quest_decode" "streaming.attn streaming_decode" "exact.attn exact_decode" "h2o.attn h2o_decode" "dense.attn dense_decode"; do
    decode_ptxas $c >> "$OUT/decode_sass.txt"
  done
  cat "$OUT/decode_sass.txt"
  log "decode step: attnc against the CPU executor, timed, with fidelity"
  : > "$OUT/decode.txt"
  # H2O tuned: the tuner checks and times the split update (Tuning::split_update) beside
  # the one-entry update.
  for c in "exact.attn exact_decode" "quest.attn quest_decode" "streaming.attn streaming_decode" "h2o.attn h2o_decode --tune" "dense.attn dense_decode --set CONTEXT=32768"; do
    set -- $c
    file=$1; k=$2; shift 2
    $A bench kernels/$file --kernel $k "$@" --backend cuda --runs 50 2>&1 | tee -a "$OUT/decode.txt"
  done
  log "decode peers (cuDNN, FlashAttention, the PyTorch pipeline)"
  RESULTS_DIR="$OUT" PYTHONUNBUFFERED=1 python3 decode_peers.py 2>&1 | tee "$OUT/decode_peers.txt"
  echo
  echo "== summary"
  grep -E "^[a-z_]+ on |step |kernels alone|tuned:|differ|fidelity" "$OUT/decode.txt"
  grep -E "^\{" "$OUT/decode_peers.txt"
  exit 0
fi

if [ "$MODE" = "select" ]; then
  # The select-only kernel (SnapKV's window scores): ptxas, compute-sanitizer on a small
  # case, a short context (the one-block top-k), then the shipped shape checked and timed.
  gpu_info
  decode_ptxas snapkv.attn snapkv_select | tee "$OUT/select_sass.txt"
  : > "$OUT/select.txt"
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 3 $A bench kernels/snapkv.attn --kernel snapkv_select --set CONTEXT=8192 --set BUDGET=1024 --set BATCH=2 --backend cuda --runs 2 > "$OUT/select_sanitizer.txt" 2>&1
  echo "snapkv_select sanitizer exit $?" | tee -a "$OUT/select.txt"
  tail -3 "$OUT/select_sanitizer.txt"
  for c in "--set CONTEXT=4096 --set BUDGET=1024" "--set BATCH=1 --runs 20" "--runs 20"; do
    timeout 240 $A bench kernels/snapkv.attn --kernel snapkv_select $c --backend cuda 2>&1 | tee -a "$OUT/select.txt"
  done
  echo
  echo "== summary"
  grep -E "sanitizer exit|^[a-z_]+ on |select |kernels alone|differ|fidelity" "$OUT/select.txt"
  exit 0
fi

if [ "$MODE" = "exact" ]; then
  gpu_info
  decode_ptxas exact.attn exact_decode | tee "$OUT/exact_sass.txt"
  : > "$OUT/exact.txt"
  # Every tuning candidate under the sanitizers (--tune checks each against the default).
  for tool in memcheck synccheck; do
    timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 $A bench kernels/exact.attn --kernel exact_decode --set CONTEXT=16384 --set BUDGET=1024 --set BATCH=2 --backend cuda --runs 1 --tune > "$OUT/exact_$tool.txt" 2>&1
    echo "exact_decode $tool exit $?" | tee -a "$OUT/exact.txt"
    tail -3 "$OUT/exact_$tool.txt"
  done
  for c in "--set CONTEXT=100000 --set BATCH=2 --runs 20 --tune" "--runs 50 --tune"; do
    timeout 240 $A bench kernels/exact.attn --kernel exact_decode $c --backend cuda 2>&1 | tee -a "$OUT/exact.txt"
  done
  echo
  echo "== summary"
  grep -E " exit|^[a-z_]+ on |step |kernels alone|differ|fidelity|tuned|    rows=" "$OUT/exact.txt"
  exit 0
fi

if [ "$MODE" = "decode-extra" ]; then
  # Paths no shipped shape takes, then compute-sanitizer on small cases (about 4 minutes).
  gpu_info
  log "decode shapes no shipped kernel has"
  : > "$OUT/decode_extra.txt"
  # Quest over 16384 pages (the multi-block top-k with its own first pass); exact over a
  # context that is not a multiple of 32768.
  for c in "quest.attn quest_decode --set CONTEXT=262144 --set BATCH=2" "exact.attn exact_decode --set CONTEXT=100000 --set BATCH=2"; do
    set -- $c
    file=$1; k=$2; shift 2
    $A bench kernels/$file --kernel $k "$@" --backend cuda --runs 50 2>&1 | tee -a "$OUT/decode_extra.txt"
  done
  # External scores (a test fixture's kernel): the one-block and the multi-block top-k.
  for set in "CONTEXT=8192" "CONTEXT=131072"; do
    $A bench examples/kv_selection_policies.attn --kernel indexer_decode --set $set --backend cuda --runs 50 2>&1 | tee -a "$OUT/decode_extra.txt"
  done
  log "compute-sanitizer memcheck, small decode cases"
  : > "$OUT/decode_sanitizer.txt"
  for c in "quest.attn quest_decode" "streaming.attn streaming_decode" "exact.attn exact_decode" "h2o.attn h2o_decode"; do
    set -- $c
    timeout 100 compute-sanitizer --tool memcheck --error-exitcode 3 $A bench kernels/$1 --kernel $2 --set CONTEXT=16384 --set BUDGET=1024 --set BATCH=2 --backend cuda --runs 2 >> "$OUT/decode_sanitizer.txt" 2>&1
    echo "$2 sanitizer exit $?" | tee -a "$OUT/decode_sanitizer.txt"
  done
  echo
  echo "== summary"
  grep -E "sanitizer exit" "$OUT/decode_sanitizer.txt"
  grep -E "^[a-z_]+ on |step |kernels alone|differ" "$OUT/decode_extra.txt"
  exit 0
fi

gpu_info

log "suite: every shipped kernel on the GPU against the CPU backend"
$A suite --kernels kernels 2>&1 | tee "$OUT/suite.txt"
suite_rc=${PIPESTATUS[0]}

log "independent NumPy reference, attnc run --backend cuda"
python3 independent_reference.py --attnc $A --kernels kernels --backend cuda --tolerance 1e-2 --seed 4242 --cases 24 2>&1 | tee "$OUT/numpy.txt"
numpy_rc=${PIPESTATUS[0]}

log "ptxas (registers, spills) and SASS (HMMA) of the shipped kernels"
mkdir -p ptx
: > "$OUT/sass.txt"
for f in kernels/*.attn; do $A compile "$f" --target sm_90 --out-dir ptx 2>/dev/null; done
for p in ptx/*.ptx; do
  n=$(basename "$p" .ptx)
  ptxas -arch=sm_90 -v "$p" -o "ptx/$n.cubin" 2>&1 | grep -E "registers|spill" | tr '\n' ' ' | sed "s/^/$n: /" >> "$OUT/sass.txt"
  echo " HMMA=$(cuobjdump -sass "ptx/$n.cubin" | grep -c HMMA)" >> "$OUT/sass.txt"
done
cat "$OUT/sass.txt"

log "compute-sanitizer memcheck, one small case per kernel"
timeout 300 compute-sanitizer --tool memcheck --error-exitcode 3 $A suite --kernels kernels --small > "$OUT/sanitizer.txt" 2>&1
san_rc=$?
tail -5 "$OUT/sanitizer.txt"

log "timings (median of CUDA-event-timed runs)"
: > "$OUT/bench.txt"
for c in "grat.attn grat_b_2d H=128 W=128 TEXT=0" "grat.attn grat_x_2d H=128 W=128 TEXT=0" "grat.attn grat_b_2d H=256 W=256 TEXT=0" \
         "dense.attn dense N=4096" "dense.attn dense N=16384" "sta.attn sta_3d" "natten.attn na_2d H=128 W=128"; do
  set -- $c
  file=$1; k=$2; shift 2
  sets=""; for s in "$@"; do sets="$sets --set $s"; done
  $A bench kernels/$file --kernel $k $sets --backend cuda --runs 20 2>&1 | tee -a "$OUT/bench.txt"
done

echo
echo "== summary"
printf "%-28s %s\n" "suite vs CPU backend" "$(tail -1 "$OUT/suite.txt") (exit $suite_rc)"
printf "%-28s %s\n" "NumPy reference (cuda)" "$(tail -1 "$OUT/numpy.txt") (exit $numpy_rc)"
printf "%-28s %s\n" "compute-sanitizer memcheck" "$(grep -E 'ERROR SUMMARY|skipped|Device not supported' "$OUT/sanitizer.txt" | tail -1) (exit $san_rc)"
printf "%-28s %s\n" "SASS" "$(grep -c 'HMMA=[1-9]' "$OUT/sass.txt") of $(wc -l < "$OUT/sass.txt") kernels show HMMA; spills: $(grep -o '[0-9]* bytes spill stores' "$OUT/sass.txt" | sort -u | tr '\n' ' ')"
cat "$OUT/bench.txt"
