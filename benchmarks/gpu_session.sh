#!/usr/bin/env bash
# One device call: train the bundled checkpoint at 128 px on procedural faces, bench its quality on the GPU, then
# run the GPU check. Every stage is time-boxed and leaves its output in $OUT even when a later one fails.
#   device: bash benchmarks/gpu_session.sh   (carry .whl for the xformers wheel)
# Env: TRAIN_MINUTES (5.0), BATCH (128), WORKERS (14), AMP (off), MODEL_SET (architecture flags of the new run;
# default none: the small preset is the recipe, with pixel latents, refinement and the warped-style colour path;
# e.g. MODEL_SET="--model-set warp_style=false" for the paper's modulation path).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUN=/tmp/coat_run
TRAIN_MINUTES=${TRAIN_MINUTES:-5.0}
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

train() {  # $@: extra trainer flags
  rm -rf "$RUN"
  timeout $(( ${TRAIN_MINUTES%.*} * 60 + 90 )) python3 -m coat_model.train --data procedural:faces --preset small \
    --resolution 128 --steps 20000 --batch-size ${BATCH:-128} --lr 2e-3 --seed 0 --out "$RUN" --max-minutes "$TRAIN_MINUTES" \
    --fit-to-time --ckpt-every 500 --sample-every 0 --log-every 50 ${MODEL_SET-} "$@"
}
start=$(date +%s)
train --workers ${WORKERS:-14} --amp ${AMP:-off} > "$OUT/train.log" 2>&1 || true
if [ ! -f "$RUN/coat.safetensors" ]; then  # a CUDA-path failure: retry plainly with what time is left
  echo "first attempt failed; retrying with --amp off --workers 4" >> "$OUT/train.log"
  TRAIN_MINUTES=$(python3 -c "print(max(1.0, $TRAIN_MINUTES - ($(date +%s) - $start) / 60))")
  train --workers 4 --amp off >> "$OUT/train.log" 2>&1 || true
fi
cp "$RUN/coat.safetensors" "$RUN/metrics.jsonl" "$RUN/run.json" "$OUT/" 2>/dev/null
python3 - "$RUN" "$OUT/samples.png" <<'PY' || true
import sys, torch
from pathlib import Path
from coat_model.io import load
from coat_model.data.faces import sample_pairs
from coat_model.images import save_grid
m = load(Path(sys.argv[1]) / "coat.safetensors", device="cuda")
p = sample_pairs(8, seed=42, size=m.config.resolution)
out, conf = m.transfer(p.content.cuda(), p.style.cuda())
save_grid(torch.cat([p.content, p.style, out.cpu(), p.target]), sys.argv[2], nrow=8)
PY
timeout 90 python3 -m coat_model.bench quality --ckpt "$OUT/coat.safetensors" --pairs 200 --split easy --device cuda \
  --json "$OUT/quality.json" >> "$OUT/train.log" 2>&1 || true
if [ -f benchmarks/gpu_check.py ]; then
  timeout 170 python3 benchmarks/gpu_check.py --json "$OUT/gpu_check.json" --xformers-wheel-dir .whl \
    > "$OUT/gpu_check.log" 2>&1 || true
else
  timeout 90 python3 benchmarks/gpu_mini_check.py "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1 || true
fi
tail -15 "$OUT/train.log"; tail -40 "$OUT/gpu_check.log"
