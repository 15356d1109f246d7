"""Rotary position embedding with interleaved pairs (features 2i, 2i+1 rotate together), applied to the first
``rot_dim`` features only (partial rotary, as GPT-J); the rest pass through unchanged."""

import torch
from torch import Tensor


def rotary_angles(positions: Tensor, inv_freq: Tensor) -> Tensor:
    """(n, 2 * len(inv_freq)) angles ``pos * inv_freq[i]`` with each frequency repeated for its pair."""
    angles = positions.to(inv_freq.dtype)[:, None] * inv_freq[None, :]
    return angles.repeat_interleave(2, dim=-1)


def rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    x = x.unflatten(-1, (-1, 2))
    x0, x1 = x.unbind(-1)
    return torch.stack((-x1, x0), dim=-1).flatten(-2)


def apply_rotary(t: Tensor, angles: Tensor) -> Tensor:
    """Rotate the first ``angles.shape[-1]`` features of ``t`` (..., n, d) by ``angles`` (n, rot_dim).

    Computed in the angles' precision (float32) and returned in ``t``'s dtype.
    """
    rot_dim = angles.shape[-1]
    if rot_dim > t.shape[-1]:
        raise ValueError(
            f"rotary dim {rot_dim} exceeds feature dim {t.shape[-1]} of a tensor of shape {tuple(t.shape)}"
        )
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    rotated = t_rot * angles.cos() + rotate_pairs(t_rot) * angles.sin()
    return torch.cat((rotated, t_pass), dim=-1).to(t.dtype)
