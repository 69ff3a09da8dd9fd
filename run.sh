#!/usr/bin/env bash
# The main job: build attnc, check and compile every shipped kernel, explain one, and run
# one end to end on the CPU. Outputs go to out/ (git-ignored).
source "$(dirname "$0")/scripts/common.sh"
cd "$(repo_root)"
need_cargo
ensure_build_deps

echo "== building attnc (release)" >&2
cargo build --release -q -p attnc-runtime --bin attnc -p attnc-examples --bin grat_b_cpu
# Where cargo puts the binaries (CARGO_TARGET_DIR when set).
bin="${CARGO_TARGET_DIR:-target}/release"
attnc="$bin/attnc"
mkdir -p out

echo "== checking and compiling the shipped kernels" >&2
for f in kernels/*.attn; do
  "$attnc" check "$f"
  name=$(basename "$f" .attn)
  "$attnc" compile "$f" --emit spec -o "out/$name.spec.txt"
  written="out/$name.spec.txt"
  if grep -q "= *attention(" "$f"; then
    "$attnc" compile "$f" --emit schedule -o "out/$name.schedule.txt"
    "$attnc" compile "$f" --emit ir -o "out/$name.ir.txt"
    written="$written, out/$name.schedule.txt, out/$name.ir.txt"
  fi
  if grep -q "^select " "$f"; then
    "$attnc" compile "$f" --emit plan -o "out/$name.plan.txt"
    written="$written, out/$name.plan.txt"
  fi
  echo "   $f -> $written" >&2
done

echo "== explaining GRAT-B on a 128x128 canvas (Flux 2048^2, no text)" >&2
"$attnc" explain kernels/grat.attn --kernel grat_b_2d --set H=128 --set W=128 --set R=1 --set TEXT=0 \
  --png out/grat_b_2d.png

echo "== running grat_b_2d on the CPU through the Rust API, against the f64 reference" >&2
"$bin/grat_b_cpu"

echo "== timing grat_b_2d (Flux 1024^2 with text, 24 heads) on the CPU" >&2
"$attnc" bench kernels/grat.attn --kernel grat_b_2d --runs 3

echo "== Quest decode on the CPU: 8 sequences of 16384 cached tokens, a 4096-token budget" >&2
"$attnc" explain kernels/quest.attn --set CONTEXT=16384
"$attnc" bench kernels/quest.attn --set CONTEXT=16384 --runs 3
