"""Position embeddings of FLASH-pytorch 0.1.9, with identical parameter and buffer names."""

import torch
from torch import Tensor, nn

from . import _checks
from .reference.rope import apply_rotary, rotary_angles
from .reference.t5_bias import t5_relative_position_bias, t5_relative_position_bucket


class ScaledSinuEmbedding(nn.Module):
    """Absolute sinusoidal embedding ``cat(sin(t f), cos(t f)) * scale`` with a learned scalar ``scale``.

    ``forward(x)`` reads only ``x.shape[1]`` (the length) and returns (n, 2 * ceil(dim / 2)).
    """

    def __init__(self, dim: int):
        super().__init__()
        _checks.positive_int("dim", dim)
        self.scale = nn.Parameter(torch.ones(1))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, x: Tensor) -> Tensor:
        return self.at(torch.arange(x.shape[1], device=x.device))

    def at(self, positions: Tensor) -> Tensor:
        """(len(positions), 2 * ceil(dim / 2)) embedding of the given positions."""
        sinu = positions.type_as(self.inv_freq)[:, None] * self.inv_freq[None, :]
        return torch.cat((sinu.sin(), sinu.cos()), dim=-1) * self.scale


class T5RelativePositionBias(nn.Module):
    """T5 bucketed relative-position bias (one learned scalar per bucket), times ``scale``.

    ``forward(sim)`` returns the (i, j) bias for the last two dimensions of ``sim``.
    """

    def __init__(self, scale: float, causal: bool = False, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        _checks.positive_int("num_buckets", num_buckets)
        _checks.positive_int("max_distance", max_distance)
        if num_buckets < 4 or max_distance <= num_buckets // 2:
            raise ValueError(
                f"num_buckets must be >= 4 and max_distance > num_buckets // 2 (the last exactly-bucketed distance), "
                f"got num_buckets={num_buckets}, max_distance={max_distance}"
            )
        self.scale = _checks.real("scale", scale)
        self.causal = _checks.flag("causal", causal)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, 1)

    @staticmethod
    def _relative_position_bucket(relative_position, causal=True, num_buckets=32, max_distance=128):
        return t5_relative_position_bucket(
            relative_position, causal=causal, num_buckets=num_buckets, max_distance=max_distance
        )

    def forward(self, x: Tensor) -> Tensor:
        i, j = x.shape[-2:]
        return t5_relative_position_bias(
            self.relative_attention_bias.weight,
            i,
            j,
            causal=self.causal,
            scale=self.scale,
            max_distance=self.max_distance,
        )


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the first ``dim`` features (interleaved pairs), as rotary-embedding-torch's
    ``RotaryEmbedding(dim)`` with ``freqs_for='lang'``: same ``freqs`` parameter, so state_dicts load as they are.

    >>> rope = RotaryEmbedding(dim=32)
    >>> rope.rotate_queries_or_keys(torch.randn(2, 10, 64)).shape
    torch.Size([2, 10, 64])
    """

    def __init__(self, dim: int, custom_freqs: Tensor | None = None, theta: float = 10000, learned_freq: bool = False):
        super().__init__()
        _checks.positive_int("dim", dim)
        theta = _checks.positive_real("theta", theta)
        learned_freq = _checks.flag("learned_freq", learned_freq)
        if dim % 2 and custom_freqs is None:
            raise ValueError(f"dim must be even (features are rotated in pairs), got {dim}")
        if custom_freqs is not None:
            if not isinstance(custom_freqs, Tensor) or not custom_freqs.is_floating_point():
                raise TypeError(f"custom_freqs must be a floating-point tensor, got {type(custom_freqs).__name__}")
            if custom_freqs.dim() != 1 or custom_freqs.numel() == 0:
                raise ValueError(f"custom_freqs must be 1-D (one frequency per pair), got {tuple(custom_freqs.shape)}")
            freqs = custom_freqs
        else:
            freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=learned_freq)
        self.learned_freq = learned_freq

    def angles(self, seq_len: int, device: torch.device, offset: int = 0) -> Tensor:
        """(seq_len, rot_dim) float32 rotation angles of positions ``offset .. offset + seq_len - 1``."""
        return self.angles_at(torch.arange(offset, offset + seq_len, device=device))

    def angles_at(self, positions: Tensor) -> Tensor:
        """(len(positions), rot_dim) float32 rotation angles of the given positions."""
        return rotary_angles(positions.to(torch.float32), self.freqs)

    def forward(self, t: Tensor, seq_len: int | None = None, offset: int = 0) -> Tensor:
        """Angles for the positions in ``t`` (1-D), as upstream's ``forward``."""
        return rotary_angles(t.float(), self.freqs)

    def rotate_queries_or_keys(self, t: Tensor, seq_dim: int = -2, offset: int = 0) -> Tensor:
        """Rotate ``t`` (..., n, d) by the angles of positions ``offset ..``; the sequence axis is ``seq_dim``."""
        if seq_dim not in (-2, t.dim() - 2):
            raise ValueError(f"seq_dim must be the second-to-last axis of t (shape {tuple(t.shape)}), got {seq_dim}")
        return apply_rotary(t, self.angles(t.shape[-2], t.device, offset))
