#!/usr/bin/env bash
# One entry point that sets itself up on first use, then runs the main job or the tests.
#
#   ./run.sh train [flags]      train the default tiny FLASH language model (python -m flash_triton.train)
#   ./run.sh test  [pytest args] run the test suite
#   ./run.sh lint                ruff check + ruff format --check on the whole tree (what CI enforces)
#   ./run.sh setup               only set up the environment
#
# Set-up (once; repeated only when pyproject.toml or run.sh changes): a virtual environment in .venv that also sees
# the system's packages (so a GPU machine's preinstalled torch and triton are used as they are, never replaced), then
#   - torch, when none is importable: the CPU build pinned to 2.13.0 where no NVIDIA GPU is visible (an
#     unpinned torch pulls a multi-GB CUDA build), the default build where one is;
#   - triton on Linux x86_64 when none is importable: 3.6.0, the version the GPU machines run (the default stack);
#   - numpy < 2.4 beside a triton older than 3.7, whose CPU interpreter fails on numpy 2.4 (triton-lang/triton#9171);
#   - this package in editable mode with its test extra (pytest, ruff, FLASH-pytorch 0.1.9 as the oracle) and, on
#     the default stack, its hf extra (transformers, safetensors, accelerate: the Hugging Face integration's tests).
# FLASH_TRITON_STACK=newest builds the newest supported stack instead (CI's second environment): triton 3.9.0 and
# the newest numpy beside the same torch, in $FLASH_TRITON_VENV (e.g. .venv-newest). FLASH_TRITON_STACK=triton-X.Y.Z
# builds a check environment for the triton another torch release installs (torch 2.13 -> 3.7.1, 2.14 -> 3.8.0),
# beside the same CPU torch and with the newest stack's extras: the GPU-compile check and the static profile run
# there (`FLASH_TRITON_VENV=.venv-371 FLASH_TRITON_STACK=triton-3.7.1 ./run.sh setup`).
# Without network (a GPU machine with everything preinstalled) the editable install may fail; the package then
# runs from this checkout, and tests that need FLASH-pytorch are skipped with a reason.
set -euo pipefail
cd "$(dirname "$0")"

venv=${FLASH_TRITON_VENV:-.venv}
stack=${FLASH_TRITON_STACK:-default}
base_python=${PYTHON:-python3}
py="$venv/bin/python"

say() { printf '[run.sh] %s\n' "$*" >&2; }

setup() {
    if [ ! -x "$py" ]; then
        say "creating $venv (with system site packages)"
        "$base_python" -m venv --system-site-packages "$venv"
    fi
    local stamp="$venv/.flash_triton_setup" want
    want=$( (cat pyproject.toml run.sh; echo "$stack") | sha256sum | cut -c1-16)
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    local pip=("$py" -m pip install --disable-pip-version-check --retries 1 --timeout 20)
    if ! "$py" -c 'import torch' 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            say "installing torch (CUDA build)"
            "${pip[@]}" torch
        else
            say "installing torch==2.13.0 (CPU build)"
            "${pip[@]}" torch==2.13.0
        fi
    fi
    local extra=()
    case "$stack" in
        default)
            if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && ! "$py" -c 'import triton' 2>/dev/null; then
                say "installing triton==3.6.0"
                "${pip[@]}" triton==3.6.0
            fi
            ;;
        newest)
            say "installing the newest supported stack: triton==3.9.0 and the newest numpy"
            "${pip[@]}" --upgrade triton==3.9.0 numpy
            ;;
        triton-[0-9]*.[0-9]*.[0-9]*)
            say "installing a check stack: triton==${stack#triton-}"
            "${pip[@]}" --upgrade "triton==${stack#triton-}"
            ;;
        *)
            say "FLASH_TRITON_STACK must be 'default', 'newest' or 'triton-X.Y.Z', not '$stack'"
            exit 2
            ;;
    esac
    if "$py" -c 'import sys, triton; sys.exit(tuple(map(int, triton.__version__.split(".")[:2])) >= (3, 7))' 2>/dev/null
    then
        extra=("numpy<2.4")  # triton < 3.7's CPU interpreter fails on numpy >= 2.4 (triton-lang/triton#9171)
    fi
    local extras="test,hf"  # hf: the Hugging Face integration's tests (the newest stack runs kernel tests only)
    if [ "$stack" != default ]; then
        extras="test"
    fi
    say "installing flash_triton (editable) with its extras: $extras"
    if ! "${pip[@]}" -e ".[$extras]" "${extra[@]}"; then
        say "editable install failed (no network?); running from this checkout"
        "$py" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "einops", "numpy", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"[run.sh] required packages missing and not installable here: {', '.join(missing)}")
EOF
    fi
    echo "$want" >"$stamp"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    train) setup; exec "$py" -m flash_triton.train "$@" ;;
    test) setup; exec "$py" -m pytest "$@" ;;
    lint)
        setup
        if ! "$py" -m ruff --version >/dev/null 2>&1; then
            say "ruff is not installed in $venv (the test extra brings it): pip install -e '.[test]'"
            exit 2
        fi
        "$py" -m ruff check . && "$py" -m ruff format --check .
        ;;
    *)
        echo "usage: ./run.sh {train|test|lint|setup} [args...]" >&2
        exit 2
        ;;
esac
