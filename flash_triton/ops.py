"""The functional API: every op's public differentiable function, each taking the arguments of its reference
function (:mod:`flash_triton.reference`) plus ``backend``, and running the Triton kernel where one runs, the
reference otherwise (:mod:`flash_triton.backend`). Each is defined in its op package, named as here."""

from .mixed_chunk_attn import mixed_chunk_attn, mixed_chunk_attn_step
from .quad_attn import quad_attn

__all__ = ["mixed_chunk_attn", "mixed_chunk_attn_step", "quad_attn"]
