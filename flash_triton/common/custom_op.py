"""What the torch custom ops of every op package share: the named argument contract, input casting and the dropout
seed. Imports no triton."""

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

# shape of the placeholder a custom op returns where an optional output is not computed (schemas cannot say None)
EMPTY = (0,)


def keeps_pre_gate(gate: Tensor | None) -> bool:
    """Whether the forward stores the output before the gate (the gate's gradient needs it): when the gate wants a
    gradient. Under ``torch.jit.trace`` always (with a gate): the trace records the choice as a constant, and trace
    checks its graph again under ``torch.no_grad``, which must record the same one (a traced module can then be
    differentiated whatever the grad mode it was traced in)."""
    if gate is None:
        return False
    return torch.jit.is_tracing() or (gate.requires_grad and torch.is_grad_enabled())


class Contract:
    """The named arguments of a custom op, read from the op function's own annotated signature: that signature is
    the one place where the op's tensor and scalar arguments are listed. The fake implementation, ``setup_context``
    and the backward address arguments through it by name, never by position."""

    def __init__(self, fn: Callable):
        self.signature = inspect.signature(fn)
        params = self.signature.parameters
        self.names = tuple(params)
        self.tensors = tuple(n for n, p in params.items() if p.annotation in (Tensor, Tensor | None))
        self.scalars = tuple(n for n in self.names if n not in self.tensors)

    def bind(self, args: Iterable[Any], kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every argument by name, from a call's positional and keyword arguments (or setup_context's inputs)."""
        bound = self.signature.bind(*args, **(kwargs or {}))
        bound.apply_defaults()
        return dict(bound.arguments)

    def needs_grad(self, ctx: Any) -> dict[str, bool]:
        """``ctx.needs_input_grad`` by argument name."""
        return dict(zip(self.names, ctx.needs_input_grad, strict=True))

    def grads(self, **grads: Tensor | None) -> tuple[Tensor | None, ...]:
        """The backward's return value: the named gradients in argument order, None for every other argument."""
        unknown = set(grads) - set(self.names)
        if unknown:
            raise TypeError(f"gradients for unknown arguments {sorted(unknown)}; the op takes {self.names}")
        return tuple(grads.get(name) for name in self.names)

    def pick(self, values: dict[str, Any], **more: Any) -> dict[str, Any]:
        """Keyword arguments for a call of this op: its arguments taken from ``values`` and ``more`` (``more`` wins).
        A missing argument is an error here rather than a wrong positional call."""
        merged = {**values, **more}
        missing = [name for name in self.names if name not in merged]
        if missing:
            raise TypeError(f"missing arguments {missing} for an op taking {self.names}")
        return {name: merged[name] for name in self.names}


def common_dtype(*ts: Tensor | None) -> torch.dtype:
    """Autocast's dtype when autocast is on for these tensors' device, else the promotion of their dtypes."""
    present = [t for t in ts if t is not None]
    device_type = present[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = present[0].dtype
    for t in present[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def resolve_seed(dropout_p: float, seed: Tensor | None, device: torch.device) -> Tensor | None:
    """The (1,) int64 seed the kernels' dropout uses: the caller's, else a fresh draw from torch's RNG."""
    if dropout_p <= 0:
        return None
    return seed if seed is not None else torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)


def or_empty(t: Tensor | None, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``t``, or the empty placeholder of an output that was not computed."""
    return t if t is not None else like.new_empty(EMPTY, dtype=dtype)
