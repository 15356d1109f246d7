"""Every kernel, in the launch configurations the launchers choose, compiles for sm_80 and sm_90 without spills
and within shared memory, on this GPU-less machine (python -m flash_triton.kernels.aot)."""

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")


@pytest.mark.slow
def test_kernels_compile_for_sm80_and_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "flash_triton.kernels.aot", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-4000:]
    assert " 0 failed" in report
    assert "sm_80" in report and "sm_90" in report
    for kernel in ("quad_attn_fwd", "quad_attn_dv", "quad_attn_dk", "quad_attn_dq"):
        assert kernel in report
