"""Backend selection: ``"triton"`` (fused kernels), ``"reference"`` (pure PyTorch) or ``"auto"``.

A module's ``backend=None`` means: read ``FLASH_TRITON_BACKEND`` at call time, else ``"auto"``. ``"auto"`` picks
Triton for CUDA tensors when triton imports and the op has a kernel, the reference otherwise. ``"triton"`` asked
for explicitly never falls back: where it cannot run, :class:`BackendUnavailableError` says why.
"""

import os
import re

import torch
from torch import Tensor

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "FLASH_TRITON_BACKEND"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the ops that have Triton kernels (each in its op package, flash_triton/<op>/); backend="triton" for any other op
# is refused rather than run on the reference
KERNEL_OPS = frozenset({"quad_attn", "mixed_chunk_attn"})


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


# The oldest triton the kernels are tested on (the GPU machines' torch 2.11 pins it); see README "Supported versions".
TRITON_FLOOR = (3, 6)
# triton < 3.7's CPU interpreter converts 1-element arrays to Python scalars, which numpy 2.4 made a TypeError
# (triton-lang/triton#9171): every kernel fails at its first loop bound under TRITON_INTERPRET=1.
INTERPRETER_NUMPY_FIX = (3, 7)
NUMPY_BREAKS_OLD_INTERPRETER = (2, 4)


def _release(version: str) -> tuple[int, ...]:
    """(3, 6, 0) from "3.6.0", "3.6.0+gitabc" or "2.4.0rc1"."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def triton_stack_error(triton_version: str, numpy_version: str, interpreter: bool) -> str | None:
    """Why this triton (with this numpy, under the interpreter or not) cannot run the kernels, or None."""
    triton_release = _release(triton_version)
    if triton_release < TRITON_FLOOR:
        return (
            f"triton {triton_version} is older than {'.'.join(map(str, TRITON_FLOOR))}, the oldest release the kernels "
            "support: install a torch release that pins a newer triton (torch >= 2.11), or pip install 'triton>=3.6'"
        )
    if (
        interpreter
        and triton_release < INTERPRETER_NUMPY_FIX
        and _release(numpy_version) >= NUMPY_BREAKS_OLD_INTERPRETER
    ):
        return (
            f"TRITON_INTERPRET=1 with triton {triton_version} and numpy {numpy_version}: the CPU interpreter of "
            "triton < 3.7 fails on numpy >= 2.4 (triton-lang/triton#9171); fix: pip install 'numpy<2.4', or use "
            "triton >= 3.7.1"
        )
    return None


# filled on first use: [import error or None, version problem or None]. A plain list rather than functools.cache,
# which torch.compile warns about when it traces a cached function.
_TRITON_STATUS: list[str | None] = []


def _triton_status() -> list[str | None]:
    if not _TRITON_STATUS:
        try:
            import numpy
            import triton
        except Exception as exc:  # ImportError, or a broken install raising anything else
            _TRITON_STATUS.extend((f"{type(exc).__name__}: {exc}", None))
        else:
            problem = triton_stack_error(triton.__version__, numpy.__version__, interpreter_enabled())
            _TRITON_STATUS.extend((None, problem))
    return _TRITON_STATUS


def triton_import_error() -> str | None:
    """None when ``import triton`` works, else the reason it does not."""
    return _triton_status()[0]


def unsupported_triton() -> str | None:
    """None when the installed triton (with this numpy, under the interpreter) can run the kernels, else why not."""
    return _triton_status()[1]


def check_triton_stack() -> None:
    """Raise RuntimeError naming the versions and the fix where the installed triton (and numpy, under the
    interpreter) cannot run the kernels. The kernel modules call it when they are imported, before any kernel
    runs."""
    reason = unsupported_triton()
    if reason is not None:
        raise RuntimeError(f"flash_triton's Triton kernels cannot run here: {reason}")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(op: str, x: Tensor) -> str | None:
    """Why the Triton kernel of ``op`` cannot run on ``x``'s device, or None when it can."""
    if op not in KERNEL_OPS:
        return f"no Triton kernel for '{op}' exists yet (see the status table in README.md)"
    err = triton_import_error()
    if err is not None:
        return f"triton cannot be imported ({err})"
    err = unsupported_triton()
    if err is not None:
        return err
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
