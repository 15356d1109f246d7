"""The Triton kernels as PyTorch custom ops (``torch.library.custom_op`` with fake and autograd registrations, so
``torch.compile(fullgraph=True)`` traces through them), and differentiable entry points with the signatures of the
reference functions of the same names. Importing this module imports triton."""

import torch
from torch import Tensor

from .kernels import chunk_state
from .kernels import quad_attn as qa

_EMPTY = (0,)


@torch.library.custom_op("flash_triton::quad_attn_fwd", mutates_args=())
def _quad_attn_fwd(
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
    out, o_pre = qa.quad_attn_fwd(
        q, k, v, gate, key_mask, t5_weight, bias, seed, scale=scale, t5_scale=t5_scale,
        t5_max_distance=t5_max_distance, bias_scale=bias_scale, window=window, causal=causal, laplace=laplace,
        dropout_p=dropout_p, store_pre=store_pre,
    )  # fmt: skip
    return out, o_pre if o_pre is not None else v.new_empty(_EMPTY)


@_quad_attn_fwd.register_fake
def _(q, k, v, gate, key_mask, t5_weight, bias, seed, *args):
    store_pre = args[-1]
    return v.new_empty(v.shape), v.new_empty(v.shape if store_pre else _EMPTY)


@torch.library.custom_op("flash_triton::quad_attn_bwd", mutates_args=())
def _quad_attn_bwd(
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
    dq, dk, dv, dt5, dbias = qa.quad_attn_bwd(
        dy, q, k, v, key_mask, t5_weight, bias, seed, scale=scale, t5_scale=t5_scale,
        t5_max_distance=t5_max_distance, bias_scale=bias_scale, window=window, causal=causal, laplace=laplace,
        dropout_p=dropout_p, need_dt5=need_dt5, need_dbias=need_dbias,
    )  # fmt: skip
    empty = q.new_empty(_EMPTY, dtype=torch.float32)
    return dq, dk, dv, dt5 if dt5 is not None else empty, dbias if dbias is not None else empty


@_quad_attn_bwd.register_fake
def _(dy, q, k, v, key_mask, t5_weight, bias, seed, *args):
    need_dt5, need_dbias = args[-2], args[-1]
    b, n, _ = q.shape
    dt5 = q.new_empty(t5_weight.shape if need_dt5 and t5_weight is not None else _EMPTY, dtype=torch.float32)
    dbias = q.new_empty((b, n, n) if need_dbias and bias is not None else _EMPTY, dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dt5, dbias


def _quad_attn_setup(ctx, inputs, output):
    q, k, v, gate, key_mask, t5_weight, bias, seed, *scalars = inputs
    ctx.save_for_backward(q, k, v, gate, key_mask, t5_weight, bias, seed, output[1])
    ctx.scalars = scalars[:-1]  # all but store_pre


def _quad_attn_backward(ctx, d_out, _d_pre):
    q, k, v, gate, key_mask, t5_weight, bias, seed, o_pre = ctx.saved_tensors
    needs = ctx.needs_input_grad
    dy = d_out if gate is None else d_out * gate
    dgate = d_out * o_pre if gate is not None and needs[3] else None
    dq, dk, dv, dt5, dbias = _quad_attn_bwd(
        dy, q, k, v, key_mask, t5_weight, bias, seed, *ctx.scalars, needs[5], needs[6]
    )
    dt5 = dt5.to(t5_weight.dtype) if needs[5] else None
    dbias = dbias.sum_to_size(bias.shape).to(bias.dtype) if needs[6] else None
    return (dq, dk, dv, dgate, None, dt5, dbias, None) + (None,) * 9


_quad_attn_fwd.register_autograd(_quad_attn_backward, setup_context=_quad_attn_setup)


def _common_dtype(*ts: Tensor | None) -> torch.dtype:
    """Autocast's dtype when autocast is on for these tensors' device, else the promotion of their dtypes."""
    present = [t for t in ts if t is not None]
    device_type = present[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = present[0].dtype
    for t in present[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _dropout_seed(dropout_p: float, seed: Tensor | None, device: torch.device) -> Tensor | None:
    """The (1,) int64 seed the kernels' dropout uses: the caller's, else a fresh draw from torch's RNG."""
    if dropout_p <= 0:
        return None
    return seed if seed is not None else torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)


def quad_attn(
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
    The keep-mask it gives is :func:`flash_triton.kernels.quad_attn.dropout_keep_mask`.
    """
    b, n, _ = q.shape
    window = n if window is None else window
    if bias is not None and window < n:
        raise ValueError("an explicit bias tensor is only supported with window=None")
    dtype = _common_dtype(q, k, v, gate)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    gate = gate.to(dtype) if gate is not None else None
    seed = _dropout_seed(dropout_p, dropout_seed, q.device)
    store_pre = gate is not None and gate.requires_grad and torch.is_grad_enabled()
    out, _ = _quad_attn_fwd(
        q, k, v, gate, key_mask, t5_weight, bias, seed, float(scale), float(t5_scale), int(t5_max_distance),
        float(bias_scale), int(window), bool(causal), bool(laplace), float(dropout_p), store_pre,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------
# FLASH mixed chunk attention: group states (chunk_state kernels), the window state each group reads, and the
# quadratic kernels with the linear half and the gate fused into the output tile.


def _segments(win_seq: Tensor, num_seqs: int, x: Tensor) -> Tensor:
    """(num_seqs, ...) per-sequence sums of the per-window rows of x (G, ...)."""
    return x.new_zeros((num_seqs, *x.shape[1:])).index_add_(0, win_seq, x)


def _window_state(
    states: Tensor,
    n: int,
    group: int,
    causal: bool,
    reduce_group: bool,
    initial: Tensor | None,
    varlen: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """(B, G, S, E) float32 state that group j's linear queries read, from the raw per-group sums. ``varlen``:
    (sequence index of each window, sequence lengths) of a packed batch (B = 1): sums restart at each sequence."""
    if varlen is not None:
        win_seq, lengths = varlen
        raw = states[0]
        seg = _segments(win_seq, len(lengths), raw)
        if causal:  # exclusive prefix within the sequence: all windows before j, less those of earlier sequences
            before = (seg.cumsum(dim=0) - seg)[win_seq]
            prefix = (raw.cumsum(dim=0) - raw - before) / group
            return (prefix if initial is None else prefix + initial[win_seq])[None]
        if reduce_group:
            return (seg / lengths[:, None, None])[win_seq][None]
        return (raw / lengths[win_seq][:, None, None])[None]
    if causal:  # exclusive prefix: group j reads the initial state and groups 0 .. j-1
        prefix = (states.cumsum(dim=1) - states) / group
        return prefix if initial is None else prefix + initial[:, None]
    if reduce_group:
        return (states.sum(dim=1, keepdim=True) / n).expand_as(states)
    return states / n


def _final_state(states: Tensor, group: int, initial: Tensor | None, varlen: tuple[Tensor, Tensor] | None) -> Tensor:
    """initial + Σ_j S_j / g per batch row (or per packed sequence)."""
    final = _segments(varlen[0], len(varlen[1]), states[0]) if varlen is not None else states.sum(dim=1)
    final = final / group
    return final if initial is None else final + initial


def _window_state_backward(
    d_state: Tensor,
    n: int,
    group: int,
    causal: bool,
    reduce_group: bool,
    d_final: Tensor | None,
    varlen: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Adjoint of :func:`_window_state` (and of :func:`_final_state`): gradients of the raw per-group sums and of
    the initial state."""
    if varlen is not None:
        win_seq, lengths = varlen
        raw = d_state[0]
        seg = _segments(win_seq, len(lengths), raw)
        if causal:  # group j's sum feeds the later groups of its own sequence, and that sequence's final state
            before = (seg.cumsum(dim=0) - seg)[win_seq]
            upto = raw.cumsum(dim=0) - before  # Σ over the sequence's windows up to and including j
            d_states = (seg[win_seq] - upto) / group
            if d_final is None:
                return d_states[None], seg
            return (d_states + d_final[win_seq] / group)[None], seg + d_final
        if reduce_group:
            return (seg / lengths[:, None, None])[win_seq][None], None
        return (raw / lengths[win_seq][:, None, None])[None], None
    if causal:  # group j's sum feeds every later group, and the final state
        total = d_state.sum(dim=1, keepdim=True)
        d_states = (total - d_state.cumsum(dim=1)) / group
        if d_final is None:
            return d_states, total[:, 0]
        return d_states + d_final[:, None] / group, total[:, 0] + d_final
    if reduce_group:
        return (d_state.sum(dim=1, keepdim=True) / n).expand_as(d_state), None
    return d_state / n, None


def _varlen(windows: Tensor | None, win_seq: Tensor | None, cu_seqlens: Tensor | None):
    if windows is None:
        return None
    return win_seq, (cu_seqlens[1:] - cu_seqlens[:-1]).float()


def varlen_windows(cu_seqlens: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """(G, 2) int32 [start, end) of every group of every packed sequence, and (G,) int64 sequence of each group.
    Reads ``cu_seqlens`` on the host (one device synchronisation)."""
    bounds = cu_seqlens.tolist()
    rows, seqs = [], []
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        for w0 in range(start, end, group):
            rows.append((w0, min(w0 + group, end)))
            seqs.append(i)
    device = cu_seqlens.device
    return (torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1, 2),
            torch.tensor(seqs, dtype=torch.int64, device=device))  # fmt: skip


@torch.library.custom_op("flash_triton::mixed_chunk_attn_fwd", mutates_args=())
def _mixed_chunk_fwd(
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
) -> tuple[Tensor, Tensor, Tensor]:
    n, g = v.shape[1], group_size
    varlen = _varlen(windows, win_seq, cu_seqlens)
    states = chunk_state.group_state(lin_k, v, g, row_mask=key_mask, windows=windows)
    window_state = _window_state(states, n, g, causal, reduce_group, initial_state, varlen)
    out, o_pre = qa.quad_attn_fwd(
        quad_q, quad_k, v, gate, key_mask, t5_weight, None, seed, scale=1.0 / g, t5_scale=t5_scale,
        t5_max_distance=t5_max_distance, bias_scale=1.0, window=g, causal=causal, laplace=laplace,
        dropout_p=dropout_p, store_pre=store_pre, lin_q=lin_q, state=window_state, windows=windows,
    )  # fmt: skip
    final = v.new_empty(_EMPTY, dtype=torch.float32)
    if output_final_state:
        final = _final_state(states, g, initial_state, varlen)
    return out, o_pre if o_pre is not None else v.new_empty(_EMPTY), final


@_mixed_chunk_fwd.register_fake
def _(quad_q, quad_k, lin_q, lin_k, v, gate, key_mask, t5_weight, seed, initial_state, windows, win_seq, cu_seqlens,
      *args):  # fmt: skip
    output_final_state, store_pre = args[-2], args[-1]
    b, _, s = lin_q.shape
    rows = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else b
    final = v.new_empty((rows, s, v.shape[-1]) if output_final_state else _EMPTY, dtype=torch.float32)
    return v.new_empty(v.shape), v.new_empty(v.shape if store_pre else _EMPTY), final


@torch.library.custom_op("flash_triton::mixed_chunk_attn_bwd", mutates_args=())
def _mixed_chunk_bwd(
    dy: Tensor,
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    v: Tensor,
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
    varlen = _varlen(windows, win_seq, cu_seqlens)
    dqq, dqk, dv, dt5, _ = qa.quad_attn_bwd(
        dy, quad_q, quad_k, v, key_mask, t5_weight, None, seed, scale=1.0 / g, t5_scale=t5_scale,
        t5_max_distance=t5_max_distance, bias_scale=1.0, window=g, causal=causal, laplace=laplace,
        dropout_p=dropout_p, need_dt5=need_dt5, need_dbias=False, windows=windows,
    )  # fmt: skip
    # linear half: lin_i = lin_q_i P[g(i)], P = window_state(S), S_j = Σ_{t in j} lin_k_tᵀ v_t (states recomputed)
    states = chunk_state.group_state(lin_k, v, g, row_mask=key_mask, windows=windows)
    window_state = _window_state(states, n, g, causal, reduce_group, initial_state, varlen)
    dlq = chunk_state.group_apply(dy, window_state.transpose(-1, -2), g, 1.0, out_dtype=lin_q.dtype, windows=windows)
    d_window = chunk_state.group_state(lin_q, dy, g, windows=windows)
    d_states, d_init = _window_state_backward(d_window, n, g, causal, reduce_group, d_final, varlen)
    dlk = chunk_state.group_apply(
        v, d_states.transpose(-1, -2), g, 1.0, row_mask=key_mask, out_dtype=lin_k.dtype, windows=windows
    )
    dv = dv + chunk_state.group_apply(lin_k, d_states, g, 1.0, row_mask=key_mask, out_dtype=v.dtype, windows=windows)
    empty = v.new_empty(_EMPTY, dtype=torch.float32)
    dt5 = dt5 if dt5 is not None else empty
    return dqq, dqk, dlq, dlk, dv, dt5, d_init if initial_state is not None else empty


@_mixed_chunk_bwd.register_fake
def _(dy, quad_q, quad_k, lin_q, lin_k, v, key_mask, t5_weight, seed, initial_state, windows, win_seq, cu_seqlens,
      d_final, *args):  # fmt: skip
    need_dt5 = args[-1]
    dt5 = v.new_empty(t5_weight.shape if need_dt5 and t5_weight is not None else _EMPTY, dtype=torch.float32)
    d_init = v.new_empty(initial_state.shape if initial_state is not None else _EMPTY, dtype=torch.float32)
    return (quad_q.new_empty(quad_q.shape), quad_k.new_empty(quad_k.shape), lin_q.new_empty(lin_q.shape),
            lin_k.new_empty(lin_k.shape), v.new_empty(v.shape), dt5, d_init)  # fmt: skip


def _mixed_chunk_setup(ctx, inputs, output):
    tensors, scalars = inputs[:13], inputs[13:]
    ctx.save_for_backward(*tensors, output[1])
    ctx.scalars = scalars[:-2]  # all but output_final_state and store_pre
    ctx.output_final_state = scalars[-2]


def _mixed_chunk_backward(ctx, d_out, _d_pre, d_final):
    quad_q, quad_k, lin_q, lin_k, v, gate, key_mask, t5_weight, seed, initial_state, *varlen, o_pre = ctx.saved_tensors
    needs = ctx.needs_input_grad
    dgate = d_out * o_pre if needs[5] else None
    d_final = d_final if ctx.output_final_state and d_final is not None and d_final.numel() else None
    dqq, dqk, dlq, dlk, dv, dt5, d_init = _mixed_chunk_bwd(
        d_out * gate, quad_q, quad_k, lin_q, lin_k, v, key_mask, t5_weight, seed, initial_state, *varlen, d_final,
        *ctx.scalars, needs[7],
    )  # fmt: skip
    dt5 = dt5.to(t5_weight.dtype) if needs[7] else None
    d_init = d_init.to(initial_state.dtype) if needs[9] else None
    return (dqq, dqk, dlq, dlk, dv, dgate, None, dt5, None, d_init, None, None, None) + (None,) * 9


_mixed_chunk_fwd.register_autograd(_mixed_chunk_backward, setup_context=_mixed_chunk_setup)


def mixed_chunk_attn(
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
    :func:`quad_attn`; its keep-mask is ``dropout_keep_mask(seed, b, n, group_size, p)``.
    """
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError("initial_state / output_final_state are defined for causal attention only")
    dtype = _common_dtype(quad_q, quad_k, lin_q, lin_k, v, gate)
    quad_q, quad_k, lin_q, lin_k, v, gate = (t.to(dtype) for t in (quad_q, quad_k, lin_q, lin_k, v, gate))
    if initial_state is not None:
        initial_state = initial_state.float()
    seed = _dropout_seed(dropout_p, dropout_seed, v.device)
    windows = win_seq = None
    if cu_seqlens is not None:
        windows, win_seq = varlen_windows(cu_seqlens, group_size)
    store_pre = gate.requires_grad and torch.is_grad_enabled()
    out, _, final = _mixed_chunk_fwd(
        quad_q, quad_k, lin_q, lin_k, v, gate, key_mask, t5_weight, seed, initial_state, windows, win_seq,
        cu_seqlens, int(group_size),
        bool(causal), bool(reduce_group), float(t5_scale), int(t5_max_distance), bool(laplace), float(dropout_p),
        bool(output_final_state), store_pre,
    )  # fmt: skip
    return (out, final) if output_final_state else out
