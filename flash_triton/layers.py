"""GAU and FLASH layers with FLASH-pytorch 0.1.9's constructor arguments, forward signatures, attribute and
state_dict names. The attention cores are the ops :func:`flash_triton.quad_attn.quad_attn` (GAU) and
:func:`flash_triton.mixed_chunk_attn.mixed_chunk_attn` (FLASH): Triton kernels or the reference."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .backend import check_backend
from .cache import FLASHLayerCache, cache_owner, check_cache, new_owner_id
from .embeddings import RotaryEmbedding, T5RelativePositionBias
from .mixed_chunk_attn import run_mixed_chunk_attn, run_mixed_chunk_attn_step
from .quad_attn import run_quad_attn
from .reference.activations import laplace_attn_fn, relu_squared
from .reference.rope import apply_rotary


class ScaleNorm(nn.Module):
    """``x / clamp(||x|| * dim^-0.5, eps) * g`` with one learned scalar ``g``."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        _checks.positive_int("dim", dim)
        eps = _checks.positive_real("eps", eps)
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
        _checks.positive_int("dim", dim)
        _checks.positive_int("heads", heads)
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
    expansion_factor = _checks.positive_real("expansion_factor", expansion_factor)
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

    No incremental-decoding cache: because every score is divided by the current length n, the outputs at earlier
    positions change whenever the sequence grows, so a causal GAU's prefix cannot be reused exactly. Use
    :class:`FLASH` (fixed 1/group_size scale) for cached decoding.

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
        add_residual, causal, laplace_attn_fn = (
            _checks.flag(name, value)
            for name, value in (
                ("add_residual", add_residual),
                ("causal", causal),
                ("laplace_attn_fn", laplace_attn_fn),
            )
        )
        _checks.flag("rel_pos_bias", rel_pos_bias)  # accepted and ignored, as upstream (the bias is always on)
        self.dim = dim
        self.backend = check_backend(backend)
        self.laplace_attn_fn = laplace_attn_fn

        self.norm = _checks.norm_module("norm_klass", norm_klass, dim)
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
        _checks.same_dtype("x", x, self)
        mask = _checks.key_mask("mask", mask, b, n, x.device)
        rel_pos_bias = _checks.attn_bias("rel_pos_bias", rel_pos_bias, b, n)
        if rel_pos_bias is not None and rel_pos_bias.dtype != x.dtype:
            _checks.same_dtype("rel_pos_bias", rel_pos_bias, self)

        normed_x = self.norm(x)
        v, gate = self.to_hidden(normed_x).chunk(2, dim=-1)
        q, k = self.offsetscale(self.to_qk(normed_x))
        t5 = self.rel_pos_bias
        out = run_quad_attn(
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

    ``forward(x, *, mask=None, cu_seqlens=None, cache=None, return_cache=False)``: x (b, n, dim); mask (b, n) bool,
    False = key ignored (in both halves); see :meth:`forward` for packed sequences and incremental decoding.
    ``rotary_pos_emb``: a :class:`RotaryEmbedding` (or rotary-embedding-torch's) applied to all four query/key heads
    (may be shared by layers).
    ``backend``: "auto" | "triton" | "reference" | None (= ``$FLASH_TRITON_BACKEND`` or auto).

    >>> flash = FLASH(dim=64, group_size=16, query_key_dim=32, causal=True)
    >>> flash(torch.randn(2, 40, 64)).shape
    torch.Size([2, 40, 64])
    """

    _context_parallel = None  # flash_triton.distributed.context_parallel() sets it

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
        _checks.length("group_size", group_size)
        _checks.positive_int("query_key_dim", query_key_dim)
        _checks.probability("dropout", dropout)
        hidden_dim = _hidden_dim(dim, expansion_factor)
        causal, shift_tokens, laplace_attn_fn, reduce_group_non_causal_attn = (
            _checks.flag(name, value)
            for name, value in (
                ("causal", causal),
                ("shift_tokens", shift_tokens),
                ("laplace_attn_fn", laplace_attn_fn),
                ("reduce_group_non_causal_attn", reduce_group_non_causal_attn),
            )
        )
        if rotary_pos_emb is not None and not (
            isinstance(rotary_pos_emb, nn.Module)
            and callable(getattr(rotary_pos_emb, "rotate_queries_or_keys", None))
            and isinstance(getattr(rotary_pos_emb, "freqs", None), Tensor)
        ):
            raise TypeError(
                "rotary_pos_emb must be None or a RotaryEmbedding (flash_triton's or rotary-embedding-torch's), got "
                f"{type(rotary_pos_emb).__name__}"
            )
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
        self.norm = _checks.norm_module("norm_klass", norm_klass, dim)
        self.dropout = nn.Dropout(dropout)
        self.reduce_group_non_causal_attn = reduce_group_non_causal_attn
        self.to_hidden = nn.Sequential(nn.Linear(dim, hidden_dim * 2), nn.SiLU())
        self.to_qk = nn.Sequential(nn.Linear(dim, query_key_dim), nn.SiLU())
        self.qk_offset_scale = OffsetScale(query_key_dim, heads=4)
        self.to_out = nn.Linear(hidden_dim, dim)
        self._cache_owner = new_owner_id()

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        cache: FLASHLayerCache | None = None,
        return_cache: bool = False,
    ) -> Tensor | tuple[Tensor, FLASHLayerCache]:
        """x (b, n, dim); mask (b, n) bool. ``cu_seqlens`` (S + 1,) int packs S sequences into one row
        (b = 1): each is processed as if alone (token shift, rotary positions, groups and linear state restart).

        Incremental decoding (causal layers): ``return_cache=True`` also returns a :class:`FLASHLayerCache` of the
        sequence so far; ``cache=`` continues from one, x being the next n tokens (any n >= 1). The outputs equal
        those of one call over the whole sequence. Not with ``mask`` or ``cu_seqlens``, nor with dropout active.
        """
        b, n = _checks.features("x", x, self.dim)
        _checks.same_dtype("x", x, self)
        mask = _checks.key_mask("mask", mask, b, n, x.device)
        cu_seqlens = _checks.cu_seqlens("cu_seqlens", cu_seqlens, b, n, x.device)
        return_cache = _checks.flag("return_cache", return_cache)
        rope = self.rotary_pos_emb
        if cu_seqlens is not None and rope is not None and not isinstance(rope, RotaryEmbedding):
            raise ValueError("cu_seqlens needs flash_triton.RotaryEmbedding (per-sequence positions)")
        decoding = cache is not None or return_cache
        owner = None
        if decoding:
            owner = cache_owner(self)  # once per call: the check below and the new cache's record
            self.check_decoding(b, n, x.dtype, x.device, mask, cu_seqlens, cache, owner)
        position = 0 if cache is None else cache.position
        cp = self._context_parallel
        if cp is not None:  # this rank holds a slice of the sequence: global positions, shift across ranks
            if decoding or cu_seqlens is not None:
                raise ValueError("cache / return_cache / cu_seqlens are not supported with context parallelism")
            position = cp.offset(n, self.group_size, x)

        normed_x = self.norm(x)
        last_shift = None
        if self.shift_tokens:
            # token shift: the first half of the features comes from the previous position (zeros at t = 0)
            x_shift, x_pass = normed_x.chunk(2, dim=-1)
            last_shift = x_shift[:, -1]
            if cp is not None:  # the previous rank's last token (zeros on the first rank)
                from .distributed import previous_rank_row

                before = previous_rank_row(x_shift[:, -1], cp.group)
                x_shift = torch.cat((before[:, None], x_shift[:, :-1]), dim=1)
            elif cache is None:
                x_shift = F.pad(x_shift, (0, 0, 1, -1))
            else:
                x_shift = torch.cat((cache.shift[:, None].to(x_shift.dtype), x_shift[:, :-1]), dim=1)
            if cu_seqlens is not None:  # and at the first position of every packed sequence
                x_shift = x_shift.index_fill(1, cu_seqlens[:-1], 0.0)
            normed_x = torch.cat((x_shift, x_pass), dim=-1)

        v, gate = self.to_hidden(normed_x).chunk(2, dim=-1)
        quad_q, lin_q, quad_k, lin_k = self.qk_offset_scale(self.to_qk(normed_x))
        if isinstance(rope, RotaryEmbedding):  # angles computed once for the four heads
            positions = torch.arange(position, position + n, device=x.device)
            if cu_seqlens is not None:
                positions = positions - sequence_starts(cu_seqlens)
            angles = rope.angles_at(positions)
            quad_q, lin_q, quad_k, lin_k = (apply_rotary(t, angles) for t in (quad_q, lin_q, quad_k, lin_k))
        elif rope is not None:  # another implementation, e.g. rotary-embedding-torch's, used through its API
            rotate = rope.rotate_queries_or_keys
            if position:
                quad_q, lin_q, quad_k, lin_k = (rotate(t, offset=position) for t in (quad_q, lin_q, quad_k, lin_k))
            else:
                quad_q, lin_q, quad_k, lin_k = map(rotate, (quad_q, lin_q, quad_k, lin_k))

        t5 = self.rel_pos_bias
        t5_kw = dict(
            t5_weight=t5.relative_attention_bias.weight.reshape(-1),
            t5_scale=t5.scale,
            t5_max_distance=t5.max_distance,
            laplace=self.laplace_attn_fn,
        )
        if decoding:
            out, new_cache = self._decode(
                quad_q, lin_q, gate, quad_k, lin_k, v, cache, last_shift, x.dtype, t5_kw, owner
            )
            out = self.to_out(out) + x
            return (out, new_cache) if return_cache else out

        tensors = (quad_q, quad_k, lin_q, lin_k, v, gate)
        kw = dict(
            group_size=self.group_size,
            key_mask=mask,
            dropout_p=self.dropout.p if self.training else 0.0,
            backend=self.backend,
            **t5_kw,
        )
        if cp is not None:
            from .distributed import mixed_chunk_attn as cp_mixed_chunk_attn

            out = cp_mixed_chunk_attn(*tensors, group=cp.group, check=False, **kw)
        else:
            cu = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
            out = run_mixed_chunk_attn(
                *tensors, causal=self.causal, reduce_group=self.reduce_group_non_causal_attn, **kw, **cu
            )
        return self.to_out(out) + x

    def check_decoding(
        self, batch: int, n: int, dtype: torch.dtype, device: torch.device, mask, cu_seqlens, cache, owner=None
    ):
        """Errors for a ``cache`` / ``return_cache`` call that cannot be exact, before any compute (``owner``: this
        layer's :func:`~flash_triton.cache.cache_owner` when the caller has it)."""
        if not self.causal:
            raise ValueError(
                "cache / return_cache need a causal FLASH layer (causal=True): non-causal attention reads the whole "
                "sequence, so its outputs change as the sequence grows"
            )
        if mask is not None:
            raise ValueError("mask is not supported with cache / return_cache: decode unpadded sequences")
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens is not supported with cache / return_cache")
        if self.training and self.dropout.p > 0:
            raise ValueError(
                f"cache / return_cache with attention dropout {self.dropout.p} in training mode: call .eval() first"
            )
        if cache is not None:
            check_cache("cache", cache, FLASHLayerCache, owner or cache_owner(self), batch, dtype, device, n)
            if cache.quad_k.shape[1] != cache.position % self.group_size:
                raise ValueError(
                    f"cache holds {cache.quad_k.shape[1]} tokens of the current group at position {cache.position} "
                    f"(group_size {self.group_size}): not a cache this layer returned"
                )

    def _decode(self, quad_q, lin_q, gate, quad_k, lin_k, v, cache, last_shift, dtype, t5_kw, owner):
        """Attention of the new tokens given the cache, and the cache after them."""
        g = self.group_size
        state = None
        if cache is not None:
            state = cache.state
            quad_k, lin_k, v = (
                torch.cat((c.to(t.dtype), t), dim=1)
                for c, t in ((cache.quad_k, quad_k), (cache.lin_k, lin_k), (cache.v, v))
            )
        out = run_mixed_chunk_attn_step(
            quad_q, lin_q, gate, quad_k, lin_k, v, state, group_size=g, backend=self.backend, **t5_kw
        )
        # fold the groups completed in this window into the running state (Σ over groups of lin_kᵀ v / g)
        done = quad_k.shape[1] // g * g
        state_dtype = torch.promote_types(v.dtype, torch.float32)
        if state is None:
            state = v.new_zeros(v.shape[0], lin_k.shape[-1], v.shape[-1], dtype=state_dtype)
        if done:
            state = state + lin_k[:, :done].to(state_dtype).mT @ v[:, :done].to(state_dtype) / g
        position = (0 if cache is None else cache.position) + quad_q.shape[1]
        # the window is a fresh tensor when it was concatenated; a slice of a long prompt is copied so the cache
        # does not keep the whole prompt's activations alive
        fresh = cache is not None and not done
        quad_k, lin_k, v = (t[:, done:].detach() if fresh else t[:, done:].detach().clone() for t in (quad_k, lin_k, v))
        new_cache = FLASHLayerCache(
            state=state.detach(),
            quad_k=quad_k,
            lin_k=lin_k,
            v=v,
            shift=None if last_shift is None else last_shift.detach().clone(),
            position=position,
            dtype=dtype,
            owner=owner,
        )
        return out, new_cache


def sequence_starts(cu_seqlens: Tensor) -> Tensor:
    """(n,) start offset of the packed sequence each position belongs to."""
    return cu_seqlens[:-1].repeat_interleave(cu_seqlens.diff())
