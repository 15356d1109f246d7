"""Timing, ceilings, memory and provenance shared by the benchmark scripts."""

import subprocess
import time
from datetime import datetime, timezone

import torch

import flash_triton as ft

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def timer(device: str):
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0]

    def cpu_bench(fn, reps: int = 3) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]

    return cpu_bench


def matmul_tflops(device: str, dtype: torch.dtype, bench) -> float:
    m = 8192 if device == "cuda" else 512
    a, b = torch.randn(m, m, device=device, dtype=dtype), torch.randn(m, m, device=device, dtype=dtype)
    return 2 * m**3 / (bench(lambda: a @ b) * 1e-3) / 1e12


def measure(step, device, bench) -> dict:
    try:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        ms = bench(step)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
        return {"ms": ms, "peak_mib": peak}
    except torch.OutOfMemoryError:
        return {"ms": float("nan"), "peak_mib": float("nan"), "error": "out of memory"}


def provenance(device: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    import triton

    return {
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "flash_triton": ft.__version__,
        "commit": commit or "unknown",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
