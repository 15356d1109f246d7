"""The quad_attn kernels as PyTorch custom ops (``torch.library.custom_op`` with fake and autograd registrations, so
``torch.compile(fullgraph=True)`` traces through them), and :func:`quad_attn_triton`, the differentiable function
with the signature of :func:`flash_triton.reference.quad_attn`. Importing this module imports triton."""

import torch
from torch import Tensor

from ..common.custom_op import EMPTY, Contract, common_dtype, keeps_pre_gate, or_empty, resolve_seed
from ..common.gate import gate_backward_op
from . import kernels


def _fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor | None,
    key_mask: Tensor | None,
    t5_weight: Tensor | None,
    bias: Tensor | None,
    seed: Tensor | None,
    scale: float,
    t5_scale: float,
    t5_max_distance: int,
    bias_scale: float,
    window: int,
    causal: bool,
    laplace: bool,
    dropout_p: float,
    store_pre: bool,
) -> tuple[Tensor, Tensor]:
    out, o_pre = kernels.quad_attn_fwd(**locals())  # the launcher takes the op's arguments by the same names
    return out, or_empty(o_pre, v)


def _bwd(
    dy: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    t5_weight: Tensor | None,
    bias: Tensor | None,
    seed: Tensor | None,
    scale: float,
    t5_scale: float,
    t5_max_distance: int,
    bias_scale: float,
    window: int,
    causal: bool,
    laplace: bool,
    dropout_p: float,
    need_dt5: bool,
    need_dbias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dt5, dbias = kernels.quad_attn_bwd(**locals())
    return dq, dk, dv, or_empty(dt5, q, torch.float32), or_empty(dbias, q, torch.float32)


# the contracts: each op's arguments by name, from its signature above
FWD, BWD = Contract(_fwd), Contract(_bwd)
quad_attn_fwd = torch.library.custom_op("flash_triton::quad_attn_fwd", mutates_args=())(_fwd)
quad_attn_bwd = torch.library.custom_op("flash_triton::quad_attn_bwd", mutates_args=())(_bwd)


@quad_attn_fwd.register_fake
def _(*args, **kwargs):
    a = FWD.bind(args, kwargs)
    v = a["v"]
    return v.new_empty(v.shape), v.new_empty(v.shape if a["store_pre"] else EMPTY)


@quad_attn_bwd.register_fake
def _(*args, **kwargs):
    a = BWD.bind(args, kwargs)
    q, k, v, t5_weight, bias = a["q"], a["k"], a["v"], a["t5_weight"], a["bias"]
    b, n, _ = q.shape
    dt5 = q.new_empty(t5_weight.shape if a["need_dt5"] and t5_weight is not None else EMPTY, dtype=torch.float32)
    dbias = q.new_empty((b, n, n) if a["need_dbias"] and bias is not None else EMPTY, dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dt5, dbias


def _setup_context(ctx, inputs, output):
    a = FWD.bind(inputs)
    ctx.save_for_backward(*(a[name] for name in FWD.tensors), output[1])
    ctx.scalars = {name: a[name] for name in FWD.scalars if name in BWD.names}


def _backward(ctx, d_out, _d_pre):
    *saved, o_pre = ctx.saved_tensors
    a = dict(zip(FWD.tensors, saved, strict=True))
    needs = FWD.needs_grad(ctx)
    gate, t5_weight, bias = a["gate"], a["t5_weight"], a["bias"]
    dy, dgate = d_out, None
    if gate is not None:  # dy = d_out * gate and dgate = d_out * o_pre in one pass
        dy, dgate = gate_backward_op(d_out, gate, o_pre if needs["gate"] else None)
        dgate = dgate if needs["gate"] else None
    dq, dk, dv, dt5, dbias = quad_attn_bwd(
        **BWD.pick(a, **ctx.scalars, dy=dy, need_dt5=needs["t5_weight"], need_dbias=needs["bias"])
    )
    dt5 = dt5.to(t5_weight.dtype) if needs["t5_weight"] else None
    dbias = dbias.sum_to_size(bias.shape).to(bias.dtype) if needs["bias"] else None
    return FWD.grads(q=dq, k=dk, v=dv, gate=dgate, t5_weight=dt5, bias=dbias)


quad_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def quad_attn_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor | None = None,
    *,
    scale: float,
    window: int | None = None,
    causal: bool = False,
    key_mask: Tensor | None = None,
    t5_weight: Tensor | None = None,
    t5_scale: float = 1.0,
    t5_max_distance: int = 128,
    bias: Tensor | None = None,
    bias_scale: float = 1.0,
    laplace: bool = False,
    dropout_p: float = 0.0,
    dropout_seed: Tensor | None = None,
) -> Tensor:
    """Fused Triton version of :func:`flash_triton.reference.quad_attn` (same arguments and result).

    ``dropout_seed``: optional (1,) int64 tensor on q's device; by default a fresh one is drawn from torch's RNG.
    The keep-mask it gives is :func:`flash_triton.quad_attn.kernels.dropout_keep_mask`.
    """
    b, n, _ = q.shape
    window = n if window is None else window
    if bias is not None and window < n:
        raise ValueError("an explicit bias tensor is only supported with window=None")
    dtype = common_dtype(q, k, v, gate)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    gate = gate.to(dtype) if gate is not None else None
    out, _ = quad_attn_fwd(
        q=q,
        k=k,
        v=v,
        gate=gate,
        key_mask=key_mask,
        t5_weight=t5_weight,
        bias=bias,
        seed=resolve_seed(dropout_p, dropout_seed, q.device),
        scale=float(scale),
        t5_scale=float(t5_scale),
        t5_max_distance=int(t5_max_distance),
        bias_scale=float(bias_scale),
        window=int(window),
        causal=bool(causal),
        laplace=bool(laplace),
        dropout_p=float(dropout_p),
        store_pre=keeps_pre_gate(gate),
    )
    return out
