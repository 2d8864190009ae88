#!/usr/bin/env bash
# The CUDA path on one GPU in under 8 minutes: the demo in bf16, a torchrun NCCL step, ViT-B/16
# throughput of every method, a compiled step. Writes runs/gpu_check/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" scripts/gpu_check.py --out "${OUT:-runs/gpu_check}" "$@"
