#!/usr/bin/env bash
# Train a list of models with WORKERS single-threaded workers pulling from one queue.
# On this 2-core machine two 1-thread trainings side by side do ~20% more steps per hour than one
# 2-thread training (irn-x2-oscd, 64 px: 1.55 s/step each vs 0.96 s/step alone; measurement and command in
# docs/training.md, "The campaign and the shipping rule").
# Each line of JOBS is "CONFIG STEPS [run=NAME] [KEY=VALUE ...]"; the run folder is $RUNS/NAME
# (default: the config name without -cpu); KEY=VALUE are config overrides (--set). The schedule
# comes from the config (or the line); the queue only sets the steps. Workers run at nice $NICE (default 19).
# Re-running resumes interrupted runs (--resume) and skips finished ones.
#   RUNS=runs WORKERS=2 nohup bash scripts/train_queue.sh jobs.txt > runs/queue.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
jobs_file=$(realpath "$1"); runs=${RUNS:-runs}; workers=${WORKERS:-2}
queue=$(mktemp); cp "$jobs_file" "$queue"

next_job() {  # pop the first non-empty line of the queue, under a lock
  flock "$queue.lock" bash -c 'line=$(grep -m1 . "$1" || true); [ -n "$line" ] && sed -i "0,/./{/./d}" "$1"; echo "$line"' _ "$queue"
}

worker() {
  while job=$(next_job) && [ -n "$job" ]; do
    read -r config steps extra <<<"$job"
    name=$(basename "$config" .yaml); name=${name%-cpu}
    sets=(--set schedule.steps="$steps" --set precision.threads=1 --set log.progress=false)
    for kv in $extra; do
      if [[ $kv == run=* ]]; then name=${kv#run=}; else sets+=(--set "$kv"); fi
    done
    out="$runs/$name"
    if compgen -G "$out/*.safetensors" > /dev/null; then echo "== $name: finished (final weights in $out), skipped"; continue; fi
    resume=(); [ -f "$out/checkpoints/latest.json" ] && resume=(--resume)
    echo "== $name: $steps steps -> $out (worker $1, $(date -u +%H:%M:%S))"
    mkdir -p "$out"
    nice -n ${NICE:-19} refscale train "$config" --out "$out" "${resume[@]}" "${sets[@]}" >>"$out/train.log" 2>&1 \
      || echo "== $name: FAILED (see $out/train.log)"
    echo "== $name: done ($(date -u +%H:%M:%S))"
  done
}

for w in $(seq "$workers"); do worker "$w" & done
wait
rm -f "$queue" "$queue.lock"
