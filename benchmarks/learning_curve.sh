#!/usr/bin/env bash
# The learning curve a user training a new category on a CPU meets: a run from scratch with the defaults
# (`coat-train --data procedural:faces --preset small --resolution 64 --out RUN`, nothing else), stopped at
# 10, 20, 40 and 60 minutes of training wall clock (`--max-minutes` then `--resume`, which continues the run
# exactly), with the easy-split quality bench of each snapshot run between the segments so it never shares the
# cores with training.
#   bash benchmarks/learning_curve.sh [RUN] [PAIRS]     (defaults: runs/curve64, 200 pairs; ~80 min on 2 cores)
# DATA=... trains on another --data (an image folder, procedural:cars) and BENCH_DATA=procedural:cars benches on
# the held-out category (both default to procedural:faces).
# Writes RUN/curve/coat_<minutes>min.safetensors and RUN/curve/quality_<minutes>min.json; run again, it goes on
# from the last snapshot. Run it from a checkout nobody edits meanwhile (each segment imports the code afresh).
set -eu
RUN=${1:-runs/curve64}; PAIRS=${2:-200}; PY=${PY:-.venv/bin/python}
DATA=${DATA:-procedural:faces}; BENCH_DATA=${BENCH_DATA:-procedural:faces}
mkdir -p "$RUN/curve"
done_minutes=0
for mark in 10 20 40 60; do
  if [ -f "$RUN/curve/quality_${mark}min.json" ]; then done_minutes=$mark; continue; fi
  if [ ! -f "$RUN/curve/coat_${mark}min.safetensors" ]; then
    resume=""; [ -f "$RUN/train_state.safetensors" ] && resume="--resume"
    echo "== $(date -u +%H:%M:%S) training to $mark min"
    $PY -m coat_model.train --data "$DATA" --preset small --resolution 64 --out "$RUN" $resume \
      --max-minutes $((mark - done_minutes))
    cp "$RUN/coat.safetensors" "$RUN/curve/coat_${mark}min.safetensors"
  fi
  echo "== $(date -u +%H:%M:%S) bench at $mark min"
  $PY -m coat_model.bench quality --ckpt "$RUN/curve/coat_${mark}min.safetensors" --pairs "$PAIRS" --split easy --data "$BENCH_DATA" \
    --json "$RUN/curve/quality_${mark}min.json.tmp"
  mv "$RUN/curve/quality_${mark}min.json.tmp" "$RUN/curve/quality_${mark}min.json"
  done_minutes=$mark
done
