#!/usr/bin/env bash
# The GPU check in one go, for a machine that already has torch, torchvision, pytest and friends
# (no install): the `cuda` tests, then the GPU benchmark. Writes its logs and results to ${OUT:-.}.
# Each part has its own time limit, so that a hung test cannot eat a short lease: the tests
# ${TESTS_S:-240} s, the benchmark ${BENCH_S:-330} s (3 rounds of 1.5 s, compile included).
#   bash benchmarks/gpu_check.sh            # from the repository root
set -uo pipefail
out="${OUT:-.}"
export PYTHONPATH=src PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
nvidia-smi | tee "$out/nvidia-smi.txt"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee "$out/versions.txt"
# A test module whose optional extra is missing there fails to import: the cuda tests still run.
timeout "${TESTS_S:-240}" python3 -m pytest -m cuda -p no:cacheprovider -ra --continue-on-collection-errors tests 2>&1 | tee "$out/cuda-tests.log"
tests=${PIPESTATUS[0]}
timeout "${BENCH_S:-330}" python3 benchmarks/bench.py --device cuda --rounds 3 --seconds 1.5 --out "$out/gpu-results.json" 2>&1 | tee "$out/gpu-bench.log"
bench=${PIPESTATUS[0]}
echo "cuda tests exit $tests, GPU bench exit $bench"
exit $(( tests || bench ))
