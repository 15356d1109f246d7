"""Triton kernels (``@triton.jit`` code, launch configs and typed launchers), one module per op.

``KERNEL_OPS`` maps an op name to its differentiable Triton entry point (in :mod:`flash_triton.triton_ops`), which
has the signature of the reference function of the same name in :mod:`flash_triton.reference`. The entry points
import triton on first use, so importing flash_triton never imports triton. The dispatcher refuses
``backend="triton"`` for an op missing here rather than falling back silently. Landed: the quadratic attention
(GAU) and the mixed chunk attention (FLASH).
"""

from collections.abc import Callable


def _quad_attn(*args, **kwargs):
    from ..triton_ops import quad_attn  # imports triton on first use only

    return quad_attn(*args, **kwargs)


def _mixed_chunk_attn(*args, **kwargs):
    from ..triton_ops import mixed_chunk_attn

    return mixed_chunk_attn(*args, **kwargs)


# plain functions whose body imports (an import statement, which torch.compile traces, unlike importlib)
KERNEL_OPS: dict[str, Callable] = {"quad_attn": _quad_attn, "mixed_chunk_attn": _mixed_chunk_attn}
AVAILABLE_OPS: frozenset[str] = frozenset(KERNEL_OPS)


def load_kernel(op: str) -> Callable:
    """The Triton entry point of ``op`` (KeyError when it has none)."""
    return KERNEL_OPS[op]
