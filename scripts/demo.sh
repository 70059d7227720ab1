#!/usr/bin/env bash
# Fresh machine -> the main job on bundled real data: set up .venv, then locate cross-season queries cut from the
# bundled 2017 SJER plots on the 2018 plots with the reference checkpoint (TopicGeo vs SIFT + MAGSAC), writing
# match pictures and a JSON report to out/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m topicgeo demo --out out/demo "$@"
