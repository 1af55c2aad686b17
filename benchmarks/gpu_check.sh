#!/usr/bin/env bash
# One prepared GPU check (see benchmarks/gpu_check.py): a 3-step stage with checkpoint and resume,
# steady-state tokens/s, MFU and peak memory of the XLM-R Large shape at length 256 (batch 32 in
# fp32 / TF32 / bf16, batch 4 in bf16), host syncs per step, the attention kernel that ran, and
# zero-shot inference throughput. Random weights built from the config: nothing is downloaded.
#
#   benchmarks/gpu_check.sh                  # on one GPU, < 5 minutes; writes benchmarks/gpu_check/
#   benchmarks/gpu_check.sh --out "$OUT"     # somewhere else
#   benchmarks/gpu_check.sh --dry-run        # CPU, tiny shape, < 1 minute (CI: tests/test_gpu_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec timeout "${GPU_CHECK_TIMEOUT_S:-290}" "$PY" -m benchmarks.gpu_check "$@"
