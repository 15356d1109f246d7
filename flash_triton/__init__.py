"""flash_triton: FLASH / Gated Attention Unit layers (FLASH-pytorch 0.1.9 API) with fused Triton kernels.

>>> from flash_triton import FLASHTransformer
"""

from . import ops, reference
from ._checks import MAX_SEQ_LEN
from .autoregressive_wrapper import AutoregressiveWrapper
from .backend import BACKENDS, BackendUnavailableError
from .cache import FLASHCache, FLASHLayerCache
from .embeddings import RotaryEmbedding, ScaledSinuEmbedding, T5RelativePositionBias
from .layers import FLASH, GAU, LaplacianAttnFn, OffsetScale, ReLUSquared, ScaleNorm
from .transformer import FLASHTransformer

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "FLASH",
    "GAU",
    "MAX_SEQ_LEN",
    "AutoregressiveWrapper",
    "BackendUnavailableError",
    "FLASHCache",
    "FLASHLayerCache",
    "FLASHTransformer",
    "LaplacianAttnFn",
    "OffsetScale",
    "ReLUSquared",
    "RotaryEmbedding",
    "ScaleNorm",
    "ScaledSinuEmbedding",
    "T5RelativePositionBias",
    "ops",
    "reference",
]
