"""Attention activations of FLASH (relu²) and MEGA's laplace function. Both map scores to weights elementwise.

laplace(0) != 0, so every mask is applied after the activation, never by zeroing scores.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LAPLACE_MU = math.sqrt(0.5)
LAPLACE_SIGMA = math.sqrt(1.0 / (4.0 * math.pi))


def relu_squared(x: Tensor) -> Tensor:
    """relu(x)²."""
    return F.relu(x) ** 2


def laplace_attn_fn(x: Tensor) -> Tensor:
    """0.5 * (1 + erf((x - mu) / (sigma * sqrt(2)))), mu = sqrt(1/2), sigma = sqrt(1/(4 pi)) (arXiv:2209.10655)."""
    return (1 + torch.special.erf((x - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2)))) * 0.5


def attn_activation(x: Tensor, laplace: bool) -> Tensor:
    """The attention activation selected by ``laplace``."""
    return laplace_attn_fn(x) if laplace else relu_squared(x)
