#!/usr/bin/env bash
# Issue 5: train IRN and RefScale on the OSCD train cities at equal budget, one model at a time
# (two CPU-heavy jobs at once slow each other 4-5x). Re-running continues an interrupted run
# (--resume) from its last checkpoint. Usage: bash scripts/train_oscd.sh [x2|x4] [STEPS] [PATCH]
#   RUNS=runs bash scripts/train_oscd.sh x2 1500 64
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-x2}; steps=${2:-1500}; patch=${3:-64}
runs=${RUNS:-runs}
m1=$((steps / 2)); m2=$((steps * 3 / 4))
for arch in irn refscale; do
  out="$runs/$arch-$scale-oscd"
  resume=(); [ -f "$out/checkpoints/latest.json" ] && resume=(--resume)
  echo "== $arch-$scale: $steps steps, batch 8, ${patch}px -> $out ($(date -u +%H:%M:%S))"
  refscale train "configs/$arch-$scale-oscd-cpu.yaml" --out "$out" "${resume[@]}" \
    --set schedule.steps="$steps" --set "schedule.milestones=[$m1,$m2]" \
    --set data.patch_size="$patch" --set log.progress=false
done
