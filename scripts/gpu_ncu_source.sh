#!/usr/bin/env bash
# Runs on the GPU machine from the bundle folder (copied there by scripts/gpu_bundle.sh as
# ncu_source.sh): Nsight Compute's warp-stall samples per SASS instruction of one attention
# launch, to see where a block's cycles go (prologue before the first HGMMA, the key loop,
# the epilogue after the last). Writes $RESULTS_DIR/ncu_source_R.csv (the source page) and
# prints the split and the hottest instructions.
# Usage: ncu_source.sh [SHAPE [SIDE [R...]]]
cd "$(dirname "$0")"
source ./unpack.sh
OUT="${RESULTS_DIR:-results}"; mkdir -p "$OUT"
SHAPE="${1:-64x64-wgmma-tma-x3}"; SIDE="${2:-256}"; shift 2 2>/dev/null
RS="${*:-1 2}"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none} $($NCU --version 2>/dev/null | tail -1)"
[ -n "$NCU" ] || exit 2
for r in $RS; do
  sets="--set H=$SIDE --set W=$SIDE --set TEXT=0 --set R=$r"
  rep="$OUT/ncu_source_$r"
  timeout 240 "$NCU" -k regex:attnc_grat_b_2d -s 3 -c 1 --section SourceCounters --section WarpStateStats \
    --import-source no -f -o "$rep" \
    ./bin/attnc bench kernels/grat.attn --kernel grat_b_2d $sets --backend cuda --runs 1 --block "$SHAPE" > "$OUT/ncu_source_$r.log" 2>&1
  echo "== R=$r: ncu exit $?"
  "$NCU" --import "$rep.ncu-rep" --page source --print-source sass --csv > "$OUT/ncu_source_$r.csv" 2>"$OUT/ncu_source_$r.err"
  echo "source page exit $?, $(wc -l < "$OUT/ncu_source_$r.csv") lines"
  python3 - "$OUT/ncu_source_$r.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next((i for i, r in enumerate(rows) if any("Source" == c for c in r)), None)
if head is None:
    print("no header found"); print(rows[:3]); sys.exit(0)
cols = rows[head]
def col(*names):
    for n in names:
        for i, c in enumerate(cols):
            if n in c:
                return i
    return None
src = cols.index("Source")
samp = col("Warp Stall Sampling (All Samples)", "Warp Stall Sampling (All", "Sampling Data (All)")
execd = col("Instructions Executed", "Warp Instructions Executed")
print("columns:", [c for c in cols][:12], "samples col:", samp)
body = [r for r in rows[head + 1:] if len(r) == len(cols)]
def num(x):
    try: return float(x.replace(",", ""))
    except ValueError: return 0.0
s = [num(r[samp]) if samp is not None else 0 for r in body]
total = sum(s) or 1
mma = [i for i, r in enumerate(body) if "HGMMA" in r[src]]
if mma:
    a, b = mma[0], mma[-1]
    print(f"samples: prologue {sum(s[:a]) / total:.3f}  loop {sum(s[a:b + 1]) / total:.3f}  epilogue {sum(s[b + 1:]) / total:.3f}  (instructions {a}, {b - a + 1}, {len(body) - b - 1})")
top = sorted(range(len(body)), key=lambda i: -s[i])[:30]
for i in sorted(top):
    e = num(body[i][execd]) if execd is not None else 0
    print(f"{i:5d} {s[i] / total:6.3f} exec={e:10.0f}  {body[i][src][:90]}")
PY
done
