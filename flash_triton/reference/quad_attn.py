"""Gated quadratic relu²/laplace attention over a block-diagonal window (GAU: the whole sequence; FLASH: groups)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import attn_activation
from .t5_bias import t5_relative_position_bias


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
    dropout_mask: Tensor | None = None,
) -> Tensor:
    """Single-head attention without softmax, within windows of ``window`` tokens.

    Shapes: q, k (b, n, d); v (b, n, e); gate (b, n, e) or None; key_mask (b, n) bool, True = attend;
    t5_weight (num_buckets,) table with
    ``t5_max_distance`` the distance of its last bucket; bias broadcastable to (b, n, n) (only with ``window=None``).

    Per window (positions i, j counted from the window's start)::

        A[i, j] = act(scale * q_i . k_j + t5_scale * t5_weight[bucket(j - i)] + bias_scale * bias[i, j])
        A = dropout(A);  A[i, j] = 0 where key_mask[j] is False or (causal and j > i)
        out_i = sum_j A[i, j] v_j   (times gate_i when gate is given)

    ``dropout_mask`` (b, G, w, w) bool, with G = ceil(n / w), replaces the random draw of the dropout keep-mask
    (for comparing against the kernels' own draw). The sequence is padded to a multiple of ``window`` with masked
    keys; the output has the input's length.

    >>> q = k = torch.randn(1, 5, 8); v = torch.randn(1, 5, 4)
    >>> quad_attn(q, k, v, scale=1 / 5, causal=True).shape
    torch.Size([1, 5, 4])
    """
    b, n, _ = q.shape
    w = n if window is None else window
    pad = -n % w
    if pad:
        if bias is not None:
            raise ValueError("an explicit bias tensor is only supported with window=None")
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        if key_mask is None:
            key_mask = torch.ones(b, n, dtype=torch.bool, device=q.device)
        key_mask = F.pad(key_mask, (0, pad), value=False)
    groups = (n + pad) // w
    q, k, v = (t.unflatten(1, (groups, w)) for t in (q, k, v))  # (b, G, w, d)

    sim = torch.einsum("bgid,bgjd->bgij", q, k) * scale
    if t5_weight is not None:
        sim = sim + t5_relative_position_bias(
            t5_weight, w, w, causal=causal, scale=t5_scale, max_distance=t5_max_distance
        )
    if bias is not None:
        sim = sim + bias_scale * (bias.unsqueeze(1) if bias.dim() == 3 else bias)  # (b, n, n) -> (b, 1, n, n)
    attn = attn_activation(sim, laplace)
    if dropout_mask is not None:
        attn = attn * dropout_mask / (1 - dropout_p)
    elif dropout_p > 0:
        attn = F.dropout(attn, dropout_p, training=True)
    if key_mask is not None:
        attn = attn.masked_fill(~key_mask.unflatten(1, (groups, w))[:, :, None, :], 0.0)
    if causal:
        future = torch.ones(w, w, dtype=torch.bool, device=q.device).triu(1)
        attn = attn.masked_fill(future, 0.0)
    out = torch.einsum("bgij,bgje->bgie", attn, v).flatten(1, 2)[:, :n]
    return out if gate is None else out * gate
