"""Allocation shared by the launchers."""

import torch
from torch import Tensor

# Tests set this to fill every kernel-written buffer with NaN (or all-ones bits for integers) before the launch,
# so an element that no program writes fails loudly instead of passing with stale memory.
POISON_OUTPUTS = False


def new_output(like: Tensor, shape, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised (or, in tests, poisoned) contiguous buffer on ``like``'s device."""
    out = like.new_empty(shape, dtype=dtype)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs get exact float32 products (TF32 would cost ~1e-3 relative error); half types use tensor
    cores, where the option does not apply."""
    return "ieee" if dtype == torch.float32 else "tf32"
