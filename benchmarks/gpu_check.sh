#!/usr/bin/env bash
# One script for a GPU machine (torch and triton preinstalled, no network needed), under 8 minutes on an H100:
#   1. the test suite on CUDA: the kernel tests (against the reference, bf16 parity included: those tests run
#      whenever CUDA is present), then the other tests; logs in $OUT/tests_kernels.log, $OUT/tests_other.log;
#   2. the quick benchmark sweep (python -m benchmarks.run --quick: kernels vs reference vs torch.compile vs
#      FLASH-pytorch when installed vs Transformer++, bf16), results in $OUT/bench/ (results.json with provenance
#      on every row, results.md, summary.md, plots/*.png), log in $OUT/bench.log;
#   3. a short summary: the benchmark's side-by-side table, then one line per step, last.
# Every step has its own time limit; a failed step does not stop the next. Exit code 0 when every step passed.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # default OUT: ./gpu_results
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
unset TRITON_INTERPRET  # the kernels must compile for the GPU, not run in the CPU interpreter
KERNEL_TESTS_LIMIT=${KERNEL_TESTS_LIMIT:-150}  # seconds
OTHER_TESTS_LIMIT=${OTHER_TESTS_LIMIT:-80}
BENCH_LIMIT=${BENCH_LIMIT:-200}               # the sweep itself starts no row after BENCH_BUDGET
BENCH_BUDGET=${BENCH_BUDGET:-160}
start=$SECONDS
steps=()
failed=0

record() {  # name rc seconds note
    steps+=("| $1 | $([ "$2" -eq 0 ] && echo ok || echo "FAILED (exit $2)") | $3 s | $4 |")
    [ "$2" -eq 0 ] || failed=1
}

echo "[gpu_check] environment -> $OUT/environment.txt"
{
    date -u
    git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -20
    nvidia-smi
    timeout 60 "$PYTHON" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
} >"$OUT/environment.txt" 2>&1
t=$SECONDS
timeout 60 "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)' >>"$OUT/environment.txt" 2>&1
rc=$?
record "CUDA visible to torch" "$rc" $((SECONDS - t)) "$(tail -1 "$OUT/environment.txt" | cut -c1-100)"

run_pytest() {  # name limit log args...
    local name=$1 limit=$2 log=$3 t=$SECONDS rc note progress fails
    shift 3
    echo "[gpu_check] $name (limit ${limit} s) -> $log"
    if ! "$PYTHON" -c 'import pytest' 2>/dev/null; then
        echo "pytest is not installed" >"$log"
        record "$name" 1 0 "pytest is not installed"
        return
    fi
    timeout --kill-after=10 "$limit" "$PYTHON" -m pytest -q -rfE -p no:cacheprovider --durations=10 \
        -o faulthandler_timeout=100 "$@" >"$log" 2>&1
    rc=$?
    note=$(grep -E "(passed|failed|error|no tests ran)" "$log" | tail -1 | tr -d '=' | sed 's/^ *//' | cut -c1-100)
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        progress=$(grep -oE '\[ *[0-9]+%\]' "$log" | tail -1)
        fails=$(grep -cE '^(FAILED|ERROR) ' "$log")
        note="timed out after ${limit} s at ${progress:-the start}; $fails failed so far"
        echo "[gpu_check] $name TIMED OUT after ${limit} s" >>"$log"
    fi
    record "$name" "$rc" $((SECONDS - t)) "$note"
    tail -2 "$log"
}

# the kernel tests first (they hold the bf16 parity tests, which run whenever CUDA is present), then the rest
kernel_tests=()
for f in tests/test_quad_attn.py tests/test_mixed_chunk_attn.py; do
    [ -f "$f" ] && kernel_tests+=("$f")
done
ignore=()
for f in "${kernel_tests[@]}"; do ignore+=("--ignore=$f"); done
run_pytest "kernel tests (CUDA, bf16 included)" "$KERNEL_TESTS_LIMIT" "$OUT/tests_kernels.log" "${kernel_tests[@]}"
run_pytest "other tests" "$OTHER_TESTS_LIMIT" "$OUT/tests_other.log" tests "${ignore[@]}"

echo "[gpu_check] quick benchmark sweep (limit ${BENCH_LIMIT} s, budget ${BENCH_BUDGET} s) -> $OUT/bench/"
t=$SECONDS
timeout --kill-after=10 "$BENCH_LIMIT" "$PYTHON" -m benchmarks.run --quick --device cuda \
    --budget-s "$BENCH_BUDGET" --out "$OUT/bench" >"$OUT/bench.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ -f "$OUT/bench/results.json" ]; then
    # stopped part-way: the rows of the subjects it finished are in results.json; make their tables and plots
    echo "[gpu_check] sweep exited with $rc: rendering the rows it wrote" >>"$OUT/bench.log"
    timeout 90 "$PYTHON" -m benchmarks.run --render "$OUT/bench/results.json" >>"$OUT/bench.log" 2>&1
fi
if [ -f "$OUT/bench/results.json" ]; then
    note=$(grep -E "^\[bench\] [0-9]+/[0-9]+ rows timed" "$OUT/bench.log" | tail -1 | cut -c9-80)
    [ -n "$note" ] || note="partial: only the subjects finished before the stop"
    grep -q "plots skipped" "$OUT/bench.log" && note="$note; plots skipped (no matplotlib)"
else
    note="no results written; see bench.log"
    [ "$rc" -eq 0 ] && rc=1
fi
[ "$rc" -eq 124 ] && note="timed out after ${BENCH_LIMIT} s; $note"
record "quick benchmark sweep" "$rc" $((SECONDS - t)) "$note"

{
    if [ -f "$OUT/bench/summary.md" ]; then
        cat "$OUT/bench/summary.md"
    else
        echo "(no benchmark summary: last lines of bench.log)"
        tail -20 "$OUT/bench.log"
    fi
    echo
    echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown),"\
        "$((SECONDS - start)) s in all; everything is under $OUT"
    echo
    echo "| step | result | time | note |"
    echo "| --- | --- | --- | --- |"
    printf '%s\n' "${steps[@]}"
} | tee "$OUT/summary.md"
exit "$failed"
