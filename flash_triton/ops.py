"""Functional ops with backend dispatch: the Triton kernel where one runs, the reference otherwise.

Each op has the signature of its reference function (see :mod:`flash_triton.reference`) plus ``backend``.
"""

from collections.abc import Callable

from torch import Tensor

from . import reference
from .backend import resolve_backend
from .kernels import load_kernel


def _impl(op: str, backend: str | None, x: Tensor) -> Callable:
    if resolve_backend(backend, op, x) == "triton":
        return load_kernel(op)
    return getattr(reference, op)


def quad_attn(q: Tensor, k: Tensor, v: Tensor, gate: Tensor | None = None, *, backend: str | None = None, **kw):
    """Gated relu²/laplace quadratic attention; see :func:`flash_triton.reference.quad_attn`."""
    return _impl("quad_attn", backend, q)(q, k, v, gate, **kw)


def mixed_chunk_attn(
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    v: Tensor,
    gate: Tensor,
    *,
    backend: str | None = None,
    **kw,
) -> Tensor:
    """FLASH mixed chunk attention; see :func:`flash_triton.reference.mixed_chunk_attn`."""
    return _impl("mixed_chunk_attn", backend, quad_q)(quad_q, quad_k, lin_q, lin_k, v, gate, **kw)
