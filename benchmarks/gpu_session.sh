#!/usr/bin/env bash
# One device call: train the project's recipe (the small preset) at 128 px on procedural faces, bench its quality
# on both splits, draw the sample grid, run the speed bench and the GPU check (xformers included). Every stage is
# time-boxed and leaves its output in $OUT even when a later one fails; the whole session fits in 12 minutes.
#   device: bash benchmarks/gpu_session.sh          (carry .whl for the xformers wheel)
#   here:   bash benchmarks/gpu_session.sh --smoke  (a CPU rehearsal of every stage in about a minute; make test runs it)
# Env: TRAIN_MINUTES (5.0), BATCH (128), WORKERS (14), AMP (off), RESOLUTION (128), INIT (a checkpoint to grow from,
# e.g. checkpoints/coat_faces.safetensors; default: from scratch), MODEL_SET (architecture flags of a new run;
# default none: the small preset is the recipe; e.g. MODEL_SET="--model-set warp_style=false" for the paper's
# modulation path), PY (python3).
set -u
export PYTHONUNBUFFERED=1
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUN=${RUN:-/tmp/coat_run}
PY=${PY:-python3}
if [ $SMOKE = 1 ]; then
  DEV=cpu; TRAIN_MINUTES=0.3; PRESET="--preset tiny --resolution 32 --steps 4 --batch-size 4"; WORKERS=0
  PAIRS=8; QUALITY_TIMEOUT=120; SPEED="--quick --sections transfer --transfer-res 32 --batches 1 --preset tiny"
  CHECK="--smoke --device cpu"
else
  DEV=cuda; TRAIN_MINUTES=${TRAIN_MINUTES:-5.0}
  PRESET="--preset small --resolution ${RESOLUTION:-128} --steps 20000 --batch-size ${BATCH:-128}"
  PAIRS=200; QUALITY_TIMEOUT=90; SPEED="--quick"; CHECK="--xformers-wheel-dir .whl"
  nvidia-smi -L
fi
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

train() {  # $@: extra trainer flags
  rm -rf "$RUN"
  local init=""; [ -n "${INIT:-}" ] && init="--init $INIT"
  timeout $(( ${TRAIN_MINUTES%.*} * 60 + 90 )) $PY -m coat_model.train --data procedural:faces $PRESET $init \
    --lr 2e-3 --seed 0 --out "$RUN" --max-minutes "$TRAIN_MINUTES" --device $DEV \
    --fit-to-time --ckpt-every 500 --sample-every 0 --log-every 50 ${MODEL_SET-} "$@"
}
start=$(date +%s)
train --workers ${WORKERS:-14} --amp ${AMP:-off} > "$OUT/train.log" 2>&1 || true
if [ ! -f "$RUN/coat.safetensors" ] && [ $SMOKE = 0 ]; then  # a CUDA-path failure: retry plainly with what is left
  echo "first attempt failed; retrying with --amp off --workers 4" >> "$OUT/train.log"
  TRAIN_MINUTES=$($PY -c "print(max(1.0, $TRAIN_MINUTES - ($(date +%s) - $start) / 60))")
  train --workers 4 --amp off >> "$OUT/train.log" 2>&1 || true
fi
cp "$RUN/coat.safetensors" "$RUN/metrics.jsonl" "$RUN/run.json" "$OUT/" 2>/dev/null
for split in easy hard; do
  timeout $QUALITY_TIMEOUT $PY -m coat_model.bench quality --ckpt "$OUT/coat.safetensors" --pairs $PAIRS \
    --split $split --device $DEV --json "$OUT/quality_$split.json" > "$OUT/quality_$split.txt" 2>&1 || true
done
timeout 60 $PY -m coat_model.bench figures --ckpt "$OUT/coat.safetensors" --out "$OUT" > "$OUT/figures.log" 2>&1 || true
timeout 150 $PY -m coat_model.bench speed --device $DEV --json "$OUT/speed.json" $SPEED > "$OUT/speed.log" 2>&1 || true
if [ -f benchmarks/gpu_check.py ]; then
  timeout 170 $PY benchmarks/gpu_check.py --json "$OUT/gpu_check.json" $CHECK > "$OUT/gpu_check.log" 2>&1 || true
fi
echo "session: $(( $(date +%s) - start )) s; in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
tail -5 "$OUT/train.log"; cat "$OUT/quality_easy.txt" 2>/dev/null | head -8; tail -12 "$OUT/gpu_check.log" 2>/dev/null
