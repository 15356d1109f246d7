"""FLASH mixed chunk attention: quadratic attention inside groups plus linear attention across groups."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import attn_activation
from .quad_attn import quad_attn
from .t5_bias import t5_relative_position_bias


def chunk_linear_attn(
    lin_q: Tensor,
    lin_k: Tensor,
    v: Tensor,
    *,
    group_size: int,
    causal: bool,
    reduce_group: bool = True,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Linear attention over groups of ``group_size`` tokens: lin_q, lin_k (b, n, s); v (b, n, e) -> (b, n, e).

    Causal: ``S_j = lin_k_jᵀ v_j / g`` per group j, and group j reads the EXCLUSIVE prefix
    ``initial_state + S_0 + ... + S_{j-1}`` (a group never sees its own state; its own tokens are the quadratic
    part's job). ``initial_state`` (b, s, e) continues a sequence that ended on a group boundary; with
    ``output_final_state`` the result is ``(out, initial_state + Σ_j S_j)``, the state to continue from (float32, or
    float64 for float64 inputs).
    Non-causal: one context ``S = Σ_j lin_k_jᵀ v_j / n`` read by every token (``reduce_group=True``), or each
    group reads only its own ``lin_k_jᵀ v_j / n``. ``n`` is the unpadded length, as upstream.
    """
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError("initial_state / output_final_state are defined for causal attention only")
    b, n, _ = lin_q.shape
    g = group_size
    pad = -n % g
    lin_q, lin_k, v = (F.pad(t, (0, 0, 0, pad)).unflatten(1, (-1, g)) for t in (lin_q, lin_k, v))  # (b, G, g, .)
    if causal:
        states = torch.einsum("bgnd,bgne->bgde", lin_k, v) / g
        prefix = F.pad(states.cumsum(dim=1), (0, 0, 0, 0, 1, -1))  # exclusive: shift the running sum by one group
        if initial_state is not None:
            prefix = prefix + initial_state.to(prefix.dtype)[:, None]
        out = torch.einsum("bgde,bgnd->bgne", prefix, lin_q)
    elif reduce_group:
        context = torch.einsum("bgnd,bgne->bde", lin_k, v) / n
        out = torch.einsum("bgnd,bde->bgne", lin_q, context)
    else:
        context = torch.einsum("bgnd,bgne->bgde", lin_k, v) / n
        out = torch.einsum("bgnd,bgde->bgne", lin_q, context)
    out = out.flatten(1, 2)[:, :n]
    if not output_final_state:
        return out
    state_dtype = torch.promote_types(states.dtype, torch.float32)  # float32, or float64 for float64 inputs
    final = states.to(state_dtype).sum(dim=1)
    return out, final if initial_state is None else final + initial_state.to(state_dtype)


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
    dropout_mask: Tensor | None = None,
    reduce_group: bool = True,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``gate * (quad + lin)`` of FLASH. quad_q, quad_k, lin_q, lin_k (b, n, s); v, gate (b, n, e); key_mask (b, n).

    quad: per group, ``act(quad_q quad_kᵀ / g + t5_scale * T5[bucket(j - i)])`` with in-group positions, masked
    keys and (causal) future keys zeroed after the activation, times v. lin: :func:`chunk_linear_attn` with masked
    keys removed from ``lin_k``. ``initial_state`` / ``output_final_state`` (causal only): as
    :func:`chunk_linear_attn`; with the latter the result is ``(out, final_state)``.

    ``cu_seqlens`` (S + 1,) int: batch 1 holds S packed sequences ``[cu_seqlens[i], cu_seqlens[i + 1])``, each
    attended as if alone (groups restart at each sequence, linear states start at zero or ``initial_state[i]``;
    states are then (S, s, e)). Here literally: one call per sequence.

    >>> x = torch.randn(2, 10, 8); v = torch.randn(2, 10, 6)
    >>> mixed_chunk_attn(x, x, x, x, v, v, group_size=4, causal=True).shape
    torch.Size([2, 10, 6])
    """
    if cu_seqlens is not None:
        if dropout_mask is not None:
            raise ValueError("dropout_mask is not supported with cu_seqlens")
        kw = dict(
            group_size=group_size,
            causal=causal,
            t5_weight=t5_weight,
            t5_scale=t5_scale,
            t5_max_distance=t5_max_distance,
            laplace=laplace,
            dropout_p=dropout_p,
            reduce_group=reduce_group,
            output_final_state=output_final_state,
        )
        outs, finals = [], []
        bounds = cu_seqlens.tolist()
        for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            piece = (t[:, start:end] for t in (quad_q, quad_k, lin_q, lin_k, v, gate))
            mask_i = key_mask[:, start:end] if key_mask is not None else None
            init_i = initial_state[i : i + 1] if initial_state is not None else None
            res = mixed_chunk_attn(*piece, key_mask=mask_i, initial_state=init_i, **kw)
            out_i, final_i = res if output_final_state else (res, None)
            outs.append(out_i)
            finals.append(final_i)
        out = torch.cat(outs, dim=1)
        return (out, torch.cat(finals)) if output_final_state else out
    g = group_size
    quad = quad_attn(
        quad_q,
        quad_k,
        v,
        scale=1.0 / g,
        window=g,
        causal=causal,
        key_mask=key_mask,
        t5_weight=t5_weight,
        t5_scale=t5_scale,
        t5_max_distance=t5_max_distance,
        laplace=laplace,
        dropout_p=dropout_p,
        dropout_mask=dropout_mask,
    )
    if key_mask is not None:
        lin_k = lin_k.masked_fill(~key_mask[..., None], 0.0)
    lin = chunk_linear_attn(
        lin_q,
        lin_k,
        v,
        group_size=g,
        causal=causal,
        reduce_group=reduce_group,
        initial_state=initial_state,
        output_final_state=output_final_state,
    )
    if output_final_state:
        lin, final_state = lin
        return gate * (quad + lin), final_state
    return gate * (quad + lin)


def mixed_chunk_attn_step(
    quad_q: Tensor,
    lin_q: Tensor,
    gate: Tensor,
    quad_k: Tensor,
    lin_k: Tensor,
    v: Tensor,
    state: Tensor | None,
    *,
    group_size: int,
    t5_weight: Tensor | None = None,
    t5_scale: float = 1.0,
    t5_max_distance: int = 128,
    laplace: bool = False,
) -> Tensor:
    """Causal :func:`mixed_chunk_attn` outputs of the LAST m tokens of a window, for incremental decoding.

    The window (quad_k, lin_k (b, L, s); v (b, L, e)) starts on a group boundary and ends with the m new tokens,
    whose quad_q, lin_q (b, m, s) and gate (b, m, e) are given; ``state`` (b, s, e) is ``Σ lin_kᵀ v / g`` over the
    groups before the window (None: zero). Equals rows ``L - m ..`` of ``mixed_chunk_attn`` over the window with
    ``initial_state=state``, computed in float32 for those rows only: O(m · L) scores, so meant for m < g.
    Returns (b, m, e) in v's dtype.

    >>> k = torch.randn(1, 7, 4); v = torch.randn(1, 7, 3)
    >>> mixed_chunk_attn_step(k[:, -2:], k[:, -2:], v[:, -2:], k, k, v, None, group_size=4).shape
    torch.Size([1, 2, 3])
    """
    b, m, _ = quad_q.shape
    L, g = quad_k.shape[1], group_size
    f32 = torch.promote_types(v.dtype, torch.float32)
    quad_q, lin_q, gate, quad_k, lin_k, vf = (t.to(f32) for t in (quad_q, lin_q, gate, quad_k, lin_k, v))
    q_pos = torch.arange(L - m, L, device=v.device)
    k_pos = torch.arange(L, device=v.device)

    sim = torch.einsum("bis,bjs->bij", quad_q, quad_k) / g
    if t5_weight is not None:  # in-group positions differ by the window positions' difference (aligned groups)
        sim = sim + t5_relative_position_bias(
            t5_weight.to(f32), m, L, causal=True, scale=t5_scale, max_distance=t5_max_distance, q_offset=L - m
        )
    attend = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] // g == q_pos[:, None] // g)
    quad = torch.einsum("bij,bje->bie", attn_activation(sim, laplace).masked_fill(~attend, 0.0), vf)

    # the queries' groups are first .. last; each reads state + the window's complete groups before its own
    first, last = (L - m) // g, (L - 1) // g
    prefix = lin_q.new_zeros(b, 1, lin_q.shape[-1], v.shape[-1]) if state is None else state.to(f32)[:, None]
    if last:
        k_done, v_done = (t[:, : last * g].unflatten(1, (last, g)) for t in (lin_k, vf))
        states = torch.einsum("bgns,bgne->bgse", k_done, v_done) / g
        prefix = torch.cat((prefix, prefix + states.cumsum(dim=1)), dim=1)  # (b, last + 1, s, e), exclusive
    lin = torch.einsum("bms,bkse->bkme", lin_q, prefix[:, first : last + 1])  # at most 2 groups when m < g
    lin = lin[:, q_pos // g - first, torch.arange(m, device=v.device)]
    return (gate * (quad + lin)).to(v.dtype)
