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
