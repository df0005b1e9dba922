#!/usr/bin/env bash
# The learning curve a user training a new category on a CPU meets: a run from scratch with the defaults
# (`coat-train --data DATA --preset small --resolution 64 --out RUN`, nothing else), stopped at 10, 20, 40 and 60
# minutes of training wall clock (`--max-minutes` then `--resume`, which continues the run exactly), with the
# easy-split quality bench of each snapshot run between the segments so it never shares the cores with training.
#   bash benchmarks/learning_curve.sh [RUN] [PAIRS]     (defaults: runs/curve64, 200 pairs; ~80 min on 2 cores)
# DATA (default procedural:faces) trains on another --data: procedural:cars, or an image folder such as
# `python benchmarks/render_folder.py DIR` writes. BENCH_DATA, the category the bench draws its held-out pairs from,
# follows a procedural DATA (without -hard) and must be given for a folder (BENCH_DATA=procedural:cars).
# Writes RUN/curve/coat_<minutes>min.safetensors and RUN/curve/quality_<minutes>min.json; run again, it goes on
# from the last snapshot (with the same DATA and BENCH_DATA, recorded in RUN/curve/data). Run it from a checkout
# nobody edits meanwhile (each segment imports the code afresh).
# STEPS="223 446 908 1445" takes the marks in optimiser steps instead (`--stop-at`, the schedule unchanged): the
# curve of a machine whose hour is that many steps, measured on a slower or busier one, in as many sessions as it
# takes (RUN/curve/coat_<N>steps.safetensors, quality_<N>steps.json).
set -eu
RUN=${1:-runs/curve64}; PAIRS=${2:-200}; PY=${PY:-.venv/bin/python}
DATA=${DATA:-procedural:faces}
if [ -z "${BENCH_DATA:-}" ]; then
  case "$DATA" in
    procedural:*) BENCH_DATA=${DATA%-hard} ;;
    *) echo "DATA=$DATA is a folder: say which category the bench scores with BENCH_DATA=procedural:NAME" >&2
       exit 2 ;;
  esac
fi
if [ -n "${STEPS:-}" ]; then marks=$STEPS; unit=steps; else marks="10 20 40 60"; unit=min; fi
bad_marks() { echo "STEPS=\"$STEPS\": give whole steps, smallest first" >&2; exit 2; }
last=0
for mark in $marks; do
  case "$mark" in ''|*[!0-9]*) bad_marks ;; esac
  [ "$mark" -gt "$last" ] || bad_marks
  last=$mark
done
[ $last != 0 ] || bad_marks
mkdir -p "$RUN/curve"
record="data=$DATA bench_data=$BENCH_DATA"
if [ $unit = steps ]; then record="$record unit=steps"; fi  # a run's marks are all minutes or all steps
if [ -f "$RUN/curve/data" ] && [ "$(cat "$RUN/curve/data")" != "$record" ]; then
  echo "$RUN was made with $(cat "$RUN/curve/data"), not $record: use another RUN" >&2
  exit 2
fi
echo "$record" > "$RUN/curve/data"
done_mark=0
for mark in $marks; do
  if [ -f "$RUN/curve/quality_${mark}${unit}.json" ]; then done_mark=$mark; continue; fi
  if [ ! -f "$RUN/curve/coat_${mark}${unit}.safetensors" ]; then
    resume=""; [ -f "$RUN/train_state.safetensors" ] && resume="--resume"
    if [ $unit = steps ]; then stop="--stop-at $mark"; else stop="--max-minutes $((mark - done_mark))"; fi
    echo "== $(date -u +%H:%M:%S) training to $mark $unit"
    $PY -m coat_model.train --data "$DATA" --preset small --resolution 64 --out "$RUN" $resume $stop
    if [ $unit = steps ]; then
      at=$($PY -c "import sys; from coat_model.io import metadata; print(metadata(sys.argv[1])['steps'])" \
        "$RUN/coat.safetensors")  # the step of the very file the snapshot copies
      if [ "$at" -lt "$mark" ]; then
        echo "the run stopped at step $at, before $mark: run the script again" >&2; exit 1
      elif [ "$at" -gt "$mark" ]; then
        echo "$RUN is at step $at, past $mark: a curve needs a run that has not gone past its marks" >&2; exit 2
      fi
    fi
    cp "$RUN/coat.safetensors" "$RUN/curve/coat_${mark}${unit}.safetensors"
  fi
  echo "== $(date -u +%H:%M:%S) bench at $mark $unit"
  $PY -m coat_model.bench quality --ckpt "$RUN/curve/coat_${mark}${unit}.safetensors" --pairs "$PAIRS" \
    --split easy --data "$BENCH_DATA" --json "$RUN/curve/quality_${mark}${unit}.json.tmp"
  mv "$RUN/curve/quality_${mark}${unit}.json.tmp" "$RUN/curve/quality_${mark}${unit}.json"
  done_mark=$mark
done
