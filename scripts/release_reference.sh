#!/usr/bin/env bash
# Release a training run as the committed reference checkpoint (topicgeo/assets): choose the coarse and in-window
# thresholds on the dev plots with the queries of seeds 1-3 (evaluation.md: tune on dev data only; the training plots are
# memorised by now, so they favour rules too strict or too loose for unseen ground), write the fp16 checkpoint,
# calibrate the vehicle's acceptance rule (min_inliers for the locator's refinement pass, min_first_pass_inliers for its
# first fit) on dev queries of seeds 1-6 (SJER plots and the NAIP dev pair, 264 queries) through an exported bundle,
# evaluate on the dev splits with the reports' seed-0 queries (evaluation.md protocol; with and without
# the quarter-turn search of the vehicle) and write the model card with those numbers.
#   bash scripts/release_reference.sh [RUN_DIR] [DATA_ROOT]     (defaults: runs/cpu_stage4 ../shared/data)
#   COARSE_THRESHOLD=0.05 FINE_THRESHOLD=0.02 bash scripts/release_reference.sh RUN_DIR   (thresholds given, not tuned)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/cpu_stage4}
DATA=${2:-../shared/data}
ASSETS=topicgeo/assets
LEVEL2=128  # level-1 matches refined at level 2: on the SJER dev queries 128 kept the mIoU of 256 at 0.7x the fine time
TUNE_SPLIT=topicgeo/splits/sjer_dev.txt
TUNE_SEED=1,2,3  # pooled, 72 queries (one seed's 24 proved too noisy); the dev reports below draw seed 0
# the acceptance rule: 264 pooled queries (a rule chosen on seeds 1-3 held 80 % precision on seeds 4-6, not 90 %)
ACCEPT_SEED=1,2,3,4,5,6
python -m topicgeo.eval.tune --checkpoint "$RUN/last.pt" --split "$TUNE_SPLIT" --seed "$TUNE_SEED" --data-root "$DATA" \
  --out "$ASSETS/tune_threshold.json"
# COARSE_THRESHOLD / FINE_THRESHOLD override the tuned values (the tuning's retrieval R@1 on 72 queries is noisy; e.g.
# keep the current release's thresholds when the acceptance report on the same tuning queries favours them)
THRESHOLD=${COARSE_THRESHOLD:-$(python -c "import json; print(json.load(open('$ASSETS/tune_threshold.json'))['best_threshold'])")}
FINE=${FINE_THRESHOLD:-$(python -c "import json; print(json.load(open('$ASSETS/tune_threshold.json'))['best_fine_threshold'])")}
python -m topicgeo.train.card --run "$RUN" --out "$ASSETS" --coarse-threshold "$THRESHOLD" --fine-threshold "$FINE" \
  --max-level2-windows "$LEVEL2" \
  --tuning "$ASSETS/tune_threshold.json"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python -m export.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --precision fp32 --query-size 512 --tile-size 512 \
  --out "$WORK/bundle" --no-engines > /dev/null
python -m benchmarks.acceptance --bundle "$WORK/bundle" --data "$DATA" --split "$TUNE_SPLIT" --seed "$ACCEPT_SEED" \
  --suites sjer,naip --out "$ASSETS/acceptance.json"
MIN_INLIERS=$(python -c "import json; print(json.load(open('$ASSETS/acceptance.json'))['chosen']['min_inliers'])")
FIRST=$(python -c "import json; print(json.load(open('$ASSETS/acceptance.json'))['chosen']['min_first_pass_inliers'] or '')")
FIRST_ARG=()
if [ -n "$FIRST" ]; then FIRST_ARG=(--min-first-pass-inliers "$FIRST"); fi
python -m topicgeo.train.card --run "$RUN" --out "$ASSETS" --coarse-threshold "$THRESHOLD" --fine-threshold "$FINE" \
  --max-level2-windows "$LEVEL2" \
  --tuning "$ASSETS/tune_threshold.json" --min-inliers "$MIN_INLIERS" "${FIRST_ARG[@]}" \
  --acceptance "$ASSETS/acceptance.json"
python -m topicgeo.eval.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --split topicgeo/splits/sjer_dev.txt \
  --data-root "$DATA" --out "$ASSETS/eval_sjer.json" > /dev/null
python -m topicgeo.eval.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --split topicgeo/splits/sjer_dev.txt \
  --data-root "$DATA" --quarter-turns 0,1,2,3 --no-sift --out "$ASSETS/eval_sjer_turns.json" > /dev/null
python -m topicgeo.eval.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --split topicgeo/splits/naip.json \
  --data-root "$DATA" --out "$ASSETS/eval_naip.json" > /dev/null
python -m topicgeo.eval.cli --checkpoint "$ASSETS/topicgeo_cpu.pt" --split topicgeo/splits/naip.json \
  --data-root "$DATA" --quarter-turns 0,1,2,3 --no-sift --out "$ASSETS/eval_naip_turns.json" > /dev/null
python -m topicgeo.train.card --run "$RUN" --out "$ASSETS" --coarse-threshold "$THRESHOLD" --fine-threshold "$FINE" \
  --max-level2-windows "$LEVEL2" \
  --tuning "$ASSETS/tune_threshold.json" --min-inliers "$MIN_INLIERS" "${FIRST_ARG[@]}" \
  --acceptance "$ASSETS/acceptance.json" --eval "$ASSETS"/eval_sjer.json "$ASSETS"/eval_sjer_turns.json "$ASSETS"/eval_naip.json "$ASSETS"/eval_naip_turns.json
