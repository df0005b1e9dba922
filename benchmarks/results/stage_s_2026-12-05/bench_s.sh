#!/usr/bin/env bash
# Stage S with the bundled inference fields, on the 100 choosing pairs per split, the splits side by side; writes
# runs/stage_s_bundled.safetensors (which bench_s200.sh scores too) and stage_s_{easy,hard}.json beside this script.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd); cd "$HERE/../../.."
cp runs/stage_s128/coat.safetensors runs/stage_s_raw.safetensors
.venv/bin/python -c "from coat_model.io import grow, metadata, save; p = 'runs/stage_s_raw.safetensors'; \
save(grow(p, flow_affine=10, flow_affine_wide=28, fill_displacement=True).eval(), \
'runs/stage_s_bundled.safetensors', {k: v for k, v in metadata(p).items() \
if k not in ('config', 'format', 'format_version')})"
for split in easy hard; do
  OMP_NUM_THREADS=1 .venv/bin/python -m coat_model.bench options --ckpt runs/stage_s_bundled.safetensors \
    --pairs 100 --split $split --seed 123000000 \
    --variant old:flow_affine=0,flow_affine_wide=0,fill_displacement=false --json "$HERE/stage_s_$split.json" &
done
wait
