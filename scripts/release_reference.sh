#!/usr/bin/env bash
# Release a training run as the committed reference checkpoint (topicgeo/assets): choose the coarse threshold on the
# TRAINING plots, write the fp16 checkpoint, evaluate it on the dev splits (evaluation.md protocol; with and without
# the quarter-turn search of the vehicle) and write the model card with those numbers.
#   bash scripts/release_reference.sh [RUN_DIR] [DATA_ROOT]     (defaults: runs/cpu_stage2 ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/cpu_stage2}
DATA=${2:-../shared/data}
ASSETS=topicgeo/assets
python -m topicgeo.eval.tune --checkpoint "$RUN/last.pt" --split topicgeo/splits/sjer_train.txt --data-root "$DATA" \
  --out "$ASSETS/tune_threshold.json"
THRESHOLD=$(python -c "import json; print(json.load(open('$ASSETS/tune_threshold.json'))['best_threshold'])")
FINE=$(python -c "import json; print(json.load(open('$ASSETS/tune_threshold.json'))['best_fine_threshold'])")
python -m topicgeo.train.card --run "$RUN" --out "$ASSETS" --coarse-threshold "$THRESHOLD" --fine-threshold "$FINE" \
  --tuning "$ASSETS/tune_threshold.json"
python -m topicgeo.eval.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --split topicgeo/splits/sjer_dev.txt \
  --data-root "$DATA" --out "$ASSETS/eval_sjer.json" > /dev/null
python -m topicgeo.eval.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --split topicgeo/splits/sjer_dev.txt \
  --data-root "$DATA" --quarter-turns 0,1,2,3 --no-sift --out "$ASSETS/eval_sjer_turns.json" > /dev/null
python -m topicgeo.eval.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --split topicgeo/splits/naip.json \
  --data-root "$DATA" --out "$ASSETS/eval_naip.json" > /dev/null
python -m topicgeo.eval.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --split topicgeo/splits/naip.json \
  --data-root "$DATA" --quarter-turns 0,1,2,3 --no-sift --out "$ASSETS/eval_naip_turns.json" > /dev/null
python -m topicgeo.train.card --run "$RUN" --out "$ASSETS" --coarse-threshold "$THRESHOLD" --fine-threshold "$FINE" \
  --tuning "$ASSETS/tune_threshold.json" --eval "$ASSETS"/eval_sjer.json "$ASSETS"/eval_sjer_turns.json \
  "$ASSETS"/eval_naip.json "$ASSETS"/eval_naip_turns.json
