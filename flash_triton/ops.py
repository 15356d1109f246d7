"""Functional ops with backend dispatch: the Triton kernel where one runs, the reference otherwise.

Each op has the signature of its reference function (see :mod:`flash_triton.reference`) plus ``backend``.
"""

from collections.abc import Callable

import torch.nn.functional as F
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


def mixed_chunk_attn_step(
    quad_q: Tensor,
    lin_q: Tensor,
    gate: Tensor,
    quad_k: Tensor,
    lin_k: Tensor,
    v: Tensor,
    state: Tensor | None,
    *,
    group_size: int,
    backend: str | None = None,
    **kw,
) -> Tensor:
    """Outputs of the last m tokens of a window for incremental decoding; see
    :func:`flash_triton.reference.mixed_chunk_attn_step` (the window starts on a group boundary).

    Kernels: the fused causal op over the whole window (at most g - 1 rows more than the new tokens) with zero
    queries and gates in the rows before the new tokens and ``initial_state=state``. Reference: the direct
    computation of the new rows when m < g, else the reference op over the window.
    """
    m, r = quad_q.shape[1], quad_k.shape[1] - quad_q.shape[1]
    use_kernel = resolve_backend(backend, "mixed_chunk_attn", quad_q) == "triton"
    if not use_kernel and m < group_size:
        return reference.mixed_chunk_attn_step(quad_q, lin_q, gate, quad_k, lin_k, v, state, group_size=group_size,
                                               **kw)  # fmt: skip
    op = load_kernel("mixed_chunk_attn") if use_kernel else reference.mixed_chunk_attn
    quad_q, lin_q, gate = (F.pad(t, (0, 0, r, 0)) for t in (quad_q, lin_q, gate))
    out = op(quad_q, quad_k, lin_q, lin_k, v, gate, group_size=group_size, causal=True, initial_state=state, **kw)
    return out[:, r:]
