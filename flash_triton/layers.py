"""GAU and FLASH layers with FLASH-pytorch 0.1.9's constructor arguments, forward signatures, attribute and
state_dict names. The attention cores run through :mod:`flash_triton.ops` (Triton kernels or the reference)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks, ops
from .backend import check_backend
from .embeddings import RotaryEmbedding, T5RelativePositionBias
from .reference.activations import laplace_attn_fn, relu_squared
from .reference.rope import apply_rotary


class ScaleNorm(nn.Module):
    """``x / clamp(||x|| * dim^-0.5, eps) * g`` with one learned scalar ``g``."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        norm = torch.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class OffsetScale(nn.Module):
    """``heads`` per-feature affine maps of one tensor: returns ``x * gamma[h] + beta[h]`` for each head."""

    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(heads, dim))
        self.beta = nn.Parameter(torch.zeros(heads, dim))
        nn.init.normal_(self.gamma, std=0.02)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = x[..., None, :] * self.gamma + self.beta
        return out.unbind(dim=-2)


class ReLUSquared(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return relu_squared(x)


class LaplacianAttnFn(nn.Module):
    """laplace attention function (arXiv:2209.10655), reported more stable than relu²."""

    def forward(self, x: Tensor) -> Tensor:
        return laplace_attn_fn(x)


def _hidden_dim(dim: int, expansion_factor: float) -> int:
    hidden = int(expansion_factor * dim)
    if hidden < 1:
        raise ValueError(
            f"int(expansion_factor * dim) must be >= 1, got expansion_factor={expansion_factor}, dim={dim}"
        )
    return hidden


class GAU(nn.Module):
    """Gated Attention Unit: single-head relu² (or laplace) attention over the whole sequence, gated.

    ``forward(x, rel_pos_bias=None, mask=None)``: x (b, n, dim); rel_pos_bias broadcastable to (b, n, n), added to
    the scores before the 1/n scale; mask (b, n) bool, False = key ignored. As upstream, the T5 relative-position
    bias is always on (the ``rel_pos_bias`` constructor flag is accepted and ignored) and scores are divided by the
    call's length n. ``backend``: "auto" | "triton" | "reference" | None (= ``$FLASH_TRITON_BACKEND`` or auto).

    >>> gau = GAU(dim=64, query_key_dim=32, causal=True)
    >>> gau(torch.randn(2, 20, 64)).shape
    torch.Size([2, 20, 64])
    """

    def __init__(
        self,
        *,
        dim: int,
        query_key_dim: int = 128,
        expansion_factor: float = 2.0,
        add_residual: bool = True,
        causal: bool = False,
        dropout: float = 0.0,
        laplace_attn_fn: bool = False,
        rel_pos_bias: bool = False,
        norm_klass: type[nn.Module] = nn.LayerNorm,
        backend: str | None = None,
    ):
        super().__init__()
        _checks.positive_int("dim", dim)
        _checks.positive_int("query_key_dim", query_key_dim)
        _checks.probability("dropout", dropout)
        hidden_dim = _hidden_dim(dim, expansion_factor)
        self.dim = dim
        self.backend = check_backend(backend)
        self.laplace_attn_fn = laplace_attn_fn

        self.norm = norm_klass(dim)
        self.causal = causal
        self.dropout = nn.Dropout(dropout)
        self.attn_fn = LaplacianAttnFn() if laplace_attn_fn else ReLUSquared()
        self.rel_pos_bias = T5RelativePositionBias(scale=dim**0.5, causal=causal)
        self.to_hidden = nn.Sequential(nn.Linear(dim, hidden_dim * 2), nn.SiLU())
        self.to_qk = nn.Sequential(nn.Linear(dim, query_key_dim), nn.SiLU())
        self.offsetscale = OffsetScale(query_key_dim, heads=2)
        self.to_out = nn.Sequential(nn.Linear(hidden_dim, dim), nn.Dropout(dropout))
        self.add_residual = add_residual

    def forward(self, x: Tensor, rel_pos_bias: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        b, n = _checks.features("x", x, self.dim)
        mask = _checks.key_mask("mask", mask, b, n, x.device)
        rel_pos_bias = _checks.attn_bias("rel_pos_bias", rel_pos_bias, b, n)

        normed_x = self.norm(x)
        v, gate = self.to_hidden(normed_x).chunk(2, dim=-1)
        q, k = self.offsetscale(self.to_qk(normed_x))
        t5 = self.rel_pos_bias
        out = ops.quad_attn(
            q,
            k,
            v,
            gate,
            scale=1.0 / n,
            causal=self.causal,
            key_mask=mask,
            t5_weight=t5.relative_attention_bias.weight.reshape(-1),
            t5_scale=t5.scale / n,
            t5_max_distance=t5.max_distance,
            bias=rel_pos_bias,
            bias_scale=1.0 / n,
            laplace=self.laplace_attn_fn,
            dropout_p=self.dropout.p if self.training else 0.0,
            backend=self.backend,
        )
        out = self.to_out(out)
        return out + x if self.add_residual else out


class FLASH(nn.Module):
    """FLASH layer: mixed chunk attention (relu² attention inside groups of ``group_size`` tokens plus causal or
    global linear attention across groups), gated, with a residual.

    ``forward(x, *, mask=None)``: x (b, n, dim); mask (b, n) bool, False = key ignored (in both halves).
    ``rotary_pos_emb``: a :class:`RotaryEmbedding` (or rotary-embedding-torch's) applied to all four query/key heads
    (may be shared by layers).
    ``backend``: "auto" | "triton" | "reference" | None (= ``$FLASH_TRITON_BACKEND`` or auto).

    >>> flash = FLASH(dim=64, group_size=16, query_key_dim=32, causal=True)
    >>> flash(torch.randn(2, 40, 64)).shape
    torch.Size([2, 40, 64])
    """

    def __init__(
        self,
        *,
        dim: int,
        group_size: int = 256,
        query_key_dim: int = 128,
        expansion_factor: float = 2.0,
        causal: bool = False,
        dropout: float = 0.0,
        rotary_pos_emb: RotaryEmbedding | None = None,
        norm_klass: type[nn.Module] = nn.LayerNorm,
        shift_tokens: bool = False,
        laplace_attn_fn: bool = False,
        reduce_group_non_causal_attn: bool = True,
        backend: str | None = None,
    ):
        super().__init__()
        _checks.positive_int("dim", dim)
        _checks.positive_int("group_size", group_size)
        _checks.positive_int("query_key_dim", query_key_dim)
        _checks.probability("dropout", dropout)
        hidden_dim = _hidden_dim(dim, expansion_factor)
        if rotary_pos_emb is not None and rotary_pos_emb.freqs.numel() * 2 > query_key_dim:
            rot = rotary_pos_emb.freqs.numel() * 2
            raise ValueError(f"rotary_pos_emb rotates {rot} features but query_key_dim is {query_key_dim}")
        self.dim = dim
        self.backend = check_backend(backend)
        self.laplace_attn_fn = laplace_attn_fn
        self.group_size = group_size
        self.causal = causal
        self.shift_tokens = shift_tokens
        self.attn_fn = LaplacianAttnFn() if laplace_attn_fn else ReLUSquared()

        self.rotary_pos_emb = rotary_pos_emb
        self.rel_pos_bias = T5RelativePositionBias(query_key_dim**0.5, causal=causal)
        self.norm = norm_klass(dim)
        self.dropout = nn.Dropout(dropout)
        self.reduce_group_non_causal_attn = reduce_group_non_causal_attn
        self.to_hidden = nn.Sequential(nn.Linear(dim, hidden_dim * 2), nn.SiLU())
        self.to_qk = nn.Sequential(nn.Linear(dim, query_key_dim), nn.SiLU())
        self.qk_offset_scale = OffsetScale(query_key_dim, heads=4)
        self.to_out = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, cu_seqlens: Tensor | None = None) -> Tensor:
        """x (b, n, dim); mask (b, n) bool. ``cu_seqlens`` (S + 1,) int packs S sequences into one row
        (b = 1): each is processed as if alone (token shift, rotary positions, groups and linear state restart)."""
        b, n = _checks.features("x", x, self.dim)
        mask = _checks.key_mask("mask", mask, b, n, x.device)
        cu_seqlens = _checks.cu_seqlens("cu_seqlens", cu_seqlens, b, n, x.device)
        rope = self.rotary_pos_emb
        if cu_seqlens is not None and rope is not None and not isinstance(rope, RotaryEmbedding):
            raise ValueError("cu_seqlens needs flash_triton.RotaryEmbedding (per-sequence positions)")

        normed_x = self.norm(x)
        if self.shift_tokens:
            # token shift: the first half of the features comes from the previous position (zeros at t = 0)
            x_shift, x_pass = normed_x.chunk(2, dim=-1)
            x_shift = F.pad(x_shift, (0, 0, 1, -1))
            if cu_seqlens is not None:  # and at the first position of every packed sequence
                x_shift = x_shift.index_fill(1, cu_seqlens[:-1], 0.0)
            normed_x = torch.cat((x_shift, x_pass), dim=-1)

        v, gate = self.to_hidden(normed_x).chunk(2, dim=-1)
        quad_q, lin_q, quad_k, lin_k = self.qk_offset_scale(self.to_qk(normed_x))
        if isinstance(rope, RotaryEmbedding):  # angles computed once for the four heads
            positions = torch.arange(n, device=x.device)
            if cu_seqlens is not None:
                positions = positions - sequence_starts(cu_seqlens)
            angles = rope.angles_at(positions)
            quad_q, lin_q, quad_k, lin_k = (apply_rotary(t, angles) for t in (quad_q, lin_q, quad_k, lin_k))
        elif rope is not None:  # another implementation, e.g. rotary-embedding-torch's, used through its API
            quad_q, lin_q, quad_k, lin_k = map(rope.rotate_queries_or_keys, (quad_q, lin_q, quad_k, lin_k))

        t5 = self.rel_pos_bias
        out = ops.mixed_chunk_attn(
            quad_q,
            quad_k,
            lin_q,
            lin_k,
            v,
            gate,
            group_size=self.group_size,
            causal=self.causal,
            key_mask=mask,
            t5_weight=t5.relative_attention_bias.weight.reshape(-1),
            t5_scale=t5.scale,
            t5_max_distance=t5.max_distance,
            laplace=self.laplace_attn_fn,
            dropout_p=self.dropout.p if self.training else 0.0,
            reduce_group=self.reduce_group_non_causal_attn,
            backend=self.backend,
            **({} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}),
        )
        return self.to_out(out) + x


def sequence_starts(cu_seqlens: Tensor) -> Tensor:
    """(n,) start offset of the packed sequence each position belongs to."""
    return cu_seqlens[:-1].repeat_interleave(cu_seqlens.diff())
