"""What every subject of the suite shares: timers, ceilings, memory, provenance, and :class:`Context`, whose
:meth:`Context.measure` turns one (subject, provider, mode, shape) into one row, errors included.

Timing. On CUDA, ``triton.testing.do_bench`` (it flushes the L2 cache between calls) with quantiles 0.5/0.2/0.8.
On CPU, :func:`cpu_bench`: garbage collection off, warm-up calls, then enough timed calls for a target wall time
(at least ``min_reps``), the same three quantiles. Every row also records its first call's wall time
(``first_call_s``: compilation, Triton JIT, autotuning), which the medians leave out.

Memory (``peak_mib``): what one step allocates above what was allocated just before it (activations, saved
tensors, gradients, workspaces; not the weights or inputs, which exist before the step). On CUDA:
``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus ``memory_allocated()`` before.
On CPU: the rise of the process's resident set (``/proc/self/statm``) over its value just before the step, sampled
every 0.5 ms by a thread during one untimed step, after ``malloc_trim(0)`` has handed freed heap back to the
system. The process-wide ``ru_maxrss`` is a high-water mark that never resets, so it cannot give a per-row figure;
it is recorded once per run (``process_max_rss_mib``). The sampled rise can miss a peak shorter than the
sampling period.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

import flash_triton as ft

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = ("fwd", "fwd+bwd")
PROVIDERS = ("triton", "reference", "compile", "upstream", "transformer++", "projections", "hf")
PROVIDER_INFO = {
    "triton": "flash_triton's fused Triton kernels (backend='triton')",
    "reference": "flash_triton's pure-PyTorch reference path, eager",
    "compile": "torch.compile of the reference path (default mode)",
    "upstream": "FLASH-pytorch 0.1.9, eager",
    "transformer++": "PyTorch SDPA causal multi-head attention (+ SwiGLU FFN in layers), equal width",
    "projections": "the layer with its attention core replaced by the identity (v * gate): norm, projections, "
    "residual only, the floor every layer ratio stands on",
    "hf": "flash_triton.hf's FLASHForCausalLM.generate (transformers) through the same cache (decode only)",
}
REPO = Path(__file__).resolve().parents[1]
MIB = 2.0**20


class Skip(Exception):
    """A row that is not run: the reason becomes the row's ``error``."""


class Unavailable(Skip):
    """A provider that cannot run here at all (not installed, no device)."""


# ---------------------------------------------------------------------------------------------------------------
# timers


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an ascending list (as numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def cpu_bench(
    fn: Callable[[], object], *, target_s: float, min_reps: int, warmup_s: float, estimate_s: float | None = None
) -> dict:
    """Median / 20th / 80th percentile wall time (ms) of ``fn`` on CPU: warm-up calls for ``warmup_s`` (at least
    one, unless the caller has warmed ``fn`` up and gives ``estimate_s``, the time of one call), then
    ``max(min_reps, target_s / estimate)`` timed calls (at most 200), with the garbage collector off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        calls = 0
        while (estimate_s is None and calls < 1) or time.perf_counter() - t0 < warmup_s:
            fn()
            calls += 1
        estimate = (time.perf_counter() - t0) / calls if calls else estimate_s
        reps = int(min(200, max(min_reps, target_s / max(estimate, 1e-9))))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    finally:
        if was_enabled:
            gc.enable()
    times.sort()
    return {"ms": quantile(times, 0.5), "ms_p20": quantile(times, 0.2), "ms_p80": quantile(times, 0.8), "reps": reps}


def cuda_bench(fn: Callable[[], object], *, warmup_ms: int, rep_ms: int) -> dict:
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"ms": med, "ms_p20": p20, "ms_p80": p80}


# ---------------------------------------------------------------------------------------------------------------
# memory


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_step_memory(fn: Callable[[], object], period_s: float = 5e-4) -> float | None:
    """Peak RSS rise (MiB) during one call of ``fn``, sampled every ``period_s``; None where /proc is missing."""
    gc.collect()
    _malloc_trim()
    base = _rss_bytes()
    if base is None:
        fn()
        return None
    peak = base
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes() or 0)
            time.sleep(period_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak = max(peak, _rss_bytes() or 0)
    return (peak - base) / MIB


def cuda_step_memory(fn: Callable[[], object]) -> tuple[float, float]:
    """(allocated by the step above what existed before it, absolute peak allocated), MiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return (peak - base) / MIB, peak / MIB


def available_memory_bytes(device: str) -> int:
    """Memory a row may use: free CUDA memory (the driver's, plus what torch's caching allocator holds unused), or
    the system's MemAvailable."""
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * 2**30


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def describe_error(exc: BaseException) -> str:
    """One line for a row's ``error``: out of memory, 32-bit offsets, or the exception's type and first line."""
    if is_oom(exc):
        return "out of memory"
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, ValueError) and ("2**31" in text or "32-bit" in text):
        return f"32-bit offsets: {text}"
    return f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------------------------------------------------------
# ceilings and provenance


def measure_ceilings(device: str, dtype: torch.dtype, bench: Callable[[Callable], dict], quick: bool) -> dict:
    """The device's achieved rates, measured now: a large matmul in ``dtype`` and a large device-to-device copy
    (bytes moved = read + write). They are the ceilings of the roofline floor."""
    if device == "cuda":
        m, copy_bytes = 8192, 2**30
    else:  # half-precision matmuls are slow on most CPUs: a smaller one still takes a good fraction of a second
        m = (1024 if quick else 2048) if dtype == torch.float32 else 512
        copy_bytes = 2**26 if quick else 2**28
    a = torch.randn(m, m, device=device, dtype=dtype)
    b = torch.randn(m, m, device=device, dtype=dtype)
    t_mm = bench(lambda: torch.mm(a, b))["ms"]
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t_copy = bench(lambda: dst.copy_(src))["ms"]
    return {
        "matmul_tflops": 2.0 * m**3 / (t_mm * 1e-3) / 1e12,
        "matmul_shape": f"{m}x{m}x{m}",
        "copy_gbps": 2.0 * copy_bytes / (t_copy * 1e-3) / 1e9,
        "copy_mib": copy_bytes / MIB,
    }


CEILING_RATES = ("matmul_tflops", "copy_gbps")


def combine_ceilings(samples: list[dict]) -> dict:
    """The ceilings of a run from its measurements (one before the first subject, one after each): the best rate
    of each, since the device did reach it and a slower sample means the machine was busy then; every sample's
    rate is kept (``<rate>_samples``) so the report can show the spread."""
    best = dict(samples[0])
    for key in CEILING_RATES:
        best[key] = max(s[key] for s in samples)
        best[f"{key}_samples"] = [s[key] for s in samples]
    return best


def apply_roofline(row: dict, ceilings: dict) -> None:
    """The row's ceilings, roofline floor (``floor_ms``) and the floor as a fraction of its time. Applied when
    the row is measured and again whenever the run's ceilings improve; ``flops`` and ``bytes`` are the row's
    own (per generated token in the decode subject), so the floor is in the row's unit."""
    row.update({k: ceilings[k] for k in (*CEILING_RATES, "matmul_shape", "copy_mib") if k in ceilings})
    if not row.get("ms"):
        return
    floor_s = max(row["flops"] / (ceilings["matmul_tflops"] * 1e12), row["bytes"] / (ceilings["copy_gbps"] * 1e9))
    row["floor_ms"] = floor_s * 1e3
    row["roofline_fraction"] = row["floor_ms"] / row["ms"]


def _git(*args: str) -> str:
    try:
        res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def git_commit() -> str:
    """Short commit of the checkout, with ``+dirty`` when tracked files differ from it ("unknown" outside git)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if dirty else "")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def provenance(device: str) -> dict:
    """Where the figures come from: device, versions, commit, date, and the machine's state."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # a broken install may raise anything
        triton_version = "not installed"
    try:
        from importlib.metadata import version

        import flash_pytorch  # noqa: F401

        upstream_version = version("FLASH-pytorch")
    except Exception:
        upstream_version = "not installed"
    meta = {
        "device_kind": device,
        "torch": torch.__version__,
        "triton": triton_version,
        "flash_triton": ft.__version__,
        "flash_pytorch": upstream_version,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(
            device=torch.cuda.get_device_name(0),
            capability=f"sm_{props.major}{props.minor}",
            device_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    else:
        meta.update(
            device=f"CPU: {_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
            torch_threads=torch.get_num_threads(),
            loadavg_start=[round(x, 2) for x in os.getloadavg()],
        )
    return meta


# ---------------------------------------------------------------------------------------------------------------
# the run's context: what subjects see


@dataclass
class Context:
    """Everything a subject needs: the run's settings, the timer, the ceilings, and :meth:`measure`."""

    device: str
    dtype_name: str
    modes: tuple[str, ...]
    providers: tuple[str, ...]
    shapes: list[tuple[int, int]]  # (n, batch) pairs, in running order
    long_shapes: list[tuple[int, int]]  # extra batch-1 shapes for subjects with LONG = True
    meta: dict  # provenance, copied into every row
    ceilings: dict
    quick: bool = False
    model_depth: int = 8
    row_limit_s: float = 60.0
    deadline: float = math.inf  # time.monotonic() after which rows are skipped
    budget_s: float | None = None
    log: Callable[[str], None] = print
    _memo: dict = field(default_factory=dict)
    _history: list = field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def shapes_for(self, long: bool = False) -> list[tuple[int, int]]:
        return self.shapes + (self.long_shapes if long else [])

    def providers_for(self, supported: Iterable[str]) -> list[str]:
        """The run's providers that this subject supports, in the run's order."""
        supported = set(supported)
        return [p for p in self.providers if p in supported]

    def once(self, key, factory: Callable[[], object]):
        """``factory()`` memoised for the current subject (models, compiled functions); a failure is memoised too,
        and raised again for every later row that needs it."""
        if key not in self._memo:
            try:
                self._memo[key] = ("ok", factory())
            except Exception as exc:  # noqa: BLE001 - recorded in the rows, re-raised below
                self._memo[key] = ("error", exc)
        status, value = self._memo[key]
        if status == "error":
            raise value
        return value

    def reset(self) -> None:
        """Drop the current subject's models and cached steps (between subjects)."""
        self._memo.clear()
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def bench(self, fn: Callable[[], object], estimate_s: float | None = None) -> dict:
        """Time ``fn``; ``estimate_s``: the wall time of a call just made (``fn`` is warm: no warm-up on CPU)."""
        if self.device == "cuda":
            return cuda_bench(fn, warmup_ms=25 if self.quick else 50, rep_ms=60 if self.quick else 200)
        return cpu_bench(
            fn,
            target_s=0.05 if self.quick else 0.5,
            min_reps=3 if self.quick else 5,
            warmup_s=0.0,
            estimate_s=estimate_s,
        )

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    # -----------------------------------------------------------------------------------------------------------
    def _guard(self, key: tuple, flops: float, mem_bytes: float | None) -> None:
        """Raise Skip where a row should not run: out of time, memory it cannot have, a smaller size of the same
        (subject, provider, mode) that ran out of memory, or a predicted time over the per-row limit."""
        if time.monotonic() > self.deadline:
            raise Skip(f"skipped: the run's time budget ({self.budget_s:.0f} s) is spent")
        if mem_bytes is not None:
            avail = available_memory_bytes(self.device)
            if mem_bytes > 0.8 * avail:
                raise Skip(
                    f"skipped: needs ~{mem_bytes / 2**30:.1f} GiB by estimate (quadratic attention matrices), "
                    f"{avail / 2**30:.1f} GiB available"
                )
        for past_key, past_flops, past in reversed(self._history):
            # the latest smaller row of the same (subject, provider, mode) that ran or ran out of memory
            if past_key != key or past_flops > flops or not (past.get("ms") or past.get("error") == "out of memory"):
                continue
            if past.get("error") == "out of memory":
                raise Skip(f"skipped: out of memory already at n={past['n']} batch={past['batch']}")
            if past.get("ms") and past_flops > 0:
                per_call = past["ms"] * 1e-3 * flops / past_flops
                if 6 * per_call > self.row_limit_s:  # the first call, warm-up and timed calls: about 6 at the least
                    raise Skip(
                        f"skipped: predicted ~{6 * per_call:.1f} s for the row (6 calls of ~{per_call:.1f} s, "
                        f"scaled from n={past['n']} batch={past['batch']}), over the per-row limit of "
                        f"{self.row_limit_s:.0f} s"
                    )
            break

    def measure(
        self,
        *,
        subject: str,
        provider: str,
        mode: str,
        n: int,
        batch: int,
        shape: dict,
        flops: float,
        bytes_moved: float,
        build: Callable[[], Callable[[], object]],
        mem_bytes: float | None = None,
        note: str | None = None,
    ) -> dict:
        """One row. ``build()`` returns the zero-argument step to time (inputs made, model built or fetched from
        :meth:`once`); it may raise :class:`Skip`. ``flops`` and ``bytes_moved`` come from the subject's formulas;
        ``mem_bytes`` is an optional estimate of what the step needs (rows over the available memory are skipped).
        Any exception becomes the row's ``error``; the sweep goes on."""
        row = dict(self.meta)
        row.update(
            subject=subject,
            provider=provider,
            mode=mode,
            dtype=self.dtype_name,
            n=n,
            batch=batch,
            tokens=n * batch,
            shape=dict(shape),
            flops=flops,
            bytes=bytes_moved,
        )
        if note:
            row["note"] = note
        key = (subject, provider, mode)
        step = None
        try:
            self._guard(key, flops, mem_bytes)
            step = build()
            t0 = time.perf_counter()
            step()
            self.sync()
            row["first_call_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if self.device == "cuda":
                row["peak_mib"], row["peak_allocated_mib"] = cuda_step_memory(step)
            else:
                row["peak_mib"] = cpu_step_memory(step)
            row.update(self.bench(step, estimate_s=time.perf_counter() - t0))
        except Exception as exc:  # noqa: BLE001 - the row records it; the sweep goes on
            row["error"] = str(exc) if isinstance(exc, Skip) else describe_error(exc)
            row["ms"] = None
        finally:
            del step
            if self.device == "cuda" and "error" in row:
                gc.collect()
                torch.cuda.empty_cache()
        if self.device == "cpu":
            row["loadavg_1min"] = round(os.getloadavg()[0], 2)
        if row.get("ms"):
            sec = row["ms"] * 1e-3
            row["tflops"] = flops / sec / 1e12
            row["gbps"] = bytes_moved / sec / 1e9
        apply_roofline(row, self.ceilings)
        self._history.append((key, flops, row))
        status = row.get("error") or f"{row['ms']:.3f} ms"
        self.log(f"  {subject:12s} {mode:8s} {self.dtype_name} n={n:<8d} b={batch:<4d} {provider:14s} {status}")
        return row


def process_max_rss_mib() -> float:
    """The process's resident-set high-water mark (never reset), MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / MIB
