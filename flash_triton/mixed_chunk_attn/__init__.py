"""mixed_chunk_attn: FLASH's mixed chunk attention, quadratic attention inside groups of tokens plus linear attention
across groups (causal: through the exclusive running sum of the per-group states ``lin_kᵀ v``).

Every piece carries the op's name:

- :func:`mixed_chunk_attn`, :func:`mixed_chunk_attn_step` (here): the public differentiable functions; each picks
  the kernel or the reference in one step;
- :mod:`.op`: the custom ops ``flash_triton::mixed_chunk_attn_fwd`` / ``_bwd`` (named contracts, fake and autograd
  registrations) and :func:`.op.mixed_chunk_attn_triton`, the differentiable kernel path;
- :mod:`.kernels`: the ``@triton.jit`` per-group state kernels (``group_state``, ``group_apply``), the causal
  state scan (``state_scan``), the two fused (``group_scan``: each group's sum kept in registers) and their
  launchers; the within-group half runs on the kernels of
  :mod:`flash_triton.quad_attn` (groups of at most 256 tokens: :mod:`flash_triton.quad_attn.short_window`), with the
  linear half and the gate fused into their output tile;
- :mod:`.state`: the torch-side state algebra (the state each group reads, the final state, their adjoint, the
  group table of packed batches): packed and non-causal batches, and the state scan's test oracle;
- :func:`flash_triton.reference.mixed_chunk_attn`: the pure-PyTorch reference, the spec and the tests' oracle;
- ``tests/test_mixed_chunk_attn.py``, the benchmark subject ``mixed-chunk-attn``, the README status row
  "mixed_chunk_attn".

Importing this package imports no triton: :mod:`.op` and :mod:`.kernels` load on the first kernel call.
"""

import torch.nn.functional as F
from torch import Tensor

from .. import _checks, reference
from ..backend import check_backend, resolve_backend


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
) -> Tensor | tuple[Tensor, Tensor]:
    """FLASH mixed chunk attention; the arguments of :func:`flash_triton.reference.mixed_chunk_attn` plus
    ``backend`` ("auto" | "triton" | "reference" | None, see :mod:`flash_triton.backend`). Every argument is checked
    first (a ValueError / TypeError naming it)."""
    check_backend(backend)
    _checks.mixed_chunk_attn_args((quad_q, quad_k, lin_q, lin_k, v, gate), kw)
    return run_mixed_chunk_attn(quad_q, quad_k, lin_q, lin_k, v, gate, backend=backend, **kw)


def run_mixed_chunk_attn(*tensors: Tensor, backend: str | None = None, **kw) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`mixed_chunk_attn` (the same arguments) without the argument checks: the entry of the layers, which
    check their own input."""
    if resolve_backend(backend, "mixed_chunk_attn", tensors[0]) == "triton":
        from .op import mixed_chunk_attn_triton as impl  # an import statement (traced by torch.compile)
    else:
        impl = reference.mixed_chunk_attn
    return impl(*tensors, **kw)


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
    computation of the new rows when m < g, else the reference op over the window. Every argument is checked first.
    """
    check_backend(backend)
    tensors = (quad_q, lin_q, gate, quad_k, lin_k, v)
    _checks.mixed_chunk_attn_step_args(tensors, state, dict(kw, group_size=group_size))
    return run_mixed_chunk_attn_step(*tensors, state, group_size=group_size, backend=backend, **kw)


def run_mixed_chunk_attn_step(*tensors: Tensor | None, group_size: int, backend: str | None = None, **kw) -> Tensor:
    """:func:`mixed_chunk_attn_step` (the same arguments) without the argument checks (the layers' entry)."""
    quad_q, lin_q, gate, quad_k, lin_k, v, state = tensors
    m, r = quad_q.shape[1], quad_k.shape[1] - quad_q.shape[1]
    if resolve_backend(backend, "mixed_chunk_attn", quad_q) == "triton":
        from .op import mixed_chunk_attn_triton as impl
    elif m < group_size:
        return reference.mixed_chunk_attn_step(
            quad_q, lin_q, gate, quad_k, lin_k, v, state, group_size=group_size, **kw
        )
    else:
        impl = reference.mixed_chunk_attn
    quad_q, lin_q, gate = (F.pad(t, (0, 0, r, 0)) for t in (quad_q, lin_q, gate))
    out = impl(quad_q, quad_k, lin_q, lin_k, v, gate, group_size=group_size, causal=True, initial_state=state, **kw)
    return out[:, r:]
