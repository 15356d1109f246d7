"""Backend selection: ``"triton"`` (fused kernels), ``"reference"`` (pure PyTorch) or ``"auto"``.

A module's ``backend=None`` means: read ``FLASH_TRITON_BACKEND`` at call time, else ``"auto"``. ``"auto"`` picks
Triton for CUDA tensors when triton imports and the op has a kernel, the reference otherwise. ``"triton"`` asked
for explicitly never falls back: where it cannot run, :class:`BackendUnavailableError` says why.
"""

import functools
import os

import torch
from torch import Tensor

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "FLASH_TRITON_BACKEND"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class BackendUnavailableError(RuntimeError):
    """``backend="triton"`` was requested where the Triton path cannot run."""


def check_backend(backend: str | None) -> str | None:
    """Validate a backend name (None = decide at call time from the environment)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def requested_backend(backend: str | None) -> str:
    """The backend asked for: the argument, else ``$FLASH_TRITON_BACKEND``, else ``"auto"``."""
    if backend is not None:
        return backend
    env = os.environ.get(ENV_VAR, "").strip() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"environment variable {ENV_VAR} must be one of {BACKENDS}, got {env!r}")
    return env


@functools.cache
def triton_import_error() -> str | None:
    """None when ``import triton`` works, else the reason it does not."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {exc}"
    return None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(op: str, x: Tensor) -> str | None:
    """Why the Triton kernel of ``op`` cannot run on ``x``'s device, or None when it can."""
    from .kernels import AVAILABLE_OPS

    if op not in AVAILABLE_OPS:
        return f"no Triton kernel for '{op}' exists yet (see the status table in README.md)"
    err = triton_import_error()
    if err is not None:
        return f"triton cannot be imported ({err})"
    if x.dtype not in KERNEL_DTYPES:
        return f"the kernels take float32, float16 or bfloat16 inputs, not {x.dtype}"
    if x.device.type == "cpu" and not interpreter_enabled():
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set (set it before triton is imported)"
    if x.device.type not in ("cpu", "cuda"):
        return (
            f"tensors are on a '{x.device.type}' device; the Triton kernels support CUDA (and CPU via the interpreter)"
        )
    return None


def resolve_backend(backend: str | None, op: str, x: Tensor) -> str:
    """The backend that runs ``op`` on ``x``: ``"triton"`` or ``"reference"``."""
    wanted = requested_backend(backend)
    if wanted == "reference":
        return "reference"
    reason = triton_unavailable_reason(op, x)
    if wanted == "triton":
        if reason is not None:
            raise BackendUnavailableError(f"backend='triton' was requested for '{op}' but {reason}")
        return "triton"
    return "triton" if reason is None and x.device.type == "cuda" else "reference"
