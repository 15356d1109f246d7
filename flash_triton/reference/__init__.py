"""Pure-PyTorch reference implementations: the spec in code and the oracle the Triton kernels are tested against.

Short and literal on purpose; no performance tricks. One function per op:

- :func:`quad_attn`: gated relu²/laplace quadratic attention (GAU's core; FLASH's within-group half)
- :func:`chunk_linear_attn`, :func:`mixed_chunk_attn`: FLASH's mixed chunk attention;
  :func:`mixed_chunk_attn_step`: its last m rows over a window, for incremental decoding
- :func:`apply_rotary`, :func:`rotary_angles`: rotary position embedding (interleaved pairs, partial)
- :func:`t5_relative_position_bucket`, :func:`t5_relative_position_bias`: T5 relative-position bias
"""

from .activations import attn_activation, laplace_attn_fn, relu_squared
from .mixed_chunk_attn import chunk_linear_attn, mixed_chunk_attn, mixed_chunk_attn_step
from .quad_attn import quad_attn
from .rope import apply_rotary, rotary_angles, rotate_pairs
from .t5_bias import t5_relative_position_bias, t5_relative_position_bucket

__all__ = [
    "apply_rotary",
    "attn_activation",
    "chunk_linear_attn",
    "laplace_attn_fn",
    "mixed_chunk_attn",
    "mixed_chunk_attn_step",
    "quad_attn",
    "relu_squared",
    "rotary_angles",
    "rotate_pairs",
    "t5_relative_position_bias",
    "t5_relative_position_bucket",
]
