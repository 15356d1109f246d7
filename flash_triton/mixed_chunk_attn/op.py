"""The mixed_chunk_attn kernels as PyTorch custom ops (fake and autograd registrations, traced by
``torch.compile(fullgraph=True)``), and :func:`mixed_chunk_attn_triton`, the differentiable function with the
signature of :func:`flash_triton.reference.mixed_chunk_attn`. Importing this module imports triton.

The forward: the state each group reads, from the per-group states ``lin_kᵀ v`` (causal, uniform groups: their
prefix by :func:`.kernels.group_scan`, one kernel where it fits; otherwise :func:`.kernels.group_state` and the
torch algebra of :mod:`.state`), stored in the inputs' dtype (the kernels read it in that precision) and kept for
the backward (half of v's size at s = 128, g = 256: cheaper than computing it again), then the quadratic kernels of
:mod:`flash_triton.quad_attn` with the linear half ``lin_q @ state`` and the gate fused into their output tile (their
``HAS_LIN`` path). The backward: the state gradients first (``lin_qᵀ dY`` per group and the prefix's adjoint: the
scan in reverse, or :mod:`.state`), then the quadratic kernels' dq/dk/dv, dv taking the linear half's ``lin_k dP``
in the same pass (groups of at most ``SHORT_WINDOW`` tokens; longer ones add it afterwards), and the linear half's
other gradients through the state products of :mod:`.kernels`.
"""

import torch
from torch import Tensor

from ..common.custom_op import EMPTY, Contract, common_dtype, keeps_pre_gate, or_empty, resolve_seed
from ..common.gate import gate_backward_op
from ..quad_attn import kernels as quad_kernels
from . import kernels
from .state import final_state, varlen_info, varlen_windows, window_state, window_state_backward


def _within_groups(
    group_size: int, causal: bool, t5_scale: float, t5_max_distance: int, laplace: bool, dropout_p: float
) -> dict:
    """The quad_attn launchers' scalars for FLASH's within-group half: windows of one group, scores scaled by 1/g,
    no caller's bias."""
    return dict(
        scale=1.0 / group_size,
        t5_scale=t5_scale,
        t5_max_distance=t5_max_distance,
        bias_scale=1.0,
        window=group_size,
        causal=causal,
        laplace=laplace,
        dropout_p=dropout_p,
    )


def _read_state(
    lin_k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    windows: Tensor | None,
    varlen: tuple[Tensor, Tensor] | None,
    n: int,
    group: int,
    causal: bool,
    reduce_group: bool,
    initial_state: Tensor | None,
    want_final: bool,
) -> tuple[Tensor, Tensor | None]:
    """The state each group's linear queries read (B, G, S, E) in v's dtype, and the float32 final state when
    wanted: the causal prefix of the per-group sums ``lin_kᵀ v`` by :func:`.kernels.group_scan` (uniform groups),
    or the sums by a kernel and the torch algebra of :mod:`.state` (packed batches, non-causal). Every group of a
    non-causal uniform batch with ``reduce_group`` reads one state: returned as (B, 1, S, E), for the caller to
    expand."""
    if causal and varlen is None:
        return kernels.group_scan(
            lin_k, v, group, initial_state, want_final, reverse=False, row_mask=key_mask, out_dtype=v.dtype
        )
    states = kernels.group_state(lin_k, v, group, row_mask=key_mask, windows=windows)
    read = window_state(states, n, group, causal, reduce_group, initial_state, varlen, dtype=v.dtype)
    if read.stride(1) == 0:  # one state shared by every group (an expanded view): kept once, in a tensor of its own
        read = read.new_empty((read.shape[0], 1, *read.shape[2:])).copy_(read[:, :1])
    return read, final_state(states, group, initial_state, varlen) if want_final else None


def _groups(n: int, group: int, windows: Tensor | None) -> int:
    return windows.shape[0] if windows is not None else -(-n // group)


def _fwd(
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    v: Tensor,
    gate: Tensor,
    key_mask: Tensor | None,
    t5_weight: Tensor | None,
    seed: Tensor | None,
    initial_state: Tensor | None,
    windows: Tensor | None,
    win_seq: Tensor | None,
    cu_seqlens: Tensor | None,
    group_size: int,
    causal: bool,
    reduce_group: bool,
    t5_scale: float,
    t5_max_distance: int,
    laplace: bool,
    dropout_p: float,
    output_final_state: bool,
    store_pre: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, g = v.shape[1], group_size
    varlen = varlen_info(windows, win_seq, cu_seqlens)
    read_state, final = _read_state(
        lin_k, v, key_mask, windows, varlen, n, g, causal, reduce_group, initial_state, output_final_state
    )
    state = read_state.expand(-1, _groups(n, g, windows), -1, -1)
    out, o_pre = quad_kernels.quad_attn_fwd(
        quad_q,
        quad_k,
        v,
        gate,
        key_mask,
        t5_weight,
        None,
        seed,
        **_within_groups(group_size, causal, t5_scale, t5_max_distance, laplace, dropout_p),
        store_pre=store_pre,
        lin_q=lin_q,
        state=state,
        windows=windows,
    )
    # the read state is returned for the backward (which the autograd registration keeps; inference drops it)
    return out, or_empty(o_pre, v), or_empty(final, v, torch.float32), read_state


def _bwd(
    dy: Tensor,
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    v: Tensor,
    read_state: Tensor,
    key_mask: Tensor | None,
    t5_weight: Tensor | None,
    seed: Tensor | None,
    initial_state: Tensor | None,
    windows: Tensor | None,
    win_seq: Tensor | None,
    cu_seqlens: Tensor | None,
    d_final: Tensor | None,
    group_size: int,
    causal: bool,
    reduce_group: bool,
    t5_scale: float,
    t5_max_distance: int,
    laplace: bool,
    dropout_p: float,
    need_dt5: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    n, g = v.shape[1], group_size
    varlen = varlen_info(windows, win_seq, cu_seqlens)
    # linear half: lin_i = lin_q_i P[g(i)], P = window_state(S), S_j = Σ_{t in j} lin_k_tᵀ v_t (P kept by the
    # forward). The state gradients first: dP = lin_qᵀ dY per group, then the adjoint of the prefix
    if causal and varlen is None:  # both in one reverse scan
        d_states, d_init = kernels.group_scan(
            lin_q, dy, g, d_final, initial_state is not None, reverse=True, out_dtype=v.dtype
        )
    else:
        d_read = kernels.group_state(lin_q, dy, g, windows=windows)
        d_states, d_init = window_state_backward(d_read, n, g, causal, reduce_group, d_final, varlen, dtype=v.dtype)
    # dv's pass adds lin_k dS to the quadratic half's Aᵀ dy before its one rounding (short windows; longer ones
    # add it below)
    fused = g <= quad_kernels.SHORT_WINDOW
    dqq, dqk, dv, dt5, _ = quad_kernels.quad_attn_bwd(
        dy,
        quad_q,
        quad_k,
        v,
        key_mask,
        t5_weight,
        None,
        seed,
        **_within_groups(group_size, causal, t5_scale, t5_max_distance, laplace, dropout_p),
        need_dt5=need_dt5,
        need_dbias=False,
        windows=windows,
        lin=(lin_k, d_states) if fused else None,
    )
    state = read_state.expand(-1, _groups(n, g, windows), -1, -1)
    dlq = kernels.group_apply(dy, state.transpose(-1, -2), g, 1.0, out_dtype=lin_q.dtype, windows=windows)
    dlk = kernels.group_apply(
        v, d_states.transpose(-1, -2), g, 1.0, row_mask=key_mask, out_dtype=lin_k.dtype, windows=windows
    )
    if not fused:  # dv += lin_k dS in group_apply's epilogue (dv: the quadratic half's fresh, contiguous output)
        dv = kernels.group_apply(lin_k, d_states, g, 1.0, row_mask=key_mask, windows=windows, accumulate=dv)
    d_init = d_init if initial_state is not None else None
    return dqq, dqk, dlq, dlk, dv, or_empty(dt5, v, torch.float32), or_empty(d_init, v, torch.float32)


# the contracts: each op's arguments by name, from its signature above
FWD, BWD = Contract(_fwd), Contract(_bwd)
mixed_chunk_attn_fwd = torch.library.custom_op("flash_triton::mixed_chunk_attn_fwd", mutates_args=())(_fwd)
mixed_chunk_attn_bwd = torch.library.custom_op("flash_triton::mixed_chunk_attn_bwd", mutates_args=())(_bwd)


@mixed_chunk_attn_fwd.register_fake
def _(*args, **kwargs):
    a = FWD.bind(args, kwargs)
    v, cu_seqlens = a["v"], a["cu_seqlens"]
    b, _, s = a["lin_q"].shape
    rows = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else b
    final = v.new_empty((rows, s, v.shape[-1]) if a["output_final_state"] else EMPTY, dtype=torch.float32)
    windows, n, g = a["windows"], v.shape[1], a["group_size"]
    shared = not a["causal"] and a["reduce_group"] and windows is None  # one state for every group
    read = v.new_empty((v.shape[0], 1 if shared else _groups(n, g, windows), s, v.shape[-1]))
    return v.new_empty(v.shape), v.new_empty(v.shape if a["store_pre"] else EMPTY), final, read


@mixed_chunk_attn_bwd.register_fake
def _(*args, **kwargs):
    a = BWD.bind(args, kwargs)
    v, t5_weight, initial_state = a["v"], a["t5_weight"], a["initial_state"]
    dt5 = v.new_empty(t5_weight.shape if a["need_dt5"] and t5_weight is not None else EMPTY, dtype=torch.float32)
    d_init = v.new_empty(initial_state.shape if initial_state is not None else EMPTY, dtype=torch.float32)
    grads = (a[name].new_empty(a[name].shape) for name in ("quad_q", "quad_k", "lin_q", "lin_k", "v"))
    return (*grads, dt5, d_init)


def _setup_context(ctx, inputs, output):
    a = FWD.bind(inputs)
    ctx.save_for_backward(*(a[name] for name in FWD.tensors), output[1], output[3])
    ctx.scalars = {name: a[name] for name in FWD.scalars if name in BWD.names}
    ctx.output_final_state = a["output_final_state"]


def _backward(ctx, d_out, _d_pre, d_final, _d_state):
    *saved, o_pre, read_state = ctx.saved_tensors
    a = dict(zip(FWD.tensors, saved, strict=True))
    needs = FWD.needs_grad(ctx)
    # dy = d_out * gate and dgate = d_out * o_pre in one pass
    dy, dgate = gate_backward_op(d_out, a["gate"], o_pre if needs["gate"] else None)
    dgate = dgate if needs["gate"] else None
    d_final = d_final if ctx.output_final_state and d_final is not None and d_final.numel() else None
    dqq, dqk, dlq, dlk, dv, dt5, d_init = mixed_chunk_attn_bwd(
        **BWD.pick(a, **ctx.scalars, dy=dy, read_state=read_state, d_final=d_final, need_dt5=needs["t5_weight"])
    )
    dt5 = dt5.to(a["t5_weight"].dtype) if needs["t5_weight"] else None
    d_init = d_init.to(a["initial_state"].dtype) if needs["initial_state"] else None
    return FWD.grads(
        quad_q=dqq, quad_k=dqk, lin_q=dlq, lin_k=dlk, v=dv, gate=dgate, t5_weight=dt5, initial_state=d_init
    )


mixed_chunk_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def mixed_chunk_attn_triton(
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    v: Tensor,
    gate: Tensor,
    *,
    group_size: int,
    causal: bool,
    key_mask: Tensor | None = None,
    t5_weight: Tensor | None = None,
    t5_scale: float = 1.0,
    t5_max_distance: int = 128,
    laplace: bool = False,
    dropout_p: float = 0.0,
    reduce_group: bool = True,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    dropout_seed: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused Triton version of :func:`flash_triton.reference.mixed_chunk_attn` (same arguments and result).

    ``initial_state`` (B, S, E) is used in float32; the final state is float32. ``dropout_seed`` as in
    :func:`flash_triton.quad_attn.op.quad_attn_triton`; its keep-mask is
    ``flash_triton.quad_attn.kernels.dropout_keep_mask(seed, b, n, group_size, p)``.
    """
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError("initial_state / output_final_state are defined for causal attention only")
    dtype = common_dtype(quad_q, quad_k, lin_q, lin_k, v, gate)
    quad_q, quad_k, lin_q, lin_k, v, gate = (t.to(dtype) for t in (quad_q, quad_k, lin_q, lin_k, v, gate))
    windows = win_seq = None
    if cu_seqlens is not None:
        windows, win_seq = varlen_windows(cu_seqlens, group_size)
    out, _, final, _ = mixed_chunk_attn_fwd(
        quad_q=quad_q,
        quad_k=quad_k,
        lin_q=lin_q,
        lin_k=lin_k,
        v=v,
        gate=gate,
        key_mask=key_mask,
        t5_weight=t5_weight,
        seed=resolve_seed(dropout_p, dropout_seed, v.device),
        initial_state=initial_state.float() if initial_state is not None else None,
        windows=windows,
        win_seq=win_seq,
        cu_seqlens=cu_seqlens,
        group_size=int(group_size),
        causal=bool(causal),
        reduce_group=bool(reduce_group),
        t5_scale=float(t5_scale),
        t5_max_distance=int(t5_max_distance),
        laplace=bool(laplace),
        dropout_p=float(dropout_p),
        output_final_state=bool(output_final_state),
        store_pre=keeps_pre_gate(gate),
    )
    return (out, final) if output_final_state else out
