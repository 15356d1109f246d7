"""Steps shared by the subjects: forward only (no autograd graph) or forward+backward to every input."""

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def upstream():
    """FLASH-pytorch 0.1.9's module, or Unavailable."""
    from ..common import Unavailable

    try:
        import flash_pytorch
    except ImportError as exc:
        raise Unavailable("not installed (pip install FLASH-pytorch==0.1.9)") from exc
    return flash_pytorch


def step(
    fn: Callable[[], Tensor],
    mode: str,
    grad_inputs: Sequence[Tensor],
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Callable[[], None]:
    """``fn()`` under no_grad ("fwd"), or ``fn()`` then the gradients of every tensor in ``grad_inputs`` for a
    fixed random output gradient ("fwd+bwd"; ``torch.autograd.grad``, so nothing accumulates across calls).
    A scalar output (a loss) is differentiated as it is."""
    if mode == "fwd":

        def forward() -> None:
            with torch.no_grad(), context():
                fn()

        return forward
    cache: dict[str, Tensor] = {}

    def forward_backward() -> None:
        with context():
            out = fn()
            if out.dim() == 0:
                torch.autograd.grad(out, grad_inputs)
                return
            if "dy" not in cache:
                cache["dy"] = torch.randn_like(out)
            torch.autograd.grad(out, grad_inputs, cache["dy"])

    return forward_backward


def quadratic_bytes(n: int, batch: int, itemsize: int, mode: str) -> float:
    """Memory a path that materialises the n x n attention matrices needs, by estimate: four n x n tensors per
    row for the forward (scores, bias, activation, masks), eight when the backward keeps them, plus the fp32 bias
    table."""
    per_row = (4 if mode == "fwd" else 8) * n * n * itemsize
    return batch * per_row + 4.0 * n * n


def core_op(ctx, provider: str, op: str) -> Callable:
    """The attention op ``op`` of flash_triton (a name in both ``ops`` and ``reference``) for ``provider``: the
    kernels, the reference eager, or torch.compile of the reference (compiled once per subject)."""
    from flash_triton import ops, reference

    if provider == "triton":
        return lambda *a, **kw: getattr(ops, op)(*a, backend="triton", **kw)
    if provider == "compile":
        return ctx.once("compile", lambda: torch.compile(getattr(reference, op)))
    return getattr(reference, op)


def random_inputs(ctx, mode: str) -> Callable[..., Tensor]:
    """``make(*shape)``: a random tensor on the run's device and dtype, requiring grad for "fwd+bwd"."""
    grad = mode != "fwd"
    return lambda *shape: torch.randn(*shape, device=ctx.device, dtype=ctx.dtype, requires_grad=grad)


def sdpa_core_step(ctx, mode: str, n: int, b: int, width: int, head_dim: int) -> Callable[[], None]:
    """Transformer++'s attention core: SDPA causal softmax attention, ``width // head_dim`` heads for q, k, v."""
    from ..baselines import sdpa_context

    make = random_inputs(ctx, mode)
    q, k, v = (make(b, width // head_dim, n, head_dim) for _ in range(3))
    attend = torch.nn.functional.scaled_dot_product_attention
    return step(lambda: attend(q, k, v, is_causal=True), mode, (q, k, v), lambda: sdpa_context(ctx.device, ctx.dtype))


def sweep(
    ctx, name: str, providers: tuple[str, ...], spec: Callable[[str, str, int, int], dict], long: bool = False
) -> list[dict]:
    """One row per shape (``ctx.shapes_for(long)``), mode and provider, in that order. ``spec(provider, mode, n,
    batch)`` gives the rest of :meth:`benchmarks.common.Context.measure`'s arguments: ``flops``, ``bytes_moved``,
    ``shape``, ``build`` and optionally ``mem_bytes`` and ``note``."""
    rows = []
    for n, b in ctx.shapes_for(long):
        for mode in ctx.modes:
            for provider in ctx.providers_for(providers):
                kw = spec(provider, mode, n, b)
                rows.append(ctx.measure(subject=name, provider=provider, mode=mode, n=n, batch=b, **kw))
    return rows


def sdpa_core_row(ctx, mode: str, n: int, b: int, width: int, head_dim: int) -> dict:
    """The :func:`sweep` arguments of Transformer++'s attention core (:func:`sdpa_core_step`) at (n, b)."""
    from .. import formulas
    from ..baselines import sdpa_backend_note

    bwd = mode != "fwd"
    return dict(
        flops=b * formulas.sdpa_flops(n, width, True, bwd),
        bytes_moved=b * formulas.sdpa_bytes(n, width, ctx.itemsize, bwd),
        shape={"heads": width // head_dim, "head_dim": head_dim},
        note=sdpa_backend_note(ctx.device, ctx.dtype),
        build=lambda: sdpa_core_step(ctx, mode, n, b, width, head_dim),
    )
