#!/usr/bin/env bash
# One device call: train the project's recipe (the small preset) at 128 px on procedural faces, bench its quality
# on both splits, draw the sample grid, run the speed bench and the GPU check (xformers included). Every stage is
# time-boxed against one deadline (SESSION_SECONDS after the start, 690 s: 12 minutes with the machine's start-up)
# and leaves its output in $OUT even when a later one fails; the stages after training keep the time they need.
#   device: bash benchmarks/gpu_session.sh          (carry .whl for the xformers wheel)
#   here:   bash benchmarks/gpu_session.sh --smoke  (a CPU rehearsal of every stage in about a minute; make test runs it)
# Env: SESSION_SECONDS (690), TRAIN_MINUTES (4.0), BATCH (128), WORKERS (14), AMP (off), RESOLUTION (128), INIT (a checkpoint to grow from,
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
  PAIRS=8; SPEED="--quick --sections transfer --transfer-res 32 --batches 1 --preset tiny"
  CHECK="--smoke --device cpu"
else
  DEV=cuda; TRAIN_MINUTES=${TRAIN_MINUTES:-4.0}
  PRESET="--preset small --resolution ${RESOLUTION:-128} --steps 20000 --batch-size ${BATCH:-128}"
  PAIRS=200; SPEED="--quick --sections transfer,train"; CHECK="--xformers-wheel-dir .whl"
  nvidia-smi -L
fi
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

start=$(date +%s); DEADLINE=$(( start + ${SESSION_SECONDS:-690} ))
# Stage caps (s) of what follows training; on CPU (--smoke) they only bound a stuck stage.
QUALITY_CAP=65; FIGURES_CAP=35; SPEED_CAP=135; CHECK_CAP=100
[ $SMOKE = 1 ] && { QUALITY_CAP=120; FIGURES_CAP=60; SPEED_CAP=150; CHECK_CAP=170; DEADLINE=$(( start + 3600 )); }
box() {  # $1: a stage's cap, $2: seconds to keep for the stages after it -> the stage's timeout (at least 10 s)
  local t=$(( DEADLINE - $(date +%s) - $2 )); [ $t -gt $1 ] && t=$1; [ $t -lt 10 ] && t=10; echo $t
}
AFTER_TRAIN=$(( 2 * QUALITY_CAP + FIGURES_CAP + SPEED_CAP + CHECK_CAP ))

train() {  # $@: extra trainer flags
  rm -rf "$RUN"
  local init=""; [ -n "${INIT:-}" ] && init="--init $INIT"
  local whole=${TRAIN_MINUTES%.*}
  timeout $(box $(( ${whole:-0} * 60 + 90 )) $AFTER_TRAIN) $PY -m coat_model.train --data procedural:faces $PRESET $init \
    --lr 2e-3 --seed 0 --out "$RUN" --max-minutes "$TRAIN_MINUTES" --device $DEV \
    --fit-to-time --ckpt-every 500 --sample-every 0 --log-every 50 ${MODEL_SET-} "$@"
}
train --workers ${WORKERS:-14} --amp ${AMP:-off} > "$OUT/train.log" 2>&1 || true
if [ ! -f "$RUN/coat.safetensors" ] && [ $SMOKE = 0 ]; then  # a CUDA-path failure: retry plainly with what is left
  echo "first attempt failed; retrying with --amp off --workers 4" >> "$OUT/train.log"
  TRAIN_MINUTES=$($PY -c "print(max(0.5, ($DEADLINE - $AFTER_TRAIN - $(date +%s) - 40) / 60))")
  train --workers 4 --amp off >> "$OUT/train.log" 2>&1 || true
fi
cp "$RUN/coat.safetensors" "$RUN/metrics.jsonl" "$RUN/run.json" "$OUT/" 2>/dev/null
keep=$(( QUALITY_CAP + FIGURES_CAP + SPEED_CAP + CHECK_CAP ))
for split in easy hard; do
  timeout $(box $QUALITY_CAP $keep) $PY -m coat_model.bench quality --ckpt "$OUT/coat.safetensors" --pairs $PAIRS \
    --split $split --device $DEV --json "$OUT/quality_$split.json" > "$OUT/quality_$split.txt" 2>&1 || true
  keep=$(( FIGURES_CAP + SPEED_CAP + CHECK_CAP ))
done
timeout $(box $FIGURES_CAP $(( SPEED_CAP + CHECK_CAP ))) $PY -m coat_model.bench figures --ckpt "$OUT/coat.safetensors" --out "$OUT" > "$OUT/figures.log" 2>&1 || true
timeout $(box $SPEED_CAP $CHECK_CAP) $PY -m coat_model.bench speed --device $DEV --json "$OUT/speed.json" $SPEED > "$OUT/speed.log" 2>&1 || true
if [ -f benchmarks/gpu_check.py ]; then
  timeout $(box $CHECK_CAP 0) $PY benchmarks/gpu_check.py --json "$OUT/gpu_check.json" $CHECK > "$OUT/gpu_check.log" 2>&1 || true
fi
echo "session: $(( $(date +%s) - start )) s; in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
tail -5 "$OUT/train.log"; cat "$OUT/quality_easy.txt" 2>/dev/null | head -8; tail -12 "$OUT/gpu_check.log" 2>/dev/null
