"""Triton helpers shared by the kernels and launchers of every op (importing this module imports triton)."""

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import check_triton_stack

check_triton_stack()  # a triton (or, under the interpreter, numpy) that cannot run the kernels: say so, and how to fix


@triton.jit
def window_bounds(i_w, W, N, win_ptr, VARLEN: tl.constexpr):
    """[start, end) of window ``i_w``: uniform windows of W tokens over N, or, for packed variable-length batches,
    row ``i_w`` of the (G, 2) int32 table at ``win_ptr`` (windows restart at every sequence)."""
    if VARLEN:
        start = tl.load(win_ptr + 2 * i_w)
        end = tl.load(win_ptr + 2 * i_w + 1)
    else:
        start = i_w * W
        end = tl.minimum(start + W, N)
    return start, end


# Triton's CPU interpreter (TRITON_INTERPRET=1, read when triton.jit decorates a kernel, so when these modules are
# imported) multiplies the raw bit patterns of bfloat16 operands in tl.dot (triton-lang/triton#11584). Under the
# interpreter only, `dot` upcasts bfloat16 operands to float32 first: a compile-time branch that is pruned from every
# GPU compile, so the code for a GPU keeps its bf16 tensor-core instructions (checked by flash_triton.aot).
INTERPRETING = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def dot(a, b, acc, DOT_PREC: tl.constexpr):
    """``acc + a @ b`` with float32 accumulation (``tl.dot``), correct for bfloat16 under the interpreter too."""
    if INTERPRETING:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
        if b.dtype == tl.bfloat16:
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PREC)


@triton.jit
def rounded(x, dtype: tl.constexpr):
    """float32 ``x`` in ``dtype``, rounded to nearest even as on a GPU. The interpreter's float32 -> bfloat16 cast
    truncates (rounds toward zero: a bias of half a unit in the last place, which a sum of many such values shows);
    under the interpreter only, the rounding increment is added to the bits first. Pruned from every GPU compile."""
    if INTERPRETING:  # noqa: SIM102 (the interpreter-only branch, pruned first, as in dot)
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            x = (bits + 0x7FFF + ((bits >> 16) & 1)).to(tl.float32, bitcast=True)
    return x.to(dtype)


# FMA contraction (a * b + c in one instruction, one rounding instead of two) stays on, as in every triton release
# so far; passed to every launch explicitly because triton 3.9 warns that its default turns off in 3.10. The
# accuracy tests' bounds hold either way (the kernels' error is dominated by the input dtype's rounding).
FP_FUSION = True


# Tests set this to fill every kernel-written buffer with NaN (or all-ones bits for integers) before the launch,
# so an element that no program writes fails loudly instead of passing with stale memory.
POISON_OUTPUTS = False


def new_output(like: Tensor, shape, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised (or, in tests, poisoned) contiguous buffer on ``like``'s device."""
    out = like.new_empty(shape, dtype=dtype)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


@functools.cache
def _cuda_arch(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def device_arch(device: torch.device) -> int | None:
    """The compute capability of a CUDA device as the launch configs key it (90: H100 / H200, 80: A100), None off
    CUDA (the CPU interpreter runs the default configs)."""
    if device.type != "cuda":
        return None
    return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launchers' grids and block counts: plain Python (``triton.cdiv`` is a constexpr function
    whose host-side call costs ~2.5 us, 89 times per FLASH layer step)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (0 for 0), as ``triton.next_power_of_2`` but a plain Python call (see
    :func:`cdiv`)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def last_dim_contiguous(*ts: Tensor | None) -> list:
    """Each tensor as the kernels address it: unit stride along the last (feature) dimension, any other strides
    (copied only when that stride is not 1, e.g. a broadcast gradient); None passes through."""
    return [t if t is None or t.stride(-1) == 1 else t.contiguous() for t in ts]


def row_mask_u8(mask: Tensor | None) -> Tensor | None:
    """A (B, N) bool mask as the kernels read it: uint8, contiguous (they address a batch row's mask as
    ``base + position``, so a transposed or expanded mask must be copied first)."""
    return None if mask is None else mask.to(torch.uint8).contiguous()


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs get exact float32 products (TF32 would cost ~1e-3 relative error); half types use tensor
    cores, where the option does not apply."""
    return "ieee" if dtype == torch.float32 else "tf32"


INT32_MAX = 2**31 - 1


def check_row_offsets(**tensors: Tensor | None) -> None:
    """The kernels address a batch row's elements with 32-bit offsets (``position * stride``; the batch offset is
    64-bit). Refuse, with the numbers, inputs whose last element of a row lies past 2**31 - 1 rather than let the
    offsets wrap around."""
    for name, t in tensors.items():
        if t is None or t.numel() == 0:
            continue
        last = sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True))
        if last > INT32_MAX:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} and strides {t.stride()} has in-row offsets up to {last}, past the "
                f"kernels' 32-bit limit {INT32_MAX}: use shorter sequences per batch row or backend='reference'"
            )
