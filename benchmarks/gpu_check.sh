#!/usr/bin/env bash
# One script for a GPU machine (torch and triton preinstalled, no network needed), in 8 minutes on an H100/H200,
# compile time included. Steps, in this order (each writes its results under $OUT as it goes):
#   1. bf16 parity at the production shapes (tests/test_gpu_parity.py: FLASH's core at s 128, e 1024, g 256,
#      n 8192 and n 1M; GAU's at n 8192), which also compiles (warms the triton cache for) the kernels of every
#      timed step after it; log in $OUT/parity.log;
#   2. the baselines every target ratio depends on: FLASH-pytorch 0.1.9 eager, torch.compile of the reference and
#      the layers with an identity core ("projections"), FLASH and GAU layers, fwd+bwd, bf16, n 2k/8k/16k at 32k
#      tokens per step; results in $OUT/baselines/ (results.json with provenance on every row);
#   3. tuning (python -m flash_triton.tune, FLASH and GAU at n 8192, within its own budget): the table merged into
#      $OUT/tuned_configs.json (a copy of the package's; commit it as flash_triton/tuned_configs.json);
#   4. the quick benchmark sweep on the tuned table (kernels vs reference vs Transformer++), in $OUT/bench/;
#   5. steps 2 and 4 rendered side by side in $OUT/all/ (results.json, results.md, summary.md, plots);
#   6. with 2 or more GPUs only: the training program on 2 of them over NCCL, --context-parallel 2 --fsdp in bf16,
#      against one GPU on the same batches (final validation bpb within 0.05); logs in $OUT/multi_gpu*.log;
#   7. with the time left, the kernel test files on CUDA (bf16 included); log in $OUT/tests_kernels.log;
#   8. a summary: the side-by-side table, then one line per step, last ($OUT/summary.md).
# Every step has its own time limit, cut to what is left of TOTAL_S; a failed step does not stop the next. Exit
# code 0 when every step passed.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # default OUT: ./gpu_results
#   PYTHON=/path/to/python TOTAL_S=480 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
unset TRITON_INTERPRET  # the kernels must compile for the GPU, not run in the CPU interpreter
TOTAL_S=${TOTAL_S:-470}                 # the whole script, seconds (the step limits below are cut to fit)
PARITY_LIMIT=${PARITY_LIMIT:-110}
BASELINE_LIMIT=${BASELINE_LIMIT:-100}   # the runner starts no row after BASELINE_BUDGET
BASELINE_BUDGET=${BASELINE_BUDGET:-75}
TUNE_LIMIT=${TUNE_LIMIT:-100}           # the tuner starts no new work after TUNE_BUDGET
TUNE_BUDGET=${TUNE_BUDGET:-70}
BENCH_LIMIT=${BENCH_LIMIT:-120}
BENCH_BUDGET=${BENCH_BUDGET:-90}
MULTI_GPU_LIMIT=${MULTI_GPU_LIMIT:-150}   # both training runs of step 6
KERNEL_TESTS_MIN=${KERNEL_TESTS_MIN:-60}  # the last step runs only with at least this many seconds left
start=$SECONDS
steps=()
failed=0

record() {  # name rc seconds note
    steps+=("| $1 | $([ "$2" -eq 0 ] && echo ok || echo "FAILED (exit $2)") | $3 s | $4 |")
    [ "$2" -eq 0 ] || failed=1
}

left() {  # the smaller of a step's limit and the seconds left of TOTAL_S (at least 1)
    local l=$((TOTAL_S - (SECONDS - start)))
    [ "$l" -lt "$1" ] || l=$1
    [ "$l" -ge 1 ] || l=1
    echo "$l"
}

timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; }

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
    note=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$log" | tail -1 | tr -d '=' | sed 's/^ *//' | cut -c1-100)
    if timed_out "$rc"; then
        progress=$(grep -oE '\[ *[0-9]+%\]' "$log" | tail -1)
        fails=$(grep -cE '^(FAILED|ERROR) ' "$log")
        note="timed out after ${limit} s at ${progress:-the start}; $fails failed so far"
        echo "[gpu_check] $name TIMED OUT after ${limit} s" >>"$log"
    fi
    record "$name" "$rc" $((SECONDS - t)) "$note"
    tail -2 "$log"
}

run_bench() {  # name limit budget dir args... (the sweep writes results.json row by row)
    local name=$1 limit=$2 budget=$3 dir=$4 t=$SECONDS rc note
    shift 4
    echo "[gpu_check] $name (limit ${limit} s, budget ${budget} s) -> $dir/"
    timeout --kill-after=10 "$limit" "$PYTHON" -m benchmarks.run --quick --device cuda --budget-s "$budget" \
        --no-plots --out "$dir" "$@" >"$dir.log" 2>&1
    rc=$?
    if [ -f "$dir/results.json" ]; then
        note=$(grep -E "^\[bench\] [0-9]+/[0-9]+ rows timed" "$dir.log" | tail -1 | cut -c9-80)
        [ -n "$note" ] || note="partial: only the rows finished before the stop"
    else
        note="no results written; see $dir.log"
        [ "$rc" -eq 0 ] && rc=1
    fi
    timed_out "$rc" && note="timed out after ${limit} s; $note"
    record "$name" "$rc" $((SECONDS - t)) "$note"
}

# 1. parity at the production shapes (and the triton cache warmed for the steps after it)
run_pytest "bf16 parity at production shapes" "$(left "$PARITY_LIMIT")" "$OUT/parity.log" tests/test_gpu_parity.py

# 2. the baselines
run_bench "baselines (FLASH-pytorch, torch.compile, identity core)" "$(left "$BASELINE_LIMIT")" "$BASELINE_BUDGET" \
    "$OUT/baselines" --subjects flash-layer gau-layer --providers upstream compile projections --modes fwd+bwd \
    --dtypes bf16 --n 2048 8192 16384 --tokens 32768 --batch1-n

# 3. tuning, into a copy of the package's table
cp flash_triton/tuned_configs.json "$OUT/tuned_configs.json"
t=$SECONDS
limit=$(left "$TUNE_LIMIT")
echo "[gpu_check] tuning (limit ${limit} s, budget ${TUNE_BUDGET} s) -> $OUT/tune.log"
timeout --kill-after=10 "$limit" "$PYTHON" -m flash_triton.tune --budget-s "$TUNE_BUDGET" --max-candidates 6 \
    --out "$OUT/tuned_configs.json" >"$OUT/tune.log" 2>&1
rc=$?
note=$(grep -E "entries written" "$OUT/tune.log" | tail -1 | cut -c8-100)
timed_out "$rc" && note="timed out after ${limit} s; what each finished layer chose is in tuned_configs.json"
record "tuning" "$rc" $((SECONDS - t)) "${note:-see tune.log}"

# 4. the benchmark, on the tuned table
FLASH_TRITON_TUNED_CONFIGS="$OUT/tuned_configs.json" run_bench "quick benchmark sweep (tuned)" \
    "$(left "$BENCH_LIMIT")" "$BENCH_BUDGET" "$OUT/bench" --providers triton reference transformer++ --dtypes bf16

# 5. both runs side by side
t=$SECONDS
inputs=()
for f in "$OUT/baselines/results.json" "$OUT/bench/results.json"; do [ -f "$f" ] && inputs+=("$f"); done
if [ "${#inputs[@]}" -gt 0 ]; then
    timeout 90 "$PYTHON" -m benchmarks.run --render "${inputs[@]}" --out "$OUT/all" >"$OUT/render.log" 2>&1
    rc=$?
    note="${#inputs[@]} runs in $OUT/all"
    grep -q "plots skipped" "$OUT/render.log" && note="$note; plots skipped (no matplotlib)"
else
    rc=1
    note="no results to render"
fi
record "side-by-side tables" "$rc" $((SECONDS - t)) "$note"

# 6. two GPUs: context parallelism and FSDP2 on NCCL, against one GPU reading the same batches (one data-parallel group)
ngpu=$(timeout 60 "$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)
if [ "${ngpu:-0}" -ge 2 ] 2>/dev/null; then
    t=$SECONDS
    limit=$(left "$MULTI_GPU_LIMIT")
    train_flags=(--device cuda --precision bf16 --steps 40 --eval-every 20 --sample-len 64 --no-progress)
    echo "[gpu_check] 2 GPUs: --context-parallel 2 --fsdp (limit ${limit} s) -> $OUT/multi_gpu.log"
    timeout --kill-after=10 "$limit" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m flash_triton.train "${train_flags[@]}" --context-parallel 2 --fsdp --out "$OUT/multi_gpu_run" \
        >"$OUT/multi_gpu.log" 2>&1 &&
        timeout --kill-after=10 "$(left "$MULTI_GPU_LIMIT")" "$PYTHON" -m flash_triton.train "${train_flags[@]}" \
            --out "$OUT/one_gpu_run" >"$OUT/multi_gpu_single.log" 2>&1 &&
        "$PYTHON" - "$OUT/multi_gpu_run" "$OUT/one_gpu_run" >>"$OUT/multi_gpu.log" 2>&1 <<'PY'
import json, sys
last = [json.loads(open(f"{d}/metrics.jsonl").read().splitlines()[-1])["val_bpb"] for d in sys.argv[1:]]
print(f"final val bpb: 2 GPUs {last[0]:.4f}, one GPU {last[1]:.4f}")
sys.exit(0 if abs(last[0] - last[1]) <= 0.05 else 1)
PY
    rc=$?
    note=$(grep -E "^final val bpb: 2 GPUs" "$OUT/multi_gpu.log" | tail -1 | cut -c1-100)
    timed_out "$rc" && note="timed out after ${limit} s"
    record "2 GPUs: --context-parallel 2 --fsdp, bf16, NCCL" "$rc" $((SECONDS - t)) "${note:-see multi_gpu.log}"
else
    steps+=("| 2 GPUs: context parallel + FSDP2 on NCCL | not run | 0 s | ${ngpu:-0} GPU(s) visible |")
fi

# 7. the kernel test files with the time left
remaining=$((TOTAL_S - (SECONDS - start)))
if [ "$remaining" -ge "$KERNEL_TESTS_MIN" ]; then
    run_pytest "kernel tests (CUDA, bf16 included)" "$remaining" "$OUT/tests_kernels.log" \
        tests/test_quad_attn.py tests/test_mixed_chunk_attn.py tests/test_gate.py
else
    steps+=("| kernel tests (CUDA) | not run | 0 s | ${remaining} s left of ${TOTAL_S} s |")
fi

{
    if [ -f "$OUT/all/summary.md" ]; then
        cat "$OUT/all/summary.md"
    else
        echo "(no benchmark summary: last lines of the logs)"
        tail -10 "$OUT/baselines.log" "$OUT/bench.log" 2>/dev/null
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
