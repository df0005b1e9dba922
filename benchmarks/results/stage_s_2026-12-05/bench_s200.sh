#!/usr/bin/env bash
# Stage S (bundled inference fields) on the bench's own 200 pairs per split, as two halves of 100 (the options bench's
# defaults row equals the quality bench's coat row on these seeds).
cd /work/main
run() {  # split seed
  OMP_NUM_THREADS=1 .venv/bin/python -m coat_model.bench options --ckpt runs/stage_s_bundled.safetensors \
    --pairs 100 --split $1 --seed $2 --variant old:flow_affine=0,flow_affine_wide=0,fill_displacement=false --json /tmp/s200_$1_$2.json > /tmp/s200_$1_$2.txt 2>&1
}
run easy 987654321 & run hard 987654321 & wait
run easy 987654421 & run hard 987654421 & wait
