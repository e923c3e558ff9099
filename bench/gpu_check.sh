#!/usr/bin/env bash
# make gpu-check: the GPU check's second half, on a GPU machine with no network (bench/gpu_check.py).
# Needs a Python with torch, transformers, peft and accelerate (python3, or $PYTHON) and the wheels that
# `make gpu-check-wheels` put in .gpu-check/wheels on a machine that reaches PyPI. Installs them offline into
# $GPU_CHECK_SITE (default /tmp/gpu-check-site), builds a random-initialised 7B model, trains a few LoRA and
# QLoRA steps through the runner and axolotl, and writes .gpu-check/results.json (and $OUT/, when set).
# Ends inside 10 minutes on one H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import torch, transformers, peft, accelerate" 2>/dev/null || {
  echo "gpu-check: $PYTHON lacks torch, transformers, peft or accelerate (set PYTHON=...)" >&2; exit 2; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PYTHON" bench/gpu_check.py run --dir "${GPU_CHECK_DIR:-.gpu-check}" "$@"
