"""The torch-side state algebra of mixed_chunk_attn (FLASH's causal linear attention across groups): from the raw
per-group sums ``S_j = Σ_{t in group j} lin_k_tᵀ v_t`` (the kernels in :mod:`.kernels`) to the state each group's
linear queries read (exclusive prefix / 1/g for causal, the mean for non-causal), the final state, their adjoint,
and the group table of packed variable-length batches. Plain torch ops; imports no triton."""

import torch
from torch import Tensor


def segment_sums(win_seq: Tensor, num_seqs: int, x: Tensor) -> Tensor:
    """(num_seqs, ...) per-sequence sums of the per-window rows of x (G, ...)."""
    return x.new_zeros((num_seqs, *x.shape[1:])).index_add_(0, win_seq, x)


def window_state(
    states: Tensor,
    n: int,
    group: int,
    causal: bool,
    reduce_group: bool,
    initial: Tensor | None,
    varlen: tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(B, G, S, E) state that group j's linear queries read, from the raw per-group sums (float32), computed in
    float32 and stored in ``dtype`` (the kernels read it in the inputs' precision). ``varlen``: (sequence index of
    each window, sequence lengths) of a packed batch (B = 1): sums restart at each sequence."""
    if varlen is not None:
        win_seq, lengths = varlen
        raw = states[0]
        seg = segment_sums(win_seq, len(lengths), raw)
        if causal:  # exclusive prefix within the sequence: all windows before j, less those of earlier sequences
            before = (seg.cumsum(dim=0) - seg)[win_seq]
            prefix = (raw.cumsum(dim=0) - raw - before) / group
            return (prefix if initial is None else prefix + initial[win_seq])[None].to(dtype)
        if reduce_group:
            return (seg / lengths[:, None, None]).to(dtype)[win_seq][None]
        return (raw / lengths[win_seq][:, None, None])[None].to(dtype)
    if causal:  # exclusive prefix: group j reads the initial state and groups 0 .. j-1
        prefix = (states.cumsum(dim=1) - states) / group
        return (prefix if initial is None else prefix + initial[:, None]).to(dtype)
    if reduce_group:
        return (states.sum(dim=1, keepdim=True) / n).to(dtype).expand_as(states)
    return (states / n).to(dtype)


def final_state(states: Tensor, group: int, initial: Tensor | None, varlen: tuple[Tensor, Tensor] | None) -> Tensor:
    """initial + Σ_j S_j / g per batch row (or per packed sequence)."""
    final = segment_sums(varlen[0], len(varlen[1]), states[0]) if varlen is not None else states.sum(dim=1)
    final = final / group
    return final if initial is None else final + initial


def window_state_backward(
    d_state: Tensor,
    n: int,
    group: int,
    causal: bool,
    reduce_group: bool,
    d_final: Tensor | None,
    varlen: tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor | None]:
    """Adjoint of :func:`window_state` (and of :func:`final_state`): gradients of the raw per-group sums (stored in
    ``dtype``) and of the initial state (float32)."""
    if varlen is not None:
        win_seq, lengths = varlen
        raw = d_state[0]
        seg = segment_sums(win_seq, len(lengths), raw)
        if causal:  # group j's sum feeds the later groups of its own sequence, and that sequence's final state
            before = (seg.cumsum(dim=0) - seg)[win_seq]
            upto = raw.cumsum(dim=0) - before  # Σ over the sequence's windows up to and including j
            d_states = (seg[win_seq] - upto) / group
            if d_final is None:
                return d_states[None].to(dtype), seg
            return (d_states + d_final[win_seq] / group)[None].to(dtype), seg + d_final
        if reduce_group:
            return (seg / lengths[:, None, None]).to(dtype)[win_seq][None], None
        return (raw / lengths[win_seq][:, None, None])[None].to(dtype), None
    if causal:  # group j's sum feeds every later group, and the final state
        total = d_state.sum(dim=1, keepdim=True)
        d_states = (total - d_state.cumsum(dim=1)) / group
        if d_final is None:
            return d_states.to(dtype), total[:, 0]
        return (d_states + d_final[:, None] / group).to(dtype), total[:, 0] + d_final
    if reduce_group:
        return (d_state.sum(dim=1, keepdim=True) / n).to(dtype).expand_as(d_state), None
    return (d_state / n).to(dtype), None


def varlen_info(
    windows: Tensor | None, win_seq: Tensor | None, cu_seqlens: Tensor | None
) -> tuple[Tensor, Tensor] | None:
    """The ``varlen`` argument of the functions above: (sequence of each window, float sequence lengths), or None
    for a batch that is not packed."""
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
    table = torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1, 2)
    return table, torch.tensor(seqs, dtype=torch.int64, device=device)
