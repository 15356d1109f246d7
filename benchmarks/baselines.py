"""The Transformer++ baseline: PyTorch SDPA causal multi-head attention (flash backend on CUDA in fp16/bf16) and a
SwiGLU FFN, pre-LayerNorm, residuals; as an attention core, a layer, and a language model."""

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sdpa_context(device: str, dtype: torch.dtype):
    """SDPA restricted to the flash backend where it exists (CUDA, fp16/bf16); the default choice elsewhere."""
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def sdpa_backend_note(device: str, dtype: torch.dtype) -> str:
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return "SDPA flash backend"
    return f"SDPA default backend ({device}, {str(dtype).removeprefix('torch.')})"


class TransformerPP(nn.Module):
    """Pre-norm causal multi-head attention (SDPA) + SwiGLU FFN of hidden width ``hidden``, residuals."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.up, self.down = nn.Linear(dim, 2 * hidden, bias=False), nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        a, gate = self.up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * a)


class TransformerPPLM(nn.Module):
    """Token embedding, ``depth`` :class:`TransformerPP` layers, LayerNorm and a linear head (no position
    embedding: it changes nothing in the timing)."""

    def __init__(self, num_tokens: int, dim: int, depth: int, heads: int, hidden: int):
        super().__init__()
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.layers = nn.ModuleList([TransformerPP(dim, heads, hidden) for _ in range(depth)])
        self.to_logits = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_tokens))

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token_emb(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.to_logits(x)
