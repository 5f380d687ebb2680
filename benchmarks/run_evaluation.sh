#!/usr/bin/env bash
# The evaluation runs behind benchmarks/RESULTS.md ("Evaluation"), one dataset per call:
#
#   benchmarks/run_evaluation.sh fashion-mnist     # the default dataset and checkpoint
#   benchmarks/run_evaluation.sh fm-textures       # Fashion-MNIST garments on natural textures (jobs.make_dataset)
#   STAGES="perturb sanity" benchmarks/run_evaluation.sh fashion-mnist   # some stages only
#
# Every stage resumes or is cheap to repeat: jobs.attribute and jobs.roar skip what is committed.
# Each stage's wall time and the machine's load average before and after it go to
# outputs/logs/<dataset>-times.txt (RESULTS.md quotes them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATASET=${1:?usage: run_evaluation.sh fashion-mnist|fm-textures}
STAGES=${STAGES:-"data train maps perturb sanity sanity-reset roar report"}

# Seven methods for perturbation and sanity. ROAR keeps the training budget that passes the budget check (the
# unmodified retrain within 3 points of the checkpoint) and fits the grid into ~45 minutes on the 2-core CPU by
# cutting methods, thresholds and seeds instead (RESULTS.md says what was cut), always with nli and the leakage
# control for every method but random (whose mask is random by construction). Measured on the 2-core CPU with
# two retrains at once, one thread each:
# - Fashion-MNIST: 25,000 images x 5 epochs (20,000 x 5 measured 3.25 points below), ~4 min per retrain:
#   pathway, gradient, random at t = 50 %, 2 seeds: 12 retrains.
# - textures: 40,000 x 5 (25,000 x 5 measured 4.5 points below), ~9 min per retrain here: RESULTS.md's run
#   cut the grid to pathway and random (8 retrains) and perturbation to 500 images:
#   ROAR_METHODS="pathway random" PERTURB_LIMIT=500 benchmarks/run_evaluation.sh fm-textures
M="pathway pathway_integrated=pathway:scores=integrated gradient gradient_x_input integrated_gradients guided_backprop grad_cam"
case "$DATASET" in
  fashion-mnist)
    SOURCE=fashion-mnist; CKPT=models/weights/resnet8-fashion-mnist.pt; OUT=outputs/maps/fm  # the shipped model
    ROAR_TRAIN=25000 ;;
  fm-textures)
    SOURCE=outputs/data/fm-textures; CKPT=outputs/models/resnet8-fm-textures.pt; OUT=outputs/maps/fmt
    ROAR_TRAIN=40000 ;;
  *) echo "unknown dataset $DATASET" >&2; exit 2 ;;
esac
ROAR_METHODS=${ROAR_METHODS:-"pathway gradient random"}
ROAR_GRID=(--thresholds "${ROAR_THRESHOLDS:-50}" --seeds "${ROAR_SEEDS:-2}" --train-limit "$ROAR_TRAIN" --epochs 5
           --test-limit 2000)
mkdir -p outputs/logs
TIMES=outputs/logs/$DATASET-times.txt

stage() {  # stage <name> <command...>: run it, log wall time and load
  local name=$1; shift
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local before; before=$(cut -d' ' -f1-3 /proc/loadavg)
  local start=$SECONDS
  echo "== $DATASET $name: $*"
  "$@" 2>&1 | tee "outputs/logs/$DATASET-$name.log"
  echo "$name: $((SECONDS - start)) s, load before $before, after $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)" \
    | tee -a "$TIMES"
}

if [ "$DATASET" = fm-textures ] && [ ! -f "$SOURCE/dataset.json" ]; then
  stage data "$PY" -m jobs.make_dataset --output "$SOURCE" --seed 0
fi
[ -f "$CKPT" ] || stage train "$PY" -m jobs.train --source "$SOURCE" --output "$CKPT" --no-progress
stage maps "$PY" -m jobs.attribute --source "$SOURCE" --checkpoint "$CKPT" --split test --limit 2000 \
  --output "$OUT-test" --methods "$M" --no-progress
stage maps "$PY" -m jobs.attribute --source "$SOURCE" --checkpoint "$CKPT" --split train --limit "$ROAR_TRAIN" \
  --output "$OUT-train" --methods "pathway gradient" --no-progress
stage perturb "$PY" -m jobs.perturb --maps "$OUT-test" --limit "${PERTURB_LIMIT:-1000}" --fill mean,nli --rank abs,signed --no-progress
stage sanity "$PY" -m jobs.sanity --source "$SOURCE" --checkpoint "$CKPT" --limit 100 --methods "$M" --draws 3 \
  --output "$OUT-test/_eval/sanity" --no-progress
stage sanity-reset "$PY" -m jobs.sanity --source "$SOURCE" --checkpoint "$CKPT" --limit 100 \
  --methods "pathway gradient guided_backprop" --draws 3 --randomize reset --group module \
  --output "$OUT-test/_eval/sanity-reset" --no-progress
stage roar "$PY" -m jobs.roar --train-maps "$OUT-train" --test-maps "$OUT-test" --methods "$ROAR_METHODS" \
  "${ROAR_GRID[@]}" --fill "${ROAR_FILLS:-nli}" --no-progress
stage report "$PY" -m jobs.report --maps "$OUT-test" --sanity "$OUT-test/_eval/sanity" --output "outputs/report/$DATASET"
