#!/usr/bin/env bash
# The checks that need a CUDA device, in one short run (docs/scaling.md, "Benchmarks on a GPU"):
#   1. the device as nvidia-smi and torch see it;
#   2. the suite's GPU-marked tests (pytest -m gpu);
#   3. post-training throughput and MFU with the job's Trainer (benchmarks/gpu_train_bench.py).
# Results go to $OUT when it is set, else to benchmarks/results/gpu/. Without a CUDA device it
# prints "no CUDA device: skipped" and exits 0, so it can be called anywhere. Exit status: that of
# the tests, else that of the benchmark.
#
#   bash benchmarks/gpu_check.sh                 # GPU_BENCH_ARGS="--steps 50" to pass options
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
DEST=${OUT:-benchmarks/results/gpu}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no CUDA device: skipped"
    exit 0
fi
mkdir -p "$DEST"

echo "== device"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
        | tee "$DEST/nvidia-smi.csv"
else
    echo "nvidia-smi not found (torch sees a CUDA device)" | tee "$DEST/nvidia-smi.csv"
fi
"$PY" - <<'EOF' | tee "$DEST/torch-cuda.json"
import json, torch
p = torch.cuda.get_device_properties(0)
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "devices": torch.cuda.device_count(),
    "name": p.name, "total_memory_gib": round(p.total_memory / 2**30, 2),
    "capability": f"{p.major}.{p.minor}", "bf16": torch.cuda.is_bf16_supported(),
}))
EOF

echo "== pytest -m gpu"
tests_rc=0
"$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$DEST/pytest-gpu.xml" 2>&1 \
    | tee "$DEST/pytest-gpu.txt" || tests_rc=$?

echo "== throughput and MFU"
bench_rc=0
# shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of options
"$PY" benchmarks/gpu_train_bench.py --out "$DEST/gpu_train_bench.json" ${GPU_BENCH_ARGS:-} 2>&1 \
    | tee "$DEST/gpu_train_bench.txt" || bench_rc=$?

echo "== results in $DEST (tests: exit $tests_rc, benchmark: exit $bench_rc)"
if [[ $tests_rc -ne 0 ]]; then exit "$tests_rc"; fi
exit "$bench_rc"
