#!/usr/bin/env bash
# Create .venv and install the project with the training, export and test extras (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: a later unpinned requirement must never pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -c scripts/constraints.txt -e ".[train,export,test,mavlink,ray,bench]"
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
