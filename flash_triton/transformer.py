"""FLASHTransformer: token embedding + scaled sinusoidal position + FLASH layers + LayerNorm/Linear head."""

import contextlib
import functools

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import _checks
from .backend import check_backend
from .cache import FLASHCache, FLASHLayerCache, cache_owner, check_cache, new_owner_id
from .embeddings import RotaryEmbedding, ScaledSinuEmbedding
from .layers import FLASH, ScaleNorm, sequence_starts

NORM_TYPES = {"scalenorm": ScaleNorm, "layernorm": nn.LayerNorm}


class FLASHTransformer(nn.Module):
    """A stack of ``depth`` FLASH layers over token embeddings, returning logits (b, n, num_tokens).

    As upstream: one :class:`RotaryEmbedding` of ``min(32, query_key_dim)`` features shared by all layers,
    token shift on by default, ScaleNorm by default. ``forward(x, *, mask=None, cu_seqlens=None, cache=None,
    return_cache=False)``: x (b, n) integer token ids in ``[0, num_tokens)``, at most ``flash_triton.MAX_SEQ_LEN``
    long; mask (b, n) bool; see :meth:`forward` for packed sequences and incremental decoding.

    >>> model = FLASHTransformer(num_tokens=256, dim=64, depth=2, group_size=16, query_key_dim=32, causal=True)
    >>> model(torch.randint(0, 256, (1, 50))).shape
    torch.Size([1, 50, 256])
    """

    _context_parallel = None  # flash_triton.distributed.context_parallel() sets it

    def __init__(
        self,
        *,
        dim: int,
        num_tokens: int,
        depth: int,
        group_size: int = 256,
        query_key_dim: int = 128,
        expansion_factor: float = 2.0,
        causal: bool = False,
        attn_dropout: float = 0.0,
        norm_type: str = "scalenorm",
        shift_tokens: bool = True,
        laplace_attn_fn: bool = False,
        reduce_group_non_causal_attn: bool = True,
        backend: str | None = None,
    ):
        super().__init__()
        _checks.positive_int("dim", dim)
        _checks.positive_int("num_tokens", num_tokens)
        _checks.positive_int("depth", depth)
        _checks.positive_int("query_key_dim", query_key_dim)
        if dim % 2:
            raise ValueError(
                f"dim must be even (the sinusoidal position embedding is 2 * ceil(dim / 2) wide), got {dim}"
            )
        if min(32, query_key_dim) % 2:
            raise ValueError(
                "query_key_dim below 32 must be even (the rotary embedding turns its first min(32, query_key_dim) "
                f"features in pairs), got {query_key_dim}"
            )
        _checks.length("group_size", group_size)
        _checks.probability("attn_dropout", attn_dropout)
        for name, value in (
            ("causal", causal),
            ("shift_tokens", shift_tokens),
            ("laplace_attn_fn", laplace_attn_fn),
            ("reduce_group_non_causal_attn", reduce_group_non_causal_attn),
        ):
            _checks.flag(name, value)
        causal = bool(causal)
        if not isinstance(norm_type, str) or norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type must be one of {tuple(NORM_TYPES)}, got {norm_type!r}")
        norm_klass = NORM_TYPES[norm_type]
        self.num_tokens = num_tokens
        self.causal = causal
        self._cache_owner = new_owner_id()
        self.backend = check_backend(backend)

        self.token_emb = nn.Embedding(num_tokens, dim)
        self.abs_pos_emb = ScaledSinuEmbedding(dim)
        self.group_size = group_size

        # partial rotary (at most 32 features), one module shared by every layer
        rotary_pos_emb = RotaryEmbedding(dim=min(32, query_key_dim))
        self.layers = nn.ModuleList(
            [
                FLASH(
                    dim=dim,
                    group_size=group_size,
                    query_key_dim=query_key_dim,
                    expansion_factor=expansion_factor,
                    causal=causal,
                    dropout=attn_dropout,
                    rotary_pos_emb=rotary_pos_emb,
                    norm_klass=norm_klass,
                    shift_tokens=shift_tokens,
                    reduce_group_non_causal_attn=reduce_group_non_causal_attn,
                    laplace_attn_fn=laplace_attn_fn,
                    backend=backend,
                )
                for _ in range(depth)
            ]
        )
        self.to_logits = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_tokens))
        # activation checkpointing of the layers (also what transformers' gradient_checkpointing_enable() sets,
        # with its own checkpoint function)
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = None

    @property
    def supports_cache(self) -> bool:
        """Whether ``forward(..., cache=, return_cache=)`` works: causal models only."""
        return self.causal

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        cache: FLASHCache | None = None,
        return_cache: bool = False,
    ) -> Tensor | tuple[Tensor, FLASHCache]:
        """x (b, n) token ids; mask (b, n) bool; ``cu_seqlens`` (S + 1,) int packs S sequences into one row (b = 1),
        each processed as if alone (positions restart at every sequence).

        Incremental decoding (causal models): ``return_cache=True`` returns ``(logits, cache)``, a
        :class:`~flash_triton.FLASHCache` of the tokens so far; ``cache=`` continues from it with x the next tokens
        (one or more per call). Logits equal those of one call over the whole sequence; the work per token does not
        grow with the context. Not with ``mask`` / ``cu_seqlens`` or active dropout.

        Activation checkpointing: with ``model.gradient_checkpointing = True`` each layer's activations are
        recomputed in the backward (training mode, grad enabled, not when decoding); the result is exact (dropout
        draws are replayed).
        """
        h, new_cache = self.hidden_states(x, mask=mask, cu_seqlens=cu_seqlens, cache=cache, return_cache=return_cache)
        logits = self.to_logits(h)
        return (logits, new_cache) if new_cache is not None else logits

    def hidden_states(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        cache: FLASHCache | None = None,
        return_cache: bool = False,
    ) -> tuple[Tensor, FLASHCache | None]:
        """The last layer's output (b, n, dim), before the head's norm, and the new cache (None unless decoding):
        :meth:`forward` without the head."""
        b, n = _checks.tokens("x", x, self.num_tokens)
        mask = _checks.key_mask("mask", mask, b, n, x.device)
        cu_seqlens = _checks.cu_seqlens("cu_seqlens", cu_seqlens, b, n, x.device)
        decoding = cache is not None or _checks.flag("return_cache", return_cache)
        if decoding:
            dtype = self.token_emb.weight.dtype
            owner = cache_owner(self)  # once per call: the check and the new cache's record
            if cache is not None:
                check_cache("cache", cache, FLASHCache, owner, b, dtype, x.device, n)
                layers = cache.layers
                if not isinstance(layers, tuple) or len(layers) != len(self.layers):
                    raise ValueError(f"cache must hold one layer cache per layer ({len(self.layers)})")
                if any(not isinstance(c, FLASHLayerCache) or c.position != cache.position for c in layers):
                    raise ValueError("cache's layer caches do not match it: not a cache this model returned")
            for i, flash in enumerate(self.layers):
                layer_cache = None if cache is None else cache.layers[i]
                flash.check_decoding(b, n, dtype, x.device, mask, cu_seqlens, layer_cache)
        position = 0 if cache is None else cache.position
        cp = self._context_parallel
        if cp is not None:  # this rank holds a slice of the sequence: global positions
            if decoding or cu_seqlens is not None:
                raise ValueError("cache / return_cache / cu_seqlens are not supported with context parallelism")
            position = cp.offset(n, self.group_size, x)

        x = self.token_emb(x)
        if cu_seqlens is not None:
            x = self.abs_pos_emb.at(torch.arange(n, device=x.device) - sequence_starts(cu_seqlens)) + x
        elif position:
            x = self.abs_pos_emb.at(torch.arange(position, position + n, device=x.device)) + x
        else:
            x = self.abs_pos_emb(x) + x
        if not decoding:
            checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
            # context parallel: the slices were checked above; the layers take this offset without a collective
            known = contextlib.nullcontext() if cp is None else cp.known_offset(n, self.group_size, position)
            with known:
                for flash in self.layers:
                    if checkpointing:
                        run = self._gradient_checkpointing_func or functools.partial(checkpoint, use_reentrant=False)
                        x = run(functools.partial(flash, mask=mask, cu_seqlens=cu_seqlens), x)
                    else:
                        x = flash(x, mask=mask, cu_seqlens=cu_seqlens)
            return x, None

        layer_caches = []
        for i, flash in enumerate(self.layers):
            x, layer_cache = flash(x, cache=None if cache is None else cache.layers[i], return_cache=True)
            layer_caches.append(layer_cache)
        new_cache = FLASHCache(
            layers=tuple(layer_caches), position=position + n, dtype=layer_caches[0].dtype, owner=owner
        )
        return x, new_cache
