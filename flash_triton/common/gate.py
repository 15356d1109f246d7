"""The gate's backward, shared by GAU's and FLASH's cores: from the gradient of the gated output
``out = o_pre * gate``, the gradient that the attention kernels take, ``dy = d_out * gate``, and the gate's,
``dgate = d_out * o_pre``, in one pass (d_out read once; torch's two products read it twice), as the custom op
``flash_triton::gate_backward`` (traced by ``torch.compile``). Importing this module imports triton."""

import torch
import triton
import triton.language as tl
from torch import Tensor

from .custom_op import EMPTY, or_empty
from .jit import FP_FUSION, cdiv, check_row_offsets, last_dim_contiguous, new_output, next_power_of_2, rounded

_NOSPEC = ["N"]  # the width E is specialised (16-byte vectors where it is a multiple of 8 in half precision)


@triton.jit(do_not_specialize=_NOSPEC)
def _gate_backward_kernel(
    d_ptr,  # (B, N, E) gradient of the gated output
    gate_ptr,  # (B, N, E) the gate
    pre_ptr,  # (B, N, E) the output before the gate, or dummy
    dy_ptr,  # (B, N, E) out, contiguous: d_out * gate
    dgate_ptr,  # (B, N, E) out, contiguous: d_out * o_pre, or dummy
    N,
    E,
    stride_db,
    stride_dn,
    stride_gb,
    stride_gn,
    stride_pb,
    stride_pn,
    HAS_DGATE: tl.constexpr,
    BR: tl.constexpr,
    BE: tl.constexpr,
):
    i_r, i_e, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_r = i_r * BR + tl.arange(0, BR)
    o_e = i_e * BE + tl.arange(0, BE)
    m = (o_r < N)[:, None] & (o_e < E)[None, :]
    i_b64 = i_b.to(tl.int64)
    d = tl.load(d_ptr + i_b64 * stride_db + o_r[:, None] * stride_dn + o_e[None, :], mask=m, other=0.0)
    g = tl.load(gate_ptr + i_b64 * stride_gb + o_r[:, None] * stride_gn + o_e[None, :], mask=m, other=0.0)
    o_out = i_b64 * N * E + o_r[:, None] * E + o_e[None, :]  # the outputs are contiguous
    # one rounding of each product in its output's dtype, as torch's element-wise product
    tl.store(dy_ptr + o_out, rounded(d.to(tl.float32) * g.to(tl.float32), dy_ptr.dtype.element_ty), mask=m)
    if HAS_DGATE:
        p = tl.load(pre_ptr + i_b64 * stride_pb + o_r[:, None] * stride_pn + o_e[None, :], mask=m, other=0.0)
        tl.store(dgate_ptr + o_out, rounded(d.to(tl.float32) * p.to(tl.float32), dgate_ptr.dtype.element_ty), mask=m)


def gate_config(e: int) -> dict:
    """Tiles of the gate's backward: 4,096 elements per program (8 per thread at 4 warps per 1,024: 16-byte
    vectors in half precision), rows of up to 256 features."""
    be = min(256, max(16, next_power_of_2(e)))
    return dict(BR=4096 // be, BE=be, num_warps=4, num_stages=1)


def gate_backward(d_out: Tensor, gate: Tensor, o_pre: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``(d_out * gate, d_out * o_pre)`` for (B, N, E) tensors with any row strides (e.g. the gate as a view of a
    projection's output), each product in torch's result dtype of its two factors; the second is None without
    ``o_pre``."""
    if gate.shape != d_out.shape or (o_pre is not None and o_pre.shape != d_out.shape):
        shapes = f"d_out {tuple(d_out.shape)}, gate {tuple(gate.shape)}"
        raise ValueError(f"gate_backward needs equal shapes, got {shapes}, o_pre {getattr(o_pre, 'shape', None)}")
    d_out, gate, o_pre = last_dim_contiguous(d_out, gate, o_pre)  # a broadcast d_out (of ``out.sum()``) is copied
    b, n, e = d_out.shape
    dy = new_output(d_out, (b, n, e), torch.result_type(d_out, gate))
    dgate = new_output(d_out, (b, n, e), torch.result_type(d_out, o_pre)) if o_pre is not None else None
    check_row_offsets(d_out=d_out, gate=gate, o_pre=o_pre, dy=dy)
    cfg = gate_config(e)
    if dy.numel():
        pre = o_pre if o_pre is not None else d_out
        _gate_backward_kernel[(cdiv(n, cfg["BR"]), cdiv(e, cfg["BE"]), b)](
            d_out,
            gate,
            pre,
            dy,
            dgate if dgate is not None else dy,
            n,
            e,
            d_out.stride(0),
            d_out.stride(1),
            gate.stride(0),
            gate.stride(1),
            pre.stride(0),
            pre.stride(1),
            HAS_DGATE=dgate is not None,
            enable_fp_fusion=FP_FUSION,
            **cfg,
        )
    return dy, dgate


@torch.library.custom_op("flash_triton::gate_backward", mutates_args=())
def gate_backward_op(d_out: Tensor, gate: Tensor, o_pre: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`gate_backward` as a custom op (the second output empty without ``o_pre``)."""
    dy, dgate = gate_backward(d_out, gate, o_pre)
    return dy, or_empty(dgate, dy)


@gate_backward_op.register_fake
def _(d_out, gate, o_pre):
    dy = d_out.new_empty(d_out.shape, dtype=torch.result_type(d_out, gate))
    if o_pre is None:
        return dy, dy.new_empty(EMPTY)
    return dy, d_out.new_empty(d_out.shape, dtype=torch.result_type(d_out, o_pre))
