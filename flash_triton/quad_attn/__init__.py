"""quad_attn: gated relu²/laplace quadratic attention over windows (GAU's core, and FLASH's within-group half).

Every piece carries the op's name:

- :func:`quad_attn` (here): the public differentiable function; picks the kernel or the reference in one step;
- :mod:`.op`: the custom ops ``flash_triton::quad_attn_fwd`` / ``_bwd`` (named contracts, fake and autograd
  registrations) and :func:`.op.quad_attn_triton`, the differentiable kernel path;
- :mod:`.kernels`: the ``@triton.jit`` kernels, their launch configs and typed launchers (the streaming kernels);
  :mod:`.short_window`: the kernels of windows of at most ``kernels.SHORT_WINDOW`` tokens (tiles stored once);
- :func:`flash_triton.reference.quad_attn`: the pure-PyTorch reference, the spec and the tests' oracle;
- ``tests/test_quad_attn.py``, the benchmark subject ``quad-attn``, the README status row "quad_attn".

Importing this package imports no triton: :mod:`.op` and :mod:`.kernels` load on the first kernel call.
"""

from torch import Tensor

from .. import _checks, reference
from ..backend import check_backend, resolve_backend


def quad_attn(
    q: Tensor, k: Tensor, v: Tensor, gate: Tensor | None = None, *, backend: str | None = None, **kw
) -> Tensor:
    """Gated relu²/laplace quadratic attention; the arguments of :func:`flash_triton.reference.quad_attn` plus
    ``backend`` ("auto" | "triton" | "reference" | None, see :mod:`flash_triton.backend`). Every argument is checked
    first (a ValueError / TypeError naming it)."""
    check_backend(backend)
    _checks.quad_attn_args(q, k, v, gate, kw)
    return run_quad_attn(q, k, v, gate, backend=backend, **kw)


def run_quad_attn(
    q: Tensor, k: Tensor, v: Tensor, gate: Tensor | None = None, *, backend: str | None = None, **kw
) -> Tensor:
    """:func:`quad_attn` without the argument checks: the entry of the layers, which check their own input."""
    if resolve_backend(backend, "quad_attn", q) == "triton":
        from .op import quad_attn_triton as impl  # an import statement (traced by torch.compile): triton on first use
    else:
        impl = reference.quad_attn
    return impl(q, k, v, gate, **kw)
