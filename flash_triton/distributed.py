"""Context parallelism for causal FLASH: one sequence split over the ranks of a ``torch.distributed`` process group.

Each rank holds a contiguous slice of every sequence (rank r the r-th slice), each slice a multiple of the group
size, so FLASH's groups never straddle two ranks. What crosses ranks is then independent of the length:

* the causal linear state. Rank r's groups read the exclusive prefix of every earlier group's ``lin_kᵀ v / g``:
  the totals of the earlier ranks (one all-gather of a (b, s, e) float32 state per rank and layer) plus their own
  rank's prefix, which the local op computes from ``initial_state``;
* with ``shift_tokens``, the previous rank's last token (half its normalised features): one more small all-gather;
* the slice lengths (positions: RoPE and the sinusoidal embedding use global positions).

The backward is the adjoint: the gradient of every gathered tensor is summed over the ranks (an all-reduce of the
stacked gradients) and each rank keeps the part of the tensor it produced, so every input and parameter gradient
equals the single-process one (parameter gradients summed over the ranks, as data parallelism does).

Use :func:`mixed_chunk_attn` for the op, or :func:`context_parallel` to make a ``FLASH`` / ``FLASHTransformer``
(every causal FLASH layer in a module) run context-parallel; the inputs each rank passes are its slices. Causal
only: non-causal attention reads one global context, which is refused (as are packed ``cu_seqlens`` and decoding
caches) with a clear error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from . import _checks
from .mixed_chunk_attn import run_mixed_chunk_attn

#: bytes this process sent into the context-parallel collectives (the tensors it contributed: its part of each
#: all-gather, the whole gradient of each all-reduce), since the process started; see :func:`communication_bytes`
_SENT = [0]


def communication_bytes() -> int:
    """Bytes this rank has contributed to context-parallel collectives so far (read it before and after a step)."""
    return _SENT[0]


class _AllGather(torch.autograd.Function):
    """(world, *x.shape): every rank's ``x``; backward: the all-reduced gradient's own slice."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        x = x.contiguous()
        _SENT[0] += x.numel() * x.element_size()
        dist.all_gather(parts, x, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        _SENT[0] += grad.numel() * grad.element_size()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank], None


def all_gather(x: Tensor, group=None) -> Tensor:
    """Differentiable all-gather: (world, *x.shape)."""
    return _AllGather.apply(x, group)


def _sum_rows(stacked: Tensor, keep) -> Tensor:
    """Σ of the gathered rows whose rank r has ``keep(r)``, as a function of every row (so that every rank's
    backward reaches the collective: one rank skipping it would leave the others waiting)."""
    weight = keep(torch.arange(stacked.shape[0], device=stacked.device)).to(stacked.dtype)
    return torch.einsum("r,r...->...", weight, stacked)


def slice_offset(n: int, group_size: int, group=None, device=None) -> int:
    """This rank's first global position, checking that every rank's slice is a non-empty multiple of
    ``group_size``; every rank raises the same error (no rank is left waiting in a collective)."""
    lengths = torch.tensor([n], dtype=torch.int64, device=device)
    parts = [torch.empty_like(lengths) for _ in range(dist.get_world_size(group))]
    _SENT[0] += 8
    dist.all_gather(parts, lengths, group=group)
    all_lengths = [int(p.item()) for p in parts]
    bad = [(r, m) for r, m in enumerate(all_lengths) if m < 1 or m % group_size]
    if bad:
        raise ValueError(
            f"context parallelism splits sequences on group boundaries: every rank's slice must be a positive "
            f"multiple of group_size {group_size}, got lengths {all_lengths} (ranks {[r for r, _ in bad]})"
        )
    return sum(all_lengths[: dist.get_rank(group)])


def mixed_chunk_attn(
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    v: Tensor,
    gate: Tensor,
    *,
    group_size: int,
    causal: bool = True,
    group=None,
    key_mask: Tensor | None = None,
    backend: str | None = None,
    check: bool = True,
    **kw,
) -> Tensor:
    """Context-parallel :func:`flash_triton.ops.mixed_chunk_attn`: the arguments are this rank's slices (rank r
    holds positions ``sum(len of ranks < r) ..``); the result is this rank's slice of the single-process output,
    and gradients flow back to the ranks that produced each input. ``check=False`` skips the slice-length
    collective (the caller checked)."""
    if not _checks.flag("causal", causal):
        raise ValueError("context-parallel mixed_chunk_attn is causal only (non-causal reads one global context)")
    for name in ("initial_state", "output_final_state", "cu_seqlens", "dropout_mask"):
        if kw.get(name) is not None and kw.get(name) is not False:  # (a tensor is never compared by value)
            raise ValueError(f"{name} is not supported with context parallelism")
    g = _checks.length("group_size", group_size)
    if check:
        _checks.mixed_chunk_attn_args(
            (quad_q, quad_k, lin_q, lin_k, v, gate), dict(kw, group_size=g, causal=True, key_mask=key_mask)
        )
        slice_offset(quad_q.shape[1], g, group, device=_collective_device(group, quad_q))
    lin_k_kept = lin_k if key_mask is None else lin_k.masked_fill(~key_mask[..., None], 0.0)
    total = torch.einsum("bns,bne->bse", lin_k_kept.float(), v.float()) / g  # this rank's Σ over its groups
    rank = dist.get_rank(group)
    prefix = _sum_rows(all_gather(total, group), lambda r: r < rank)
    return run_mixed_chunk_attn(
        quad_q,
        quad_k,
        lin_q,
        lin_k,
        v,
        gate,
        group_size=g,
        causal=True,
        key_mask=key_mask,
        initial_state=prefix,
        backend=backend,
        **kw,
    )


def previous_rank_row(row: Tensor, group=None) -> Tensor:
    """The previous rank's ``row`` (zeros on rank 0), differentiable back to it."""
    rank = dist.get_rank(group)
    return _sum_rows(all_gather(row, group), lambda r: r == rank - 1)


def _collective_device(group, like: Tensor) -> torch.device:
    """Where the group's collectives take tensors: the CPU for gloo, the input's device otherwise."""
    return torch.device("cpu") if dist.get_backend(group) == "gloo" else like.device


class ContextParallel:
    """What a FLASH layer needs to run context-parallel: the process group (None: the default group)."""

    def __init__(self, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("context parallelism needs torch.distributed initialised (init_process_group)")
        self.group = group
        self._known: tuple[int, int, int] | None = None  # (n, group_size, offset) inside :meth:`known_offset`

    def offset(self, n: int, group_size: int, like: Tensor) -> int:
        """This rank's first global position (a collective: every rank of the group calls it), or the one
        :meth:`known_offset` holds for these sizes (no collective)."""
        if self._known is not None and self._known[:2] == (n, group_size):
            return self._known[2]
        return slice_offset(n, group_size, self.group, device=_collective_device(self.group, like))

    @contextlib.contextmanager
    def known_offset(self, n: int, group_size: int, offset: int) -> Iterator[None]:
        """Inside the block the layers sharing this object take ``offset`` for slices of ``n`` tokens in groups of
        ``group_size`` without asking the other ranks again: a FLASHTransformer checks its slices once per forward,
        not once per layer (one all-gather and one host synchronisation per layer saved). Every rank enters it in
        the same forward, so the collectives stay matched (a layer recomputed in the backward, outside it, asks
        again on every rank)."""
        saved, self._known = self._known, (n, group_size, offset)
        try:
            yield
        finally:
            self._known = saved


def context_parallel(module: torch.nn.Module, group=None, enabled: bool = True) -> torch.nn.Module:
    """Make every causal ``FLASH`` layer and ``FLASHTransformer`` in ``module`` run context-parallel over
    ``group`` (``enabled=False`` undoes it); returns ``module``. Each rank then passes its slice of the sequence
    (``x`` (b, n_r, ...), n_r a multiple of the group size), and gets its slice of the outputs."""
    from .layers import FLASH
    from .transformer import FLASHTransformer

    cp = ContextParallel(group) if enabled else None
    found = False
    for m in module.modules():
        if isinstance(m, (FLASH, FLASHTransformer)):
            if enabled and not m.causal:
                raise ValueError(f"context parallelism is causal only; {type(m).__name__} has causal=False")
            m._context_parallel = cp
            found = True
    if not found:
        raise ValueError(f"{type(module).__name__} holds no FLASH layer")
    return module


@contextlib.contextmanager
def suspended(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``module`` on whole sequences inside the block (one rank alone, e.g. decoding a sample: no collective),
    whatever :func:`context_parallel` set; the previous setting of every layer is restored after."""
    saved = [(m, m.__dict__["_context_parallel"]) for m in module.modules() if "_context_parallel" in m.__dict__]
    for m, _ in saved:
        m._context_parallel = None
    try:
        yield module
    finally:
        for m, cp in saved:
            m._context_parallel = cp


def window_slice(windows: Tensor, rank: int, ranks: int) -> Tensor:
    """Rank ``rank``'s part of token windows (b, n + 1) whose n predicted tokens are split over ``ranks``: the
    inputs of its n / ranks positions and the next token of each, ``windows[:, r·n/ranks : (r+1)·n/ranks + 1]``
    (the :class:`~flash_triton.AutoregressiveWrapper` input of that slice).

    >>> window_slice(torch.arange(9)[None], 1, 2).tolist()
    [[4, 5, 6, 7, 8]]
    """
    n = windows.shape[1] - 1
    if n % ranks:
        raise ValueError(f"windows of {n} predicted tokens do not split over {ranks} ranks")
    part = n // ranks
    return windows[:, rank * part : (rank + 1) * part + 1]
