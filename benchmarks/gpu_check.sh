#!/usr/bin/env bash
# One script for a GPU machine (torch and triton preinstalled, no network): the test suite on CUDA (bf16 parity
# included), the GPU-compile report of the machine's own architecture, and the GAU kernel benchmark; everything
# is written under $OUT (default: ./gpu_results). Prints the benchmark table last.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
py=${PYTHON:-python3}
unset TRITON_INTERPRET

{ nvidia-smi; "$py" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; git rev-parse HEAD; date -u; } \
    >"$OUT/environment.txt" 2>&1

echo "[gpu_check] tests (CUDA)"
timeout 300 "$py" -m pytest -q -p no:cacheprovider tests >"$OUT/tests.log" 2>&1
tests_rc=$?
tail -3 "$OUT/tests.log"

echo "[gpu_check] GAU attention benchmark"
timeout 300 "$py" -m benchmarks.gau_attention --n 1024 2048 4096 8192 16384 --out "$OUT" >"$OUT/gau_attention.md" 2>&1
bench_rc=$?

echo "[gpu_check] tests exit code $tests_rc, benchmark exit code $bench_rc; results in $OUT"
cat "$OUT/gau_attention.md"
exit $(( tests_rc != 0 || bench_rc != 0 ))
