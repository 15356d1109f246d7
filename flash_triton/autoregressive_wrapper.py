"""Next-token loss and top-k sampling around a causal language model (FLASH-pytorch 0.1.9's wrapper)."""

import functools
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks


def eval_decorator(fn):
    """Run ``fn(model, ...)`` in eval mode and restore the model's training flag afterwards."""

    @functools.wraps(fn)
    def inner(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return inner


def top_k(logits: Tensor, thres: float = 0.9) -> Tensor:
    """Keep the ``(1 - thres) * vocab`` largest logits (at least one), set the rest to -inf."""
    k = max(1, int((1 - thres) * logits.shape[-1]))
    val, ind = torch.topk(logits, k)
    probs = torch.full_like(logits, float("-inf"))
    probs.scatter_(1, ind, val)
    return probs


class AutoregressiveWrapper(nn.Module):
    """``wrapper(x)``: mean cross-entropy of predicting ``x[:, 1:]`` from ``x[:, :-1]``.
    ``wrapper.generate(start_tokens, seq_len)``: ``seq_len`` sampled tokens after the (b, t) prompt.

    >>> from flash_triton import FLASHTransformer
    >>> net = FLASHTransformer(num_tokens=256, dim=32, depth=1, group_size=8, query_key_dim=16, causal=True)
    >>> AutoregressiveWrapper(net).generate(torch.zeros(1, 4, dtype=torch.long), 3).shape
    torch.Size([1, 3])
    """

    def __init__(self, net: nn.Module, pad_value: int = 0):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module (e.g. a FLASHTransformer), got {type(net).__name__}")
        if isinstance(pad_value, bool) or not isinstance(pad_value, numbers.Integral):
            raise TypeError(f"pad_value must be an int token id, got {type(pad_value).__name__} {pad_value!r}")
        self.pad_value = int(pad_value)
        self.net = net

    def _check_tokens(self, name: str, x: object) -> None:
        """x: (batch, seq) integer token ids, within the net's vocabulary when it has ``num_tokens``."""
        num_tokens = getattr(self.net, "num_tokens", None)
        if num_tokens is not None:
            _checks.tokens(name, x, num_tokens)
            return
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, seq), got {tuple(x.shape)}")

    @staticmethod
    def _check_kwargs(kwargs: dict) -> None:
        managed = sorted({"cache", "return_cache"} & set(kwargs))
        if managed:
            raise ValueError(
                f"{', '.join(managed)} cannot be passed through the wrapper: generate(use_cache=...) manages the "
                "decoding cache itself, and the loss takes the logits only"
            )

    @torch.no_grad()
    @eval_decorator
    def generate(
        self,
        start_tokens: Tensor,
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        filter_thres: float = 0.9,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Tensor:
        """Sample ``seq_len`` tokens (top-k filtered, temperature-scaled) after ``start_tokens`` (b, t).

        With ``eos_token``, generation stops once every row has produced it, and the tokens after each row's first
        generated ``eos_token`` are replaced by ``pad_value``.

        ``use_cache``: True runs the prompt once and then one token per step through the net's decoding cache
        (a causal :class:`~flash_triton.FLASHTransformer`; O(group) work per token, same logits); False re-runs
        the net over the whole sequence for every token, as upstream; None (default) uses the cache when the net
        supports it. ``kwargs`` go to the net's forward (not with the cache).
        """
        self._check_tokens("start_tokens", start_tokens)
        if start_tokens.shape[1] < 1:
            raise ValueError(f"start_tokens must hold at least one token per row, got {tuple(start_tokens.shape)}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 0:
            raise ValueError(f"seq_len must be a non-negative int, got {seq_len!r}")
        if eos_token is not None:
            if isinstance(eos_token, bool) or not isinstance(eos_token, numbers.Integral):
                raise TypeError(f"eos_token must be None or an int token id, got {type(eos_token).__name__}")
            num_tokens = getattr(self.net, "num_tokens", None)
            if eos_token < 0 or (num_tokens is not None and eos_token >= num_tokens):
                raise ValueError(f"eos_token must be a token id in [0, {num_tokens or 'vocab'}), got {eos_token}")
        if use_cache is not None:
            use_cache = _checks.flag("use_cache", use_cache)
        self._check_kwargs(kwargs)
        temperature = _checks.real("temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        filter_thres = _checks.real("filter_thres", filter_thres)
        if not 0.0 <= filter_thres <= 1.0:
            raise ValueError(
                "filter_thres must be in [0, 1] (top-k keeps the (1 - filter_thres) * vocab largest logits, at least "
                f"one), got {filter_thres}"
            )
        can_cache = bool(getattr(self.net, "supports_cache", False))
        if use_cache is None:
            use_cache = can_cache and not kwargs
        elif use_cache and not can_cache:
            what = type(self.net).__name__ + (" with causal=False" if hasattr(self.net, "causal") else "")
            raise ValueError(f"use_cache=True needs a net with a decoding cache (causal FLASHTransformer), got {what}")
        elif use_cache and kwargs:
            raise ValueError(f"use_cache=True takes no extra forward arguments, got {sorted(kwargs)}")

        t = start_tokens.shape[1]
        out = start_tokens
        cache = None
        for _ in range(seq_len):
            if not use_cache:
                logits = self.net(out, **kwargs)[:, -1, :]
            elif cache is None:
                logits, cache = self.net(out, return_cache=True)
                logits = logits[:, -1, :]
            else:
                logits, cache = self.net(out[:, -1:], cache=cache, return_cache=True)
                logits = logits[:, -1, :]
            probs = F.softmax(top_k(logits, thres=filter_thres) / temperature, dim=-1)
            out = torch.cat((out, torch.multinomial(probs, 1)), dim=-1)
            if eos_token is not None:
                is_eos = out[:, t:] == eos_token
                if is_eos.any(dim=-1).all():
                    after_eos = F.pad(is_eos, (1, -1)).cumsum(dim=-1) >= 1
                    out = torch.cat((out[:, :t], out[:, t:].masked_fill(after_eos, self.pad_value)), dim=-1)
                    break
        return out[:, t:]

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        """Mean cross-entropy of predicting ``x[:, 1:]`` from ``x[:, :-1]``; x (b, n + 1) token ids, n >= 1."""
        self._check_tokens("x", x)  # the labels include the last token, which the net never sees
        self._check_kwargs(kwargs)
        if x.shape[1] < 2:
            raise ValueError(f"x must have shape (batch, seq + 1) with seq >= 1, got {tuple(x.shape)}")
        x_inp, x_labels = x[:, :-1], x[:, 1:]
        logits = self.net(x_inp, **kwargs)
        return F.cross_entropy(logits.transpose(1, 2), x_labels)
