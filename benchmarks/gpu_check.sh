#!/usr/bin/env bash
# The GPU check in one go, for a machine that already has torch, torchvision, pytest and friends
# (no install): the `cuda` tests, then the GPU benchmark. Writes its logs and results to ${OUT:-.}.
#   bash benchmarks/gpu_check.sh            # from the repository root
set -uo pipefail
out="${OUT:-.}"
export PYTHONPATH=src PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
nvidia-smi | tee "$out/nvidia-smi.txt"
python -m pytest -m cuda -p no:cacheprovider -ra tests 2>&1 | tee "$out/cuda-tests.log"
tests=${PIPESTATUS[0]}
python benchmarks/bench.py --device cuda --rounds 3 --seconds 2 --out "$out/gpu-results.json" 2>&1 | tee "$out/gpu-bench.log"
bench=${PIPESTATUS[0]}
echo "cuda tests exit $tests, GPU bench exit $bench"
exit $(( tests || bench ))
