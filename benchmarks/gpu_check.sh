#!/usr/bin/env bash
# The checks that need a CUDA device, in at most five minutes on one H200, summarised in one
# JSON file (docs/scaling.md, "Benchmarks on a GPU"): benchmarks/gpu_check.py runs the device
# query, the GPU-marked tests, a one-rank FSDP2 job killed once and resumed, throughput and MFU
# eager and compiled, the attention kernel, and the memory model against the allocator's peak,
# each section in its own process under its own time budget.
# Results go to $OUT when it is set, else to benchmarks/results/gpu/ (gpu_check.json, with each
# section's log beside it). Without a CUDA device it prints "no CUDA device: skipped" and exits
# 0, so it can be called anywhere. Exit status: 0 when every section succeeded, else 1.
#
#   bash benchmarks/gpu_check.sh                 # GPU_CHECK_ARGS="--only job" to pass options
#   bash benchmarks/gpu_check.sh --smoke         # every section on CPU at toy sizes
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
DEST=${OUT:-benchmarks/results/gpu}

# shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of options
exec "$PY" benchmarks/gpu_check.py --out "$DEST" ${GPU_CHECK_ARGS:-} "$@"
