"""T5 relative-position bias: bucketed relative distance -> one learned scalar per bucket."""

import math

import torch
from torch import Tensor


def t5_relative_position_bucket(
    relative_position: Tensor, *, causal: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """Bucket index of each ``relative_position = key_pos - query_pos`` (long tensor in, long tensor out).

    Bidirectional: half the buckets for keys before the query, half for keys after. Causal: keys after the query
    share bucket 0. Within a half, distances below ``num_buckets // 2`` (halved when bidirectional) get their own
    bucket; larger ones are spaced logarithmically up to ``max_distance`` and clipped to the last bucket. That needs
    ``num_buckets >= 4`` and ``max_distance > num_buckets // 2`` (the layers' rule; below it the logarithmic branch
    divides by log(max_distance / max_exact) <= 0 and yields indices outside the table): a ValueError otherwise.
    """
    if num_buckets < 4 or max_distance <= num_buckets // 2:
        raise ValueError(
            f"num_buckets must be >= 4 and max_distance > num_buckets // 2 (the last exactly-bucketed distance), got "
            f"num_buckets={num_buckets}, max_distance={max_distance}"
        )
    n = -relative_position
    ret = torch.zeros_like(n)
    if not causal:
        num_buckets //= 2
        ret = ret + (n < 0).long() * num_buckets
        n = n.abs()
    else:
        n = n.clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # clamp only keeps log() finite where the small branch is taken anyway
    n_large = n.clamp(min=max_exact).float()
    val_if_large = (
        max_exact
        + (torch.log(n_large / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    )
    val_if_large = val_if_large.clamp(max=num_buckets - 1)
    return ret + torch.where(is_small, n, val_if_large)


def t5_relative_position_bias(
    weight: Tensor,
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    scale: float,
    max_distance: int = 128,
    q_offset: int = 0,
    k_offset: int = 0,
) -> Tensor:
    """(q_len, k_len) bias ``scale * weight[bucket(k_pos - q_pos)]``.

    ``weight`` is the (num_buckets,) or (num_buckets, 1) table; positions are ``offset + arange(len)``.

    >>> w = torch.randn(32)
    >>> t5_relative_position_bias(w, 4, 4, causal=True, scale=1.0).shape
    torch.Size([4, 4])
    """
    weight = weight.reshape(-1)
    q_pos = torch.arange(q_len, device=weight.device) + q_offset
    k_pos = torch.arange(k_len, device=weight.device) + k_offset
    rel = k_pos[None, :] - q_pos[:, None]
    bucket = t5_relative_position_bucket(rel, causal=causal, num_buckets=weight.numel(), max_distance=max_distance)
    return weight[bucket] * scale
