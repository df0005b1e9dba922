#!/usr/bin/env bash
# Stage S (runs/stage_s_bundled.safetensors, from bench_s.sh) on the bench's own 200 pairs per split, as two halves
# of 100 (the options bench's defaults row equals the quality bench's coat row on these seeds); writes
# s200_SPLIT_SEED.json beside this script, then average_halves.py prints their means.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd); cd "$HERE/../../.."
run() {  # split seed
  OMP_NUM_THREADS=1 .venv/bin/python -m coat_model.bench options --ckpt runs/stage_s_bundled.safetensors \
    --pairs 100 --split $1 --seed $2 --variant old:flow_affine=0,flow_affine_wide=0,fill_displacement=false \
    --json "$HERE/s200_$1_$2.json"
}
run easy 987654321 & run hard 987654321 & wait
run easy 987654421 & run hard 987654421 & wait
.venv/bin/python "$HERE/average_halves.py"
