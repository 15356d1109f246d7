"""Triton kernels (``@triton.jit`` code, launch configs and typed launchers), one module per op.

``KERNEL_OPS`` maps an op name to the ``"module:function"`` of its differentiable Triton entry point, which has
the same signature as the reference function of the same name in :mod:`flash_triton.reference`. Modules are
imported lazily, so importing flash_triton never imports triton. The dispatcher refuses ``backend="triton"`` for
an op missing here rather than falling back silently. No kernel has landed yet.
"""

import importlib
from collections.abc import Callable

KERNEL_OPS: dict[str, str] = {}
AVAILABLE_OPS: frozenset[str] = frozenset(KERNEL_OPS)


def load_kernel(op: str) -> Callable:
    """The Triton entry point of ``op`` (KeyError when it has none)."""
    module, _, fn = KERNEL_OPS[op].partition(":")
    return getattr(importlib.import_module(module), fn)
