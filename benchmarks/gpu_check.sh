#!/usr/bin/env bash
# One script for a GPU machine (torch and triton preinstalled, no network): the test suite on CUDA (bf16 parity
# included), the GAU kernel benchmark and the FLASH layer benchmark (kernels vs reference vs torch.compile vs
# FLASH-pytorch when installed vs Transformer++); everything is written under $OUT (default: ./gpu_results).
# Prints the benchmark tables last.
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

echo "[gpu_check] FLASH layer benchmark (constant tokens per batch, then batch 1 for linear scaling)"
timeout 300 "$py" -m benchmarks.flash_layer --n 2048 8192 16384 --tokens 32768 --out "$OUT" >"$OUT/flash_layer.md" 2>&1
layer_rc=$?
timeout 120 "$py" -m benchmarks.flash_layer --n 8192 131072 --tokens 8192 --no-compile --out "$OUT/batch1" \
    >"$OUT/flash_layer_batch1.md" 2>&1
scaling_rc=$?

echo "[gpu_check] exit codes: tests $tests_rc, GAU benchmark $bench_rc, FLASH layer $layer_rc / $scaling_rc"
cat "$OUT/gau_attention.md" "$OUT/flash_layer.md" "$OUT/flash_layer_batch1.md"
exit $(( tests_rc != 0 || bench_rc != 0 || layer_rc != 0 || scaling_rc != 0 ))
