"""Next-token loss and top-k sampling around a causal language model (FLASH-pytorch 0.1.9's wrapper)."""

import functools

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
        self.pad_value = pad_value
        self.net = net

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
        if start_tokens.dim() != 2:
            raise ValueError(f"start_tokens must have shape (batch, seq), got {tuple(start_tokens.shape)}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
            raise ValueError(f"seq_len must be a non-negative int, got {seq_len!r}")
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
        num_tokens = getattr(self.net, "num_tokens", None)
        if num_tokens is not None:  # the labels include the last token, which the net never sees
            _checks.tokens("x", x, num_tokens)
        if x.dim() != 2 or x.shape[1] < 2:
            raise ValueError(f"x must have shape (batch, seq + 1) with seq >= 1, got {tuple(x.shape)}")
        x_inp, x_labels = x[:, :-1], x[:, 1:]
        logits = self.net(x_inp, **kwargs)
        return F.cross_entropy(logits.transpose(1, 2), x_labels)
